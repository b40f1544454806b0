//! Where tokens get refreshed. A step's token is refreshed before it is used when it
//! expires within the refresh window, or at once when the provider refused it; both go
//! through one path ([`OAuthService::refresh`]) so there is exactly one refresher per
//! link, even under concurrency and across host processes:
//!
//! 1. a single flight per link in this process;
//! 2. the link's journaled refresh, if any, reaches the store first (its refresh token
//!    is already spent);
//! 3. a lease in the store, and the link re-read after taking it;
//! 4. the refresh grant (through `client.rs`); `invalid_grant` marks the link
//!    `needs_reconnect` once, not a retry storm;
//! 5. the answer synced to the journal, then a compare-and-set write to the store.
//!
//! The background refresher renews links nearing expiry through the same path, so steps
//! rarely wait for a refresh.

use super::journal::JournalEntry;
use super::providers::Provider;
use super::{OAuthError, OAuthEvent, OAuthService, RefreshCause};
use crate::catalogue::oauth::RefreshPolicy;
use crate::store::{LinkRecord, LinkStatus, Store, now};
use crate::vault::{Envelope, SealContext, Secret};
use std::sync::Arc;
use std::time::Duration;

/// Why a link whose token expired without a refresh token needs reconnecting.
/// The error for a link marked `needs_reconnect`: with its stored reason when it has
/// one (links marked before reasons were kept have none).
fn revoked(link: LinkRecord) -> OAuthError {
    match link.status_reason {
        Some(reason) => OAuthError::NeedsReconnect {
            service: link.integration_type,
            reason,
        },
        None => OAuthError::TokenRevoked(link.integration_type),
    }
}

pub(super) const EXPIRED: &str =
    "the access token expired and there is no refresh token to renew it";

/// Links a sweep renews at once.
const SWEEP_CONCURRENCY: usize = 8;

/// Due links a background sweep claims at a time (leases in the store); a sweep claims
/// again while a batch was full, so one tick renews every due link it can. Small
/// enough that the last link of a batch is reached well inside the claim's lease even
/// on a slow store or provider (a link reached later is leased again first, or left
/// to the host that claimed it meanwhile); large enough that claiming is a small part
/// of the work.
const BACKGROUND_REFRESH_BATCH: u32 = 8 * SWEEP_CONCURRENCY as u32;

/// A link a sweep could not renew (the provider failed or refused, the token could not
/// be saved) is claimed by no sweep, on any host, for this long (the link's
/// `refresh_retry_after`), so links that keep failing neither hold up the others nor
/// are asked for again and again. Steps still refresh it when they need to.
const SWEEP_BACKOFF: Duration = Duration::from_secs(300);

/// What one background sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Links claimed whose token now expires beyond the refresh window (renewed by
    /// this sweep, or meanwhile by a step or another host).
    pub fresh: usize,
    /// Links claimed and not renewed: no sweep claims them for [`SWEEP_BACKOFF`].
    pub not_renewed: usize,
    /// Links claimed whose lease ran out while they waited their turn in the batch and
    /// that another host had leased by then: left to that host.
    pub handed_over: usize,
}

/// What became of one link a sweep claimed.
pub(super) enum Claimed {
    Fresh,
    NotRenewed,
    HandedOver,
}

/// Why a link is being refreshed, and so when a refresh is no longer needed.
#[derive(Clone, Copy)]
enum Need<'a> {
    /// The access token expires within the refresh window.
    Expiring,
    /// The provider refused this access token.
    Rejected(&'a Secret),
}

impl Need<'_> {
    fn cause(&self) -> RefreshCause {
        match self {
            Need::Expiring => RefreshCause::Expiring,
            Need::Rejected(_) => RefreshCause::Rejected,
        }
    }
}

