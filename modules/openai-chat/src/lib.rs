//! The openai-chat module: one OpenAI Chat Completions call
//! (platform.openai.com/docs/api-reference/chat/create) with the bound `openai`
//! component. The host attaches the key (`Authorization: Bearer ...`) and sends it only
//! to `api.openai.com` or the component's `base_url` (a compatible gateway); the module
//! never holds it. OpenAI's errors (`{"error": {"message", "type", "code"}}`) are
//! mapped to flow8's names: 401 → `access_denied`, 400/404 → `invalid_input` with
//! OpenAI's message, 429 and 5xx retried within the deadline (honouring `Retry-After`)
//! then `rate_limit_exceeded` / `upstream_error`; a 429 for a spent quota
//! (`insufficient_quota`) is not retried.

use flow8_sdk::http::{Request, Response};
use flow8_sdk::retry::Backoff;
use flow8_sdk::{Credential, Error, Manifest, Module, credentials, log};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;

const BINDING: &str = "openai";
/// OpenAI's API, as its SDKs' base URL (with `/v1`).
const DEFAULT_BASE: &str = "https://api.openai.com/v1";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<Value>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    response_format: Option<String>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
    #[serde(default)]
    max_retries: Option<u32>,
}

#[derive(Debug, Serialize)]
struct Output {
    text: String,
    finish_reason: Value,
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
            "messages": {
                "type": "array", "minItems": 1, "maxItems": 1000,
                "items": {
                    "type": "object", "required": ["role", "content"],
                    "properties": {
                        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
                        "content": {"type": ["string", "array"]},
                        "name": {"type": "string"}
                    }
                }
            },
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "max_tokens": {"type": "integer", "minimum": 1},
            "response_format": {"type": "string", "enum": ["text", "json_object"],
                                "description": "`json_object`: the model answers with a JSON object (the messages must ask for JSON)."},
            "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 600},
            "max_retries": {"type": "integer", "minimum": 0, "maximum": 10}
        }
    })
}

/// OpenAI's error object's message and type/code, for the flow8 error.
fn detail(resp: &Response) -> (String, String) {
    let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    let e = &body["error"];
    let message = e["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| resp.text().chars().take(500).collect());
    let kind = e["code"]
        .as_str()
        .or(e["type"].as_str())
        .unwrap_or("")
        .to_string();
    (message, kind)
}

fn error_of(resp: &Response) -> Error {
    let (message, kind) = detail(resp);
    let text = format!("OpenAI {} {kind}: {message}", resp.status);
    match resp.status {
        401 | 403 => Error::access_denied(text),
        400 | 404 | 409 | 422 => Error::invalid_input(text),
        429 => Error::rate_limit_exceeded(text, resp.retry_after()),
        s => Error::upstream(s, text),
    }
}

fn retryable(resp: &Response) -> bool {
    (resp.status == 429 && detail(resp).1 != "insufficient_quota") || resp.status >= 500
}

struct OpenAiChat;

impl Module for OpenAiChat {
    type Input = Input;
    type Output = Output;

    fn manifest() -> Manifest {
        Manifest::new("openai-chat", env!("CARGO_PKG_VERSION"))
            .description("One OpenAI Chat Completions call (model, messages, temperature, max tokens, JSON response format) with an `openai` component; the host attaches the key.")
            .input_schema(schema())
            .credential(Credential::component(BINDING, "openai"))
            .allowed_host("https://api.openai.com")
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
                Error::invalid_input("`model` is required (the `openai` component names none)")
            })?;
        let mut body = json!({"model": model, "messages": input.messages});
        if let Some(t) = input.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = input.max_tokens {
            body["max_tokens"] = json!(m);
        }
        if let Some(f) = &input.response_format {
            body["response_format"] = json!({"type": f});
        }
        let request = Request::post(&format!("{base}/chat/completions"))
            .json(&body)?
            .timeout(Duration::from_secs(input.timeout_seconds.unwrap_or(120)))
            .credential(BINDING);
        log::info(&format!("OpenAI chat completion with {model}"));
        let backoff = Backoff::with_max_retries(input.max_retries.unwrap_or(3).min(10));
        let mut attempt = 0;
        let resp = loop {
            let resp = backoff_send(&request)?;
            if resp.is_success() || !retryable(&resp) {
                break resp;
            }
            attempt += 1;
            let wait = resp.retry_after().map(|s| Duration::from_secs(s.into()));
            if attempt > backoff.max_retries || !backoff.wait(attempt, wait) {
                break resp;
            }
            log::warn(&format!("OpenAI answered {}; retry {attempt}", resp.status));
        };
        if !resp.is_success() {
            return Err(error_of(&resp));
        }
        let answer: Value = resp.json()?;
        let choice = &answer["choices"][0];
        Ok(Output {
            text: choice["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            finish_reason: choice["finish_reason"].clone(),
            usage: answer["usage"].clone(),
            model: answer["model"].clone(),
            id: answer["id"].clone(),
        })
    }
}

/// One answer: a failure with no answer at all (network, timeout) is retried here with
/// backoff; what the answer means is the caller's to judge.
fn backoff_send(request: &Request) -> Result<Response, Error> {
    Backoff::with_max_retries(2).call(|| request.send())
}

flow8_sdk::export_module!(OpenAiChat);
