//! Capability review at install: the install answers what a module asks for; where the
//! operator requires approvals, an installed module runs only once an admin approved
//! that set, a new version asking for nothing more carries the approval, and one asking
//! for more (a new host) needs a new one; approvals are audited. `credentials.get` is a
//! capability the manifest declares: undeclared, the read is refused; the operator may
//! forbid it for installed modules; no first-party module declares it.

use crate::oci_distribution::{call, shared_modules};
use flow8_tests::wat_guest::WatGuest;
use flow8_tests::{Cli, ServerProcess, create_token, wasm};
use serde_json::{Value, json};

fn guest(version: &str, hosts: &[&str]) -> Vec<u8> {
    let mut g = WatGuest::with_schema("reviewed", json!({"type": "object"}));
    g.manifest["version"] = json!(version);
    g.manifest["allowed_hosts"] = json!(hosts);
    g.component()
}

async fn install(server: &ServerProcess, token: &str, bytes: Vec<u8>) -> (u16, Value) {
    call(
        "POST",
        &server.url("/api/v1/admin/modules"),
        token,
        Some(("application/wasm", bytes)),
        &[],
    )
    .await
}

async fn run(server: &ServerProcess, token: &str, module_ref: &str, input: Value) -> (u16, Value) {
    let body = json!({"module_ref": module_ref, "input_mapping": input});
    call(
        "POST",
        &server.url("/api/v1/steps"),
        token,
        Some(("application/json", body.to_string().into_bytes())),
        &[],
    )
    .await
}

