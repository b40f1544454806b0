//! Webhook subscriptions kept alive across two `flow8-host serve` processes on one
//! MongoDB (a real SecantusDB), against the Graph subscription fake
//! (`support/subscription_fakes.rs`), which validates the host's notification URL for
//! real before it makes a subscription. Made through the API with the link's token;
//! renewed by exactly one host although both look every second; made again when Graph
//! answers 404 on renewal or sends `subscriptionRemoved` (signed with the link's
//! `clientState`); not lost when the host renewing it is killed mid-renewal (the other
//! host renews once the lease has run out); removed at Graph when the link is unlinked;
//! one Graph removed and refuses to make again is told to flow8 (`link.subscription_lost`).
//! Every wait is a bounded poll of what the test is about; nothing is timed.

use flow8_host::store::mongodb::MongoStore;
use flow8_host::store::{LinkRecord, LinkStatus, Store, new_object_id, now, sealing};
use flow8_host::vault::{MasterKey, Vault};
use flow8_tests::mongo_server::MongoServer;
use flow8_tests::subscription_fakes::{DriveFake, GraphSubscriptionFake};
use flow8_tests::{Cli, ServerProcess, create_token, wasm_dir};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const MASTER_KEY: &str = "4f1c2b8e9d0a7f6e5d4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a291807f6e";
const METRICS_TOKEN: &str = "metrics-token-0123456789abcdef";
/// The link's access token: the fake records the token of every call.
const LINK_TOKEN: &str = "graph-access-token-of-alice-0123456789";

/// A host's CLI (its own data directory) on the shared MongoDB store.
fn host_cli(uri: &str) -> Cli {
    let mut cli = Cli::new();
    cli.env.push(("FLOW8_STORE".into(), uri.into()));
    cli.env.push(("FLOW8_MASTER_KEY".into(), MASTER_KEY.into()));
    cli
}

/// `serve` on `port`, its public URL that address, Microsoft's API at the fake, the
/// renewer looking every second with a 3-second lease.
fn start(cli: &Cli, port: u16, fake: &GraphSubscriptionFake) -> ServerProcess {
    let provider = format!(
        "  microsoft:\n    client_id: ms-client\n    redirect_uri: http://127.0.0.1:{port}/auth/callback\n    api_base_url: {b}/v1.0\n    api_hosts: ['{b}/v1.0/']\n",
        b = fake.base()
    );
    start_with(cli, port, &provider)
}

/// `serve` with one `oauth2:` entry.
fn start_with(cli: &Cli, port: u16, provider: &str) -> ServerProcess {
    let config = format!(
        "public_url: http://127.0.0.1:{port}\nmetrics_token: {METRICS_TOKEN}\noauth_background_refresh_seconds: 0\nwebhook_subscriptions: {{ renew_before_seconds: 3600, check_seconds: 1, lease_seconds: 3 }}\noauth2:\n{provider}"
    );
    let path = cli.data_dir.path().join("config.yml");
    std::fs::write(&path, config).unwrap();
    ServerProcess::start_on(
        cli,
        &wasm_dir(),
        &format!("127.0.0.1:{port}"),
        &["--config", path.to_str().unwrap()],
    )
}

/// A link of alice's, stored as the OAuth callback stores one (its token sealed under
/// the hosts' master key, long-lived: never refreshed).
async fn insert_link(uri: &str) -> String {
    insert_service_link(uri, "microsoft").await
}

