//! Where modules come from: `.wasm` files in the shared module directories (first-party
//! builds and operator-installed modules), a path given directly, or the store, which
//! holds the modules a company's admins installed (so every host on one store sees
//! them). A module is compiled once per digest; `module_ref` resolves `name` (highest
//! version) or `name@version`. A directory is rescanned when a name is not found, and a
//! company's list of installed modules (metadata only, small) is read from the store on
//! every resolve, so an install, a new version or a removal on any host is seen by the
//! next step on every host, while steps already running keep the `Arc` of the version
//! they started with. An installed module's bytes are fetched only when its digest has
//! not been loaded here yet. A module whose manifest binds a service the host's
//! provider catalogue does not have is refused (`invalid_manifest`).
//!
//! Looking for one name compiles only the files that may hold it: a file the compile
//! cache knows (from an earlier load) to hold another module is skipped, and so, on a
//! cold cache, is one whose `flow8:module-name` section names another module
//! ([`super::name_hint`]); if that finds nothing, the files skipped by their section
//! are compiled too.
//!
//! A `module_ref` may pin the module's bytes: `name@sha256:<hex>` resolves only to a
//! version of `name` with exactly that digest (SHA-256 of the `.wasm`), and answers
//! `digest_mismatch` when `name` exists but no version of it has those bytes. Every load
//! of an installed module checks its signature against the operator's trusted keys
//! again (`distribution::signature`), so a key removed from the config, or signatures
//! made required, take effect on the next step, not only the next install.

use super::cache::CompileCache;
use super::engine::SandboxEngine;
use super::error::StepError;
use super::module::{LoadedModule, digest};
use super::review::{Capabilities, ReviewPolicy};
use crate::catalogue::Catalogue;
use crate::distribution::signature::SignaturePolicy;
use crate::error::ErrorName;
use crate::store::{ModuleRecord, Store, StoreError};
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

/// A module a company installed (from the store), loaded or not.
#[derive(Debug)]
pub struct InstalledEntry {
    /// Its metadata.
    pub record: ModuleRecord,
    /// The module, or why it could not be loaded.
    pub module: Result<Arc<LoadedModule>, StepError>,
}

/// How a store failure reaches a step or a request.
fn store_failure(e: StoreError) -> StepError {
    match e {
        StoreError::Unavailable(m) => StepError::new(ErrorName::StoreUnavailable, m),
        other => StepError::new(ErrorName::StorageError, other.to_string()),
    }
}

/// Modules by name (each name may have several versions).
type NameIndex = HashMap<String, Vec<Arc<LoadedModule>>>;

/// Whether a scan for one name skips files by their own `flow8:module-name` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hints {
    /// Skip a file whose section names another module (the first look).
    Trusted,
    /// Compile it to read its manifest (when the first look found nothing).
    Ignored,
}

/// What a scan for one name left uncompiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skipped {
    /// Nothing (or this file: it is loaded).
    Nothing,
    /// Files the compile cache knows hold another module.
    ByKnownName,
    /// At least one file by its name section alone (which may be wrong).
    ByHint,
}

/// Resolves `module_ref`s to loaded modules.
pub struct ModuleRegistry {
    engine: Arc<SandboxEngine>,
    cache: CompileCache,
    dirs: Vec<PathBuf>,
    /// The providers manifests may bind (and steps resolve credentials against).
    catalogue: Arc<Catalogue>,
    /// Whether companies' installed modules (in the store) are looked up first.
    installed: bool,
    /// Which signatures installed modules must carry.
    signatures: Arc<SignaturePolicy>,
    /// Capability review: approvals required, `credentials.get` forbidden.
    review: ReviewPolicy,
    by_digest: Mutex<HashMap<String, Arc<LoadedModule>>>,
    by_name: Mutex<NameIndex>,
    /// (path, len, mtime) -> digest, so an unchanged file is not re-hashed.
    file_digests: Mutex<HashMap<PathBuf, (u64, std::time::SystemTime, String)>>,
    /// digest -> the name its `flow8:module-name` section gives, if any (see
    /// [`super::name_hint`]), so a file is parsed for it once.
    name_hints: Mutex<HashMap<String, Option<String>>>,
    /// One turn per digest being loaded: the first caller compiles, the others wait for
    /// it and take its result from `by_digest` (see [`ModuleRegistry::load_bytes`]).
    loading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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
            installed: false,
            signatures: Arc::new(SignaturePolicy::default()),
            review: ReviewPolicy::default(),
            by_digest: Mutex::new(HashMap::new()),
            by_name: Mutex::new(HashMap::new()),
            file_digests: Mutex::new(HashMap::new()),
            name_hints: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
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

