//! Outbound HTTP through the host. The host checks every request against the
//! manifest's allowed hosts and the operator's policy, and can attach a credential
//! itself ([`Request::credential`]) so the secret never enters the module.
//!
//! ```no_run
//! use flow8_sdk::http::Request;
//! use std::time::Duration;
//!
//! # fn run() -> Result<(), flow8_sdk::Error> {
//! let response = Request::post("https://api.example.com/process")
//!     .header("accept", "application/json")
//!     .json(&serde_json::json!({"document_id": "doc_001"}))?
//!     .timeout(Duration::from_secs(10))
//!     .credential("request") // the host adds the component's auth header
//!     .send()?;
//! if response.is_success() {
//!     let answer: serde_json::Value = response.json()?;
//! }
//! # Ok(()) }
//! ```

use crate::__private::bindings::flow8::integration::http as wit;
use crate::Error;
use std::time::Duration;

/// A request under construction.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Body,
    timeout: Option<Duration>,
    credential: Option<String>,
}

#[derive(Debug, Clone)]
enum Body {
    Empty,
    Bytes(Vec<u8>),
    WorkspaceFile(String),
    WorkspaceRange {
        path: String,
        offset: u64,
        length: u64,
    },
}

impl Request {
    /// A request with any method.
    pub fn new(method: &str, url: &str) -> Request {
        Request {
            method: method.to_ascii_uppercase(),
            url: url.into(),
            headers: Vec::new(),
            body: Body::Empty,
            timeout: None,
            credential: None,
        }
    }

    /// `GET url`.
    pub fn get(url: &str) -> Request {
        Request::new("GET", url)
    }

    /// `POST url`.
    pub fn post(url: &str) -> Request {
        Request::new("POST", url)
    }

    /// `PUT url`.
    pub fn put(url: &str) -> Request {
        Request::new("PUT", url)
    }

    /// `PATCH url`.
    pub fn patch(url: &str) -> Request {
        Request::new("PATCH", url)
    }

    /// `DELETE url`.
    pub fn delete(url: &str) -> Request {
        Request::new("DELETE", url)
    }

    /// `HEAD url`.
    pub fn head(url: &str) -> Request {
        Request::new("HEAD", url)
    }

    /// The method (upper case).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The same request to another URL (the next page of a paged answer).
    pub fn with_url(mut self, url: &str) -> Request {
        self.url = url.into();
        self
    }

