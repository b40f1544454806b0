//! The anthropic-message module: one Anthropic Messages API call
//! (docs.anthropic.com/en/api/messages) with the bound `anthropic` component, sending
//! `anthropic-version: 2023-06-01`. The host attaches the key (`x-api-key`) and sends it
//! only to `api.anthropic.com` or the component's `base_url` (a compatible gateway);
//! the module never holds it. Anthropic's errors (`{"type": "error", "error": {"type",
//! "message"}}`, docs.anthropic.com/en/api/errors) are mapped to flow8's names:
//! 401/403 → `access_denied`, 400/404/413 → `invalid_input` with Anthropic's message,
//! 429 (`rate_limit_error`), 5xx and 529 (`overloaded_error`) retried within the
//! deadline (honouring `retry-after`) then `rate_limit_exceeded` / `upstream_error`.

use flow8_sdk::http::{Request, Response};
use flow8_sdk::retry::Backoff;
use flow8_sdk::{Credential, Error, Manifest, Module, credentials, log};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;

const BINDING: &str = "anthropic";
const DEFAULT_BASE: &str = "https://api.anthropic.com";
/// The API version this module speaks (docs.anthropic.com/en/api/versioning).
const API_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by the API; this when the input does not say.
const DEFAULT_MAX_TOKENS: u32 = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    system: Option<Value>,
    messages: Vec<Value>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
    #[serde(default)]
    max_retries: Option<u32>,
}

#[derive(Debug, Serialize)]
struct Output {
    text: String,
    stop_reason: Value,
    usage: Value,
    model: Value,
    id: Value,
}

fn schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": false,
        "required": ["messages"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "description": "Defaults to the component's `model`."},
            "system": {"type": ["string", "array"], "description": "The system prompt."},
            "messages": {
                "type": "array", "minItems": 1, "maxItems": 1000,
                "items": {
                    "type": "object", "required": ["role", "content"],
                    "properties": {
                        "role": {"type": "string", "enum": ["user", "assistant"]},
                        "content": {"type": ["string", "array"]}
                    }
                }
            },
            "max_tokens": {"type": "integer", "minimum": 1, "description": "Default 1024."},
            "temperature": {"type": "number", "minimum": 0, "maximum": 1},
            "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 600},
            "max_retries": {"type": "integer", "minimum": 0, "maximum": 10}
        }
    })
}

fn error_of(resp: &Response) -> Error {
    let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    let e = &body["error"];
    let kind = e["type"].as_str().unwrap_or("");
    let message = e["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| resp.text().chars().take(500).collect());
    let text = format!("Anthropic {} {kind}: {message}", resp.status);
    match resp.status {
        401 | 403 => Error::access_denied(text),
        400 | 404 | 413 => Error::invalid_input(text),
        429 => Error::rate_limit_exceeded(text, resp.retry_after()),
        s => Error::upstream(s, text),
    }
}

struct AnthropicMessage;

impl Module for AnthropicMessage {
    type Input = Input;
    type Output = Output;

    fn manifest() -> Manifest {
        Manifest::new("anthropic-message", env!("CARGO_PKG_VERSION"))
            .description("One Anthropic Messages API call (model, system, messages, max_tokens) with an `anthropic` component; the host attaches the key.")
            .input_schema(schema())
            .credential(Credential::component(BINDING, "anthropic"))
            .allowed_host("https://api.anthropic.com")
    }

    fn execute(input: Input) -> Result<Output, Error> {
        let config = credentials::config(BINDING)?;
        let base = config["base_url"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_BASE)
            .trim_end_matches('/')
            .to_string();
        let model = input
            .model
            .clone()
            .or_else(|| config["model"].as_str().map(str::to_string))
            .ok_or_else(|| {
                Error::invalid_input("`model` is required (the `anthropic` component names none)")
            })?;
        let mut body = json!({
            "model": model,
            "max_tokens": input.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            "messages": input.messages,
        });
        if let Some(s) = &input.system {
            body["system"] = s.clone();
        }
        if let Some(t) = input.temperature {
            body["temperature"] = json!(t);
        }
        let request = Request::post(&format!("{base}/v1/messages"))
            .header("anthropic-version", API_VERSION)
            .json(&body)?
            .timeout(Duration::from_secs(input.timeout_seconds.unwrap_or(120)))
            .credential(BINDING);
        log::info(&format!("Anthropic message with {model}"));
        // 429, 5xx and 529 (overloaded) are retried, honouring retry-after.
        let backoff = Backoff::with_max_retries(input.max_retries.unwrap_or(3).min(10));
        let resp = backoff.send(&request)?;
        if !resp.is_success() {
            return Err(error_of(&resp));
        }
        let answer: Value = resp.json()?;
        let text = answer["content"]
            .as_array()
            .map(|blocks| {
                blocks
                    .iter()
                    .filter(|b| b["type"] == "text")
                    .filter_map(|b| b["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("")
            })
            .unwrap_or_default();
        Ok(Output {
            text,
            stop_reason: answer["stop_reason"].clone(),
            usage: answer["usage"].clone(),
            model: answer["model"].clone(),
            id: answer["id"].clone(),
        })
    }
}

flow8_sdk::export_module!(AnthropicMessage);
