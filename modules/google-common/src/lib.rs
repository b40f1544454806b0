//! What the flow8 Google Workspace modules (`gmail-send`, `google-drive-upload`,
//! `google-drive-share`, `google-sheets`) share, so each speaks Google the same way:
//!
//! - [`Roots`]: where each API lives. Gmail, Drive and Sheets have their own hosts
//!   (`gmail.googleapis.com`, `www.googleapis.com`, `sheets.googleapis.com`, as each
//!   API's discovery document names its `rootUrl`); an operator who points the Google
//!   provider's `api_base_url` elsewhere (a proxy, a test's fake) serves them all there.
//! - [`send`]: one request with Google's rules: a 401 gets one forced token refresh and
//!   a retry (then `token_revoked`); 429, 5xx and the 403s Google uses for rate limits
//!   (`rateLimitExceeded`, `userRateLimitExceeded`) are retried after `Retry-After` or
//!   with backoff within the step's deadline, then `rate_limit_exceeded` /
//!   `upstream_error` (developers.google.com/drive/api/guides/handle-errors,
//!   developers.google.com/gmail/api/guides/handle-errors).
//! - [`error`]: Google's error body `{"error": {"code", "message", "status", "errors":
//!   [{"reason", ...}]}}` as a flow8 error name.
//!
//! The host attaches the link's token to every request (binding [`BINDING`]); no
//! module reads it.

use flow8_sdk::http::{Request, Response};
use flow8_sdk::retry::Backoff;
use flow8_sdk::{Error, credentials, log};
use serde_json::Value;
use std::time::Duration;

/// The manifest binding every Google module declares (service `google`).
pub const BINDING: &str = "google";

/// The shipped catalogue's `api_base_url` for Google.
const DEFAULT_BASE: &str = "https://www.googleapis.com";

/// Each API's root URL (no trailing slash).
#[derive(Debug, Clone)]
pub struct Roots {
    /// Gmail: `https://gmail.googleapis.com` (paths `/gmail/v1/...`, `/upload/gmail/v1/...`).
    pub gmail: String,
    /// Drive: `https://www.googleapis.com` (paths `/drive/v3/...`, `/upload/drive/v3/...`).
    pub drive: String,
    /// Sheets: `https://sheets.googleapis.com` (paths `/v4/spreadsheets...`).
    pub sheets: String,
}

impl Roots {
    /// The roots for this step's Google link: Google's own hosts, or every API under
    /// the provider's configured `api_base_url` when the operator changed it.
    pub fn of_link() -> Result<Roots, Error> {
        let config = credentials::config(BINDING)?;
        let base = config["api_base_url"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_BASE)
            .trim_end_matches('/')
            .to_string();
        Ok(Roots::from_base(&base))
    }

    fn from_base(base: &str) -> Roots {
        if base == DEFAULT_BASE {
            Roots {
                gmail: "https://gmail.googleapis.com".into(),
                drive: DEFAULT_BASE.into(),
                sheets: "https://sheets.googleapis.com".into(),
            }
        } else {
            Roots {
                gmail: base.into(),
                drive: base.into(),
                sheets: base.into(),
            }
        }
    }
}

