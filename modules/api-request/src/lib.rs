//! The api-request module (what Nango calls a proxy): call the API of any connected
//! OAuth service with the user's link. The step names the link (`link_id`); the module
//! joins `path` to that provider's API base URL from the host's provider catalogue (or
//! takes an absolute URL), and the host attaches the link's token and sends it only to
//! the provider's pinned API hosts, refusing any other (`forbidden`). The token never
//! enters this module.
//!
//! A 401 gets one forced refresh of the token and one retry, then `token_revoked`;
//! 429 and 5xx answers are retried with backoff, honouring `Retry-After`, within the
//! step's deadline. The output is `http-request`'s: status, headers, body.

use flow8_sdk::http::{Request, Response, Saved};
use flow8_sdk::retry::Backoff;
use flow8_sdk::{Credential, Error, Manifest, Module, credentials, log};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// The binding name of the link (any OAuth service).
const BINDING: &str = "link";
/// Per-attempt timeout when the input does not say.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Retries of 429, 5xx and network failures when the input does not say.
const DEFAULT_RETRIES: u32 = 3;
/// Most retries anyone may ask for: more only burns the step's deadline.
const MAX_RETRIES: u32 = 10;

/// The step input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    /// Read by the host (the binding's `input_field`), not here.
    #[allow(dead_code)]
    link_id: String,
    #[serde(default)]
    method: Option<String>,
    path: String,
    #[serde(default)]
    query: Map<String, Value>,
    #[serde(default)]
    headers: Map<String, Value>,
    #[serde(default)]
    body: Option<Value>,
    /// Checked by the host before the step runs (the binding's `scopes_field`).
    #[serde(default)]
    #[allow(dead_code)]
    scopes: Vec<String>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
    #[serde(default)]
    max_retries: Option<u32>,
    #[serde(default)]
    save_to: Option<SaveTo>,
}

/// Where the host writes a 2xx answer's body (`save_to`), instead of the output.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SaveTo {
    path: String,
    #[serde(default)]
    max_bytes: Option<u64>,
}

/// The step output (`http-request`'s).
#[derive(Debug, Serialize)]
struct Output {
    status: u16,
    headers: Map<String, Value>,
    body: Value,
    /// Where the body went instead, when `save_to` was given and the answer was 2xx.
    #[serde(skip_serializing_if = "Option::is_none")]
    saved: Option<Saved>,
}

fn schema() -> Value {
    let scalar = json!({"type": ["string", "number", "boolean"]});
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": false,
        "required": ["link_id", "path"],
        "properties": {
            "link_id": {"type": "string", "minLength": 1,
                        "description": "The connected account (OAuth link) to call the API with, of any service."},
            "method": {
                "type": "string",
                "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS",
                         "get", "post", "put", "patch", "delete", "head", "options"],
                "default": "GET"
            },
            "path": {"type": "string", "minLength": 1,
                     "description": "A path joined to the provider's API base URL (`/me/messages`), or an absolute https URL on the provider's API hosts."},
            "query": {"type": "object",
                      "description": "Query parameters, percent-encoded by the module; an array repeats the parameter.",
                      "additionalProperties": {"anyOf": [scalar, {"type": "array", "maxItems": 1000, "items": scalar}]}},
            "headers": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]},
                        "description": "Request headers; `Authorization` is the host's."},
            "body": {"description": "Objects and arrays are sent as JSON; a string as text; null or absent sends no body."},
            "scopes": {"type": "array", "maxItems": 100, "items": {"type": "string", "minLength": 1},
                       "description": "Scopes the link must have been granted for this call; checked before the step runs (insufficient_scope)."},
            "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 300},
            "save_to": {
                "type": "object", "additionalProperties": false, "required": ["path"],
                "description": "Have the host write a 2xx answer's body to this workspace file (streamed, never through the module's memory) instead of the output's `body`.",
                "properties": {
                    "path": {"type": "string", "minLength": 1, "description": "A file in the step's workspace; its directory must exist."},
                    "max_bytes": {"type": "integer", "minimum": 1, "description": "A longer body fails the step (limit_exceeded) and leaves no file; the step's workspace budget applies too."}
                }
            },
            "max_retries": {"type": "integer", "minimum": 0, "maximum": MAX_RETRIES}
        }
    })
}

