//! Storage behind a trait. The host keeps flow8's documents (components, links, OAuth
//! states, API tokens, the audit log, and a few host settings) through `Store`, so the
//! embedded default (`embedded`, SQLite) and MongoDB are interchangeable. A store only
//! ever sees sealed secrets (`vault::Envelope`), never plaintext.
//!
//! The trait's methods return `impl Future + Send` (no `async_trait`), so a server can
//! be generic over the store and still spawn its handlers. Every company-owned record
//! is read, changed and deleted through its company id: another company's id finds,
//! changes and deletes nothing.

pub mod any;
pub mod delivery;
pub mod embedded;
pub mod mongodb;
pub mod read_cache;
pub mod transfer;

pub use any::{AnyStore, StoreLocation};
pub use delivery::DeliveryStore;

use serde::{Deserialize, Serialize};
use std::future::Future;
use time::OffsetDateTime;

/// A new MongoDB ObjectId as 24 lowercase hex characters, laid out as MongoDB's are:
/// 4 bytes of Unix seconds (big-endian), 5 random bytes chosen once per process, and a
/// 3-byte counter, so ids made by one process sort in the order they were made.
pub fn new_object_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    static PROCESS: OnceLock<[u8; 5]> = OnceLock::new();
    static COUNTER: OnceLock<AtomicU32> = OnceLock::new();
    let process = PROCESS.get_or_init(rand::random);
    let count = COUNTER
        .get_or_init(|| AtomicU32::new(rand::random::<u32>() & 0x00ff_ffff))
        .fetch_add(1, Ordering::Relaxed);
    let secs = OffsetDateTime::now_utc().unix_timestamp() as u32;
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&secs.to_be_bytes());
    bytes[4..9].copy_from_slice(process);
    bytes[9..].copy_from_slice(&count.to_be_bytes()[1..]);
    hex::encode(bytes)
}

/// Now, truncated to milliseconds (what both stores keep).
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t)
}

/// An API-key component: flow8's component document. Secret config fields hold
/// `vault::Envelope` objects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentRecord {
    /// Id (ObjectId hex).
    #[serde(rename = "_id")]
    pub id: String,
    /// Owning company.
    pub company_id: String,
    /// Unique within the company, e.g. `aws-s3-prod`.
    pub name: String,
    /// `storage`, `ai`, `smtp`, `ftp`, `http`.
    pub kind: String,
    /// Provider config; secrets sealed.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// The company's default component of its kind.
    #[serde(default)]
    pub is_default: bool,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A connected OAuth2 account: flow8's `DBLink`, tokens sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkRecord {
    /// Id (ObjectId hex).
    #[serde(rename = "_id")]
    pub id: String,
    /// The user who connected it.
    pub user_id: String,
    /// Owning company.
    pub company_id: String,
    /// `slack`, `microsoft`, `google`, ...
    pub integration_type: String,
    /// Sealed access token.
    pub access_token: flow8_vault::Envelope,
    /// Sealed refresh token, when the provider gave one.
    #[serde(default)]
    pub refresh_token: Option<flow8_vault::Envelope>,
    /// When the access token expires (None: long-lived).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub token_expiry: Option<OffsetDateTime>,
    /// Scopes granted.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The provider's id for the user.
    #[serde(default)]
    pub provider_user_id: String,
    /// The provider's email for the user.
    #[serde(default)]
    pub provider_user_email: String,
    /// Anything else the provider said (team, tenant, realmId).
    #[serde(default)]
    pub provider_metadata: serde_json::Value,
    /// Whether the link can be used (stored as `active` / `needs_reconnect`).
    #[serde(default)]
    pub status: LinkStatus,
    /// Why the link needs reconnecting, in words its user can act on (the provider's
    /// refusal, and what the provider is known to mean by it); None while it is active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Users of the company besides `user_id` who may use the link (`*`: every member);
    /// see `oauth::ownership`. Older records have none: only the owner and admins.
    #[serde(default)]
    pub shared_with: Vec<String>,
    /// Sealed secret the provider's webhooks for this link are checked against
    /// (flow8's `WebhookSignatureSecret`: Graph's `clientState`, Google's channel
    /// token); None: the link's per-link webhooks are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_signature_secret: Option<flow8_vault::Envelope>,
    /// Who holds the refresh lease, until when.
    #[serde(default)]
    pub refresh_lease_owner: Option<String>,
    /// Lease expiry.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub refresh_lease_until: Option<OffsetDateTime>,
    /// A background sweep tried to renew the token and could not: no sweep claims the
    /// link again before then (a step still refreshes it when it needs to). Cleared by
    /// the next refresh.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub refresh_retry_after: Option<OffsetDateTime>,
    /// Bumped on every write (compare-and-set).
    #[serde(default)]
    pub version: i64,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A link's state, stored as its wire string in both stores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkStatus {
    /// Usable; refreshed when it nears expiry.
    #[default]
    Active,
    /// The provider refused its refresh token (or revoked it): the user must connect
    /// again; nothing refreshes it any more.
    NeedsReconnect,
}

