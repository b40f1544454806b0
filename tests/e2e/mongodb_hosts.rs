//! Several host processes on one MongoDB (a real SecantusDB server) behave as one host:
//! tokens, components and links made on either are seen by the other at once (and
//! removed ones within `record_cache_seconds`), a
//! refresh storm across both makes one token request, a host that died holding a
//! refresh lease blocks the link no longer than the lease, and a MongoDB outage gives
//! `store_unavailable` fast, writes nothing half, and heals without a restart. A module
//! installed through one host runs on the other, and its new versions and its removal
//! reach the other host at the next step.

use flow8_host::store::Store;
use flow8_host::store::mongodb::MongoStore;
use flow8_tests::bounded::{Answer, refused_past_the_bound};
use flow8_tests::mongo_server::MongoServer;
use flow8_tests::oauth_server::OAuthServer;
use flow8_tests::wat_guest::WatGuest;
use flow8_tests::{Cli, RecordingServer, ServerProcess, create_token, wasm_dir};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const MASTER_KEY: &str = "4f1c2b8e9d0a7f6e5d4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a291807f6e";

/// A host's CLI (its own data directory: nothing shared on disk) on the MongoDB store.
fn host_cli(uri: &str) -> Cli {
    let mut cli = Cli::new();
    cli.env.push(("FLOW8_STORE".into(), uri.into()));
    cli.env.push(("FLOW8_MASTER_KEY".into(), MASTER_KEY.into()));
    cli
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn oauth_config(cli: &Cli, port: u16, oauth: &OAuthServer) -> std::path::PathBuf {
    let config = format!(
        "oauth_refresh_window_seconds: 300\noauth_background_refresh_seconds: 0\noauth2:\n  google:\n    client_id: flow8-test-client\n    client_secret: test-secret\n    redirect_uri: http://127.0.0.1:{port}/auth/callback\n    scopes: [drive, sheets]\n    authorize_url: {b}/authorize\n    token_url: {b}/token\n    revoke_url: {b}/revoke\n    identity_url: {b}/userinfo\n    api_hosts: ['http://127.0.0.1:*']\n",
        b = oauth.base
    );
    let path = cli.data_dir.path().join("config.yml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Connect a Google link through `host` (the browser's part done with a real client).
async fn connect(http: &reqwest::Client, host: &ServerProcess, token: &str) -> String {
    let (s, v) = call(
        http,
        reqwest::Method::GET,
        host.url("/api/v1/integrations/authorize?service=google"),
        token,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let callback = flow8_tests::consent(http, v["auth_url"].as_str().unwrap()).await;
    let r = http
        .get(&callback)
        .header("accept", "application/json")
        .header("cookie", flow8_tests::binding_cookie(&v))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    v["link"]["id"].as_str().unwrap().to_string()
}

/// A step body: the hostile guest calls `url` with the Google link's token attached.
fn linked_call(url: String, link_id: &str) -> Value {
    json!({"module_ref": "hostile", "input_mapping": {
        "attack": "http", "url": url, "credential": "google", "link_id": link_id
    }})
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_on_one_mongodb_behave_as_one() {
    let mongo = MongoServer::start();
    let uri = mongo.uri("flow8");
    // The first access token is nearly expired (20 s, inside the 300 s window).
    let oauth = OAuthServer::start(3600, &[20]);
    let (a_cli, b_cli) = (host_cli(&uri), host_cli(&uri));
    let a_port = ServerProcess::free_port();
    let a_config = oauth_config(&a_cli, a_port, &oauth);
    let b_config = oauth_config(&b_cli, a_port, &oauth);
    // Tokens made by one host's CLI work on the other host.
    let member = create_token(&a_cli, "company-a", "alice", false);
    let admin = create_token(&b_cli, "company-a", "root", true);
    let a = ServerProcess::start_on(
        &a_cli,
        &wasm_dir(),
        &format!("127.0.0.1:{a_port}"),
        &["--config", a_config.to_str().unwrap()],
    );
    let b = ServerProcess::start(
        &b_cli,
        &wasm_dir(),
        &["--config", b_config.to_str().unwrap()],
    );
    let http = no_redirects();

    // A component created on B is used at once by a step on A.
    let api = RecordingServer::start();
    let (s, v) = call(
        &http,
        reqwest::Method::POST,
        b.url("/api/v1/admin/components"),
        &admin,
        Some(json!({"name": "api", "kind": "http", "config": {
            "provider": "http", "base_url": api.url(""), "auth_header": "X-Api-Key", "auth_value": "canary-key-123"
        }})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        &http,
        reqwest::Method::POST,
        a.url("/api/v1/steps"),
        &member,
        Some(
            json!({"module_ref": "http-request", "bindings": {"request": "api"},
            "input_mapping": {"url": "/from-a"}}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let got = api.requests();
    assert_eq!(got[0].uri, "/from-a");
    assert!(
        got[0]
            .headers
            .iter()
            .any(|(k, v)| k == "x-api-key" && v == "canary-key-123"),
        "{:?}",
        got[0].headers
    );

    // A link connected through A is listed by B at once.
    let link_id = connect(&http, &a, &member).await;
    let (s, v) = call(
        &http,
        reqwest::Method::GET,
        b.url("/api/v1/integrations/links"),
        &member,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["links"][0]["id"], link_id.as_str());

    // A refresh storm across both hosts: one token request.
    let mut steps = Vec::new();
    for i in 0..60 {
        let url = if i % 2 == 0 {
            a.url("/api/v1/steps")
        } else {
            b.url("/api/v1/steps")
        };
        let body = linked_call(api.url(&format!("/n/{i}")), &link_id);
        let (http, member) = (http.clone(), member.clone());
        steps.push(tokio::spawn(async move {
            call(&http, reqwest::Method::POST, url, &member, Some(body)).await
        }));
    }
    for t in steps {
        let (status, v) = t.await.unwrap();
        assert_eq!(status, 200, "{v}");
    }
    assert_eq!(
        oauth.token_requests_at_least("refresh_token", 1),
        1,
        "{:?}",
        oauth.events()
    );
    // Both hosts see the audit entries of both.
    let (_, audit) = call(
        &http,
        reqwest::Method::GET,
        a.url("/api/v1/admin/audit?action_type=component_created"),
        &admin,
        None,
    )
    .await;
    assert_eq!(
        audit["entries"].as_array().map(Vec::len),
        Some(1),
        "{audit}"
    );
    // Unlinking on B makes B's next step fail with access_denied at once, and every
    // step on A sent past `record_cache_seconds` (A may keep the link's record that
    // long).
    let (s, _) = call(
        &http,
        reqwest::Method::DELETE,
        b.url(&format!("/api/v1/integrations/google/{link_id}")),
        &member,
        None,
    )
    .await;
    assert_eq!(s, 204);
    let unlinked_at = Instant::now();
    let linked_step = |host: &ServerProcess| {
        call(
            &http,
            reqwest::Method::POST,
            host.url("/api/v1/steps"),
            &member,
            Some(linked_call(api.url("/after"), &link_id)),
        )
    };
    let (s, v) = linked_step(&b).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("access_denied")),
        "{v}"
    );
    let bound = flow8_host::config::DEFAULT_RECORD_CACHE;
    refused_past_the_bound(unlinked_at, bound, || async {
        Answer::of_step(linked_step(&a).await, (403, "access_denied"))
    })
    .await;
}

/// Install `bytes` through `host` as `token`'s company; the status and answer.
async fn install(
    http: &reqwest::Client,
    host: &ServerProcess,
    token: &str,
    bytes: Vec<u8>,
) -> (u16, Value) {
    let r = http
        .post(host.url("/api/v1/admin/modules"))
        .bearer_auth(token)
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Run the installed module `module_ref` through `url`.
async fn step_on(
    http: &reqwest::Client,
    url: String,
    token: &str,
    module_ref: &str,
) -> (u16, Value) {
    let body = json!({"module_ref": module_ref, "input_mapping": {}});
    call(http, reqwest::Method::POST, url, token, Some(body)).await
}

/// Issue 17 item 4: installed modules lived in the installing host's data directory,
/// so host B answered `module_not_found` for a module installed through host A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_installed_through_one_host_runs_on_the_other() {
    let mongo = MongoServer::start();
    let uri = mongo.uri("flow8");
    let (a_cli, b_cli) = (host_cli(&uri), host_cli(&uri));
    // Shared modules: the first-party http-request only (nothing named like ours).
    let shared = tempfile::tempdir().unwrap();
    std::fs::copy(
        wasm_dir().join("http_request.wasm"),
        shared.path().join("http_request.wasm"),
    )
    .unwrap();
    let admin = create_token(&a_cli, "company-a", "root", true);
    let member = create_token(&b_cli, "company-a", "alice", false);
    let other = create_token(&b_cli, "company-b", "carol", true);
    let a = ServerProcess::start(&a_cli, shared.path(), &[]);
    let b = ServerProcess::start(&b_cli, shared.path(), &[]);
    let http = reqwest::Client::new();
    let guest = |version: &str| {
        let mut g = WatGuest::with_schema("shared-thing", json!({"type": "object"}));
        g.manifest["version"] = json!(version);
        g.component()
    };
    let run = |module_ref: &'static str, token: &str| {
        let token = token.to_string();
        let (http, url) = (http.clone(), b.url("/api/v1/steps"));
        async move { step_on(&http, url, &token, module_ref).await }
    };

    let (s, v) = run("shared-thing", &member).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (404, Some("module_not_found")),
        "{v}"
    );

    // Installed through A, run through B.
    let (s, v) = install(&http, &a, &admin, guest("0.1.0")).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = run("shared-thing", &member).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["module"]["version"], "0.1.0", "{v}");
    let (s, list) = call(
        &http,
        reqwest::Method::GET,
        b.url("/api/v1/modules"),
        &member,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(list.to_string().contains("\"shared-thing\""), "{list}");
    // Still one company's module, on every host.
    let (s, v) = run("shared-thing", &other).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (404, Some("module_not_found")),
        "{v}"
    );
    // The same version through B is a conflict: both hosts see one installation.
    let (s, v) = install(&http, &b, &admin, guest("0.1.0")).await;
    assert_eq!((s, v["error"].as_str()), (409, Some("conflict")), "{v}");

    // A new version through A is what B runs next; the old one is still there by name.
    let (s, v) = install(&http, &a, &admin, guest("0.2.0")).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = run("shared-thing", &member).await;
    assert_eq!(
        (s, v["module"]["version"].as_str()),
        (200, Some("0.2.0")),
        "{v}"
    );
    let (s, v) = run("shared-thing@0.1.0", &member).await;
    assert_eq!(
        (s, v["module"]["version"].as_str()),
        (200, Some("0.1.0")),
        "{v}"
    );

    // Removed through A: B falls back to the version left, then has none.
    for (version, left) in [("0.2.0", Some("0.1.0")), ("0.1.0", None)] {
        let r = http
            .delete(a.url(&format!("/api/v1/admin/modules/shared-thing@{version}")))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
        let (s, v) = run("shared-thing", &member).await;
        match left {
            Some(l) => assert_eq!((s, v["module"]["version"].as_str()), (200, Some(l)), "{v}"),
            None => assert_eq!(
                (s, v["error"].as_str()),
                (404, Some("module_not_found")),
                "{v}"
            ),
        }
    }
    let (s, v) = run("shared-thing@0.2.0", &member).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (404, Some("module_not_found")),
        "{v}"
    );
    // And B goes on running what it has: installed again through B, run through A.
    let (s, v) = install(&http, &b, &admin, guest("0.3.0")).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = step_on(&http, a.url("/api/v1/steps"), &member, "shared-thing").await;
    assert_eq!(
        (s, v["module"]["version"].as_str()),
        (200, Some("0.3.0")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_died_holding_the_refresh_lease_blocks_the_link_only_until_it_expires() {
    let mongo = MongoServer::start();
    let uri = mongo.uri("flow8");
    // The first access token lives one second; later ones an hour.
    let oauth = OAuthServer::start(3600, &[1]);
    let cli = host_cli(&uri);
    let port = ServerProcess::free_port();
    let config = oauth_config(&cli, port, &oauth);
    let member = create_token(&cli, "company-a", "alice", false);
    let host = ServerProcess::start_on(
        &cli,
        &wasm_dir(),
        &format!("127.0.0.1:{port}"),
        &["--config", config.to_str().unwrap()],
    );
    let http = no_redirects();
    let link_id = connect(&http, &host, &member).await;
    // Another host took the lease for 4 s and was killed before it refreshed: what it
    // leaves in the store is exactly this.
    let store = MongoStore::connect(&uri).await.unwrap();
    let held_until = time::OffsetDateTime::now_utc() + time::Duration::seconds(4);
    assert!(
        store
            .try_lease_link("company-a", &link_id, "killed-host", held_until)
            .await
            .unwrap()
            .is_some()
    );
    // Let the access token expire: wait out the expiry the store holds (a clock, not a
    // readiness signal, is what expires it).
    let expiry = store
        .get_link("company-a", &link_id)
        .await
        .unwrap()
        .unwrap()
        .token_expiry
        .expect("the token expires");
    let left = (expiry - time::OffsetDateTime::now_utc()).max(time::Duration::ZERO);
    tokio::time::sleep(Duration::try_from(left).unwrap() + Duration::from_millis(50)).await;
    let api = RecordingServer::start();
    let started = Instant::now();
    let (s, v) = call(
        &http,
        reqwest::Method::POST,
        host.url("/api/v1/steps"),
        &member,
        Some(linked_call(api.url("/x"), &link_id)),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let waited = started.elapsed();
    // It waited for the dead host's lease (about 2.5 s more), then refreshed itself.
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    assert_eq!(oauth.token_requests_at_least("refresh_token", 1), 1);
    let link = store
        .get_link("company-a", &link_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(link.refresh_lease_owner, None);
    assert!(
        link.token_expiry.unwrap() > time::OffsetDateTime::now_utc() + time::Duration::minutes(30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongodb_outage_fails_fast_writes_nothing_and_heals_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut mongo = MongoServer::start_in(dir.path());
    let uri = mongo.uri("flow8");
    let cli = host_cli(&uri);
    let admin = create_token(&cli, "company-a", "root", true);
    let host = ServerProcess::start(&cli, &wasm_dir(), &[]);
    let http = no_redirects();
    let component = |name: &str| {
        Some(json!({"name": name, "kind": "http", "config": {
            "provider": "http", "base_url": "https://api.example.com", "auth_header": "X-Api-Key", "auth_value": "k-123456"
        }}))
    };
    let (s, v) = call(
        &http,
        reqwest::Method::POST,
        host.url("/api/v1/admin/components"),
        &admin,
        component("before"),
    )
    .await;
    assert_eq!(s, 201, "{v}");

    mongo.stop();
    let started = Instant::now();
    let (s, v) = call(
        &http,
        reqwest::Method::GET,
        host.url("/api/v1/admin/components"),
        &admin,
        None,
    )
    .await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"], "store_unavailable", "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let (s, v) = call(
        &http,
        reqwest::Method::POST,
        host.url("/api/v1/admin/components"),
        &admin,
        component("during"),
    )
    .await;
    assert_eq!(s, 503, "{v}");
    let r = http.get(host.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(
        http.get(host.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );

    mongo.restart();
    // The same process recovers: no restart of the host.
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let (s, v) = call(
            &http,
            reqwest::Method::GET,
            host.url("/api/v1/admin/components"),
            &admin,
            None,
        )
        .await;
        if s == 200 {
            break v;
        }
        assert!(Instant::now() < deadline, "not healed: {s} {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let names: Vec<&str> = listed["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["before"],
        "the write made during the outage left nothing"
    );
    let (s, v) = call(
        &http,
        reqwest::Method::POST,
        host.url("/api/v1/admin/components"),
        &admin,
        component("after"),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_refresh_answer_and_the_store_write_loses_no_refresh_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut mongo = MongoServer::start_in(dir.path());
    let uri = mongo.uri("flow8");
    // The provider rotates refresh tokens (a spent one gets invalid_grant). The first
    // two access tokens live 20 s (inside the 300 s refresh window), and each refresh
    // answer is held back 3 s after the old refresh token is spent.
    let oauth = OAuthServer::start_with(3600, &[20, 20], 3000);
    let cli = host_cli(&uri);
    let port = ServerProcess::free_port();
    let config = oauth_config(&cli, port, &oauth);
    let member = create_token(&cli, "company-a", "alice", false);
    let listen = format!("127.0.0.1:{port}");
    let args = ["--config", config.to_str().unwrap()];
    let host = ServerProcess::start_on(&cli, &wasm_dir(), &listen, &args);
    let http = no_redirects();
    let link_id = connect(&http, &host, &member).await;
    let api = RecordingServer::start();
    let step_body = linked_call(api.url("/x"), &link_id);

    // A step that must refresh. The moment the provider has spent the old refresh
    // token, the store goes away: the host gets the new tokens and cannot save them.
    let step = {
        let (http, url, member, body) = (
            http.clone(),
            host.url("/api/v1/steps"),
            member.clone(),
            step_body.clone(),
        );
        tokio::spawn(
            async move { call(&http, reqwest::Method::POST, url, &member, Some(body)).await },
        )
    };
    assert!(oauth.wait_until(|s| s.token_requests("refresh_token") >= 1));
    mongo.stop();
    let (status, v) = step.await.unwrap();
    assert_eq!(status, 503, "{v}");
    // The answer waits in the host's journal, sealed.
    let journal = cli.data_dir.path().join("oauth-journal");
    let entries: Vec<_> = std::fs::read_dir(&journal)
        .expect("a journal")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .collect();
    assert_eq!(entries.len(), 1);
    let text = std::fs::read_to_string(entries[0].path()).unwrap();
    assert!(text.contains("ciphertext"), "tokens are sealed: {text}");
    // No token the provider issued (the connect's and the refresh's) is in the clear.
    // (Not a search for "eyJ", a JWT's start: the ~1,500 base64 characters sealed here
    // hold those three letters by chance in about one journal in 200.)
    oauth.refresh_tokens_at_least(2);
    let issued: Vec<String> = oauth
        .access_tokens_issued()
        .into_iter()
        .chain(oauth.refresh_tokens_issued())
        .collect();
    assert!(issued.len() >= 4, "both answers seen: {issued:?}");
    for token in &issued {
        assert!(
            !text.contains(token.as_str()),
            "a token in the clear: {text}"
        );
    }

    // The host crashes; the store comes back; a new host process starts on the same
    // data directory and writes the journaled tokens before anything else.
    drop(host);
    mongo.restart();
    let host = ServerProcess::start_on(&cli, &wasm_dir(), &listen, &args);
    let (status, v) = call(
        &http,
        reqwest::Method::POST,
        host.url("/api/v1/steps"),
        &member,
        Some(step_body),
    )
    .await;
    // The journaled token also expires within the window, so this step refreshes
    // again, with the journaled refresh token: the provider accepts it.
    assert_eq!(status, 200, "{v}");
    assert_eq!(oauth.token_requests_at_least("refresh_token", 2), 2);
    assert!(
        !oauth
            .events()
            .iter()
            .any(|e| e["outcome"] == "invalid_grant"),
        "a spent refresh token was used: {:?}",
        oauth.events()
    );
    let left = std::fs::read_dir(&journal)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .count();
    assert_eq!(
        left, 0,
        "the journal is empty once the store has the tokens"
    );
}
