//! The OAuth2 lifecycle, owned by the host so modules never do it. The `oauth2` crate
//! speaks the protocol; this module keeps the state around it. By concern:
//!
//! | file | what |
//! | --- | --- |
//! | `client.rs` | the edge where the `oauth2` crate meets a provider: our HTTP client, provider dialects (Slack), error mapping |
//! | `authorize.rs` | connect sessions and authorization requests: single-use, expiring, user-bound `state`, PKCE |
//! | `callback.rs` | the provider's redirect: code exchange, identity, the new link (tokens sealed) |
//! | `refresh.rs` | a step's token, refreshed before expiry or when the provider refused it, by one refresher per link (single flight, lease in the store re-read after taking it, compare-and-set write, journal), and the background refresher |
//! | `discovery.rs` | OpenID Connect discovery for the generic OpenID provider profile |
//! | `journal.rs` | refresh answers kept on disk until the store has them |
//! | `revoke.rs` | unlink, and revocation at the provider |
//! | `health.rs` | the link test (flow8's "Testing Connectivity") |
//! | `events.rs` | what happened to links, for whoever the composition root wires in (the audit log) |
//! | `ownership.rs` | who may use, share and delete a link inside its company |
//! | `providers.rs` | the providers and the operator's configuration of them |

mod authorize;
mod callback;
mod client;
pub mod discovery;
pub mod events;
mod health;
pub mod journal;
pub mod ownership;
pub mod providers;
mod refresh;
mod revoke;

pub use authorize::{BINDING_COOKIE, STATE_TTL, new_browser_binding};
pub use client::http_client;
pub use events::{NoEvents, OAuthEvent, OAuthEvents, RefreshCause};
pub use refresh::SweepReport;

use crate::error::ErrorName;
use crate::store::read_cache::{ReadCache, Records};
use crate::store::{AnyStore, LinkRecord, Store, StoreError, new_object_id};
use crate::vault::{Envelope, SealContext, Secret, Vault};
use providers::Provider;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why an OAuth operation failed; `name()` is the flow8 error name.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// No such service, or the operator did not configure it.
    #[error("OAuth service `{0}` is not configured on this host")]
    NotConfigured(String),
    /// The `state` is unknown, used, expired, or not the caller's (started in another
    /// browser).
    #[error(
        "the authorization request is unknown, already used, expired or was started in another browser; start again"
    )]
    InvalidState,
    /// The callback came from a browser that holds no binding cookie: not the browser
    /// that started the connection.
    #[error(
        "this browser did not start the connection (it sent no `flow8_oauth_binding` cookie); open the connect link in the browser you sign in with and start again"
    )]
    NotThisBrowser,
    /// The user (or provider) refused consent.
    #[error("the authorization was refused: {0}")]
    AccessDenied(String),
    /// The provider refused the code or refresh token.
    #[error("the provider refused the grant: {0}")]
    InvalidGrant(String),
    /// The link was revoked at the provider; the user must reconnect.
    #[error("the {0} connection was revoked; reconnect it")]
    TokenRevoked(String),
    /// The link is marked `needs_reconnect`, for a reason it keeps (its
    /// `status_reason`: e.g. the provider refused the refresh token, and why that
    /// provider does).
    #[error("the {service} connection needs reconnecting: {reason}")]
    NeedsReconnect {
        /// The link's service.
        service: String,
        /// Why, in words the user can act on.
        reason: String,
    },
    /// No such link for this company.
    #[error("no such link")]
    NotFound,
    /// The provider answered with an error it names (RFC 6749 §4.1.2.1, §5.2: its
    /// `error` and `error_description` lead the message), other than a refusal of
    /// consent or of the grant.
    #[error("the provider answered with an error: {0}")]
    Upstream(String),
    /// The provider answered with something unexpected or could not be reached.
    #[error("the provider failed: {0}")]
    Provider(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sealed token could not be opened.
    #[error("a stored token cannot be decrypted: {0}")]
    Vault(String),
}

impl OAuthError {
    /// The flow8 error name.
    pub fn name(&self) -> ErrorName {
        match self {
            OAuthError::NotConfigured(_) => ErrorName::NotConfigured,
            OAuthError::InvalidState | OAuthError::NotThisBrowser => ErrorName::InvalidState,
            OAuthError::AccessDenied(_) => ErrorName::AccessDenied,
            OAuthError::InvalidGrant(_) => ErrorName::InvalidGrant,
            OAuthError::TokenRevoked(_) | OAuthError::NeedsReconnect { .. } => {
                ErrorName::TokenRevoked
            }
            OAuthError::NotFound => ErrorName::NotFound,
            OAuthError::Upstream(_) => ErrorName::UpstreamError,
            OAuthError::Provider(_) => ErrorName::ProviderError,
            OAuthError::Store(StoreError::Conflict(_)) => ErrorName::Conflict,
            OAuthError::Store(_) => ErrorName::StoreUnavailable,
            OAuthError::Vault(_) => ErrorName::VaultError,
        }
    }
}

