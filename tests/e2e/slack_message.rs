//! Slack end to end: connect through Slack's OAuth v2 (a fake that follows Slack's
//! documented shapes), then the slack-message module posts through the host, which
//! attaches the bot token. Slack's `ok:false` errors and 429s come back named.

use flow8_tests::slack_fake::{Inject, SlackFake};
use flow8_tests::{Cli, ServerProcess, create_token, wasm_dir};
use serde_json::{Value, json};

struct Slack {
    _cli: Cli,
    fake: SlackFake,
    server: ServerProcess,
    member: String,
    http: reqwest::Client,
}

fn setup() -> Slack {
    let fake = SlackFake::start();
    let cli = Cli::new();
    let port = ServerProcess::free_port();
    let b = fake.base();
    let config = format!(
        "oauth2:\n  slack:\n    client_id: '123.456'\n    client_secret: slack-test-secret\n    redirect_uri: http://127.0.0.1:{port}/auth/callback\n    scopes: ['chat:write', 'files:write']\n    authorize_url: {b}/oauth/v2/authorize\n    token_url: {b}/api/oauth.v2.access\n    revoke_url: {b}/api/auth.revoke\n    identity_url: {b}/api/auth.test\n    api_base_url: {b}/api\n    api_hosts: ['http://127.0.0.1:{fp}']\n",
        fp = fake.addr.port()
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
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Slack {
        _cli: cli,
        fake,
        server,
        member,
        http,
    }
}

impl Slack {
    async fn connect(&self) -> String {
        let r = self
            .http
            .get(
                self.server
                    .url("/api/v1/integrations/authorize?service=slack"),
            )
            .bearer_auth(&self.member)
            .send()
            .await
            .unwrap();
        let answer = r.json::<Value>().await.unwrap();
        let auth_url = answer["auth_url"].as_str().unwrap().to_string();
        assert!(
            auth_url.contains("scope=chat%3Awrite%2Cfiles%3Awrite"),
            "Slack joins scopes with commas: {auth_url}"
        );
        let callback = flow8_tests::consent(&self.http, &auth_url).await;
        let r = self
            .http
            .get(&callback)
            .header("cookie", flow8_tests::binding_cookie(&answer))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(r.text().await.unwrap().contains("Connected!"));
        let r = self
            .http
            .get(self.server.url("/api/v1/integrations/links?service=slack"))
            .bearer_auth(&self.member)
            .send()
            .await
            .unwrap();
        let links: Value = r.json().await.unwrap();
        let link = &links["links"][0];
        assert_eq!(
            link["provider_user_id"], "U123",
            "Slack's authed_user.id: {links}"
        );
        link["id"].as_str().unwrap().to_string()
    }

    async fn post(&self, input: Value) -> (u16, Value) {
        let body =
            json!({"name": "notify-slack", "module_ref": "slack-message", "input_mapping": input});
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
async fn a_message_is_posted_with_the_token_the_host_attached() {
    let s = setup();
    let link = s.connect().await;
    // The flow8 document's example step.
    let (status, v) = s
        .post(json!({
            "link_id": link,
            "channel": "#notifications",
            "message": "Invoice #001 processed successfully",
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "Invoice Processed"}}]
        }))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["channel"], "C0NOTIFY");
    assert!(
        v["output"]["ts"]
            .as_str()
            .unwrap()
            .starts_with("1712230000.")
    );
    let posts = s.fake.calls("chat.postMessage");
    assert_eq!(posts.len(), 1);
    assert!(posts[0].token.as_deref().unwrap().starts_with("xoxb-fake-"));
    assert_eq!(posts[0].body["text"], "Invoice #001 processed successfully");
    assert_eq!(
        posts[0].body["blocks"][0]["text"]["text"],
        "Invoice Processed"
    );
    // The module never read the token: the host attached it.
    assert_eq!(v["credentials_used"][0]["how"], "attached");
    assert!(!v.to_string().contains("xoxb-"));

    // Unlinking revokes the token at Slack (auth.revoke).
    let token = posts[0].token.clone().unwrap();
    let r = s
        .http
        .delete(s.server.url(&format!("/api/v1/integrations/slack/{link}")))
        .bearer_auth(&s.member)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert!(!s.fake.token_live(&token));
    let (status, v) = s
        .post(json!({"link_id": link, "channel": "#notifications", "message": "again"}))
        .await;
    assert_eq!((status, v["error"].as_str()), (403, Some("access_denied")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_errors_and_rate_limits_come_back_named() {
    let s = setup();
    let link = s.connect().await;
    let msg = |channel: &str| json!({"link_id": link, "channel": channel, "message": "hi"});

    let (status, v) = s.post(msg("#random")).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_input")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("not_in_channel"));
    let (_, v) = s.post(msg("#nope")).await;
    assert_eq!(v["error"], "invalid_input");

    s.fake.inject([Inject::SlackError("missing_scope")]);
    let (status, v) = s.post(msg("#notifications")).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (403, Some("insufficient_scope"))
    );
    s.fake.inject([Inject::SlackError("token_revoked")]);
    let (status, v) = s.post(msg("#notifications")).await;
    assert_eq!((status, v["error"].as_str()), (401, Some("token_revoked")));

    // A 429 with Retry-After is waited out, then the post succeeds.
    let before = s.fake.calls("chat.postMessage").len();
    s.fake.inject([Inject::RateLimited(1)]);
    let started = std::time::Instant::now();
    let (status, v) = s.post(msg("#notifications")).await;
    assert_eq!(status, 200, "{v}");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "Retry-After was honoured"
    );
    assert_eq!(s.fake.calls("chat.postMessage").len(), before + 2);

    // Rate limited for longer than the step may wait: rate_limit_exceeded.
    s.fake.inject([Inject::RateLimited(120)]);
    let body = json!({"module_ref": "slack-message", "input_mapping": msg("#notifications"), "limits": {"deadline_seconds": 5}});
    let r = s
        .http
        .post(s.server.url("/api/v1/steps"))
        .bearer_auth(&s.member)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "rate_limit_exceeded");
    assert_eq!(v["retry_after_seconds"], 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_the_cli_connect_slack_then_post() {
    let fake = SlackFake::start();
    let mut cli = Cli::new();
    let port = ServerProcess::free_port();
    let b = fake.base();
    let config = format!(
        "oauth2:\n  slack:\n    client_id: '123.456'\n    redirect_uri: http://127.0.0.1:{port}/auth/callback\n    scopes: ['chat:write']\n    authorize_url: {b}/oauth/v2/authorize\n    token_url: {b}/api/oauth.v2.access\n    revoke_url: {b}/api/auth.revoke\n    identity_url: {b}/api/auth.test\n    api_base_url: {b}/api\n    api_hosts: ['http://127.0.0.1:{fp}']\n",
        fp = fake.addr.port()
    );
    let config_path = cli.data_dir.path().join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    cli.env
        .push(("FLOW8_CONFIG".into(), config_path.display().to_string()));
    let link = flow8_tests::links_connect(&cli, &config_path, "slack").await;

    let input = cli.data_dir.path().join("notify.json");
    std::fs::write(
        &input,
        json!({"link_id": link["id"], "channel": "#notifications", "message": "from the CLI"})
            .to_string(),
    )
    .unwrap();
    let out = cli
        .run(&[
            "run-module",
            "slack-message",
            input.to_str().unwrap(),
            "--allow-loopback",
        ])
        .ok_json();
    assert_eq!(out["channel"], "C0NOTIFY");
    let posts = fake.calls("chat.postMessage");
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].body["text"], "from the CLI");
    assert!(posts[0].token.as_deref().unwrap().starts_with("xoxb-fake-"));
}
