//! The OAuth2 providers flow8 integrates with, their endpoints and quirks, and the
//! operator's configuration of each (flow8's `oauth2:` block in `config.yml`). Every
//! endpoint can be overridden (sovereign clouds, regional hosts, tests).

use serde::Deserialize;
use std::collections::BTreeMap;

/// How a provider's token endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenDialect {
    /// RFC 6749 JSON, errors as 4xx with `error`.
    Standard,
    /// Slack `oauth.v2.access`: HTTP 200 with `ok:false` on errors; user tokens nested
    /// under `authed_user` (api.slack.com/methods/oauth.v2.access).
    Slack,
}

/// How tokens are refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshPolicy {
    /// Refresh before expiry with the refresh token.
    Auto,
    /// Long-lived tokens; flow8 marks these "manual refresh" (reconnect when revoked).
    Manual,
}

/// One provider's built-in facts.
#[derive(Debug, Clone)]
pub struct ProviderDefaults {
    /// Service name as flow8 uses it.
    pub service: &'static str,
    /// Authorization endpoint.
    pub authorize_url: &'static str,
    /// Token endpoint.
    pub token_url: &'static str,
    /// Revocation endpoint (RFC 7009 or the provider's own).
    pub revoke_url: Option<&'static str>,
    /// Who-am-I endpoint for health checks.
    pub identity_url: &'static str,
    /// How scopes are joined in the authorize URL.
    pub scope_separator: &'static str,
    /// Extra authorize parameters.
    pub extra_params: &'static [(&'static str, &'static str)],
    /// Scopes always requested (e.g. Microsoft's `offline_access` for a refresh token).
    pub implied_scopes: &'static [&'static str],
    /// PKCE S256 supported.
    pub pkce: bool,
    /// Token answer format.
    pub dialect: TokenDialect,
    /// Refresh policy.
    pub refresh: RefreshPolicy,
    /// API hosts the access token may be sent to (credential pinning).
    pub api_hosts: &'static [&'static str],
    /// Base URL of the provider's API, handed to modules (overridable for sovereign
    /// clouds, regional hosts and tests).
    pub api_base_url: &'static str,
}

/// The catalogue.
pub const CATALOGUE: &[ProviderDefaults] = &[
    ProviderDefaults {
        service: "microsoft",
        authorize_url: "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        token_url: "https://login.microsoftonline.com/common/oauth2/v2.0/token",
        revoke_url: None,
        identity_url: "https://graph.microsoft.com/v1.0/me",
        scope_separator: " ",
        extra_params: &[],
        // Without offline_access Microsoft issues no refresh token.
        implied_scopes: &["offline_access"],
        pkce: true,
        dialect: TokenDialect::Standard,
        refresh: RefreshPolicy::Auto,
        api_hosts: &["https://graph.microsoft.com"],
        api_base_url: "https://graph.microsoft.com/v1.0",
    },
    ProviderDefaults {
        service: "google",
        authorize_url: "https://accounts.google.com/o/oauth2/v2/auth",
        token_url: "https://oauth2.googleapis.com/token",
        revoke_url: Some("https://oauth2.googleapis.com/revoke"),
        identity_url: "https://openidconnect.googleapis.com/v1/userinfo",
        scope_separator: " ",
        // A refresh token only comes with offline access, and again only on consent.
        extra_params: &[("access_type", "offline"), ("prompt", "consent")],
        implied_scopes: &[],
        pkce: true,
        dialect: TokenDialect::Standard,
        refresh: RefreshPolicy::Auto,
        api_hosts: &["https://*.googleapis.com"],
        api_base_url: "https://www.googleapis.com",
    },
    ProviderDefaults {
        service: "slack",
        authorize_url: "https://slack.com/oauth/v2/authorize",
        token_url: "https://slack.com/api/oauth.v2.access",
        revoke_url: Some("https://slack.com/api/auth.revoke"),
        identity_url: "https://slack.com/api/auth.test",
        scope_separator: ",",
        extra_params: &[],
        implied_scopes: &[],
        pkce: false,
        dialect: TokenDialect::Slack,
        refresh: RefreshPolicy::Auto,
        api_hosts: &["https://slack.com", "https://*.slack.com"],
        api_base_url: "https://slack.com/api",
    },
    ProviderDefaults {
        service: "clio",
        authorize_url: "https://app.clio.com/oauth/authorize",
        token_url: "https://app.clio.com/oauth/token",
        revoke_url: Some("https://app.clio.com/oauth/deauthorize"),
        identity_url: "https://app.clio.com/api/v4/users/who_am_i",
        scope_separator: " ",
        extra_params: &[],
        implied_scopes: &[],
        pkce: false,
        dialect: TokenDialect::Standard,
        refresh: RefreshPolicy::Manual,
        api_hosts: &["https://app.clio.com", "https://*.app.clio.com"],
        api_base_url: "https://app.clio.com/api/v4",
    },
    ProviderDefaults {
        service: "quickbooks",
        authorize_url: "https://appcenter.intuit.com/connect/oauth2",
        token_url: "https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer",
        revoke_url: Some("https://developer.api.intuit.com/v2/oauth2/tokens/revoke"),
        identity_url: "https://accounts.platform.intuit.com/v1/openid_connect/userinfo",
        scope_separator: " ",
        extra_params: &[],
        implied_scopes: &[],
        pkce: false,
        dialect: TokenDialect::Standard,
        refresh: RefreshPolicy::Auto,
        api_hosts: &[
            "https://quickbooks.api.intuit.com",
            "https://sandbox-quickbooks.api.intuit.com",
        ],
        api_base_url: "https://quickbooks.api.intuit.com/v3",
    },
    ProviderDefaults {
        service: "bexio",
        authorize_url: "https://idp.bexio.com/authorize",
        token_url: "https://idp.bexio.com/token",
        revoke_url: None,
        identity_url: "https://idp.bexio.com/userinfo",
        scope_separator: " ",
        extra_params: &[],
        implied_scopes: &[],
        pkce: false,
        dialect: TokenDialect::Standard,
        refresh: RefreshPolicy::Manual,
        api_hosts: &["https://api.bexio.com"],
        api_base_url: "https://api.bexio.com",
    },
];

