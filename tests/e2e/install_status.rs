//! An install still compiling when the host answers: with `module_install.
//! answer_within_seconds: 0` every install over the API is answered `202 Accepted`,
//! marked `compiling`, with a status URL (also the `Location` header) that later reads
//! `installed` (and the module runs) or `failed` with the error's name; the status is
//! the installing company's admins' only. With the default wait, a small module's
//! install is answered `201` as before (the other install tests).

use flow8_tests::api_client::{call, call_api};
use flow8_tests::wat_guest::WatGuest;
use flow8_tests::{Cli, ServerProcess, create_token};
use serde_json::{Value, json};

/// Read the status URL, waiting on the host for the install to end (`wait_seconds`, a
/// long poll the host answers when the install ends), until it is no longer compiling.
async fn until_finished(server: &ServerProcess, token: &str, status_url: &str) -> Value {
    for _ in 0..4 {
        let url = server.url(&format!("{status_url}?wait_seconds=30"));
        let (s, v) = call("GET", &url, token, None, &[]).await;
        assert_eq!(s, 200, "{v}");
        if v["status"] != "compiling" {
            return v;
        }
    }
    panic!("still compiling after two minutes of waiting on the host");
}

/// Install `bytes`: answered 202, then the status ends `failed` with error `name` and a
/// message.
async fn failed_as(server: &ServerProcess, token: &str, bytes: Vec<u8>, name: &str) {
    let (s, v) = call(
        "POST",
        &server.url("/api/v1/admin/modules"),
        token,
        Some(("application/wasm", bytes)),
        &[],
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let done = until_finished(server, token, v["status_url"].as_str().unwrap()).await;
    assert_eq!(
        (done["status"].as_str(), done["error"].as_str()),
        (Some("failed"), Some(name)),
        "{done}"
    );
    assert!(done["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_answered_as_compiling_tells_how_it_ended() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config.yml");
    std::fs::write(&config, "module_install:\n  answer_within_seconds: 0\n").unwrap();
    let mut cli = Cli::new();
    cli.env
        .push(("FLOW8_CONFIG".into(), config.display().to_string()));
    let admin = create_token(&cli, "acme", "alice", true);
    let member = create_token(&cli, "acme", "bob", false);
    let other_admin = create_token(&cli, "globex", "gina", true);
    let shared = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&cli, shared.path(), &[]);
    let install_url = server.url("/api/v1/admin/modules");

    // A module that compiles: 202, compiling, then installed, and it runs.
    let bytes = WatGuest::with_schema("slow-to-say", json!({"type": "object"})).component();
    let size = bytes.len();
    let answer = call_api(
        "POST",
        &install_url,
        &admin,
        Some(("application/wasm", bytes)),
        &[],
    )
    .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let v = &answer.body;
    assert_eq!(v["status"], "compiling");
    assert_eq!(v["size"], size);
    assert_eq!(v["digest"].as_str().map(str::len), Some(64), "{v}");
    let status_url = v["status_url"].as_str().unwrap().to_string();
    let id = v["install_id"].as_str().unwrap();
    assert_eq!(status_url, format!("/api/v1/admin/modules/installs/{id}"));
    assert_eq!(answer.header("location"), Some(status_url.as_str()));

    // The status is the company's admins': a member is refused, another company's admin
    // finds nothing.
    let (s, e) = call("GET", &server.url(&status_url), &member, None, &[]).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (403, Some("admin_required")),
        "{e}"
    );
    let (s, e) = call("GET", &server.url(&status_url), &other_admin, None, &[]).await;
    assert_eq!((s, e["error"].as_str()), (404, Some("not_found")), "{e}");

    let too_long = server.url(&format!("{status_url}?wait_seconds=31"));
    let (s, e) = call("GET", &too_long, &admin, None, &[]).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("invalid_input")),
        "{e}"
    );

    let done = until_finished(&server, &admin, &status_url).await;
    assert_eq!(done["status"], "installed", "{done}");
    assert_eq!(done["module"]["name"], "slow-to-say");
    assert_eq!(done["module"]["version"], "0.1.0");
    assert_eq!(done["module"]["digest"], v["digest"]);
    let step = json!({"module_ref": "slow-to-say", "input_mapping": {}});
    let (s, r) = call(
        "POST",
        &server.url("/api/v1/steps"),
        &member,
        Some(("application/json", step.to_string().into_bytes())),
        &[],
    )
    .await;
    assert_eq!((s, r["status"].as_str()), (200, Some("ok")), "{r}");

    // The same version again: the conflict arrives through the status, not lost.
    let again = WatGuest::with_schema("slow-to-say", json!({"type": "object"})).component();
    failed_as(&server, &admin, again, "conflict").await;

    // A file with a component's header that does not compile: failed, invalid_module.
    let mut broken = b"\0asm\x0d\x00\x01\x00".to_vec();
    broken.extend_from_slice(&[0xff; 64]);
    failed_as(&server, &admin, broken, "invalid_module").await;

    let (s, e) = call(
        "GET",
        &server.url("/api/v1/admin/modules/installs/inst_000000000000000000000000"),
        &admin,
        None,
        &[],
    )
    .await;
    assert_eq!((s, e["error"].as_str()), (404, Some("not_found")), "{e}");
    // Nothing failed is listed: the module list holds the one that installed.
    let (s, list) = call("GET", &server.url("/api/v1/modules"), &admin, None, &[]).await;
    assert_eq!(s, 200);
    let names: Vec<&str> = list["modules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names, ["slow-to-say"], "{list}");
}
