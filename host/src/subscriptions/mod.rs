//! Webhook subscriptions the host keeps alive for links: Microsoft Graph subscriptions
//! and Google watch channels (Drive changes and files, Gmail). Made through the API for
//! a link and a resource, stored (`SubscriptionRecord`), renewed ahead of expiry by
//! exactly one host (a lease in the store, re-read after taking it, then a
//! compare-and-set write, as token refresh does), made again when the provider lost it
//! (404/410 on renewal, Graph's `subscriptionRemoved`), renewed when Graph asks for
//! reauthorization, and removed at the provider when the link is unlinked. Every change
//! and failure is audited; a subscription that is lost for good is audited
//! `webhook_subscription_lost` and told to [`SubscriptionEvents`] (in a serving host,
//! the events out to flow8: a `link.subscription_lost` event).
//!
//! | file | what |
//! | --- | --- |
//! | `mod.rs` | the service: create, list, delete, the renewer and the lifecycle reactions |
//! | `providers.rs` | the provider calls (Graph, Drive, Gmail) with the link's token |

pub mod providers;

use crate::error::ErrorName;
use crate::oauth::{OAuthError, OAuthService};
use crate::outbound::{OutboundClient, OutboundError};
use crate::server::audit::{AuditWriter, entry};
use crate::store::{
    AnyStore, LinkRecord, Store, StoreError, SubscriptionRecord, SubscriptionStatus, new_object_id,
    now, sealing,
};
use crate::vault::{Secret, Vault};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The services whose webhooks are per link, and so can be subscribed to.
pub const SERVICES: &[&str] = &["microsoft", "google"];
/// The longest resource string taken.
const MAX_RESOURCE: usize = 512;
/// Subscriptions renewed per sweep at most (the rest wait a sweep).
const SWEEP_BATCH: u32 = 200;
/// The most subscriptions one link may have.
pub const MAX_PER_LINK: usize = 50;

/// Why a subscription operation failed; `name()` is the flow8 error name.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    /// The service has no subscriptions here, or it is not configured.
    #[error("no webhook subscriptions for `{0}` on this host")]
    NotConfigured(String),
    /// The request does not describe a subscription the provider takes.
    #[error("{0}")]
    InvalidInput(String),
    /// No such subscription (or link) for this company.
    #[error("no such subscription")]
    NotFound,
    /// The provider no longer has the subscription.
    #[error("the provider no longer has the subscription: {0}")]
    Gone(String),
    /// The provider refused or answered something unexpected.
    #[error("{0}")]
    Upstream(String),
    /// The operator's policy or the provider's pins refused the destination.
    #[error("{0}")]
    Forbidden(String),
    /// The provider could not be reached in time.
    #[error("the provider could not be reached: {0}")]
    Network(String),
    /// The provider's configuration is unusable (its API base URL).
    #[error("{0}")]
    Config(String),
    /// The link's token could not be had.
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sealed secret did not open.
    #[error("a stored secret cannot be decrypted: {0}")]
    Vault(String),
}

impl SubscriptionError {
    /// The flow8 error name.
    pub fn name(&self) -> ErrorName {
        match self {
            SubscriptionError::NotConfigured(_) => ErrorName::NotConfigured,
            SubscriptionError::InvalidInput(_) => ErrorName::InvalidInput,
            SubscriptionError::NotFound => ErrorName::NotFound,
            SubscriptionError::Gone(_) | SubscriptionError::Upstream(_) => ErrorName::UpstreamError,
            SubscriptionError::Forbidden(_) => ErrorName::Forbidden,
            SubscriptionError::Network(_) => ErrorName::NetworkError,
            SubscriptionError::Config(_) => ErrorName::InvalidConfig,
            SubscriptionError::OAuth(e) => e.name(),
            SubscriptionError::Store(StoreError::Conflict(_)) => ErrorName::Conflict,
            SubscriptionError::Store(_) => ErrorName::StoreUnavailable,
            SubscriptionError::Vault(_) => ErrorName::VaultError,
        }
    }
}

