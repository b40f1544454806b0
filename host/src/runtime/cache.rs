//! The on-disk cache of compiled components. Compiling a component takes tens to
//! hundreds of milliseconds; loading a compiled one takes a fraction of one. Entries
//! are keyed by the module's SHA-256 and the engine's compatibility key, written
//! atomically, and kept in a directory only the host may write (loading compiled code
//! trusts it).
//!
//! The cache is bounded ([`CacheLimits`]): each use of an entry renews its file time,
//! and after every new entry (and once at start) entries unused for longer than the
//! age limit are removed, then the least recently used ones until the directory is
//! within its size limit. A compiled JavaScript or Python component is tens of
//! megabytes, so without a bound the directory grows with every version installed.

use super::engine::{CodeTier, SandboxEngine};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use wasmtime::component::Component;

/// How much the compile cache may keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// The most bytes of compiled components kept (the newest entry is kept even when
    /// it alone is larger).
    pub max_bytes: u64,
    /// Entries unused for longer than this are removed.
    pub max_age: Duration,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_bytes: 2048 * 1024 * 1024,
            max_age: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Where compiled components live.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
    limits: CacheLimits,
    /// Components compiled (not read back from the directory) by this cache and its
    /// clones since it was made.
    compiled: Arc<AtomicU64>,
}

impl CompileCache {
    /// A cache in `dir` (created 0700 if missing).
    pub fn at(dir: impl Into<PathBuf>) -> std::io::Result<CompileCache> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(CompileCache {
            dir: Some(dir),
            limits: CacheLimits::default(),
            compiled: Arc::default(),
        })
    }

    /// No cache: always compile.
    pub fn disabled() -> CompileCache {
        CompileCache {
            dir: None,
            limits: CacheLimits::default(),
            compiled: Arc::default(),
        }
    }

    /// Bound the cache by these limits, evicting what is over them now.
    pub fn with_limits(mut self, limits: CacheLimits) -> CompileCache {
        self.limits = limits;
        if let Some(dir) = &self.dir {
            evict(dir, limits, None, SystemTime::now());
        }
        self
    }

    /// How many components this cache (and its clones) compiled, rather than read back
    /// compiled, since it was made.
    pub fn compiled(&self) -> u64 {
        self.compiled.load(Ordering::Relaxed)
    }

    /// Remember which module name the `.wasm` with SHA-256 `digest` declares, so a later
    /// host looking for another name need not compile it to find out (see
    /// `ModuleRegistry::resolve`). A few bytes per digest, beside the compiled entries
    /// (eviction leaves them: they are not `.cwasm`). Failing to write only loses the
    /// shortcut.
    pub fn remember_name(&self, digest: &str, name: &str) {
        let Some(dir) = &self.dir else {
            return;
        };
        let path = dir.join(format!("{digest}.name"));
        if std::fs::read_to_string(&path).is_ok_and(|n| n == name) {
            return;
        }
        let written = tempfile::NamedTempFile::new_in(dir).and_then(|mut f| {
            std::io::Write::write_all(&mut f, name.as_bytes())?;
            f.persist(&path).map_err(|e| e.error)?;
            Ok(())
        });
        if let Err(e) = written {
            tracing::debug!(path = %path.display(), error = %e, "cannot write a module name to the compile cache");
        }
    }

    /// The module name the `.wasm` with SHA-256 `digest` declared when this cache last
    /// loaded it, if it has.
    pub fn known_name(&self, digest: &str) -> Option<String> {
        let dir = self.dir.as_ref()?;
        let name = std::fs::read_to_string(dir.join(format!("{digest}.name"))).ok()?;
        (!name.is_empty() && name.len() <= 128).then_some(name)
    }

    fn entry(&self, engine: &SandboxEngine, tier: CodeTier, digest: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{digest}-{}.cwasm", engine.compatibility_key(tier))))
    }

    /// Whether code of `tier` for the `.wasm` with SHA-256 `digest` is in the cache (it
    /// may still turn out unusable when loaded, and is then compiled again).
    pub fn has(&self, engine: &SandboxEngine, tier: CodeTier, digest: &str) -> bool {
        self.entry(engine, tier, digest).is_some_and(|p| p.exists())
    }

    /// Load the compiled form of `bytes` (whose SHA-256 is `digest`) in code of `tier`,
    /// compiling and storing it on a miss. A corrupt or stale entry is recompiled, not
    /// fatal.
    pub fn load(
        &self,
        engine: &SandboxEngine,
        tier: CodeTier,
        digest: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<Component> {
        let entry = self.entry(engine, tier, digest);
        if let Some(path) = &entry
            && path.exists()
        {
            // SAFETY: the cache directory is created 0700 by this host and entries are
            // written only by `store` below from code this engine compiled; wasmtime
            // also checks the header and engine compatibility before using it.
            match unsafe { Component::deserialize_file(engine.engine_of(tier), path) } {
                Ok(c) => {
                    // Renew its time: eviction removes the least recently used first.
                    let touched = std::fs::File::options()
                        .append(true)
                        .open(path)
                        .and_then(|f| f.set_modified(SystemTime::now()));
                    if let Err(e) = touched {
                        tracing::debug!(path = %path.display(), error = %e, "cannot renew a compile cache entry's time");
                    }
                    return Ok(c);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unusable compiled-module cache entry")
                }
            }
        }
        let component = Component::new(engine.engine_of(tier), bytes)?;
        self.compiled.fetch_add(1, Ordering::Relaxed);
        if let Some(path) = &entry {
            match store(path, &component) {
                Ok(()) => {
                    if let Some(dir) = &self.dir {
                        evict(dir, self.limits, Some(path), SystemTime::now());
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write compiled-module cache entry")
                }
            }
        }
        Ok(component)
    }
}

/// Remove the entries of `dir` unused for longer than `limits.max_age` (by file time),
/// then the least recently used until the rest fit in `limits.max_bytes`; `keep` (the
/// entry just written) is never removed. Only `.cwasm` files are considered. Returns
/// how many entries were removed. Another host process sharing the directory may
/// remove an entry this one uses: it is compiled again on its next load.
pub fn evict(dir: &Path, limits: CacheLimits, keep: Option<&Path>, now: SystemTime) -> usize {
    let Ok(read) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut entries: Vec<(PathBuf, u64, SystemTime)> = read
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_file()
                .then(|| (e.path(), meta.len(), meta.modified().unwrap_or(now)))
        })
        .collect();
    // Oldest first.
    entries.sort_by_key(|(_, _, t)| *t);
    let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
    let mut removed = 0;
    for (path, len, used) in &entries {
        if keep == Some(path.as_path()) {
            continue;
        }
        let too_old = now.duration_since(*used).unwrap_or_default() > limits.max_age;
        if !too_old && total <= limits.max_bytes {
            continue;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {
                total = total.saturating_sub(*len);
                removed += 1;
                tracing::debug!(path = %path.display(), too_old, "compile cache entry evicted");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                total = total.saturating_sub(*len);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot evict a compile cache entry")
            }
        }
    }
    removed
}

