//! A fake of the Google APIs the Google Workspace modules call, for tests only (Google
//! has no local server): Gmail `users.messages.send` (the media upload and the JSON
//! `raw` forms), Drive `files.create` as a resumable upload (session URI in `Location`,
//! then the bytes `PUT` to it, answered `200` with the file resource, `fields` honoured)
//! and `permissions.create`, and Sheets v4 `spreadsheets.create` and `values.get`,
//! `values.update`, `values.append` on an in-memory grid (A1 ranges; `RAW` keeps text,
//! `USER_ENTERED` turns numbers into numbers; `FORMATTED_VALUE` reads strings).
//!
//! It follows Google's documented shapes: errors are `{"error": {"code", "message",
//! "errors": [{"message", "domain", "reason"}], "status"}}`
//! (cloud.google.com/apis/design/errors); a missing or expired token is 401
//! `UNAUTHENTICATED` with `WWW-Authenticate`; a token without a scope the method takes
//! (read from the JWT's `scope` claim, as tokeninfo would tell) is 403
//! `insufficientPermissions` / `ACCESS_TOKEN_SCOPE_INSUFFICIENT`. It records every
//! request it receives (method, path, query, headers, body bytes, token) and can be
//! told to fail the next ones: 401 (expired), 403 (insufficient scope), 404, 429 with
//! `Retry-After`, 5xx.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Gmail, Drive and Sheets scopes each method accepts (from each method's reference
/// page, "Authorization scopes").
const GMAIL_SEND: &[&str] = &[
    "https://www.googleapis.com/auth/gmail.send",
    "https://www.googleapis.com/auth/gmail.compose",
    "https://www.googleapis.com/auth/gmail.modify",
    "https://mail.google.com/",
];
const DRIVE_WRITE: &[&str] = &[
    "https://www.googleapis.com/auth/drive.file",
    "https://www.googleapis.com/auth/drive",
];
const SHEETS_WRITE: &[&str] = &[
    "https://www.googleapis.com/auth/spreadsheets",
    "https://www.googleapis.com/auth/drive.file",
    "https://www.googleapis.com/auth/drive",
];
const SHEETS_READ: &[&str] = &[
    "https://www.googleapis.com/auth/spreadsheets",
    "https://www.googleapis.com/auth/spreadsheets.readonly",
    "https://www.googleapis.com/auth/drive.file",
    "https://www.googleapis.com/auth/drive",
    "https://www.googleapis.com/auth/drive.readonly",
];

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct GoogleCall {
    /// `GET`, `POST`, `PUT`, ...
    pub method: String,
    /// The path as sent (percent-encoding kept).
    pub path: String,
    /// The query string as sent ("" when none).
    pub query: String,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The Bearer token, if any.
    pub token: Option<String>,
    /// The body bytes.
    pub body: Vec<u8>,
    /// The status the fake answered.
    pub status: u16,
}

