//! `just demo`: the flow8 host end to end on this machine, with nothing installed. It
//! starts a local HTTP server, stores an API-key component in the embedded store (the
//! secret encrypted at rest), runs the http-request module with that component bound,
//! and shows what the server received: the credential the host attached, which the
//! module never saw.

use flow8_tests::{RecordingServer, Reply};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn host(
    bin: &str,
    data_dir: &Path,
    modules: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(bin)
        .args([
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--modules-dir",
            modules,
        ])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("run flow8-host");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().expect("wait for flow8-host");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn main() -> ExitCode {
    let bin = arg("--host-bin").unwrap_or_else(|| "target/debug/flow8-host".into());
    let modules =
        arg("--modules-dir").unwrap_or_else(|| "target/wasm/wasm32-wasip2/release".into());
    let data_dir = PathBuf::from(arg("--data-dir").unwrap_or_else(|| "target/demo-data".into()));

    let server = RecordingServer::start();
    server.script([Reply::json(
        200,
        serde_json::json!({"document_id": "doc_001", "status": "analyzed"}),
    )]);
    println!("1. A local API is listening on {}", server.url(""));

    let token = "Bearer demo-7c1f9a2e4b";
    let body = serde_json::json!({
        "name": "demo-api",
        "kind": "http",
        "config": {"provider": "http", "base_url": server.url(""), "auth_value": token, "max_retries": 1}
    });
    // A rerun replaces the component an earlier run stored; a first run has none, and
    // asking to delete it would print a `not_found` error that reads like a failure.
    let (listed, existing) = host(&bin, &data_dir, &modules, &["components", "list"], None);
    if !listed {
        return ExitCode::FAILURE;
    }
    let earlier = serde_json::from_str::<Vec<serde_json::Value>>(&existing)
        .unwrap_or_default()
        .iter()
        .any(|c| c["name"] == "demo-api");
    if earlier
        && !host(
            &bin,
            &data_dir,
            &modules,
            &["components", "delete", "demo-api"],
            None,
        )
        .0
    {
        return ExitCode::FAILURE;
    }
    let (ok, created) = host(
        &bin,
        &data_dir,
        &modules,
        &["components", "create", "-"],
        Some(&body.to_string()),
    );
    if !ok {
        return ExitCode::FAILURE;
    }
    println!(
        "2. Stored component `demo-api` in the embedded store at {} (its token is encrypted; the answer shows none):\n{created}",
        data_dir.display()
    );

    let input = data_dir.join("demo-input.json");
    std::fs::write(
        &input,
        serde_json::json!({"url": "/process", "method": "POST", "body": {"document_id": "doc_001", "action": "analyze"}}).to_string(),
    )
    .unwrap();
    println!(
        "3. flow8-host run-module http-request {} --bind request=demo-api --allow-loopback",
        input.display()
    );
    let (ok, output) = host(
        &bin,
        &data_dir,
        &modules,
        &[
            "run-module",
            "http-request",
            input.to_str().unwrap(),
            "--bind",
            "request=demo-api",
            "--allow-loopback",
        ],
        None,
    );
    println!("{output}");
    if !ok {
        return ExitCode::FAILURE;
    }
    let reqs = server.requests();
    let Some(r) = reqs.first() else {
        eprintln!("the server received nothing");
        return ExitCode::FAILURE;
    };
    let auth = r.header("authorization").unwrap_or("(none)");
    println!(
        "4. The server received {} {} with Authorization: {}…",
        r.method,
        r.uri,
        &auth[..auth.len().min(12)]
    );
    if auth != token {
        eprintln!("the credential did not arrive");
        return ExitCode::FAILURE;
    }
    println!("   The host attached the credential; the module never held it. Demo OK.");
    ExitCode::SUCCESS
}