impl OAuthService {
    /// The link's access token for a step of `company_id`, refreshed first when it
    /// expires within the refresh window.
    pub async fn access_token(
        &self,
        company_id: &str,
        link_id: &str,
    ) -> Result<(Secret, LinkRecord), OAuthError> {
        let link = self.link_for_step(company_id, link_id).await?;
        let link = self.refresh(link, Need::Expiring).await?;
        let token = self.open(&link.access_token, &link.access_token_context())?;
        Ok((token, link))
    }

    /// Refresh a link whose access token the provider just refused (`rejected`), unless
    /// another refresher already replaced it; the token to use now.
    pub async fn force_refresh(
        &self,
        company_id: &str,
        link_id: &str,
        rejected: &Secret,
    ) -> Result<Secret, OAuthError> {
        let link = self.link(company_id, link_id).await?;
        let link = self.refresh(link, Need::Rejected(rejected)).await?;
        self.open(&link.access_token, &link.access_token_context())
    }

    /// Does the access token expire within the refresh window?
    fn expires_soon(&self, link: &LinkRecord) -> bool {
        link.token_expiry.is_some_and(|t| {
            t - now()
                < time::Duration::try_from(self.refresh_window).unwrap_or(time::Duration::HOUR)
        })
    }

    /// Has the link's access token expired with no way to refresh it (no refresh token,
    /// or a provider whose tokens are not refreshed)? Such a link needs reconnecting.
    pub(super) fn expired_beyond_refresh(&self, link: &LinkRecord) -> bool {
        if link.status != LinkStatus::Active || link.token_expiry.is_none_or(|t| t > now()) {
            return false;
        }
        match self.provider(&link.integration_type) {
            Ok(p) => p.defaults.refresh != RefreshPolicy::Auto || link.refresh_token.is_none(),
            // A provider no longer configured may come back; only a link without a
            // refresh token is dead whatever the configuration.
            Err(_) => link.refresh_token.is_none(),
        }
    }

    /// Is the refresh still needed for the link as the store holds it now?
    fn still_needed(&self, link: &LinkRecord, need: Need<'_>) -> Result<bool, OAuthError> {
        Ok(match need {
            Need::Expiring => self.expires_soon(link),
            // Another refresher may have replaced the refused token meanwhile.
            Need::Rejected(rejected) => {
                &self.open(&link.access_token, &link.access_token_context())? == rejected
            }
        })
    }

    fn flight(&self, link_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.single_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(link_id.to_string())
            .or_default()
            .clone()
    }

