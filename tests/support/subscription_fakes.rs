//! A fake of Microsoft Graph's subscription endpoints, for tests only (Graph has no
//! local server), following the documented shapes
//! (<https://learn.microsoft.com/graph/api/subscription-post-subscriptions>,
//! `-update`, `-delete`, and `/graph/change-notifications-delivery-webhooks`):
//!
//! - `POST /v1.0/subscriptions` checks the body (`changeType`, `notificationUrl`,
//!   `resource`, `expirationDateTime` no later than the resource's maximum,
//!   `clientState` of at most 128 characters) and then, as Graph does, validates the
//!   notification and lifecycle URLs for real: it POSTs `?validationToken=...` to each
//!   and wants the token back as `text/plain` with 200 within 10 seconds, else it
//!   answers 400 and makes nothing;
//! - `PATCH /v1.0/subscriptions/{id}` renews (404 `ResourceNotFound` for one it does
//!   not have); `DELETE` removes (204, or 404).
//!
//! Every call needs a Bearer token; the fake records each one with its token. A test can
//! make created subscriptions expire soon (so they are due for renewal at once), answer
//! the next renewal 404 (Graph lost it), refuse the next creation, hold the next renewal
//! unanswered (to kill the host mid-renewal), and remove a subscription the way Graph
//! does, sending the `subscriptionRemoved` lifecycle notification with its
//! `clientState`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Graph's longest subscription for Outlook resources ("under 7 days").
pub const OUTLOOK_MAX_MINUTES: i64 = 10_080;
/// For drive items ("under 30 days").
pub const DRIVE_MAX_MINUTES: i64 = 42_300;

/// One subscription the fake holds.
#[derive(Debug, Clone)]
pub struct FakeSubscription {
    /// Graph's id.
    pub id: String,
    /// The body it was created with (and its current expiry).
    pub resource: Value,
    /// The token that created it.
    pub token: String,
}

/// A request the fake received: method, subscription id (if any), token.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// `POST`, `PATCH`, `DELETE`.
    pub method: &'static str,
    /// The subscription id in the path, or the one created.
    pub id: Option<String>,
    /// The Bearer token.
    pub token: String,
}

#[derive(Default)]
struct Shared {
    subs: Mutex<BTreeMap<String, FakeSubscription>>,
    calls: Mutex<Vec<Call>>,
    create_lifetime: Mutex<Option<Duration>>,
    fail_next_renewal: Mutex<Option<u16>>,
    fail_next_create: Mutex<Option<u16>>,
    hold_next_renewal: Mutex<bool>,
    held: Mutex<u32>,
    release: tokio::sync::Notify,
    counter: Mutex<u64>,
    handshakes: Mutex<Vec<String>>,
}

/// The fake; stops when dropped (releasing a held renewal first).
pub struct GraphSubscriptionFake {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _server: crate::background::BackgroundServer,
}

fn graph_error(status: u16, code: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({"error": {"code": code, "message": message, "innerError": {"request-id": "fake"}}})),
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