impl LinkStatus {
    /// The stored and API value.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkStatus::Active => "active",
            LinkStatus::NeedsReconnect => "needs_reconnect",
        }
    }
}

impl std::fmt::Display for LinkStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where each record's sealed secrets belong (the associated data of their envelopes,
/// see `flow8_vault::SealContext`): an envelope moved to another record, company or
/// field does not open there. Every seal and open of a record's secret goes through
/// these, so the store's records and their bindings cannot drift apart.
pub mod sealing {
    use super::{ComponentRecord, LinkRecord, OAuthStateRecord};
    use flow8_vault::{RecordKind, SealContext};

    /// The field of a link's sealed access token.
    pub const ACCESS_TOKEN: &str = "access_token";
    /// The field of a link's sealed refresh token.
    pub const REFRESH_TOKEN: &str = "refresh_token";
    /// The field of a link's sealed webhook secret.
    pub const WEBHOOK_SECRET: &str = "webhook_signature_secret";
    /// The field of a pending authorization's sealed PKCE verifier.
    pub const PKCE_VERIFIER: &str = "pkce_verifier";

    /// A component's secret config field.
    pub fn component<'a>(company_id: &'a str, id: &'a str, field: &'a str) -> SealContext<'a> {
        SealContext {
            company: company_id,
            kind: RecordKind::Component,
            record: id,
            field,
        }
    }

    /// A link's sealed field ([`ACCESS_TOKEN`], [`REFRESH_TOKEN`] or [`WEBHOOK_SECRET`]).
    pub fn link<'a>(company_id: &'a str, id: &'a str, field: &'static str) -> SealContext<'a> {
        SealContext {
            company: company_id,
            kind: RecordKind::Link,
            record: id,
            field,
        }
    }

    /// A pending authorization's PKCE verifier (the record's id is its state hash).
    pub fn oauth_state<'a>(company_id: &'a str, state_hash: &'a str) -> SealContext<'a> {
        SealContext {
            company: company_id,
            kind: RecordKind::OAuthState,
            record: state_hash,
            field: PKCE_VERIFIER,
        }
    }

    impl ComponentRecord {
        /// Where the secret in config field `field` belongs.
        pub fn seal_context<'a>(&'a self, field: &'a str) -> SealContext<'a> {
            component(&self.company_id, &self.id, field)
        }
    }

    impl LinkRecord {
        /// Where the access token belongs.
        pub fn access_token_context(&self) -> SealContext<'_> {
            link(&self.company_id, &self.id, ACCESS_TOKEN)
        }

        /// Where the refresh token belongs.
        pub fn refresh_token_context(&self) -> SealContext<'_> {
            link(&self.company_id, &self.id, REFRESH_TOKEN)
        }

        /// Where the webhook secret belongs.
        pub fn webhook_secret_context(&self) -> SealContext<'_> {
            link(&self.company_id, &self.id, WEBHOOK_SECRET)
        }
    }

    impl OAuthStateRecord {
        /// Where the PKCE verifier belongs.
        pub fn pkce_verifier_context(&self) -> SealContext<'_> {
            oauth_state(&self.company_id, &self.state_hash)
        }
    }
}