    /// The one refresh path: the link as it should be used now, refreshed if `need`
    /// still holds once this caller is the link's only refresher.
    async fn refresh(&self, link: LinkRecord, need: Need<'_>) -> Result<LinkRecord, OAuthError> {
        if link.status == LinkStatus::NeedsReconnect {
            return Err(revoked(link));
        }
        let p = self.provider(&link.integration_type)?;
        let refreshable = p.defaults.refresh == RefreshPolicy::Auto && link.refresh_token.is_some();
        match need {
            // An access token that has expired with no way to renew it: only a
            // reconnection helps, and the link says so from now on.
            Need::Expiring if self.expired_beyond_refresh(&link) => {
                return Err(self.mark_needs_reconnect(link, EXPIRED.into()).await);
            }
            // Long-lived tokens are used until the provider refuses them...
            Need::Expiring if !refreshable || !self.expires_soon(&link) => return Ok(link),
            // ...and then only a reconnection helps.
            Need::Rejected(_) if !refreshable => {
                return Err(OAuthError::TokenRevoked(link.integration_type));
            }
            _ => {}
        }
        // One refresher per link in this process...
        let flight = self.flight(&link.id);
        let _guard = flight.lock().await;
        self.settle_journal(&link.id).await?;
        let deadline = tokio::time::Instant::now() + self.lease + Duration::from_secs(5);
        loop {
            let current = self.link(&link.company_id, &link.id).await?;
            if current.status == LinkStatus::NeedsReconnect {
                return Err(revoked(current));
            }
            if !self.still_needed(&current, need)? {
                return Ok(current);
            }
            // ...and across processes: a lease in the store, re-read after taking it.
            let until = now() + self.lease;
            if let Some(leased) = self
                .store
                .try_lease_link(&link.company_id, &link.id, &self.owner, until)
                .await?
            {
                return self.refresh_leased(p, leased, need).await;
            }
            if matches!(need, Need::Expiring) && current.token_expiry.is_some_and(|t| t > now()) {
                // Someone else is refreshing; the current token still works.
                return Ok(current);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(OAuthError::Provider(
                    "another host is refreshing this link and has not finished".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Refresh a link this process holds the lease of.
    async fn refresh_leased(
        &self,
        p: &Provider,
        leased: LinkRecord,
        need: Need<'_>,
    ) -> Result<LinkRecord, OAuthError> {
        if !self.still_needed(&leased, need)? {
            return Ok(leased);
        }
        let refresh = match &leased.refresh_token {
            Some(sealed) => self.open(sealed, &leased.refresh_token_context())?,
            None => return Ok(leased),
        };
        let client = self.client(p);
        let mut attempt = 0;
        let tokens = loop {
            attempt += 1;
            match client.refresh(&refresh).await {
                Ok(t) => break t,
                Err(OAuthError::InvalidGrant(refusal)) => {
                    // Say what the provider is known to mean by it (Google's 7-day
                    // expiry of apps in "Testing"), so the user knows what to fix.
                    let mut reason = format!(
                        "{} refused the refresh token ({refusal})",
                        p.defaults.display_name
                    );
                    if let Some(hint) = &p.defaults.refresh_refused_hint {
                        reason.push_str(". ");
                        reason.push_str(hint.trim_end_matches('.'));
                    }
                    return Err(self.mark_needs_reconnect(leased, reason).await);
                }
                Err(e) if attempt < 3 => {
                    tracing::warn!(link = %leased.id, error = %e, attempt, "refresh failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * (1 << attempt))).await;
                }
                Err(e) => {
                    self.emit(OAuthEvent::RefreshFailed {
                        link: leased.clone(),
                        error: e.to_string(),
                    })
                    .await;
                    if leased.token_expiry.is_some_and(|t| t > now()) {
                        // The provider is down but the token still works: use it.
                        return Ok(leased);
                    }
                    return Err(e);
                }
            }
        };
        let t = now();
        let mut updated = leased.clone();
        updated.access_token = self
            .vault
            .encrypt(tokens.access_token.expose(), &leased.access_token_context());
        // A provider that rotates gives a new refresh token; one that does not keeps the old.
        if let Some(r) = &tokens.refresh_token {
            updated.refresh_token = Some(
                self.vault
                    .encrypt(r.expose(), &leased.refresh_token_context()),
            );
        }
        updated.token_expiry = tokens.expiry(t);
        if let Some(s) = tokens.scopes {
            updated.scopes = s;
        }
        updated.refresh_lease_owner = None;
        updated.refresh_lease_until = None;
        updated.refresh_retry_after = None;
        let (updated, ours) = self.save_refreshed(&leased, updated).await?;
        if ours {
            self.emit(OAuthEvent::Refreshed {
                link: updated.clone(),
                cause: need.cause(),
            })
            .await;
        }
        Ok(updated)
    }

    /// The provider refused the refresh token: mark the link once (compare-and-set on
    /// the leased version), and tell it only when this host's write marked it. The
    /// error for the caller.
    pub(super) async fn mark_needs_reconnect(
        &self,
        leased: LinkRecord,
        reason: String,
    ) -> OAuthError {
        let mut dead = leased.clone();
        dead.status = LinkStatus::NeedsReconnect;
        dead.status_reason = Some(reason.clone());
        dead.refresh_lease_owner = None;
        dead.refresh_lease_until = None;
        match self.store.update_link_cas(dead, leased.version).await {
            Ok(true) => {
                tracing::warn!(link = %leased.id, service = %leased.integration_type, %reason, "refresh refused; link needs reconnection");
                let service = leased.integration_type.clone();
                self.emit(OAuthEvent::NeedsReconnect {
                    link: leased,
                    reason: reason.clone(),
                })
                .await;
                OAuthError::NeedsReconnect { service, reason }
            }
            Ok(false) => {
                // The link changed meanwhile (unlinked, or marked by another host):
                // this host marked nothing, so it tells nothing.
                tracing::info!(link = %leased.id, service = %leased.integration_type, %reason, "refresh refused; the link changed meanwhile and is left as it is");
                OAuthError::NeedsReconnect {
                    service: leased.integration_type,
                    reason,
                }
            }
            Err(e) => e.into(),
        }
    }

    /// Persist refreshed tokens before anyone uses them. The old refresh token may be
    /// spent now: the answer goes to the local journal first (synced), then to the
    /// store; the journal entry goes once the store has it. A failing store is retried
    /// (fewer times when the journal holds the answer: it writes it once the store is
    /// back). The link as stored, and whether it holds these tokens by this write.
    async fn save_refreshed(
        &self,
        leased: &LinkRecord,
        updated: LinkRecord,
    ) -> Result<(LinkRecord, bool), OAuthError> {
        let entry = JournalEntry {
            link: updated.clone(),
            spent_refresh_token: leased.refresh_token.clone(),
        };
        let journaled = match &self.journal {
            Some(j) => match j.record(&entry) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(link = %leased.id, error = %e, "cannot write the refresh journal; saving to the store only");
                    false
                }
            },
            None => false,
        };
        let max_tries = if journaled { 2 } else { 5 };
        let mut tries = 0;
        loop {
            tries += 1;
            match self
                .store
                .update_link_cas(updated.clone(), leased.version)
                .await
            {
                Ok(true) => {
                    if let Some(j) = &self.journal {
                        j.remove(&leased.id);
                    }
                    let mut stored = updated;
                    stored.version = leased.version + 1;
                    return Ok((stored, true));
                }
                Ok(false) => {
                    if journaled {
                        // Whoever changed it, the journal decides with the store's
                        // current refresh token whether these tokens still belong there.
                        self.flush_journal_entry(entry).await?;
                        return Ok((self.link(&leased.company_id, &leased.id).await?, false));
                    }
                    return Err(OAuthError::Provider(
                        "the link changed while it was being refreshed (lease lost)".into(),
                    ));
                }
                Err(e) if tries < max_tries => {
                    tracing::error!(link = %leased.id, error = %e, "cannot save refreshed tokens; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                }
                Err(e) => {
                    self.emit(OAuthEvent::RefreshFailed {
                        link: leased.clone(),
                        error: e.to_string(),
                    })
                    .await;
                    return Err(e.into());
                }
            }
        }
    }

    /// Write a journaled refresh to the store if the store still holds the refresh token
    /// it spent; drop it if the link moved on. `Err` while the store cannot take it.
    async fn flush_journal_entry(&self, entry: JournalEntry) -> Result<(), OAuthError> {
        let Some(j) = &self.journal else {
            return Ok(());
        };
        let id = entry.link.id.clone();
        loop {
            let Some(current) = self.store.get_link(&entry.link.company_id, &id).await? else {
                j.remove(&id);
                return Ok(());
            };
            if !self.same_secret(
                &current.refresh_token,
                &entry.spent_refresh_token,
                &current.refresh_token_context(),
            ) {
                // Refreshed or reconnected since: the journaled answer is obsolete.
                j.remove(&id);
                return Ok(());
            }
            let mut link = entry.link.clone();
            link.status = LinkStatus::Active;
            link.refresh_lease_owner = None;
            link.refresh_lease_until = None;
            link.refresh_retry_after = None;
            if self.store.update_link_cas(link, current.version).await? {
                tracing::info!(link = %id, "a journaled refresh reached the store");
                j.remove(&id);
                return Ok(());
            }
        }
    }

    /// Do two sealed values hold the same secret (a key rotation re-seals without
    /// changing it)?
    fn same_secret(
        &self,
        a: &Option<Envelope>,
        b: &Option<Envelope>,
        context: &SealContext<'_>,
    ) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(x), Some(y)) if x == y => true,
            (Some(x), Some(y)) => match (self.open(x, context), self.open(y, context)) {
                (Ok(p), Ok(q)) => p == q,
                _ => false,
            },
            _ => false,
        }
    }

    /// Flush every journaled refresh the store can take now.
    pub async fn flush_journal(&self) {
        let Some(j) = &self.journal else { return };
        for entry in j.pending() {
            let id = entry.link.id.clone();
            if let Err(e) = self.flush_journal_entry(entry).await {
                tracing::warn!(link = %id, error = %e, "a journaled refresh is still waiting for the store");
            }
        }
    }

    /// Flush the journal now and then every `every` (for `serve`).
    pub fn spawn_journal_flusher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                this.flush_journal().await;
            }
        })
    }

    /// Before refreshing a link: its journaled refresh, if any, must reach the store
    /// first (refreshing again would spend a refresh token that is already spent).
    async fn settle_journal(&self, link_id: &str) -> Result<(), OAuthError> {
        if let Some(entry) = self.journal.as_ref().and_then(|j| j.get(link_id)) {
            self.flush_journal_entry(entry).await?;
        }
        Ok(())
    }

    /// Configured services whose tokens are refreshed before they expire (the others
    /// are long-lived: reconnected when revoked, never refreshed).
    fn auto_refresh_services(&self) -> Vec<String> {
        self.providers
            .iter()
            .filter(|(_, p)| p.defaults.refresh == RefreshPolicy::Auto)
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Renew every link nearing expiry that can be renewed now, a few at a time. Links
    /// are claimed from the store in batches (leased to this host in the same write that
    /// finds them free), so hosts sweeping at once share the work without asking for
    /// the same link twice, and links a dead host still holds, or that are backing off
    /// after a failed renewal, are passed over by the store's query instead of filling
    /// a batch. Each is renewed through the same path as a step (single flight, the
    /// journal, a compare-and-set write), so it never races a step.
    pub async fn sweep_due_links(&self) -> SweepReport {
        use futures_util::StreamExt;
        let mut report = SweepReport::default();
        let window = time::Duration::try_from(self.refresh_window).unwrap_or(time::Duration::HOUR);
        let services = self.auto_refresh_services();
        if services.is_empty() {
            return report;
        }
        loop {
            let claimed = match self
                .store
                .claim_links_due_for_refresh(
                    now() + window,
                    &services,
                    &self.owner,
                    now() + self.lease,
                    BACKGROUND_REFRESH_BATCH,
                )
                .await
            {
                Ok(links) => links,
                Err(e) => {
                    tracing::warn!(error = %e, "background refresher cannot claim links");
                    break;
                }
            };
            let more = claimed.len() == BACKGROUND_REFRESH_BATCH as usize;
            let outcomes: Vec<Claimed> = futures_util::stream::iter(claimed)
                .map(|link| self.renew_claimed(link))
                .buffer_unordered(SWEEP_CONCURRENCY)
                .collect()
                .await;
            for outcome in outcomes {
                match outcome {
                    Claimed::Fresh => report.fresh += 1,
                    Claimed::NotRenewed => report.not_renewed += 1,
                    Claimed::HandedOver => report.handed_over += 1,
                }
            }
            // Every link of the batch was renewed or now backs off (or, if even that
            // write failed, is still leased): the next claim reaches past it.
            if !more {
                break;
            }
        }
        report
    }

    /// Renew a link this host's sweep claimed. One not renewed backs off (see
    /// [`SWEEP_BACKOFF`]) and its lease is let go.
    pub(super) async fn renew_claimed(&self, claimed: LinkRecord) -> Claimed {
        match self.refresh_claimed(&claimed).await {
            Ok(Some(link)) if !self.expires_soon(&link) => return Claimed::Fresh,
            Ok(None) => return Claimed::HandedOver,
            Ok(Some(_)) => {}
            Err(e) => {
                tracing::warn!(link = %claimed.id, error = %e, "background refresh failed");
            }
        }
        self.back_off(&claimed).await;
        Claimed::NotRenewed
    }

    /// The claimed link, refreshed if it still needs it; None when another host holds
    /// its lease now (this claim's ran out while the link waited its turn in the batch):
    /// that host renews it.
    async fn refresh_claimed(
        &self,
        claimed: &LinkRecord,
    ) -> Result<Option<LinkRecord>, OAuthError> {
        let p = self.provider(&claimed.integration_type)?;
        let flight = self.flight(&claimed.id);
        let guard = flight.lock().await;
        self.settle_journal(&claimed.id).await?;
        let current = self.link(&claimed.company_id, &claimed.id).await?;
        if current.status != LinkStatus::Active || !self.still_needed(&current, Need::Expiring)? {
            return Ok(Some(current));
        }
        if self.leased_elsewhere(&current) {
            return Ok(None);
        }
        if current.version != claimed.version {
            // A step of this host (same owner) refreshed or changed it meanwhile: the
            // step's path decides whether anything is left to do.
            drop(guard);
            return self.refresh(current, Need::Expiring).await.map(Some);
        }
        // The claim's lease, taken again once half of it has run (a link late in a long
        // batch): two hosts must never both spend its refresh token.
        let left = current
            .refresh_lease_until
            .map_or(time::Duration::ZERO, |t| t - now());
        let leased = if left > time::Duration::try_from(self.lease / 2).unwrap_or_default() {
            current
        } else {
            let until = now() + self.lease;
            match self
                .store
                .try_lease_link(&current.company_id, &current.id, &self.owner, until)
                .await?
            {
                Some(leased) => leased,
                None => return Ok(None),
            }
        };
        self.refresh_leased(p, leased, Need::Expiring)
            .await
            .map(Some)
    }

    /// Does another host hold the link's refresh lease now?
    fn leased_elsewhere(&self, link: &LinkRecord) -> bool {
        link.refresh_lease_until.is_some_and(|t| t > now())
            && link.refresh_lease_owner.as_deref() != Some(self.owner.as_str())
    }

    /// A claimed link was not renewed: no sweep claims it for [`SWEEP_BACKOFF`], and
    /// this host's lease on it goes, so a step elsewhere need not wait for it.
    async fn back_off(&self, claimed: &LinkRecord) {
        let Ok(Some(mut link)) = self.store.get_link(&claimed.company_id, &claimed.id).await else {
            return;
        };
        if link.status != LinkStatus::Active
            || !self.expires_soon(&link)
            || self.leased_elsewhere(&link)
        {
            return;
        }
        let version = link.version;
        let backoff = time::Duration::try_from(SWEEP_BACKOFF).unwrap_or(time::Duration::MINUTE);
        link.refresh_retry_after = Some(now() + backoff);
        if link.refresh_lease_owner.as_deref() == Some(self.owner.as_str()) {
            link.refresh_lease_owner = None;
            link.refresh_lease_until = None;
        }
        // Lost to another writer: that write decides (it renewed, or leased, the link).
        if let Err(e) = self.store.update_link_cas(link, version).await {
            tracing::warn!(link = %claimed.id, error = %e, "cannot record a sweep's back-off; the lease holds the link until it expires");
        }
    }

    /// Sweep the links nearing expiry every `every` (see [`OAuthService::sweep_due_links`]),
    /// so steps rarely wait for a refresh.
    pub fn spawn_background_refresher(
        self: &Arc<Self>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let report = this.sweep_due_links().await;
                if report != SweepReport::default() {
                    tracing::debug!(?report, "background refresh sweep");
                }
            }
        })
    }
}
