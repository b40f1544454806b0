//! The HTTP edge in process: the router the server runs (`server::router` over a host
//! from the composition root), driven with `tower::ServiceExt::oneshot`, no socket. These
//! pin the API's one error envelope: every failure is `{"error": <name>, "message"}` with
//! the catalogue's status, and a step answers its report whether it failed before the
//! sandbox or inside it.

use axum::body::Body;
use flow8_host::config::HostConfig;
use flow8_host::error::ErrorName;
use flow8_host::server::{auth, router};
use flow8_tests::in_process_host;
use http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

struct Edge {
    app: axum::Router,
    token: String,
    _host: flow8_host::app::Host,
    _data: tempfile::TempDir,
}

async fn edge() -> Edge {
    let data = tempfile::tempdir().unwrap();
    let host = in_process_host(HostConfig::default(), data.path()).await;
    let (token, _) = auth::create_token(&host.store, "company-a", "alice", false, "t")
        .await
        .unwrap();
    Edge {
        app: router(host.api_state()),
        token,
        _host: host,
        _data: data,
    }
}

impl Edge {
    async fn call(&self, method: &str, uri: &str, body: Option<&str>) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {}", self.token));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(body.map(|b| Body::from(b.to_string())).unwrap_or_default())
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "{method} {uri}: the answer is not JSON: {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, value)
    }
}

