//! Microsoft Graph change notifications
//! (<https://learn.microsoft.com/graph/change-notifications-delivery-webhooks>). Graph
//! signs nothing: a subscription carries a `clientState` secret that Graph repeats in
//! every notification, here the link's webhook secret (each link has its own URL,
//! `/webhooks/microsoft/{link_id}`). Creating a subscription (and a lifecycle URL)
//! first sends `?validationToken=...`, which must be echoed as `text/plain` within 10
//! seconds. Lifecycle notifications (`lifecycleEvent`: `reauthorizationRequired`,
//! `subscriptionRemoved`, `missed`) are stored and audited as the link's events.

use super::{Event, Refusal, Verified, digest_id, token_matches};
use crate::vault::Secret;
use serde_json::Value;

/// The longest validation token echoed (Graph's are opaque strings well below this).
pub const MAX_VALIDATION_TOKEN: usize = 4096;

/// Answer the validation handshake: the token, as text. Only for a link that has a
/// webhook secret (the subscription it validates will carry it).
pub fn validation(secret: Option<&Secret>, token: &str) -> Result<Verified, Refusal> {
    secret.ok_or(Refusal::NotConfigured)?;
    if token.is_empty() || token.len() > MAX_VALIDATION_TOKEN {
        return Err(Refusal::Malformed("Graph validation"));
    }
    Ok(Verified::Handshake {
        body: token.to_string(),
        content_type: "text/plain; charset=utf-8",
    })
}

/// Check every notification's `clientState` against the link's secret (one wrong or
/// missing refuses the whole batch, so nothing of a forged batch is stored), then read
/// them.
pub fn verify(secret: Option<&Secret>, body: &[u8]) -> Result<Verified, Refusal> {
    let secret = secret.ok_or(Refusal::NotConfigured)?;
    // Graph puts its secret inside the JSON: the body must be parsed to find it, but
    // nothing is kept or acted on before every notification has passed.
    let payload: Value = serde_json::from_slice(body).map_err(|_| Refusal::Unsigned)?;
    let list = payload
        .get("value")
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
        .ok_or(Refusal::Unsigned)?;
    for n in list {
        let state = n
            .get("clientState")
            .and_then(Value::as_str)
            .ok_or(Refusal::Unsigned)?;
        if !token_matches(secret, state) {
            return Err(Refusal::BadSignature);
        }
    }
    let events = list
        .iter()
        .map(|n| {
            let mut stored = n.clone();
            // The secret is not kept with the event.
            if let Some(o) = stored.as_object_mut() {
                o.remove("clientState");
            }
            let lifecycle = n.get("lifecycleEvent").and_then(Value::as_str);
            let event_type = match lifecycle {
                Some(l) => l.to_string(),
                None => n
                    .get("changeType")
                    .and_then(Value::as_str)
                    .unwrap_or("notification")
                    .to_string(),
            };
            let provider_event_id = match n.get("id").and_then(Value::as_str) {
                Some(id) if !id.is_empty() => id.to_string(),
                _ => digest_id(&stored),
            };
            Event {
                provider_event_id,
                event_type,
                payload: stored,
                route: None,
                lifecycle: lifecycle.is_some(),
            }
        })
        .collect();
    Ok(Verified::Events {
        events,
        retry: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_notification_must_carry_the_secret() {
        let s = Secret::new("client-state-1".into());
        let good = br#"{"value":[{"id":"n1","clientState":"client-state-1","changeType":"created","subscriptionId":"s1"},{"clientState":"client-state-1","lifecycleEvent":"missed","subscriptionId":"s1"}]}"#;
        let Verified::Events { events, .. } = verify(Some(&s), good).unwrap() else {
            panic!()
        };
        assert_eq!(events[0].provider_event_id, "n1");
        assert!(events[1].lifecycle);
        assert!(events[1].provider_event_id.starts_with("sha256:"));
        assert!(
            events
                .iter()
                .all(|e| e.payload.get("clientState").is_none())
        );
        let mixed = br#"{"value":[{"clientState":"client-state-1","changeType":"created"},{"clientState":"nope","changeType":"created"}]}"#;
        assert_eq!(verify(Some(&s), mixed), Err(Refusal::BadSignature));
        assert_eq!(
            verify(Some(&s), br#"{"value":[{"changeType":"created"}]}"#),
            Err(Refusal::Unsigned)
        );
        assert_eq!(verify(None, good), Err(Refusal::NotConfigured));
        assert_eq!(validation(None, "tok"), Err(Refusal::NotConfigured));
    }
}
