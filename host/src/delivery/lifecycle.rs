//! The host's own events, delivered like a provider's: a link needs reconnecting, its
//! refresh failed, its refresh works again, its token expires within
//! `delivery.expiring_days` and the host cannot refresh it, a webhook subscription was
//! lost. They are stored as events of service [`HostEvent::SERVICE`] (so `GET
//! /api/v1/events` lists them too), each with a key that makes it told once: by the
//! one host that saw it, or, where several could (an expiry, a refresh failing on two
//! hosts at once), by a key every host derives alike and the store's deduplication.
//!
//! [`LifecycleEvents`] is the OAuth service's second consumer (beside the audit log,
//! wired in `app.rs`); other parts of the host build a [`HostEvent`] and call
//! [`Deliveries::emit`](super::Deliveries::emit).

use super::Deliveries;
use crate::oauth::events::{EventFuture, OAuthEvent, OAuthEvents};
use crate::store::{AnyStore, EventRecord, LinkRecord, LinkStatus, Store, new_object_id, now};
use serde_json::{Value, json};
use std::sync::Arc;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// One of the host's own events.
#[derive(Debug, Clone, PartialEq)]
pub struct HostEvent {
    /// The company it is told to.
    pub company_id: String,
    /// The link it is about (its events are delivered in order with the link's others).
    pub link_id: Option<String>,
    /// `link.needs_reconnect`, `link.refresh_failed`, `link.refresh_recovered`,
    /// `link.expiring`, `link.subscription_lost`, `credential.unusual_use`.
    pub event_type: &'static str,
    /// What makes it unique: the same key is stored (and delivered) once.
    pub key: String,
    /// What flow8 is told (never a secret).
    pub payload: Value,
}

fn time_str(t: Option<OffsetDateTime>) -> Value {
    t.and_then(|t| t.format(&Rfc3339).ok())
        .map(Value::String)
        .unwrap_or(Value::Null)
}

