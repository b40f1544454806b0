//! Providers added by configuration alone: the host's config file adds an OAuth2
//! provider (`acme-crm`, its endpoints on the real OAuth2 server the tests run) and an
//! API-key provider (`acme-search`: an `api_key` attached as `x-api-key`, pinned to its
//! `base_url`) under `providers:`. A user connects an `acme-crm` link through authorize
//! and callback, an admin creates an `acme-search` component through the API, and one
//! step of `catalogue-guest` (a module binding both by name) calls both APIs with the
//! host attaching each credential. The key attached to a host outside its pins is
//! refused, and a host without the `providers:` entries refuses the module.

use flow8_tests::oauth_server::OAuthServer;
use flow8_tests::{Cli, RecordingServer, ServerProcess, create_token, wasm_dir};
use serde_json::{Value, json};

const SEARCH_KEY: &str = "acme-live-5f0e2c9d4b7a";

struct Setup {
    _oauth: OAuthServer,
    _cli: Cli,
    server: ServerProcess,
    member: String,
    admin: String,
    crm_api: RecordingServer,
    search_api: RecordingServer,
    http: reqwest::Client,
}

fn setup() -> Setup {
    let oauth = OAuthServer::start(3600, &[]);
    let crm_api = RecordingServer::start();
    let search_api = RecordingServer::start();
    let cli = Cli::new();
    let port = ServerProcess::free_port();
    let config = format!(
        r#"oauth_background_refresh_seconds: 0
providers:
  acme-crm:
    auth_mode: oauth2
    display_name: Acme CRM
    authorize_url: {o}/authorize
    token_url: {o}/token
    revoke_url: {o}/revoke
    revocation: rfc7009
    identity_url: {o}/userinfo
    identity: {{user_id: [/sub], email: [/email]}}
    api_base_url: {crm}/v2
    api_hosts: ['{crm}']
  acme-search:
    auth_mode: api_key
    display_name: Acme Search
    kind: search
    fields:
      - {{name: base_url, check: http_url, required: true}}
      - name: api_key
        secret: true
        required: true
        format: {{prefixes: [acme-live-, acme-test-], min_length: 16, charset: a-z0-9-, message: "an Acme key starts with acme-live- or acme-test-"}}
    attach: {{header: {{name: x-api-key, value_field: api_key}}}}
    pins: [{{origin_of: base_url}}]
oauth2:
  acme-crm:
    client_id: acme-client
    client_secret: acme-secret
    redirect_uri: http://127.0.0.1:{port}/auth/callback
    scopes: [contacts.read]
"#,
        o = oauth.base,
        crm = crm_api.url(""),
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
        _oauth: oauth,
        _cli: cli,
        server,
        member,
        admin,
        crm_api,
        search_api,
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

    /// Authorize at the provider and follow its redirect to the callback, as a browser.
    async fn connect(&self, service: &str) -> Value {
        let (s, v) = self
            .call(
                "GET",
                &format!("/api/v1/integrations/authorize?service={service}"),
                &self.member,
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let callback = flow8_tests::consent(&self.http, v["auth_url"].as_str().unwrap()).await;
        let r = self
            .http
            .get(&callback)
            .header("accept", "application/json")
            .header("cookie", flow8_tests::binding_cookie(&v))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_added_by_configuration_connect_attach_and_stay_pinned() {
    let s = setup();

    // (a) The OAuth provider: its authorize URL is the catalogue entry's, with PKCE (the
    // default for an added provider) and the configured scopes.
    let (status, v) = s
        .call(
            "GET",
            "/api/v1/integrations/authorize?service=acme-crm",
            &s.member,
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let auth_url = url::Url::parse(v["auth_url"].as_str().unwrap()).unwrap();
    assert!(auth_url.as_str().starts_with(&s._oauth.base), "{auth_url}");
    let q: std::collections::HashMap<_, _> = auth_url.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], "acme-client");
    assert_eq!(q["scope"], "contacts.read");
    assert_eq!(q["code_challenge_method"], "S256");
    let connected = s.connect("acme-crm").await;
    assert_eq!(connected["status"], "connected", "{connected}");
    let link = &connected["link"];
    assert_eq!(link["integration_type"], "acme-crm");
    let link_id = link["id"].as_str().unwrap().to_string();

    // (b) The API-key provider: its format rules apply, naming the field, never the value.
    let bad = json!({"name": "search", "config": {"provider": "acme-search", "base_url": s.search_api.url("/v1"), "api_key": "sk-wrong-provider-0123"}});
    let (status, v) = s
        .call("POST", "/api/v1/admin/components", &s.admin, Some(bad))
        .await;
    assert_eq!(status, 400, "{v}");
    let text = v.to_string();
    assert!(
        text.contains("config.api_key")
            && text.contains("acme-live-")
            && !text.contains("sk-wrong"),
        "{text}"
    );
    let body = json!({"name": "search", "config": {"provider": "acme-search", "base_url": s.search_api.url("/v1"), "api_key": SEARCH_KEY}});
    let (status, v) = s
        .call("POST", "/api/v1/admin/components", &s.admin, Some(body))
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["kind"], "search");
    assert_eq!(
        v["config_summary"],
        json!({"provider": "acme-search", "base_url": s.search_api.url("/v1")})
    );

    // One step uses both, the host attaching each credential.
    let input = json!({"link_id": link_id, "crm_url": s.crm_api.url("/v2/contacts"), "search_url": s.search_api.url("/v1/search?q=flow8")});
    let step = json!({"name": "both", "module_ref": "catalogue-guest", "input_mapping": input, "bindings": {"search": "search"}});
    let (status, v) = s.call("POST", "/api/v1/steps", &s.member, Some(step)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["crm"]["status"], 200, "{v}");
    assert_eq!(v["output"]["search"]["status"], 200, "{v}");
    let crm = s.crm_api.requests();
    assert_eq!(crm.len(), 1);
    assert_eq!(crm[0].uri, "/v2/contacts");
    let bearer = crm[0].header("authorization").unwrap_or_default();
    assert!(
        bearer.starts_with("Bearer ") && bearer.len() > 20,
        "the link's token: {bearer}"
    );
    assert!(crm[0].header("x-api-key").is_none());
    let search = s.search_api.requests();
    assert_eq!(search.len(), 1);
    assert_eq!(search[0].uri, "/v1/search?q=flow8");
    assert_eq!(search[0].header("x-api-key"), Some(SEARCH_KEY));
    assert!(search[0].header("authorization").is_none());
    let shown = v.to_string();
    assert!(
        !shown.contains(SEARCH_KEY) && !shown.contains(&bearer[7..]),
        "no credential in the report: {shown}"
    );

    // The key attached to a host outside its pins (allowed by the manifest) is refused
    // before anything is sent there.
    let elsewhere = RecordingServer::start();
    let input = json!({"link_id": link_id, "crm_url": s.crm_api.url("/v2/contacts"), "search_url": elsewhere.url("/steal")});
    let step = json!({"name": "leak", "module_ref": "catalogue-guest", "input_mapping": input, "bindings": {"search": "search"}});
    let (status, v) = s.call("POST", "/api/v1/steps", &s.member, Some(step)).await;
    assert_eq!(v["status"], "error", "{v}");
    assert_eq!(v["error"], "forbidden", "{status} {v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("credential `search` may only be sent to its own service's hosts"),
        "refused by the key's pins: {v}"
    );
    assert!(
        elsewhere.requests().is_empty(),
        "nothing reached the other host"
    );
    assert_eq!(s.search_api.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_the_providers_refuses_the_module_naming_the_known_ones() {
    let cli = Cli::new();
    let out = cli.run(&["modules", "inspect", "catalogue-guest"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    let list = cli.run(&["modules", "list", "--json"]).ok_json();
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            m["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("catalogue_guest.wasm"))
        })
        .unwrap_or_else(|| panic!("catalogue_guest.wasm is listed: {list}"));
    assert_eq!(entry["error"], "invalid_manifest", "{entry}");
    let message = entry["message"].as_str().unwrap();
    assert!(
        message.contains("unknown OAuth service `acme-crm`")
            && message.contains("known: microsoft, google, slack, clio, quickbooks, bexio"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_provider_shows_its_configured_name_on_every_page() {
    let s = setup();
    let connect_page = || async {
        let (status, v) = s
            .call(
                "POST",
                "/api/v1/integrations/connect-sessions",
                &s.member,
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        let r = s
            .http
            .get(v["connect_url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.text().await.unwrap()
    };

    // The connect page's button names the provider as the config file does.
    let page = connect_page().await;
    assert!(page.contains(">Connect Acme CRM</a>"), "{page}");

    // "Connected!" in a browser (no JSON asked for) names it too.
    let (status, v) = s
        .call(
            "GET",
            "/api/v1/integrations/authorize?service=acme-crm",
            &s.member,
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let callback = flow8_tests::consent(&s.http, v["auth_url"].as_str().unwrap()).await;
    let done = s
        .http
        .get(&callback)
        .header("cookie", flow8_tests::binding_cookie(&v))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status().as_u16(), 200);
    let done = done.text().await.unwrap();
    assert!(
        done.contains("Your Acme CRM account is connected"),
        "{done}"
    );

    // And the company's integrations on the next connect page.
    let page = connect_page().await;
    assert!(
        page.contains("data-service=\"acme-crm\">Acme CRM: "),
        "{page}"
    );
}
