//! The memory scan (a token the host attaches is never in the module's memory) over
//! every request shape the Microsoft 365 and Google modules send with their links: a
//! GET (outlook-read-mail, microsoft-contacts), a JSON POST (outlook-send-mail,
//! google-drive-share, google-sheets), raw bytes (gmail-send's media upload), a
//! workspace file as the body (onedrive-upload, google-drive-upload), a workspace range
//! as the body (the chunked uploads) and an answer streamed into the workspace
//! (onedrive-download). The hostile guest binds a Microsoft and a Google link as those
//! modules do (one service, scopes in the manifest), has the host attach the token,
//! then scans its own linear memory for it. A control step that reads the token on
//! purpose finds it, so a zero means something; afterwards the real module runs
//! normally on the same host.

use crate::gmail_send::GoogleSetup;
use flow8_tests::graph_fake::GraphHost;
use flow8_tests::microsoft::{Microsoft, pattern};
use serde_json::{Value, json};

/// The needle as the hostile guest takes it: XOR-masked, so the token's plain bytes are
/// never in the step's input.
fn masked(token: &str) -> Vec<u8> {
    token.bytes().map(|b| b ^ 0x5a).collect()
}

fn assert_not_in_memory(v: &Value, what: &str) {
    assert!(
        v["output"]["status"].is_u64(),
        "{what}: the attached request went out: {v}"
    );
    assert_eq!(
        v["output"]["memory_hits"], 0,
        "{what}: the token is in the module's memory: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_microsoft_token_is_never_in_guest_memory_for_any_request_the_modules_send() {
    let ms = Microsoft::start(&["Mail.Send", "Contacts.Read", "Files.ReadWrite"]);
    let link = ms.connect("microsoft").await;
    let ws = ms.workspace("scan");
    std::fs::write(ws.join("scan.bin"), pattern(400_000, 7)).unwrap();
    ms.graph.put_drive_file("/report.bin", pattern(10_000, 8));
    // Learn the token from what Graph received for a real module's request.
    let (status, v) = ms
        .step("microsoft-contacts", None, json!({"link_id": link}))
        .await;
    assert_eq!(status, 200, "{v}");
    let token = ms.graph.requests()[0]
        .header("authorization")
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string();
    let graph = format!("{}/v1.0", ms.graph.base());
    let cases = [
        ("get", format!("{graph}/me/contacts"), json!({})),
        ("json", format!("{graph}/me/sendMail"), json!({})),
        (
            "workspace_file",
            format!("{graph}/me/drive/root:/scan.bin:/content"),
            json!({}),
        ),
        (
            "workspace_range",
            format!("{graph}/me/drive/root:/part.bin:/content"),
            json!({"length": 327_680}),
        ),
        (
            "to_workspace",
            format!("{graph}/me/drive/root:/report.bin:/content"),
            // Graph answers the download with a redirect to the pre-authenticated
            // URL, which comes back in memory (onedrive-download follows it without
            // the token): the answer the token bought must not carry it either.
            json!({"file_path": "/report.bin"}),
        ),
    ];
    let scan = |via: &str, url: &str, extra: &Value, read_first: bool| {
        let mut input = json!({"attack": "attach_then_scan", "via": via, "url": url,
            "credential": "microsoft", "microsoft_link_id": link,
            "needle_xor": masked(&token), "read_first": read_first});
        for (k, x) in extra.as_object().unwrap() {
            input[k] = x.clone();
        }
        input
    };
    for (via, url, extra) in &cases {
        ms.graph.clear_requests();
        let (status, v) = ms
            .step("hostile", Some("scan"), scan(via, url, extra, false))
            .await;
        assert_eq!(status, 200, "{via}: {v}");
        assert_not_in_memory(&v, via);
        // The host did attach it: Graph saw the Bearer token.
        let seen = ms.graph.requests();
        let first = seen
            .iter()
            .find(|r| r.host == GraphHost::Graph)
            .unwrap_or_else(|| panic!("{via}: Graph received nothing"));
        assert_eq!(
            first.header("authorization"),
            Some(format!("Bearer {token}").as_str()),
            "{via}"
        );
    }
    // Control: reading the token on purpose puts it in memory, and the scan finds it.
    let (_, v) = ms
        .step(
            "hostile",
            Some("scan"),
            scan("get", &cases[0].1, &json!({}), true),
        )
        .await;
    assert!(v["output"]["memory_hits"].as_u64().unwrap() >= 1, "{v}");
    // The next step on the same host runs normally.
    let (status, v) = ms
        .step("microsoft-contacts", None, json!({"link_id": link}))
        .await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_google_token_is_never_in_guest_memory_for_any_request_the_modules_send() {
    let s = GoogleSetup::start().await;
    let ws = s.workspace("scan");
    std::fs::write(ws.join("scan.bin"), pattern(300_000, 9)).unwrap();
    // Learn the token from what Google received for a real module's request.
    let (status, v) = s
        .step(
            "google-sheets",
            json!({"link_id": s.link_id, "operation": "create", "title": "Scan"}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let token = s.google.calls()[0].token.clone().expect("a Bearer token");
    let g = s.google.base();
    let cases = [
        ("get", format!("{g}/drive/v3/files/none")),
        ("json", format!("{g}/drive/v3/files/none/permissions")),
        (
            "bytes",
            format!("{g}/upload/gmail/v1/users/me/messages/send?uploadType=media"),
        ),
        (
            "workspace_file",
            format!("{g}/upload/drive/v3/files?uploadType=resumable&upload_id=none"),
        ),
    ];
    let scan = |via: &str, url: &str, read_first: bool| {
        json!({"attack": "attach_then_scan", "via": via, "url": url,
            "credential": "workspace", "google_link_id": s.link_id,
            "needle_xor": masked(&token), "read_first": read_first})
    };
    for (via, url) in &cases {
        let before = s.google.calls().len();
        let (status, v) = s.step("hostile", scan(via, url, false), Some("scan")).await;
        assert_eq!(status, 200, "{via}: {v}");
        assert_not_in_memory(&v, via);
        let calls = s.google.calls();
        assert_eq!(
            calls.get(before).and_then(|c| c.token.clone()).as_deref(),
            Some(token.as_str()),
            "{via}: the host attached the token"
        );
    }
    let (_, v) = s
        .step("hostile", scan("get", &cases[0].1, true), Some("scan"))
        .await;
    assert!(v["output"]["memory_hits"].as_u64().unwrap() >= 1, "{v}");
    let (status, v) = s
        .step(
            "google-sheets",
            json!({"link_id": s.link_id, "operation": "create", "title": "After"}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
}
