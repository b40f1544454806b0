//! Google push notifications for watch channels (Drive `changes.watch` / `files.watch`,
//! Calendar; <https://developers.google.com/drive/api/guides/push>). Google signs
//! nothing: a channel carries a `token` Google repeats as `X-Goog-Channel-Token`, here
//! the link's webhook secret (each link has its own URL, `/webhooks/google/{link_id}`).
//! `X-Goog-Resource-State: sync` opens every channel and is acknowledged without an
//! event; any other state is one event, whose id is the channel and its
//! `X-Goog-Message-Number` (which Google increases per channel), so a replay stores
//! nothing.

use super::{Event, Refusal, Verified, header, token_matches};
use crate::vault::Secret;
use serde_json::json;

/// Check the channel token against the link's secret, then read the headers.
pub fn verify(secret: Option<&Secret>, headers: &http::HeaderMap) -> Result<Verified, Refusal> {
    let secret = secret.ok_or(Refusal::NotConfigured)?;
    let token = header(headers, "x-goog-channel-token").ok_or(Refusal::Unsigned)?;
    if !token_matches(secret, token) {
        return Err(Refusal::BadSignature);
    }
    let (Some(channel), Some(state)) = (
        header(headers, "x-goog-channel-id"),
        header(headers, "x-goog-resource-state"),
    ) else {
        return Err(Refusal::Malformed("Google push"));
    };
    if state == "sync" {
        return Ok(Verified::Events {
            events: Vec::new(),
            retry: false,
        });
    }
    let number = header(headers, "x-goog-message-number")
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .ok_or(Refusal::Malformed("Google push"))?;
    let h = |k: &str| header(headers, k);
    Ok(Verified::Events {
        events: vec![Event {
            provider_event_id: format!("{channel}:{number}"),
            event_type: state.to_string(),
            payload: json!({
                "channel_id": channel,
                "message_number": number,
                "resource_state": state,
                "resource_id": h("x-goog-resource-id"),
                "resource_uri": h("x-goog-resource-uri"),
                "changed": h("x-goog-changed"),
                "channel_expiration": h("x-goog-channel-expiration"),
            }),
            route: None,
            lifecycle: false,
        }],
        retry: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_then_state() {
        let s = Secret::new("channel-token-1".into());
        let mut h = http::HeaderMap::new();
        h.insert("x-goog-channel-id", "ch1".parse().unwrap());
        h.insert("x-goog-resource-state", "sync".parse().unwrap());
        h.insert("x-goog-message-number", "1".parse().unwrap());
        assert_eq!(verify(Some(&s), &h), Err(Refusal::Unsigned));
        h.insert("x-goog-channel-token", "channel-token-1".parse().unwrap());
        assert_eq!(
            verify(Some(&s), &h),
            Ok(Verified::Events {
                events: vec![],
                retry: false
            })
        );
        h.insert("x-goog-resource-state", "update".parse().unwrap());
        h.insert("x-goog-message-number", "2".parse().unwrap());
        let Ok(Verified::Events { events, .. }) = verify(Some(&s), &h) else {
            panic!()
        };
        assert_eq!(events[0].provider_event_id, "ch1:2");
        h.insert("x-goog-channel-token", "channel-token-2".parse().unwrap());
        assert_eq!(verify(Some(&s), &h), Err(Refusal::BadSignature));
        assert_eq!(verify(None, &h), Err(Refusal::NotConfigured));
    }
}
