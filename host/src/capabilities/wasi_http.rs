//! Standard `wasi:http/outgoing-handler` for modules whose language's HTTP client speaks
//! it (JavaScript `fetch` under componentize-js, Python under componentize-py, Rust's
//! `wasip2` crate). The resources (`fields`, `outgoing-request`, bodies) are
//! wasmtime-wasi-http's; `handle` is the host's own, so a request never reaches a
//! socket wasmtime-wasi-http opens (it is built without `default-send-request`). Every
//! request goes through what `flow8:integration/http` applies: the step's request
//! budget, the step policy (manifest hosts, credential pins, taint, the headers a module
//! may set), then the operator's policy, address checks, response cap and the step's
//! deadline in the outbound client.
//!
//! A module asks the host to attach a credential by naming the binding in the reserved
//! request header [`CREDENTIAL_HEADER`]; the host removes it and attaches the credential
//! itself (the module may then not set the header the credential goes in, e.g.
//! `Authorization`). A refusal reaches the module as `error-code.http-request-denied`
//! (or the code of the limit it hit), and the reason goes to the step's log.
//!
//! The crate's `send_request` hook cannot be used for this: it sees only the hooks
//! object, not the step's policy, and returns a `'static` future. `handle` decides
//! everything that needs the policy synchronously, while it holds the step state; the
//! future it spawns reads the body, attaches the credential, sends, and searches the
//! answer for the attached secret. A find is left in the step's inbox
//! ([`WasiHttpFindings`]) and taken into the policy before the next request of any
//! capability and at the end of the step; the module cannot see the answer before the
//! future has finished, so no later request escapes the taint.

use crate::outbound::{OutboundBody, OutboundError, OutboundRequest, origin, sigv4};
use crate::runtime::bindings::GuestError;
use crate::runtime::grants::Attach;
use crate::runtime::policy::{PolicyDenial, ReflectionScan, StepPolicy};
use crate::runtime::sandbox::{CredentialUse, LogLevel, StepLog, StepState};
use bytes::Bytes;
use http_body_util::BodyExt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use wasmtime::component::Resource;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Method, Scheme};
use wasmtime_wasi_http::p2::body::HyperIncomingBody;
use wasmtime_wasi_http::p2::types::{HostFutureIncomingResponse, HostOutgoingRequest};
use wasmtime_wasi_http::{
    ForbiddenHeaderFilter, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

/// The request header a module names a credential binding in, for the host to attach.
/// The host removes it before the request leaves.
pub const CREDENTIAL_HEADER: &str = "flow8-credential";

/// The wasi:http state of one step's store.
pub struct WasiHttpState {
    ctx: WasiHttpCtx,
    hooks: Hooks,
    /// Secrets found in answers, waiting to be taken into the step policy.
    pub(crate) findings: WasiHttpFindings,
}

impl Default for WasiHttpState {
    fn default() -> Self {
        WasiHttpState {
            ctx: WasiHttpCtx::new(),
            hooks: Hooks,
            findings: WasiHttpFindings::default(),
        }
    }
}

/// The answer to a request the host attached a credential to carried its secret back.
#[derive(Debug, Clone)]
pub(crate) struct Reflected {
    binding: String,
    resource_id: String,
    kind: crate::manifest::CredentialKind,
    dest: String,
}

/// Finds of the step's wasi:http futures (which cannot borrow the step state).
#[derive(Debug, Clone, Default)]
pub(crate) struct WasiHttpFindings(Arc<Mutex<Vec<Reflected>>>);

impl WasiHttpFindings {
    fn push(&self, r: Reflected) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(r);
    }

    fn take(&self) -> Vec<Reflected> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// wasmtime-wasi-http's hooks: its default forbidden headers (hop-by-hop, `Host`);
/// `Authorization` stays allowed because the step policy decides it per request (it is
/// refused only on a request the host attaches a credential to).
struct Hooks;

impl WasiHttpHooks for Hooks {
    fn forbidden_header_filter(&mut self) -> ForbiddenHeaderFilter {
        Arc::new(|name| wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name))
    }

    /// Never called: `outgoing-handler.handle` is the host's own (below). Refuses, so a
    /// future wasmtime-wasi-http path that did call it could not open a socket.
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
                )>,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

impl WasiHttpView for StepState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.wasi_http.ctx,
            table: &mut self.table,
            hooks: &mut self.wasi_http.hooks,
        }
    }
}

/// The `wasi:http` version the host's interfaces are defined at; the linker matches
/// any 0.2.x a module imports to it.
const WASI_HTTP_VERSION: &str = "0.2.12";

