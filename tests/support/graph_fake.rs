//! A fake of Microsoft Graph v1.0, for tests only (Graph has no local server). It follows
//! Graph's documented request and response shapes, resource by resource (each section
//! below names its page on learn.microsoft.com/graph/api):
//!
//! - **calendar**: `POST /me/events` (user-post-events), the event answered with 201;
//! - **mail**: `POST /me/sendMail` (user-sendmail, 202), drafts `POST /me/messages`,
//!   their attachments `POST /me/messages/{id}/attachments`, attachment upload sessions
//!   `POST .../attachments/createUploadSession` (attachment-createuploadsession) and
//!   `POST /me/messages/{id}/send`; the delta query
//!   `GET /me/mailFolders/{id}/messages/delta` (message-delta) with `$select`,
//!   `Prefer: odata.maxpagesize`, `@odata.nextLink` and `@odata.deltaLink`, `@removed`;
//! - **contacts**: `GET /me/contacts` (user-list-contacts) with `$top`, `$select`, `$skip`
//!   paging;
//! - **drive**: `GET /me/drive/root:/{path}:/content` and `/me/drive/items/{id}/content`
//!   answered `302` to a pre-authenticated download URL on *another* host (the fake's
//!   second listener, `transfer_base()`), `PUT .../content` (driveitem-put-content) and
//!   `POST .../createUploadSession` (driveitem-createuploadsession) whose `uploadUrl` is
//!   on that other host and takes `Content-Range` chunks that are multiples of 320 KiB.
//!
//! Every Graph call must carry `Authorization: Bearer <JWT>` whose `scp` claim (the
//! delegated permissions, space-separated, as Microsoft's access tokens carry them)
//! grants the endpoint; otherwise 401 `InvalidAuthenticationToken` or 403
//! `ErrorAccessDenied`. The pre-authenticated URLs refuse a request that carries an
//! `Authorization` header (401), as Graph documents ("don't include it"). Errors are
//! `{"error": {"code", "message"}}`; 429 and 503 carry `Retry-After`
//! (learn.microsoft.com/graph/throttling). Every request to either host is recorded
//! (`requests()`), and the next Graph calls can be told to fail (`inject`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

/// An injected answer for the next Graph call: status and optional Retry-After.
#[derive(Debug, Clone, Copy)]
pub struct GraphFailure {
    /// HTTP status (401, 403, 404, 429, 5xx).
    pub status: u16,
    /// Retry-After seconds.
    pub retry_after: Option<u32>,
}

impl GraphFailure {
    /// A failure without Retry-After.
    pub fn status(status: u16) -> GraphFailure {
        GraphFailure {
            status,
            retry_after: None,
        }
    }
}

/// Which of the fake's two hosts a request reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphHost {
    /// `graph.microsoft.com`.
    Graph,
    /// The pre-authenticated download and upload URLs' host (SharePoint, 1drv.com,
    /// outlook.office.com in production).
    Transfer,
}

/// A request as the fake received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Which host.
    pub host: GraphHost,
    /// Method.
    pub method: String,
    /// The path as sent (percent-encoding kept).
    pub path: String,
    /// The raw query, when there was one.
    pub query: Option<String>,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The query's parameters, decoded.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.query
            .as_deref()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// An attachment of a sent message, its bytes decoded.
#[derive(Debug, Clone)]
pub struct SentAttachment {
    /// `name`.
    pub name: String,
    /// `contentType`.
    pub content_type: String,
    /// The bytes (from `contentBytes`, or the upload session's chunks).
    pub bytes: Vec<u8>,
    /// `inline` or `upload_session`.
    pub how: &'static str,
}

/// A message Graph accepted for sending.
#[derive(Debug, Clone)]
pub struct SentMail {
    /// The message resource as received (`contentBytes` left in).
    pub message: Value,
    /// `saveToSentItems` (true for a sent draft).
    pub save_to_sent_items: bool,
    /// `sendMail` or `draft`.
    pub via: &'static str,
    /// Its attachments.
    pub attachments: Vec<SentAttachment>,
}

#[derive(Default)]
struct Draft {
    message: Value,
    attachments: Vec<SentAttachment>,
}

/// An upload session in progress (drive or Outlook attachment).
struct Session {
    size: u64,
    received: Vec<u8>,
    target: SessionTarget,
}

enum SessionTarget {
    Drive {
        path: String,
    },
    Attachment {
        draft: String,
        name: String,
        content_type: String,
    },
}

#[derive(Clone)]
struct MailItem {
    id: String,
    /// The change number of its last change.
    seq: u64,
    /// The message, or `None` once removed (a tombstone for delta queries).
    message: Option<Value>,
}

/// A page of a delta query or a listing still to be read (`$skiptoken`).
struct Pending {
    items: Vec<Value>,
    watermark: u64,
    folder: String,
}

