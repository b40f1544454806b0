//! One step's sandbox: the state a fresh `Store` carries (locked-down WASI, the step's
//! security policy with the credentials granted to it, its log, its limits) and the
//! resource limiter that turns "the module wants more memory" into a named error.

use super::grants::GrantedCredential;
use super::policy::StepPolicy;
use crate::manifest::HostPattern;
use crate::outbound::OutboundClient;
use bytes::Bytes;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Per-step limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepLimits {
    /// Wall-clock time for the whole step, outbound calls included.
    pub deadline: Duration,
    /// Linear memory the module may grow to.
    pub memory_bytes: usize,
    /// Largest output (JSON text) the module may return.
    pub output_bytes: usize,
    /// Largest log (module log lines plus stdout and stderr) kept for the step.
    pub log_bytes: usize,
    /// Outbound requests one step may make.
    pub max_http_requests: u32,
    /// Handles the module may hold at once: open files and directories, streams,
    /// pollables (the capacity of the store's WASI resource table). Each open file is
    /// one of the host's file descriptors.
    pub open_files: usize,
    /// Bytes the module may write to its workspace (every write counts, overwrites
    /// included).
    pub workspace_bytes: u64,
    /// Files, directories and links the module may create in its workspace.
    pub workspace_files: u64,
}

impl Default for StepLimits {
    fn default() -> Self {
        StepLimits {
            deadline: Duration::from_secs(30),
            memory_bytes: 64 * 1024 * 1024,
            output_bytes: 1024 * 1024,
            log_bytes: 256 * 1024,
            max_http_requests: 1000,
            open_files: 256,
            workspace_bytes: 256 * 1024 * 1024,
            workspace_files: 1000,
        }
    }
}

/// The shortest `deadline_seconds` (config file and API): one epoch tick, the
/// granularity at which a running module is stopped. A shorter one (a value that rounds
/// to nothing) could only ever answer `deadline_exceeded`.
pub const MIN_DEADLINE_SECONDS: f64 = 0.01;

/// The values `open_files` may take (config file and API). Below 16 a module's
/// standard library may not get its streams open.
pub const OPEN_FILES_RANGE: std::ops::RangeInclusive<usize> = 16..=65_536;
/// The values `workspace_mib` may take.
pub const WORKSPACE_MIB_RANGE: std::ops::RangeInclusive<u64> = 1..=65_536;
/// The values `workspace_files` may take.
pub const WORKSPACE_FILES_RANGE: std::ops::RangeInclusive<u64> = 1..=1_000_000;

/// Apply a step's own `open_files`, `workspace_mib` and `workspace_files` (from the
/// API), each at least its range's minimum and at most the host's default; the
/// message names the one that is out of range.
pub fn override_budgets(
    limits: &mut StepLimits,
    defaults: &StepLimits,
    open_files: Option<usize>,
    workspace_mib: Option<u64>,
    workspace_files: Option<u64>,
) -> Result<(), String> {
    if let Some(n) = open_files {
        let (min, max) = (*OPEN_FILES_RANGE.start(), defaults.open_files);
        if !(min..=max).contains(&n) {
            return Err(format!("limits.open_files must be {min}-{max}"));
        }
        limits.open_files = n;
    }
    if let Some(m) = workspace_mib {
        let (min, max) = (
            *WORKSPACE_MIB_RANGE.start(),
            defaults.workspace_bytes / (1024 * 1024),
        );
        if !(min..=max).contains(&m) {
            return Err(format!("limits.workspace_mib must be {min}-{max}"));
        }
        limits.workspace_bytes = m * 1024 * 1024;
    }
    if let Some(n) = workspace_files {
        let (min, max) = (*WORKSPACE_FILES_RANGE.start(), defaults.workspace_files);
        if !(min..=max).contains(&n) {
            return Err(format!("limits.workspace_files must be {min}-{max}"));
        }
        limits.workspace_files = n;
    }
    Ok(())
}

