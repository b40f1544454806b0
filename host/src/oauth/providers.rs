//! The operator's configuration of each OAuth2 provider (flow8's `oauth2:` block in
//! `config.yml`: client credentials, redirect URI, scopes) laid over the provider's
//! catalogue entry (`crate::catalogue::oauth`: endpoints and quirks). Every endpoint can
//! be overridden here too (sovereign clouds, regional hosts, tests).

use crate::catalogue::Catalogue;
use crate::catalogue::Pin;
use crate::catalogue::oauth::{OAuthProvider, api_hosts, check_url, transfer_hosts};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The operator's configuration of one provider (flow8's `oauth2.<service>`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Client id.
    pub client_id: String,
    /// Client secret (may also come from `FLOW8_OAUTH_<SERVICE>_CLIENT_SECRET`, `-` as `_`).
    #[serde(default)]
    pub client_secret: Option<crate::vault::Secret>,
    /// Where the provider sends the user back (this host's `/auth/callback`).
    pub redirect_uri: String,
    /// Scopes to request.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// flow8's `auto_create_users`. This host keeps no user accounts (a user is an id
    /// on API tokens and links; flow8's user service creates users), so only `false`
    /// is accepted: the configuration refuses `true` (see `HostConfig::load`).
    #[serde(default)]
    pub auto_create_users: bool,
    /// Override the authorize endpoint.
    #[serde(default)]
    pub authorize_url: Option<String>,
    /// Override the token endpoint.
    #[serde(default)]
    pub token_url: Option<String>,
    /// Override the revocation endpoint.
    #[serde(default)]
    pub revoke_url: Option<String>,
    /// Override the identity endpoint.
    #[serde(default)]
    pub identity_url: Option<String>,
    /// Override the API hosts the token is pinned to.
    #[serde(default)]
    pub api_hosts: Option<Vec<String>>,
    /// Override the hosts of the provider's pre-authenticated URLs (upload sessions,
    /// download URLs), which modules reach without the token.
    #[serde(default)]
    pub transfer_hosts: Option<Vec<String>>,
    /// Override the API base URL modules are told to use.
    #[serde(default)]
    pub api_base_url: Option<String>,
    /// Where to send the browser after a successful connect (default: a "Connected!" page).
    #[serde(default)]
    pub return_url: Option<String>,
    /// The app's webhook signing secret (Slack's "Signing Secret"; may also come from
    /// `FLOW8_OAUTH_<SERVICE>_SIGNING_SECRET`). Unset: the service's webhooks are refused.
    #[serde(default)]
    pub signing_secret: Option<crate::vault::Secret>,
    /// The app's webhook verifier token (QuickBooks' "Verifier Token"; may also come from
    /// `FLOW8_OAUTH_<SERVICE>_WEBHOOK_VERIFIER_TOKEN`).
    #[serde(default)]
    pub webhook_verifier_token: Option<crate::vault::Secret>,
}

/// A configured provider: its catalogue entry with the operator's overrides applied.
#[derive(Debug, Clone)]
pub struct Provider {
    /// The catalogue's facts (dialect, PKCE, scopes, identity, revocation style, ...).
    pub defaults: Arc<OAuthProvider>,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: Option<crate::vault::Secret>,
    /// Redirect URI.
    pub redirect_uri: String,
    /// Scopes requested.
    pub scopes: Vec<String>,
    /// Authorize endpoint.
    pub authorize_url: String,
    /// Token endpoint.
    pub token_url: String,
    /// Revocation endpoint.
    pub revoke_url: Option<String>,
    /// Identity endpoint.
    pub identity_url: String,
    /// Pinned API hosts.
    pub api_hosts: Vec<Pin>,
    /// Hosts of the provider's pre-authenticated URLs: reachable without a credential
    /// by a step holding one of its links; never sent the token.
    pub transfer_hosts: Vec<Pin>,
    /// API base URL for modules.
    pub api_base_url: String,
    /// Post-connect redirect.
    pub return_url: Option<String>,
    /// The app-wide secret its webhooks are verified with (`signing_secret` or
    /// `webhook_verifier_token`); None: they are refused.
    pub webhook_secret: Option<crate::vault::Secret>,
}

/// The environment variable that may hold a service's client secret
/// (`FLOW8_OAUTH_ACME_CRM_CLIENT_SECRET` for `acme-crm`).
pub fn client_secret_env(service: &str) -> String {
    format!(
        "FLOW8_OAUTH_{}_CLIENT_SECRET",
        service.to_ascii_uppercase().replace('-', "_")
    )
}

