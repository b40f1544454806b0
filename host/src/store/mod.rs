//! Storage behind a trait. The host keeps flow8's documents (components now; links,
//! OAuth states, tokens and the audit log as they arrive) through `Store`, so the
//! embedded default (`embedded`, SQLite) and MongoDB are interchangeable. A store only
//! ever sees sealed secrets (`vault::Envelope`), never plaintext.

pub mod embedded;

use serde::{Deserialize, Serialize};
use std::future::Future;
use time::OffsetDateTime;

/// A new MongoDB-style ObjectId as 24 lowercase hex characters: 4 bytes of Unix seconds
/// (big-endian), then 8 random bytes.
pub fn new_object_id() -> String {
    let secs = OffsetDateTime::now_utc().unix_timestamp() as u32;
    let rand: [u8; 8] = rand::random();
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&secs.to_be_bytes());
    bytes[4..].copy_from_slice(&rand);
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

/// Why a store operation failed.
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
}

#[cfg(test)]
mod tests {
    #[test]
    fn object_ids_look_like_mongodb_ones() {
        let a = super::new_object_id();
        let b = super::new_object_id();
        assert_eq!(a.len(), 24);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }
}