#[derive(Default)]
struct Shared {
    graph_base: OnceLock<String>,
    transfer_base: OnceLock<String>,
    inject: Mutex<VecDeque<GraphFailure>>,
    received: Mutex<Vec<Received>>,
    events: Mutex<Vec<(String, Value)>>,
    sent: Mutex<Vec<SentMail>>,
    drafts: Mutex<BTreeMap<String, Draft>>,
    sessions: Mutex<BTreeMap<String, Session>>,
    folders: Mutex<BTreeMap<String, Vec<MailItem>>>,
    change: Mutex<u64>,
    pending: Mutex<BTreeMap<String, Pending>>,
    contacts: Mutex<Vec<Value>>,
    /// path (decoded, `/Documents/a.txt`) → (item id, bytes)
    drive: Mutex<BTreeMap<String, (String, Vec<u8>)>>,
    /// download token → item id
    downloads: Mutex<BTreeMap<String, String>>,
    counter: Mutex<u64>,
}

impl Shared {
    fn next(&self) -> u64 {
        let mut c = self.counter.lock().unwrap();
        *c += 1;
        *c
    }

    fn graph(&self) -> &str {
        self.graph_base.get().map(String::as_str).unwrap_or("")
    }

    fn transfer(&self) -> &str {
        self.transfer_base.get().map(String::as_str).unwrap_or("")
    }
}

/// The fake; stops when dropped.
pub struct GraphFake {
    /// Where Graph listens.
    pub addr: SocketAddr,
    /// Where the pre-authenticated URLs point (another origin).
    pub transfer_addr: SocketAddr,
    shared: Arc<Shared>,
    _server: crate::background::BackgroundServer,
    _transfer: crate::background::BackgroundServer,
}

fn graph_error(status: u16, code: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(json!({"error": {"code": code, "message": message, "innerError": {"request-id": "00000000-0000-0000-0000-000000000000"}}})),
    )
        .into_response()
}

fn json_answer(status: u16, value: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        axum::Json(value),
    )
        .into_response()
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The permissions in a JWT's `scp` claim (none when it is not a JWT or has none).
fn granted_scopes(token: &str) -> Option<Vec<String>> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    Some(
        claims["scp"]
            .as_str()
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    )
}

/// What a Graph request is, by method and path (below `/v1.0`), and the permissions
/// any one of which lets a token call it.
#[derive(Debug)]
enum Route {
    CreateEvent,
    SendMail,
    CreateDraft,
    AddAttachment(String),
    AttachmentSession(String),
    SendDraft(String),
    MessagesDelta(String),
    Contacts,
    DriveContent(DriveItem),
    DrivePut(String),
    DriveSession(String),
}

#[derive(Debug)]
enum DriveItem {
    Path(String),
    Id(String),
}

impl Route {
    fn parse(method: &Method, path: &str) -> Option<Route> {
        let rest = path.strip_prefix("/v1.0")?;
        let segs: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        let m = method.as_str();
        // Drive path addressing: /me/drive/root:/a/b.txt:/content
        if let Some(addr) = rest.strip_prefix("/me/drive/root:") {
            let (item, action) = addr.rsplit_once(':')?;
            let item = percent_decode(item);
            return match (m, action) {
                ("GET", "/content") => Some(Route::DriveContent(DriveItem::Path(item))),
                ("PUT", "/content") => Some(Route::DrivePut(item)),
                ("POST", "/createUploadSession") => Some(Route::DriveSession(item)),
                _ => None,
            };
        }
        match (m, segs.as_slice()) {
            ("POST", ["me", "events"]) => Some(Route::CreateEvent),
            ("POST", ["me", "sendMail"]) => Some(Route::SendMail),
            ("POST", ["me", "messages"]) => Some(Route::CreateDraft),
            ("POST", ["me", "messages", id, "attachments"]) => {
                Some(Route::AddAttachment(percent_decode(id)))
            }
            ("POST", ["me", "messages", id, "attachments", "createUploadSession"]) => {
                Some(Route::AttachmentSession(percent_decode(id)))
            }
            ("POST", ["me", "messages", id, "send"]) => Some(Route::SendDraft(percent_decode(id))),
            ("GET", ["me", "mailFolders", folder, "messages", "delta"]) => Some(
                Route::MessagesDelta(percent_decode(folder).to_ascii_lowercase()),
            ),
            ("GET", ["me", "contacts"]) => Some(Route::Contacts),
            ("GET", ["me", "drive", "items", id, "content"]) => {
                Some(Route::DriveContent(DriveItem::Id(percent_decode(id))))
            }
            _ => None,
        }
    }