fn assert_envelope(status: StatusCode, v: &Value, name: ErrorName) {
    assert_eq!(v["error"], name.as_str(), "{v}");
    assert_eq!(status.as_u16(), name.http_status(), "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

#[tokio::test]
async fn every_refusal_of_the_edge_is_a_named_envelope() {
    let e = edge().await;
    let (s, v) = e.call("GET", "/api/v1/no-such-thing", None).await;
    assert_envelope(s, &v, ErrorName::NoSuchRoute);
    // A known route with a method it does not take: a body, not an empty 405.
    let (s, v) = e.call("PUT", "/api/v1/steps", Some("{}")).await;
    assert_envelope(s, &v, ErrorName::MethodNotAllowed);
    let (s, v) = e.call("GET", "/api/v1/admin/components", None).await;
    assert_envelope(s, &v, ErrorName::AdminRequired);
    let unauthenticated = Edge {
        token: "f8_not-a-token".into(),
        ..e
    };
    let (s, v) = unauthenticated.call("GET", "/api/v1/modules", None).await;
    assert_envelope(s, &v, ErrorName::Unauthorized);
}

#[tokio::test]
async fn a_step_answers_its_report_whether_it_fails_before_or_inside_the_sandbox() {
    let e = edge().await;
    // Refused before the sandbox: malformed JSON, a body of the wrong shape, limits out
    // of range. Each is a report with `status: error`, the name and a message.
    for (body, name) in [
        ("{\"module_ref\": ", ErrorName::InvalidJson),
        ("{\"module_ref\": 5}", ErrorName::InvalidInput),
        (
            "{\"name\": \"s\", \"module_ref\": \"hostile\", \"limits\": {\"memory_mib\": 17592186044416}}",
            ErrorName::InvalidInput,
        ),
    ] {
        let (s, v) = e.call("POST", "/api/v1/steps", Some(body)).await;
        assert_envelope(s, &v, name);
        assert_eq!(v["status"], "error", "{v}");
        assert_eq!(v["log"], json!([]), "{v}");
        assert!(
            v["error"].is_string(),
            "the error is a name, not an object: {v}"
        );
    }
    // Inside the sandbox: the module crashes.
    let (s, v) = e
        .call(
            "POST",
            "/api/v1/steps",
            Some(&json!({"name": "s", "module_ref": "hostile", "input_mapping": {"attack": "panic"}}).to_string()),
        )
        .await;
    assert_envelope(s, &v, ErrorName::ModuleError);
    assert_eq!(
        (v["status"].as_str(), v["name"].as_str()),
        (Some("error"), Some("s"))
    );
    assert_eq!(v["module"]["name"], "hostile");
    // And a step that works.
    let (s, v) = e
        .call(
            "POST",
            "/api/v1/steps",
            Some(
                &json!({"name": "s", "module_ref": "hostile", "input_mapping": {"attack": "ok"}})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("ok")),
        "{v}"
    );
    assert_eq!(v["output"]["ok"], true);
}

#[tokio::test]
async fn a_handler_that_panics_answers_internal_error_and_the_host_goes_on() {
    let data = tempfile::tempdir().unwrap();
    let host = in_process_host(HostConfig::default(), data.path()).await;
    let state = host.api_state();
    // A route that panics, wrapped in the same edge as every API route.
    let app = flow8_host::server::edge(axum::Router::new().route(
        "/boom",
        axum::routing::get(|| async {
            if std::hint::black_box(true) {
                panic!("a handler bug");
            }
            "unreachable"
        }),
    ))
    .with_state(state.clone());
    for _ in 0..2 {
        let resp = app
            .clone()
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .expect("an answer, not a dropped connection");
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let v: Value = serde_json::from_slice(
            &axum::body::to_bytes(resp.into_body(), 1 << 16)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(v["error"], "internal_error", "{v}");
        assert!(
            !v["message"].as_str().unwrap().contains("a handler bug"),
            "{v}"
        );
    }
    // The rest of the API still answers.
    let resp = router(state)
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// Every number from outside is range-checked before any arithmetic and refused by a
/// named `invalid_input` that names the field and its range; after each refusal the
/// next step on the same host runs normally.
#[tokio::test]
async fn numbers_from_outside_are_range_checked() {
    let e = edge().await;
    // Query parameters. 4294967295 days overflowed the date arithmetic and the handler
    // panicked; -1 and 1.5 were type errors that named no range.
    for days in ["4294967295", "0", "-1", "1.5", "NaN", "1e400"] {
        let (s, v) = e
            .call(
                "GET",
                &format!("/api/v1/integrations/links?expiring_within_days={days}"),
                None,
            )
            .await;
        assert_envelope(s, &v, ErrorName::InvalidInput);
        assert_eq!(
            v["message"], "expiring_within_days must be a whole number 1-3650",
            "{days}: {v}"
        );
    }
    // Step limits: 17592186044416 MiB (and a huge output_kib) overflowed a
    // multiplication, a panic in debug builds and a wrapped cap in release.
    for (field, value, range) in [
        ("memory_mib", "17592186044416", "1-64"),
        ("output_kib", "18014398509481984", "1-1024"),
        ("memory_mib", "-1", "1-64"),
        ("output_kib", "0.5", "1-1024"),
        ("open_files", "1e300", "16-256"),
        ("workspace_mib", "18446744073709551615", "1-256"),
        ("workspace_files", "-5", "1-1000"),
    ] {
        let body = format!(
            r#"{{"name": "s", "module_ref": "hostile", "limits": {{"{field}": {value}}}}}"#
        );
        let (s, v) = e.call("POST", "/api/v1/steps", Some(&body)).await;
        assert_envelope(s, &v, ErrorName::InvalidInput);
        assert_eq!(
            v["message"],
            format!("limits.{field} must be a whole number {range}"),
            "{body}: {v}"
        );
        let ok = json!({"name": "s", "module_ref": "hostile", "input_mapping": {"attack": "ok"}});
        let (s, v) = e.call("POST", "/api/v1/steps", Some(&ok.to_string())).await;
        assert_eq!(
            (s, v["status"].as_str()),
            (StatusCode::OK, Some("ok")),
            "{v}"
        );
    }
}

/// The audit log's paging: an offset near u64::MAX overflowed `offset + limit` (a panic
/// in debug builds); both numbers are refused by name outside their range.
#[tokio::test]
async fn audit_paging_numbers_are_range_checked() {
    let e = edge().await;
    let (token, _) = auth::create_token(&e._host.store, "company-a", "root", true, "t")
        .await
        .unwrap();
    let admin = Edge { token, ..e };
    for (query, message) in [
        (
            "offset=18446744073709551615",
            "offset must be a whole number 0-1000000000",
        ),
        ("offset=-1", "offset must be a whole number 0-1000000000"),
        ("limit=0", "limit must be a whole number 1-500"),
        ("limit=501", "limit must be a whole number 1-500"),
        ("limit=2.5", "limit must be a whole number 1-500"),
    ] {
        let (s, v) = admin
            .call("GET", &format!("/api/v1/admin/audit?{query}"), None)
            .await;
        assert_envelope(s, &v, ErrorName::InvalidInput);
        assert_eq!(v["message"], message, "{query}: {v}");
    }
    let (s, v) = admin
        .call(
            "GET",
            "/api/v1/admin/audit?limit=500&offset=1000000000",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["entries"], json!([]), "{v}");
}

/// What the framework refuses on its own (a path segment or query that is not UTF-8
/// once decoded, a query of the wrong shape) answers the API's JSON envelope, not a
/// plain-text 400.
#[tokio::test]
async fn the_frameworks_own_refusals_are_named_envelopes() {
    let e = edge().await;
    for uri in [
        "/api/v1/modules/%FF",
        "/api/v1/integrations/slack/%C3%28",
        "/api/v1/integrations/links?needs_reconnect=maybe",
        "/api/v1/integrations/links?service=a&service=b",
        "/api/v1/integrations/authorize",
    ] {
        let method = if uri.contains("/slack/") {
            "DELETE"
        } else {
            "GET"
        };
        let (s, v) = e.call(method, uri, None).await;
        assert_envelope(s, &v, ErrorName::InvalidInput);
    }
}

/// Every body is a JSON object: serde would read a struct from an array (`[]` filled
/// every optional field of a connect session, and a link was made; schemathesis found
/// it), so arrays, strings and numbers are refused by name, and objects still pass.
#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_refused_by_name() {
    let e = edge().await;
    for uri in ["/api/v1/integrations/connect-sessions", "/api/v1/steps"] {
        for body in ["[]", " [\"slack\"]", "\"x\"", "3", "null"] {
            let (s, v) = e.call("POST", uri, Some(body)).await;
            assert_envelope(s, &v, ErrorName::InvalidInput);
            assert!(
                v["message"].as_str().unwrap_or("").contains("JSON object"),
                "{uri} {body}: {v}"
            );
        }
        let (s, v) = e.call("POST", uri, Some("[1,")).await;
        assert_envelope(s, &v, ErrorName::InvalidJson);
    }
    // An object goes on to the handler: no OAuth provider is configured here.
    let (s, v) = e
        .call("POST", "/api/v1/integrations/connect-sessions", Some("{}"))
        .await;
    assert_envelope(s, &v, ErrorName::NotConfigured);
}

/// `POST /api/v1/steps` per company: past its burst a company is told `429
/// rate_limit_exceeded` with `Retry-After`, and another company's steps run.
#[tokio::test]
async fn a_company_over_its_step_rate_is_told_when_to_retry_and_others_run() {
    let data = tempfile::tempdir().unwrap();
    let mut config = HostConfig::default();
    config.rate_limits.steps_per_second = 0.01;
    config.rate_limits.steps_burst = 2;
    let host = in_process_host(config, data.path()).await;
    let token = |company: &'static str| {
        let store = host.store.clone();
        async move {
            auth::create_token(&store, company, "u", false, "t")
                .await
                .unwrap()
                .0
        }
    };
    let (a, b) = (token("company-a").await, token("company-b").await);
    let app = router(host.api_state());
    let step = |token: &str| {
        Request::post("/api/v1/steps")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"name": "s", "module_ref": "hostile", "input_mapping": {"attack": "ok"}})
                    .to_string(),
            ))
            .unwrap()
    };
    for _ in 0..2 {
        let r = app.clone().oneshot(step(&a)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = app.clone().oneshot(step(&a)).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=101).contains(&retry), "{retry}");
    let v: Value =
        serde_json::from_slice(&axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap())
            .unwrap();
    assert_envelope(
        StatusCode::TOO_MANY_REQUESTS,
        &v,
        ErrorName::RateLimitExceeded,
    );
    assert_eq!(v["retry_after_seconds"], retry, "{v}");
    // Another company is not held back by company A's rate.
    let r = app.clone().oneshot(step(&b)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // /metrics is the operator's: off until a metrics token is configured.
    let r = app
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// Issue 18 item 6 over the API: a step body's `pinned_to` (an earlier report's) confines
/// the step, the report says it is tainted and passes the pins on, and a malformed pin
/// is refused as bad input. The next step, with no taint, is not confined.
#[tokio::test]
async fn a_steps_pinned_to_confines_it_and_comes_back_in_its_report() {
    let e = edge().await;
    let taint =
        json!([{"credential": "api", "service": "http", "pins": ["https://api.example.com/v1/"]}]);
    let body = json!({"name": "s2", "module_ref": "hostile", "pinned_to": taint,
        "input_mapping": {"attack": "http", "url": "http://127.0.0.1:9/steal"}});
    let (s, v) = e
        .call("POST", "/api/v1/steps", Some(&body.to_string()))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["output"]["error"]["kind"], "forbidden", "{v}");
    assert!(
        v["output"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("derived from credential `api` (http) of an earlier step"),
        "{v}"
    );
    assert_eq!(
        (&v["tainted"], &v["pinned_to"]),
        (&json!(true), &taint),
        "{v}"
    );

    let bad = json!({"module_ref": "hostile", "input_mapping": {"attack": "ok"},
        "pinned_to": [{"credential": "api", "service": "http", "pins": ["not a pin"]}]});
    let (s, v) = e
        .call("POST", "/api/v1/steps", Some(&bad.to_string()))
        .await;
    assert_envelope(s, &v, ErrorName::InvalidInput);

    let (s, v) = e
        .call(
            "POST",
            "/api/v1/steps",
            Some(&json!({"module_ref": "hostile", "input_mapping": {"attack": "ok"}}).to_string()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (&v["tainted"], &v["pinned_to"]),
        (&json!(false), &json!([])),
        "{v}"
    );
}

/// A well-formed workspace name that is not there is a missing resource (`404
/// not_found`), not a malformed body: the contract check sends such bodies as valid.
#[tokio::test]
async fn a_step_naming_a_workspace_that_is_not_there_is_not_found() {
    let e = edge().await;
    let body =
        json!({"module_ref": "hostile", "workspace": "nope", "input_mapping": {"attack": "ok"}});
    let (s, v) = e
        .call("POST", "/api/v1/steps", Some(&body.to_string()))
        .await;
    assert_envelope(s, &v, ErrorName::NotFound);
    assert_eq!(v["status"], "error", "{v}");
}
