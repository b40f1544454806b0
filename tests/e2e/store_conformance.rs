//! One store conformance suite, run against the embedded store (SQLite) and MongoDB
//! (a real SecantusDB server speaking the wire protocol): every case is written once,
//! generic over `Store`, and instantiated for both backends by `conformance!`.

use flow8_host::store::embedded::EmbeddedStore;
use flow8_host::store::mongodb::MongoStore;
use flow8_host::store::{
    AuditQuery, AuditRecord, ComponentRecord, EventQuery, EventRecord, LinkRecord, ModuleRecord,
    OAuthStateRecord, Store, StoreError, SubscriptionRecord, SubscriptionStatus, TokenRecord,
    WebhookRoute, new_object_id, now,
};
use flow8_host::vault::{MasterKey, Vault};
use flow8_tests::mongo_server::MongoServer;
use serde_json::json;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// One SecantusDB shared by the MongoDB cases that run at the same time.
fn shared_mongo() -> Arc<MongoServer> {
    flow8_tests::mongo_server::shared()
}

/// A MongoDB store in a database of its own, and the server it lives on.
pub async fn fresh_mongo() -> (MongoStore, Arc<MongoServer>) {
    let server = shared_mongo();
    let db = format!("conformance_{}", new_object_id());
    let store = MongoStore::connect(&server.uri(&db))
        .await
        .expect("connect to SecantusDB");
    (store, server)
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = super::EmbeddedStore::open(dir.path()).await.unwrap();
                    super::$case(&store).await;
                }
            )*
        }
        mod mongo {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, _server) = super::fresh_mongo().await;
                    super::$case(&store).await;
                }
            )*
        }
    };
}

conformance!(
    components_are_scoped_by_company,
    component_names_and_ids_are_unique,
    one_default_per_kind,
    links_are_scoped_listed_and_found_by_expiry,
    links_the_refresher_skips_never_hide_one_it_must_renew,
    sweeps_claim_due_links_in_disjoint_batches,
    link_writes_are_compare_and_set,
    the_refresh_lease_has_one_holder_until_it_expires,
    oauth_states_are_single_use_and_expire,
    api_tokens_are_unique_and_revoked_once,
    audit_pages_and_filters,
    scans_walk_every_company,
    component_config_replacement_is_compare_and_set,
    meta_round_trips,
    a_secret_moved_to_another_companys_record_does_not_open_there,
    installed_modules_are_scoped_listed_and_removed,
    module_signatures_sources_and_approvals_round_trip,
    versions_sharing_bytes_keep_them_until_the_last_goes,
    a_removal_racing_an_install_of_the_same_bytes_keeps_them,
    a_module_larger_than_a_document_round_trips,
    events_are_stored_once_per_provider_id_and_paged,
    webhooks_find_their_links_across_companies,
    deliveries_are_leased_once_and_in_order_per_link,
    parked_deliveries_are_redelivered_on_request,
    event_endpoints_are_per_company_and_compare_and_set,
    subscriptions_are_scoped_due_leased_and_compare_and_set,
    a_lifecycle_event_two_hosts_store_at_once_is_kept_and_queued_once,
);

fn component(company: &str, name: &str, kind: &str) -> ComponentRecord {
    let vault = Vault::new(MasterKey::generate());
    let mut config = serde_json::Map::new();
    config.insert("provider".into(), json!("http"));
    let id = new_object_id();
    let sealed = vault.encrypt(
        "s3cr3t",
        &flow8_host::store::sealing::component(company, &id, "auth_value"),
    );
    config.insert("auth_value".into(), sealed.to_json());
    ComponentRecord {
        id,
        company_id: company.into(),
        name: name.into(),
        kind: kind.into(),
        config,
        is_default: false,
        created_at: now(),
        updated_at: now(),
    }
}

/// The key the cases' links are sealed with (so a case can open them).
static TEST_VAULT: std::sync::LazyLock<Vault> =
    std::sync::LazyLock::new(|| Vault::new(MasterKey::generate()));

fn link(company: &str, service: &str, expiry: Option<OffsetDateTime>) -> LinkRecord {
    let vault = &*TEST_VAULT;
    let t = now();
    let id = new_object_id();
    let seal = |plain: &str, field| {
        vault.encrypt(
            plain,
            &flow8_host::store::sealing::link(company, &id, field),
        )
    };
    LinkRecord {
        access_token: seal("xoxb-access", flow8_host::store::sealing::ACCESS_TOKEN),
        refresh_token: Some(seal(
            "xoxe-refresh",
            flow8_host::store::sealing::REFRESH_TOKEN,
        )),
        id: id.clone(),
        user_id: new_object_id(),
        company_id: company.into(),
        integration_type: service.into(),
        token_expiry: expiry,
        scopes: vec!["chat:write".into(), "files:write".into()],
        provider_user_id: "U123".into(),
        provider_user_email: "user@company.com".into(),
        provider_metadata: json!({"team": {"id": "T1"}}),
        status: flow8_host::store::LinkStatus::Active,
        status_reason: None,
        shared_with: Vec::new(),
        webhook_signature_secret: None,
        refresh_lease_owner: None,
        refresh_lease_until: None,
        refresh_retry_after: None,
        version: 0,
        created_at: t,
        updated_at: t,
    }
}

fn audit(company: &str, action: &str, resource: &str, at: OffsetDateTime) -> AuditRecord {
    AuditRecord {
        id: new_object_id(),
        company_id: company.into(),
        user_id: Some("u1".into()),
        action_type: action.into(),
        resource_type: "integration".into(),
        resource_id: resource.into(),
        before_state: json!({}),
        after_state: json!({"integration_type": "slack"}),
        timestamp: at,
    }
}

async fn components_are_scoped_by_company<S: Store>(s: &S) {
    // An ObjectId-shaped company id and a plain one.
    let (a_co, b_co) = (new_object_id(), "company-b".to_string());
    let a = component(&a_co, "api", "http");
    s.insert_component(a.clone()).await.unwrap();
    assert_eq!(
        s.get_component(&a_co, &a.id).await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(
        s.find_component_by_name(&a_co, "api").await.unwrap(),
        Some(a.clone())
    );
    // Another company finds, changes and deletes nothing.
    assert_eq!(s.get_component(&b_co, &a.id).await.unwrap(), None);
    assert_eq!(s.find_component_by_name(&b_co, "api").await.unwrap(), None);
    assert!(!s.delete_component(&b_co, &a.id).await.unwrap());
    assert!(!s.set_default_component(&b_co, &a.id).await.unwrap());
    assert_eq!(s.list_components(&b_co).await.unwrap(), vec![]);
    assert_eq!(
        s.get_component(&a_co, &a.id).await.unwrap(),
        Some(a.clone())
    );
    // Lists are by name.
    for n in ["zeta", "alpha"] {
        s.insert_component(component(&a_co, n, "http"))
            .await
            .unwrap();
    }
    let names: Vec<String> = s
        .list_components(&a_co)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["alpha", "api", "zeta"]);
    assert!(s.delete_component(&a_co, &a.id).await.unwrap());
    assert!(!s.delete_component(&a_co, &a.id).await.unwrap());
    assert_eq!(s.get_component(&a_co, &a.id).await.unwrap(), None);
}

async fn component_names_and_ids_are_unique<S: Store>(s: &S) {
    let a = component("A", "api", "http");
    s.insert_component(a.clone()).await.unwrap();
    assert!(matches!(
        s.insert_component(component("A", "api", "ai")).await,
        Err(StoreError::Conflict(m)) if m.contains("`api`")
    ));
    let mut same_id = component("A", "other", "http");
    same_id.id = a.id.clone();
    assert!(matches!(
        s.insert_component(same_id).await,
        Err(StoreError::Conflict(_))
    ));
    // The same name in another company is fine; nothing else changed.
    s.insert_component(component("B", "api", "http"))
        .await
        .unwrap();
    assert_eq!(s.list_components("A").await.unwrap(), vec![a]);
}