    /// Delegated permissions, any one of which grants the call (each API page's
    /// "Permissions" table, least privileged first).
    fn permissions(&self) -> &'static [&'static str] {
        match self {
            Route::CreateEvent => &["Calendars.ReadWrite"],
            Route::SendMail | Route::SendDraft(_) => &["Mail.Send"],
            Route::CreateDraft | Route::AddAttachment(_) | Route::AttachmentSession(_) => {
                &["Mail.ReadWrite"]
            }
            Route::MessagesDelta(_) => &["Mail.ReadBasic", "Mail.Read", "Mail.ReadWrite"],
            Route::Contacts => &["Contacts.Read", "Contacts.ReadWrite"],
            Route::DriveContent(_) => &[
                "Files.Read",
                "Files.ReadWrite",
                "Files.Read.All",
                "Files.ReadWrite.All",
            ],
            Route::DrivePut(_) | Route::DriveSession(_) => {
                &["Files.ReadWrite", "Files.ReadWrite.All"]
            }
        }
    }

    /// Drive (OneDrive) answers use its own error codes; Exchange's start with `Error`.
    fn is_drive(&self) -> bool {
        matches!(
            self,
            Route::DriveContent(_) | Route::DrivePut(_) | Route::DriveSession(_)
        )
    }
}

fn record(
    s: &Shared,
    host: GraphHost,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) {
    s.received.lock().unwrap().push(Received {
        host,
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    });
}

