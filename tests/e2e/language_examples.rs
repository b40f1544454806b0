//! The JavaScript and Python example modules (`modules/examples/`, built by `just
//! examples`) run through the host as users run them: the CLI's `run-module` and
//! `POST /api/v1/steps` of `flow8-host serve`, each with an API-key component bound
//! that the host attaches, against a recording server. `js-fetch` uses standard
//! `fetch` (wasi:http) and names the binding in the `flow8-credential` header;
//! `python-echo` uses `flow8:integration/http`. A request to a host the module did not
//! declare, or with the credential to another host, is refused and never arrives.

use flow8_tests::{Cli, RecordingServer, Reply, ServerProcess, create_token, examples_dir};
use serde_json::{Value, json};
use std::sync::OnceLock;

const SECRET: &str = "Bearer example-canary-61d0e2";

/// The example's path, compiled into the tests' shared compile cache first: compiling a
/// 12-18 MB language runtime in a debug host takes longer than a step's deadline on a
/// busy machine, and a step counts loading its module against the deadline. Tests of
/// the same example wait for the one compile (`OnceLock`).
fn example(name: &str) -> String {
    static WARM: [OnceLock<()>; 2] = [OnceLock::new(), OnceLock::new()];
    let p = examples_dir().join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run `just examples` (or `just test`, which builds it first)",
        p.display()
    );
    // `just examples` names each one where a host reads it uncompiled.
    let bytes = std::fs::read(&p).unwrap();
    assert_eq!(
        flow8_host::runtime::name_hint::read(&bytes).as_deref(),
        Some(name)
    );
    let path = p.display().to_string();
    let slot = usize::from(name != "js-fetch");
    WARM[slot].get_or_init(|| {
        let out = Cli::new().run(&["modules", "inspect", &path]).ok_json();
        assert_eq!(out["name"], name, "{out}");
    });
    path
}

/// A CLI whose store holds the http component `partner-api` at `base_url`.
fn cli_with_component(base_url: &str) -> Cli {
    let cli = Cli::new();
    let body = json!({
        "name": "partner-api", "kind": "http",
        "config": {"provider": "http", "base_url": base_url, "auth_value": SECRET, "max_retries": 0}
    });
    cli.run_with_stdin(&["components", "create", "-"], &body.to_string())
        .ok_json();
    cli
}

fn input_file(cli: &Cli, v: &Value) -> String {
    let p = cli.data_dir.path().join("input.json");
    std::fs::write(&p, v.to_string()).unwrap();
    p.display().to_string()
}

/// `run-module` of `example` with `api` bound to the component, as a report.
fn run(cli: &Cli, example_name: &str, input: &Value) -> Value {
    let input = input_file(cli, input);
    let out = cli.run(&[
        "run-module",
        &example(example_name),
        &input,
        "--bind",
        "api=partner-api",
        "--allow-loopback",
        "--report",
    ]);
    out.json()
}

/// The module's request arrived with the credential the host attached, and only that.
fn assert_attached(server: &RecordingServer, body: Value) {
    let got = server.requests();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].uri, "/v1/echo");
    assert_eq!(got[0].header("authorization"), Some(SECRET));
    assert_eq!(got[0].header("flow8-credential"), None, "{:?}", got[0]);
    assert_eq!(serde_json::from_slice::<Value>(&got[0].body).unwrap(), body);
}

fn assert_ok_report(report: &Value) {
    assert_eq!(report["status"], "ok", "{report}");
    assert_eq!(report["output"]["status"], 200, "{report}");
    assert_eq!(
        report["output"]["body"],
        json!({"received": true}),
        "{report}"
    );
    let used = report["credentials_used"].as_array().unwrap();
    assert!(
        used.iter()
            .any(|u| u["binding"] == "api" && u["how"] == "attached"),
        "{report}"
    );
    assert!(!report.to_string().contains("example-canary"), "{report}");
}

