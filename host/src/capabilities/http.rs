//! `flow8:integration/http`: outbound HTTP on a module's behalf. Before a request leaves
//! the host it must pass, in order: the step's request budget, the step policy
//! (`runtime::policy`: the manifest's allowed hosts, the pinned hosts of the credential
//! it asks the host to attach, the pinned hosts of every credential the module has
//! read, the taint the step's input and workspace carry, the method and the headers a
//! module may set), and finally the operator's policy (allowed hosts, private and
//! loopback addresses) in `outbound`. The answer to a request the host attached a
//! credential to is searched for that credential's secret (an echo endpoint, a debug
//! route): if it came back, the step holds it as if the module had read it.

use super::workspace_write::PartialFile;
use crate::outbound::{OutboundBody, OutboundError, OutboundRequest, origin, sigv4};
use crate::runtime::bindings::GuestError;
use crate::runtime::bindings::flow8::integration::http::{
    Body, Host, Request, Response, SaveTo, SavedResponse, WorkspaceRange,
};
use crate::runtime::grants::Attach;
use crate::runtime::policy::{PolicyDenial, StepPolicy};
use crate::runtime::sandbox::{CredentialUse, StepState};
use std::time::Duration;

impl Host for StepState {
    async fn send(&mut self, request: Request) -> wasmtime::Result<Result<Response, GuestError>> {
        Ok(self.send_checked(request).await)
    }

    async fn send_to_workspace(
        &mut self,
        request: Request,
        save: SaveTo,
    ) -> wasmtime::Result<Result<SavedResponse, GuestError>> {
        Ok(self.send_saving(request, save).await)
    }

    async fn send_workspace_range(
        &mut self,
        request: Request,
        range: WorkspaceRange,
    ) -> wasmtime::Result<Result<Response, GuestError>> {
        Ok(self.send_range(request, range).await)
    }
}

/// A request that passed every check of the step, credential attached.
struct Prepared {
    outbound: OutboundRequest,
    /// `scheme://host:port`, for messages.
    dest: String,
    /// The binding the host attached, its resource and kind.
    attached: Option<(String, String, crate::manifest::CredentialKind)>,
}

impl StepState {
    async fn send_checked(&mut self, request: Request) -> Result<Response, GuestError> {
        let prepared = self.prepare(request, None).await?;
        self.send_prepared(prepared).await
    }

    /// `send-workspace-range`: `send` with `range` of a workspace file as the body.
    async fn send_range(
        &mut self,
        request: Request,
        range: WorkspaceRange,
    ) -> Result<Response, GuestError> {
        if !matches!(request.body, Body::Empty) {
            return Err(GuestError::InvalidInput(
                "a request sent with a workspace range has the range as its body; its own `body` must be empty".into(),
            ));
        }
        let prepared = self.prepare(request, Some(range)).await?;
        self.send_prepared(prepared).await
    }

    async fn send_prepared(&mut self, prepared: Prepared) -> Result<Response, GuestError> {
        let Prepared {
            outbound,
            dest,
            attached,
        } = prepared;
        let response = self.send_outbound(outbound).await?;
        if let Some((binding, resource_id, kind)) = attached {
            let header_text = header_text(&response.headers);
            if self
                .policy
                .note_response(&binding, &[header_text.as_bytes(), &response.body])
            {
                self.reflected(binding, resource_id, kind, &dest)?;
            }
        }
        Ok(Response {
            status: response.status,
            headers: response.headers,
            body: response.body,
        })
    }

    /// The step now holds the secret of `binding` because an answer carried it back.
    pub(crate) fn reflected(
        &mut self,
        binding: String,
        resource_id: String,
        kind: crate::manifest::CredentialKind,
        dest: &str,
    ) -> Result<(), GuestError> {
        self.record_use(CredentialUse {
            binding,
            resource_id,
            kind,
            how: "reflected",
            destination: Some(dest.to_string()),
        });
        self.record_workspace_taint()
    }