async fn graph(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&s, GraphHost::Graph, &method, &uri, &headers, &body);
    let Some(route) = Route::parse(&method, uri.path()) else {
        return graph_error(
            400,
            "BadRequest",
            &format!("Resource not found for the segment '{}'.", uri.path()),
        );
    };
    let Some(token) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
    else {
        return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.");
    };
    let Some(scopes) = granted_scopes(&token) else {
        return graph_error(
            401,
            "InvalidAuthenticationToken",
            "IDX14100: JWT is not well formed.",
        );
    };
    let drive = route.is_drive();
    if let Some(f) = s.inject.lock().unwrap().pop_front() {
        let mut resp = match f.status {
            401 => graph_error(
                401,
                "InvalidAuthenticationToken",
                "Access token has expired or is not yet valid.",
            ),
            403 if drive => graph_error(403, "accessDenied", "Access denied"),
            403 => graph_error(
                403,
                "ErrorAccessDenied",
                "Access is denied. Check credentials and try again.",
            ),
            404 if drive => graph_error(404, "itemNotFound", "The resource could not be found."),
            404 => graph_error(
                404,
                "ErrorItemNotFound",
                "The specified object was not found in the store.",
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
    if !route
        .permissions()
        .iter()
        .any(|p| scopes.iter().any(|g| g == p))
    {
        return if drive {
            graph_error(403, "accessDenied", "Access denied")
        } else {
            graph_error(
                403,
                "ErrorAccessDenied",
                "Access is denied. Check credentials and try again.",
            )
        };
    }
    match route {
        Route::CreateEvent => calendar::create_event(&s, token, &body),
        Route::SendMail => mail::send_mail(&s, &body),
        Route::CreateDraft => mail::create_draft(&s, &body),
        Route::AddAttachment(id) => mail::add_attachment(&s, &id, &body),
        Route::AttachmentSession(id) => mail::attachment_session(&s, &id, &body),
        Route::SendDraft(id) => mail::send_draft(&s, &id),
        Route::MessagesDelta(folder) => mail::delta(&s, &folder, &uri, &headers),
        Route::Contacts => contacts::list(&s, &uri),
        Route::DriveContent(item) => drive::content(&s, item),
        Route::DrivePut(path) => drive::put(&s, &path, &uri, body.to_vec()),
        Route::DriveSession(path) => drive::create_session(&s, &path),
    }
}

/// The second host: pre-authenticated download URLs and upload-session URLs.
async fn transfer(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&s, GraphHost::Transfer, &method, &uri, &headers, &body);
    if headers.contains_key("authorization") {
        // Graph: "Don't include an Authorization header ... it might result in an HTTP
        // 401": the URL carries its own authorization.
        return graph_error(
            401,
            "unauthenticated",
            "The pre-authenticated URL does not take an Authorization header.",
        );
    }
    let segs: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    match (method.as_str(), segs.as_slice()) {
        ("GET", ["download", id]) => drive::download(&s, id, &uri),
        ("PUT", ["upload", session]) | ("PUT", ["outlook", session]) => {
            sessions::put_chunk(&s, session, &headers, body.to_vec())
        }
        _ => graph_error(404, "itemNotFound", "The resource could not be found."),
    }
}

mod calendar {
    //! `POST /me/events` (learn.microsoft.com/graph/api/user-post-events).
    use super::*;

    pub(super) fn create_event(s: &Shared, token: String, body: &[u8]) -> Response {
        let Ok(event) = serde_json::from_slice::<Value>(body) else {
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
        json_answer(201, answer)
    }
}

mod mail {
    //! Sending (user-sendmail), drafts and their attachments (user-post-messages,
    //! message-post-attachments, attachment-createuploadsession, message-send), and the
    //! delta query of a folder's messages (message-delta).
    use super::*;

    /// A refusal, made a Graph error answer by whoever returns it (a small error type:
    /// a `Response` is large).
    pub(super) struct Refusal(&'static str, &'static str);

    impl Refusal {
        fn answer(self) -> Response {
            graph_error(400, self.0, self.1)
        }
    }

    fn check_recipients(message: &Value) -> Result<(), Refusal> {
        for field in ["toRecipients", "ccRecipients", "bccRecipients", "replyTo"] {
            for r in message[field].as_array().into_iter().flatten() {
                let ok = r["emailAddress"]["address"]
                    .as_str()
                    .is_some_and(|a| a.contains('@'));
                if !ok {
                    return Err(Refusal(
                        "ErrorInvalidRecipients",
                        "At least one recipient is not valid.",
                    ));
                }
            }
        }
        Ok(())
    }

    fn file_attachment(a: &Value) -> Result<SentAttachment, Refusal> {
        if a["@odata.type"] != "#microsoft.graph.fileAttachment" {
            return Err(Refusal(
                "ErrorInvalidRequest",
                "Only #microsoft.graph.fileAttachment is accepted here.",
            ));
        }
        let bytes = a["contentBytes"]
            .as_str()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .ok_or(Refusal(
                "ErrorInvalidRequest",
                "contentBytes is not base64.",
            ))?;
        Ok(SentAttachment {
            name: a["name"].as_str().unwrap_or_default().to_string(),
            content_type: a["contentType"].as_str().unwrap_or_default().to_string(),
            bytes,
            how: "inline",
        })
    }

    pub(super) fn send_mail(s: &Shared, body: &[u8]) -> Response {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return graph_error(400, "RequestBodyRead", "The body is not JSON.");
        };
        let message = &v["message"];
        if !message.is_object() {
            return graph_error(400, "ErrorInvalidRequest", "message is required.");
        }
        if let Err(r) = check_recipients(message) {
            return r.answer();
        }
        let mut attachments = Vec::new();
        for a in message["attachments"].as_array().into_iter().flatten() {
            match file_attachment(a) {
                Ok(a) => attachments.push(a),
                Err(r) => return r.answer(),
            }
        }
        s.sent.lock().unwrap().push(SentMail {
            message: message.clone(),
            save_to_sent_items: v["saveToSentItems"].as_bool().unwrap_or(true),
            via: "sendMail",
            attachments,
        });
        StatusCode::ACCEPTED.into_response()
    }

    pub(super) fn create_draft(s: &Shared, body: &[u8]) -> Response {
        let Ok(mut message) = serde_json::from_slice::<Value>(body) else {
            return graph_error(400, "RequestBodyRead", "The body is not JSON.");
        };
        if let Err(r) = check_recipients(&message) {
            return r.answer();
        }
        let id = format!("AAMkADraft{:04}=", s.next());
        let mut attachments = Vec::new();
        for a in message["attachments"].as_array().into_iter().flatten() {
            match file_attachment(a) {
                Ok(a) => attachments.push(a),
                Err(r) => return r.answer(),
            }
        }
        message["id"] = json!(id);
        message["isDraft"] = json!(true);
        s.drafts.lock().unwrap().insert(
            id.clone(),
            Draft {
                message: message.clone(),
                attachments,
            },
        );
        json_answer(201, message)
    }

    pub(super) fn add_attachment(s: &Shared, id: &str, body: &[u8]) -> Response {
        let Ok(a) = serde_json::from_slice::<Value>(body) else {
            return graph_error(400, "RequestBodyRead", "The body is not JSON.");
        };
        let mut drafts = s.drafts.lock().unwrap();
        let Some(draft) = drafts.get_mut(id) else {
            return graph_error(
                404,
                "ErrorItemNotFound",
                "The specified object was not found in the store.",
            );
        };
        match file_attachment(&a) {
            Ok(att) => {
                let size = att.bytes.len();
                draft.attachments.push(att);
                json_answer(
                    201,
                    json!({"id": format!("AAMkAtt{}", s.next()), "name": a["name"], "size": size}),
                )
            }
            Err(r) => r.answer(),
        }
    }

    pub(super) fn attachment_session(s: &Shared, id: &str, body: &[u8]) -> Response {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return graph_error(400, "RequestBodyRead", "The body is not JSON.");
        };
        if !s.drafts.lock().unwrap().contains_key(id) {
            return graph_error(
                404,
                "ErrorItemNotFound",
                "The specified object was not found in the store.",
            );
        }
        let item = &v["AttachmentItem"];
        let (Some("file"), Some(name), Some(size)) = (
            item["attachmentType"].as_str(),
            item["name"].as_str(),
            item["size"].as_u64(),
        ) else {
            return graph_error(
                400,
                "ErrorInvalidRequest",
                "AttachmentItem needs attachmentType file, name and size.",
            );
        };
        let session = format!("att{}", s.next());
        s.sessions.lock().unwrap().insert(
            session.clone(),
            Session {
                size,
                received: Vec::new(),
                target: SessionTarget::Attachment {
                    draft: id.to_string(),
                    name: name.to_string(),
                    content_type: item["contentType"]
                        .as_str()
                        .unwrap_or("application/octet-stream")
                        .to_string(),
                },
            },
        );
        json_answer(
            201,
            json!({
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.uploadSession",
                "uploadUrl": format!("{}/outlook/{session}?authtoken=eyJhbGciOiJSUzI1NiIsImtpZCI6IjFTeXQ1bXdXYVh5UFJ", s.transfer()),
                "expirationDateTime": "2030-01-01T00:00:00Z",
                "nextExpectedRanges": ["0-"]
            }),
        )
    }

    pub(super) fn send_draft(s: &Shared, id: &str) -> Response {
        let Some(draft) = s.drafts.lock().unwrap().remove(id) else {
            return graph_error(
                404,
                "ErrorItemNotFound",
                "The specified object was not found in the store.",
            );
        };
        s.sent.lock().unwrap().push(SentMail {
            message: draft.message,
            save_to_sent_items: true,
            via: "draft",
            attachments: draft.attachments,
        });
        StatusCode::ACCEPTED.into_response()
    }

    fn select(message: &Value, fields: &Option<Vec<String>>) -> Value {
        let Some(fields) = fields else {
            return message.clone();
        };
        let mut out = serde_json::Map::new();
        out.insert("@odata.type".into(), json!("#microsoft.graph.message"));
        for (k, v) in message.as_object().into_iter().flatten() {
            if k == "id" || fields.iter().any(|f| f.eq_ignore_ascii_case(k)) {
                out.insert(k.clone(), v.clone());
            }
        }
        Value::Object(out)
    }

    /// `$skiptoken` pages of a delta round, then its `$deltatoken` (the change number
    /// it saw up to).
    pub(super) fn delta(s: &Shared, folder: &str, uri: &Uri, headers: &HeaderMap) -> Response {
        let pairs: Vec<(String, String)> = uri
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let page_size = headers
            .get("prefer")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split(',')
                    .find_map(|p| p.trim().strip_prefix("odata.maxpagesize="))
            })
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(10)
            .max(1);
        let link = |q: &str| format!("{}/me/mailFolders/{folder}/messages/delta?{q}", s.graph());
        let key = match get("$skiptoken") {
            Some(t) => t,
            None => {
                let since = match get("$deltatoken") {
                    Some(t) => match t.strip_prefix('d').and_then(|n| n.parse::<u64>().ok()) {
                        Some(n) => n,
                        None => {
                            return graph_error(
                                400,
                                "SyncStateInvalid",
                                "The sync state is not valid.",
                            );
                        }
                    },
                    None => 0,
                };
                let fields = get("$select").map(|f| {
                    f.split(',')
                        .map(|x| x.trim().to_string())
                        .collect::<Vec<_>>()
                });
                let watermark = *s.change.lock().unwrap();
                let folders = s.folders.lock().unwrap();
                let items: Vec<Value> = folders
                    .get(folder)
                    .into_iter()
                    .flatten()
                    .filter(|m| m.seq > since)
                    .filter_map(|m| match &m.message {
                        Some(msg) => Some(select(msg, &fields)),
                        // A message removed before the first round is not reported.
                        None if since > 0 => Some(json!({
                            "@odata.type": "#microsoft.graph.message",
                            "id": m.id,
                            "@removed": {"reason": "deleted"}
                        })),
                        None => None,
                    })
                    .collect();
                let key = format!("s{}", s.next());
                s.pending.lock().unwrap().insert(
                    key.clone(),
                    Pending {
                        items,
                        watermark,
                        folder: folder.to_string(),
                    },
                );
                key
            }
        };
        let mut pending = s.pending.lock().unwrap();
        let Some(p) = pending.get_mut(&key) else {
            return graph_error(400, "SyncStateNotFound", "The sync state was not found.");
        };
        if p.folder != folder {
            return graph_error(
                400,
                "SyncStateInvalid",
                "The sync state is for another folder.",
            );
        }
        let take = page_size.min(p.items.len());
        let page: Vec<Value> = p.items.drain(..take).collect();
        let mut answer = json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(message)",
            "value": page,
        });
        if p.items.is_empty() {
            answer["@odata.deltaLink"] = json!(link(&format!("%24deltatoken=d{}", p.watermark)));
            pending.remove(&key);
        } else {
            answer["@odata.nextLink"] = json!(link(&format!("%24skiptoken={key}")));
        }
        json_answer(200, answer)
    }
}

