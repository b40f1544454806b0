//! Hostile modules on one host: each attack is stopped with a named error, and after
//! each one the next step on the same host runs normally. These run in-process on one
//! shared engine and registry (the "same host"), with a real store and vault.

use flow8_host::components::{self, NewComponent};
use flow8_host::config::HostConfig;
use flow8_host::runtime::error::ErrorName;
use flow8_host::runtime::sandbox::StepLimits;
use flow8_host::runtime::{StepReport, StepRequest};
use flow8_host::store::Store;
use flow8_tests::{RecordingServer, in_process_host};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const COMPANY: &str = "company-a";
const SECRET: &str = "Bearer hostile-canary-5e8d2b";

struct Host {
    host: flow8_host::app::Host,
    _data: tempfile::TempDir,
}

/// A host whose store holds an http component `api` pinned to `api_base`.
async fn host(allow_loopback: bool, api_base: &str) -> Host {
    let data = tempfile::tempdir().unwrap();
    let mut config = HostConfig::default();
    config.outbound.allow_loopback = allow_loopback;
    let host = in_process_host(config, data.path()).await;
    let new: NewComponent = serde_json::from_value(json!({
        "name": "api", "kind": "http",
        "config": {"provider": "http", "base_url": api_base, "auth_value": SECRET}
    }))
    .unwrap();
    host.store
        .insert_component(
            components::prepare(new, COMPANY, &host.vault, host.modules.catalogue()).unwrap(),
        )
        .await
        .unwrap();
    Host { host, _data: data }
}

impl Host {
    async fn run_with(&self, input: Value, bind_api: bool, limits: StepLimits) -> StepReport {
        let mut bindings = BTreeMap::new();
        if bind_api {
            bindings.insert("api".to_string(), "api".to_string());
        }
        self.host
            .runtime
            .run_step(StepRequest {
                company_id: COMPANY.into(),
                module_ref: "hostile".into(),
                input,
                bindings,
                limits: Some(limits),
                workspace: None,
                pinned_to: Vec::new(),
            })
            .await
    }

    async fn run(&self, input: Value) -> StepReport {
        self.run_with(input, false, StepLimits::default()).await
    }

    /// The host still serves a normal step.
    async fn assert_healthy(&self) {
        let r = self.run(json!({"attack": "ok", "n": 1})).await;
        let out = r.result.expect("a normal step after an attack");
        assert_eq!(out["ok"], true);
    }
}

