//! Writing audit entries in flow8's shape. A failed audit write is logged loudly but
//! does not undo the operation it records (which has already happened).
//!
//! Steps write an entry per credential use, so on the hot path entries go through
//! `AuditWriter`: a group commit that writes whatever is queued in one transaction and
//! then answers every waiter, so concurrent steps share one write instead of queueing
//! for the store's write lock one by one.

use crate::oauth::events::{EventFuture, OAuthEvent, OAuthEvents};
use crate::store::AnyStore;
use crate::store::{AuditRecord, LinkRecord, LinkStatus, Store, new_object_id, now};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Entries written per transaction at most.
const BATCH: usize = 512;

/// Times the writer yields to let more entries queue before a write.
const LINGER_YIELDS: usize = 8;

/// Group-committing audit writer.
#[derive(Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<(AuditRecord, oneshot::Sender<()>)>,
}

impl AuditWriter {
    /// Start the writer task for a store.
    pub fn start(store: Arc<AnyStore>) -> AuditWriter {
        let (tx, mut rx) = mpsc::channel::<(AuditRecord, oneshot::Sender<()>)>(4096);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                // Under load, let the other ready tasks (steps finishing at the same
                // moment) queue their entries before writing, so one transaction
                // carries many; an idle host writes at once (a yield returns
                // immediately when nothing else is ready).
                for _ in 0..LINGER_YIELDS {
                    let before = batch.len();
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    if batch.len() >= BATCH || (batch.len() == before && before > 1) {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                let (entries, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                let n = entries.len();
                if let Err(e) = store.insert_audit_batch(entries).await {
                    tracing::error!(error = %e, entries = n, "could not write audit entries");
                }
                for w in waiters {
                    let _ = w.send(());
                }
            }
        });
        AuditWriter { tx }
    }

    /// Record an entry and wait until it is written (with others queued meanwhile).
    pub async fn record(&self, entry: AuditRecord) {
        let (action_type, resource_id) = (entry.action_type.clone(), entry.resource_id.clone());
        let (done, wait) = oneshot::channel();
        if self.tx.send((entry, done)).await.is_err() {
            tracing::error!(%action_type, %resource_id, "the audit writer has stopped");
            return;
        }
        let _ = wait.await;
    }
}

/// The audit log's `resource_type` of a credential: `integration` for an OAuth link
/// (as in flow8's audit example), `component` for an API-key component.
pub fn resource_type(kind: crate::manifest::CredentialKind) -> &'static str {
    match kind {
        crate::manifest::CredentialKind::OauthLink => "integration",
        crate::manifest::CredentialKind::Component => "component",
    }
}

/// An audit entry in flow8's shape, stamped now.
#[allow(clippy::too_many_arguments)]
pub fn entry(
    company_id: &str,
    user_id: Option<&str>,
    action_type: &str,
    resource_type: &str,
    resource_id: &str,
    before_state: Value,
    after_state: Value,
) -> AuditRecord {
    AuditRecord {
        id: new_object_id(),
        company_id: company_id.into(),
        user_id: user_id.map(str::to_string),
        action_type: action_type.into(),
        resource_type: resource_type.into(),
        resource_id: resource_id.into(),
        before_state,
        after_state,
        timestamp: now(),
    }
}

/// Record an integration event.
#[allow(clippy::too_many_arguments)]
pub async fn record(
    store: &AnyStore,
    company_id: &str,
    user_id: Option<&str>,
    action_type: &str,
    resource_type: &str,
    resource_id: &str,
    before_state: Value,
    after_state: Value,
) {
    let entry = entry(
        company_id,
        user_id,
        action_type,
        resource_type,
        resource_id,
        before_state,
        after_state,
    );
    if let Err(e) = store.insert_audit(entry).await {
        tracing::error!(error = %e, action_type, resource_id, "could not write an audit entry");
    }
}

/// The audit entry an OAuth event is recorded as, in flow8's shape; None for events the
/// audit log does not keep (refreshes, revocations: the link's own state shows them).
pub fn oauth_entry(event: &OAuthEvent) -> Option<AuditRecord> {
    // The owner too: an admin's unlink of another user's link names both.
    let described = |l: &LinkRecord| json!({"integration_type": l.integration_type, "provider_user_id": l.provider_user_id, "scopes": l.scopes, "owner": l.user_id, "shared_with": l.shared_with});
    Some(match event {
        OAuthEvent::Linked { link } => entry(
            &link.company_id,
            Some(&link.user_id),
            "integration_linked",
            "integration",
            &link.id,
            json!({}),
            described(link),
        ),
        OAuthEvent::Unlinked { link, actor } => entry(
            &link.company_id,
            actor.as_deref(),
            "integration_unlinked",
            "integration",
            &link.id,
            described(link),
            json!({}),
        ),
        OAuthEvent::NeedsReconnect { link, .. } => entry(
            &link.company_id,
            None,
            "integration_needs_reconnect",
            "integration",
            &link.id,
            json!({"status": LinkStatus::Active}),
            json!({"status": LinkStatus::NeedsReconnect, "integration_type": link.integration_type}),
        ),
        OAuthEvent::Refreshed { .. }
        | OAuthEvent::RefreshFailed { .. }
        | OAuthEvent::Revoked { .. } => return None,
    })
}

/// The audit log as the OAuth service's event sink (wired by the composition root).
impl OAuthEvents for AuditWriter {
    fn emit(&self, event: OAuthEvent) -> EventFuture<'_> {
        Box::pin(async move {
            if let Some(entry) = oauth_entry(&event) {
                self.record(entry).await;
            }
        })
    }
}
