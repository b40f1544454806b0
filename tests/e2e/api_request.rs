//! api-request end to end: links of all six shipped OAuth services and of one an
//! operator adds by configuration (`acme-crm`), each connected through a real OAuth2
//! server (oauth2-mock-server; Slack through its OAuth v2 fake), then one step per link
//! calls that provider's API (a recording server standing in for each provider, under
//! its own path) with the token the host attached. Checked: what the API received
//! (method, path, query, body bytes, `Authorization`), the output, refusals (a host or
//! path outside the provider's pins, a link of another company or of another member,
//! a scope the link lacks), the 401 → refresh → retry path, 429/503 waited out, and the
//! token never in the module's memory (the hostile guest's memory scan through the same
//! any-service binding).

use flow8_tests::oauth_server::OAuthServer;
use flow8_tests::slack_fake::SlackFake;
use flow8_tests::{Cli, RecordingServer, Reply, ServerProcess, create_token, wasm_dir};
use serde_json::{Value, json};

/// The OAuth services the test connects: the six shipped, then the operator's.
const SERVICES: [&str; 7] = [
    "microsoft",
    "google",
    "slack",
    "clio",
    "quickbooks",
    "bexio",
    "acme-crm",
];

struct Setup {
    oauth: OAuthServer,
    slack: SlackFake,
    /// Every provider's API, each under `/<service>/`.
    api: RecordingServer,
    cli: Cli,
    server: ServerProcess,
    config_path: std::path::PathBuf,
    /// alice, member of company-a.
    member: String,
    http: reqwest::Client,
}

/// A provider's API base URL on the recording server.
fn base_of(api: &RecordingServer, service: &str) -> String {
    api.url(&format!("/{service}/api"))
}

fn config(oauth: &OAuthServer, slack: &SlackFake, api: &RecordingServer, port: u16) -> String {
    let o = &oauth.base;
    let redirect = format!("http://127.0.0.1:{port}/auth/callback");
    // The operator's provider: everything in `providers:`, only the client in `oauth2:`.
    let mut text = format!(
        "oauth_background_refresh_seconds: 0\noauth_refresh_window_seconds: 300\nproviders:\n  acme-crm:\n    auth_mode: oauth2\n    display_name: Acme CRM\n    authorize_url: {o}/authorize\n    token_url: {o}/token\n    revocation: none\n    identity_url: {o}/userinfo\n    identity: {{user_id: [/sub], email: [/email]}}\n    api_base_url: {}\n    api_hosts: ['{}/']\noauth2:\n  acme-crm:\n    client_id: acme-client\n    client_secret: acme-secret\n    redirect_uri: {redirect}\n    scopes: [contacts]\n",
        base_of(api, "acme-crm"),
        api.url("/acme-crm"),
    );
    let scopes = |s: &str| match s {
        "microsoft" => "[Mail.Read, Calendars.ReadWrite]",
        "google" => "['https://www.googleapis.com/auth/drive.file']",
        "slack" => "['chat:write']",
        "quickbooks" => "[com.intuit.quickbooks.accounting]",
        _ => "[contacts]",
    };
    for service in &SERVICES[..6] {
        let (authorize, token, identity) = if *service == "slack" {
            let b = slack.base();
            (
                format!("{b}/oauth/v2/authorize"),
                format!("{b}/api/oauth.v2.access"),
                format!("{b}/api/auth.test"),
            )
        } else {
            (
                format!("{o}/authorize"),
                format!("{o}/token"),
                format!("{o}/userinfo"),
            )
        };
        // Each provider's API is the recording server under its own path, and its
        // token is pinned there (a path pin, like the shipped Slack and Google ones).
        text.push_str(&format!(
            "  {service}:\n    client_id: {service}-client\n    client_secret: {service}-secret\n    redirect_uri: {redirect}\n    scopes: {}\n    authorize_url: {authorize}\n    token_url: {token}\n    identity_url: {identity}\n    api_base_url: {}\n    api_hosts: ['{}/']\n",
            scopes(service),
            base_of(api, service),
            api.url(&format!("/{service}")),
        ));
    }
    text
}

fn setup() -> Setup {
    let oauth = OAuthServer::start(3600, &[]);
    let slack = SlackFake::start();
    let api = RecordingServer::start();
    let cli = Cli::new();
    let port = ServerProcess::free_port();
    let config_path = cli.data_dir.path().join("config.yml");
    std::fs::write(&config_path, config(&oauth, &slack, &api, port)).unwrap();
    let member = create_token(&cli, "company-a", "alice", false);
    let server = ServerProcess::start_on(
        &cli,
        &wasm_dir(),
        &format!("127.0.0.1:{port}"),
        &["--config", config_path.to_str().unwrap()],
    );
    Setup {
        oauth,
        slack,
        api,
        cli,
        server,
        config_path,
        member,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    }
}

