//! The OAuth lifecycle against a strict, certified OpenID provider (node-oidc-provider,
//! `tests/oidc-server/`): PKCE required, refresh tokens rotated, RFC 7009 revocation,
//! `offline_access` dropped without `prompt=consent`. The host knows the provider only
//! by its issuer (`auth_mode: oidc`), so every endpoint comes from discovery.
//!
//! One host, three profiles of the provider:
//! - `acme-crm`, the generic profile: connect through the provider's login and consent,
//!   a step uses the token at the provider's own userinfo endpoint (which checks it),
//!   refreshed first with rotation, again and again, then unlink revokes it there;
//! - `lax-id`, a profile that asks for `offline_access` without `prompt=consent`: the
//!   provider gives no refresh token, the host says so at connect time, and once the
//!   access token has expired the link is listed and shown as needing reconnection
//!   (and the audit log has the event, once);
//! - `nopkce-id`, a profile with PKCE off: the provider refuses it, and the host reports
//!   the provider's own `invalid_request` and description as `upstream_error`, not
//!   `access_denied`; the next step on the host runs normally.

use flow8_tests::oidc_server::{CLIENT_ID, CLIENT_SECRET, OidcOptions, OidcServer};
use flow8_tests::{Cli, RecordingServer, ServerProcess, contains_bytes, create_token, wasm_dir};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const SEARCH_KEY: &str = "acme-live-5f0e2c9d4b7a";

struct Setup {
    cli: Cli,
    /// PKCE required, access tokens living 30 s (inside the host's 300 s refresh
    /// window, so every step refreshes first).
    strict: OidcServer,
    /// Access tokens living 1 s.
    short: OidcServer,
    search_api: RecordingServer,
    server: ServerProcess,
    member: String,
    admin: String,
    http: reqwest::Client,
}

