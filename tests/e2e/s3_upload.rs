//! The s3-upload module against a real S3 server (`s3s-fs`, which verifies SigV4):
//! the host signs and streams, small files in one PUT and large ones in parts; a wrong
//! secret is refused by the server; S3's errors come back named; and the module never
//! holds the secret key.

use flow8_tests::s3_server::{ACCESS_KEY_ID, S3Server, SECRET_ACCESS_KEY};
use flow8_tests::{Cli, wasm_dir};
use serde_json::json;

fn create_component(cli: &Cli, name: &str, endpoint: &str, secret: &str) {
    let body = json!({
        "name": name,
        "kind": "storage",
        "config": {
            "provider": "s3",
            "bucket": "flow8-artifacts",
            "endpoint": endpoint,
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": secret
        }
    });
    cli.run_with_stdin(&["components", "create", "-"], &body.to_string())
        .ok_json();
}

fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn upload(
    cli: &Cli,
    workspace: &std::path::Path,
    input: serde_json::Value,
    bind: &str,
) -> flow8_tests::CliOutput {
    let input_path = cli.data_dir.path().join("s3-input.json");
    std::fs::write(&input_path, input.to_string()).unwrap();
    cli.run(&[
        "run-module",
        "s3-upload",
        input_path.to_str().unwrap(),
        "--workspace",
        workspace.to_str().unwrap(),
        "--bind",
        &format!("storage={bind}"),
        "--allow-loopback",
    ])
}

#[test]
fn small_and_large_files_round_trip_through_s3() {
    let s3 = S3Server::start(&["flow8-artifacts"]);
    let cli = Cli::new();
    create_component(&cli, "s3-local", &s3.endpoint(), SECRET_ACCESS_KEY);
    let workspace = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(workspace.path().join("tmp")).unwrap();

    // The flow8 document's example: /tmp/invoice.pdf inside the step's workspace.
    let small = pseudo_random_bytes(300_000, 7);
    std::fs::write(workspace.path().join("tmp/invoice.pdf"), &small).unwrap();
    let out = upload(
        &cli,
        workspace.path(),
        json!({"bucket": "flow8-artifacts", "key": "invoices/2026-04/invoice-001.pdf", "file_path": "/tmp/invoice.pdf", "acl": "private"}),
        "s3-local",
    )
    .ok_json();
    assert_eq!(out["size"], 300_000);
    assert_eq!(out["parts"], 0);
    assert!(!out["etag"].as_str().unwrap().is_empty(), "{out}");
    assert_eq!(
        out["url"],
        format!(
            "{}/flow8-artifacts/invoices/2026-04/invoice-001.pdf",
            s3.endpoint()
        )
    );
    assert_eq!(
        std::fs::read(s3.object_path("flow8-artifacts", "invoices/2026-04/invoice-001.pdf"))
            .unwrap(),
        small
    );

    // Above the multipart threshold: uploaded in parts, bytes identical.
    let large = pseudo_random_bytes(20 * 1024 * 1024 + 12_345, 11);
    std::fs::write(workspace.path().join("big.bin"), &large).unwrap();
    let out = upload(
        &cli,
        workspace.path(),
        json!({"key": "big/big.bin", "file_path": "big.bin"}),
        "s3-local",
    )
    .ok_json();
    assert_eq!(out["parts"], 3, "{out}");
    assert_eq!(out["size"], large.len());
    assert_eq!(
        std::fs::read(s3.object_path("flow8-artifacts", "big/big.bin")).unwrap(),
        large
    );
}

