//! Where modules come from: `.wasm` files in the module directories (first-party
//! builds and installed third-party modules) or a path given directly. A module is
//! compiled once per digest; `module_ref` resolves `name` (highest version) or
//! `name@version`. A directory is rescanned when a name is not found, so a newly
//! installed version is picked up without a restart, while steps already running keep
//! the `Arc` of the version they started with. A module whose manifest binds a service
//! the host's provider catalogue does not have is refused (`invalid_manifest`).

use super::cache::CompileCache;
use super::engine::SandboxEngine;
use super::error::StepError;
use super::module::{LoadedModule, digest};
use crate::catalogue::Catalogue;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// A module file found in a module directory, loaded or not.
#[derive(Debug)]
pub struct ModuleEntry {
    /// The file.
    pub path: PathBuf,
    /// The module, or why it could not be loaded.
    pub module: Result<Arc<LoadedModule>, StepError>,
}

/// Modules by name (each name may have several versions).
type NameIndex = HashMap<String, Vec<Arc<LoadedModule>>>;

/// Resolves `module_ref`s to loaded modules.
pub struct ModuleRegistry {
    engine: Arc<SandboxEngine>,
    cache: CompileCache,
    dirs: Vec<PathBuf>,
    /// The providers manifests may bind (and steps resolve credentials against).
    catalogue: Arc<Catalogue>,
    /// `<root>/<company_id>/*.wasm`: modules a company's admins installed, seen only by
    /// that company's steps.
    company_root: Option<PathBuf>,
    by_company: Mutex<HashMap<String, NameIndex>>,
    by_digest: Mutex<HashMap<String, Arc<LoadedModule>>>,
    by_name: Mutex<NameIndex>,
    /// (path, len, mtime) -> digest, so an unchanged file is not re-hashed.
    file_digests: Mutex<HashMap<PathBuf, (u64, std::time::SystemTime, String)>>,
}

impl std::fmt::Debug for ModuleRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleRegistry")
            .field("dirs", &self.dirs)
            .finish()
    }
}

impl ModuleRegistry {
    /// A registry over these directories (missing ones are skipped), checking manifests
    /// against the shipped catalogue (see [`ModuleRegistry::with_catalogue`]).
    pub fn new(
        engine: Arc<SandboxEngine>,
        cache: CompileCache,
        dirs: Vec<PathBuf>,
    ) -> ModuleRegistry {
        ModuleRegistry {
            engine,
            cache,
            dirs,
            catalogue: Catalogue::builtin(),
            company_root: None,
            by_company: Mutex::new(HashMap::new()),
            by_digest: Mutex::new(HashMap::new()),
            by_name: Mutex::new(HashMap::new()),
            file_digests: Mutex::new(HashMap::new()),
        }
    }

    /// Check manifests against this catalogue (the config file's, with its added
    /// providers). Set it before loading anything: loaded modules are cached.
    pub fn with_catalogue(mut self, catalogue: Arc<Catalogue>) -> ModuleRegistry {
        self.catalogue = catalogue;
        self
    }

    /// The catalogue manifests are checked against.
    pub fn catalogue(&self) -> &Arc<Catalogue> {
        &self.catalogue
    }

    /// Also serve per-company installed modules from `root/<company_id>/`.
    pub fn with_company_root(mut self, root: PathBuf) -> ModuleRegistry {
        self.company_root = Some(root);
        self
    }

    /// The directory a company's installed modules live in (None when the id breaks
    /// [`crate::company`]'s rule, which keeps it one safe path component, or no root
    /// is configured).
    pub fn company_dir(&self, company_id: &str) -> Option<PathBuf> {
        if !crate::company::is_valid(company_id) {
            return None;
        }
        self.company_root.as_ref().map(|r| r.join(company_id))
    }

    async fn scan_dir(&self, dir: &Path, entries: &mut Vec<ModuleEntry>) {
        let Ok(read) = std::fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<PathBuf> = read
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
            .collect();
        paths.sort();
        for path in paths {
            let module = self.load_file(&path).await;
            if let Err(e) = &module {
                tracing::debug!(path = %path.display(), error = %e, "skipping module that does not load");
            }
            entries.push(ModuleEntry { path, module });
        }
    }

    fn index(entries: &[ModuleEntry]) -> NameIndex {
        let mut by_name = NameIndex::new();
        for e in entries {
            if let Ok(m) = &e.module {
                let list = by_name.entry(m.manifest.name.clone()).or_default();
                if !list.iter().any(|x| x.digest == m.digest) {
                    list.push(m.clone());
                }
            }
        }
        by_name
    }

    /// The modules a company installed (rescanned).
    pub async fn scan_company(&self, company_id: &str) -> Vec<ModuleEntry> {
        let mut entries = Vec::new();
        if let Some(dir) = self.company_dir(company_id) {
            self.scan_dir(&dir, &mut entries).await;
        }
        let index = Self::index(&entries);
        self.by_company
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(company_id.to_string(), index);
        entries
    }