/// Add `wasi:http/types` (wasmtime-wasi-http's) and `wasi:http/outgoing-handler` (the
/// host's) to the linker. `outgoing-handler` is defined by hand rather than through
/// the crate's generated trait, whose bound (`types::Host` on the same type) only the
/// crate's own view meets; the resource types are the crate's, so a module's imports
/// type-check against both as one package.
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<StepState>) -> wasmtime::Result<()> {
    use wasmtime_wasi_http::p2::bindings::{LinkOptions, http::types};
    types::add_to_linker::<_, wasmtime_wasi_http::WasiHttp>(
        linker,
        &LinkOptions::default().into(),
        <StepState as WasiHttpView>::http,
    )?;
    let mut handler =
        linker.instance(&format!("wasi:http/outgoing-handler@{WASI_HTTP_VERSION}"))?;
    handler.func_wrap(
        "handle",
        |mut store: wasmtime::StoreContextMut<'_, StepState>,
         (request, options): (
            Resource<HostOutgoingRequest>,
            Option<Resource<RequestOptions>>,
        )| { Ok((store.data_mut().handle_wasi_http(request, options)?,)) },
    )?;
    Ok(())
}

impl StepState {
    /// `wasi:http/outgoing-handler.handle`: the checks that need the step's policy now,
    /// the rest in the future the module polls. A bad resource handle traps.
    fn handle_wasi_http(
        &mut self,
        request: Resource<HostOutgoingRequest>,
        options: Option<Resource<RequestOptions>>,
    ) -> wasmtime::Result<Result<Resource<HostFutureIncomingResponse>, ErrorCode>> {
        let options = options.and_then(|o| self.table.get(&o).ok()).copied();
        let request = self.table.delete(request)?;
        let log = self.log.clone();
        let future = match self.authorize_wasi_http(request, options) {
            Ok(send) => send,
            Err((dest, e)) => {
                refused(&log, &dest, &e);
                return Ok(Err(error_code(&e)));
            }
        };
        let findings = self.wasi_http.findings.clone();
        let outbound = self.outbound.clone();
        let max_request = outbound.policy().max_request_bytes;
        let task = wasmtime_wasi::runtime::spawn(async move {
            let dest = future.dest.clone();
            match future.send(outbound, max_request, &findings).await {
                Ok(response) => {
                    let worker = wasmtime_wasi::runtime::spawn(async {});
                    Ok((response, worker))
                }
                Err(e) => {
                    refused(&log, &dest, &e);
                    Err(error_code(&e).into())
                }
            }
        });
        Ok(Ok(self
            .table
            .push(HostFutureIncomingResponse::Pending(task))?))
    }
}

/// A request the step policy allowed, to be completed and sent by its future.
struct Authorized {
    method: http::Method,
    url: url::Url,
    dest: String,
    headers: http::HeaderMap,
    body: Option<WasiBody>,
    attach: Option<AttachPlan>,
    timeout: Duration,
}

/// The credential to attach and what to search its answer for.
struct AttachPlan {
    attach: Attach,
    scan: Option<ReflectionScan>,
    reflected: Reflected,
}

/// Why a request did not get an answer, for the log line and the error code.
enum Refusal {
    Guest(GuestError),
    Outbound(OutboundError),
    RequestBodyTooLarge(usize),
    RequestBody(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Guest(e) => write!(f, "{}", guest_message(e)),
            Refusal::Outbound(e) => write!(f, "{e}"),
            Refusal::RequestBodyTooLarge(max) => write!(
                f,
                "the request body is larger than {max} bytes; stream a workspace file with flow8:integration/http instead"
            ),
            Refusal::RequestBody(m) => write!(f, "cannot read the request body: {m}"),
        }
    }
}

fn guest_message(e: &GuestError) -> String {
    match e {
        GuestError::InvalidInput(m)
        | GuestError::AccessDenied(m)
        | GuestError::InsufficientScope(m)
        | GuestError::TokenRevoked(m)
        | GuestError::Network(m)
        | GuestError::Forbidden(m)
        | GuestError::LimitExceeded(m)
        | GuestError::Internal(m) => m.clone(),
        GuestError::RateLimitExceeded(r) => r.message.clone(),
        GuestError::Upstream(u) => u.message.clone(),
    }
}

impl From<PolicyDenial> for Refusal {
    fn from(d: PolicyDenial) -> Refusal {
        Refusal::Guest(d.into())
    }
}

