//! The generic HTTP Request module (flow8's "Custom APIs"): call any HTTP API with a
//! method, headers and a JSON or text body. An optional component bound as `request`
//! gives a base URL, timeout, retry budget and an auth header that the host attaches,
//! so the module never holds the secret. 429 and 5xx answers (and network failures) are
//! retried with exponential backoff and jitter, honouring `Retry-After`, within the
//! step's deadline.

use flow8_sdk::http::{Request, Response, Saved};
use flow8_sdk::retry::Backoff;
use flow8_sdk::{Credential, Error, Manifest, Module, credentials, log};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// The binding name of the optional API-key component (flow8's `GetComponent("request")`).
const BINDING: &str = "request";
/// Per-attempt timeout when neither the input nor the component says.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Retries when neither the input nor the component says.
const DEFAULT_RETRIES: u32 = 3;
/// Most retries anyone may ask for: more only burns the step's deadline.
const MAX_RETRIES: u32 = 10;

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

/// The step output.
#[derive(Debug, Serialize)]
struct Output {
    status: u16,
    headers: Map<String, Value>,
    body: Value,
    /// Where the body went instead, when `save_to` was given and the answer was 2xx.
    #[serde(skip_serializing_if = "Option::is_none")]
    saved: Option<Saved>,
}

/// Settings from the optional `request` component (its non-secret config).
#[derive(Debug, Default)]
struct ComponentConfig {
    base_url: Option<String>,
    timeout: Option<Duration>,
    max_retries: Option<u32>,
}

impl ComponentConfig {
    /// Read the component's config. The host validates it when the component is
    /// created; a value this module cannot use is still refused by name rather than
    /// silently replaced by a default.
    fn parse(config: &Value) -> Result<ComponentConfig, Error> {
        let number = |key: &str| -> Result<Option<f64>, Error> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) if n.as_f64().is_some_and(|n| n >= 0.0) => Ok(n.as_f64()),
                Some(_) => Err(Error::invalid_input(format!(
                    "the `{BINDING}` component's `{key}` is not a non-negative number"
                ))),
            }
        };
        let base_url = match config.get("base_url") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Some(_) => {
                return Err(Error::invalid_input(format!(
                    "the `{BINDING}` component's `base_url` is not a URL"
                )));
            }
        };
        Ok(ComponentConfig {
            base_url,
            timeout: number("timeout_seconds")?
                .filter(|s| *s > 0.0)
                .map(|s| Duration::from_secs_f64(s.min(3600.0))),
            max_retries: number("max_retries")?.map(|n| (n as u32).min(MAX_RETRIES)),
        })
    }
}

struct HttpRequest;

fn schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "url": {
                "type": "string", "minLength": 1,
                "description": "Absolute http(s) URL, or a path joined to the bound `request` component's base_url. Required unless that component has a base_url."
            },
            "method": {
                "type": "string",
                "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS",
                         "get", "post", "put", "patch", "delete", "head", "options"],
                "default": "GET"
            },
            "headers": {
                "type": "object",
                "description": "Request headers.",
                "additionalProperties": {"type": ["string", "number", "boolean"]}
            },
            "body": {
                "description": "Objects and arrays are sent as JSON (content-type application/json); a string is sent as text (text/plain) unless a content-type header is given; null sends no body."
            },
            "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 300,
                                "description": "Per attempt; defaults to the component's, else 30."},
            "save_to": {
                "type": "object", "additionalProperties": false, "required": ["path"],
                "description": "Have the host write a 2xx answer's body to this workspace file (streamed, never through the module's memory) instead of the output's `body`.",
                "properties": {
                    "path": {"type": "string", "minLength": 1, "description": "A file in the step's workspace; its directory must exist."},
                    "max_bytes": {"type": "integer", "minimum": 1, "description": "A longer body fails the step (limit_exceeded) and leaves no file; the step's workspace budget applies too."}
                }
            },
            "max_retries": {"type": "integer", "minimum": 0, "maximum": MAX_RETRIES,
                            "description": "Retries of 429, 5xx and network failures; defaults to the component's, else 3."}
        }
    })
}

/// Join a relative URL to a base URL (`https://api.x.com/v1` + `/things` →
/// `https://api.x.com/v1/things`); an absolute URL stays as it is.
fn join(base: &str, url: &str) -> String {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return url.to_string();
    }
    if url.is_empty() {
        return base.to_string();
    }
    if url.starts_with('?') || url.starts_with('#') {
        return format!("{base}{url}");
    }
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        url.trim_start_matches('/')
    )
}

/// The URL without its query and fragment, for logs and errors (a query may carry a key).
fn shown(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
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
        // The host adds the component's auth header and pins the request to the
        // component's hosts; the secret never enters this module.
        req = req.credential(BINDING);
    }
    Ok(req)
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

impl Module for HttpRequest {
    type Input = Input;
    type Output = Output;

    fn manifest() -> Manifest {
        Manifest::new("http-request", env!("CARGO_PKG_VERSION"))
            .description("Call an HTTP API: method, URL, headers, JSON or text body; retries 429 and 5xx with backoff. An optional `request` component supplies a base URL, timeout, retries and an auth header the host attaches.")
            .input_schema(schema())
            .credential(Credential::component(BINDING, "http").optional())
            // Any public host on any port: custom APIs often live on :8080 and friends.
            // The operator's policy still refuses private and loopback addresses.
            .allowed_hosts(["https://*:*", "http://*:*"])
    }

    fn execute(input: Input) -> Result<Output, Error> {
        let bound = credentials::is_bound(BINDING);
        let config = if bound {
            ComponentConfig::parse(&credentials::config(BINDING)?)?
        } else {
            ComponentConfig::default()
        };
        let url = match (&input.url, &config.base_url) {
            (Some(u), Some(base)) => join(base, u),
            (Some(u), None) => u.clone(),
            (None, Some(base)) => base.clone(),
            (None, None) => {
                return Err(Error::invalid_input(if bound {
                    format!("`url` is required: the `{BINDING}` component has no base_url")
                } else {
                    format!("`url` is required (or bind a `{BINDING}` component with a base_url)")
                }));
            }
        };
        let method = input
            .method
            .as_deref()
            .unwrap_or("GET")
            .to_ascii_uppercase();
        let timeout = input
            .timeout_seconds
            .map(Duration::from_secs)
            .or(config.timeout)
            .unwrap_or(DEFAULT_TIMEOUT);
        let backoff = Backoff::with_max_retries(
            input
                .max_retries
                .or(config.max_retries)
                .unwrap_or(DEFAULT_RETRIES)
                .min(MAX_RETRIES),
        );
        let request = build(&input, &url, &method, timeout, bound)?;
        log::info(&format!(
            "{method} {}{}",
            shown(&url),
            if bound {
                " (host attaches the `request` credential)"
            } else {
                ""
            }
        ));

        let (response, saved) = send(&backoff, &request, input.save_to.as_ref())?;
        if response.status == 429 {
            return Err(Error::rate_limit_exceeded(
                format!(
                    "{method} {} answered 429 Too Many Requests; {}",
                    shown(&url),
                    match backoff.max_retries {
                        0 => "retries are disabled".to_string(),
                        1 => "retrying once (never past the step's deadline) did not get through"
                            .to_string(),
                        n => format!(
                            "retrying (at most {n} times, never past the step's deadline) did not get through"
                        ),
                    }
                ),
                response.retry_after(),
            ));
        }
        Ok(output(response, saved))
    }
}

flow8_sdk::export_module!(HttpRequest);