    /// Whether a shared (first-party or operator-installed) module has this name.
    pub async fn is_shared_name(&self, name: &str) -> bool {
        if self
            .by_name
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(name)
        {
            return true;
        }
        self.scan().await;
        self.by_name
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(name)
    }

    /// Resolve a `module_ref` for a company's step: its own installed modules first,
    /// then the shared ones. Paths are not accepted here.
    pub async fn resolve_for(
        &self,
        company_id: &str,
        module_ref: &str,
    ) -> Result<Arc<LoadedModule>, StepError> {
        let (name, version) = match module_ref.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (module_ref, None),
        };
        if self.company_root.is_some() {
            let known = self
                .by_company
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(company_id);
            if !known {
                self.scan_company(company_id).await;
            }
            let found = {
                let by_company = self
                    .by_company
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                by_company
                    .get(company_id)
                    .and_then(|idx| Self::pick(idx, name, version))
            };
            if let Some(m) = found {
                return Ok(m);
            }
        }
        self.resolve(module_ref).await
    }

    /// The engine modules are compiled for.
    pub fn engine(&self) -> &Arc<SandboxEngine> {
        &self.engine
    }

    /// Load a module from bytes (cached by digest).
    pub async fn load_bytes(&self, bytes: &[u8]) -> Result<Arc<LoadedModule>, StepError> {
        let d = digest(bytes);
        if let Some(m) = self
            .by_digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&d)
        {
            return Ok(m.clone());
        }
        let module = LoadedModule::load(&self.engine, &self.cache, bytes).await?;
        self.catalogue
            .check_bindings(&module.manifest)
            .map_err(|e| StepError::invalid_manifest(e.to_string()))?;
        let module = Arc::new(module);
        self.by_digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(d, module.clone());
        Ok(module)
    }

    /// Load a module from a file.
    pub async fn load_file(&self, path: &Path) -> Result<Arc<LoadedModule>, StepError> {
        let meta = tokio::fs::metadata(path).await.map_err(|e| {
            StepError::module_not_found(format!("cannot read `{}`: {e}", path.display()))
        })?;
        if let Ok(mtime) = meta.modified() {
            let known = self
                .file_digests
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(path)
                .filter(|(len, t, _)| *len == meta.len() && *t == mtime)
                .map(|(_, _, d)| d.clone());
            if let Some(d) = known
                && let Some(m) = self
                    .by_digest
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&d)
            {
                return Ok(m.clone());
            }
        }
        let bytes = tokio::fs::read(path).await.map_err(|e| {
            StepError::module_not_found(format!("cannot read `{}`: {e}", path.display()))
        })?;
        let module = self.load_bytes(&bytes).await?;
        if let Ok(mtime) = meta.modified() {
            self.file_digests
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    path.to_path_buf(),
                    (meta.len(), mtime, module.digest.clone()),
                );
        }
        Ok(module)
    }

    /// Every `.wasm` in the shared module directories, loaded (a broken file is
    /// reported, not fatal).
    pub async fn scan(&self) -> Vec<ModuleEntry> {
        let mut entries = Vec::new();
        for dir in &self.dirs {
            self.scan_dir(dir, &mut entries).await;
        }
        *self.by_name.lock().unwrap_or_else(PoisonError::into_inner) = Self::index(&entries);
        entries
    }

    /// Resolve a `module_ref`: a path to a `.wasm`, `name`, or `name@version`.
    pub async fn resolve(&self, module_ref: &str) -> Result<Arc<LoadedModule>, StepError> {
        if module_ref.ends_with(".wasm") || module_ref.contains('/') {
            return self.load_file(Path::new(module_ref)).await;
        }
        let (name, version) = match module_ref.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (module_ref, None),
        };
        if let Some(m) = self.lookup(name, version) {
            return Ok(m);
        }
        self.scan().await;
        self.lookup(name, version).ok_or_else(|| {
            StepError::module_not_found(match version {
                Some(v) => format!("no module `{name}` at version {v}"),
                None => format!("no module named `{name}`"),
            })
        })
    }

    fn lookup(&self, name: &str, version: Option<&str>) -> Option<Arc<LoadedModule>> {
        Self::pick(
            &self.by_name.lock().unwrap_or_else(PoisonError::into_inner),
            name,
            version,
        )
    }

    fn pick(index: &NameIndex, name: &str, version: Option<&str>) -> Option<Arc<LoadedModule>> {
        let list = index.get(name)?;
        match version {
            Some(v) => list.iter().find(|m| m.manifest.version == v).cloned(),
            None => list
                .iter()
                .max_by_key(|m| semver::Version::parse(&m.manifest.version).ok())
                .cloned(),
        }
    }
}
