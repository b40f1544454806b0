//! The store a host was configured with: the embedded default or MongoDB, chosen at
//! start (`store:` in the config file or `FLOW8_STORE`) and used through one type, so
//! the server, OAuth service and CLI are compiled once for both.

use super::embedded::EmbeddedStore;
use super::mongodb::MongoStore;
use super::read_cache::{Records, WriteCounts};
use super::{
    AuditQuery, AuditRecord, ComponentRecord, EventQuery, EventRecord, LinkRecord, ModuleApproval,
    ModuleRecord, OAuthStateRecord, Store, StoreError, SubscriptionRecord, TokenRecord,
    WebhookRoute,
};
use std::path::Path;
use time::OffsetDateTime;

/// Where the host keeps its documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// SQLite in the data directory (`embedded`, the default).
    Embedded,
    /// A MongoDB deployment (`mongodb://...` or `mongodb+srv://...`).
    MongoDb(String),
}

impl StoreLocation {
    /// `embedded` (or empty) or a MongoDB URI.
    pub fn parse(text: &str) -> Result<StoreLocation, String> {
        let t = text.trim();
        if t.is_empty() || t == "embedded" {
            Ok(StoreLocation::Embedded)
        } else if t.starts_with("mongodb://") || t.starts_with("mongodb+srv://") {
            Ok(StoreLocation::MongoDb(t.to_string()))
        } else {
            Err("expected `embedded` or a `mongodb://` / `mongodb+srv://` URI".into())
        }
    }

    /// For logs and messages: the kind and, for MongoDB, the hosts without credentials.
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Embedded => "embedded".into(),
            StoreLocation::MongoDb(uri) => {
                let rest = uri.split_once("://").map(|x| x.1).unwrap_or(uri);
                let hosts = rest.rsplit_once('@').map(|x| x.1).unwrap_or(rest);
                let hosts = hosts.split(['/', '?']).next().unwrap_or("");
                format!("mongodb ({hosts})")
            }
        }
    }
}

/// The configured store.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// SQLite in the data directory.
    Embedded(EmbeddedStore),
    /// MongoDB.
    Mongo(MongoStore),
}

impl AnyStore {
    /// Open the store at `location` (the embedded one in `data_dir`).
    pub async fn open(location: &StoreLocation, data_dir: &Path) -> Result<AnyStore, StoreError> {
        Ok(match location {
            StoreLocation::Embedded => AnyStore::Embedded(EmbeddedStore::open(data_dir).await?),
            StoreLocation::MongoDb(uri) => AnyStore::Mongo(MongoStore::connect(uri).await?),
        })
    }
}

impl From<EmbeddedStore> for AnyStore {
    fn from(s: EmbeddedStore) -> AnyStore {
        AnyStore::Embedded(s)
    }
}

impl From<MongoStore> for AnyStore {
    fn from(s: MongoStore) -> AnyStore {
        AnyStore::Mongo(s)
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Embedded($s) => $call.await,
            AnyStore::Mongo($s) => $call.await,
        }
    };
}

type Config = serde_json::Map<String, serde_json::Value>;

impl AnyStore {
    /// How many writes of `records` this store and its clones have made. A reader that
    /// caches records ([`crate::read_cache`]) notes it before reading and treats a
    /// record as stale once it has moved, so the host's own changes show at once;
    /// another host's (or another store opened on the same data) show when the reader's
    /// entry ages out.
    pub fn writes(&self, records: Records) -> u64 {
        self.write_counts().get(records)
    }

    fn write_counts(&self) -> &WriteCounts {
        match self {
            AnyStore::Embedded(s) => &s.writes,
            AnyStore::Mongo(s) => &s.writes,
        }
    }

    /// Count a write of `records`, finished or failed (a failed one may still have
    /// changed the store: a timeout after the server applied it).
    fn wrote<T>(&self, records: Records, result: T) -> T {
        self.write_counts().count(records);
        result
    }
}

