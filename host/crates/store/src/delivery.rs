//! Delivering stored events on to flow8: each company's endpoint (its URL and sealed
//! signing secret) and each event's delivery state. Kept beside [`Store`](super::Store)
//! as its own trait so the delivery queue can be read on its own: both stores implement
//! it (`embedded::delivery`, `mongodb::delivery`) and so does [`AnyStore`].
//!
//! Every event a store takes ([`Store::insert_event`](super::Store::insert_event)) is
//! queued `pending` in the same write, so an event is never stored without its
//! delivery. Deliveries are taken with a lease (as token refresh takes a link's), one
//! host at a time, and in order per link: an event is only handed out when no earlier
//! event of its company and link is still pending (waiting for a retry, or leased by
//! another host), so a failing event holds back the ones after it until it is
//! delivered or parked.

use super::{AnyStore, EventRecord, StoreError};
use serde::{Deserialize, Serialize};
use std::future::Future;
use time::OffsetDateTime;

/// Where a company's events go: flow8's webhook receiver, and the secret they are
/// signed with. One per company.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEndpointRecord {
    /// The company (also the record's id).
    #[serde(rename = "_id")]
    pub company_id: String,
    /// The URL events are POSTed to (http or https).
    pub url: String,
    /// Sealed signing secret (`whsec_...`, see `sealing::event_endpoint`).
    pub signing_secret: flow8_vault::Envelope,
    /// Bumped on every write (compare-and-set, for key rotation).
    #[serde(default)]
    pub version: i64,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl EventEndpointRecord {
    /// Where the signing secret belongs.
    pub fn signing_secret_context(&self) -> flow8_vault::SealContext<'_> {
        event_endpoint_context(&self.company_id)
    }
}

/// The field of an endpoint's sealed signing secret.
pub const SIGNING_SECRET: &str = "signing_secret";

/// Where a company's endpoint signing secret belongs.
pub fn event_endpoint_context(company_id: &str) -> flow8_vault::SealContext<'_> {
    flow8_vault::SealContext {
        company: company_id,
        kind: flow8_vault::RecordKind::EventEndpoint,
        record: company_id,
        field: SIGNING_SECRET,
    }
}

/// Where an event's delivery stands, stored as its wire string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its (next) attempt.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Given up after the configured number of failed attempts; replayable.
    Parked,
    /// The company had no endpoint when its turn came; replayable.
    NoEndpoint,
}

impl DeliveryState {
    /// The stored and API value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Parked => "parked",
            DeliveryState::NoEndpoint => "no_endpoint",
        }
    }

    /// The state of a stored value.
    pub fn parse(s: &str) -> Option<DeliveryState> {
        Some(match s {
            "pending" => DeliveryState::Pending,
            "delivered" => DeliveryState::Delivered,
            "parked" => DeliveryState::Parked,
            "no_endpoint" => DeliveryState::NoEndpoint,
            _ => return None,
        })
    }
}

/// An event's delivery, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryStatus {
    /// The event.
    pub event_id: String,
    /// Its state.
    pub state: DeliveryState,
    /// Failed attempts so far (reset by a redelivery).
    pub attempts: u32,
    /// When a pending delivery is tried next.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// What the last failed attempt met (never a secret).
    #[serde(default)]
    pub last_error: Option<String>,
    /// When the endpoint took it.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
}

/// A delivery a host has leased: the event and the failed attempts before this one.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedDelivery {
    /// The event to send.
    pub event: EventRecord,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// How an attempt ended; written only while the lease is still the writer's.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryOutcome {
    /// The endpoint took it.
    Delivered {
        /// When.
        at: OffsetDateTime,
    },
    /// It failed; try again at `next_at`.
    Retry {
        /// Failed attempts, this one included.
        attempts: u32,
        /// When to try again.
        next_at: OffsetDateTime,
        /// What failed.
        error: String,
    },
    /// It failed for the last time.
    Parked {
        /// Failed attempts, this one included.
        attempts: u32,
        /// What failed.
        error: String,
    },
    /// The company has no endpoint.
    NoEndpoint,
}

/// The company-and-link key deliveries are ordered within (`""` for an event of no link).
pub fn delivery_group(event: &EventRecord) -> &str {
    event.link_id.as_deref().unwrap_or("")
}

