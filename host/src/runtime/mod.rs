//! The sandboxed module runtime: one engine, a registry of compiled modules, and
//! `Runtime::run_step`, which runs one flow step in a fresh store with its deadline,
//! memory cap, output cap, locked-down WASI and exactly the credentials it was granted.

pub mod bindings;
pub mod cache;
pub mod component_cache;
pub mod engine;
pub mod error;
pub mod fair;
pub mod grants;
pub mod module;
pub mod name_hint;
pub mod policy;
pub mod registry;
pub mod review;
pub mod sandbox;
pub mod schema_budget;
pub mod taint;
pub mod workspace_quota;

use crate::outbound::OutboundClient;
use crate::store::AnyStore;
use crate::vault::Vault;
use error::{ErrorName, StepError};
use module::LoadedModule;
use policy::Taint;
use registry::ModuleRegistry;
use sandbox::{
    CredentialUse, DeadlineHit, LogLevel, LogLine, MemoryLimitHit, StepLimits, StepLog, StepState,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::{Store as WasmStore, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx};

pub use engine::{EngineConfig, SandboxEngine};

/// One flow step to run.
#[derive(Debug, Clone)]
pub struct StepRequest {
    /// The company whose credentials the step may use.
    pub company_id: String,
    /// `name`, `name@version`, or a path to a `.wasm`.
    pub module_ref: String,
    /// The step's input (flow8's `input_mapping`, resolved).
    pub input: serde_json::Value,
    /// Binding name -> component name or id (or link id).
    pub bindings: BTreeMap<String, String>,
    /// Overrides of the host's default limits.
    pub limits: Option<StepLimits>,
    /// The step's workspace directory, seen by the module as `/`.
    pub workspace: Option<PathBuf>,
    /// Taint the input carries: the `pinned_to` of the reports of the steps whose
    /// outputs it was mapped from. The step may only reach what every one allows.
    pub pinned_to: Vec<Taint>,
}

/// Which module ran.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleInfo {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// SHA-256 of the `.wasm`.
    pub digest: String,
}

/// The result of a step, with its log whether it succeeded or not.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// The module, when it was resolved.
    pub module: Option<ModuleInfo>,
    /// Output or named error.
    #[serde(flatten, with = "report_result")]
    pub result: Result<serde_json::Value, StepError>,
    /// The module's log lines and stdout/stderr, secrets redacted.
    pub log: Vec<LogLine>,
    /// Whether log lines were dropped at the cap.
    pub log_truncated: bool,
    /// Wall-clock time of the whole step.
    pub duration_ms: f64,
    /// OAuth links of other users the step used (shared with its user, or its user an
    /// admin), for the audit log.
    #[serde(skip)]
    pub other_users_links: Vec<grants::LinkUse>,
    /// Credentials the module read or had attached.
    pub credentials_used: Vec<CredentialUse>,
    /// Whether the output (and the workspace) may hold data derived from a secret: the
    /// step held one, or its input or workspace carried a taint in.
    pub tainted: bool,
    /// Where such data may go: for each secret, the pins of its credential. A step whose
    /// input is mapped from this output gets this list as its `pinned_to`.
    pub pinned_to: Vec<Taint>,
}

impl StepReport {
    /// The report of a step refused before it ran (bad body, bad limits).
    pub fn refused(error: StepError) -> StepReport {
        StepReport {
            module: None,
            result: Err(error),
            log: Vec::new(),
            log_truncated: false,
            duration_ms: 0.0,
            credentials_used: Vec::new(),
            other_users_links: Vec::new(),
            tainted: false,
            pinned_to: Vec::new(),
        }
    }
}

/// A report's outcome in the API's one error envelope: `"status": "ok"` with `output`,
/// or `"status": "error"` with `error` (the catalogue name) and `message`, plus
/// `upstream_status` and `retry_after_seconds` where they apply: the same `error` and
/// `message` fields every other API error has.
mod report_result {
    use super::StepError;
    use serde::Serializer;
    use serde::ser::SerializeMap;

    pub fn serialize<S: Serializer>(
        r: &Result<serde_json::Value, StepError>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match r {
            Ok(v) => {
                m.serialize_entry("status", "ok")?;
                m.serialize_entry("output", v)?;
            }
            Err(e) => {
                m.serialize_entry("status", "error")?;
                m.serialize_entry("error", &e.name)?;
                m.serialize_entry("message", &e.message)?;
                if let Some(status) = e.status {
                    m.serialize_entry("upstream_status", &status)?;
                }
                if let Some(secs) = e.retry_after_seconds {
                    m.serialize_entry("retry_after_seconds", &secs)?;
                }
            }
        }
        m.end()
    }
}