/// The OAuth service of one host process.
pub struct OAuthService {
    store: Arc<AnyStore>,
    vault: Arc<Vault>,
    providers: BTreeMap<String, Provider>,
    http: reqwest::Client,
    /// Refresh when the token expires within this window (flow8: 1 hour).
    pub refresh_window: Duration,
    /// How long a refresh lease holds.
    pub lease: Duration,
    /// This process's name on the leases it takes.
    owner: String,
    /// One refresh at a time per link in this process.
    single_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    journal: Option<journal::RefreshJournal>,
    events: Arc<dyn OAuthEvents>,
    /// Link records steps read, kept a short while (see [`OAuthService::with_link_cache`]).
    links: ReadCache<(String, String), LinkRecord>,
}

impl OAuthService {
    /// A service over configured providers, telling nobody what happens (see
    /// [`OAuthService::with_events`]).
    pub fn new(
        store: Arc<AnyStore>,
        vault: Arc<Vault>,
        providers: BTreeMap<String, Provider>,
    ) -> OAuthService {
        OAuthService {
            store,
            vault,
            providers,
            http: client::http_client(),
            refresh_window: Duration::from_secs(3600),
            lease: Duration::from_secs(30),
            owner: new_object_id(),
            single_flight: Mutex::new(HashMap::new()),
            journal: None,
            events: Arc::new(NoEvents),
            links: ReadCache::new(Records::Links, Duration::ZERO),
        }
    }

    /// Let a step use a link record read for an earlier step less than `lifetime` ago
    /// (`record_cache_seconds`; zero, the default: read the store every time), unless a
    /// link write went through this host's store since. Only the record is kept, its
    /// tokens sealed; a token inside the refresh window, or one the provider refused,
    /// is always handled on the record read afresh. So a refresh by another host is seen
    /// on this host's next refresh or within `lifetime`, and a link unlinked through
    /// another host or the CLI serves no step here once `lifetime` has passed.
    pub fn with_link_cache(mut self, lifetime: Duration) -> OAuthService {
        self.links = ReadCache::new(Records::Links, lifetime);
        self
    }

    /// Keep refresh answers in a local journal until the store has them (see
    /// [`journal`]): a store outage or a crash right after a provider rotated the refresh
    /// token then loses nothing.
    pub fn with_journal(mut self, dir: impl Into<std::path::PathBuf>) -> OAuthService {
        self.journal = Some(journal::RefreshJournal::at(dir));
        self
    }

    /// Tell `events` what happens to links (the composition root wires the audit log).
    pub fn with_events(mut self, events: Arc<dyn OAuthEvents>) -> OAuthService {
        self.events = events;
        self
    }

    /// The configured provider of a service.
    pub fn provider(&self, service: &str) -> Result<&Provider, OAuthError> {
        self.providers
            .get(service)
            .ok_or_else(|| OAuthError::NotConfigured(service.to_string()))
    }

    /// Services the operator configured.
    pub fn services(&self) -> Vec<String> {
        self.providers.keys().cloned().collect()
    }

    /// The provider of a service, spoken to through the `oauth2` crate.
    fn client<'a>(&'a self, p: &'a Provider) -> client::ProviderClient<'a> {
        client::ProviderClient::new(&self.http, p)
    }

    /// A company's link, or `NotFound`.
    async fn link(&self, company_id: &str, link_id: &str) -> Result<LinkRecord, OAuthError> {
        self.store
            .get_link(company_id, link_id)
            .await?
            .ok_or(OAuthError::NotFound)
    }

    /// A company's link for a step: the kept record while it is fresh (see
    /// [`OAuthService::with_link_cache`]), else the store's.
    async fn link_for_step(
        &self,
        company_id: &str,
        link_id: &str,
    ) -> Result<LinkRecord, OAuthError> {
        let key = (company_id.to_string(), link_id.to_string());
        let read = self.store.get_link(company_id, link_id);
        match self.links.get_or_read(&self.store, key, read).await? {
            Some(link) => Ok(LinkRecord::clone(&link)),
            None => Err(OAuthError::NotFound),
        }
    }

    /// Open a sealed token where it was read from (a link's token, a pending
    /// authorization's verifier: see `crate::store::sealing`).
    fn open(&self, sealed: &Envelope, context: &SealContext<'_>) -> Result<Secret, OAuthError> {
        self.vault
            .decrypt(sealed, context)
            .map_err(|e| OAuthError::Vault(e.to_string()))
    }

    /// Tell the wired sink.
    async fn emit(&self, event: OAuthEvent) {
        self.events.emit(event).await;
    }
}

#[cfg(test)]
mod tests;