fn max_minutes(resource: &str) -> i64 {
    let r = resource.to_ascii_lowercase();
    if r.contains("drive") || r.contains("root") {
        DRIVE_MAX_MINUTES
    } else if ["messages", "events", "contacts"]
        .iter()
        .any(|k| r.contains(k))
    {
        OUTLOOK_MAX_MINUTES
    } else {
        4_230
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

/// Graph's validation: POST `url?validationToken=T` (text/plain), expect T back as
/// text/plain with 200 within 10 s.
async fn validate(url: &str, token: &str) -> bool {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let Ok(mut u) = url::Url::parse(url) else {
        return false;
    };
    u.query_pairs_mut().append_pair("validationToken", token);
    let Ok(r) = client
        .post(u)
        .header("content-type", "text/plain; charset=utf-8")
        .send()
        .await
    else {
        return false;
    };
    let text_plain = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/plain"));
    r.status().as_u16() == 200 && text_plain && r.text().await.unwrap_or_default() == token
}

async fn create(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(token) = bearer(&headers) else {
        return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.");
    };
    if let Some(status) = s.fail_next_create.lock().unwrap().take() {
        s.calls.lock().unwrap().push(Call {
            method: "POST",
            id: None,
            token,
        });
        return graph_error(
            status,
            "ExtensionError",
            "Operation: Create; Exception: [Status Code: Forbidden; Reason: The mailbox is not enabled for subscriptions]",
        );
    }
    let Ok(mut sub) = serde_json::from_slice::<Value>(&body) else {
        return graph_error(400, "BadRequest", "The body is not JSON.");
    };
    let field = |k: &str| sub.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(change), Some(url), Some(resource), Some(expiry)) = (
        field("changeType"),
        field("notificationUrl"),
        field("resource"),
        field("expirationDateTime"),
    ) else {
        return graph_error(
            400,
            "InvalidRequest",
            "changeType, notificationUrl, resource and expirationDateTime are required.",
        );
    };
    if !change
        .split(',')
        .all(|c| matches!(c, "created" | "updated" | "deleted"))
    {
        return graph_error(400, "InvalidRequest", "Invalid changeType.");
    }
    if field("clientState").is_some_and(|c| c.len() > 128) {
        return graph_error(
            400,
            "InvalidRequest",
            "clientState is longer than 128 characters.",
        );
    }
    let Ok(expiry) = OffsetDateTime::parse(&expiry, &Rfc3339) else {
        return graph_error(400, "InvalidRequest", "expirationDateTime is not a date.");
    };
    let now = OffsetDateTime::now_utc();
    if expiry <= now || expiry > now + time::Duration::minutes(max_minutes(&resource)) {
        return graph_error(
            400,
            "ExtensionError",
            "Subscription expiration can only be 10080 minutes in the future.",
        );
    }
    // Graph validates both URLs before it makes the subscription.
    let mut urls = vec![url.clone()];
    if let Some(l) = field("lifecycleNotificationUrl")
        && l != url
    {
        urls.push(l);
    }
    for u in urls {
        let t = format!(
            "Validation: Testing client application reachability for subscription Request-Id: {}",
            flow8_host::store::new_object_id()
        );
        if !validate(&u, &t).await {
            return graph_error(
                400,
                "ValidationError",
                "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.",
            );
        }
        s.handshakes.lock().unwrap().push(u);
    }
    let id = {
        let mut c = s.counter.lock().unwrap();
        *c += 1;
        format!("7f105c7d-2dc5-4530-97cd-4e7a{:08x}", *c)
    };
    let granted = match *s.create_lifetime.lock().unwrap() {
        Some(d) => now + time::Duration::try_from(d).unwrap(),
        None => expiry,
    };
    sub["id"] = json!(id);
    sub["expirationDateTime"] = json!(rfc3339(granted));
    sub["applicationId"] = json!("24d3b144-21ae-4080-943f-7067b395b913");
    sub["creatorId"] = json!("8ee44408-0679-472c-bc2a-692812af3437");
    sub["latestSupportedTlsVersion"] = json!("v1_2");
    sub["includeResourceData"] = json!(false);
    sub["@odata.context"] =
        json!("https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity");
    s.subs.lock().unwrap().insert(
        id.clone(),
        FakeSubscription {
            id: id.clone(),
            resource: sub.clone(),
            token: token.clone(),
        },
    );
    s.calls.lock().unwrap().push(Call {
        method: "POST",
        id: Some(id),
        token,
    });
    (StatusCode::CREATED, axum::Json(sub)).into_response()
}

async fn renew(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(token) = bearer(&headers) else {
        return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.");
    };
    s.calls.lock().unwrap().push(Call {
        method: "PATCH",
        id: Some(id.clone()),
        token,
    });
    let hold = std::mem::take(&mut *s.hold_next_renewal.lock().unwrap());
    if hold {
        *s.held.lock().unwrap() += 1;
        // Unanswered until the fake stops (or a minute passes): the host that sent it
        // is killed meanwhile.
        let _ = tokio::time::timeout(Duration::from_secs(60), s.release.notified()).await;
        return graph_error(503, "ServiceNotAvailable", "held");
    }
    if let Some(status) = s.fail_next_renewal.lock().unwrap().take() {
        // Graph lost it: it is gone from the fake too.
        s.subs.lock().unwrap().remove(&id);
        return graph_error(status, "ResourceNotFound", "The object was not found.");
    }
    let Some(expiry) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["expirationDateTime"].as_str().map(str::to_string))
        .and_then(|e| OffsetDateTime::parse(&e, &Rfc3339).ok())
    else {
        return graph_error(400, "InvalidRequest", "expirationDateTime is required.");
    };
    let mut subs = s.subs.lock().unwrap();
    let Some(sub) = subs.get_mut(&id) else {
        return graph_error(404, "ResourceNotFound", "The object was not found.");
    };
    let resource = sub.resource["resource"].as_str().unwrap_or("").to_string();
    if expiry > OffsetDateTime::now_utc() + time::Duration::minutes(max_minutes(&resource)) {
        return graph_error(
            400,
            "ExtensionError",
            "Subscription expiration can only be 10080 minutes in the future.",
        );
    }
    sub.resource["expirationDateTime"] = json!(rfc3339(expiry));
    (StatusCode::OK, axum::Json(sub.resource.clone())).into_response()
}

