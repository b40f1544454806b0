//! Unlinking: the link is deleted, then its grant revoked at the provider (best effort:
//! a provider that is down does not keep a user from disconnecting). The revocation
//! request itself is in `client.rs` (RFC 7009 through the `oauth2` crate, or the
//! provider's own endpoint).

use super::{OAuthError, OAuthEvent, OAuthService};
use crate::store::{LinkRecord, Store};

impl OAuthService {
    /// Delete a link and revoke it at the provider (best effort). `actor` is who asked
    /// (for the record).
    pub async fn unlink(
        &self,
        company_id: &str,
        service: &str,
        link_id: &str,
        actor: Option<&str>,
    ) -> Result<LinkRecord, OAuthError> {
        let link = self.link(company_id, link_id).await?;
        if link.integration_type != service {
            return Err(OAuthError::NotFound);
        }
        let link = self
            .store
            .delete_link(company_id, link_id)
            .await?
            .ok_or(OAuthError::NotFound)?;
        self.emit(OAuthEvent::Unlinked {
            link: link.clone(),
            actor: actor.map(str::to_string),
        })
        .await;
        if let Ok(p) = self.provider(service) {
            match self.revoke(p, &link).await {
                Ok(true) => self.emit(OAuthEvent::Revoked { link: link.clone() }).await,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(link = %link.id, error = %e, "revocation at the provider failed (the link is deleted anyway)");
                }
            }
        }
        Ok(link)
    }

    /// Revoke a deleted link's grant; false when the provider has no revocation endpoint.
    async fn revoke(
        &self,
        p: &super::providers::Provider,
        link: &LinkRecord,
    ) -> Result<bool, OAuthError> {
        let access = self.open(&link.access_token, &link.access_token_context())?;
        let refresh = match &link.refresh_token {
            Some(sealed) => Some(self.open(sealed, &link.refresh_token_context())?),
            None => None,
        };
        self.client(p).revoke(&access, refresh.as_ref()).await
    }
}
