//! OAuth links from the CLI, for people testing modules locally: `links connect` runs
//! the connect flow with a callback on the configured loopback redirect URI and stores
//! the link in the embedded store; `run-module` then uses it; `links list|test|delete`
//! mirror the API.

use flow8_tests::oauth_server::OAuthServer;
use flow8_tests::{Cli, RecordingServer, ServerProcess, wasm_dir};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_then_run_a_module_with_the_link() {
    let oauth = OAuthServer::start(3600, &[]);
    let mut cli = Cli::new();
    let port = ServerProcess::free_port();
    let config = format!(
        "oauth2:\n  google:\n    client_id: local-test\n    redirect_uri: http://127.0.0.1:{port}/auth/callback\n    scopes: [drive]\n    authorize_url: {b}/authorize\n    token_url: {b}/token\n    revoke_url: {b}/revoke\n    identity_url: {b}/userinfo\n    api_hosts: ['http://127.0.0.1:*']\n",
        b = oauth.base
    );
    let config_path = cli.data_dir.path().join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    cli.env
        .push(("FLOW8_CONFIG".into(), config_path.display().to_string()));

    // `links connect google` prints the URL, then waits for the browser.
    let link = flow8_tests::links_connect(&cli, &config_path, "google").await;
    let link_id = link["id"].as_str().unwrap().to_string();
    assert_eq!(link["integration_type"], "google");

    let listed = cli.run(&["links", "list"]).ok_json();
    assert_eq!(listed[0]["id"], link_id.as_str());
    let health = cli.run(&["links", "test", &link_id]).ok_json();
    assert_eq!(health["status"], "ok", "{health}");

    // A module run from the CLI uses the link; the host attaches its token.
    let api = RecordingServer::start();
    let input = cli.data_dir.path().join("in.json");
    std::fs::write(
        &input,
        json!({"attack": "http", "url": api.url("/files"), "credential": "google", "link_id": link_id}).to_string(),
    )
    .unwrap();
    let out = cli
        .run(&[
            "run-module",
            wasm_dir().join("hostile_guest.wasm").to_str().unwrap(),
            input.to_str().unwrap(),
            "--allow-loopback",
        ])
        .ok_json();
    assert_eq!(out["status"], 200, "{out}");
    assert!(
        api.requests()[0]
            .header("authorization")
            .unwrap()
            .starts_with("Bearer ")
    );

    let deleted = cli.run(&["links", "delete", "google", &link_id]).ok_json();
    assert_eq!(deleted["deleted"], true);
    // (The link was refreshed when used: its token expires within the default 1-hour window.)
    // The latest refresh token is the one revoked (events arrive on another thread).
    assert!(oauth.wait_until(|o| {
        let revoked = o.revoked();
        o.refresh_tokens_issued()
            .last()
            .is_some_and(|t| revoked.contains(t))
    }));
    let out = cli.run(&[
        "run-module",
        wasm_dir().join("hostile_guest.wasm").to_str().unwrap(),
        input.to_str().unwrap(),
        "--allow-loopback",
    ]);
    assert_eq!(
        out.error_name().as_deref(),
        Some("access_denied"),
        "{out:?}"
    );
}

/// The CLI's callback page shows what the provider said, escaped: a provider's
/// `error_description` is text on the page, never markup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callback_page_escapes_what_the_provider_says() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let cli = Cli::new();
    let port = ServerProcess::free_port();
    // The provider is never called: it refuses at the authorization step.
    let config = format!(
        "oauth2:\n  google:\n    client_id: local-test\n    redirect_uri: http://127.0.0.1:{port}/auth/callback\n    scopes: [drive]\n    authorize_url: http://127.0.0.1:9/authorize\n    token_url: http://127.0.0.1:9/token\n"
    );
    let config_path = cli.data_dir.path().join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(flow8_tests::host_bin())
        .args(["links", "connect", "google", "--timeout-secs", "60"])
        .env("FLOW8_DATA_DIR", cli.data_dir.path())
        .env("FLOW8_CACHE_DIR", flow8_tests::shared_cache_dir())
        .env("FLOW8_CONFIG", &config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let auth_url = url::Url::parse(line.trim()).unwrap();
    let state = auth_url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    // The CLI listens before it prints the URL.
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/auth/callback"))
        .query(&[
            ("state", state.as_str()),
            ("error", "access_denied"),
            ("error_description", "<script>alert(1)</script>"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    let page = r.text().await.unwrap();
    assert!(page.contains("Not connected"), "{page}");
    assert!(!page.contains("<script>"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;"), "{page}");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: access_denied: "),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