impl From<OutboundError> for SubscriptionError {
    fn from(e: OutboundError) -> SubscriptionError {
        match e {
            OutboundError::Forbidden(m) => SubscriptionError::Forbidden(m),
            OutboundError::InvalidRequest(m) => SubscriptionError::Config(m),
            OutboundError::ResponseTooLarge(_) => SubscriptionError::Upstream(e.to_string()),
            OutboundError::Timeout(_) | OutboundError::Network(_) => {
                SubscriptionError::Network(e.to_string())
            }
        }
    }
}

/// What the API asks for: a resource of the link's provider.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewSubscription {
    /// Graph: the resource path (`me/mailFolders('Inbox')/messages`, `me/drive/root`);
    /// Google: `drive/changes`, `drive/files/{file_id}` or `gmail`.
    pub resource: String,
    /// Graph's `changeType` (default `created,updated`).
    pub change_type: Option<String>,
    /// Gmail's Pub/Sub topic (`projects/{project}/topics/{topic}`).
    pub topic_name: Option<String>,
}

/// What [`SubscriptionEvents::lost`] returns: done once the loss is recorded.
pub type LostFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// Who hears about subscriptions lost for good (besides the audit log). A host wires
/// the events out to flow8 in here ([`crate::delivery::Deliveries`]).
pub trait SubscriptionEvents: Send + Sync {
    /// `record`, of `link`, is lost: the provider no longer has it and it could not be
    /// made again. Awaited before the renewer goes on, so the event is stored (and
    /// queued durably) before the loss is audited.
    fn lost<'a>(
        &'a self,
        link: &'a LinkRecord,
        record: &'a SubscriptionRecord,
        reason: &'a str,
    ) -> LostFuture<'a>;
}

/// Tells nobody.
pub struct NoSubscriptionEvents;

impl SubscriptionEvents for NoSubscriptionEvents {
    fn lost<'a>(
        &'a self,
        _: &'a LinkRecord,
        _: &'a SubscriptionRecord,
        _: &'a str,
    ) -> LostFuture<'a> {
        Box::pin(async {})
    }
}

/// A lost subscription becomes a `link.subscription_lost` event, delivered to the
/// company's endpoint like every other event.
impl SubscriptionEvents for crate::delivery::Deliveries {
    fn lost<'a>(
        &'a self,
        link: &'a LinkRecord,
        record: &'a SubscriptionRecord,
        reason: &'a str,
    ) -> LostFuture<'a> {
        Box::pin(async move {
            let event = crate::delivery::HostEvent::subscription_lost(link, record, reason);
            if let Err(e) = self.emit(event).await {
                // The audit entry that follows is then the only record.
                tracing::warn!(subscription = %record.id, error = %e, "the subscription_lost event could not be stored; it is not delivered");
            }
        })
    }
}

/// The renewer's timing (`webhook_subscriptions:` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Renew a subscription that expires within this.
    pub renew_before: Duration,
    /// How often the renewer looks.
    pub check_every: Duration,
    /// How long a renewal lease holds (a host that dies holding one blocks the
    /// subscription no longer than this).
    pub lease: Duration,
}

/// What happened to a renewal, the metrics' `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Extended at the provider.
    Renewed,
    /// The provider had lost it; made again.
    Recreated,
    /// The provider refused or could not be reached; tried again at the next sweep.
    Failed,
    /// Lost for good.
    Lost,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Renewed => "renewed",
            Outcome::Recreated => "recreated",
            Outcome::Failed => "failed",
            Outcome::Lost => "lost",
        }
    }
}