    /// Check installed modules' signatures against this policy (install and load).
    pub fn with_signature_policy(mut self, policy: Arc<SignaturePolicy>) -> ModuleRegistry {
        self.signatures = policy;
        self
    }

    /// Review installed modules' capabilities under this policy (install and load).
    pub fn with_review_policy(mut self, review: ReviewPolicy) -> ModuleRegistry {
        self.review = review;
        self
    }

    /// The review policy installs and loads are checked against.
    pub fn review_policy(&self) -> ReviewPolicy {
        self.review
    }

    /// Whether a company's installed module may run under the review policy: not one
    /// that reads secrets where the operator forbids that, and, where approvals are
    /// required, only one whose capabilities an approval covers. `versions` are the
    /// company's other versions of the module: a refusal names what this one asks for
    /// beyond the newest approved one, which is what the admin is asked to decide.
    pub fn check_review(
        &self,
        record: &ModuleRecord,
        module: &LoadedModule,
        versions: &[&ModuleRecord],
    ) -> Result<(), StepError> {
        let at = format!("{}@{}", record.name, record.version);
        if self.review.forbid_credentials_get && module.manifest.reads_secrets() {
            return Err(StepError::forbidden(format!(
                "{at} declares `credentials.get`, which this host does not allow installed modules"
            )));
        }
        if !self.review.require_approval {
            return Ok(());
        }
        let asks = Capabilities::of(module);
        let approved = record
            .approval
            .as_ref()
            .and_then(|a| serde_json::from_value::<Capabilities>(a.capabilities.clone()).ok());
        let more = match &approved {
            Some(a) => asks.beyond(a),
            None => match newest_approved(versions) {
                Some((version, a)) => {
                    let more: Vec<String> = asks
                        .beyond(&a)
                        .into_iter()
                        .map(|m| format!("{m}, new since the approved {version}"))
                        .collect();
                    if more.is_empty() {
                        // Nothing more than an approved version asks for, yet not
                        // carried (that approval came after this install).
                        vec![format!("the same as the approved {version}")]
                    } else {
                        more
                    }
                }
                None => vec!["everything (no version is approved yet)".to_string()],
            },
        };
        if more.is_empty() {
            return Ok(());
        }
        Err(StepError::new(
            ErrorName::ApprovalRequired,
            format!(
                "{at} needs an admin's approval of what it asks for ({}): POST /api/v1/admin/modules/{at}/approval",
                more.join(", ")
            ),
        ))
    }

    /// The signature policy installs and loads are checked against.
    pub fn signature_policy(&self) -> &Arc<SignaturePolicy> {
        &self.signatures
    }

    /// Also serve each company's installed modules (kept in the store) to its steps.
    pub fn with_installed_modules(mut self) -> ModuleRegistry {
        self.installed = true;
        self
    }

    /// Scan `dir`; with `only`, skip the files that are not loaded here and that hold
    /// another module by the compile cache's name index or, with `hints`, by their own
    /// `flow8:module-name` section (a step naming one module does not compile every
    /// other one first).
    async fn scan_dir(
        &self,
        dir: &Path,
        only: Option<&str>,
        hints: Hints,
        entries: &mut Vec<ModuleEntry>,
    ) -> Skipped {
        let mut skipped = Skipped::Nothing;
        let Ok(read) = std::fs::read_dir(dir) else {
            return skipped;
        };
        let mut paths: Vec<PathBuf> = read
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
            .collect();
        paths.sort();
        for path in paths {
            if let Some(name) = only {
                match self.named_otherwise(&path, name, hints).await {
                    Skipped::Nothing => {}
                    Skipped::ByKnownName => continue,
                    Skipped::ByHint => {
                        skipped = Skipped::ByHint;
                        continue;
                    }
                }
            }
            let module = self.load_file(&path).await;
            if let Err(e) = &module {
                tracing::debug!(path = %path.display(), error = %e, "skipping module that does not load");
            }
            entries.push(ModuleEntry { path, module });
        }
        skipped
    }

