//! `flow8:integration/mail`: email sent by the host through a bound SMTP component.
//!
//! The module names the binding and the message; the host does everything that needs
//! the password or the network: it asks the step policy whether the binding may be
//! used (an SMTP component of this step, no other secret held), connects to the
//! component's own host and port through the operator's address policy
//! (`outbound::connect`), secures the connection as the component's `security` says
//! (`starttls`, `tls` for implicit TLS, `none` only where the operator allows
//! plain-text logins), logs in with the component's username and password (AUTH PLAIN
//! or LOGIN), builds the MIME message with `lettre` (text and HTML alternatives,
//! attachments read from the step's workspace) and runs the transaction itself, one
//! RCPT at a time, so a refused recipient is named and nothing is sent.
//!
//! Errors (RFC 5321 §4.2.1): a refused login is `access_denied`, a refused recipient
//! `invalid_input` naming the address, a temporary (4xx) answer is retried with backoff
//! while the step's deadline leaves time, a server that cannot be reached is
//! `network_error`.

use crate::outbound::connect::{self, authority};
use crate::outbound::{OutboundError, OutboundPolicy};
use crate::runtime::bindings::flow8::integration::mail::{Host, Message, Sent};
use crate::runtime::bindings::{GuestError, UpstreamError};
use crate::runtime::sandbox::{CredentialUse, StepState};
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// All attachments of one message together, bytes (the message is built in the host's
/// memory, never the module's; common relays refuse more than 25 MB anyway).
pub const MAX_ATTACHMENT_BYTES: u64 = 25 * 1024 * 1024;
/// Recipients of one message (to, cc and bcc together).
pub const MAX_RECIPIENTS: usize = 100;

impl Host for StepState {
    async fn send(&mut self, message: Message) -> wasmtime::Result<Result<Sent, GuestError>> {
        Ok(self.send_mail(message).await)
    }
}

/// How the connection is secured (the component's `security`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain connection upgraded with STARTTLS before AUTH (RFC 3207); refused if the
    /// server does not offer it.
    StartTls,
    /// TLS from the first byte (RFC 8314, port 465).
    Implicit,
    /// No TLS: only where the operator allows plain-text logins.
    None,
}

impl Security {
    /// The component's mode: `security`, or for components stored before that field,
    /// `tls: false` as `none`, port 465 as implicit TLS, else STARTTLS.
    pub fn of(config: &serde_json::Value) -> Result<Security, GuestError> {
        match config["security"].as_str() {
            Some("starttls") => Ok(Security::StartTls),
            Some("tls") => Ok(Security::Implicit),
            Some("none") => Ok(Security::None),
            Some(other) => Err(GuestError::Internal(format!(
                "the component's security `{other}` is not starttls, tls or none"
            ))),
            None if config["tls"] == serde_json::Value::Bool(false) => Ok(Security::None),
            None if config["port"].as_u64() == Some(465) => Ok(Security::Implicit),
            None => Ok(Security::StartTls),
        }
    }
}

/// One failed attempt: retried when temporary, else the module's error.
enum Failure {
    Temporary(GuestError),
    Final(GuestError),
}

/// The module's error for an SMTP answer at `stage`.
fn smtp_error(stage: Stage, e: &lettre::transport::smtp::Error) -> Failure {
    let code = e.status().map(u16::from);
    let detail = format!("{}: {e}", stage.what());
    if e.is_transient() {
        return Failure::Temporary(GuestError::Upstream(UpstreamError {
            status: code.unwrap_or(400),
            message: detail,
        }));
    }
    if e.is_permanent() {
        return Failure::Final(match stage {
            Stage::Auth => GuestError::AccessDenied(detail),
            Stage::Recipient(_) | Stage::Sender => GuestError::InvalidInput(detail),
            _ => GuestError::Upstream(UpstreamError {
                status: code.unwrap_or(500),
                message: detail,
            }),
        });
    }
    if e.is_tls() {
        return Failure::Final(GuestError::Network(detail));
    }
    // A dropped connection, a broken answer: the network, not the message.
    Failure::Final(match stage {
        Stage::Auth if e.is_client() => GuestError::AccessDenied(detail),
        _ => GuestError::Network(detail),
    })
}

/// Where in the transaction an answer came.
#[derive(Debug, Clone)]
enum Stage {
    Greeting,
    StartTls,
    Auth,
    Sender,
    Recipient(String),
    Data,
}

impl Stage {
    fn what(&self) -> String {
        match self {
            Stage::Greeting => "the SMTP server's greeting".into(),
            Stage::StartTls => "STARTTLS".into(),
            Stage::Auth => "the SMTP server refused the login".into(),
            Stage::Sender => "the SMTP server refused the sender".into(),
            Stage::Recipient(a) => format!("the SMTP server refused recipient `{a}`"),
            Stage::Data => "the SMTP server refused the message".into(),
        }
    }
}