/// The subscription service of one host process.
pub struct SubscriptionService {
    store: Arc<AnyStore>,
    vault: Arc<Vault>,
    oauth: Arc<OAuthService>,
    outbound: OutboundClient,
    audit: AuditWriter,
    public_url: String,
    timing: Timing,
    /// This process's name on the leases it takes.
    owner: String,
    events: Arc<dyn SubscriptionEvents>,
    renewals: Mutex<BTreeMap<(&'static str, Outcome), u64>>,
    sweeps: AtomicU64,
    /// Subscriptions this process is renewing now: the store's lease lets its holder
    /// take it again, so a lifecycle reaction and a sweep of this process must not both
    /// call the provider.
    in_flight: Mutex<std::collections::HashSet<String>>,
}

/// Marks a subscription in flight in this process until dropped.
struct InFlight<'a> {
    set: &'a Mutex<std::collections::HashSet<String>>,
    id: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl SubscriptionService {
    /// A service over the host's parts.
    pub fn new(
        store: Arc<AnyStore>,
        vault: Arc<Vault>,
        oauth: Arc<OAuthService>,
        outbound: OutboundClient,
        audit: AuditWriter,
        public_url: String,
        timing: Timing,
    ) -> SubscriptionService {
        SubscriptionService {
            store,
            vault,
            oauth,
            outbound,
            audit,
            public_url,
            timing,
            owner: new_object_id(),
            events: Arc::new(NoSubscriptionEvents),
            renewals: Mutex::new(BTreeMap::new()),
            sweeps: AtomicU64::new(0),
            in_flight: Mutex::new(Default::default()),
        }
    }

    /// Tell `events` about subscriptions lost for good.
    pub fn with_events(mut self, events: Arc<dyn SubscriptionEvents>) -> SubscriptionService {
        self.events = events;
        self
    }

    /// The URL the provider calls for a link (`public_url` + its webhook route).
    pub fn notification_url(&self, link: &LinkRecord) -> String {
        format!(
            "{}/webhooks/{}/{}",
            self.public_url.trim_end_matches('/'),
            link.integration_type,
            link.id
        )
    }

    /// Check what the API asked for against what the link's provider takes.
    fn check(link: &LinkRecord, req: &NewSubscription) -> Result<(), SubscriptionError> {
        let bad = |m: String| Err(SubscriptionError::InvalidInput(m));
        let r = req.resource.as_str();
        if r.is_empty() || r.len() > MAX_RESOURCE || r.chars().any(char::is_control) {
            return bad(format!(
                "resource must be 1-{MAX_RESOURCE} characters without control characters"
            ));
        }
        match link.integration_type.as_str() {
            "microsoft" => {
                if req.topic_name.is_some() {
                    return bad("topic_name is for Gmail watches only".into());
                }
                if r.starts_with('/') || r.contains("://") || r.contains("..") {
                    return bad(
                        "resource is a Graph path relative to the API, e.g. `me/messages`".into(),
                    );
                }
                if let Some(c) = &req.change_type {
                    let ok = !c.is_empty()
                        && c.split(',')
                            .all(|p| matches!(p.trim(), "created" | "updated" | "deleted"));
                    if !ok {
                        return bad(
                            "change_type is a comma-separated list of created, updated, deleted"
                                .into(),
                        );
                    }
                }
                Ok(())
            }
            "google" => {
                if req.change_type.is_some() {
                    return bad("change_type is for Microsoft Graph subscriptions only".into());
                }
                let file_ok = r.strip_prefix("drive/files/").is_some_and(|id| {
                    !id.is_empty()
                        && id.len() <= 256
                        && id
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
                match r {
                    "drive/changes" if req.topic_name.is_none() => Ok(()),
                    "gmail" => match &req.topic_name {
                        Some(t)
                            if t.starts_with("projects/")
                                && t.contains("/topics/")
                                && t.len() <= 512
                                && t.bytes().all(|b| b.is_ascii_graphic()) =>
                        {
                            Ok(())
                        }
                        _ => bad("a Gmail watch needs topic_name `projects/{project}/topics/{topic}`".into()),
                    },
                    _ if file_ok && req.topic_name.is_none() => Ok(()),
                    _ => bad("a Google resource is `drive/changes`, `drive/files/{file_id}` or `gmail` (with topic_name)".into()),
                }
            }
            other => Err(SubscriptionError::NotConfigured(other.to_string())),
        }
    }

    /// The link's webhook secret, made (and audited) if it has none yet: the
    /// subscription's `clientState` / channel token, checked on every notification.
    async fn client_state(
        &self,
        link: &LinkRecord,
        actor: Option<&str>,
    ) -> Result<Secret, SubscriptionError> {
        let mut link = link.clone();
        for _ in 0..3 {
            if let Some(sealed) = &link.webhook_signature_secret {
                return self
                    .vault
                    .decrypt(sealed, &link.webhook_secret_context())
                    .map_err(|e| SubscriptionError::Vault(e.to_string()));
            }
            let secret = new_webhook_secret();
            let mut updated = link.clone();
            updated.webhook_signature_secret = Some(self.vault.encrypt(
                &secret,
                &sealing::link(&link.company_id, &link.id, sealing::WEBHOOK_SECRET),
            ));
            if self.store.update_link_cas(updated, link.version).await? {
                self.audit
                    .record(entry(
                        &link.company_id,
                        actor,
                        "webhook_secret_created",
                        "integration",
                        &link.id,
                        json!({"had_secret": false}),
                        json!({"service": link.integration_type, "for": "webhook_subscription"}),
                    ))
                    .await;
                return Ok(Secret::new(secret));
            }
            link = self
                .store
                .get_link(&link.company_id, &link.id)
                .await?
                .ok_or(SubscriptionError::NotFound)?;
        }
        Err(SubscriptionError::Store(StoreError::Conflict(
            "the link kept changing; try again".into(),
        )))
    }

    /// The provider calls of a link, with its (refreshed) token.
    async fn with_caller<T, F>(&self, link: &LinkRecord, f: F) -> Result<T, SubscriptionError>
    where
        F: AsyncFnOnce(&providers::Caller<'_>) -> Result<T, SubscriptionError>,
    {
        let provider = self.oauth.provider(&link.integration_type)?;
        let (token, link) = self.oauth.access_token(&link.company_id, &link.id).await?;
        let client_state = self.client_state(&link, None).await?;
        let url = self.notification_url(&link);
        let caller = providers::Caller {
            outbound: &self.outbound,
            api_base: &provider.api_base_url,
            pins: &provider.api_hosts,
            token: &token,
            notification_url: &url,
            client_state: &client_state,
        };
        f(&caller).await
    }

    /// Make a subscription for a link (its owner or an admin, checked by the caller).
    pub async fn create(
        &self,
        link: &LinkRecord,
        req: NewSubscription,
        actor: Option<&str>,
    ) -> Result<SubscriptionRecord, SubscriptionError> {
        Self::check(link, &req)?;
        let existing = self
            .store
            .list_subscriptions(&link.company_id, Some(&link.id))
            .await?;
        if existing.len() >= MAX_PER_LINK {
            return Err(SubscriptionError::InvalidInput(format!(
                "a link has at most {MAX_PER_LINK} subscriptions"
            )));
        }
        // The secret exists before the provider's handshake arrives.
        self.client_state(link, actor).await?;
        let t = now();
        let mut rec = SubscriptionRecord {
            id: new_object_id(),
            company_id: link.company_id.clone(),
            link_id: link.id.clone(),
            service: link.integration_type.clone(),
            resource: req.resource,
            change_type: req.change_type,
            topic_name: req.topic_name,
            provider_id: None,
            provider_resource_id: None,
            expires_at: t,
            status: SubscriptionStatus::Active,
            last_error: None,
            renewals: 0,
            created_by: actor.map(str::to_string),
            lease_owner: None,
            lease_until: None,
            version: 0,
            created_at: t,
            updated_at: t,
        };
        let channel = new_object_id();
        let granted = self
            .with_caller(link, async |c| c.create(&rec, &channel).await)
            .await;
        let granted = match granted {
            Ok(g) => g,
            Err(e) => {
                self.audit_change(
                    &rec,
                    actor,
                    "webhook_subscription_failed",
                    json!({"during": "create", "error": e.to_string()}),
                )
                .await;
                return Err(e);
            }
        };
        rec.provider_id = granted.provider_id;
        rec.provider_resource_id = granted.resource_id;
        rec.expires_at = granted.expires_at;
        if let Err(e) = self.store.insert_subscription(rec.clone()).await {
            // Not kept: take it back at the provider rather than leave it unrenewed.
            let _ = self.with_caller(link, async |c| c.delete(&rec).await).await;
            return Err(e.into());
        }
        self.audit_change(&rec, actor, "webhook_subscription_created", json!({}))
            .await;
        Ok(rec)
    }

    /// A link's subscriptions.
    pub async fn list(
        &self,
        link: &LinkRecord,
    ) -> Result<Vec<SubscriptionRecord>, SubscriptionError> {
        Ok(self
            .store
            .list_subscriptions(&link.company_id, Some(&link.id))
            .await?)
    }

    /// Remove a subscription at the provider, then from the store. A provider that
    /// refuses keeps it (the caller may try again); one that no longer has it is fine.
    pub async fn delete(
        &self,
        link: &LinkRecord,
        id: &str,
        actor: Option<&str>,
    ) -> Result<(), SubscriptionError> {
        let rec = self
            .store
            .get_subscription(&link.company_id, id)
            .await?
            .filter(|r| r.link_id == link.id)
            .ok_or(SubscriptionError::NotFound)?;
        if rec.status == SubscriptionStatus::Active {
            self.with_caller(link, async |c| c.delete(&rec).await)
                .await?;
        }
        if self
            .store
            .delete_subscription(&link.company_id, id)
            .await?
            .is_some()
        {
            self.audit_change(&rec, actor, "webhook_subscription_deleted", json!({}))
                .await;
        }
        Ok(())
    }

    /// Before a link is unlinked: remove each of its subscriptions at the provider
    /// (best effort: a provider that is down does not keep the user from unlinking;
    /// the subscription then lapses at its expiry) and from the store.
    pub async fn delete_for_link(&self, link: &LinkRecord, actor: Option<&str>) {
        let subs = match self.list(link).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(link = %link.id, error = %e, "cannot list the link's subscriptions to remove them");
                return;
            }
        };
        for rec in subs {
            let at_provider = if rec.status == SubscriptionStatus::Active {
                self.with_caller(link, async |c| c.delete(&rec).await).await
            } else {
                Ok(())
            };
            if let Err(e) = &at_provider {
                tracing::warn!(subscription = %rec.id, error = %e, "could not remove the subscription at the provider (the link is unlinked anyway)");
                self.audit_change(
                    &rec,
                    actor,
                    "webhook_subscription_failed",
                    json!({"during": "unlink", "error": e.to_string()}),
                )
                .await;
            }
            match self
                .store
                .delete_subscription(&rec.company_id, &rec.id)
                .await
            {
                Ok(Some(_)) => {
                    self.audit_change(
                        &rec,
                        actor,
                        "webhook_subscription_deleted",
                        json!({"because": "unlinked", "at_provider": at_provider.is_ok()}),
                    )
                    .await;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(subscription = %rec.id, error = %e, "could not remove the subscription from the store")
                }
            }
        }
    }

    /// One look at what is due: every active subscription expiring within
    /// `renew_before` that no other host holds is renewed.
    pub async fn sweep(&self) {
        let due = self
            .store
            .subscriptions_due(now() + self.renew_before(), SWEEP_BATCH)
            .await;
        match due {
            Ok(due) => {
                for rec in due {
                    self.renew_leased(&rec, Why::Due).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the subscription renewer cannot list what is due")
            }
        }
        self.sweeps.fetch_add(1, Ordering::Relaxed);
    }

    fn renew_before(&self) -> time::Duration {
        time::Duration::try_from(self.timing.renew_before).unwrap_or(time::Duration::HOUR)
    }

    /// Renew (or remake) a subscription if this host takes its lease and it is still
    /// needed once the lease is held (the record is re-read by taking it).
    async fn renew_leased(&self, rec: &SubscriptionRecord, why: Why) {
        if !self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(rec.id.clone())
        {
            return;
        }
        let _in_flight = InFlight {
            set: &self.in_flight,
            id: rec.id.clone(),
        };
        let until =
            now() + time::Duration::try_from(self.timing.lease).unwrap_or(time::Duration::MINUTE);
        let leased = match self
            .store
            .try_lease_subscription(&rec.company_id, &rec.id, &self.owner, until)
            .await
        {
            Ok(Some(l)) => l,
            // Another host holds it (or it is gone): that host does it.
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(subscription = %rec.id, error = %e, "cannot take the renewal lease");
                return;
            }
        };
        let needed = leased.status == SubscriptionStatus::Active
            && match why {
                Why::Due => leased.expires_at < now() + self.renew_before(),
                Why::Removed(ref id) | Why::Reauthorize(ref id) => {
                    leased.provider_id.as_deref() == Some(id.as_str())
                }
            };
        if !needed {
            self.release(leased).await;
            return;
        }
        let link = match self
            .store
            .get_link(&leased.company_id, &leased.link_id)
            .await
        {
            Ok(Some(l)) => l,
            Ok(None) => {
                // Unlinked meanwhile: nothing to renew with; unlinking removes it.
                self.release(leased).await;
                return;
            }
            Err(e) => {
                tracing::warn!(subscription = %leased.id, error = %e, "cannot read the subscription's link");
                self.release(leased).await;
                return;
            }
        };
        let channel = new_object_id();
        let attempt = match why {
            // Graph removed it: only a new one helps.
            Why::Removed(_) => Err(SubscriptionError::Gone(
                "Graph sent subscriptionRemoved".into(),
            )),
            Why::Due | Why::Reauthorize(_) => {
                self.with_caller(&link, async |c| c.renew(&leased, &channel).await)
                    .await
            }
        };
        let (outcome, result) = match attempt {
            Ok(g) => (Outcome::Renewed, Ok(g)),
            Err(SubscriptionError::Gone(reason)) => {
                tracing::info!(subscription = %leased.id, %reason, "the provider lost the subscription; making it again");
                let made = self
                    .with_caller(&link, async |c| c.create(&leased, &channel).await)
                    .await;
                (
                    Outcome::Recreated,
                    made.map_err(|e| format!("{reason}; making it again failed: {e}")),
                )
            }
            Err(e) => (Outcome::Renewed, Err(e.to_string())),
        };
        let mut updated = leased.clone();
        updated.lease_owner = None;
        updated.lease_until = None;
        let (outcome, action, detail) = match result {
            Ok(g) => {
                updated.provider_id = g.provider_id;
                updated.provider_resource_id = g.resource_id;
                updated.expires_at = g.expires_at;
                updated.last_error = None;
                updated.renewals += 1;
                let action = match outcome {
                    Outcome::Recreated => "webhook_subscription_recreated",
                    _ => "webhook_subscription_renewed",
                };
                (
                    outcome,
                    action,
                    json!({"previous_provider_id": leased.provider_id, "previous_expires_at": leased.expires_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()}),
                )
            }
            Err(error) if outcome == Outcome::Recreated || leased.expires_at <= now() => {
                // The provider no longer has it (or it lapsed) and it could not be made
                // again: renewing stops until someone makes it anew.
                updated.status = SubscriptionStatus::Lost;
                updated.last_error = Some(error.clone());
                (
                    Outcome::Lost,
                    "webhook_subscription_lost",
                    json!({"error": error}),
                )
            }
            Err(error) => {
                updated.last_error = Some(error.clone());
                (
                    Outcome::Failed,
                    "webhook_subscription_renewal_failed",
                    json!({"error": error}),
                )
            }
        };
        self.count(&leased.service, outcome);
        match self
            .store
            .update_subscription_cas(updated.clone(), leased.version)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                // The lease ran out and another host took over (or it was deleted):
                // that host's write stands.
                tracing::warn!(subscription = %leased.id, "the subscription changed while it was renewed (lease lost)");
                return;
            }
            Err(e) => {
                tracing::error!(subscription = %leased.id, error = %e, "cannot save the renewed subscription; the lease runs out and it is tried again");
                return;
            }
        }
        // A failure that repeats the last one (a provider down for hours, a link that
        // needs reconnecting) is audited once, not at every look.
        if outcome == Outcome::Failed && leased.last_error == updated.last_error {
            return;
        }
        if outcome == Outcome::Lost {
            tracing::error!(subscription = %leased.id, link = %leased.link_id, "webhook subscription lost");
            self.events
                .lost(&link, &updated, updated.last_error.as_deref().unwrap_or(""))
                .await;
        }
        self.audit_change(&updated, None, action, detail).await;
    }

