//! Taint that outlives a step: which step workspaces hold data derived from a secret,
//! and the pins that data is held to.
//!
//! Steps of a flow share a workspace (flow8 puts a step's files there for the next
//! one), so a module that read a secret could write it there and a later step, with no
//! credential bound, could send it anywhere. A private copy per step would break the
//! hand-over the workspace exists for; instead the host keeps, outside every guest's
//! reach, a record per workspace of the taints (`policy::Taint`) of every step that
//! held a secret while it had the workspace, and every later step on that workspace
//! starts with those taints. It is coarse on purpose: a guest can rewrite any file and
//! its timestamps, so "which files were written after the secret was read" is not
//! something the host could trust; the whole directory carries the taint.
//!
//! The record is written before the secret reaches the module (`credentials.get`
//! records first), and a step re-reads it before each request, so a step running
//! beside the one that read the secret is confined as soon as the secret exists in
//! the sandbox. It lives in the host's data directory (`workspace-taint/`, one JSON
//! file per workspace, named by a hash of its canonical path) and survives restarts;
//! it names the directory's device and inode, so a workspace deleted and made again
//! starts clean. Hosts sharing a workspace root over a network file system do not
//! share these records (each host confines the steps it runs).

use super::bindings::GuestError;
use super::policy::Taint;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why the record of a workspace could not be read or written. A step whose workspace
/// taint cannot be read does not run; one that cannot record it refuses the secret.
#[derive(Debug, thiserror::Error)]
pub enum TaintError {
    /// The workspace is not a directory the host can look at.
    #[error("cannot look at the step workspace `{path}`: {source}")]
    Workspace {
        /// The workspace.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The record file could not be read or written.
    #[error("cannot use the workspace taint record `{path}`: {reason}")]
    Record {
        /// The record file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Which directory a record belongs to: device, inode and, where the file system keeps
/// it, birth time (an inode number is soon reused; a guest can change neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct DirId {
    dev: u64,
    ino: u64,
    born_ns: Option<u128>,
}

/// One workspace's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    dir: DirId,
    taints: Vec<Taint>,
}

/// The records of every workspace this host has run tainted steps on.
#[derive(Debug, Default)]
pub struct WorkspaceTaints {
    /// Where the records persist; `None` keeps them in memory only (a host without a
    /// data directory, and tests).
    dir: Option<PathBuf>,
    /// The records read or written so far, by canonical workspace path. One lock for
    /// all: a record is a few hundred bytes and is touched a few times per step.
    cache: Mutex<HashMap<PathBuf, Record>>,
}

impl WorkspaceTaints {
    /// Records in memory only.
    pub fn in_memory() -> WorkspaceTaints {
        WorkspaceTaints::default()
    }