fn link_payload(link: &LinkRecord) -> serde_json::Map<String, Value> {
    let v = json!({
        "link_id": link.id,
        "service": link.integration_type,
        "user_id": link.user_id,
        "token_expiry": time_str(link.token_expiry),
    });
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

impl HostEvent {
    /// The service of the host's own events.
    pub const SERVICE: &'static str = "flow8";

    fn for_link(
        link: &LinkRecord,
        event_type: &'static str,
        key: String,
        extra: Value,
    ) -> HostEvent {
        let mut payload = link_payload(link);
        if let Value::Object(m) = extra {
            payload.extend(m);
        }
        HostEvent {
            company_id: link.company_id.clone(),
            link_id: Some(link.id.clone()),
            event_type,
            key,
            payload: Value::Object(payload),
        }
    }

    /// The provider refused the link's refresh token: the user must connect again.
    pub fn needs_reconnect(link: &LinkRecord, reason: &str) -> HostEvent {
        // Told once per refusal: the OAuth service reports it only from the host
        // whose write marked the link, and the version names that write.
        HostEvent::for_link(
            link,
            "link.needs_reconnect",
            format!("needs_reconnect:{}:{}", link.id, link.version),
            json!({"reason": reason}),
        )
    }

    /// A refresh failed (provider down, store away). Its key is the link and the token
    /// generation that failed to refresh ([`token_generation`]): every host failing the
    /// same refresh builds the same key, and the store keeps one.
    pub fn refresh_failed(link: &LinkRecord, error: &str) -> HostEvent {
        HostEvent::for_link(
            link,
            "link.refresh_failed",
            format!("refresh_failed:{}:{}", link.id, token_generation(link)),
            json!({"error": error}),
        )
    }

    /// A refresh worked again after the failures of `streak`.
    pub fn refresh_recovered(link: &LinkRecord, streak: &str) -> HostEvent {
        HostEvent::for_link(
            link,
            "link.refresh_recovered",
            format!("refresh_recovered:{streak}"),
            Value::Null,
        )
    }

    /// The link's token expires at `expiry`, within the warning window, and the host
    /// cannot renew it (no refresh token).
    pub fn expiring(link: &LinkRecord, expiry: OffsetDateTime) -> HostEvent {
        HostEvent::for_link(
            link,
            "link.expiring",
            format!("expiring:{}:{}", link.id, expiry.unix_timestamp()),
            json!({"expires_at": time_str(Some(expiry))}),
        )
    }

    /// A webhook subscription of the link (a Graph subscription, a Google channel) is
    /// gone and could not be made again (`reason` says why). Told once per subscription:
    /// a lost one is never renewed again (a new one, made through the API, has a new id).
    pub fn subscription_lost(
        link: &LinkRecord,
        sub: &crate::store::SubscriptionRecord,
        reason: &str,
    ) -> HostEvent {
        HostEvent::for_link(
            link,
            "link.subscription_lost",
            format!("subscription_lost:{}:{}", link.id, sub.id),
            json!({
                "subscription_id": sub.id,
                "resource": sub.resource,
                "provider_id": sub.provider_id,
                "reason": reason,
            }),
        )
    }

    /// A credential was used in an unusual way (see `crate::usage`); `link_id` when the
    /// credential is a link, `at` the use.
    pub fn unusual_use(
        company_id: &str,
        resource_type: &str,
        resource_id: &str,
        link_id: Option<&str>,
        module: &str,
        anomaly: &crate::usage::Anomaly,
        at: OffsetDateTime,
    ) -> HostEvent {
        use crate::usage::Anomaly;
        let (key, detail) = match anomaly {
            Anomaly::NewModule { module } => (module.clone(), json!({"new_module": module})),
            Anomaly::Rate {
                uses,
                usual_per_hour,
            } => (
                (at.unix_timestamp() / 3600).to_string(),
                json!({"uses_this_hour": uses, "usual_per_hour": usual_per_hour}),
            ),
            Anomaly::Idle { days } => (at.unix_timestamp().to_string(), json!({"idle_days": days})),
        };
        HostEvent {
            company_id: company_id.into(),
            link_id: link_id.map(str::to_string),
            event_type: "credential.unusual_use",
            key: format!("usage:{}:{resource_id}:{key}", anomaly.kind()),
            payload: json!({
                "kind": anomaly.kind(),
                "resource_type": resource_type,
                "resource_id": resource_id,
                "module": module,
                "detail": detail,
                "at": time_str(Some(at)),
            }),
        }
    }

    /// The event as stored.
    pub fn into_record(self) -> EventRecord {
        EventRecord {
            id: new_object_id(),
            company_id: self.company_id,
            service: HostEvent::SERVICE.into(),
            provider_event_id: self.key,
            link_id: self.link_id,
            event_type: self.event_type.into(),
            payload: self.payload,
            received_at: now(),
        }
    }
}

/// What names the tokens a link holds now, the same on every host reading the same
/// record: a digest of the seals' nonces (random per seal, so new tokens, or tokens
/// sealed again by a key rotation, are a new generation), never of a secret.
pub fn token_generation(link: &LinkRecord) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(link.access_token.nonce.as_bytes());
    h.update(b"|");
    if let Some(r) = &link.refresh_token {
        h.update(r.nonce.as_bytes());
    }
    h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The host-meta key of a link's current run of refresh failures (its value the token
/// generation that failed, empty when none).
fn failing_key(link: &LinkRecord) -> String {
    format!("refresh_failing:{}:{}", link.company_id, link.id)
}

/// Turns the OAuth service's events into delivered lifecycle events.
#[derive(Clone)]
pub struct LifecycleEvents {
    deliveries: Deliveries,
    store: Arc<AnyStore>,
}

impl LifecycleEvents {
    /// Events into this queue (the store keeps the runs of refresh failures).
    pub fn new(deliveries: Deliveries, store: Arc<AnyStore>) -> LifecycleEvents {
        LifecycleEvents { deliveries, store }
    }

    async fn take(&self, event: OAuthEvent) -> Result<(), crate::store::StoreError> {
        match event {
            OAuthEvent::NeedsReconnect { link, reason } => {
                self.deliveries
                    .emit(HostEvent::needs_reconnect(&link, &reason))
                    .await?;
            }
            OAuthEvent::RefreshFailed { link, error } => {
                // One event per run of failures: the background refresher retries
                // every minute while a provider is down, flow8 needs to hear it once.
                // Hosts failing the same refresh at once may both find no run yet:
                // they write the same run (the generation) and build the same event
                // key, which the store keeps once.
                let key = failing_key(&link);
                let running = self.store.get_meta(&key).await?;
                if running.as_deref().is_none_or(str::is_empty) {
                    self.store.put_meta(&key, &token_generation(&link)).await?;
                    self.deliveries
                        .emit(HostEvent::refresh_failed(&link, &error))
                        .await?;
                }
            }
            OAuthEvent::Refreshed { link, .. } => {
                let key = failing_key(&link);
                if let Some(streak) = self.store.get_meta(&key).await?
                    && !streak.is_empty()
                {
                    self.deliveries
                        .emit(HostEvent::refresh_recovered(&link, &streak))
                        .await?;
                    self.store.put_meta(&key, "").await?;
                }
            }
            OAuthEvent::Linked { .. }
            | OAuthEvent::Unlinked { .. }
            | OAuthEvent::Revoked { .. } => {}
        }
        Ok(())
    }
}

impl OAuthEvents for LifecycleEvents {
    fn emit(&self, event: OAuthEvent) -> EventFuture<'_> {
        Box::pin(async move {
            if let Err(e) = self.take(event).await {
                tracing::warn!(error = %e, "a lifecycle event could not be stored; it is not delivered");
            }
        })
    }
}

