//! gmail-send end to end, and the Google setup the Drive and Sheets tests share: a
//! Google link made through a real OAuth2 server (oauth2-mock-server, whose access
//! tokens carry the granted scopes), Google's APIs played by `support/google_fake.rs`.
//! Checked: the authorize URL asks for offline access with consent (Google gives a
//! refresh token only then); the message Gmail received (media upload form, headers,
//! both bodies, attachment bytes identical, parsed by an independent MIME parser);
//! the output; Google's errors under flow8's names (401 → one refresh, 403, 404, 429
//! and 5xx waited out); a link of another service refused; and the CLI.

pub use flow8_tests::google::{GoogleSetup, pseudo_random};
use flow8_tests::google_fake::GoogleFailure;
use mail_parser::MimeHeaders;
use serde_json::{Value, json};

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