mod contacts {
    //! `GET /me/contacts` (user-list-contacts): `$top` (default 10), `$select`, and
    //! `$skip` in the `@odata.nextLink`.
    use super::*;

    pub(super) fn list(s: &Shared, uri: &Uri) -> Response {
        let pairs: Vec<(String, String)> = uri
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let top = match get("$top").map(|t| t.parse::<usize>()) {
            None => 10,
            Some(Ok(t)) if (1..=1000).contains(&t) => t,
            Some(_) => {
                return graph_error(400, "ErrorInvalidUrlQuery", "$top is not valid.");
            }
        };
        let skip = get("$skip")
            .and_then(|t| t.parse::<usize>().ok())
            .unwrap_or(0);
        let fields = get("$select").map(|f| {
            f.split(',')
                .map(|x| x.trim().to_string())
                .collect::<Vec<_>>()
        });
        let all = s.contacts.lock().unwrap();
        let page: Vec<Value> = all
            .iter()
            .skip(skip)
            .take(top)
            .map(|c| match &fields {
                None => c.clone(),
                Some(f) => Value::Object(
                    c.as_object()
                        .into_iter()
                        .flatten()
                        .filter(|(k, _)| *k == "id" || f.iter().any(|x| x.eq_ignore_ascii_case(k)))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
            })
            .collect();
        let mut answer = json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users('me')/contacts",
            "value": page,
        });
        if skip + top < all.len() {
            let mut q = format!("%24top={top}&%24skip={}", skip + top);
            if let Some(sel) = get("$select") {
                q.push_str(&format!("&%24select={}", sel));
            }
            answer["@odata.nextLink"] = json!(format!("{}/me/contacts?{q}", s.graph()));
        }
        json_answer(200, answer)
    }
}