/// The memory limit was hit; carried through the trap so the step reports
/// `memory_limit_exceeded` rather than a generic crash.
#[derive(Debug, thiserror::Error)]
#[error(
    "the module tried to grow its memories and tables to {desired} bytes in all; this step allows {limit}"
)]
pub struct MemoryLimitHit {
    /// Bytes of all memories and tables together, had the growth been allowed.
    pub desired: usize,
    /// Bytes allowed.
    pub limit: usize,
}

/// The deadline passed while the module was running.
#[derive(Debug, thiserror::Error)]
#[error("the step ran past its deadline of {0:?}")]
pub struct DeadlineHit(pub Duration);

/// What one table element is charged against the memory budget: a table holds
/// pointers (function references), whatever the module declares.
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// Caps the memory of the whole step: every linear memory and every table of every
/// core instance in the component, summed. wasmtime asks the limiter about each
/// memory alone (`current` and `desired` are that memory's sizes), so a per-memory
/// check let a component with two memories use twice the cap; the sum is kept here.
#[derive(Debug)]
pub struct Limiter {
    memory_bytes: usize,
    /// Bytes granted so far to all memories and tables of the store.
    used: usize,
}

impl Limiter {
    /// A limiter allowing `memory_bytes` for all memories and tables together.
    pub fn new(memory_bytes: usize) -> Limiter {
        Limiter {
            memory_bytes,
            used: 0,
        }
    }

    /// Bytes of memories and tables granted so far.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Grant `extra` bytes, or say why not. A growth wasmtime refuses after a grant
    /// (the host cannot map more) stays counted: rare, and only ever stricter.
    fn grant(&mut self, extra: usize) -> wasmtime::Result<bool> {
        let total = self.used.saturating_add(extra);
        if total > self.memory_bytes {
            // An error (not `Ok(false)`) so the trap says why, instead of the guest's
            // allocator failing into a bare `unreachable`.
            return Err(MemoryLimitHit {
                desired: total,
                limit: self.memory_bytes,
            }
            .into());
        }
        self.used = total;
        Ok(true)
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Past the memory's own declared maximum wasmtime fails the growth itself
        // (`memory.grow` answers -1, as the module asked): nothing to count.
        if maximum.is_some_and(|m| desired > m) {
            return Ok(false);
        }
        self.grant(desired.saturating_sub(current))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > 1_000_000 || maximum.is_some_and(|m| desired > m) {
            return Ok(false);
        }
        self.grant(
            desired
                .saturating_sub(current)
                .saturating_mul(TABLE_ELEMENT_BYTES),
        )
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        8
    }
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// trace
    Trace,
    /// debug
    Debug,
    /// info
    Info,
    /// warn
    Warn,
    /// error
    Error,
    /// The module wrote to stdout.
    Stdout,
    /// The module wrote to stderr.
    Stderr,
}

/// One line of a step's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// Severity or stream.
    pub level: LogLevel,
    /// Text, with any secret the step was granted redacted.
    pub message: String,
}

/// What a log line costs beyond its text: its share of the report (`{"level":
/// "stdout","message":""},` is 32 bytes of JSON) and of the host's memory (a
/// `LogLine` is 32 bytes). Without it empty lines were free, and 13 million of them
/// took the host to 6 GB.
pub const LOG_LINE_OVERHEAD: usize = 32;

/// Bytes of stdout or stderr kept while waiting for a newline; a longer run of text
/// becomes a line of its own.
const MAX_PARTIAL_LINE: usize = 16 * 1024;

/// What a line costs against the log cap: its text as JSON escapes it in the report
/// (a control character can take six bytes there) plus [`LOG_LINE_OVERHEAD`].
fn line_cost(message: &str) -> usize {
    let escaped = message
        .bytes()
        .filter(|b| *b < 0x20 || *b == b'"' || *b == b'\\')
        .count();
    message
        .len()
        .saturating_add(escaped.saturating_mul(5))
        .saturating_add(LOG_LINE_OVERHEAD)
}

