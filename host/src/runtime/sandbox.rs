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
use std::sync::{Arc, Mutex};
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
}

impl Default for StepLimits {
    fn default() -> Self {
        StepLimits {
            deadline: Duration::from_secs(30),
            memory_bytes: 64 * 1024 * 1024,
            output_bytes: 1024 * 1024,
            log_bytes: 256 * 1024,
            max_http_requests: 1000,
        }
    }
}

/// The memory limit was hit; carried through the trap so the step reports
/// `memory_limit_exceeded` rather than a generic crash.
#[derive(Debug, thiserror::Error)]
#[error("the module tried to grow its memory to {desired} bytes; this step allows {limit}")]
pub struct MemoryLimitHit {
    /// Bytes asked for.
    pub desired: usize,
    /// Bytes allowed.
    pub limit: usize,
}

/// The deadline passed while the module was running.
#[derive(Debug, thiserror::Error)]
#[error("the step ran past its deadline of {0:?}")]
pub struct DeadlineHit(pub Duration);

/// Caps memory and table growth.
#[derive(Debug)]
pub struct Limiter {
    memory_bytes: usize,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            // An error (not `Ok(false)`) so the trap says why, instead of the guest's
            // allocator failing into a bare `unreachable`.
            return Err(MemoryLimitHit {
                desired,
                limit: self.memory_bytes,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
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

/// The step's log, shared with the WASI stdout/stderr pipes.
#[derive(Debug, Clone, Default)]
pub struct StepLog {
    inner: Arc<Mutex<LogInner>>,
}

#[derive(Debug, Default)]
struct LogInner {
    lines: Vec<LogLine>,
    bytes: usize,
    cap: usize,
    truncated: bool,
    partial_stdout: Vec<u8>,
    partial_stderr: Vec<u8>,
}

impl StepLog {
    /// A log that keeps at most `cap` bytes.
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
        let mut inner = self.inner.lock().expect("log lock");
        inner.push(level, message);
    }

    fn write_stream(&self, level: LogLevel, bytes: &[u8]) {
        let mut inner = self.inner.lock().expect("log lock");
        let buf = if level == LogLevel::Stdout {
            &mut inner.partial_stdout
        } else {
            &mut inner.partial_stderr
        };
        buf.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            lines.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
        }
        // A stream that never writes a newline must not grow without bound.
        if buf.len() > 16 * 1024 {
            let line: Vec<u8> = std::mem::take(buf);
            lines.push(String::from_utf8_lossy(&line).into_owned());
        }
        for l in lines {
            inner.push(level, l);
        }
    }

    /// The lines so far (flushing any unterminated stdout/stderr text), plus whether
    /// lines were dropped.
    pub fn take(&self) -> (Vec<LogLine>, bool) {
        let mut inner = self.inner.lock().expect("log lock");
        for level in [LogLevel::Stdout, LogLevel::Stderr] {
            let buf = if level == LogLevel::Stdout {
                std::mem::take(&mut inner.partial_stdout)
            } else {
                std::mem::take(&mut inner.partial_stderr)
            };
            if !buf.is_empty() {
                inner.push(level, String::from_utf8_lossy(&buf).into_owned());
            }
        }
        (std::mem::take(&mut inner.lines), inner.truncated)
    }
}

impl LogInner {
    fn push(&mut self, level: LogLevel, message: String) {
        if self.bytes + message.len() > self.cap {
            self.truncated = true;
            return;
        }
        self.bytes += message.len();
        self.lines.push(LogLine { level, message });
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

/// Replaces every granted secret value with `***` in text leaving the sandbox (log
/// lines, output). A module may still leak a transformed secret into its own output;
/// that output only goes back to the step's own company.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    values: Vec<String>,
}

impl Redactor {
    /// Redact these values: the step policy's `redaction_values`, which decide what is
    /// too short to redact.
    pub fn new(values: impl IntoIterator<Item = String>) -> Redactor {
        // An empty value would match between every two characters.
        let mut values: Vec<String> = values.into_iter().filter(|v| !v.is_empty()).collect();
        // Longest first, so a secret containing another is replaced whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        Redactor { values }
    }

    /// The text with secrets replaced.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), "***");
            }
        }
        out
    }

    /// The values redacted.
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Whether there is anything to redact.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

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
    pub(crate) http_requests: u32,
    /// Credential uses, for the audit log.
    pub(crate) uses: Vec<CredentialUse>,
    /// The step's company (for forced OAuth refreshes).
    pub(crate) company_id: String,
    /// Forces OAuth refreshes, when the host has OAuth.
    pub(crate) refresher: Option<Arc<crate::oauth::OAuthService>>,
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
    /// `read` (credentials.get) or `attached` (host attached it to a request).
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
        StepState {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_bytes: limits.memory_bytes,
            },
            log,
            deadline: Instant::now() + limits.deadline,
            limits,
            policy: StepPolicy::new(manifest_hosts, grants),
            outbound,
            workspace,
            http_requests: 0,
            uses: Vec::new(),
            company_id: String::new(),
            refresher: None,
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