    /// Add a header (repeat the call for a repeated header). The host refuses headers a
    /// module may not set (e.g. `Authorization` on a request it attaches a credential to).
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Whether a header is already set (case-insensitive).
    pub fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    }

    /// A JSON body (sets `content-type: application/json` unless already set).
    pub fn json<T: serde::Serialize>(mut self, value: &T) -> Result<Request, Error> {
        self.body = Body::Bytes(serde_json::to_vec(value)?);
        if !self.has_header("content-type") {
            self.headers
                .push(("content-type".into(), "application/json".into()));
        }
        Ok(self)
    }

    /// A text body (sets `content-type: text/plain; charset=utf-8` unless already set).
    pub fn text(mut self, text: &str) -> Request {
        self.body = Body::Bytes(text.as_bytes().to_vec());
        if !self.has_header("content-type") {
            self.headers
                .push(("content-type".into(), "text/plain; charset=utf-8".into()));
        }
        self
    }

    /// Raw bytes (set `content-type` yourself).
    pub fn body(mut self, bytes: Vec<u8>) -> Request {
        self.body = Body::Bytes(bytes);
        self
    }

    /// Stream a file from the step's workspace as the body: the host reads it, so
    /// large files never pass through the module's memory.
    pub fn workspace_file(mut self, path: &str) -> Request {
        self.body = Body::WorkspaceFile(path.into());
        self
    }

    /// Stream `length` bytes of a workspace file, from byte `offset`, as the body: one
    /// chunk of a ranged upload (a Graph upload session `PUT` with `Content-Range`). The
    /// host reads the bytes; they never pass through the module's memory, and it sets
    /// `Content-Length`. A range outside the file is `invalid_input`. Such a request is
    /// sent with [`Request::send`] only (not [`Request::send_to_workspace`]).
    ///
    /// ```no_run
    /// # fn run(upload_url: &str) -> Result<(), flow8_sdk::Error> {
    /// use flow8_sdk::http::Request;
    /// let r = Request::put(upload_url)
    ///     .header("content-range", "bytes 0-327679/1000000")
    ///     .workspace_range("/big.bin", 0, 327_680)
    ///     .send()?;
    /// # Ok(()) }
    /// ```
    pub fn workspace_range(mut self, path: &str, offset: u64, length: u64) -> Request {
        self.body = Body::WorkspaceRange {
            path: path.into(),
            offset,
            length,
        };
        self
    }

    /// Give up after this long (the host never waits past the step's deadline anyway).
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = Some(timeout);
        self
    }

    /// Have the host attach the credential bound as `binding` (Bearer token, API-key
    /// header or AWS signature). The request may then only go to that credential's hosts.
    pub fn credential(mut self, binding: &str) -> Request {
        self.credential = Some(binding.into());
        self
    }

    /// Send it and have the host stream a 2xx answer's body into the step's workspace
    /// at `path` (at most `max_bytes`), so a large download never passes through the
    /// module's memory. The file's directory must exist; a file there is replaced; a
    /// longer body is `limit_exceeded` and leaves no file. Any other answer (an error,
    /// a redirect) comes back in memory, with no file written. The bytes count against
    /// the step's workspace budget.
    ///
    /// ```no_run
    /// # fn run() -> Result<(), flow8_sdk::Error> {
    /// use flow8_sdk::http::Request;
    /// let r = Request::get("https://graph.microsoft.com/v1.0/me/drive/root:/report.pdf:/content")
    ///     .credential("microsoft")
    ///     .send_to_workspace("/report.pdf", 100 * 1024 * 1024)?;
    /// match r.saved {
    ///     Some(saved) => println!("{} bytes in {}", saved.size, saved.path),
    ///     None => println!("HTTP {}: {}", r.response.status, r.response.text()),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn send_to_workspace(&self, path: &str, max_bytes: u64) -> Result<SavedResponse, Error> {
        if matches!(self.body, Body::WorkspaceRange { .. }) {
            return Err(Error::invalid_input(
                "a request with a workspace range as its body is sent with `send`",
            ));
        }
        let r = wit::send_to_workspace(
            &self.to_wit(),
            &wit::SaveTo {
                path: path.into(),
                max_bytes,
            },
        )
        .map_err(Error::from_wit)?;
        Ok(SavedResponse {
            response: Response {
                status: r.status,
                headers: r.headers,
                body: r.body,
            },
            saved: r.saved.then(|| Saved {
                path: path.to_string(),
                size: r.size,
            }),
        })
    }

    fn to_wit(&self) -> wit::Request {
        wit::Request {
            method: self.method.clone(),
            url: self.url.clone(),
            headers: self.headers.clone(),
            body: match &self.body {
                Body::Empty => wit::Body::Empty,
                Body::Bytes(b) => wit::Body::Bytes(b.clone()),
                Body::WorkspaceFile(p) => wit::Body::WorkspaceFile(p.clone()),
                // The range travels beside the request (`send-workspace-range`).
                Body::WorkspaceRange { .. } => wit::Body::Empty,
            },
            timeout_ms: self
                .timeout
                .map(|t| t.as_millis().min(u32::MAX as u128) as u32),
            credential: self.credential.clone(),
        }
    }

    /// Send it and wait for the whole response. Any status is a response; an `Err` means
    /// no response: `forbidden` (host, address or credential pinning refused),
    /// `access_denied` (binding not granted), `network_error`, `limit_exceeded`. The
    /// request can be sent again (see [`crate::retry::Backoff::send`]).
    pub fn send(&self) -> Result<Response, Error> {
        let r = match &self.body {
            Body::WorkspaceRange {
                path,
                offset,
                length,
            } => wit::send_workspace_range(
                &self.to_wit(),
                &wit::WorkspaceRange {
                    path: path.clone(),
                    offset: *offset,
                    length: *length,
                },
            ),
            _ => wit::send(&self.to_wit()),
        }
        .map_err(Error::from_wit)?;
        Ok(Response {
            status: r.status,
            headers: r.headers,
            body: r.body,
        })
    }
}

/// The answer to [`Request::send_to_workspace`].
#[derive(Debug, Clone)]
pub struct SavedResponse {
    /// Status and headers; the body when it was not saved (empty when it was).
    pub response: Response,
    /// Where the body went, when it did (a 2xx answer).
    pub saved: Option<Saved>,
}