impl Store for AnyStore {
    async fn insert_component(&self, record: ComponentRecord) -> Result<(), StoreError> {
        self.wrote(
            Records::Components,
            delegate!(self, s => s.insert_component(record)),
        )
    }
    async fn get_component(
        &self,
        company_id: &str,
        id: &str,
    ) -> Result<Option<ComponentRecord>, StoreError> {
        delegate!(self, s => s.get_component(company_id, id))
    }
    async fn find_component_by_name(
        &self,
        company_id: &str,
        name: &str,
    ) -> Result<Option<ComponentRecord>, StoreError> {
        delegate!(self, s => s.find_component_by_name(company_id, name))
    }
    async fn list_components(&self, company_id: &str) -> Result<Vec<ComponentRecord>, StoreError> {
        delegate!(self, s => s.list_components(company_id))
    }
    async fn delete_component(&self, company_id: &str, id: &str) -> Result<bool, StoreError> {
        self.wrote(
            Records::Components,
            delegate!(self, s => s.delete_component(company_id, id)),
        )
    }
    async fn set_default_component(&self, company_id: &str, id: &str) -> Result<bool, StoreError> {
        self.wrote(
            Records::Components,
            delegate!(self, s => s.set_default_component(company_id, id)),
        )
    }
    async fn default_component(
        &self,
        company_id: &str,
        kind: &str,
    ) -> Result<Option<ComponentRecord>, StoreError> {
        delegate!(self, s => s.default_component(company_id, kind))
    }
    async fn insert_link(&self, link: LinkRecord) -> Result<(), StoreError> {
        self.wrote(Records::Links, delegate!(self, s => s.insert_link(link)))
    }
    async fn get_link(&self, company_id: &str, id: &str) -> Result<Option<LinkRecord>, StoreError> {
        delegate!(self, s => s.get_link(company_id, id))
    }
    async fn list_links(
        &self,
        company_id: &str,
        service: Option<&str>,
    ) -> Result<Vec<LinkRecord>, StoreError> {
        delegate!(self, s => s.list_links(company_id, service))
    }
    async fn links_due_for_refresh(
        &self,
        before: OffsetDateTime,
        services: &[String],
        limit: u32,
    ) -> Result<Vec<LinkRecord>, StoreError> {
        delegate!(self, s => s.links_due_for_refresh(before, services, limit))
    }
    async fn claim_links_due_for_refresh(
        &self,
        before: OffsetDateTime,
        services: &[String],
        owner: &str,
        until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<LinkRecord>, StoreError> {
        self.wrote(
            Records::Links,
            delegate!(self, s => s.claim_links_due_for_refresh(before, services, owner, until, limit)),
        )
    }
    async fn delete_link(
        &self,
        company_id: &str,
        id: &str,
    ) -> Result<Option<LinkRecord>, StoreError> {
        self.wrote(
            Records::Links,
            delegate!(self, s => s.delete_link(company_id, id)),
        )
    }
    async fn update_link_cas(
        &self,
        link: LinkRecord,
        expected_version: i64,
    ) -> Result<bool, StoreError> {
        self.wrote(
            Records::Links,
            delegate!(self, s => s.update_link_cas(link, expected_version)),
        )
    }
    async fn try_lease_link(
        &self,
        company_id: &str,
        id: &str,
        owner: &str,
        until: OffsetDateTime,
    ) -> Result<Option<LinkRecord>, StoreError> {
        self.wrote(
            Records::Links,
            delegate!(self, s => s.try_lease_link(company_id, id, owner, until)),
        )
    }
    async fn insert_oauth_state(&self, state: OAuthStateRecord) -> Result<(), StoreError> {
        delegate!(self, s => s.insert_oauth_state(state))
    }
    async fn take_oauth_state(
        &self,
        state_hash: &str,
    ) -> Result<Option<OAuthStateRecord>, StoreError> {
        delegate!(self, s => s.take_oauth_state(state_hash))
    }
    async fn insert_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        self.wrote(Records::Tokens, delegate!(self, s => s.insert_token(token)))
    }
    async fn find_token_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        delegate!(self, s => s.find_token_by_hash(token_hash))
    }
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        delegate!(self, s => s.list_tokens())
    }
    async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        self.wrote(Records::Tokens, delegate!(self, s => s.revoke_token(id)))
    }
    async fn insert_audit(&self, entry: AuditRecord) -> Result<(), StoreError> {
        delegate!(self, s => s.insert_audit(entry))
    }
    async fn insert_audit_batch(&self, entries: Vec<AuditRecord>) -> Result<(), StoreError> {
        delegate!(self, s => s.insert_audit_batch(entries))
    }
    async fn list_audit(
        &self,
        company_id: &str,
        query: &AuditQuery,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        delegate!(self, s => s.list_audit(company_id, query))
    }
    async fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        delegate!(self, s => s.get_meta(key))
    }
    async fn put_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        delegate!(self, s => s.put_meta(key, value))
    }
    async fn scan_components(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ComponentRecord>, StoreError> {
        delegate!(self, s => s.scan_components(after, limit))
    }
    async fn scan_links(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<LinkRecord>, StoreError> {
        delegate!(self, s => s.scan_links(after, limit))
    }
    async fn scan_audit(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        delegate!(self, s => s.scan_audit(after, limit))
    }
    async fn scan_events(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        delegate!(self, s => s.scan_events(after, limit))
    }
    async fn module_companies(&self) -> Result<Vec<String>, StoreError> {
        delegate!(self, s => s.module_companies())
    }
    async fn insert_event(&self, event: EventRecord) -> Result<bool, StoreError> {
        delegate!(self, s => s.insert_event(event))
    }
    async fn list_events(
        &self,
        company_id: &str,
        query: &EventQuery,
    ) -> Result<Vec<EventRecord>, StoreError> {
        delegate!(self, s => s.list_events(company_id, query))
    }
    async fn find_webhook_links(
        &self,
        service: &str,
        route: &WebhookRoute,
    ) -> Result<Vec<LinkRecord>, StoreError> {
        delegate!(self, s => s.find_webhook_links(service, route))
    }
    async fn replace_component_config(
        &self,
        company_id: &str,
        id: &str,
        expected: &Config,
        config: Config,
    ) -> Result<bool, StoreError> {
        self.wrote(
            Records::Components,
            delegate!(self, s => s.replace_component_config(company_id, id, expected, config)),
        )
    }

    async fn put_module(&self, record: ModuleRecord, bytes: Vec<u8>) -> Result<(), StoreError> {
        delegate!(self, s => s.put_module(record, bytes))
    }
    async fn list_modules(&self, company_id: &str) -> Result<Vec<ModuleRecord>, StoreError> {
        delegate!(self, s => s.list_modules(company_id))
    }
    async fn list_module_versions(
        &self,
        company_id: &str,
        name: &str,
    ) -> Result<Vec<ModuleRecord>, StoreError> {
        delegate!(self, s => s.list_module_versions(company_id, name))
    }
    async fn get_module_bytes(
        &self,
        company_id: &str,
        digest: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        delegate!(self, s => s.get_module_bytes(company_id, digest))
    }
    async fn set_module_approval(
        &self,
        company_id: &str,
        name: &str,
        version: &str,
        approval: ModuleApproval,
    ) -> Result<bool, StoreError> {
        delegate!(self, s => s.set_module_approval(company_id, name, version, approval))
    }
    async fn delete_module(
        &self,
        company_id: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<ModuleRecord>, StoreError> {
        delegate!(self, s => s.delete_module(company_id, name, version))
    }
    async fn insert_subscription(&self, record: SubscriptionRecord) -> Result<(), StoreError> {
        delegate!(self, s => s.insert_subscription(record))
    }
    async fn get_subscription(
        &self,
        company_id: &str,
        id: &str,
    ) -> Result<Option<SubscriptionRecord>, StoreError> {
        delegate!(self, s => s.get_subscription(company_id, id))
    }
    async fn list_subscriptions(
        &self,
        company_id: &str,
        link_id: Option<&str>,
    ) -> Result<Vec<SubscriptionRecord>, StoreError> {
        delegate!(self, s => s.list_subscriptions(company_id, link_id))
    }
    async fn subscriptions_due(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<SubscriptionRecord>, StoreError> {
        delegate!(self, s => s.subscriptions_due(before, limit))
    }
    async fn update_subscription_cas(
        &self,
        record: SubscriptionRecord,
        expected_version: i64,
    ) -> Result<bool, StoreError> {
        delegate!(self, s => s.update_subscription_cas(record, expected_version))
    }
    async fn try_lease_subscription(
        &self,
        company_id: &str,
        id: &str,
        owner: &str,
        until: OffsetDateTime,
    ) -> Result<Option<SubscriptionRecord>, StoreError> {
        delegate!(self, s => s.try_lease_subscription(company_id, id, owner, until))
    }
    async fn delete_subscription(
        &self,
        company_id: &str,
        id: &str,
    ) -> Result<Option<SubscriptionRecord>, StoreError> {
        delegate!(self, s => s.delete_subscription(company_id, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_never_print_a_password() {
        assert_eq!(StoreLocation::parse("").unwrap(), StoreLocation::Embedded);
        assert_eq!(
            StoreLocation::parse("embedded").unwrap(),
            StoreLocation::Embedded
        );
        let m = StoreLocation::parse("mongodb://u:hunter2@db1:27017,db2/flow8?tls=true").unwrap();
        assert_eq!(m.describe(), "mongodb (db1:27017,db2)");
        assert!(StoreLocation::parse("postgres://x").is_err());
    }
}