/// The step's log, shared with the WASI stdout/stderr pipes.
#[derive(Debug, Clone, Default)]
pub struct StepLog {
    inner: Arc<Mutex<LogInner>>,
}

#[derive(Debug, Default)]
struct LogInner {
    lines: Vec<LogLine>,
    /// What the kept lines cost (see [`line_cost`]).
    bytes: usize,
    cap: usize,
    truncated: bool,
    partial_stdout: Vec<u8>,
    partial_stderr: Vec<u8>,
}

impl StepLog {
    /// A log whose lines cost at most `cap` bytes (text plus a per-line overhead).
    pub fn with_capacity(cap: usize) -> StepLog {
        StepLog {
            inner: Arc::new(Mutex::new(LogInner {
                cap,
                ..Default::default()
            })),
        }
    }

    /// Append a line (dropped, and the log marked truncated, once the cap is reached).
    pub fn push(&self, level: LogLevel, message: String) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.push(level, message);
    }

    /// stdout/stderr bytes: split into lines in one pass (no re-scanning or shifting
    /// of what is left, so a write of many short lines costs what its bytes cost).
    fn write_stream(&self, level: LogLevel, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut partial = std::mem::take(if level == LogLevel::Stdout {
            &mut inner.partial_stdout
        } else {
            &mut inner.partial_stderr
        });
        let mut rest = bytes;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            let (line, tail) = rest.split_at(pos);
            rest = &tail[1..];
            if partial.is_empty() {
                inner.push_bytes(level, line);
            } else {
                partial.extend_from_slice(line);
                inner.push_bytes(level, &partial);
                partial.clear();
            }
        }
        if inner.is_full() {
            // Nothing more fits: keep no unterminated text either.
            partial.clear();
        } else {
            partial.extend_from_slice(rest);
            // A stream that never writes a newline must not grow without bound.
            if partial.len() > MAX_PARTIAL_LINE {
                inner.push_bytes(level, &partial);
                partial.clear();
            }
        }
        *(if level == LogLevel::Stdout {
            &mut inner.partial_stdout
        } else {
            &mut inner.partial_stderr
        }) = partial;
    }

    /// The lines so far (flushing any unterminated stdout/stderr text), plus whether
    /// lines were dropped.
    pub fn take(&self) -> (Vec<LogLine>, bool) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for level in [LogLevel::Stdout, LogLevel::Stderr] {
            let buf = if level == LogLevel::Stdout {
                std::mem::take(&mut inner.partial_stdout)
            } else {
                std::mem::take(&mut inner.partial_stderr)
            };
            if !buf.is_empty() {
                inner.push_bytes(level, &buf);
            }
        }
        (std::mem::take(&mut inner.lines), inner.truncated)
    }
}

impl LogInner {
    /// Whether not even an empty line fits any more.
    fn is_full(&self) -> bool {
        self.bytes.saturating_add(LOG_LINE_OVERHEAD) > self.cap
    }

    fn push(&mut self, level: LogLevel, message: String) {
        let cost = line_cost(&message);
        if self.bytes.saturating_add(cost) > self.cap {
            self.truncated = true;
            return;
        }
        self.bytes += cost;
        self.lines.push(LogLine { level, message });
    }

    /// A line of stream bytes; refused before any text is allocated when even its
    /// raw bytes cannot fit.
    fn push_bytes(&mut self, level: LogLevel, bytes: &[u8]) {
        if self
            .bytes
            .saturating_add(bytes.len())
            .saturating_add(LOG_LINE_OVERHEAD)
            > self.cap
        {
            self.truncated = true;
            return;
        }
        self.push(level, String::from_utf8_lossy(bytes).into_owned());
    }
}

/// stdout or stderr of the guest, captured into the step log. Never fails the guest:
/// past the cap, output is dropped and the log marked truncated.
#[derive(Debug, Clone)]
pub struct CapturedStream {
    log: StepLog,
    level: LogLevel,
}

