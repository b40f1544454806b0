//! The MongoDB store, for production and for several hosts sharing one deployment.
//! Collections and fields are flow8's: `db_links` (tokens as `{encrypted, nonce,
//! ciphertext}` sub-documents, `token_expiry` a BSON date), `components`, `audit_log`,
//! `oauth_states` (a TTL index expires them), `api_tokens`, `host_meta`, and installed
//! modules: `modules` (metadata) with their bytes in `module_chunks` (pieces of at most
//! [`MODULE_CHUNK_BYTES`], keyed by company, digest and piece number). Ids that are
//! 24 hex characters (`_id`, `user_id`, `company_id`) are kept as ObjectIds, as flow8
//! keeps them; any other id stays a string. Every query the host makes has an index,
//! duplicates that would be bugs have unique indexes, and all of them are created at
//! start-up, idempotently.
//!
//! Every write touches one document, so nothing is half-written when the server goes
//! away mid-request; the two writes of "make this the default" are ordered so that a
//! failure between them leaves no default rather than two. The driver reconnects on its
//! own, so a host recovers when MongoDB comes back, and server selection waits only
//! [`DEFAULT_SERVER_SELECTION_TIMEOUT`] (unless the URI sets `serverSelectionTimeoutMS`)
//! so a request fails fast with `store_unavailable` while it is away.

use super::{
    AuditQuery, AuditRecord, ComponentRecord, EventQuery, EventRecord, LinkRecord,
    MAX_WEBHOOK_LINKS, ModuleApproval, ModuleRecord, OAuthStateRecord, Store, StoreError,
    SubscriptionRecord, TokenRecord, WebhookRoute,
};
use futures_util::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc, oid::ObjectId};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
use time::OffsetDateTime;

mod delivery;

/// How long an operation waits for a reachable server before `store_unavailable`.
pub const DEFAULT_SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(3);
/// How long opening a connection may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The database used when the URI names none.
pub const DEFAULT_DATABASE: &str = "flow8";

const LINKS: &str = "db_links";
const COMPONENTS: &str = "components";
const AUDIT: &str = "audit_log";
const STATES: &str = "oauth_states";
const TOKENS: &str = "api_tokens";
const META: &str = "host_meta";
const MODULES: &str = "modules";
const MODULE_CHUNKS: &str = "module_chunks";

/// The most bytes of an installed module one chunk document holds: well under
/// MongoDB's 16 MB document limit, so a module of any size is stored in pieces.
pub const MODULE_CHUNK_BYTES: usize = 8 * 1024 * 1024;
const EVENTS: &str = "events";
const SUBSCRIPTIONS: &str = "webhook_subscriptions";

/// MongoDB error code for a unique-index violation.
const DUPLICATE_KEY: i32 = 11000;

/// Find-then-lease rounds one claim of due links makes at most (each round lost only
/// to links another host leased meanwhile).
const CLAIM_ROUNDS: usize = 8;

/// Fields kept as BSON dates, per record type.
const LINK_DATES: &[&str] = &[
    "token_expiry",
    "refresh_lease_until",
    "refresh_retry_after",
    "created_at",
    "updated_at",
];
const COMPONENT_DATES: &[&str] = &["created_at", "updated_at"];
const STATE_DATES: &[&str] = &["expires_at"];
const TOKEN_DATES: &[&str] = &["created_at", "revoked_at"];
const AUDIT_DATES: &[&str] = &["timestamp"];
const MODULE_DATES: &[&str] = &["installed_at"];
const EVENT_DATES: &[&str] = &["received_at"];
const SUBSCRIPTION_DATES: &[&str] = &["expires_at", "lease_until", "created_at", "updated_at"];
/// Fields kept as ObjectIds when they look like one.
const ID_FIELDS: &[&str] = &["_id", "user_id", "company_id"];

/// MongoDB-backed store. Cloning shares the client (its connection pool).
#[derive(Clone)]
pub struct MongoStore {
    db: Database,
    /// Writes made through this store and its clones (`AnyStore::writes`).
    pub(crate) writes: std::sync::Arc<crate::read_cache::WriteCounts>,
}

impl std::fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MongoStore({})", self.db.name())
    }
}

/// An id as MongoDB keeps it: an ObjectId when it is one in hex, else the string.
fn id(s: &str) -> Bson {
    if s.len() == 24
        && s.bytes().all(|b| b.is_ascii_hexdigit())
        && let Ok(oid) = ObjectId::parse_str(s)
    {
        return Bson::ObjectId(oid);
    }
    Bson::String(s.to_string())
}

/// The links the background refresher renews (its list and a sweep's claim): active,
/// holding a refresh token, of one of `services`, expiring before `before`.
fn due_for_refresh(before: OffsetDateTime, services: &[String]) -> Document {
    doc! {
        "status": super::LinkStatus::Active.as_str(),
        "refresh_token": {"$ne": null},
        "integration_type": {"$in": services},
        "token_expiry": {"$lt": date(before)},
    }
}

fn date(t: OffsetDateTime) -> Bson {
    Bson::DateTime(bson::DateTime::from_millis(
        (t.unix_timestamp_nanos() / 1_000_000) as i64,
    ))
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// Is this error a unique-index violation?
fn is_duplicate(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .is_some_and(|ws| ws.iter().any(|w| w.code == DUPLICATE_KEY)),
        _ => false,
    }
}

