//! The background deliverer: one per serving host. It leases due deliveries from the
//! store (`DeliveryStore::claim_deliveries`: at most one per company and link, none
//! another host holds), POSTs each to its company's endpoint, signed, and records the
//! outcome while it still holds the lease. A 2xx answer delivers it; anything else
//! (another status, a refused address, a timeout) is a failed attempt, retried after
//! [`DeliveryConfig::backoff`] until `max_attempts`, then parked. A host that dies
//! mid-attempt leaves its lease to expire: the event goes out again (at least once;
//! the receiver deduplicates by `webhook-id`).
//!
//! The endpoint URL goes through the same outbound client as modules' requests, so the
//! operator's egress policy (loopback, private and metadata addresses, allowed hosts)
//! applies: a company cannot aim deliveries at the host's own network.

use super::signing;
use super::{Deliveries, DeliveryConfig};
use crate::outbound::{OutboundBody, OutboundClient, OutboundRequest};
use crate::server::audit::{AuditWriter, entry};
use crate::server::metrics::Metrics;
use crate::store::delivery::{ClaimedDelivery, DeliveryOutcome, EventEndpointRecord};
use crate::store::{AnyStore, DeliveryStore, EventRecord, StoreError, now};
use crate::vault::Vault;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;

/// The most characters of an error kept with a delivery.
const MAX_ERROR_CHARS: usize = 300;