fn config(cli: &mut Cli, dir: &std::path::Path, text: &str) {
    let path = dir.join("review.yml");
    std::fs::write(&path, text).unwrap();
    cli.env
        .push(("FLOW8_CONFIG".into(), path.display().to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_that_adds_a_host_needs_a_new_approval() {
    let work = tempfile::tempdir().unwrap();
    let mut cli = Cli::new();
    config(
        &mut cli,
        work.path(),
        "module_review:\n  require_approval: true\n",
    );
    let admin = create_token(&cli, "acme", "alice", true);
    let member = create_token(&cli, "acme", "bob", false);
    let shared = shared_modules();
    let server = ServerProcess::start(&cli, shared.path(), &[]);
    let approve = |v: &str| server.url(&format!("/api/v1/admin/modules/reviewed@{v}/approval"));

    let (s, v) = install(
        &server,
        &admin,
        guest("0.1.0", &["https://api.example.com"]),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        v["capabilities"]["hosts"],
        json!(["https://api.example.com"])
    );
    assert_eq!(v["capabilities"]["reads_secrets"], false);
    assert_eq!(v["approval"]["approved"], false);
    let (s, v) = run(&server, &member, "reviewed", json!({})).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("approval_required")),
        "{v}"
    );
    // The host goes on serving other steps.
    let (_, v) = run(&server, &member, "http-request", json!({})).await;
    assert_eq!(v["error"], "invalid_input", "{v}");
    let (s, v) = call("POST", &approve("0.1.0"), &member, None, &[]).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("admin_required")),
        "{v}"
    );
    let (s, v) = call("POST", &approve("9.9.9"), &admin, None, &[]).await;
    assert_eq!((s, v["error"].as_str()), (404, Some("not_found")), "{v}");
    let (s, v) = call("POST", &approve("0.1.0"), &admin, None, &[]).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = run(&server, &member, "reviewed", json!({})).await;
    assert_eq!(s, 200, "{v}");

    // Nothing more: the approval carries.
    let (s, v) = install(
        &server,
        &admin,
        guest("0.2.0", &["https://api.example.com"]),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["approval"]["approved"], true);
    assert_eq!(v["approval"]["carried_from"], "0.1.0");
    let (s, v) = run(&server, &member, "reviewed@0.2.0", json!({})).await;
    assert_eq!(s, 200, "{v}");

    // A new host: the newest version waits for an approval, naming what is new; the
    // approved one still runs when asked for.
    let (s, v) = install(
        &server,
        &admin,
        guest(
            "0.3.0",
            &["https://api.example.com", "https://exfil.example.net"],
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["approval"]["approved"], false);
    let (s, v) = run(&server, &member, "reviewed", json!({})).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("approval_required")),
        "{v}"
    );
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("https://exfil.example.net"),
        "{v}"
    );
    let (s, v) = run(&server, &member, "reviewed@0.2.0", json!({})).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call("POST", &approve("0.3.0"), &admin, None, &[]).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = run(&server, &member, "reviewed", json!({})).await;
    assert_eq!(s, 200, "{v}");

    let (s, audit) = call(
        "GET",
        &server.url("/api/v1/admin/audit?action_type=module_approved"),
        &admin,
        None,
        &[],
    )
    .await;
    assert_eq!(s, 200);
    let text = audit.to_string();
    assert!(
        text.contains("reviewed@0.1.0") && text.contains("reviewed@0.3.0"),
        "{audit}"
    );
    assert!(
        text.contains("https://exfil.example.net"),
        "the approved set is recorded: {audit}"
    );
    assert!(server.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_get_must_be_declared_and_may_be_forbidden() {
    let work = tempfile::tempdir().unwrap();
    let mut cli = Cli::new();
    config(
        &mut cli,
        work.path(),
        "module_review:\n  forbid_credentials_get: true\n",
    );
    let admin = create_token(&cli, "acme", "alice", true);
    let component = json!({"name": "api", "kind": "http", "config": {"provider": "http", "base_url": "https://api.example.com", "auth_value": "k-123456789"}});
    let path = work.path().join("component.json");
    std::fs::write(&path, component.to_string()).unwrap();
    let created = cli
        .run(&[
            "--company",
            "acme",
            "components",
            "create",
            &path.display().to_string(),
        ])
        .ok_json();
    let shared = shared_modules();
    let server = ServerProcess::start(&cli, shared.path(), &[]);

    // The hostile guest declares credentials.get: refused at install here.
    let (s, v) = install(
        &server,
        &admin,
        std::fs::read(wasm("hostile_guest")).unwrap(),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (403, Some("forbidden")), "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("credentials.get"),
        "{v}"
    );

    // A module that did not declare it gets no secret, by name, and its next step runs.
    let (s, v) = install(
        &server,
        &admin,
        std::fs::read(wasm("undeclared_secret_guest")).unwrap(),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["capabilities"]["reads_secrets"], false);
    let body = json!({"module_ref": "undeclared-secret", "input_mapping": {}, "bindings": {"api": created["id"]}});
    let (s, v) = call(
        "POST",
        &server.url("/api/v1/steps"),
        &admin,
        Some(("application/json", body.to_string().into_bytes())),
        &[],
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("access_denied")),
        "{v}"
    );
    assert!(
        v["message"].as_str().unwrap().contains("credentials.get"),
        "{v}"
    );
    assert!(!v.to_string().contains("k-123456789"));
    let (s, v) = run(&server, &admin, "undeclared-secret", json!({"read": false})).await;
    assert_eq!((s, &v["output"]["ok"]), (200, &json!(true)), "{v}");
    assert!(server.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_first_party_module_reads_secrets() {
    let registry = flow8_tests::shared_registry();
    let found = registry.scan().await;
    let names: Vec<String> = found
        .iter()
        .filter_map(|e| e.module.as_ref().ok())
        .filter(|m| !m.manifest.name.contains("hostile") && m.manifest.name != "undeclared-secret")
        .map(|m| {
            assert!(
                !m.manifest.reads_secrets(),
                "{} declares credentials.get; first-party modules let the host attach credentials",
                m.manifest.name
            );
            m.manifest.name.clone()
        })
        .collect();
    assert!(names.iter().any(|n| n == "http-request"), "{names:?}");
    assert!(names.iter().any(|n| n == "slack-message"), "{names:?}");
}