/// A pending OAuth authorization: single use, expiring, bound to user, company and service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OAuthStateRecord {
    /// SHA-256 of the `state` value (the value itself only travels in the URL).
    pub state_hash: String,
    /// Company.
    pub company_id: String,
    /// User.
    pub user_id: String,
    /// Service.
    pub service: String,
    /// Sealed PKCE verifier.
    #[serde(default)]
    pub pkce_verifier: Option<flow8_vault::Envelope>,
    /// Expiry.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// An API token: stored hashed, shown once at creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Id (ObjectId hex).
    #[serde(rename = "_id")]
    pub id: String,
    /// The company every call with this token is scoped to.
    pub company_id: String,
    /// The user it acts for.
    pub user_id: String,
    /// Admin routes allowed.
    pub admin: bool,
    /// A label.
    #[serde(default)]
    pub name: String,
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Revoked, if it was.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

/// One audit-log entry, in flow8's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Id (ObjectId hex).
    #[serde(rename = "_id")]
    pub id: String,
    /// Company.
    pub company_id: String,
    /// Who did it (user id), if a user did.
    #[serde(default)]
    pub user_id: Option<String>,
    /// `component_created`, `credential_used`, `integration_linked`, ...
    pub action_type: String,
    /// `component`, `integration`, `module`, ...
    pub resource_type: String,
    /// The resource's id.
    pub resource_id: String,
    /// State before (never a secret).
    #[serde(default)]
    pub before_state: serde_json::Value,
    /// State after (never a secret).
    #[serde(default)]
    pub after_state: serde_json::Value,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
}

/// An installed module's metadata (its bytes are kept beside it, by digest). A company
/// has at most one module of a name and version; two versions with the same bytes
/// share them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRecord {
    /// The company whose steps may run it.
    pub company_id: String,
    /// The manifest's name.
    pub name: String,
    /// The manifest's version.
    pub version: String,
    /// SHA-256 of the component's bytes, hex: how its bytes are found.
    pub digest: String,
    /// The component's size in bytes.
    pub size: u64,
    /// When it was installed.
    #[serde(with = "time::serde::rfc3339")]
    pub installed_at: OffsetDateTime,
    /// Who installed it (user id); None for modules imported from a data directory.
    #[serde(default)]
    pub installed_by: Option<String>,
    /// Its signature document (the host's `ModuleSignature` JSON), kept beside it so
    /// every load checks it again against the operator's trusted keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Where it was installed from (`oci://registry/repo@sha256:...`), if a registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The capability set an admin approved for it, if any (capability review).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ModuleApproval>,
}

/// An admin's approval of what a module asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleApproval {
    /// The approved capability set (the host's `runtime::review::Capabilities`).
    pub capabilities: serde_json::Value,
    /// Who approved it (user id).
    pub approved_by: String,
    /// When, RFC 3339.
    pub approved_at: String,
    /// The version the approval was given for (a later version asking for nothing
    /// more carries it).
    pub approved_version: String,
}

/// Which audit entries to read (newest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this action.
    pub action_type: Option<String>,
    /// Only this resource type.
    pub resource_type: Option<String>,
    /// Only this resource.
    pub resource_id: Option<String>,
    /// At or after.
    pub since: Option<OffsetDateTime>,
    /// Before.
    pub until: Option<OffsetDateTime>,
    /// Skip this many.
    pub offset: u64,
    /// At most this many.
    pub limit: u64,
}