impl GoogleCall {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter's (decoded) value.
    pub fn query_param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The body as JSON (Null when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// An injected answer for the next request (any API).
#[derive(Debug, Clone, Copy)]
pub struct GoogleFailure {
    /// 401 (expired token), 403 (insufficient scope), 404, 429, 500, 503, ...
    pub status: u16,
    /// `Retry-After` seconds.
    pub retry_after: Option<u32>,
    /// Only for the next request of this method (e.g. a resumable upload's `PUT`);
    /// any request when None.
    pub method: Option<&'static str>,
}

impl GoogleFailure {
    /// This status, no `Retry-After`.
    pub fn status(status: u16) -> GoogleFailure {
        GoogleFailure {
            status,
            retry_after: None,
            method: None,
        }
    }

    /// This status with `Retry-After: secs`.
    pub fn retry_after(status: u16, secs: u32) -> GoogleFailure {
        GoogleFailure {
            status,
            retry_after: Some(secs),
            method: None,
        }
    }

    /// The same failure, for the next request of `method` only.
    pub fn on(self, method: &'static str) -> GoogleFailure {
        GoogleFailure {
            method: Some(method),
            ..self
        }
    }
}

/// A file Drive holds.
#[derive(Debug, Clone)]
pub struct DriveFile {
    /// Its resource (`id`, `name`, `mimeType`, `parents`, `size`, `webViewLink`, ...).
    pub resource: Value,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Permissions created on it.
    pub permissions: Vec<Value>,
}

struct Session {
    metadata: Value,
    content_type: Option<String>,
    declared_length: Option<u64>,
    fields: Option<String>,
}

struct Sheet {
    title: String,
    id: u64,
    grid: Vec<Vec<Value>>,
}

struct Spreadsheet {
    sheets: Vec<Sheet>,
}

#[derive(Default)]
struct Shared {
    base: Mutex<String>,
    calls: Mutex<Vec<GoogleCall>>,
    inject: Mutex<VecDeque<GoogleFailure>>,
    messages: Mutex<Vec<Vec<u8>>>,
    sessions: Mutex<HashMap<String, Session>>,
    files: Mutex<Vec<DriveFile>>,
    spreadsheets: Mutex<HashMap<String, Spreadsheet>>,
    next: Mutex<u64>,
}

impl Shared {
    fn next(&self) -> u64 {
        let mut n = self.next.lock().unwrap();
        *n += 1;
        *n
    }
}

/// Google's error body (cloud.google.com/apis/design/errors, and the v1 `errors` list
/// the Drive and Gmail guides show).
fn google_error(code: u16, status: &str, message: &str, reason: &str) -> Response {
    let mut body = json!({"error": {
        "code": code,
        "message": message,
        "errors": [{"message": message, "domain": "global", "reason": reason}],
        "status": status,
    }});
    if reason == "insufficientPermissions" {
        body["error"]["details"] = json!([{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
            "domain": "googleapis.com",
        }]);
    }
    let mut resp = (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response();
    if code == 401 {
        resp.headers_mut().insert(
            "www-authenticate",
            "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\""
                .parse()
                .unwrap(),
        );
    }
    resp
}

fn unauthenticated() -> Response {
    google_error(
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        "authError",
    )
}

fn insufficient_scope() -> Response {
    google_error(
        403,
        "PERMISSION_DENIED",
        "Request had insufficient authentication scopes.",
        "insufficientPermissions",
    )
}

fn not_found(what: &str) -> Response {
    google_error(404, "NOT_FOUND", &format!("{what} not found."), "notFound")
}

fn bad_request(message: &str) -> Response {
    google_error(400, "INVALID_ARGUMENT", message, "invalid")
}

fn failure(f: GoogleFailure) -> Response {
    let mut resp = match f.status {
        400 => bad_request("Invalid value at 'message'."),
        401 => unauthenticated(),
        403 => insufficient_scope(),
        404 => not_found("Requested entity was"),
        429 => google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute per user'.",
            "rateLimitExceeded",
        ),
        503 => google_error(
            503,
            "UNAVAILABLE",
            "The service is currently unavailable.",
            "backendError",
        ),
        other => google_error(
            other,
            "INTERNAL",
            "Internal error encountered.",
            "backendError",
        ),
    };
    if let Some(secs) = f.retry_after {
        resp.headers_mut()
            .insert("retry-after", secs.to_string().parse().unwrap());
    }
    resp
}

/// The claims of a JWT access token (the OAuth2 test server issues them), unverified:
/// the fake only reads what tokeninfo would tell, `exp` and `scope`.
fn claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The refusal, if any: 401 for no token, one that is not a JWT, or an expired one;
/// 403 without one of `scopes`.
fn refusal(token: Option<&str>, scopes: &[&str]) -> Option<Response> {
    let Some(claims) = token.and_then(claims) else {
        return Some(unauthenticated());
    };
    if claims["exp"].as_u64().is_none_or(|exp| exp <= now_secs()) {
        return Some(unauthenticated());
    }
    let granted = claims["scope"].as_str().unwrap_or("");
    if !granted.split(' ').any(|s| scopes.contains(&s)) {
        return Some(insufficient_scope());
    }
    None
}

fn json_ok(status: u16, v: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json; charset=UTF-8")],
        v.to_string(),
    )
        .into_response()
}

fn query_map(uri: &Uri) -> HashMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// A resource with only the `fields` asked for (a flat list such as
/// `id,name,webViewLink`), or Drive's default fields.
fn with_fields(resource: &Value, fields: Option<&str>, default: &[&str]) -> Value {
    let names: Vec<&str> = match fields {
        Some(f) if f != "*" => f.split(',').map(str::trim).collect(),
        Some(_) => return resource.clone(),
        None => default.to_vec(),
    };
    let mut out = serde_json::Map::new();
    for n in names {
        if let Some(v) = resource.get(n) {
            out.insert(n.to_string(), v.clone());
        }
    }
    Value::Object(out)
}

async fn handle(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let injected = {
        let mut queue = s.inject.lock().unwrap();
        queue
            .iter()
            .position(|f| f.method.is_none_or(|m| m == method.as_str()))
            .and_then(|i| queue.remove(i))
    };
    let resp = match injected {
        Some(f) => failure(f),
        None => route(&s, &method, &uri, &headers, &body, token.as_deref()),
    };
    s.calls.lock().unwrap().push(GoogleCall {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        token,
        body: body.to_vec(),
        status: resp.status().as_u16(),
    });
    resp
}

fn route(
    s: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    token: Option<&str>,
) -> Response {
    let path = uri.path();
    let q = query_map(uri);
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let scopes = match segments.as_slice() {
        ["upload", "gmail", ..] | ["gmail", ..] => GMAIL_SEND,
        ["upload", "drive", ..] | ["drive", ..] => DRIVE_WRITE,
        ["v4", "spreadsheets", _, "values", _] if method == Method::GET => SHEETS_READ,
        ["v4", ..] => SHEETS_WRITE,
        _ => return not_found("Method"),
    };
    if let Some(r) = refusal(token, scopes) {
        return r;
    }
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["upload", "gmail", "v1", "users", "me", "messages", "send"]) => {
            if q.get("uploadType").map(String::as_str) != Some("media") {
                return bad_request("Media upload needs uploadType=media.");
            }
            if header("content-type") != Some("message/rfc822") {
                return bad_request("Media type must be message/rfc822.");
            }
            gmail_sent(s, body.to_vec())
        }
        ("POST", ["gmail", "v1", "users", "me", "messages", "send"]) => {
            let raw = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(v["raw"].as_str()?.trim_end_matches('='))
                    .ok()
            });
            match raw {
                Some(raw) => gmail_sent(s, raw),
                None => bad_request(
                    "'raw' RFC822 payload message string or uploading message via /upload/* URL required",
                ),
            }
        }
        ("POST", ["upload", "drive", "v3", "files"]) => {
            if q.get("uploadType").map(String::as_str) != Some("resumable") {
                return bad_request("The fake takes only uploadType=resumable.");
            }
            let metadata = if body.is_empty() {
                json!({})
            } else {
                match serde_json::from_slice::<Value>(body) {
                    Ok(v) if v.is_object() => v,
                    _ => return bad_request("The metadata is not a JSON object."),
                }
            };
            let id = format!("s{:06}", s.next());
            s.sessions.lock().unwrap().insert(
                id.clone(),
                Session {
                    metadata,
                    content_type: header("x-upload-content-type").map(str::to_string),
                    declared_length: header("x-upload-content-length").and_then(|v| v.parse().ok()),
                    fields: q.get("fields").cloned(),
                },
            );
            // Drive's session URI: the same endpoint, the original query, an upload_id.
            let location = format!(
                "{}{}?{}&upload_id={id}",
                s.base.lock().unwrap(),
                path,
                uri.query().unwrap_or("")
            );
            (StatusCode::OK, [("location", location)], "").into_response()
        }
        ("PUT", ["upload", "drive", "v3", "files"]) => {
            let Some(upload_id) = q.get("upload_id") else {
                return bad_request("No upload_id.");
            };
            let Some(session) = s.sessions.lock().unwrap().remove(upload_id) else {
                return not_found("Upload session");
            };
            if session
                .declared_length
                .is_some_and(|n| n != body.len() as u64)
            {
                return bad_request("The body's length is not X-Upload-Content-Length.");
            }
            let n = s.next();
            let id = format!("1Fk{n:05}aBcDeFgHiJkLmNoPqRsTuV");
            let mut resource = session.metadata.clone();
            resource["kind"] = json!("drive#file");
            resource["id"] = json!(id);
            if resource.get("mimeType").is_none() {
                resource["mimeType"] = json!(
                    session
                        .content_type
                        .clone()
                        .unwrap_or_else(|| "application/octet-stream".into())
                );
            }
            if resource.get("parents").is_none() {
                resource["parents"] = json!(["0AroOtFoLdEr"]);
            }
            resource["size"] = json!(body.len().to_string());
            resource["webViewLink"] = json!(format!(
                "https://drive.google.com/file/d/{id}/view?usp=drivesdk"
            ));
            let answer = with_fields(
                &resource,
                session.fields.as_deref(),
                &["kind", "id", "name", "mimeType"],
            );
            s.files.lock().unwrap().push(DriveFile {
                resource,
                bytes: body.to_vec(),
                permissions: Vec::new(),
            });
            json_ok(200, answer)
        }
        ("POST", ["drive", "v3", "files", file_id, "permissions"]) => {
            let file_id = percent_decode(file_id);
            let Ok(p) = serde_json::from_slice::<Value>(body) else {
                return bad_request("The permission is not JSON.");
            };
            let (role, kind) = (
                p["role"].as_str().unwrap_or(""),
                p["type"].as_str().unwrap_or(""),
            );
            if ![
                "owner",
                "organizer",
                "fileOrganizer",
                "writer",
                "commenter",
                "reader",
            ]
            .contains(&role)
            {
                return bad_request("Invalid role.");
            }
            let needs = match kind {
                "user" | "group" => "emailAddress",
                "domain" => "domain",
                "anyone" => "",
                _ => return bad_request("Invalid type."),
            };
            if !needs.is_empty() && p[needs].as_str().is_none() {
                return bad_request(&format!("The {needs} field is required for this type."));
            }
            if !["user", "group"].contains(&kind)
                && (q.contains_key("sendNotificationEmail") || q.contains_key("emailMessage"))
            {
                return bad_request("sendNotificationEmail is only allowed for users and groups.");
            }
            let mut files = s.files.lock().unwrap();
            let Some(file) = files
                .iter_mut()
                .find(|f| f.resource["id"] == file_id.as_str())
            else {
                return google_error(
                    404,
                    "NOT_FOUND",
                    &format!("File not found: {file_id}."),
                    "notFound",
                );
            };
            let id = match kind {
                "anyone" => "anyoneWithLink".to_string(),
                _ => format!("0{}", 7_000_000_000u64 + file.permissions.len() as u64),
            };
            let mut resource = p.clone();
            resource["kind"] = json!("drive#permission");
            resource["id"] = json!(id);
            file.permissions
                .push(json!({"permission": resource, "query": q}));
            json_ok(
                200,
                with_fields(
                    &resource,
                    q.get("fields").map(String::as_str),
                    &["kind", "id", "type", "role"],
                ),
            )
        }
        ("POST", ["v4", "spreadsheets"]) => {
            let Ok(v) = serde_json::from_slice::<Value>(body) else {
                return bad_request("Invalid JSON payload received.");
            };
            let n = s.next();
            let id = format!("1Sp{n:05}rEaDsHeEtIdXyZ");
            let title = v["properties"]["title"]
                .as_str()
                .unwrap_or("Untitled spreadsheet")
                .to_string();
            let mut sheets: Vec<Sheet> = v["sheets"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .enumerate()
                        .map(|(i, x)| Sheet {
                            title: x["properties"]["title"]
                                .as_str()
                                .unwrap_or("Sheet")
                                .to_string(),
                            id: i as u64,
                            grid: Vec::new(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            if sheets.is_empty() {
                sheets.push(Sheet {
                    title: "Sheet1".into(),
                    id: 0,
                    grid: Vec::new(),
                });
            }
            let answer = json!({
                "spreadsheetId": id,
                "properties": {"title": title, "locale": "en_US", "timeZone": "Etc/GMT"},
                "sheets": sheets.iter().map(|sh| json!({"properties": {"sheetId": sh.id, "title": sh.title, "index": sh.id, "sheetType": "GRID", "gridProperties": {"rowCount": 1000, "columnCount": 26}}})).collect::<Vec<_>>(),
                "spreadsheetUrl": format!("https://docs.google.com/spreadsheets/d/{id}/edit"),
            });
            s.spreadsheets
                .lock()
                .unwrap()
                .insert(id, Spreadsheet { sheets });
            json_ok(200, answer)
        }
        (m, ["v4", "spreadsheets", sid, "values", range]) => {
            let sid = percent_decode(sid);
            let range = percent_decode(range);
            let mut books = s.spreadsheets.lock().unwrap();
            let Some(book) = books.get_mut(&sid) else {
                return not_found("Requested entity was");
            };
            let (range, append) = match range.strip_suffix(":append") {
                Some(r) => (r.to_string(), true),
                None => (range, false),
            };
            let Some(a1) = A1::parse(&range) else {
                return bad_request(&format!("Unable to parse range: {range}"));
            };
            let Some(sheet) = (match &a1.sheet {
                Some(t) => book.sheets.iter_mut().find(|sh| &sh.title == t),
                None => book.sheets.first_mut(),
            }) else {
                return bad_request(&format!("Unable to parse range: {range}"));
            };
            match (m, append) {
                ("GET", false) => values_get(sheet, &a1, &q),
                ("PUT", false) | ("POST", true) => {
                    let option = q.get("valueInputOption").map(String::as_str);
                    if !matches!(option, Some("RAW") | Some("USER_ENTERED")) {
                        return bad_request("'valueInputOption' is required but not specified");
                    }
                    let Some(values) = serde_json::from_slice::<Value>(body)
                        .ok()
                        .and_then(|v| v["values"].as_array().cloned())
                    else {
                        return bad_request("Invalid values.");
                    };
                    let rows: Vec<Vec<Value>> = values
                        .iter()
                        .map(|r| {
                            r.as_array()
                                .map(|c| {
                                    c.iter()
                                        .map(|x| input_value(x, option == Some("USER_ENTERED")))
                                        .collect()
                                })
                                .unwrap_or_default()
                        })
                        .collect();
                    values_write(&sid, sheet, &a1, rows, append)
                }
                _ => not_found("Method"),
            }
        }
        _ => not_found("Method"),
    }
}

fn gmail_sent(s: &Shared, raw: Vec<u8>) -> Response {
    let n = s.next();
    s.messages.lock().unwrap().push(raw);
    json_ok(
        200,
        json!({"id": format!("18f{n:013x}"), "threadId": format!("18f{n:013x}"), "labelIds": ["SENT"]}),
    )
}

/// A value as Sheets stores it: `USER_ENTERED` parses numbers and booleans out of
/// strings; `RAW` keeps them as given.
fn input_value(v: &Value, user_entered: bool) -> Value {
    match v {
        Value::String(t) if user_entered => {
            if let Ok(n) = t.parse::<f64>() {
                json!(n)
            } else if t.eq_ignore_ascii_case("true") || t.eq_ignore_ascii_case("false") {
                json!(t.eq_ignore_ascii_case("true"))
            } else {
                v.clone()
            }
        }
        _ => v.clone(),
    }
}

/// A cell as `FORMATTED_VALUE` shows it (always a string).
fn formatted(v: &Value) -> Value {
    match v {
        Value::String(_) => v.clone(),
        Value::Bool(b) => json!(if *b { "TRUE" } else { "FALSE" }),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => json!(format!("{}", f as i64)),
            _ => json!(n.to_string()),
        },
        _ => json!(""),
    }
}

/// An A1 range: sheet, first cell (column, row, 0-based), last cell (inclusive;
/// `usize::MAX` for an open end).
#[derive(Debug)]
struct A1 {
    sheet: Option<String>,
    start: (usize, usize),
    end: (usize, usize),
}

impl A1 {
    fn parse(range: &str) -> Option<A1> {
        let (sheet, cells) = match range.rsplit_once('!') {
            Some((s, c)) => (Some(s.trim_matches('\'').replace("''", "'")), Some(c)),
            // A bare `Data` names a sheet; cells need a row (`B3`) or a span (`A:C`).
            None if range
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
                && (range.contains(':') || range.bytes().any(|b| b.is_ascii_digit()))
                && A1::cell(range.split(':').next()?).is_some() =>
            {
                (None, Some(range))
            }
            None => (Some(range.trim_matches('\'').to_string()), None),
        };
        let Some(cells) = cells else {
            return Some(A1 {
                sheet,
                start: (0, 0),
                end: (usize::MAX, usize::MAX),
            });
        };
        let (a, b) = cells.split_once(':').unwrap_or((cells, cells));
        let (c0, r0) = A1::cell(a)?;
        let (c1, r1) = A1::cell(b)?;
        Some(A1 {
            sheet,
            start: (c0.unwrap_or(0), r0.unwrap_or(0)),
            end: (c1.unwrap_or(usize::MAX), r1.unwrap_or(usize::MAX)),
        })
    }

    /// `B3` → (Some(1), Some(2)); `B` → (Some(1), None); `3` → (None, Some(2)).
    fn cell(s: &str) -> Option<(Option<usize>, Option<usize>)> {
        let letters: String = s.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
        let digits = &s[letters.len()..];
        if letters.is_empty() && digits.is_empty()
            || letters.len() > 3
            || !digits.chars().all(|c| c.is_ascii_digit())
        {
            return None;
        }
        let col = (!letters.is_empty()).then(|| {
            letters
                .to_ascii_uppercase()
                .bytes()
                .fold(0usize, |n, b| n * 26 + (b - b'A' + 1) as usize)
                - 1
        });
        let row = match digits {
            "" => None,
            d => Some(d.parse::<usize>().ok()?.checked_sub(1)?),
        };
        Some((col, row))
    }
}

fn column_name(mut c: usize) -> String {
    let mut s = Vec::new();
    loop {
        s.push(b'A' + (c % 26) as u8);
        if c < 26 {
            break;
        }
        c = c / 26 - 1;
    }
    s.reverse();
    String::from_utf8(s).unwrap()
}

fn quoted(title: &str) -> String {
    if title.chars().all(|c| c.is_ascii_alphanumeric()) {
        title.to_string()
    } else {
        format!("'{}'", title.replace('\'', "''"))
    }
}

fn a1_text(title: &str, (c0, r0): (usize, usize), (c1, r1): (usize, usize)) -> String {
    format!(
        "{}!{}{}:{}{}",
        quoted(title),
        column_name(c0),
        r0 + 1,
        column_name(c1),
        r1 + 1
    )
}

fn values_get(sheet: &Sheet, a1: &A1, q: &HashMap<String, String>) -> Response {
    let render = q
        .get("valueRenderOption")
        .map(String::as_str)
        .unwrap_or("FORMATTED_VALUE");
    let mut rows: Vec<Vec<Value>> = Vec::new();
    let last_row = a1.end.1.min(sheet.grid.len().saturating_sub(1));
    for r in a1.start.1..=last_row {
        if r >= sheet.grid.len() {
            break;
        }
        let row = &sheet.grid[r];
        let last_col = a1.end.0.min(row.len().saturating_sub(1));
        let mut cells: Vec<Value> = (a1.start.0..=last_col)
            .filter(|&c| c < row.len())
            .map(|c| {
                if render == "FORMATTED_VALUE" {
                    formatted(&row[c])
                } else {
                    row[c].clone()
                }
            })
            .collect();
        // Sheets omits trailing empty cells and rows.
        while cells.last().is_some_and(|c| c.is_null() || c == "") {
            cells.pop();
        }
        rows.push(cells);
    }
    while rows.last().is_some_and(Vec::is_empty) {
        rows.pop();
    }
    let end = (
        if a1.end.0 == usize::MAX { 25 } else { a1.end.0 },
        if a1.end.1 == usize::MAX {
            999
        } else {
            a1.end.1
        },
    );
    let mut answer =
        json!({"range": a1_text(&sheet.title, a1.start, end), "majorDimension": "ROWS"});
    if !rows.is_empty() {
        answer["values"] = json!(rows);
    }
    json_ok(200, answer)
}

fn values_write(
    sid: &str,
    sheet: &mut Sheet,
    a1: &A1,
    rows: Vec<Vec<Value>>,
    append: bool,
) -> Response {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let cells: usize = rows.iter().map(Vec::len).sum();
    // Append: after the last row holding anything at or below the range's first row.
    let table_end = (a1.start.1..sheet.grid.len())
        .rev()
        .find(|&r| sheet.grid[r].iter().any(|c| !c.is_null() && c != ""));
    let first_row = match (append, table_end) {
        (true, Some(r)) => r + 1,
        _ => a1.start.1,
    };
    for (i, row) in rows.iter().enumerate() {
        let r = first_row + i;
        if sheet.grid.len() <= r {
            sheet.grid.resize(r + 1, Vec::new());
        }
        let line = &mut sheet.grid[r];
        if line.len() < a1.start.0 + row.len() {
            line.resize(a1.start.0 + row.len(), Value::Null);
        }
        for (j, v) in row.iter().enumerate() {
            line[a1.start.0 + j] = v.clone();
        }
    }
    let start = (a1.start.0, first_row);
    let end = (
        a1.start.0 + width.max(1) - 1,
        first_row + rows.len().max(1) - 1,
    );
    let updates = json!({
        "spreadsheetId": sid,
        "updatedRange": a1_text(&sheet.title, start, end),
        "updatedRows": rows.len(),
        "updatedColumns": width,
        "updatedCells": cells,
    });
    if append {
        let mut answer = json!({"spreadsheetId": sid, "updates": updates});
        if let Some(r) = table_end {
            answer["tableRange"] = json!(a1_text(
                &sheet.title,
                (a1.start.0, a1.start.1),
                (a1.start.0 + width.max(1) - 1, r)
            ));
        }
        json_ok(200, answer)
    } else {
        json_ok(200, updates)
    }
}

/// The fake; stops when dropped.
pub struct GoogleFake {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _server: crate::background::BackgroundServer,
}

impl GoogleFake {
    /// Start on a loopback port; every API is under `base()` (Gmail's `/gmail/v1`,
    /// Drive's `/drive/v3`, Sheets' `/v4`, and the `/upload/...` forms).
    pub fn start() -> GoogleFake {
        let shared = Arc::new(Shared::default());
        // Drive uploads are larger than axum's 2 MB default body limit.
        let app = Router::new()
            .fallback(handle)
            .layer(axum::extract::DefaultBodyLimit::max(256 * 1024 * 1024))
            .with_state(shared.clone());
        let server = crate::background::BackgroundServer::start(app);
        let addr = server.addr;
        *shared.base.lock().unwrap() = format!("http://{addr}");
        GoogleFake {
            addr,
            shared,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received, in order.
    pub fn calls(&self) -> Vec<GoogleCall> {
        self.shared.calls.lock().unwrap().clone()
    }

    /// The RFC 5322 messages Gmail accepted, as received.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.shared.messages.lock().unwrap().clone()
    }

    /// The files Drive holds.
    pub fn files(&self) -> Vec<DriveFile> {
        self.shared.files.lock().unwrap().clone()
    }

    /// A spreadsheet's sheet as stored (rows of cells), if it exists.
    pub fn sheet(&self, spreadsheet_id: &str, title: &str) -> Option<Vec<Vec<Value>>> {
        let books = self.shared.spreadsheets.lock().unwrap();
        let sheet = books
            .get(spreadsheet_id)?
            .sheets
            .iter()
            .find(|s| s.title == title)?;
        Some(sheet.grid.clone())
    }

    /// Answer the next requests with these failures.
    pub fn inject(&self, failures: impl IntoIterator<Item = GoogleFailure>) {
        self.shared.inject.lock().unwrap().extend(failures);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a1_ranges_parse() {
        let r = A1::parse("Sheet1!A1:C3").unwrap();
        assert_eq!(
            (r.sheet.as_deref(), r.start, r.end),
            (Some("Sheet1"), (0, 0), (2, 2))
        );
        let r = A1::parse("'Q1 Sales'!B2").unwrap();
        assert_eq!(
            (r.sheet.as_deref(), r.start, r.end),
            (Some("Q1 Sales"), (1, 1), (1, 1))
        );
        let r = A1::parse("A:C").unwrap();
        assert_eq!((r.sheet, r.start, r.end), (None, (0, 0), (2, usize::MAX)));
        let r = A1::parse("Data").unwrap();
        assert_eq!(r.sheet.as_deref(), Some("Data"));
        assert_eq!(column_name(27), "AB");
        assert_eq!(a1_text("Q1 Sales", (0, 0), (1, 1)), "'Q1 Sales'!A1:B2");
    }
}
