//! Managing a company's event endpoint and redeliveries: one implementation behind both
//! the admin API (`server::routes::event_delivery`) and the CLI (`flow8-host events`),
//! so the two check, seal, audit and replay alike.
//!
//! Setting an endpoint where the company had none (the first time, or after it was
//! removed) also queues again the company's events that found no endpoint when their
//! turn came and were stored within the last `delivery.replay_on_endpoint_set_hours`:
//! a company that connects flow8's receiver after its first links hears what just
//! happened, not a backlog of unbounded age (older ones stay `no_endpoint`, redeliverable
//! one by one).

use super::{Deliveries, signing};
use crate::error::ErrorName;
use crate::outbound::OutboundClient;
use crate::server::audit::{AuditWriter, entry};
use crate::store::delivery::{
    DeliveryState, DeliveryStatus, EventEndpointRecord, event_endpoint_context,
};
use crate::store::{AnyStore, DeliveryStore, EventQuery, Store, StoreError, now};
use crate::vault::Vault;
use serde_json::{Value, json};
use std::sync::Arc;

/// The longest endpoint URL.
pub const MAX_URL_LEN: usize = 2048;
/// Events looked at per page while looking for ones to replay.
const REPLAY_PAGE: u64 = 500;
/// The most events one endpoint setting replays (the rest stay `no_endpoint`).
pub const MAX_REPLAY: usize = 10_000;

/// Why an endpoint operation failed; `name()` is the flow8 error name.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The URL is not one events can be delivered to.
    #[error("url: {0}")]
    InvalidUrl(String),
    /// The endpoint changed meanwhile.
    #[error("the endpoint changed meanwhile; try again")]
    Conflict,
    /// No endpoint, or no such event of the company.
    #[error("no {0} with that id")]
    NotFound(&'static str),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EndpointError {
    /// The flow8 error name.
    pub fn name(&self) -> ErrorName {
        match self {
            EndpointError::InvalidUrl(_) => ErrorName::InvalidInput,
            EndpointError::Conflict => ErrorName::Conflict,
            EndpointError::NotFound(_) => ErrorName::NotFound,
            EndpointError::Store(StoreError::Conflict(_)) => ErrorName::Conflict,
            EndpointError::Store(StoreError::Unavailable(_)) => ErrorName::StoreUnavailable,
            EndpointError::Store(StoreError::Corrupt(_)) => ErrorName::InternalError,
        }
    }
}

/// What setting an endpoint did.
#[derive(Debug, Clone)]
pub struct EndpointSet {
    /// The endpoint as stored.
    pub record: EventEndpointRecord,
    /// The new signing secret, when one was made (shown once).
    pub new_secret: Option<String>,
    /// Events queued again because the company had no endpoint before.
    pub replayed: usize,
}

/// The endpoint operations over a host's parts. Cheap to clone.
#[derive(Clone)]
pub struct EndpointAdmin {
    store: Arc<AnyStore>,
    vault: Arc<Vault>,
    outbound: OutboundClient,
    audit: AuditWriter,
    deliveries: Deliveries,
    replay_hours: u32,
}

impl std::fmt::Debug for EndpointAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndpointAdmin")
    }
}

impl EndpointAdmin {
    /// Operations over these parts; `replay_hours` is
    /// `delivery.replay_on_endpoint_set_hours`.
    pub fn new(
        store: Arc<AnyStore>,
        vault: Arc<Vault>,
        outbound: OutboundClient,
        audit: AuditWriter,
        deliveries: Deliveries,
        replay_hours: u32,
    ) -> EndpointAdmin {
        EndpointAdmin {
            store,
            vault,
            outbound,
            audit,
            deliveries,
            replay_hours,
        }
    }

