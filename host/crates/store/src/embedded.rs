//! The embedded default store: SQLite (bundled, no server to install) in
//! `<data-dir>/flow8.db` (directory 0700, files 0600), in WAL mode with a busy timeout
//! so the CLI and a running server can share the file across processes. Each document
//! is kept whole as JSON beside the columns it is queried by, and every query has an
//! index or unique constraint behind it. The schema is created idempotently at open
//! and its version recorded in the `meta` table.
//!
//! Two connections. Writes run in an IMMEDIATE transaction on tokio's blocking pool
//! (`spawn_blocking`), because taking SQLite's write lock may wait, up to the busy
//! timeout, for another process. Reads use a second, query-only connection: in WAL mode
//! a reader never waits for a writer, in this process or another, so a point read (one
//! indexed row, a few microseconds) runs inline instead of paying a thread hop on every
//! credential lookup of a step; lists, whose size the caller does not bound, run on the
//! blocking pool too.

use super::{
    AuditQuery, AuditRecord, ComponentRecord, EventQuery, EventRecord, LinkRecord,
    MAX_WEBHOOK_LINKS, ModuleApproval, ModuleRecord, OAuthStateRecord, Store, StoreError,
    SubscriptionRecord, TokenRecord, WebhookRoute,
};
use rusqlite::{Connection, OptionalExtension, params};

mod delivery;
use std::path::Path;
use std::sync::{Arc, Mutex};

const SCHEMA_VERSION: i64 = 1;

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "flow8.db";

/// How long a write waits for another process's write lock before `Unavailable`.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS components (
    id         TEXT PRIMARY KEY,
    company_id TEXT NOT NULL,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    is_default INTEGER NOT NULL DEFAULT 0,
    doc        TEXT NOT NULL,
    UNIQUE (company_id, name)
);
CREATE INDEX IF NOT EXISTS components_by_kind ON components (company_id, kind);
CREATE UNIQUE INDEX IF NOT EXISTS components_one_default
    ON components (company_id, kind) WHERE is_default = 1;
CREATE TABLE IF NOT EXISTS db_links (
    id               TEXT PRIMARY KEY,
    company_id       TEXT NOT NULL,
    integration_type TEXT NOT NULL,
    token_expiry     INTEGER,
    version          INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    doc              TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS links_by_service ON db_links (company_id, integration_type, created_at);
CREATE INDEX IF NOT EXISTS links_by_expiry ON db_links (company_id, token_expiry);
DROP INDEX IF EXISTS links_by_expiry_all;
CREATE INDEX IF NOT EXISTS links_due_for_refresh ON db_links (token_expiry)
    WHERE json_extract(doc, '$.status') = 'active'
      AND json_extract(doc, '$.refresh_token') IS NOT NULL;
CREATE TABLE IF NOT EXISTS oauth_states (
    state_hash TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL,
    doc        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS oauth_states_by_expiry ON oauth_states (expires_at);
CREATE TABLE IF NOT EXISTS api_tokens (
    id         TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    doc        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_log (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT NOT NULL UNIQUE,
    company_id    TEXT NOT NULL,
    action_type   TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    ts            INTEGER NOT NULL,
    doc           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_company ON audit_log (company_id, ts);
CREATE INDEX IF NOT EXISTS audit_by_resource ON audit_log (company_id, resource_id, ts);
CREATE INDEX IF NOT EXISTS audit_by_action ON audit_log (company_id, action_type, ts);
CREATE TABLE IF NOT EXISTS modules (
    company_id TEXT NOT NULL,
    name       TEXT NOT NULL,
    version    TEXT NOT NULL,
    digest     TEXT NOT NULL,
    doc        TEXT NOT NULL,
    bytes      BLOB NOT NULL,
    PRIMARY KEY (company_id, name, version)
);
CREATE INDEX IF NOT EXISTS modules_by_digest ON modules (company_id, digest);
CREATE TABLE IF NOT EXISTS events (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT NOT NULL UNIQUE,
    company_id        TEXT NOT NULL,
    service           TEXT NOT NULL,
    provider_event_id TEXT NOT NULL,
    received_at       INTEGER NOT NULL,
    doc               TEXT NOT NULL,
    UNIQUE (company_id, service, provider_event_id)
);
CREATE INDEX IF NOT EXISTS events_by_company ON events (company_id, received_at);
CREATE INDEX IF NOT EXISTS events_by_service ON events (company_id, service, received_at);
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
    id         TEXT PRIMARY KEY,
    company_id TEXT NOT NULL,
    link_id    TEXT NOT NULL,
    status     TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    doc        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS subscriptions_by_link ON webhook_subscriptions (company_id, link_id, created_at);
CREATE INDEX IF NOT EXISTS subscriptions_due ON webhook_subscriptions (status, expires_at);
";

/// The links the background refresher renews, as a `FROM ... WHERE` clause shared by
/// its two queries. Its status and refresh-token terms are the partial index's own (so
/// SQLite walks only links the refresher may renew, in expiry order); the services are
/// a JSON array bound as one parameter (`?2`), the expiry bound is `?1`.
macro_rules! due_for_refresh {
    () => {
        "FROM db_links
    WHERE token_expiry < ?1
      AND json_extract(doc, '$.status') = 'active'
      AND json_extract(doc, '$.refresh_token') IS NOT NULL
      AND integration_type IN (SELECT value FROM json_each(?2))"
    };
}

/// The background refresher's due links.
const DUE_FOR_REFRESH: &str = concat!(
    "SELECT doc ",
    due_for_refresh!(),
    " ORDER BY token_expiry LIMIT ?3"
);

/// [`DUE_FOR_REFRESH`] less the links a sweep may not claim now (`?3`): leased
/// (unexpired) or backing off. Dates inside the document are RFC 3339, which
/// `julianday` reads; the claim checks each row again once parsed.
const CLAIMABLE_FOR_REFRESH: &str = concat!(
    "SELECT doc ",
    due_for_refresh!(),
    " AND (json_extract(doc, '$.refresh_lease_until') IS NULL
           OR julianday(json_extract(doc, '$.refresh_lease_until')) <= julianday(?3))
      AND (json_extract(doc, '$.refresh_retry_after') IS NULL
           OR julianday(json_extract(doc, '$.refresh_retry_after')) <= julianday(?3))
    ORDER BY token_expiry LIMIT ?4"
);

/// SQLite-backed store. Cloning shares the connections.
#[derive(Clone)]
pub struct EmbeddedStore {
    /// The write connection (one transaction at a time).
    conn: Arc<Mutex<Connection>>,
    /// The read connection (query-only); the same connection for an in-memory store.
    reader: Arc<Mutex<Connection>>,
    /// Writes made through this store and its clones (`AnyStore::writes`).
    pub(crate) writes: std::sync::Arc<crate::read_cache::WriteCounts>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmbeddedStore")
    }
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    let code = match &e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.code),
        _ => None,
    };
    match code {
        Some(ErrorCode::ConstraintViolation) => {
            StoreError::Conflict("a record with that unique key already exists".into())
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Unavailable(
            format!("the database is locked by another process (waited {BUSY_TIMEOUT:?})"),
        ),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            StoreError::Corrupt(e.to_string())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

fn join_error(e: tokio::task::JoinError) -> StoreError {
    StoreError::Unavailable(format!("a store task failed: {e}"))
}

/// Lock a connection. A panic while it was held cannot leave it mid-transaction (an
/// unwinding `Transaction` rolls back), so a poisoned lock is taken over, not fatal.
fn lock(conn: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    conn.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn fs_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", path.display()))
}

/// Create the data directory (and parents) owner-only. An existing directory is not
/// re-permissioned (it may be the user's own); a warning says if others can enter it.
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| fs_error(dir, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)
            .map_err(|e| fs_error(dir, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{:o}", mode & 0o777),
                "the data directory is accessible to other users; the store's files are not, but consider chmod 700"
            );
        }
    }
    Ok(())
}

/// Make sure the database file exists owner-only before SQLite opens it: SQLite gives
/// the `-wal` and `-shm` files it creates the database file's permissions. Our own
/// files found with looser permissions are tightened.
fn create_private_files(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(DB_FILE);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(&path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fs_error(&path, e)),
    }
    #[cfg(unix)]
    for suffix in ["", "-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let file = dir.join(format!("{DB_FILE}{suffix}"));
        if let Ok(meta) = std::fs::metadata(&file)
            && meta.permissions().mode() & 0o077 != 0
        {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| fs_error(&file, e))?;
        }
    }
    Ok(())
}

