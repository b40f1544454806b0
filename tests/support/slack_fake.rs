//! A fake of the Slack Web API and Slack's OAuth v2, for tests only (Slack has no local
//! server). It follows Slack's documented shapes and quirks: errors come back with HTTP
//! 200 and `{"ok": false, "error": ...}` (api.slack.com/web#responses); `oauth.v2.access`
//! puts the bot token at the top level and the user under `authed_user`
//! (api.slack.com/methods/oauth.v2.access); 429 carries `Retry-After`
//! (api.slack.com/docs/rate-limits). It checks the Bearer token and its scopes, records
//! every call, and can be told to fail the next calls.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// A call the fake received.
#[derive(Debug, Clone)]
pub struct SlackCall {
    /// Method name, e.g. `chat.postMessage`.
    pub method: String,
    /// The Bearer token, if any.
    pub token: Option<String>,
    /// The body as JSON (form bodies converted).
    pub body: Value,
}

/// An injected failure for the next `chat.postMessage`.
#[derive(Debug, Clone)]
pub enum Inject {
    /// `ok:false` with this error.
    SlackError(&'static str),
    /// HTTP 429 with `Retry-After: seconds`.
    RateLimited(u32),
    /// HTTP 503.
    Unavailable,
}

#[derive(Default)]
struct Shared {
    calls: Mutex<Vec<SlackCall>>,
    codes: Mutex<HashMap<String, String>>,
    tokens: Mutex<HashMap<String, Vec<String>>>,
    inject: Mutex<VecDeque<Inject>>,
    next: Mutex<u64>,
}

/// The fake; stops when dropped.
pub struct SlackFake {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _server: crate::background::BackgroundServer,
}

fn bearer(h: &HeaderMap) -> Option<String> {
    h.get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_string)
}

fn body_json(h: &HeaderMap, b: &Bytes) -> Value {
    let is_json = h
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if is_json {
        serde_json::from_slice(b).unwrap_or(Value::Null)
    } else {
        let map: HashMap<String, String> = url::form_urlencoded::parse(b).into_owned().collect();
        json!(map)
    }
}

async fn authorize(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let code = {
        let mut n = s.next.lock().unwrap();
        *n += 1;
        format!("code-{n}")
    };
    s.codes
        .lock()
        .unwrap()
        .insert(code.clone(), q.get("scope").cloned().unwrap_or_default());
    let sep = if q["redirect_uri"].contains('?') {
        '&'
    } else {
        '?'
    };
    Redirect::to(&format!(
        "{}{sep}code={code}&state={}",
        q["redirect_uri"],
        url::form_urlencoded::byte_serialize(q["state"].as_bytes()).collect::<String>()
    ))
    .into_response()
}

async fn api(
    State(s): State<Arc<Shared>>,
    axum::extract::Path(method): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = bearer(&headers);
    let body = body_json(&headers, &body);
    s.calls.lock().unwrap().push(SlackCall {
        method: method.clone(),
        token: token.clone(),
        body: body.clone(),
    });
    let ok = |v: Value| (StatusCode::OK, axum::Json(v)).into_response();
    let err = |e: &str| ok(json!({"ok": false, "error": e}));
    match method.as_str() {
        "oauth.v2.access" => {
            let code = body["code"].as_str().unwrap_or_default().to_string();
            let Some(scope) = s.codes.lock().unwrap().remove(&code) else {
                return err("invalid_code");
            };
            let n = {
                let mut n = s.next.lock().unwrap();
                *n += 1;
                *n
            };
            let access = format!("xoxb-fake-{n}");
            s.tokens.lock().unwrap().insert(
                access.clone(),
                scope
                    .split(',')
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
                    .collect(),
            );
            ok(json!({
                "ok": true, "access_token": access, "token_type": "bot", "scope": scope,
                "bot_user_id": "U0BOT", "app_id": "A0FLOW8",
                "team": {"id": "T0FLOW8", "name": "flow8"}, "enterprise": null,
                "authed_user": {"id": "U123"}
            }))
        }
        _ => {
            let scopes = token
                .as_ref()
                .and_then(|t| s.tokens.lock().unwrap().get(t).cloned());
            let Some(scopes) = scopes else {
                return err("invalid_auth");
            };
            match method.as_str() {
                "auth.test" => ok(
                    json!({"ok": true, "url": "https://flow8.slack.com/", "team": "flow8",
                    "user": "flow8bot", "team_id": "T0FLOW8", "user_id": "U0BOT"}),
                ),
                "auth.revoke" => {
                    s.tokens
                        .lock()
                        .unwrap()
                        .remove(token.as_deref().unwrap_or_default());
                    ok(json!({"ok": true, "revoked": true}))
                }
                "chat.postMessage" => {
                    if let Some(i) = s.inject.lock().unwrap().pop_front() {
                        return match i {
                            Inject::SlackError(e) => err(e),
                            Inject::RateLimited(secs) => (
                                StatusCode::TOO_MANY_REQUESTS,
                                [("retry-after", secs.to_string())],
                                "",
                            )
                                .into_response(),
                            Inject::Unavailable => StatusCode::SERVICE_UNAVAILABLE.into_response(),
                        };
                    }
                    if !scopes.iter().any(|x| x == "chat:write") {
                        return err("missing_scope");
                    }
                    let channel = body["channel"].as_str().unwrap_or_default();
                    let id = match channel {
                        "#notifications" | "C0NOTIFY" => "C0NOTIFY",
                        "#random" => return err("not_in_channel"),
                        _ => return err("channel_not_found"),
                    };
                    if body["text"].as_str().unwrap_or_default().is_empty()
                        && body["blocks"].is_null()
                    {
                        return err("no_text");
                    }
                    let n = {
                        let mut n = s.next.lock().unwrap();
                        *n += 1;
                        *n
                    };
                    ok(
                        json!({"ok": true, "channel": id, "ts": format!("1712230000.{n:06}"),
                        "message": {"text": body["text"], "blocks": body["blocks"], "user": "U0BOT"}}),
                    )
                }
                _ => err("unknown_method"),
            }
        }
    }
}

impl SlackFake {
    /// Start on a loopback port.
    pub fn start() -> SlackFake {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/oauth/v2/authorize", get(authorize))
            .route("/api/{method}", post(api).get(api))
            .with_state(shared.clone());
        let server = crate::background::BackgroundServer::start(app);
        let addr = server.addr;
        SlackFake {
            addr,
            shared,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Calls of one method.
    pub fn calls(&self, method: &str) -> Vec<SlackCall> {
        self.shared
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    /// Fail the next `chat.postMessage` calls.
    pub fn inject(&self, failures: impl IntoIterator<Item = Inject>) {
        self.shared.inject.lock().unwrap().extend(failures);
    }

    /// Whether a token is still live.
    pub fn token_live(&self, token: &str) -> bool {
        self.shared.tokens.lock().unwrap().contains_key(token)
    }
}