fn store(path: &Path, component: &Component) -> anyhow::Result<()> {
    let bytes = component
        .serialize()
        .map_err(|e| anyhow::anyhow!("serialize: {e}"))?;
    let dir = path.parent().expect("cache entries live in a directory");
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, &bytes)?;
    tmp.persist(path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake entry of `len` bytes last used `age` ago.
    fn entry(dir: &Path, name: &str, len: usize, age: Duration, now: SystemTime) -> PathBuf {
        let path = dir.join(format!("{name}.cwasm"));
        std::fs::write(&path, vec![0u8; len]).unwrap();
        std::fs::File::options()
            .append(true)
            .open(&path)
            .unwrap()
            .set_modified(now - age)
            .unwrap();
        path
    }

    #[test]
    fn old_entries_go_then_the_least_recently_used_until_it_fits() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let day = Duration::from_secs(24 * 3600);
        let ancient = entry(dir.path(), "ancient", 10, day * 40, now);
        let old = entry(dir.path(), "old", 400, day * 3, now);
        let middle = entry(dir.path(), "middle", 400, day * 2, now);
        let new = entry(dir.path(), "new", 400, day, now);
        let other = dir.path().join("notes.txt");
        std::fs::write(&other, vec![0u8; 5000]).unwrap();
        let limits = CacheLimits {
            max_bytes: 1000,
            max_age: day * 30,
        };
        // 1210 bytes: the expired entry goes, then the least recently used one.
        assert_eq!(evict(dir.path(), limits, None, now), 2);
        assert!(!ancient.exists() && !old.exists());
        assert!(middle.exists() && new.exists() && other.exists());
        // Within both limits: nothing more goes.
        assert_eq!(evict(dir.path(), limits, None, now), 0);
        // The entry just written stays even when it alone is over the size limit.
        let big = entry(dir.path(), "big", 2000, Duration::ZERO, now);
        let small = CacheLimits {
            max_bytes: 100,
            max_age: day * 30,
        };
        assert_eq!(evict(dir.path(), small, Some(&big), now), 2);
        assert!(big.exists() && !middle.exists() && !new.exists());
    }
}
