//! Loading a module: check the bytes are a WebAssembly component of the flow8 `module`
//! world, compile it (or load it from the compile cache), pre-instantiate it once, and
//! read and validate its manifest. A `LoadedModule` is then instantiated afresh for
//! every step.

use super::bindings::ModulePre;
use super::cache::CompileCache;
use super::engine::SandboxEngine;
use super::error::StepError;
use super::sandbox::{StepLimits, StepLog, StepState};
use crate::manifest::Manifest;
use crate::outbound::{OutboundClient, OutboundPolicy};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

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
    pub(crate) pre: ModulePre<StepState>,
    pub(crate) input_validator: jsonschema::Validator,
    /// Worst-case subschema evaluations per input value (see `schema_budget`).
    pub(crate) input_evaluations: u64,
    pub(crate) host_patterns: Arc<Vec<crate::manifest::HostPattern>>,
    /// The host interfaces the component imports (`wasi:http/outgoing-handler@0.2.3`,
    /// `flow8:integration/http@0.1.0`, ...), for a review of what it uses.
    pub imports: Vec<String>,
}

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
        let pre = self.pre.instance_pre();
        let mut names = imported_interfaces(pre.engine(), pre.component());
        names.sort();
        names
    }

    /// The names the component exports (`flow8:integration/module@0.1.0`, ...), sorted.
    pub fn exported_interfaces(&self) -> Vec<String> {
        let component = self.pre.instance_pre().component();
        let engine = self.pre.instance_pre().engine();
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
        let component = {
            let engine = engine.clone();
            let cache = cache.clone();
            let bytes = bytes.to_vec();
            let digest = digest.clone();
            tokio::task::spawn_blocking(move || cache.load(&engine, &digest, &bytes))
                .await
                .map_err(|e| StepError::internal(format!("compile task failed: {e}")))?
                .map_err(|e| StepError::invalid_module(format!("not a valid component: {e:#}")))?
        };
        let imports = imported_interfaces(engine.engine(), &component);
        if let Some(unknown) = imports.iter().find(|i| !offered(i)) {
            return Err(StepError::invalid_module(format!(
                "the component imports `{unknown}`, which this host does not offer (it offers {OFFERED_SUMMARY})"
            )));
        }
        let instance_pre = engine.linker().instantiate_pre(&component).map_err(|e| {
            StepError::invalid_module(format!(
                "the component is not a flow8 module (world flow8:integration/module): it needs imports the host does not offer: {e:#}"
            ))
        })?;
        let pre = ModulePre::new(instance_pre).map_err(|e| {
            StepError::invalid_module(format!(
                "the component is not a flow8 module (world flow8:integration/module): {e:#}"
            ))
        })?;
        let manifest_json = read_manifest(engine, &pre).await?;
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
            pre,
            input_validator,
            input_evaluations,
            host_patterns,
            imports,
        })
    }

    /// Whether the module uses standard `wasi:http` for outbound requests.
    pub fn uses_wasi_http(&self) -> bool {
        self.imports
            .iter()
            .any(|i| i.starts_with("wasi:http/outgoing-handler@"))
    }
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
async fn read_manifest(
    engine: &Arc<SandboxEngine>,
    pre: &ModulePre<StepState>,
) -> Result<String, StepError> {
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
        engine,
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