async fn one_default_per_kind<S: Store>(s: &S) {
    let a = component("A", "one", "http");
    let b = component("A", "two", "http");
    let c = component("A", "three", "ai");
    for r in [&a, &b, &c] {
        s.insert_component(r.clone()).await.unwrap();
    }
    assert_eq!(s.default_component("A", "http").await.unwrap(), None);
    assert!(s.set_default_component("A", &a.id).await.unwrap());
    assert!(s.set_default_component("A", &c.id).await.unwrap());
    assert!(s.set_default_component("A", &b.id).await.unwrap());
    assert_eq!(
        s.default_component("A", "http").await.unwrap().unwrap().id,
        b.id
    );
    assert_eq!(
        s.default_component("A", "ai").await.unwrap().unwrap().id,
        c.id
    );
    let http_defaults = s
        .list_components("A")
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == "http" && r.is_default)
        .count();
    assert_eq!(http_defaults, 1);
    // Inserting a new default replaces the old one.
    let mut d = component("A", "four", "http");
    d.is_default = true;
    s.insert_component(d.clone()).await.unwrap();
    assert_eq!(
        s.default_component("A", "http").await.unwrap().unwrap().id,
        d.id
    );
    assert!(
        !s.get_component("A", &b.id)
            .await
            .unwrap()
            .unwrap()
            .is_default
    );
    assert_eq!(s.default_component("B", "http").await.unwrap(), None);
    // Deleting the default leaves none.
    assert!(s.delete_component("A", &d.id).await.unwrap());
    assert_eq!(s.default_component("A", "http").await.unwrap(), None);
}

