//! Loading a module: check the bytes are a WebAssembly component of the flow8 `module`
//! world, compile it (or load it from the compile cache), pre-instantiate it once, and
//! read and validate its manifest. A `LoadedModule` is then instantiated afresh for
//! every step.
//!
//! A large module with no optimised code in the compile cache is compiled by the quick
//! tier first ([`CodeTier::Quick`], Winch: a JavaScript runtime in about 1.5 s instead
//! of 6-15 s), so its install answers and its first steps run at once; then
//! [`LoadedModule::tier_up`] compiles it with Cranelift in the background, stores that in
//! the cache, and swaps it in: steps started after the swap run the optimised code.

use super::bindings::ModulePre;
use super::cache::CompileCache;
use super::engine::{CodeTier, SandboxEngine};
use super::error::StepError;
use super::sandbox::{StepLimits, StepLog, StepState};
use crate::manifest::Manifest;
use crate::outbound::{OutboundClient, OutboundPolicy};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// The largest `.wasm` file the host accepts.
pub const MAX_MODULE_BYTES: usize = 64 * 1024 * 1024;

/// A compiled, validated module ready to run steps.
pub struct LoadedModule {
    /// The validated manifest.
    pub manifest: Manifest,
    /// SHA-256 of the `.wasm`, hex.
    pub digest: String,
    /// Size of the `.wasm` in bytes.
    pub size: usize,
    /// The code steps run: swapped once, quick to optimised, by [`LoadedModule::tier_up`].
    code: RwLock<Arc<ModuleCode>>,
    pub(crate) input_validator: jsonschema::Validator,
    /// Worst-case subschema evaluations per input value (see `schema_budget`).
    pub(crate) input_evaluations: u64,
    pub(crate) host_patterns: Arc<Vec<crate::manifest::HostPattern>>,
    /// The host interfaces the component imports (`wasi:http/outgoing-handler@0.2.3`,
    /// `flow8:integration/http@0.1.0`, ...), for a review of what it uses.
    pub imports: Vec<String>,
}

/// A module's pre-instantiated code and the compiler it came from.
pub(crate) struct ModuleCode {
    pub(crate) pre: ModulePre<StepState>,
    pub(crate) tier: CodeTier,
}

impl ModuleCode {
    /// The engine the code belongs to: a step's store must be made by it.
    pub(crate) fn engine(&self) -> &wasmtime::Engine {
        self.pre.instance_pre().engine()
    }
}

/// One tier-up compiles at a time: each already uses every core.
static TIER_UP: Mutex<()> = Mutex::new(());

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("digest", &self.digest)
            .finish()
    }
}

