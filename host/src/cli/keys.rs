//! `flow8-host keys status|rotate`: which keys seal the store's secrets, and master-key
//! rotation (see `key_rotation`), and `flow8-host store export|import`: moving the
//! store's documents between the embedded store and MongoDB, secrets still sealed.

use super::fail;
use super::print_json;
use crate::app::HostSettings;
use crate::error::ErrorName;
use crate::key_rotation::{self, ROTATION_META, RotationOptions};
use crate::store::Store;
use crate::store::transfer;
use crate::vault::Vault;
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Show the current key and how many secrets each key seals.
    Status,
    /// Re-seal every secret with a new master key while hosts keep serving. With a key
    /// file, a new key is generated and put first in the file (older keys stay below it
    /// to open old secrets); with FLOW8_MASTER_KEY, set the new key there and the old
    /// one in FLOW8_PREVIOUS_MASTER_KEYS on every host first. Resumable: run it again
    /// after an interruption.
    Rotate {
        /// Records per batch.
        #[arg(long, default_value_t = 200)]
        batch_size: u32,
        /// Pause between batches, milliseconds (spares a busy store).
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
    },
    /// After a rotation: drop older keys that seal nothing any more from the key file
    /// (with FLOW8_PREVIOUS_MASTER_KEYS, list the ones that can be removed from it).
    Prune {
        /// Prune within ten minutes of the rotation: OAuth authorizations started
        /// before it (their PKCE verifier sealed with an old key) then fail.
        #[arg(long)]
        ignore_pending_authorizations: bool,
    },
}

/// `store` subcommands.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Write every component, link, API token and audit entry to a JSON-lines file
    /// (secrets stay sealed).
    Export {
        /// The file to write (`-`: standard output).
        #[arg(long)]
        out: PathBuf,
    },
    /// Read an export into the configured store (already present documents are skipped).
    Import {
        /// The export file.
        file: PathBuf,
    },
}

fn now_text() -> String {
    crate::store::now()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub(super) async fn keys(settings: &HostSettings, cmd: &KeysCommand) -> ExitCode {
    let data_dir = settings.data_dir.as_path();
    let (store, vault) = match super::commands::open_store(settings).await {
        Ok(x) => x,
        Err((name, msg)) => return fail(name, msg),
    };
    let rotation: Option<serde_json::Value> = match store.get_meta(ROTATION_META).await {
        Ok(v) => v.and_then(|t| serde_json::from_str(&t).ok()),
        Err(e) => return fail(ErrorName::StoreUnavailable, e),
    };
    match cmd {
        KeysCommand::Status => match key_rotation::key_usage(&store, &vault).await {
            Ok(usage) => {
                print_json(&serde_json::json!({
                    "current_key_id": usage.current_key_id,
                    "old_key_ids": vault.old_key_ids(),
                    "key_source": if vault.key_file().is_some() { "file" } else { "env" },
                    "secrets_by_key": usage.secrets_by_key,
                    "unbound": usage.unbound,
                    "remaining": usage.remaining(),
                    "rotation": rotation,
                }));
                ExitCode::SUCCESS
            }
            Err(e) => fail(ErrorName::StoreUnavailable, e),
        },
        KeysCommand::Prune {
            ignore_pending_authorizations,
        } => {
            if let Some(r) = &rotation {
                if r["state"] == "running" {
                    return fail(
                        ErrorName::Conflict,
                        format!(
                            "a rotation to key {} has not finished: run `flow8-host keys rotate` first",
                            r["key_id"].as_str().unwrap_or("?")
                        ),
                    );
                }
                let finished = r["finished_at"].as_str().and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                });
                if let Some(t) = finished
                    && crate::store::now() - t < time::Duration::minutes(10)
                    && !ignore_pending_authorizations
                {
                    return fail(
                        ErrorName::Conflict,
                        format!(
                            "the rotation finished at {}: OAuth authorizations started before it may still be pending (they live ten minutes); prune after that, or pass --ignore-pending-authorizations",
                            r["finished_at"].as_str().unwrap_or("?")
                        ),
                    );
                }
            }
            let usage = match key_rotation::key_usage(&store, &vault).await {
                Ok(u) => u,
                Err(e) => return fail(ErrorName::StoreUnavailable, e),
            };
            // Keys still sealing a secret, or the key check value, stay.
            let mut keep: Vec<String> = usage
                .secrets_by_key
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, _)| k.clone())
                .collect();
            if let Ok(Some(check)) = store.get_meta("vault_check").await
                && let Ok(e) = serde_json::from_str::<crate::vault::Envelope>(&check)
            {
                keep.push(e.key_id);
            }
            let unused: Vec<String> = vault
                .old_key_ids()
                .into_iter()
                .filter(|id| !keep.contains(id))
                .collect();
            if vault.key_file().is_some() {
                match crate::vault::prune_key_file(data_dir, &keep) {
                    Ok(dropped) => {
                        print_json(
                            &serde_json::json!({"current_key_id": vault.key_id(), "dropped_key_ids": dropped}),
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(ErrorName::VaultError, e),
                }
            } else {
                print_json(&serde_json::json!({
                    "current_key_id": vault.key_id(),
                    "unused_previous_key_ids": unused,
                    "hint": "remove these keys from FLOW8_PREVIOUS_MASTER_KEYS on every host",
                }));
                ExitCode::SUCCESS
            }
        }
        KeysCommand::Rotate {
            batch_size,
            pause_ms,
        } => {
            let running_to = rotation
                .as_ref()
                .filter(|r| r["state"] == "running")
                .and_then(|r| r["key_id"].as_str())
                .map(str::to_string);
            let vault = if let Some(path) = vault.key_file() {
                if running_to.as_deref() == Some(vault.key_id().as_str()) {
                    eprintln!("resuming the rotation to key {}", vault.key_id());
                    vault
                } else {
                    let id = match crate::vault::rotate_key_file(data_dir) {
                        Ok(id) => id,
                        Err(e) => return fail(ErrorName::VaultError, e),
                    };
                    eprintln!(
                        "new master key {id} is first in {}; older keys stay below it to open old secrets",
                        path.display()
                    );
                    match Vault::load(data_dir) {
                        Ok(v) => Arc::new(v),
                        Err(e) => return fail(ErrorName::VaultError, e),
                    }
                }
            } else {
                eprintln!(
                    "re-sealing with FLOW8_MASTER_KEY (key {}); older keys from FLOW8_PREVIOUS_MASTER_KEYS: {:?}",
                    vault.key_id(),
                    vault.old_key_ids()
                );
                vault
            };
            let key_id = vault.key_id();
            let started =
                serde_json::json!({"state": "running", "key_id": key_id, "started_at": now_text()});
            // The check value moves to the new key first: a host started with only an
            // old key now refuses to start instead of failing on re-sealed secrets.
            let begin = async {
                store.put_meta(ROTATION_META, &started.to_string()).await?;
                store.put_meta("vault_check", &vault.check_value()).await
            };
            if let Err(e) = begin.await {
                return fail(ErrorName::StoreUnavailable, e);
            }
            let opts = RotationOptions {
                batch_size: *batch_size,
                pause: std::time::Duration::from_millis(*pause_ms),
            };
            let report = key_rotation::reseal_all(&store, &vault, &opts, |p| {
                eprintln!(
                    "progress: components {} links {} resealed {}",
                    p.components_seen, p.links_seen, p.resealed
                );
            })
            .await;
            let report = match report {
                Ok(r) => r,
                Err(e) => {
                    return fail(
                        ErrorName::StoreUnavailable,
                        format!(
                            "{e}; what was re-sealed stays re-sealed: run `flow8-host keys rotate` again to resume"
                        ),
                    );
                }
            };
            if !report.unreadable.is_empty() {
                return fail(
                    ErrorName::VaultError,
                    format!(
                        "{} records hold secrets sealed with keys this host does not have ({}); add those keys (FLOW8_PREVIOUS_MASTER_KEYS or the key file) and run again",
                        report.unreadable.len(),
                        report.unreadable.join(", ")
                    ),
                );
            }
            let done =
                serde_json::json!({"state": "done", "key_id": key_id, "finished_at": now_text()});
            if let Err(e) = store.put_meta(ROTATION_META, &done.to_string()).await {
                return fail(ErrorName::StoreUnavailable, e);
            }
            print_json(&serde_json::to_value(&report).expect("report serialises"));
            ExitCode::SUCCESS
        }
    }
}

