//! OAuth2 providers (`auth_mode: oauth2`): endpoints, how the authorize request is
//! shaped (scope separator, extra parameters, implied scopes, PKCE), how the token
//! endpoint answers (its dialect), whether tokens refresh, how a link is revoked, where
//! the user's id and email sit in the identity answer, and the API the token is for
//! (base URL and the hosts it is pinned to).
//!
//! The per-deployment half (client id and secret, redirect URI, scopes, endpoint
//! overrides) is the config file's `oauth2:` block: `crate::oauth::providers`.

use super::checks::pin;
use super::pins::Pin;
use super::{CatalogueError, Entry};
use serde::Deserialize;
use std::collections::BTreeMap;

/// How a provider's token endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenDialect {
    /// RFC 6749 JSON, errors as 4xx with `error`.
    #[default]
    Standard,
    /// Slack `oauth.v2.access`: HTTP 200 with `ok:false` on errors; user tokens nested
    /// under `authed_user` (api.slack.com/methods/oauth.v2.access).
    Slack,
}

/// How tokens are refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshPolicy {
    /// Refresh before expiry with the refresh token.
    #[default]
    Auto,
    /// Long-lived tokens; flow8 marks these "manual refresh" (reconnect when revoked).
    Manual,
}

/// How a link is revoked at the provider when it is unlinked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Revocation {
    /// RFC 7009: a form post of the refresh token (which revokes its access tokens), or
    /// of the access token when there is none, with the client credentials.
    Rfc7009,
    /// Slack `auth.revoke`: the token itself is the credential
    /// (api.slack.com/methods/auth.revoke).
    SlackAuthRevoke,
    /// The provider offers no revocation endpoint.
    None,
}

/// Where the user's id and email sit in the identity endpoint's answer: JSON pointers
/// (RFC 6901), the first that holds a string wins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFields {
    /// The provider's user id.
    pub user_id: Vec<String>,
    /// The user's email.
    #[serde(default)]
    pub email: Vec<String>,
}

impl IdentityFields {
    fn first(pointers: &[String], answer: &serde_json::Value) -> Option<String> {
        pointers.iter().find_map(|p| {
            answer
                .pointer(p)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
    }

    /// The user id in an identity answer.
    pub fn user_id(&self, answer: &serde_json::Value) -> Option<String> {
        Self::first(&self.user_id, answer)
    }

    /// The email in an identity answer.
    pub fn email(&self, answer: &serde_json::Value) -> Option<String> {
        Self::first(&self.email, answer)
    }
}

/// One OAuth2 provider's built-in facts.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuthProvider {
    /// The service name (`integration_type` of its links, a manifest binding's `service`).
    pub name: String,
    /// For people (the connect page's "Connect ...").
    pub display_name: String,
    /// Authorization endpoint.
    pub authorize_url: String,
    /// Token endpoint.
    pub token_url: String,
    /// Revocation endpoint (for [`Revocation::Rfc7009`] and [`Revocation::SlackAuthRevoke`]).
    pub revoke_url: Option<String>,
    /// How a link is revoked.
    pub revocation: Revocation,
    /// Who-am-I endpoint for the identity at connect time and health checks.
    pub identity_url: String,
    /// How scopes are joined in the authorize URL.
    pub scope_separator: String,
    /// Extra authorize parameters.
    pub authorize_params: Vec<(String, String)>,
    /// Scopes always requested (e.g. Microsoft's `offline_access` for a refresh token).
    pub implied_scopes: Vec<String>,
    /// PKCE S256 on the authorize request.
    pub pkce: bool,
    /// Token answer format.
    pub dialect: TokenDialect,
    /// Refresh policy.
    pub refresh: RefreshPolicy,
    /// Where the user's id and email sit in the identity answer.
    pub identity: IdentityFields,
    /// Callback query parameters kept in the link's `provider_metadata` (QuickBooks'
    /// `realmId`).
    pub callback_metadata: Vec<String>,
    /// What a user should know when the provider refuses a refresh token
    /// (`invalid_grant`), added to the link's `status_reason` (Google's 7-day expiry of
    /// apps in "Testing").
    pub refresh_refused_hint: Option<String>,
    /// Base URL of the provider's API, handed to modules.
    pub api_base_url: String,
    /// The only places the access token may be sent to: hosts, each with an optional
    /// path prefix (`https://slack.com/api/`).
    pub api_hosts: Vec<Pin>,
    /// Where the provider's pre-authenticated URLs live (Graph's upload sessions and
    /// OneDrive's download URLs): a module holding a link of this provider may send
    /// requests there *without* a credential, and the token is never attached there
    /// (these are not pins). Empty for most providers.
    pub transfer_hosts: Vec<Pin>,
    /// For a generic OpenID Connect provider (`auth_mode: oidc`): its issuer, and what
    /// the entry left to discovery. Until `crate::oauth::discovery` has read the
    /// issuer's `/.well-known/openid-configuration`, the endpoints it left out are
    /// empty.
    pub oidc: Option<super::oidc::OidcProfile>,
}

/// `auth_mode: oauth2` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOAuth {
    #[serde(default)]
    display_name: Option<String>,
    authorize_url: String,
    token_url: String,
    #[serde(default)]
    revoke_url: Option<String>,
    revocation: Revocation,
    identity_url: String,
    #[serde(default = "space")]
    scope_separator: String,
    #[serde(default)]
    authorize_params: BTreeMap<String, String>,
    #[serde(default)]
    implied_scopes: Vec<String>,
    /// PKCE by default (RFC 9700 §2.1.1): providers that do not know it ignore it.
    #[serde(default = "yes")]
    pkce: bool,
    #[serde(default)]
    token_dialect: TokenDialect,
    #[serde(default)]
    refresh: RefreshPolicy,
    identity: IdentityFields,
    #[serde(default)]
    callback_metadata: Vec<String>,
    #[serde(default)]
    refresh_refused_hint: Option<String>,
    api_base_url: String,
    api_hosts: Vec<String>,
    #[serde(default)]
    transfer_hosts: Vec<String>,
}

