//! Unit tests of the service over a real embedded store and real local HTTP servers
//! (the dialect edge has its own, in `client.rs`).

use super::refresh::Claimed;
use super::*;
use crate::store::{OAuthStateRecord, now};
use serde_json::json;

/// A service with `google` configured as `extra` says (endpoints default to a closed port).
pub(super) fn service_with(extra: serde_json::Value) -> (Arc<AnyStore>, OAuthService) {
    let store = Arc::new(AnyStore::from(
        crate::store::embedded::EmbeddedStore::open_in_memory().unwrap(),
    ));
    let vault = Arc::new(Vault::new(crate::vault::MasterKey::generate()));
    let mut provider = json!({
        "client_id": "c", "client_secret": "s",
        "redirect_uri": "http://127.0.0.1:1/auth/callback", "scopes": ["drive"],
        "authorize_url": "http://127.0.0.1:9/authorize",
        "token_url": "http://127.0.0.1:9/token",
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        provider[k] = v.clone();
    }
    let mut config = BTreeMap::new();
    config.insert(
        "google".to_string(),
        serde_json::from_value(provider).unwrap(),
    );
    let providers = providers::configure(&crate::catalogue::Catalogue::builtin(), &config).unwrap();
    (store.clone(), OAuthService::new(store, vault, providers))
}

fn service() -> (Arc<AnyStore>, OAuthService) {
    service_with(json!({}))
}

fn params(state: &str) -> BTreeMap<String, String> {
    [("state", state), ("code", "c")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn states_are_single_use_expire_and_are_not_connect_sessions() {
    const B: &str = "the-browser-binding";
    let (store, oauth) = service();
    // Expired: refused (and gone).
    store
        .insert_oauth_state(OAuthStateRecord {
            state_hash: super::authorize::state_key("old", B),
            company_id: "A".into(),
            user_id: "u".into(),
            service: "google".into(),
            pkce_verifier: None,
            expires_at: now() - Duration::from_secs(1),
        })
        .await
        .unwrap();
    assert!(matches!(
        oauth.callback(&params("old"), Some(B)).await,
        Err(OAuthError::InvalidState)
    ));
    // Never issued.
    assert!(matches!(
        oauth.callback(&params("forged"), Some(B)).await,
        Err(OAuthError::InvalidState)
    ));
    // A connect-page token is no authorization state, and the other way round.
    let (session, _) = oauth.create_connect_session("A", "u").await.unwrap();
    assert!(matches!(
        oauth.callback(&params(&session), Some(B)).await,
        Err(OAuthError::InvalidState)
    ));
    let url = oauth.authorize_url("A", "u", "google", B).await.unwrap();
    let state = url::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    assert!(matches!(
        oauth.open_connect_session(&state).await,
        Err(OAuthError::InvalidState)
    ));
    // Bound to the browser that started it: without the binding, or with another
    // browser's, the state is refused and not used up.
    assert!(matches!(
        oauth.callback(&params(&state), None).await,
        Err(OAuthError::NotThisBrowser)
    ));
    assert!(matches!(
        oauth
            .callback(&params(&state), Some("another-browser"))
            .await,
        Err(OAuthError::InvalidState)
    ));
    // With it, the state is taken (the code exchange then fails: no token endpoint)...
    assert!(matches!(
        oauth.callback(&params(&state), Some(B)).await,
        Err(OAuthError::Provider(_))
    ));
    // ...and single use.
    assert!(matches!(
        oauth.callback(&params(&state), Some(B)).await,
        Err(OAuthError::InvalidState)
    ));
    assert!(store.list_links("A", None).await.unwrap().is_empty());
    let (session, _) = oauth.create_connect_session("A", "u").await.unwrap();
    assert_eq!(
        oauth.open_connect_session(&session).await.unwrap(),
        ("A".to_string(), "u".to_string())
    );
    assert!(matches!(
        oauth.open_connect_session(&session).await,
        Err(OAuthError::InvalidState)
    ));
}

/// Every event a service emitted.
#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<OAuthEvent>>);

impl OAuthEvents for Recorded {
    fn emit(&self, event: OAuthEvent) -> events::EventFuture<'_> {
        self.0.lock().unwrap().push(event);
        Box::pin(std::future::ready(()))
    }
}

/// A token endpoint on a loopback port: each refresh answers `answer(n)` for the n-th
/// request (from 1); the number of requests so far.
async fn token_endpoint(
    answer: impl Fn(usize) -> (u16, serde_json::Value) + Send + Sync + 'static,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let count = Arc::new(AtomicUsize::new(0));
    let (seen, answer) = (count.clone(), Arc::new(answer));
    let app = axum::Router::new().fallback(move || {
        let (seen, answer) = (seen.clone(), answer.clone());
        async move {
            let (status, body) = answer(seen.fetch_add(1, Ordering::SeqCst) + 1);
            (
                axum::http::StatusCode::from_u16(status).unwrap(),
                axum::Json(body),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/token"), count)
}

/// A link of company `A` to `google` whose token expires in `expires_in`.
async fn insert_link(store: &AnyStore, oauth: &OAuthService, expires_in: Duration) -> LinkRecord {
    let t = now();
    let id = new_object_id();
    let seal = |plain: &str, field| {
        oauth
            .vault
            .encrypt(plain, &crate::store::sealing::link("A", &id, field))
    };
    let link = LinkRecord {
        access_token: seal("access-0", crate::store::sealing::ACCESS_TOKEN),
        refresh_token: Some(seal("refresh-0", crate::store::sealing::REFRESH_TOKEN)),
        id: id.clone(),
        user_id: "u".into(),
        company_id: "A".into(),
        integration_type: "google".into(),
        token_expiry: Some(t + expires_in),
        scopes: vec!["drive".into()],
        provider_user_id: "p".into(),
        provider_user_email: String::new(),
        provider_metadata: serde_json::Value::Null,
        status: crate::store::LinkStatus::Active,
        status_reason: None,
        shared_with: Vec::new(),
        webhook_signature_secret: None,
        refresh_lease_owner: None,
        refresh_lease_until: None,
        refresh_retry_after: None,
        version: 0,
        created_at: t,
        updated_at: t,
    };
    store.insert_link(link.clone()).await.unwrap();
    link
}

fn rotating(n: usize) -> (u16, serde_json::Value) {
    (
        200,
        json!({"access_token": format!("access-{n}"), "refresh_token": format!("refresh-{n}"),
            "token_type": "Bearer", "expires_in": 3600}),
    )
}

#[tokio::test]
async fn expiring_soon_and_refused_tokens_take_the_same_one_refresh_path() {
    use std::sync::atomic::Ordering;
    let (url, requests) = token_endpoint(rotating).await;
    let (store, oauth) = service_with(json!({"token_url": url}));
    let events = Arc::new(Recorded::default());
    let mut oauth = oauth.with_events(events.clone());
    // New tokens live an hour, well past the window.
    oauth.refresh_window = Duration::from_secs(300);
    // Expires within the window: refreshed once, however many steps ask at once.
    let link = insert_link(&store, &oauth, Duration::from_secs(60)).await;
    let asks = (0..8).map(|_| oauth.access_token("A", &link.id));
    for got in futures_util::future::join_all(asks).await {
        assert_eq!(got.unwrap().0.expose(), "access-1");
    }
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    // A token the provider already replaced is not refreshed again...
    let stale = Secret::new("access-0".into());
    let now_used = oauth.force_refresh("A", &link.id, &stale).await.unwrap();
    assert_eq!(now_used.expose(), "access-1");
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    // ...the one in use is, although it is far from expiry.
    let refused = Secret::new("access-1".into());
    let now_used = oauth.force_refresh("A", &link.id, &refused).await.unwrap();
    assert_eq!(now_used.expose(), "access-2");
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    let causes: Vec<RefreshCause> = events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            OAuthEvent::Refreshed { cause, .. } => Some(*cause),
            _ => None,
        })
        .collect();
    assert_eq!(causes, [RefreshCause::Expiring, RefreshCause::Rejected]);
    // The rotated refresh token is the one kept.
    let stored = store.get_link("A", &link.id).await.unwrap().unwrap();
    assert_eq!(
        oauth
            .open(
                stored.refresh_token.as_ref().unwrap(),
                &stored.refresh_token_context()
            )
            .unwrap()
            .expose(),
        "refresh-2"
    );
}

#[tokio::test]
async fn a_refused_refresh_token_marks_the_link_once_and_tells_it_once() {
    use std::sync::atomic::Ordering;
    let (url, requests) = token_endpoint(|_| {
        (
            400,
            json!({"error": "invalid_grant", "error_description": "revoked"}),
        )
    })
    .await;
    let (store, oauth) = service_with(json!({"token_url": url}));
    let events = Arc::new(Recorded::default());
    let oauth = oauth.with_events(events.clone());
    let link = insert_link(&store, &oauth, Duration::from_secs(60)).await;
    // Every later use says why, and what Google means by it (apps in "Testing" get
    // refresh tokens that expire after 7 days).
    for _ in 0..3 {
        let e = oauth.access_token("A", &link.id).await.unwrap_err();
        assert_eq!(e.name(), crate::error::ErrorName::TokenRevoked);
        let said = e.to_string();
        assert!(
            said.starts_with("the google connection needs reconnecting: Google refused the refresh token (invalid_grant: revoked)"),
            "{said}"
        );
        assert!(
            said.contains("\"Testing\"") && said.contains("7 days"),
            "{said}"
        );
    }
    let rejected = Secret::new("access-0".into());
    assert!(matches!(
        oauth.force_refresh("A", &link.id, &rejected).await,
        Err(OAuthError::NeedsReconnect { service, .. }) if service == "google"
    ));
    // One refresh request, no retry storm; the link marked, with its reason; one event.
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    let stored = store.get_link("A", &link.id).await.unwrap().unwrap();
    assert_eq!(stored.status, crate::store::LinkStatus::NeedsReconnect);
    assert!(
        stored
            .status_reason
            .as_deref()
            .is_some_and(|r| r.contains("invalid_grant")),
        "{:?}",
        stored.status_reason
    );
    let told = events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, OAuthEvent::NeedsReconnect { .. }))
        .count();
    assert_eq!(told, 1);
}

#[tokio::test]
async fn expiry_queries_take_any_period_without_panicking() {
    let (store, oauth) = service();
    let link = insert_link(&store, &oauth, Duration::from_secs(3600)).await;
    // The API takes up to u32::MAX days, which is past any date.
    let all = oauth
        .expiring("A", Duration::from_secs(u64::from(u32::MAX) * 86_400))
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].id, link.id);
    assert!(
        oauth
            .expiring("A", Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A refresh the provider refuses (`invalid_grant`), at a token endpoint that first
/// lets `unlink_meanwhile` delete the link, as a user unlinking while the refresh is in
/// flight would: the `integration_needs_reconnect` entries the audit log (the sink the
/// composition root wires) gets.
async fn audits_of_a_refused_refresh(unlink_meanwhile: bool) -> Vec<crate::store::AuditRecord> {
    let slot: Arc<std::sync::OnceLock<(Arc<AnyStore>, String)>> = Default::default();
    let meanwhile = slot.clone();
    let token = axum::routing::post(move || async move {
        if unlink_meanwhile && let Some((store, id)) = meanwhile.get() {
            store.delete_link("A", id).await.unwrap();
        }
        (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant"})),
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/token", token);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (store, oauth) = service_with(json!({"token_url": format!("http://{addr}/token")}));
    let audit = crate::server::audit::AuditWriter::start(store.clone());
    let oauth = oauth.with_events(Arc::new(audit));
    let link = insert_link(&store, &oauth, Duration::from_secs(60)).await;
    assert!(slot.set((store.clone(), link.id.clone())).is_ok());
    assert!(matches!(
        oauth.access_token("A", &link.id).await,
        Err(OAuthError::NeedsReconnect { .. })
    ));
    let query = crate::store::AuditQuery {
        action_type: Some("integration_needs_reconnect".into()),
        limit: 10,
        ..Default::default()
    };
    store.list_audit("A", &query).await.unwrap()
}

#[tokio::test]
async fn a_refused_refresh_is_audited_only_when_this_host_marked_the_link() {
    let marked = audits_of_a_refused_refresh(false).await;
    assert_eq!(marked.len(), 1, "{marked:?}");
    assert_eq!(marked[0].resource_type, "integration");
    assert_eq!(marked[0].before_state["status"], "active");
    assert_eq!(marked[0].after_state["status"], "needs_reconnect");
    // Unlinked while the refresh was in flight: nothing was marked, nothing is audited.
    let unlinked = audits_of_a_refused_refresh(true).await;
    assert!(unlinked.is_empty(), "{unlinked:?}");
}

#[tokio::test]
async fn a_kept_link_serves_steps_until_a_write_here_or_its_lifetime_and_never_past_the_window() {
    use std::sync::atomic::Ordering;
    let (url, requests) = token_endpoint(rotating).await;
    let (store, oauth) = service_with(json!({"token_url": url}));
    let lifetime = Duration::from_secs(2);
    let mut oauth = oauth.with_link_cache(lifetime);
    oauth.refresh_window = Duration::from_secs(300);
    // Another process on the same data: its writes are not this store's.
    let AnyStore::Embedded(elsewhere) = &*store else {
        unreachable!("the test service is on the embedded store")
    };
    let elsewhere = elsewhere.clone();

    // A token far from expiry: read once, then served from the kept record.
    let link = insert_link(&store, &oauth, Duration::from_secs(3600)).await;
    assert_eq!(
        oauth.access_token("A", &link.id).await.unwrap().0.expose(),
        "access-0"
    );
    assert!(
        elsewhere
            .delete_link("A", &link.id)
            .await
            .unwrap()
            .is_some()
    );
    oauth.links.age(lifetime / 2);
    assert!(
        oauth.access_token("A", &link.id).await.is_ok(),
        "within the lifetime the kept record is used: that is the cache"
    );
    oauth.links.age(lifetime / 2);
    assert!(
        matches!(
            oauth.access_token("A", &link.id).await,
            Err(OAuthError::NotFound)
        ),
        "a link another process deleted serves no step once the lifetime passed"
    );

    // Deleted through this host's store: at once.
    let link = insert_link(&store, &oauth, Duration::from_secs(3600)).await;
    assert!(oauth.access_token("A", &link.id).await.is_ok());
    assert!(store.delete_link("A", &link.id).await.unwrap().is_some());
    assert!(matches!(
        oauth.access_token("A", &link.id).await,
        Err(OAuthError::NotFound)
    ));

    // A kept record whose token has come inside the refresh window is refreshed on the
    // store's record, and the refreshed token is what the next step gets.
    let link = insert_link(&store, &oauth, Duration::from_secs(3600)).await;
    assert_eq!(
        oauth.access_token("A", &link.id).await.unwrap().0.expose(),
        "access-0"
    );
    let mut nearly = store.get_link("A", &link.id).await.unwrap().unwrap();
    nearly.token_expiry = Some(now() + Duration::from_secs(60));
    // Written elsewhere, so the kept record still says an hour...
    assert!(
        elsewhere
            .update_link_cas(nearly, link.version)
            .await
            .unwrap()
    );
    oauth.links.age(lifetime);
    // ...until it ages out; then the expiry is seen and the token refreshed once.
    assert_eq!(
        oauth.access_token("A", &link.id).await.unwrap().0.expose(),
        "access-1"
    );
    assert_eq!(
        oauth.access_token("A", &link.id).await.unwrap().0.expose(),
        "access-1"
    );
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

/// A service whose token endpoint answers with `answer`, with a 300 s refresh window
/// (the sweep tests): its store, and the endpoint's request count.
async fn sweeping_service(
    answer: impl Fn(usize) -> (u16, serde_json::Value) + Send + Sync + 'static,
) -> (
    Arc<AnyStore>,
    OAuthService,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let (url, requests) = token_endpoint(answer).await;
    let (store, mut oauth) = service_with(json!({"token_url": url}));
    oauth.refresh_window = Duration::from_secs(300);
    (store, oauth, requests)
}

/// Another host on `oauth`'s store, with its vault, providers and refresh window.
fn another_host(oauth: &OAuthService) -> OAuthService {
    let mut other = OAuthService::new(
        oauth.store.clone(),
        oauth.vault.clone(),
        oauth.providers.clone(),
    );
    other.refresh_window = oauth.refresh_window;
    other
}

#[tokio::test]
async fn a_sweep_renews_every_due_link_not_only_one_batch() {
    use std::sync::atomic::Ordering;
    let (store, oauth, requests) = sweeping_service(rotating).await;
    for _ in 0..1100 {
        insert_link(&store, &oauth, Duration::from_secs(60)).await;
    }
    let report = oauth.sweep_due_links().await;
    assert_eq!(report.fresh, 1100, "{report:?}");
    assert_eq!(requests.load(Ordering::SeqCst), 1100);
    // Nothing is due any more: the next sweep asks for nothing.
    assert_eq!(oauth.sweep_due_links().await, SweepReport::default());
    assert_eq!(requests.load(Ordering::SeqCst), 1100);
}

#[tokio::test]
async fn links_a_dead_host_holds_are_passed_over_and_hide_no_others() {
    use std::sync::atomic::Ordering;
    let (store, oauth, requests) = sweeping_service(rotating).await;
    // 600 links first in expiry order whose lease a dead host holds for an hour: more
    // than a batch, all of them in front of the 300 renewable ones.
    for _ in 0..600 {
        let link = insert_link(&store, &oauth, Duration::from_secs(10)).await;
        let until = now() + Duration::from_secs(3600);
        assert!(
            store
                .try_lease_link("A", &link.id, "a-dead-host", until)
                .await
                .unwrap()
                .is_some()
        );
    }
    for _ in 0..300 {
        insert_link(&store, &oauth, Duration::from_secs(60)).await;
    }
    let report = oauth.sweep_due_links().await;
    assert_eq!((report.fresh, report.not_renewed), (300, 0), "{report:?}");
    assert_eq!(requests.load(Ordering::SeqCst), 300);
    // The next sweep claims nothing: no request, no retry storm.
    assert_eq!(oauth.sweep_due_links().await, SweepReport::default());
    assert_eq!(requests.load(Ordering::SeqCst), 300);
}

/// A provider that keeps failing: each due link is tried once (three attempts), then no
/// sweep of any host on the store claims it until its back-off has passed, and its lease
/// is let go at once so a step elsewhere never waits on it.
#[tokio::test]
async fn a_link_a_sweep_cannot_renew_backs_off_on_every_host() {
    use std::sync::atomic::Ordering;
    let (store, oauth, requests) =
        sweeping_service(|_| (503, json!({"error": "temporarily_unavailable"}))).await;
    let mut links = Vec::new();
    for _ in 0..12 {
        links.push(insert_link(&store, &oauth, Duration::from_secs(60)).await);
    }
    let report = oauth.sweep_due_links().await;
    assert_eq!((report.fresh, report.not_renewed), (0, 12), "{report:?}");
    assert_eq!(requests.load(Ordering::SeqCst), 36, "three attempts each");
    for l in &links {
        let stored = store.get_link("A", &l.id).await.unwrap().unwrap();
        assert!(stored.refresh_lease_owner.is_none(), "lease let go");
        let after = stored.refresh_retry_after.expect("backing off");
        assert!(after > now() + Duration::from_secs(200), "{after}");
    }
    // Another host on the same store claims none of them.
    let other = another_host(&oauth);
    assert_eq!(other.sweep_due_links().await, SweepReport::default());
    assert_eq!(requests.load(Ordering::SeqCst), 36);
    // Once the back-off has passed (moved into the past here), the link is claimed again.
    let mut first = store.get_link("A", &links[0].id).await.unwrap().unwrap();
    let version = first.version;
    first.refresh_retry_after = Some(now() - Duration::from_secs(1));
    assert!(store.update_link_cas(first, version).await.unwrap());
    let again = other.sweep_due_links().await;
    assert_eq!((again.fresh, again.not_renewed), (0, 1), "{again:?}");
    assert_eq!(requests.load(Ordering::SeqCst), 39);
}

/// A claim's lease runs out while the link waits its turn (a long batch, a slow store):
/// the claimer takes the lease again before refreshing, and once another host has
/// claimed the link the first leaves it to that host. A refresh token is never spent
/// twice.
#[tokio::test]
async fn a_claim_whose_lease_ran_out_is_leased_again_or_handed_over() {
    use std::sync::atomic::Ordering;
    let (store, a, requests) = sweeping_service(rotating).await;
    let b = another_host(&a);
    let services = vec!["google".to_string()];
    let before = now() + Duration::from_secs(300);
    let claim = |owner: String| {
        let (store, services) = (store.clone(), services.clone());
        async move {
            store
                .claim_links_due_for_refresh(
                    before,
                    &services,
                    &owner,
                    now() + Duration::from_millis(200),
                    10,
                )
                .await
                .unwrap()
        }
    };
    // Run down but nobody else's: leased again, then renewed once.
    let link = insert_link(&store, &a, Duration::from_secs(60)).await;
    let claimed = claim(a.owner.clone()).await;
    assert_eq!(claimed.len(), 1);
    assert!(matches!(
        a.renew_claimed(claimed[0].clone()).await,
        Claimed::Fresh
    ));
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    let renewed = store.get_link("A", &link.id).await.unwrap().unwrap();
    assert!(renewed.refresh_lease_owner.is_none());
    // Run out and claimed by another host meanwhile: handed over, no request...
    let link = insert_link(&store, &a, Duration::from_secs(60)).await;
    let claimed = claim(a.owner.clone()).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let theirs = claim(b.owner.clone()).await;
    assert_eq!(theirs.len(), 1, "the lapsed claim is claimable");
    assert!(matches!(
        a.renew_claimed(claimed[0].clone()).await,
        Claimed::HandedOver
    ));
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    // ...and the other host renews it once, its lease untouched by the first.
    let stored = store.get_link("A", &link.id).await.unwrap().unwrap();
    assert!(stored.refresh_retry_after.is_none());
    assert!(matches!(
        b.renew_claimed(theirs[0].clone()).await,
        Claimed::Fresh
    ));
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    // A claim that another host has since renewed is found fresh, not refreshed again.
    let claimed_again = store.get_link("A", &link.id).await.unwrap().unwrap();
    assert!(matches!(
        a.renew_claimed(claimed_again).await,
        Claimed::Fresh
    ));
    assert_eq!(requests.load(Ordering::SeqCst), 2);
}

/// Two hosts on one store sweeping at once: every due link renewed once, by one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_sweeping_at_once_renew_each_link_once() {
    use std::sync::atomic::Ordering;
    let (url, requests) = token_endpoint(rotating).await;
    let dir = tempfile::tempdir().unwrap();
    let key = crate::vault::MasterKey::generate();
    let mut config = BTreeMap::new();
    config.insert(
        "google".to_string(),
        serde_json::from_value(json!({
            "client_id": "c", "client_secret": "s",
            "redirect_uri": "http://127.0.0.1:1/auth/callback", "scopes": ["drive"],
            "authorize_url": "http://127.0.0.1:9/authorize", "token_url": url,
        }))
        .unwrap(),
    );
    let providers = providers::configure(&crate::catalogue::Catalogue::builtin(), &config).unwrap();
    let mut hosts = Vec::new();
    for _ in 0..2 {
        let store = Arc::new(AnyStore::from(
            crate::store::embedded::EmbeddedStore::open(dir.path())
                .await
                .unwrap(),
        ));
        let vault = Arc::new(Vault::new(key.clone()));
        let mut oauth = OAuthService::new(store.clone(), vault, providers.clone());
        oauth.refresh_window = Duration::from_secs(300);
        hosts.push((store, oauth));
    }
    for _ in 0..1000 {
        insert_link(&hosts[0].0, &hosts[0].1, Duration::from_secs(60)).await;
    }
    let (a, b) = tokio::join!(hosts[0].1.sweep_due_links(), hosts[1].1.sweep_due_links());
    assert_eq!(
        requests.load(Ordering::SeqCst),
        1000,
        "each link's refresh token spent once: {a:?} {b:?}"
    );
    // Claimed, not raced for: every link renewed by the host that claimed it.
    assert_eq!(
        (a.fresh + b.fresh, a.not_renewed + b.not_renewed),
        (1000, 0)
    );
    let left = hosts[0]
        .0
        .links_due_for_refresh(now() + Duration::from_secs(300), &["google".into()], 10)
        .await
        .unwrap();
    assert!(left.is_empty(), "{} links still due", left.len());
}
