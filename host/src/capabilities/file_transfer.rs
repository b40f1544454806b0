//! `flow8:integration/file-transfer`: FTP uploads and downloads done by the host
//! through a bound FTP component (`suppaftp`, tokio, rustls).
//!
//! The module names the binding, a workspace file and a remote path; the host asks the
//! step policy whether the binding may be used (an FTP component of this step, no other
//! secret held), connects to the component's own host and port through the operator's
//! address policy (`outbound::connect`), upgrades to explicit FTPS (AUTH TLS, RFC 4217,
//! with PROT P for the data connections) unless the component says `tls: false` and
//! the operator allows plain-text logins, logs in, switches to binary, and streams the
//! file between the workspace and the server in passive mode. Every data connection
//! goes to the control connection's own address: the address a server puts in its PASV
//! answer is never connected to (a hostile server could name an internal host there).
//!
//! Remote paths are relative to the component's `base_dir` and may not leave it (no
//! `.`/`..` segments, no line breaks that would start a new FTP command). Downloads are
//! written inside the workspace with cap-std and count against the step's workspace
//! budgets like the module's own writes; neither the password nor the bytes pass
//! through the module.

use super::workspace_write::PartialFile;
use crate::outbound::connect::{self, authority};
use crate::runtime::bindings::flow8::integration::file_transfer::{
    DownloadRequest, Host, Transferred, UploadRequest,
};
use crate::runtime::bindings::{GuestError, UpstreamError};
use crate::runtime::sandbox::{CredentialUse, StepState};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream};
use suppaftp::types::FileType;
use suppaftp::{FtpError, Mode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

impl Host for StepState {
    async fn upload(
        &mut self,
        request: UploadRequest,
    ) -> wasmtime::Result<Result<Transferred, GuestError>> {
        Ok(self.ftp_upload(request).await)
    }

    async fn download(
        &mut self,
        request: DownloadRequest,
    ) -> wasmtime::Result<Result<Transferred, GuestError>> {
        Ok(self.ftp_download(request).await)
    }
}

/// `base_dir` joined with a module's relative path, checked: the segments of the
/// remote path, and the whole path as the server gets it.
pub fn remote_path(base_dir: &str, path: &str) -> Result<(Vec<String>, String), GuestError> {
    if path.chars().any(|c| c.is_control()) || path.contains('\\') {
        return Err(GuestError::InvalidInput(format!(
            "remote path `{}` must not contain control characters or backslashes",
            path.escape_debug()
        )));
    }
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if segments.iter().any(|s| s == "." || s == "..") {
        return Err(GuestError::InvalidInput(format!(
            "remote path `{path}` leaves the component's base directory (`.` and `..` are refused)"
        )));
    }
    if segments.is_empty() {
        return Err(GuestError::InvalidInput(
            "the remote path names no file".into(),
        ));
    }
    let base = base_dir.trim_end_matches('/');
    Ok((segments.clone(), format!("{base}/{}", segments.join("/"))))
}

/// What a server's refusal means for the module (RFC 959 §4.2; 550 covers both a
/// missing file and a refused one, told apart by the server's text).
fn ftp_error(what: &str, e: FtpError) -> GuestError {
    match e {
        FtpError::UnexpectedResponse(r) => {
            let code = r.status.code();
            let text = String::from_utf8_lossy(&r.body).trim().to_string();
            let detail = format!("{what}: the FTP server answered {text}");
            let lower = text.to_ascii_lowercase();
            let disk_full = matches!(code, 452 | 552) || lower.contains("no space left");
            match code {
                _ if disk_full => GuestError::Upstream(UpstreamError {
                    status: code as u16,
                    message: format!("{detail} (the server's disk is full)"),
                }),
                530 | 332 => {
                    GuestError::AccessDenied(format!("the FTP server refused the login: {text}"))
                }
                550 | 553
                    if lower.contains("permission")
                        || lower.contains("denied")
                        || lower.contains("privileges")
                        || lower.contains("not allowed") =>
                {
                    GuestError::AccessDenied(format!("{detail} (permission denied)"))
                }
                550 | 553 => {
                    GuestError::InvalidInput(format!("{detail} (no such file or directory)"))
                }
                421 => GuestError::Network(detail),
                _ => GuestError::Upstream(UpstreamError {
                    status: code as u16,
                    message: detail,
                }),
            }
        }
        FtpError::SecureError(m) => GuestError::Network(format!("{what}: TLS: {m}")),
        e => GuestError::Network(format!("{what}: {e}")),
    }
}

/// Where and how to connect; owned, so the transfer does not borrow the step.
struct Session {
    host: String,
    port: u16,
    tls: bool,
    username: String,
    password: String,
    base_dir: String,
    policy: crate::outbound::OutboundPolicy,
}

impl Session {
    /// Connected, secured, logged in, binary, passive to the control address.
    async fn open(&self, time: Duration) -> Result<AsyncRustlsFtpStream, GuestError> {
        let dest = format!("ftp://{}", authority(&self.host, self.port));
        let tcp = connect::connect_tcp(&self.policy, &self.host, self.port, time)
            .await
            .map_err(|e| match e {
                crate::outbound::OutboundError::Forbidden(m) => GuestError::Forbidden(m),
                e => GuestError::Network(format!("{dest}: {e}")),
            })?;
        let peer: IpAddr = tcp
            .peer_addr()
            .map_err(|e| GuestError::Network(format!("{dest}: {e}")))?
            .ip();
        let mut ftp = AsyncRustlsFtpStream::connect_with_stream(tcp)
            .await
            .map_err(|e| ftp_error("connecting", e))?
            .passive_stream_builder(move |offered: SocketAddr| {
                // The server's own address, whatever its PASV answer says.
                let target = SocketAddr::new(peer, offered.port());
                Box::pin(async move {
                    tokio::net::TcpStream::connect(target)
                        .await
                        .map_err(FtpError::ConnectionError)
                })
            });
        ftp.set_mode(Mode::Passive);
        if self.tls {
            let config = connect::tls_config(&self.policy)
                .map_err(|e| GuestError::Network(format!("{dest}: {e}")))?;
            let connector = AsyncRustlsConnector::from(tokio_rustls::TlsConnector::from(config));
            ftp = ftp
                .into_secure(
                    connector,
                    self.host.trim_start_matches('[').trim_end_matches(']'),
                )
                .await
                .map_err(|e| ftp_error("starting TLS (AUTH TLS)", e))?;
        }
        ftp.login(self.username.as_str(), self.password.as_str())
            .await
            .map_err(|e| ftp_error("logging in", e))?;
        ftp.transfer_type(FileType::Binary)
            .await
            .map_err(|e| ftp_error("switching to binary", e))?;
        Ok(ftp)
    }
}

/// Run `work` within `time` (what the step has left).
async fn within_deadline<T>(
    time: Duration,
    work: impl Future<Output = Result<T, GuestError>>,
) -> Result<T, GuestError> {
    match tokio::time::timeout(time, work).await {
        Ok(r) => r,
        Err(_) => Err(GuestError::Network(format!(
            "the FTP transfer did not finish within the step's deadline ({time:?})"
        ))),
    }
}

impl StepState {
    /// The FTP session of `binding`, after the policy's checks.
    fn ftp_session(&mut self, binding: &str) -> Result<Session, GuestError> {
        self.count_request()?;
        self.sync_workspace_taint()?;
        let grant = self
            .policy
            .granted(binding, crate::runtime::policy::BindingUse::Request)?;
        let config = grant.config.clone();
        let host = config["host"]
            .as_str()
            .ok_or_else(|| GuestError::Internal("the FTP component has no host".into()))?
            .to_string();
        let port = config["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(21);
        let dest = format!("ftp://{}", authority(&host, port));
        let grant = self.policy.authorize_connection(binding, "ftp", &dest)?;
        let password = grant
            .secrets
            .iter()
            .find(|(k, _)| k == "password")
            .map(|(_, s)| s.expose().to_string())
            .ok_or_else(|| GuestError::Internal("the FTP component has no password".into()))?;
        let (resource_id, kind) = (grant.resource_id.clone(), grant.kind);
        // Components stored before `tls` existed get FTPS too.
        let tls = config["tls"].as_bool().unwrap_or(true);
        let policy = self.outbound.policy().clone();
        if !tls && !policy.allow_plaintext_login {
            return Err(GuestError::Forbidden(format!(
                "credential `{binding}` has `tls: false`: its password would cross the network in clear, which the operator does not allow (outbound.allow_plaintext_login)"
            )));
        }
        self.record_use(CredentialUse {
            binding: binding.to_string(),
            resource_id,
            kind,
            how: "attached",
            destination: Some(dest),
        });
        Ok(Session {
            host,
            port,
            tls,
            username: config["username"].as_str().unwrap_or_default().to_string(),
            password,
            base_dir: config["base_dir"].as_str().unwrap_or("/").to_string(),
            policy,
        })
    }

    async fn ftp_upload(&mut self, req: UploadRequest) -> Result<Transferred, GuestError> {
        let session = self.ftp_session(&req.credential)?;
        let (segments, full) = remote_path(&session.base_dir, &req.remote_path)?;
        let mut file = self.open_workspace_file(&req.file_path)?;
        let time = self.request_timeout(None)?;
        let work = async {
            let mut ftp = session.open(time).await?;
            if req.create_dirs {
                let mut dir = session.base_dir.trim_end_matches('/').to_string();
                for seg in &segments[..segments.len() - 1] {
                    dir = format!("{dir}/{seg}");
                    // An existing directory answers 550 too; a real problem shows at STOR.
                    let _ = ftp.mkdir(&dir).await;
                }
            }
            let mut upload = ftp
                .put_with_stream(&full)
                .await
                .map_err(|e| ftp_error(&format!("storing `{full}`"), e))?;
            let size = tokio::io::copy(&mut file, &mut upload)
                .await
                .map_err(|e| GuestError::Network(format!("uploading `{full}`: {e}")))?;
            upload
                .finish()
                .await
                .map_err(|e| ftp_error(&format!("storing `{full}`"), e))?;
            let _ = ftp.quit().await;
            Ok(size)
        };
        let size = within_deadline(time, work).await?;
        Ok(Transferred {
            remote_path: full,
            file_path: req.file_path,
            size,
        })
    }

    async fn ftp_download(&mut self, req: DownloadRequest) -> Result<Transferred, GuestError> {
        let session = self.ftp_session(&req.credential)?;
        let (_, full) = remote_path(&session.base_dir, &req.remote_path)?;
        let Some(root) = self.workspace.clone() else {
            return Err(GuestError::InvalidInput(
                "this step has no workspace to write files to".into(),
            ));
        };
        let relative = req.file_path.trim_start_matches('/').to_string();
        if relative.is_empty() {
            return Err(GuestError::InvalidInput("`file_path` names no file".into()));
        }
        // The workspace is resolved with cap-std, which refuses `..` and symlink escapes.
        let dir = cap_std::fs::Dir::open_ambient_dir(&root, cap_std::ambient_authority())
            .map_err(|e| GuestError::Internal(format!("cannot open the step workspace: {e}")))?;
        let existed = dir.exists(&relative);
        let quota = self.workspace_quota.clone();
        let time = self.request_timeout(None)?;
        let path_for_errors = req.file_path.clone();
        let work = async {
            let mut ftp = session.open(time).await?;
            let mut download = ftp
                .retr_as_stream(&full)
                .await
                .map_err(|e| ftp_error(&format!("retrieving `{full}`"), e))?;
            // The file is started only once the server agreed to send it, beside the
            // one it replaces: a transfer that fails halfway (the server, the budget,
            // the deadline) leaves the old file as it was.
            if !existed {
                quota
                    .spend_file()
                    .map_err(|e| GuestError::LimitExceeded(e.to_string()))?;
            }
            let (partial, mut file) = PartialFile::begin(&dir, &relative).map_err(|e| {
                GuestError::InvalidInput(format!(
                    "cannot write workspace file `{path_for_errors}`: {e}"
                ))
            })?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut size: u64 = 0;
            loop {
                let n = download
                    .read(&mut buf)
                    .await
                    .map_err(|e| GuestError::Network(format!("downloading `{full}`: {e}")))?;
                if n == 0 {
                    break;
                }
                quota
                    .spend_bytes(n as u64)
                    .map_err(|e| GuestError::LimitExceeded(e.to_string()))?;
                file.write_all(&buf[..n]).await.map_err(|e| {
                    GuestError::Internal(format!("cannot write `{path_for_errors}`: {e}"))
                })?;
                size += n as u64;
            }
            file.flush().await.map_err(|e| {
                GuestError::Internal(format!("cannot write `{path_for_errors}`: {e}"))
            })?;
            drop(file);
            download
                .finish()
                .await
                .map_err(|e| ftp_error(&format!("retrieving `{full}`"), e))?;
            partial.commit().map_err(|e| {
                GuestError::Internal(format!("cannot write `{path_for_errors}`: {e}"))
            })?;
            let _ = ftp.quit().await;
            Ok(size)
        };
        let result = within_deadline(time, work).await;
        Ok(Transferred {
            remote_path: full,
            file_path: req.file_path,
            size: result?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ftp_replies_are_named() {
        let reply = |code: u32, text: &str| {
            ftp_error(
                "storing",
                FtpError::UnexpectedResponse(suppaftp::types::Response {
                    status: suppaftp::Status::from(code),
                    body: text.as_bytes().to_vec(),
                }),
            )
        };
        assert!(matches!(
            reply(530, "530 Login incorrect."),
            GuestError::AccessDenied(_)
        ));
        assert!(matches!(
            reply(550, "550 Not enough privileges."),
            GuestError::AccessDenied(_)
        ));
        assert!(matches!(
            reply(550, "550 Permission denied."),
            GuestError::AccessDenied(_)
        ));
        assert!(matches!(
            reply(550, "550 No such file or directory."),
            GuestError::InvalidInput(_)
        ));
        assert!(matches!(
            reply(552, "552 Exceeded storage allocation."),
            GuestError::Upstream(UpstreamError { status: 552, .. })
        ));
        assert!(matches!(
            reply(550, "550 No space left on device."),
            GuestError::Upstream(UpstreamError { status: 550, .. })
        ));
        assert!(matches!(
            reply(452, "452 Insufficient storage space."),
            GuestError::Upstream(UpstreamError { status: 452, .. })
        ));
    }

    #[test]
    fn remote_paths_stay_under_the_base_directory() {
        let ok = |b, p| remote_path(b, p).map(|(_, f)| f).ok();
        assert_eq!(ok("/", "a/b.txt").as_deref(), Some("/a/b.txt"));
        assert_eq!(
            ok("/upload/", "/in/b.txt").as_deref(),
            Some("/upload/in/b.txt")
        );
        assert_eq!(ok("/upload", "b.txt").as_deref(), Some("/upload/b.txt"));
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "./a",
            "a\r\nDELE x",
            "a\\b",
            "",
            "/",
        ] {
            assert!(
                matches!(
                    remote_path("/upload", bad),
                    Err(GuestError::InvalidInput(_))
                ),
                "{bad:?}"
            );
        }
    }
}
