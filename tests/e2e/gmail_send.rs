//! gmail-send end to end, and the Google setup the Drive and Sheets tests share: a
//! Google link made through a real OAuth2 server (oauth2-mock-server, whose access
//! tokens carry the granted scopes), Google's APIs played by `support/google_fake.rs`.
//! Checked: the authorize URL asks for offline access with consent (Google gives a
//! refresh token only then); the message Gmail received (media upload form, headers,
//! both bodies, attachment bytes identical, parsed by an independent MIME parser);
//! the output; Google's errors under flow8's names (401 → one refresh, 403, 404, 429
//! and 5xx waited out); a link of another service refused; and the CLI.

use flow8_tests::google_fake::{GoogleFailure, GoogleFake};
use flow8_tests::oauth_server::OAuthServer;
use flow8_tests::{Cli, ServerProcess, create_token, wasm_dir};
use mail_parser::MimeHeaders;
use serde_json::{Value, json};
use std::path::PathBuf;

/// The scopes the test's Google client asks for: what the four modules need.
pub const GOOGLE_SCOPES: [&str; 3] = [
    "https://www.googleapis.com/auth/gmail.send",
    "https://www.googleapis.com/auth/drive.file",
    "https://www.googleapis.com/auth/spreadsheets",
];

pub struct GoogleSetup {
    pub oauth: OAuthServer,
    pub google: GoogleFake,
    pub cli: Cli,
    pub server: ServerProcess,
    pub config_path: PathBuf,
    /// alice, member of company-a.
    pub member: String,
    pub http: reqwest::Client,
    /// alice's Google link.
    pub link_id: String,
    /// alice's Microsoft link (a link of another service).
    pub microsoft_link_id: String,
    /// The authorize URL the host made for the Google link.
    pub auth_url: String,
}

impl GoogleSetup {
    pub async fn start() -> GoogleSetup {
        let oauth = OAuthServer::start(3600, &[]);
        let google = GoogleFake::start();
        let cli = Cli::new();
        let port = ServerProcess::free_port();
        let o = &oauth.base;
        let scopes: Vec<String> = GOOGLE_SCOPES.iter().map(|s| format!("'{s}'")).collect();
        let config = format!(
            "oauth_background_refresh_seconds: 0\noauth_refresh_window_seconds: 300\noauth2:\n  google:\n    client_id: google-client\n    client_secret: google-secret\n    redirect_uri: http://127.0.0.1:{port}/auth/callback\n    scopes: [{}]\n    authorize_url: {o}/authorize\n    token_url: {o}/token\n    identity_url: {o}/userinfo\n    api_base_url: {g}\n    api_hosts: ['{g}/']\n  microsoft:\n    client_id: ms-client\n    client_secret: ms-secret\n    redirect_uri: http://127.0.0.1:{port}/auth/callback\n    scopes: [Mail.Send]\n    authorize_url: {o}/authorize\n    token_url: {o}/token\n    identity_url: {o}/userinfo\n    api_base_url: {g}/v1.0\n    api_hosts: ['{g}/v1.0/']\n",
            scopes.join(", "),
            g = google.base(),
        );
        let config_path = cli.data_dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let member = create_token(&cli, "company-a", "alice", false);
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
        let mut s = GoogleSetup {
            oauth,
            google,
            cli,
            server,
            config_path,
            member,
            http,
            link_id: String::new(),
            microsoft_link_id: String::new(),
            auth_url: String::new(),
        };
        (s.link_id, s.auth_url) = s.connect("google").await;
        (s.microsoft_link_id, _) = s.connect("microsoft").await;
        s
    }

    /// Connect `service` for alice, as a browser would: the link id and the authorize URL.
    async fn connect(&self, service: &str) -> (String, String) {
        let r = self
            .http
            .get(
                self.server
                    .url(&format!("/api/v1/integrations/authorize?service={service}")),
            )
            .bearer_auth(&self.member)
            .send()
            .await
            .unwrap();
        let answer: Value = r.json().await.unwrap();
        let auth_url = answer["auth_url"].as_str().unwrap().to_string();
        let callback = flow8_tests::consent(&self.http, &auth_url).await;
        let r = self
            .http
            .get(&callback)
            .header("accept", "application/json")
            .header("cookie", flow8_tests::binding_cookie(&answer))
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        (body["link"]["id"].as_str().unwrap().to_string(), auth_url)
    }

    /// The workspace `name` of company-a, created.
    pub fn workspace(&self, name: &str) -> PathBuf {
        let ws = self
            .cli
            .data_dir
            .path()
            .join(format!("workspaces/company-a/{name}"));
        std::fs::create_dir_all(&ws).unwrap();
        ws
    }