async fn delete(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(token) = bearer(&headers) else {
        return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.");
    };
    s.calls.lock().unwrap().push(Call {
        method: "DELETE",
        id: Some(id.clone()),
        token,
    });
    match s.subs.lock().unwrap().remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => graph_error(404, "ResourceNotFound", "The object was not found."),
    }
}

impl GraphSubscriptionFake {
    /// Start on a loopback port; the API is at `base()/v1.0`.
    pub fn start() -> GraphSubscriptionFake {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/v1.0/subscriptions", post(create))
            .route("/v1.0/subscriptions/{id}", patch(renew).delete(delete))
            .with_state(shared.clone());
        let server = crate::background::BackgroundServer::start(app);
        GraphSubscriptionFake {
            addr: server.addr,
            shared,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Subscriptions made from now on expire `lifetime` after they are made, whatever
    /// was asked (so they are due for renewal at once); renewals get what they ask.
    pub fn grant_on_create(&self, lifetime: Duration) {
        *self.shared.create_lifetime.lock().unwrap() = Some(lifetime);
    }

    /// Answer the next renewal with `status` (404 or 410) and forget the subscription.
    pub fn fail_next_renewal(&self, status: u16) {
        *self.shared.fail_next_renewal.lock().unwrap() = Some(status);
    }

    /// Refuse the next creation with `status` (a Graph error body), making nothing.
    pub fn fail_next_create(&self, status: u16) {
        *self.shared.fail_next_create.lock().unwrap() = Some(status);
    }

    /// Leave the next renewal unanswered (until the fake stops).
    pub fn hold_next_renewal(&self) {
        *self.shared.hold_next_renewal.lock().unwrap() = true;
    }

    /// Renewals being held now.
    pub fn held(&self) -> u32 {
        *self.shared.held.lock().unwrap()
    }

    /// The subscriptions the fake has.
    pub fn subscriptions(&self) -> Vec<FakeSubscription> {
        self.shared.subs.lock().unwrap().values().cloned().collect()
    }

    /// Every call, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.calls.lock().unwrap().clone()
    }

    /// Calls of one method.
    pub fn calls_of(&self, method: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method)
            .collect()
    }

    /// URLs whose validation handshake passed.
    pub fn validated_urls(&self) -> Vec<String> {
        self.shared.handshakes.lock().unwrap().clone()
    }

