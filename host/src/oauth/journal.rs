//! The refresh journal: a provider's refresh answer, sealed, on local disk before the
//! store write. A provider that rotates refresh tokens spends the old one as it answers;
//! if the store write then fails (the store is down, or the host crashes), the journal
//! still holds the only usable refresh token. The host writes it to the store when the
//! store takes writes again, at its next start after a crash, and before it would ever
//! refresh that link again.
//!
//! An entry replaces the stored link only while the store still holds the refresh
//! token the entry spent: if anyone refreshed (or reconnected) the link since, the
//! entry is obsolete and dropped. Files are `<dir>/<link id>.json`, 0600, written aside,
//! synced and renamed into place; tokens in them are sealed by the vault.

use crate::store::LinkRecord;
use crate::vault::Envelope;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The journal's directory inside the data directory.
pub const JOURNAL_DIR: &str = "oauth-journal";

/// One refreshed link not yet known to be in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The link as it should be stored (tokens sealed).
    pub link: LinkRecord,
    /// The refresh token the refresh spent (sealed, as the store held it).
    pub spent_refresh_token: Option<Envelope>,
}

/// The journal directory.
#[derive(Debug, Clone)]
pub struct RefreshJournal {
    dir: PathBuf,
}

fn safe_name(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl RefreshJournal {
    /// A journal in `dir` (created 0700 when first written).
    pub fn at(dir: impl Into<PathBuf>) -> RefreshJournal {
        RefreshJournal { dir: dir.into() }
    }

    fn path(&self, link_id: &str) -> Option<PathBuf> {
        safe_name(link_id).then(|| self.dir.join(format!("{link_id}.json")))
    }

    /// Record a refreshed link durably (synced before this returns).
    pub fn record(&self, entry: &JournalEntry) -> std::io::Result<()> {
        use std::io::Write;
        let path = self.path(&entry.link.id).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "link id is not a file name",
            )
        })?;
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(&self.dir)?;
        let tmp = self.dir.join(format!(
            ".{}.{:016x}.tmp",
            entry.link.id,
            rand::random::<u64>()
        ));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let text = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        let written = (|| {
            let mut f = opts.open(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// The entry for a link, if one is pending.
    pub fn get(&self, link_id: &str) -> Option<JournalEntry> {
        let text = std::fs::read(self.path(link_id)?).ok()?;
        match serde_json::from_slice(&text) {
            Ok(e) => Some(e),
            Err(err) => {
                tracing::error!(link = %link_id, error = %err, "unreadable refresh journal entry; left in place");
                None
            }
        }
    }

    /// Every pending entry.
    pub fn pending(&self) -> Vec<JournalEntry> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json")
                && let Some(entry) = self.get(id)
            {
                out.push(entry);
            }
        }
        out
    }

    /// Forget a link's entry (it is in the store, or obsolete).
    pub fn remove(&self, link_id: &str) {
        if let Some(p) = self.path(link_id) {
            let _ = std::fs::remove_file(p);
        }
    }
}