/// Runs steps. Cheap to clone; share one per process.
pub struct Runtime {
    modules: Arc<ModuleRegistry>,
    oauth: Option<Arc<crate::oauth::OAuthService>>,
    outbound: OutboundClient,
    store: Arc<AnyStore>,
    vault: Arc<Vault>,
    limits: StepLimits,
    /// How much of the sandbox pool one company may hold and queue for.
    share: fair::CompanyShare,
    /// Which step workspaces hold data derived from a secret.
    workspace_taints: Arc<taint::WorkspaceTaints>,
    /// Component records recently read for bindings.
    components: Arc<component_cache::ComponentCache>,
}

impl Clone for Runtime {
    fn clone(&self) -> Self {
        Runtime {
            modules: self.modules.clone(),
            oauth: self.oauth.clone(),
            outbound: self.outbound.clone(),
            store: self.store.clone(),
            vault: self.vault.clone(),
            limits: self.limits,
            share: self.share,
            workspace_taints: self.workspace_taints.clone(),
            components: self.components.clone(),
        }
    }
}

/// A step's store, made by `engine`: the engine of the code it will run (see
/// `engine::CodeTier`).
pub(crate) fn new_store(engine: &wasmtime::Engine, state: StepState) -> WasmStore<StepState> {
    let deadline = state.deadline;
    let budget = state.limits.deadline;
    let mut store = WasmStore::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1);
    // Every tick: trap past the deadline, otherwise yield so one busy module cannot
    // hold an executor thread from the other steps.
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Err(DeadlineHit(budget).into())
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store
}

/// WASI with nothing in it: no environment, no arguments, no sockets, no name lookup,
/// stdout and stderr into the step log, and only the workspace (as `/`) on disk.
pub(crate) fn locked_down_wasi(
    log: &StepLog,
    workspace: Option<&std::path::Path>,
) -> Result<WasiCtx, StepError> {
    let mut b = WasiCtx::builder();
    b.stdout(sandbox::CapturedStream::new(log.clone(), LogLevel::Stdout))
        .stderr(sandbox::CapturedStream::new(log.clone(), LogLevel::Stderr))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    if let Some(dir) = workspace {
        b.preopened_dir(dir, "/", FsPerms::ReadWrite).map_err(|e| {
            StepError::invalid_input(format!(
                "cannot open the step workspace `{}`: {e}",
                dir.display()
            ))
        })?;
    }
    Ok(b.build())
}

/// A trap or host error, described for a person (first line only: backtraces are for logs).
pub(crate) fn describe_trap(e: &wasmtime::Error) -> String {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return trap.to_string();
    }
    let text = format!("{e:#}");
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(500)
        .collect()
}

/// The step's deadline passed before the module could run.
fn past_deadline(limits: &StepLimits, during: &str) -> StepError {
    StepError::new(
        ErrorName::DeadlineExceeded,
        format!(
            "the step ran past its deadline of {:?} {during}",
            limits.deadline
        ),
    )
}

fn classify_trap(e: &wasmtime::Error, limits: &StepLimits) -> StepError {
    if let Some(hit) = e.downcast_ref::<MemoryLimitHit>() {
        return StepError::new(ErrorName::MemoryLimitExceeded, hit.to_string());
    }
    if let Some(hit) = e.downcast_ref::<workspace_quota::WorkspaceLimitHit>() {
        return StepError::new(ErrorName::LimitExceeded, hit.to_string());
    }
    if let Some(wasmtime::component::ResourceTableError::Full) =
        e.downcast_ref::<wasmtime::component::ResourceTableError>()
    {
        return StepError::new(
            ErrorName::LimitExceeded,
            format!(
                "the module held more than {} handles at once (open files and directories, streams); this step allows {}",
                limits.open_files, limits.open_files
            ),
        );
    }
    if e.downcast_ref::<DeadlineHit>().is_some() {
        return StepError::new(
            ErrorName::DeadlineExceeded,
            format!("the step ran past its deadline of {:?}", limits.deadline),
        );
    }
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::StackOverflow) => StepError::new(
            ErrorName::LimitExceeded,
            "the module exhausted its call stack (runaway recursion?)",
        ),
        Some(wasmtime::Trap::Interrupt) => StepError::new(
            ErrorName::DeadlineExceeded,
            format!("the step ran past its deadline of {:?}", limits.deadline),
        ),
        Some(trap) => StepError::module_error(format!("the module crashed: {trap}")),
        None => StepError::module_error(format!("the module failed: {}", describe_trap(e))),
    }
}

