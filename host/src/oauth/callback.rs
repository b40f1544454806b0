//! Finishing a connection: the provider's redirect to `/auth/callback`. The `state` is
//! used up, the code exchanged (with the PKCE verifier), the user's identity read, and
//! the link stored with its tokens sealed. Nothing is stored on any failure.

use super::authorize::{CONNECT_SESSION, state_key};
use super::{OAuthError, OAuthEvent, OAuthService};
use crate::store::{LinkRecord, LinkStatus, Store, new_object_id, now, sealing};
use serde_json::Value;
use std::collections::BTreeMap;

impl OAuthService {
    /// Finish a connection: check the state and the browser binding it was started
    /// with (the browser's binding cookie; None when it sent none), exchange the code,
    /// read the identity, and store the link with its tokens sealed. Nothing is stored
    /// on any failure, and a state brought without its binding is not used up.
    pub async fn callback(
        &self,
        params: &BTreeMap<String, String>,
        binding: Option<&str>,
    ) -> Result<LinkRecord, OAuthError> {
        let state = params.get("state").ok_or(OAuthError::InvalidState)?;
        let binding = binding
            .filter(|b| !b.is_empty())
            .ok_or(OAuthError::NotThisBrowser)?;
        let pending = self
            .store
            .take_oauth_state(&state_key(state, binding))
            .await?
            .ok_or(OAuthError::InvalidState)?;
        if pending.service == CONNECT_SESSION {
            // A connect-page token is not an authorization state (and is now used up).
            return Err(OAuthError::InvalidState);
        }
        if let Some(error) = params.get("error") {
            let detail = params.get("error_description").cloned().unwrap_or_default();
            return Err(OAuthError::AccessDenied(
                format!("{error} {detail}").trim().to_string(),
            ));
        }
        let code = params
            .get("code")
            .ok_or_else(|| OAuthError::InvalidGrant("no code in the callback".into()))?;
        let p = self.provider(&pending.service)?;
        let verifier = match &pending.pkce_verifier {
            Some(sealed) => Some(self.open(sealed, &pending.pkce_verifier_context())?),
            None => None,
        };
        let client = self.client(p);
        let tokens = client.exchange_code(code, verifier.as_ref()).await?;
        let identity = client
            .identity(tokens.access_token.expose())
            .await
            .unwrap_or(Value::Null);
        let t = now();
        let token_expiry = tokens.expiry(t);
        let mut metadata = tokens.metadata;
        for key in &p.defaults.callback_metadata {
            // e.g. QuickBooks names the company on the redirect (`realmId`).
            if let Some(v) = params.get(key) {
                metadata[key.as_str()] = Value::String(v.clone());
            }
        }
        let provider_user_id = tokens
            .provider_user_id
            .or_else(|| p.defaults.identity.user_id(&identity))
            .unwrap_or_default();
        let provider_user_email = p.defaults.identity.email(&identity).unwrap_or_default();
        // The id first: the tokens are sealed for this link.
        let id = new_object_id();
        let access_token = self.vault.encrypt(
            tokens.access_token.expose(),
            &sealing::link(&pending.company_id, &id, sealing::ACCESS_TOKEN),
        );
        let refresh_token = tokens.refresh_token.as_ref().map(|r| {
            self.vault.encrypt(
                r.expose(),
                &sealing::link(&pending.company_id, &id, sealing::REFRESH_TOKEN),
            )
        });
        let link = LinkRecord {
            id,
            user_id: pending.user_id,
            company_id: pending.company_id,
            integration_type: pending.service,
            access_token,
            refresh_token,
            token_expiry,
            scopes: tokens.scopes.unwrap_or_else(|| p.scopes.clone()),
            provider_user_id,
            provider_user_email,
            provider_metadata: metadata,
            status: LinkStatus::Active,
            shared_with: Vec::new(),
            refresh_lease_owner: None,
            refresh_lease_until: None,
            version: 0,
            created_at: t,
            updated_at: t,
        };
        self.store.insert_link(link.clone()).await?;
        self.emit(OAuthEvent::Linked { link: link.clone() }).await;
        Ok(link)
    }
}
