//! Fakes of the OpenAI Chat Completions and Anthropic Messages APIs, for tests only
//! (neither has a local server). They follow the documented request and error shapes:
//! OpenAI wants `Authorization: Bearer <key>` and answers errors as
//! `{"error": {"message", "type", "param", "code"}}`
//! (platform.openai.com/docs/guides/error-codes); Anthropic wants `x-api-key`,
//! `anthropic-version` and JSON, and answers errors as `{"type": "error", "error":
//! {"type", "message"}}`, 529 `overloaded_error` included (docs.anthropic.com/en/api/errors).
//! A wrong key is 401; a body missing a required field is 400. Every call is recorded
//! and the next answers can be injected (status, `retry-after`).

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

/// A call the fake received.
#[derive(Debug, Clone)]
pub struct AiCall {
    /// `openai` or `anthropic`.
    pub api: &'static str,
    /// Request headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: Value,
}

impl AiCall {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An injected answer for the next call: status and `retry-after` seconds.
#[derive(Debug, Clone, Copy)]
pub struct AiFailure {
    /// 400, 401, 429, 500, 529, ...
    pub status: u16,
    /// `retry-after` seconds.
    pub retry_after: Option<u32>,
}

struct Shared {
    key: String,
    calls: Mutex<Vec<AiCall>>,
    inject: Mutex<VecDeque<AiFailure>>,
}

/// The fake; stops when dropped.
pub struct AiFake {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _server: crate::background::BackgroundServer,
}

fn record(s: &Shared, api: &'static str, headers: &HeaderMap, body: &Value) {
    s.calls.lock().unwrap().push(AiCall {
        api,
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.clone(),
    });
}

fn answer(status: u16, body: Value, retry_after: Option<u32>) -> Response {
    let mut r = (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
    if let Some(s) = retry_after {
        r.headers_mut()
            .insert("retry-after", s.to_string().parse().unwrap());
    }
    r
}

async fn openai(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    record(&s, "openai", &headers, &body);
    let error = |status: u16, message: &str, kind: &str, code: Option<&str>, ra| {
        answer(
            status,
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
            ra,
        )
    };
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(s.key.as_str()) {
        return error(
            401,
            "Incorrect API key provided: sk-...",
            "invalid_request_error",
            Some("invalid_api_key"),
            None,
        );
    }
    if let Some(f) = s.inject.lock().unwrap().pop_front() {
        return match f.status {
            400 => error(
                400,
                "Invalid value for 'temperature': must be at most 2.",
                "invalid_request_error",
                None,
                None,
            ),
            401 => error(
                401,
                "Incorrect API key provided: sk-...",
                "invalid_request_error",
                Some("invalid_api_key"),
                None,
            ),
            429 => error(
                429,
                "Rate limit reached for requests",
                "requests",
                Some("rate_limit_exceeded"),
                f.retry_after,
            ),
            other => error(
                other,
                "The server had an error while processing your request.",
                "server_error",
                None,
                f.retry_after,
            ),
        };
    }
    if body["model"].as_str().is_none() || !body["messages"].is_array() {
        return error(
            400,
            "you must provide a model parameter",
            "invalid_request_error",
            None,
            None,
        );
    }
    let json_mode = body["response_format"]["type"] == "json_object";
    let content = if json_mode {
        json!({"summary": "invoice due"}).to_string()
    } else {
        "Hello from the fake.".to_string()
    };
    answer(
        200,
        json!({
            "id": "chatcmpl-fake1", "object": "chat.completion", "created": 1_767_000_000,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": null},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
        }),
        None,
    )
}

async fn anthropic(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    record(&s, "anthropic", &headers, &body);
    let error = |status: u16, kind: &str, message: &str, ra| {
        answer(
            status,
            json!({"type": "error", "error": {"type": kind, "message": message}}),
            ra,
        )
    };
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(s.key.as_str()) {
        return error(401, "authentication_error", "invalid x-api-key", None);
    }
    if headers.get("anthropic-version").is_none() {
        return error(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
            None,
        );
    }
    if let Some(f) = s.inject.lock().unwrap().pop_front() {
        return match f.status {
            400 => error(
                400,
                "invalid_request_error",
                "messages: roles must alternate between \"user\" and \"assistant\"",
                None,
            ),
            401 => error(401, "authentication_error", "invalid x-api-key", None),
            429 => error(
                429,
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit",
                f.retry_after,
            ),
            529 => error(529, "overloaded_error", "Overloaded", f.retry_after),
            other => error(other, "api_error", "Internal server error", f.retry_after),
        };
    }
    for field in ["model", "max_tokens", "messages"] {
        if body.get(field).is_none() {
            return error(
                400,
                "invalid_request_error",
                &format!("{field}: Field required"),
                None,
            );
        }
    }
    answer(
        200,
        json!({
            "id": "msg_fake1", "type": "message", "role": "assistant", "model": body["model"],
            "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "from the fake."}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 6}
        }),
        None,
    )
}

impl AiFake {
    /// Start on a loopback port, accepting `key` (for both APIs).
    pub fn start(key: &str) -> AiFake {
        let shared = Arc::new(Shared {
            key: key.to_string(),
            calls: Mutex::new(Vec::new()),
            inject: Mutex::new(VecDeque::new()),
        });
        let app = Router::new()
            // GET too, so a test guest's plain request is recorded (and refused: no body).
            .route("/v1/chat/completions", post(openai).get(openai))
            .route("/v1/messages", post(anthropic))
            .with_state(shared.clone());
        let server = crate::background::BackgroundServer::start(app);
        AiFake {
            addr: server.addr,
            shared,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<AiCall> {
        self.shared.calls.lock().unwrap().clone()
    }

    /// Answer the next calls with these failures.
    pub fn inject(&self, failures: impl IntoIterator<Item = AiFailure>) {
        self.shared.inject.lock().unwrap().extend(failures);
    }
}