#[test]
fn the_javascript_example_fetches_with_the_credential_the_host_attaches() {
    let server = RecordingServer::start();
    server.script([Reply::json(200, json!({"received": true}))]);
    let cli = cli_with_component(&server.url(""));
    let body = json!({"hello": "from JavaScript"});
    let report = run(
        &cli,
        "js-fetch",
        &json!({"url": server.url("/v1/echo"), "body": body}),
    );
    assert_ok_report(&report);
    assert_attached(&server, body);
}

#[test]
fn a_javascript_fetch_to_an_undeclared_host_is_refused() {
    let api = RecordingServer::start();
    let elsewhere = RecordingServer::start();
    let cli = cli_with_component(&api.url(""));
    // With the credential: not its host. Without: not among the module's hosts (it
    // declares none).
    for attach in [true, false] {
        let report = run(
            &cli,
            "js-fetch",
            &json!({"url": elsewhere.url("/steal"), "body": {"x": 1}, "attach": attach}),
        );
        assert_eq!(report["status"], "error", "{report}");
        assert_eq!(report["error"], "forbidden", "{report}");
        // The manifest declares no hosts, and the credential's host is another port:
        // refused before anything is sent, the reason in the step's log.
        let log = report["log"].to_string();
        let why = format!(
            "refused: {} is not among the module's allowed hosts",
            elsewhere.url("")
        );
        assert!(log.contains(&why), "{report}");
    }
    assert!(
        elsewhere.requests().is_empty(),
        "{:?}",
        elsewhere.requests()
    );
    // The same module on the same CLI still reaches its credential's host.
    api.script([Reply::json(200, json!({"received": true}))]);
    let report = run(
        &cli,
        "js-fetch",
        &json!({"url": api.url("/v1/echo"), "body": {"again": true}}),
    );
    assert_ok_report(&report);
}

#[test]
fn the_python_example_sends_with_the_credential_the_host_attaches() {
    let server = RecordingServer::start();
    let elsewhere = RecordingServer::start();
    server.script([Reply::json(200, json!({"received": true}))]);
    let cli = cli_with_component(&server.url(""));
    let body = json!({"hello": "from Python"});
    let report = run(
        &cli,
        "python-echo",
        &json!({"url": server.url("/v1/echo"), "body": body}),
    );
    assert_ok_report(&report);
    assert_attached(&server, body);
    let report = run(
        &cli,
        "python-echo",
        &json!({"url": elsewhere.url("/steal"), "body": {"x": 1}}),
    );
    assert_eq!(report["error"], "forbidden", "{report}");
    assert!(elsewhere.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_examples_run_as_api_steps_with_a_bound_component() {
    let server = RecordingServer::start();
    let cli = cli_with_component(&server.url(""));
    // Compiled once into the shared cache before the server loads them.
    example("js-fetch");
    example("python-echo");
    let host = ServerProcess::start(&cli, &examples_dir(), &[]);
    let token = create_token(&cli, "local", "author", false);
    let client = reqwest::Client::new();
    for (module, body) in [
        ("js-fetch", json!({"hello": "from JavaScript"})),
        ("python-echo", json!({"hello": "from Python"})),
    ] {
        server.script([Reply::json(200, json!({"received": true}))]);
        let before = server.requests().len();
        let step = json!({"name": "call", "module_ref": module,
            "input_mapping": {"url": server.url("/v1/echo"), "body": body},
            "bindings": {"api": "partner-api"}});
        let resp = client
            .post(host.url("/api/v1/steps"))
            .bearer_auth(&token)
            .json(&step)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let report: Value = resp.json().await.unwrap();
        assert_eq!(status, 200, "{module}: {report}");
        assert_ok_report(&report);
        let got = server.requests();
        assert_eq!(got.len(), before + 1, "{module}");
        assert_eq!(
            got[before].header("authorization"),
            Some(SECRET),
            "{module}"
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&got[before].body).unwrap(),
            body
        );
    }
}