    /// Records kept in `dir` (created when first needed).
    pub fn in_dir(dir: impl Into<PathBuf>) -> WorkspaceTaints {
        WorkspaceTaints {
            dir: Some(dir.into()),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn identity(workspace: &Path) -> Result<(PathBuf, DirId), TaintError> {
        let err = |source| TaintError::Workspace {
            path: workspace.to_path_buf(),
            source,
        };
        let canonical = workspace.canonicalize().map_err(err)?;
        let meta = std::fs::metadata(&canonical).map_err(err)?;
        let born_ns = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos());
        Ok((
            canonical,
            DirId {
                dev: meta.dev(),
                ino: meta.ino(),
                born_ns,
            },
        ))
    }

    fn file_of(&self, canonical: &Path) -> Option<PathBuf> {
        let digest = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{}.json", hex::encode(digest))))
    }

    /// The record of this directory: the cached one, else the file's, else none; one
    /// of an earlier directory at the same path counts as none.
    fn load(
        &self,
        cache: &mut HashMap<PathBuf, Record>,
        canonical: &Path,
        dir: DirId,
    ) -> Result<Record, TaintError> {
        let fresh = Record {
            dir,
            taints: Vec::new(),
        };
        let record = match cache.get(canonical) {
            Some(r) => r.clone(),
            None => match self.file_of(canonical) {
                None => fresh.clone(),
                Some(file) => match std::fs::read(&file) {
                    Ok(bytes) => {
                        serde_json::from_slice(&bytes).map_err(|e| TaintError::Record {
                            path: file.clone(),
                            reason: e.to_string(),
                        })?
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => fresh.clone(),
                    Err(e) => {
                        return Err(TaintError::Record {
                            path: file,
                            reason: e.to_string(),
                        });
                    }
                },
            },
        };
        Ok(if record.dir == dir { record } else { fresh })
    }

    /// The taints data in `workspace` carries.
    pub fn current(&self, workspace: &Path) -> Result<Vec<Taint>, TaintError> {
        let (canonical, dir) = Self::identity(workspace)?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let record = self.load(&mut cache, &canonical, dir)?;
        let taints = record.taints.clone();
        cache.insert(canonical, record);
        Ok(taints)
    }

    /// `workspace` now (also) holds data derived from these: kept, on disk first when
    /// the record persists, before the caller goes on.
    pub fn add(&self, workspace: &Path, taints: &[Taint]) -> Result<(), TaintError> {
        if taints.is_empty() {
            return Ok(());
        }
        let (canonical, dir) = Self::identity(workspace)?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let mut record = self.load(&mut cache, &canonical, dir)?;
        let before = record.taints.len();
        for t in taints {
            if !record.taints.contains(t) {
                record.taints.push(t.clone());
            }
        }
        if record.taints.len() == before {
            cache.insert(canonical, record);
            return Ok(());
        }
        if let Some(file) = self.file_of(&canonical) {
            write_atomically(&file, &record).map_err(|e| TaintError::Record {
                path: file.clone(),
                reason: e.to_string(),
            })?;
        }
        cache.insert(canonical, record);
        Ok(())
    }
}

/// Write `record` to `file` through a temporary file, synced, then renamed: a crash
/// leaves the old record or the new one, never half of one.
fn write_atomically(file: &Path, record: &Record) -> std::io::Result<()> {
    use std::io::Write;
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&serde_json::to_vec(record).map_err(std::io::Error::other)?)?;
    tmp.as_file().sync_all()?;
    tmp.persist(file).map_err(|e| e.error)?;
    Ok(())
}

impl super::sandbox::StepState {
    /// Take in the workspace's taint as it is now: a step beside this one may have read
    /// a secret since this one started. Before every outbound request.
    pub(crate) fn sync_workspace_taint(&mut self) -> Result<(), GuestError> {
        // Secrets that came back in answers to wasi:http requests, first.
        self.absorb_wasi_http_findings()?;
        if let (Some(ledger), Some(ws)) = (&self.workspace_taints, &self.workspace) {
            let taints = ledger
                .current(ws)
                .map_err(|e| GuestError::Internal(e.to_string()))?;
            self.policy.inherit(taints);
        }
        Ok(())
    }

    /// Keep the step's taint with its workspace: called when the step comes to hold a
    /// secret, before the module gets it.
    pub(crate) fn record_workspace_taint(&mut self) -> Result<(), GuestError> {
        if let (Some(ledger), Some(ws)) = (&self.workspace_taints, &self.workspace) {
            ledger
                .add(ws, &self.policy.taints())
                .map_err(|e| GuestError::Internal(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::Pin;

    fn taint(c: &str) -> Taint {
        Taint {
            credential: c.into(),
            service: "http".into(),
            pins: vec![Pin::parse("https://api.example.com").expect("pin")],
        }
    }

    #[test]
    fn a_record_persists_merges_and_ends_with_its_directory() {
        let data = tempfile::tempdir().expect("dir");
        let root = tempfile::tempdir().expect("dir");
        let ws = root.path().join("w");
        std::fs::create_dir(&ws).expect("ws");
        let ledger = WorkspaceTaints::in_dir(data.path().join("workspace-taint"));
        assert!(ledger.current(&ws).expect("read").is_empty());
        ledger.add(&ws, &[taint("a")]).expect("add");
        ledger.add(&ws, &[taint("a"), taint("b")]).expect("add");
        assert_eq!(ledger.current(&ws).expect("read"), [taint("a"), taint("b")]);

        // Another host process (a restart) reads it back, by another spelling of the path.
        let again = WorkspaceTaints::in_dir(data.path().join("workspace-taint"));
        let other_spelling = root.path().join("w/../w");
        assert_eq!(
            again.current(&other_spelling).expect("read"),
            [taint("a"), taint("b")]
        );

        // A new directory at the same path starts clean, where the file system keeps
        // birth times (without them a reused inode number keeps the old taint: safe).
        std::fs::remove_dir(&ws).expect("rm");
        std::fs::create_dir(&ws).expect("mk");
        if std::fs::metadata(&ws).and_then(|m| m.created()).is_ok() {
            let third = WorkspaceTaints::in_dir(data.path().join("workspace-taint"));
            assert!(third.current(&ws).expect("read").is_empty());
        }
    }

    #[test]
    fn a_missing_workspace_is_an_error_not_a_clean_one() {
        let ledger = WorkspaceTaints::in_memory();
        assert!(ledger.current(Path::new("/no/such/workspace")).is_err());
    }
}