    /// `POST /api/v1/steps` of `module` with `input` in workspace `ws`.
    pub async fn step(&self, module: &str, input: Value, ws: Option<&str>) -> (u16, Value) {
        let mut body = json!({"name": "google-step", "module_ref": module, "input_mapping": input});
        if let Some(ws) = ws {
            body["workspace"] = json!(ws);
        }
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

    /// The operator's CLI on the server's data dir and config.
    pub fn cli(&self) -> Cli {
        Cli {
            data_dir: tempfile::tempdir().unwrap(),
            env: vec![
                (
                    "FLOW8_DATA_DIR".into(),
                    self.cli.data_dir.path().display().to_string(),
                ),
                (
                    "FLOW8_CONFIG".into(),
                    self.config_path.display().to_string(),
                ),
                ("FLOW8_COMPANY".into(), "company-a".into()),
            ],
        }
    }

    /// `run-module MODULE input` with `--workspace ws` from the CLI.
    pub fn run_module(
        &self,
        module: &str,
        input: &Value,
        ws: &std::path::Path,
    ) -> flow8_tests::CliOutput {
        let cli = self.cli();
        let path = cli.data_dir.path().join("input.json");
        std::fs::write(&path, input.to_string()).unwrap();
        cli.run(&[
            "run-module",
            module,
            path.to_str().unwrap(),
            "--workspace",
            ws.to_str().unwrap(),
            "--allow-loopback",
        ])
    }

    /// The fake's calls since `from`.
    pub fn calls_since(&self, from: usize) -> Vec<flow8_tests::google_fake::GoogleCall> {
        self.google.calls().split_off(from)
    }

    /// Assert the error name (and status) of a step's answer.
    pub fn assert_error(answer: &(u16, Value), status: u16, name: &str) {
        assert_eq!(
            (answer.0, answer.1["error"].as_str()),
            (status, Some(name)),
            "{}",
            answer.1
        );
    }
}

/// Bytes that compress badly and contain every byte value (a real file's worst case).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_with_attachments_is_sent_through_gmail_and_errors_are_named() {
    let s = GoogleSetup::start().await;
    // Google gives a refresh token only for offline access, and again only on consent.
    assert!(s.auth_url.contains("access_type=offline"), "{}", s.auth_url);
    assert!(s.auth_url.contains("prompt=consent"), "{}", s.auth_url);
    assert!(
        s.auth_url.contains("gmail.send"),
        "the scopes are asked for: {}",
        s.auth_url
    );

    let ws = s.workspace("mail-1");
    let pdf = pseudo_random(300 * 1024 + 7, 3);
    std::fs::write(ws.join("report.pdf"), &pdf).unwrap();
    std::fs::create_dir_all(ws.join("data")).unwrap();
    let csv = "name,city\nZoë,Zürich\n".as_bytes().to_vec();
    std::fs::write(ws.join("data/export.csv"), &csv).unwrap();
    let input = json!({
        "link_id": s.link_id,
        "to": ["Ada Lovelace <ada@example.com>", "bob@example.com"],
        "cc": ["team@example.com"],
        "bcc": ["audit@example.com"],
        "reply_to": ["replies@example.com"],
        "subject": "Monatsbericht für April ✓",
        "text": "Hello,\nthe report is attached.\n",
        "html": "<p>Hello,</p><p>the report is <b>attached</b>.</p>",
        "attachments": [
            {"file_path": "/report.pdf"},
            {"path": "/data/export.csv", "filename": "April export.csv", "content_type": "text/csv"}
        ]
    });
    let (status, v) = s.step("gmail-send", input.clone(), Some("mail-1")).await;
    assert_eq!(status, 200, "{v}");
    let out = &v["output"];
    assert!(out["id"].as_str().unwrap().starts_with("18f"), "{v}");
    assert_eq!(out["threadId"], out["id"]);
    assert_eq!(out["labelIds"], json!(["SENT"]));

    // What Gmail received: the media upload form, with the link's own token.
    let calls = s.google.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(
        (
            call.method.as_str(),
            call.path.as_str(),
            call.query.as_str()
        ),
        (
            "POST",
            "/upload/gmail/v1/users/me/messages/send",
            "uploadType=media"
        )
    );
    assert_eq!(call.header("content-type"), Some("message/rfc822"));
    let token = call.token.clone().expect("a bearer token");
    assert!(s.oauth.access_tokens_issued().contains(&token));
    assert!(!v.to_string().contains(&token), "the token in the report");
    assert_eq!(s.google.messages(), vec![call.body.clone()]);