/// An address list entry: `user@example.com` or `Name <user@example.com>`.
fn mailbox(field: &str, text: &str) -> Result<Mailbox, GuestError> {
    text.trim().parse::<Mailbox>().map_err(|e| {
        GuestError::InvalidInput(format!("`{field}`: `{text}` is not an email address ({e})"))
    })
}

/// A message header's text may not carry line breaks (they would start new headers).
fn one_line(field: &str, text: &str) -> Result<(), GuestError> {
    if text.chars().any(|c| c == '\r' || c == '\n') {
        return Err(GuestError::InvalidInput(format!(
            "`{field}` must not contain line breaks"
        )));
    }
    Ok(())
}

/// Implicit TLS: the rustls stream, as lettre's connection takes a stream it did not
/// open itself.
#[derive(Debug)]
struct TlsTransport(tokio_rustls::client::TlsStream<tokio::net::TcpStream>);

impl tokio::io::AsyncRead for TlsTransport {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsTransport {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for TlsTransport {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

/// Everything one attempt needs; owned, so the attempt does not borrow the step.
struct Transaction {
    policy: OutboundPolicy,
    host: String,
    port: u16,
    security: Security,
    username: String,
    password: String,
    from: Mailbox,
    recipients: Vec<Mailbox>,
    body: Vec<u8>,
}

fn outbound_failure(e: OutboundError, dest: &str) -> Failure {
    Failure::Final(match e {
        OutboundError::Forbidden(m) => GuestError::Forbidden(m),
        OutboundError::InvalidRequest(m) => GuestError::InvalidInput(m),
        e => GuestError::Network(format!("{dest}: {e}")),
    })
}

impl Transaction {
    async fn attempt(&self, time: Duration) -> Result<Vec<String>, Failure> {
        let dest = format!("smtp://{}", authority(&self.host, self.port));
        let tcp = connect::connect_tcp(&self.policy, &self.host, self.port, time)
            .await
            .map_err(|e| outbound_failure(e, &dest))?;
        let hello = ClientId::Domain("localhost".into());
        let mut conn = match self.security {
            Security::Implicit => {
                let config =
                    connect::tls_config(&self.policy).map_err(|e| outbound_failure(e, &dest))?;
                let name = rustls_pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| Failure::Final(GuestError::Internal(e.to_string())))?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| {
                        Failure::Final(GuestError::Network(format!("{dest}: TLS: {e}")))
                    })?;
                AsyncSmtpConnection::connect_with_transport(Box::new(TlsTransport(tls)), &hello)
                    .await
                    .map_err(|e| smtp_error(Stage::Greeting, &e))?
            }
            Security::StartTls | Security::None => {
                AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &hello)
                    .await
                    .map_err(|e| smtp_error(Stage::Greeting, &e))?
            }
        };
        let result = self.transact(&mut conn, &hello, &dest).await;
        match &result {
            Ok(_) => {
                let _ = conn.quit().await;
            }
            Err(_) => conn.abort().await,
        }
        result
    }

    async fn transact(
        &self,
        conn: &mut AsyncSmtpConnection,
        hello: &ClientId,
        dest: &str,
    ) -> Result<Vec<String>, Failure> {
        if self.security == Security::StartTls {
            if !conn.server_info().supports_feature(Extension::StartTls) {
                // No silent downgrade: the password would cross the network in clear.
                return Err(Failure::Final(GuestError::Network(format!(
                    "{dest}: the server does not offer STARTTLS, which the component requires"
                ))));
            }
            let params = starttls_parameters(&self.policy, &self.host, dest)?;
            conn.starttls(params, hello)
                .await
                .map_err(|e| smtp_error(Stage::StartTls, &e))?;
        }
        let credentials = Credentials::new(self.username.clone(), self.password.clone());
        conn.auth(&[Mechanism::Plain, Mechanism::Login], &credentials)
            .await
            .map_err(|e| smtp_error(Stage::Auth, &e))?;
        let mut params = Vec::new();
        if !self.body.is_ascii() {
            if !conn.server_info().supports_feature(Extension::EightBitMime) {
                return Err(Failure::Final(GuestError::InvalidInput(
                    "the message is not 7-bit and the server does not take 8BITMIME".into(),
                )));
            }
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        let non_ascii = std::iter::once(&self.from)
            .chain(&self.recipients)
            .any(|m| !m.email.to_string().is_ascii());
        if non_ascii {
            if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
                return Err(Failure::Final(GuestError::InvalidInput(
                    "an address is not ASCII and the server does not take SMTPUTF8".into(),
                )));
            }
            params.push(MailParameter::SmtpUtfEight);
        }
        conn.command(Mail::new(Some(self.from.email.clone()), params))
            .await
            .map_err(|e| smtp_error(Stage::Sender, &e))?;
        let mut accepted = Vec::new();
        for r in &self.recipients {
            let address = r.email.to_string();
            conn.command(Rcpt::new(r.email.clone(), vec![]))
                .await
                .map_err(|e| smtp_error(Stage::Recipient(address.clone()), &e))?;
            accepted.push(address);
        }
        conn.command(Data)
            .await
            .map_err(|e| smtp_error(Stage::Data, &e))?;
        conn.message(&self.body)
            .await
            .map_err(|e| smtp_error(Stage::Data, &e))?;
        Ok(accepted)
    }
}

