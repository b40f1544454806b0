//! Inbound provider webhooks: how each provider signs what it sends, checked on the raw
//! body before anything is parsed, and what the verified request says (its events, the
//! provider's id for each, and which links they are for). Pure functions of the request
//! and the secret: the route (`server::routes::webhooks`) looks secrets up, stores the
//! events and answers. Every check fails closed: no secret, no header, a header that
//! does not parse, a stale timestamp: refused.
//!
//! | provider | file | secret | check |
//! | --- | --- | --- | --- |
//! | Slack Events API | `slack.rs` | app signing secret (config) | `X-Slack-Signature`, HMAC-SHA256, 5-minute window |
//! | QuickBooks | `quickbooks.rs` | app verifier token (config) | `intuit-signature`, HMAC-SHA256 base64 |
//! | Microsoft Graph | `graph.rs` | the link's webhook secret | `clientState` of every notification |
//! | Google push | `google.rs` | the link's webhook secret | `X-Goog-Channel-Token` |

pub mod google;
pub mod graph;
pub mod quickbooks;
pub mod slack;

use crate::store::WebhookRoute;
use crate::vault::Secret;
use hmac::{KeyInit, Mac};
use serde_json::Value;

/// The largest webhook body the host reads (Slack's and Graph's batches stay far below).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Why a webhook was refused; every refusal stores nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The service has no secret to check against (none configured, or the link has none).
    #[error("no webhook secret is configured for this service or link: refused")]
    NotConfigured,
    /// The signature or token header is missing.
    #[error("the request is not signed")]
    Unsigned,
    /// The signature or token does not match.
    #[error("the signature does not match")]
    BadSignature,
    /// The signed timestamp is outside the allowed window.
    #[error("the signed timestamp is too old or in the future")]
    Stale,
    /// Every event in it was received before (and it is not a marked retry).
    #[error("the event was received before (replayed)")]
    Replayed,
    /// Signed, but not a request of this provider's shape.
    #[error("the verified body is not a {0} webhook")]
    Malformed(&'static str),
}

impl Refusal {
    /// The metrics verdict.
    pub fn verdict(&self) -> &'static str {
        match self {
            Refusal::NotConfigured => "not_configured",
            Refusal::Unsigned => "unsigned",
            Refusal::BadSignature => "bad_signature",
            Refusal::Stale => "stale",
            Refusal::Replayed => "replayed",
            Refusal::Malformed(_) => "malformed",
        }
    }
}

/// One event a verified webhook carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The provider's id for it (or a digest where it gives none).
    pub provider_event_id: String,
    /// What happened.
    pub event_type: String,
    /// The event as the provider sent it.
    pub payload: Value,
    /// Which links it is for (app-wide webhooks); None: the link of the URL.
    pub route: Option<WebhookRoute>,
    /// A subscription lifecycle notification (Graph): audited besides being stored.
    pub lifecycle: bool,
}

/// What a verified webhook asks of the host.
#[derive(Debug, Clone, PartialEq)]
pub enum Verified {
    /// Answer a handshake with this text (Slack's challenge, Graph's validation token).
    Handshake {
        /// The body to answer.
        body: String,
        /// Its content type.
        content_type: &'static str,
    },
    /// Store these events (possibly none: a Google `sync`, an event no link wants).
    Events {
        /// The events.
        events: Vec<Event>,
        /// The provider marked the request as a retry of one it sent before (Slack's
        /// `X-Slack-Retry-Num`): a duplicate is acknowledged, not refused.
        retry: bool,
    },
}

type HmacSha256 = hmac::Hmac<sha2_011::Sha256>;

/// Whether `tag` is HMAC-SHA256(`key`, `parts` concatenated), compared in constant time.
pub fn hmac_sha256_matches(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let Ok(mut mac) = <HmacSha256 as KeyInit>::new_from_slice(key) else {
        return false;
    };
    for p in parts {
        mac.update(p);
    }
    mac.verify_slice(tag).is_ok()
}

/// Whether a presented token equals the secret, in constant time (only the length may
/// leak: `Secret`'s equality).
pub fn token_matches(secret: &Secret, presented: &str) -> bool {
    *secret == Secret::new(presented.to_string())
}

/// A stable id for an event whose provider gives none: SHA-256 of its JSON (serde_json
/// writes object keys in sorted order, so equal events give equal ids).
pub fn digest_id(value: &Value) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
}

/// A header's value as text; a header that is not visible ASCII counts as missing.
pub fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let tag = hex::decode("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
            .unwrap();
        assert!(hmac_sha256_matches(
            b"Jefe",
            &[b"what do ya want ", b"for nothing?"],
            &tag
        ));
        assert!(!hmac_sha256_matches(b"Jefe", &[b"what do ya want"], &tag));
        assert!(!hmac_sha256_matches(b"Jefe", &[b"x"], &tag[..31]));
    }

    #[test]
    fn tokens_compare_whole() {
        let s = Secret::new("abc123".into());
        assert!(token_matches(&s, "abc123"));
        assert!(!token_matches(&s, "abc12"));
        assert!(!token_matches(&s, "abc1234"));
        assert!(!token_matches(&s, ""));
    }
}
