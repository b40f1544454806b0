//! Writing a file into a step's workspace so that a failure loses nothing: the bytes go
//! to a hidden partial file beside the target and are renamed over it only once they
//! are complete. A write that fails, is refused (a size cap, the workspace budget) or
//! is cancelled (the step's deadline drops it) removes its partial file and leaves
//! whatever was at the path before untouched. Used by `http.send-to-workspace` and
//! `file-transfer.download`.

use std::sync::atomic::{AtomicU64, Ordering};

/// A file being written; dropped without [`PartialFile::commit`], it is removed.
pub(crate) struct PartialFile {
    dir: cap_std::fs::Dir,
    /// The target, relative to the workspace root.
    target: String,
    /// The partial file, in the target's directory.
    partial: String,
    committed: bool,
}

impl PartialFile {
    /// Start writing `target` (relative to the workspace `dir`; cap-std refuses `..`
    /// and symlinks that leave it): the file to write the bytes to, and the guard that
    /// puts them in place.
    pub(crate) fn begin(
        dir: &cap_std::fs::Dir,
        target: &str,
    ) -> std::io::Result<(PartialFile, tokio::fs::File)> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let (parent, name) = match target.rsplit_once('/') {
            Some((parent, name)) => (format!("{parent}/"), name),
            None => (String::new(), target),
        };
        // Unique within the host process, so two writes of one path in one step (or
        // two steps sharing a workspace) never share a partial file.
        let partial = format!(
            "{parent}.{name}.flow8-partial-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut options = cap_std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        let file = dir.open_with(&partial, &options)?;
        let guard = PartialFile {
            dir: dir.try_clone()?,
            target: target.to_string(),
            partial,
            committed: false,
        };
        Ok((guard, tokio::fs::File::from_std(file.into_std())))
    }

    /// Put the written bytes in place of the target (an atomic rename: a reader sees
    /// the old file or the new one, never part of either).
    pub(crate) fn commit(mut self) -> std::io::Result<()> {
        self.dir.rename(&self.partial, &self.dir, &self.target)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the write is failing already.
            let _ = self.dir.remove_file(&self.partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn workspace() -> (tempfile::TempDir, cap_std::fs::Dir) {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("sub")).unwrap();
        std::fs::write(root.path().join("sub/report.txt"), b"the old report").unwrap();
        let dir =
            cap_std::fs::Dir::open_ambient_dir(root.path(), cap_std::ambient_authority()).unwrap();
        (root, dir)
    }

    fn names(root: &std::path::Path) -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(root.join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    #[tokio::test]
    async fn an_abandoned_write_leaves_the_old_file_and_no_partial_file() {
        let (root, dir) = workspace();
        let (guard, mut file) = PartialFile::begin(&dir, "sub/report.txt").unwrap();
        file.write_all(b"half of the new").await.unwrap();
        drop(file);
        drop(guard);
        assert_eq!(
            std::fs::read(root.path().join("sub/report.txt")).unwrap(),
            b"the old report"
        );
        assert_eq!(names(root.path()), ["report.txt"]);
    }

    #[tokio::test]
    async fn a_committed_write_replaces_the_file_whole() {
        let (root, dir) = workspace();
        let (guard, mut file) = PartialFile::begin(&dir, "sub/report.txt").unwrap();
        file.write_all(b"the new report").await.unwrap();
        file.flush().await.unwrap();
        drop(file);
        guard.commit().unwrap();
        assert_eq!(
            std::fs::read(root.path().join("sub/report.txt")).unwrap(),
            b"the new report"
        );
        assert_eq!(names(root.path()), ["report.txt"]);
        // A new file at the root works the same way.
        let (guard, _file) = PartialFile::begin(&dir, "new.bin").unwrap();
        guard.commit().unwrap();
        assert!(root.path().join("new.bin").exists());
    }

    #[test]
    fn a_partial_file_cannot_leave_the_workspace() {
        let (_root, dir) = workspace();
        assert!(PartialFile::begin(&dir, "../escape.txt").is_err());
    }
}
