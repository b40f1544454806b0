//! outlook-send-mail, outlook-read-mail and microsoft-contacts end to end: Microsoft
//! links made through a real OAuth2 server, the modules run through `POST
//! /api/v1/steps` and the CLI against the Graph fake, which checks the token's
//! permissions and records what it received. Graph's errors come back under flow8's
//! names, a 401 is refreshed once, 429s are waited out, and a link of another service
//! is refused.

use flow8_tests::graph_fake::{GraphFailure, GraphHost};
use flow8_tests::microsoft::{Microsoft, pattern};
use serde_json::{Value, json};

/// What the API link is granted: everything these modules need except drafts
/// (`Mail.ReadWrite`), so a large attachment meets Graph's own permission check.
const API_SCOPES: &[&str] = &["Mail.Send", "Mail.Read", "Contacts.Read"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlook_mail_and_contacts_through_the_api() {
    let ms = Microsoft::start(API_SCOPES);
    let link = ms.connect("microsoft").await;
    let ws = ms.workspace("run-1");
    std::fs::create_dir_all(ws.join("out")).unwrap();
    let pdf = pattern(70_000, 1);
    std::fs::write(ws.join("out/invoice.pdf"), &pdf).unwrap();
    std::fs::write(ws.join("notes.txt"), "line one\nline two\n").unwrap();

    // --- send with inline attachments ---
    let send = json!({
        "link_id": link,
        "to": ["Ann Example <ann@example.com>"],
        "cc": ["carl@example.com"],
        "bcc": ["archive@example.com"],
        "subject": "Invoice 2026-04",
        "html": "<p>Hello Ann,</p><p>attached.</p>",
        "attachments": [
            {"file_path": "/out/invoice.pdf", "filename": "invoice-2026-04.pdf", "content_type": "application/pdf"},
            {"file_path": "/notes.txt"}
        ]
    });
    let (status, v) = ms
        .step("outlook-send-mail", Some("run-1"), send.clone())
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["status"], "sent");
    assert_eq!(v["output"]["recipients"], 3);
    assert_eq!(v["output"]["via"], "sendMail");
    assert_eq!(v["output"]["attachments"][0]["upload"], "inline");
    let sent = ms.graph.sent_mail();
    assert_eq!(sent.len(), 1);
    let m = &sent[0];
    assert_eq!(m.message["subject"], "Invoice 2026-04");
    assert_eq!(
        m.message["body"],
        json!({"contentType": "HTML", "content": "<p>Hello Ann,</p><p>attached.</p>"})
    );
    assert_eq!(
        m.message["toRecipients"],
        json!([{"emailAddress": {"address": "ann@example.com", "name": "Ann Example"}}])
    );
    assert_eq!(
        m.message["ccRecipients"][0]["emailAddress"]["address"],
        "carl@example.com"
    );
    assert_eq!(
        m.message["bccRecipients"][0]["emailAddress"]["address"],
        "archive@example.com"
    );
    assert!(m.save_to_sent_items);
    assert_eq!(m.attachments.len(), 2);
    assert_eq!(m.attachments[0].name, "invoice-2026-04.pdf");
    assert_eq!(m.attachments[0].content_type, "application/pdf");
    assert_eq!(m.attachments[0].bytes, pdf, "attachment bytes identical");
    assert_eq!(m.attachments[1].name, "notes.txt");
    assert_eq!(m.attachments[1].bytes, b"line one\nline two\n");
    let reqs = ms.graph.requests();
    let r = reqs.last().unwrap();
    assert_eq!((r.host, r.method.as_str()), (GraphHost::Graph, "POST"));
    assert_eq!(
        (r.path.as_str(), r.query.as_deref()),
        ("/v1.0/me/sendMail", None)
    );
    let token = r
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap()
        .to_string();
    assert_eq!(token.split('.').count(), 3, "the link's JWT was attached");
    assert!(
        !v.to_string().contains(&token),
        "the token is not in the answer"
    );
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["saveToSentItems"], true);
    assert_eq!(
        body["message"]["attachments"][0]["@odata.type"],
        "#microsoft.graph.fileAttachment"
    );

    // --- Graph's errors under flow8's names; each next step runs normally ---
    ms.graph.inject([GraphFailure::status(403)]);
    let (status, v) = ms
        .step("outlook-send-mail", Some("run-1"), send.clone())
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (403, Some("insufficient_scope")),
        "{v}"
    );
    ms.graph.inject([GraphFailure::status(404)]);
    let (status, v) = ms
        .step("outlook-send-mail", Some("run-1"), send.clone())
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_input")),
        "{v}"
    );
    // A 401: one forced refresh, then the same request with the new token.
    let refreshes = ms.oauth.token_requests("refresh_token");
    ms.graph.inject([GraphFailure::status(401)]);
    let (status, v) = ms
        .step("outlook-send-mail", Some("run-1"), send.clone())
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        ms.oauth
            .token_requests_at_least("refresh_token", refreshes + 1),
        refreshes + 1
    );
    let reqs = ms.graph.requests();
    let last_two: Vec<_> = reqs.iter().rev().take(2).collect();
    assert_ne!(
        last_two[0].header("authorization"),
        last_two[1].header("authorization"),
        "the retry carried the refreshed token"
    );
    // Refused again after the refresh: token_revoked, one refresh only.
    ms.graph
        .inject([GraphFailure::status(401), GraphFailure::status(401)]);
    let (status, v) = ms
        .step("outlook-send-mail", Some("run-1"), send.clone())
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (401, Some("token_revoked")),
        "{v}"
    );
    assert_eq!(
        ms.oauth
            .token_requests_at_least("refresh_token", refreshes + 2),
        refreshes + 2
    );
    // 429 and 503 with Retry-After are waited out.
    ms.graph.inject([
        GraphFailure {
            status: 429,
            retry_after: Some(1),
        },
        GraphFailure {
            status: 503,
            retry_after: Some(1),
        },
    ]);
    let (status, v) = ms
        .step("outlook-send-mail", Some("run-1"), send.clone())
        .await;
    assert_eq!(status, 200, "{v}");
    // A 429 that does not stop within the step's retries: rate_limit_exceeded.
    ms.graph.inject((0..5).map(|_| GraphFailure {
        status: 429,
        retry_after: Some(1),
    }));
    let (status, v) = ms
        .step("outlook-send-mail", Some("run-1"), send.clone())
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (429, Some("rate_limit_exceeded")),
        "{v}"
    );
    assert_eq!(ms.graph.sent_mail().len(), 3);

    // A large attachment needs a draft, which Graph allows only with Mail.ReadWrite:
    // this link lacks it, and Graph's own check says so.
    std::fs::write(ws.join("big.bin"), pattern(3_200_000, 2)).unwrap();
    let mut large = send.clone();
    large["attachments"] = json!([{"file_path": "/big.bin"}]);
    let (status, v) = ms.step("outlook-send-mail", Some("run-1"), large).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (403, Some("insufficient_scope")),
        "{v}"
    );
    assert!(
        v["message"].as_str().unwrap().contains("ErrorAccessDenied"),
        "{v}"
    );
    // Bad input: an attachment that is not in the workspace, no recipients.
    let mut missing = send.clone();
    missing["attachments"] = json!([{"file_path": "/nope.pdf"}]);
    let (status, v) = ms.step("outlook-send-mail", Some("run-1"), missing).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_input")),
        "{v}"
    );
    let (status, v) = ms
        .step(
            "outlook-send-mail",
            None,
            json!({"link_id": link, "subject": "x"}),
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_input")),
        "{v}"
    );

    // A link of another service is refused before anything is sent.
    let google = ms.connect("google").await;
    let before = ms.graph.requests().len();
    let mut wrong = send.clone();
    wrong["link_id"] = json!(google);
    let (status, v) = ms.step("outlook-send-mail", Some("run-1"), wrong).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (403, Some("access_denied")),
        "{v}"
    );
    assert!(
        v["message"].as_str().unwrap().contains("google link"),
        "{v}"
    );
    assert_eq!(ms.graph.requests().len(), before, "nothing reached Graph");

    // --- read mail with the delta query ---
    for i in 0..5 {
        ms.graph.add_message(
            "inbox",
            json!({"subject": format!("message {i}"), "from": {"emailAddress": {"address": "x@example.com"}},
                   "receivedDateTime": "2026-04-05T10:00:00Z", "isRead": false, "bodyPreview": "hi", "body": {"content": "not selected"}}),
        );
    }
    ms.graph.clear_requests();
    let (status, v) = ms
        .step(
            "outlook-read-mail",
            None,
            json!({"link_id": link, "select": ["subject", "from"], "page_size": 2}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let out = &v["output"];
    assert_eq!(out["messages"].as_array().unwrap().len(), 5, "{out}");
    assert_eq!(out["messages"][0]["subject"], "message 0");
    assert!(out["messages"][0].get("body").is_none(), "$select applied");
    assert_eq!(out["pages"], 3);
    assert_eq!(out["complete"], true);
    let delta = out["delta_link"].as_str().unwrap().to_string();
    assert!(delta.contains("deltatoken"), "{delta}");
    let reqs = ms.graph.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].path, "/v1.0/me/mailFolders/inbox/messages/delta");
    assert_eq!(
        reqs[0].query_pairs(),
        vec![("$select".to_string(), "subject,from".to_string())]
    );
    assert_eq!(reqs[0].header("prefer"), Some("odata.maxpagesize=2"));
    assert!(reqs[1].query.as_deref().unwrap().contains("skiptoken"));
    assert_eq!(reqs[1].header("prefer"), Some("odata.maxpagesize=2"));
    // The next run passes the delta link back and gets only the changes.
    let first_id = out["messages"][0]["id"].as_str().unwrap().to_string();
    ms.graph.remove_message("inbox", &first_id);
    ms.graph.add_message(
        "inbox",
        json!({"subject": "message 5", "from": {"emailAddress": {"address": "y@example.com"}}}),
    );
    let (status, v) = ms
        .step(
            "outlook-read-mail",
            None,
            json!({"link_id": link, "delta_link": delta}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let out = &v["output"];
    assert_eq!(out["messages"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(out["messages"][0]["subject"], "message 5");
    assert_eq!(out["removed"], json!([first_id]));
    assert_ne!(out["delta_link"].as_str().unwrap(), delta);
    // max_pages stops early and says where to go on.
    let (status, v) = ms
        .step(
            "outlook-read-mail",
            None,
            json!({"link_id": link, "page_size": 1, "max_pages": 2}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["complete"], false);
    assert_eq!(v["output"]["messages"].as_array().unwrap().len(), 2);
    let next = v["output"]["next_link"].as_str().unwrap().to_string();
    let (status, v) = ms
        .step(
            "outlook-read-mail",
            None,
            json!({"link_id": link, "next_link": next}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["complete"], true);
    // A link that is not Graph's is refused before anything is sent.
    let (status, v) = ms
        .step(
            "outlook-read-mail",
            None,
            json!({"link_id": link, "delta_link": "https://evil.example/v1.0/x"}),
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_input")),
        "{v}"
    );

    // --- contacts, paged ---
    ms.graph.add_contacts((0..5).map(|i| {
        json!({"displayName": format!("Contact {i}"), "emailAddresses": [{"address": format!("c{i}@example.com")}],
               "companyName": "Contoso", "notes": "not selected"})
    }));
    ms.graph.clear_requests();
    let (status, v) = ms
        .step(
            "microsoft-contacts",
            None,
            json!({"link_id": link, "top": 2, "select": ["displayName", "emailAddresses"]}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let contacts = v["output"]["contacts"].as_array().unwrap();
    assert_eq!(contacts.len(), 5);
    assert_eq!(contacts[4]["displayName"], "Contact 4");
    assert!(contacts[0].get("notes").is_none(), "$select applied");
    assert_eq!(v["output"]["pages"], 3);
    let reqs = ms.graph.requests();
    assert_eq!(reqs[0].path, "/v1.0/me/contacts");
    assert_eq!(
        reqs[0].query_pairs(),
        vec![
            ("$top".to_string(), "2".to_string()),
            (
                "$select".to_string(),
                "displayName,emailAddresses".to_string()
            )
        ]
    );
    let (status, v) = ms
        .step(
            "microsoft-contacts",
            None,
            json!({"link_id": link, "top": 2, "max_pages": 1}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["contacts"].as_array().unwrap().len(), 2);
    assert!(
        v["output"]["next_link"]
            .as_str()
            .unwrap()
            .contains("skip=2"),
        "{v}"
    );
    ms.graph.inject([GraphFailure {
        status: 429,
        retry_after: Some(1),
    }]);
    let (status, v) = ms
        .step("microsoft-contacts", None, json!({"link_id": link}))
        .await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlook_mail_and_contacts_from_the_cli_with_a_large_attachment() {
    let ms = Microsoft::start(&["Mail.Send", "Mail.Read", "Mail.ReadWrite", "Contacts.Read"]);
    // Connected through the API; the CLI runs steps on the same store.
    let link = ms.connect("microsoft").await;
    let ws = tempfile::tempdir().unwrap();
    // 3.2 MB: above the inline limit, so a draft and an upload session (chunks of
    // 3,276,800 bytes: one full chunk and a short last one for 3.5 MB).
    let big = pattern(3_500_000, 3);
    let small = pattern(1_000, 4);
    std::fs::write(ws.path().join("big.bin"), &big).unwrap();
    std::fs::write(ws.path().join("small.bin"), &small).unwrap();
    let out = ms
        .run_module(
            "outlook-send-mail",
            Some(ws.path()),
            &json!({"link_id": link, "to": ["ann@example.com"], "subject": "Big", "text": "see attached",
                    "attachments": [{"file_path": "/big.bin", "content_type": "application/octet-stream"}, {"file_path": "/small.bin"}]}),
        )
        .ok_json();
    assert_eq!(out["via"], "draft", "{out}");
    assert_eq!(out["attachments"][0]["upload"], "upload_session");
    assert_eq!(out["attachments"][1]["upload"], "inline");
    let sent = ms.graph.sent_mail();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].via, "draft");
    assert_eq!(
        sent[0].message["body"],
        json!({"contentType": "Text", "content": "see attached"})
    );
    let by_name = |n: &str| {
        sent[0]
            .attachments
            .iter()
            .find(|a| a.name == n)
            .unwrap()
            .clone()
    };
    assert_eq!(
        by_name("big.bin").bytes,
        big,
        "large attachment bytes identical"
    );
    assert_eq!(by_name("big.bin").how, "upload_session");
    assert_eq!(by_name("small.bin").bytes, small);
    assert_eq!(ms.graph.open_drafts(), 0);
    // The chunks went to the upload URL's host, without the token, in Content-Range order.
    let chunks: Vec<_> = ms
        .graph
        .requests()
        .into_iter()
        .filter(|r| r.host == GraphHost::Transfer)
        .collect();
    assert_eq!(chunks.len(), 2);
    assert!(chunks.iter().all(|c| c.header("authorization").is_none()));
    assert_eq!(chunks[0].method, "PUT");
    assert_eq!(
        chunks[0].header("content-range"),
        Some("bytes 0-3276799/3500000")
    );
    assert_eq!(
        chunks[1].header("content-range"),
        Some("bytes 3276800-3499999/3500000")
    );
    assert!(
        chunks[0]
            .query
            .as_deref()
            .unwrap()
            .starts_with("authtoken=")
    );
    let graph_paths: Vec<String> = ms
        .graph
        .requests()
        .into_iter()
        .filter(|r| r.host == GraphHost::Graph)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(graph_paths[0], "POST /v1.0/me/messages");
    assert!(
        graph_paths.last().unwrap().ends_with("/send"),
        "{graph_paths:?}"
    );

    // Read it back through the CLI: the delta query, then only changes.
    ms.graph.add_message(
        "inbox",
        json!({"subject": "hello", "from": {"emailAddress": {"address": "x@example.com"}}}),
    );
    let first = ms
        .run_module("outlook-read-mail", None, &json!({"link_id": link}))
        .ok_json();
    assert_eq!(first["messages"][0]["subject"], "hello", "{first}");
    let again = ms
        .run_module(
            "outlook-read-mail",
            None,
            &json!({"link_id": link, "delta_link": first["delta_link"]}),
        )
        .ok_json();
    assert_eq!(again["messages"], json!([]), "{again}");
    assert_eq!(again["complete"], true);

    ms.graph.add_contacts([
        json!({"displayName": "Ann", "emailAddresses": [{"address": "ann@example.com"}]}),
    ]);
    let contacts = ms
        .run_module("microsoft-contacts", None, &json!({"link_id": link}))
        .ok_json();
    assert_eq!(contacts["contacts"][0]["displayName"], "Ann", "{contacts}");
    // The CLI prints the same error names.
    ms.graph.inject([GraphFailure::status(403)]);
    let out = ms.run_module("microsoft-contacts", None, &json!({"link_id": link}));
    assert_eq!(out.error_name().as_deref(), Some("insufficient_scope"));
}