/// What delivering events needs from storage.
pub trait DeliveryStore: Send + Sync + 'static {
    /// Store a company's endpoint (`Conflict` if it has one).
    fn insert_event_endpoint(
        &self,
        record: EventEndpointRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A company's endpoint.
    fn get_event_endpoint(
        &self,
        company_id: &str,
    ) -> impl Future<Output = Result<Option<EventEndpointRecord>, StoreError>> + Send;
    /// Replace a company's endpoint if its version is still `expected_version` (then
    /// version + 1); whether it was replaced.
    fn replace_event_endpoint_cas(
        &self,
        record: EventEndpointRecord,
        expected_version: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Remove a company's endpoint; whether it had one.
    fn delete_event_endpoint(
        &self,
        company_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Endpoints of every company whose id sorts after `after`, by id, at most `limit`
    /// (key rotation walks them).
    fn scan_event_endpoints(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<EventEndpointRecord>, StoreError>> + Send;
    /// Lease up to `limit` pending deliveries due at `now` to `owner` until
    /// `lease_until`: only the earliest pending event of each company and link, and
    /// none whose lease another owner still holds. Soonest due first.
    fn claim_deliveries(
        &self,
        owner: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<ClaimedDelivery>, StoreError>> + Send;
    /// Record how an attempt ended and release the lease, if `owner` still holds it;
    /// whether it did.
    fn finish_delivery(
        &self,
        event_id: &str,
        owner: &str,
        outcome: DeliveryOutcome,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Queue a company's event again (pending, no failed attempts, due at `now`),
    /// whatever its state; its status, or None when the company has no such event.
    fn redeliver_event(
        &self,
        company_id: &str,
        event_id: &str,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Option<DeliveryStatus>, StoreError>> + Send;
    /// The delivery status of those of a company's events that have one.
    fn delivery_statuses(
        &self,
        company_id: &str,
        event_ids: &[String],
    ) -> impl Future<Output = Result<Vec<DeliveryStatus>, StoreError>> + Send;
}

macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Embedded($s) => $call.await,
            AnyStore::Mongo($s) => $call.await,
        }
    };
}

impl DeliveryStore for AnyStore {
    async fn insert_event_endpoint(&self, record: EventEndpointRecord) -> Result<(), StoreError> {
        delegate!(self, s => s.insert_event_endpoint(record))
    }
    async fn get_event_endpoint(
        &self,
        company_id: &str,
    ) -> Result<Option<EventEndpointRecord>, StoreError> {
        delegate!(self, s => s.get_event_endpoint(company_id))
    }
    async fn replace_event_endpoint_cas(
        &self,
        record: EventEndpointRecord,
        expected_version: i64,
    ) -> Result<bool, StoreError> {
        delegate!(self, s => s.replace_event_endpoint_cas(record, expected_version))
    }
    async fn delete_event_endpoint(&self, company_id: &str) -> Result<bool, StoreError> {
        delegate!(self, s => s.delete_event_endpoint(company_id))
    }
    async fn scan_event_endpoints(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventEndpointRecord>, StoreError> {
        delegate!(self, s => s.scan_event_endpoints(after, limit))
    }
    async fn claim_deliveries(
        &self,
        owner: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        delegate!(self, s => s.claim_deliveries(owner, now, lease_until, limit))
    }
    async fn finish_delivery(
        &self,
        event_id: &str,
        owner: &str,
        outcome: DeliveryOutcome,
    ) -> Result<bool, StoreError> {
        delegate!(self, s => s.finish_delivery(event_id, owner, outcome))
    }
    async fn redeliver_event(
        &self,
        company_id: &str,
        event_id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<DeliveryStatus>, StoreError> {
        delegate!(self, s => s.redeliver_event(company_id, event_id, now))
    }
    async fn delivery_statuses(
        &self,
        company_id: &str,
        event_ids: &[String],
    ) -> Result<Vec<DeliveryStatus>, StoreError> {
        delegate!(self, s => s.delivery_statuses(company_id, event_ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_keep_their_wire_strings() {
        for s in [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Parked,
            DeliveryState::NoEndpoint,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(DeliveryState::parse(s.as_str()), Some(s));
        }
        assert_eq!(DeliveryState::parse("sent"), None);
    }
}