fn guest_error(e: bindings::GuestError) -> StepError {
    use bindings::GuestError as G;
    match e {
        G::InvalidInput(m) => StepError::new(ErrorName::InvalidInput, m),
        G::AccessDenied(m) => StepError::new(ErrorName::AccessDenied, m),
        G::InsufficientScope(m) => StepError::new(ErrorName::InsufficientScope, m),
        G::TokenRevoked(m) => StepError::new(ErrorName::TokenRevoked, m),
        G::RateLimitExceeded(r) => StepError {
            retry_after_seconds: r.retry_after_seconds,
            ..StepError::new(ErrorName::RateLimitExceeded, r.message)
        },
        G::Upstream(u) => StepError {
            status: Some(u.status),
            ..StepError::new(ErrorName::UpstreamError, u.message)
        },
        G::Network(m) => StepError::new(ErrorName::NetworkError, m),
        G::Forbidden(m) => StepError::new(ErrorName::Forbidden, m),
        G::LimitExceeded(m) => StepError::new(ErrorName::LimitExceeded, m),
        G::Internal(m) => StepError::new(ErrorName::ModuleError, m),
    }
}

/// The largest step input (its JSON text) the host takes.
pub const MAX_INPUT_BYTES: usize = 16 * 1024 * 1024;

/// The most subschema evaluations validating one input may cost: its values times the
/// schema's worst case per value (`schema_budget`). About a second of one core.
pub const MAX_VALIDATION_WORK: u64 = 50_000_000;

/// Below this much work validation runs in place: it takes microseconds, less than
/// handing it to another thread.
const INLINE_VALIDATION_WORK: u64 = 20_000;

/// The longest error message a step report carries (and at most the step's output
/// cap, whose place the message takes); a longer one is cut with a marker.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 16 * 1024;

/// Cut `message` to at most `cap` bytes (on a character boundary), saying so.
fn cap_message(message: &mut String, cap: usize) {
    if message.len() <= cap {
        return;
    }
    let marker = format!(" ... [truncated: {} bytes in all]", message.len());
    let mut end = cap.saturating_sub(marker.len());
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(&marker);
}

