//! Sealed secrets are bound to their records (issue 18 item 16): someone who can write
//! to the store copies company A's sealed API key into company B's component, and A's
//! OAuth tokens into B's link, in the real embedded store a running `flow8-host serve`
//! uses. The host refuses to open them there (`vault_error`, naming the record) and
//! sends nothing; A's own step and health check, on the same host, run as before.

use flow8_host::store::embedded::EmbeddedStore;
use flow8_host::store::{LinkRecord, LinkStatus, Store, new_object_id, now, sealing};
use flow8_host::vault::Vault;
use flow8_tests::{Cli, RecordingServer, ServerProcess, create_token, wasm_dir};
use serde_json::{Value, json};

async fn call(server: &ServerProcess, token: &str, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(server.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A Slack link of `company`, its tokens sealed for it as the OAuth callback seals them.
fn link(vault: &Vault, company: &str, user: &str, token: &str) -> LinkRecord {
    let id = new_object_id();
    let seal = |plain: &str, field| vault.encrypt(plain, &sealing::link(company, &id, field));
    LinkRecord {
        access_token: seal(token, sealing::ACCESS_TOKEN),
        refresh_token: Some(seal("xoxe-refresh", sealing::REFRESH_TOKEN)),
        id: id.clone(),
        user_id: user.into(),
        company_id: company.into(),
        integration_type: "slack".into(),
        token_expiry: None,
        scopes: vec!["chat:write".into()],
        provider_user_id: "U1".into(),
        provider_user_email: format!("{user}@example.com"),
        provider_metadata: json!({}),
        status: LinkStatus::Active,
        status_reason: None,
        shared_with: vec![],
        webhook_signature_secret: None,
        refresh_lease_owner: None,
        refresh_lease_until: None,
        refresh_retry_after: None,
        version: 0,
        created_at: now(),
        updated_at: now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_copied_into_another_companys_record_is_refused_there() {
    let cli = Cli::new();
    let api = RecordingServer::start();
    let config = format!(
        "oauth_background_refresh_seconds: 0\noauth2:\n  slack:\n    client_id: flow8-test\n    client_secret: test-secret\n    redirect_uri: http://127.0.0.1:9/auth/callback\n    identity_url: {}\n",
        api.url("/identity")
    );
    let config_path = cli.data_dir.path().join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    let admin_a = create_token(&cli, "company-a", "root", true);
    let admin_b = create_token(&cli, "company-b", "root", true);
    let member_a = create_token(&cli, "company-a", "alice", false);
    let member_b = create_token(&cli, "company-b", "bob", false);
    let server = ServerProcess::start(
        &cli,
        &wasm_dir(),
        &["--config", config_path.to_str().unwrap()],
    );

    // Each company stores its own key through the API (the host seals it).
    let mut ids = Vec::new();
    for (admin, secret) in [(&admin_a, "canary-key-of-a"), (&admin_b, "canary-key-of-b")] {
        let body = json!({"name": "api", "config": {"provider": "http", "base_url": api.url(""),
            "auth_header": "X-Api-Key", "auth_value": secret}});
        let (status, v) = call(&server, admin, "/api/v1/admin/components", body).await;
        assert_eq!(status, 201, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let step = |url: &str| {
        json!({"name": "call", "module_ref": "http-request", "bindings": {"request": "api"},
            "input_mapping": {"url": url}})
    };

    // Someone with write access to the store copies A's sealed key into B's component.
    let store = EmbeddedStore::open(cli.data_dir.path()).await.unwrap();
    let a = store
        .get_component("company-a", &ids[0])
        .await
        .unwrap()
        .unwrap();
    let b = store
        .get_component("company-b", &ids[1])
        .await
        .unwrap()
        .unwrap();
    let mut moved = b.config.clone();
    moved.insert("auth_value".into(), a.config["auth_value"].clone());
    assert!(
        store
            .replace_component_config("company-b", &b.id, &b.config, moved)
            .await
            .unwrap()
    );

    // B's step is refused with the vault's name, before anything is sent.
    let (status, v) = call(&server, &member_b, "/api/v1/steps", step("/from-b")).await;
    assert_eq!(v["error"], "vault_error", "{status} {v}");
    assert_eq!(status, 500, "{v}");
    let message = v["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("does not belong to this record")
            && message.contains("company-b")
            && !message.contains("canary"),
        "{v}"
    );
    assert!(
        api.requests().iter().all(|r| r.uri != "/from-b"),
        "nothing was sent for B"
    );
    // A's step on the same host runs normally, with A's own key.
    let (status, v) = call(&server, &member_a, "/api/v1/steps", step("/from-a")).await;
    assert_eq!(status, 200, "{v}");
    let sent = api.requests();
    let from_a = sent
        .iter()
        .find(|r| r.uri == "/from-a")
        .expect("A's request");
    assert_eq!(from_a.header("x-api-key"), Some("canary-key-of-a"));

    // The same for OAuth tokens: A's link tokens copied into B's link.
    let vault = Vault::load(cli.data_dir.path()).unwrap();
    let la = link(&vault, "company-a", "alice", "xoxb-token-of-a");
    let lb = link(&vault, "company-b", "bob", "xoxb-token-of-b");
    store.insert_link(la.clone()).await.unwrap();
    store.insert_link(lb.clone()).await.unwrap();
    let mut stolen = lb.clone();
    stolen.access_token = la.access_token.clone();
    stolen.refresh_token = la.refresh_token.clone();
    assert!(store.update_link_cas(stolen, lb.version).await.unwrap());
    let before = api.requests().len();
    let (status, v) = call(
        &server,
        &member_b,
        "/api/v1/integrations/test",
        json!({"link_id": lb.id}),
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (500, Some("vault_error")),
        "{v}"
    );
    assert_eq!(
        api.requests().len(),
        before,
        "no identity call with A's token"
    );
    // A's link still opens: its health check reaches the provider with A's token.
    let (status, v) = call(
        &server,
        &member_a,
        "/api/v1/integrations/test",
        json!({"link_id": la.id}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let identity = api.requests();
    let last = identity.last().expect("the identity call");
    assert_eq!(last.uri, "/identity");
    assert_eq!(last.header("authorization"), Some("Bearer xoxb-token-of-a"));
}