async fn insert_service_link(uri: &str, service: &str) -> String {
    let store = MongoStore::connect(uri).await.unwrap();
    let vault = Vault::new(MasterKey::parse(MASTER_KEY).unwrap());
    let (id, t) = (new_object_id(), now());
    store
        .insert_link(LinkRecord {
            access_token: vault.encrypt(
                LINK_TOKEN,
                &sealing::link("company-a", &id, sealing::ACCESS_TOKEN),
            ),
            id: id.clone(),
            user_id: "alice".into(),
            company_id: "company-a".into(),
            integration_type: service.into(),
            refresh_token: None,
            token_expiry: None,
            scopes: vec!["Mail.Read".into()],
            provider_user_id: "u1".into(),
            provider_user_email: "alice@example.com".into(),
            provider_metadata: json!({}),
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

async fn call(
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(token);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The link's subscriptions as `host` lists them.
async fn listed(host: &ServerProcess, token: &str, link: &str) -> Vec<Value> {
    let (s, v) = call(
        reqwest::Method::GET,
        host.url(&format!("/api/v1/integrations/{link}/subscriptions")),
        token,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["subscriptions"].as_array().unwrap().clone()
}

async fn one(host: &ServerProcess, token: &str, link: &str, id: &str) -> Value {
    listed(host, token, link)
        .await
        .into_iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("subscription {id} is not listed"))
}

fn expires_after(sub: &Value, d: time::Duration) -> bool {
    sub["expires_at"]
        .as_str()
        .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
        .is_some_and(|t| t > OffsetDateTime::now_utc() + d)
}

/// A metric's value on a host's `/metrics` (summed over matching lines).
async fn metric(host: &ServerProcess, line_prefix: &str) -> u64 {
    let text = reqwest::Client::new()
        .get(host.url("/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(line_prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

const SWEEPS: &str = "flow8_webhook_subscription_sweeps_total ";

/// Wait until `done` holds. A bounded poll: the renewer works on its own schedule
/// (every second here), so the test looks at what it is about until then.
async fn wait_until<F: AsyncFnMut() -> bool>(what: &str, mut done: F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_renew_once_remake_lost_subscriptions_and_remove_them_on_unlink() {
    let mongo = MongoServer::start();
    let uri = mongo.uri("flow8");
    let fake = GraphSubscriptionFake::start();
    // Made subscriptions expire in two minutes: inside the hour the renewer renews in.
    fake.grant_on_create(Duration::from_secs(120));
    let (a_cli, b_cli) = (host_cli(&uri), host_cli(&uri));
    let alice = create_token(&a_cli, "company-a", "alice", false);
    let root = create_token(&a_cli, "company-a", "root", true);
    let link = insert_link(&uri).await;
    let a = start(&a_cli, ServerProcess::free_port(), &fake);
    let b = start(&b_cli, ServerProcess::free_port(), &fake);

    // Made through A: Graph's handshake reached A's webhook route and was answered, and
    // the call carried the link's token.
    let (s, v) = call(
        reqwest::Method::POST,
        a.url(&format!("/api/v1/integrations/{link}/subscriptions")),
        &alice,
        Some(json!({"resource": "me/mailFolders('Inbox')/messages", "change_type": "created"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let s1 = v["id"].as_str().unwrap().to_string();
    let s1_graph = v["provider_id"].as_str().unwrap().to_string();
    let hook = format!("{}/webhooks/microsoft/{link}", a.base);
    assert_eq!(v["notification_url"], hook);
    assert_eq!(v["status"], "active");
    assert_eq!(fake.validated_urls(), vec![hook.clone()]);
    let made = fake.subscriptions();
    assert_eq!(made.len(), 1);
    assert_eq!(made[0].token, LINK_TOKEN);
    assert_eq!(made[0].resource["notificationUrl"], hook);
    assert_eq!(made[0].resource["lifecycleNotificationUrl"], hook);
    assert!(made[0].resource["clientState"].as_str().unwrap().len() >= 40);

    // Due at once, renewed by one of the two hosts, exactly once.
    wait_until("the subscription is renewed", async || {
        let sub = one(&b, &alice, &link, &s1).await;
        sub["renewals"] == 1 && expires_after(&sub, time::Duration::days(6))
    })
    .await;
    let (sa, sb) = (metric(&a, SWEEPS).await, metric(&b, SWEEPS).await);
    wait_until("both hosts looked three more times", async || {
        metric(&a, SWEEPS).await >= sa + 3 && metric(&b, SWEEPS).await >= sb + 3
    })
    .await;
    let renewals = fake.calls_of("PATCH");
    assert_eq!(renewals.len(), 1, "{renewals:?}");
    assert_eq!(renewals[0].id.as_deref(), Some(s1_graph.as_str()));
    assert_eq!(renewals[0].token, LINK_TOKEN);
    let renewed =
        r#"flow8_webhook_subscription_renewals_total{provider="microsoft",outcome="renewed"}"#;
    assert_eq!(metric(&a, renewed).await + metric(&b, renewed).await, 1);

    // Graph answers 404 to a renewal: the subscription is made again, and the new one
    // renews normally after that.
    fake.fail_next_renewal(404);
    let (s, v) = call(
        reqwest::Method::POST,
        b.url(&format!("/api/v1/integrations/{link}/subscriptions")),
        &alice,
        Some(json!({"resource": "me/events", "change_type": "created,updated,deleted"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let s2 = v["id"].as_str().unwrap().to_string();
    let s2_graph = v["provider_id"].as_str().unwrap().to_string();
    wait_until(
        "the lost subscription is made again and renewed",
        async || {
            let sub = one(&a, &alice, &link, &s2).await;
            sub["provider_id"] != s2_graph.as_str()
                && sub["renewals"] == 2
                && expires_after(&sub, time::Duration::days(6))
        },
    )
    .await;
    let s2_now = one(&a, &alice, &link, &s2).await["provider_id"]
        .as_str()
        .unwrap()
        .to_string();
    let ids: Vec<String> = fake.subscriptions().into_iter().map(|s| s.id).collect();
    assert!(ids.contains(&s2_now) && !ids.contains(&s2_graph), "{ids:?}");
    // The audit entry follows the stored change.
    let audit = async || {
        let (s, v) = call(
            reqwest::Method::GET,
            a.url("/api/v1/admin/audit?action_type=webhook_subscription_recreated"),
            &root,
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        v
    };
    wait_until("the remaking is audited", async || {
        audit().await["entries"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    })
    .await;
    let v = audit().await;
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{v}");
    assert_eq!(entries[0]["resource_id"], s2.as_str());
    assert_eq!(
        entries[0]["after_state"]["previous_provider_id"],
        s2_graph.as_str()
    );

    // Graph drops the first one and says so (`subscriptionRemoved`, with its
    // clientState): it is made again.
    assert_eq!(fake.remove_with_lifecycle(&s1_graph).await, 202);
    wait_until("the removed subscription is made again", async || {
        one(&b, &alice, &link, &s1).await["provider_id"] != s1_graph.as_str()
    })
    .await;
    let s1_now = one(&b, &alice, &link, &s1).await["provider_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(fake.subscriptions().iter().any(|s| s.id == s1_now));

    // Unlinking removes both at Graph, with the link's token, before it is revoked.
    wait_until("no renewal is in flight", async || {
        let subs = listed(&a, &alice, &link).await;
        subs.iter()
            .all(|s| expires_after(s, time::Duration::days(6)))
    })
    .await;
    let (s, v) = call(
        reqwest::Method::DELETE,
        a.url(&format!("/api/v1/integrations/microsoft/{link}")),
        &alice,
        None,
    )
    .await;
    assert_eq!(s, 204, "{v}");
    assert!(
        fake.subscriptions().is_empty(),
        "{:?}",
        fake.subscriptions()
    );
    let deleted: Vec<Option<String>> = fake.calls_of("DELETE").into_iter().map(|c| c.id).collect();
    assert!(
        deleted.contains(&Some(s1_now)) && deleted.contains(&Some(s2_now)),
        "{deleted:?}"
    );
    let (s, _) = call(
        reqwest::Method::GET,
        b.url(&format!("/api/v1/integrations/{link}/subscriptions")),
        &alice,
        None,
    )
    .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_renewal_does_not_lose_the_subscription() {
    let mongo = MongoServer::start();
    let uri = mongo.uri("flow8");
    let fake = GraphSubscriptionFake::start();
    fake.grant_on_create(Duration::from_secs(120));
    fake.hold_next_renewal();
    let (a_cli, b_cli) = (host_cli(&uri), host_cli(&uri));
    let alice = create_token(&a_cli, "company-a", "alice", false);
    let link = insert_link(&uri).await;
    let a = start(&a_cli, ServerProcess::free_port(), &fake);
    let (s, v) = call(
        reqwest::Method::POST,
        a.url(&format!("/api/v1/integrations/{link}/subscriptions")),
        &alice,
        Some(json!({"resource": "me/messages"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();

    // A sends the renewal and gets no answer; it is killed (SIGKILL) holding the lease.
    wait_until("A's renewal is held", async || fake.held() == 1).await;
    drop(a);

    // B takes over once the lease has run out, and renews it.
    let b = start(&b_cli, ServerProcess::free_port(), &fake);
    wait_until("B renews the subscription", async || {
        let sub = one(&b, &alice, &link, &id).await;
        sub["renewals"] == 1 && expires_after(&sub, time::Duration::days(6))
    })
    .await;
    assert_eq!(fake.calls_of("PATCH").len(), 2);
    assert_eq!(fake.subscriptions().len(), 1);

    // B goes on normally: another subscription is made and renewed through it.
    let (s, v) = call(
        reqwest::Method::POST,
        b.url(&format!("/api/v1/integrations/{link}/subscriptions")),
        &alice,
        Some(json!({"resource": "me/contacts", "change_type": "updated"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let next = v["id"].as_str().unwrap().to_string();
    wait_until("B renews the second one", async || {
        one(&b, &alice, &link, &next).await["renewals"] == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drive_channels_are_replaced_to_renew_and_stopped_on_unlink() {
    let mongo = MongoServer::start();
    let uri = mongo.uri("flow8");
    let fake = DriveFake::start();
    fake.grant_next(Duration::from_secs(120));
    let cli = host_cli(&uri);
    let alice = create_token(&cli, "company-a", "alice", false);
    let link = insert_service_link(&uri, "google").await;
    let port = ServerProcess::free_port();
    let provider = format!(
        "  google:\n    client_id: g-client\n    client_secret: g-secret\n    redirect_uri: http://127.0.0.1:{port}/auth/callback\n    api_base_url: {b}\n    api_hosts: ['{b}/drive/']\n",
        b = fake.base()
    );
    let host = start_with(&cli, port, &provider);

    // A request Drive does not take is refused before anything is sent.
    let (s, v) = call(
        reqwest::Method::POST,
        host.url(&format!("/api/v1/integrations/{link}/subscriptions")),
        &alice,
        Some(json!({"resource": "drive/files/../../etc"})),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_input")),
        "{v}"
    );
    assert!(fake.channels().is_empty());

    let (s, v) = call(
        reqwest::Method::POST,
        host.url(&format!("/api/v1/integrations/{link}/subscriptions")),
        &alice,
        Some(json!({"resource": "drive/changes"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let first = v["provider_id"].as_str().unwrap().to_string();
    let hook = format!("{}/webhooks/google/{link}", host.base);
    let open = fake.channels();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].id, first);
    assert_eq!(open[0].address, hook);
    assert_eq!(open[0].bearer, LINK_TOKEN);
    assert!(open[0].token.len() >= 40);
    // Google's sync message on the new channel carried the link's secret: acknowledged.
    wait_until("the sync message is answered", async || {
        !fake.sync_answers().is_empty()
    })
    .await;
    assert_eq!(fake.sync_answers()[0], 200);

    // Renewing a channel opens a new one and stops the old.
    wait_until("the channel is replaced", async || {
        let sub = one(&host, &alice, &link, &id).await;
        sub["renewals"] == 1 && sub["provider_id"] != first.as_str()
    })
    .await;
    let open = fake.channels();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_ne!(open[0].id, first);
    assert_eq!(fake.stopped(), vec![first.clone()]);

    // Unlinking stops it.
    let (s, v) = call(
        reqwest::Method::DELETE,
        host.url(&format!("/api/v1/integrations/google/{link}")),
        &alice,
        None,
    )
    .await;
    assert_eq!(s, 204, "{v}");
    assert!(fake.channels().is_empty(), "{:?}", fake.channels());
}

/// Graph drops a subscription (`subscriptionRemoved`) and refuses to make it again: the
/// subscription becomes `lost`, is audited `webhook_subscription_lost`, and flow8 is
/// told, through the real deliverer, with a signed `link.subscription_lost` event of
/// service `flow8`, once. The host goes on normally: a new subscription is made and
/// renewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_cannot_be_made_again_is_told_to_flow8() {
    use flow8_tests::event_receiver::EventReceiver;
    let receiver = EventReceiver::start().await;
    let mongo = MongoServer::start();
    let uri = mongo.uri("flow8");
    let fake = GraphSubscriptionFake::start();
    let cli = host_cli(&uri);
    let alice = create_token(&cli, "company-a", "alice", false);
    let root = create_token(&cli, "company-a", "root", true);
    let link = insert_link(&uri).await;
    let a = start(&cli, ServerProcess::free_port(), &fake);
    let (s, v) = call(
        reqwest::Method::POST,
        a.url("/api/v1/events/endpoint"),
        &root,
        Some(json!({"url": receiver.url})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    receiver.set_secret(v["signing_secret"].as_str().unwrap());
    let (s, v) = call(
        reqwest::Method::POST,
        a.url(&format!("/api/v1/integrations/{link}/subscriptions")),
        &alice,
        Some(json!({"resource": "me/messages"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let graph_id = v["provider_id"].as_str().unwrap().to_string();

    fake.fail_next_create(403);
    assert_eq!(fake.remove_with_lifecycle(&graph_id).await, 202);
    wait_until("the subscription is lost", async || {
        one(&a, &alice, &link, &id).await["status"] == "lost"
    })
    .await;
    let lost = |r: &EventReceiver| {
        r.unique()
            .into_iter()
            .filter(|d| d.body["type"] == "link.subscription_lost")
            .collect::<Vec<_>>()
    };
    assert!(
        receiver
            .wait_until(Duration::from_secs(60), |r| !lost(r).is_empty())
            .await,
        "{:?}",
        receiver.accepted()
    );
    let told = lost(&receiver);
    assert_eq!(told.len(), 1, "{told:?}");
    let data = &told[0].body["data"];
    assert_eq!(data["service"], "flow8");
    assert_eq!(data["link_id"], link.as_str());
    assert_eq!(data["payload"]["subscription_id"], id.as_str());
    assert_eq!(data["payload"]["provider_id"], graph_id.as_str());
    assert_eq!(data["payload"]["resource"], "me/messages");
    assert!(
        data["payload"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("subscriptionRemoved") && r.contains("403")),
        "{data}"
    );
    assert_eq!(receiver.bad_signatures(), 0);
    let audit = async || {
        let (s, v) = call(
            reqwest::Method::GET,
            a.url("/api/v1/admin/audit?action_type=webhook_subscription_lost"),
            &root,
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        v["entries"].as_array().unwrap().clone()
    };
    wait_until("the loss is audited", async || !audit().await.is_empty()).await;
    let entries = audit().await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["resource_id"], id.as_str());

    // Stored once, as one of the host's own events.
    let (s, v) = call(
        reqwest::Method::GET,
        a.url("/api/v1/events?service=flow8"),
        &root,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let flow8: Vec<&Value> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "link.subscription_lost")
        .collect();
    assert_eq!(flow8.len(), 1, "{v}");

    // The host goes on normally: a new subscription is made (and renewed when due).
    fake.grant_on_create(Duration::from_secs(120));
    let (s, v) = call(
        reqwest::Method::POST,
        a.url(&format!("/api/v1/integrations/{link}/subscriptions")),
        &alice,
        Some(json!({"resource": "me/events"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let next = v["id"].as_str().unwrap().to_string();
    wait_until("the new one is renewed", async || {
        one(&a, &alice, &link, &next).await["renewals"] == 1
    })
    .await;
    assert_eq!(one(&a, &alice, &link, &id).await["status"], "lost");
}
