//! google-drive-upload and google-drive-share end to end against the Google fake
//! (setup in `gmail_send.rs`): a workspace file uploaded with Drive's resumable upload
//! (the metadata, the session URI, the bytes identical and streamed by the host), the
//! file id and webViewLink in the output, a failed session started again; then the file
//! shared with a user and with anyone (sendNotificationEmail only where Drive takes
//! it); Drive's errors under flow8's names; a link of another service refused; the CLI.

use crate::gmail_send::{GoogleSetup, pseudo_random};
use flow8_tests::google_fake::GoogleFailure;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_file_is_uploaded_to_drive_and_shared() {
    let s = GoogleSetup::start().await;
    let ws = s.workspace("drive-1");
    let bytes = pseudo_random(3 * 1024 * 1024 + 17, 5);
    std::fs::write(ws.join("report.pdf"), &bytes).unwrap();
    let upload = json!({"link_id": s.link_id, "file_path": "/report.pdf", "name": "Report April.pdf",
        "folder_id": "1FoLdEr_Id-42", "mime_type": "application/pdf", "description": "monthly"});
    let (status, v) = s
        .step("google-drive-upload", upload.clone(), Some("drive-1"))
        .await;
    assert_eq!(status, 200, "{v}");
    let out = &v["output"];
    let id = out["id"].as_str().unwrap().to_string();
    assert_eq!(out["name"], "Report April.pdf");
    assert_eq!(out["mimeType"], "application/pdf");
    assert_eq!(out["size"], bytes.len());
    assert_eq!(
        out["webViewLink"],
        format!("https://drive.google.com/file/d/{id}/view?usp=drivesdk")
    );

    let calls = s.google.calls();
    assert_eq!(calls.len(), 2, "a session, then the bytes");
    let (start, put) = (&calls[0], &calls[1]);
    assert_eq!(
        (start.method.as_str(), start.path.as_str()),
        ("POST", "/upload/drive/v3/files")
    );
    assert_eq!(
        start.query_param("uploadType").as_deref(),
        Some("resumable")
    );
    assert_eq!(
        start.query_param("fields").as_deref(),
        Some("id,name,mimeType,size,webViewLink,parents")
    );
    assert_eq!(
        start.json(),
        json!({"name": "Report April.pdf", "parents": ["1FoLdEr_Id-42"], "mimeType": "application/pdf", "description": "monthly"})
    );
    assert_eq!(start.header("content-type"), Some("application/json"));
    assert_eq!(
        start.header("x-upload-content-type"),
        Some("application/pdf")
    );
    assert_eq!(
        start.header("x-upload-content-length"),
        Some(bytes.len().to_string().as_str())
    );
    assert_eq!(
        (put.method.as_str(), put.path.as_str()),
        ("PUT", "/upload/drive/v3/files")
    );
    assert!(put.query_param("upload_id").is_some(), "{}", put.query);
    assert!(put.body == bytes, "the file's bytes are identical");
    assert_eq!(
        put.token, start.token,
        "the token goes with the session too"
    );
    assert!(
        s.oauth
            .access_tokens_issued()
            .contains(start.token.as_ref().unwrap())
    );
    let files = s.google.files();
    assert_eq!(files[0].resource["id"], id.as_str());
    assert_eq!(files[0].resource["parents"], json!(["1FoLdEr_Id-42"]));

    // A session that fails (503 on the PUT) is started again, the whole file again.
    let n = s.google.calls().len();
    s.google.inject([GoogleFailure::status(503).on("PUT")]);
    let (status, v) = s
        .step("google-drive-upload", upload.clone(), Some("drive-1"))
        .await;
    assert_eq!(status, 200, "{v}");
    let calls = s.calls_since(n);
    let seen: Vec<(&str, u16)> = calls
        .iter()
        .map(|c| (c.method.as_str(), c.status))
        .collect();
    assert_eq!(
        seen,
        [("POST", 200), ("PUT", 503), ("POST", 200), ("PUT", 200)]
    );
    assert!(calls[3].body == bytes);
    // 403 insufficient scope and 401 (expired, refreshed once) on the session start.
    s.google.inject([GoogleFailure::status(403)]);
    let answer = s
        .step("google-drive-upload", upload.clone(), Some("drive-1"))
        .await;
    GoogleSetup::assert_error(&answer, 403, "insufficient_scope");
    s.google.inject([GoogleFailure::status(401)]);
    let (status, v) = s
        .step("google-drive-upload", upload.clone(), Some("drive-1"))
        .await;
    assert_eq!(status, 200, "{v}");
    // A file that is not in the workspace: nothing is sent.
    let n = s.google.calls().len();
    let answer = s
        .step(
            "google-drive-upload",
            json!({"link_id": s.link_id, "file_path": "/missing.bin"}),
            Some("drive-1"),
        )
        .await;
    GoogleSetup::assert_error(&answer, 400, "invalid_input");
    assert_eq!(s.google.calls().len(), n);

    // Share with a user, no notification.
    let share = json!({"link_id": s.link_id, "file_id": id, "role": "commenter", "type": "user",
        "email_address": "ada@example.com", "send_notification_email": false});
    let (status, v) = s.step("google-drive-share", share.clone(), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["output"],
        json!({"id": v["output"]["id"], "type": "user", "role": "commenter", "emailAddress": "ada@example.com"})
    );
    let call = s.google.calls().pop().unwrap();
    assert_eq!(
        (call.method.as_str(), call.path.clone()),
        ("POST", format!("/drive/v3/files/{id}/permissions"))
    );
    assert_eq!(
        call.query_param("sendNotificationEmail").as_deref(),
        Some("false")
    );
    assert_eq!(
        call.query_param("supportsAllDrives").as_deref(),
        Some("true")
    );
    assert_eq!(
        call.json(),
        json!({"role": "commenter", "type": "user", "emailAddress": "ada@example.com"})
    );
    // Anyone with the link, and a domain: no notification parameters (Drive refuses them).
    let (status, v) = s
        .step(
            "google-drive-share",
            json!({"link_id": s.link_id, "file_id": id, "role": "reader", "type": "anyone"}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["id"], "anyoneWithLink");
    let call = s.google.calls().pop().unwrap();
    assert_eq!(call.query_param("sendNotificationEmail"), None);
    let (status, v) = s
        .step("google-drive-share", json!({"link_id": s.link_id, "file_id": id, "role": "writer", "type": "domain", "domain": "example.com"}), None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["domain"], "example.com");
    assert_eq!(s.google.files()[0].permissions.len(), 3);
    // Input Drive would refuse is refused before the call.
    let n = s.google.calls().len();
    for bad in [
        json!({"link_id": s.link_id, "file_id": id, "role": "reader", "type": "anyone", "send_notification_email": true}),
        json!({"link_id": s.link_id, "file_id": id, "role": "reader", "type": "user"}),
        json!({"link_id": s.link_id, "file_id": id, "role": "owner", "type": "user", "email_address": "a@example.com"}),
        json!({"link_id": s.link_id, "file_id": "../x", "role": "reader", "type": "anyone"}),
    ] {
        let answer = s.step("google-drive-share", bad.clone(), None).await;
        GoogleSetup::assert_error(&answer, 400, "invalid_input");
    }
    assert_eq!(s.google.calls().len(), n);
    // No such file: Drive's 404 is invalid_input; a 429 is waited out.
    let answer = s
        .step("google-drive-share", json!({"link_id": s.link_id, "file_id": "nOsUcHfIlE", "role": "reader", "type": "anyone"}), None)
        .await;
    GoogleSetup::assert_error(&answer, 400, "invalid_input");
    assert!(
        answer.1["message"]
            .as_str()
            .unwrap()
            .contains("File not found"),
        "{}",
        answer.1
    );
    s.google.inject([GoogleFailure::retry_after(429, 1)]);
    let (status, v) = s.step("google-drive-share", share.clone(), None).await;
    assert_eq!(status, 200, "{v}");

    // A link of another service: refused, nothing sent.
    let n = s.google.calls().len();
    let mut wrong = share.clone();
    wrong["link_id"] = json!(s.microsoft_link_id);
    let answer = s.step("google-drive-share", wrong, None).await;
    GoogleSetup::assert_error(&answer, 403, "access_denied");
    let mut wrong = upload.clone();
    wrong["link_id"] = json!(s.microsoft_link_id);
    let answer = s.step("google-drive-upload", wrong, Some("drive-1")).await;
    GoogleSetup::assert_error(&answer, 403, "access_denied");
    assert_eq!(s.google.calls().len(), n);

    // From the CLI, both modules.
    let out = s.run_module("google-drive-upload", &upload, &ws).ok_json();
    assert_eq!(out["size"], bytes.len(), "{out}");
    assert!(s.google.files().last().unwrap().bytes == bytes);
    let mut share = share.clone();
    share["file_id"] = out["id"].clone();
    let out = s.run_module("google-drive-share", &share, &ws).ok_json();
    assert_eq!(out["role"], "commenter", "{out}");
}
