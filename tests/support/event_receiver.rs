//! flow8's side of event delivery, for the tests: a real HTTP server (axum on a
//! loopback port) that takes the host's event deliveries and checks each one the way
//! the Standard Webhooks spec tells a receiver to (<https://www.standardwebhooks.com>,
//! "Verifying webhook authenticity"), with its own HMAC code, not the host's: the
//! signed content is `{webhook-id}.{webhook-timestamp}.{body}`, the key the base64
//! after `whsec_`, `webhook-signature` a space-separated list of `v1,<base64>`, the
//! timestamp within five minutes. It can be "down" (answers 503 to everything), and
//! keeps every delivery it accepted, so a test can check what arrived, once per id
//! after deduplication, and in which order.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A delivery the receiver accepted.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// `webhook-id`.
    pub id: String,
    /// The JSON body.
    pub body: serde_json::Value,
}

#[derive(Default)]
struct Inner {
    secret: Mutex<Option<String>>,
    down: AtomicBool,
    accepted: Mutex<Vec<Delivered>>,
    refused_down: AtomicU64,
    bad_signature: AtomicU64,
    changed: tokio::sync::Notify,
}

/// The receiver; stopped when dropped.
pub struct EventReceiver {
    /// Where the host delivers (`http://127.0.0.1:PORT/flow8/events`).
    pub url: String,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether the headers sign the body with `secret`, as the spec says to check it.
pub fn verify(secret: &str, headers: &HeaderMap, body: &[u8], now: i64) -> bool {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts), Some(sigs)) = (
        get("webhook-id"),
        get("webhook-timestamp"),
        get("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(ts_n) = ts.parse::<i64>() else {
        return false;
    };
    if (now - ts_n).abs() > 300 {
        return false;
    }
    let Some(key) = secret
        .strip_prefix("whsec_")
        .and_then(|b| STANDARD.decode(b).ok())
    else {
        return false;
    };
    sigs.split(' ').any(|s| {
        let Some(b64) = s.strip_prefix("v1,") else {
            return false;
        };
        let Ok(tag) = STANDARD.decode(b64) else {
            return false;
        };
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(ts.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&tag).is_ok()
    })
}

async fn take(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = if inner.down.load(Ordering::SeqCst) {
        inner.refused_down.fetch_add(1, Ordering::SeqCst);
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        let secret = inner.secret.lock().unwrap().clone();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        match secret {
            Some(s) if verify(&s, &headers, &body, now) => {
                let id = headers["webhook-id"].to_str().unwrap().to_string();
                let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                inner.accepted.lock().unwrap().push(Delivered { id, body });
                StatusCode::NO_CONTENT
            }
            _ => {
                inner.bad_signature.fetch_add(1, Ordering::SeqCst);
                StatusCode::UNAUTHORIZED
            }
        }
    };
    inner.changed.notify_one();
    status
}

impl EventReceiver {
    /// Start on a free loopback port, up.
    pub async fn start() -> EventReceiver {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/flow8/events", axum::routing::post(take))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        EventReceiver {
            url: format!("http://{addr}/flow8/events"),
            inner,
            task,
        }
    }

    /// The signing secret deliveries must be signed with (`whsec_...`).
    pub fn set_secret(&self, secret: &str) {
        *self.inner.secret.lock().unwrap() = Some(secret.to_string());
    }

    /// Down: every delivery is answered 503 (and not kept).
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
    }

    /// Every delivery accepted, in arrival order (a redelivered id more than once).
    pub fn accepted(&self) -> Vec<Delivered> {
        self.inner.accepted.lock().unwrap().clone()
    }

    /// The accepted deliveries once per id (its first arrival), in arrival order: what
    /// a receiver that deduplicates by `webhook-id` processes.
    pub fn unique(&self) -> Vec<Delivered> {
        let mut seen = std::collections::HashSet::new();
        self.accepted()
            .into_iter()
            .filter(|d| seen.insert(d.id.clone()))
            .collect()
    }

    /// Deliveries answered 503 while down.
    pub fn refused_while_down(&self) -> u64 {
        self.inner.refused_down.load(Ordering::SeqCst)
    }

    /// Deliveries whose signature did not check.
    pub fn bad_signatures(&self) -> u64 {
        self.inner.bad_signature.load(Ordering::SeqCst)
    }

    /// Wait until `cond` holds, woken by each request the receiver answers; false
    /// after `limit` (a bound for a broken host, not a timing: the waits are seconds wide).
    pub async fn wait_until(&self, limit: Duration, cond: impl Fn(&EventReceiver) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if cond(self) {
                return true;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = tokio::time::timeout(left, self.inner.changed.notified()).await;
        }
    }
}