impl Setup {
    /// Connect `service` for the holder of `token`, as a browser would; the link's id.
    async fn connect(&self, service: &str, token: &str) -> String {
        let r = self
            .http
            .get(
                self.server
                    .url(&format!("/api/v1/integrations/authorize?service={service}")),
            )
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let answer: Value = r.json().await.unwrap();
        let auth_url = answer["auth_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{service}: {answer}"));
        let mut callback = flow8_tests::consent(&self.http, auth_url).await;
        if service == "quickbooks" {
            // Intuit names the company on the redirect (developer.intuit.com, "OAuth 2.0").
            callback.push_str("&realmId=4620816365");
        }
        let r = self
            .http
            .get(&callback)
            .header("accept", "application/json")
            .header("cookie", flow8_tests::binding_cookie(&answer))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{service}: {body}");
        body["link"]["id"].as_str().unwrap().to_string()
    }

    /// `POST /api/v1/steps` of `module` with `input` (and `extra` fields of the body).
    async fn step_of(&self, token: &str, module: &str, input: Value, extra: Value) -> (u16, Value) {
        let mut body = json!({"name": "call-api", "module_ref": module, "input_mapping": input});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let r = self
            .http
            .post(self.server.url("/api/v1/steps"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn step(&self, input: Value) -> (u16, Value) {
        self.step_of(&self.member, "api-request", input, json!({}))
            .await
    }

    /// The bearer token of the last request the API received.
    fn last_token(&self) -> String {
        self.api
            .requests()
            .last()
            .and_then(|r| r.header("authorization").map(str::to_string))
            .and_then(|h| h.strip_prefix("Bearer ").map(str::to_string))
            .expect("the host attached a bearer token")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connected_service_is_called_with_its_own_link() {
    let s = setup();
    let mut tokens = Vec::new();
    for (i, service) in SERVICES.iter().enumerate() {
        let link_id = s.connect(service, &s.member).await;
        let body = json!({"name": format!("thing {i}"), "tags": ["a", "b"], "n": i});
        let (status, v) = s
            .step(json!({
                "link_id": link_id,
                "method": "post",
                "path": format!("/things/{i}"),
                "query": {"$filter": "name eq 'a b'", "page": 2, "tag": ["x", "y"]},
                "headers": {"x-request-id": format!("req-{i}"), "accept": "application/json"},
                "body": body
            }))
            .await;
        assert_eq!(status, 200, "{service}: {v}");
        let got = s.api.requests().last().cloned().unwrap();
        assert_eq!(got.method, "POST", "{service}");
        assert_eq!(
            got.uri,
            format!(
                "/{service}/api/things/{i}?%24filter=name%20eq%20%27a%20b%27&page=2&tag=x&tag=y"
            ),
            "{service}: the path joined to its API base URL, the query encoded"
        );
        // The JSON body as the module serialised it: the same value, compact (this
        // crate's serde_json keeps key order, the module's sorts keys).
        let sent: Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(sent, body, "{service}");
        assert_eq!(got.body.len(), body.to_string().len(), "{service}");
        assert_eq!(got.header("content-type"), Some("application/json"));
        assert_eq!(
            got.header("x-request-id"),
            Some(format!("req-{i}").as_str())
        );
        let token = s.last_token();
        // The link's own token: the one its provider issued (the Slack fake's bot token,
        // or one of the OAuth2 server's), and each link has its own.
        if *service == "slack" {
            assert!(s.slack.token_live(&token), "{token}");
        } else {
            assert!(s.oauth.access_tokens_issued().contains(&token), "{service}");
        }
        assert!(
            !tokens.contains(&token),
            "{service} got another link's token"
        );
        // Output: http-request's shape (the recording server echoes what it saw).
        let out = &v["output"];
        assert_eq!(out["status"], 200, "{v}");
        assert_eq!(out["headers"]["content-type"], "application/json");
        assert_eq!(out["body"]["path"], format!("/{service}/api/things/{i}"));
        assert!(
            !v.to_string().contains(&token),
            "{service}: the token in the report"
        );
        tokens.push(token);
    }
    assert_eq!(s.api.requests().len(), SERVICES.len());
    // QuickBooks paths name the company: `{realmId}` is the link's, from the redirect.
    let quickbooks = s.connect("quickbooks", &s.member).await;
    let (status, v) = s
        .step(json!({"link_id": quickbooks, "path": "/company/{realmId}/query", "query": {"query": "select * from Invoice"}}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        s.api.requests().last().unwrap().uri,
        "/quickbooks/api/company/4620816365/query?query=select%20%2A%20from%20Invoice"
    );

    // An absolute URL on the provider's pinned hosts is used as it is; the module's
    // `Authorization` is the host's to set.
    let google = s.connect("google", &s.member).await;
    let (status, v) = s
        .step(json!({"link_id": google, "path": s.api.url("/google/upload/x"), "method": "GET"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(s.api.requests().last().unwrap().uri, "/google/upload/x");
    let (status, v) = s
        .step(json!({"link_id": google, "path": "/x", "headers": {"Authorization": "Bearer mine"}}))
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_input")),
        "{v}"
    );

    // From the CLI: the operator's `run-module` with the same link and config.
    let input = s.cli.data_dir.path().join("input.json");
    std::fs::write(
        &input,
        json!({"link_id": google, "method": "PATCH", "path": "files/42", "query": {"supportsAllDrives": true},
            "headers": {"content-type": "text/csv"}, "body": "id,name\n1,été\n"})
            .to_string(),
    )
    .unwrap();
    let cli = Cli {
        data_dir: tempfile::tempdir().unwrap(),
        env: vec![
            (
                "FLOW8_DATA_DIR".into(),
                s.cli.data_dir.path().display().to_string(),
            ),
            ("FLOW8_CONFIG".into(), s.config_path.display().to_string()),
            ("FLOW8_COMPANY".into(), "company-a".into()),
        ],
    };
    let out = cli
        .run(&[
            "run-module",
            "api-request",
            input.to_str().unwrap(),
            "--allow-loopback",
        ])
        .ok_json();
    assert_eq!(out["status"], 200, "{out}");
    let got = s.api.requests().last().cloned().unwrap();
    assert_eq!(
        (got.method.as_str(), got.uri.as_str()),
        ("PATCH", "/google/api/files/42?supportsAllDrives=true")
    );
    assert_eq!(
        got.body,
        "id,name\n1,été\n".as_bytes(),
        "a text body byte for byte"
    );
    assert_eq!(got.header("content-type"), Some("text/csv"));
    assert!(s.oauth.access_tokens_issued().contains(&s.last_token()));
    // ...and a host outside the pins is refused there too, sending nothing.
    let before = s.api.requests().len();
    std::fs::write(
        &input,
        json!({"link_id": google, "path": s.api.url("/slack/api/chat.postMessage")}).to_string(),
    )
    .unwrap();
    let out = cli.run(&[
        "run-module",
        "api-request",
        input.to_str().unwrap(),
        "--allow-loopback",
    ]);
    assert_eq!(
        out.error_name().as_deref(),
        Some("forbidden"),
        "{}",
        out.stderr
    );
    assert_eq!(s.api.requests().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_goes_only_to_its_providers_pins_and_only_for_its_users() {
    let s = setup();
    let microsoft = s.connect("microsoft", &s.member).await;
    let evil = RecordingServer::start();
    let ok = json!({"link_id": microsoft, "path": "/me"});
    let (status, v) = s.step(ok.clone()).await;
    assert_eq!(status, 200, "{v}");
    let mut sent = 1;

    // Another host, another provider's path on the same host, a path that climbs out
    // of the pin, an encoded separator, and a plain-http twin: refused, nothing sent.
    for path in [
        evil.url("/collect"),
        s.api.url("/slack/api/chat.postMessage"),
        "/../../slack/api/x".to_string(),
        "/me%2F..%2F..%2Fslack".to_string(),
        s.api.url("/microsoft-other/x"),
    ] {
        let (status, v) = s.step(json!({"link_id": microsoft, "path": path})).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (403, Some("forbidden")),
            "{path}: {v}"
        );
        assert_eq!(s.api.requests().len(), sent, "{path} reached the API");
        // The next step on the same host runs normally.
        let (status, v) = s.step(ok.clone()).await;
        assert_eq!(status, 200, "after {path}: {v}");
        sent += 1;
    }
    assert!(evil.requests().is_empty());

    // A scope the link was not granted: refused before any call.
    let (status, v) = s
        .step(json!({"link_id": microsoft, "path": "/me/drive", "scopes": ["Files.ReadWrite.All"]}))
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (403, Some("insufficient_scope")),
        "{v}"
    );
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("Files.ReadWrite.All"),
        "{v}"
    );
    let (status, v) = s
        .step(json!({"link_id": microsoft, "path": "/me/messages", "scopes": ["Mail.Read"]}))
        .await;
    assert_eq!(status, 200, "{v}");
    sent += 1;

    // A link of another company: as if it did not exist, named in the input or bound.
    let mallory = create_token(&s.cli, "company-b", "mallory", false);
    let theirs = s.connect("google", &mallory).await;
    let (status, v) = s
        .step(json!({"link_id": theirs, "path": "/drive/v3/files"}))
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (403, Some("access_denied")),
        "{v}"
    );
    let (status, v) = s
        .step_of(
            &s.member,
            "api-request",
            json!({"link_id": microsoft, "path": "/x"}),
            json!({"bindings": {"link": theirs}}),
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (403, Some("access_denied")),
        "{v}"
    );
    // Another member's link: refused until its owner shares it (link ownership rules).
    let bob = create_token(&s.cli, "company-a", "bob", false);
    let bobs = s.connect("bexio", &bob).await;
    let (status, v) = s
        .step(json!({"link_id": bobs, "path": "/2.0/contact"}))
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (403, Some("access_denied")),
        "{v}"
    );
    assert_eq!(s.api.requests().len(), sent);
    let r = s
        .http
        .post(
            s.server
                .url(&format!("/api/v1/integrations/bexio/{bobs}/shares")),
        )
        .bearer_auth(&bob)
        .header("content-type", "application/json")
        .body(json!({"user_id": "alice"}).to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let (status, v) = s
        .step(json!({"link_id": bobs, "path": "/2.0/contact"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        s.api.requests().last().unwrap().uri,
        "/bexio/api/2.0/contact"
    );

    // The hostile guest through the same any-service binding: the token the host
    // attaches is nowhere in its memory; reading it on purpose puts it there (so the
    // zero means something), and then it may only talk to the provider's pins.
    let needle: Vec<u8> = s
        .last_token_of(&microsoft)
        .await
        .bytes()
        .map(|b| b ^ 0x5a)
        .collect();
    let scan = |read_first: bool| {
        json!({"attack": "attach_then_scan", "url": s.api.url("/microsoft/api/me"), "credential": "any",
            "any_link_id": microsoft, "needle_xor": needle, "read_first": read_first})
    };
    let (status, v) = s
        .step_of(&s.member, "hostile", scan(false), json!({}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["output"]["status"], 200,
        "the attached request went out: {v}"
    );
    assert_eq!(
        v["output"]["memory_hits"], 0,
        "the token is in the module's memory: {v}"
    );
    let (_, v) = s.step_of(&s.member, "hostile", scan(true), json!({})).await;
    assert!(v["output"]["memory_hits"].as_u64().unwrap() >= 1, "{v}");
    let (_, v) = s
        .step_of(
            &s.member,
            "hostile",
            json!({"attack": "http", "url": s.api.url("/slack/api/x"), "credential": "any", "any_link_id": microsoft}),
            json!({}),
        )
        .await;
    assert!(v.to_string().contains("forbidden"), "{v}");
}

impl Setup {
    /// The token the host attaches for `link_id` (one call to its provider's API).
    async fn last_token_of(&self, link_id: &str) -> String {
        let (status, v) = self.step(json!({"link_id": link_id, "path": "/me"})).await;
        assert_eq!(status, 200, "{v}");
        self.last_token()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_refreshed_once_and_rate_limits_are_waited_out() {
    let s = setup();
    let google = s.connect("google", &s.member).await;
    let input = json!({"link_id": google, "path": "/drive/v3/files", "query": {"pageSize": 10}});
    let (status, v) = s.step(input.clone()).await;
    assert_eq!(status, 200, "{v}");
    let first = s.last_token();

    // 401: one forced refresh, then the same request with the new token.
    let refreshes = s.oauth.token_requests("refresh_token");
    s.api.script([Reply::json(
        401,
        json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}}),
    )]);
    let (status, v) = s.step(input.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        s.oauth
            .token_requests_at_least("refresh_token", refreshes + 1),
        refreshes + 1
    );
    let requests = s.api.requests();
    let n = requests.len();
    let refused = requests[n - 2].header("authorization").unwrap().to_string();
    assert_eq!(refused, format!("Bearer {first}"));
    let fresh = s.last_token();
    assert_ne!(fresh, first, "the retry carries the refreshed token");
    assert_eq!(s.oauth.access_tokens_issued().last(), Some(&fresh));
    assert_eq!(requests[n - 1].uri, requests[n - 2].uri);
    assert!(!v.to_string().contains(&fresh) && !v.to_string().contains(&first));

    // Refused again after the refresh: token_revoked, and only the one refresh.
    let unauthorized = || {
        Reply::json(
            401,
            json!({"error": {"code": 401, "message": "Invalid Credentials"}}),
        )
    };
    s.api.script([unauthorized(), unauthorized()]);
    let (status, v) = s.step(input.clone()).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (401, Some("token_revoked")),
        "{v}"
    );
    assert_eq!(
        s.oauth
            .token_requests_at_least("refresh_token", refreshes + 2),
        refreshes + 2
    );
    assert_eq!(s.api.requests().len(), n + 2);

    // 429 and 503 with Retry-After: waited out within the deadline.
    s.api.script([
        Reply::json(
            429,
            json!({"error": {"code": 429, "message": "Rate Limit Exceeded"}}),
        )
        .with_header("retry-after", "1"),
        Reply::text(503, "unavailable").with_header("retry-after", "1"),
    ]);
    let (status, v) = s.step(input.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["status"], 200);
    assert_eq!(s.api.requests().len(), n + 5);
    // Still 429 when the retries are spent: rate_limit_exceeded with the server's wait.
    let limited = || Reply::json(429, json!({})).with_header("retry-after", "1");
    s.api.script([limited(), limited()]);
    let mut once = input.clone();
    once["max_retries"] = json!(1);
    let (status, v) = s.step(once).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (429, Some("rate_limit_exceeded")),
        "{v}"
    );
    assert_eq!(v["retry_after_seconds"], 1, "{v}");
    // A final 5xx is an output, as http-request's.
    s.api.script([Reply::text(500, "boom")]);
    let mut none = input.clone();
    none["max_retries"] = json!(0);
    let (status, v) = s.step(none).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["output"]["status"].as_u64(), v["output"]["body"].as_str()),
        (Some(500), Some("boom"))
    );
    // And the host serves the next step normally.
    let (status, v) = s.step(input).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_goes_to_the_workspace_within_its_budget_and_keeps_its_taint() {
    use crate::save_to_workspace::{binary, pseudo_random_bytes};
    let s = setup();
    let drive = s.connect("google", &s.member).await;
    let ws = s.cli.data_dir.path().join("workspaces/company-a/run-7");
    std::fs::create_dir_all(&ws).unwrap();
    let download = |path: &str| {
        json!({"link_id": drive, "path": "/drive/v3/files/f1", "query": {"alt": "media"},
            "save_to": {"path": path}})
    };
    let in_ws = json!({"workspace": "run-7"});

    let bytes = pseudo_random_bytes(3 * 1024 * 1024 + 17, 11);
    s.api.script([binary(bytes.clone())]);
    let (status, v) = s
        .step_of(
            &s.member,
            "api-request",
            download("/report.bin"),
            in_ws.clone(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["saved"]["size"], bytes.len(), "{v}");
    assert!(std::fs::read(ws.join("report.bin")).unwrap() == bytes);
    assert_eq!(
        s.api.requests().last().unwrap().uri,
        "/google/api/drive/v3/files/f1?alt=media"
    );
    assert_eq!(v["tainted"], false, "{v}");

    // Past the step's workspace budget: limit_exceeded, no file.
    s.api
        .script([binary(pseudo_random_bytes(2 * 1024 * 1024, 5))]);
    let mut small = in_ws.clone();
    small["limits"] = json!({"workspace_mib": 1});
    let (status, v) = s
        .step_of(&s.member, "api-request", download("/too-big.bin"), small)
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (422, Some("limit_exceeded")),
        "{v}"
    );
    assert!(!ws.join("too-big.bin").exists());

    // An answer that carries the token back (a debug endpoint), deep in a large body:
    // the step holds the secret as if it had read it, and so does its workspace.
    let token = s.last_token();
    let mut echo = pseudo_random_bytes(2 * 1024 * 1024, 9);
    let at = 1024 * 1024 - 10;
    echo.splice(at..at, format!("\"token\": \"{token}\"").into_bytes());
    s.api.script([binary(echo.clone())]);
    let (status, v) = s
        .step_of(
            &s.member,
            "api-request",
            download("/echo.bin"),
            in_ws.clone(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(std::fs::read(ws.join("echo.bin")).unwrap() == echo);
    assert_eq!(v["tainted"], true, "{v}");
    assert_eq!(v["pinned_to"][0]["service"], "google", "{v}");
    // A later step on that workspace may only reach Google's pins.
    let evil = RecordingServer::start();
    let (status, v) = s
        .step_of(
            &s.member,
            "http-request",
            json!({"url": evil.url("/collect")}),
            in_ws.clone(),
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    assert!(evil.requests().is_empty());
    // And a step without that workspace runs normally.
    let (status, v) = s
        .step(json!({"link_id": drive, "path": "/drive/v3/about"}))
        .await;
    assert_eq!(status, 200, "{v}");
}
