//! The microsoft-calendar module (flow8's "send-meeting-invite" step): create an event
//! in the user's calendar with Microsoft Graph `POST /me/events`
//! (learn.microsoft.com/graph/api/user-post-events). The host attaches the token.
//! Graph errors: 401 → one forced token refresh, then `token_revoked`; 403 →
//! `insufficient_scope`; 429/503 retried after `Retry-After` within the deadline, then
//! `rate_limit_exceeded`.

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
    event_title: String,
    #[serde(default)]
    attendees: Vec<String>,
    start_time: String,
    end_time: String,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    time_zone: Option<String>,
    #[serde(default)]
    online_meeting: bool,
}

#[derive(Debug, Serialize)]
struct Output {
    id: String,
    #[serde(rename = "webLink")]
    web_link: String,
}

/// Graph's error object as a flow8 error.
fn graph_error(status: u16, body: &Value) -> Error {
    let code = body["error"]["code"].as_str().unwrap_or("");
    let message = body["error"]["message"].as_str().unwrap_or("");
    let detail = format!("Microsoft Graph {status} {code}: {message}");
    match status {
        401 => Error::token_revoked(detail),
        403 => Error::insufficient_scope(detail),
        400 | 404 => Error::invalid_input(detail),
        _ => Error::upstream(status, detail),
    }
}

/// RFC 3339 `2026-04-05T10:00:00Z` as Graph's dateTimeTimeZone (`dateTime` without the
/// offset, plus a zone).
fn date_time(value: &str, zone: &str) -> Result<Value, Error> {
    let ok = value.len() >= 19
        && value.as_bytes()[10] == b'T'
        && value[..4].bytes().all(|b| b.is_ascii_digit());
    if !ok {
        return Err(Error::invalid_input(format!(
            "`{value}` is not an ISO 8601 date-time"
        )));
    }
    let (date_time, zone) = match value.strip_suffix('Z') {
        Some(dt) => (dt.to_string(), "UTC".to_string()),
        None => (value[..19].to_string(), zone.to_string()),
    };
    Ok(json!({"dateTime": date_time, "timeZone": zone}))
}

struct MicrosoftCalendar;

impl Module for MicrosoftCalendar {
    type Input = Input;
    type Output = Output;

    fn manifest() -> Manifest {
        Manifest::new("microsoft-calendar", env!("CARGO_PKG_VERSION"))
            .description("Create a calendar event with attendees through Microsoft Graph (POST /me/events).")
            .input_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["link_id", "event_title", "start_time", "end_time"],
                "properties": {
                    "link_id": {"type": "string", "minLength": 1},
                    "event_title": {"type": "string", "minLength": 1, "maxLength": 255},
                    "attendees": {"type": "array", "maxItems": 500, "items": {"type": "string", "pattern": "^[^@\\s]+@[^@\\s]+$"}},
                    "start_time": {"type": "string", "minLength": 19},
                    "end_time": {"type": "string", "minLength": 19},
                    "body": {"type": "string"},
                    "location": {"type": "string"},
                    "time_zone": {"type": "string"},
                    "online_meeting": {"type": "boolean"}
                }
            }))
            .credential(
                Credential::oauth_link("microsoft", "microsoft")
                    .scopes(["Calendars.ReadWrite"])
                    .input_field("link_id"),
            )
            .allowed_host("https://graph.microsoft.com")
    }

    fn execute(input: Input) -> Result<Output, Error> {
        let config = credentials::config("microsoft")?;
        let base = config["api_base_url"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("https://graph.microsoft.com/v1.0")
            .trim_end_matches('/')
            .to_string();
        let zone = input.time_zone.as_deref().unwrap_or("UTC");
        let mut event = json!({
            "subject": input.event_title,
            "start": date_time(&input.start_time, zone)?,
            "end": date_time(&input.end_time, zone)?,
            "attendees": input.attendees.iter().map(|a| json!({"emailAddress": {"address": a}, "type": "required"})).collect::<Vec<_>>(),
        });
        if let Some(b) = &input.body {
            event["body"] = json!({"contentType": "HTML", "content": b});
        }
        if let Some(l) = &input.location {
            event["location"] = json!({"displayName": l});
        }
        if input.online_meeting {
            event["isOnlineMeeting"] = json!(true);
            event["onlineMeetingProvider"] = json!("teamsForBusiness");
        }
        let request = Request::post(&format!("{base}/me/events"))
            .json(&event)?
            .credential("microsoft");
        let backoff = Backoff {
            max_retries: 4,
            ..Backoff::default()
        };
        let mut attempt = 0;
        let mut refreshed = false;
        loop {
            let resp = request.send()?;
            if resp.status == 401 && !refreshed {
                // The token was refused before its expiry (revoked, or rotated keys):
                // one forced refresh, then retry; a second 401 is token_revoked.
                refreshed = true;
                log::warn("Graph refused the token; refreshing it once");
                credentials::refresh("microsoft")?;
                continue;
            }
            if resp.status == 429 || resp.status == 503 {
                attempt += 1;
                let retry_after = resp.retry_after().map(|s| Duration::from_secs(s.into()));
                if attempt > backoff.max_retries || !backoff.wait(attempt, retry_after) {
                    return Err(Error::rate_limit_exceeded(
                        format!(
                            "Microsoft Graph kept answering {} within the step's deadline",
                            resp.status
                        ),
                        resp.retry_after(),
                    ));
                }
                log::warn(&format!(
                    "Graph answered {}; retrying (attempt {attempt})",
                    resp.status
                ));
                continue;
            }
            let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
            if !resp.is_success() {
                return Err(graph_error(resp.status, &body));
            }
            return Ok(Output {
                id: body["id"]
                    .as_str()
                    .ok_or_else(|| Error::upstream(resp.status, "Graph answered without an id"))?
                    .to_string(),
                web_link: body["webLink"].as_str().unwrap_or_default().to_string(),
            });
        }
    }
}

flow8_sdk::export_module!(MicrosoftCalendar);