    /// Remove a subscription as Graph does when it drops one, and send the
    /// `subscriptionRemoved` lifecycle notification (with the subscription's
    /// `clientState`) to its lifecycle URL; the HTTP status that URL answered.
    pub async fn remove_with_lifecycle(&self, id: &str) -> u16 {
        let sub = self
            .shared
            .subs
            .lock()
            .unwrap()
            .remove(id)
            .expect("the fake has that subscription");
        let r = &sub.resource;
        let url = r["lifecycleNotificationUrl"]
            .as_str()
            .or(r["notificationUrl"].as_str())
            .unwrap()
            .to_string();
        let body = json!({"value": [{
            "subscriptionId": id,
            "subscriptionExpirationDateTime": r["expirationDateTime"],
            "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
            "clientState": r["clientState"],
            "lifecycleEvent": "subscriptionRemoved",
        }]});
        reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }
}

impl Drop for GraphSubscriptionFake {
    fn drop(&mut self) {
        // A held renewal answers now, so the server can stop.
        self.shared.release.notify_waiters();
    }
}

/// A fake of Google Drive's push channels
/// (<https://developers.google.com/drive/api/guides/push>,
/// `/drive/api/reference/rest/v3/changes/watch`, `files/watch`, `channels/stop`):
/// `GET /drive/v3/changes/startPageToken`, `POST /drive/v3/changes/watch?pageToken=`,
/// `POST /drive/v3/files/{id}/watch` (body `{id, type: "web_hook", address, token,
/// expiration}`, answered with the channel: `kind: "api#channel"`, `resourceId`,
/// `resourceUri`, `expiration` in milliseconds as a string) and `POST
/// /drive/v3/channels/stop` (`{id, resourceId}`, 204, or 404 for a channel it does not
/// have). As Google does, it then sends the channel's `sync` message to the address,
/// with the channel token. Google only takes https addresses; this fake takes the
/// loopback http ones tests use.
pub struct DriveFake {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<DriveShared>,
    _server: crate::background::BackgroundServer,
}

/// A channel the Drive fake has open.
#[derive(Debug, Clone)]
pub struct Channel {
    /// The channel id the caller chose.
    pub id: String,
    /// Google's id of the watched resource.
    pub resource_id: String,
    /// Where notifications go.
    pub address: String,
    /// The token Google repeats as `X-Goog-Channel-Token`.
    pub token: String,
    /// The Bearer token that opened it.
    pub bearer: String,
}

#[derive(Default)]
struct DriveShared {
    channels: Mutex<BTreeMap<String, Channel>>,
    stopped: Mutex<Vec<String>>,
    syncs: Mutex<Vec<u16>>,
    create_lifetime: Mutex<Option<Duration>>,
    counter: Mutex<u64>,
}

fn google_error(status: u16, reason: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({"error": {"code": status, "message": message, "errors": [{"domain": "global", "reason": reason, "message": message}]}})),
    )
        .into_response()
}

async fn start_page_token(headers: HeaderMap) -> Response {
    if bearer(&headers).is_none() {
        return google_error(401, "authError", "Invalid Credentials");
    }
    axum::Json(json!({"kind": "drive#startPageToken", "startPageToken": "4711"})).into_response()
}

async fn watch(
    s: Arc<DriveShared>,
    headers: HeaderMap,
    body: Bytes,
    resource_uri: String,
    max: Duration,
) -> Response {
    let Some(token) = bearer(&headers) else {
        return google_error(401, "authError", "Invalid Credentials");
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return google_error(400, "parseError", "Parse Error");
    };
    let (Some(id), Some(address)) = (req["id"].as_str(), req["address"].as_str()) else {
        return google_error(400, "required", "Required parameter: id, address");
    };
    if req["type"] != "web_hook" {
        return google_error(400, "invalid", "Invalid value for type");
    }
    if s.channels.lock().unwrap().contains_key(id) {
        return google_error(400, "channelIdNotUnique", "Channel id not unique");
    }
    let now_ms = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let max_ms = now_ms + max.as_millis() as i128;
    let asked = req["expiration"]
        .as_str()
        .and_then(|e| e.parse::<i128>().ok())
        .unwrap_or(now_ms + 3_600_000)
        .min(max_ms);
    let granted = match s.create_lifetime.lock().unwrap().take() {
        Some(d) => now_ms + d.as_millis() as i128,
        None => asked,
    };
    let resource_id = {
        let mut c = s.counter.lock().unwrap();
        *c += 1;
        format!("o3hgv1538sdjfh{:04}", *c)
    };
    let channel = Channel {
        id: id.to_string(),
        resource_id: resource_id.clone(),
        address: address.to_string(),
        token: req["token"].as_str().unwrap_or("").to_string(),
        bearer: token,
    };
    s.channels
        .lock()
        .unwrap()
        .insert(id.to_string(), channel.clone());
    // Google's first message on a new channel.
    let shared = s.clone();
    tokio::spawn(async move {
        let status = reqwest::Client::new()
            .post(&channel.address)
            .header("x-goog-channel-id", &channel.id)
            .header("x-goog-channel-token", &channel.token)
            .header("x-goog-resource-id", &channel.resource_id)
            .header("x-goog-resource-state", "sync")
            .header("x-goog-message-number", "1")
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        shared.syncs.lock().unwrap().push(status);
    });
    axum::Json(json!({
        "kind": "api#channel",
        "id": id,
        "resourceId": resource_id,
        "resourceUri": resource_uri,
        "token": req["token"],
        "expiration": granted.to_string(),
    }))
    .into_response()
}

