//! The connect page in a real browser (headless Chromium): flow8 asks the API for a
//! single-use connect link for a user, the browser opens it, the user clicks
//! "Connect Google", consents at the provider (oauth2-mock-server) and lands on
//! "Connected!". The browser never sees an API token, and the link works once.

use flow8_tests::browser::Browser;
use flow8_tests::oauth_server::OAuthServer;
use flow8_tests::{Cli, ServerProcess, create_token, wasm_dir};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_connects_google_from_the_connect_page_in_chromium() {
    let oauth = OAuthServer::start(3600, &[]);
    let cli = Cli::new();
    let port = ServerProcess::free_port();
    let config = format!(
        "oauth_background_refresh_seconds: 0\noauth2:\n  google:\n    client_id: flow8-test-client\n    client_secret: test-secret\n    redirect_uri: http://127.0.0.1:{port}/auth/callback\n    scopes: [drive]\n    authorize_url: {b}/authorize\n    token_url: {b}/token\n    revoke_url: {b}/revoke\n    identity_url: {b}/userinfo\n",
        b = oauth.base
    );
    let path = cli.data_dir.path().join("config.yml");
    std::fs::write(&path, config).unwrap();
    let member = create_token(&cli, "company-a", "alice", false);
    let server = ServerProcess::start_on(
        &cli,
        &wasm_dir(),
        &format!("127.0.0.1:{port}"),
        &["--config", path.to_str().unwrap()],
    );
    let http = reqwest::Client::new();

    // flow8's side: a connect link for alice.
    let r = http
        .post(server.url("/api/v1/integrations/connect-sessions"))
        .bearer_auth(&member)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let session: Value = r.json().await.unwrap();
    let connect_url = session["connect_url"].as_str().unwrap().to_string();
    assert!(
        connect_url.starts_with(&server.url("/connect/")),
        "{session}"
    );
    assert!(!connect_url.contains(&member));
    // Without a token there is no connect link.
    let r = http
        .post(server.url("/api/v1/integrations/connect-sessions"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // The user's side, in a real browser.
    let browser = Browser::start().await;
    browser.open(&connect_url).await;
    let page = browser
        .wait_for_text("Your integrations", Duration::from_secs(10))
        .await;
    assert!(page.contains("No integrations yet"), "{page}");
    assert!(!page.contains(&member), "the page holds no API token");
    browser.click("#connect-google").await;
    let done = browser
        .wait_for_text("Connected!", Duration::from_secs(15))
        .await;
    assert!(
        browser
            .url()
            .await
            .starts_with(&server.url("/auth/callback")),
        "{done}"
    );

    // The link exists, for alice, and the connect link is used up.
    let r = http
        .get(server.url("/api/v1/integrations/links"))
        .bearer_auth(&member)
        .send()
        .await
        .unwrap();
    let links: Value = r.json().await.unwrap();
    assert_eq!(links["links"].as_array().map(Vec::len), Some(1), "{links}");
    assert_eq!(links["links"][0]["integration_type"], "google");
    assert_eq!(links["links"][0]["user_id"], "alice");
    browser.open(&connect_url).await;
    let again = browser
        .wait_for_text("Link expired", Duration::from_secs(10))
        .await;
    assert!(again.contains("already used"), "{again}");
    let r = http.get(&connect_url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 410);

    // A fresh link shows the new integration on the page.
    let r = http
        .post(server.url("/api/v1/integrations/connect-sessions"))
        .bearer_auth(&member)
        .json(&json!({"services": ["google"]}))
        .send()
        .await
        .unwrap();
    let session: Value = r.json().await.unwrap();
    browser.open(session["connect_url"].as_str().unwrap()).await;
    let page = browser
        .wait_for_text("Your integrations", Duration::from_secs(10))
        .await;
    assert!(page.contains("data-service=\"google\""), "{page}");
    // An unknown service is refused when the link is made.
    let r = http
        .post(server.url("/api/v1/integrations/connect-sessions"))
        .bearer_auth(&member)
        .json(&json!({"services": ["myspace"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

/// What a provider or a stored link says is text on the API server's pages, never
/// markup: a provider's `error_description` on the callback page, a user's email on
/// the connect page. Both pages keep their privacy headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_escape_what_providers_and_links_say() {
    use flow8_host::store::embedded::EmbeddedStore;
    use flow8_host::store::{LinkRecord, Store, new_object_id, now};
    const SCRIPT: &str = "<script>alert(1)</script>";
    const ESCAPED: &str = "&lt;script&gt;alert(1)&lt;";
    let cli = Cli::new();
    let port = ServerProcess::free_port();
    // The provider is never called: it refuses at the authorization step.
    let config = format!(
        "oauth_background_refresh_seconds: 0\noauth2:\n  google:\n    client_id: flow8-test-client\n    redirect_uri: http://127.0.0.1:{port}/auth/callback\n    scopes: [drive]\n    authorize_url: http://127.0.0.1:9/authorize\n    token_url: http://127.0.0.1:9/token\n"
    );
    let path = cli.data_dir.path().join("config.yml");
    std::fs::write(&path, config).unwrap();
    let member = create_token(&cli, "company-a", "alice", false);
    let server = ServerProcess::start_on(
        &cli,
        &wasm_dir(),
        &format!("127.0.0.1:{port}"),
        &["--config", path.to_str().unwrap()],
    );
    let http = reqwest::Client::new();
    let private = |r: &reqwest::Response| {
        let h = r.headers();
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["x-frame-options"], "DENY");
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
    };

    // The callback page, after the provider refused with a hostile description.
    let v: Value = http
        .get(server.url("/api/v1/integrations/authorize?service=google"))
        .bearer_auth(&member)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let auth_url = url::Url::parse(v["auth_url"].as_str().unwrap()).unwrap();
    let state = auth_url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let cookie = format!(
        "flow8_oauth_binding={}",
        v["browser_binding"]["value"].as_str().unwrap()
    );
    let r = http
        .get(server.url("/auth/callback"))
        .query(&[
            ("state", state.as_str()),
            ("error", "access_denied"),
            ("error_description", SCRIPT),
        ])
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    private(&r);
    let page = r.text().await.unwrap();
    assert!(page.contains("Not connected"), "{page}");
    assert!(
        !page.contains("<script>") && page.contains(ESCAPED),
        "{page}"
    );

    // The connect page, listing a link whose provider gave a hostile email.
    let store = EmbeddedStore::open(cli.data_dir.path()).await.unwrap();
    let vault = flow8_host::vault::Vault::new(flow8_host::vault::MasterKey::generate());
    let t = now();
    let id = new_object_id();
    let access_token = vault.encrypt(
        "unused",
        &flow8_host::store::sealing::link(
            "company-a",
            &id,
            flow8_host::store::sealing::ACCESS_TOKEN,
        ),
    );
    store
        .insert_link(LinkRecord {
            id,
            user_id: "alice".into(),
            company_id: "company-a".into(),
            integration_type: "google".into(),
            access_token,
            refresh_token: None,
            token_expiry: None,
            scopes: vec!["drive".into()],
            provider_user_id: "u1".into(),
            provider_user_email: SCRIPT.into(),
            provider_metadata: json!({}),
            status: flow8_host::store::LinkStatus::Active,
            status_reason: None,
            shared_with: Vec::new(),
            webhook_signature_secret: None,
            refresh_lease_owner: None,
            refresh_lease_until: None,
            refresh_retry_after: None,
            version: 0,
            created_at: t,
            updated_at: t,
        })
        .await
        .unwrap();
    let session: Value = http
        .post(server.url("/api/v1/integrations/connect-sessions"))
        .bearer_auth(&member)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = http
        .get(session["connect_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    private(&r);
    // The page binds its buttons to this browser.
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("flow8_oauth_binding=")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let page = r.text().await.unwrap();
    assert!(page.contains("data-service=\"google\""), "{page}");
    assert!(
        !page.contains("<script>") && page.contains(ESCAPED),
        "{page}"
    );
}