/// A provider event that came in through a verified webhook (Slack, QuickBooks, Graph,
/// Google), stored before it is acknowledged. At most one per company, service and
/// provider event id: a retry or replay of it stores nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Id (ObjectId hex).
    #[serde(rename = "_id")]
    pub id: String,
    /// The company the event was routed to.
    pub company_id: String,
    /// The provider (`slack`, `quickbooks`, `microsoft`, `google`).
    pub service: String,
    /// The provider's id for the event (Slack's `event_id`, Graph's notification id, ...);
    /// where the provider gives none, a digest of what identifies it.
    pub provider_event_id: String,
    /// The link it was routed to, when one was.
    #[serde(default)]
    pub link_id: Option<String>,
    /// What happened (`message`, `Customer.Create`, `created`, `reauthorizationRequired`...).
    pub event_type: String,
    /// The provider's event, as it sent it (already verified).
    #[serde(default)]
    pub payload: serde_json::Value,
    /// When the host stored it.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

/// Which events to read (newest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only this provider.
    pub service: Option<String>,
    /// Skip this many.
    pub offset: u64,
    /// At most this many.
    pub limit: u64,
}

/// A provider subscription the host keeps alive for a link: a Microsoft Graph
/// subscription or a Google watch channel (Drive `changes.watch` / `files.watch`, Gmail
/// `users.watch`), renewed ahead of `expires_at` by one host at a time (the lease) and
/// recreated when the provider lost it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    /// Id (ObjectId hex).
    #[serde(rename = "_id")]
    pub id: String,
    /// Owning company (the link's).
    pub company_id: String,
    /// The link whose token makes the provider calls and whose webhook URL and secret
    /// the notifications use.
    pub link_id: String,
    /// `microsoft` or `google` (the link's service).
    pub service: String,
    /// What is watched: a Graph resource (`me/messages`), or `drive/changes`,
    /// `drive/files/{file_id}`, `gmail`.
    pub resource: String,
    /// Graph's `changeType` (`created,updated`); None for Google.
    #[serde(default)]
    pub change_type: Option<String>,
    /// Gmail's Pub/Sub topic; None otherwise.
    #[serde(default)]
    pub topic_name: Option<String>,
    /// The provider's id: Graph's subscription id, Google's channel id (None for Gmail,
    /// whose watch has no id, and before the first creation succeeded).
    #[serde(default)]
    pub provider_id: Option<String>,
    /// Google's `resourceId` of the channel (`channels.stop` needs it).
    #[serde(default)]
    pub provider_resource_id: Option<String>,
    /// When the provider lets it lapse.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// `active`, or `lost` (the provider no longer has it and recreating it failed).
    #[serde(default)]
    pub status: SubscriptionStatus,
    /// The last renewal failure, if the last attempt failed.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Times renewed (or recreated) since it was made.
    #[serde(default)]
    pub renewals: u64,
    /// Who asked for it (user id).
    #[serde(default)]
    pub created_by: Option<String>,
    /// Who holds the renewal lease, until when.
    #[serde(default)]
    pub lease_owner: Option<String>,
    /// Lease expiry.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub lease_until: Option<OffsetDateTime>,
    /// Bumped on every write (compare-and-set).
    #[serde(default)]
    pub version: i64,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A subscription's state, stored as its wire string in both stores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    /// Kept alive: renewed ahead of expiry.
    #[default]
    Active,
    /// The provider lost it and it could not be made again; renewal stops (audited
    /// `webhook_subscription_lost`).
    Lost,
}

impl SubscriptionStatus {
    /// The stored and API value.
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::Lost => "lost",
        }
    }
}

/// How a webhook finds the links it is for, across companies (the webhook's own
/// signature, not an API token, says who sent it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookRoute {
    /// The link with this id (a per-link webhook URL).
    LinkId(String),
    /// Links whose `provider_metadata` holds `value` at `path`, dot-separated names of
    /// ASCII letters, digits and `_` (`team.id` for Slack, `realmId` for QuickBooks).
    Metadata {
        /// Where in `provider_metadata`.
        path: String,
        /// The value there.
        value: String,
    },
}