mod drive {
    //! OneDrive items by path or id: downloads answered `302` to a pre-authenticated
    //! URL on the other host (driveitem-get-content), simple uploads
    //! (driveitem-put-content) and upload sessions (driveitem-createuploadsession).
    use super::*;

    pub(super) fn item_json(s: &Shared, path: &str, id: &str, size: usize) -> Value {
        let name = path.rsplit('/').next().unwrap_or_default();
        json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#drives('b!x')/items/$entity",
            "id": id,
            "name": name,
            "size": size,
            "webUrl": format!("https://contoso-my.sharepoint.com/personal/me/Documents{path}"),
            "file": {"mimeType": "application/octet-stream"},
            "parentReference": {"driveId": "b!x", "path": "/drive/root:"},
            "@microsoft.graph.downloadUrl": format!("{}/download/{id}", s.transfer()),
        })
    }

    pub(super) fn content(s: &Shared, item: DriveItem) -> Response {
        let drive = s.drive.lock().unwrap();
        let id = match &item {
            DriveItem::Path(p) => drive.get(p).map(|(id, _)| id.clone()),
            DriveItem::Id(id) => drive.values().any(|(i, _)| i == id).then(|| id.clone()),
        };
        let Some(id) = id else {
            return graph_error(404, "itemNotFound", "The resource could not be found.");
        };
        let token = format!("t{}x{}", s.next(), id.len());
        s.downloads
            .lock()
            .unwrap()
            .insert(token.clone(), id.clone());
        (
            StatusCode::FOUND,
            [(
                "location",
                format!("{}/download/{id}?tempauth={token}", s.transfer()),
            )],
        )
            .into_response()
    }

    pub(super) fn download(s: &Shared, id: &str, uri: &Uri) -> Response {
        let token = uri
            .query()
            .and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "tempauth")
                    .map(|(_, v)| v.into_owned())
            })
            .unwrap_or_default();
        let valid = s
            .downloads
            .lock()
            .unwrap()
            .get(&token)
            .is_some_and(|i| i == id);
        if !valid {
            return graph_error(401, "unauthenticated", "The tempauth token is not valid.");
        }
        let drive = s.drive.lock().unwrap();
        let Some((_, bytes)) = drive.values().find(|(i, _)| i == id) else {
            return graph_error(404, "itemNotFound", "The resource could not be found.");
        };
        (
            StatusCode::OK,
            [("content-type", "application/octet-stream")],
            bytes.clone(),
        )
            .into_response()
    }

    pub(super) fn put(s: &Shared, path: &str, uri: &Uri, bytes: Vec<u8>) -> Response {
        let conflict = uri
            .query()
            .and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "@microsoft.graph.conflictBehavior")
                    .map(|(_, v)| v.into_owned())
            })
            .unwrap_or_else(|| "replace".into());
        let mut drive = s.drive.lock().unwrap();
        let existed = drive.contains_key(path);
        if existed && conflict == "fail" {
            return graph_error(
                409,
                "nameAlreadyExists",
                "The specified item name already exists.",
            );
        }
        let id = drive
            .get(path)
            .map(|(id, _)| id.clone())
            .unwrap_or_else(|| format!("01BYE5RZ{:04}", s.next()));
        let size = bytes.len();
        drive.insert(path.to_string(), (id.clone(), bytes));
        json_answer(
            if existed { 200 } else { 201 },
            item_json(s, path, &id, size),
        )
    }

    pub(super) fn create_session(s: &Shared, path: &str) -> Response {
        let session = format!("up{}", s.next());
        s.sessions.lock().unwrap().insert(
            session.clone(),
            Session {
                size: 0,
                received: Vec::new(),
                target: SessionTarget::Drive {
                    path: path.to_string(),
                },
            },
        );
        json_answer(
            200,
            json!({
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.uploadSession",
                "uploadUrl": format!("{}/upload/{session}", s.transfer()),
                "expirationDateTime": "2030-01-01T00:00:00Z",
                "nextExpectedRanges": ["0-"]
            }),
        )
    }
}

