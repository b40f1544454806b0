//! What the flow8 Microsoft 365 modules (`outlook-send-mail`, `outlook-read-mail`,
//! `microsoft-contacts`, `onedrive-download`, `onedrive-upload`) share: a Microsoft
//! Graph v1.0 client over the host's HTTP. The host attaches the link's token to every
//! Graph call (the module never reads it) and refuses to send it anywhere but Graph.
//!
//! Graph's rules, as documented:
//! - errors are `{"error": {"code", "message"}}` (learn.microsoft.com/graph/errors);
//! - a 401 gets one forced token refresh and one retry, then `token_revoked`;
//! - 429 and 503/504 carry `Retry-After` (learn.microsoft.com/graph/throttling): retried
//!   with backoff within the step's deadline, then `rate_limit_exceeded`;
//! - paged answers carry an absolute `@odata.nextLink` (learn.microsoft.com/graph/paging);
//! - upload sessions hand out a pre-authenticated `uploadUrl` on another host that must
//!   be sent *without* the token (learn.microsoft.com/graph/api/driveitem-createuploadsession);
//!   the host reaches it through the provider's `transfer_hosts`, never attaching the link.

use flow8_sdk::http::{Request, Response, SavedResponse};
use flow8_sdk::retry::Backoff;
use flow8_sdk::{Error, credentials, log};
use serde_json::Value;
use std::cell::Cell;

/// Graph's documented base when the host's catalogue gives none.
pub const DEFAULT_BASE: &str = "https://graph.microsoft.com/v1.0";

/// Upload-session chunks are multiples of 320 KiB (OneDrive's rule; Outlook's
/// attachment sessions take them too, up to 4 MB a request).
pub const CHUNK_UNIT: u64 = 320 * 1024;

/// A Graph client for one step: the link binding and the base URL the host gave.
pub struct Graph {
    binding: &'static str,
    base: String,
    refreshed: Cell<bool>,
    backoff: Backoff,
}

impl Graph {
    /// The client for the link bound as `binding`; the base URL is the provider's
    /// `api_base_url` from the host (a sovereign cloud, a test server), else Graph's.
    pub fn new(binding: &'static str) -> Result<Graph, Error> {
        let config = credentials::config(binding)?;
        let base = config["api_base_url"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_BASE)
            .trim_end_matches('/')
            .to_string();
        Ok(Graph {
            binding,
            base,
            refreshed: Cell::new(false),
            backoff: Backoff::with_max_retries(4),
        })
    }

    /// The base URL (`https://graph.microsoft.com/v1.0`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `path` (starting with `/`) under the base URL.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Whether `url` is one of this client's Graph URLs (a `@odata.nextLink` or
    /// `deltaLink` handed back by a flow): under the base URL.
    pub fn is_graph_url(&self, url: &str) -> bool {
        url.strip_prefix(&self.base)
            .is_some_and(|rest| rest.starts_with('/') || rest.starts_with('?'))
    }

    /// Send `request` to Graph with the link's token attached by the host: 429 and 5xx
    /// retried (the last answer returned), a 401 answered with one forced refresh and
    /// one retry. Any other answer is returned as it is.
    pub fn send(&self, request: Request) -> Result<Response, Error> {
        let request = request.credential(self.binding);
        loop {
            let response = self.backoff.send(&request)?;
            if response.status == 401 && self.may_refresh()? {
                continue;
            }
            return Ok(response);
        }
    }

    /// [`Graph::send`], then any answer that is not 2xx as its flow8 error.
    pub fn send_ok(&self, request: Request) -> Result<Response, Error> {
        let response = self.send(request)?;
        check(&response)?;
        Ok(response)
    }

    /// [`Graph::send`] with a 2xx body streamed by the host into the workspace file
    /// `path` (never through the module's memory). A redirect comes back unsaved.
    pub fn send_to_workspace(
        &self,
        request: Request,
        path: &str,
        max_bytes: u64,
    ) -> Result<SavedResponse, Error> {
        let request = request.credential(self.binding);
        loop {
            let r = self.backoff.send_to_workspace(&request, path, max_bytes)?;
            if r.response.status == 401 && self.may_refresh()? {
                continue;
            }
            return Ok(r);
        }
    }

    /// After a 401: refresh once (and say so), or, refreshed already, `token_revoked`.
    fn may_refresh(&self) -> Result<bool, Error> {
        if self.refreshed.get() {
            return Err(Error::token_revoked(
                "Microsoft Graph refused the token again after a refresh (401); the user must reconnect the Microsoft link",
            ));
        }
        // Refused before its expiry (revoked, rotated signing keys): one forced refresh,
        // then the same request with the new token.
        self.refreshed.set(true);
        log::warn("Microsoft Graph answered 401; refreshing the token once");
        credentials::refresh(self.binding)?;
        Ok(true)
    }

    /// The pages of a Graph collection from `first`: follows `@odata.nextLink` for at
    /// most `max_pages` pages, calling `each` with every page's answer. Returns the last
    /// page's answer (which holds the `@odata.deltaLink` of a delta query, or the
    /// `@odata.nextLink` where it stopped).
    pub fn pages(
        &self,
        first: Request,
        max_pages: u32,
        mut each: impl FnMut(&Value) -> Result<(), Error>,
    ) -> Result<Value, Error> {
        let mut request = first;
        let mut page = 0;
        loop {
            let response = self.send_ok(request.clone())?;
            let body: Value = response.json()?;
            each(&body)?;
            page += 1;
            let Some(next) = body["@odata.nextLink"].as_str() else {
                return Ok(body);
            };
            if page >= max_pages {
                log::info(&format!(
                    "stopped after {page} pages (max_pages); the output carries the next link"
                ));
                return Ok(body);
            }
            if !self.is_graph_url(next) {
                return Err(Error::upstream(
                    response.status,
                    "Microsoft Graph answered a @odata.nextLink outside its API",
                ));
            }
            // The link carries the query (and a delta's state) itself: sent as it is,
            // with the same headers (a delta's `Prefer: odata.maxpagesize`).
            request = request.with_url(next);
        }
    }
}