impl CapturedStream {
    /// Capture into `log` as `level` (stdout or stderr).
    pub fn new(log: StepLog, level: LogLevel) -> CapturedStream {
        CapturedStream { log, level }
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::OutputStream for CapturedStream {
    fn write(&mut self, bytes: Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        self.log.write_stream(self.level, &bytes);
        Ok(())
    }
    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for CapturedStream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CapturedStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.log.write_stream(self.level, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl wasmtime_wasi::cli::IsTerminal for CapturedStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for CapturedStream {
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Redaction lives with the rest of the step's security decisions.
pub use super::policy::redact::Redactor;

/// What the `Store` of one step carries.
pub struct StepState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) log: StepLog,
    pub(crate) deadline: Instant,
    pub(crate) limits: StepLimits,
    /// The step's grants and every security decision about them (destinations, taint,
    /// headers, refreshes, redaction).
    pub(crate) policy: StepPolicy,
    pub(crate) outbound: OutboundClient,
    pub(crate) workspace: Option<PathBuf>,
    /// What is left of the workspace budgets (`workspace_quota`).
    pub(crate) workspace_quota: Arc<super::workspace_quota::WorkspaceQuota>,
    pub(crate) http_requests: u32,
    /// Credential uses, for the audit log.
    pub(crate) uses: Vec<CredentialUse>,
    /// Whether the module's manifest declares `credentials.get` (else that call is refused).
    pub(crate) reads_secrets: bool,
    /// The step's company (for forced OAuth refreshes).
    pub(crate) company_id: String,
    /// Forces OAuth refreshes, when the host has OAuth.
    pub(crate) refresher: Option<Arc<crate::oauth::OAuthService>>,
    /// Where the taint of the step's workspace is kept, when it has one.
    pub(crate) workspace_taints: Option<Arc<super::taint::WorkspaceTaints>>,
    /// Standard `wasi:http` (its fields, bodies, and what its requests found).
    pub(crate) wasi_http: crate::capabilities::wasi_http::WasiHttpState,
}

/// A credential used by a step: which binding, how, for which destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialUse {
    /// The binding name.
    pub binding: String,
    /// The component or link id.
    pub resource_id: String,
    /// Whether that is a component or a link (the audit log names them apart).
    #[serde(skip)]
    pub kind: crate::manifest::CredentialKind,
    /// `read` (credentials.get), `attached` (host attached it to a request) or
    /// `reflected` (the answer to such a request carried the secret back).
    pub how: &'static str,
    /// Destination origin for `attached`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

impl StepState {
    /// Fresh state for one step.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        wasi: WasiCtx,
        log: StepLog,
        limits: StepLimits,
        grants: Vec<GrantedCredential>,
        manifest_hosts: Arc<Vec<HostPattern>>,
        outbound: OutboundClient,
        workspace: Option<PathBuf>,
    ) -> StepState {
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.open_files);
        StepState {
            wasi,
            table,
            limiter: Limiter::new(limits.memory_bytes),
            log,
            deadline: Instant::now() + limits.deadline,
            limits,
            policy: StepPolicy::new(manifest_hosts, grants),
            outbound,
            workspace,
            workspace_quota: super::workspace_quota::WorkspaceQuota::new(
                limits.workspace_bytes,
                limits.workspace_files,
            ),
            http_requests: 0,
            uses: Vec::new(),
            reads_secrets: false,
            company_id: String::new(),
            refresher: None,
            workspace_taints: None,
            wasi_http: Default::default(),
        }
    }

    /// Record a credential use once: a module calling `credentials.get` in a loop must
    /// not grow the report (and the host's memory) with copies of the same entry.
    pub(crate) fn record_use(&mut self, used: CredentialUse) {
        if !self.uses.contains(&used) {
            self.uses.push(used);
        }
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