    fn check_url(&self, raw: &str) -> Result<(), EndpointError> {
        let bad = |m: String| Err(EndpointError::InvalidUrl(m));
        if raw.len() > MAX_URL_LEN {
            return bad(format!("at most {MAX_URL_LEN} characters"));
        }
        let url = match url::Url::parse(raw) {
            Ok(u) => u,
            Err(e) => return bad(format!("not a URL ({e})")),
        };
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return bad("an http or https URL with a host".into());
        }
        if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
            return bad("no user name, password or fragment".into());
        }
        self.outbound
            .check_destination(&url)
            .map_err(|e| EndpointError::InvalidUrl(e.to_string()))
    }

    /// Set the company's endpoint to `url`; a new signing secret the first time or
    /// with `rotate_secret`. Audited `event_endpoint_set` (by `actor`).
    pub async fn set(
        &self,
        company: &str,
        actor: Option<&str>,
        url: &str,
        rotate_secret: bool,
    ) -> Result<EndpointSet, EndpointError> {
        self.check_url(url)?;
        let t = now();
        let existing = self.store.get_event_endpoint(company).await?;
        let seal = |secret: &str| self.vault.encrypt(secret, &event_endpoint_context(company));
        let first = existing.is_none();
        let (record, new_secret) = match existing {
            None => {
                let secret = signing::new_secret();
                let record = EventEndpointRecord {
                    company_id: company.to_string(),
                    url: url.to_string(),
                    signing_secret: seal(&secret),
                    version: 0,
                    created_at: t,
                    updated_at: t,
                };
                self.store.insert_event_endpoint(record.clone()).await?;
                (record, Some(secret))
            }
            Some(old) => {
                let secret = rotate_secret.then(signing::new_secret);
                let mut record = old.clone();
                record.url = url.to_string();
                record.updated_at = t;
                if let Some(s) = &secret {
                    record.signing_secret = seal(s);
                }
                if !self
                    .store
                    .replace_event_endpoint_cas(record.clone(), old.version)
                    .await?
                {
                    return Err(EndpointError::Conflict);
                }
                (record, secret)
            }
        };
        // Only when there was none: with an endpoint already set, nothing became
        // `no_endpoint` that this setting should bring back.
        let replayed = if first {
            self.replay_no_endpoint(company, t).await?
        } else {
            0
        };
        self.audit
            .record(entry(
                company,
                actor,
                "event_endpoint_set",
                "event_endpoint",
                company,
                Value::Null,
                json!({"url": record.url, "new_secret": new_secret.is_some(), "replayed": replayed}),
            ))
            .await;
        // Deliveries that were waiting for an endpoint's answer go now.
        self.deliveries.wake();
        Ok(EndpointSet {
            record,
            new_secret,
            replayed,
        })
    }

    /// Queue again the company's `no_endpoint` events stored within the replay window
    /// before `at`, oldest first (so each link's order holds); how many.
    async fn replay_no_endpoint(
        &self,
        company: &str,
        at: time::OffsetDateTime,
    ) -> Result<usize, EndpointError> {
        if self.replay_hours == 0 {
            return Ok(0);
        }
        let since = at - time::Duration::hours(i64::from(self.replay_hours));
        let mut due: Vec<String> = Vec::new();
        let mut offset = 0u64;
        // Events are listed newest first: walk back until the window ends.
        'pages: loop {
            let page = self
                .store
                .list_events(
                    company,
                    &EventQuery {
                        service: None,
                        offset,
                        limit: REPLAY_PAGE,
                    },
                )
                .await?;
            if page.is_empty() {
                break;
            }
            let in_window: Vec<String> = page
                .iter()
                .take_while(|e| e.received_at >= since)
                .map(|e| e.id.clone())
                .collect();
            let ended = in_window.len() < page.len();
            let statuses = self.store.delivery_statuses(company, &in_window).await?;
            for id in in_window {
                if statuses
                    .iter()
                    .any(|s| s.event_id == id && s.state == DeliveryState::NoEndpoint)
                {
                    due.push(id);
                    if due.len() >= MAX_REPLAY {
                        break 'pages;
                    }
                }
            }
            if ended || page.len() < REPLAY_PAGE as usize {
                break;
            }
            offset = offset.saturating_add(REPLAY_PAGE);
        }
        let mut replayed = 0;
        for id in due.iter().rev() {
            if self.store.redeliver_event(company, id, at).await?.is_some() {
                replayed += 1;
            }
        }
        Ok(replayed)
    }

    /// The company's endpoint.
    pub async fn get(&self, company: &str) -> Result<EventEndpointRecord, EndpointError> {
        self.store
            .get_event_endpoint(company)
            .await?
            .ok_or(EndpointError::NotFound("event endpoint"))
    }

    /// Stop delivering the company's events (they are still stored, as `no_endpoint`).
    /// Audited `event_endpoint_deleted`.
    pub async fn remove(&self, company: &str, actor: Option<&str>) -> Result<(), EndpointError> {
        if !self.store.delete_event_endpoint(company).await? {
            return Err(EndpointError::NotFound("event endpoint"));
        }
        self.audit
            .record(entry(
                company,
                actor,
                "event_endpoint_deleted",
                "event_endpoint",
                company,
                Value::Null,
                Value::Null,
            ))
            .await;
        Ok(())
    }

    /// Queue a company's event again whatever its state. Audited `event_redelivered`.
    pub async fn redeliver(
        &self,
        company: &str,
        actor: Option<&str>,
        id: &str,
    ) -> Result<DeliveryStatus, EndpointError> {
        let status = self
            .store
            .redeliver_event(company, id, now())
            .await?
            .ok_or(EndpointError::NotFound("event"))?;
        self.audit
            .record(entry(
                company,
                actor,
                "event_redelivered",
                "event",
                id,
                Value::Null,
                Value::Null,
            ))
            .await;
        self.deliveries.wake();
        Ok(status)
    }
}