/// A non-2xx Graph answer as its flow8 error (`README ## Error names`).
pub fn check(response: &Response) -> Result<(), Error> {
    if response.is_success() {
        return Ok(());
    }
    Err(error(response))
}

/// Graph's error object as a flow8 error: 401 `token_revoked`, 403 `insufficient_scope`
/// (the link lacks a permission; reconnect granting it), 400/404/409/413/416
/// `invalid_input` (the input named something Graph refused or does not have), 429
/// `rate_limit_exceeded` (with `Retry-After`), others `upstream_error`.
pub fn error(response: &Response) -> Error {
    let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("");
    let message = body["error"]["message"].as_str().unwrap_or("");
    let status = response.status;
    let detail = if code.is_empty() && message.is_empty() {
        format!("Microsoft Graph answered {status}")
    } else {
        format!("Microsoft Graph {status} {code}: {message}")
    };
    match status {
        401 => Error::token_revoked(detail),
        403 => Error::insufficient_scope(detail),
        400 | 404 | 409 | 413 | 416 => Error::invalid_input(detail),
        429 => Error::rate_limit_exceeded(detail, response.retry_after()),
        _ => Error::upstream(status, detail),
    }
}

/// RFC 3986 percent-encoding of a path segment (unreserved characters stay), for a
/// OneDrive path (`root:/{path}:`, each segment encoded, `/` kept) or an id.
pub fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A OneDrive path (`/Documents/Q1 report.pdf`) as Graph's path addressing
/// (`/me/drive/root:/Documents/Q1%20report.pdf:`), each segment encoded. Empty, `.` and
/// `..` segments are refused: they would name another item than the one written.
pub fn drive_path(path: &str) -> Result<String, Error> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return Err(Error::invalid_input(format!(
            "`{path}` is not a OneDrive file path (`/Folder/file.ext`: no empty, `.` or `..` segments)"
        )));
    }
    let encoded: Vec<String> = segments.iter().map(|s| encode_segment(s)).collect();
    Ok(format!("/me/drive/root:/{}:", encoded.join("/")))
}

/// Standard base64 (RFC 4648 §4, with padding): Graph's `contentBytes`.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What a finished upload session answered, and how many chunks it took.
pub struct Uploaded {
    /// The final answer's body (the driveItem, or empty for an Outlook attachment).
    pub body: Value,
    /// The final status.
    pub status: u16,
    /// `PUT` requests sent.
    pub chunks: u32,
}

/// Upload the workspace file `file` (`size` bytes) to a pre-authenticated upload
/// session URL, in chunks of `chunk` bytes (a multiple of [`CHUNK_UNIT`]) streamed by
/// the host (`Content-Range: bytes a-b/size`). No credential is attached: the URL is
/// the authorization, and the host sends it only to the provider's `transfer_hosts`.
/// The server's `nextExpectedRanges` decides where the next chunk starts (it may ask
/// for a range again); 5xx and 429 answers are retried, a 404 means the session
/// expired.
pub fn upload_session(
    upload_url: &str,
    file: &str,
    size: u64,
    chunk: u64,
) -> Result<Uploaded, Error> {
    let backoff = Backoff::with_max_retries(4);
    let mut offset = 0;
    let mut chunks = 0;
    // A server that keeps asking for the same range would loop: bounded.
    let most = size.div_ceil(chunk) as u32 * 2 + 4;
    loop {
        let length = chunk.min(size - offset);
        let end = offset + length - 1;
        let request = Request::put(upload_url)
            .header("content-range", &format!("bytes {offset}-{end}/{size}"))
            .workspace_range(file, offset, length);
        let response = backoff.send(&request)?;
        chunks += 1;
        match response.status {
            200..=202 => {}
            404 => {
                return Err(Error::upstream(
                    404,
                    "the upload session expired or was cancelled (404); start the upload again",
                ));
            }
            _ => return Err(error(&response)),
        }
        let body: Value = if response.body.is_empty() {
            Value::Null
        } else {
            response.json()?
        };
        // The server says what it still needs (`nextExpectedRanges: ["327680-"]`); without
        // that, the next chunk follows this one, until the last byte is in.
        let next = body["nextExpectedRanges"]
            .as_array()
            .and_then(|r| r.first())
            .and_then(Value::as_str)
            .and_then(|r| r.split('-').next())
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|n| *n < size);
        offset = match next {
            Some(n) => n,
            None if end + 1 < size => end + 1,
            None => {
                return Ok(Uploaded {
                    body,
                    status: response.status,
                    chunks,
                });
            }
        };
        if chunks >= most {
            return Err(Error::upstream(
                response.status,
                "the upload session kept asking for the same bytes",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_rfc_4648() {
        // RFC 4648 §10's test vectors.
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn drive_paths_encode_segments_and_refuse_climbing() {
        assert_eq!(
            drive_path("/Documents/Q1 report#1.pdf").unwrap(),
            "/me/drive/root:/Documents/Q1%20report%231.pdf:"
        );
        assert_eq!(drive_path("a.txt").unwrap(), "/me/drive/root:/a.txt:");
        for bad in ["/", "", "/a//b", "/a/../b", "/./a", "/a/"] {
            assert!(drive_path(bad).is_err(), "{bad}");
        }
    }
}