    /// `send-to-workspace`: the checks of `send`, then a 2xx body streamed to a
    /// workspace file chunk by chunk (never whole in memory, never in the module's),
    /// each chunk spending the step's workspace byte budget and searched for the
    /// attached secret before it is written (a find taints the step and its workspace
    /// first, as for an answer the module reads). Any other answer comes back in memory.
    async fn send_saving(
        &mut self,
        request: Request,
        save: SaveTo,
    ) -> Result<SavedResponse, GuestError> {
        let Prepared {
            outbound,
            dest,
            attached,
        } = self.prepare(request, None).await?;
        // The destination is opened after the checks and before anything is sent: a
        // path the workspace refuses costs no request.
        let target = self.workspace_target(&save.path)?;
        let client = self.outbound.clone();
        let mut streaming = client
            .send_streaming(outbound)
            .await
            .map_err(|e| outbound_error(&dest, e))?;
        let headers = std::mem::take(&mut streaming.headers);
        let status = streaming.status;
        let mut scan = attached
            .as_ref()
            .and_then(|(b, _, _)| self.policy.reflection_scan(b));
        let header_text = header_text(&headers);
        let mut reflected = scan
            .as_mut()
            .is_some_and(|s| s.finds_in(header_text.as_bytes()));
        if reflected && let Some((b, r, k)) = attached.clone() {
            self.policy.note_reflected(&b);
            self.reflected(b, r, k, &dest)?;
        }
        if !(200..300).contains(&status) {
            let max = self.outbound.policy().max_response_bytes;
            let body = streaming
                .read_whole(max)
                .await
                .map_err(|e| outbound_error(&dest, e))?;
            if !reflected
                && scan.as_mut().is_some_and(|s| s.finds_in(&body))
                && let Some((b, r, k)) = attached
            {
                self.policy.note_reflected(&b);
                self.reflected(b, r, k, &dest)?;
            }
            return Ok(SavedResponse {
                status,
                headers,
                saved: false,
                size: 0,
                body,
            });
        }
        let (partial, mut file) = target.create(&self.workspace_quota)?;
        let limit = save.max_bytes;
        let too_long = |n: u64| {
            GuestError::LimitExceeded(format!(
                "{dest}: the response body is larger than the {limit} bytes allowed for `{}` ({n} bytes or more)",
                save.path
            ))
        };
        let written = async {
            if let Some(len) = streaming.content_length
                && len > limit
            {
                return Err(too_long(len));
            }
            let mut size: u64 = 0;
            while let Some(chunk) = streaming
                .chunk()
                .await
                .map_err(|e| outbound_error(&dest, e))?
            {
                size += chunk.len() as u64;
                if size > limit {
                    return Err(too_long(size));
                }
                if !reflected && scan.as_mut().is_some_and(|s| s.finds_in(&chunk)) {
                    reflected = true;
                    if let Some((b, r, k)) = attached.clone() {
                        // Tainted before the secret reaches the workspace.
                        self.policy.note_reflected(&b);
                        self.reflected(b, r, k, &dest)?;
                    }
                }
                self.workspace_quota
                    .spend_bytes(chunk.len() as u64)
                    .map_err(|hit| GuestError::LimitExceeded(hit.to_string()))?;
                use tokio::io::AsyncWriteExt;
                file.write_all(&chunk).await.map_err(|e| {
                    GuestError::Internal(format!("cannot write `{}`: {e}", save.path))
                })?;
            }
            use tokio::io::AsyncWriteExt;
            file.flush()
                .await
                .map_err(|e| GuestError::Internal(format!("cannot write `{}`: {e}", save.path)))?;
            Ok(size)
        }
        .await;
        // A write that failed drops `partial`: its bytes go, and the file that was at
        // the path (a previous download, say) stays as it was.
        let size = written?;
        drop(file);
        partial
            .commit()
            .map_err(|e| GuestError::Internal(format!("cannot write `{}`: {e}", save.path)))?;
        Ok(SavedResponse {
            status,
            headers,
            saved: true,
            size,
            body: Vec::new(),
        })
    }