fn setup() -> Setup {
    let port = ServerProcess::free_port();
    let redirect = format!("http://127.0.0.1:{port}/auth/callback");
    let mut strict = OidcOptions::new(&redirect);
    strict.access_ttl = 30;
    let strict = OidcServer::start(&strict);
    let mut short = OidcOptions::new(&redirect);
    short.access_ttl = 1;
    let short = OidcServer::start(&short);
    let search_api = RecordingServer::start();
    let cli = Cli::new();
    let client = format!(
        "client_id: {CLIENT_ID}\n    client_secret: {CLIENT_SECRET}\n    redirect_uri: {redirect}"
    );
    let config = format!(
        r#"oauth_refresh_window_seconds: 300
oauth_background_refresh_seconds: 0
providers:
  acme-crm:
    auth_mode: oidc
    display_name: Acme ID
    issuer: {strict}
  lax-id:
    auth_mode: oidc
    issuer: {short}
    authorize_params: {{prompt: login}}
  nopkce-id:
    auth_mode: oidc
    issuer: {strict}
    pkce: false
  acme-search:
    auth_mode: api_key
    kind: search
    fields:
      - {{name: base_url, check: http_url, required: true}}
      - {{name: api_key, secret: true, required: true}}
    attach: {{header: {{name: x-api-key, value_field: api_key}}}}
    pins: [{{origin_of: base_url}}]
oauth2:
  acme-crm:
    {client}
    scopes: [email, contacts.read]
  lax-id:
    {client}
    scopes: [email]
  nopkce-id:
    {client}
    scopes: [email]
"#,
        strict = strict.issuer,
        short = short.issuer,
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
    Setup {
        cli,
        strict,
        short,
        search_api,
        server,
        member,
        admin,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    }
}

impl Setup {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                self.server.url(path),
            )
            .bearer_auth(token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Start a connection and walk the provider's login and consent as a browser; the
    /// authorize URL and the callback's JSON answer (status and body).
    async fn connect(&self, service: &str, provider: &OidcServer) -> (url::Url, u16, Value) {
        let (s, v) = self
            .call(
                "GET",
                &format!("/api/v1/integrations/authorize?service={service}"),
                &self.member,
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let auth_url = v["auth_url"].as_str().unwrap().to_string();
        let callback = provider.consent(&self.http, &auth_url).await;
        assert!(
            callback.starts_with(&self.server.url("/auth/callback")),
            "{callback}"
        );
        let r = self
            .http
            .get(&callback)
            .header("accept", "application/json")
            .header("cookie", flow8_tests::binding_cookie(&v))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (
            url::Url::parse(&auth_url).unwrap(),
            status,
            r.json().await.unwrap(),
        )
    }

    /// One step of `catalogue-guest`: the link's token to the strict provider's userinfo
    /// endpoint (which checks it), the search key to the recording server.
    async fn step(&self, link_id: &str) -> (u16, Value) {
        let input = json!({"link_id": link_id, "crm_url": format!("{}/me", self.strict.issuer), "search_url": self.search_api.url("/v1/search")});
        let step = json!({"name": "oidc", "module_ref": "catalogue-guest", "input_mapping": input, "bindings": {"search": "search"}});
        self.call("POST", "/api/v1/steps", &self.member, Some(step))
            .await
    }

    async fn links(&self, query: &str) -> Vec<Value> {
        let (s, v) = self
            .call(
                "GET",
                &format!("/api/v1/integrations/links{query}"),
                &self.member,
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["links"].as_array().unwrap().clone()
    }
}

fn ids(links: &[Value]) -> Vec<&str> {
    links.iter().map(|l| l["id"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_openid_provider_connects_refreshes_with_rotation_revokes_and_expires() {
    let s = setup();
    let body = json!({"name": "search", "config": {"provider": "acme-search", "base_url": s.search_api.url("/v1"), "api_key": SEARCH_KEY}});
    let (status, v) = s
        .call("POST", "/api/v1/admin/components", &s.admin, Some(body))
        .await;
    assert_eq!(status, 201, "{v}");

    // (1) The generic profile: endpoints from discovery, PKCE S256, openid and
    // offline_access with prompt=consent, the configured scopes.
    let (auth_url, status, connected) = s.connect("acme-crm", &s.strict).await;
    assert!(
        auth_url
            .as_str()
            .starts_with(&format!("{}/auth?", s.strict.issuer)),
        "{auth_url}"
    );
    let q: std::collections::HashMap<_, _> = auth_url.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["prompt"], "consent");
    let scopes: Vec<&str> = q["scope"].split(' ').collect();
    for want in ["openid", "offline_access", "email", "contacts.read"] {
        assert!(scopes.contains(&want), "{want} in {scopes:?}");
    }
    assert_eq!(status, 200, "{connected}");
    assert_eq!(connected["status"], "connected");
    assert!(connected.get("warning").is_none(), "{connected}");
    let link = &connected["link"];
    assert_eq!(link["provider_user_id"], "oidc-user-1");
    assert_eq!(link["provider_user_email"], "oidc-user-1@example.test");
    let crm_link = link["id"].as_str().unwrap().to_string();
    assert_eq!(s.strict.token_requests("authorization_code", "ok"), 1);

    // (2) Steps use the token; each refreshes first (30 s tokens, 300 s window), and each
    // refresh spends the token the last one rotated in: the provider would refuse a
    // spent one (and revoke the whole grant).
    for round in 1..=3 {
        let (status, v) = s.step(&crm_link).await;
        assert_eq!(status, 200, "round {round}: {v}");
        assert_eq!(v["output"]["crm"]["status"], 200, "round {round}: {v}");
        assert!(
            v["output"]["crm"]["body"]
                .as_str()
                .unwrap()
                .contains("\"sub\":\"oidc-user-1\""),
            "{v}"
        );
        assert!(
            s.strict
                .wait_until(|_| s.strict.token_requests("refresh_token", "ok") == round)
        );
    }
    assert_eq!(s.strict.token_requests("refresh_token", "invalid_grant"), 0);
    let issued = s.strict.refresh_tokens_issued();
    assert_eq!(issued.len(), 4, "one at the code grant, one per refresh");
    let distinct: std::collections::BTreeSet<_> = issued.iter().collect();
    assert_eq!(distinct.len(), 4, "every refresh rotated the refresh token");
    // None of them is in the host's files in the clear.
    for (path, bytes) in s.cli.data_files() {
        for rt in &issued {
            assert!(
                !contains_bytes(&bytes, rt.as_bytes()),
                "{} holds a refresh token",
                path.display()
            );
        }
    }
    let (status, v) = s
        .call(
            "POST",
            "/api/v1/integrations/test",
            &s.member,
            Some(json!({"link_id": crm_link})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["token_valid"], true, "{v}");
    assert_eq!(v["user"], "oidc-user-1");

    // (3) PKCE off against a provider that requires it: its own error, by its name.
    let (auth_url, status, refused) = s.connect("nopkce-id", &s.strict).await;
    assert!(!auth_url.query_pairs().any(|(k, _)| k == "code_challenge"));
    assert_eq!(status, 502, "{refused}");
    assert_eq!(refused["error"], "upstream_error", "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("invalid_request") && message.contains("PKCE"),
        "{message}"
    );
    // The host carries on: the next step runs normally.
    let (status, v) = s.step(&crm_link).await;
    assert_eq!(status, 200, "{v}");

    // (4) No prompt=consent: no refresh token, and the host says so at connect time.
    let (auth_url, status, lax) = s.connect("lax-id", &s.short).await;
    let q: std::collections::HashMap<_, _> = auth_url.query_pairs().into_owned().collect();
    assert_eq!(q["prompt"], "login");
    assert!(q["scope"].split(' ').any(|x| x == "offline_access"));
    assert_eq!(status, 200, "{lax}");
    assert_eq!(lax["refreshable"], false, "{lax}");
    assert!(
        lax["warning"]
            .as_str()
            .unwrap()
            .contains("gave no refresh token"),
        "{lax}"
    );
    let lax_link = lax["link"]["id"].as_str().unwrap().to_string();
    assert!(s.short.refresh_tokens_issued().is_empty());
    // Its access token lives a second. Poll the listing (bounded; the token's expiry is
    // the provider's clock, not ours) until it shows the link as needing reconnection.
    let deadline = Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let listed = s.links("?needs_reconnect=true").await;
        if !listed.is_empty() || Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ids(&listed), [lax_link.as_str()]);
    assert_eq!(listed[0]["status"], "needs_reconnect");
    let active = s.links("?needs_reconnect=false").await;
    assert_eq!(ids(&active), [crm_link.as_str()]);
    let all = s.links("").await;
    let shown = all.iter().find(|l| l["id"] == lax_link.as_str()).unwrap();
    assert_eq!(shown["status"], "needs_reconnect");
    // Told once, however often it is listed.
    let (status, audit) = s
        .call(
            "GET",
            "/api/v1/admin/audit?action_type=integration_needs_reconnect",
            &s.admin,
            None,
        )
        .await;
    assert_eq!(status, 200, "{audit}");
    let marked: Vec<&Value> = audit["entries"].as_array().unwrap().iter().collect();
    assert_eq!(marked.len(), 1, "{audit}");
    assert_eq!(marked[0]["resource_id"], lax_link.as_str());
    let (status, v) = s
        .call(
            "POST",
            "/api/v1/integrations/test",
            &s.member,
            Some(json!({"link_id": lax_link})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["token_valid"], false);
    assert_eq!(v["error"], "token_revoked");

    // (5) Unlink: the host revokes the grant at the provider's discovered endpoint.
    let (status, _) = s
        .call(
            "DELETE",
            &format!("/api/v1/integrations/acme-crm/{crm_link}"),
            &s.member,
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert!(
        s.strict.wait_until(|_| s.strict.revocations() == 1),
        "the provider saw the revocation: {:?}",
        s.strict.events()
    );
    let (status, v) = s.step(&crm_link).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"], "access_denied", "{v}");
}
