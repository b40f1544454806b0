//! The OAuth2 lifecycle against a real authorization server (oauth2-mock-server):
//! authorize → follow the redirect with a real HTTP client → callback → link stored
//! sealed → a step uses the token (refreshed first, once, even under concurrency) →
//! unlink → the server receives the revocation. Plus replayed states, revoked refresh
//! tokens (one `token_revoked`, no retry storm) and scope checks.

use flow8_tests::oauth_server::OAuthServer;
use flow8_tests::{Cli, RecordingServer, ServerProcess, contains_bytes, create_token, wasm_dir};
use serde_json::{Value, json};

struct Setup {
    cli: Cli,
    oauth: OAuthServer,
    server: ServerProcess,
    member: String,
    admin: String,
    http: reqwest::Client,
    /// The `Cookie` header of the browser that started the last connection.
    browser_cookie: std::sync::Mutex<String>,
}

fn setup(ttl_sequence: &[u64]) -> Setup {
    setup_with_env(ttl_sequence, &[])
}

/// `setup`, with extra environment for the host process.
fn setup_with_env(ttl_sequence: &[u64], env: &[(&str, String)]) -> Setup {
    let oauth = OAuthServer::start(3600, ttl_sequence);
    let mut cli = Cli::new();
    cli.env
        .extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let port = ServerProcess::free_port();
    let config = format!(
        "oauth_refresh_window_seconds: 300\noauth_background_refresh_seconds: 0\noauth2:\n  google:\n    client_id: flow8-test-client\n    client_secret: test-secret\n    redirect_uri: http://127.0.0.1:{port}/auth/callback\n    scopes: [drive, sheets]\n    authorize_url: {b}/authorize\n    token_url: {b}/token\n    revoke_url: {b}/revoke\n    identity_url: {b}/userinfo\n    api_hosts: ['http://127.0.0.1:*']\n",
        b = oauth.base
    );
    let config_path = cli.data_dir.path().join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    let member = create_token(&cli, "company-a", "alice", false);
    let admin = create_token(&cli, "company-a", "root", true);
    let server = ServerProcess::start_on(
        &cli,
        &wasm_dir(),
        &format!("127.0.0.1:{port}"),
        &["--config", config_path.to_str().unwrap()],
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Setup {
        cli,
        oauth,
        server,
        member,
        admin,
        http,
        browser_cookie: Default::default(),
    }
}

impl Setup {
    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.server.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// The browser's part: open auth_url, follow the provider's redirect to the callback.
    async fn connect(&self) -> (String, Value) {
        let (s, v) = self
            .get(
                "/api/v1/integrations/authorize?service=google",
                &self.member,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let auth_url = v["auth_url"].as_str().unwrap().to_string();
        // The browser that started it holds the binding cookie (the API's caller set it).
        let cookie = flow8_tests::binding_cookie(&v);
        *self.browser_cookie.lock().unwrap() = cookie.clone();
        let callback = flow8_tests::consent(&self.http, &auth_url).await;
        let r = self
            .http
            .get(&callback)
            .header("accept", "application/json")
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        (callback, body)
    }

    async fn step(&self, input: Value) -> (u16, Value) {
        let body = json!({"name": "oauth-step", "module_ref": "hostile", "input_mapping": input});
        let r = self
            .http
            .post(self.server.url("/api/v1/steps"))
            .bearer_auth(&self.member)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_use_refresh_once_and_unlink() {
    // The first access token is nearly expired (20 s < the 300 s refresh window), the
    // next ones live an hour.
    let s = setup(&[20]);
    let (s_auth, v) = s
        .get("/api/v1/integrations/authorize?service=google", &s.member)
        .await;
    assert_eq!(s_auth, 200);
    let auth_url = url::Url::parse(v["auth_url"].as_str().unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = auth_url.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["state"].len() >= 43, "state carries >= 128 bits");
    assert_eq!(q["access_type"], "offline");
    assert_eq!(q["prompt"], "consent");
    assert_eq!(q["scope"], "drive sheets");

    let (callback_url, connected) = s.connect().await;
    assert_eq!(connected["status"], "connected");
    let link = &connected["link"];
    let link_id = link["id"].as_str().unwrap().to_string();
    assert_eq!(link["integration_type"], "google");
    assert!(
        !link.to_string().contains("token\":\""),
        "no token in the answer: {link}"
    );
    assert_eq!(s.oauth.token_requests_at_least("authorization_code", 1), 1);

    // Replaying the callback, from the same browser: the state is single use.
    let cookie = s.browser_cookie.lock().unwrap().clone();
    let r = s
        .http
        .get(&callback_url)
        .header("accept", "application/json")
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_state");
    // A state nobody issued.
    let r = s
        .http
        .get(s.server.url("/auth/callback?code=x&state=forged"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("Not connected"));

    // Tokens are sealed at rest.
    let issued = s.oauth.refresh_tokens_at_least(1);
    assert_eq!(issued.len(), 1);
    for (path, bytes) in s.cli.data_files() {
        assert!(
            !contains_bytes(&bytes, issued[0].as_bytes()),
            "{} holds a refresh token",
            path.display()
        );
    }

    // 200 concurrent steps on the nearly expired link: exactly one refresh request.
    let api = RecordingServer::start();
    let mut steps = Vec::new();
    for i in 0..200 {
        let input = json!({"attack": "http", "url": api.url(&format!("/files/{i}")), "credential": "google", "link_id": link_id});
        let body = json!({"module_ref": "hostile", "input_mapping": input}).to_string();
        let (http, url, token) = (
            s.http.clone(),
            s.server.url("/api/v1/steps"),
            s.member.clone(),
        );
        steps.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    for t in steps {
        let (status, v) = t.await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["output"]["status"], 200, "{v}");
    }
    assert_eq!(
        s.oauth.token_requests_at_least("refresh_token", 1),
        1,
        "{:?}",
        s.oauth.events()
    );
    let received = api.requests();
    assert_eq!(received.len(), 200);
    let bearer = received[0].header("authorization").unwrap().to_string();
    assert!(bearer.starts_with("Bearer "));
    assert!(
        received
            .iter()
            .all(|r| r.header("authorization") == Some(bearer.as_str())),
        "all steps used the refreshed token"
    );

    // Health check in flow8's shape.
    let r = s
        .http
        .post(s.server.url("/api/v1/integrations/test"))
        .bearer_auth(&s.member)
        .header("content-type", "application/json")
        .body(json!({"link_id": link_id}).to_string())
        .send()
        .await
        .unwrap();
    let health: Value = r.json().await.unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["service"], "google");
    assert_eq!(health["token_valid"], true);
    assert_eq!(health["scopes_granted"], json!(["drive", "sheets"]));
    assert!(health["latency_ms"].is_u64());

    // Expiry monitoring: the refreshed token lives an hour, inside a 7-day window.
    let (_, v) = s
        .get(
            "/api/v1/integrations/links?expiring_within_days=7",
            &s.member,
        )
        .await;
    assert_eq!(v["links"][0]["id"], link_id.as_str());

    // Unlink: deleted, revoked at the provider, later steps get access_denied.
    let r = s
        .http
        .delete(
            s.server
                .url(&format!("/api/v1/integrations/google/{link_id}")),
        )
        .bearer_auth(&s.member)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let latest_refresh = s.oauth.refresh_tokens_at_least(2).last().cloned().unwrap();
    assert!(
        s.oauth.wait_for_revocation(&latest_refresh),
        "{:?}",
        s.oauth.events()
    );
    let (status, v) = s.step(json!({"attack": "http", "url": api.url("/after"), "credential": "google", "link_id": link_id})).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (403, Some("access_denied")),
        "{v}"
    );

    // The audit log has both events in flow8's shape (beside the steps' uses of the
    // integration, which are newer than the link and more numerous).
    let entries = |action: &'static str| {
        let s = &s;
        async move {
            let (_, audit) = s
                .get(
                    &format!("/api/v1/admin/audit?resource_type=integration&action_type={action}"),
                    &s.admin,
                )
                .await;
            audit["entries"].as_array().unwrap().clone()
        }
    };
    let linked = entries("integration_linked").await;
    assert_eq!(linked.len(), 1, "{linked:?}");
    assert_eq!(linked[0]["resource_id"], link_id.as_str());
    assert_eq!(linked[0]["after_state"]["integration_type"], "google");
    assert_eq!(
        linked[0]["after_state"]["scopes"],
        json!(["drive", "sheets"])
    );
    let unlinked = entries("integration_unlinked").await;
    assert_eq!(unlinked.len(), 1, "{unlinked:?}");
    assert_eq!(unlinked[0]["resource_id"], link_id.as_str());
    let used = entries("credential_used").await;
    assert!(
        !used.is_empty() && used.iter().all(|e| e["resource_id"] == link_id.as_str()),
        "{used:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_refresh_token_is_token_revoked_once_without_a_retry_storm() {
    let s = setup(&[20]);
    let (_, connected) = s.connect().await;
    let link_id = connected["link"]["id"].as_str().unwrap().to_string();
    // The user revokes access at the provider.
    let refresh = s.oauth.refresh_tokens_at_least(1)[0].clone();
    let r = s
        .http
        .post(format!("{}/revoke", s.oauth.base))
        .form(&[("token", refresh.as_str())])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert!(s.oauth.wait_for_revocation(&refresh));

    let api = RecordingServer::start();
    let input =
        json!({"attack": "http", "url": api.url("/x"), "credential": "google", "link_id": link_id});
    let (status, v) = s.step(input.clone()).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (401, Some("token_revoked")),
        "{v}"
    );
    let attempts = s.oauth.token_requests_at_least("refresh_token", 1);
    assert_eq!(attempts, 1);
    for _ in 0..5 {
        let (_, v) = s.step(input.clone()).await;
        assert_eq!(v["error"], "token_revoked");
    }
    assert_eq!(
        s.oauth.token_requests("refresh_token"),
        attempts,
        "no retry storm"
    );
    assert!(api.requests().is_empty());
    let (_, v) = s
        .get("/api/v1/integrations/links?needs_reconnect=true", &s.member)
        .await;
    assert_eq!(v["links"][0]["id"], link_id.as_str());
    assert_eq!(v["links"][0]["status"], "needs_reconnect");
    // Marked once, audited once.
    let (_, audit) = s
        .get(
            "/api/v1/admin/audit?action_type=integration_needs_reconnect",
            &s.admin,
        )
        .await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["resource_type"], "integration");
    assert_eq!(entries[0]["resource_id"], link_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_scopes_fail_before_any_call() {
    let s = setup(&[]);
    let (_, connected) = s.connect().await;
    let link_id = connected["link"]["id"].as_str().unwrap().to_string();
    // Install nothing: the hostile module asks for `drive`, which the link has. A link of
    // another company is invisible.
    let other = create_token(&s.cli, "company-b", "mallory", false);
    let body =
        json!({"module_ref": "hostile", "input_mapping": {"attack": "ok", "link_id": link_id}})
            .to_string();
    let r = s
        .http
        .post(s.server.url("/api/v1/steps"))
        .bearer_auth(&other)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "access_denied");
    // Unknown service.
    let (status, v) = s
        .get("/api/v1/integrations/authorize?service=myspace", &s.member)
        .await;
    assert_eq!((status, v["error"].as_str()), (404, Some("not_configured")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_oauth_token_never_enters_the_module() {
    let s = setup(&[]);
    let (_, connected) = s.connect().await;
    let link_id = connected["link"]["id"].as_str().unwrap().to_string();
    let api = RecordingServer::start();
    // Learn the token the host attaches (from what the API server received).
    let (status, v) = s
        .step(json!({"attack": "http", "url": api.url("/who"), "credential": "google", "link_id": link_id}))
        .await;
    assert_eq!(status, 200, "{v}");
    let token = api.requests()[0]
        .header("authorization")
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string();
    let needle: Vec<u8> = token.bytes().map(|b| b ^ 0x5a).collect();
    let scan = |read_first: bool| {
        json!({"attack": "attach_then_scan", "url": api.url("/again"), "credential": "google",
            "link_id": link_id, "needle_xor": needle, "read_first": read_first})
    };
    let (status, v) = s.step(scan(false)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["output"]["status"], 200,
        "the attached request went out: {v}"
    );
    assert_eq!(v["output"]["needle_len"], token.len());
    assert_eq!(
        v["output"]["memory_hits"], 0,
        "the token is in the module's memory: {v}"
    );
    assert_eq!(
        api.requests()[1].header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    // Control: reading it on purpose puts it there, and the scan sees it.
    let (_, v) = s.step(scan(true)).await;
    assert!(v["output"]["memory_hits"].as_u64().unwrap() >= 1, "{v}");
    // Each use of the link is audited as a use of an integration (flow8's audit
    // example), attached and read alike.
    let (_, audit) = s
        .get("/api/v1/admin/audit?action_type=credential_used", &s.admin)
        .await;
    let uses = audit["entries"].as_array().unwrap();
    let hows: Vec<&str> = uses
        .iter()
        .filter_map(|e| e["after_state"]["how"].as_str())
        .collect();
    assert!(
        hows.contains(&"attached") && hows.contains(&"read"),
        "{audit}"
    );
    for e in uses {
        assert_eq!(e["resource_id"], link_id.as_str(), "{e}");
        assert_eq!(e["resource_type"], "integration", "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_processes_on_one_store_refresh_once() {
    // One host connects the link (nearly expired token); a second host process on the
    // same data directory (the embedded store, shared through SQLite) serves half the
    // steps. The lease in the store lets only one of them refresh.
    let s = setup(&[20]);
    let (_, connected) = s.connect().await;
    let link_id = connected["link"]["id"].as_str().unwrap().to_string();
    let config_path = s.cli.data_dir.path().join("config.yml");
    let second = ServerProcess::start(
        &s.cli,
        &wasm_dir(),
        &["--config", config_path.to_str().unwrap()],
    );
    let api = RecordingServer::start();
    let mut steps = Vec::new();
    for i in 0..60 {
        let base = if i % 2 == 0 {
            s.server.url("/api/v1/steps")
        } else {
            second.url("/api/v1/steps")
        };
        let input = json!({"attack": "http", "url": api.url(&format!("/n/{i}")), "credential": "google", "link_id": link_id});
        let body = json!({"module_ref": "hostile", "input_mapping": input}).to_string();
        let (http, token) = (s.http.clone(), s.member.clone());
        steps.push(tokio::spawn(async move {
            let r = http
                .post(base)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    for t in steps {
        let (status, v) = t.await.unwrap();
        assert_eq!(status, 200, "{v}");
    }
    assert_eq!(
        s.oauth.token_requests_at_least("refresh_token", 1),
        1,
        "{:?}",
        s.oauth.events()
    );
    assert_eq!(api.requests().len(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_refresher_renews_a_link_without_any_step() {
    let s = setup(&[20]);
    let (_, connected) = s.connect().await;
    let link_id = connected["link"]["id"].as_str().unwrap().to_string();
    assert_eq!(s.oauth.token_requests("refresh_token"), 0);
    // A host on the same store with the background refresher on (every second).
    let config = std::fs::read_to_string(s.cli.data_dir.path().join("config.yml"))
        .unwrap()
        .replace(
            "oauth_background_refresh_seconds: 0",
            "oauth_background_refresh_seconds: 1",
        );
    let path = s.cli.data_dir.path().join("config-background.yml");
    std::fs::write(&path, config).unwrap();
    let _background =
        ServerProcess::start(&s.cli, &wasm_dir(), &["--config", path.to_str().unwrap()]);
    assert_eq!(
        s.oauth.token_requests_at_least("refresh_token", 1),
        1,
        "no step ran, yet the link was renewed"
    );
    // The provider answered; the host saves the new tokens right after. Wait for that.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, v) = s.get("/api/v1/integrations/links", &s.member).await;
        assert_eq!(v["links"][0]["id"], link_id.as_str());
        let expiry = v["links"][0]["token_expiry"].as_str().unwrap().to_string();
        let expiry =
            time::OffsetDateTime::parse(&expiry, &time::format_description::well_known::Rfc3339)
                .unwrap();
        if expiry - time::OffsetDateTime::now_utc() > time::Duration::minutes(30) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the link was not renewed for an hour"
        );
        tokio::task::yield_now().await;
    }
}

/// reqwest sends through HTTP_PROXY, HTTPS_PROXY and ALL_PROXY from the environment
/// unless told not to: the host's requests to the provider (code exchange with the
/// client secret, refresh, identity, revocation) must go to the provider only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_requests_never_go_through_a_proxy_from_the_environment() {
    let proxy = RecordingServer::start();
    let via = format!("http://{}", proxy.addr);
    let env: Vec<(&str, String)> = [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .into_iter()
    .map(|k| (k, via.clone()))
    .collect();
    // The first access token is nearly expired: the health check refreshes it first.
    let s = setup_with_env(&[20], &env);
    let (_, connected) = s.connect().await;
    let link_id = connected["link"]["id"].as_str().unwrap().to_string();
    let r = s
        .http
        .post(s.server.url("/api/v1/integrations/test"))
        .bearer_auth(&s.member)
        .header("content-type", "application/json")
        .body(json!({"link_id": link_id}).to_string())
        .send()
        .await
        .unwrap();
    let health: Value = r.json().await.unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    let r = s
        .http
        .delete(
            s.server
                .url(&format!("/api/v1/integrations/google/{link_id}")),
        )
        .bearer_auth(&s.member)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    // The provider got every request...
    assert_eq!(s.oauth.token_requests_at_least("authorization_code", 1), 1);
    assert_eq!(s.oauth.token_requests_at_least("refresh_token", 1), 1);
    let latest = s.oauth.refresh_tokens_at_least(2).last().cloned().unwrap();
    assert!(s.oauth.wait_for_revocation(&latest));
    // ...and the proxy none.
    assert!(proxy.requests().is_empty(), "{:?}", proxy.requests());
}

/// A forwarded authorization link: someone else's browser, which holds no binding
/// cookie (or another one), comes back with a valid code and state. The callback
/// refuses it by name and stores nothing; the browser that started it then connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_from_another_browser_is_refused_and_stores_nothing() {
    let s = setup(&[]);
    let (status, v) = s
        .get("/api/v1/integrations/authorize?service=google", &s.member)
        .await;
    assert_eq!(status, 200, "{v}");
    let binding = &v["browser_binding"];
    assert_eq!(binding["cookie"], "flow8_oauth_binding", "{v}");
    let set_cookie = binding["set_cookie"].as_str().unwrap();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    // The consent happens in the other person's browser.
    let callback = flow8_tests::consent(&s.http, v["auth_url"].as_str().unwrap()).await;
    for cookie in [None, Some("flow8_oauth_binding=someone-elses-binding")] {
        let mut req = s.http.get(&callback).header("accept", "application/json");
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{cookie:?}");
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert!(
            r.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_state", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(if cookie.is_none() {
                "did not start the connection"
            } else {
                "started in another browser"
            }),
            "{message}"
        );
    }
    let (_, links) = s.get("/api/v1/integrations/links", &s.member).await;
    assert_eq!(links["links"], json!([]), "nothing stored: {links}");
    assert_eq!(s.oauth.token_requests_at_least("authorization_code", 0), 0);
    // The browser that started it still can: the refused attempts did not use it up.
    let r = s
        .http
        .get(&callback)
        .header("accept", "application/json")
        .header(
            "cookie",
            format!(
                "other=1; flow8_oauth_binding={}",
                binding["value"].as_str().unwrap()
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, links) = s.get("/api/v1/integrations/links", &s.member).await;
    assert_eq!(links["links"].as_array().map(Vec::len), Some(1), "{links}");
}

/// A link is the user's who connected it: another member can neither use nor delete
/// it until its owner shares it; an admin can do both; every use or deletion by
/// someone other than the owner is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_belongs_to_its_owner_unless_shared_and_admins_are_audited() {
    let s = setup(&[]);
    let bob = create_token(&s.cli, "company-a", "bob", false);
    let (_, connected) = s.connect().await;
    let link_id = connected["link"]["id"].as_str().unwrap().to_string();
    assert_eq!(connected["link"]["user_id"], "alice");
    let api = RecordingServer::start();
    let call = |method: reqwest::Method, path: String, token: &str, body: Option<Value>| {
        let mut req = s
            .http
            .request(method, s.server.url(&path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let step = |token: &str| {
        call(
            reqwest::Method::POST,
            "/api/v1/steps".into(),
            token,
            Some(
                json!({"name": "uses-a-link", "module_ref": "hostile", "input_mapping":
                {"attack": "http", "url": api.url("/who"), "credential": "google", "link_id": link_id}}),
            ),
        )
    };
    let shares = format!("/api/v1/integrations/google/{link_id}/shares");

    // Bob, a member, cannot use alice's link, nor delete it, nor share it to himself.
    let (status, v) = step(&bob).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (403, Some("access_denied")),
        "{v}"
    );
    assert!(api.requests().is_empty(), "the token went nowhere");
    let (status, v) = call(
        reqwest::Method::DELETE,
        format!("/api/v1/integrations/google/{link_id}"),
        &bob,
        None,
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (403, Some("access_denied")),
        "{v}"
    );
    let (status, _) = call(
        reqwest::Method::POST,
        shares.clone(),
        &bob,
        Some(json!({"user_id": "bob"})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, v) = call(
        reqwest::Method::POST,
        "/api/v1/integrations/test".into(),
        &bob,
        Some(json!({"link_id": link_id})),
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    // Alice's own step uses it.
    let (status, v) = step(&s.member).await;
    assert_eq!(status, 200, "{v}");

    // Alice shares it with bob: now his steps may use it, and each use says so.
    let (status, v) = call(
        reqwest::Method::POST,
        shares.clone(),
        &s.member,
        Some(json!({"user_id": "bob"})),
    )
    .await;
    assert_eq!(
        (status, v["shared_with"].clone()),
        (200, json!(["bob"])),
        "{v}"
    );
    let (status, v) = step(&bob).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("ok")), "{v}");
    // Sharing is not owning: bob still cannot delete it.
    let (status, _) = call(
        reqwest::Method::DELETE,
        format!("/api/v1/integrations/google/{link_id}"),
        &bob,
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        reqwest::Method::DELETE,
        format!("{shares}/bob"),
        &s.member,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = step(&bob).await;
    assert_eq!(status, 403);

    // An admin may use and delete any member's link.
    let (status, v) = step(&s.admin).await;
    assert_eq!(status, 200, "{v}");
    let (status, _) = call(
        reqwest::Method::DELETE,
        format!("/api/v1/integrations/google/{link_id}"),
        &s.admin,
        None,
    )
    .await;
    assert_eq!(status, 204);

    // The audit log names each use of another user's link, and how it was allowed.
    let audit = |action: &str| {
        let (s, path) = (&s, format!("/api/v1/admin/audit?action_type={action}"));
        async move {
            let (_, v) = s.get(&path, &s.admin).await;
            v["entries"].as_array().unwrap().clone()
        }
    };
    let mut uses: Vec<(String, String, String)> = audit("link_used_by_other_user")
        .await
        .iter()
        .map(|e| {
            (
                e["user_id"].as_str().unwrap().to_string(),
                e["after_state"]["access"].as_str().unwrap().to_string(),
                e["after_state"]["owner"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    uses.sort();
    assert_eq!(
        uses,
        [
            ("bob".into(), "shared".into(), "alice".into()),
            ("root".into(), "admin".into(), "alice".into())
        ],
        "{uses:?}"
    );
    assert_eq!(audit("link_shared").await.len(), 1);
    assert_eq!(audit("link_unshared").await.len(), 1);
    let unlinked = audit("integration_unlinked").await;
    assert_eq!(unlinked.len(), 1, "{unlinked:?}");
    assert_eq!(unlinked[0]["user_id"], "root");
    assert_eq!(unlinked[0]["before_state"]["owner"], "alice");

    // The host goes on: bob's next step runs normally.
    let (status, _) = call(
        reqwest::Method::POST,
        "/api/v1/steps".into(),
        &bob,
        Some(json!({"name": "s", "module_ref": "hostile", "input_mapping": {"attack": "ok"}})),
    )
    .await;
    assert_eq!(status, 200);
}