async fn links_are_scoped_listed_and_found_by_expiry<S: Store>(s: &S) {
    let soon = now() + Duration::minutes(5);
    let later = now() + Duration::days(3);
    let never = link("A", "clio", None);
    let l1 = link("A", "slack", Some(later));
    let l2 = link("A", "microsoft", Some(soon));
    let other = link("B", "slack", Some(now() + Duration::minutes(1)));
    for l in [&never, &l1, &l2, &other] {
        s.insert_link(l.clone()).await.unwrap();
    }
    assert!(matches!(
        s.insert_link(l1.clone()).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.get_link("A", &l1.id).await.unwrap(), Some(l1.clone()));
    assert_eq!(s.get_link("B", &l1.id).await.unwrap(), None);
    // Newest first; a service filter.
    let ids: Vec<String> = s
        .list_links("A", None)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(ids, [l2.id.clone(), l1.id.clone(), never.id.clone()]);
    let slack = s.list_links("A", Some("slack")).await.unwrap();
    assert_eq!(slack, vec![l1.clone()]);
    // Due for refresh soonest first across companies; long-lived links never.
    let auto = auto_refresh();
    let expiring: Vec<String> = s
        .links_due_for_refresh(now() + Duration::days(7), &auto, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(expiring, [other.id.clone(), l2.id.clone(), l1.id.clone()]);
    let one = s
        .links_due_for_refresh(now() + Duration::days(7), &auto, 1)
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    // A link needing reconnection is not refreshed in the background.
    let mut revoked = s.get_link("A", &l2.id).await.unwrap().unwrap();
    revoked.status = flow8_host::store::LinkStatus::NeedsReconnect;
    assert!(s.update_link_cas(revoked, l2.version).await.unwrap());
    assert!(
        !s.links_due_for_refresh(now() + Duration::hours(1), &auto, 10)
            .await
            .unwrap()
            .iter()
            .any(|l| l.id == l2.id)
    );
    // Delete returns what was deleted, once, and only for its company.
    assert_eq!(s.delete_link("B", &l1.id).await.unwrap(), None);
    assert_eq!(s.delete_link("A", &l1.id).await.unwrap().unwrap().id, l1.id);
    assert_eq!(s.delete_link("A", &l1.id).await.unwrap(), None);
}

/// The services whose providers refresh automatically, as the refresher asks for them
/// (`clio` and `bexio` are manual-refresh providers).
fn auto_refresh() -> Vec<String> {
    vec!["microsoft".into(), "slack".into()]
}

async fn links_the_refresher_skips_never_hide_one_it_must_renew<S: Store>(s: &S) {
    const LIMIT: u32 = 3;
    let t = now();
    // More links than the limit of each kind the refresher skips, all expired long
    // before the one it must renew: needing reconnection, of a manual-refresh
    // provider, without a refresh token.
    for i in 0..=i64::from(LIMIT) {
        let expiry = Some(t - Duration::hours(10) + Duration::minutes(i));
        let mut dead = link("A", "slack", expiry);
        dead.status = flow8_host::store::LinkStatus::NeedsReconnect;
        let manual = link("A", "clio", expiry);
        let mut no_refresh = link("B", "microsoft", expiry);
        no_refresh.refresh_token = None;
        for l in [dead, manual, no_refresh] {
            s.insert_link(l).await.unwrap();
        }
    }
    let due = link("C", "microsoft", Some(t + Duration::minutes(5)));
    let not_yet = link("C", "slack", Some(t + Duration::days(2)));
    s.insert_link(due.clone()).await.unwrap();
    s.insert_link(not_yet).await.unwrap();
    let found: Vec<String> = s
        .links_due_for_refresh(t + Duration::hours(1), &auto_refresh(), LIMIT)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(found, [due.id]);
    // No provider refreshing automatically: nothing to renew.
    assert!(
        s.links_due_for_refresh(t + Duration::hours(1), &[], LIMIT)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn sweeps_claim_due_links_in_disjoint_batches<S: Store + Clone>(s: &S) {
    let t = now();
    let auto = auto_refresh();
    let before = t + Duration::hours(1);
    let until = || now() + Duration::seconds(30);
    // 40 due links across companies; a dead host's lease, a back-off and an expired
    // lease in front of them; and links no sweep renews.
    let mut due = Vec::new();
    for i in 0..40 {
        let l = link(
            ["A", "B"][i % 2],
            "microsoft",
            Some(t + Duration::minutes(10) + Duration::seconds(i as i64)),
        );
        s.insert_link(l.clone()).await.unwrap();
        due.push(l.id);
    }
    let mut held = link("A", "slack", Some(t + Duration::minutes(1)));
    held.refresh_lease_owner = Some("a-dead-host".into());
    held.refresh_lease_until = Some(t + Duration::hours(1));
    let mut backing_off = link("A", "slack", Some(t + Duration::minutes(2)));
    backing_off.refresh_retry_after = Some(t + Duration::minutes(5));
    let mut lapsed = link("B", "slack", Some(t + Duration::minutes(3)));
    lapsed.refresh_lease_owner = Some("a-dead-host".into());
    lapsed.refresh_lease_until = Some(t - Duration::seconds(1));
    lapsed.refresh_retry_after = Some(t - Duration::seconds(1));
    let mut reconnect = link("A", "slack", Some(t + Duration::minutes(4)));
    reconnect.status = flow8_host::store::LinkStatus::NeedsReconnect;
    for l in [&held, &backing_off, &lapsed, &reconnect] {
        s.insert_link(l.clone()).await.unwrap();
    }
    s.insert_link(link("A", "clio", Some(t + Duration::minutes(5))))
        .await
        .unwrap();
    s.insert_link(link("A", "slack", Some(t + Duration::days(2))))
        .await
        .unwrap();
    // The back-off and a stored lease round-trip.
    let stored = s.get_link("A", &backing_off.id).await.unwrap().unwrap();
    assert_eq!(stored.refresh_retry_after, backing_off.refresh_retry_after);

    // A first claim: soonest first, the lapsed lease taken over, the live lease and the
    // back-off passed over; each claimed link leased to the claimer (version bumped).
    let first = s
        .claim_links_due_for_refresh(before, &auto, "host-1", until(), 5)
        .await
        .unwrap();
    let ids: Vec<&str> = first.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(
        ids,
        [lapsed.id.as_str(), &due[0], &due[1], &due[2], &due[3]]
    );
    for l in &first {
        assert_eq!(l.refresh_lease_owner.as_deref(), Some("host-1"));
        let stored = s.get_link(&l.company_id, &l.id).await.unwrap().unwrap();
        assert_eq!(stored.version, 1, "{stored:?}");
        assert_eq!(stored.refresh_lease_owner.as_deref(), Some("host-1"));
        assert_eq!(stored.refresh_lease_until, l.refresh_lease_until);
    }
    // Two hosts claiming at once get disjoint batches that together cover the rest.
    let claim_all = |owner: &'static str| {
        let s = s.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = s
                    .claim_links_due_for_refresh(before, &auto_refresh(), owner, until(), 4)
                    .await
                    .unwrap();
                if batch.is_empty() {
                    break got;
                }
                got.extend(batch.into_iter().map(|l| l.id));
            }
        })
    };
    let (a, b) = (claim_all("host-a"), claim_all("host-b"));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let mut all: Vec<String> = a.iter().chain(&b).cloned().collect();
    all.sort();
    let mut want: Vec<String> = due[4..].to_vec();
    want.sort();
    assert_eq!(all, want, "host-a {a:?}, host-b {b:?}");
    // Not even the claimer takes its own unexpired lease again, and nothing is left.
    assert!(
        s.claim_links_due_for_refresh(before, &auto, "host-1", until(), 100)
            .await
            .unwrap()
            .is_empty()
    );
    // No provider refreshing automatically: nothing to claim.
    assert!(
        s.claim_links_due_for_refresh(before, &[], "host-1", until(), 100)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn link_writes_are_compare_and_set<S: Store>(s: &S) {
    let l = link("A", "google", Some(now() + Duration::hours(1)));
    s.insert_link(l.clone()).await.unwrap();
    let mut next = l.clone();
    next.token_expiry = Some(now() + Duration::hours(2));
    // Who the owner shared it with is kept too (the ownership rules read it).
    next.shared_with = vec!["bob".into(), "*".into()];
    assert!(s.update_link_cas(next.clone(), 0).await.unwrap());
    // A writer that read version 0 lost: nothing changes.
    let mut stale = l.clone();
    stale.provider_user_email = "stale@example.com".into();
    assert!(!s.update_link_cas(stale, 0).await.unwrap());
    let now_stored = s.get_link("A", &l.id).await.unwrap().unwrap();
    assert_eq!(now_stored.version, 1);
    assert_eq!(now_stored.token_expiry, next.token_expiry);
    assert_eq!(now_stored.shared_with, next.shared_with);
    assert_eq!(now_stored.provider_user_email, "user@company.com");
    // Another company's id matches nothing.
    let mut foreign = now_stored.clone();
    foreign.company_id = "B".into();
    assert!(!s.update_link_cas(foreign, 1).await.unwrap());
}

async fn the_refresh_lease_has_one_holder_until_it_expires<S: Store + Clone>(s: &S) {
    let l = link("A", "slack", Some(now() + Duration::minutes(1)));
    s.insert_link(l.clone()).await.unwrap();
    // Twenty hosts race for it: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = s.clone();
        let id = l.id.clone();
        tasks.push(tokio::spawn(async move {
            s.try_lease_link("A", &id, &format!("host-{i}"), now() + Duration::seconds(2))
                .await
                .unwrap()
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        if let Some(l) = t.await.unwrap() {
            winners.push(l);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let holder = winners[0].refresh_lease_owner.clone().unwrap();
    // The winner saw the link as it is after taking it (version bumped).
    assert_eq!(winners[0].version, l.version + 1);
    assert_eq!(
        s.get_link("A", &l.id).await.unwrap().unwrap().version,
        winners[0].version
    );
    // The holder may take it again; others may not; another company sees nothing.
    assert!(
        s.try_lease_link("A", &l.id, &holder, now() + Duration::seconds(2))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        s.try_lease_link("A", &l.id, "late-host", now() + Duration::seconds(2))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.try_lease_link("B", &l.id, "late-host", now() + Duration::seconds(60))
            .await
            .unwrap()
            .is_none()
    );
    // A holder that died does not block the link beyond the lease: wait out exactly the
    // lease the store holds (a clock, not a readiness signal, is what expires it).
    let until = s
        .get_link("A", &l.id)
        .await
        .unwrap()
        .unwrap()
        .refresh_lease_until
        .expect("a lease is held");
    let left = (until - now()).max(Duration::ZERO) + Duration::milliseconds(50);
    tokio::time::sleep(left.try_into().unwrap()).await;
    let taken = s
        .try_lease_link("A", &l.id, "late-host", now() + Duration::seconds(30))
        .await
        .unwrap()
        .expect("the expired lease can be taken");
    assert_eq!(taken.refresh_lease_owner.as_deref(), Some("late-host"));
    assert!(
        s.try_lease_link("A", "000000000000000000000000", "x", now())
            .await
            .unwrap()
            .is_none()
    );
    // A link marked for reconnection (by a host whose refresh was refused) is leased by
    // nobody, not even a host that read it active a moment before: it would refresh
    // the refused token again and tell flow8 a second time.
    let mut marked = s.get_link("A", &l.id).await.unwrap().unwrap();
    marked.status = flow8_host::store::LinkStatus::NeedsReconnect;
    marked.refresh_lease_owner = None;
    marked.refresh_lease_until = None;
    assert!(
        s.update_link_cas(marked.clone(), marked.version)
            .await
            .unwrap()
    );
    for owner in ["late-host", "other-host"] {
        assert!(
            s.try_lease_link("A", &l.id, owner, now() + Duration::seconds(30))
                .await
                .unwrap()
                .is_none(),
            "{owner} leased a link that needs reconnection"
        );
    }
}

async fn oauth_states_are_single_use_and_expire<S: Store + Clone>(s: &S) {
    let vault = Vault::new(MasterKey::generate());
    let state = |hash: &str, expires: OffsetDateTime| OAuthStateRecord {
        state_hash: hash.into(),
        company_id: "A".into(),
        user_id: "u1".into(),
        service: "slack".into(),
        pkce_verifier: Some(vault.encrypt(
            "verifier",
            &flow8_host::store::sealing::oauth_state("A", hash),
        )),
        expires_at: expires,
    };
    let live = state("h-live", now() + Duration::minutes(10));
    s.insert_oauth_state(live.clone()).await.unwrap();
    assert!(matches!(
        s.insert_oauth_state(live.clone()).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.take_oauth_state("h-live").await.unwrap(), Some(live));
    assert_eq!(s.take_oauth_state("h-live").await.unwrap(), None);
    s.insert_oauth_state(state("h-old", now() - Duration::seconds(1)))
        .await
        .unwrap();
    assert_eq!(s.take_oauth_state("h-old").await.unwrap(), None);
    assert_eq!(s.take_oauth_state("never-issued").await.unwrap(), None);
    // Two callbacks racing with one state: one gets it.
    s.insert_oauth_state(state("h-race", now() + Duration::minutes(10)))
        .await
        .unwrap();
    let (a, b) = (s.clone(), s.clone());
    let (x, y) = tokio::join!(
        tokio::spawn(async move { a.take_oauth_state("h-race").await.unwrap() }),
        tokio::spawn(async move { b.take_oauth_state("h-race").await.unwrap() }),
    );
    assert_eq!(
        [x.unwrap(), y.unwrap()]
            .iter()
            .filter(|r| r.is_some())
            .count(),
        1
    );
}

async fn api_tokens_are_unique_and_revoked_once<S: Store>(s: &S) {
    let made = now();
    let token = |hash: &str, age_ms: i64| TokenRecord {
        id: new_object_id(),
        company_id: "A".into(),
        user_id: "u1".into(),
        admin: false,
        name: "ci".into(),
        token_hash: hash.into(),
        created_at: made - Duration::milliseconds(age_ms),
        revoked_at: None,
    };
    let first = token("hash-1", 10);
    s.insert_token(first.clone()).await.unwrap();
    let second = token("hash-2", 0);
    s.insert_token(second.clone()).await.unwrap();
    assert!(matches!(
        s.insert_token(token("hash-1", 0)).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.find_token_by_hash("hash-1").await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(s.find_token_by_hash("nope").await.unwrap(), None);
    let ids: Vec<String> = s
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, [second.id.clone(), first.id.clone()]);
    assert!(s.revoke_token(&first.id).await.unwrap());
    assert!(!s.revoke_token(&first.id).await.unwrap());
    assert!(!s.revoke_token("000000000000000000000000").await.unwrap());
    let revoked = s.find_token_by_hash("hash-1").await.unwrap().unwrap();
    assert!(revoked.revoked_at.is_some());
}

async fn audit_pages_and_filters<S: Store>(s: &S) {
    let base = now() - Duration::minutes(30);
    let mut entries = Vec::new();
    for i in 0..25 {
        let action = if i % 5 == 0 {
            "integration_unlinked"
        } else {
            "credential_used"
        };
        entries.push(audit(
            "A",
            action,
            &format!("r{}", i % 3),
            base + Duration::minutes(i),
        ));
    }
    s.insert_audit_batch(entries[..20].to_vec()).await.unwrap();
    for e in &entries[20..] {
        s.insert_audit(e.clone()).await.unwrap();
    }
    s.insert_audit(audit("B", "credential_used", "r0", base))
        .await
        .unwrap();
    // Retrying a batch that arrived does not duplicate it.
    let _ = s.insert_audit_batch(entries[..2].to_vec()).await;
    let page = |offset: u64, limit: u64| AuditQuery {
        offset,
        limit,
        ..AuditQuery::default()
    };
    let mut seen = Vec::new();
    for p in 0..3 {
        let got = s.list_audit("A", &page(p * 10, 10)).await.unwrap();
        assert_eq!(got.len(), if p < 2 { 10 } else { 5 });
        seen.extend(got);
    }
    // Newest first, every entry once, none of company B's.
    let expected: Vec<String> = entries.iter().rev().map(|e| e.id.clone()).collect();
    let got: Vec<String> = seen.iter().map(|e| e.id.clone()).collect();
    assert_eq!(got, expected);
    assert_eq!(seen[0], entries[24]);
    let unlinked = s
        .list_audit(
            "A",
            &AuditQuery {
                action_type: Some("integration_unlinked".into()),
                limit: 100,
                ..AuditQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(unlinked.len(), 5);
    let r1 = s
        .list_audit(
            "A",
            &AuditQuery {
                resource_id: Some("r1".into()),
                resource_type: Some("integration".into()),
                limit: 100,
                ..AuditQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r1.len(), 8);
    let window = s
        .list_audit(
            "A",
            &AuditQuery {
                since: Some(base + Duration::minutes(10)),
                until: Some(base + Duration::minutes(15)),
                limit: 100,
                ..AuditQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(window.len(), 5);
    assert_eq!(
        s.list_audit("B", &page(0, 100)).await.unwrap().len(),
        1,
        "company B sees only its own entry"
    );
}

async fn scans_walk_every_company<S: Store>(s: &S) {
    let mut components = Vec::new();
    let mut links = Vec::new();
    for i in 0..7 {
        let co = if i % 2 == 0 { "A" } else { "B" };
        let c = component(co, &format!("c{i}"), "http");
        s.insert_component(c.clone()).await.unwrap();
        components.push(c.id);
        let l = link(co, "slack", None);
        s.insert_link(l.clone()).await.unwrap();
        links.push(l.id);
        s.insert_audit(audit(co, "credential_used", "r", now()))
            .await
            .unwrap();
    }
    let mut walked = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let batch = s.scan_components(after.as_deref(), 3).await.unwrap();
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 3);
        after = batch.last().map(|c| c.id.clone());
        walked.extend(batch.into_iter().map(|c| c.id));
    }
    components.sort();
    assert_eq!(walked, components);
    let mut walked = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let batch = s.scan_links(after.as_deref(), 2).await.unwrap();
        if batch.is_empty() {
            break;
        }
        after = batch.last().map(|l| l.id.clone());
        walked.extend(batch.into_iter().map(|l| l.id));
    }
    links.sort();
    assert_eq!(walked, links);
    assert_eq!(s.scan_audit(None, 100).await.unwrap().len(), 7);
}

async fn component_config_replacement_is_compare_and_set<S: Store>(s: &S) {
    let c = component("A", "api", "http");
    s.insert_component(c.clone()).await.unwrap();
    let mut resealed = c.config.clone();
    resealed.insert(
        "auth_value".into(),
        json!({"encrypted": true, "nonce": "n", "ciphertext": "c", "key_id": "k2"}),
    );
    // Wrong company, wrong expectation: nothing changes.
    assert!(
        !s.replace_component_config("B", &c.id, &c.config, resealed.clone())
            .await
            .unwrap()
    );
    assert!(
        !s.replace_component_config("A", &c.id, &resealed, c.config.clone())
            .await
            .unwrap()
    );
    assert!(
        s.replace_component_config("A", &c.id, &c.config, resealed.clone())
            .await
            .unwrap()
    );
    // The second writer that read the old config loses.
    assert!(
        !s.replace_component_config("A", &c.id, &c.config, c.config.clone())
            .await
            .unwrap()
    );
    let stored = s.get_component("A", &c.id).await.unwrap().unwrap();
    assert_eq!(stored.config, resealed);
    assert_eq!((stored.name, stored.kind), (c.name, c.kind));
}

async fn meta_round_trips<S: Store>(s: &S) {
    assert_eq!(s.get_meta("missing").await.unwrap(), None);
    s.put_meta("k", "v1").await.unwrap();
    s.put_meta("k", "v2").await.unwrap();
    assert_eq!(s.get_meta("k").await.unwrap().as_deref(), Some("v2"));
}

fn module(company: &str, name: &str, version: &str, bytes: &[u8]) -> ModuleRecord {
    ModuleRecord {
        company_id: company.into(),
        name: name.into(),
        version: version.into(),
        digest: flow8_host::runtime::module::digest(bytes),
        size: bytes.len() as u64,
        installed_at: now(),
        installed_by: Some("alice".into()),
        signature: None,
        source: None,
        approval: None,
    }
}

async fn module_signatures_sources_and_approvals_round_trip<S: Store>(s: &S) {
    let a = new_object_id();
    let mut record = module(&a, "signed", "1.0.0", b"signed bytes");
    record.signature = Some("{\"algorithm\":\"ed25519\"}".into());
    record.source = Some("oci://registry.example.com/acme/signed@sha256:00".into());
    s.put_module(record.clone(), b"signed bytes".to_vec())
        .await
        .unwrap();
    assert_eq!(s.list_modules(&a).await.unwrap(), vec![record.clone()]);
    let approval = flow8_host::store::ModuleApproval {
        capabilities: serde_json::json!({"hosts": ["https://api.example.com"]}),
        approved_by: "alice".into(),
        approved_at: "2026-12-02T07:00:00Z".into(),
        approved_version: "1.0.0".into(),
    };
    // Only the company's own module, by name and version.
    assert!(
        !s.set_module_approval("company-b", "signed", "1.0.0", approval.clone())
            .await
            .unwrap()
    );
    assert!(
        !s.set_module_approval(&a, "signed", "2.0.0", approval.clone())
            .await
            .unwrap()
    );
    assert!(
        s.set_module_approval(&a, "signed", "1.0.0", approval.clone())
            .await
            .unwrap()
    );
    record.approval = Some(approval);
    assert_eq!(s.list_modules(&a).await.unwrap(), vec![record.clone()]);
    // The bytes are untouched by the approval.
    assert_eq!(
        s.get_module_bytes(&a, &record.digest).await.unwrap(),
        Some(b"signed bytes".to_vec())
    );
}

async fn installed_modules_are_scoped_listed_and_removed<S: Store>(s: &S) {
    let (a, b) = (new_object_id(), "company-b".to_string());
    let (one, two) = (b"first bytes".to_vec(), b"second bytes".to_vec());
    let a1 = module(&a, "thing", "1.0.0", &one);
    let a2 = module(&a, "thing", "1.1.0", &two);
    let b1 = module(&b, "thing", "1.0.0", &two);
    s.put_module(a2.clone(), two.clone()).await.unwrap();
    s.put_module(a1.clone(), one.clone()).await.unwrap();
    s.put_module(b1.clone(), two.clone()).await.unwrap();
    // By name and version, metadata as written; each company sees only its own.
    assert_eq!(
        s.list_modules(&a).await.unwrap(),
        vec![a1.clone(), a2.clone()]
    );
    assert_eq!(s.list_modules(&b).await.unwrap(), vec![b1.clone()]);
    assert_eq!(s.list_modules("company-c").await.unwrap(), vec![]);
    // One name's versions: exactly that name (not a prefix of it), the company's own.
    let other = module(&a, "thing-extra", "1.0.0", &one);
    s.put_module(other.clone(), one.clone()).await.unwrap();
    assert_eq!(
        s.list_module_versions(&a, "thing").await.unwrap(),
        vec![a1.clone(), a2.clone()]
    );
    assert_eq!(
        s.list_module_versions(&a, "thing-extra").await.unwrap(),
        vec![other.clone()]
    );
    assert_eq!(
        s.list_module_versions(&b, "thing").await.unwrap(),
        vec![b1.clone()]
    );
    assert_eq!(s.list_module_versions(&a, "thin").await.unwrap(), vec![]);
    assert_eq!(
        s.list_module_versions("company-c", "thing").await.unwrap(),
        vec![]
    );
    assert_eq!(
        s.delete_module(&a, "thing-extra", "1.0.0").await.unwrap(),
        Some(other)
    );
    assert_eq!(
        s.get_module_bytes(&a, &a1.digest).await.unwrap(),
        Some(one.clone())
    );
    assert_eq!(s.get_module_bytes(&b, &a1.digest).await.unwrap(), None);
    // A version is installed once: other bytes under it change nothing.
    let again = module(&a, "thing", "1.0.0", b"other bytes");
    assert!(matches!(
        s.put_module(again.clone(), b"other bytes".to_vec()).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.list_modules(&a).await.unwrap(),
        vec![a1.clone(), a2.clone()]
    );
    assert_eq!(
        s.get_module_bytes(&a, &a1.digest).await.unwrap(),
        Some(one.clone())
    );
    // Another company cannot remove it; its own admin can, once.
    assert_eq!(s.delete_module(&b, "thing", "1.1.0").await.unwrap(), None);
    assert_eq!(
        s.delete_module(&a, "thing", "1.0.0").await.unwrap(),
        Some(a1.clone())
    );
    assert_eq!(s.delete_module(&a, "thing", "1.0.0").await.unwrap(), None);
    assert_eq!(s.list_modules(&a).await.unwrap(), vec![a2.clone()]);
    assert_eq!(s.get_module_bytes(&a, &a1.digest).await.unwrap(), None);
    // B's module with A's remaining bytes is untouched by all of it.
    assert_eq!(s.get_module_bytes(&b, &b1.digest).await.unwrap(), Some(two));
    // Removed, it can be installed again.
    s.put_module(a1.clone(), one.clone()).await.unwrap();
    assert_eq!(s.get_module_bytes(&a, &a1.digest).await.unwrap(), Some(one));
}

async fn versions_sharing_bytes_keep_them_until_the_last_goes<S: Store>(s: &S) {
    let a = new_object_id();
    let bytes = b"the same component".to_vec();
    let v1 = module(&a, "same", "0.1.0", &bytes);
    let v2 = module(&a, "same", "0.2.0", &bytes);
    s.put_module(v1.clone(), bytes.clone()).await.unwrap();
    s.put_module(v2.clone(), bytes.clone()).await.unwrap();
    assert!(
        s.delete_module(&a, "same", "0.1.0")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        s.get_module_bytes(&a, &v2.digest).await.unwrap(),
        Some(bytes)
    );
    assert!(
        s.delete_module(&a, "same", "0.2.0")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(s.get_module_bytes(&a, &v2.digest).await.unwrap(), None);
}

/// An admin removes one version while another installs the next with the same bytes,
/// both at once (two requests, or two hosts on one store): the new version keeps its
/// bytes. On MongoDB the removal counted the versions sharing the bytes before the
/// install's metadata existed, then deleted the pieces the install had just written.
async fn a_removal_racing_an_install_of_the_same_bytes_keeps_them<S: Store>(s: &S) {
    let a = new_object_id();
    let bytes = b"bytes two versions share".to_vec();
    let mut current = module(&a, "shared", "1.0.0", &bytes);
    s.put_module(current.clone(), bytes.clone()).await.unwrap();
    // The two requests interleave differently from round to round.
    for round in 1..=12 {
        let next = module(&a, "shared", &format!("1.{round}.0"), &bytes);
        let (removed, installed) = tokio::join!(
            s.delete_module(&a, &current.name, &current.version),
            s.put_module(next.clone(), bytes.clone()),
        );
        assert!(removed.unwrap().is_some(), "round {round}");
        installed.unwrap();
        assert_eq!(s.list_modules(&a).await.unwrap(), vec![next.clone()]);
        assert_eq!(
            s.get_module_bytes(&a, &next.digest).await.unwrap(),
            Some(bytes.clone()),
            "round {round}: the installed version lost its bytes"
        );
        current = next;
    }
}

async fn a_module_larger_than_a_document_round_trips<S: Store>(s: &S) {
    // Over MongoDB's 16 MB document limit, and not a whole number of 8 MiB pieces.
    let a = new_object_id();
    let bytes: Vec<u8> = (0..(17 * 1024 * 1024 + 12_345))
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let record = module(&a, "big", "1.0.0", &bytes);
    s.put_module(record.clone(), bytes.clone()).await.unwrap();
    assert_eq!(s.list_modules(&a).await.unwrap(), vec![record.clone()]);
    let back = s.get_module_bytes(&a, &record.digest).await.unwrap();
    assert!(
        back.as_deref() == Some(&bytes[..]),
        "the bytes come back whole"
    );
    assert!(s.delete_module(&a, "big", "1.0.0").await.unwrap().is_some());
    assert_eq!(s.get_module_bytes(&a, &record.digest).await.unwrap(), None);
}

/// MongoDB keeps flow8's document shapes: BSON dates, ObjectIds, sealed sub-documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_documents_have_the_flow8_shape_and_every_query_an_index() {
    use ::mongodb::bson::{Bson, Document, doc};
    let server = shared_mongo();
    let db = format!("shape_{}", new_object_id());
    let store = MongoStore::connect(&server.uri(&db)).await.unwrap();
    let company = new_object_id();
    let l = link(&company, "slack", Some(now() + Duration::days(2)));
    store.insert_link(l.clone()).await.unwrap();
    let client = ::mongodb::Client::with_uri_str(server.uri(&db))
        .await
        .unwrap();
    let raw: Document = client
        .database(&db)
        .collection::<Document>("db_links")
        .find_one(doc! {})
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(raw.get("_id"), Some(Bson::ObjectId(_))));
    assert!(matches!(raw.get("company_id"), Some(Bson::ObjectId(_))));
    assert!(matches!(raw.get("user_id"), Some(Bson::ObjectId(_))));
    assert!(matches!(raw.get("token_expiry"), Some(Bson::DateTime(_))));
    assert!(matches!(raw.get("created_at"), Some(Bson::DateTime(_))));
    let token = raw.get_document("access_token").unwrap();
    assert!(token.get_bool("encrypted").unwrap());
    for k in ["nonce", "ciphertext"] {
        assert!(token.get_str(k).is_ok(), "{k} missing from {token}");
    }
    assert!(!format!("{raw}").contains("xoxb-access"));
    // The seed's expiry query, run as written, finds it.
    let found = client
        .database(&db)
        .collection::<Document>("db_links")
        .count_documents(doc! {"token_expiry": {
            "$gt": ::mongodb::bson::DateTime::now(),
            "$lt": ::mongodb::bson::DateTime::from_millis(::mongodb::bson::DateTime::now().timestamp_millis() + 7 * 24 * 3600 * 1000),
        }})
        .await
        .unwrap();
    assert_eq!(found, 1);
    // An index behind every query the host makes.
    let has = |keys: &[Document], want: Document| keys.contains(&want);
    let links = store.index_keys("db_links").await.unwrap();
    assert!(has(&links, doc! {"company_id": 1, "token_expiry": 1}));
    assert!(has(&links, doc! {"token_expiry": 1}));
    assert!(has(&links, doc! {"status": 1, "token_expiry": 1}));
    assert!(has(
        &links,
        doc! {"company_id": 1, "integration_type": 1, "created_at": -1, "_id": -1}
    ));
    let comps = store.index_keys("components").await.unwrap();
    assert!(has(&comps, doc! {"company_id": 1, "name": 1}));
    assert!(has(
        &comps,
        doc! {"company_id": 1, "kind": 1, "is_default": 1}
    ));
    let states = store.index_keys("oauth_states").await.unwrap();
    assert!(has(&states, doc! {"state_hash": 1}));
    assert!(has(&states, doc! {"expires_at": 1}));
    let tokens = store.index_keys("api_tokens").await.unwrap();
    assert!(has(&tokens, doc! {"token_hash": 1}));
    let events = store.index_keys("events").await.unwrap();
    assert!(has(
        &events,
        doc! {"company_id": 1, "service": 1, "provider_event_id": 1}
    ));
    assert!(has(
        &events,
        doc! {"company_id": 1, "received_at": 1, "_id": 1}
    ));
    assert!(has(
        &links,
        doc! {"integration_type": 1, "provider_metadata.team.id": 1}
    ));
    let audit = store.index_keys("audit_log").await.unwrap();
    assert!(has(
        &audit,
        doc! {"company_id": 1, "timestamp": 1, "_id": 1}
    ));
    let modules = store.index_keys("modules").await.unwrap();
    assert!(has(
        &modules,
        doc! {"company_id": 1, "name": 1, "version": 1}
    ));
    assert!(has(&modules, doc! {"company_id": 1, "digest": 1}));
    let chunks = store.index_keys("module_chunks").await.unwrap();
    assert!(has(&chunks, doc! {"company_id": 1, "digest": 1, "n": 1}));
    // The subscription renewer's query and a link's list.
    let subs = store.index_keys("webhook_subscriptions").await.unwrap();
    assert!(has(&subs, doc! {"status": 1, "expires_at": 1}));
    assert!(has(
        &subs,
        doc! {"company_id": 1, "link_id": 1, "created_at": 1}
    ));
    // Connecting again (a second host, a restart) creates nothing twice and fails on nothing.
    let again = MongoStore::connect(&server.uri(&db)).await.unwrap();
    assert_eq!(
        again.index_keys("db_links").await.unwrap().len(),
        links.len()
    );
}

/// Issue 18 item 16: someone who can write to the store copies company A's sealed
/// secrets into company B's records. The store takes the write (it only sees
/// envelopes), but the host's opening code refuses them there, naming the record,
/// while A's records still open where they were sealed.
async fn a_secret_moved_to_another_companys_record_does_not_open_there<S: Store>(s: &S) {
    let vault = Vault::new(MasterKey::generate());
    let catalogue = flow8_host::catalogue::Catalogue::builtin();
    let sealed_component = |company: &str, secret: &str| {
        let mut c = component(company, "api", "http");
        let sealed = vault.encrypt(secret, &c.seal_context("auth_value"));
        c.config.insert("auth_value".into(), sealed.to_json());
        c
    };
    let a = sealed_component("A", "secret-of-a");
    let b = sealed_component("B", "secret-of-b");
    s.insert_component(a.clone()).await.unwrap();
    s.insert_component(b.clone()).await.unwrap();
    let mut moved = b.config.clone();
    moved.insert("auth_value".into(), a.config["auth_value"].clone());
    assert!(
        s.replace_component_config("B", &b.id, &b.config, moved)
            .await
            .unwrap()
    );
    let open = |c: &ComponentRecord| {
        flow8_host::components::decrypt_secrets(&catalogue, c, &vault)
            .map(|v| v[0].1.expose().to_string())
    };
    let b_now = s.get_component("B", &b.id).await.unwrap().unwrap();
    let refused = open(&b_now).unwrap_err().to_string();
    assert!(
        refused.contains("does not belong to this record")
            && refused.contains("company `B`")
            && !refused.contains("secret-of-a"),
        "{refused}"
    );
    let a_now = s.get_component("A", &a.id).await.unwrap().unwrap();
    assert_eq!(open(&a_now).unwrap(), "secret-of-a");

    // The same for a link's tokens, moved between two companies' links.
    let la = link("A", "slack", None);
    let lb = link("B", "slack", None);
    s.insert_link(la.clone()).await.unwrap();
    s.insert_link(lb.clone()).await.unwrap();
    let mut stolen = s.get_link("B", &lb.id).await.unwrap().unwrap();
    stolen.access_token = la.access_token.clone();
    stolen.refresh_token = la.refresh_token.clone();
    let version = stolen.version;
    assert!(s.update_link_cas(stolen, version).await.unwrap());
    let lb_now = s.get_link("B", &lb.id).await.unwrap().unwrap();
    assert_eq!(
        lb_now.access_token, la.access_token,
        "the store took the copy"
    );
    for (sealed, context) in [
        (&lb_now.access_token, lb_now.access_token_context()),
        (
            lb_now.refresh_token.as_ref().unwrap(),
            lb_now.refresh_token_context(),
        ),
    ] {
        assert!(matches!(
            TEST_VAULT.decrypt(sealed, &context),
            Err(flow8_host::vault::VaultError::WrongRecord { .. })
        ));
    }
    let la_now = s.get_link("A", &la.id).await.unwrap().unwrap();
    assert_eq!(
        TEST_VAULT
            .decrypt(&la_now.access_token, &la_now.access_token_context())
            .unwrap()
            .expose(),
        "xoxb-access"
    );
}

fn event(company: &str, service: &str, provider_id: &str, at: OffsetDateTime) -> EventRecord {
    EventRecord {
        id: new_object_id(),
        company_id: company.into(),
        service: service.into(),
        provider_event_id: provider_id.into(),
        link_id: Some(new_object_id()),
        event_type: "message".into(),
        payload: json!({"event": {"type": "message", "text": "hi"}, "n": [1, 2]}),
        received_at: at,
    }
}

/// Issue 14: a verified webhook event is stored once per company, service and provider
/// event id (a retry or replay writes nothing), listed newest first with paging, and
/// only for its own company.
async fn events_are_stored_once_per_provider_id_and_paged<S: Store>(s: &S) {
    let (a, b) = (new_object_id(), new_object_id());
    let t = now();
    let first = event(&a, "slack", "Ev1", t);
    assert!(s.insert_event(first.clone()).await.unwrap());
    // The same provider id again (a new record id): nothing is written.
    assert!(
        !s.insert_event(event(&a, "slack", "Ev1", t + Duration::seconds(1)))
            .await
            .unwrap()
    );
    // The same id from another provider, or for another company, is another event.
    assert!(
        s.insert_event(event(&a, "quickbooks", "Ev1", t + Duration::seconds(2)))
            .await
            .unwrap()
    );
    assert!(
        s.insert_event(event(&b, "slack", "Ev1", t + Duration::seconds(3)))
            .await
            .unwrap()
    );
    for i in 2..=5 {
        assert!(
            s.insert_event(event(
                &a,
                "slack",
                &format!("Ev{i}"),
                t + Duration::seconds(10 + i)
            ))
            .await
            .unwrap()
        );
    }
    let all = s
        .list_events(
            &a,
            &EventQuery {
                limit: 100,
                ..EventQuery::default()
            },
        )
        .await
        .unwrap();
    let ids: Vec<(&str, &str)> = all
        .iter()
        .map(|e| (e.service.as_str(), e.provider_event_id.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            ("slack", "Ev5"),
            ("slack", "Ev4"),
            ("slack", "Ev3"),
            ("slack", "Ev2"),
            ("quickbooks", "Ev1"),
            ("slack", "Ev1")
        ]
    );
    // The stored record is the first one, whole.
    assert_eq!(all.last().unwrap(), &first);
    let page = s
        .list_events(
            &a,
            &EventQuery {
                service: Some("slack".into()),
                offset: 1,
                limit: 2,
            },
        )
        .await
        .unwrap();
    let ids: Vec<&str> = page.iter().map(|e| e.provider_event_id.as_str()).collect();
    assert_eq!(ids, ["Ev4", "Ev3"]);
    let theirs = s
        .list_events(
            &b,
            &EventQuery {
                limit: 100,
                ..EventQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(theirs.len(), 1);
    assert!(
        s.list_events(
            &new_object_id(),
            &EventQuery {
                limit: 100,
                ..EventQuery::default()
            }
        )
        .await
        .unwrap()
        .is_empty()
    );
}

/// Issue 14: a webhook finds the links it is for by id or by what the provider told us
/// at connect time (Slack's team, QuickBooks' realm), in every company, of its service
/// only; a metadata path that is not plain names finds nothing.
async fn webhooks_find_their_links_across_companies<S: Store>(s: &S) {
    let (a, b) = (new_object_id(), new_object_id());
    let mut la = link(&a, "slack", None);
    la.provider_metadata = json!({"team": {"id": "TWEB"}});
    let mut lb = link(&b, "slack", None);
    lb.provider_metadata = json!({"team": {"id": "TWEB"}});
    lb.created_at = la.created_at + Duration::seconds(1);
    let mut other_team = link(&a, "slack", None);
    other_team.provider_metadata = json!({"team": {"id": "TOTHER"}});
    let mut qb = link(&a, "quickbooks", None);
    qb.provider_metadata = json!({"realmId": "TWEB"});
    for l in [&la, &lb, &other_team, &qb] {
        s.insert_link(l.clone()).await.unwrap();
    }
    let by_team = |v: &str| WebhookRoute::Metadata {
        path: "team.id".into(),
        value: v.into(),
    };
    let found = s
        .find_webhook_links("slack", &by_team("TWEB"))
        .await
        .unwrap();
    let ids: Vec<&str> = found.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids, [la.id.as_str(), lb.id.as_str()]);
    let realm = WebhookRoute::Metadata {
        path: "realmId".into(),
        value: "TWEB".into(),
    };
    let found = s.find_webhook_links("quickbooks", &realm).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, qb.id);
    assert!(
        s.find_webhook_links("slack", &realm)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.find_webhook_links("slack", &by_team("nobody"))
            .await
            .unwrap()
            .is_empty()
    );
    for bad in ["", "team..id", "team.id') OR 1=1 --", "$where", "team[0]"] {
        let route = WebhookRoute::Metadata {
            path: bad.into(),
            value: "TWEB".into(),
        };
        assert!(
            s.find_webhook_links("slack", &route)
                .await
                .unwrap()
                .is_empty(),
            "{bad}"
        );
    }
    let by_id = s
        .find_webhook_links("slack", &WebhookRoute::LinkId(lb.id.clone()))
        .await
        .unwrap();
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0].company_id, b);
    // A link is found by id only under its own service.
    assert!(
        s.find_webhook_links("google", &WebhookRoute::LinkId(lb.id.clone()))
            .await
            .unwrap()
            .is_empty()
    );
    // A sealed webhook secret round-trips with the link.
    let vault = &*TEST_VAULT;
    let mut with_secret = lb.clone();
    with_secret.webhook_signature_secret =
        Some(vault.encrypt("whsec-1", &lb.webhook_secret_context()));
    assert!(
        s.update_link_cas(with_secret.clone(), lb.version)
            .await
            .unwrap()
    );
    let back = s.get_link(&b, &lb.id).await.unwrap().unwrap();
    let opened = vault
        .decrypt(
            back.webhook_signature_secret.as_ref().unwrap(),
            &back.webhook_secret_context(),
        )
        .unwrap();
    assert_eq!(opened.expose(), "whsec-1");
}

use flow8_host::store::DeliveryStore;
use flow8_host::store::delivery::{DeliveryOutcome, DeliveryState, EventEndpointRecord};

fn event_of_link(company: &str, link: &str, provider_id: &str, at: OffsetDateTime) -> EventRecord {
    EventRecord {
        link_id: Some(link.into()),
        ..event(company, "slack", provider_id, at)
    }
}

fn claimed_ids(c: &[flow8_host::store::delivery::ClaimedDelivery]) -> Vec<String> {
    let mut ids: Vec<String> = c
        .iter()
        .map(|c| c.event.provider_event_id.clone())
        .collect();
    ids.sort();
    ids
}

/// Issue 14: every stored event is queued; a delivery is leased by one owner at a time
/// (until its lease expires), only the earliest pending event of a company and link is
/// handed out, and an outcome is recorded only by the lease's holder.
async fn deliveries_are_leased_once_and_in_order_per_link<S: Store + DeliveryStore>(s: &S) {
    let t0 = now() - Duration::minutes(1);
    let (l1, l2) = (new_object_id(), new_object_id());
    let e1 = event_of_link("A", &l1, "e1", t0);
    let e2 = event_of_link("A", &l1, "e2", t0 + Duration::milliseconds(5));
    let e3 = event_of_link("A", &l2, "e3", t0 + Duration::milliseconds(10));
    let other = event_of_link("B", &l1, "e1", t0 + Duration::milliseconds(15));
    for e in [&e1, &e2, &e3, &other] {
        assert!(s.insert_event(e.clone()).await.unwrap());
    }
    // A duplicate queues nothing more.
    assert!(
        !s.insert_event(event_of_link("A", &l1, "e1", now()))
            .await
            .unwrap()
    );
    let at = now();
    let lease = at + Duration::seconds(30);
    let a = s.claim_deliveries("host-a", at, lease, 10).await.unwrap();
    // e2 waits behind e1 (same link); B's event is its own company's head.
    assert_eq!(claimed_ids(&a), ["e1", "e1", "e3"]);
    assert!(a.iter().all(|c| c.attempts == 0));
    assert!(
        s.claim_deliveries("host-b", at, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Only the holder records an outcome.
    assert!(
        !s.finish_delivery(&e1.id, "host-b", DeliveryOutcome::Delivered { at })
            .await
            .unwrap()
    );
    assert!(
        s.finish_delivery(&e1.id, "host-a", DeliveryOutcome::Delivered { at })
            .await
            .unwrap()
    );
    // e1 done: e2 is its link's head now; e3 is still host-a's.
    let b = s.claim_deliveries("host-b", at, lease, 10).await.unwrap();
    assert_eq!(claimed_ids(&b), ["e2"]);
    // A failed attempt waits for its time, and holds back nothing of another link.
    assert!(
        s.finish_delivery(
            &e2.id,
            "host-b",
            DeliveryOutcome::Retry {
                attempts: 1,
                next_at: at + Duration::hours(1),
                error: "HTTP 503".into()
            },
        )
        .await
        .unwrap()
    );
    assert!(
        s.claim_deliveries("host-b", at, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // host-a died holding e3 (and B's e1): once the lease expires, another host takes them.
    let later = lease + Duration::seconds(1);
    let c = s
        .claim_deliveries("host-c", later, later + Duration::seconds(30), 10)
        .await
        .unwrap();
    assert_eq!(claimed_ids(&c), ["e1", "e3"]);
    for d in &c {
        assert!(
            s.finish_delivery(
                &d.event.id,
                "host-c",
                DeliveryOutcome::Delivered { at: later }
            )
            .await
            .unwrap()
        );
    }
    let retried = s
        .claim_deliveries(
            "host-c",
            at + Duration::hours(2),
            at + Duration::hours(3),
            10,
        )
        .await
        .unwrap();
    assert_eq!(claimed_ids(&retried), ["e2"]);
    assert_eq!(retried[0].attempts, 1);
    assert_eq!(retried[0].event, e2);

    let ids = vec![e1.id.clone(), e2.id.clone(), e3.id.clone()];
    let mut st = s.delivery_statuses("A", &ids).await.unwrap();
    st.sort_by(|x, y| x.event_id.cmp(&y.event_id));
    let by_id = |id: &str| st.iter().find(|d| d.event_id == id).unwrap().clone();
    assert_eq!(st.len(), 3);
    assert_eq!(by_id(&e1.id).state, DeliveryState::Delivered);
    assert!(by_id(&e1.id).delivered_at.is_some());
    let d2 = by_id(&e2.id);
    assert_eq!(
        (d2.state, d2.attempts, d2.last_error.as_deref()),
        (DeliveryState::Pending, 1, Some("HTTP 503"))
    );
    assert!(d2.next_attempt_at.is_some());
    // Another company sees none of them.
    assert!(s.delivery_statuses("B", &ids).await.unwrap().is_empty());
}

/// Issue 14: a parked event is handed out no more; a redelivery queues it again with
/// its failed attempts forgotten, and only for its own company.
async fn parked_deliveries_are_redelivered_on_request<S: Store + DeliveryStore>(s: &S) {
    let link = new_object_id();
    let e = event_of_link("A", &link, "p1", now() - Duration::seconds(5));
    assert!(s.insert_event(e.clone()).await.unwrap());
    let at = now();
    let lease = at + Duration::seconds(30);
    assert_eq!(
        s.claim_deliveries("h", at, lease, 5).await.unwrap().len(),
        1
    );
    assert!(
        s.finish_delivery(
            &e.id,
            "h",
            DeliveryOutcome::Parked {
                attempts: 3,
                error: "HTTP 500".into()
            }
        )
        .await
        .unwrap()
    );
    // Parked holds back nothing: the link's next event goes.
    let next = event_of_link("A", &link, "p2", now());
    assert!(s.insert_event(next.clone()).await.unwrap());
    let at = now();
    let c = s
        .claim_deliveries("h", at, at + Duration::seconds(30), 5)
        .await
        .unwrap();
    assert_eq!(claimed_ids(&c), ["p2"]);
    assert!(
        s.finish_delivery(&next.id, "h", DeliveryOutcome::NoEndpoint)
            .await
            .unwrap()
    );
    let st = s
        .delivery_statuses("A", std::slice::from_ref(&e.id))
        .await
        .unwrap();
    assert_eq!((st[0].state, st[0].attempts), (DeliveryState::Parked, 3));
    assert!(st[0].next_attempt_at.is_none());

    assert!(
        s.redeliver_event("B", &e.id, now())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.redeliver_event("A", &new_object_id(), now())
            .await
            .unwrap()
            .is_none()
    );
    let r = s.redeliver_event("A", &e.id, now()).await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.attempts, r.last_error),
        (DeliveryState::Pending, 0, None)
    );
    let at = now() + Duration::seconds(1);
    let c = s
        .claim_deliveries("h2", at, at + Duration::seconds(30), 5)
        .await
        .unwrap();
    assert_eq!(claimed_ids(&c), ["p1"]);
    assert_eq!(c[0].attempts, 0);
    let st = s
        .delivery_statuses("A", std::slice::from_ref(&next.id))
        .await
        .unwrap();
    assert_eq!(st[0].state, DeliveryState::NoEndpoint);
}

/// Issue 14: one endpoint per company, its secret sealed for that company; replaced
/// only by compare-and-set (key rotation racing an edit loses nothing), walked in
/// company order, deleted once.
async fn event_endpoints_are_per_company_and_compare_and_set<S: Store + DeliveryStore>(s: &S) {
    let vault = Vault::new(MasterKey::generate());
    let record = |company: &str, url: &str| EventEndpointRecord {
        company_id: company.into(),
        url: url.into(),
        signing_secret: vault.encrypt(
            "whsec_c2VjcmV0",
            &flow8_host::store::delivery::event_endpoint_context(company),
        ),
        version: 0,
        created_at: now(),
        updated_at: now(),
    };
    // An ObjectId-shaped company id and a name: both kept and found as they are.
    let oid = new_object_id();
    for c in [oid.as_str(), "acme", "zeta"] {
        s.insert_event_endpoint(record(c, "https://flow8.example.com/e"))
            .await
            .unwrap();
    }
    assert!(matches!(
        s.insert_event_endpoint(record("acme", "https://x.example.com/"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    let got = s.get_event_endpoint("acme").await.unwrap().unwrap();
    assert_eq!(
        got,
        record("acme", "https://flow8.example.com/e").clone_with(&got)
    );
    assert_eq!(
        vault
            .decrypt(&got.signing_secret, &got.signing_secret_context())
            .unwrap()
            .expose(),
        "whsec_c2VjcmV0"
    );
    assert!(s.get_event_endpoint("nobody").await.unwrap().is_none());
    let mut changed = got.clone();
    changed.url = "https://flow8.example.com/v2".into();
    assert!(
        !s.replace_event_endpoint_cas(changed.clone(), 7)
            .await
            .unwrap()
    );
    assert!(
        s.replace_event_endpoint_cas(changed.clone(), 0)
            .await
            .unwrap()
    );
    let now_stored = s.get_event_endpoint("acme").await.unwrap().unwrap();
    assert_eq!(
        (now_stored.url.as_str(), now_stored.version),
        ("https://flow8.example.com/v2", 1)
    );
    assert!(!s.replace_event_endpoint_cas(changed, 0).await.unwrap());
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.scan_event_endpoints(after.as_deref(), 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.company_id.clone());
        seen.extend(page.into_iter().map(|e| e.company_id));
    }
    let mut expected = vec![oid.clone(), "acme".into(), "zeta".into()];
    expected.sort();
    assert_eq!(seen, expected);
    assert!(s.delete_event_endpoint("acme").await.unwrap());
    assert!(!s.delete_event_endpoint("acme").await.unwrap());
    assert!(s.get_event_endpoint("acme").await.unwrap().is_none());
    assert!(s.get_event_endpoint(&oid).await.unwrap().is_some());
}

trait CloneWith {
    fn clone_with(self, stored: &EventEndpointRecord) -> EventEndpointRecord;
}

impl CloneWith for EventEndpointRecord {
    /// This record with the stored one's secret and times (sealing is randomised).
    fn clone_with(self, stored: &EventEndpointRecord) -> EventEndpointRecord {
        EventEndpointRecord {
            signing_secret: stored.signing_secret.clone(),
            created_at: stored.created_at,
            updated_at: stored.updated_at,
            ..self
        }
    }
}

fn subscription(company: &str, link: &str, expires_in: Duration) -> SubscriptionRecord {
    let t = now();
    SubscriptionRecord {
        id: new_object_id(),
        company_id: company.into(),
        link_id: link.into(),
        service: "microsoft".into(),
        resource: "me/messages".into(),
        change_type: Some("created".into()),
        topic_name: None,
        provider_id: Some(format!("graph-{}", new_object_id())),
        provider_resource_id: None,
        expires_at: t + expires_in,
        status: SubscriptionStatus::Active,
        last_error: None,
        renewals: 0,
        created_by: Some("alice".into()),
        lease_owner: None,
        lease_until: None,
        version: 0,
        created_at: t,
        updated_at: t,
    }
}

async fn subscriptions_are_scoped_due_leased_and_compare_and_set<S: Store + Clone>(s: &S) {
    let link_a = new_object_id();
    let soon = subscription("A", &link_a, Duration::minutes(5));
    let later = subscription("A", &link_a, Duration::days(3));
    let other_link = subscription("A", &new_object_id(), Duration::minutes(1));
    let other_company = subscription("B", &link_a, Duration::minutes(2));
    for r in [&soon, &later, &other_link, &other_company] {
        s.insert_subscription(r.clone()).await.unwrap();
    }
    // Read back as written; scoped by company and link.
    assert_eq!(
        s.get_subscription("A", &soon.id).await.unwrap().unwrap(),
        soon
    );
    assert!(s.get_subscription("B", &soon.id).await.unwrap().is_none());
    let ids: Vec<String> = s
        .list_subscriptions("A", Some(&link_a))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![soon.id.clone(), later.id.clone()]);
    assert_eq!(s.list_subscriptions("A", None).await.unwrap().len(), 3);
    // Due: every company, soonest first, the limit after the filter.
    let due: Vec<String> = s
        .subscriptions_due(now() + Duration::hours(1), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        due,
        vec![
            other_link.id.clone(),
            other_company.id.clone(),
            soon.id.clone()
        ]
    );
    assert_eq!(
        s.subscriptions_due(now() + Duration::hours(1), 1)
            .await
            .unwrap()
            .len(),
        1
    );
    // One lease holder among many.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let s = s.clone();
        let id = soon.id.clone();
        tasks.push(tokio::spawn(async move {
            s.try_lease_subscription("A", &id, &format!("host-{i}"), now() + Duration::seconds(2))
                .await
                .unwrap()
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        if let Some(r) = t.await.unwrap() {
            winners.push(r);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let leased = winners.remove(0);
    assert_eq!(leased.version, soon.version + 1);
    assert!(
        s.try_lease_subscription("A", &soon.id, "late-host", now() + Duration::seconds(2))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.try_lease_subscription("B", &soon.id, "late-host", now())
            .await
            .unwrap()
            .is_none()
    );
    // A renewal written on the leased version lands once; a stale write does not.
    let mut renewed = leased.clone();
    renewed.expires_at = now() + Duration::days(6);
    renewed.lease_owner = None;
    renewed.lease_until = None;
    renewed.renewals = 1;
    assert!(
        s.update_subscription_cas(renewed.clone(), leased.version)
            .await
            .unwrap()
    );
    assert!(
        !s.update_subscription_cas(renewed.clone(), leased.version)
            .await
            .unwrap()
    );
    let stored = s.get_subscription("A", &soon.id).await.unwrap().unwrap();
    assert_eq!(stored.version, leased.version + 1);
    assert_eq!(stored.renewals, 1);
    assert!(stored.lease_owner.is_none());
    // No longer due once renewed; a lost one is never due.
    let due = s
        .subscriptions_due(now() + Duration::hours(1), 10)
        .await
        .unwrap();
    assert!(due.iter().all(|r| r.id != soon.id));
    let mut lost = s
        .get_subscription("A", &other_link.id)
        .await
        .unwrap()
        .unwrap();
    lost.status = SubscriptionStatus::Lost;
    assert!(
        s.update_subscription_cas(lost.clone(), lost.version)
            .await
            .unwrap()
    );
    let due = s
        .subscriptions_due(now() + Duration::hours(1), 10)
        .await
        .unwrap();
    assert!(due.iter().all(|r| r.id != other_link.id));
    // Deleting is scoped too and returns what was there.
    assert!(
        s.delete_subscription("B", &soon.id)
            .await
            .unwrap()
            .is_none()
    );
    let gone = s.delete_subscription("A", &soon.id).await.unwrap().unwrap();
    assert_eq!(gone.id, soon.id);
    assert!(s.get_subscription("A", &soon.id).await.unwrap().is_none());
    assert!(
        s.delete_subscription("A", &soon.id)
            .await
            .unwrap()
            .is_none()
    );
}

/// Two hosts failing the same refresh at the same moment each build the
/// `link.refresh_failed` event from the same stored link (their own ids, the same key)
/// and store it at once: the store keeps one, and queues one delivery.
async fn a_lifecycle_event_two_hosts_store_at_once_is_kept_and_queued_once<
    S: Store + DeliveryStore,
>(
    s: &S,
) {
    use flow8_host::delivery::HostEvent;
    let l = link("A", "google", None);
    let (a, b) = (
        HostEvent::refresh_failed(&l, "provider_error").into_record(),
        HostEvent::refresh_failed(&l, "provider_error").into_record(),
    );
    assert_ne!(a.id, b.id);
    assert_eq!(a.provider_event_id, b.provider_event_id);
    let (ra, rb) = tokio::join!(s.insert_event(a), s.insert_event(b));
    let stored = [ra.unwrap(), rb.unwrap()];
    assert_eq!(stored.iter().filter(|x| **x).count(), 1, "{stored:?}");
    let q = EventQuery {
        service: Some(HostEvent::SERVICE.into()),
        offset: 0,
        limit: 10,
    };
    let listed = s.list_events("A", &q).await.unwrap();
    assert_eq!(listed.len(), 1);
    let at = now();
    let claimed = s
        .claim_deliveries("host-a", at, at + Duration::seconds(30), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].event.id, listed[0].id);
    // The store goes on normally: the next run's event (new tokens) is its own.
    let mut renewed = l.clone();
    renewed.access_token = Vault::new(MasterKey::generate()).encrypt(
        "at2",
        &flow8_host::store::sealing::link("A", &l.id, flow8_host::store::sealing::ACCESS_TOKEN),
    );
    assert!(
        s.insert_event(HostEvent::refresh_failed(&renewed, "provider_error").into_record())
            .await
            .unwrap()
    );
}