    /// Whether a scan for `name` skips `path`: a file not loaded here that holds another
    /// module by the compile cache's name index or (with `hints`, no name known) by its
    /// own name section.
    async fn named_otherwise(&self, path: &Path, name: &str, hints: Hints) -> Skipped {
        let Some(d) = self.file_digest(path).await else {
            return Skipped::Nothing;
        };
        if self.loaded(&d).is_some() {
            return Skipped::Nothing;
        }
        if let Some(known) = self.cache.known_name(&d) {
            return if known == name {
                Skipped::Nothing
            } else {
                Skipped::ByKnownName
            };
        }
        if hints == Hints::Trusted
            && self
                .name_hint(path, &d)
                .await
                .is_some_and(|hint| hint != name)
        {
            return Skipped::ByHint;
        }
        Skipped::Nothing
    }

    /// The SHA-256 of a file, from the (len, mtime) memo when the file is unchanged.
    async fn file_digest(&self, path: &Path) -> Option<String> {
        let meta = tokio::fs::metadata(path).await.ok()?;
        if let Some(d) = self.memo_digest(path, &meta) {
            return Some(d);
        }
        let d = digest(&tokio::fs::read(path).await.ok()?);
        self.memo_remember(path, &meta, &d);
        Some(d)
    }

    /// The name `path` (just hashed to `d`) says it holds in its `flow8:module-name`
    /// section, read only when asked (no name is known for `d` yet), once per digest. A
    /// file replaced between the hash and this read gets the new file's hint: it is
    /// only a hint, and a wrong one is undone by the scan that ignores hints.
    async fn name_hint(&self, path: &Path, d: &str) -> Option<String> {
        if let Some(hint) = self.memo_hint(d) {
            return hint;
        }
        let hint = super::name_hint::read(&tokio::fs::read(path).await.ok()?);
        let mut hints = self
            .name_hints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Bounded like the directories it describes; past that it starts again.
        if hints.len() >= 4096 {
            hints.clear();
        }
        hints.insert(d.to_string(), hint.clone());
        hint
    }

    /// The hint read for digest `d`, if it was read: `Some(None)` when the file had none.
    fn memo_hint(&self, d: &str) -> Option<Option<String>> {
        self.name_hints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(d)
            .cloned()
    }

    /// The digest the memo holds for `path`, if the file's length and mtime are as then.
    fn memo_digest(&self, path: &Path, meta: &std::fs::Metadata) -> Option<String> {
        let mtime = meta.modified().ok()?;
        self.file_digests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
            .filter(|(len, t, _)| *len == meta.len() && *t == mtime)
            .map(|(_, _, d)| d.clone())
    }

    /// Remember `path`'s digest under its length and mtime (none: nothing to key it by).
    fn memo_remember(&self, path: &Path, meta: &std::fs::Metadata, digest: &str) {
        if let Ok(mtime) = meta.modified() {
            self.file_digests
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(path.to_path_buf(), (meta.len(), mtime, digest.to_string()));
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

    /// The modules a company installed, as the store lists them now, each loaded (by
    /// digest: bytes are fetched and compiled only for a digest not loaded here yet).
    pub async fn installed<S: Store>(
        &self,
        store: &S,
        company_id: &str,
    ) -> Result<Vec<InstalledEntry>, StepError> {
        let records = store
            .list_modules(company_id)
            .await
            .map_err(store_failure)?;
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            // Listed before review, so admins see the modules waiting for approval.
            let module = self.load_installed_bytes(store, &record).await;
            out.push(InstalledEntry { record, module });
        }
        Ok(out)
    }

    /// An installed module by its metadata: from memory when its digest is loaded, else
    /// its bytes from the store (checked against the digest) through the compile cache.
    async fn load_installed<S: Store>(
        &self,
        store: &S,
        record: &ModuleRecord,
        versions: &[&ModuleRecord],
    ) -> Result<Arc<LoadedModule>, StepError> {
        let module = self.load_installed_bytes(store, record).await?;
        self.check_review(record, &module, versions)?;
        Ok(module)
    }

    /// An installed module by its record, signature checked, before capability review
    /// (what an admin approves).
    pub async fn resolve_installed_unreviewed<S: Store>(
        &self,
        store: &S,
        record: &ModuleRecord,
    ) -> Result<Arc<LoadedModule>, StepError> {
        self.load_installed_bytes(store, record).await
    }

    /// An installed module whose signature passes, before capability review.
    async fn load_installed_bytes<S: Store>(
        &self,
        store: &S,
        record: &ModuleRecord,
    ) -> Result<Arc<LoadedModule>, StepError> {
        // The signature first: the record's digest is what the bytes are checked
        // against below (or was, when they were loaded here before).
        self.signatures
            .check(
                &record.company_id,
                &record.digest,
                record.signature.as_deref(),
            )
            .map_err(|e| {
                StepError::new(e.name(), format!("{}@{}: {e}", record.name, record.version))
            })?;
        if let Some(m) = self
            .by_digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&record.digest)
        {
            return Ok(m.clone());
        }
        let bytes = store
            .get_module_bytes(&record.company_id, &record.digest)
            .await
            .map_err(store_failure)?
            .ok_or_else(|| {
                // Removed between the list and this read (on another host, perhaps).
                StepError::module_not_found(format!(
                    "{}@{} is no longer installed",
                    record.name, record.version
                ))
            })?;
        if digest(&bytes) != record.digest {
            return Err(StepError::new(
                ErrorName::StorageError,
                format!(
                    "the stored bytes of {}@{} do not match its digest",
                    record.name, record.version
                ),
            ));
        }
        self.load_bytes(&bytes).await
    }

