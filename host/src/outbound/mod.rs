//! Outbound HTTP for modules (and, in `connect`, the SMTP and FTP connections of the
//! `mail` and `file-transfer` capabilities). The host, not the module, opens every connection: this
//! is where the operator's egress policy (allowed hosts, private and loopback
//! addresses, response size) is enforced. The per-step rules (the manifest's hosts and
//! each credential's pinned hosts) are checked by the `http` capability before a request
//! gets here.

pub mod address;
pub mod connect;
pub mod resolver;
pub mod sigv4;

use crate::manifest::{HostPattern, any_matches};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// The operator's egress policy.
#[derive(Debug, Clone)]
pub struct OutboundPolicy {
    /// Hosts any module may reach at all (intersected with each manifest). Default:
    /// any public host.
    pub allowed_hosts: Vec<HostPattern>,
    /// Let modules reach 127.0.0.0/8 and ::1 (local runs and tests).
    pub allow_loopback: bool,
    /// Let modules reach private, link-local and other non-public ranges.
    pub allow_private: bool,
    /// Largest response body handed to a module.
    pub max_response_bytes: usize,
    /// Largest in-memory request body a module may send.
    pub max_request_bytes: usize,
    /// Let SMTP and FTP components log in without TLS (their password in clear text on
    /// the wire): local relays and tests only.
    pub allow_plaintext_login: bool,
    /// PEM certificates trusted, besides the Mozilla roots, by SMTP and FTP TLS.
    pub extra_ca_file: Option<std::path::PathBuf>,
}

impl Default for OutboundPolicy {
    fn default() -> Self {
        OutboundPolicy {
            allowed_hosts: vec![
                HostPattern::parse("https://*:*").expect("valid pattern"),
                HostPattern::parse("http://*:*").expect("valid pattern"),
            ],
            allow_loopback: false,
            allow_private: false,
            max_response_bytes: 16 * 1024 * 1024,
            max_request_bytes: 16 * 1024 * 1024,
            allow_plaintext_login: false,
            extra_ca_file: None,
        }
    }
}

/// Why an outbound request did not produce a response.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// Policy refused the destination (host or address).
    #[error("{0}")]
    Forbidden(String),
    /// The request itself is malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// No answer within the time left.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// DNS, connect, TLS or protocol failure.
    #[error("{0}")]
    Network(String),
    /// The response body is larger than the policy allows.
    #[error("response body is larger than {0} bytes")]
    ResponseTooLarge(usize),
}

/// What to send.
#[derive(Debug)]
pub enum OutboundBody {
    /// Nothing.
    Empty,
    /// In-memory bytes.
    Bytes(Vec<u8>),
    /// A file streamed from disk (already opened inside the step's workspace).
    File(tokio::fs::File),
    /// `length` bytes of a file from where it is positioned (opened inside the step's
    /// workspace and seeked to the range's start): one chunk of a ranged upload.
    FileRange {
        /// The file, at the range's first byte.
        file: tokio::fs::File,
        /// Bytes to send.
        length: u64,
    },
}

/// A request that passed the step's checks.
#[derive(Debug)]
pub struct OutboundRequest {
    /// Method.
    pub method: http::Method,
    /// Destination.
    pub url: Url,
    /// Headers, credential already attached.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: OutboundBody,
    /// Time this request may take.
    pub timeout: Duration,
}

/// A response read whole (within the policy's size cap).
#[derive(Debug)]
pub struct OutboundResponse {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// One HTTP client shared by every step (connection pooling matters: a step's real
/// cost is its outbound call).
#[derive(Clone)]
pub struct OutboundClient {
    client: reqwest::Client,
    policy: Arc<OutboundPolicy>,
}

impl std::fmt::Debug for OutboundClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundClient")
            .field("policy", &self.policy)
            .finish()
    }
}

impl OutboundClient {
    /// Build the client for a policy.
    pub fn new(policy: OutboundPolicy) -> Result<OutboundClient, OutboundError> {
        let resolver = resolver::PolicyResolver {
            allow_loopback: policy.allow_loopback,
            allow_private: policy.allow_private,
        };
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(resolver))
            // Each redirect hop must pass the same checks, so modules follow them
            // themselves; credentials are never re-sent to a redirect target.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("flow8-host/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| OutboundError::Network(format!("cannot build HTTP client: {e}")))?;
        Ok(OutboundClient {
            client,
            policy: Arc::new(policy),
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> &OutboundPolicy {
        &self.policy
    }

    /// The operator's part of the checks: allowed hosts, and IP literals (names are
    /// checked by the resolver at connect time).
    pub fn check_destination(&self, url: &Url) -> Result<(), OutboundError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(OutboundError::InvalidRequest(format!(
                "scheme `{}` is not http or https",
                url.scheme()
            )));
        }
        if !any_matches(&self.policy.allowed_hosts, url) {
            return Err(OutboundError::Forbidden(format!(
                "the operator's policy does not allow {}",
                origin(url)
            )));
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
            None => {
                return Err(OutboundError::InvalidRequest(format!(
                    "`{url}` has no host"
                )));
            }
        };
        if let Some(ip) = ip
            && !address::allowed(ip, self.policy.allow_loopback, self.policy.allow_private)
        {
            return Err(OutboundError::Forbidden(format!(
                "address {ip} is {:?}, which the operator does not allow modules to reach",
                address::classify(ip)
            )));
        }
        Ok(())
    }