/// The environment variable that may hold a service's app-wide webhook secret,
/// `FLOW8_OAUTH_<SERVICE>_<KEY>` with `KEY` `SIGNING_SECRET` or `WEBHOOK_VERIFIER_TOKEN`.
pub fn webhook_secret_env(service: &str, key: &str) -> String {
    format!(
        "FLOW8_OAUTH_{}_{}",
        service.to_ascii_uppercase().replace('-', "_"),
        key.to_ascii_uppercase()
    )
}

/// Configured providers by service: each `oauth2:` entry must name an OAuth2 provider
/// of the catalogue (shipped or added by the config file).
pub fn configure(
    catalogue: &Catalogue,
    config: &BTreeMap<String, ProviderConfig>,
) -> Result<BTreeMap<String, Provider>, String> {
    let mut out = BTreeMap::new();
    for (service, c) in config {
        let defaults = catalogue.oauth(service).cloned().ok_or_else(|| {
            let kind = if catalogue.api_key(service).is_some() {
                " (it is an API-key provider: create a component instead)"
            } else {
                ""
            };
            format!(
                "oauth2.{service}: unknown OAuth service{kind}; known: {} (add one under `providers:`)",
                catalogue.oauth_names().join(", ")
            )
        })?;
        let client_secret = std::env::var(client_secret_env(service))
            .ok()
            .map(crate::vault::Secret::new)
            .or_else(|| c.client_secret.clone());
        if c.signing_secret.is_some() && c.webhook_verifier_token.is_some() {
            return Err(format!(
                "oauth2.{service}: set `signing_secret` or `webhook_verifier_token`, not both"
            ));
        }
        let from_env = |key: &str| {
            std::env::var(webhook_secret_env(service, key))
                .ok()
                .filter(|v| !v.is_empty())
                .map(crate::vault::Secret::new)
        };
        let webhook_secret = from_env("signing_secret")
            .or_else(|| from_env("webhook_verifier_token"))
            .or_else(|| c.signing_secret.clone())
            .or_else(|| c.webhook_verifier_token.clone())
            .filter(|s| !s.expose().is_empty());
        if c.client_id.trim().is_empty() {
            return Err(format!("oauth2.{service}.client_id is empty"));
        }
        for (field, url) in [
            ("authorize_url", &c.authorize_url),
            ("token_url", &c.token_url),
            ("revoke_url", &c.revoke_url),
            ("identity_url", &c.identity_url),
            ("api_base_url", &c.api_base_url),
        ] {
            if let Some(u) = url {
                check_url(u).map_err(|e| format!("oauth2.{service}.{field} {e}"))?;
            }
        }
        // An OpenID provider's revocation is decided at discovery.
        if c.revoke_url.is_some()
            && defaults.oidc.is_none()
            && defaults.revocation == crate::catalogue::oauth::Revocation::None
        {
            return Err(format!(
                "oauth2.{service}.revoke_url: {service} has no revocation (`revocation: none` in the catalogue); set `providers.{service}.revocation` to use one"
            ));
        }
        let pinned = match &c.api_hosts {
            Some(hosts) => api_hosts("api_hosts", hosts)
                .map_err(|(f, e)| format!("oauth2.{service}.{f}: {e}"))?,
            None => defaults.api_hosts.clone(),
        };
        let transfer = match &c.transfer_hosts {
            Some(hosts) => transfer_hosts("transfer_hosts", hosts)
                .map_err(|(f, e)| format!("oauth2.{service}.{f}: {e}"))?,
            None => defaults.transfer_hosts.clone(),
        };
        out.insert(
            service.clone(),
            Provider {
                client_id: c.client_id.clone(),
                client_secret,
                redirect_uri: c.redirect_uri.clone(),
                scopes: c.scopes.clone(),
                authorize_url: c
                    .authorize_url
                    .clone()
                    .unwrap_or_else(|| defaults.authorize_url.clone()),
                token_url: c
                    .token_url
                    .clone()
                    .unwrap_or_else(|| defaults.token_url.clone()),
                revoke_url: c.revoke_url.clone().or_else(|| defaults.revoke_url.clone()),
                identity_url: c
                    .identity_url
                    .clone()
                    .unwrap_or_else(|| defaults.identity_url.clone()),
                api_hosts: pinned,
                transfer_hosts: transfer,
                return_url: c.return_url.clone(),
                webhook_secret,
                api_base_url: c
                    .api_base_url
                    .clone()
                    .unwrap_or_else(|| defaults.api_base_url.clone()),
                defaults,
            },
        );
    }
    Ok(out)
}
