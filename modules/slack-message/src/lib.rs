//! The slack-message module (flow8's Slack usage): post a message, with optional Block
//! Kit blocks and thread, through `chat.postMessage` with the bound Slack link. The host
//! attaches the token. Slack answers errors with HTTP 200 and `ok:false`
//! (api.slack.com/web#responses); those are mapped to flow8's names. HTTP 429 is retried
//! after `Retry-After` within the step's deadline (api.slack.com/docs/rate-limits).

use flow8_sdk::http::Request;
use flow8_sdk::retry::Backoff;
use flow8_sdk::{Credential, Error, Manifest, Module, credentials, log};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[allow(dead_code)]
    link_id: String,
    channel: String,
    message: String,
    #[serde(default)]
    blocks: Option<Value>,
    #[serde(default)]
    thread_ts: Option<String>,
}

#[derive(Debug, Serialize)]
struct Output {
    channel: String,
    ts: String,
}

/// Slack's `error` codes as flow8 errors.
fn slack_error(code: &str) -> Error {
    match code {
        "invalid_auth" | "token_revoked" | "account_inactive" | "not_authed" | "token_expired" => {
            Error::token_revoked(format!("Slack: {code}"))
        }
        "missing_scope" => Error::insufficient_scope("Slack: missing_scope (chat:write is needed)"),
        "not_in_channel" => {
            Error::invalid_input("Slack: not_in_channel (invite the app to the channel)")
        }
        "channel_not_found" => Error::invalid_input("Slack: channel_not_found"),
        "is_archived" => Error::invalid_input("Slack: is_archived (the channel is archived)"),
        "msg_too_long" | "no_text" | "invalid_blocks" | "too_many_attachments" => {
            Error::invalid_input(format!("Slack: {code}"))
        }
        "ratelimited" => Error::rate_limit_exceeded("Slack: ratelimited", None),
        other => Error::upstream(200, format!("Slack: {other}")),
    }
}

struct SlackMessage;

impl Module for SlackMessage {
    type Input = Input;
    type Output = Output;

    fn manifest() -> Manifest {
        Manifest::new("slack-message", env!("CARGO_PKG_VERSION"))
            .description("Post a message to a Slack channel (chat.postMessage) with the user's Slack link.")
            .input_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["link_id", "channel", "message"],
                "properties": {
                    "link_id": {"type": "string", "minLength": 1},
                    "channel": {"type": "string", "minLength": 1},
                    "message": {"type": "string", "minLength": 1, "maxLength": 40000},
                    "blocks": {"type": "array", "maxItems": 50, "items": {"type": "object", "required": ["type"]}},
                    "thread_ts": {"type": "string"}
                }
            }))
            .credential(
                Credential::oauth_link("slack", "slack")
                    .scopes(["chat:write"])
                    .input_field("link_id"),
            )
            .allowed_host("https://slack.com")
    }

    fn execute(input: Input) -> Result<Output, Error> {
        let config = credentials::config("slack")?;
        let base = config["api_base_url"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("https://slack.com/api")
            .trim_end_matches('/')
            .to_string();
        let mut body = json!({"channel": input.channel, "text": input.message});
        if let Some(b) = &input.blocks {
            body["blocks"] = b.clone();
        }
        if let Some(t) = &input.thread_ts {
            body["thread_ts"] = json!(t);
        }
        let request = Request::post(&format!("{base}/chat.postMessage"))
            .header("content-type", "application/json; charset=utf-8")
            .json(&body)?
            .credential("slack");
        let backoff = Backoff {
            max_retries: 5,
            ..Backoff::default()
        };
        let mut attempt = 0;
        loop {
            let resp = request.send()?;
            if resp.status == 429 {
                attempt += 1;
                let retry_after = resp.retry_after().map(|s| Duration::from_secs(s.into()));
                if attempt > backoff.max_retries || !backoff.wait(attempt, retry_after) {
                    return Err(Error::rate_limit_exceeded(
                        "Slack kept answering 429 within the step's deadline",
                        resp.retry_after(),
                    ));
                }
                log::warn(&format!(
                    "Slack rate limited the post; retrying (attempt {attempt})"
                ));
                continue;
            }
            if resp.status >= 500 {
                attempt += 1;
                if attempt > backoff.max_retries || !backoff.wait(attempt, None) {
                    return Err(Error::upstream(resp.status, "Slack is unavailable"));
                }
                continue;
            }
            let answer: Value = resp.json()?;
            if answer["ok"] != json!(true) {
                return Err(slack_error(
                    answer["error"].as_str().unwrap_or("unknown_error"),
                ));
            }
            return Ok(Output {
                channel: answer["channel"]
                    .as_str()
                    .unwrap_or(&input.channel)
                    .to_string(),
                ts: answer["ts"]
                    .as_str()
                    .ok_or_else(|| Error::upstream(resp.status, "Slack answered without a ts"))?
                    .to_string(),
            });
        }
    }
}

flow8_sdk::export_module!(SlackMessage);
