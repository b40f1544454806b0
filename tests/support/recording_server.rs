//! A real HTTP server on a loopback port that records every request it receives and
//! answers from a script (status, headers, body, delay), so tests can check exactly
//! what the host sent upstream.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request as received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
            delay: Duration::ZERO,
        }
    }

    /// A plain-text answer.
    pub fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
        }
    }

    /// Add a header.
    pub fn with_header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }

    /// Answer after a delay.
    pub fn with_delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<RecordedRequest>>,
    script: Mutex<VecDeque<Reply>>,
}

/// The server; stops when dropped.
pub struct RecordingServer {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _server: crate::background::BackgroundServer,
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.requests.lock().expect("lock").push(RecordedRequest {
        method: method.to_string(),
        uri: uri.to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    });
    let reply = shared.script.lock().expect("lock").pop_front();
    let reply = reply.unwrap_or_else(|| {
        Reply::json(
            200,
            serde_json::json!({
                "method": method.to_string(),
                "path": uri.path(),
                "received_headers": headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            }),
        )
    });
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut resp = (
        axum::http::StatusCode::from_u16(reply.status).expect("status"),
        reply.body,
    )
        .into_response();
    for (k, v) in reply.headers {
        resp.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            axum::http::HeaderValue::from_str(&v).expect("header value"),
        );
    }
    resp
}

impl RecordingServer {
    /// Start on 127.0.0.1 with an ephemeral port, on its own thread and runtime (so it
    /// serves whatever runtime, or none, the test uses).
    pub fn start() -> RecordingServer {
        let shared = Arc::new(Shared::default());
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = crate::background::BackgroundServer::start(app);
        let addr = server.addr;
        RecordingServer {
            addr,
            shared,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Queue replies, answered in order; after them the server echoes.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.script.lock().expect("lock").extend(replies);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().expect("lock").clone()
    }
}
