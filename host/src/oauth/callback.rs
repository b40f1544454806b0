//! Finishing a connection: the provider's redirect to `/auth/callback`. The `state` is
//! used up, the code exchanged (with the PKCE verifier), the user's identity read, and
//! the link stored with its tokens sealed. Nothing is stored on any failure.

use super::authorize::{CONNECT_SESSION, state_key};
use super::{OAuthError, OAuthEvent, OAuthService};
use crate::catalogue::oauth::RefreshPolicy;
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
            return Err(authorization_error(
                error,
                params.get("error_description").map(String::as_str),
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
            status_reason: None,
            shared_with: Vec::new(),
            webhook_signature_secret: None,
            refresh_lease_owner: None,
            refresh_lease_until: None,
            refresh_retry_after: None,
            version: 0,
            created_at: t,
            updated_at: t,
        };
        self.store.insert_link(link.clone()).await?;
        if let Some(warning) = self.connect_warning(&link) {
            tracing::warn!(link = %link.id, service = %link.integration_type, "{warning}");
        }
        self.emit(OAuthEvent::Linked { link: link.clone() }).await;
        Ok(link)
    }

    /// What a user should be told about a link just connected: a provider that should
    /// give a refresh token (its tokens are refreshed, `refresh: auto`) gave none, for
    /// an access token that expires, so the link will need reconnecting when it does.
    /// (A strict OpenID provider drops `offline_access`, and with it the refresh token,
    /// from an authorization without `prompt=consent`: OIDC Core §11.)
    pub fn connect_warning(&self, link: &LinkRecord) -> Option<String> {
        let p = self.provider(&link.integration_type).ok()?;
        if p.defaults.refresh != RefreshPolicy::Auto || link.refresh_token.is_some() {
            return None;
        }
        let expiry = link.token_expiry?;
        let when = expiry
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Some(format!(
            "{} gave no refresh token: this connection stops working when its access token expires ({when}) and must then be reconnected. An OpenID provider issues one only for `offline_access` asked with `prompt=consent`; check the provider's profile and the client's grant types.",
            p.defaults.display_name
        ))
    }
}

/// The longest part of a provider's `error_description` that is reported (it comes
/// from the callback's URL, which anyone can write).
const MAX_DESCRIPTION: usize = 512;

/// The error an authorization response names (RFC 6749 §4.1.2.1, OIDC Core §3.1.2.6),
/// with the provider's own `error` and `error_description` in the message: a refusal
/// (`access_denied`) is the user's or provider's no; the others say what was wrong
/// with the request (`invalid_request`, e.g. a provider that requires PKCE, or
/// `invalid_scope`) or that the provider failed.
fn authorization_error(error: &str, description: Option<&str>) -> OAuthError {
    let printable = |s: &str, max: usize| -> String {
        s.chars()
            .filter(|c| !c.is_control())
            .take(max)
            .collect::<String>()
    };
    let name = printable(error, 64);
    let message = match description.map(|d| printable(d, MAX_DESCRIPTION)) {
        Some(d) if !d.trim().is_empty() => format!("{name}: {}", d.trim()),
        _ => name.clone(),
    };
    match name.as_str() {
        "access_denied" => OAuthError::AccessDenied(message),
        "server_error" | "temporarily_unavailable" => OAuthError::Provider(message),
        _ => OAuthError::Upstream(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorName;

    #[test]
    fn an_authorization_error_is_reported_under_its_own_name() {
        // node-oidc-provider's answer to a client that sent no PKCE challenge.
        let e = authorization_error(
            "invalid_request",
            Some("Authorization Server policy requires PKCE to be used for this request"),
        );
        assert_eq!(e.name(), ErrorName::UpstreamError);
        assert!(
            e.to_string().contains(
                "invalid_request: Authorization Server policy requires PKCE to be used for this request"
            ),
            "{e}"
        );
        let e = authorization_error("access_denied", Some("the user refused"));
        assert_eq!(e.name(), ErrorName::AccessDenied);
        assert!(e.to_string().contains("access_denied: the user refused"));
        assert_eq!(
            authorization_error("invalid_scope", None).name(),
            ErrorName::UpstreamError
        );
        assert_eq!(
            authorization_error("temporarily_unavailable", None).name(),
            ErrorName::ProviderError
        );
        // What the URL carries is bounded and printable.
        let long = "x".repeat(10_000);
        let e = authorization_error("invalid_request\n", Some(&long));
        assert!(e.to_string().len() < 700 && !e.to_string().contains('\n'));
    }
}
