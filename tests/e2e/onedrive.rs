//! onedrive-download and onedrive-upload end to end against the Graph fake, through
//! `POST /api/v1/steps` and the CLI. Downloads: Graph's `302` to a pre-authenticated
//! URL on another host is followed without the token, and the bytes land in the
//! workspace identical. Uploads: small files in one `PUT`, large ones through an upload
//! session whose chunks (multiples of 320 KiB, `Content-Range`) the host streams from
//! the workspace to the other host, again without the token. Graph's errors come back
//! under flow8's names.

use flow8_tests::graph_fake::{GraphFailure, GraphHost};
use flow8_tests::microsoft::{Microsoft, pattern};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onedrive_download_and_upload_through_the_api() {
    let ms = Microsoft::start(&["Files.Read", "Files.ReadWrite"]);
    let link = ms.connect("microsoft").await;
    let ws = ms.workspace("run-7");
    std::fs::create_dir_all(ws.join("in")).unwrap();
    let report = pattern(1_500_000, 9);
    let id = ms
        .graph
        .put_drive_file("/Documents/Q1 report.pdf", report.clone());

    // --- download by path: Graph redirects, the token stays with Graph ---
    let (status, v) = ms
        .step(
            "onedrive-download",
            Some("run-7"),
            json!({"link_id": link, "path": "/Documents/Q1 report.pdf", "save_as": "/in/report.pdf"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["size"], 1_500_000);
    assert_eq!(v["output"]["redirected"], true);
    assert_eq!(std::fs::read(ws.join("in/report.pdf")).unwrap(), report);
    let reqs = ms.graph.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(
        (reqs[0].host, reqs[0].method.as_str()),
        (GraphHost::Graph, "GET")
    );
    assert_eq!(
        reqs[0].path,
        "/v1.0/me/drive/root:/Documents/Q1%20report.pdf:/content"
    );
    assert!(
        reqs[0]
            .header("authorization")
            .unwrap()
            .starts_with("Bearer ")
    );
    assert_eq!(reqs[1].host, GraphHost::Transfer);
    assert!(reqs[1].path.starts_with("/download/"));
    assert!(
        reqs[1].header("authorization").is_none(),
        "the token did not follow the redirect"
    );
    // By item id.
    let (status, v) = ms
        .step(
            "onedrive-download",
            Some("run-7"),
            json!({"link_id": link, "item_id": id, "save_as": "/in/by-id.pdf"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(std::fs::read(ws.join("in/by-id.pdf")).unwrap(), report);
    // max_bytes: refused, and no file is left.
    let (status, v) = ms
        .step(
            "onedrive-download",
            Some("run-7"),
            json!({"link_id": link, "item_id": id, "save_as": "/in/capped.pdf", "max_bytes": 1000}),
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (422, Some("limit_exceeded")),
        "{v}"
    );
    assert!(!ws.join("in/capped.pdf").exists());
    // A file that is not there: Graph's 404 is invalid_input; then 403, 401 twice.
    let (status, v) = ms
        .step(
            "onedrive-download",
            Some("run-7"),
            json!({"link_id": link, "path": "/Documents/none.pdf", "save_as": "/in/x"}),
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_input")),
        "{v}"
    );
    assert!(
        v["message"].as_str().unwrap().contains("itemNotFound"),
        "{v}"
    );
    ms.graph.inject([GraphFailure::status(403)]);
    let (status, v) = ms
        .step(
            "onedrive-download",
            Some("run-7"),
            json!({"link_id": link, "item_id": id, "save_as": "/in/x"}),
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (403, Some("insufficient_scope")),
        "{v}"
    );
    ms.graph
        .inject([GraphFailure::status(401), GraphFailure::status(401)]);
    let (status, v) = ms
        .step(
            "onedrive-download",
            Some("run-7"),
            json!({"link_id": link, "item_id": id, "save_as": "/in/x"}),
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (401, Some("token_revoked")),
        "{v}"
    );
    ms.graph.inject([
        GraphFailure {
            status: 429,
            retry_after: Some(1),
        },
        GraphFailure::status(401),
    ]);
    let (status, v) = ms
        .step(
            "onedrive-download",
            Some("run-7"),
            json!({"link_id": link, "item_id": id, "save_as": "/in/again.pdf"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(std::fs::read(ws.join("in/again.pdf")).unwrap(), report);
    // Neither path nor id: refused by the input schema.
    let (status, v) = ms
        .step(
            "onedrive-download",
            Some("run-7"),
            json!({"link_id": link, "save_as": "/in/x"}),
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_input")),
        "{v}"
    );

    // --- upload: small in one PUT ---
    let small = pattern(200_000, 5);
    std::fs::write(ws.join("small.bin"), &small).unwrap();
    ms.graph.clear_requests();
    let (status, v) = ms
        .step(
            "onedrive-upload",
            Some("run-7"),
            json!({"link_id": link, "file_path": "/small.bin", "path": "/Uploads/small.bin"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["upload"], "simple");
    assert_eq!(v["output"]["name"], "small.bin");
    assert_eq!(ms.graph.drive_file("/Uploads/small.bin").unwrap(), small);
    let reqs = ms.graph.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "PUT");
    assert_eq!(
        reqs[0].path,
        "/v1.0/me/drive/root:/Uploads/small.bin:/content"
    );
    assert_eq!(
        reqs[0].query_pairs(),
        vec![(
            "@microsoft.graph.conflictBehavior".to_string(),
            "replace".to_string()
        )]
    );
    assert_eq!(reqs[0].body, small, "body bytes identical");
    // conflict_behavior fail on an existing name: Graph's 409 is invalid_input.
    let (status, v) = ms
        .step(
            "onedrive-upload",
            Some("run-7"),
            json!({"link_id": link, "file_path": "/small.bin", "path": "/Uploads/small.bin", "conflict_behavior": "fail"}),
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_input")),
        "{v}"
    );

    // --- upload: large through an upload session, chunks of 320 KiB multiples ---
    let large = pattern(5_000_000, 6);
    std::fs::write(ws.join("large.bin"), &large).unwrap();
    ms.graph.clear_requests();
    let (status, v) = ms
        .step(
            "onedrive-upload",
            Some("run-7"),
            json!({"link_id": link, "file_path": "/large.bin", "path": "/Uploads/large.bin", "chunk_kib": 1280}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["upload"], "upload_session");
    assert_eq!(v["output"]["chunks"], 4);
    assert_eq!(v["output"]["size"], 5_000_000);
    assert_eq!(
        ms.graph.drive_file("/Uploads/large.bin").unwrap(),
        large,
        "file identical"
    );
    let reqs = ms.graph.requests();
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(
        reqs[0].path,
        "/v1.0/me/drive/root:/Uploads/large.bin:/createUploadSession"
    );
    let session: serde_json::Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(
        session["item"]["@microsoft.graph.conflictBehavior"],
        "replace"
    );
    let chunks: Vec<_> = reqs
        .iter()
        .filter(|r| r.host == GraphHost::Transfer)
        .collect();
    assert_eq!(chunks.len(), 4);
    let unit = 1280 * 1024;
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.method, "PUT");
        assert!(
            c.header("authorization").is_none(),
            "no token on the upload URL"
        );
        let start = i * unit;
        let end = (start + unit).min(large.len()) - 1;
        assert_eq!(
            c.header("content-range").unwrap(),
            format!("bytes {start}-{end}/5000000")
        );
        assert_eq!(c.body, large[start..=end], "chunk {i} bytes");
    }
    // A chunk size that is not a multiple of 320 KiB is refused by the input schema.
    let (status, v) = ms
        .step(
            "onedrive-upload",
            Some("run-7"),
            json!({"link_id": link, "file_path": "/large.bin", "path": "/Uploads/x.bin", "chunk_kib": 1000}),
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_input")),
        "{v}"
    );
    // The host checks the link's scopes before the module runs: this link has no
    // Contacts.Read, and Graph hears nothing.
    ms.graph.clear_requests();
    let (status, v) = ms
        .step("microsoft-contacts", None, json!({"link_id": link}))
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (403, Some("insufficient_scope")),
        "{v}"
    );
    assert!(ms.graph.requests().is_empty());
    // And the next step runs normally.
    let (status, v) = ms
        .step(
            "onedrive-upload",
            Some("run-7"),
            json!({"link_id": link, "file_path": "/small.bin", "path": "/Uploads/again.bin", "force_session": true}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["upload"], "upload_session");
    assert_eq!(v["output"]["chunks"], 1);
    assert_eq!(ms.graph.drive_file("/Uploads/again.bin").unwrap(), small);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onedrive_from_the_cli() {
    let ms = Microsoft::start(&["Files.Read", "Files.ReadWrite"]);
    let link = ms.connect("microsoft").await;
    let ws = tempfile::tempdir().unwrap();
    let bytes = pattern(700_000, 11);
    std::fs::write(ws.path().join("up.bin"), &bytes).unwrap();
    let out = ms
        .run_module(
            "onedrive-upload",
            Some(ws.path()),
            &json!({"link_id": link, "file_path": "/up.bin", "path": "/Docs/up.bin", "force_session": true, "chunk_kib": 320}),
        )
        .ok_json();
    assert_eq!(out["chunks"], 3, "{out}");
    assert_eq!(ms.graph.drive_file("/Docs/up.bin").unwrap(), bytes);
    let out = ms
        .run_module(
            "onedrive-download",
            Some(ws.path()),
            &json!({"link_id": link, "path": "/Docs/up.bin", "save_as": "/down.bin"}),
        )
        .ok_json();
    assert_eq!(out["size"], 700_000, "{out}");
    assert_eq!(std::fs::read(ws.path().join("down.bin")).unwrap(), bytes);
    ms.graph.inject([GraphFailure::status(404)]);
    let out = ms.run_module(
        "onedrive-download",
        Some(ws.path()),
        &json!({"link_id": link, "path": "/Docs/up.bin", "save_as": "/x.bin"}),
    );
    assert_eq!(out.error_name().as_deref(), Some("invalid_input"));
}