mod sessions {
    //! Chunks `PUT` to an upload session's URL: `Content-Range: bytes a-b/total`, in
    //! order, each (but the last) a multiple of 320 KiB for a drive
    //! (driveitem-createuploadsession: "MUST be a multiple of 320 KiB"), at most 4 MB for
    //! an Outlook attachment (outlook-large-attachments). Intermediate answers: 202 with
    //! `nextExpectedRanges` ["n-"] (drive) or 200 with ["n"] (Outlook); the last: the
    //! driveItem (201) or 201 with no body.
    use super::*;

    const UNIT: u64 = 320 * 1024;

    fn parse_range(v: &str) -> Option<(u64, u64, u64)> {
        let rest = v.strip_prefix("bytes ")?;
        let (range, total) = rest.split_once('/')?;
        let (a, b) = range.split_once('-')?;
        Some((a.parse().ok()?, b.parse().ok()?, total.parse().ok()?))
    }

    pub(super) fn put_chunk(
        s: &Shared,
        session: &str,
        headers: &HeaderMap,
        body: Vec<u8>,
    ) -> Response {
        let Some((start, end, total)) = headers
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_range)
        else {
            return graph_error(
                400,
                "invalidRequest",
                "Content-Range is missing or not valid.",
            );
        };
        let length = headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut sessions = s.sessions.lock().unwrap();
        let Some(sess) = sessions.get_mut(session) else {
            return graph_error(404, "itemNotFound", "The upload session was not found.");
        };
        let is_drive = matches!(sess.target, SessionTarget::Drive { .. });
        if sess.size == 0 {
            sess.size = total;
        }
        let n = end.checked_sub(start).map(|d| d + 1);
        if total != sess.size
            || n != Some(body.len() as u64)
            || length != Some(body.len() as u64)
            || start != sess.received.len() as u64
            || end >= total
        {
            return graph_error(
                416,
                "invalidRange",
                "The Content-Range does not match the bytes expected.",
            );
        }
        let last = end + 1 == total;
        if is_drive && !last && !(body.len() as u64).is_multiple_of(UNIT) {
            return graph_error(
                400,
                "invalidRange",
                "A fragment must be a multiple of 320 KiB.",
            );
        }
        if !is_drive && body.len() > 4 * 1024 * 1024 {
            return graph_error(400, "ErrorInvalidRequest", "A chunk is at most 4 MB.");
        }
        sess.received.extend_from_slice(&body);
        if !last {
            let next = sess.received.len();
            let range = if is_drive {
                format!("{next}-")
            } else {
                next.to_string()
            };
            return json_answer(
                if is_drive { 202 } else { 200 },
                json!({"expirationDateTime": "2030-01-01T00:00:00Z", "nextExpectedRanges": [range]}),
            );
        }
        let Some(done) = sessions.remove(session) else {
            return graph_error(404, "itemNotFound", "The upload session was not found.");
        };
        drop(sessions);
        match done.target {
            SessionTarget::Drive { path } => {
                let mut drive = s.drive.lock().unwrap();
                let id = drive
                    .get(&path)
                    .map(|(id, _)| id.clone())
                    .unwrap_or_else(|| format!("01BYE5RZ{:04}", s.next()));
                let size = done.received.len();
                drive.insert(path.clone(), (id.clone(), done.received));
                drop(drive);
                json_answer(201, drive::item_json(s, &path, &id, size))
            }
            SessionTarget::Attachment {
                draft,
                name,
                content_type,
            } => {
                let mut drafts = s.drafts.lock().unwrap();
                let Some(d) = drafts.get_mut(&draft) else {
                    return graph_error(404, "ErrorItemNotFound", "The draft is gone.");
                };
                d.attachments.push(SentAttachment {
                    name,
                    content_type,
                    bytes: done.received,
                    how: "upload_session",
                });
                StatusCode::CREATED.into_response()
            }
        }
    }
}