#[test]
fn s3_errors_come_back_named() {
    let s3 = S3Server::start(&["flow8-artifacts"]);
    let cli = Cli::new();
    create_component(
        &cli,
        "s3-wrong",
        &s3.endpoint(),
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYWRONGKEY00",
    );
    create_component(&cli, "s3-right", &s3.endpoint(), SECRET_ACCESS_KEY);
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(workspace.path().join("a.txt"), "hello").unwrap();

    let out = upload(
        &cli,
        workspace.path(),
        json!({"key": "a.txt", "file_path": "a.txt"}),
        "s3-wrong",
    );
    assert_eq!(
        out.error_name().as_deref(),
        Some("access_denied"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("SignatureDoesNotMatch"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("WRONGKEY"));
    assert!(!s3.object_path("flow8-artifacts", "a.txt").exists());

    // (s3s-fs creates buckets on PUT, unlike AWS, so NoSuchBucket is covered by the
    // host's unit tests of S3 error mapping.) A bucket name S3 would refuse:
    let out = upload(
        &cli,
        workspace.path(),
        json!({"bucket": "Bad_Bucket", "key": "a.txt", "file_path": "a.txt"}),
        "s3-right",
    );
    assert_eq!(
        out.error_name().as_deref(),
        Some("invalid_input"),
        "{out:?}"
    );
    assert!(out.stderr.contains("bucket"), "{}", out.stderr);

    let out = upload(
        &cli,
        workspace.path(),
        json!({"key": "a.txt", "file_path": "../../etc/passwd"}),
        "s3-right",
    );
    assert_eq!(
        out.error_name().as_deref(),
        Some("invalid_input"),
        "{out:?}"
    );
    let out = upload(
        &cli,
        workspace.path(),
        json!({"key": "a.txt", "file_path": "missing.txt"}),
        "s3-right",
    );
    assert_eq!(
        out.error_name().as_deref(),
        Some("invalid_input"),
        "{out:?}"
    );
}

fn run_hostile(
    cli: &Cli,
    workspace: &std::path::Path,
    input: &std::path::Path,
) -> serde_json::Value {
    cli.run(&[
        "run-module",
        wasm_dir().join("hostile_guest.wasm").to_str().unwrap(),
        input.to_str().unwrap(),
        "--workspace",
        workspace.to_str().unwrap(),
        "--bind",
        "s3=s3-local",
        "--allow-loopback",
    ])
    .ok_json()
}

#[test]
fn the_secret_key_never_reaches_the_module() {
    let s3 = S3Server::start(&["flow8-artifacts"]);
    let cli = Cli::new();
    create_component(&cli, "s3-local", &s3.endpoint(), SECRET_ACCESS_KEY);
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(
        workspace.path().join("f.bin"),
        pseudo_random_bytes(50_000, 3),
    )
    .unwrap();
    let input_path = cli.data_dir.path().join("scan.json");
    let needle: Vec<u8> = SECRET_ACCESS_KEY.bytes().map(|b| b ^ 0x5a).collect();
    std::fs::write(
        &input_path,
        json!({"attack": "s3_then_scan", "key": "scan/f.bin", "file_path": "f.bin", "needle_xor": needle}).to_string(),
    )
    .unwrap();
    let out = run_hostile(&cli, workspace.path(), &input_path);
    // The upload worked (so the host had and used the secret)...
    assert_eq!(out["upload"]["size"], 50_000, "{out}");
    assert!(s3.object_path("flow8-artifacts", "scan/f.bin").exists());
    // ...and the module found it nowhere it can look.
    assert_eq!(out["needle_len"], 40);
    assert_eq!(out["config_has_secret"], false, "{out}");
    assert_eq!(out["memory_hits"], 0, "{out}");

    // Control: the same scan does find the secret when the module reads it on purpose
    // (so the zero above means something).
    std::fs::write(
        &input_path,
        json!({"attack": "s3_then_scan", "key": "scan/g.bin", "file_path": "f.bin", "needle_xor": needle, "read_first": true}).to_string(),
    )
    .unwrap();
    let out = run_hostile(&cli, workspace.path(), &input_path);
    assert!(out["memory_hits"].as_u64().unwrap() >= 1, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_through_the_rest_api_uses_the_steps_workspace() {
    let s3 = S3Server::start(&["flow8-artifacts"]);
    let cli = Cli::new();
    let admin = flow8_tests::create_token(&cli, "company-a", "alice", true);
    let server = flow8_tests::ServerProcess::start(&cli, &wasm_dir(), &[]);
    let http = reqwest::Client::new();
    let body = json!({"name": "s3-prod", "kind": "storage", "config": {"provider": "s3", "bucket": "flow8-artifacts",
        "endpoint": s3.endpoint(), "access_key_id": ACCESS_KEY_ID, "secret_access_key": SECRET_ACCESS_KEY}});
    let r = http
        .post(server.url("/api/v1/admin/components"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    // flow8 put the step's file in its workspace.
    let ws = cli.data_dir.path().join("workspaces/company-a/run-42/tmp");
    std::fs::create_dir_all(&ws).unwrap();
    let bytes = pseudo_random_bytes(70_000, 5);
    std::fs::write(ws.join("invoice.pdf"), &bytes).unwrap();
    // The flow8 document's step, with the S3 component bound and the run's workspace.
    let step = json!({"name": "upload-document", "module_ref": "s3-upload", "workspace": "run-42",
        "bindings": {"storage": "s3-prod"},
        "input_mapping": {"bucket": "flow8-artifacts", "key": "invoices/2026-04/invoice-001.pdf",
            "file_path": "/tmp/invoice.pdf", "acl": "private"}});
    let r = http
        .post(server.url("/api/v1/steps"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(step.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["size"], 70_000);
    assert_eq!(
        std::fs::read(s3.object_path("flow8-artifacts", "invoices/2026-04/invoice-001.pdf"))
            .unwrap(),
        bytes
    );
    // Another company's steps cannot name this workspace: theirs is a different
    // directory, where no such workspace exists (404, as for any missing workspace).
    let other = flow8_tests::create_token(&cli, "company-b", "bob", true);
    let r = http
        .post(server.url("/api/v1/steps"))
        .bearer_auth(&other)
        .header("content-type", "application/json")
        .body(step.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["error"], "not_found", "{answer}");
    let step_escape =
        json!({"module_ref": "s3-upload", "workspace": "../company-a/run-42", "input_mapping": {}});
    let r = http
        .post(server.url("/api/v1/steps"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(step_escape.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}
