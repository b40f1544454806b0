//! The http-request module through the CLI against a real local HTTP server: what the
//! server received (including the credential the host attached) and what the CLI printed.

use flow8_tests::{Cli, RecordingServer, Reply};
use serde_json::json;

fn write_json(dir: &std::path::Path, name: &str, v: &serde_json::Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p.display().to_string()
}

#[test]
fn http_request_without_credentials_reaches_the_server_and_prints_the_output() {
    let server = RecordingServer::start();
    server.script([
        Reply::json(201, json!({"id": "doc_001", "state": "queued"}))
            .with_header("x-request-id", "r-42"),
    ]);
    let cli = Cli::new();
    let input = json!({
        "url": server.url("/process?x=1"),
        "method": "POST",
        "headers": {"Authorization": "Bearer token_123", "Content-Type": "application/json"},
        "body": {"document_id": "doc_001", "action": "analyze"}
    });
    let input = write_json(cli.data_dir.path(), "input.json", &input);
    let out = cli
        .run(&["run-module", "http-request", &input, "--allow-loopback"])
        .ok_json();

    assert_eq!(out["status"], 201);
    assert_eq!(out["body"], json!({"id": "doc_001", "state": "queued"}));
    assert_eq!(out["headers"]["x-request-id"], "r-42");

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.uri, "/process?x=1");
    // The flow author's own header (the flow8 document's example) is passed through.
    assert_eq!(r.header("authorization"), Some("Bearer token_123"));
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body, json!({"document_id": "doc_001", "action": "analyze"}));
}

#[test]
fn http_request_with_a_component_gets_the_credential_attached_by_the_host() {
    let server = RecordingServer::start();
    server.script([Reply::text(200, "plain answer")]);
    let cli = Cli::new();
    let secret = "Bearer cmp-secret-7f3a9c1e5b";
    let body = json!({
        "name": "partner-api",
        "kind": "http",
        "config": {
            "provider": "http",
            "base_url": server.url(""),
            "auth_header": "Authorization",
            "auth_value": secret,
            "timeout_seconds": 5,
            "max_retries": 0
        }
    });
    let created = cli.run_with_stdin(&["components", "create", "-"], &body.to_string());
    let created = created.ok_json();
    assert_eq!(created["name"], "partner-api");
    assert!(
        !created.to_string().contains("cmp-secret"),
        "create printed the secret: {created}"
    );

    let input = write_json(
        cli.data_dir.path(),
        "in.json",
        &json!({"url": "/v1/things", "method": "GET"}),
    );
    let out = cli.run(&[
        "run-module",
        "http-request",
        &input,
        "--bind",
        "request=partner-api",
        "--allow-loopback",
        "--report",
    ]);
    let report = out.ok_json();
    assert_eq!(report["status"], "ok", "{report}");
    assert_eq!(report["output"]["status"], 200);
    assert_eq!(report["output"]["body"], "plain answer");
    // The host says which credential the step used, and how: attached, not read.
    let used = report["credentials_used"].as_array().unwrap();
    assert!(
        used.iter()
            .any(|u| u["binding"] == "request" && u["how"] == "attached"),
        "{report}"
    );
    assert!(
        !used.iter().any(|u| u["how"] == "read"),
        "the module read the secret: {report}"
    );
    assert!(!out.stdout.contains("cmp-secret") && !out.stderr.contains("cmp-secret"));

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].uri, "/v1/things");
    assert_eq!(reqs[0].header("authorization"), Some(secret));

    // Listing components never shows the secret either.
    let list = cli.run(&["components", "list"]);
    assert!(!list.stdout.contains("cmp-secret"));
    assert_eq!(
        list.ok_json()[0]["config_summary"]["base_url"],
        server.url("")
    );
}

#[test]
fn http_request_retries_a_503_then_succeeds() {
    let server = RecordingServer::start();
    server.script([
        Reply::text(503, "busy").with_header("retry-after", "0"),
        Reply::json(200, json!({"ok": true})),
    ]);
    let cli = Cli::new();
    let input = write_json(
        cli.data_dir.path(),
        "in.json",
        &json!({"url": server.url("/flaky")}),
    );
    let out = cli
        .run(&["run-module", "http-request", &input, "--allow-loopback"])
        .ok_json();
    assert_eq!(out["status"], 200);
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn loopback_is_refused_unless_the_operator_allows_it() {
    let server = RecordingServer::start();
    let cli = Cli::new();
    let input = write_json(
        cli.data_dir.path(),
        "in.json",
        &json!({"url": server.url("/")}),
    );
    let out = cli.run(&["run-module", "http-request", &input]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.error_name().as_deref(), Some("forbidden"), "{out:?}");
    assert!(server.requests().is_empty());
}

#[test]
fn log_lines_of_a_step_name_its_company_module_and_destination() {
    let server = RecordingServer::start();
    server.script([Reply::json(200, json!({"ok": true}))]);
    let mut cli = Cli::new();
    cli.env
        .push(("FLOW8_LOG".into(), "flow8_host=debug".into()));
    cli.env.push(("FLOW8_LOG_JSON".into(), "1".into()));
    cli.env.push(("FLOW8_COMPANY".into(), "acme".into()));
    let input = write_json(
        cli.data_dir.path(),
        "input.json",
        &json!({"url": server.url("/ping")}),
    );
    let out = cli.run(&["run-module", "http-request", &input, "--allow-loopback"]);
    out.ok_json();
    // The outbound call's own line sits inside the step's span and the outbound span.
    let line = out
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "outbound answered")
        .unwrap_or_else(|| panic!("no outbound line in the log:\n{}", out.stderr));
    let spans = line["spans"].as_array().expect("the line lists its spans");
    let step = spans
        .iter()
        .find(|s| s["name"] == "step")
        .expect("a step span");
    assert_eq!(step["company"], "acme", "{line}");
    assert_eq!(step["module"], "http-request", "{line}");
    let outbound = spans
        .iter()
        .find(|s| s["name"] == "outbound")
        .expect("an outbound span");
    assert_eq!(outbound["host"], server.url(""), "{line}");
}