    /// Give a lease back unchanged.
    async fn release(&self, leased: SubscriptionRecord) {
        let version = leased.version;
        let mut r = leased;
        r.lease_owner = None;
        r.lease_until = None;
        if let Err(e) = self.store.update_subscription_cas(r, version).await {
            tracing::warn!(error = %e, "cannot release a subscription lease (it runs out)");
        }
    }

    /// React to a verified Graph lifecycle notification for a link: `subscriptionRemoved`
    /// makes the subscription again, `reauthorizationRequired` renews it (Graph accepts a
    /// renewal as the reauthorization); `missed` needs nothing here (it is stored and
    /// audited as an event).
    pub async fn lifecycle(&self, link: &LinkRecord, event: &str, subscription_id: &str) {
        let why = match event {
            "subscriptionRemoved" => Why::Removed(subscription_id.to_string()),
            "reauthorizationRequired" => Why::Reauthorize(subscription_id.to_string()),
            _ => return,
        };
        let subs = match self.list(link).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(link = %link.id, error = %e, "cannot list the link's subscriptions");
                return;
            }
        };
        for rec in subs
            .iter()
            .filter(|r| r.provider_id.as_deref() == Some(subscription_id))
        {
            self.renew_leased(rec, why.clone()).await;
        }
    }

    /// Sweep every `check_every` (for `serve`).
    pub fn spawn_renewer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.timing.check_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                this.sweep().await;
            }
        })
    }

    fn count(&self, service: &str, outcome: Outcome) {
        let provider = if service == "microsoft" {
            "microsoft"
        } else {
            "google"
        };
        *self
            .renewals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((provider, outcome))
            .or_default() += 1;
    }

    /// The renewer's metrics, in the text exposition format.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write;
        let mut out = String::from(
            "# HELP flow8_webhook_subscription_renewals_total Webhook subscription renewals, by provider and outcome (renewed, recreated, failed, lost).\n# TYPE flow8_webhook_subscription_renewals_total counter\n",
        );
        for ((p, o), n) in self
            .renewals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "flow8_webhook_subscription_renewals_total{{provider=\"{p}\",outcome=\"{}\"}} {n}",
                o.as_str()
            );
        }
        let _ = write!(
            out,
            "# HELP flow8_webhook_subscription_sweeps_total Times this host looked for subscriptions due for renewal.\n# TYPE flow8_webhook_subscription_sweeps_total counter\nflow8_webhook_subscription_sweeps_total {}\n",
            self.sweeps.load(Ordering::Relaxed)
        );
        out
    }

    async fn audit_change(
        &self,
        rec: &SubscriptionRecord,
        actor: Option<&str>,
        action: &str,
        detail: Value,
    ) {
        let mut after = json!({
            "link_id": rec.link_id,
            "service": rec.service,
            "resource": rec.resource,
            "provider_id": rec.provider_id,
            "status": rec.status.as_str(),
            "expires_at": rec.expires_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        });
        if let (Some(a), Value::Object(d)) = (after.as_object_mut(), detail) {
            a.extend(d);
        }
        self.audit
            .record(entry(
                &rec.company_id,
                actor,
                action,
                "webhook_subscription",
                &rec.id,
                Value::Null,
                after,
            ))
            .await;
    }
}