/// Delivers queued events.
pub struct Deliverer {
    store: Arc<AnyStore>,
    vault: Arc<Vault>,
    outbound: OutboundClient,
    config: DeliveryConfig,
    metrics: Arc<Metrics>,
    audit: AuditWriter,
    deliveries: Deliveries,
    /// This host's lease owner name.
    owner: String,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// The JSON body flow8 receives: Standard Webhooks' `type`, `timestamp`, `data`.
pub fn body(event: &EventRecord) -> Value {
    json!({
        "type": event.event_type,
        "timestamp": event.received_at.format(&Rfc3339).unwrap_or_default(),
        "data": {
            "id": event.id,
            "service": event.service,
            "link_id": event.link_id,
            "provider_event_id": event.provider_event_id,
            "event_type": event.event_type,
            "payload": event.payload,
        },
    })
}

fn short(e: impl std::fmt::Display) -> String {
    let s = e.to_string();
    match s.char_indices().nth(MAX_ERROR_CHARS) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

impl Deliverer {
    /// A deliverer over the host's parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<AnyStore>,
        vault: Arc<Vault>,
        outbound: OutboundClient,
        config: DeliveryConfig,
        metrics: Arc<Metrics>,
        audit: AuditWriter,
        deliveries: Deliveries,
    ) -> Deliverer {
        Deliverer {
            store,
            vault,
            outbound,
            config,
            metrics,
            audit,
            deliveries,
            owner: format!("deliverer-{}", crate::store::new_object_id()),
        }
    }

    /// Run until the process ends: deliver what is due, then wait for a wake-up or
    /// the poll interval. Also looks for expiring links every `expiring_scan_seconds`.
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let poll = Duration::from_millis(self.config.poll_ms);
            let scan_every = Duration::from_secs(self.config.expiring_scan_seconds);
            let mut next_scan = tokio::time::Instant::now();
            loop {
                if tokio::time::Instant::now() >= next_scan {
                    next_scan = tokio::time::Instant::now() + scan_every;
                    if let Err(e) = super::lifecycle::scan_expiring(
                        &self.store,
                        &self.deliveries,
                        self.config.expiring_days,
                        now(),
                    )
                    .await
                    {
                        tracing::warn!(error = %e, "looking for expiring links failed");
                    }
                }
                let done = match self.run_once().await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "taking deliveries failed; trying again");
                        0
                    }
                };
                if done == 0 {
                    tokio::select! {
                        _ = self.deliveries.notified() => {}
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
            }
        })
    }

    /// Take one batch of due deliveries and attempt each (concurrently: they are of
    /// different companies or links); how many were taken.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let at = now();
        let lease = at + time::Duration::seconds(self.config.lease_seconds as i64);
        let batch = self
            .store
            .claim_deliveries(&self.owner, at, lease, self.config.batch)
            .await?;
        let n = batch.len();
        let mut endpoints: HashMap<String, Option<EventEndpointRecord>> = HashMap::new();
        for c in &batch {
            if !endpoints.contains_key(&c.event.company_id) {
                let e = self.store.get_event_endpoint(&c.event.company_id).await?;
                endpoints.insert(c.event.company_id.clone(), e);
            }
        }
        let attempts = batch.into_iter().map(|c| {
            let endpoint = endpoints.get(&c.event.company_id).cloned().flatten();
            self.attempt(c, endpoint)
        });
        futures_util::future::join_all(attempts).await;
        Ok(n)
    }

    async fn attempt(&self, c: ClaimedDelivery, endpoint: Option<EventEndpointRecord>) {
        let outcome = match endpoint {
            None => {
                self.metrics.delivery("no_endpoint");
                DeliveryOutcome::NoEndpoint
            }
            Some(endpoint) => match self.send(&c.event, &endpoint).await {
                Ok(()) => {
                    self.metrics.delivery("delivered");
                    DeliveryOutcome::Delivered { at: now() }
                }
                Err(error) => {
                    let failed = c.attempts.saturating_add(1);
                    tracing::info!(event = %c.event.id, attempt = failed, %error, "delivery failed");
                    if failed >= self.config.max_attempts {
                        self.metrics.delivery("parked");
                        self.audit
                            .record(entry(
                                &c.event.company_id,
                                None,
                                "event_delivery_parked",
                                "event",
                                &c.event.id,
                                Value::Null,
                                json!({"attempts": failed, "error": error, "event_type": c.event.event_type}),
                            ))
                            .await;
                        DeliveryOutcome::Parked {
                            attempts: failed,
                            error,
                        }
                    } else {
                        self.metrics.delivery("failed");
                        let delay = self.config.backoff(failed);
                        DeliveryOutcome::Retry {
                            attempts: failed,
                            next_at: now()
                                + time::Duration::try_from(delay).unwrap_or(time::Duration::HOUR),
                            error,
                        }
                    }
                }
            },
        };
        match self
            .store
            .finish_delivery(&c.event.id, &self.owner, outcome)
            .await
        {
            Ok(true) => {}
            // Our lease ran out and another host took the event: its outcome stands.
            Ok(false) => {
                tracing::warn!(event = %c.event.id, "a delivery's lease ran out before its outcome was recorded")
            }
            Err(e) => {
                tracing::warn!(event = %c.event.id, error = %e, "a delivery's outcome could not be recorded; it is tried again when its lease runs out")
            }
        }
    }

    /// One signed POST; Err says why it did not count as delivered.
    async fn send(
        &self,
        event: &EventRecord,
        endpoint: &EventEndpointRecord,
    ) -> Result<(), String> {
        let url = url::Url::parse(&endpoint.url).map_err(short)?;
        self.outbound.check_destination(&url).map_err(short)?;
        let secret = self
            .vault
            .decrypt(&endpoint.signing_secret, &endpoint.signing_secret_context())
            .map_err(|_| "the endpoint's signing secret does not open".to_string())?;
        let key = signing::secret_key(secret.expose()).map_err(short)?;
        let body = serde_json::to_vec(&body(event)).map_err(short)?;
        let ts = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut headers = http::HeaderMap::new();
        let pairs = [
            ("content-type", "application/json".to_string()),
            ("webhook-id", event.id.clone()),
            ("webhook-timestamp", ts.to_string()),
            (
                "webhook-signature",
                signing::signature(&key, &event.id, ts, &body),
            ),
        ];
        for (k, v) in pairs {
            let v = http::HeaderValue::from_str(&v).map_err(short)?;
            headers.insert(http::HeaderName::from_static(k), v);
        }
        let answer = self
            .outbound
            .send(OutboundRequest {
                method: http::Method::POST,
                url,
                headers,
                body: OutboundBody::Bytes(body),
                timeout: Duration::from_secs(self.config.timeout_seconds),
            })
            .await
            .map_err(short)?;
        if (200..300).contains(&answer.status) {
            Ok(())
        } else {
            Err(format!("the endpoint answered HTTP {}", answer.status))
        }
    }
}
