//! `flow8:integration/http`: outbound HTTP on a module's behalf. Before a request leaves
//! the host it must pass, in order: the step's request budget, the step policy
//! (`runtime::policy`: the manifest's allowed hosts, the pinned hosts of the credential
//! it asks the host to attach, the pinned hosts of every credential the module has
//! read, the taint the step's input and workspace carry, the method and the headers a
//! module may set), and finally the operator's policy (allowed hosts, private and
//! loopback addresses) in `outbound`. The answer to a request the host attached a
//! credential to is searched for that credential's secret (an echo endpoint, a debug
//! route): if it came back, the step holds it as if the module had read it.

use crate::outbound::{OutboundBody, OutboundError, OutboundRequest, origin, sigv4};
use crate::runtime::bindings::GuestError;
use crate::runtime::bindings::flow8::integration::http::{Body, Host, Request, Response};
use crate::runtime::grants::Attach;
use crate::runtime::policy::{PolicyDenial, StepPolicy};
use crate::runtime::sandbox::{CredentialUse, StepState};
use std::time::Duration;

impl Host for StepState {
    async fn send(&mut self, request: Request) -> wasmtime::Result<Result<Response, GuestError>> {
        Ok(self.send_checked(request).await)
    }
}

impl StepState {
    async fn send_checked(&mut self, request: Request) -> Result<Response, GuestError> {
        self.count_request()?;
        let url = url::Url::parse(&request.url)
            .map_err(|e| GuestError::InvalidInput(format!("URL is not valid: {e}")))?;
        let dest = origin(&url);
        self.sync_workspace_taint()?;
        let authorized = self.policy.authorize(&url, request.credential.as_deref())?;
        StepPolicy::check_method(&request.method)?;

        let method = http::Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| {
                GuestError::InvalidInput(format!("`{}` is not an HTTP method", request.method))
            })?;
        let mut headers = http::HeaderMap::new();
        for (name, value) in &request.headers {
            authorized.check_guest_header(name)?;
            let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                GuestError::InvalidInput(format!("`{name}` is not a valid header name"))
            })?;
            let value = http::HeaderValue::from_str(value).map_err(|_| {
                GuestError::InvalidInput(format!("the value of header `{name}` is not valid"))
            })?;
            headers.append(name, value);
        }
        let attach = authorized.attached().map(|g| {
            (
                g.attach.clone(),
                g.resource_id.clone(),
                g.kind,
                g.binding.clone(),
            )
        });

        let mut body = match request.body {
            Body::Empty => OutboundBody::Empty,
            Body::Bytes(b) => {
                if b.len() > self.outbound.policy().max_request_bytes {
                    return Err(GuestError::LimitExceeded(format!(
                        "request body is larger than {} bytes; stream a workspace file instead",
                        self.outbound.policy().max_request_bytes
                    )));
                }
                OutboundBody::Bytes(b)
            }
            Body::WorkspaceFile(path) => OutboundBody::File(self.open_workspace_file(&path)?),
        };

        let attached_binding = attach.as_ref().map(|a| (a.3.clone(), a.1.clone(), a.2));
        if let Some((attach, resource_id, kind, binding)) = attach {
            match attach {
                Attach::Bearer(token) => {
                    headers.insert(
                        http::header::AUTHORIZATION,
                        sensitive(&format!("Bearer {}", token.expose()))?,
                    );
                }
                Attach::Header { name, value } => {
                    headers.insert(name, sensitive(value.expose())?);
                }
                Attach::AwsSigV4 {
                    region,
                    service,
                    access_key_id,
                    secret_access_key,
                } => {
                    let hash = match &mut body {
                        OutboundBody::Empty => sigv4::payload_hash(b""),
                        OutboundBody::Bytes(b) => sigv4::payload_hash(b),
                        OutboundBody::File(f) => {
                            sigv4::file_hash(f)
                                .await
                                .map_err(|e| {
                                    GuestError::Internal(format!(
                                        "cannot read the workspace file: {e}"
                                    ))
                                })?
                                .0
                        }
                    };
                    let key = sigv4::SigningKey {
                        region: &region,
                        service: &service,
                        access_key_id: access_key_id.expose(),
                        secret_access_key: secret_access_key.expose(),
                    };
                    sigv4::sign_request(&key, &method, &url, &mut headers, &hash)
                        .map_err(GuestError::Internal)?;
                }
                // The policy does not authorize attaching these; kept for exhaustiveness.
                Attach::NotHttp => return Err(PolicyDenial::NotAttachable { binding }.into()),
            }
            self.record_use(CredentialUse {
                binding,
                resource_id,
                kind,
                how: "attached",
                destination: Some(dest.clone()),
            });
        }

        let timeout = self.request_timeout(request.timeout_ms)?;
        let response = self
            .send_outbound(OutboundRequest {
                method,
                url,
                headers,
                body,
                timeout,
            })
            .await?;
        if let Some((binding, resource_id, kind)) = attached_binding {
            let header_text: String = response
                .headers
                .iter()
                .map(|(k, v)| format!("{k}: {v}\n"))
                .collect();
            if self
                .policy
                .note_response(&binding, &[header_text.as_bytes(), &response.body])
            {
                self.record_use(CredentialUse {
                    binding,
                    resource_id,
                    kind,
                    how: "reflected",
                    destination: Some(dest.clone()),
                });
                self.record_workspace_taint()?;
            }
        }
        Ok(Response {
            status: response.status,
            headers: response.headers,
            body: response.body,
        })
    }

    /// Send a request that passed the step's checks (the operator's policy is applied
    /// by the client).
    pub(crate) fn send_outbound(
        &self,
        request: OutboundRequest,
    ) -> impl Future<Output = Result<crate::outbound::OutboundResponse, GuestError>> + Send + 'static
    {
        // The client is cloned so the future does not borrow the (non-Sync) step state.
        let outbound = self.outbound.clone();
        async move {
            let dest = origin(&request.url);
            outbound
                .send(request)
                .await
                .map_err(|e| outbound_error(&dest, e))
        }
    }

    /// Count a request against the step's budget.
    pub(crate) fn count_request(&mut self) -> Result<(), GuestError> {
        self.http_requests += 1;
        if self.http_requests > self.limits.max_http_requests {
            return Err(GuestError::LimitExceeded(format!(
                "a step may make at most {} HTTP requests",
                self.limits.max_http_requests
            )));
        }
        Ok(())
    }

    /// Time for one request: the module's timeout, never past the deadline.
    pub(crate) fn request_timeout(
        &self,
        requested_ms: Option<u32>,
    ) -> Result<Duration, GuestError> {
        let remaining = self.remaining();
        if remaining.is_zero() {
            return Err(GuestError::LimitExceeded(
                "the step's deadline has passed".into(),
            ));
        }
        Ok(match requested_ms {
            Some(ms) => remaining.min(Duration::from_millis(ms.into())),
            None => remaining,
        })
    }

    pub(crate) fn open_workspace_file(&self, path: &str) -> Result<tokio::fs::File, GuestError> {
        let Some(root) = &self.workspace else {
            return Err(GuestError::InvalidInput(
                "this step has no workspace to read files from".into(),
            ));
        };
        // The module sees the workspace as `/`; resolve inside it with cap-std, which
        // refuses `..` and symlink escapes.
        let relative = path.trim_start_matches('/');
        let dir = cap_std::fs::Dir::open_ambient_dir(root, cap_std::ambient_authority())
            .map_err(|e| GuestError::Internal(format!("cannot open the step workspace: {e}")))?;
        let file = dir.open(relative).map_err(|e| {
            GuestError::InvalidInput(format!("cannot open workspace file `{path}`: {e}"))
        })?;
        let std_file = file.into_std();
        if std_file.metadata().map(|m| !m.is_file()).unwrap_or(true) {
            return Err(GuestError::InvalidInput(format!("`{path}` is not a file")));
        }
        Ok(tokio::fs::File::from_std(std_file))
    }
}

/// An outbound failure as the module sees it.
pub(crate) fn outbound_error(dest: &str, e: OutboundError) -> GuestError {
    match e {
        OutboundError::Forbidden(m) => GuestError::Forbidden(m),
        OutboundError::InvalidRequest(m) => GuestError::InvalidInput(m),
        OutboundError::Timeout(_) => GuestError::Network(format!("{dest}: {e}")),
        OutboundError::Network(m) => GuestError::Network(format!("{dest}: {m}")),
        OutboundError::ResponseTooLarge(_) => GuestError::LimitExceeded(format!("{dest}: {e}")),
    }
}

fn sensitive(value: &str) -> Result<http::HeaderValue, GuestError> {
    let mut v = http::HeaderValue::from_str(value).map_err(|_| {
        GuestError::Internal("the stored credential is not a valid header value".into())
    })?;
    v.set_sensitive(true);
    Ok(v)
}