/// The STARTTLS parameters built so far, by extra CA file and server name.
static STARTTLS: std::sync::LazyLock<
    connect::TlsSettingsCache<(Option<std::path::PathBuf>, String), TlsParameters>,
> = std::sync::LazyLock::new(connect::TlsSettingsCache::new);

/// lettre's STARTTLS parameters for `host`: the Mozilla roots and the operator's extra
/// ones, names verified; built once per server name.
fn starttls_parameters(
    policy: &OutboundPolicy,
    host: &str,
    dest: &str,
) -> Result<TlsParameters, Failure> {
    STARTTLS.get_or_build((policy.extra_ca_file.clone(), host.to_string()), || {
        let mut params = TlsParameters::builder(host.to_string());
        for der in connect::extra_roots(policy).map_err(|e| outbound_failure(e, dest))? {
            let cert = lettre::transport::smtp::client::Certificate::from_der(der.to_vec())
                .map_err(|e| Failure::Final(GuestError::Internal(e.to_string())))?;
            params = params.add_root_certificate(cert);
        }
        params
            .build_rustls()
            .map_err(|e| Failure::Final(GuestError::Internal(e.to_string())))
    })
}

/// The first retry waits this long, each next one twice as long (up to `MAX_BACKOFF`).
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(16);

impl StepState {
    async fn send_mail(&mut self, msg: Message) -> Result<Sent, GuestError> {
        self.count_request()?;
        self.sync_workspace_taint()?;
        let grant = self
            .policy
            .granted(&msg.credential, crate::runtime::policy::BindingUse::Request)?;
        let config = grant.config.clone();
        let host = config["host"]
            .as_str()
            .ok_or_else(|| GuestError::Internal("the SMTP component has no host".into()))?
            .to_string();
        let port = config["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(587);
        let dest = format!("smtp://{}", authority(&host, port));
        let grant = self
            .policy
            .authorize_connection(&msg.credential, "smtp", &dest)?;
        let password = grant
            .secrets
            .iter()
            .find(|(k, _)| k == "password")
            .map(|(_, s)| s.expose().to_string())
            .ok_or_else(|| GuestError::Internal("the SMTP component has no password".into()))?;
        let username = config["username"].as_str().unwrap_or_default().to_string();
        let (resource_id, kind) = (grant.resource_id.clone(), grant.kind);
        let security = Security::of(&config)?;
        let policy = self.outbound.policy().clone();
        if security == Security::None && !policy.allow_plaintext_login {
            return Err(GuestError::Forbidden(format!(
                "credential `{}` has security `none`: its password would cross the network in clear, which the operator does not allow (outbound.allow_plaintext_login)",
                msg.credential
            )));
        }

        let from_text = msg
            .from
            .clone()
            .or_else(|| config["from"].as_str().map(str::to_string))
            .ok_or_else(|| {
                GuestError::InvalidInput(
                    "no `from` given, and the component names no `from` address".into(),
                )
            })?;
        let from = mailbox("from", &from_text)?;
        let mut builder = lettre::Message::builder().from(from.clone());
        let mut recipients: Vec<Mailbox> = Vec::new();
        for (field, list) in [("to", &msg.to), ("cc", &msg.cc), ("bcc", &msg.bcc)] {
            for (i, text) in list.iter().enumerate() {
                let m = mailbox(&format!("{field}[{i}]"), text)?;
                builder = match field {
                    "to" => builder.to(m.clone()),
                    "cc" => builder.cc(m.clone()),
                    _ => builder.bcc(m.clone()),
                };
                if !recipients.iter().any(|r| r.email == m.email) {
                    recipients.push(m);
                }
            }
        }
        if recipients.is_empty() {
            return Err(GuestError::InvalidInput(
                "the message has no recipient (to, cc or bcc)".into(),
            ));
        }
        if recipients.len() > MAX_RECIPIENTS {
            return Err(GuestError::InvalidInput(format!(
                "a message may have at most {MAX_RECIPIENTS} recipients"
            )));
        }
        for (i, text) in msg.reply_to.iter().enumerate() {
            builder = builder.reply_to(mailbox(&format!("reply_to[{i}]"), text)?);
        }
        one_line("subject", &msg.subject)?;
        let message_id = format!(
            "<{}@{}>",
            hex::encode(rand::random::<[u8; 16]>()),
            from.email.domain()
        );
        builder = builder
            .subject(msg.subject.clone())
            .message_id(Some(message_id.clone()))
            .date_now();

        let text_part = |t: String| SinglePart::plain(t);
        let body: MultiPart = match (msg.text.clone(), msg.html.clone()) {
            (Some(t), Some(h)) => MultiPart::alternative_plain_html(t, h),
            (Some(t), None) => MultiPart::mixed().singlepart(text_part(t)),
            (None, Some(h)) => MultiPart::mixed().singlepart(SinglePart::html(h)),
            (None, None) => MultiPart::mixed().singlepart(text_part(String::new())),
        };
        let mut parts = MultiPart::mixed().multipart(body);
        let mut attached: u64 = 0;
        for (i, a) in msg.attachments.iter().enumerate() {
            let mut file = self.open_workspace_file(&a.file_path)?;
            let size = file
                .metadata()
                .await
                .map_err(|e| GuestError::Internal(format!("cannot read `{}`: {e}", a.file_path)))?
                .len();
            attached = attached.saturating_add(size);
            if attached > MAX_ATTACHMENT_BYTES {
                return Err(GuestError::LimitExceeded(format!(
                    "attachments may be at most {MAX_ATTACHMENT_BYTES} bytes in all"
                )));
            }
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes)
                .await
                .map_err(|e| GuestError::Internal(format!("cannot read `{}`: {e}", a.file_path)))?;
            let filename = a.filename.clone().unwrap_or_else(|| {
                a.file_path
                    .rsplit('/')
                    .next()
                    .unwrap_or("attachment")
                    .to_string()
            });
            one_line(&format!("attachments[{i}].filename"), &filename)?;
            let ct = a
                .content_type
                .as_deref()
                .unwrap_or("application/octet-stream");
            let ct = ContentType::parse(ct).map_err(|_| {
                GuestError::InvalidInput(format!(
                    "`attachments[{i}].content_type` is not a MIME type"
                ))
            })?;
            parts = parts.singlepart(Attachment::new(filename).body(bytes, ct));
        }
        let email = builder
            .multipart(parts)
            .map_err(|e| GuestError::InvalidInput(format!("the message cannot be built: {e}")))?;
        let tx = Transaction {
            policy,
            host,
            port,
            security,
            username,
            password,
            from,
            recipients,
            body: email.formatted(),
        };
        self.record_use(CredentialUse {
            binding: msg.credential.clone(),
            resource_id,
            kind,
            how: "attached",
            destination: Some(dest.clone()),
        });

        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = Instant::now();
            let time = self.request_timeout(None)?;
            let failure = match tokio::time::timeout(time, tx.attempt(time)).await {
                Ok(Ok(accepted)) => {
                    return Ok(Sent {
                        message_id,
                        accepted,
                    });
                }
                Ok(Err(f)) => f,
                Err(_) => Failure::Final(GuestError::Network(format!(
                    "{dest}: no answer within the step's deadline ({:?})",
                    started.elapsed()
                ))),
            };
            match failure {
                Failure::Final(e) => return Err(e),
                // A temporary refusal: again after a pause, while the deadline leaves
                // time for the pause and another try.
                Failure::Temporary(e) => {
                    if self.remaining() <= backoff + Duration::from_secs(1) {
                        return Err(e);
                    }
                    tracing::debug!(?backoff, "SMTP answered a temporary failure; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn security_comes_from_the_component() {
        let of = |v| Security::of(&v).ok();
        assert_eq!(
            of(json!({"security": "starttls"})),
            Some(Security::StartTls)
        );
        assert_eq!(of(json!({"security": "tls"})), Some(Security::Implicit));
        assert_eq!(of(json!({"security": "none"})), Some(Security::None));
        assert_eq!(of(json!({"security": "ssl"})), None);
        // Components stored before `security`.
        assert_eq!(of(json!({"tls": false, "port": 25})), Some(Security::None));
        assert_eq!(
            of(json!({"tls": true, "port": 465})),
            Some(Security::Implicit)
        );
        assert_eq!(
            of(json!({"tls": true, "port": 587})),
            Some(Security::StartTls)
        );
    }

    #[test]
    fn addresses_and_headers_are_checked() {
        assert!(mailbox("to[0]", "Ann <ann@example.com>").is_ok());
        assert!(mailbox("to[0]", "ann@example.com").is_ok());
        let e = mailbox("to[1]", "not an address").unwrap_err();
        assert!(
            matches!(&e, GuestError::InvalidInput(m) if m.contains("to[1]") && m.contains("not an address")),
            "{e:?}"
        );
        assert!(one_line("subject", "Hello\r\nBcc: x@example.com").is_err());
        assert!(one_line("subject", "Hello").is_ok());
    }
}
