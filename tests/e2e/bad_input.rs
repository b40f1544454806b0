//! Bad input gets one clear, named error: a file that is not wasm, a component of
//! another world, a module without a manifest or with a broken one, input that breaks
//! the module's schema, malformed JSON, an unknown module; and over the API, numbers
//! that once crashed a request.

use flow8_tests::{Cli, wasm};
use serde_json::json;

fn input_file(cli: &Cli, text: &str) -> String {
    let p = cli.data_dir.path().join("input.json");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn expect_error(out: &flow8_tests::CliOutput, name: &str, mentions: &str) {
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.error_name().as_deref(), Some(name), "{out:?}");
    assert!(
        out.stderr.to_lowercase().contains(&mentions.to_lowercase()),
        "stderr should mention `{mentions}`: {}",
        out.stderr
    );
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout on failure: {}",
        out.stdout
    );
}

#[test]
fn a_file_that_is_not_wasm_is_an_invalid_module() {
    let cli = Cli::new();
    let fake = cli.data_dir.path().join("fake.wasm");
    std::fs::write(&fake, b"#!/bin/sh\necho not wasm\n").unwrap();
    let input = input_file(&cli, "{}");
    let out = cli.run(&["run-module", fake.to_str().unwrap(), &input]);
    expect_error(&out, "invalid_module", "not WebAssembly");

    let truncated = cli.data_dir.path().join("truncated.wasm");
    let mut bytes = std::fs::read(wasm("http_request")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&truncated, bytes).unwrap();
    let out = cli.run(&["run-module", truncated.to_str().unwrap(), &input]);
    expect_error(&out, "invalid_module", "not a valid component");
}

#[test]
fn a_component_of_another_world_is_an_invalid_module() {
    let cli = Cli::new();
    let input = input_file(&cli, "{}");
    let out = cli.run(&[
        "run-module",
        wasm("command-guest").to_str().unwrap(),
        &input,
    ]);
    expect_error(&out, "invalid_module", "not a flow8 module");
}

#[test]
fn a_module_without_a_manifest_is_an_invalid_module() {
    let cli = Cli::new();
    let input = input_file(&cli, "{}");
    let out = cli.run(&[
        "run-module",
        wasm("no_manifest_guest").to_str().unwrap(),
        &input,
    ]);
    expect_error(&out, "invalid_module", "manifest");
}

#[test]
fn a_manifest_broader_than_allowed_is_refused_at_load() {
    let cli = Cli::new();
    let input = input_file(&cli, "{}");
    let out = cli.run(&[
        "run-module",
        wasm("bad_manifest_guest").to_str().unwrap(),
        &input,
    ]);
    expect_error(&out, "invalid_manifest", "allowed_hosts[0]");
}

#[test]
fn malformed_json_input_is_invalid_input() {
    let cli = Cli::new();
    let input = input_file(&cli, "{\"url\": \"http://x\",,}");
    let out = cli.run(&["run-module", "http-request", &input]);
    expect_error(&out, "invalid_input", "not valid JSON");
}

#[test]
fn input_that_breaks_the_schema_is_invalid_input_naming_the_field() {
    let cli = Cli::new();
    let input = input_file(&cli, r#"{"url": "http://127.0.0.1/", "method": 42}"#);
    let out = cli.run(&["run-module", "http-request", &input]);
    expect_error(&out, "invalid_input", "/method");
}

#[test]
fn an_unknown_module_is_module_not_found() {
    let cli = Cli::new();
    let input = input_file(&cli, "{}");
    let out = cli.run(&["run-module", "no-such-module", &input]);
    expect_error(&out, "module_not_found", "no-such-module");
    let out = cli.run(&["run-module", "http-request@9.9.9", &input]);
    expect_error(&out, "module_not_found", "9.9.9");
}

#[test]
fn modules_list_and_inspect_show_manifests() {
    let cli = Cli::new();
    let list = cli.run(&["modules", "list", "--json"]).ok_json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(names.contains(&"http-request"), "{list}");
    assert!(names.contains(&"hostile"), "{list}");
    // Broken files are listed with their error, not hidden and not fatal.
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|m| m["error"] == "invalid_manifest"),
        "{list}"
    );

    let m = cli.run(&["modules", "inspect", "http-request"]).ok_json();
    assert_eq!(m["name"], "http-request");
    assert_eq!(m["digest"].as_str().unwrap().len(), 64);
    assert_eq!(m["manifest"]["credentials"][0]["name"], "request");
}

/// Issue 17's two crashing requests over a real socket, with a member token: each is
/// answered (`400 invalid_input` naming the field and range), never a dropped
/// connection, and the next step on the same host runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_that_crashed_a_request_are_answered_by_name() {
    use flow8_tests::{ServerProcess, create_token, wasm_dir};
    let cli = Cli::new();
    let token = create_token(&cli, "company-a", "bob", false);
    let server = ServerProcess::start(&cli, &wasm_dir(), &[]);
    let http = reqwest::Client::new();
    let step = |body: serde_json::Value| {
        http.post(server.url("/api/v1/steps"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let resp = http
        .get(server.url("/api/v1/integrations/links?expiring_within_days=4294967295"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("an answer, not a closed connection");
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "invalid_input", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("expiring_within_days"),
        "{v}"
    );

    for limits in [
        serde_json::json!({"memory_mib": 17592186044416u64}),
        serde_json::json!({"output_kib": 18014398509481984u64}),
    ] {
        let field = limits.as_object().unwrap().keys().next().unwrap().clone();
        let resp = step(serde_json::json!({"name": "s", "module_ref": "hostile",
            "input_mapping": {"attack": "ok"}, "limits": limits}))
        .await
        .expect("an answer, not a closed connection");
        assert_eq!(resp.status(), 400);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"], "invalid_input", "{v}");
        let message = v["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("limits.{field}")) && message.contains("1-"),
            "{v}"
        );

        let resp = step(serde_json::json!({"name": "s", "module_ref": "hostile",
            "input_mapping": {"attack": "ok"}}))
        .await
        .unwrap();
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["status"], "ok", "{v}");
    }
}

#[test]
fn an_import_the_host_does_not_offer_is_refused_in_one_line_naming_it() {
    let cli = Cli::new();
    let guest = flow8_tests::wat_guest::WatGuest::with_schema("foreign-import", json!({}));
    let path = cli.data_dir.path().join("foreign.wasm");
    std::fs::write(
        &path,
        guest.component_with_imports(
            r#"(import "wasi:keyvalue/store@0.2.0-draft" (instance (export "ping" (func))))"#,
        ),
    )
    .unwrap();
    let input = input_file(&cli, "{}");
    let out = cli.run(&["run-module", path.to_str().unwrap(), &input]);
    expect_error(
        &out,
        "invalid_module",
        "imports `wasi:keyvalue/store@0.2.0-draft`, which this host does not offer",
    );
    // One line says it (the store's own warnings may precede it).
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(errors[0].contains("wasi:keyvalue/store"), "{}", out.stderr);
    // The same component without that import loads and runs.
    std::fs::write(&path, guest.component()).unwrap();
    let out = cli.run(&["run-module", path.to_str().unwrap(), &input]);
    assert_eq!(out.code, Some(0), "{out:?}");
}