    /// Every check of a request, then the request as the host sends it, credential
    /// attached; with `range`, that byte range of a workspace file is its body.
    async fn prepare(
        &mut self,
        request: Request,
        range: Option<WorkspaceRange>,
    ) -> Result<Prepared, GuestError> {
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

        let mut body = match (request.body, range) {
            (_, Some(range)) => self.open_workspace_range(&range)?,
            (Body::Empty, None) => OutboundBody::Empty,
            (Body::Bytes(b), None) => {
                if b.len() > self.outbound.policy().max_request_bytes {
                    return Err(GuestError::LimitExceeded(format!(
                        "request body is larger than {} bytes; stream a workspace file instead",
                        self.outbound.policy().max_request_bytes
                    )));
                }
                OutboundBody::Bytes(b)
            }
            (Body::WorkspaceFile(path), None) => {
                OutboundBody::File(self.open_workspace_file(&path)?)
            }
        };

        let attached_binding = attach.as_ref().map(|a| (a.3.clone(), a.1.clone(), a.2));
        if let Some((attach, resource_id, kind, binding)) = attach {
            let hash = match (&attach, &mut body) {
                (Attach::AwsSigV4 { .. }, OutboundBody::Empty) => Some(sigv4::payload_hash(b"")),
                (Attach::AwsSigV4 { .. }, OutboundBody::Bytes(b)) => Some(sigv4::payload_hash(b)),
                // A signature covers the whole payload; S3 uploads go through
                // `object-storage`, which signs its own parts.
                (Attach::AwsSigV4 { .. }, OutboundBody::FileRange { .. }) => {
                    return Err(GuestError::InvalidInput(
                        "a workspace range cannot be sent with an AWS-signed credential; use object-storage".into(),
                    ));
                }
                (Attach::AwsSigV4 { .. }, OutboundBody::File(f)) => Some(
                    sigv4::file_hash(f)
                        .await
                        .map_err(|e| {
                            GuestError::Internal(format!("cannot read the workspace file: {e}"))
                        })?
                        .0,
                ),
                _ => None,
            };
            if matches!(attach, Attach::NotHttp) {
                // The policy does not authorize attaching these; kept for exhaustiveness.
                return Err(PolicyDenial::NotAttachable { binding }.into());
            }
            attach_credential(&attach, &method, &url, &mut headers, hash)?;
            self.record_use(CredentialUse {
                binding,
                resource_id,
                kind,
                how: "attached",
                destination: Some(dest.clone()),
            });
        }

        let timeout = self.request_timeout(request.timeout_ms)?;
        Ok(Prepared {
            outbound: OutboundRequest {
                method,
                url,
                headers,
                body,
                timeout,
            },
            dest,
            attached: attached_binding,
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

    /// Where in the workspace `send-to-workspace` may write `path`: inside it (cap-std
    /// refuses `..` and symlinks that leave it), in a directory that exists, not a
    /// directory itself.
    pub(crate) fn workspace_target(&self, path: &str) -> Result<WorkspaceTarget, GuestError> {
        let Some(root) = &self.workspace else {
            return Err(GuestError::InvalidInput(
                "this step has no workspace to write files to".into(),
            ));
        };
        let relative = path.trim_start_matches('/').to_string();
        if relative.is_empty() || relative.ends_with('/') {
            return Err(GuestError::InvalidInput(format!(
                "`{path}` is not a file path in the workspace"
            )));
        }
        let dir = cap_std::fs::Dir::open_ambient_dir(root, cap_std::ambient_authority())
            .map_err(|e| GuestError::Internal(format!("cannot open the step workspace: {e}")))?;
        let existed = match dir.symlink_metadata(&relative) {
            Ok(m) if m.is_dir() => {
                return Err(GuestError::InvalidInput(format!("`{path}` is a directory")));
            }
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                return Err(GuestError::InvalidInput(format!(
                    "cannot write workspace file `{path}`: {e}"
                )));
            }
        };
        // The directory must be there and inside the workspace (checked, not created:
        // creating it would be a write the module did not make).
        if let Some((parent, _)) = relative.rsplit_once('/')
            && !dir.metadata(parent).map(|m| m.is_dir()).unwrap_or(false)
        {
            return Err(GuestError::InvalidInput(format!(
                "cannot write workspace file `{path}`: its directory `/{parent}` does not exist in the workspace"
            )));
        }
        Ok(WorkspaceTarget {
            dir,
            relative,
            existed,
        })
    }

    /// `range` of a workspace file, positioned at its first byte; a range that does not
    /// lie inside the file is refused before anything is sent. (Plain file calls, not
    /// awaited: the step state is not `Sync`, so no borrow of it may cross an await.)
    fn open_workspace_range(&self, range: &WorkspaceRange) -> Result<OutboundBody, GuestError> {
        use std::io::Seek;
        let mut file = self.open_workspace_std(&range.path)?;
        let size = file
            .metadata()
            .map_err(|e| GuestError::Internal(format!("cannot read `{}`: {e}", range.path)))?
            .len();
        let end = range.offset.checked_add(range.length);
        if range.length == 0 || end.is_none_or(|end| end > size) {
            return Err(GuestError::InvalidInput(format!(
                "bytes {}..+{} are not inside `{}` ({size} bytes); a range has at least one byte",
                range.offset, range.length, range.path
            )));
        }
        file.seek(std::io::SeekFrom::Start(range.offset))
            .map_err(|e| GuestError::Internal(format!("cannot read `{}`: {e}", range.path)))?;
        Ok(OutboundBody::FileRange {
            file: tokio::fs::File::from_std(file),
            length: range.length,
        })
    }

    pub(crate) fn open_workspace_file(&self, path: &str) -> Result<tokio::fs::File, GuestError> {
        self.open_workspace_std(path).map(tokio::fs::File::from_std)
    }

    /// A regular file of the workspace, opened for reading.
    fn open_workspace_std(&self, path: &str) -> Result<std::fs::File, GuestError> {
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
        Ok(std_file)
    }
}

/// Headers as one text, to search for a reflected secret.
pub(crate) fn header_text(headers: &[(String, String)]) -> String {
    headers.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
}

/// A file of the workspace a response is to be written to (`send-to-workspace`).
pub(crate) struct WorkspaceTarget {
    dir: cap_std::fs::Dir,
    relative: String,
    existed: bool,
}

impl WorkspaceTarget {
    /// Start writing the file (beside it, put in place by [`PartialFile::commit`]: a
    /// failed write leaves what was there), spending a file of the step's budget when
    /// it is new.
    fn create(
        &self,
        quota: &crate::runtime::workspace_quota::WorkspaceQuota,
    ) -> Result<(PartialFile, tokio::fs::File), GuestError> {
        if !self.existed {
            quota
                .spend_file()
                .map_err(|hit| GuestError::LimitExceeded(hit.to_string()))?;
        }
        PartialFile::begin(&self.dir, &self.relative).map_err(|e| {
            GuestError::InvalidInput(format!(
                "cannot write workspace file `{}`: {e}",
                self.relative
            ))
        })
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

/// Put the credential on a request: the header it goes in, or an AWS SigV4 signature
/// over `payload_hash` (the hash of the body, required for SigV4).
pub(crate) fn attach_credential(
    attach: &Attach,
    method: &http::Method,
    url: &url::Url,
    headers: &mut http::HeaderMap,
    payload_hash: Option<String>,
) -> Result<(), GuestError> {
    match attach {
        Attach::Bearer(token) => {
            headers.insert(
                http::header::AUTHORIZATION,
                sensitive(&format!("Bearer {}", token.expose()))?,
            );
        }
        Attach::Header { name, value } => {
            headers.insert(name.clone(), sensitive(value.expose())?);
        }
        Attach::AwsSigV4 {
            region,
            service,
            access_key_id,
            secret_access_key,
        } => {
            let hash = payload_hash.ok_or_else(|| {
                GuestError::Internal("a SigV4 signature needs the body's hash".into())
            })?;
            let key = sigv4::SigningKey {
                region,
                service,
                access_key_id: access_key_id.expose(),
                secret_access_key: secret_access_key.expose(),
            };
            sigv4::sign_request(&key, method, url, headers, &hash).map_err(GuestError::Internal)?;
        }
        Attach::NotHttp => {
            return Err(GuestError::Internal(
                "this credential cannot be attached to a request".into(),
            ));
        }
    }
    Ok(())
}

fn sensitive(value: &str) -> Result<http::HeaderValue, GuestError> {
    let mut v = http::HeaderValue::from_str(value).map_err(|_| {
        GuestError::Internal("the stored credential is not a valid header value".into())
    })?;
    v.set_sensitive(true);
    Ok(v)
}
