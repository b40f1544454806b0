//! Moving a host's documents between stores (embedded → MongoDB when a local setup
//! grows, and back). The export is JSON lines: a header, then one document per line.
//! Secrets stay sealed exactly as stored: the file never holds a plaintext secret, and
//! only a host with the same master key can use what it imports. The header carries
//! the store's key check value, so an import into a store (or by a host) with another
//! key is refused before anything is written.
//!
//! Installed modules travel with their bytes (base64, checked against their digest on
//! import) and webhook events as stored.
//!
//! Import is idempotent: a document whose id (or unique name) is already there is
//! counted as skipped, so an interrupted import is finished by running it again.
//! Pending OAuth states are not moved (they live ten minutes).

use super::{
    AnyStore, AuditRecord, ComponentRecord, EventRecord, LinkRecord, ModuleRecord, Store,
    StoreError, TokenRecord,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use flow8_vault::Vault;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufRead, Write};

/// The export format's version.
pub const FORMAT_VERSION: u32 = 1;

/// The first line of an export.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportHeader {
    /// Always `flow8-host-export`.
    pub format: String,
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The source store's master-key check value (sealed, not a secret).
    pub vault_check: Option<String>,
}

/// One document of an export.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "collection", content = "doc", rename_all = "snake_case")]
pub enum ExportItem {
    /// A component (secrets sealed).
    Components(ComponentRecord),
    /// An OAuth link (tokens sealed).
    DbLinks(Box<LinkRecord>),
    /// An API token (hashed).
    ApiTokens(TokenRecord),
    /// An audit entry.
    AuditLog(AuditRecord),
    /// An installed module and its bytes.
    Modules(Box<ExportedModule>),
    /// A stored webhook event.
    Events(EventRecord),
}

/// An installed module in an export: its metadata and its bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedModule {
    /// The metadata, as stored.
    pub record: ModuleRecord,
    /// The component, standard base64.
    pub bytes: String,
}

/// Counts per collection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TransferCounts {
    /// Components.
    pub components: u64,
    /// Links.
    pub db_links: u64,
    /// API tokens.
    pub api_tokens: u64,
    /// Audit entries.
    pub audit_log: u64,
    /// Installed modules.
    pub modules: u64,
    /// Webhook events.
    pub events: u64,
}

