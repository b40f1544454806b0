//! What happens to links, told to whoever the composition root wires in (the audit
//! log, in `app.rs`). The OAuth service knows nothing of the audit log or the HTTP
//! server above it: it emits an [`OAuthEvent`] through the [`OAuthEvents`] hook it
//! was given, and awaits it, so an entry is written before the operation answers.

use crate::store::LinkRecord;
use std::future::Future;
use std::pin::Pin;

/// Why a link's tokens were renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshCause {
    /// The access token expires within the refresh window.
    Expiring,
    /// The provider refused the access token before it expired.
    Rejected,
}

/// Something that happened to a link. Links carry sealed tokens only.
#[derive(Debug, Clone)]
pub enum OAuthEvent {
    /// A user connected an account: the new link.
    Linked {
        /// The link as stored.
        link: LinkRecord,
    },
    /// The link's tokens were renewed and stored.
    Refreshed {
        /// The link as stored now.
        link: LinkRecord,
        /// Why.
        cause: RefreshCause,
    },
    /// A refresh failed for another reason than a refused grant (the provider is
    /// down, the store did not take the answer): the link is unchanged.
    RefreshFailed {
        /// The link as it was.
        link: LinkRecord,
        /// What failed.
        error: String,
    },
    /// The provider refused the refresh token and this host marked the link
    /// `needs_reconnect` (told once: only by the host whose write marked it).
    NeedsReconnect {
        /// The link as it was before (still `active`).
        link: LinkRecord,
        /// What the provider said.
        reason: String,
    },
    /// A link was deleted.
    Unlinked {
        /// The link as it was.
        link: LinkRecord,
        /// Who deleted it, when known.
        actor: Option<String>,
    },
    /// The provider confirmed the revocation of a deleted link's token.
    Revoked {
        /// The deleted link.
        link: LinkRecord,
    },
}

/// A future an event sink returns.
pub type EventFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Where the OAuth service tells what happened. A sink's failure is its own business
/// (it logs): the operation it reports has already happened.
pub trait OAuthEvents: Send + Sync {
    /// Take one event.
    fn emit(&self, event: OAuthEvent) -> EventFuture<'_>;
}

/// The sink of a service nobody listens to (unit tests, tools).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl OAuthEvents for NoEvents {
    fn emit(&self, _event: OAuthEvent) -> EventFuture<'_> {
        Box::pin(std::future::ready(()))
    }
}

/// Several sinks, told in order (the audit log, then the lifecycle events delivered to
/// flow8).
pub struct Fanout(pub Vec<std::sync::Arc<dyn OAuthEvents>>);

impl OAuthEvents for Fanout {
    fn emit(&self, event: OAuthEvent) -> EventFuture<'_> {
        Box::pin(async move {
            for sink in &self.0 {
                sink.emit(event.clone()).await;
            }
        })
    }
}