fn error_of(r: &StepReport) -> (ErrorName, String) {
    match &r.result {
        Err(e) => (e.name, e.message.clone()),
        Ok(v) => panic!("expected an error, got output {v}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tight_loop_is_stopped_by_the_deadline() {
    let h = host(true, "http://127.0.0.1:9").await;
    let limits = StepLimits {
        deadline: Duration::from_millis(500),
        ..StepLimits::default()
    };
    let r = h.run_with(json!({"attack": "loop"}), false, limits).await;
    assert_eq!(error_of(&r).0, ErrorName::DeadlineExceeded, "{r:?}");
    assert!(r.duration_ms < 5_000.0, "stopped promptly: {r:?}");
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_refused() {
    let h = host(true, "http://127.0.0.1:9").await;
    let limits = StepLimits {
        memory_bytes: 16 * 1024 * 1024,
        ..StepLimits::default()
    };
    let r = h
        .run_with(json!({"attack": "memory_bomb"}), false, limits)
        .await;
    let (name, message) = error_of(&r);
    assert_eq!(name, ErrorName::MemoryLimitExceeded, "{message}");
    assert!(message.contains("16777216"), "{message}");
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_traps() {
    let h = host(true, "http://127.0.0.1:9").await;
    let r = h.run(json!({"attack": "recursion"})).await;
    let (name, message) = error_of(&r);
    assert_eq!(name, ErrorName::LimitExceeded, "{message}");
    assert!(message.contains("call stack"), "{message}");
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_output_is_refused() {
    let h = host(true, "http://127.0.0.1:9").await;
    let limits = StepLimits {
        output_bytes: 64 * 1024,
        ..StepLimits::default()
    };
    let r = h
        .run_with(
            json!({"attack": "big_output", "size": 200_000}),
            false,
            limits,
        )
        .await;
    assert_eq!(error_of(&r).0, ErrorName::OutputTooLarge, "{r:?}");
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_args_and_host_files_are_not_there() {
    let h = host(true, "http://127.0.0.1:9").await;
    let r = h
        .run(json!({"attack": "read_env", "paths": ["/etc/passwd", "/proc/self/environ", "../../../../etc/passwd", "/root"]}))
        .await;
    let out = r.result.expect("read_env returns what it found");
    assert_eq!(out["env"], json!({}), "{out}");
    let args = out["args"].as_array().unwrap();
    assert!(args.len() <= 1, "{out}");
    for (path, found) in out["files"].as_object().unwrap() {
        assert!(
            found.get("error").is_some(),
            "the module read host file {path}: {found}"
        );
    }
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_to_a_host_outside_the_manifest_is_refused() {
    let server = RecordingServer::start();
    let h = host(true, &server.url("")).await;
    // example.com is not in the hostile module's allowed hosts; nothing is resolved or sent.
    let r = h
        .run(json!({"attack": "http", "url": "http://example.com/"}))
        .await;
    let out = r.result.expect("the module reports the refusal");
    assert_eq!(out["error"]["kind"], "forbidden", "{out}");
    assert!(out.to_string().contains("allowed hosts"), "{out}");
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_and_metadata_addresses_are_refused_without_the_operators_allowance() {
    let server = RecordingServer::start();
    let strict = host(false, &server.url("")).await;
    let r = strict
        .run(json!({"attack": "http", "url": server.url("/x")}))
        .await;
    assert_eq!(r.result.unwrap()["error"]["kind"], "forbidden");
    let r = strict
        .run(json!({"attack": "http", "url": format!("http://localhost:{}/x", server.addr.port())}))
        .await;
    let out = r.result.unwrap();
    assert_eq!(
        out["error"]["kind"], "forbidden",
        "a name that resolves to loopback: {out}"
    );
    // The refusal does not tell the module what the name resolved to (that would map
    // the host's network through names the module controls).
    let message = out["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains("127.0.0.1") && !message.contains("::1"),
        "{message}"
    );
    assert!(server.requests().is_empty());

    // Allowing loopback does not open the cloud metadata service.
    let lenient = host(true, &server.url("")).await;
    let r = lenient
        .run(json!({"attack": "http", "url": "http://169.254.169.254/latest/meta-data/"}))
        .await;
    assert_eq!(r.result.unwrap()["error"]["kind"], "forbidden");
    let r = lenient
        .run(json!({"attack": "http", "url": server.url("/ok")}))
        .await;
    assert_eq!(r.result.unwrap()["status"], 200);
    assert_eq!(server.requests().len(), 1);
    strict.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbound_credential_is_refused() {
    let h = host(true, "http://127.0.0.1:9").await;
    let r = h
        .run(json!({"attack": "get_credential", "binding": "nope"}))
        .await;
    let out = r.result.expect("the module reports the refusal");
    assert_eq!(out["error"]["kind"], "access_denied", "{out}");
    // Declared but not bound for this step: refused too.
    let r = h
        .run(json!({"attack": "get_credential", "binding": "api"}))
        .await;
    assert_eq!(r.result.unwrap()["error"]["kind"], "access_denied");
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_cannot_be_sent_outside_its_service() {
    let api = RecordingServer::start();
    let elsewhere = RecordingServer::start();
    let h = host(true, &api.url("")).await;
    // localhost:<other port> is in the module's manifest, but not the credential's host.
    let exfil = format!("http://localhost:{}/steal", elsewhere.addr.port());

    // 1. Ask the host to attach it to a request elsewhere.
    let r = h
        .run_with(
            json!({"attack": "http", "url": exfil, "credential": "api"}),
            true,
            StepLimits::default(),
        )
        .await;
    let out = r.result.unwrap();
    assert_eq!(out["error"]["kind"], "forbidden", "{out}");

    // 2. Read it, then send it elsewhere in a header.
    let r = h
        .run_with(
            json!({"attack": "get_credential", "binding": "api", "send_to": exfil}),
            true,
            StepLimits::default(),
        )
        .await;
    let out = r.result.unwrap();
    assert!(out.to_string().contains("forbidden"), "{out}");
    assert!(
        !out.to_string().contains("hostile-canary"),
        "the secret leaked into the output: {out}"
    );
    assert!(
        elsewhere.requests().is_empty(),
        "the secret reached another server"
    );

    // Its own service still gets it, attached by the host.
    let r = h
        .run_with(
            json!({"attack": "http", "url": api.url("/ok"), "credential": "api"}),
            true,
            StepLimits::default(),
        )
        .await;
    assert_eq!(r.result.unwrap()["status"], 200);
    assert_eq!(api.requests()[0].header("authorization"), Some(SECRET));
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_cannot_set_the_headers_the_host_owns() {
    let api = RecordingServer::start();
    let h = host(true, &api.url("")).await;
    // The host attaches `api` in Authorization: a module's own value there is refused,
    // not silently replaced (and not sent beside it).
    let r = h
        .run_with(
            json!({"attack": "http", "url": api.url("/ok"), "credential": "api",
                   "headers": {"AUTHORIZATION": "Bearer the-module-s-own"}}),
            true,
            StepLimits::default(),
        )
        .await;
    let out = r.result.unwrap();
    assert_eq!(out["error"]["kind"], "invalid_input", "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("when it attaches credential `api`"),
        "{out}"
    );
    // Headers that shape the connection are the host's, with or without a credential.
    for header in ["Host", "Expect", "Proxy-Connection", "transfer-encoding"] {
        let r = h
            .run(json!({"attack": "http", "url": api.url("/ok"), "headers": {header: "x"}}))
            .await;
        let out = r.result.unwrap();
        assert_eq!(out["error"]["kind"], "invalid_input", "{header}: {out}");
    }
    assert!(api.requests().is_empty(), "{:?}", api.requests());
    // Without attachment, Authorization is the module's to send.
    let r = h
        .run(json!({"attack": "http", "url": api.url("/ok"),
                    "headers": {"Authorization": "Bearer the-module-s-own"}}))
        .await;
    assert_eq!(r.result.unwrap()["status"], 200);
    assert_eq!(
        api.requests()[0].header("authorization"),
        Some("Bearer the-module-s-own")
    );
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_pin_to_every_host_is_refused_not_honoured() {
    // A component whose stored `allowed_hosts` holds what creation refuses (an older
    // host, an import, a hand-edited store): the grant must fail, not pin the
    // credential to every host.
    let api = RecordingServer::start();
    let elsewhere = RecordingServer::start();
    let h = host(true, &api.url("")).await;
    let store = &h.host.store;
    let mut wide = store
        .find_component_by_name(COMPANY, "api")
        .await
        .unwrap()
        .unwrap();
    // A record of its own, its secret sealed for it (as the writer would have).
    let sealed = flow8_host::vault::Envelope::from_json(&wide.config["auth_value"]).unwrap();
    let secret = h
        .host
        .vault
        .decrypt(&sealed, &wide.seal_context("auth_value"))
        .unwrap();
    wide.id = flow8_host::store::new_object_id();
    let resealed = h
        .host
        .vault
        .encrypt(secret.expose(), &wide.seal_context("auth_value"));
    wide.config.insert("auth_value".into(), resealed.to_json());
    wide.name = "wide".into();
    wide.config
        .insert("allowed_hosts".into(), json!(["http://*:*"]));
    store.insert_component(wide).await.unwrap();
    let mut bindings = BTreeMap::new();
    bindings.insert("api".to_string(), "wide".to_string());
    let r = h
        .host
        .runtime
        .run_step(StepRequest {
            company_id: COMPANY.into(),
            module_ref: "hostile".into(),
            input: json!({"attack": "http", "url": elsewhere.url("/steal"), "credential": "api"}),
            bindings,
            limits: None,
            workspace: None,
            pinned_to: Vec::new(),
        })
        .await;
    assert!(
        elsewhere.requests().is_empty(),
        "the secret reached another server: {r:?}"
    );
    let (name, message) = error_of(&r);
    assert_eq!(name, ErrorName::InternalError, "{message}");
    assert!(message.contains("config.allowed_hosts[0]"), "{message}");
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workspace_is_the_only_filesystem() {
    let h = host(true, "http://127.0.0.1:9").await;
    let ws = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "outside").unwrap();
    let run = |input: Value| {
        let ws = ws.path().to_path_buf();
        let rt = h.host.runtime.clone();
        async move {
            rt.run_step(StepRequest {
                company_id: COMPANY.into(),
                module_ref: "hostile".into(),
                input,
                bindings: BTreeMap::new(),
                limits: None,
                workspace: Some(ws),
                pinned_to: Vec::new(),
            })
            .await
        }
    };
    let r =
        run(json!({"attack": "write_file", "path": "/tmp/invoice.pdf", "contents": "PDF"})).await;
    assert!(r.result.is_ok(), "{r:?}");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("tmp/invoice.pdf")).unwrap(),
        "PDF"
    );
    let r = run(json!({"attack": "read_file", "path": "tmp/invoice.pdf"})).await;
    assert_eq!(r.result.unwrap()["contents"], "PDF");

    let escape = format!(
        "../{}/secret.txt",
        outside.path().file_name().unwrap().to_string_lossy()
    );
    for path in [
        escape.as_str(),
        outside.path().join("secret.txt").to_str().unwrap(),
    ] {
        let r = run(json!({"attack": "read_file", "path": path})).await;
        let out = r.result.unwrap();
        assert!(
            out.get("error").is_some(),
            "read {path} outside the workspace: {out}"
        );
    }
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_a_module_error_and_stdout_lands_in_the_log() {
    let h = host(true, "http://127.0.0.1:9").await;
    let r = h.run(json!({"attack": "panic"})).await;
    assert_eq!(error_of(&r).0, ErrorName::ModuleError, "{r:?}");
    let r = h.run(json!({"attack": "log", "lines": 3})).await;
    assert!(r.result.is_ok());
    assert!(r.log.len() >= 3, "{:?}", r.log);
    h.assert_healthy().await;
}

/// A sandbox is reused for later steps (the pool keeps its memory resident between
/// them); nothing one step wrote may be readable by the next. The first step checks
/// that its own scan does find what it wrote, so a scanner that finds nothing cannot
/// pass this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_cannot_read_what_an_earlier_step_left_in_memory() {
    let h = host(false, "https://api.example.com").await;
    let needle: Vec<u8> = format!("left-behind-{:016x}", rand_u64())
        .bytes()
        .map(|b| b ^ 0x5a)
        .collect();
    for round in 0..3 {
        let planted = h
            .run(json!({"attack": "leave_in_memory", "needle_xor": needle}))
            .await
            .result
            .expect("planting step");
        assert!(
            planted["memory_hits"].as_u64().unwrap() > 1000,
            "round {round}: the module does not find what it just wrote: {planted}"
        );
        let scans = (0..8).map(|_| h.run(json!({"attack": "scan_memory", "needle_xor": needle})));
        for r in futures_util::future::join_all(scans).await {
            let out = r.result.expect("scanning step");
            assert_eq!(out["memory_hits"], 0, "round {round}: {out}");
            assert_eq!(out["left_behind"], 0, "round {round}: {out}");
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish()
}
