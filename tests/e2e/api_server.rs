//! The REST API over real HTTP: a `flow8-host serve` process on port 0, tokens made
//! with the CLI, and a real HTTP client. Token lifecycle, admin vs member, tenant
//! isolation on every route, component CRUD, a step that uses a bound component, the
//! audit log, module installs, bad input, and that no secret leaks anywhere.

use flow8_tests::bounded::{Answer, refused_past_the_bound};
use flow8_tests::{
    Cli, RecordingServer, Reply, ServerProcess, contains_bytes, create_token, wasm, wasm_dir,
};
use serde_json::{Value, json};

const CANARY: &str = "Bearer api-canary-3d9f1b7c2e";
const METRICS_TOKEN: &str = "operator-metrics-token-7f3a";

struct Api {
    client: reqwest::Client,
}

impl Api {
    fn new() -> Api {
        Api {
            client: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value, String) {
        let mut req = self
            .client
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, value, text)
    }
}

fn component_body(name: &str, base_url: &str) -> String {
    json!({
        "name": name,
        "kind": "http",
        "config": {"provider": "http", "base_url": base_url, "auth_value": CANARY, "max_retries": 0}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_and_tenant_isolation() {
    let mut cli = Cli::new();
    cli.env
        .push(("FLOW8_METRICS_TOKEN".into(), METRICS_TOKEN.into()));
    let admin_a = create_token(&cli, "company-a", "alice", true);
    let member_a = create_token(&cli, "company-a", "bob", false);
    let admin_b = create_token(&cli, "company-b", "carol", true);
    let server = ServerProcess::start(&cli, &wasm_dir(), &[]);
    let api = Api::new();
    let upstream = RecordingServer::start();

    // No token, a wrong token, a malformed header.
    let (s, v, _) = api
        .call("GET", &server.url("/api/v1/components"), None, None)
        .await;
    assert_eq!((s, v["error"].as_str()), (401, Some("unauthorized")));
    let (s, _, _) = api
        .call(
            "GET",
            &server.url("/api/v1/components"),
            Some("f8_nope"),
            None,
        )
        .await;
    assert_eq!(s, 401);

    // Members cannot use admin routes.
    let (s, v, _) = api
        .call(
            "POST",
            &server.url("/api/v1/admin/components"),
            Some(&member_a),
            Some(&component_body("x", &upstream.url(""))),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (403, Some("admin_required")));

    // Admin A creates a component: 201, config_summary, no credential.
    let (s, created, text) = api
        .call(
            "POST",
            &server.url("/api/v1/admin/components"),
            Some(&admin_a),
            Some(&component_body("partner-api", &upstream.url(""))),
        )
        .await;
    assert_eq!(s, 201, "{text}");
    assert_eq!(created["config_summary"]["base_url"], upstream.url(""));
    assert_eq!(created["is_default"], false);
    assert!(!text.contains("api-canary"));
    let id = created["id"].as_str().unwrap().to_string();

    // Company B sees nothing of it, on every route.
    for (method, path) in [
        ("GET", format!("/api/v1/admin/components/{id}")),
        ("DELETE", format!("/api/v1/admin/components/{id}")),
        ("POST", format!("/api/v1/admin/components/{id}/default")),
    ] {
        let (s, v, _) = api
            .call(method, &server.url(&path), Some(&admin_b), None)
            .await;
        assert_eq!(
            (s, v["error"].as_str()),
            (404, Some("not_found")),
            "{method} {path}"
        );
    }
    let (_, v, _) = api
        .call(
            "GET",
            &server.url("/api/v1/admin/components"),
            Some(&admin_b),
            None,
        )
        .await;
    assert_eq!(v["components"], json!([]));
    // B cannot bind A's component by name or id.
    for binding in ["partner-api", id.as_str()] {
        let step = json!({"name": "s", "module_ref": "http-request", "input_mapping": {"url": "/x"}, "bindings": {"request": binding}});
        let (s, v, _) = api
            .call(
                "POST",
                &server.url("/api/v1/steps"),
                Some(&admin_b),
                Some(&step.to_string()),
            )
            .await;
        assert_eq!(
            (s, v["error"].as_str()),
            (403, Some("access_denied")),
            "{v}"
        );
    }
    let (_, v, _) = api
        .call(
            "GET",
            &server.url("/api/v1/admin/audit"),
            Some(&admin_b),
            None,
        )
        .await;
    assert_eq!(v["entries"], json!([]), "B reads no audit of A");
    assert!(upstream.requests().is_empty());

    // A's member runs a step with the component bound: the host attaches the credential.
    upstream.script([Reply::json(200, json!({"done": true}))]);
    let step = json!({"name": "call-partner", "module_ref": "http-request",
        "input_mapping": {"url": "/v1/process", "method": "POST", "body": {"document_id": "doc_001"}},
        "bindings": {"request": "partner-api"}});
    let (s, report, text) = api
        .call(
            "POST",
            &server.url("/api/v1/steps"),
            Some(&member_a),
            Some(&step.to_string()),
        )
        .await;
    assert_eq!(s, 200, "{text}");
    assert_eq!(report["status"], "ok");
    assert_eq!(report["name"], "call-partner");
    assert_eq!(report["output"]["body"], json!({"done": true}));
    assert!(!text.contains("api-canary"));
    let got = upstream.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("authorization"), Some(CANARY));

    // Make default, then a step without explicit binding uses it.
    let (s, v, _) = api
        .call(
            "POST",
            &server.url(&format!("/api/v1/admin/components/{id}/default")),
            Some(&admin_a),
            None,
        )
        .await;
    assert_eq!((s, v["is_default"].as_bool()), (200, Some(true)));
    let step = json!({"module_ref": "http-request", "input_mapping": {"url": "/v1/default"}});
    let (s, _, text) = api
        .call(
            "POST",
            &server.url("/api/v1/steps"),
            Some(&member_a),
            Some(&step.to_string()),
        )
        .await;
    assert_eq!(s, 200, "{text}");
    assert_eq!(upstream.requests()[1].header("authorization"), Some(CANARY));

    // The audit log has the events, in flow8's shape, with no secret.
    let (s, audit, text) = api
        .call(
            "GET",
            &server.url("/api/v1/admin/audit?limit=10"),
            Some(&admin_a),
            None,
        )
        .await;
    assert_eq!(s, 200, "{text}");
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action_type"].as_str())
        .collect();
    assert!(actions.contains(&"component_created"), "{actions:?}");
    assert!(actions.contains(&"component_made_default"), "{actions:?}");
    assert!(actions.contains(&"credential_used"), "{actions:?}");
    let used = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action_type"] == "credential_used")
        .unwrap();
    assert_eq!(used["resource_id"], id.as_str());
    assert_eq!(used["after_state"]["module"], "http-request");
    assert_eq!(used["after_state"]["how"], "attached");
    assert!(used["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(!text.contains("api-canary"));
    let (_, page, _) = api
        .call(
            "GET",
            &server.url("/api/v1/admin/audit?limit=1&action_type=credential_used"),
            Some(&admin_a),
            None,
        )
        .await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_offset"], 1);
    let (s, v, _) = api
        .call(
            "GET",
            &server.url("/api/v1/admin/audit?limit=0"),
            Some(&admin_a),
            None,
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_input")));

    // Rotation (flow8's procedure): create v2, repoint, delete the old one.
    let (s, _, _) = api
        .call(
            "POST",
            &server.url("/api/v1/admin/components"),
            Some(&admin_a),
            Some(&component_body("partner-api-v2", &upstream.url(""))),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _, _) = api
        .call(
            "DELETE",
            &server.url(&format!("/api/v1/admin/components/{id}")),
            Some(&admin_a),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let step = json!({"module_ref": "http-request", "input_mapping": {"url": "/v2"}, "bindings": {"request": "partner-api-v2"}});
    let (s, _, _) = api
        .call(
            "POST",
            &server.url("/api/v1/steps"),
            Some(&member_a),
            Some(&step.to_string()),
        )
        .await;
    assert_eq!(s, 200);

    // Revoked tokens stop working: the CLI is another process, so within
    // `record_cache_seconds` (2 s by default) of the revocation.
    let token_id = cli
        .run(&["tokens", "list"])
        .ok_json()
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["user_id"] == "bob")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    cli.run(&["tokens", "revoke", &token_id]).ok_json();
    let revoked_at = std::time::Instant::now();
    let bound = flow8_host::config::DEFAULT_RECORD_CACHE;
    refused_past_the_bound(revoked_at, bound, || async {
        let (s, v, _) = api
            .call(
                "GET",
                &server.url("/api/v1/components"),
                Some(&member_a),
                None,
            )
            .await;
        if s == 200 {
            return Answer::Served(v.to_string());
        }
        assert_eq!(
            (s, v["message"].as_str()),
            (401, Some("this token was revoked"))
        );
        Answer::Refused
    })
    .await;
    let listed = cli.run(&["tokens", "list"]);
    assert!(!listed.stdout.contains("f8_"), "token list shows a token");

    // Metrics count the steps (for the operator's metrics token).
    let (_, _, metrics) = api
        .call("GET", &server.url("/metrics"), Some(METRICS_TOKEN), None)
        .await;
    assert!(
        metrics.contains("flow8_steps_total{module=\"http-request\",outcome=\"ok\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("flow8_step_duration_seconds_bucket"));
    // No step is running now; the pool's capacity is reported.
    assert!(
        metrics.contains("\nflow8_sandboxes_in_use 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nflow8_sandboxes_capacity 128\n"),
        "{metrics}"
    );

    // The canary is nowhere: not in the server's log, not in the data directory.
    let log = server.stderr.lock().unwrap().clone();
    assert!(!log.contains("api-canary"), "server log leaks the secret");
    for (path, bytes) in cli.data_files() {
        assert!(
            !contains_bytes(&bytes, b"api-canary"),
            "{} holds the secret",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_named_errors_and_writes_nothing() {
    let cli = Cli::new();
    let admin = create_token(&cli, "company-a", "alice", true);
    let server = ServerProcess::start(&cli, &wasm_dir(), &[]);
    let api = Api::new();
    let url = server.url("/api/v1/admin/components");
    let cases: Vec<(&str, u16, &str)> = vec![
        ("{\"name\": ", 400, "invalid_json"),
        ("[]", 400, "invalid_input"),
        ("{\"name\": 5, \"config\": {}}", 400, "invalid_input"),
        (
            "{\"name\": \"x\", \"config\": {\"provider\": \"http\", \"base_url\": \"https://a.example\"}, \"extra\": 1}",
            400,
            "invalid_input",
        ),
        (
            "{\"name\": \"x\", \"config\": {\"provider\": \"s3\", \"access_key_id\": \"AKIA-short\", \"secret_access_key\": \"x\"}}",
            400,
            "invalid_input",
        ),
        (
            "{\"name\": \"x\", \"config\": {\"provider\": \"carrier-pigeon\"}}",
            400,
            "invalid_input",
        ),
    ];
    for (body, status, name) in cases {
        let (s, v, text) = api.call("POST", &url, Some(&admin), Some(body)).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (status, Some(name)),
            "{body} -> {text}"
        );
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Too large.
    let big = format!(
        "{{\"name\": \"x\", \"config\": {{\"provider\": \"http\", \"base_url\": \"https://a.example\", \"pad\": \"{}\"}}}}",
        "y".repeat(2 * 1024 * 1024)
    );
    // The server answers 413 as soon as it sees the length and may close the connection
    // while the client is still sending; a client can then see the reset instead of the
    // answer. Try a few times: one answer must be the named 413.
    let mut answered = None;
    for _ in 0..5 {
        let sent = reqwest::Client::new()
            .post(&url)
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await;
        if let Ok(resp) = sent {
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            answered = Some((status, v["error"].as_str().map(str::to_string)));
            break;
        }
    }
    assert_eq!(answered, Some((413, Some("body_too_large".to_string()))));
    // Wrong content type.
    let resp = reqwest::Client::new()
        .post(&url)
        .header("authorization", format!("Bearer {admin}"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    // Nothing was written.
    let (_, v, _) = api.call("GET", &url, Some(&admin), None).await;
    assert_eq!(v["components"], json!([]));
    let (_, v, _) = api
        .call(
            "GET",
            &server.url("/api/v1/admin/audit"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(v["entries"], json!([]));

    // Steps: unknown fields, paths as module_ref, schema violations, limits above the host's.
    let steps = server.url("/api/v1/steps");
    for (body, status, name) in [
        (
            json!({"module_ref": "http-request", "input": {}}),
            400,
            "invalid_input",
        ),
        (
            json!({"module_ref": "/etc/passwd.wasm"}),
            400,
            "invalid_input",
        ),
        (
            json!({"module_ref": "http-request", "limits": {"deadline_seconds": 99999}}),
            400,
            "invalid_input",
        ),
    ] {
        let (s, v, text) = api
            .call("POST", &steps, Some(&admin), Some(&body.to_string()))
            .await;
        assert_eq!(
            (s, v["error"].as_str()),
            (status, Some(name)),
            "{body} -> {text}"
        );
    }
    let (s, v, _) = api
        .call(
            "POST",
            &steps,
            Some(&admin),
            Some(
                &json!({"module_ref": "http-request", "input_mapping": {"method": 7}}).to_string(),
            ),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_input")));
    let (s, v, _) = api
        .call(
            "POST",
            &steps,
            Some(&admin),
            Some(&json!({"module_ref": "nope"}).to_string()),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (404, Some("module_not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_exists_and_unknown_ones_do_not() {
    let cli = Cli::new();
    let admin = create_token(&cli, "company-a", "alice", true);
    let server = ServerProcess::start(&cli, &wasm_dir(), &[]);
    let api = Api::new();
    let (s, doc, _) = api
        .call("GET", &server.url("/openapi.json"), None, None)
        .await;
    assert_eq!(s, 200);
    let paths = doc["paths"].as_object().unwrap();
    // The document and the router's own table agree both ways, methods included.
    let served: std::collections::BTreeSet<(String, String)> = flow8_host::server::served_routes()
        .into_iter()
        .map(|(verb, path)| (verb.as_str().to_ascii_lowercase(), path.to_string()))
        .collect();
    let documented: std::collections::BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(|m| (m.clone(), path.clone()))
        })
        .collect();
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "served but not documented"
    );
    assert_eq!(
        documented.difference(&served).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not served"
    );
    for (path, ops) in paths {
        let concrete = path
            .replace("{id}", "000000000000000000000000")
            .replace("{module_ref}", "nothing@0.0.0")
            .replace("{service}", "slack")
            .replace("{link_id}", "000000000000000000000000")
            .replace("{token}", "no-such-token");
        for (method, op) in ops.as_object().unwrap() {
            let body = if method == "post" { Some("{}") } else { None };
            let (s, v, text) = api
                .call(
                    &method.to_uppercase(),
                    &server.url(&concrete),
                    Some(&admin),
                    body,
                )
                .await;
            assert_ne!(
                v["error"].as_str(),
                Some("no_such_route"),
                "{method} {path} is documented but not served"
            );
            assert_ne!(s, 405, "{method} {path}: {text}");
            if op.get("security").is_some() {
                let (s, _, _) = api
                    .call(&method.to_uppercase(), &server.url(&concrete), None, body)
                    .await;
                assert_eq!(s, 401, "{method} {path} answers without a token");
            }
            // Malformed bodies get a named 4xx, never a 5xx.
            if method == "post" && path != "/api/v1/admin/modules" {
                let (s, v, text) = api
                    .call(
                        "POST",
                        &server.url(&concrete),
                        Some(&admin),
                        Some("{\"oops\": "),
                    )
                    .await;
                assert!(
                    (400..500).contains(&s),
                    "{method} {path}: malformed JSON answered {s}: {text}"
                );
                assert!(v["error"].is_string(), "{method} {path}: {text}");
            }
        }
    }
    let (s, v, _) = api
        .call(
            "GET",
            &server.url("/api/v1/nothing-here"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (404, Some("no_such_route")));
    let (s, _, _) = api.call("GET", &server.url("/healthz"), None, None).await;
    assert_eq!(s, 200);
    let (s, _, _) = api.call("GET", &server.url("/readyz"), None, None).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_install_modules_for_their_company_only() {
    // A module directory with only the first-party module, so the hostile guest can be
    // installed under its own name.
    let shared = tempfile::tempdir().unwrap();
    std::fs::copy(
        wasm("http_request"),
        shared.path().join("http_request.wasm"),
    )
    .unwrap();
    let cli = Cli::new();
    let admin_a = create_token(&cli, "company-a", "alice", true);
    let member_a = create_token(&cli, "company-a", "bob", false);
    let admin_b = create_token(&cli, "company-b", "carol", true);
    let server = ServerProcess::start(&cli, shared.path(), &[]);
    let client = reqwest::Client::new();
    let install = |token: &str, bytes: Vec<u8>| {
        client
            .post(server.url("/api/v1/admin/modules"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/wasm")
            .body(bytes)
            .send()
    };
    let hostile = std::fs::read(wasm("hostile_guest")).unwrap();

    let r = install(&member_a, hostile.clone()).await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = install(&admin_a, b"not wasm".to_vec()).await.unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let r = install(&admin_a, std::fs::read(wasm("bad_manifest_guest")).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["error"], "invalid_manifest");
    let r = install(&admin_a, std::fs::read(wasm("http_request")).unwrap())
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        409,
        "a first-party name cannot be shadowed"
    );

    let r = install(&admin_a, hostile.clone()).await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let r = install(&admin_a, hostile.clone()).await.unwrap();
    assert_eq!(r.status().as_u16(), 409, "same version twice");

    let api = Api::new();
    let step = json!({"module_ref": "hostile", "input_mapping": {"attack": "ok"}}).to_string();
    let (s, v, _) = api
        .call(
            "POST",
            &server.url("/api/v1/steps"),
            Some(&member_a),
            Some(&step),
        )
        .await;
    assert_eq!((s, v["output"]["ok"].as_bool()), (200, Some(true)));
    let (s, v, _) = api
        .call(
            "POST",
            &server.url("/api/v1/steps"),
            Some(&admin_b),
            Some(&step),
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (404, Some("module_not_found")),
        "B cannot run A's module"
    );
    let (_, list, _) = api
        .call("GET", &server.url("/api/v1/modules"), Some(&admin_b), None)
        .await;
    assert!(!list.to_string().contains("\"hostile\""));
    let (_, list, _) = api
        .call("GET", &server.url("/api/v1/modules"), Some(&member_a), None)
        .await;
    assert!(list.to_string().contains("\"hostile\""));

    let (s, _, _) = api
        .call(
            "DELETE",
            &server.url("/api/v1/admin/modules/hostile@0.1.0"),
            Some(&admin_b),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, _, _) = api
        .call(
            "DELETE",
            &server.url("/api/v1/admin/modules/hostile@0.1.0"),
            Some(&admin_a),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, _, _) = api
        .call(
            "POST",
            &server.url("/api/v1/steps"),
            Some(&member_a),
            Some(&step),
        )
        .await;
    assert_eq!(s, 404);
    assert!(server.terminate(), "graceful shutdown exits 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_company_id_rule_for_tokens_steps_and_installs() {
    // A 100-character company id is within the rule: its admin installs a module and
    // runs a step with it, both through the API.
    let shared = tempfile::tempdir().unwrap();
    std::fs::copy(
        wasm("http_request"),
        shared.path().join("http_request.wasm"),
    )
    .unwrap();
    let cli = Cli::new();
    let long = "c".repeat(100);
    let admin = create_token(&cli, &long, "alice", true);
    let server = ServerProcess::start(&cli, shared.path(), &[]);
    let r = reqwest::Client::new()
        .post(server.url("/api/v1/admin/modules"))
        .header("authorization", format!("Bearer {admin}"))
        .header("content-type", "application/wasm")
        .body(std::fs::read(wasm("hostile_guest")).unwrap())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(status, 201, "{}", r.text().await.unwrap());
    let step = json!({"module_ref": "hostile", "input_mapping": {"attack": "ok"}}).to_string();
    let (s, v, text) = Api::new()
        .call(
            "POST",
            &server.url("/api/v1/steps"),
            Some(&admin),
            Some(&step),
        )
        .await;
    assert_eq!(
        (s, v["output"]["ok"].as_bool()),
        (200, Some(true)),
        "{text}"
    );
    // Ids outside the rule are refused where they enter, with the same name.
    for bad in [
        "c".repeat(129),
        "acme.corp".into(),
        "../etc".into(),
        String::new(),
    ] {
        let out = cli.run(&["tokens", "create", "--for-company", &bad, "--user", "u"]);
        assert_eq!(
            out.error_name().as_deref(),
            Some("invalid_input"),
            "{bad}: {}",
            out.stderr
        );
        let out = cli.run(&["--company", &bad, "components", "list"]);
        assert_eq!(
            out.error_name().as_deref(),
            Some("invalid_input"),
            "{bad}: {}",
            out.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_running_step_finish() {
    let cli = Cli::new();
    let member = create_token(&cli, "company-a", "bob", false);
    let server = ServerProcess::start(&cli, &wasm_dir(), &[]);
    let upstream = RecordingServer::start();
    upstream
        .script([Reply::json(200, json!({"slow": true}))
            .with_delay(std::time::Duration::from_millis(1500))]);
    let step =
        json!({"module_ref": "http-request", "input_mapping": {"url": upstream.url("/slow")}})
            .to_string();
    let url = server.url("/api/v1/steps");
    let running = tokio::spawn(async move {
        let api = Api::new();
        api.call("POST", &url, Some(&member), Some(&step)).await
    });
    // Wait until the step is mid-flight: the upstream has its request.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while upstream.requests().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the step never reached the upstream"
        );
        tokio::task::yield_now().await;
        std::thread::yield_now();
    }
    let clean = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    let (status, report, text) = running.await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert_eq!(report["output"]["body"], json!({"slow": true}));
    assert!(clean, "the server exits 0 after draining");
}

/// Modules installed before they lived in the store (files in
/// `<data-dir>/company-modules/<company>/`) are imported at start, once: they run, are
/// listed and can be removed as any installed module, and a removed one does not come
/// back at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_installed_on_disk_before_are_imported_once() {
    let shared = tempfile::tempdir().unwrap();
    std::fs::copy(
        wasm("http_request"),
        shared.path().join("http_request.wasm"),
    )
    .unwrap();
    let cli = Cli::new();
    let admin = create_token(&cli, "company-a", "alice", true);
    let old = cli.data_dir.path().join("company-modules/company-a");
    std::fs::create_dir_all(&old).unwrap();
    let guest =
        flow8_tests::wat_guest::WatGuest::with_schema("old-thing", json!({"type": "object"}));
    guest.write(&old, "old-thing-0.1.0");
    // A file that is not a module stays where it is and stops nothing.
    std::fs::write(old.join("broken-1.0.0.wasm"), b"not wasm").unwrap();

    let step = json!({"module_ref": "old-thing", "input_mapping": {}}).to_string();
    let api = Api::new();
    let server = ServerProcess::start(&cli, shared.path(), &[]);
    let (s, v, text) = api
        .call(
            "POST",
            &server.url("/api/v1/steps"),
            Some(&admin),
            Some(&step),
        )
        .await;
    assert_eq!(
        (s, v["module"]["version"].as_str()),
        (200, Some("0.1.0")),
        "{text}"
    );
    assert!(
        !old.join("old-thing-0.1.0.wasm").exists(),
        "moved aside once imported"
    );
    assert!(
        cli.data_dir
            .path()
            .join("company-modules.imported/company-a/old-thing-0.1.0.wasm")
            .exists()
    );
    assert!(old.join("broken-1.0.0.wasm").exists());
    let (s, _, _) = api
        .call(
            "DELETE",
            &server.url("/api/v1/admin/modules/old-thing@0.1.0"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert!(server.terminate(), "graceful shutdown exits 0");

    let server = ServerProcess::start(&cli, shared.path(), &[]);
    let (s, v, text) = api
        .call(
            "POST",
            &server.url("/api/v1/steps"),
            Some(&admin),
            Some(&step),
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (404, Some("module_not_found")),
        "{text}"
    );
    assert!(server.terminate(), "graceful shutdown exits 0");
}