/// The reason goes to the step's log: the error code alone cannot carry it.
fn refused(log: &StepLog, dest: &str, e: &Refusal) {
    log.push(
        LogLevel::Warn,
        format!("wasi:http request to {dest} refused: {e}"),
    );
}

/// The `wasi:http` error code a refusal reaches the module as.
fn error_code(e: &Refusal) -> ErrorCode {
    match e {
        Refusal::Guest(GuestError::LimitExceeded(m)) if m.contains("deadline") => {
            ErrorCode::ConnectionTimeout
        }
        Refusal::Guest(GuestError::Network(_)) => ErrorCode::ConnectionRefused,
        Refusal::Guest(GuestError::Internal(m)) => ErrorCode::InternalError(Some(m.clone())),
        Refusal::Guest(_) => ErrorCode::HttpRequestDenied,
        Refusal::Outbound(OutboundError::Forbidden(_)) => ErrorCode::HttpRequestDenied,
        Refusal::Outbound(OutboundError::InvalidRequest(_)) => ErrorCode::HttpRequestUriInvalid,
        Refusal::Outbound(OutboundError::Timeout(_)) => ErrorCode::ConnectionTimeout,
        Refusal::Outbound(OutboundError::Network(_)) => ErrorCode::ConnectionRefused,
        Refusal::Outbound(OutboundError::ResponseTooLarge(max)) => {
            ErrorCode::HttpResponseBodySize(Some(*max as u64))
        }
        Refusal::RequestBodyTooLarge(max) => ErrorCode::HttpRequestBodySize(Some(*max as u64)),
        Refusal::RequestBody(m) => ErrorCode::InternalError(Some(m.clone())),
    }
}

fn method(m: &Method) -> Result<http::Method, Refusal> {
    let text = match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => other.as_str(),
    };
    StepPolicy::check_method(text)?;
    http::Method::from_bytes(text.to_ascii_uppercase().as_bytes()).map_err(|_| {
        Refusal::Guest(GuestError::InvalidInput(format!(
            "`{text}` is not an HTTP method"
        )))
    })
}

impl StepState {
    /// Every check that needs the step's policy, in the order `flow8:integration/http`
    /// makes them; on success the request as its future completes and sends it.
    fn authorize_wasi_http(
        &mut self,
        request: HostOutgoingRequest,
        options: Option<RequestOptions>,
    ) -> Result<Authorized, (String, Refusal)> {
        let scheme = match &request.scheme {
            None | Some(Scheme::Https) => "https",
            Some(Scheme::Http) => "http",
            Some(Scheme::Other(s)) => s.as_str(),
        };
        let authority = request.authority.clone().unwrap_or_default();
        let text = format!(
            "{scheme}://{authority}{}",
            request.path_with_query.as_deref().unwrap_or("/")
        );
        let shown = format!("{scheme}://{authority}");
        let fail = |e: Refusal| (shown.clone(), e);
        self.count_request().map_err(|e| fail(Refusal::Guest(e)))?;
        let url = url::Url::parse(&text).map_err(|e| {
            fail(Refusal::Guest(GuestError::InvalidInput(format!(
                "URL is not valid: {e}"
            ))))
        })?;
        let dest = origin(&url);
        let fail = |e: Refusal| (dest.clone(), e);
        // Taint found in earlier answers, the workspace's and the input's, first.
        self.sync_workspace_taint()
            .map_err(|e| fail(Refusal::Guest(e)))?;
        let method = method(&request.method).map_err(fail)?;

        let guest_headers: http::HeaderMap = request.headers.into();
        let mut binding = None;
        for value in guest_headers.get_all(CREDENTIAL_HEADER) {
            let name = value.to_str().map_err(|_| {
                fail(Refusal::Guest(GuestError::InvalidInput(format!(
                    "the `{CREDENTIAL_HEADER}` header must name a binding"
                ))))
            })?;
            if binding.replace(name.trim().to_string()).is_some() {
                return Err(fail(Refusal::Guest(GuestError::InvalidInput(format!(
                    "the `{CREDENTIAL_HEADER}` header may name one binding"
                )))));
            }
        }
        let authorized = self
            .policy
            .authorize(&url, binding.as_deref())
            .map_err(|d| fail(d.into()))?;
        let mut headers = http::HeaderMap::new();
        for (name, value) in &guest_headers {
            // The body's length is the one wasmtime-wasi-http already held the module
            // to; the client sets the header for the body it sends.
            if name == CREDENTIAL_HEADER || name == http::header::CONTENT_LENGTH {
                continue;
            }
            authorized
                .check_guest_header(name.as_str())
                .map_err(|d| fail(d.into()))?;
            headers.append(name.clone(), value.clone());
        }
        let attach = authorized.attached().map(|g| AttachPlan {
            attach: g.attach.clone(),
            scan: None,
            reflected: Reflected {
                binding: g.binding.clone(),
                resource_id: g.resource_id.clone(),
                kind: g.kind,
                dest: dest.clone(),
            },
        });
        let attach = attach.map(|mut a| {
            a.scan = self.policy.reflection_scan(&a.reflected.binding);
            if matches!(a.attach, Attach::NotHttp) {
                return Err(PolicyDenial::NotAttachable {
                    binding: a.reflected.binding.clone(),
                });
            }
            self.record_use(CredentialUse {
                binding: a.reflected.binding.clone(),
                resource_id: a.reflected.resource_id.clone(),
                kind: a.reflected.kind,
                how: "attached",
                destination: Some(dest.clone()),
            });
            Ok(a)
        });
        let attach = attach.transpose().map_err(|d| fail(d.into()))?;
        // The module's own timeouts, never past the step's deadline.
        let asked = options.and_then(|o| match (o.connect_timeout, o.first_byte_timeout) {
            (Some(a), Some(b)) => Some(a.saturating_add(b)),
            (a, b) => a.or(b),
        });
        let timeout = self
            .request_timeout(None)
            .map_err(|e| fail(Refusal::Guest(e)))?;
        Ok(Authorized {
            method,
            url,
            dest,
            headers,
            body: request.body,
            attach,
            timeout: asked.map_or(timeout, |a| a.min(timeout)),
        })
    }

