//! The generic HTTP Request module (flow8's "Custom APIs"): call any HTTP API with a
//! method, headers and a JSON or text body. An optional component bound as `request`
//! gives a base URL, timeout, retry budget and an auth header that the host attaches,
//! so the module never holds the secret. 429 and 5xx answers (and network failures) are
//! retried with exponential backoff and jitter, honouring `Retry-After`, within the
//! step's deadline.

use flow8_sdk::http::{Request, Response};
use flow8_sdk::retry::Backoff;
use flow8_sdk::{Credential, Error, Manifest, Module, credentials, log};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// The step input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: Map<String, Value>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
    #[serde(default)]
    max_retries: Option<u32>,
}

/// The step output.
#[derive(Debug, Serialize)]
struct Output {
    status: u16,
    headers: Map<String, Value>,
    body: Value,
}

/// Settings from the optional `request` component.
#[derive(Debug, Default, Deserialize)]
struct ComponentConfig {
    base_url: Option<String>,
    timeout_seconds: Option<u64>,
    max_retries: Option<u32>,
}

struct HttpRequest;

fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "url": {"type": "string", "minLength": 1, "description": "Absolute URL, or a path joined to the bound component's base_url."},
            "method": {"type": "string", "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS",
                                                   "get", "post", "put", "patch", "delete", "head", "options"]},
            "headers": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}},
            "body": {"description": "Objects and arrays are sent as JSON; strings as text."},
            "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 300},
            "max_retries": {"type": "integer", "minimum": 0, "maximum": 10}
        }
    })
}

/// Join a relative path to a base URL (`https://api.x.com/v1` + `/things` → `https://api.x.com/v1/things`).
fn join(base: &str, path: &str) -> String {
    if path.starts_with("http://") || path.starts_with("https://") {
        return path.to_string();
    }
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

fn header_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn build(
    input: &Input,
    url: &str,
    method: &str,
    timeout: Duration,
    attach: bool,
) -> Result<Request, Error> {
    let mut req = Request::new(method, url).timeout(timeout);
    for (k, v) in &input.headers {
        req = req.header(k, &header_value(v));
    }
    req = match &input.body {
        None | Some(Value::Null) => req,
        Some(Value::String(s)) => req.text(s),
        Some(v) => req.json(v)?,
    };
    if attach {
        req = req.credential("request");
    }
    Ok(req)
}

fn output(resp: Response) -> Output {
    let mut headers = Map::new();
    for (k, v) in &resp.headers {
        // Repeated headers are joined as HTTP allows (RFC 9110 §5.3).
        let entry = headers
            .entry(k.to_ascii_lowercase())
            .or_insert(Value::String(String::new()));
        if let Value::String(s) = entry {
            if !s.is_empty() {
                s.push_str(", ");
            }
            s.push_str(v);
        }
    }
    let body = if resp.body.is_empty() {
        Value::Null
    } else if resp.is_json() {
        serde_json::from_slice(&resp.body).unwrap_or_else(|_| Value::String(resp.text()))
    } else {
        Value::String(resp.text())
    };
    Output {
        status: resp.status,
        headers,
        body,
    }
}

impl Module for HttpRequest {
    type Input = Input;
    type Output = Output;

    fn manifest() -> Manifest {
        Manifest::new("http-request", env!("CARGO_PKG_VERSION"))
            .description("Call an HTTP API: method, URL, headers, JSON or text body; retries 429 and 5xx with backoff.")
            .input_schema(schema())
            .credential(Credential::component("request", "http").optional())
            .allowed_host("https://*:*")
            .allowed_host("http://*:*")
    }

    fn execute(input: Input) -> Result<Output, Error> {
        let bound = credentials::is_bound("request");
        let config: ComponentConfig = if bound {
            serde_json::from_value(credentials::config("request")?).unwrap_or_default()
        } else {
            ComponentConfig::default()
        };
        let url = match (&input.url, &config.base_url) {
            (Some(u), Some(base)) => join(base, u),
            (Some(u), None) => u.clone(),
            (None, Some(base)) => base.clone(),
            (None, None) => {
                return Err(Error::invalid_input(
                    "`url` is required (or bind a `request` component with a base_url)",
                ));
            }
        };
        let method = input
            .method
            .as_deref()
            .unwrap_or("GET")
            .to_ascii_uppercase();
        let timeout = Duration::from_secs(
            input
                .timeout_seconds
                .or(config.timeout_seconds)
                .unwrap_or(30),
        );
        let backoff = Backoff {
            max_retries: input.max_retries.or(config.max_retries).unwrap_or(3),
            ..Backoff::default()
        };
        let request = build(&input, &url, &method, timeout, bound)?;

        let mut attempt = 0;
        loop {
            let result = request.send();
            let retry_after = match &result {
                Ok(r) if r.status == 429 || r.status >= 500 => {
                    Some(r.retry_after().map(|s| Duration::from_secs(s.into())))
                }
                Err(Error::Network(_)) => Some(None),
                _ => None,
            };
            let Some(retry_after) = retry_after else {
                return result.map(output);
            };
            attempt += 1;
            if attempt > backoff.max_retries || !backoff.wait(attempt, retry_after) {
                return match result {
                    Ok(r) if r.status == 429 => Err(Error::rate_limit_exceeded(
                        format!("{url} still answered 429 after {} attempts", attempt),
                        r.retry_after(),
                    )),
                    other => other.map(output),
                };
            }
            log::warn(&format!(
                "attempt {attempt} of {method} {url} failed ({}); retrying",
                match &result {
                    Ok(r) => format!("status {}", r.status),
                    Err(e) => e.to_string(),
                }
            ));
        }
    }
}

flow8_sdk::export_module!(HttpRequest);