/// Percent-encode a value for a URL path segment or query value: everything but RFC
/// 3986's unreserved characters (and those in `keep`).
pub fn encode(value: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The reasons Google gives in `error.errors[].reason` and `error.details[].reason`.
fn reasons(body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["errors", "details"] {
        if let Some(list) = body["error"][key].as_array() {
            out.extend(
                list.iter()
                    .filter_map(|e| e["reason"].as_str().map(str::to_string)),
            );
        }
    }
    out
}

/// Whether a 403 is Google's way of saying "slow down" (Drive and Gmail answer rate
/// limits with 403 `rateLimitExceeded` / `userRateLimitExceeded` as well as 429).
fn is_rate_limit(status: u16, body: &Value) -> bool {
    status == 429
        || (status == 403
            && reasons(body).iter().any(|r| {
                r == "rateLimitExceeded"
                    || r == "userRateLimitExceeded"
                    || r == "RATE_LIMIT_EXCEEDED"
            }))
}

/// Google's error answer as a flow8 error: 401 `token_revoked`; 403 for a missing
/// scope `insufficient_scope`, for a rate limit `rate_limit_exceeded`, otherwise
/// `access_denied` (the user may not touch that file or spreadsheet); 400 and 404
/// `invalid_input` (a bad value, or no such file); others `upstream_error`.
pub fn error(api: &str, status: u16, body: &[u8], retry_after: Option<u32>) -> Error {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = v["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
    let google_status = v["error"]["status"].as_str().unwrap_or("");
    let reasons = reasons(&v);
    let detail = if google_status.is_empty() {
        format!("{api} answered {status}: {message}")
    } else {
        format!("{api} answered {status} {google_status}: {message}")
    };
    match status {
        401 => Error::token_revoked(detail),
        403 if is_rate_limit(status, &v) => Error::rate_limit_exceeded(detail, retry_after),
        403 if reasons
            .iter()
            .any(|r| r == "insufficientPermissions" || r == "ACCESS_TOKEN_SCOPE_INSUFFICIENT") =>
        {
            Error::insufficient_scope(detail)
        }
        403 => Error::access_denied(detail),
        400 | 404 => Error::invalid_input(detail),
        429 => Error::rate_limit_exceeded(detail, retry_after),
        _ => Error::upstream(status, detail),
    }
}

/// Send `request` (which must carry the [`BINDING`] credential) with Google's retry and
/// refresh rules; the first answer that is not retried, or the error it maps to.
/// `api` names the API in messages (`Gmail`, `Drive`, `Sheets`).
pub fn send(api: &str, request: &Request) -> Result<Response, Error> {
    let backoff = Backoff::with_max_retries(4);
    let mut attempt = 0;
    let mut refreshed = false;
    loop {
        let resp = request.send()?;
        if resp.status == 401 && !refreshed {
            // Refused before its expiry (revoked, or signed out): one forced refresh,
            // then the same request; a second 401 is token_revoked.
            refreshed = true;
            log::warn(&format!("{api} refused the token; refreshing it once"));
            credentials::refresh(BINDING)?;
            continue;
        }
        let body: Value = if resp.status == 403 {
            serde_json::from_slice(&resp.body).unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        if is_rate_limit(resp.status, &body) || resp.status >= 500 {
            attempt += 1;
            let retry_after = resp.retry_after().map(|s| Duration::from_secs(s.into()));
            if attempt > backoff.max_retries || !backoff.wait(attempt, retry_after) {
                return Err(error(api, resp.status, &resp.body, resp.retry_after()));
            }
            log::warn(&format!(
                "{api} answered {}; retrying (attempt {attempt})",
                resp.status
            ));
            continue;
        }
        if !resp.is_success() {
            return Err(error(api, resp.status, &resp.body, resp.retry_after()));
        }
        return Ok(resp);
    }
}

/// The JSON of a successful answer.
pub fn json(api: &str, resp: &Response) -> Result<Value, Error> {
    serde_json::from_slice(&resp.body).map_err(|e| {
        Error::upstream(
            resp.status,
            format!("{api} answered with JSON that does not parse: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_follow_the_configured_base() {
        let r = Roots::from_base("https://www.googleapis.com");
        assert_eq!(r.gmail, "https://gmail.googleapis.com");
        assert_eq!(r.sheets, "https://sheets.googleapis.com");
        let r = Roots::from_base("http://127.0.0.1:9");
        assert_eq!(
            (r.gmail.as_str(), r.drive.as_str()),
            ("http://127.0.0.1:9", "http://127.0.0.1:9")
        );
    }

    #[test]
    fn google_errors_get_flow8_names() {
        let scope = br#"{"error":{"code":403,"message":"Request had insufficient authentication scopes.","status":"PERMISSION_DENIED","errors":[{"message":"Insufficient Permission","domain":"global","reason":"insufficientPermissions"}]}}"#;
        assert_eq!(
            error("Drive", 403, scope, None).name(),
            "insufficient_scope"
        );
        let rate = br#"{"error":{"code":403,"message":"User Rate Limit Exceeded","errors":[{"reason":"userRateLimitExceeded"}]}}"#;
        assert_eq!(
            error("Drive", 403, rate, Some(2)).name(),
            "rate_limit_exceeded"
        );
        let file = br#"{"error":{"code":403,"message":"The user does not have sufficient permissions for this file.","errors":[{"reason":"insufficientFilePermissions"}]}}"#;
        assert_eq!(error("Drive", 403, file, None).name(), "access_denied");
        assert_eq!(error("Drive", 404, b"{}", None).name(), "invalid_input");
        assert_eq!(error("Drive", 500, b"oops", None).name(), "upstream_error");
        assert_eq!(error("Drive", 401, b"", None).name(), "token_revoked");
    }

    #[test]
    fn values_are_percent_encoded() {
        assert_eq!(encode("'My Sheet'!A1:B2", b"!:"), "%27My%20Sheet%27!A1:B2");
    }
}