/// Check an input against the module's schema; name the first few problems.
pub fn validate_input(module: &LoadedModule, input: &serde_json::Value) -> Result<(), StepError> {
    // The common case, valid input, without building error values.
    if module.input_validator.is_valid(input) {
        return Ok(());
    }
    let problems: Vec<String> = module
        .input_validator
        .iter_errors(input)
        .take(5)
        .map(|e| {
            let path = e.instance_path.to_string();
            if path.is_empty() {
                e.to_string()
            } else {
                format!("{path}: {e}")
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StepError::invalid_input(format!(
            "input does not match the schema of `{}`: {}",
            module.manifest.name,
            problems.join("; ")
        )))
    }
}

/// Validate a step's input within the step's budgets: its size (`text_len`, its JSON
/// text), the validation work it can cost, and the step's deadline. Work past a few
/// microseconds runs on a blocking thread, so it never holds up the async runtime's
/// other steps; a validation still running at the deadline is left to finish there
/// (its work is bounded by `MAX_VALIDATION_WORK`) while the step reports the deadline.
async fn validate_step_input(
    module: &Arc<LoadedModule>,
    input: serde_json::Value,
    text_len: usize,
    limits: &StepLimits,
    deadline: Instant,
) -> Result<serde_json::Value, StepError> {
    if text_len > MAX_INPUT_BYTES {
        return Err(StepError::invalid_input(format!(
            "the step's input is {text_len} bytes of JSON; the host takes at most {MAX_INPUT_BYTES}"
        )));
    }
    let values = schema_budget::count_values(&input);
    let work = values.saturating_mul(module.input_evaluations);
    if work > MAX_VALIDATION_WORK {
        return Err(StepError::new(
            ErrorName::LimitExceeded,
            format!(
                "validating the input ({values} values and keys, up to {} subschemas each in `{}`'s schema) could take {work} evaluations; the host allows {MAX_VALIDATION_WORK}",
                module.input_evaluations, module.manifest.name
            ),
        ));
    }
    if work <= INLINE_VALIDATION_WORK {
        return validate_input(module, &input).map(|()| input);
    }
    let m = module.clone();
    let task = tokio::task::spawn_blocking(move || validate_input(&m, &input).map(|()| input));
    match tokio::time::timeout_at(deadline.into(), task).await {
        Ok(Ok(checked)) => checked,
        Ok(Err(e)) => Err(StepError::internal(format!(
            "the input validation task failed: {e}"
        ))),
        Err(_) => Err(past_deadline(limits, "while its input was validated")),
    }
}

impl Runtime {
    /// A runtime over a module registry, an outbound client, a store and a vault.
    pub fn new(
        modules: Arc<ModuleRegistry>,
        outbound: OutboundClient,
        store: Arc<AnyStore>,
        vault: Arc<Vault>,
        limits: StepLimits,
    ) -> Runtime {
        Runtime {
            modules,
            oauth: None,
            outbound,
            store,
            vault,
            limits,
            // Until configured: the whole pool, as before fair shares.
            share: fair::CompanyShare {
                max_running: usize::MAX,
                max_waiting: usize::MAX,
            },
            workspace_taints: Arc::new(taint::WorkspaceTaints::in_memory()),
            components: Arc::new(component_cache::ComponentCache::new(
                crate::config::DEFAULT_RECORD_CACHE,
            )),
        }
    }

    /// Keep the component records bindings resolve to for at most `lifetime` (zero:
    /// read the store on every step); see `component_cache`.
    pub fn with_component_cache(mut self, lifetime: std::time::Duration) -> Runtime {
        self.components = Arc::new(component_cache::ComponentCache::new(lifetime));
        self
    }

    /// Give each company at most this share of the sandbox pool.
    pub fn with_company_share(mut self, share: fair::CompanyShare) -> Runtime {
        self.share = share;
        self
    }

    /// Keep the taint of step workspaces in `taints` (by default in memory only).
    pub fn with_workspace_taints(mut self, taints: taint::WorkspaceTaints) -> Runtime {
        self.workspace_taints = Arc::new(taints);
        self
    }

    /// Resolve OAuth-link bindings with this service.
    pub fn with_oauth(mut self, oauth: Arc<crate::oauth::OAuthService>) -> Runtime {
        self.oauth = Some(oauth);
        self
    }

    /// The module registry.
    pub fn modules(&self) -> &Arc<ModuleRegistry> {
        &self.modules
    }

    /// The provider catalogue (the registry's: manifests were checked against it, and
    /// grants resolve against the same).
    pub fn catalogue(&self) -> &Arc<crate::catalogue::Catalogue> {
        self.modules.catalogue()
    }

    /// The outbound client (the operator's egress policy), which the event deliverer
    /// also sends through.
    pub fn outbound(&self) -> &OutboundClient {
        &self.outbound
    }

    /// The default per-step limits.
    pub fn default_limits(&self) -> StepLimits {
        self.limits
    }

    /// Run one step to completion (or to its deadline). The deadline is the step's wall
    /// time: resolving the module, its credentials (an OAuth refresh and the wait for
    /// another host's refresh lease included), waiting for a free sandbox and running
    /// the module all count against it.
    pub async fn run_step(&self, req: StepRequest) -> StepReport {
        self.run_step_as(req, None).await
    }

    /// [`Runtime::run_step`] for an API caller: its OAuth links must be the caller's,
    /// shared with the caller, or the caller an admin (see `oauth::ownership`).
    pub async fn run_step_as(
        &self,
        req: StepRequest,
        actor: Option<crate::oauth::ownership::Actor>,
    ) -> StepReport {
        use tracing::Instrument;
        // Every log line of the step (credential lookups, refreshes, outbound calls)
        // carries its company and module, so a line can be tied to its step.
        let span = tracing::info_span!(
            "step",
            company = %req.company_id,
            module = %req.module_ref,
            version = tracing::field::Empty,
        );
        self.run_step_in_span(req, actor).instrument(span).await
    }

    async fn run_step_in_span(
        &self,
        req: StepRequest,
        actor: Option<crate::oauth::ownership::Actor>,
    ) -> StepReport {
        let start = Instant::now();
        let limits = req.limits.unwrap_or(self.limits);
        let deadline = start + limits.deadline;
        let mut report = StepReport {
            module: None,
            result: Ok(serde_json::Value::Null),
            log: Vec::new(),
            log_truncated: false,
            duration_ms: 0.0,
            credentials_used: Vec::new(),
            other_users_links: Vec::new(),
            tainted: !req.pinned_to.is_empty(),
            pinned_to: req.pinned_to.clone(),
        };
        let resolve = async {
            if req.module_ref.ends_with(".wasm") || req.module_ref.contains('/') {
                self.modules.resolve(&req.module_ref).await
            } else {
                self.modules
                    .resolve_for(&*self.store, &req.company_id, &req.module_ref)
                    .await
            }
        };
        let resolved = tokio::time::timeout_at(deadline.into(), resolve)
            .await
            .unwrap_or_else(|_| Err(past_deadline(&limits, "while the module was loaded")));
        let module = match resolved {
            Ok(m) => m,
            Err(e) => {
                report.result = Err(e);
                report.duration_ms = start.elapsed().as_secs_f64() * 1000.0;
                return report;
            }
        };
        tracing::Span::current().record("version", module.manifest.version.as_str());
        report.module = Some(ModuleInfo {
            name: module.manifest.name.clone(),
            version: module.manifest.version.clone(),
            digest: module.digest.clone(),
        });
        self.run_loaded(&module, req, actor.as_ref(), limits, deadline, &mut report)
            .await;
        report.duration_ms = start.elapsed().as_secs_f64() * 1000.0;
        report
    }

    async fn run_loaded(
        &self,
        module: &Arc<LoadedModule>,
        req: StepRequest,
        actor: Option<&crate::oauth::ownership::Actor>,
        limits: StepLimits,
        deadline: Instant,
        report: &mut StepReport,
    ) {
        let mut req = req;
        let input_text = req.input.to_string();
        let input = std::mem::take(&mut req.input);
        req.input =
            match validate_step_input(module, input, input_text.len(), &limits, deadline).await {
                Ok(input) => input,
                Err(e) => {
                    report.result = Err(e);
                    return;
                }
            };
        let resolve = grants::resolve(
            &self.store,
            &self.components,
            &self.vault,
            self.modules.catalogue(),
            self.oauth.as_ref(),
            &module.manifest,
            &req.company_id,
            &req.bindings,
            &req.input,
            actor,
            &mut report.other_users_links,
        );
        let grants = match tokio::time::timeout_at(deadline.into(), resolve).await {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => {
                report.result = Err(e);
                return;
            }
            Err(_) => {
                report.result = Err(past_deadline(
                    &limits,
                    "while its credentials were resolved (an OAuth refresh goes on in the background)",
                ));
                return;
            }
        };
        let log = StepLog::with_capacity(limits.log_bytes);
        let wasi = match locked_down_wasi(&log, req.workspace.as_deref()) {
            Ok(w) => w,
            Err(e) => {
                report.result = Err(e);
                return;
            }
        };
        let engine = self.modules.engine();
        // Declared before the store, so it is released after the store is dropped.
        let wait = deadline.saturating_duration_since(Instant::now());
        let _slot = match engine.sandbox_slot(&req.company_id, self.share, wait).await {
            Ok(slot) => slot,
            Err(fair::SlotError::TimedOut) => {
                report.result = Err(StepError::new(
                    ErrorName::DeadlineExceeded,
                    format!(
                        "no sandbox became free within the step's deadline of {:?} (all {} are busy)",
                        limits.deadline,
                        engine.config().pool_instances
                    ),
                ));
                return;
            }
            Err(e @ fair::SlotError::QueueFull(_)) => {
                report.result = Err(StepError {
                    retry_after_seconds: Some(1),
                    ..StepError::new(
                        ErrorName::RateLimitExceeded,
                        format!("{e}; try again when some have finished"),
                    )
                });
                return;
            }
        };
        let state = StepState::new(
            wasi,
            log.clone(),
            limits,
            grants,
            module.host_patterns.clone(),
            self.outbound.clone(),
            req.workspace.clone(),
        );
        let mut state = state;
        // The clock started when the step did, not when its sandbox was free.
        state.deadline = deadline;
        state.reads_secrets = module.manifest.reads_secrets();
        state.company_id = req.company_id.clone();
        state.refresher = self.oauth.clone();
        // Taint carried in by the input and the workspace; the workspace keeps the
        // input's too, since the module may write its input there.
        state.policy.inherit(req.pinned_to.iter().cloned());
        if let Some(ws) = &req.workspace {
            let carried = self
                .workspace_taints
                .add(ws, &req.pinned_to)
                .and_then(|()| self.workspace_taints.current(ws));
            match carried {
                Ok(t) => state.policy.inherit(t),
                Err(e) => {
                    report.result = Err(StepError::internal(e.to_string()));
                    return;
                }
            }
            state.workspace_taints = Some(self.workspace_taints.clone());
        }
        let code = module.code();
        let mut store = new_store(code.engine(), state);
        let run = async {
            let instance = code.pre.instantiate_async(&mut store).await?;
            instance.call_execute(&mut store, &input_text).await
        };
        // The epoch callback stops a busy module; this stops one waiting on the host
        // (a slow upstream, a sleep) at the same deadline.
        let outcome =
            tokio::time::timeout_at((deadline + Duration::from_millis(50)).into(), run).await;
        // After the run, so secrets the step got during it (a forced refresh) are
        // redacted too.
        let redactor = store.data().policy.output_redactor();
        report.result = match outcome {
            Err(_) => Err(StepError::new(
                ErrorName::DeadlineExceeded,
                format!("the step ran past its deadline of {:?}", limits.deadline),
            )),
            Ok(Err(trap)) => Err(classify_trap(&trap, &limits)),
            Ok(Ok(Err(e))) => Err(guest_error(e)),
            Ok(Ok(Ok(output))) => {
                if output.len() > limits.output_bytes {
                    Err(StepError::new(
                        ErrorName::OutputTooLarge,
                        format!(
                            "the module returned {} bytes of output; this step allows {}",
                            output.len(),
                            limits.output_bytes
                        ),
                    ))
                } else {
                    // Parsed first, then every string, key and number redacted: a
                    // secret written with JSON escapes only shows once parsed.
                    serde_json::from_str(&output)
                        .map(|v| redactor.redact_value(v))
                        .map_err(|e| {
                            StepError::module_error(format!(
                                "the module's output is not JSON: {}",
                                redactor.redact(&e.to_string())
                            ))
                        })
                }
            }
        };
        if let Err(e) = &mut report.result {
            if !redactor.is_empty() {
                e.message = redactor.redact(&e.message);
            }
            // After redaction, so a cut never leaves part of a secret behind.
            cap_message(
                &mut e.message,
                limits.output_bytes.min(MAX_ERROR_MESSAGE_BYTES),
            );
        }
        // What the step's last wasi:http answers carried back, before the report reads
        // the policy (no later request of the step could take it into account).
        if let Err(e) = store.data_mut().absorb_wasi_http_findings() {
            tracing::error!(error = %e, "the workspace taint could not be recorded");
            report.result = Err(StepError::internal(e.to_string()));
        }
        let (lines, truncated) = log.take();
        report.log = lines
            .into_iter()
            .map(|l| LogLine {
                level: l.level,
                message: redactor.redact(&l.message),
            })
            .collect();
        report.log_truncated = truncated;
        report.credentials_used = std::mem::take(&mut store.data_mut().uses);
        let policy = &store.data().policy;
        report.tainted = policy.is_tainted();
        report.pinned_to = policy.taints();
        // Recorded as it happened already (before the secret reached the module); once
        // more here for a step that ended before it could be (a trap mid-call).
        if let Some(ws) = &req.workspace
            && let Err(e) = self.workspace_taints.add(ws, &report.pinned_to)
        {
            tracing::error!(error = %e, "the workspace taint could not be recorded");
            report.result = Err(StepError::internal(e.to_string()));
        }
    }
}

/// The benchmark baseline: instantiate a module in a bare store (no credentials, no
/// limiter, no deadline callback, default WASI) and call `execute`. What wasmtime alone
/// costs, to set a full step against.
pub async fn raw_execute(
    module: &LoadedModule,
    input: &str,
) -> wasmtime::Result<Result<String, bindings::GuestError>> {
    let log = StepLog::with_capacity(1024);
    let outbound = OutboundClient::new(crate::outbound::OutboundPolicy::default())
        .map_err(|e| wasmtime::format_err!("{e}"))?;
    let state = StepState::new(
        WasiCtx::builder().build(),
        log,
        StepLimits::default(),
        Vec::new(),
        Arc::new(Vec::new()),
        outbound,
        None,
    );
    let code = module.code();
    let mut store = WasmStore::new(code.engine(), state);
    store.set_epoch_deadline(u64::MAX / 2);
    let instance = code.pre.instantiate_async(&mut store).await?;
    instance.call_execute(&mut store, input).await
}