    let message = mail_parser::MessageParser::default()
        .parse(&call.body)
        .expect("an RFC 5322 message");
    assert_eq!(message.subject(), Some("Monatsbericht für April ✓"));
    let addrs = |a: Option<&mail_parser::Address>| -> Vec<String> {
        a.map(|a| {
            a.iter()
                .filter_map(|x| x.address().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
    };
    assert_eq!(addrs(message.to()), ["ada@example.com", "bob@example.com"]);
    assert_eq!(
        message.to().unwrap().first().unwrap().name(),
        Some("Ada Lovelace")
    );
    assert_eq!(addrs(message.cc()), ["team@example.com"]);
    // Gmail delivers to Bcc from the header and strips it from what recipients see.
    assert_eq!(addrs(message.bcc()), ["audit@example.com"]);
    assert_eq!(addrs(message.reply_to()), ["replies@example.com"]);
    // RFC 5322 lines end in CRLF: the text's line breaks are sent as such.
    assert_eq!(
        message.body_text(0).as_deref(),
        Some("Hello,\r\nthe report is attached.\r\n")
    );
    assert_eq!(
        message.body_html(0).as_deref(),
        Some("<p>Hello,</p><p>the report is <b>attached</b>.</p>")
    );
    let attachments: Vec<(String, String, Vec<u8>)> = message
        .attachments()
        .map(|a| {
            let ct = a.content_type().unwrap();
            (
                a.attachment_name().unwrap_or("").to_string(),
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")),
                a.contents().to_vec(),
            )
        })
        .collect();
    assert_eq!(attachments.len(), 2);
    assert_eq!(attachments[0].0, "report.pdf");
    assert_eq!(attachments[0].1, "application/pdf");
    assert!(attachments[0].2 == pdf, "the PDF's bytes are identical");
    assert_eq!(
        (attachments[1].0.as_str(), attachments[1].1.as_str()),
        ("April export.csv", "text/csv")
    );
    assert_eq!(attachments[1].2, csv);

    // Google's errors, each under its flow8 name; after each the next step runs.
    let small =
        json!({"link_id": s.link_id, "to": ["ada@example.com"], "subject": "s", "text": "t"});
    for (failure, status, name) in [
        (GoogleFailure::status(403), 403, "insufficient_scope"),
        (GoogleFailure::status(404), 400, "invalid_input"),
        (GoogleFailure::status(400), 400, "invalid_input"),
    ] {
        s.google.inject([failure]);
        let answer = s.step("gmail-send", small.clone(), None).await;
        GoogleSetup::assert_error(&answer, status, name);
        let (status, v) = s.step("gmail-send", small.clone(), None).await;
        assert_eq!(status, 200, "after {failure:?}: {v}");
    }
    let n = s.google.calls().len();
    assert_eq!(s.google.messages().len(), 4);

    // 429 and 503 with Retry-After, and a 500: waited out, then sent once.
    s.google.inject([
        GoogleFailure::retry_after(429, 1),
        GoogleFailure::retry_after(503, 1),
        GoogleFailure::status(500),
    ]);
    let (status, v) = s.step("gmail-send", small.clone(), None).await;
    assert_eq!(status, 200, "{v}");
    let statuses: Vec<u16> = s.calls_since(n).iter().map(|c| c.status).collect();
    assert_eq!(statuses, [429, 503, 500, 200]);
    // Still rate limited when the retries are spent: rate_limit_exceeded.
    s.google
        .inject((0..5).map(|_| GoogleFailure::retry_after(429, 1)));
    let answer = s.step("gmail-send", small.clone(), None).await;
    GoogleSetup::assert_error(&answer, 429, "rate_limit_exceeded");
    assert_eq!(answer.1["retry_after_seconds"], 1, "{}", answer.1);

    // 401 (expired): one forced refresh, then the same message with the new token.
    let refreshes = s.oauth.token_requests("refresh_token");
    let n = s.google.calls().len();
    s.google.inject([GoogleFailure::status(401)]);
    let (status, v) = s.step("gmail-send", small.clone(), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        s.oauth
            .token_requests_at_least("refresh_token", refreshes + 1),
        refreshes + 1
    );
    let calls = s.calls_since(n);
    assert_eq!(calls.len(), 2);
    assert_ne!(
        calls[0].token, calls[1].token,
        "the retry has the new token"
    );
    assert_eq!(calls[0].body, calls[1].body);
    // Refused again after the refresh: token_revoked.
    s.google
        .inject([GoogleFailure::status(401), GoogleFailure::status(401)]);
    let answer = s.step("gmail-send", small.clone(), None).await;
    GoogleSetup::assert_error(&answer, 401, "token_revoked");

    // Bad input sends nothing: no recipient, no body, a missing attachment, a header
    // smuggled into an address.
    let n = s.google.calls().len();
    for bad in [
        json!({"link_id": s.link_id, "subject": "s", "text": "t"}),
        json!({"link_id": s.link_id, "to": ["a@example.com"], "subject": "s"}),
        json!({"link_id": s.link_id, "to": ["a@example.com"], "subject": "s", "text": "t", "attachments": [{"path": "/nope.pdf"}]}),
        json!({"link_id": s.link_id, "to": ["a@example.com\r\nBcc: x@evil.example"], "subject": "s", "text": "t"}),
    ] {
        let answer = s.step("gmail-send", bad.clone(), Some("mail-1")).await;
        GoogleSetup::assert_error(&answer, 400, "invalid_input");
    }
    assert_eq!(s.google.calls().len(), n, "bad input reached Gmail");

    // A link of another service: refused before anything is sent.
    let mut wrong = small.clone();
    wrong["link_id"] = json!(s.microsoft_link_id);
    let answer = s.step("gmail-send", wrong, None).await;
    GoogleSetup::assert_error(&answer, 403, "access_denied");
    assert!(
        answer.1["message"].as_str().unwrap().contains("microsoft"),
        "{}",
        answer.1
    );
    assert_eq!(s.google.calls().len(), n);
    let (status, v) = s.step("gmail-send", small.clone(), None).await;
    assert_eq!(status, 200, "{v}");

    // From the CLI: the operator's run-module with the same link and a workspace.
    let out = s.run_module("gmail-send", &input, &ws).ok_json();
    assert!(out["id"].as_str().unwrap().starts_with("18f"), "{out}");
    let last = s.google.messages().pop().unwrap();
    let message = mail_parser::MessageParser::default().parse(&last).unwrap();
    assert!(message.attachments().next().unwrap().contents() == pdf.as_slice());
}

/// Google refuses a refresh token (`invalid_grant`) when the user revoked access, and
/// also 7 days after consent for an app whose consent screen is in "Testing": the link
/// is marked `needs_reconnect` with a reason that says both, in the listing and in
/// every later step's error, and the host serves the next steps normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_token_marks_the_link_with_googles_reason() {
    let s = GoogleSetup::start().await;
    // The Google link was connected first: its refresh token is the first issued.
    let refresh_token = s.oauth.refresh_tokens_issued()[0].clone();
    let r = s
        .http
        .post(format!("{}/revoke", s.oauth.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={refresh_token}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert!(s.oauth.wait_for_revocation(&refresh_token));

    // Gmail refuses the access token; the module asks for one refresh, which Google
    // answers invalid_grant.
    s.google.inject([GoogleFailure::status(401)]);
    let small =
        json!({"link_id": s.link_id, "to": ["ada@example.com"], "subject": "s", "text": "t"});
    let answer = s.step("gmail-send", small.clone(), None).await;
    GoogleSetup::assert_error(&answer, 401, "token_revoked");
    let message = answer.1["message"].as_str().unwrap().to_string();
    for said in [
        "refused the refresh token",
        "invalid_grant",
        "Testing",
        "7 days",
    ] {
        assert!(message.contains(said), "`{said}` not in: {message}");
    }

    // The link says so too.
    let r = s
        .http
        .get(
            s.server
                .url("/api/v1/integrations/links?needs_reconnect=true"),
        )
        .bearer_auth(&s.member)
        .send()
        .await
        .unwrap();
    let links: Value = r.json().await.unwrap();
    let links = links["links"].as_array().unwrap();
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0]["id"], s.link_id.as_str());
    assert_eq!(links[0]["status"], "needs_reconnect");
    let reason = links[0]["status_reason"].as_str().unwrap();
    assert!(
        reason.contains("invalid_grant") && reason.contains("Testing"),
        "{reason}"
    );

    // A later step with the link: the same reason, nothing sent, no refresh tried.
    let calls = s.google.calls().len();
    let refreshes = s.oauth.token_requests("refresh_token");
    let answer = s.step("gmail-send", small, None).await;
    GoogleSetup::assert_error(&answer, 401, "token_revoked");
    assert!(
        answer.1["message"].as_str().unwrap().contains("Testing"),
        "{}",
        answer.1
    );
    assert_eq!(s.google.calls().len(), calls);
    assert_eq!(s.oauth.token_requests("refresh_token"), refreshes);
    // The host serves the next step of another link normally.
    let (status, v) = s
        .step(
            "api-request",
            json!({"link_id": s.microsoft_link_id, "path": "/me"}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
}