    /// Send a request and read the whole response within the size cap and time.
    pub async fn send(&self, req: OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        use tracing::Instrument;
        // Every log line of the exchange names where it went (never its headers).
        let span = tracing::debug_span!("outbound", method = %req.method, host = %origin(&req.url));
        async {
            let max = self.policy.max_response_bytes;
            let streaming = self.send_streaming(req).await?;
            let (status, headers) = (streaming.status, streaming.headers.clone());
            let body = streaming.read_whole(max).await?;
            tracing::debug!(status, bytes = body.len(), "outbound answered");
            Ok(OutboundResponse {
                status,
                headers,
                body,
            })
        }
        .instrument(span)
        .await
    }

    /// Send a request and return once the status and headers are in; the body is read
    /// from the answer chunk by chunk ([`StreamingResponse::chunk`]), all of it within
    /// the request's time. What streams a download to disk uses this: the body never
    /// has to fit in memory.
    pub async fn send_streaming(
        &self,
        req: OutboundRequest,
    ) -> Result<StreamingResponse, OutboundError> {
        self.check_destination(&req.url)?;
        let timeout = req.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut builder = self
            .client
            .request(req.method, req.url)
            .headers(req.headers)
            .timeout(timeout);
        builder = match req.body {
            OutboundBody::Empty => builder,
            OutboundBody::Bytes(b) => builder.body(b),
            OutboundBody::File(f) => {
                let len = f.metadata().await.map(|m| m.len()).ok();
                let b = builder.body(reqwest::Body::from(f));
                match len {
                    Some(len) => b.header(http::header::CONTENT_LENGTH, len),
                    None => b,
                }
            }
            OutboundBody::FileRange { file, length } => {
                use tokio::io::AsyncReadExt;
                // Read in pieces so a chunk of any size never sits whole in memory.
                let stream =
                    futures_util::stream::try_unfold(file.take(length), |mut r| async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        let n = r.read(&mut buf).await?;
                        if n == 0 {
                            return Ok::<_, std::io::Error>(None);
                        }
                        buf.truncate(n);
                        Ok(Some((buf, r)))
                    });
                builder
                    .body(reqwest::Body::wrap_stream(stream))
                    .header(http::header::CONTENT_LENGTH, length)
            }
        };
        let resp = match tokio::time::timeout_at(deadline, builder.send()).await {
            Ok(r) => r.map_err(|e| map_error(e, timeout))?,
            Err(_) => return Err(OutboundError::Timeout(timeout)),
        };
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        Ok(StreamingResponse {
            status,
            headers,
            content_length: resp.content_length(),
            body: Box::pin(resp.bytes_stream()),
            deadline,
            timeout,
        })
    }
}

/// An answer whose body is still to be read (`OutboundClient::send_streaming`).
pub struct StreamingResponse {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// The body's length, when the server said.
    pub content_length: Option<u64>,
    body: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send>,
    >,
    deadline: tokio::time::Instant,
    timeout: Duration,
}

impl std::fmt::Debug for StreamingResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingResponse")
            .field("status", &self.status)
            .field("content_length", &self.content_length)
            .finish()
    }
}

impl StreamingResponse {
    /// The next piece of the body (`None` at its end), within the request's time.
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, OutboundError> {
        match tokio::time::timeout_at(self.deadline, self.body.next()).await {
            Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
            Ok(Some(Err(e))) => Err(map_error(e, self.timeout)),
            Ok(None) => Ok(None),
            Err(_) => Err(OutboundError::Timeout(self.timeout)),
        }
    }

    /// The whole body, at most `max` bytes (`ResponseTooLarge` past them).
    pub async fn read_whole(mut self, max: usize) -> Result<Vec<u8>, OutboundError> {
        if let Some(len) = self.content_length
            && len > max as u64
        {
            return Err(OutboundError::ResponseTooLarge(max));
        }
        let mut body = Vec::new();
        while let Some(chunk) = self.chunk().await? {
            if body.len() + chunk.len() > max {
                return Err(OutboundError::ResponseTooLarge(max));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// `scheme://host:port` of a URL, for messages (never the path: it may carry data).
pub fn origin(url: &Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

fn map_error(e: reqwest::Error, timeout: Duration) -> OutboundError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<resolver::AddressRefused>() {
            return OutboundError::Forbidden(refused.to_string());
        }
        source = s.source();
    }
    if e.is_timeout() {
        return OutboundError::Timeout(timeout);
    }
    // reqwest's Display omits the cause; walk the chain for a useful message, without
    // the URL (it may carry data the module put in a query string).
    let mut msg = String::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = source {
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&s.to_string());
        source = s.source();
    }
    if msg.is_empty() {
        msg = e.without_url().to_string();
    }
    OutboundError::Network(msg)
}