async fn changes_watch(
    State(s): State<Arc<DriveShared>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = query.as_deref().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "pageToken")
            .map(|(_, v)| v.into_owned())
    });
    let Some(page) = token else {
        return google_error(400, "required", "Required parameter: pageToken");
    };
    let uri = format!("https://www.googleapis.com/drive/v3/changes?alt=json&pageToken={page}");
    watch(s, headers, body, uri, Duration::from_secs(604_800)).await
}

async fn file_watch(
    State(s): State<Arc<DriveShared>>,
    Path(file): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let uri = format!("https://www.googleapis.com/drive/v3/files/{file}?alt=json");
    watch(s, headers, body, uri, Duration::from_secs(86_400)).await
}

async fn stop(State(s): State<Arc<DriveShared>>, headers: HeaderMap, body: Bytes) -> Response {
    if bearer(&headers).is_none() {
        return google_error(401, "authError", "Invalid Credentials");
    }
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (Some(id), Some(rid)) = (req["id"].as_str(), req["resourceId"].as_str()) else {
        return google_error(400, "required", "Required parameter: id, resourceId");
    };
    let mut channels = s.channels.lock().unwrap();
    match channels.get(id) {
        Some(c) if c.resource_id == rid => {
            channels.remove(id);
            s.stopped.lock().unwrap().push(id.to_string());
            StatusCode::NO_CONTENT.into_response()
        }
        _ => google_error(404, "notFound", "Channel not found"),
    }
}

impl DriveFake {
    /// Start on a loopback port; the API is at `base()` (`/drive/v3/...`).
    pub fn start() -> DriveFake {
        let shared = Arc::new(DriveShared::default());
        let app = Router::new()
            .route(
                "/drive/v3/changes/startPageToken",
                axum::routing::get(start_page_token),
            )
            .route("/drive/v3/changes/watch", post(changes_watch))
            .route("/drive/v3/files/{file}/watch", post(file_watch))
            .route("/drive/v3/channels/stop", post(stop))
            .with_state(shared.clone());
        let server = crate::background::BackgroundServer::start(app);
        DriveFake {
            addr: server.addr,
            shared,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next channel opened expires `lifetime` after it is opened (so it is due for
    /// renewal at once); the ones after get what they ask.
    pub fn grant_next(&self, lifetime: Duration) {
        *self.shared.create_lifetime.lock().unwrap() = Some(lifetime);
    }

    /// The channels open now.
    pub fn channels(&self) -> Vec<Channel> {
        self.shared
            .channels
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect()
    }

    /// Channels stopped, in order.
    pub fn stopped(&self) -> Vec<String> {
        self.shared.stopped.lock().unwrap().clone()
    }

    /// The statuses the address answered to each channel's `sync` message.
    pub fn sync_answers(&self) -> Vec<u16> {
        self.shared.syncs.lock().unwrap().clone()
    }
}