/// A response body the host wrote to the workspace (serialises as `{"path", "size"}`,
/// the form step outputs use).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Saved {
    /// The workspace path.
    pub path: String,
    /// Bytes written.
    pub size: u64,
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Headers as received (names as the server sent them; repeated headers repeated).
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Whether the content type is JSON (`application/json`, `application/*+json`).
    pub fn is_json(&self) -> bool {
        self.header("content-type").is_some_and(|c| {
            let c = c
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            c == "application/json" || (c.starts_with("application/") && c.ends_with("+json"))
        })
    }

    /// The body parsed as JSON; a body that is not the JSON expected is `upstream_error`
    /// with the response's status.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::upstream(
                self.status,
                format!("the response is not the JSON expected: {e}"),
            )
        })
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `Retry-After` in seconds, when given in that form (RFC 9110 §10.2.3).
    pub fn retry_after(&self) -> Option<u32> {
        self.header("retry-after")?.trim().parse().ok()
    }

    /// The headers as a JSON object, the form step outputs use: names in lower case,
    /// repeated headers joined with `, ` (RFC 9110 §5.3), except `Set-Cookie`, whose
    /// values may contain commas (RFC 6265 §3): one per line.
    pub fn header_object(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut headers = serde_json::Map::new();
        for (k, v) in &self.headers {
            let name = k.to_ascii_lowercase();
            let sep = if name == "set-cookie" { "\n" } else { ", " };
            let entry = headers
                .entry(name)
                .or_insert(serde_json::Value::String(String::new()));
            if let serde_json::Value::String(s) = entry {
                if !s.is_empty() {
                    s.push_str(sep);
                }
                s.push_str(v);
            }
        }
        headers
    }

    /// The body as a JSON value, the form step outputs use: parsed JSON when the content
    /// type is JSON and it parses (a server that labels other text as JSON still gets
    /// its answer through, as text), otherwise the text (invalid UTF-8 replaced); `null`
    /// when there is no body (`204`, `HEAD`).
    pub fn body_value(&self) -> serde_json::Value {
        if self.body.is_empty() {
            serde_json::Value::Null
        } else if self.is_json() {
            serde_json::from_slice(&self.body)
                .unwrap_or_else(|_| serde_json::Value::String(self.text()))
        } else {
            serde_json::Value::String(self.text())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status: 200,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn response_helpers() {
        let r = response(
            &[
                ("Content-Type", "application/problem+json; charset=utf-8"),
                ("Retry-After", " 12 "),
            ],
            r#"{"ok": true}"#,
        );
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json; charset=utf-8")
        );
        assert!(r.is_json());
        assert!(r.is_success());
        assert_eq!(r.retry_after(), Some(12));
        assert_eq!(r.json::<serde_json::Value>().unwrap()["ok"], true);
        assert_eq!(r.text(), r#"{"ok": true}"#);
        let date = response(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")], "x");
        assert_eq!(date.retry_after(), None);
        assert!(!date.is_json());
        let err = date.json::<serde_json::Value>().unwrap_err();
        assert_eq!(err.name(), "upstream_error");
        assert_eq!(date.body_value(), serde_json::json!("x"));
        assert_eq!(r.body_value(), serde_json::json!({"ok": true}));
        assert_eq!(response(&[], "").body_value(), serde_json::Value::Null);
        let mislabelled = response(&[("content-type", "application/json")], "not json");
        assert_eq!(mislabelled.body_value(), serde_json::json!("not json"));
    }

    #[test]
    fn headers_as_an_object_join_repeats_and_keep_cookies_apart() {
        let r = response(
            &[
                ("Vary", "accept"),
                ("vary", "origin"),
                ("Set-Cookie", "a=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT"),
                ("set-cookie", "b=2"),
            ],
            "",
        );
        assert_eq!(
            serde_json::Value::Object(r.header_object()),
            serde_json::json!({"vary": "accept, origin", "set-cookie": "a=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT\nb=2"})
        );
    }

    #[test]
    fn body_helpers_set_a_content_type_only_when_missing() {
        let r = Request::post("https://x.test/").json(&[1, 2]).unwrap();
        assert!(r.has_header("Content-Type"));
        let r = Request::post("https://x.test/")
            .header("Content-Type", "application/vnd.api+json")
            .json(&[1])
            .unwrap();
        assert_eq!(
            r.headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .count(),
            1
        );
        let r = Request::new("patch", "https://x.test/").text("hi");
        assert_eq!(r.method(), "PATCH");
        assert!(r.has_header("content-type"));
    }
}