pub(super) async fn store_cmd(settings: &HostSettings, cmd: &StoreCommand) -> ExitCode {
    let (store, vault) = match super::commands::open_store(settings).await {
        Ok(x) => x,
        Err((name, msg)) => return fail(name, msg),
    };
    match cmd {
        StoreCommand::Export { out } => {
            let result = if out.as_os_str() == "-" {
                let mut w = std::io::BufWriter::new(std::io::stdout().lock());
                transfer::export(&store, &mut w).await
            } else {
                let file = match create_private(out) {
                    Ok(f) => f,
                    Err(e) => {
                        return fail(
                            ErrorName::IoError,
                            format!("cannot create {}: {e}", out.display()),
                        );
                    }
                };
                let mut w = std::io::BufWriter::new(file);
                let r = transfer::export(&store, &mut w).await;
                let synced = w
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .and_then(|f| f.sync_all());
                match (r, synced) {
                    (Ok(c), Ok(())) => Ok(c),
                    (Err(e), _) => Err(e),
                    (_, Err(e)) => Err(e.into()),
                }
            };
            match result {
                Ok(counts) => {
                    let v = serde_json::json!({"exported": counts, "store": store_description(settings)});
                    if out.as_os_str() == "-" {
                        eprintln!("{v}");
                    } else {
                        print_json(&v);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => transfer_failure(e),
            }
        }
        StoreCommand::Import { file } => {
            let f = match std::fs::File::open(file) {
                Ok(f) => f,
                Err(e) => {
                    return fail(
                        ErrorName::IoError,
                        format!("cannot read {}: {e}", file.display()),
                    );
                }
            };
            match transfer::import(&store, &vault, std::io::BufReader::new(f)).await {
                Ok(report) => {
                    print_json(&serde_json::json!({
                        "imported": report.imported,
                        "skipped": report.skipped,
                        "store": store_description(settings),
                    }));
                    ExitCode::SUCCESS
                }
                Err(e) => transfer_failure(e),
            }
        }
    }
}

fn transfer_failure(e: transfer::TransferError) -> ExitCode {
    use transfer::TransferError as E;
    match e {
        E::Store(e) => fail(ErrorName::StoreUnavailable, e),
        E::Io(e) => fail(ErrorName::IoError, e),
        e @ E::Format { .. } => fail(ErrorName::InvalidInput, e),
        e @ E::WrongKey(_) => fail(ErrorName::WrongMasterKey, e),
    }
}

/// A new file readable by the owner only (an export holds sealed secrets and hashes).
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

/// The store a command used, for its answer (MongoDB hosts without credentials).
fn store_description(settings: &HostSettings) -> String {
    crate::store::StoreLocation::parse(settings.config.store.expose())
        .map(|l| l.describe())
        .unwrap_or_default()
}