/// SHA-256 of bytes, hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl LoadedModule {
    /// The names the component imports from its host (`flow8:integration/http@0.1.0`,
    /// `wasi:http/outgoing-handler@0.2.x`, `wasi:cli/stdout@0.2.x`, ...), sorted: what
    /// capability review reports and the OCI artifact's config lists.
    pub fn imported_host_interfaces(&self) -> Vec<String> {
        let code = self.code();
        let pre = code.pre.instance_pre();
        let mut names = imported_interfaces(pre.engine(), pre.component());
        names.sort();
        names
    }

    /// The code a step runs now.
    pub(crate) fn code(&self) -> Arc<ModuleCode> {
        self.code
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The compiler of the code steps run now.
    pub fn tier(&self) -> CodeTier {
        self.code().tier
    }

    /// The names the component exports (`flow8:integration/module@0.1.0`, ...), sorted.
    pub fn exported_interfaces(&self) -> Vec<String> {
        let code = self.code();
        let component = code.pre.instance_pre().component();
        let engine = code.engine();
        let mut names: Vec<String> = component
            .component_type()
            .exports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        names.sort();
        names
    }

    /// Validate, compile and pre-instantiate `bytes`, then read its manifest.
    pub async fn load(
        engine: &Arc<SandboxEngine>,
        cache: &CompileCache,
        bytes: &[u8],
    ) -> Result<LoadedModule, StepError> {
        if bytes.len() > MAX_MODULE_BYTES {
            return Err(StepError::invalid_module(format!(
                "the file is {} bytes; modules may be at most {MAX_MODULE_BYTES}",
                bytes.len()
            )));
        }
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(StepError::invalid_module(
                "the file is not WebAssembly (no \\0asm header)",
            ));
        }
        // Byte 4..8: version and layer. A core module has layer 0; a component layer 1.
        if bytes[6..8] == [0, 0] {
            return Err(StepError::invalid_module(
                "the file is a core WebAssembly module, not a component; build for wasm32-wasip2 (or componentize it)",
            ));
        }
        let digest = digest(bytes);
        let tier = if cache.has(engine, CodeTier::Optimized, &digest) {
            CodeTier::Optimized
        } else {
            engine.first_tier(bytes.len())
        };
        let (component, tier) = match compile(engine, cache, tier, &digest, bytes).await {
            Ok(c) => (c, tier),
            // Winch does not compile every proposal Cranelift does: such a module waits
            // for Cranelift instead (an invalid one fails there too, with its reason).
            Err(e) if tier == CodeTier::Quick => {
                tracing::debug!(error = %e.message, "the quick tier cannot compile the module; compiling it with Cranelift");
                let tier = CodeTier::Optimized;
                (compile(engine, cache, tier, &digest, bytes).await?, tier)
            }
            Err(e) => return Err(e),
        };
        let (pre, imports) = prepare(engine, tier, &component)?;
        let manifest_json = read_manifest(&pre).await?;
        let manifest = Manifest::parse(&manifest_json)
            .map_err(|e| StepError::invalid_manifest(e.to_string()))?;
        // The schema runs on the host, outside the sandbox: refuse one that could cost
        // more than its budget before anything builds a validator from it, then build
        // the one validator steps use.
        let input_evaluations = super::schema_budget::check(&manifest.input_schema)
            .map_err(|e| StepError::invalid_manifest(format!("input_schema: {e}")))?
            .evaluations;
        let input_validator = super::schema_budget::validator(&manifest.input_schema)
            .map_err(|e| StepError::invalid_manifest(format!("input_schema: {e}")))?;
        let host_patterns = Arc::new(manifest.host_patterns());
        Ok(LoadedModule {
            manifest,
            digest,
            size: bytes.len(),
            code: RwLock::new(Arc::new(ModuleCode { pre, tier })),
            input_validator,
            input_evaluations,
            host_patterns,
            imports,
        })
    }

    /// If the module runs quick-tier code: compile `bytes` (its `.wasm`) with Cranelift
    /// on a background thread, store that in `cache`, and swap it in. Steps running
    /// meanwhile keep the code they started with. A failure is logged and leaves the
    /// quick code in use; a host that exits first only loses the work (the next start
    /// compiles again).
    pub fn tier_up(
        self: &Arc<Self>,
        engine: &Arc<SandboxEngine>,
        cache: &CompileCache,
        bytes: Vec<u8>,
    ) {
        if self.tier() != CodeTier::Quick || !engine.config().tier_up {
            return;
        }
        let (module, engine, cache) = (Arc::downgrade(self), engine.clone(), cache.clone());
        let (name, digest) = (self.manifest.name.clone(), self.digest.clone());
        let spawned = std::thread::Builder::new()
            .name("flow8-tier-up".into())
            .spawn(move || {
                let _one_at_a_time = TIER_UP.lock().unwrap_or_else(PoisonError::into_inner);
                // Unloaded meanwhile (a newer version, a removal): nothing to do.
                if module.strong_count() == 0 {
                    return;
                }
                let started = Instant::now();
                let built = cache
                    .load(&engine, CodeTier::Optimized, &digest, &bytes)
                    .map_err(|e| StepError::invalid_module(format!("{e:#}")))
                    .and_then(|c| prepare(&engine, CodeTier::Optimized, &c));
                match (built, module.upgrade()) {
                    (Ok((pre, _)), Some(m)) => {
                        *m.code.write().unwrap_or_else(PoisonError::into_inner) =
                            Arc::new(ModuleCode {
                                pre,
                                tier: CodeTier::Optimized,
                            });
                        tracing::info!(module = %name, seconds = started.elapsed().as_secs_f64(), "module now runs optimised code");
                    }
                    (Ok(_), None) => {}
                    (Err(e), _) => tracing::warn!(module = %name, error = %e.message, "cannot compile the module's optimised code; it keeps running quick-tier code"),
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(module = %self.manifest.name, error = %e, "cannot start the module's tier up; it keeps running quick-tier code");
        }
    }

    /// Whether the module uses standard `wasi:http` for outbound requests.
    pub fn uses_wasi_http(&self) -> bool {
        self.imports
            .iter()
            .any(|i| i.starts_with("wasi:http/outgoing-handler@"))
    }
}

/// Compile `bytes` (SHA-256 `digest`) into code of `tier` through the compile cache, off
/// the async threads.
async fn compile(
    engine: &Arc<SandboxEngine>,
    cache: &CompileCache,
    tier: CodeTier,
    digest: &str,
    bytes: &[u8],
) -> Result<wasmtime::component::Component, StepError> {
    let (engine, cache) = (engine.clone(), cache.clone());
    let (bytes, digest) = (bytes.to_vec(), digest.to_string());
    tokio::task::spawn_blocking(move || cache.load(&engine, tier, &digest, &bytes))
        .await
        .map_err(|e| StepError::internal(format!("compile task failed: {e}")))?
        .map_err(|e| StepError::invalid_module(format!("not a valid component: {e:#}")))
}

/// Check what `component` (code of `tier`) imports against what the host offers and
/// pre-instantiate it with the tier's linker; also the imports.
fn prepare(
    engine: &SandboxEngine,
    tier: CodeTier,
    component: &wasmtime::component::Component,
) -> Result<(ModulePre<StepState>, Vec<String>), StepError> {
    let imports = imported_interfaces(engine.engine_of(tier), component);
    if let Some(unknown) = imports.iter().find(|i| !offered(i)) {
        return Err(StepError::invalid_module(format!(
            "the component imports `{unknown}`, which this host does not offer (it offers {OFFERED_SUMMARY})"
        )));
    }
    let instance_pre = engine.linker_of(tier).instantiate_pre(component).map_err(|e| {
        StepError::invalid_module(format!(
            "the component is not a flow8 module (world flow8:integration/module): it needs imports the host does not offer: {e:#}"
        ))
    })?;
    let pre = ModulePre::new(instance_pre).map_err(|e| {
        StepError::invalid_module(format!(
            "the component is not a flow8 module (world flow8:integration/module): {e:#}"
        ))
    })?;
    Ok((pre, imports))
}

/// The interfaces (instances) `component` imports, by their full names, in its order.
pub fn imported_interfaces(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect()
}

/// The interfaces the host's linker defines, by package and interface name, each with
/// the version track the linker matches (semver-compatible: any 0.2.x for WASI). Kept
/// beside `engine.rs`'s linker setup; a test loads a component importing each.
const OFFERED: &[(&str, &[&str], &str)] = &[
    (
        "flow8:integration",
        &[
            "types",
            "credentials",
            "http",
            "object-storage",
            "mail",
            "file-transfer",
            "log",
            "step",
        ],
        "0.1.",
    ),
    ("wasi:io", &["error", "poll", "streams"], "0.2."),
    ("wasi:clocks", &["monotonic-clock", "wall-clock"], "0.2."),
    (
        "wasi:random",
        &["random", "insecure", "insecure-seed"],
        "0.2.",
    ),
    (
        "wasi:cli",
        &[
            "environment",
            "exit",
            "stdin",
            "stdout",
            "stderr",
            "terminal-input",
            "terminal-output",
            "terminal-stdin",
            "terminal-stdout",
            "terminal-stderr",
        ],
        "0.2.",
    ),
    ("wasi:filesystem", &["types", "preopens"], "0.2."),
    // Linked so language runtimes that import them load; the step's WASI context
    // allows no TCP, UDP or name lookup.
    (
        "wasi:sockets",
        &[
            "network",
            "instance-network",
            "tcp",
            "tcp-create-socket",
            "udp",
            "udp-create-socket",
            "ip-name-lookup",
        ],
        "0.2.",
    ),
    ("wasi:http", &["types", "outgoing-handler"], "0.2."),
];

/// What the host offers, for the refusal's message.
const OFFERED_SUMMARY: &str = "flow8:integration@0.1, wasi:io, wasi:clocks, wasi:random, wasi:cli, wasi:filesystem, wasi:sockets (denied) and wasi:http/types and outgoing-handler, all @0.2";

/// Whether the host offers the import `name` (`package/interface@version`).
fn offered(name: &str) -> bool {
    let Some((path, version)) = name.split_once('@') else {
        return false;
    };
    let Some((package, interface)) = path.split_once('/') else {
        return false;
    };
    OFFERED.iter().any(|(p, interfaces, track)| {
        *p == package && interfaces.contains(&interface) && version.starts_with(track)
    })
}

/// Call the `manifest` export in a sandbox with no credentials, no network and a short
/// deadline: a module cannot do anything useful (or harmful) while describing itself.
async fn read_manifest(pre: &ModulePre<StepState>) -> Result<String, StepError> {
    let limits = StepLimits {
        deadline: Duration::from_secs(2),
        memory_bytes: 32 * 1024 * 1024,
        output_bytes: 256 * 1024,
        log_bytes: 16 * 1024,
        max_http_requests: 0,
        ..StepLimits::default()
    };
    let outbound = OutboundClient::new(OutboundPolicy {
        allowed_hosts: Vec::new(),
        ..OutboundPolicy::default()
    })
    .map_err(|e| StepError::internal(e.to_string()))?;
    let mut store = super::new_store(
        pre.instance_pre().engine(),
        StepState::new(
            super::locked_down_wasi(&StepLog::with_capacity(limits.log_bytes), None)?,
            StepLog::with_capacity(limits.log_bytes),
            limits,
            Vec::new(),
            Arc::new(Vec::new()),
            outbound,
            None,
        ),
    );
    let run = async {
        let instance = pre.instantiate_async(&mut store).await?;
        instance.call_manifest(&mut store).await
    };
    let json = match tokio::time::timeout(limits.deadline + Duration::from_millis(500), run).await {
        Ok(Ok(json)) => json,
        Ok(Err(e)) => {
            return Err(StepError::invalid_manifest(format!(
                "the module's `manifest` export failed: {}",
                super::describe_trap(&e)
            )));
        }
        Err(_) => {
            return Err(StepError::invalid_manifest(
                "the module's `manifest` export did not return in time",
            ));
        }
    };
    if json.len() > limits.output_bytes {
        return Err(StepError::invalid_manifest(
            "the manifest is larger than 256 KiB",
        ));
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::offered;

    #[test]
    fn the_interfaces_the_linker_defines_are_offered_at_their_version_track() {
        for name in [
            "flow8:integration/http@0.1.0",
            "wasi:http/outgoing-handler@0.2.3",
            "wasi:http/types@0.2.12",
            "wasi:random/random@0.2.0",
            "wasi:clocks/wall-clock@0.2.6",
            "wasi:cli/environment@0.2.0",
            "wasi:sockets/tcp@0.2.0",
        ] {
            assert!(offered(name), "{name}");
        }
    }

    #[test]
    fn other_interfaces_versions_and_shapes_are_not() {
        for name in [
            "wasi:http/incoming-handler@0.2.3",
            "wasi:http/types@0.3.0-rc-2025-09-16",
            "wasi:keyvalue/store@0.2.0-draft",
            "flow8:integration/http@0.2.0",
            "flow8:integration/secrets@0.1.0",
            "wasi:http/types",
            "outgoing-handler@0.2.3",
            "",
        ] {
            assert!(!offered(name), "{name}");
        }
    }
}