    /// Copy the modules installed under `root/<company_id>/*.wasm` (where hosts before
    /// the store kept them) into the store, once: each file imported (or already there
    /// with the same bytes) is moved to `done/<company_id>/`, so it is not imported
    /// again after an admin removes it. A file that does not load, or whose name and
    /// version the company already has with other bytes, is left in place and logged.
    /// Returns how many were imported.
    pub async fn import_dir<S: Store>(&self, store: &S, root: &Path, done: &Path) -> usize {
        let Ok(companies) = std::fs::read_dir(root) else {
            return 0;
        };
        let mut imported = 0;
        for company in companies.filter_map(Result::ok) {
            let Some(company_id) = company.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !crate::company::is_valid(&company_id) || !company.path().is_dir() {
                continue;
            }
            let mut entries = Vec::new();
            self.scan_dir(&company.path(), None, Hints::Ignored, &mut entries)
                .await;
            for entry in entries {
                let module = match entry.module {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(path = %entry.path.display(), error = %e, "installed module not imported: it does not load");
                        continue;
                    }
                };
                let Ok(bytes) = tokio::fs::read(&entry.path).await else {
                    continue;
                };
                let installed_at = std::fs::metadata(&entry.path)
                    .and_then(|m| m.modified())
                    .map(time::OffsetDateTime::from)
                    .unwrap_or_else(|_| crate::store::now());
                let record = ModuleRecord {
                    company_id: company_id.clone(),
                    name: module.manifest.name.clone(),
                    version: module.manifest.version.clone(),
                    digest: module.digest.clone(),
                    size: bytes.len() as u64,
                    installed_at: installed_at.replace_nanosecond(0).unwrap_or(installed_at),
                    installed_by: None,
                    signature: None,
                    source: None,
                    approval: None,
                };
                let outcome = match store.put_module(record.clone(), bytes).await {
                    Ok(()) => Ok(true),
                    Err(StoreError::Conflict(_)) => {
                        // Already imported (by another host sharing the store, or a
                        // start that stopped before moving the file): the same bytes
                        // are as good as imported.
                        match store.list_modules(&company_id).await {
                            Ok(list)
                                if list.iter().any(|r| {
                                    r.name == record.name
                                        && r.version == record.version
                                        && r.digest == record.digest
                                }) =>
                            {
                                Ok(false)
                            }
                            Ok(_) => {
                                Err("the store has this name and version with other bytes"
                                    .to_string())
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                match outcome {
                    Ok(new) => {
                        imported += usize::from(new);
                        let to = done.join(&company_id);
                        let moved = std::fs::create_dir_all(&to).and_then(|()| {
                            std::fs::rename(
                                &entry.path,
                                to.join(entry.path.file_name().unwrap_or_default()),
                            )
                        });
                        if let Err(e) = moved {
                            tracing::warn!(path = %entry.path.display(), error = %e, "imported module could not be moved aside");
                        }
                        tracing::info!(company = %company_id, module = %format!("{}@{}", record.name, record.version), "installed module imported into the store");
                    }
                    Err(e) => {
                        tracing::warn!(path = %entry.path.display(), error = %e, "installed module not imported");
                    }
                }
            }
        }
        imported
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

    /// Resolve a `module_ref` for a company's step: its own installed modules (the
    /// store's list, read now) first, then the shared ones. Paths are not accepted here.
    pub async fn resolve_for<S: Store>(
        &self,
        store: &S,
        company_id: &str,
        module_ref: &str,
    ) -> Result<Arc<LoadedModule>, StepError> {
        let (name, version) = match module_ref.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (module_ref, None),
        };
        // A first-party module already loaded answers without a store query: installs
        // of a first-party name are refused (409), so no company module can be meant.
        if !module_ref.ends_with(".wasm")
            && !module_ref.contains('/')
            && let Some(m) = self.lookup(name, version)
        {
            return Ok(m);
        }
        if self.installed && crate::company::is_valid(company_id) {
            // Only this name's versions: a step's cost does not grow with how many other
            // modules the company installed.
            let records = store
                .list_module_versions(company_id, name)
                .await
                .map_err(store_failure)?;
            let named: Vec<&ModuleRecord> = records.iter().collect();
            let found = match (version, version.and_then(pinned_digest)) {
                (_, Some(d)) => named.iter().copied().find(|r| r.digest == d),
                (Some(v), None) => named.iter().copied().find(|r| r.version == v),
                (None, None) => named
                    .iter()
                    .copied()
                    .max_by_key(|r| semver::Version::parse(&r.version).ok()),
            };
            if let Some(record) = found {
                return self.load_installed(store, record, &named).await;
            }
            if let Some(d) = version.and_then(pinned_digest)
                && !named.is_empty()
            {
                return Err(digest_mismatch(name, d));
            }
        }
        self.resolve(module_ref).await
    }

    /// The engine modules are compiled for.
    pub fn engine(&self) -> &Arc<SandboxEngine> {
        &self.engine
    }

    /// Load a module from bytes (cached by digest). Loads of one digest take turns: when
    /// many steps of a module not loaded yet arrive at once (a cold host under load,
    /// every worker scanning the module directory), one compiles it and the rest wait
    /// and share its result, instead of each compiling it (which made 32 concurrent
    /// first steps compile every module 32 times and run past their deadline).
    pub async fn load_bytes(&self, bytes: &[u8]) -> Result<Arc<LoadedModule>, StepError> {
        let d = digest(bytes);
        if let Some(m) = self.loaded(&d) {
            return Ok(m);
        }
        let turn = self
            .loading
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(d.clone())
            .or_default()
            .clone();
        let result = {
            let _turn = turn.lock().await;
            match self.loaded(&d) {
                Some(m) => Ok(m),
                None => self.compile_and_check(bytes, &d).await,
            }
        };
        // Whoever finishes last leaves no turn behind (a failed load is tried again by
        // the next caller: the failure may have been the machine's, not the module's).
        let mut loading = self.loading.lock().unwrap_or_else(PoisonError::into_inner);
        if loading.get(&d).is_some_and(|t| Arc::ptr_eq(t, &turn)) && Arc::strong_count(&turn) <= 2 {
            loading.remove(&d);
        }
        result
    }

    fn loaded(&self, digest: &str) -> Option<Arc<LoadedModule>> {
        self.by_digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
            .cloned()
    }

    async fn compile_and_check(
        &self,
        bytes: &[u8],
        d: &str,
    ) -> Result<Arc<LoadedModule>, StepError> {
        let module = LoadedModule::load(&self.engine, &self.cache, bytes).await?;
        self.cache.remember_name(d, &module.manifest.name);
        // Only a hint a scan read (and may have skipped the file by) is checked: no
        // load parses the whole component again for it.
        if let Some(Some(hint)) = self.memo_hint(d)
            && hint != module.manifest.name
        {
            tracing::warn!(
                module = %module.manifest.name,
                name_section = %hint,
                "the module's flow8:module-name section names another module (a Rust module's Cargo package name should be its manifest name): on a cold compile cache, a step naming it compiles every module file to find it"
            );
        }
        self.catalogue
            .check_bindings(&module.manifest)
            .map_err(|e| StepError::invalid_manifest(e.to_string()))?;
        let module = Arc::new(module);
        self.by_digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(d.to_string(), module.clone());
        // A large module started on quick-tier code: its optimised code follows.
        module.tier_up(&self.engine, &self.cache, bytes.to_vec());
        Ok(module)
    }

    /// Load a module from a file.
    pub async fn load_file(&self, path: &Path) -> Result<Arc<LoadedModule>, StepError> {
        let meta = tokio::fs::metadata(path).await.map_err(|e| {
            StepError::module_not_found(format!("cannot read `{}`: {e}", path.display()))
        })?;
        if let Some(m) = self.memo_digest(path, &meta).and_then(|d| self.loaded(&d)) {
            return Ok(m);
        }
        let bytes = tokio::fs::read(path).await.map_err(|e| {
            StepError::module_not_found(format!("cannot read `{}`: {e}", path.display()))
        })?;
        let module = self.load_bytes(&bytes).await?;
        self.memo_remember(path, &meta, &module.digest);
        Ok(module)
    }

    /// Every `.wasm` in the shared module directories, loaded (a broken file is
    /// reported, not fatal).
    pub async fn scan(&self) -> Vec<ModuleEntry> {
        self.scan_for(None, Hints::Trusted).await.0
    }

    /// A scan for the module `only` names (or for all of them). A full scan rebuilds
    /// the name index from what the directories hold; a scan for one name replaces
    /// that name's versions and adds what else it loaded, keeping the rest (a scan for
    /// another name at the same moment may have skipped a file this one loads). Also
    /// whether it skipped a file by its name section alone.
    async fn scan_for(&self, only: Option<&str>, hints: Hints) -> (Vec<ModuleEntry>, bool) {
        let mut entries = Vec::new();
        let mut by_hint = false;
        for dir in &self.dirs {
            by_hint |= self.scan_dir(dir, only, hints, &mut entries).await == Skipped::ByHint;
        }
        let fresh = Self::index(&entries);
        let mut by_name = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        match only {
            None => *by_name = fresh,
            Some(name) => {
                by_name.remove(name);
                by_name.extend(fresh);
            }
        }
        drop(by_name);
        (entries, by_hint)
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
        let (_, skipped_by_hint) = self.scan_for(Some(name), Hints::Trusted).await;
        if skipped_by_hint && self.lookup(name, version).is_none() {
            // Nothing answered, and a file was skipped by its name section alone: one
            // whose section disagrees with its manifest may hold it. Compile those too
            // (the compile cache's names still hold).
            self.scan_for(Some(name), Hints::Ignored).await;
        }
        if let Some(d) = version.and_then(pinned_digest)
            && self
                .by_name
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(name)
            && self.lookup(name, version).is_none()
        {
            return Err(digest_mismatch(name, d));
        }
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
        if let Some(d) = version.and_then(pinned_digest) {
            return list.iter().find(|m| m.digest == d).cloned();
        }
        match version {
            Some(v) => list.iter().find(|m| m.manifest.version == v).cloned(),
            None => list
                .iter()
                .max_by_key(|m| semver::Version::parse(&m.manifest.version).ok())
                .cloned(),
        }
    }
}

/// The newest of a module's versions that an admin approved, and what was approved.
fn newest_approved(versions: &[&ModuleRecord]) -> Option<(String, Capabilities)> {
    versions
        .iter()
        .filter_map(|r| {
            let caps =
                serde_json::from_value::<Capabilities>(r.approval.as_ref()?.capabilities.clone())
                    .ok()?;
            Some((
                semver::Version::parse(&r.version).ok()?,
                r.version.clone(),
                caps,
            ))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, version, caps)| (version, caps))
}

/// The hex digest a `name@sha256:<hex>` reference pins, if that is what `version` is.
/// A version that starts with `sha256:` but is not 64 lowercase hex digits pins
/// nothing any module has, so it is kept as written and matches no digest.
fn pinned_digest(version: &str) -> Option<&str> {
    version.strip_prefix("sha256:")
}

fn digest_mismatch(name: &str, digest_hex: &str) -> StepError {
    StepError::new(
        ErrorName::DigestMismatch,
        format!(
            "the reference pins `{name}` to sha256:{digest_hex}, and no version of `{name}` here has those bytes"
        ),
    )
}
