//! A link's health: flow8's "Testing Connectivity" (the provider's identity endpoint
//! called with the link's token, refreshed first if due) and "Monitoring Token Expiry"
//! (links expiring within a period).

use super::{OAuthError, OAuthService};
use crate::store::{LinkRecord, LinkStatus, Store, now};
use serde_json::{Value, json};
use std::time::Duration;

impl OAuthService {
    /// flow8's health check: call the provider's identity endpoint with the link.
    pub async fn test(&self, company_id: &str, link_id: &str) -> Result<Value, OAuthError> {
        let (token, link) = match self.access_token(company_id, link_id).await {
            Ok(x) => x,
            Err(OAuthError::TokenRevoked(service)) => {
                return Ok(
                    json!({"status": "error", "service": service, "latency_ms": 0, "token_valid": false,
                    "scopes_granted": [], "user": null, "error": "token_revoked"}),
                );
            }
            Err(OAuthError::NeedsReconnect { service, reason }) => {
                return Ok(
                    json!({"status": "error", "service": service, "latency_ms": 0, "token_valid": false,
                    "scopes_granted": [], "user": null, "error": "token_revoked", "message": reason}),
                );
            }
            Err(e) => return Err(e),
        };
        let p = self.provider(&link.integration_type)?;
        let start = std::time::Instant::now();
        let result = self.client(p).identity(token.expose()).await;
        let latency = start.elapsed().as_millis() as u64;
        let user = match &result {
            Ok(v) => p
                .defaults
                .identity
                .user_id(v)
                .unwrap_or_else(|| link.provider_user_id.clone()),
            Err(_) => link.provider_user_id.clone(),
        };
        Ok(json!({
            "status": if result.is_ok() { "ok" } else { "error" },
            "service": link.integration_type,
            "latency_ms": latency,
            "token_valid": result.is_ok(),
            "scopes_granted": link.scopes,
            "user": user,
        }))
    }

    /// Links as they should be shown: one whose access token has expired with no way
    /// to refresh it is marked `needs_reconnect` in the store (once, by compare-and-set,
    /// telling the `NeedsReconnect` event) and shown so, before any step trips on it.
    pub async fn settle_expired(&self, links: Vec<LinkRecord>) -> Vec<LinkRecord> {
        let mut out = Vec::with_capacity(links.len());
        for mut link in links {
            if self.expired_beyond_refresh(&link) {
                match self
                    .mark_needs_reconnect(link.clone(), super::refresh::EXPIRED.into())
                    .await
                {
                    OAuthError::TokenRevoked(_) | OAuthError::NeedsReconnect { .. } => {}
                    e => {
                        tracing::warn!(link = %link.id, error = %e, "cannot mark an expired link as needing reconnection")
                    }
                }
                // Whatever the store says now, this token works no more.
                link.status = LinkStatus::NeedsReconnect;
                link.status_reason
                    .get_or_insert_with(|| super::refresh::EXPIRED.to_string());
            }
            out.push(link);
        }
        out
    }

    /// The company's links expiring within `within` (flow8's 7-day query), soonest first.
    pub async fn expiring(
        &self,
        company_id: &str,
        within: Duration,
    ) -> Result<Vec<LinkRecord>, OAuthError> {
        let t = now();
        // A period past any date (the API takes up to u32::MAX days) has no end.
        let limit = time::Duration::try_from(within)
            .ok()
            .and_then(|d| t.checked_add(d));
        let mut links: Vec<LinkRecord> = self
            .store
            .list_links(company_id, None)
            .await?
            .into_iter()
            .filter(|l| {
                l.token_expiry
                    .is_some_and(|e| e > t && limit.is_none_or(|limit| e < limit))
            })
            .collect();
        links.sort_by_key(|l| l.token_expiry);
        Ok(links)
    }
}