fn space() -> String {
    " ".into()
}

fn yes() -> bool {
    true
}

/// Authorize parameters the host sets itself.
pub(crate) const RESERVED_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
];

/// Whether `s` is an absolute http(s) URL with a host.
pub(crate) fn check_url(s: &str) -> Result<(), String> {
    match url::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(()),
        Ok(_) => Err("must be an http(s) URL with a host".into()),
        Err(e) => Err(format!("is not a URL: {e}")),
    }
}

/// The hosts of a provider's pre-authenticated URLs (`transfer_hosts`), each a valid
/// pattern that is not every host; none is fine.
pub(crate) fn transfer_hosts(field: &str, hosts: &[String]) -> Result<Vec<Pin>, (String, String)> {
    hosts
        .iter()
        .enumerate()
        .map(|(i, h)| pin(&format!("{field}[{i}]"), h).map_err(|e| (e.field, e.reason)))
        .collect()
}

/// The API hosts a token is pinned to, each a valid pattern that is not every host.
pub(crate) fn api_hosts(field: &str, hosts: &[String]) -> Result<Vec<Pin>, (String, String)> {
    if hosts.is_empty() {
        return Err((field.into(), "must list at least one host".into()));
    }
    hosts
        .iter()
        .enumerate()
        .map(|(i, h)| pin(&format!("{field}[{i}]"), h).map_err(|e| (e.field, e.reason)))
        .collect()
}

impl RawOAuth {
    /// Check the entry and build the provider.
    pub(crate) fn build(self, entry: &Entry) -> Result<OAuthProvider, CatalogueError> {
        let bad = |field: &str, reason: &str| entry.invalid(field, reason);
        for (field, url) in [
            ("authorize_url", Some(&self.authorize_url)),
            ("token_url", Some(&self.token_url)),
            ("revoke_url", self.revoke_url.as_ref()),
            ("identity_url", Some(&self.identity_url)),
            ("api_base_url", Some(&self.api_base_url)),
        ] {
            if let Some(u) = url {
                check_url(u).map_err(|e| bad(field, &e))?;
            }
        }
        match (self.revocation, &self.revoke_url) {
            (Revocation::None, Some(_)) => {
                return Err(bad(
                    "revoke_url",
                    "is set but `revocation` is `none`; say how to revoke (rfc7009 or slack_auth_revoke)",
                ));
            }
            (Revocation::Rfc7009 | Revocation::SlackAuthRevoke, None) => {
                return Err(bad(
                    "revoke_url",
                    "is required unless `revocation` is `none`",
                ));
            }
            _ => {}
        }
        if self.scope_separator.is_empty() {
            return Err(bad("scope_separator", "must not be empty"));
        }
        if let Some(k) = self
            .authorize_params
            .keys()
            .find(|k| k.is_empty() || RESERVED_PARAMS.contains(&k.as_str()))
        {
            return Err(bad(
                &format!("authorize_params.{k}"),
                "is a parameter the host sets itself",
            ));
        }
        if self.implied_scopes.iter().any(|s| s.trim().is_empty()) {
            return Err(bad("implied_scopes", "a scope must not be empty"));
        }
        if self.identity.user_id.is_empty() {
            return Err(bad(
                "identity.user_id",
                "must list at least one JSON pointer (e.g. /sub)",
            ));
        }
        for (which, pointers) in [
            ("user_id", &self.identity.user_id),
            ("email", &self.identity.email),
        ] {
            if let Some(i) = pointers.iter().position(|p| !p.starts_with('/')) {
                return Err(bad(
                    &format!("identity.{which}[{i}]"),
                    "is not a JSON pointer (RFC 6901: it starts with `/`)",
                ));
            }
        }
        if self.callback_metadata.iter().any(|p| p.is_empty()) {
            return Err(bad(
                "callback_metadata",
                "a parameter name must not be empty",
            ));
        }
        let api_hosts =
            api_hosts("api_hosts", &self.api_hosts).map_err(|(f, reason)| bad(&f, &reason))?;
        let transfer_hosts = transfer_hosts("transfer_hosts", &self.transfer_hosts)
            .map_err(|(f, reason)| bad(&f, &reason))?;
        Ok(OAuthProvider {
            name: entry.name.clone(),
            display_name: self.display_name.unwrap_or_else(|| entry.name.clone()),
            authorize_url: self.authorize_url,
            token_url: self.token_url,
            revoke_url: self.revoke_url,
            revocation: self.revocation,
            identity_url: self.identity_url,
            scope_separator: self.scope_separator,
            authorize_params: self.authorize_params.into_iter().collect(),
            implied_scopes: self.implied_scopes,
            pkce: self.pkce,
            dialect: self.token_dialect,
            refresh: self.refresh,
            identity: self.identity,
            callback_metadata: self.callback_metadata,
            refresh_refused_hint: self.refresh_refused_hint.filter(|h| !h.trim().is_empty()),
            api_base_url: self.api_base_url,
            api_hosts,
            transfer_hosts,
            oidc: None,
        })
    }
}