    /// Take what the step's wasi:http futures found into the policy: a secret that came
    /// back in an answer is held by the step, as if the module had read it.
    pub(crate) fn absorb_wasi_http_findings(&mut self) -> Result<(), GuestError> {
        for r in self.wasi_http.findings.take() {
            self.policy.note_reflected(&r.binding);
            self.reflected(r.binding, r.resource_id, r.kind, &r.dest)?;
        }
        Ok(())
    }
}

impl Authorized {
    /// Read the body (within the operator's request cap), attach the credential, send
    /// through the host's client, and search the answer for the attached secret.
    async fn send(
        self,
        outbound: crate::outbound::OutboundClient,
        max_request: usize,
        findings: &WasiHttpFindings,
    ) -> Result<http::Response<HyperIncomingBody>, Refusal> {
        let Authorized {
            method,
            url,
            dest: _,
            mut headers,
            body,
            attach,
            timeout,
        } = self;
        let body = match body {
            None => Vec::new(),
            Some(b) => {
                let limited = http_body_util::Limited::new(b, max_request);
                let collected = tokio::time::timeout(timeout, limited.collect())
                    .await
                    .map_err(|_| Refusal::Outbound(OutboundError::Timeout(timeout)))?;
                match collected {
                    Ok(c) => c.to_bytes().to_vec(),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        return Err(Refusal::RequestBodyTooLarge(max_request));
                    }
                    Err(e) => return Err(Refusal::RequestBody(e.to_string())),
                }
            }
        };
        let mut scan = None;
        let mut reflected = None;
        if let Some(plan) = attach {
            let hash = match plan.attach {
                Attach::AwsSigV4 { .. } => Some(sigv4::payload_hash(&body)),
                _ => None,
            };
            super::http::attach_credential(&plan.attach, &method, &url, &mut headers, hash)
                .map_err(Refusal::Guest)?;
            scan = plan.scan;
            reflected = Some(plan.reflected);
        }
        let response = outbound
            .send(OutboundRequest {
                method,
                url,
                headers,
                body: if body.is_empty() {
                    OutboundBody::Empty
                } else {
                    OutboundBody::Bytes(body)
                },
                timeout,
            })
            .await
            .map_err(Refusal::Outbound)?;
        if let (Some(scan), Some(r)) = (scan.as_mut(), reflected) {
            let header_text = super::http::header_text(&response.headers);
            // One search over headers then body: a match across the two is only stricter.
            if scan.finds_in(header_text.as_bytes()) || scan.finds_in(&response.body) {
                findings.push(r);
            }
        }
        let mut builder = http::Response::builder().status(response.status);
        for (name, value) in &response.headers {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                builder = builder.header(n, v);
            }
        }
        let body = http_body_util::Full::new(Bytes::from(response.body))
            .map_err(|never| match never {})
            .boxed_unsync();
        builder
            .body(body)
            .map_err(|e| Refusal::Guest(GuestError::Internal(e.to_string())))
    }
}
