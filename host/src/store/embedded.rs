//! The embedded default store: SQLite (bundled, no server to install) in
//! `<data-dir>/flow8.db`, WAL mode so the CLI and a running server can share the file.
//! Each document is kept whole as JSON beside the columns it is queried by, and every
//! query has an index. Point reads run inline (WAL readers never wait on writers);
//! writes run on the blocking pool.

use super::{AuditQuery, AuditRecord, ComponentRecord, Store, StoreError, TokenRecord};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::{Arc, Mutex};

const SCHEMA_VERSION: i64 = 1;

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
";

/// SQLite-backed store.
#[derive(Clone)]
pub struct EmbeddedStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmbeddedStore")
    }
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict("a record with that unique key already exists".into())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
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

fn parse(doc: String, is_default: bool) -> Result<ComponentRecord, StoreError> {
    let mut r: ComponentRecord =
        serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    r.is_default = is_default;
    Ok(r)
}

impl EmbeddedStore {
    /// Open (creating) `<data_dir>/flow8.db`, directory 0700 and files 0600.
    pub async fn open(data_dir: &Path) -> Result<EmbeddedStore, StoreError> {
        let data_dir = data_dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&data_dir)
                .map_err(|e| StoreError::Unavailable(format!("{}: {e}", data_dir.display())))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700));
            }
            let path = data_dir.join("flow8.db");
            #[cfg(unix)]
            if !path.exists() {
                use std::os::unix::fs::OpenOptionsExt;
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path);
            }
            let conn = Connection::open(&path).map_err(unavailable)?;
            Self::init(conn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    /// A private in-memory store (tests).
    pub fn open_in_memory() -> Result<EmbeddedStore, StoreError> {
        Self::init(Connection::open_in_memory().map_err(unavailable)?)
    }

    fn init(conn: Connection) -> Result<EmbeddedStore, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(unavailable)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        let version: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(unavailable)?;
        match version.map(|v| v.parse::<i64>()) {
            None => {
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?1)",
                    params![SCHEMA_VERSION.to_string()],
                )
                .map_err(unavailable)?;
            }
            Some(Ok(v)) if v <= SCHEMA_VERSION => {}
            Some(_) => {
                return Err(StoreError::Corrupt(format!(
                    "the store's schema is newer than this host understands ({SCHEMA_VERSION}); upgrade the host"
                )));
            }
        }
        Ok(EmbeddedStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Run `f` on the connection now (point reads: microseconds).
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| StoreError::Unavailable("store lock poisoned".into()))?;
        f(&conn)
    }

    /// Run `f` in a transaction on the blocking pool (writes may wait on another process).
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| StoreError::Unavailable("store lock poisoned".into()))?;
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let out = f(&tx)?;
            tx.commit().map_err(unavailable)?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
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
        let name = record.name.clone();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO components (id, company_id, name, kind, is_default, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![record.id, record.company_id, record.name, record.kind, record.is_default, doc],
            )
            .map_err(|e| match unavailable(e) {
                StoreError::Conflict(_) => StoreError::Conflict(format!("a component named `{name}` already exists")),
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
        self.read(|c| {
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
        self.read(|c| {
            let mut stmt = c
                .prepare_cached("SELECT doc FROM api_tokens ORDER BY created_at DESC")
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(unavailable)?;
            docs(rows)
        })
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
        let doc = serde_json::to_string(&entry).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO audit_log (id, company_id, action_type, resource_type, resource_id, ts, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    entry.id,
                    entry.company_id,
                    entry.action_type,
                    entry.resource_type,
                    entry.resource_id,
                    (entry.timestamp.unix_timestamp_nanos() / 1_000_000) as i64,
                    doc
                ],
            )
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn list_audit(
        &self,
        company_id: &str,
        q: &AuditQuery,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let millis = |t: time::OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
        self.read(|c| {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{new_object_id, now};
    use crate::vault::{MasterKey, Vault};

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

    #[tokio::test]
    async fn crud_is_scoped_by_company() {
        let s = EmbeddedStore::open_in_memory().unwrap();
        let a = record("A", "api", "http", &serde_json::json!("x"));
        s.insert_component(a.clone()).await.unwrap();
        assert_eq!(s.get_component("A", &a.id).await.unwrap(), Some(a.clone()));
        assert_eq!(
            s.find_component_by_name("A", "api").await.unwrap(),
            Some(a.clone())
        );
        assert_eq!(s.get_component("B", &a.id).await.unwrap(), None);
        assert!(!s.delete_component("B", &a.id).await.unwrap());
        assert!(!s.set_default_component("B", &a.id).await.unwrap());
        assert!(matches!(
            s.insert_component(record("A", "api", "http", &serde_json::json!("y")))
                .await,
            Err(StoreError::Conflict(_))
        ));
        // Another company may use the same name.
        s.insert_component(record("B", "api", "http", &serde_json::json!("z")))
            .await
            .unwrap();
        assert_eq!(s.list_components("A").await.unwrap().len(), 1);
        assert!(s.delete_component("A", &a.id).await.unwrap());
        assert_eq!(s.list_components("A").await.unwrap(), vec![]);
    }

    #[tokio::test]
    async fn exactly_one_default_per_kind() {
        let s = EmbeddedStore::open_in_memory().unwrap();
        let a = record("A", "one", "http", &serde_json::json!("x"));
        let b = record("A", "two", "http", &serde_json::json!("x"));
        let c = record("A", "three", "ai", &serde_json::json!("x"));
        for r in [&a, &b, &c] {
            s.insert_component(r.clone()).await.unwrap();
        }
        assert_eq!(s.default_component("A", "http").await.unwrap(), None);
        assert!(s.set_default_component("A", &a.id).await.unwrap());
        assert!(s.set_default_component("A", &c.id).await.unwrap());
        assert!(s.set_default_component("A", &b.id).await.unwrap());
        assert_eq!(
            s.default_component("A", "http").await.unwrap().unwrap().id,
            b.id
        );
        assert_eq!(
            s.default_component("A", "ai").await.unwrap().unwrap().id,
            c.id
        );
        assert!(
            !s.get_component("A", &a.id)
                .await
                .unwrap()
                .unwrap()
                .is_default
        );
        assert_eq!(s.default_component("B", "http").await.unwrap(), None);
    }

    #[tokio::test]
    async fn meta_and_files_hold_no_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).await.unwrap();
        let vault = Vault::new(MasterKey::generate());
        let sealed = serde_json::to_value(vault.encrypt("canary-secret-123")).unwrap();
        s.insert_component(record("A", "api", "http", &sealed))
            .await
            .unwrap();
        s.put_meta("k", "v1").await.unwrap();
        s.put_meta("k", "v2").await.unwrap();
        assert_eq!(s.get_meta("k").await.unwrap().as_deref(), Some("v2"));
        drop(s);
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            assert!(!bytes.windows(17).any(|w| w == b"canary-secret-123"));
        }
        // Reopening keeps the data.
        let s = EmbeddedStore::open(dir.path()).await.unwrap();
        assert_eq!(s.list_components("A").await.unwrap().len(), 1);
    }
}
