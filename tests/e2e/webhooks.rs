//! Inbound provider webhooks through the real HTTP server (`flow8-host serve`): per
//! provider a correctly signed request is stored and listed by `GET /api/v1/events`;
//! a wrong, missing or replayed signature, a stale timestamp, a body changed after
//! signing and an oversized body are each refused with nothing stored, and the next
//! valid request still works; the handshakes answer as the providers require. The
//! signatures are computed here from the providers' documented algorithms (HMAC-SHA256
//! with the `hmac` and `sha2` crates), not by the host's code.

use base64::Engine;
use flow8_tests::{Cli, ServerProcess, create_token, wasm_dir};
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const QB_TOKEN: &str = "qb-verifier-token-0123456789";
const METRICS_TOKEN: &str = "metrics-token-0123456789abcdef";

fn hmac_sha256(key: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Slack's `X-Slack-Signature` for a timestamp and body.
fn slack_signature(secret: &str, ts: i64, body: &str) -> String {
    format!(
        "v0={}",
        hex(&hmac_sha256(
            secret,
            &[format!("v0:{ts}:").as_bytes(), body.as_bytes()]
        ))
    )
}

/// QuickBooks' `intuit-signature` for a body.
fn intuit_signature(token: &str, body: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(hmac_sha256(token, &[body.as_bytes()]))
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A host with the Slack signing secret and the QuickBooks verifier token configured,
/// and an admin token of each of two companies.
struct Host {
    cli: Cli,
    server: ServerProcess,
    admin_a: String,
    admin_b: String,
    http: reqwest::Client,
}

impl Host {
    fn start(config: &str) -> Host {
        let cli = Cli::new();
        let path = cli.data_dir.path().join("config.yml");
        std::fs::write(&path, config).unwrap();
        let admin_a = create_token(&cli, "company-a", "alice", true);
        let admin_b = create_token(&cli, "company-b", "bob", true);
        let server = ServerProcess::start(&cli, &wasm_dir(), &["--config", path.to_str().unwrap()]);
        Host {
            cli,
            server,
            admin_a,
            admin_b,
            http: reqwest::Client::new(),
        }
    }

    fn configured() -> Host {
        Host::start(&format!(
            "metrics_token: {METRICS_TOKEN}\noauth2:\n  slack:\n    client_id: \"123.456\"\n    client_secret: slack-client-secret\n    redirect_uri: http://127.0.0.1:1/auth/callback\n    signing_secret: {SLACK_SECRET}\n  quickbooks:\n    client_id: qb-client\n    client_secret: qb-client-secret\n    redirect_uri: http://127.0.0.1:1/auth/callback\n    webhook_verifier_token: {QB_TOKEN}\n  microsoft:\n    client_id: ms-client\n    redirect_uri: http://127.0.0.1:1/auth/callback\n  google:\n    client_id: g-client\n    client_secret: g-client-secret\n    redirect_uri: http://127.0.0.1:1/auth/callback\n"
        ))
    }

    /// A link of `company` stored as the OAuth callback stores one.
    async fn link(&self, company: &str, service: &str, metadata: Value) -> String {
        flow8_tests::stored_links::insert_link(self.cli.data_dir.path(), company, service, metadata)
            .await
    }

    async fn post(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: impl Into<reqwest::Body>,
    ) -> (u16, String, Option<String>) {
        let mut r = self.http.post(self.server.url(path)).body(body);
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (status, resp.text().await.unwrap(), ct)
    }

    /// The company's events (newest first), through the API.
    async fn events(&self, token: &str, query: &str) -> Value {
        let r = self
            .http
            .get(self.server.url(&format!("/api/v1/events{query}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.json().await.unwrap()
    }

    /// Company A's audit entries of one action type (newest first), through the API.
    async fn audit(&self, action_type: &str) -> Vec<Value> {
        let r = self
            .http
            .get(self.server.url(&format!(
                "/api/v1/admin/audit?action_type={action_type}&limit=500"
            )))
            .bearer_auth(&self.admin_a)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().await.unwrap();
        v["entries"].as_array().unwrap().clone()
    }

    async fn event_ids(&self, token: &str) -> Vec<String> {
        self.events(token, "?limit=500").await["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["provider_event_id"].as_str().unwrap().to_string())
            .collect()
    }

    async fn webhook_secret(&self, service: &str, link: &str) -> (String, String) {
        let r = self
            .http
            .post(self.server.url(&format!(
                "/api/v1/integrations/{service}/{link}/webhook-secret"
            )))
            .bearer_auth(&self.admin_a)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().await.unwrap();
        (
            v["webhook_secret"].as_str().unwrap().to_string(),
            v["webhook_url"].as_str().unwrap().to_string(),
        )
    }
}

fn refused(answer: &(u16, String, Option<String>), what: &str) {
    assert_eq!(answer.0, 401, "{what}: {}", answer.1);
    let v: Value = serde_json::from_str(&answer.1).unwrap();
    assert_eq!(v["error"], "invalid_signature", "{what}");
}

fn slack_event(event_id: &str, team: &str) -> String {
    json!({
        "token": "deprecated-verification-token",
        "team_id": team,
        "api_app_id": "A1",
        "event": {"type": "message", "channel": "C1", "user": "U1", "text": "hello", "ts": "1.2"},
        "type": "event_callback",
        "event_id": event_id,
        "event_time": unix_now(),
    })
    .to_string()
}

fn slack_headers(secret: &str, ts: i64, body: &str) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".into()),
        ("x-slack-request-timestamp", ts.to_string()),
        ("x-slack-signature", slack_signature(secret, ts, body)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_events_are_verified_stored_once_and_listed() {
    let host = Host::configured();
    host.link(
        "company-a",
        "slack",
        json!({"team": {"id": "T0A"}, "bot_user_id": "UB"}),
    )
    .await;
    // Another company's workspace: its events never show in company-a's list.
    host.link("company-b", "slack", json!({"team": {"id": "T0B"}}))
        .await;

    // The url_verification handshake, only once the signature checks.
    let body = json!({"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"}).to_string();
    let now = unix_now();
    let answer = host
        .post(
            "/webhooks/slack",
            &slack_headers(SLACK_SECRET, now, &body),
            body.clone(),
        )
        .await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(
        answer.1,
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );
    assert!(answer.2.unwrap().starts_with("text/plain"));
    let unsigned = host
        .post(
            "/webhooks/slack",
            &[("content-type", "application/json".into())],
            body.clone(),
        )
        .await;
    refused(&unsigned, "an unsigned url_verification");
    assert!(!unsigned.1.contains("3eZbrw1a"));

    // A signed event is stored and listed.
    let mut next = 0;
    let mut expected: Vec<String> = Vec::new();
    let mut valid = async |host: &Host, expected: &mut Vec<String>| {
        next += 1;
        let id = format!("Ev{next:04}");
        let body = slack_event(&id, "T0A");
        let answer = host
            .post(
                "/webhooks/slack",
                &slack_headers(SLACK_SECRET, unix_now(), &body),
                body,
            )
            .await;
        assert_eq!(answer.0, 200, "{}", answer.1);
        expected.insert(0, id);
        assert_eq!(host.event_ids(&host.admin_a).await, *expected);
    };
    valid(&host, &mut expected).await;
    let listed = host.events(&host.admin_a, "").await;
    let e = &listed["events"][0];
    assert_eq!(e["service"], "slack");
    assert_eq!(e["event_type"], "message");
    assert_eq!(e["payload"]["event"]["text"], "hello");
    assert!(e["link_id"].is_string());

    let body = slack_event("EvHostile", "T0A");
    let now = unix_now();
    // A wrong signature: another app's secret.
    refused(
        &host
            .post(
                "/webhooks/slack",
                &slack_headers("another-apps-secret", now, &body),
                body.clone(),
            )
            .await,
        "a wrong signature",
    );
    valid(&host, &mut expected).await;
    // No signature, or no timestamp.
    refused(
        &host
            .post(
                "/webhooks/slack",
                &[("x-slack-request-timestamp", now.to_string())],
                body.clone(),
            )
            .await,
        "a missing signature",
    );
    let mut no_ts = slack_headers(SLACK_SECRET, now, &body);
    no_ts.retain(|(k, _)| *k != "x-slack-request-timestamp");
    refused(
        &host.post("/webhooks/slack", &no_ts, body.clone()).await,
        "no timestamp",
    );
    valid(&host, &mut expected).await;
    // Correctly signed, but outside the five-minute window either way.
    for ts in [now - 301, now + 301] {
        refused(
            &host
                .post(
                    "/webhooks/slack",
                    &slack_headers(SLACK_SECRET, ts, &body),
                    body.clone(),
                )
                .await,
            "a stale timestamp",
        );
    }
    valid(&host, &mut expected).await;
    // The body changed after signing.
    let changed = body.replace("hello", "hellO");
    refused(
        &host
            .post(
                "/webhooks/slack",
                &slack_headers(SLACK_SECRET, now, &body),
                changed,
            )
            .await,
        "a body changed after signing",
    );
    valid(&host, &mut expected).await;
    // Larger than the host reads, correctly signed.
    let big = format!(
        "{{\"type\":\"event_callback\",\"pad\":\"{}\"}}",
        "x".repeat(1024 * 1024)
    );
    let answer = host
        .post(
            "/webhooks/slack",
            &slack_headers(SLACK_SECRET, now, &big),
            big.clone(),
        )
        .await;
    assert_eq!(answer.0, 413, "{}", answer.1);
    valid(&host, &mut expected).await;

    // A replay of a request that was accepted: the same bytes, the same signature.
    let replay_body = slack_event("EvReplay", "T0A");
    let headers = slack_headers(SLACK_SECRET, unix_now(), &replay_body);
    assert_eq!(
        host.post("/webhooks/slack", &headers, replay_body.clone())
            .await
            .0,
        200
    );
    expected.insert(0, "EvReplay".into());
    refused(
        &host
            .post("/webhooks/slack", &headers, replay_body.clone())
            .await,
        "a replayed request",
    );
    // Slack's own retry (newly signed, marked) is acknowledged and not stored twice.
    let mut retry = slack_headers(SLACK_SECRET, unix_now(), &replay_body);
    retry.push(("x-slack-retry-num", "1".into()));
    retry.push(("x-slack-retry-reason", "http_timeout".into()));
    let answer = host.post("/webhooks/slack", &retry, replay_body).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(host.event_ids(&host.admin_a).await, expected);
    valid(&host, &mut expected).await;

    // Nothing of the refused requests was stored; each company sees only its own.
    assert!(
        !host
            .event_ids(&host.admin_a)
            .await
            .contains(&"EvHostile".to_string())
    );
    assert!(host.event_ids(&host.admin_b).await.is_empty());
    let body = slack_event("EvB", "T0B");
    assert_eq!(
        host.post(
            "/webhooks/slack",
            &slack_headers(SLACK_SECRET, unix_now(), &body),
            body
        )
        .await
        .0,
        200
    );
    assert_eq!(host.event_ids(&host.admin_b).await, vec!["EvB".to_string()]);
    assert_eq!(host.event_ids(&host.admin_a).await, expected);

    // Paging: newest first, `next_offset` until the end.
    let page = host.events(&host.admin_a, "?limit=2").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_offset"], 2);
    let last = host
        .events(
            &host.admin_a,
            &format!("?limit=2&offset={}", expected.len() - 1),
        )
        .await;
    assert_eq!(
        last["events"][0]["provider_event_id"],
        expected[expected.len() - 1].as_str()
    );
    assert!(last["next_offset"].is_null());
    // Members do not read the company's events (they come from every member's links).
    let member = create_token(&host.cli, "company-a", "carol", false);
    let r = host
        .http
        .get(host.server.url("/api/v1/events"))
        .bearer_auth(&member)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // The metrics count the verdicts.
    let metrics = host
        .http
        .get(host.server.url("/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (verdict, n) in [
        ("accepted", expected.len() + 1),
        ("handshake", 1),
        ("unsigned", 3),
        ("bad_signature", 2),
        ("stale", 2),
        ("replayed", 1),
        ("duplicate", 1),
        ("too_large", 1),
    ] {
        let line =
            format!("flow8_webhooks_total{{provider=\"slack\",verdict=\"{verdict}\"}} {n}\n");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_secret_every_webhook_is_refused() {
    // Slack and QuickBooks are configured, but without webhook secrets.
    let host = Host::start(
        "oauth2:\n  slack:\n    client_id: \"123.456\"\n    client_secret: s\n    redirect_uri: http://127.0.0.1:1/auth/callback\n  quickbooks:\n    client_id: q\n    client_secret: s\n    redirect_uri: http://127.0.0.1:1/auth/callback\n",
    );
    host.link("company-a", "slack", json!({"team": {"id": "T0A"}}))
        .await;
    host.link("company-a", "quickbooks", json!({"realmId": "9130"}))
        .await;
    // Signed with a secret an attacker might guess (the empty one, or any).
    for secret in ["", SLACK_SECRET] {
        let body = slack_event("Ev1", "T0A");
        refused(
            &host
                .post(
                    "/webhooks/slack",
                    &slack_headers(secret, unix_now(), &body),
                    body,
                )
                .await,
            "slack with no signing secret",
        );
    }
    let body =
        json!({"eventNotifications": [{"realmId": "9130", "dataChangeEvent": {"entities": []}}]})
            .to_string();
    refused(
        &host
            .post(
                "/webhooks/quickbooks",
                &[("intuit-signature", intuit_signature("", &body))],
                body,
            )
            .await,
        "quickbooks with no verifier token",
    );
    // A link without a webhook secret refuses its per-link webhooks, handshake included.
    let ms = host.link("company-a", "microsoft", json!({})).await;
    let answer = host
        .post(
            &format!("/webhooks/microsoft/{ms}?validationToken=abc"),
            &[],
            "",
        )
        .await;
    refused(&answer, "graph validation for a link without a secret");
    assert!(host.event_ids(&host.admin_a).await.is_empty());
}

fn quickbooks_event(realm: &str, id: &str) -> String {
    json!({"eventNotifications": [{"realmId": realm, "dataChangeEvent": {"entities": [
        {"name": "Invoice", "id": id, "operation": "Create", "lastUpdated": "2026-12-01T10:00:00.000Z"}
    ]}}]})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickbooks_events_are_verified_and_routed_by_realm() {
    let host = Host::configured();
    host.link("company-a", "quickbooks", json!({"realmId": "9130355"}))
        .await;
    host.link("company-b", "quickbooks", json!({"realmId": "4620816"}))
        .await;
    let sign = |body: &str| vec![("intuit-signature", intuit_signature(QB_TOKEN, body))];
    let mut count = 0;
    // `extra`: events stored besides this closure's.
    let mut valid = async |host: &Host, extra: usize| {
        count += 1;
        let body = quickbooks_event("9130355", &count.to_string());
        let answer = host.post("/webhooks/quickbooks", &sign(&body), body).await;
        assert_eq!(answer.0, 200, "{}", answer.1);
        let listed = host.events(&host.admin_a, "?limit=500").await;
        assert_eq!(listed["events"].as_array().unwrap().len(), count + extra);
        listed
    };
    let listed = valid(&host, 0).await;
    assert_eq!(listed["events"][0]["event_type"], "Invoice.Create");
    assert_eq!(listed["events"][0]["payload"]["realmId"], "9130355");

    let body = quickbooks_event("9130355", "hostile");
    refused(
        &host
            .post(
                "/webhooks/quickbooks",
                &[("intuit-signature", intuit_signature("guess", &body))],
                body.clone(),
            )
            .await,
        "a wrong signature",
    );
    valid(&host, 0).await;
    refused(
        &host.post("/webhooks/quickbooks", &[], body.clone()).await,
        "a missing signature",
    );
    valid(&host, 0).await;
    refused(
        &host
            .post(
                "/webhooks/quickbooks",
                &sign(&body),
                body.replace("hostile", "hostil3"),
            )
            .await,
        "a body changed after signing",
    );
    valid(&host, 0).await;
    let big = format!(
        "{{\"eventNotifications\":[],\"pad\":\"{}\"}}",
        "x".repeat(1024 * 1024)
    );
    assert_eq!(
        host.post("/webhooks/quickbooks", &sign(&big), big.clone())
            .await
            .0,
        413
    );
    valid(&host, 0).await;
    // Replayed: the same signed notification again.
    let body = quickbooks_event("9130355", "once");
    assert_eq!(
        host.post("/webhooks/quickbooks", &sign(&body), body.clone())
            .await
            .0,
        200
    );
    refused(
        &host.post("/webhooks/quickbooks", &sign(&body), body).await,
        "a replay",
    );
    let listed = valid(&host, 1).await;
    let total = listed["events"].as_array().unwrap().len();
    // The other realm is the other company's.
    assert!(host.event_ids(&host.admin_b).await.is_empty());
    let body = quickbooks_event("4620816", "b1");
    assert_eq!(
        host.post("/webhooks/quickbooks", &sign(&body), body)
            .await
            .0,
        200
    );
    assert_eq!(
        host.events(&host.admin_b, "").await["events"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        host.events(&host.admin_a, "?limit=500").await["events"]
            .as_array()
            .unwrap()
            .len(),
        total
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_notifications_need_the_links_client_state() {
    let host = Host::configured();
    let link = host.link("company-a", "microsoft", json!({})).await;
    let (secret, url) = host.webhook_secret("microsoft", &link).await;
    let path = format!("/webhooks/microsoft/{link}");
    assert!(url.ends_with(&path), "{url}");

    // The validation handshake: the token, decoded, as text/plain, 200.
    let answer = host
        .post(
            &format!("{path}?validationToken=Validation%3a%20Testing%20client%20application"),
            &[("content-type", "text/plain".into())],
            "",
        )
        .await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(answer.1, "Validation: Testing client application");
    assert!(answer.2.unwrap().starts_with("text/plain"));

    let notification = |id: &str, state: &str| {
        json!({"value": [{
            "id": id,
            "subscriptionId": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
            "subscriptionExpirationDateTime": "2026-12-03T11:00:00.0000000Z",
            "changeType": "created",
            "resource": "Users/u1/Messages/m1",
            "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "id": "m1"},
            "clientState": state,
            "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95"
        }]})
        .to_string()
    };
    let json_ct = [("content-type", "application/json".to_string())];
    let mut count = 0;
    let mut valid = async |host: &Host| {
        count += 1;
        let answer = host
            .post(&path, &json_ct, notification(&format!("n{count}"), &secret))
            .await;
        assert_eq!(answer.0, 202, "{}", answer.1);
        let ids = host.event_ids(&host.admin_a).await;
        assert_eq!(ids.len(), count);
        assert_eq!(ids[0], format!("n{count}"));
    };
    valid(&host).await;
    let listed = host.events(&host.admin_a, "").await;
    assert_eq!(listed["events"][0]["event_type"], "created");
    assert!(
        listed["events"][0]["payload"].get("clientState").is_none(),
        "{listed}"
    );

    refused(
        &host
            .post(&path, &json_ct, notification("x1", "guessed-state"))
            .await,
        "a wrong clientState",
    );
    valid(&host).await;
    let missing = json!({"value": [{"id": "x2", "changeType": "created"}]}).to_string();
    refused(&host.post(&path, &json_ct, missing).await, "no clientState");
    valid(&host).await;
    // One forged notification in a batch refuses the whole batch.
    let mixed = json!({"value": [
        {"id": "x3", "changeType": "created", "clientState": secret},
        {"id": "x4", "changeType": "created", "clientState": "forged"}
    ]})
    .to_string();
    refused(&host.post(&path, &json_ct, mixed).await, "a mixed batch");
    valid(&host).await;
    let replay = notification("n1", &secret);
    refused(
        &host.post(&path, &json_ct, replay).await,
        "a replayed notification",
    );
    valid(&host).await;
    let big = format!("{{\"value\":[],\"pad\":\"{}\"}}", "x".repeat(1024 * 1024));
    assert_eq!(host.post(&path, &json_ct, big).await.0, 413);
    valid(&host).await;
    // Another link's secret does not open this link's URL.
    let other = host.link("company-a", "microsoft", json!({})).await;
    let (other_secret, _) = host.webhook_secret("microsoft", &other).await;
    refused(
        &host
            .post(&path, &json_ct, notification("x5", &other_secret))
            .await,
        "another link's secret",
    );
    // An unknown link answers as a link without a secret.
    refused(
        &host
            .post(
                "/webhooks/microsoft/000000000000000000000000",
                &json_ct,
                notification("x6", &secret),
            )
            .await,
        "an unknown link",
    );
    valid(&host).await;

    // Lifecycle notifications are stored and audited.
    let lifecycle = json!({"value": [{
        "subscriptionId": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
        "subscriptionExpirationDateTime": "2026-12-03T11:00:00.0000000Z",
        "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
        "clientState": secret,
        "lifecycleEvent": "reauthorizationRequired"
    }]})
    .to_string();
    assert_eq!(host.post(&path, &json_ct, lifecycle).await.0, 202);
    let listed = host.events(&host.admin_a, "?limit=1").await;
    assert_eq!(listed["events"][0]["event_type"], "reauthorizationRequired");
    let audit = host.audit("webhook_subscription_lifecycle").await;
    assert_eq!(
        audit[0]["after_state"]["lifecycle_event"],
        "reauthorizationRequired"
    );
    assert_eq!(audit[0]["resource_id"], link.as_str());

    // A new secret replaces the old one.
    let (newer, _) = host.webhook_secret("microsoft", &link).await;
    assert_ne!(newer, secret);
    refused(
        &host
            .post(&path, &json_ct, notification("x7", &secret))
            .await,
        "the replaced secret",
    );
    assert_eq!(
        host.post(&path, &json_ct, notification("n-new", &newer))
            .await
            .0,
        202
    );
    // Another company's admin cannot make a secret for this link.
    let r = host
        .http
        .post(host.server.url(&format!(
            "/api/v1/integrations/microsoft/{link}/webhook-secret"
        )))
        .bearer_auth(&host.admin_b)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_push_needs_the_channel_token() {
    let host = Host::configured();
    let link = host.link("company-a", "google", json!({})).await;
    let (secret, _) = host.webhook_secret("google", &link).await;
    let path = format!("/webhooks/google/{link}");
    let push = |token: &str, state: &str, number: u64| {
        vec![
            (
                "x-goog-channel-id",
                "01234567-89ab-cdef-0123456789ab".to_string(),
            ),
            ("x-goog-channel-token", token.to_string()),
            (
                "x-goog-channel-expiration",
                "Thu, 03 Dec 2026 10:00:00 GMT".to_string(),
            ),
            ("x-goog-resource-id", "ret08u3rv24htgh289g".to_string()),
            (
                "x-goog-resource-uri",
                "https://www.googleapis.com/drive/v3/changes".to_string(),
            ),
            ("x-goog-resource-state", state.to_string()),
            ("x-goog-message-number", number.to_string()),
        ]
    };
    // `sync` opens the channel: acknowledged, no event.
    let answer = host.post(&path, &push(&secret, "sync", 1), "").await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert!(host.event_ids(&host.admin_a).await.is_empty());

    let mut number = 1;
    let mut valid = async |host: &Host| {
        number += 1;
        let answer = host.post(&path, &push(&secret, "change", number), "").await;
        assert_eq!(answer.0, 200, "{}", answer.1);
        let ids = host.event_ids(&host.admin_a).await;
        assert_eq!(ids[0], format!("01234567-89ab-cdef-0123456789ab:{number}"));
        assert_eq!(ids.len() as u64, number - 1);
    };
    valid(&host).await;
    let listed = host.events(&host.admin_a, "").await;
    assert_eq!(listed["events"][0]["event_type"], "change");
    assert_eq!(
        listed["events"][0]["payload"]["resource_id"],
        "ret08u3rv24htgh289g"
    );

    refused(
        &host.post(&path, &push("guessed", "change", 100), "").await,
        "a wrong token",
    );
    valid(&host).await;
    let mut no_token = push(&secret, "change", 101);
    no_token.retain(|(k, _)| *k != "x-goog-channel-token");
    refused(&host.post(&path, &no_token, "").await, "a missing token");
    valid(&host).await;
    refused(
        &host.post(&path, &push(&secret, "change", 2), "").await,
        "a replayed message",
    );
    valid(&host).await;
    let big = "x".repeat(1024 * 1024 + 1);
    assert_eq!(
        host.post(&path, &push(&secret, "change", 102), big).await.0,
        413
    );
    valid(&host).await;
}

/// Forged calls to a link's webhook URL are all refused, but write at most a burst of
/// `webhook_refused` audit entries for that link (then one a minute): whoever learned
/// the URL cannot fill the company's audit log. Another link's refusals have their own
/// allowance.
#[tokio::test]
async fn a_flood_of_forged_webhooks_writes_a_bounded_audit_trail() {
    let host = Host::configured();
    let link = host.link("company-a", "microsoft", json!({})).await;
    let other = host.link("company-a", "microsoft", json!({})).await;
    host.webhook_secret("microsoft", &link).await;
    host.webhook_secret("microsoft", &other).await;
    let json_ct = [("content-type", "application/json".to_string())];
    let forged = |id: usize| {
        json!({"value": [{"id": format!("f{id}"), "changeType": "created", "clientState": "forged"}]})
            .to_string()
    };
    for i in 0..30 {
        let answer = host
            .post(&format!("/webhooks/microsoft/{link}"), &json_ct, forged(i))
            .await;
        refused(&answer, "a forged notification");
    }
    refused(
        &host
            .post(
                &format!("/webhooks/microsoft/{other}"),
                &json_ct,
                forged(99),
            )
            .await,
        "a forged notification to another link",
    );
    // The handler answers after its audit entry is committed (`AuditWriter::record`
    // waits for the group commit), so every entry is in the log by now.
    let refusals = host.audit("webhook_refused").await;
    let of = |resource: &str| {
        refusals
            .iter()
            .filter(|e| e["resource_id"] == resource)
            .count()
    };
    let burst = flow8_host::server::WEBHOOK_REFUSED_AUDIT_BURST as usize;
    assert_eq!(of(&link), burst, "30 forged calls");
    assert_eq!(of(&other), 1, "the other link's one");
}