/// The operator's configuration of one provider (flow8's `oauth2.<service>`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Client id.
    pub client_id: String,
    /// Client secret (may also come from `FLOW8_OAUTH_<SERVICE>_CLIENT_SECRET`).
    #[serde(default)]
    pub client_secret: Option<String>,
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
    /// Override the API base URL modules are told to use.
    #[serde(default)]
    pub api_base_url: Option<String>,
    /// Where to send the browser after a successful connect (default: a "Connected!" page).
    #[serde(default)]
    pub return_url: Option<String>,
}

/// A configured provider: defaults with the operator's overrides applied.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Built-in facts.
    pub defaults: &'static ProviderDefaults,
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
    pub api_hosts: Vec<String>,
    /// API base URL for modules.
    pub api_base_url: String,
    /// Post-connect redirect.
    pub return_url: Option<String>,
}

/// Configured providers by service.
pub fn configure(
    config: &BTreeMap<String, ProviderConfig>,
) -> Result<BTreeMap<String, Provider>, String> {
    let mut out = BTreeMap::new();
    for (service, c) in config {
        let defaults = CATALOGUE
            .iter()
            .find(|d| d.service == service)
            .ok_or_else(|| format!("oauth2.{service}: unknown service"))?;
        let env = format!("FLOW8_OAUTH_{}_CLIENT_SECRET", service.to_ascii_uppercase());
        let client_secret = std::env::var(&env).ok().or_else(|| c.client_secret.clone());
        if c.client_id.trim().is_empty() {
            return Err(format!("oauth2.{service}.client_id is empty"));
        }
        for h in c.api_hosts.iter().flatten() {
            crate::manifest::HostPattern::parse(h)
                .map_err(|e| format!("oauth2.{service}.api_hosts: {e}"))?;
        }
        out.insert(
            service.clone(),
            Provider {
                defaults,
                client_id: c.client_id.clone(),
                client_secret: client_secret.map(crate::vault::Secret::new),
                redirect_uri: c.redirect_uri.clone(),
                scopes: c.scopes.clone(),
                authorize_url: c
                    .authorize_url
                    .clone()
                    .unwrap_or_else(|| defaults.authorize_url.into()),
                token_url: c
                    .token_url
                    .clone()
                    .unwrap_or_else(|| defaults.token_url.into()),
                revoke_url: c
                    .revoke_url
                    .clone()
                    .or_else(|| defaults.revoke_url.map(str::to_string)),
                identity_url: c
                    .identity_url
                    .clone()
                    .unwrap_or_else(|| defaults.identity_url.into()),
                api_hosts: c
                    .api_hosts
                    .clone()
                    .unwrap_or_else(|| defaults.api_hosts.iter().map(|s| s.to_string()).collect()),
                return_url: c.return_url.clone(),
                api_base_url: c
                    .api_base_url
                    .clone()
                    .unwrap_or_else(|| defaults.api_base_url.into()),
            },
        );
    }
    Ok(out)
}