/// Why a subscription is being renewed.
#[derive(Debug, Clone)]
enum Why {
    /// It expires within the renewal window.
    Due,
    /// Graph removed the subscription with this id.
    Removed(String),
    /// Graph asks for the subscription with this id to be reauthorized.
    Reauthorize(String),
}

/// A new per-link webhook secret: 32 random bytes, URL-safe, usable as Graph's
/// `clientState` (at most 128 characters) and Google's channel token (at most 256).
pub fn new_webhook_secret() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(service: &str) -> LinkRecord {
        let vault = Vault::new(crate::vault::MasterKey::generate());
        let t = now();
        LinkRecord {
            access_token: vault.encrypt("t", &sealing::link("c", "l", sealing::ACCESS_TOKEN)),
            id: "l".into(),
            user_id: "u".into(),
            company_id: "c".into(),
            integration_type: service.into(),
            refresh_token: None,
            token_expiry: None,
            scopes: vec![],
            provider_user_id: String::new(),
            provider_user_email: String::new(),
            provider_metadata: Value::Null,
            status: crate::store::LinkStatus::Active,
            status_reason: None,
            shared_with: vec![],
            webhook_signature_secret: None,
            refresh_lease_owner: None,
            refresh_lease_until: None,
            refresh_retry_after: None,
            version: 0,
            created_at: t,
            updated_at: t,
        }
    }

    fn req(resource: &str, change: Option<&str>, topic: Option<&str>) -> NewSubscription {
        NewSubscription {
            resource: resource.into(),
            change_type: change.map(str::to_string),
            topic_name: topic.map(str::to_string),
        }
    }

    #[test]
    fn requests_are_checked_against_the_links_provider() {
        let ms = link("microsoft");
        let g = link("google");
        let ok = |l: &LinkRecord, r: NewSubscription| SubscriptionService::check(l, &r).is_ok();
        assert!(ok(
            &ms,
            req(
                "me/mailFolders('Inbox')/messages",
                Some("created,updated"),
                None
            )
        ));
        assert!(ok(&ms, req("me/drive/root", None, None)));
        assert!(!ok(&ms, req("", None, None)));
        assert!(!ok(&ms, req("https://evil.example/x", None, None)));
        assert!(!ok(&ms, req("me/../../x", None, None)));
        assert!(!ok(&ms, req("me/messages", Some("created,exploded"), None)));
        assert!(!ok(&ms, req("me/messages\n", None, None)));
        assert!(!ok(&ms, req(&"a".repeat(MAX_RESOURCE + 1), None, None)));
        assert!(ok(&g, req("drive/changes", None, None)));
        assert!(ok(&g, req("drive/files/1AbC-d_9", None, None)));
        assert!(!ok(&g, req("drive/files/../x", None, None)));
        assert!(!ok(&g, req("drive/files/", None, None)));
        assert!(ok(&g, req("gmail", None, Some("projects/p1/topics/t1"))));
        assert!(!ok(&g, req("gmail", None, None)));
        assert!(!ok(&g, req("drive/changes", Some("created"), None)));
        assert!(!ok(&g, req("calendar", None, None)));
        assert!(matches!(
            SubscriptionService::check(&link("slack"), &req("x", None, None)),
            Err(SubscriptionError::NotConfigured(_))
        ));
    }

    #[test]
    fn secrets_fit_both_providers() {
        let s = new_webhook_secret();
        assert!(s.len() <= 128 && s.len() >= 40, "{s}");
        assert_ne!(s, new_webhook_secret());
    }
}