/// A link's document inside a write transaction.
fn link_doc(
    tx: &rusqlite::Transaction<'_>,
    company_id: &str,
    id: &str,
) -> Result<Option<String>, StoreError> {
    tx.query_row(
        "SELECT doc FROM db_links WHERE company_id = ?1 AND id = ?2",
        params![company_id, id],
        |r| r.get(0),
    )
    .optional()
    .map_err(unavailable)
}

/// Give `owner` the refresh lease of `link` until `until`, in `tx` (version + 1).
fn lease_link(
    tx: &rusqlite::Transaction<'_>,
    link: &mut LinkRecord,
    owner: String,
    until: time::OffsetDateTime,
) -> Result<(), StoreError> {
    link.refresh_lease_owner = Some(owner);
    link.refresh_lease_until = Some(until);
    link.version += 1;
    let doc = serde_json::to_string(&*link).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.execute(
        "UPDATE db_links SET doc = ?1, version = ?2 WHERE company_id = ?3 AND id = ?4",
        params![doc, link.version, link.company_id, link.id],
    )
    .map_err(unavailable)?;
    Ok(())
}

/// Parse every JSON document a query returns.
fn docs<T: serde::de::DeserializeOwned>(
    rows: impl Iterator<Item = rusqlite::Result<String>>,
) -> Result<Vec<T>, StoreError> {
    rows.map(|row| {
        serde_json::from_str(&row.map_err(unavailable)?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    })
    .collect()
}

fn millis(t: time::OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn parse(doc: String, is_default: bool) -> Result<ComponentRecord, StoreError> {
    let mut r: ComponentRecord =
        serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    r.is_default = is_default;
    Ok(r)
}

impl EmbeddedStore {
    /// Open (creating on first use) `<data_dir>/flow8.db`: the directory is created
    /// 0700, the database and its `-wal`/`-shm` files are 0600. Runs on the blocking
    /// pool (it may wait for another process that is creating the schema).
    pub async fn open(data_dir: &Path) -> Result<EmbeddedStore, StoreError> {
        let data_dir = data_dir.to_path_buf();
        tokio::task::spawn_blocking(move || EmbeddedStore::open_blocking(&data_dir))
            .await
            .map_err(join_error)?
    }

    fn open_blocking(data_dir: &Path) -> Result<EmbeddedStore, StoreError> {
        create_private_dir(data_dir)?;
        create_private_files(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let mut writer = Connection::open(&path).map_err(unavailable)?;
        let mode = Self::configure(&mut writer)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(
                path = %path.display(),
                journal_mode = %mode,
                "SQLite could not use WAL here (network filesystem?): readers will wait for writers"
            );
        }
        let reader = Connection::open(&path).map_err(unavailable)?;
        reader.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
        reader
            .pragma_update(None, "query_only", true)
            .map_err(unavailable)?;
        Ok(EmbeddedStore {
            conn: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
            writes: Arc::default(),
        })
    }

    /// A private in-memory store (tests); one connection serves reads and writes.
    pub fn open_in_memory() -> Result<EmbeddedStore, StoreError> {
        let mut conn = Connection::open_in_memory().map_err(unavailable)?;
        Self::configure(&mut conn)?;
        let conn = Arc::new(Mutex::new(conn));
        Ok(EmbeddedStore {
            reader: conn.clone(),
            conn,
            writes: Arc::default(),
        })
    }

    /// Pragmas, then the schema and its version in one transaction (two processes
    /// opening a new file at once both succeed). Returns the journal mode in effect.
    fn configure(conn: &mut Connection) -> Result<String, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(unavailable)?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        tx.execute_batch(SCHEMA).map_err(unavailable)?;
        tx.execute_batch(delivery::SCHEMA).map_err(unavailable)?;
        let version: Option<String> = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(unavailable)?;
        match version.as_deref().map(str::parse::<i64>) {
            None => {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                    params![SCHEMA_VERSION.to_string()],
                )
                .map_err(unavailable)?;
            }
            Some(Ok(v)) if v <= SCHEMA_VERSION => {}
            Some(Ok(v)) => {
                return Err(StoreError::Corrupt(format!(
                    "the store's schema version is {v}, newer than this host understands ({SCHEMA_VERSION}); upgrade the host"
                )));
            }
            Some(Err(_)) => {
                return Err(StoreError::Corrupt(
                    "the store's schema_version is not a number".into(),
                ));
            }
        }
        tx.commit().map_err(unavailable)?;
        Ok(mode)
    }

    /// Run `f` on the read connection now. For point reads only: in WAL mode they never
    /// wait for a writer, and the lock is held for microseconds.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&lock(&self.reader))
    }

    /// Run `f` on the read connection on the blocking pool (lists of any length).
    async fn read_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || f(&lock(&reader)))
            .await
            .map_err(join_error)?
    }

    /// Run `f` in an IMMEDIATE transaction on the blocking pool (taking the write lock
    /// may wait for another process); committed when `f` succeeds, else rolled back.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = lock(&conn);
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let out = f(&tx)?;
            tx.commit().map_err(unavailable)?;
            Ok(out)
        })
        .await
        .map_err(join_error)?
    }

    /// A page of documents in id order after `after` (whole-store walks).
    async fn scan_docs<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        sql: &'static str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<T>, StoreError> {
        let after = after.unwrap_or("").to_string();
        self.read_blocking(move |c| {
            let mut stmt = c.prepare_cached(sql).map_err(unavailable)?;
            let rows = stmt
                .query_map(params![after, limit], |r| r.get::<_, String>(0))
                .map_err(unavailable)?;
            docs(rows)
        })
        .await
    }

    fn query_one(
        &self,
        sql: &str,
        a: &str,
        b: &str,
    ) -> Result<Option<ComponentRecord>, StoreError> {
        self.read(|c| {
            let row: Option<(String, bool)> = c
                .prepare_cached(sql)
                .map_err(unavailable)?
                .query_row(params![a, b], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(unavailable)?;
            row.map(|(doc, d)| parse(doc, d)).transpose()
        })
    }
}