impl WebhookRoute {
    /// Whether a metadata path is one a store may query (no operators, no escapes).
    pub fn valid_path(path: &str) -> bool {
        !path.is_empty()
            && path.split('.').all(|seg| {
                !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
    }
}

/// The most links one webhook is routed to.
pub const MAX_WEBHOOK_LINKS: u32 = 100;

/// Why a store operation failed. Filesystem errors opening a store (its directory or
/// file) are `Unavailable`, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule would be broken.
    #[error("{0}")]
    Conflict(String),
    /// The backend cannot be reached or is locked.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// Stored data does not parse.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// What the host needs from storage. Every query is scoped by company: another
/// company's id finds nothing.
pub trait Store: Send + Sync + 'static {
    /// Insert a component (`Conflict` if the company already has one of that name).
    fn insert_component(
        &self,
        record: ComponentRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A component by id.
    fn get_component(
        &self,
        company_id: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<ComponentRecord>, StoreError>> + Send;
    /// A component by name.
    fn find_component_by_name(
        &self,
        company_id: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<ComponentRecord>, StoreError>> + Send;
    /// All of a company's components, by name.
    fn list_components(
        &self,
        company_id: &str,
    ) -> impl Future<Output = Result<Vec<ComponentRecord>, StoreError>> + Send;
    /// Delete one; whether it existed.
    fn delete_component(
        &self,
        company_id: &str,
        id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Make one the default of its kind (and no other of that kind); whether it existed.
    fn set_default_component(
        &self,
        company_id: &str,
        id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The company's default component of a kind.
    fn default_component(
        &self,
        company_id: &str,
        kind: &str,
    ) -> impl Future<Output = Result<Option<ComponentRecord>, StoreError>> + Send;
    /// Store a new link.
    fn insert_link(&self, link: LinkRecord) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A link by id.
    fn get_link(
        &self,
        company_id: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<LinkRecord>, StoreError>> + Send;
    /// A company's links, optionally of one service, newest first.
    fn list_links(
        &self,
        company_id: &str,
        service: Option<&str>,
    ) -> impl Future<Output = Result<Vec<LinkRecord>, StoreError>> + Send;
    /// The links the background refresher renews, of every company: `active`, holding a
    /// refresh token, of one of `services` (the providers that refresh automatically),
    /// whose token expires before `before`; soonest first, at most `limit`. Everything
    /// is filtered in the query, before the limit, so links the refresher would skip
    /// (needing reconnection, manual-refresh providers) can never fill the page and
    /// hide the ones it must renew.
    fn links_due_for_refresh(
        &self,
        before: OffsetDateTime,
        services: &[String],
        limit: u32,
    ) -> impl Future<Output = Result<Vec<LinkRecord>, StoreError>> + Send;
    /// Claim a batch for one background sweep: lease to `owner` until `until` at most
    /// `limit` of the links [`Store::links_due_for_refresh`] lists whose refresh lease
    /// nobody holds (none, or expired) and whose `refresh_retry_after` has passed;
    /// soonest expiry first, each leased in the same atomic step that checks it is
    /// free. The links as they are after the lease; fewer than `limit` only when no
    /// more were free. Hosts claiming at once get disjoint batches, and links a dead
    /// host still holds are passed over, never waited on.
    fn claim_links_due_for_refresh(
        &self,
        before: OffsetDateTime,
        services: &[String],
        owner: &str,
        until: OffsetDateTime,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<LinkRecord>, StoreError>> + Send;
    /// Delete a link; the deleted record.
    fn delete_link(
        &self,
        company_id: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<LinkRecord>, StoreError>> + Send;
    /// Replace a link if its version is still `expected_version` (then version + 1).
    fn update_link_cas(
        &self,
        link: LinkRecord,
        expected_version: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Take the refresh lease of a link if nobody holds an unexpired one; the link as it
    /// is after taking it (re-read), or None when someone else holds it or the link
    /// needs reconnection (nothing refreshes it any more: a host that read it active
    /// just before another host marked it must not refresh, and tell, it again).
    fn try_lease_link(
        &self,
        company_id: &str,
        id: &str,
        owner: &str,
        until: OffsetDateTime,
    ) -> impl Future<Output = Result<Option<LinkRecord>, StoreError>> + Send;
    /// Save a pending authorization.
    fn insert_oauth_state(
        &self,
        state: OAuthStateRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Remove and return a pending authorization (single use); expired ones are
    /// removed and not returned.
    fn take_oauth_state(
        &self,
        state_hash: &str,
    ) -> impl Future<Output = Result<Option<OAuthStateRecord>, StoreError>> + Send;
    /// Store a new API token.
    fn insert_token(
        &self,
        token: TokenRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The token with this hash, revoked or not.
    fn find_token_by_hash(
        &self,
        token_hash: &str,
    ) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send;
    /// All tokens (for the operator's CLI), newest first.
    fn list_tokens(&self) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send;
    /// Revoke a token; whether it existed and was live.
    fn revoke_token(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Append an audit entry.
    fn insert_audit(
        &self,
        entry: AuditRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Append several audit entries in one write. If an entry's id is already there the
    /// answer is `Conflict`; the embedded store then wrote none of them, MongoDB the
    /// others.
    fn insert_audit_batch(
        &self,
        entries: Vec<AuditRecord>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Read a company's audit entries, newest first.
    fn list_audit(
        &self,
        company_id: &str,
        query: &AuditQuery,
    ) -> impl Future<Output = Result<Vec<AuditRecord>, StoreError>> + Send;
    /// A host-wide setting (e.g. the master-key check value).
    fn get_meta(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
    /// Set a host-wide setting.
    fn put_meta(
        &self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Components of every company whose id sorts after `after`, by id, at most
    /// `limit` (key rotation and export walk the whole store with it).
    fn scan_components(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<ComponentRecord>, StoreError>> + Send;
    /// Links of every company whose id sorts after `after`, by id, at most `limit`.
    fn scan_links(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<LinkRecord>, StoreError>> + Send;
    /// Audit entries of every company whose id sorts after `after`, by id, at most
    /// `limit`.
    fn scan_audit(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<AuditRecord>, StoreError>> + Send;
    /// Events of every company whose id sorts after `after`, by id, at most `limit`.
    fn scan_events(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<EventRecord>, StoreError>> + Send;
    /// The companies that have installed modules, sorted.
    fn module_companies(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// Store a verified provider event; false (and nothing written) when the company
    /// already has one of that service and provider event id.
    fn insert_event(
        &self,
        event: EventRecord,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// A company's events, newest first.
    fn list_events(
        &self,
        company_id: &str,
        query: &EventQuery,
    ) -> impl Future<Output = Result<Vec<EventRecord>, StoreError>> + Send;
    /// The `service` links of every company a webhook is routed to, oldest first, at
    /// most [`MAX_WEBHOOK_LINKS`]; an invalid metadata path finds none.
    fn find_webhook_links(
        &self,
        service: &str,
        route: &WebhookRoute,
    ) -> impl Future<Output = Result<Vec<LinkRecord>, StoreError>> + Send;
    /// Replace a component's config if it is still `expected` (compare-and-set, for
    /// re-sealing its secrets); whether it was replaced.
    fn replace_component_config(
        &self,
        company_id: &str,
        id: &str,
        expected: &serde_json::Map<String, serde_json::Value>,
        config: serde_json::Map<String, serde_json::Value>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Install a module: its bytes first, then its metadata, so a reader that sees the
    /// metadata finds the bytes. `Conflict` if the company already has that name and
    /// version (nothing is replaced).
    fn put_module(
        &self,
        record: ModuleRecord,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A company's installed modules (metadata only, no bytes), by name and version.
    fn list_modules(
        &self,
        company_id: &str,
    ) -> impl Future<Output = Result<Vec<ModuleRecord>, StoreError>> + Send;
    /// A company's installed versions of the module `name` (metadata only), by version:
    /// what a step naming the module reads, so its cost does not grow with how many
    /// other modules the company installed.
    fn list_module_versions(
        &self,
        company_id: &str,
        name: &str,
    ) -> impl Future<Output = Result<Vec<ModuleRecord>, StoreError>> + Send;
    /// The bytes of a company's installed module with this digest.
    fn get_module_bytes(
        &self,
        company_id: &str,
        digest: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
    /// Record an admin's approval on an installed module; whether it exists.
    fn set_module_approval(
        &self,
        company_id: &str,
        name: &str,
        version: &str,
        approval: ModuleApproval,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Remove an installed module (and its bytes, unless another version of the company
    /// shares them); the removed record.
    fn delete_module(
        &self,
        company_id: &str,
        name: &str,
        version: &str,
    ) -> impl Future<Output = Result<Option<ModuleRecord>, StoreError>> + Send;
    /// Store a new webhook subscription.
    fn insert_subscription(
        &self,
        record: SubscriptionRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A company's subscription by id.
    fn get_subscription(
        &self,
        company_id: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<SubscriptionRecord>, StoreError>> + Send;
    /// A company's subscriptions, optionally of one link, oldest first.
    fn list_subscriptions(
        &self,
        company_id: &str,
        link_id: Option<&str>,
    ) -> impl Future<Output = Result<Vec<SubscriptionRecord>, StoreError>> + Send;
    /// Active subscriptions of every company that expire before `before`, soonest
    /// first, at most `limit` (the renewer's query).
    fn subscriptions_due(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<SubscriptionRecord>, StoreError>> + Send;
    /// Replace a subscription if its version is still `expected_version` (then
    /// version + 1); whether it was replaced.
    fn update_subscription_cas(
        &self,
        record: SubscriptionRecord,
        expected_version: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Take a subscription's renewal lease if nobody holds an unexpired one; the record
    /// as it is after taking it (re-read), or None when someone else holds it (or it is
    /// gone).
    fn try_lease_subscription(
        &self,
        company_id: &str,
        id: &str,
        owner: &str,
        until: OffsetDateTime,
    ) -> impl Future<Output = Result<Option<SubscriptionRecord>, StoreError>> + Send;
    /// Delete a subscription; the deleted record.
    fn delete_subscription(
        &self,
        company_id: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<SubscriptionRecord>, StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_look_like_mongodb_ones() {
        let before = OffsetDateTime::now_utc().unix_timestamp();
        let a = new_object_id();
        let b = new_object_id();
        let after = OffsetDateTime::now_utc().unix_timestamp();
        assert_eq!(a.len(), 24);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
        // The first four bytes are the creation time in Unix seconds, big-endian.
        let secs = i64::from(u32::from_str_radix(&a[..8], 16).unwrap());
        assert!((before..=after).contains(&secs), "{a}");
    }

    #[test]
    fn link_statuses_keep_their_wire_strings() {
        // Both stores write the record through serde, so these are the stored values.
        for (status, wire) in [
            (LinkStatus::Active, "active"),
            (LinkStatus::NeedsReconnect, "needs_reconnect"),
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), wire);
            assert_eq!(status.as_str(), wire);
            assert_eq!(
                serde_json::from_value::<LinkStatus>(serde_json::json!(wire)).unwrap(),
                status
            );
        }
        // A link written before the field existed is active; an unknown value is refused.
        assert_eq!(LinkStatus::default(), LinkStatus::Active);
        assert!(serde_json::from_value::<LinkStatus>(serde_json::json!("revoked")).is_err());
    }

    #[test]
    fn component_documents_have_the_flow8_shape() {
        let t = now();
        let r = ComponentRecord {
            id: new_object_id(),
            company_id: "c1".into(),
            name: "aws-s3-prod".into(),
            kind: "storage".into(),
            config: serde_json::json!({"provider": "s3"})
                .as_object()
                .unwrap()
                .clone(),
            is_default: false,
            created_at: t,
            updated_at: t,
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["_id"], r.id.as_str());
        assert!(json.get("id").is_none());
        for k in ["name", "kind", "company_id", "config", "is_default"] {
            assert!(json.get(k).is_some(), "{k} missing from {json}");
        }
        assert!(json["created_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(serde_json::from_value::<ComponentRecord>(json).unwrap(), r);
        assert_eq!(t.nanosecond() % 1_000_000, 0);
    }
}
