//! The on-disk cache of compiled components. Compiling a component takes tens to
//! hundreds of milliseconds; loading a compiled one takes a fraction of one. Entries
//! are keyed by the module's SHA-256 and the engine's compatibility key, written
//! atomically, and kept in a directory only the host may write (loading compiled code
//! trusts it).

use super::engine::SandboxEngine;
use std::path::{Path, PathBuf};
use wasmtime::component::Component;

/// Where compiled components live.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
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
        Ok(CompileCache { dir: Some(dir) })
    }

    /// No cache: always compile.
    pub fn disabled() -> CompileCache {
        CompileCache { dir: None }
    }

    fn entry(&self, engine: &SandboxEngine, digest: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{digest}-{}.cwasm", engine.compatibility_key())))
    }

    /// Load the compiled form of `bytes` (whose SHA-256 is `digest`), compiling and
    /// storing it on a miss. A corrupt or stale entry is recompiled, not fatal.
    pub fn load(
        &self,
        engine: &SandboxEngine,
        digest: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<Component> {
        let entry = self.entry(engine, digest);
        if let Some(path) = &entry
            && path.exists()
        {
            // SAFETY: the cache directory is created 0700 by this host and entries are
            // written only by `store` below from code this engine compiled; wasmtime
            // also checks the header and engine compatibility before using it.
            match unsafe { Component::deserialize_file(engine.engine(), path) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unusable compiled-module cache entry")
                }
            }
        }
        let component = Component::new(engine.engine(), bytes)?;
        if let Some(path) = &entry
            && let Err(e) = store(path, &component)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot write compiled-module cache entry");
        }
        Ok(component)
    }
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