impl GraphFake {
    /// Start Graph (at `base()/v1.0`) and its pre-authenticated URLs' host
    /// (`transfer_base()`), each on its own loopback port: two origins, as in
    /// production.
    pub fn start() -> GraphFake {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .fallback(graph)
            .layer(DefaultBodyLimit::disable())
            .with_state(shared.clone());
        let server = crate::background::BackgroundServer::start(app);
        let transfer_app = Router::new()
            .fallback(transfer)
            .layer(DefaultBodyLimit::disable())
            .with_state(shared.clone());
        let transfer_server = crate::background::BackgroundServer::start(transfer_app);
        let _ = shared
            .graph_base
            .set(format!("http://{}/v1.0", server.addr));
        let _ = shared
            .transfer_base
            .set(format!("http://{}", transfer_server.addr));
        GraphFake {
            addr: server.addr,
            transfer_addr: transfer_server.addr,
            shared,
            _server: server,
            _transfer: transfer_server,
        }
    }

    /// `http://127.0.0.1:PORT` (Graph's API is below it at `/v1.0`).
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The other host: `http://127.0.0.1:PORT2` (for `transfer_hosts`).
    pub fn transfer_base(&self) -> String {
        format!("http://{}", self.transfer_addr)
    }

    /// The `oauth2.microsoft` config lines that point the host at this fake:
    /// `api_base_url`, `api_hosts` and `transfer_hosts`, indented for the block.
    pub fn provider_config(&self) -> String {
        format!(
            "    api_base_url: {}/v1.0\n    api_hosts: ['{}']\n    transfer_hosts: ['{}']\n",
            self.base(),
            self.base(),
            self.transfer_base()
        )
    }

    /// Every request either host received, in order.
    pub fn requests(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Forget the requests recorded so far.
    pub fn clear_requests(&self) {
        self.shared.received.lock().unwrap().clear();
    }

    /// Events created, with the token each came with.
    pub fn events(&self) -> Vec<(String, Value)> {
        self.shared.events.lock().unwrap().clone()
    }

    /// Fail the next Graph calls (after their token is read; the pre-authenticated
    /// host is not affected).
    pub fn inject(&self, failures: impl IntoIterator<Item = GraphFailure>) {
        self.shared.inject.lock().unwrap().extend(failures);
    }

    // --- mail ---

    /// Messages Graph accepted for sending, in order.
    pub fn sent_mail(&self) -> Vec<SentMail> {
        self.shared.sent.lock().unwrap().clone()
    }

    /// Drafts not sent (yet).
    pub fn open_drafts(&self) -> usize {
        self.shared.drafts.lock().unwrap().len()
    }

    fn change(&self) -> u64 {
        let mut c = self.shared.change.lock().unwrap();
        *c += 1;
        *c
    }

    /// Put a message into `folder` (a well-known name, lower case: `inbox`); returns
    /// its id. A message with that `id` already there is changed.
    pub fn add_message(&self, folder: &str, mut message: Value) -> String {
        let seq = self.change();
        let id = message["id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("AAMkMsg{seq:04}="));
        message["id"] = json!(id);
        let mut folders = self.shared.folders.lock().unwrap();
        let list = folders.entry(folder.to_string()).or_default();
        list.retain(|m| m.id != id);
        list.push(MailItem {
            id: id.clone(),
            seq,
            message: Some(message),
        });
        id
    }

    /// Remove a message from `folder` (delta queries report it `@removed`).
    pub fn remove_message(&self, folder: &str, id: &str) {
        let seq = self.change();
        let mut folders = self.shared.folders.lock().unwrap();
        if let Some(m) = folders
            .get_mut(folder)
            .and_then(|l| l.iter_mut().find(|m| m.id == id))
        {
            m.seq = seq;
            m.message = None;
        }
    }

    // --- contacts ---

    /// Add contacts (each gets an `id` if it has none).
    pub fn add_contacts(&self, contacts: impl IntoIterator<Item = Value>) {
        let mut all = self.shared.contacts.lock().unwrap();
        for mut c in contacts {
            if c.get("id").is_none() {
                c["id"] = json!(format!("AAMkContact{:04}=", all.len() + 1));
            }
            all.push(c);
        }
    }

    // --- drive ---

    /// Put a file at `path` (`/Documents/a.pdf`) in the drive; returns its item id.
    pub fn put_drive_file(&self, path: &str, bytes: Vec<u8>) -> String {
        let id = format!("01BYE5RZ{:04}", self.shared.next());
        self.shared
            .drive
            .lock()
            .unwrap()
            .insert(path.to_string(), (id.clone(), bytes));
        id
    }

    /// The bytes of the drive file at `path`.
    pub fn drive_file(&self, path: &str) -> Option<Vec<u8>> {
        self.shared
            .drive
            .lock()
            .unwrap()
            .get(path)
            .map(|(_, b)| b.clone())
    }
}
