//! Events out to flow8: every stored event (a verified provider webhook, or one of the
//! host's own lifecycle events) is delivered at least once to its company's endpoint,
//! signed the Standard Webhooks way (`signing`), by a background deliverer
//! (`deliverer`) that leases deliveries in the store, retries with exponential backoff
//! and jitter, parks an event after `max_attempts` failures, and keeps each link's
//! events in order. `lifecycle` turns what happens to links into events, and is what
//! other parts of the host call to send one ([`Deliveries::emit`]). `endpoint` sets and
//! removes a company's endpoint and redelivers, for the API and the CLI alike.

pub mod deliverer;
pub mod endpoint;
pub mod lifecycle;
pub mod signing;

pub use deliverer::Deliverer;
pub use lifecycle::{HostEvent, LifecycleEvents};

use crate::store::{AnyStore, EventRecord, Store, StoreError};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The `delivery:` block of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Run the deliverer in `serve` (events are stored and queued either way).
    pub enabled: bool,
    /// Failed attempts after which an event is parked (until redelivered).
    pub max_attempts: u32,
    /// The first retry's delay, milliseconds; each further one doubles it.
    pub backoff_base_ms: u64,
    /// The longest delay between two attempts, milliseconds.
    pub backoff_max_ms: u64,
    /// How long one attempt may take, seconds.
    pub timeout_seconds: u64,
    /// How long a host holds a delivery it took; another host may take it after that
    /// (a host that died mid-attempt). Longer than `timeout_seconds`.
    pub lease_seconds: u64,
    /// How often an idle deliverer looks for due deliveries (other hosts' events,
    /// retries), milliseconds. Events this host stores wake it at once.
    pub poll_ms: u64,
    /// Deliveries taken at once (each of another company or link).
    pub batch: u32,
    /// A link whose token expires within this many days, and that the host cannot
    /// refresh, gets a `link.expiring` event (0: never).
    pub expiring_days: u32,
    /// How often `serve` looks for such links, seconds.
    pub expiring_scan_seconds: u64,
    /// When an endpoint is set where the company had none, its events that found no
    /// endpoint and were stored within this many hours are delivered (0: none).
    pub replay_on_endpoint_set_hours: u32,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            enabled: true,
            max_attempts: 10,
            backoff_base_ms: 5_000,
            backoff_max_ms: 3_600_000,
            timeout_seconds: 10,
            lease_seconds: 60,
            poll_ms: 1_000,
            batch: 16,
            expiring_days: 7,
            expiring_scan_seconds: 3_600,
            replay_on_endpoint_set_hours: 24,
        }
    }
}

impl DeliveryConfig {
    /// Check the values (the message names the key, without the `delivery.` prefix).
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100).contains(&self.max_attempts) {
            return Err("max_attempts must be 1-100".into());
        }
        if !(10..=86_400_000).contains(&self.backoff_base_ms) {
            return Err("backoff_base_ms must be 10-86400000".into());
        }
        if !(self.backoff_base_ms..=604_800_000).contains(&self.backoff_max_ms) {
            return Err("backoff_max_ms must be backoff_base_ms-604800000".into());
        }
        if !(1..=300).contains(&self.timeout_seconds) {
            return Err("timeout_seconds must be 1-300".into());
        }
        if self.lease_seconds < self.timeout_seconds + 2 || self.lease_seconds > 3600 {
            return Err("lease_seconds must be at least timeout_seconds + 2, at most 3600".into());
        }
        if !(10..=60_000).contains(&self.poll_ms) {
            return Err("poll_ms must be 10-60000".into());
        }
        if !(1..=256).contains(&self.batch) {
            return Err("batch must be 1-256".into());
        }
        if self.expiring_days > 365 {
            return Err("expiring_days must be 0-365".into());
        }
        if !(1..=86_400).contains(&self.expiring_scan_seconds) {
            return Err("expiring_scan_seconds must be 1-86400".into());
        }
        if self.replay_on_endpoint_set_hours > 720 {
            return Err("replay_on_endpoint_set_hours must be 0-720".into());
        }
        Ok(())
    }

    /// The delay before attempt `failed + 1`, after `failed` (>= 1) failed ones:
    /// `backoff_base_ms * 2^(failed-1)`, at most `backoff_max_ms`, of which a random
    /// half is taken off ("equal jitter"), so hosts retrying a recovered endpoint do
    /// not all come back at the same instant.
    pub fn backoff(&self, failed: u32) -> Duration {
        let exp = failed.saturating_sub(1).min(40);
        let full = self
            .backoff_base_ms
            .saturating_mul(1u64 << exp)
            .min(self.backoff_max_ms);
        let half = full / 2;
        let jitter = if half == 0 {
            0
        } else {
            rand::random::<u64>() % (half + 1)
        };
        Duration::from_millis(full - half + jitter)
    }
}

/// A handle to the delivery queue: store an event for delivery and wake this host's
/// deliverer. Cheap to clone; every part of the host that makes events holds one.
#[derive(Clone)]
pub struct Deliveries {
    store: Arc<AnyStore>,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deliveries")
    }
}

impl Deliveries {
    /// A queue over a store.
    pub fn new(store: Arc<AnyStore>) -> Deliveries {
        Deliveries {
            store,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Something was queued: the deliverer looks now instead of at its next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// Store one of the host's own events (see [`HostEvent`]) and queue it; false when
    /// one with its key was stored before (told once, even by several hosts).
    pub async fn emit(&self, event: HostEvent) -> Result<bool, StoreError> {
        let inserted = self.store.insert_event(event.into_record()).await?;
        if inserted {
            self.wake();
        }
        Ok(inserted)
    }

    /// Store a provider's event (already verified) and queue it; false for a duplicate.
    pub async fn store(&self, record: EventRecord) -> Result<bool, StoreError> {
        let inserted = self.store.insert_event(record).await?;
        if inserted {
            self.wake();
        }
        Ok(inserted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered_within_half() {
        let c = DeliveryConfig {
            backoff_base_ms: 1000,
            backoff_max_ms: 10_000,
            ..DeliveryConfig::default()
        };
        for _ in 0..200 {
            let d1 = c.backoff(1).as_millis();
            assert!((500..=1000).contains(&d1), "{d1}");
            let d3 = c.backoff(3).as_millis();
            assert!((2000..=4000).contains(&d3), "{d3}");
            let d20 = c.backoff(20).as_millis();
            assert!((5000..=10_000).contains(&d20), "{d20}");
            // Far past any exponent that fits: capped, no overflow.
            let huge = c.backoff(u32::MAX).as_millis();
            assert!((5000..=10_000).contains(&huge), "{huge}");
        }
        // Not all equal: the jitter spreads retries.
        let spread: std::collections::BTreeSet<u128> =
            (0..50).map(|_| c.backoff(4).as_millis()).collect();
        assert!(spread.len() > 1);
    }

    #[test]
    fn the_config_is_checked() {
        assert!(DeliveryConfig::default().validate().is_ok());
        for bad in [
            DeliveryConfig {
                max_attempts: 0,
                ..DeliveryConfig::default()
            },
            DeliveryConfig {
                lease_seconds: 5,
                timeout_seconds: 10,
                ..DeliveryConfig::default()
            },
            DeliveryConfig {
                backoff_max_ms: 1,
                ..DeliveryConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
