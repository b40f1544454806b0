//! microsoft-calendar end to end: a Microsoft link made through a real OAuth2 server
//! (oauth2-mock-server, with Microsoft's implied `offline_access`), then the module
//! creates the flow8 document's meeting through a Graph fake; Graph's errors come back
//! named and 429s are waited out.

use flow8_tests::graph_fake::{GraphFailure, GraphFake};
use flow8_tests::oauth_server::OAuthServer;
use flow8_tests::{Cli, ServerProcess, create_token, wasm_dir};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meeting_invite_is_created_and_graph_errors_are_named() {
    let oauth = OAuthServer::start(3600, &[]);
    let graph = GraphFake::start();
    let cli = Cli::new();
    let port = ServerProcess::free_port();
    let config = format!(
        "oauth_refresh_window_seconds: 300\noauth2:\n  microsoft:\n    client_id: 550e8400-e29b-41d4-a716-446655440000\n    client_secret: test\n    redirect_uri: http://127.0.0.1:{port}/auth/callback\n    scopes: [Mail.Send, Calendars.ReadWrite]\n    auto_create_users: false\n    authorize_url: {o}/authorize\n    token_url: {o}/token\n    identity_url: {o}/userinfo\n    api_base_url: {g}/v1.0\n    api_hosts: ['http://127.0.0.1:{gp}']\n",
        o = oauth.base,
        g = graph.base(),
        gp = graph.addr.port()
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

    // Connect: Microsoft needs offline_access for a refresh token; the host adds it.
    let r = http
        .get(server.url("/api/v1/integrations/authorize?service=microsoft"))
        .bearer_auth(&member)
        .send()
        .await
        .unwrap();
    let answer = r.json::<Value>().await.unwrap();
    let auth_url = answer["auth_url"].as_str().unwrap().to_string();
    assert!(
        auth_url.contains("scope=Mail.Send+Calendars.ReadWrite+offline_access"),
        "{auth_url}"
    );
    let callback = flow8_tests::consent(&http, &auth_url).await;
    let r = http
        .get(&callback)
        .header("accept", "application/json")
        .header("cookie", flow8_tests::binding_cookie(&answer))
        .send()
        .await
        .unwrap();
    let link_id = r.json::<Value>().await.unwrap()["link"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let step = |input: Value| {
        let (http, url, member) = (http.clone(), server.url("/api/v1/steps"), member.clone());
        async move {
            let body = json!({"name": "send-meeting-invite", "module_ref": "microsoft-calendar", "input_mapping": input});
            let r = http
                .post(url)
                .bearer_auth(member)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    // The flow8 document's step.
    let invite = json!({
        "link_id": link_id,
        "event_title": "flow8 Demo",
        "attendees": ["user@company.com"],
        "start_time": "2026-04-05T10:00:00Z",
        "end_time": "2026-04-05T11:00:00Z"
    });
    let (status, v) = step(invite.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["output"]["id"].as_str().unwrap().starts_with("AAMk"));
    assert!(v["output"]["webLink"].as_str().unwrap().contains("outlook"));
    let events = graph.events();
    assert_eq!(events.len(), 1);
    let (token, event) = &events[0];
    assert_eq!(
        token.split('.').count(),
        3,
        "the link's access token (a JWT) was attached"
    );
    assert_eq!(event["subject"], "flow8 Demo");
    assert_eq!(
        event["start"],
        json!({"dateTime": "2026-04-05T10:00:00", "timeZone": "UTC"})
    );
    assert_eq!(
        event["attendees"][0]["emailAddress"]["address"],
        "user@company.com"
    );
    assert_eq!(event["attendees"][0]["type"], "required");

    graph.inject([GraphFailure {
        status: 403,
        retry_after: None,
    }]);
    let (status, v) = step(invite.clone()).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (403, Some("insufficient_scope")),
        "{v}"
    );
    // A 401: the module has the host refresh the token once and retries with the new one.
    // (The refresh window is 5 minutes and tokens live an hour: only forced refreshes.)
    let refreshes = 0;
    graph.inject([GraphFailure {
        status: 401,
        retry_after: None,
    }]);
    let (status, v) = step(invite.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        oauth.token_requests_at_least("refresh_token", refreshes + 1),
        refreshes + 1
    );
    let events = graph.events();
    let latest = events.last().unwrap().0.clone();
    // (The mock signs identical claims within one second identically, so the refreshed
    // token may equal the old one; the refresh request count above is the proof.)
    assert!(
        !v.to_string().contains(&latest),
        "the new token is redacted"
    );
    // Refused again after the refresh: token_revoked, and only one refresh.
    graph.inject([
        GraphFailure {
            status: 401,
            retry_after: None,
        },
        GraphFailure {
            status: 401,
            retry_after: None,
        },
    ]);
    let (status, v) = step(invite.clone()).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (401, Some("token_revoked")),
        "{v}"
    );
    assert_eq!(
        oauth.token_requests_at_least("refresh_token", refreshes + 2),
        refreshes + 2
    );
    graph.inject([
        GraphFailure {
            status: 429,
            retry_after: Some(1),
        },
        GraphFailure {
            status: 503,
            retry_after: Some(1),
        },
    ]);
    let (status, v) = step(invite.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(graph.events().len(), 3);

    let bad = json!({"link_id": link_id, "event_title": "x", "start_time": "tomorrow at ten", "end_time": "2026-04-05T11:00:00Z"});
    let (status, v) = step(bad).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_input")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_the_cli_connect_microsoft_then_create_an_event() {
    let oauth = OAuthServer::start(3600, &[]);
    let graph = GraphFake::start();
    let cli = Cli::new();
    let port = ServerProcess::free_port();
    let config = format!(
        "oauth_refresh_window_seconds: 300\noauth2:\n  microsoft:\n    client_id: local\n    redirect_uri: http://127.0.0.1:{port}/auth/callback\n    scopes: [Calendars.ReadWrite]\n    authorize_url: {o}/authorize\n    token_url: {o}/token\n    identity_url: {o}/userinfo\n    api_base_url: {g}/v1.0\n    api_hosts: ['http://127.0.0.1:{gp}']\n",
        o = oauth.base,
        g = graph.base(),
        gp = graph.addr.port()
    );
    let config_path = cli.data_dir.path().join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    let link = flow8_tests::links_connect(&cli, &config_path, "microsoft").await;
    let input = cli.data_dir.path().join("invite.json");
    std::fs::write(
        &input,
        json!({"link_id": link["id"], "event_title": "flow8 Demo", "attendees": ["user@company.com"],
            "start_time": "2026-04-05T10:00:00Z", "end_time": "2026-04-05T11:00:00Z"})
        .to_string(),
    )
    .unwrap();
    let mut cli = cli;
    cli.env
        .push(("FLOW8_CONFIG".into(), config_path.display().to_string()));
    let out = cli
        .run(&[
            "run-module",
            "microsoft-calendar",
            input.to_str().unwrap(),
            "--allow-loopback",
        ])
        .ok_json();
    assert!(out["id"].as_str().unwrap().starts_with("AAMk"), "{out}");
    assert_eq!(graph.events()[0].1["subject"], "flow8 Demo");
}