impl Store for EmbeddedStore {
    async fn insert_component(&self, record: ComponentRecord) -> Result<(), StoreError> {
        let doc = serde_json::to_string(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.write(move |tx| {
            // Checked inside the write transaction, so the answer cannot go stale; the
            // UNIQUE (company_id, name) constraint stays the last word.
            let taken: bool = tx
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM components WHERE company_id = ?1 AND name = ?2)",
                )
                .map_err(unavailable)?
                .query_row(params![record.company_id, record.name], |r| r.get(0))
                .map_err(unavailable)?;
            if taken {
                return Err(StoreError::Conflict(format!(
                    "a component named `{}` already exists",
                    record.name
                )));
            }
            if record.is_default {
                // Exactly one default per (company, kind).
                tx.execute(
                    "UPDATE components SET is_default = 0 WHERE company_id = ?1 AND kind = ?2 AND is_default = 1",
                    params![record.company_id, record.kind],
                )
                .map_err(unavailable)?;
            }
            tx.execute(
                "INSERT INTO components (id, company_id, name, kind, is_default, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![record.id, record.company_id, record.name, record.kind, record.is_default, doc],
            )
            .map_err(|e| match unavailable(e) {
                StoreError::Conflict(_) => StoreError::Conflict(format!(
                    "a component named `{}` or with id `{}` already exists",
                    record.name, record.id
                )),
                other => other,
            })?;
            Ok(())
        })
        .await
    }

    async fn get_component(
        &self,
        company_id: &str,
        id: &str,
    ) -> Result<Option<ComponentRecord>, StoreError> {
        self.query_one(
            "SELECT doc, is_default FROM components WHERE company_id = ?1 AND id = ?2",
            company_id,
            id,
        )
    }

    async fn find_component_by_name(
        &self,
        company_id: &str,
        name: &str,
    ) -> Result<Option<ComponentRecord>, StoreError> {
        self.query_one(
            "SELECT doc, is_default FROM components WHERE company_id = ?1 AND name = ?2",
            company_id,
            name,
        )
    }

    async fn list_components(&self, company_id: &str) -> Result<Vec<ComponentRecord>, StoreError> {
        let company_id = company_id.to_string();
        self.read_blocking(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT doc, is_default FROM components WHERE company_id = ?1 ORDER BY name",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![company_id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
                })
                .map_err(unavailable)?;
            let mut out = Vec::new();
            for row in rows {
                let (doc, d) = row.map_err(unavailable)?;
                out.push(parse(doc, d)?);
            }
            Ok(out)
        })
        .await
    }

    async fn delete_component(&self, company_id: &str, id: &str) -> Result<bool, StoreError> {
        let (company_id, id) = (company_id.to_string(), id.to_string());
        self.write(move |tx| {
            let n = tx
                .execute(
                    "DELETE FROM components WHERE company_id = ?1 AND id = ?2",
                    params![company_id, id],
                )
                .map_err(unavailable)?;
            Ok(n > 0)
        })
        .await
    }

    async fn set_default_component(&self, company_id: &str, id: &str) -> Result<bool, StoreError> {
        let (company_id, id) = (company_id.to_string(), id.to_string());
        self.write(move |tx| {
            let kind: Option<String> = tx
                .query_row(
                    "SELECT kind FROM components WHERE company_id = ?1 AND id = ?2",
                    params![company_id, id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            let Some(kind) = kind else {
                return Ok(false);
            };
            tx.execute(
                "UPDATE components SET is_default = 0 WHERE company_id = ?1 AND kind = ?2 AND is_default = 1",
                params![company_id, kind],
            )
            .map_err(unavailable)?;
            tx.execute(
                "UPDATE components SET is_default = 1 WHERE company_id = ?1 AND id = ?2",
                params![company_id, id],
            )
            .map_err(unavailable)?;
            Ok(true)
        })
        .await
    }

    async fn default_component(
        &self,
        company_id: &str,
        kind: &str,
    ) -> Result<Option<ComponentRecord>, StoreError> {
        self.query_one(
            "SELECT doc, is_default FROM components WHERE company_id = ?1 AND kind = ?2 AND is_default = 1",
            company_id,
            kind,
        )
    }

    async fn insert_link(&self, link: LinkRecord) -> Result<(), StoreError> {
        let doc = serde_json::to_string(&link).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO db_links (id, company_id, integration_type, token_expiry, version, created_at, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    link.id,
                    link.company_id,
                    link.integration_type,
                    link.token_expiry.map(millis),
                    link.version,
                    millis(link.created_at),
                    doc
                ],
            )
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn get_link(&self, company_id: &str, id: &str) -> Result<Option<LinkRecord>, StoreError> {
        self.read(|c| {
            let rows: Vec<LinkRecord> = docs(
                c.prepare_cached("SELECT doc FROM db_links WHERE company_id = ?1 AND id = ?2")
                    .map_err(unavailable)?
                    .query_map(params![company_id, id], |r| r.get::<_, String>(0))
                    .map_err(unavailable)?,
            )?;
            Ok(rows.into_iter().next())
        })
    }

    async fn list_links(
        &self,
        company_id: &str,
        service: Option<&str>,
    ) -> Result<Vec<LinkRecord>, StoreError> {
        self.read(|c| {
            docs(
                c.prepare_cached(
                    "SELECT doc FROM db_links WHERE company_id = ?1 AND (?2 IS NULL OR integration_type = ?2) ORDER BY created_at DESC, id DESC",
                )
                .map_err(unavailable)?
                .query_map(params![company_id, service], |r| r.get::<_, String>(0))
                .map_err(unavailable)?,
            )
        })
    }

    async fn links_due_for_refresh(
        &self,
        before: time::OffsetDateTime,
        services: &[String],
        limit: u32,
    ) -> Result<Vec<LinkRecord>, StoreError> {
        let services =
            serde_json::to_string(services).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.read(|c| {
            docs(
                c.prepare_cached(DUE_FOR_REFRESH)
                    .map_err(unavailable)?
                    .query_map(params![millis(before), services, limit], |r| {
                        r.get::<_, String>(0)
                    })
                    .map_err(unavailable)?,
            )
        })
    }

    async fn claim_links_due_for_refresh(
        &self,
        before: time::OffsetDateTime,
        services: &[String],
        owner: &str,
        until: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<LinkRecord>, StoreError> {
        let services =
            serde_json::to_string(services).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let owner = owner.to_string();
        self.write(move |tx| {
            let now = super::now();
            let now_text = now
                .format(&time::format_description::well_known::Rfc3339)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let rows: Vec<String> = tx
                .prepare_cached(CLAIMABLE_FOR_REFRESH)
                .map_err(unavailable)?
                .query_map(params![millis(before), services, now_text, limit], |r| {
                    r.get::<_, String>(0)
                })
                .map_err(unavailable)?
                .collect::<rusqlite::Result<_>>()
                .map_err(unavailable)?;
            let mut claimed = Vec::with_capacity(rows.len());
            for doc in rows {
                let mut link: LinkRecord =
                    serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                if link.refresh_lease_until.is_some_and(|t| t > now)
                    || link.refresh_retry_after.is_some_and(|t| t > now)
                {
                    continue;
                }
                lease_link(tx, &mut link, owner.clone(), until)?;
                claimed.push(link);
            }
            Ok(claimed)
        })
        .await
    }

    async fn delete_link(
        &self,
        company_id: &str,
        id: &str,
    ) -> Result<Option<LinkRecord>, StoreError> {
        let (company_id, id) = (company_id.to_string(), id.to_string());
        self.write(move |tx| {
            let doc = link_doc(tx, &company_id, &id)?;
            let Some(doc) = doc else {
                return Ok(None);
            };
            tx.execute(
                "DELETE FROM db_links WHERE company_id = ?1 AND id = ?2",
                params![company_id, id],
            )
            .map_err(unavailable)?;
            serde_json::from_str(&doc)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .await
    }

    async fn update_link_cas(
        &self,
        mut link: LinkRecord,
        expected_version: i64,
    ) -> Result<bool, StoreError> {
        link.version = expected_version + 1;
        link.updated_at = super::now();
        let doc = serde_json::to_string(&link).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.write(move |tx| {
            let n = tx
                .execute(
                    "UPDATE db_links SET doc = ?1, version = ?2, token_expiry = ?3 WHERE company_id = ?4 AND id = ?5 AND version = ?6",
                    params![doc, link.version, link.token_expiry.map(millis), link.company_id, link.id, expected_version],
                )
                .map_err(unavailable)?;
            Ok(n == 1)
        })
        .await
    }

    async fn try_lease_link(
        &self,
        company_id: &str,
        id: &str,
        owner: &str,
        until: time::OffsetDateTime,
    ) -> Result<Option<LinkRecord>, StoreError> {
        let (company_id, id, owner) = (company_id.to_string(), id.to_string(), owner.to_string());
        self.write(move |tx| {
            let doc = link_doc(tx, &company_id, &id)?;
            let Some(doc) = doc else {
                return Ok(None);
            };
            let mut link: LinkRecord =
                serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let now = super::now();
            if link.status == crate::LinkStatus::NeedsReconnect
                || link.refresh_lease_until.is_some_and(|t| t > now)
                    && link.refresh_lease_owner.as_deref() != Some(owner.as_str())
            {
                return Ok(None);
            }
            lease_link(tx, &mut link, owner, until)?;
            Ok(Some(link))
        })
        .await
    }

    async fn insert_oauth_state(&self, state: OAuthStateRecord) -> Result<(), StoreError> {
        let doc = serde_json::to_string(&state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.write(move |tx| {
            // Expired states are garbage: drop them while we are here.
            tx.execute(
                "DELETE FROM oauth_states WHERE expires_at < ?1",
                params![millis(super::now())],
            )
            .map_err(unavailable)?;
            tx.execute(
                "INSERT INTO oauth_states (state_hash, expires_at, doc) VALUES (?1, ?2, ?3)",
                params![state.state_hash, millis(state.expires_at), doc],
            )
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn take_oauth_state(
        &self,
        state_hash: &str,
    ) -> Result<Option<OAuthStateRecord>, StoreError> {
        let state_hash = state_hash.to_string();
        self.write(move |tx| {
            let doc: Option<String> = tx
                .query_row(
                    "SELECT doc FROM oauth_states WHERE state_hash = ?1",
                    params![state_hash],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            tx.execute(
                "DELETE FROM oauth_states WHERE state_hash = ?1",
                params![state_hash],
            )
            .map_err(unavailable)?;
            let Some(doc) = doc else {
                return Ok(None);
            };
            let state: OAuthStateRecord =
                serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok((state.expires_at > super::now()).then_some(state))
        })
        .await
    }

    async fn insert_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        let doc = serde_json::to_string(&token).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO api_tokens (id, token_hash, created_at, doc) VALUES (?1, ?2, ?3, ?4)",
                params![
                    token.id,
                    token.token_hash,
                    token.created_at.unix_timestamp_nanos().to_string(),
                    doc
                ],
            )
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn find_token_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.read(|c| {
            let doc: Option<String> = c
                .prepare_cached("SELECT doc FROM api_tokens WHERE token_hash = ?1")
                .map_err(unavailable)?
                .query_row(params![token_hash], |r| r.get(0))
                .optional()
                .map_err(unavailable)?;
            doc.map(|d| serde_json::from_str(&d).map_err(|e| StoreError::Corrupt(e.to_string())))
                .transpose()
        })
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read_blocking(|c| {
            let mut stmt = c
                .prepare_cached("SELECT doc FROM api_tokens ORDER BY created_at DESC")
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(unavailable)?;
            docs(rows)
        })
        .await
    }

    async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |tx| {
            let doc: Option<String> = tx
                .query_row(
                    "SELECT doc FROM api_tokens WHERE id = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            let Some(doc) = doc else {
                return Ok(false);
            };
            let mut token: TokenRecord =
                serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if token.revoked_at.is_some() {
                return Ok(false);
            }
            token.revoked_at = Some(super::now());
            let doc =
                serde_json::to_string(&token).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tx.execute(
                "UPDATE api_tokens SET doc = ?2 WHERE id = ?1",
                params![id, doc],
            )
            .map_err(unavailable)?;
            Ok(true)
        })
        .await
    }

    async fn insert_audit(&self, entry: AuditRecord) -> Result<(), StoreError> {
        self.insert_audit_batch(vec![entry]).await
    }

    async fn insert_audit_batch(&self, entries: Vec<AuditRecord>) -> Result<(), StoreError> {
        let rows = entries
            .into_iter()
            .map(|e| {
                serde_json::to_string(&e)
                    .map(|doc| (e, doc))
                    .map_err(|err| StoreError::Corrupt(err.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.write(move |tx| {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO audit_log (id, company_id, action_type, resource_type, resource_id, ts, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(unavailable)?;
            for (entry, doc) in rows {
                stmt.execute(params![
                    entry.id,
                    entry.company_id,
                    entry.action_type,
                    entry.resource_type,
                    entry.resource_id,
                    (entry.timestamp.unix_timestamp_nanos() / 1_000_000) as i64,
                    doc
                ])
                .map_err(unavailable)?;
            }
            Ok(())
        })
        .await
    }

    async fn list_audit(
        &self,
        company_id: &str,
        q: &AuditQuery,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let (company_id, q) = (company_id.to_string(), q.clone());
        self.read_blocking(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT doc FROM audit_log WHERE company_id = ?1
                       AND (?2 IS NULL OR action_type = ?2)
                       AND (?3 IS NULL OR resource_type = ?3)
                       AND (?4 IS NULL OR resource_id = ?4)
                       AND (?5 IS NULL OR ts >= ?5)
                       AND (?6 IS NULL OR ts < ?6)
                     ORDER BY ts DESC, seq DESC LIMIT ?7 OFFSET ?8",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(
                    params![
                        company_id,
                        q.action_type,
                        q.resource_type,
                        q.resource_id,
                        q.since.map(millis),
                        q.until.map(millis),
                        q.limit as i64,
                        q.offset as i64
                    ],
                    |r| r.get::<_, String>(0),
                )
                .map_err(unavailable)?;
            docs(rows)
        })
        .await
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT value FROM meta WHERE key = ?1")
                .map_err(unavailable)?
                .query_row(params![key], |r| r.get(0))
                .optional()
                .map_err(unavailable)
        })
    }

    async fn put_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn scan_components(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ComponentRecord>, StoreError> {
        let after = after.unwrap_or("").to_string();
        self.read_blocking(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT doc, is_default FROM components WHERE id > ?1 ORDER BY id LIMIT ?2",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![after, limit], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
                })
                .map_err(unavailable)?;
            let mut out = Vec::new();
            for row in rows {
                let (doc, d) = row.map_err(unavailable)?;
                out.push(parse(doc, d)?);
            }
            Ok(out)
        })
        .await
    }

    async fn scan_links(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<LinkRecord>, StoreError> {
        self.scan_docs(
            "SELECT doc FROM db_links WHERE id > ?1 ORDER BY id LIMIT ?2",
            after,
            limit,
        )
        .await
    }

    async fn scan_audit(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.scan_docs(
            "SELECT doc FROM audit_log WHERE id > ?1 ORDER BY id LIMIT ?2",
            after,
            limit,
        )
        .await
    }

    async fn scan_events(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.scan_docs(
            "SELECT doc FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
            after,
            limit,
        )
        .await
    }

    async fn module_companies(&self) -> Result<Vec<String>, StoreError> {
        self.read_blocking(|c| {
            let mut stmt = c
                .prepare_cached("SELECT DISTINCT company_id FROM modules ORDER BY company_id")
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
        .await
    }

    async fn insert_event(&self, event: EventRecord) -> Result<bool, StoreError> {
        let doc = serde_json::to_string(&event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.write(move |tx| {
            // The unique key decides: a second copy of the event changes no row.
            let n = tx
                .execute(
                    "INSERT INTO events (id, company_id, service, provider_event_id, received_at, doc)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (company_id, service, provider_event_id) DO NOTHING",
                    params![
                        event.id,
                        event.company_id,
                        event.service,
                        event.provider_event_id,
                        millis(event.received_at),
                        doc
                    ],
                )
                .map_err(unavailable)?;
            if n == 1 {
                // Queued for delivery in the same transaction: never stored undelivered.
                delivery::queue(tx, &event, tx.last_insert_rowid())?;
            }
            Ok(n == 1)
        })
        .await
    }

    async fn list_events(
        &self,
        company_id: &str,
        q: &EventQuery,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let (company_id, q) = (company_id.to_string(), q.clone());
        self.read_blocking(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT doc FROM events WHERE company_id = ?1
                       AND (?2 IS NULL OR service = ?2)
                     ORDER BY received_at DESC, seq DESC LIMIT ?3 OFFSET ?4",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(
                    params![
                        company_id,
                        q.service,
                        i64::try_from(q.limit).unwrap_or(i64::MAX),
                        i64::try_from(q.offset).unwrap_or(i64::MAX)
                    ],
                    |r| r.get::<_, String>(0),
                )
                .map_err(unavailable)?;
            docs(rows)
        })
        .await
    }

    async fn find_webhook_links(
        &self,
        service: &str,
        route: &WebhookRoute,
    ) -> Result<Vec<LinkRecord>, StoreError> {
        let service = service.to_string();
        match route.clone() {
            WebhookRoute::LinkId(id) => self.read(|c| {
                docs(
                    c.prepare_cached(
                        "SELECT doc FROM db_links WHERE id = ?1 AND integration_type = ?2",
                    )
                    .map_err(unavailable)?
                    .query_map(params![id, service], |r| r.get::<_, String>(0))
                    .map_err(unavailable)?,
                )
            }),
            WebhookRoute::Metadata { path, value } => {
                if !WebhookRoute::valid_path(&path) {
                    return Ok(Vec::new());
                }
                // The path is bound as a parameter, never spliced into the SQL.
                let path = format!("$.provider_metadata.{path}");
                self.read_blocking(move |c| {
                    let mut stmt = c
                        .prepare_cached(
                            "SELECT doc FROM db_links WHERE integration_type = ?1
                               AND json_extract(doc, ?2) = ?3
                             ORDER BY created_at, id LIMIT ?4",
                        )
                        .map_err(unavailable)?;
                    let rows = stmt
                        .query_map(params![service, path, value, MAX_WEBHOOK_LINKS], |r| {
                            r.get::<_, String>(0)
                        })
                        .map_err(unavailable)?;
                    docs(rows)
                })
                .await
            }
        }
    }

    async fn replace_component_config(
        &self,
        company_id: &str,
        id: &str,
        expected: &serde_json::Map<String, serde_json::Value>,
        config: serde_json::Map<String, serde_json::Value>,
    ) -> Result<bool, StoreError> {
        let (company_id, id, expected) = (company_id.to_string(), id.to_string(), expected.clone());
        self.write(move |tx| {
            let row: Option<(String, bool)> = tx
                .query_row(
                    "SELECT doc, is_default FROM components WHERE company_id = ?1 AND id = ?2",
                    params![company_id, id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(unavailable)?;
            let Some((doc, d)) = row else {
                return Ok(false);
            };
            let mut record = parse(doc, d)?;
            if record.config != expected {
                return Ok(false);
            }
            record.config = config;
            record.updated_at = super::now();
            let doc =
                serde_json::to_string(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tx.execute(
                "UPDATE components SET doc = ?3 WHERE company_id = ?1 AND id = ?2",
                params![company_id, id, doc],
            )
            .map_err(unavailable)?;
            Ok(true)
        })
        .await
    }

    async fn put_module(&self, record: ModuleRecord, bytes: Vec<u8>) -> Result<(), StoreError> {
        let doc = serde_json::to_string(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // One row holds metadata and bytes, so they are written (and seen) together; the
        // primary key refuses a second install of the same name and version.
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO modules (company_id, name, version, digest, doc, bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    record.company_id,
                    record.name,
                    record.version,
                    record.digest,
                    doc,
                    bytes
                ],
            )
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn list_modules(&self, company_id: &str) -> Result<Vec<ModuleRecord>, StoreError> {
        let company_id = company_id.to_string();
        self.read_blocking(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT doc FROM modules WHERE company_id = ?1 ORDER BY name, version",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![company_id], |r| r.get::<_, String>(0))
                .map_err(unavailable)?;
            docs(rows)
        })
        .await
    }

    async fn list_module_versions(
        &self,
        company_id: &str,
        name: &str,
    ) -> Result<Vec<ModuleRecord>, StoreError> {
        let (company_id, name) = (company_id.to_string(), name.to_string());
        // The primary key's prefix (company_id, name): an index range, not a scan.
        self.read_blocking(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT doc FROM modules WHERE company_id = ?1 AND name = ?2 ORDER BY version",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![company_id, name], |r| r.get::<_, String>(0))
                .map_err(unavailable)?;
            docs(rows)
        })
        .await
    }

    async fn get_module_bytes(
        &self,
        company_id: &str,
        digest: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let (company_id, digest) = (company_id.to_string(), digest.to_string());
        // A component can be megabytes: read it off the async threads.
        self.read_blocking(move |c| {
            c.prepare_cached(
                "SELECT bytes FROM modules WHERE company_id = ?1 AND digest = ?2 LIMIT 1",
            )
            .map_err(unavailable)?
            .query_row(params![company_id, digest], |r| r.get::<_, Vec<u8>>(0))
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn set_module_approval(
        &self,
        company_id: &str,
        name: &str,
        version: &str,
        approval: ModuleApproval,
    ) -> Result<bool, StoreError> {
        let (company_id, name, version) = (
            company_id.to_string(),
            name.to_string(),
            version.to_string(),
        );
        // Read, change and write the one row's document in one transaction: two
        // approvals at once leave one of them, whole.
        self.write(move |tx| {
            let doc: Option<String> = tx
                .query_row(
                    "SELECT doc FROM modules WHERE company_id = ?1 AND name = ?2 AND version = ?3",
                    params![company_id, name, version],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            let Some(doc) = doc else {
                return Ok(false);
            };
            let mut record: ModuleRecord =
                serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            record.approval = Some(approval);
            let doc =
                serde_json::to_string(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tx.execute(
                "UPDATE modules SET doc = ?4 WHERE company_id = ?1 AND name = ?2 AND version = ?3",
                params![company_id, name, version, doc],
            )
            .map_err(unavailable)?;
            Ok(true)
        })
        .await
    }

    async fn delete_module(
        &self,
        company_id: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<ModuleRecord>, StoreError> {
        let (company_id, name, version) = (
            company_id.to_string(),
            name.to_string(),
            version.to_string(),
        );
        self.write(move |tx| {
            let doc: Option<String> = tx
                .query_row(
                    "DELETE FROM modules WHERE company_id = ?1 AND name = ?2 AND version = ?3
                     RETURNING doc",
                    params![company_id, name, version],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            doc.map(|d| serde_json::from_str(&d).map_err(|e| StoreError::Corrupt(e.to_string())))
                .transpose()
        })
        .await
    }

    async fn insert_subscription(&self, record: SubscriptionRecord) -> Result<(), StoreError> {
        let doc = serde_json::to_string(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO webhook_subscriptions (id, company_id, link_id, status, expires_at, version, created_at, doc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    record.id,
                    record.company_id,
                    record.link_id,
                    record.status.as_str(),
                    millis(record.expires_at),
                    record.version,
                    millis(record.created_at),
                    doc
                ],
            )
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn get_subscription(
        &self,
        company_id: &str,
        id: &str,
    ) -> Result<Option<SubscriptionRecord>, StoreError> {
        self.read(|c| {
            let rows: Vec<SubscriptionRecord> = docs(
                c.prepare_cached(
                    "SELECT doc FROM webhook_subscriptions WHERE company_id = ?1 AND id = ?2",
                )
                .map_err(unavailable)?
                .query_map(params![company_id, id], |r| r.get::<_, String>(0))
                .map_err(unavailable)?,
            )?;
            Ok(rows.into_iter().next())
        })
    }

    async fn list_subscriptions(
        &self,
        company_id: &str,
        link_id: Option<&str>,
    ) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let (company_id, link_id) = (company_id.to_string(), link_id.map(str::to_string));
        self.read_blocking(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT doc FROM webhook_subscriptions WHERE company_id = ?1
                       AND (?2 IS NULL OR link_id = ?2)
                     ORDER BY created_at, id",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![company_id, link_id], |r| r.get::<_, String>(0))
                .map_err(unavailable)?;
            docs(rows)
        })
        .await
    }

    async fn subscriptions_due(
        &self,
        before: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<SubscriptionRecord>, StoreError> {
        self.read_blocking(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT doc FROM webhook_subscriptions WHERE status = 'active' AND expires_at < ?1
                     ORDER BY expires_at LIMIT ?2",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![millis(before), limit], |r| r.get::<_, String>(0))
                .map_err(unavailable)?;
            docs(rows)
        })
        .await
    }

    async fn update_subscription_cas(
        &self,
        mut record: SubscriptionRecord,
        expected_version: i64,
    ) -> Result<bool, StoreError> {
        record.version = expected_version + 1;
        record.updated_at = super::now();
        let doc = serde_json::to_string(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.write(move |tx| {
            let n = tx
                .execute(
                    "UPDATE webhook_subscriptions SET doc = ?1, version = ?2, status = ?3, expires_at = ?4
                     WHERE company_id = ?5 AND id = ?6 AND version = ?7",
                    params![
                        doc,
                        record.version,
                        record.status.as_str(),
                        millis(record.expires_at),
                        record.company_id,
                        record.id,
                        expected_version
                    ],
                )
                .map_err(unavailable)?;
            Ok(n == 1)
        })
        .await
    }

    async fn try_lease_subscription(
        &self,
        company_id: &str,
        id: &str,
        owner: &str,
        until: time::OffsetDateTime,
    ) -> Result<Option<SubscriptionRecord>, StoreError> {
        let (company_id, id, owner) = (company_id.to_string(), id.to_string(), owner.to_string());
        self.write(move |tx| {
            let doc: Option<String> = tx
                .query_row(
                    "SELECT doc FROM webhook_subscriptions WHERE company_id = ?1 AND id = ?2",
                    params![company_id, id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            let Some(doc) = doc else {
                return Ok(None);
            };
            let mut record: SubscriptionRecord =
                serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if record.lease_until.is_some_and(|t| t > super::now())
                && record.lease_owner.as_deref() != Some(owner.as_str())
            {
                return Ok(None);
            }
            record.lease_owner = Some(owner);
            record.lease_until = Some(until);
            record.version += 1;
            let doc =
                serde_json::to_string(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tx.execute(
                "UPDATE webhook_subscriptions SET doc = ?1, version = ?2 WHERE company_id = ?3 AND id = ?4",
                params![doc, record.version, record.company_id, record.id],
            )
            .map_err(unavailable)?;
            Ok(Some(record))
        })
        .await
    }

    async fn delete_subscription(
        &self,
        company_id: &str,
        id: &str,
    ) -> Result<Option<SubscriptionRecord>, StoreError> {
        let (company_id, id) = (company_id.to_string(), id.to_string());
        self.write(move |tx| {
            let doc: Option<String> = tx
                .query_row(
                    "DELETE FROM webhook_subscriptions WHERE company_id = ?1 AND id = ?2 RETURNING doc",
                    params![company_id, id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            doc.map(|d| serde_json::from_str(&d).map_err(|e| StoreError::Corrupt(e.to_string())))
                .transpose()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{new_object_id, now};
    use flow8_vault::{MasterKey, Vault};

    fn record(
        company: &str,
        name: &str,
        kind: &str,
        secret: &serde_json::Value,
    ) -> ComponentRecord {
        let mut config = serde_json::Map::new();
        config.insert("provider".into(), "http".into());
        config.insert("auth_value".into(), secret.clone());
        ComponentRecord {
            id: new_object_id(),
            company_id: company.into(),
            name: name.into(),
            kind: kind.into(),
            config,
            is_default: false,
            created_at: now(),
            updated_at: now(),
        }
    }

    /// The refresher's queries (its list and a sweep's claim) walk the partial index of
    /// refreshable links, so their cost does not grow with the links they skip.
    #[test]
    fn the_refresher_queries_use_their_partial_index() {
        let s = EmbeddedStore::open_in_memory().unwrap();
        let c = lock(&s.reader);
        let plan = |query: &str, params: &[&dyn rusqlite::ToSql]| -> Vec<String> {
            let mut q = c.prepare(&format!("EXPLAIN QUERY PLAN {query}")).unwrap();
            q.query_map(params, |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let due = plan(DUE_FOR_REFRESH, params![0_i64, "[\"slack\"]", 10_u32]);
        let claim = plan(
            CLAIMABLE_FOR_REFRESH,
            params![0_i64, "[\"slack\"]", "2026-12-06T00:00:00Z", 10_u32],
        );
        for p in [due, claim] {
            assert!(
                p.iter().any(|l| l.contains("links_due_for_refresh")),
                "{p:?}"
            );
        }
    }

    #[tokio::test]
    async fn files_are_private_and_hold_no_plaintext() {
        const CANARY: &[u8] = b"canary-secret-123";
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let s = EmbeddedStore::open(&dir).await.unwrap();
        let vault = Vault::new(MasterKey::generate());
        // The caller (the components module) seals; the store only sees the envelope.
        let mut rec = record("A", "api", "http", &serde_json::Value::Null);
        let sealed = vault
            .encrypt("canary-secret-123", &rec.seal_context("auth_value"))
            .to_json();
        rec.config.insert("auth_value".into(), sealed);
        s.insert_component(rec).await.unwrap();
        s.put_meta("vault_check", &vault.check_value())
            .await
            .unwrap();
        let scan = |expect_wal: bool| {
            let mut seen = Vec::new();
            for e in std::fs::read_dir(&dir).unwrap() {
                let path = e.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !bytes.windows(CANARY.len()).any(|w| w == CANARY),
                    "{} holds the plaintext",
                    path.display()
                );
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                    assert_eq!(mode, 0o600, "{}", path.display());
                }
                seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
            if expect_wal {
                for f in ["flow8.db", "flow8.db-wal", "flow8.db-shm"] {
                    assert!(seen.iter().any(|n| n == f), "{f} not in {seen:?}");
                }
            }
        };
        // While open, the write sits in the WAL; after closing it is checkpointed.
        scan(true);
        drop(s);
        scan(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700);
        }
        // Reopening keeps the data, and the envelope opens again.
        let s = EmbeddedStore::open(&dir).await.unwrap();
        let back = s.find_component_by_name("A", "api").await.unwrap().unwrap();
        let env = flow8_vault::Envelope::from_json(&back.config["auth_value"]).unwrap();
        assert_eq!(
            vault
                .decrypt(&env, &back.seal_context("auth_value"))
                .unwrap()
                .expose(),
            "canary-secret-123"
        );
        vault
            .verify_check_value(&s.get_meta("vault_check").await.unwrap().unwrap())
            .unwrap();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn an_existing_directory_is_left_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // A database file someone created loosely is ours: it is tightened.
        std::fs::write(dir.path().join(DB_FILE), b"").unwrap();
        std::fs::set_permissions(
            dir.path().join(DB_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let _s = EmbeddedStore::open(dir.path()).await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o755);
        assert_eq!(mode(&dir.path().join(DB_FILE)), 0o600);
    }

    // Component, link, token, state and audit behaviour common to both stores is in
    // the conformance suite (tests/e2e/store_conformance.rs); these are SQLite's own.

    #[tokio::test]
    async fn two_processes_share_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cli, server) = (
            EmbeddedStore::open(dir.path()).await.unwrap(),
            EmbeddedStore::open(dir.path()).await.unwrap(),
        );
        let a = record("A", "api", "http", &serde_json::json!("x"));
        cli.insert_component(a.clone()).await.unwrap();
        assert_eq!(
            server.get_component("A", &a.id).await.unwrap(),
            Some(a.clone())
        );
        assert!(server.set_default_component("A", &a.id).await.unwrap());
        assert!(
            cli.default_component("A", "http")
                .await
                .unwrap()
                .unwrap()
                .is_default
        );
        server.put_meta("k", "v").await.unwrap();
        assert_eq!(cli.get_meta("k").await.unwrap().as_deref(), Some("v"));
        assert!(matches!(
            server
                .insert_component(record("A", "api", "http", &serde_json::json!("y")))
                .await,
            Err(StoreError::Conflict(_))
        ));
    }

    #[tokio::test]
    async fn reads_do_not_wait_for_another_processs_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).await.unwrap();
        s.put_meta("k", "before").await.unwrap();
        // Another process takes the write lock and keeps it.
        let other = Connection::open(dir.path().join(DB_FILE)).unwrap();
        other
            .execute_batch(
                "BEGIN IMMEDIATE; UPDATE meta SET value = 'uncommitted' WHERE key = 'k';",
            )
            .unwrap();
        let t = std::time::Instant::now();
        assert_eq!(s.get_meta("k").await.unwrap().as_deref(), Some("before"));
        assert_eq!(s.list_components("A").await.unwrap(), vec![]);
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        // A write waits for the lock (within the busy timeout), then succeeds.
        let writer = s.clone();
        let pending = tokio::spawn(async move { writer.put_meta("k", "after").await });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!pending.is_finished());
        other.execute_batch("COMMIT").unwrap();
        pending.await.unwrap().unwrap();
        assert_eq!(s.get_meta("k").await.unwrap().as_deref(), Some("after"));
    }

    #[tokio::test]
    async fn schema_is_idempotent_and_versioned() {
        let dir = tempfile::tempdir().unwrap();
        drop(EmbeddedStore::open(dir.path()).await.unwrap());
        let s = EmbeddedStore::open(dir.path()).await.unwrap();
        assert_eq!(
            s.get_meta("schema_version").await.unwrap().as_deref(),
            Some("1")
        );
        // Every component query is backed by an index.
        let plan = |sql: &str| -> String {
            let c = lock(&s.reader);
            let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .map(Result::unwrap)
                .collect::<Vec<_>>();
            rows.join("; ")
        };
        for sql in [
            "SELECT doc FROM components WHERE company_id = 'A' AND id = 'x'",
            "SELECT doc FROM components WHERE company_id = 'A' AND name = 'x'",
            "SELECT doc FROM components WHERE company_id = 'A' ORDER BY name",
            "SELECT doc FROM components WHERE company_id = 'A' AND kind = 'http' AND is_default = 1",
        ] {
            let p = plan(sql);
            assert!(
                p.contains("USING") && !p.contains("TEMP B-TREE"),
                "{sql}: {p}"
            );
        }
        s.put_meta("schema_version", "99").await.unwrap();
        drop(s);
        assert!(matches!(
            EmbeddedStore::open(dir.path()).await,
            Err(StoreError::Corrupt(m)) if m.contains("99")
        ));
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![b'x'; 4096]).unwrap();
        assert!(matches!(
            EmbeddedStore::open(dir.path()).await,
            Err(StoreError::Corrupt(_))
        ));
    }
}