fn store_error(e: mongodb::error::Error) -> StoreError {
    use mongodb::error::ErrorKind;
    if is_duplicate(&e) {
        return StoreError::Conflict("a record with that unique key already exists".into());
    }
    match e.kind.as_ref() {
        ErrorKind::BsonDeserialization(_) | ErrorKind::BsonSerialization(_) => corrupt(e),
        ErrorKind::ServerSelection { .. } => StoreError::Unavailable(format!(
            "no MongoDB server answered (is it running and reachable?): {e}"
        )),
        _ => StoreError::Unavailable(format!("MongoDB: {e}")),
    }
}

/// A record as a MongoDB document: dates as BSON dates, ObjectId-shaped ids as ObjectIds.
fn to_doc<T: Serialize>(value: &T, dates: &[&str]) -> Result<Document, StoreError> {
    let mut d = bson::to_document(value).map_err(corrupt)?;
    for field in dates {
        if let Some(Bson::String(s)) = d.get(*field) {
            let t = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|e| corrupt(format!("{field}: {e}")))?;
            d.insert(*field, date(t));
        }
    }
    for field in ID_FIELDS {
        if let Some(Bson::String(s)) = d.get(*field) {
            let v = id(s);
            d.insert(*field, v);
        }
    }
    Ok(d)
}

/// The reverse of [`to_doc`].
fn from_doc<T: DeserializeOwned>(mut d: Document, dates: &[&str]) -> Result<T, StoreError> {
    for field in dates {
        if let Some(Bson::DateTime(t)) = d.get(*field) {
            let t = OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(t.timestamp_millis()) * 1_000_000,
            )
            .map_err(corrupt)?;
            let s = t
                .format(&time::format_description::well_known::Rfc3339)
                .map_err(corrupt)?;
            d.insert(*field, s);
        }
    }
    for field in ID_FIELDS {
        if let Some(Bson::ObjectId(o)) = d.get(*field) {
            let s = o.to_hex();
            d.insert(*field, s);
        }
    }
    bson::from_document(d).map_err(corrupt)
}

async fn collect<T: DeserializeOwned>(
    cursor: mongodb::Cursor<Document>,
    dates: &[&str],
) -> Result<Vec<T>, StoreError> {
    let docs: Vec<Document> = cursor.try_collect().await.map_err(store_error)?;
    docs.into_iter().map(|d| from_doc(d, dates)).collect()
}

/// Ids after `after` (a whole-store walk in id order).
fn after_filter(after: Option<&str>) -> Document {
    match after {
        Some(a) => doc! {"_id": {"$gt": id(a)}},
        None => doc! {},
    }
}

fn index(keys: Document) -> IndexModel {
    IndexModel::builder().keys(keys).build()
}

fn unique(keys: Document) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(IndexOptions::builder().unique(true).build())
        .build()
}

impl MongoStore {
    /// Connect to `uri` (`mongodb://...` or `mongodb+srv://...`; the database is the
    /// URI's path, else `flow8`) and create the indexes. Fails with `Unavailable` when no
    /// server answers within the server-selection timeout.
    pub async fn connect(uri: &str) -> Result<MongoStore, StoreError> {
        let mut opts = ClientOptions::parse(uri)
            .await
            .map_err(|e| StoreError::Unavailable(format!("the MongoDB URI is not valid: {e}")))?;
        if opts.server_selection_timeout.is_none() {
            opts.server_selection_timeout = Some(DEFAULT_SERVER_SELECTION_TIMEOUT);
        }
        if opts.connect_timeout.is_none() {
            opts.connect_timeout = Some(DEFAULT_CONNECT_TIMEOUT);
        }
        if opts.app_name.is_none() {
            opts.app_name = Some("flow8-host".into());
        }
        let name = opts
            .default_database
            .clone()
            .unwrap_or_else(|| DEFAULT_DATABASE.to_string());
        let client = Client::with_options(opts).map_err(store_error)?;
        let store = MongoStore {
            db: client.database(&name),
            writes: Default::default(),
        };
        store.create_indexes().await?;
        Ok(store)
    }

    fn coll(&self, name: &str) -> Collection<Document> {
        self.db.collection(name)
    }

