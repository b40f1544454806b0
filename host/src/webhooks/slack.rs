//! Slack Events API requests (<https://api.slack.com/authentication/verifying-requests-from-slack>):
//! `X-Slack-Signature: v0=<hex HMAC-SHA256(signing secret, "v0:{timestamp}:{body}")>`
//! with `X-Slack-Request-Timestamp` within five minutes of now. Only then is the body
//! parsed: `url_verification` is answered with its `challenge`, an `event_callback` is
//! one event (`event_id`) for the links of its workspace (`team_id`, kept on the link
//! as `provider_metadata.team.id`). Slack retries (`X-Slack-Retry-Num`) carry the same
//! `event_id` and are acknowledged without storing it twice.

use super::{Event, Refusal, Verified, header, hmac_sha256_matches};
use crate::store::WebhookRoute;
use crate::vault::Secret;
use serde_json::Value;

/// How far the signed timestamp may be from now, either way (Slack's five minutes).
pub const WINDOW_SECONDS: i64 = 5 * 60;

/// Check a request's signature and timestamp against the app's signing secret, then
/// read what it says. `now` is Unix seconds.
pub fn verify(
    secret: Option<&Secret>,
    headers: &http::HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<Verified, Refusal> {
    let secret = secret.ok_or(Refusal::NotConfigured)?;
    let (Some(ts), Some(sig)) = (
        header(headers, "x-slack-request-timestamp"),
        header(headers, "x-slack-signature"),
    ) else {
        return Err(Refusal::Unsigned);
    };
    let when: i64 = ts.parse().map_err(|_| Refusal::Unsigned)?;
    if (now - when).abs() > WINDOW_SECONDS {
        return Err(Refusal::Stale);
    }
    let tag = sig
        .strip_prefix("v0=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(Refusal::BadSignature)?;
    if !hmac_sha256_matches(
        secret.expose().as_bytes(),
        &[b"v0:", ts.as_bytes(), b":", body],
        &tag,
    ) {
        return Err(Refusal::BadSignature);
    }
    // Verified: now the body may be read.
    let payload: Value =
        serde_json::from_slice(body).map_err(|_| Refusal::Malformed("Slack Events API"))?;
    let retry = header(headers, "x-slack-retry-num").is_some();
    match payload.get("type").and_then(Value::as_str) {
        Some("url_verification") => {
            let challenge = payload
                .get("challenge")
                .and_then(Value::as_str)
                .ok_or(Refusal::Malformed("Slack url_verification"))?;
            Ok(Verified::Handshake {
                body: challenge.to_string(),
                content_type: "text/plain; charset=utf-8",
            })
        }
        Some("event_callback") => {
            let field = |k: &str| payload.get(k).and_then(Value::as_str).map(str::to_string);
            let (Some(event_id), Some(team_id)) = (field("event_id"), field("team_id")) else {
                return Err(Refusal::Malformed("Slack event_callback"));
            };
            let event_type = payload
                .pointer("/event/type")
                .and_then(Value::as_str)
                .unwrap_or("event_callback")
                .to_string();
            Ok(Verified::Events {
                events: vec![Event {
                    provider_event_id: event_id,
                    event_type,
                    payload,
                    route: Some(WebhookRoute::Metadata {
                        path: "team.id".into(),
                        value: team_id,
                    }),
                    lifecycle: false,
                }],
                retry,
            })
        }
        // Signed, of a kind no flow starts from (`app_rate_limited`): acknowledged.
        Some(_) => Ok(Verified::Events {
            events: Vec::new(),
            retry,
        }),
        None => Err(Refusal::Malformed("Slack Events API")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{KeyInit, Mac};

    fn signed(secret: &str, ts: i64, body: &str) -> http::HeaderMap {
        let mut mac = hmac::Hmac::<sha2_011::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("v0:{ts}:{body}").as_bytes());
        let sig = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
        let mut h = http::HeaderMap::new();
        h.insert("x-slack-request-timestamp", ts.to_string().parse().unwrap());
        h.insert("x-slack-signature", sig.parse().unwrap());
        h
    }

    #[test]
    fn checks_signature_window_and_secret() {
        let s = Secret::new("8f742231b10e8888abcd99yyyzzz85a5".into());
        let body = r#"{"type":"event_callback","team_id":"T1","event_id":"Ev1","event":{"type":"message"}}"#;
        let now = 1_700_000_000;
        let ok = verify(
            Some(&s),
            &signed(s.expose(), now, body),
            body.as_bytes(),
            now,
        )
        .unwrap();
        let Verified::Events { events, retry } = ok else {
            panic!("{ok:?}")
        };
        assert!(!retry);
        assert_eq!(events[0].provider_event_id, "Ev1");
        assert_eq!(events[0].event_type, "message");
        let h = signed(s.expose(), now, body);
        assert_eq!(
            verify(None, &h, body.as_bytes(), now),
            Err(Refusal::NotConfigured)
        );
        assert_eq!(
            verify(Some(&s), &h, body.as_bytes(), now + 301),
            Err(Refusal::Stale)
        );
        assert_eq!(verify(Some(&s), &h, b"{}", now), Err(Refusal::BadSignature));
        assert_eq!(
            verify(Some(&s), &http::HeaderMap::new(), body.as_bytes(), now),
            Err(Refusal::Unsigned)
        );
        let other = signed("another-secret", now, body);
        assert_eq!(
            verify(Some(&s), &other, body.as_bytes(), now),
            Err(Refusal::BadSignature)
        );
    }
}
