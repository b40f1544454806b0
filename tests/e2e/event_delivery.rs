//! Events out to flow8 through the real `flow8-host serve`: verified Slack events (and
//! the host's own lifecycle events) are delivered to the company's endpoint, a real
//! HTTP receiver (`support/event_receiver.rs`) that checks each Standard Webhooks
//! signature with its own HMAC code. The receiver down for a while then back: every
//! event arrives, once per id after deduplication, in order per link. A host killed
//! (SIGKILL) after storing, before delivering, delivers after its restart. An event
//! that keeps failing is parked after `delivery.max_attempts` and redelivered through
//! the API. Events stored before the endpoint was set are delivered when it is (within
//! the replay window). A link that needs reconnecting is told to flow8. Every wait is bounded and
//! woken by the receiver's requests or polls what the test is about; nothing is timed.

use flow8_host::store::embedded::EmbeddedStore;
use flow8_host::store::{LinkRecord, LinkStatus, Store, new_object_id, now, sealing};
use flow8_tests::api_client::call;
use flow8_tests::event_receiver::EventReceiver;
use flow8_tests::{Cli, ServerProcess, create_token, wasm_dir};
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use std::time::Duration;

const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const METRICS_TOKEN: &str = "metrics-token-0123456789abcdef";
/// The most any wait in these tests takes before it fails (seconds wide on purpose).
const WAIT: Duration = Duration::from_secs(60);

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Slack's `X-Slack-Signature` (v0 HMAC-SHA256 of `v0:{ts}:{body}`), written here.
fn slack_signature(ts: i64, body: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SLACK_SECRET.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:").as_bytes());
    mac.update(body.as_bytes());
    let tag = mac.finalize().into_bytes();
    format!(
        "v0={}",
        tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn config(delivery: &str) -> String {
    format!(
        "metrics_token: {METRICS_TOKEN}\noauth_background_refresh_seconds: 0\noauth2:\n  slack:\n    client_id: \"123.456\"\n    client_secret: slack-client-secret\n    redirect_uri: http://127.0.0.1:1/auth/callback\n    signing_secret: {SLACK_SECRET}\ndelivery:\n{delivery}"
    )
}

/// Quick retries, so a test's receiver outage spans many attempts.
const FAST: &str = "  max_attempts: 100\n  backoff_base_ms: 20\n  backoff_max_ms: 300\n  timeout_seconds: 2\n  lease_seconds: 4\n  poll_ms: 50\n";

struct Host {
    cli: Cli,
    config: std::path::PathBuf,
    server: Option<ServerProcess>,
    admin: String,
    member: String,
    http: reqwest::Client,
}

impl Host {
    fn start(config: &str) -> Host {
        let cli = Cli::new();
        let path = cli.data_dir.path().join("config.yml");
        std::fs::write(&path, config).unwrap();
        let admin = create_token(&cli, "company-a", "alice", true);
        let member = create_token(&cli, "company-a", "bob", false);
        let mut host = Host {
            cli,
            config: path,
            server: None,
            admin,
            member,
            http: reqwest::Client::new(),
        };
        host.restart();
        host
    }

    fn restart(&mut self) {
        self.server = Some(ServerProcess::start(
            &self.cli,
            &wasm_dir(),
            &["--config", self.config.to_str().unwrap()],
        ));
    }

    /// SIGKILL the serving process (`Child::kill`), no shutdown of any kind.
    fn kill(&mut self) {
        drop(self.server.take());
    }

    fn url(&self, path: &str) -> String {
        self.server.as_ref().unwrap().url(path)
    }

    /// A Slack link of company-a for workspace `team`, stored as the callback stores one.
    async fn slack_link(&self, team: &str) -> String {
        let store = EmbeddedStore::open(self.cli.data_dir.path()).await.unwrap();
        let vault = flow8_host::vault::Vault::new(flow8_host::vault::MasterKey::generate());
        let id = new_object_id();
        let t = now();
        store
            .insert_link(LinkRecord {
                access_token: vault.encrypt(
                    "unused",
                    &sealing::link("company-a", &id, sealing::ACCESS_TOKEN),
                ),
                id: id.clone(),
                user_id: "alice".into(),
                company_id: "company-a".into(),
                integration_type: "slack".into(),
                refresh_token: None,
                token_expiry: None,
                scopes: vec![],
                provider_user_id: "u1".into(),
                provider_user_email: "alice@example.com".into(),
                provider_metadata: json!({"team": {"id": team}}),
                status: LinkStatus::Active,
                status_reason: None,
                shared_with: Vec::new(),
                webhook_signature_secret: None,
                refresh_lease_owner: None,
                refresh_lease_until: None,
                refresh_retry_after: None,
                version: 0,
                created_at: t,
                updated_at: t,
            })
            .await
            .unwrap();
        id
    }

    /// Post a signed Slack event; it must be stored.
    async fn slack_event(&self, event_id: &str, team: &str) {
        let body = json!({
            "team_id": team, "api_app_id": "A1", "type": "event_callback",
            "event_id": event_id, "event_time": unix_now(),
            "event": {"type": "message", "channel": "C1", "user": "U1", "text": event_id, "ts": "1.2"},
        })
        .to_string();
        let ts = unix_now();
        let r = self
            .http
            .post(self.url("/webhooks/slack"))
            .header("content-type", "application/json")
            .header("x-slack-request-timestamp", ts.to_string())
            .header("x-slack-signature", slack_signature(ts, &body))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!((status, &v["stored"]), (200, &json!(1)), "{v}");
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Point company-a's events at the receiver; it learns the signing secret.
    async fn set_endpoint(&self, receiver: &EventReceiver) {
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/events/endpoint",
                &self.admin,
                Some(json!({"url": receiver.url})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let secret = v["signing_secret"].as_str().unwrap();
        assert!(secret.starts_with("whsec_"), "{v}");
        receiver.set_secret(secret);
    }

    async fn events(&self) -> Vec<Value> {
        let (s, v) = self
            .call(
                reqwest::Method::GET,
                "/api/v1/events?limit=500",
                &self.admin,
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["events"].as_array().unwrap().clone()
    }

    /// Poll `GET /api/v1/events` until `cond` holds for the list (the host records an
    /// outcome just after the receiver answers it, so the test waits for the record).
    async fn wait_for_events(&self, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        poll_events(|| self.events(), cond).await
    }

    async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn provider_ids(ds: &[flow8_tests::event_receiver::Delivered], link: &str) -> Vec<String> {
    ds.iter()
        .filter(|d| d.body["data"]["link_id"] == link)
        .map(|d| {
            d.body["data"]["provider_event_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn state_of<'a>(events: &'a [Value], provider_event_id: &str) -> &'a Value {
    &events
        .iter()
        .find(|e| e["provider_event_id"] == provider_event_id)
        .unwrap_or_else(|| panic!("no event {provider_event_id}"))["delivery"]["state"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_down_for_a_while_gets_every_event_once_in_order_per_link() {
    let receiver = EventReceiver::start().await;
    receiver.set_down(true);
    let host = Host::start(&config(FAST));
    let (l1, l2) = (host.slack_link("T1").await, host.slack_link("T2").await);
    host.set_endpoint(&receiver).await;

    // Two links' events, interleaved, while flow8 is down.
    let mut sent1 = Vec::new();
    let mut sent2 = Vec::new();
    for i in 0..6 {
        let (id1, id2) = (format!("EvA{i}"), format!("EvB{i}"));
        host.slack_event(&id1, "T1").await;
        host.slack_event(&id2, "T2").await;
        sent1.push(id1);
        sent2.push(id2);
    }
    // The host keeps trying while it is down (retried, nothing delivered).
    assert!(
        receiver
            .wait_until(WAIT, |r| r.refused_while_down() >= 6)
            .await
    );
    assert!(receiver.accepted().is_empty());
    let events = host.events().await;
    assert!(
        events.iter().all(|e| e["delivery"]["state"] == "pending"),
        "{events:#?}"
    );

    receiver.set_down(false);
    assert!(
        receiver.wait_until(WAIT, |r| r.unique().len() == 12).await,
        "delivered: {:?}",
        receiver.accepted()
    );
    let unique = receiver.unique();
    // Every event, each once after deduplication, in the order of its link.
    assert_eq!(provider_ids(&unique, &l1), sent1);
    assert_eq!(provider_ids(&unique, &l2), sent2);
    assert_eq!(receiver.bad_signatures(), 0);
    // The body is the event as listed: Standard Webhooks' type/timestamp/data.
    let first = &unique
        .iter()
        .find(|d| d.body["data"]["provider_event_id"] == "EvA0")
        .unwrap()
        .body;
    assert_eq!(first["type"], "message");
    assert_eq!(first["data"]["service"], "slack");
    assert_eq!(first["data"]["payload"]["event_id"], "EvA0");

    let events = host
        .wait_for_events(|es| es.iter().all(|e| e["delivery"]["state"] == "delivered"))
        .await;
    assert_eq!(events.len(), 12);
    assert!(
        events
            .iter()
            .all(|e| e["delivery"]["delivered_at"].is_string())
    );
    let m = host.metrics().await;
    let delivered: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("flow8_event_deliveries_total{outcome=\"delivered\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(delivered >= 12, "{m}");
    assert!(
        m.contains("flow8_event_deliveries_total{outcome=\"failed\"}"),
        "{m}"
    );

    // The outage left nothing behind: the next event goes straight out.
    host.slack_event("EvA-after", "T1").await;
    assert!(receiver.wait_until(WAIT, |r| r.unique().len() == 13).await);
    assert_eq!(
        provider_ids(&receiver.unique(), &l1).last().unwrap(),
        "EvA-after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_between_storing_and_delivering_delivers_after_restart() {
    let receiver = EventReceiver::start().await;
    receiver.set_down(true);
    let mut host = Host::start(&config(FAST));
    let link = host.slack_link("T1").await;
    host.set_endpoint(&receiver).await;
    let sent: Vec<String> = (0..3).map(|i| format!("EvK{i}")).collect();
    for id in &sent {
        host.slack_event(id, "T1").await;
    }
    // Stored (the provider was answered) and tried, never delivered: then SIGKILL.
    assert!(
        receiver
            .wait_until(WAIT, |r| r.refused_while_down() >= 1)
            .await
    );
    host.kill();
    assert!(receiver.accepted().is_empty());

    receiver.set_down(false);
    host.restart();
    assert!(
        receiver.wait_until(WAIT, |r| r.unique().len() == 3).await,
        "after the restart: {:?}",
        receiver.accepted()
    );
    assert_eq!(provider_ids(&receiver.unique(), &link), sent);
    assert_eq!(receiver.bad_signatures(), 0);
    host.wait_for_events(|es| {
        es.len() == 3 && es.iter().all(|e| e["delivery"]["state"] == "delivered")
    })
    .await;
    // The restarted host works as before.
    host.slack_event("EvK-after", "T1").await;
    assert!(receiver.wait_until(WAIT, |r| r.unique().len() == 4).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_parked_after_n_failures_and_redelivered_through_the_api() {
    let receiver = EventReceiver::start().await;
    receiver.set_down(true);
    let host = Host::start(&config(
        "  max_attempts: 3\n  backoff_base_ms: 20\n  backoff_max_ms: 100\n  timeout_seconds: 2\n  lease_seconds: 4\n  poll_ms: 50\n",
    ));
    host.slack_link("T1").await;
    host.set_endpoint(&receiver).await;
    host.slack_event("EvP1", "T1").await;

    let events = host
        .wait_for_events(|es| es.len() == 1 && state_of(es, "EvP1") == "parked")
        .await;
    let delivery = &events[0]["delivery"];
    assert_eq!(delivery["attempts"], 3, "{delivery}");
    assert!(
        delivery["last_error"].as_str().unwrap().contains("503"),
        "{delivery}"
    );
    assert!(delivery["next_attempt_at"].is_null());
    // Exactly N attempts, then none: parked means left alone.
    assert_eq!(receiver.refused_while_down(), 3);
    let m = host.metrics().await;
    assert!(
        m.contains("flow8_event_deliveries_total{outcome=\"parked\"} 1"),
        "{m}"
    );
    let (_, audit) = host
        .call(
            reqwest::Method::GET,
            "/api/v1/admin/audit?action_type=event_delivery_parked",
            &host.admin,
            None,
        )
        .await;
    assert_eq!(audit["entries"].as_array().unwrap().len(), 1, "{audit}");

    // Redelivery: admins only, a company's own events only.
    let id = events[0]["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/events/{id}/redeliver");
    let (s, v) = host
        .call(reqwest::Method::POST, &path, &host.member, None)
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("admin_required")),
        "{v}"
    );
    let (s, v) = host
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/events/{}/redeliver", new_object_id()),
            &host.admin,
            None,
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (404, Some("not_found")), "{v}");

    receiver.set_down(false);
    let (s, v) = host
        .call(reqwest::Method::POST, &path, &host.admin, None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["delivery"]["attempts"], 0, "{v}");
    assert!(receiver.wait_until(WAIT, |r| r.unique().len() == 1).await);
    assert_eq!(receiver.unique()[0].id, id);
    host.wait_for_events(|es| state_of(es, "EvP1") == "delivered")
        .await;
    // And the next event is delivered on its own.
    host.slack_event("EvP2", "T1").await;
    assert!(receiver.wait_until(WAIT, |r| r.unique().len() == 2).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_is_held_to_the_egress_policy_and_its_secret_shown_once() {
    let host = Host::start(&config(FAST));
    // The cloud metadata address and private ranges: refused (the test host allows
    // loopback only, as `--allow-loopback` says).
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.8/hooks",
        "ftp://example.com/x",
        "http://user:pw@example.com/",
    ] {
        let (s, v) = host
            .call(
                reqwest::Method::POST,
                "/api/v1/events/endpoint",
                &host.admin,
                Some(json!({"url": url})),
            )
            .await;
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("invalid_input")),
            "{url}: {v}"
        );
    }
    let (s, v) = host
        .call(
            reqwest::Method::GET,
            "/api/v1/events/endpoint",
            &host.admin,
            None,
        )
        .await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = host
        .call(
            reqwest::Method::POST,
            "/api/v1/events/endpoint",
            &host.member,
            Some(json!({"url": "https://flow8.example.com/e"})),
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("admin_required")),
        "{v}"
    );

    let (s, v) = host
        .call(
            reqwest::Method::POST,
            "/api/v1/events/endpoint",
            &host.admin,
            Some(json!({"url": "https://flow8.example.com/e"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let secret = v["signing_secret"].as_str().unwrap().to_string();
    // Changing the URL keeps the secret (and does not show it); rotating makes a new one.
    let (_, v) = host
        .call(
            reqwest::Method::POST,
            "/api/v1/events/endpoint",
            &host.admin,
            Some(json!({"url": "https://flow8.example.com/f"})),
        )
        .await;
    assert!(v["signing_secret"].is_null(), "{v}");
    assert_eq!(v["url"], "https://flow8.example.com/f");
    let (_, v) = host
        .call(
            reqwest::Method::POST,
            "/api/v1/events/endpoint",
            &host.admin,
            Some(json!({"url": "https://flow8.example.com/f", "rotate_secret": true})),
        )
        .await;
    let rotated = v["signing_secret"].as_str().unwrap();
    assert_ne!(rotated, secret);
    let (s, v) = host
        .call(
            reqwest::Method::GET,
            "/api/v1/events/endpoint",
            &host.admin,
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert!(
        v["signing_secret"].is_null() && !v.to_string().contains(rotated),
        "{v}"
    );
    // Stored sealed: the secret is nowhere in the data directory's files.
    for (path, bytes) in host.cli.data_files() {
        assert!(
            !flow8_tests::contains_bytes(&bytes, rotated.as_bytes()),
            "{}",
            path.display()
        );
    }
    let (s, _) = host
        .call(
            reqwest::Method::DELETE,
            "/api/v1/events/endpoint",
            &host.admin,
            None,
        )
        .await;
    assert_eq!(s, 204);
    // Without an endpoint, an event is stored and marked so (redeliverable later).
    host.slack_link("T1").await;
    host.slack_event("EvN1", "T1").await;
    host.wait_for_events(|es| state_of(es, "EvN1") == "no_endpoint")
        .await;
}

/// Events that arrived before the company set an endpoint (its first links connected
/// before flow8's receiver was configured) are delivered when the endpoint is first
/// set, those of the last `delivery.replay_on_endpoint_set_hours`, in order; an older
/// one stays `no_endpoint` (redeliverable by id), and setting the URL again replays
/// nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stored_before_an_endpoint_was_set_are_delivered_when_it_is() {
    let receiver = EventReceiver::start().await;
    let host = Host::start(&config(&format!(
        "{FAST}  replay_on_endpoint_set_hours: 24\n"
    )));
    let link = host.slack_link("T1").await;
    for id in ["EvR1", "EvR2", "EvR3"] {
        host.slack_event(id, "T1").await;
    }
    // One from two days ago, stored as the webhook route stores one.
    let store = EmbeddedStore::open(host.cli.data_dir.path()).await.unwrap();
    let old_id = new_object_id();
    assert!(
        store
            .insert_event(flow8_host::store::EventRecord {
                id: old_id.clone(),
                company_id: "company-a".into(),
                service: "slack".into(),
                provider_event_id: "EvOld".into(),
                link_id: Some(link.clone()),
                event_type: "message".into(),
                payload: json!({"event_id": "EvOld"}),
                received_at: now() - time::Duration::hours(48),
            })
            .await
            .unwrap()
    );
    host.wait_for_events(|es| {
        ["EvR1", "EvR2", "EvR3", "EvOld"]
            .iter()
            .all(|id| state_of(es, id) == "no_endpoint")
    })
    .await;

    let (s, v) = host
        .call(
            reqwest::Method::POST,
            "/api/v1/events/endpoint",
            &host.admin,
            Some(json!({"url": receiver.url})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["replayed"], 3, "{v}");
    receiver.set_secret(v["signing_secret"].as_str().unwrap());
    let events = host
        .wait_for_events(|es| {
            ["EvR1", "EvR2", "EvR3"]
                .iter()
                .all(|id| state_of(es, id) == "delivered")
        })
        .await;
    assert_eq!(state_of(&events, "EvOld"), "no_endpoint");
    assert_eq!(
        provider_ids(&receiver.unique(), &link),
        ["EvR1", "EvR2", "EvR3"]
    );
    assert_eq!(receiver.bad_signatures(), 0);

    // Set again (an endpoint exists): nothing is replayed again.
    let (s, v) = host
        .call(
            reqwest::Method::POST,
            "/api/v1/events/endpoint",
            &host.admin,
            Some(json!({"url": receiver.url})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["replayed"], 0, "{v}");
    // The old one goes when asked for by id, after the others, and the host goes on.
    let (s, v) = host
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/events/{old_id}/redeliver"),
            &host.admin,
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    host.slack_event("EvR4", "T1").await;
    host.wait_for_events(|es| {
        state_of(es, "EvOld") == "delivered" && state_of(es, "EvR4") == "delivered"
    })
    .await;
    let got = provider_ids(&receiver.unique(), &link);
    assert_eq!(&got[..3], ["EvR1", "EvR2", "EvR3"]);
    assert_eq!(got.len(), 5, "{got:?}");
}

/// `flow8-host events endpoint set|show|remove` and `events redeliver ID`, driven as a
/// binary on the store a serving host uses: they do what the admin API does (the same
/// code): the URL is checked, the secret shown once, earlier `no_endpoint` events
/// replayed, each change audited, and the serving host delivers what they queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_cli_sets_shows_removes_the_endpoint_and_redelivers() {
    let receiver = EventReceiver::start().await;
    // The CLI holds the endpoint to the config's egress policy, as `serve` does.
    let host = Host::start(&format!(
        "outbound:\n  allow_loopback: true\n{}",
        config(FAST)
    ));
    let config = host.config.to_str().unwrap().to_string();
    let events = |args: &[&str]| {
        let mut all = vec![
            "--config",
            config.as_str(),
            "--company",
            "company-a",
            "events",
        ];
        all.extend_from_slice(args);
        host.cli.run(&all)
    };
    let out = events(&["endpoint", "show"]);
    assert_eq!(out.code, Some(1));
    assert_eq!(
        out.error_name().as_deref(),
        Some("not_found"),
        "{}",
        out.stderr
    );
    let out = events(&["endpoint", "set", "ftp://flow8.example.com/hooks"]);
    assert_eq!(
        out.error_name().as_deref(),
        Some("invalid_input"),
        "{}",
        out.stderr
    );

    let link = host.slack_link("T1").await;
    host.slack_event("EvC1", "T1").await;
    host.wait_for_events(|es| state_of(es, "EvC1") == "no_endpoint")
        .await;
    let set = events(&["endpoint", "set", &receiver.url]).ok_json();
    assert_eq!(set["url"], receiver.url.as_str());
    assert_eq!(set["replayed"], 1, "{set}");
    let secret = set["signing_secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"), "{set}");
    receiver.set_secret(secret);
    let listed = host
        .wait_for_events(|es| state_of(es, "EvC1") == "delivered")
        .await;
    assert_eq!(provider_ids(&receiver.unique(), &link), ["EvC1"]);
    assert_eq!(receiver.bad_signatures(), 0);

    // Shown without its secret, by the CLI and by the API alike.
    let shown = events(&["endpoint", "show"]).ok_json();
    assert!(shown["signing_secret"].is_null(), "{shown}");
    assert!(!shown.to_string().contains(secret));
    let (s, api) = host
        .call(
            reqwest::Method::GET,
            "/api/v1/events/endpoint",
            &host.admin,
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(api["url"], shown["url"]);

    // Redelivered: flow8 gets the same id again.
    let id = listed
        .iter()
        .find(|e| e["provider_event_id"] == "EvC1")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let again = events(&["redeliver", &id]).ok_json();
    assert_eq!(again["id"], id.as_str());
    assert_eq!(again["delivery"]["state"], "pending", "{again}");
    assert!(
        receiver
            .wait_until(WAIT, |r| r.accepted().iter().filter(|d| d.id == id).count()
                == 2)
            .await,
        "{:?}",
        receiver.accepted()
    );
    let out = events(&["redeliver", &new_object_id()]);
    assert_eq!(
        out.error_name().as_deref(),
        Some("not_found"),
        "{}",
        out.stderr
    );

    // Every change is audited, as through the API.
    let (s, v) = host
        .call(
            reqwest::Method::GET,
            "/api/v1/admin/audit?action_type=event_endpoint_set",
            &host.admin,
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["entries"][0]["after_state"]["replayed"], 1, "{v}");

    assert_eq!(events(&["endpoint", "remove"]).ok_json()["removed"], true);
    let out = events(&["endpoint", "remove"]);
    assert_eq!(
        out.error_name().as_deref(),
        Some("not_found"),
        "{}",
        out.stderr
    );
    let (s, _) = host
        .call(
            reqwest::Method::GET,
            "/api/v1/events/endpoint",
            &host.admin,
            None,
        )
        .await;
    assert_eq!(s, 404);
    // The serving host goes on: a new event is stored, with no endpoint to go to.
    host.slack_event("EvC2", "T1").await;
    host.wait_for_events(|es| state_of(es, "EvC2") == "no_endpoint")
        .await;
}

/// A Google link of company A's member, connected through a host whose events go to a
/// receiver, whose refresh token the user then revoked at the provider (the next use
/// needs a refresh, which the provider refuses).
struct RevokedLink {
    receiver: EventReceiver,
    _oauth: flow8_tests::oauth_server::OAuthServer,
    cli: Cli,
    config_path: std::path::PathBuf,
    server: ServerProcess,
    http: reqwest::Client,
    member: String,
    admin: String,
    link_id: String,
}

/// A step posted to `host` as `token`: its report.
async fn step_on(host: &ServerProcess, token: &str, step: &Value) -> Value {
    let body = Some(("application/json", step.to_string().into_bytes()));
    call("POST", &host.url("/api/v1/steps"), token, body, &[])
        .await
        .1
}

/// The host's own (`flow8`) lifecycle events, as `admin` lists them.
async fn flow8_events(host: &ServerProcess, admin: &str) -> Value {
    let url = host.url("/api/v1/events?service=flow8");
    call("GET", &url, admin, None, &[]).await.1
}

/// Read an event list with `fetch` until `cond` holds for it (at most [`WAIT`]). The
/// host records a delivery's outcome just after the receiver answers, and the store
/// has no change feed to wait on: a bounded poll of the API.
async fn poll_events<F, Fut>(fetch: F, cond: impl Fn(&[Value]) -> bool) -> Vec<Value>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<Value>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let events = fetch().await;
        if cond(&events) {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events never got there: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_revoked_link() -> RevokedLink {
    use flow8_tests::oauth_server::OAuthServer;
    let receiver = EventReceiver::start().await;
    // The first access token is nearly expired (20 s, inside the 300 s refresh window).
    let oauth = OAuthServer::start(3600, &[20]);
    let cli = Cli::new();
    let port = ServerProcess::free_port();
    let config = format!(
        "oauth_refresh_window_seconds: 300\noauth_background_refresh_seconds: 0\noauth2:\n  google:\n    client_id: flow8-test-client\n    client_secret: test-secret\n    redirect_uri: http://127.0.0.1:{port}/auth/callback\n    scopes: [drive]\n    authorize_url: {b}/authorize\n    token_url: {b}/token\n    revoke_url: {b}/revoke\n    identity_url: {b}/userinfo\n    api_hosts: ['http://127.0.0.1:*']\ndelivery:\n{FAST}",
        b = oauth.base
    );
    let config_path = cli.data_dir.path().join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    let member = create_token(&cli, "company-a", "alice", false);
    let admin = create_token(&cli, "company-a", "root", true);
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
    let r = http
        .post(server.url("/api/v1/events/endpoint"))
        .bearer_auth(&admin)
        .json(&json!({"url": receiver.url}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    receiver.set_secret(v["signing_secret"].as_str().unwrap());

    // Connect, as the browser does.
    let v: Value = http
        .get(server.url("/api/v1/integrations/authorize?service=google"))
        .bearer_auth(&member)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cookie = flow8_tests::binding_cookie(&v);
    let callback = flow8_tests::consent(&http, v["auth_url"].as_str().unwrap()).await;
    let connected: Value = http
        .get(&callback)
        .header("accept", "application/json")
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let link_id = connected["link"]["id"].as_str().unwrap().to_string();

    // The user revokes access at the provider; the next use needs a refresh, refused.
    let refresh = oauth.refresh_tokens_at_least(1)[0].clone();
    let r = http
        .post(format!("{}/revoke", oauth.base))
        .form(&[("token", refresh.as_str())])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert!(oauth.wait_for_revocation(&refresh));
    RevokedLink {
        receiver,
        _oauth: oauth,
        cli,
        config_path,
        server,
        http,
        member,
        admin,
        link_id,
    }
}

/// The host's own lifecycle event: the provider refuses a link's refresh token (the
/// user revoked access), the host marks the link `needs_reconnect` and tells flow8,
/// signed and through the same queue as the providers' events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_needs_reconnecting_is_told_to_flow8() {
    let r = a_revoked_link().await;
    let api = flow8_tests::RecordingServer::start();
    let step = json!({"name": "s", "module_ref": "hostile", "input_mapping": {"attack": "http", "url": api.url("/x"), "credential": "google", "link_id": r.link_id}});
    let v = step_on(&r.server, &r.member, &step).await;
    assert_eq!(v["error"], "token_revoked", "{v}");

    assert!(
        r.receiver
            .wait_until(WAIT, |r| r
                .unique()
                .iter()
                .any(|d| d.body["type"] == "link.needs_reconnect"))
            .await,
        "{:?}",
        r.receiver.accepted()
    );
    let told: Vec<_> = r
        .receiver
        .unique()
        .into_iter()
        .filter(|d| d.body["type"] == "link.needs_reconnect")
        .collect();
    assert_eq!(told.len(), 1, "{told:?}");
    let data = &told[0].body["data"];
    assert_eq!(data["service"], "flow8");
    assert_eq!(data["link_id"], r.link_id.as_str());
    assert_eq!(data["payload"]["service"], "google");
    assert_eq!(data["payload"]["link_id"], r.link_id.as_str());
    assert_eq!(r.receiver.bad_signatures(), 0);
    // Again refused, not told again: the link was marked once.
    let v = step_on(&r.server, &r.member, &step).await;
    assert_eq!(v["error"], "token_revoked", "{v}");
    let listed = flow8_events(&r.server, &r.admin).await;
    assert_eq!(listed["events"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["events"][0]["event_type"], "link.needs_reconnect");
}

/// The same event with two hosts on one store (the embedded store shared through its
/// data directory): steps on both hosts at once meet the revoked refresh token, and
/// flow8 is told once, delivered once, by whichever host's deliverer claimed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_meeting_one_revoked_link_tell_flow8_once() {
    let r = a_revoked_link().await;
    let second = ServerProcess::start(
        &r.cli,
        &wasm_dir(),
        &["--config", r.config_path.to_str().unwrap()],
    );
    let api = flow8_tests::RecordingServer::start();
    let step = json!({"name": "s", "module_ref": "hostile", "input_mapping": {"attack": "http", "url": api.url("/x"), "credential": "google", "link_id": r.link_id}});
    let steps: Vec<_> = (0..16)
        .map(|i| {
            let url = if i % 2 == 0 {
                r.server.url("/api/v1/steps")
            } else {
                second.url("/api/v1/steps")
            };
            let (http, member, step) = (r.http.clone(), r.member.clone(), step.clone());
            tokio::spawn(async move {
                let answer = http
                    .post(url)
                    .bearer_auth(&member)
                    .json(&step)
                    .send()
                    .await
                    .unwrap();
                answer.json::<Value>().await.unwrap()
            })
        })
        .collect();
    // A step on the host that did not win the refresh lease uses the current token
    // while it has not expired (20 s): `ok`. Every other one meets the refusal.
    let mut used_current = 0;
    for t in steps {
        let v = t.await.unwrap();
        if v["status"] == "ok" {
            used_current += 1;
        } else {
            assert_eq!(v["error"], "token_revoked", "{v}");
        }
    }
    assert!(used_current < 16, "no step met the revoked refresh token");
    assert_eq!(api.requests().len(), used_current);
    // Once the link is marked, every host refuses it.
    for host in [&r.server, &second] {
        let v = step_on(host, &r.member, &step).await;
        assert_eq!(v["error"], "token_revoked", "{v}");
    }

    let reconnect =
        |d: &flow8_tests::event_receiver::Delivered| d.body["type"] == "link.needs_reconnect";
    assert!(
        r.receiver
            .wait_until(WAIT, |r| r.unique().iter().any(reconnect))
            .await,
        "{:?}",
        r.receiver.accepted()
    );
    // Both hosts' deliverers claim from the one store, under a lease. Once the event
    // reads `delivered` no deliverer takes it again (only pending ones are claimed),
    // and no failed attempt means no lease ran out for another host to take over. The
    // list has no change notification: a bounded poll.
    let listed = poll_events(
        || async {
            flow8_events(&r.server, &r.admin).await["events"]
                .as_array()
                .unwrap()
                .clone()
        },
        |es| es.iter().any(|e| e["delivery"]["state"] == "delivered"),
    )
    .await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["event_type"], "link.needs_reconnect");
    let delivery = &listed[0]["delivery"];
    assert_eq!(delivery["attempts"], 0, "{delivery}");
    let delivered: Vec<_> = r
        .receiver
        .accepted()
        .into_iter()
        .filter(reconnect)
        .collect();
    assert_eq!(
        delivered.len(),
        1,
        "delivered more than once: {delivered:?}"
    );
    assert_eq!(delivered[0].body["data"]["link_id"], r.link_id.as_str());
    assert_eq!(r.receiver.bad_signatures(), 0);
}