    /// Every index the host's queries use; creating an existing index is a no-op.
    async fn create_indexes(&self) -> Result<(), StoreError> {
        let sets: [(&str, Vec<IndexModel>); 9] = [
            (
                SUBSCRIPTIONS,
                vec![
                    index(doc! {"company_id": 1, "link_id": 1, "created_at": 1}),
                    // The renewer's: active subscriptions in expiry order.
                    index(doc! {"status": 1, "expires_at": 1}),
                ],
            ),
            (
                MODULES,
                vec![
                    unique(doc! {"company_id": 1, "name": 1, "version": 1}),
                    index(doc! {"company_id": 1, "digest": 1}),
                ],
            ),
            (
                MODULE_CHUNKS,
                vec![unique(doc! {"company_id": 1, "digest": 1, "n": 1})],
            ),
            (
                COMPONENTS,
                vec![
                    unique(doc! {"company_id": 1, "name": 1}),
                    index(doc! {"company_id": 1, "kind": 1, "is_default": 1}),
                ],
            ),
            (
                LINKS,
                vec![
                    index(
                        doc! {"company_id": 1, "integration_type": 1, "created_at": -1, "_id": -1},
                    ),
                    index(doc! {"company_id": 1, "created_at": -1, "_id": -1}),
                    // The seed's expiry query, per company and as the seed writes it.
                    index(doc! {"company_id": 1, "token_expiry": 1}),
                    index(doc! {"token_expiry": 1}),
                    // The background refresher's: active links in expiry order.
                    index(doc! {"status": 1, "token_expiry": 1}),
                    // Webhook routing: Slack by team, QuickBooks by company (realm).
                    index(doc! {"integration_type": 1, "provider_metadata.team.id": 1}),
                    index(doc! {"integration_type": 1, "provider_metadata.realmId": 1}),
                ],
            ),
            (
                EVENTS,
                vec![
                    // A retried or replayed event stores nothing.
                    unique(doc! {"company_id": 1, "service": 1, "provider_event_id": 1}),
                    index(doc! {"company_id": 1, "received_at": 1, "_id": 1}),
                    index(doc! {"company_id": 1, "service": 1, "received_at": 1}),
                ],
            ),
            (
                STATES,
                vec![
                    unique(doc! {"state_hash": 1}),
                    IndexModel::builder()
                        .keys(doc! {"expires_at": 1})
                        .options(
                            IndexOptions::builder()
                                .expire_after(Duration::from_secs(0))
                                .build(),
                        )
                        .build(),
                ],
            ),
            (
                TOKENS,
                vec![
                    unique(doc! {"token_hash": 1}),
                    index(doc! {"created_at": -1}),
                ],
            ),
            (
                AUDIT,
                vec![
                    // Ascending: the same index serves newest-first by walking it
                    // backwards, and SecantusDB (the test server) mishandles an
                    // inclusive lower bound on a descending index.
                    index(doc! {"company_id": 1, "timestamp": 1, "_id": 1}),
                    index(doc! {"company_id": 1, "action_type": 1, "timestamp": 1}),
                    index(doc! {"company_id": 1, "resource_id": 1, "timestamp": 1}),
                ],
            ),
        ];
        for (name, models) in sets {
            self.coll(name)
                .create_indexes(models)
                .await
                .map_err(store_error)?;
        }
        self.coll(EVENTS)
            .create_indexes(delivery::event_indexes())
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// The index keys of a collection (tests check every query is backed by one).
    pub async fn index_keys(&self, collection: &str) -> Result<Vec<Document>, StoreError> {
        let models: Vec<IndexModel> = self
            .coll(collection)
            .list_indexes()
            .await
            .map_err(store_error)?
            .try_collect()
            .await
            .map_err(store_error)?;
        Ok(models.into_iter().map(|m| m.keys).collect())
    }

    async fn find_component(
        &self,
        filter: Document,
    ) -> Result<Option<ComponentRecord>, StoreError> {
        self.coll(COMPONENTS)
            .find_one(filter)
            .await
            .map_err(store_error)?
            .map(|d| from_doc(d, COMPONENT_DATES))
            .transpose()
    }

    /// Clear every default of this kind but `keep`.
    async fn clear_defaults(
        &self,
        company_id: &str,
        kind: &str,
        keep: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut filter = doc! {"company_id": id(company_id), "kind": kind, "is_default": true};
        if let Some(k) = keep {
            filter.insert("_id", doc! {"$ne": id(k)});
        }
        self.coll(COMPONENTS)
            .update_many(filter, doc! {"$set": {"is_default": false}})
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn find_links(
        &self,
        filter: Document,
        sort: Document,
        limit: Option<i64>,
    ) -> Result<Vec<LinkRecord>, StoreError> {
        let links = self.coll(LINKS);
        let mut find = links.find(filter).sort(sort);
        if let Some(n) = limit {
            find = find.limit(n);
        }
        collect(find.await.map_err(store_error)?, LINK_DATES).await
    }
}

impl Store for MongoStore {
    async fn insert_component(&self, record: ComponentRecord) -> Result<(), StoreError> {
        let d = to_doc(&record, COMPONENT_DATES)?;
        if record.is_default {
            self.clear_defaults(&record.company_id, &record.kind, Some(&record.id))
                .await?;
        }
        self.coll(COMPONENTS)
            .insert_one(d)
            .await
            .map_err(|e| match store_error(e) {
                StoreError::Conflict(_) => StoreError::Conflict(format!(
                    "a component named `{}` or with id `{}` already exists",
                    record.name, record.id
                )),
                other => other,
            })?;
        Ok(())
    }

    async fn get_component(
        &self,
        company_id: &str,
        cid: &str,
    ) -> Result<Option<ComponentRecord>, StoreError> {
        self.find_component(doc! {"_id": id(cid), "company_id": id(company_id)})
            .await
    }

    async fn find_component_by_name(
        &self,
        company_id: &str,
        name: &str,
    ) -> Result<Option<ComponentRecord>, StoreError> {
        self.find_component(doc! {"company_id": id(company_id), "name": name})
            .await
    }

    async fn list_components(&self, company_id: &str) -> Result<Vec<ComponentRecord>, StoreError> {
        let cursor = self
            .coll(COMPONENTS)
            .find(doc! {"company_id": id(company_id)})
            .sort(doc! {"name": 1})
            .await
            .map_err(store_error)?;
        collect(cursor, COMPONENT_DATES).await
    }

    async fn delete_component(&self, company_id: &str, cid: &str) -> Result<bool, StoreError> {
        let r = self
            .coll(COMPONENTS)
            .delete_one(doc! {"_id": id(cid), "company_id": id(company_id)})
            .await
            .map_err(store_error)?;
        Ok(r.deleted_count > 0)
    }

    async fn set_default_component(&self, company_id: &str, cid: &str) -> Result<bool, StoreError> {
        let Some(record) = self.get_component(company_id, cid).await? else {
            return Ok(false);
        };
        // Clear the others first: a failure between the two writes leaves no default
        // (steps then ask for an explicit binding), never two.
        self.clear_defaults(company_id, &record.kind, Some(cid))
            .await?;
        let r = self
            .coll(COMPONENTS)
            .update_one(
                doc! {"_id": id(cid), "company_id": id(company_id)},
                doc! {"$set": {"is_default": true}},
            )
            .await
            .map_err(store_error)?;
        Ok(r.matched_count > 0)
    }

    async fn default_component(
        &self,
        company_id: &str,
        kind: &str,
    ) -> Result<Option<ComponentRecord>, StoreError> {
        self.find_component(doc! {"company_id": id(company_id), "kind": kind, "is_default": true})
            .await
    }

    async fn insert_link(&self, link: LinkRecord) -> Result<(), StoreError> {
        let d = to_doc(&link, LINK_DATES)?;
        self.coll(LINKS).insert_one(d).await.map_err(store_error)?;
        Ok(())
    }

    async fn get_link(
        &self,
        company_id: &str,
        lid: &str,
    ) -> Result<Option<LinkRecord>, StoreError> {
        self.coll(LINKS)
            .find_one(doc! {"_id": id(lid), "company_id": id(company_id)})
            .await
            .map_err(store_error)?
            .map(|d| from_doc(d, LINK_DATES))
            .transpose()
    }

    async fn list_links(
        &self,
        company_id: &str,
        service: Option<&str>,
    ) -> Result<Vec<LinkRecord>, StoreError> {
        let mut filter = doc! {"company_id": id(company_id)};
        if let Some(s) = service {
            filter.insert("integration_type", s);
        }
        self.find_links(filter, doc! {"created_at": -1, "_id": -1}, None)
            .await
    }

    async fn links_due_for_refresh(
        &self,
        before: OffsetDateTime,
        services: &[String],
        limit: u32,
    ) -> Result<Vec<LinkRecord>, StoreError> {
        self.find_links(
            due_for_refresh(before, services),
            doc! {"token_expiry": 1},
            Some(i64::from(limit)),
        )
        .await
    }

    async fn claim_links_due_for_refresh(
        &self,
        before: OffsetDateTime,
        services: &[String],
        owner: &str,
        until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<LinkRecord>, StoreError> {
        let now = date(super::now());
        let mut claimable = due_for_refresh(before, services);
        claimable.insert(
            "$and",
            vec![
                doc! {"$or": [{"refresh_lease_until": null}, {"refresh_lease_until": {"$lte": now.clone()}}]},
                doc! {"$or": [{"refresh_retry_after": null}, {"refresh_retry_after": {"$lte": now}}]},
            ],
        );
        let links = self.coll(LINKS);
        let until = date(until);
        // The candidates, then one update that leases those still claimable, then the
        // ones this update leased: each carries this owner and this exact lease expiry.
        // Another host may take some candidates between the find and the update; the
        // claim then looks again, so it comes back short only when nothing more is free
        // (a sweep takes a short batch as the end of the due links).
        let mut claimed = Vec::new();
        for _ in 0..CLAIM_ROUNDS {
            let want = i64::from(limit) - claimed.len() as i64;
            if want <= 0 {
                break;
            }
            let candidates: Vec<Document> = links
                .find(claimable.clone())
                .sort(doc! {"token_expiry": 1})
                .limit(want)
                .projection(doc! {"_id": 1})
                .await
                .map_err(store_error)?
                .try_collect()
                .await
                .map_err(store_error)?;
            let ids: Vec<Bson> = candidates
                .into_iter()
                .filter_map(|mut d| d.remove("_id"))
                .collect();
            if ids.is_empty() {
                break;
            }
            let mut lease = claimable.clone();
            lease.insert("_id", doc! {"$in": ids.clone()});
            links
                .update_many(
                    lease,
                    doc! {
                        "$set": {"refresh_lease_owner": owner, "refresh_lease_until": until.clone()},
                        "$inc": {"version": 1_i64},
                    },
                )
                .await
                .map_err(store_error)?;
            claimed.extend(
                self.find_links(
                    doc! {"_id": {"$in": ids}, "refresh_lease_owner": owner, "refresh_lease_until": until.clone()},
                    doc! {"token_expiry": 1},
                    None,
                )
                .await?,
            );
        }
        claimed.sort_by_key(|l| l.token_expiry);
        Ok(claimed)
    }

    async fn delete_link(
        &self,
        company_id: &str,
        lid: &str,
    ) -> Result<Option<LinkRecord>, StoreError> {
        self.coll(LINKS)
            .find_one_and_delete(doc! {"_id": id(lid), "company_id": id(company_id)})
            .await
            .map_err(store_error)?
            .map(|d| from_doc(d, LINK_DATES))
            .transpose()
    }

    async fn update_link_cas(
        &self,
        mut link: LinkRecord,
        expected_version: i64,
    ) -> Result<bool, StoreError> {
        link.version = expected_version + 1;
        link.updated_at = super::now();
        let d = to_doc(&link, LINK_DATES)?;
        let r = self
            .coll(LINKS)
            .replace_one(
                doc! {"_id": id(&link.id), "company_id": id(&link.company_id), "version": expected_version},
                d,
            )
            .await
            .map_err(store_error)?;
        Ok(r.matched_count == 1)
    }

    async fn try_lease_link(
        &self,
        company_id: &str,
        lid: &str,
        owner: &str,
        until: OffsetDateTime,
    ) -> Result<Option<LinkRecord>, StoreError> {
        // One atomic find-and-modify: free, expired, or already ours, and still
        // refreshable.
        let filter = doc! {
            "_id": id(lid),
            "company_id": id(company_id),
            "status": {"$ne": "needs_reconnect"},
            "$or": [
                {"refresh_lease_until": null},
                {"refresh_lease_until": {"$lte": date(super::now())}},
                {"refresh_lease_owner": owner},
            ],
        };
        let update = doc! {
            "$set": {"refresh_lease_owner": owner, "refresh_lease_until": date(until)},
            "$inc": {"version": 1_i64},
        };
        self.coll(LINKS)
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .await
            .map_err(store_error)?
            .map(|d| from_doc(d, LINK_DATES))
            .transpose()
    }

    async fn insert_oauth_state(&self, state: OAuthStateRecord) -> Result<(), StoreError> {
        let d = to_doc(&state, STATE_DATES)?;
        self.coll(STATES).insert_one(d).await.map_err(store_error)?;
        Ok(())
    }

    async fn take_oauth_state(
        &self,
        state_hash: &str,
    ) -> Result<Option<OAuthStateRecord>, StoreError> {
        // Deleting is what makes it single use: of two callbacks racing, one gets it.
        let Some(d) = self
            .coll(STATES)
            .find_one_and_delete(doc! {"state_hash": state_hash})
            .await
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        let state: OAuthStateRecord = from_doc(d, STATE_DATES)?;
        // The TTL monitor runs about once a minute; an expired state may still be there.
        Ok((state.expires_at > super::now()).then_some(state))
    }

    async fn insert_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        let d = to_doc(&token, TOKEN_DATES)?;
        self.coll(TOKENS).insert_one(d).await.map_err(store_error)?;
        Ok(())
    }

    async fn find_token_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.coll(TOKENS)
            .find_one(doc! {"token_hash": token_hash})
            .await
            .map_err(store_error)?
            .map(|d| from_doc(d, TOKEN_DATES))
            .transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let cursor = self
            .coll(TOKENS)
            .find(doc! {})
            .sort(doc! {"created_at": -1})
            .await
            .map_err(store_error)?;
        collect(cursor, TOKEN_DATES).await
    }

    async fn revoke_token(&self, tid: &str) -> Result<bool, StoreError> {
        let r = self
            .coll(TOKENS)
            .update_one(
                doc! {"_id": id(tid), "revoked_at": null},
                doc! {"$set": {"revoked_at": date(super::now())}},
            )
            .await
            .map_err(store_error)?;
        Ok(r.modified_count == 1)
    }

    async fn insert_audit(&self, entry: AuditRecord) -> Result<(), StoreError> {
        let d = to_doc(&entry, AUDIT_DATES)?;
        self.coll(AUDIT).insert_one(d).await.map_err(store_error)?;
        Ok(())
    }

    async fn insert_audit_batch(&self, entries: Vec<AuditRecord>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let docs = entries
            .iter()
            .map(|e| to_doc(e, AUDIT_DATES))
            .collect::<Result<Vec<_>, _>>()?;
        // One unordered insert command: entries whose id is already there are
        // reported (`Conflict`), the others are written.
        self.coll(AUDIT)
            .insert_many(docs)
            .ordered(false)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn list_audit(
        &self,
        company_id: &str,
        q: &AuditQuery,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut filter = doc! {"company_id": id(company_id)};
        if let Some(a) = &q.action_type {
            filter.insert("action_type", a.as_str());
        }
        if let Some(r) = &q.resource_type {
            filter.insert("resource_type", r.as_str());
        }
        if let Some(r) = &q.resource_id {
            filter.insert("resource_id", r.as_str());
        }
        let mut range = Document::new();
        if let Some(t) = q.since {
            range.insert("$gte", date(t));
        }
        if let Some(t) = q.until {
            range.insert("$lt", date(t));
        }
        if !range.is_empty() {
            filter.insert("timestamp", range);
        }
        let cursor = self
            .coll(AUDIT)
            .find(filter)
            .sort(doc! {"timestamp": -1, "_id": -1})
            .skip(q.offset)
            .limit(i64::try_from(q.limit).unwrap_or(i64::MAX))
            .await
            .map_err(store_error)?;
        collect(cursor, AUDIT_DATES).await
    }

    async fn scan_events(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let cursor = self
            .coll(EVENTS)
            .find(after_filter(after))
            .sort(doc! {"_id": 1})
            .limit(i64::from(limit))
            .await
            .map_err(store_error)?;
        collect(cursor, EVENT_DATES).await
    }

    async fn module_companies(&self) -> Result<Vec<String>, StoreError> {
        let values = self
            .coll(MODULES)
            .distinct("company_id", doc! {})
            .await
            .map_err(store_error)?;
        let mut companies: Vec<String> = values
            .into_iter()
            .filter_map(|v| match v {
                Bson::String(s) => Some(s),
                Bson::ObjectId(o) => Some(o.to_hex()),
                _ => None,
            })
            .collect();
        companies.sort();
        Ok(companies)
    }

    async fn insert_event(&self, event: EventRecord) -> Result<bool, StoreError> {
        let mut d = to_doc(&event, EVENT_DATES)?;
        // Queued for delivery in the same (single-document) write.
        delivery::pending_fields(&event, &mut d);
        match self.coll(EVENTS).insert_one(d).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate(&e) => Ok(false),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn list_events(
        &self,
        company_id: &str,
        q: &EventQuery,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let mut filter = doc! {"company_id": id(company_id)};
        if let Some(s) = &q.service {
            filter.insert("service", s.as_str());
        }
        let cursor = self
            .coll(EVENTS)
            .find(filter)
            .sort(doc! {"received_at": -1, "_id": -1})
            .skip(q.offset)
            .limit(i64::try_from(q.limit).unwrap_or(i64::MAX))
            .await
            .map_err(store_error)?;
        collect(cursor, EVENT_DATES).await
    }

    async fn find_webhook_links(
        &self,
        service: &str,
        route: &WebhookRoute,
    ) -> Result<Vec<LinkRecord>, StoreError> {
        let filter = match route {
            WebhookRoute::LinkId(lid) => doc! {"_id": id(lid), "integration_type": service},
            WebhookRoute::Metadata { path, value } => {
                if !WebhookRoute::valid_path(path) {
                    return Ok(Vec::new());
                }
                let mut f = doc! {"integration_type": service};
                f.insert(format!("provider_metadata.{path}"), value.as_str());
                f
            }
        };
        self.find_links(
            filter,
            doc! {"created_at": 1, "_id": 1},
            Some(i64::from(MAX_WEBHOOK_LINKS)),
        )
        .await
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let d = self
            .coll(META)
            .find_one(doc! {"_id": key})
            .await
            .map_err(store_error)?;
        Ok(d.and_then(|d| d.get_str("value").ok().map(str::to_string)))
    }

    async fn put_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.coll(META)
            .update_one(doc! {"_id": key}, doc! {"$set": {"value": value}})
            .upsert(true)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn scan_components(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ComponentRecord>, StoreError> {
        let cursor = self
            .coll(COMPONENTS)
            .find(after_filter(after))
            .sort(doc! {"_id": 1})
            .limit(i64::from(limit))
            .await
            .map_err(store_error)?;
        collect(cursor, COMPONENT_DATES).await
    }

    async fn scan_links(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<LinkRecord>, StoreError> {
        self.find_links(after_filter(after), doc! {"_id": 1}, Some(i64::from(limit)))
            .await
    }

    async fn scan_audit(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let cursor = self
            .coll(AUDIT)
            .find(after_filter(after))
            .sort(doc! {"_id": 1})
            .limit(i64::from(limit))
            .await
            .map_err(store_error)?;
        collect(cursor, AUDIT_DATES).await
    }

    async fn replace_component_config(
        &self,
        company_id: &str,
        cid: &str,
        expected: &serde_json::Map<String, serde_json::Value>,
        config: serde_json::Map<String, serde_json::Value>,
    ) -> Result<bool, StoreError> {
        // Compare-and-set on the whole config: read it, and write only if the stored
        // config is still what was read (a concurrent change makes the filter miss).
        let Some(raw) = self
            .coll(COMPONENTS)
            .find_one(doc! {"_id": id(cid), "company_id": id(company_id)})
            .await
            .map_err(store_error)?
        else {
            return Ok(false);
        };
        let stored = raw.get_document("config").map_err(corrupt)?.clone();
        let current: ComponentRecord = from_doc(raw, COMPONENT_DATES)?;
        if &current.config != expected {
            return Ok(false);
        }
        let new = bson::to_document(&config).map_err(corrupt)?;
        let r = self
            .coll(COMPONENTS)
            .update_one(
                doc! {"_id": id(cid), "company_id": id(company_id), "config": stored},
                doc! {"$set": {"config": new, "updated_at": date(super::now())}},
            )
            .await
            .map_err(store_error)?;
        Ok(r.modified_count == 1)
    }

    async fn put_module(&self, record: ModuleRecord, bytes: Vec<u8>) -> Result<(), StoreError> {
        let conflict = || {
            StoreError::Conflict(format!(
                "{}@{} is already installed",
                record.name, record.version
            ))
        };
        let key = doc! {"company_id": id(&record.company_id), "name": &record.name, "version": &record.version};
        if self
            .coll(MODULES)
            .find_one(key)
            .await
            .map_err(store_error)?
            .is_some()
        {
            return Err(conflict());
        }
        // The bytes first, the metadata last: a host that sees the metadata (on any host
        // of this deployment) finds every piece. Pieces are keyed by digest, so writing
        // them again (another version with the same bytes, a retried install) is
        // harmless.
        self.write_module_pieces(&record.company_id, &record.digest, &bytes)
            .await?;
        let d = to_doc(&record, MODULE_DATES)?;
        self.coll(MODULES)
            .insert_one(d)
            .await
            .map_err(|e| match store_error(e) {
                // Two installs of one version at once: the other won. Its pieces are
                // the ones its metadata names, so nothing is removed here.
                StoreError::Conflict(_) => conflict(),
                other => other,
            })?;
        // A removal of another version with these bytes that counted the versions
        // before this metadata existed may have deleted the pieces just written (see
        // `delete_module`). From now on no removal deletes them (it counts this
        // version), so pieces that are all here now stay; missing ones are written again.
        let present = self
            .coll(MODULE_CHUNKS)
            .count_documents(doc! {"company_id": id(&record.company_id), "digest": &record.digest})
            .await
            .map_err(store_error)?;
        if present != bytes.len().div_ceil(MODULE_CHUNK_BYTES).max(1) as u64 {
            tracing::info!(module = %format!("{}@{}", record.name, record.version), "a removal of the same bytes raced this install: writing its pieces again");
            self.write_module_pieces(&record.company_id, &record.digest, &bytes)
                .await?;
        }
        Ok(())
    }

    async fn list_modules(&self, company_id: &str) -> Result<Vec<ModuleRecord>, StoreError> {
        let cursor = self
            .coll(MODULES)
            .find(doc! {"company_id": id(company_id)})
            .sort(doc! {"name": 1, "version": 1})
            .await
            .map_err(store_error)?;
        collect(cursor, MODULE_DATES).await
    }

    async fn list_module_versions(
        &self,
        company_id: &str,
        name: &str,
    ) -> Result<Vec<ModuleRecord>, StoreError> {
        // The unique (company_id, name, version) index's prefix.
        let cursor = self
            .coll(MODULES)
            .find(doc! {"company_id": id(company_id), "name": name})
            .sort(doc! {"version": 1})
            .await
            .map_err(store_error)?;
        collect(cursor, MODULE_DATES).await
    }

    async fn get_module_bytes(
        &self,
        company_id: &str,
        digest: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let cursor = self
            .coll(MODULE_CHUNKS)
            .find(doc! {"company_id": id(company_id), "digest": digest})
            .sort(doc! {"n": 1})
            .await
            .map_err(store_error)?;
        let pieces: Vec<Document> = cursor.try_collect().await.map_err(store_error)?;
        if pieces.is_empty() {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let n = piece.get_i64("n").map_err(corrupt)?;
            let of = piece.get_i64("of").map_err(corrupt)?;
            if n != i as i64 || of != pieces.len() as i64 {
                return Err(corrupt(format!(
                    "module {digest}: piece {i} of {} is missing",
                    of.max(pieces.len() as i64)
                )));
            }
            bytes.extend_from_slice(&piece.get_binary_generic("data").map_err(corrupt)?[..]);
        }
        Ok(Some(bytes))
    }

    async fn set_module_approval(
        &self,
        company_id: &str,
        name: &str,
        version: &str,
        approval: ModuleApproval,
    ) -> Result<bool, StoreError> {
        let approval = bson::to_bson(&approval).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let r = self
            .coll(MODULES)
            .update_one(
                doc! {"company_id": id(company_id), "name": name, "version": version},
                doc! {"$set": {"approval": approval}},
            )
            .await
            .map_err(store_error)?;
        Ok(r.matched_count > 0)
    }

    async fn delete_module(
        &self,
        company_id: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<ModuleRecord>, StoreError> {
        let Some(d) = self
            .coll(MODULES)
            .find_one_and_delete(
                doc! {"company_id": id(company_id), "name": name, "version": version},
            )
            .await
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        let record: ModuleRecord = from_doc(d, MODULE_DATES)?;
        // The metadata is gone first, so no host resolves it any more; the bytes go
        // unless another version of the company has the same ones.
        let shared = self
            .coll(MODULES)
            .count_documents(doc! {"company_id": id(company_id), "digest": &record.digest})
            .await
            .map_err(store_error)?;
        if shared == 0 {
            // An install of another version with these bytes may be under way: it wrote
            // (or rewrote) the pieces and is about to write its metadata, which the count
            // above did not see. Keep the bytes in hand, delete, and count again: a
            // version that appeared meanwhile gets its pieces back. (One whose metadata
            // lands after this second count checks its pieces itself, in `put_module`.)
            let bytes = self.get_module_bytes(company_id, &record.digest).await?;
            self.coll(MODULE_CHUNKS)
                .delete_many(doc! {"company_id": id(company_id), "digest": &record.digest})
                .await
                .map_err(store_error)?;
            let arrived = self
                .coll(MODULES)
                .count_documents(doc! {"company_id": id(company_id), "digest": &record.digest})
                .await
                .map_err(store_error)?;
            if arrived > 0
                && let Some(bytes) = bytes
            {
                tracing::info!(digest = %record.digest, "an install of the same bytes raced this removal: writing its pieces again");
                self.write_module_pieces(company_id, &record.digest, &bytes)
                    .await?;
            }
        }
        Ok(Some(record))
    }

    async fn insert_subscription(&self, record: SubscriptionRecord) -> Result<(), StoreError> {
        let d = to_doc(&record, SUBSCRIPTION_DATES)?;
        self.coll(SUBSCRIPTIONS)
            .insert_one(d)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn get_subscription(
        &self,
        company_id: &str,
        sid: &str,
    ) -> Result<Option<SubscriptionRecord>, StoreError> {
        self.coll(SUBSCRIPTIONS)
            .find_one(doc! {"_id": id(sid), "company_id": id(company_id)})
            .await
            .map_err(store_error)?
            .map(|d| from_doc(d, SUBSCRIPTION_DATES))
            .transpose()
    }

    async fn list_subscriptions(
        &self,
        company_id: &str,
        link_id: Option<&str>,
    ) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let mut filter = doc! {"company_id": id(company_id)};
        if let Some(l) = link_id {
            filter.insert("link_id", l);
        }
        let cursor = self
            .coll(SUBSCRIPTIONS)
            .find(filter)
            .sort(doc! {"created_at": 1, "_id": 1})
            .await
            .map_err(store_error)?;
        collect(cursor, SUBSCRIPTION_DATES).await
    }

    async fn subscriptions_due(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let cursor = self
            .coll(SUBSCRIPTIONS)
            .find(doc! {
                "status": super::SubscriptionStatus::Active.as_str(),
                "expires_at": {"$lt": date(before)},
            })
            .sort(doc! {"expires_at": 1})
            .limit(i64::from(limit))
            .await
            .map_err(store_error)?;
        collect(cursor, SUBSCRIPTION_DATES).await
    }

    async fn update_subscription_cas(
        &self,
        mut record: SubscriptionRecord,
        expected_version: i64,
    ) -> Result<bool, StoreError> {
        record.version = expected_version + 1;
        record.updated_at = super::now();
        let d = to_doc(&record, SUBSCRIPTION_DATES)?;
        let r = self
            .coll(SUBSCRIPTIONS)
            .replace_one(
                doc! {"_id": id(&record.id), "company_id": id(&record.company_id), "version": expected_version},
                d,
            )
            .await
            .map_err(store_error)?;
        Ok(r.matched_count == 1)
    }

    async fn try_lease_subscription(
        &self,
        company_id: &str,
        sid: &str,
        owner: &str,
        until: OffsetDateTime,
    ) -> Result<Option<SubscriptionRecord>, StoreError> {
        // One atomic find-and-modify: free, expired, or already ours.
        let filter = doc! {
            "_id": id(sid),
            "company_id": id(company_id),
            "$or": [
                {"lease_until": null},
                {"lease_until": {"$lte": date(super::now())}},
                {"lease_owner": owner},
            ],
        };
        let update = doc! {
            "$set": {"lease_owner": owner, "lease_until": date(until)},
            "$inc": {"version": 1_i64},
        };
        self.coll(SUBSCRIPTIONS)
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .await
            .map_err(store_error)?
            .map(|d| from_doc(d, SUBSCRIPTION_DATES))
            .transpose()
    }

    async fn delete_subscription(
        &self,
        company_id: &str,
        sid: &str,
    ) -> Result<Option<SubscriptionRecord>, StoreError> {
        self.coll(SUBSCRIPTIONS)
            .find_one_and_delete(doc! {"_id": id(sid), "company_id": id(company_id)})
            .await
            .map_err(store_error)?
            .map(|d| from_doc(d, SUBSCRIPTION_DATES))
            .transpose()
    }
}

impl MongoStore {
    /// Write a module's bytes as pieces of at most `MODULE_CHUNK_BYTES`, each upserted by
    /// (company, digest, n): writing the same bytes again changes nothing.
    async fn write_module_pieces(
        &self,
        company_id: &str,
        digest: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let total = bytes.len().div_ceil(MODULE_CHUNK_BYTES).max(1);
        let chunks = self.coll(MODULE_CHUNKS);
        for n in 0..total {
            let piece = bytes
                .get(n * MODULE_CHUNK_BYTES..bytes.len().min((n + 1) * MODULE_CHUNK_BYTES))
                .unwrap_or_default();
            let data = Bson::Binary(bson::Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes: piece.to_vec(),
            });
            chunks
                .update_one(
                    doc! {"company_id": id(company_id), "digest": digest, "n": n as i64},
                    doc! {"$set": {"of": total as i64, "data": data}},
                )
                .upsert(true)
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_use_bson_dates_and_object_ids() {
        let t = super::super::now();
        let r = ComponentRecord {
            id: super::super::new_object_id(),
            company_id: "acme".into(),
            name: "n".into(),
            kind: "http".into(),
            config: serde_json::Map::new(),
            is_default: false,
            created_at: t,
            updated_at: t,
        };
        let d = to_doc(&r, COMPONENT_DATES).unwrap();
        assert!(matches!(d.get("_id"), Some(Bson::ObjectId(_))));
        assert_eq!(d.get("company_id"), Some(&Bson::String("acme".into())));
        assert!(matches!(d.get("created_at"), Some(Bson::DateTime(_))));
        let back: ComponentRecord = from_doc(d, COMPONENT_DATES).unwrap();
        assert_eq!(back, r);
    }
}
