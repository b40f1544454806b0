//! A fake of Microsoft Graph's `POST /me/events`, for tests only (Graph has no local
//! server). It follows Graph's documented shapes: the event resource answered with 201
//! (learn.microsoft.com/graph/api/user-post-events), errors as
//! `{"error": {"code", "message"}}` with 401/403, and 429/503 with `Retry-After`
//! (learn.microsoft.com/graph/throttling). It requires a Bearer token, records the
//! events it receives, and can be told to fail the next calls.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// An injected answer for the next call: status and optional Retry-After.
#[derive(Debug, Clone, Copy)]
pub struct GraphFailure {
    /// HTTP status (401, 403, 429, 503).
    pub status: u16,
    /// Retry-After seconds.
    pub retry_after: Option<u32>,
}

#[derive(Default)]
struct Shared {
    events: Mutex<Vec<(String, Value)>>,
    inject: Mutex<VecDeque<GraphFailure>>,
}

/// The fake; stops when dropped.
pub struct GraphFake {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _server: crate::background::BackgroundServer,
}

async fn create_event(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let graph_error = |status: u16, code: &str, message: &str| {
        (
            StatusCode::from_u16(status).unwrap(),
            axum::Json(json!({"error": {"code": code, "message": message}})),
        )
            .into_response()
    };
    let Some(token) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
    else {
        return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.");
    };
    if let Some(f) = s.inject.lock().unwrap().pop_front() {
        let mut resp = match f.status {
            401 => graph_error(
                401,
                "InvalidAuthenticationToken",
                "Access token has expired or is not yet valid.",
            ),
            403 => graph_error(
                403,
                "ErrorAccessDenied",
                "Access is denied. Check credentials and try again.",
            ),
            429 => graph_error(429, "TooManyRequests", "Too many requests."),
            other => graph_error(
                other,
                "ServiceNotAvailable",
                "The service is temporarily unavailable.",
            ),
        };
        if let Some(secs) = f.retry_after {
            resp.headers_mut()
                .insert("retry-after", secs.to_string().parse().unwrap());
        }
        return resp;
    }
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        return graph_error(400, "RequestBodyRead", "The body is not JSON.");
    };
    if event["subject"].as_str().is_none()
        || event["start"]["dateTime"].as_str().is_none()
        || event["end"]["dateTime"].as_str().is_none()
    {
        return graph_error(
            400,
            "ErrorInvalidRequest",
            "subject, start and end are required.",
        );
    }
    let n = {
        let mut e = s.events.lock().unwrap();
        e.push((token, event.clone()));
        e.len()
    };
    let id = format!("AAMkAGI2TG93AAA{n:04}=");
    let mut answer = event.clone();
    answer["id"] = json!(id);
    answer["webLink"] = json!(format!(
        "https://outlook.office365.com/owa/?itemid={id}&exvsurl=1&path=/calendar/item"
    ));
    answer["@odata.context"] =
        json!("https://graph.microsoft.com/v1.0/$metadata#users('me')/events/$entity");
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

impl GraphFake {
    /// Start on a loopback port; the API is at `base()/v1.0`.
    pub fn start() -> GraphFake {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/v1.0/me/events", post(create_event))
            .with_state(shared.clone());
        let server = crate::background::BackgroundServer::start(app);
        let addr = server.addr;
        GraphFake {
            addr,
            shared,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Events created, with the token each came with.
    pub fn events(&self) -> Vec<(String, Value)> {
        self.shared.events.lock().unwrap().clone()
    }

    /// Fail the next calls.
    pub fn inject(&self, failures: impl IntoIterator<Item = GraphFailure>) {
        self.shared.inject.lock().unwrap().extend(failures);
    }
}