impl TransferCounts {
    fn add(&mut self, item: &ExportItem) {
        match item {
            ExportItem::Components(_) => self.components += 1,
            ExportItem::DbLinks(_) => self.db_links += 1,
            ExportItem::ApiTokens(_) => self.api_tokens += 1,
            ExportItem::AuditLog(_) => self.audit_log += 1,
            ExportItem::Modules(_) => self.modules += 1,
            ExportItem::Events(_) => self.events += 1,
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Written.
    pub imported: TransferCounts,
    /// Already there.
    pub skipped: TransferCounts,
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading or writing the file failed.
    #[error("export file: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not an export this host understands.
    #[error("line {line}: {message}")]
    Format {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The export was sealed with another master key than this host's.
    #[error(
        "the export was written by a store with another master key: {0}; import it with the host key it was exported with"
    )]
    WrongKey(String),
}

const PAGE: u32 = 500;

/// Write every component, link, API token, audit entry, installed module (with its
/// bytes) and webhook event of `store` to `out`.
pub async fn export(
    store: &AnyStore,
    out: &mut impl Write,
) -> Result<TransferCounts, TransferError> {
    let header = ExportHeader {
        format: "flow8-host-export".into(),
        version: FORMAT_VERSION,
        vault_check: store.get_meta("vault_check").await?,
    };
    write_line(out, &header)?;
    let mut counts = TransferCounts::default();
    let mut emit = |out: &mut dyn Write, item: ExportItem| -> Result<(), TransferError> {
        counts.add(&item);
        write_line(out, &item)
    };
    let mut after: Option<String> = None;
    loop {
        let page = store.scan_components(after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for c in page {
            emit(out, ExportItem::Components(c))?;
        }
    }
    let mut after: Option<String> = None;
    loop {
        let page = store.scan_links(after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for l in page {
            emit(out, ExportItem::DbLinks(Box::new(l)))?;
        }
    }
    for t in store.list_tokens().await? {
        emit(out, ExportItem::ApiTokens(t))?;
    }
    let mut after: Option<String> = None;
    loop {
        let page = store.scan_audit(after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for a in page {
            emit(out, ExportItem::AuditLog(a))?;
        }
    }
    for company in store.module_companies().await? {
        for record in store.list_modules(&company).await? {
            // Removed between the list and this read: nothing to carry.
            let Some(bytes) = store
                .get_module_bytes(&record.company_id, &record.digest)
                .await?
            else {
                continue;
            };
            let bytes = B64.encode(bytes);
            emit(
                out,
                ExportItem::Modules(Box::new(ExportedModule { record, bytes })),
            )?;
        }
    }
    let mut after: Option<String> = None;
    loop {
        let page = store.scan_events(after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for e in page {
            emit(out, ExportItem::Events(e))?;
        }
    }
    out.flush()?;
    Ok(counts)
}

/// Read an export into `store`. The export's key check must open with `vault`, and the
/// target store's own check (if it has one) too.
pub async fn import(
    store: &AnyStore,
    vault: &Vault,
    input: impl BufRead,
) -> Result<ImportReport, TransferError> {
    let mut lines = input.lines().enumerate();
    let header: ExportHeader = match lines.next() {
        Some((_, l)) => serde_json::from_str(&l?).map_err(|e| TransferError::Format {
            line: 1,
            message: format!("not a flow8-host export header: {e}"),
        })?,
        None => {
            return Err(TransferError::Format {
                line: 1,
                message: "the file is empty".into(),
            });
        }
    };
    if header.format != "flow8-host-export" || header.version > FORMAT_VERSION {
        return Err(TransferError::Format {
            line: 1,
            message: format!(
                "format `{}` version {} is not one this host reads (flow8-host-export {FORMAT_VERSION})",
                header.format, header.version
            ),
        });
    }
    if let Some(check) = &header.vault_check {
        vault
            .verify_check_value(check)
            .map_err(|e| TransferError::WrongKey(e.to_string()))?;
    }
    let mut report = ImportReport::default();
    let mut audit_batch: Vec<AuditRecord> = Vec::new();
    for (i, line) in lines {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let item: ExportItem = serde_json::from_str(&line).map_err(|e| TransferError::Format {
            line: i + 1,
            message: e.to_string(),
        })?;
        let outcome = match &item {
            ExportItem::Components(c) => store.insert_component(c.clone()).await,
            ExportItem::DbLinks(l) => store.insert_link((**l).clone()).await,
            ExportItem::ApiTokens(t) => store.insert_token(t.clone()).await,
            ExportItem::Modules(m) => {
                let bytes = B64.decode(&m.bytes).map_err(|e| TransferError::Format {
                    line: i + 1,
                    message: format!("module bytes are not base64: {e}"),
                })?;
                if hex::encode(Sha256::digest(&bytes)) != m.record.digest {
                    return Err(TransferError::Format {
                        line: i + 1,
                        message: format!(
                            "the bytes of module {}@{} do not match its digest",
                            m.record.name, m.record.version
                        ),
                    });
                }
                store.put_module(m.record.clone(), bytes).await
            }
            // A second copy of an event is refused by its unique key, not an error.
            ExportItem::Events(e) => match store.insert_event(e.clone()).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(StoreError::Conflict("event already stored".into())),
                Err(e) => Err(e),
            },
            ExportItem::AuditLog(a) => {
                audit_batch.push(a.clone());
                report.imported.add(&item);
                if audit_batch.len() >= PAGE as usize {
                    import_audit(store, std::mem::take(&mut audit_batch), &mut report).await?;
                }
                continue;
            }
        };
        match outcome {
            Ok(()) => report.imported.add(&item),
            Err(StoreError::Conflict(_)) => report.skipped.add(&item),
            Err(e) => return Err(e.into()),
        }
    }
    import_audit(store, audit_batch, &mut report).await?;
    if store.get_meta("vault_check").await?.is_none() {
        store.put_meta("vault_check", &vault.check_value()).await?;
    }
    Ok(report)
}

/// Audit entries in one batch; if some were already there, one by one.
async fn import_audit(
    store: &AnyStore,
    batch: Vec<AuditRecord>,
    report: &mut ImportReport,
) -> Result<(), TransferError> {
    if batch.is_empty() {
        return Ok(());
    }
    match store.insert_audit_batch(batch.clone()).await {
        Ok(()) => Ok(()),
        Err(StoreError::Conflict(_)) => {
            for a in batch {
                match store.insert_audit(a).await {
                    Ok(()) => {}
                    Err(StoreError::Conflict(_)) => {
                        report.imported.audit_log -= 1;
                        report.skipped.audit_log += 1;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn write_line<T: Serialize>(out: &mut dyn Write, value: &T) -> Result<(), TransferError> {
    let text = serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedStore;
    use crate::{new_object_id, now};
    use flow8_vault::MasterKey;

    #[tokio::test]
    async fn round_trip_is_sealed_idempotent_and_key_checked() {
        let key = MasterKey::generate();
        let vault = Vault::new(key.clone());
        let from = AnyStore::from(EmbeddedStore::open_in_memory().unwrap());
        from.put_meta("vault_check", &vault.check_value())
            .await
            .unwrap();
        let id = new_object_id();
        let mut config = serde_json::Map::new();
        config.insert("provider".into(), "http".into());
        config.insert(
            "auth_value".into(),
            vault
                .encrypt(
                    "canary-export-1",
                    &crate::sealing::component("A", &id, "auth_value"),
                )
                .to_json(),
        );
        from.insert_component(ComponentRecord {
            id,
            company_id: "A".into(),
            name: "api".into(),
            kind: "http".into(),
            config,
            is_default: true,
            created_at: now(),
            updated_at: now(),
        })
        .await
        .unwrap();
        let bytes = b"an installed module".to_vec();
        let module = ModuleRecord {
            company_id: "A".into(),
            name: "theirs".into(),
            version: "1.0.0".into(),
            digest: hex::encode(Sha256::digest(&bytes)),
            size: bytes.len() as u64,
            installed_at: now(),
            installed_by: None,
            signature: None,
            source: None,
            approval: None,
        };
        from.put_module(module.clone(), bytes.clone())
            .await
            .unwrap();
        let event = EventRecord {
            id: new_object_id(),
            company_id: "A".into(),
            service: "slack".into(),
            provider_event_id: "Ev1".into(),
            link_id: None,
            event_type: "message".into(),
            payload: serde_json::json!({"text": "hi"}),
            received_at: now(),
        };
        assert!(from.insert_event(event.clone()).await.unwrap());
        let mut file = Vec::new();
        let counts = export(&from, &mut file).await.unwrap();
        assert_eq!(counts.components, 1);
        assert_eq!((counts.modules, counts.events), (1, 1));
        assert!(!String::from_utf8_lossy(&file).contains("canary-export-1"));

        let to = AnyStore::from(EmbeddedStore::open_in_memory().unwrap());
        let r = import(&to, &vault, file.as_slice()).await.unwrap();
        assert_eq!((r.imported.components, r.skipped.components), (1, 0));
        let again = import(&to, &vault, file.as_slice()).await.unwrap();
        assert_eq!(
            (again.imported.components, again.skipped.components),
            (0, 1)
        );
        assert_eq!((r.imported.modules, r.imported.events), (1, 1));
        assert_eq!((again.skipped.modules, again.skipped.events), (1, 1));
        assert_eq!(to.list_modules("A").await.unwrap(), vec![module.clone()]);
        assert_eq!(
            to.get_module_bytes("A", &module.digest).await.unwrap(),
            Some(bytes)
        );
        let events = to
            .list_events(
                "A",
                &crate::EventQuery {
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(events, vec![event]);
        // Bytes that are not the module's digest are refused, not installed.
        let tampered = String::from_utf8(file.clone()).unwrap().replace(
            &B64.encode(b"an installed module"),
            &B64.encode(b"other bytes"),
        );
        let elsewhere = AnyStore::from(EmbeddedStore::open_in_memory().unwrap());
        assert!(matches!(
            import(&elsewhere, &vault, tampered.as_bytes()).await,
            Err(TransferError::Format { .. })
        ));
        assert_eq!(
            to.list_components("A").await.unwrap(),
            from.list_components("A").await.unwrap()
        );
        // Records keep their company and id, so their bound secrets open where they land.
        let moved = &to.list_components("A").await.unwrap()[0];
        let sealed = flow8_vault::Envelope::from_json(&moved.config["auth_value"]).unwrap();
        assert_eq!(
            vault
                .decrypt(&sealed, &moved.seal_context("auth_value"))
                .unwrap()
                .expose(),
            "canary-export-1"
        );
        // Another key: refused before anything is written.
        let other = AnyStore::from(EmbeddedStore::open_in_memory().unwrap());
        let wrong = Vault::new(MasterKey::generate());
        assert!(matches!(
            import(&other, &wrong, file.as_slice()).await,
            Err(TransferError::WrongKey(_))
        ));
        assert_eq!(other.list_components("A").await.unwrap(), vec![]);
        // Not an export.
        assert!(matches!(
            import(&other, &vault, b"{\"hello\": 1}\n".as_slice()).await,
            Err(TransferError::Format { line: 1, .. })
        ));
    }
}