/// Store a `link.expiring` event for every active link without a refresh token whose
/// token expires within `days` of `at` (once per link and expiry: the store drops the
/// same key again, also from other hosts). Walks every link; returns how many were new.
pub async fn scan_expiring(
    store: &AnyStore,
    deliveries: &Deliveries,
    days: u32,
    at: OffsetDateTime,
) -> Result<u64, crate::store::StoreError> {
    if days == 0 {
        return Ok(0);
    }
    let until = at + time::Duration::days(i64::from(days));
    let mut new = 0;
    let mut after: Option<String> = None;
    loop {
        let batch = store.scan_links(after.as_deref(), 500).await?;
        let Some(last) = batch.last() else { break };
        after = Some(last.id.clone());
        for link in &batch {
            if link.status != LinkStatus::Active || link.refresh_token.is_some() {
                continue;
            }
            if let Some(expiry) = link.token_expiry
                && expiry > at
                && expiry <= until
                && deliveries.emit(HostEvent::expiring(link, expiry)).await?
            {
                new += 1;
            }
        }
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::events::RefreshCause;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{EventQuery, sealing};
    use crate::vault::{MasterKey, Vault};

    fn link(refresh: bool, expiry: Option<OffsetDateTime>) -> LinkRecord {
        let vault = Vault::new(MasterKey::generate());
        let id = new_object_id();
        LinkRecord {
            access_token: vault.encrypt("at", &sealing::link("A", &id, sealing::ACCESS_TOKEN)),
            refresh_token: refresh
                .then(|| vault.encrypt("rt", &sealing::link("A", &id, sealing::REFRESH_TOKEN))),
            id,
            user_id: "u".into(),
            company_id: "A".into(),
            integration_type: "google".into(),
            token_expiry: expiry,
            scopes: vec![],
            provider_user_id: String::new(),
            provider_user_email: String::new(),
            provider_metadata: Value::Null,
            status: LinkStatus::Active,
            status_reason: None,
            shared_with: vec![],
            webhook_signature_secret: None,
            refresh_lease_owner: None,
            refresh_lease_until: None,
            refresh_retry_after: None,
            version: 3,
            created_at: now(),
            updated_at: now(),
        }
    }

    async fn types(store: &AnyStore) -> Vec<String> {
        let q = EventQuery {
            service: Some(HostEvent::SERVICE.into()),
            offset: 0,
            limit: 100,
        };
        let mut t: Vec<String> = store
            .list_events("A", &q)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event_type)
            .collect();
        t.reverse();
        t
    }

    /// Two hosts (two sinks on one store) failing the same refresh at the same moment
    /// both find no run of failures yet: flow8 still hears `link.refresh_failed` once,
    /// and once more for the next run (new tokens after the recovery).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_hosts_failing_one_refresh_at_once_tell_it_once() {
        let store = Arc::new(AnyStore::from(EmbeddedStore::open_in_memory().unwrap()));
        let (a, b) = (
            LifecycleEvents::new(Deliveries::new(store.clone()), store.clone()),
            LifecycleEvents::new(Deliveries::new(store.clone()), store.clone()),
        );
        let l = link(true, None);
        let failed = || OAuthEvent::RefreshFailed {
            link: l.clone(),
            error: "provider_error".into(),
        };
        tokio::join!(a.emit(failed()), b.emit(failed()));
        assert_eq!(types(&store).await, ["link.refresh_failed"]);
        // Recovered (on one host: the one whose write stored the new tokens), with new
        // tokens; they fail too, on both hosts at once: a new run, told once.
        let vault = Vault::new(MasterKey::generate());
        let mut renewed = l.clone();
        renewed.access_token =
            vault.encrypt("at2", &sealing::link("A", &l.id, sealing::ACCESS_TOKEN));
        a.emit(OAuthEvent::Refreshed {
            link: renewed.clone(),
            cause: RefreshCause::Expiring,
        })
        .await;
        let failed2 = || OAuthEvent::RefreshFailed {
            link: renewed.clone(),
            error: "provider_error".into(),
        };
        tokio::join!(b.emit(failed2()), a.emit(failed2()));
        assert_eq!(
            types(&store).await,
            [
                "link.refresh_failed",
                "link.refresh_recovered",
                "link.refresh_failed"
            ]
        );
        assert_ne!(token_generation(&l), token_generation(&renewed));
    }

    /// A run of refresh failures is told once, its end once; a refusal once per link
    /// version; an expiring unrefreshable link once per expiry, however often scanned.
    #[tokio::test]
    async fn lifecycle_events_are_told_once_each() {
        let store = Arc::new(AnyStore::from(EmbeddedStore::open_in_memory().unwrap()));
        let deliveries = Deliveries::new(store.clone());
        let sink = LifecycleEvents::new(deliveries.clone(), store.clone());
        let l = link(true, None);
        for _ in 0..3 {
            sink.emit(OAuthEvent::RefreshFailed {
                link: l.clone(),
                error: "provider_error".into(),
            })
            .await;
        }
        for _ in 0..2 {
            sink.emit(OAuthEvent::Refreshed {
                link: l.clone(),
                cause: RefreshCause::Expiring,
            })
            .await;
        }
        // A new run after the recovery (which stored new tokens) is told again.
        let mut renewed = l.clone();
        renewed.access_token = Vault::new(MasterKey::generate())
            .encrypt("at2", &sealing::link("A", &l.id, sealing::ACCESS_TOKEN));
        sink.emit(OAuthEvent::RefreshFailed {
            link: renewed,
            error: "provider_error".into(),
        })
        .await;
        for _ in 0..2 {
            sink.emit(OAuthEvent::NeedsReconnect {
                link: l.clone(),
                reason: "invalid_grant".into(),
            })
            .await;
        }
        assert_eq!(
            types(&store).await,
            [
                "link.refresh_failed",
                "link.refresh_recovered",
                "link.refresh_failed",
                "link.needs_reconnect"
            ]
        );
        let at = now();
        let soon = link(false, Some(at + time::Duration::days(2)));
        let later = link(false, Some(at + time::Duration::days(30)));
        let refreshable = link(true, Some(at + time::Duration::days(1)));
        for x in [&soon, &later, &refreshable] {
            store.insert_link(x.clone()).await.unwrap();
        }
        assert_eq!(scan_expiring(&store, &deliveries, 7, at).await.unwrap(), 1);
        assert_eq!(scan_expiring(&store, &deliveries, 7, at).await.unwrap(), 0);
        assert_eq!(scan_expiring(&store, &deliveries, 0, at).await.unwrap(), 0);
        let events = store
            .list_events(
                "A",
                &EventQuery {
                    service: None,
                    offset: 0,
                    limit: 1,
                },
            )
            .await
            .unwrap();
        assert_eq!(events[0].event_type, "link.expiring");
        assert_eq!(events[0].link_id.as_deref(), Some(soon.id.as_str()));
        assert!(events[0].payload["expires_at"].is_string());
    }
}