/// `path` joined to `base` (`https://graph.microsoft.com/v1.0` + `/me` →
/// `https://graph.microsoft.com/v1.0/me`); an absolute URL stays as it is (the host
/// refuses it unless it is on the link's pinned hosts).
fn join(base: &str, path: &str) -> String {
    let lower = path.to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return path.to_string();
    }
    if path.starts_with('?') {
        return format!("{base}{path}");
    }
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// RFC 3986 §2.1 percent-encoding of everything but the unreserved characters (§2.3),
/// so a value can never end a parameter or start another.
fn encode(text: &str) -> String {
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

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The query string of `query` (without `?`), parameters sorted by name (a JSON
/// object has no order a server could rely on); an array repeats its parameter.
fn query_string(query: &Map<String, Value>) -> String {
    let mut parts = Vec::new();
    for (k, v) in query {
        let values: Vec<&Value> = match v {
            Value::Array(items) => items.iter().collect(),
            Value::Null => Vec::new(),
            other => vec![other],
        };
        for v in values {
            parts.push(format!("{}={}", encode(k), encode(&scalar_text(v))));
        }
    }
    parts.join("&")
}

/// The URL with `query` appended to whatever query it has.
fn with_query(url: &str, query: &Map<String, Value>) -> String {
    let q = query_string(query);
    if q.is_empty() {
        return url.to_string();
    }
    let (url, fragment) = match url.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (url, None),
    };
    let sep = if !url.contains('?') {
        "?"
    } else if url.ends_with('?') || url.ends_with('&') {
        ""
    } else {
        "&"
    };
    match fragment {
        Some(f) => format!("{url}{sep}{q}#{f}"),
        None => format!("{url}{sep}{q}"),
    }
}

/// `path` with each `{name}` replaced by the link's provider metadata of that name
/// (QuickBooks' `realmId`: `/company/{realmId}/invoice`), percent-encoded; names the
/// link does not carry stay as written.
fn with_metadata(path: &str, metadata: &Value) -> String {
    let Some(metadata) = metadata.as_object() else {
        return path.to_string();
    };
    let mut out = path.to_string();
    for (name, value) in metadata {
        if let Some(v) = value.as_str() {
            out = out.replace(&format!("{{{name}}}"), &encode(v));
        }
    }
    out
}

/// The URL without its query and fragment, for logs and errors.
fn shown(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

fn build(input: &Input, url: &str, method: &str, timeout: Duration) -> Result<Request, Error> {
    let mut req = Request::new(method, url).timeout(timeout);
    for (k, v) in &input.headers {
        req = req.header(k, &scalar_text(v));
    }
    req = match &input.body {
        None | Some(Value::Null) => req,
        Some(Value::String(s)) => req.text(s),
        Some(v) => req.json(v)?,
    };
    // The host adds `Authorization: Bearer <the link's token>` and refuses any host
    // outside the link's provider's pins.
    Ok(req.credential(BINDING))
}

fn output(resp: Response, saved: Option<Saved>) -> Output {
    Output {
        status: resp.status,
        headers: resp.header_object(),
        // A saved body is in the workspace, not here.
        body: if saved.is_some() {
            Value::Null
        } else {
            resp.body_value()
        },
        saved,
    }
}

/// Send with retries; with `save_to`, a 2xx body goes to the workspace (streamed by
/// the host) and only status and headers come back.
fn send(
    backoff: &Backoff,
    request: &Request,
    save_to: Option<&SaveTo>,
) -> Result<(Response, Option<Saved>), Error> {
    match save_to {
        None => backoff.send(request).map(|r| (r, None)),
        Some(s) => backoff
            .send_to_workspace(request, &s.path, s.max_bytes.unwrap_or(u64::MAX))
            .map(|r| (r.response, r.saved)),
    }
}

struct ApiRequest;

impl Module for ApiRequest {
    type Input = Input;
    type Output = Output;

    fn manifest() -> Manifest {
        Manifest::new("api-request", env!("CARGO_PKG_VERSION"))
            .description("Call the API of any connected OAuth service with its link: method, path (joined to the provider's API base URL), query, headers, body. The host attaches the token and sends it only to the provider's API hosts; a 401 is refreshed once, 429 and 5xx retried.")
            .input_schema(schema())
            .credential(
                Credential::any_oauth_link(BINDING)
                    .input_field("link_id")
                    .scopes_field("scopes"),
            )
        // No allowed_hosts: every request carries the link, and a request that carries
        // a credential may go to that credential's own hosts (the provider's pins) and
        // nowhere else.
    }

    fn execute(input: Input) -> Result<Output, Error> {
        let config = credentials::config(BINDING)?;
        let service = config["service"]
            .as_str()
            .unwrap_or("the provider")
            .to_string();
        let base = config["api_base_url"].as_str().unwrap_or_default();
        let absolute = {
            let p = input.path.to_ascii_lowercase();
            p.starts_with("https://") || p.starts_with("http://")
        };
        if base.is_empty() && !absolute {
            return Err(Error::invalid_input(format!(
                "the {service} provider has no API base URL on this host; give `path` as an absolute URL on its API hosts"
            )));
        }
        let path = with_metadata(&input.path, &config["provider_metadata"]);
        let url = with_query(&join(base, &path), &input.query);
        let method = input
            .method
            .as_deref()
            .unwrap_or("GET")
            .to_ascii_uppercase();
        let timeout = input
            .timeout_seconds
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TIMEOUT);
        let backoff = Backoff::with_max_retries(
            input
                .max_retries
                .unwrap_or(DEFAULT_RETRIES)
                .min(MAX_RETRIES),
        );
        let request = build(&input, &url, &method, timeout)?;
        log::info(&format!("{method} {} with the {service} link", shown(&url)));

        let mut refreshed = false;
        loop {
            let (response, saved) = send(&backoff, &request, input.save_to.as_ref())?;
            if response.status == 401 {
                if refreshed {
                    return Err(Error::token_revoked(format!(
                        "{service} refused the token again after a refresh (401 on {method} {}); the user must reconnect the link",
                        shown(&url)
                    )));
                }
                // Refused before its expiry (revoked, rotated signing keys): one forced
                // refresh, then the same request with the new token.
                refreshed = true;
                log::warn(&format!(
                    "{service} answered 401; refreshing the token once"
                ));
                credentials::refresh(BINDING)?;
                continue;
            }
            if response.status == 429 {
                return Err(Error::rate_limit_exceeded(
                    format!(
                        "{service} answered 429 Too Many Requests to {method} {}; retrying within the step's deadline did not get through",
                        shown(&url)
                    ),
                    response.retry_after(),
                ));
            }
            return Ok(output(response, saved));
        }
    }
}

flow8_sdk::export_module!(ApiRequest);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_the_base_and_absolute_urls_stay() {
        let base = "https://graph.microsoft.com/v1.0";
        assert_eq!(
            join(base, "/me/messages"),
            "https://graph.microsoft.com/v1.0/me/messages"
        );
        assert_eq!(
            join(&format!("{base}/"), "me"),
            "https://graph.microsoft.com/v1.0/me"
        );
        assert_eq!(join(base, "?x=1"), "https://graph.microsoft.com/v1.0?x=1");
        assert_eq!(
            join(base, "HTTPS://graph.microsoft.com/beta/me"),
            "HTTPS://graph.microsoft.com/beta/me"
        );
        // A scheme-relative path is a path here, never another host.
        assert_eq!(
            join(base, "//evil.example/x"),
            "https://graph.microsoft.com/v1.0/evil.example/x"
        );
    }

    #[test]
    fn query_values_are_encoded_and_arrays_repeat() {
        let q: Map<String, Value> = serde_json::from_value(json!({
            "$select": "subject,from", "q": "a b&c=d", "n": 5, "tag": ["x", "y"], "skip": null
        }))
        .unwrap();
        assert_eq!(
            with_query("https://x.test/a", &q),
            "https://x.test/a?%24select=subject%2Cfrom&n=5&q=a%20b%26c%3Dd&tag=x&tag=y"
        );
        let one: Map<String, Value> = serde_json::from_value(json!({"b": "2"})).unwrap();
        assert_eq!(
            with_query("https://x.test/a?a=1", &one),
            "https://x.test/a?a=1&b=2"
        );
        assert_eq!(
            with_query("https://x.test/a?", &one),
            "https://x.test/a?b=2"
        );
        assert_eq!(
            with_query("https://x.test/a#f", &one),
            "https://x.test/a?b=2#f"
        );
        assert_eq!(
            with_query("https://x.test/a", &Map::new()),
            "https://x.test/a"
        );
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn metadata_fills_named_placeholders_only() {
        let meta = json!({"realmId": "9130 35", "other": 1});
        assert_eq!(
            with_metadata("/company/{realmId}/invoice/{id}", &meta),
            "/company/9130%2035/invoice/{id}"
        );
        assert_eq!(with_metadata("/x/{realmId}", &Value::Null), "/x/{realmId}");
    }
}
