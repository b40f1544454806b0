//! QuickBooks Online webhooks (<https://developer.intuit.com/app/developer/qbo/docs/develop/webhooks>):
//! `intuit-signature` is base64 of HMAC-SHA256(the app's verifier token, raw body).
//! Only then is the body read, in either of Intuit's shapes: the classic
//! `{"eventNotifications": [{"realmId", "dataChangeEvent": {"entities": [...]}}]}` (one
//! event per notification; it has no id, so its id is a digest of it) or the CloudEvents
//! array (`[{"id", "type", "intuitaccountid", ...}]`). Each event goes to the links of its
//! company (`realmId`, kept on the link as `provider_metadata.realmId`).

use super::{Event, Refusal, Verified, digest_id, header, hmac_sha256_matches};
use crate::store::WebhookRoute;
use crate::vault::Secret;
use base64::Engine;
use serde_json::Value;

fn route(realm: &str) -> Option<WebhookRoute> {
    Some(WebhookRoute::Metadata {
        path: "realmId".into(),
        value: realm.to_string(),
    })
}

/// Check a request against the app's verifier token, then read its events.
pub fn verify(
    secret: Option<&Secret>,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<Verified, Refusal> {
    let secret = secret.ok_or(Refusal::NotConfigured)?;
    let sig = header(headers, "intuit-signature").ok_or(Refusal::Unsigned)?;
    let tag = base64::engine::general_purpose::STANDARD
        .decode(sig)
        .map_err(|_| Refusal::BadSignature)?;
    if !hmac_sha256_matches(secret.expose().as_bytes(), &[body], &tag) {
        return Err(Refusal::BadSignature);
    }
    let payload: Value =
        serde_json::from_slice(body).map_err(|_| Refusal::Malformed("QuickBooks"))?;
    let mut events = Vec::new();
    if let Some(list) = payload.get("eventNotifications").and_then(Value::as_array) {
        for n in list {
            let realm = n
                .get("realmId")
                .and_then(Value::as_str)
                .ok_or(Refusal::Malformed("QuickBooks"))?;
            let event_type = n
                .pointer("/dataChangeEvent/entities/0")
                .map(|e| {
                    format!(
                        "{}.{}",
                        e.get("name").and_then(Value::as_str).unwrap_or("entity"),
                        e.get("operation")
                            .and_then(Value::as_str)
                            .unwrap_or("change")
                    )
                })
                .unwrap_or_else(|| "dataChangeEvent".into());
            events.push(Event {
                provider_event_id: digest_id(n),
                event_type,
                payload: n.clone(),
                route: route(realm),
                lifecycle: false,
            });
        }
    } else if let Some(list) = payload.as_array() {
        for e in list {
            let field = |k: &str| e.get(k).and_then(Value::as_str);
            let (Some(id), Some(realm)) = (field("id"), field("intuitaccountid")) else {
                return Err(Refusal::Malformed("QuickBooks CloudEvents"));
            };
            events.push(Event {
                provider_event_id: id.to_string(),
                event_type: field("type").unwrap_or("event").to_string(),
                payload: e.clone(),
                route: route(realm),
                lifecycle: false,
            });
        }
    } else {
        return Err(Refusal::Malformed("QuickBooks"));
    }
    Ok(Verified::Events {
        events,
        retry: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{KeyInit, Mac};

    #[test]
    fn verifies_the_body_and_routes_by_realm() {
        let s = Secret::new("verifier-token-1".into());
        let body = br#"{"eventNotifications":[{"realmId":"9130","dataChangeEvent":{"entities":[{"name":"Invoice","id":"7","operation":"Create","lastUpdated":"2026-01-01T00:00:00Z"}]}}]}"#;
        let mut mac = hmac::Hmac::<sha2_011::Sha256>::new_from_slice(b"verifier-token-1").unwrap();
        mac.update(body);
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let mut h = http::HeaderMap::new();
        h.insert("intuit-signature", sig.parse().unwrap());
        let Verified::Events { events, .. } = verify(Some(&s), &h, body).unwrap() else {
            panic!()
        };
        assert_eq!(events[0].event_type, "Invoice.Create");
        assert_eq!(events[0].route, route("9130"));
        assert_eq!(
            verify(Some(&s), &h, b"{\"eventNotifications\":[]}"),
            Err(Refusal::BadSignature)
        );
        assert_eq!(verify(None, &h, body), Err(Refusal::NotConfigured));
        assert_eq!(
            verify(Some(&s), &http::HeaderMap::new(), body),
            Err(Refusal::Unsigned)
        );
    }
}
