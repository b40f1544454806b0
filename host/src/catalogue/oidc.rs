//! Generic OpenID Connect providers (`auth_mode: oidc`): an entry names the provider's
//! issuer, and the host reads the rest from the issuer's discovery document
//! (`/.well-known/openid-configuration`, OpenID Connect Discovery 1.0) when it starts:
//! the endpoints, whether it revokes (RFC 7009), which PKCE methods it takes and
//! whether it offers `offline_access`. Anything the entry sets itself wins over
//! discovery. Discovery itself is `crate::oauth::discovery`; this file only checks the
//! entry and records what it left open.
//!
//! Defaults for an OpenID provider (each can be set in the entry): the scopes `openid`
//! and, where offered, `offline_access`, with `prompt=consent` so that the provider
//! issues a refresh token (OIDC Core §11 lets it drop `offline_access` otherwise);
//! PKCE S256 unless the provider lists methods without it; the user id at `/sub`, the
//! email at `/email`; the token pinned to the issuer's URL (list `api_hosts` for the
//! APIs behind it).

use super::checks::pin;
use super::oauth::{
    IdentityFields, OAuthProvider, RESERVED_PARAMS, RefreshPolicy, Revocation, TokenDialect,
    api_hosts, check_url,
};
use super::{CatalogueError, Entry};
use serde::Deserialize;
use std::collections::BTreeMap;

/// What an `auth_mode: oidc` entry leaves to discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcProfile {
    /// The issuer (its discovery document must name exactly this issuer).
    pub issuer: String,
    /// The endpoints the entry set itself (`authorize_url`, ...), kept over discovery.
    pub set_endpoints: Vec<&'static str>,
    /// PKCE as the entry set it; None: as the discovery document says.
    pub pkce: Option<bool>,
    /// The revocation style the entry set; None: RFC 7009 if the document names a
    /// revocation endpoint, else none.
    pub revocation: Option<Revocation>,
    /// Whether the entry listed `implied_scopes` itself (else `openid` and, where
    /// offered, `offline_access`).
    pub scopes_set: bool,
}

/// `auth_mode: oidc` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOidc {
    #[serde(default)]
    display_name: Option<String>,
    issuer: String,
    #[serde(default)]
    authorize_url: Option<String>,
    #[serde(default)]
    token_url: Option<String>,
    #[serde(default)]
    revoke_url: Option<String>,
    #[serde(default)]
    revocation: Option<Revocation>,
    #[serde(default)]
    identity_url: Option<String>,
    #[serde(default = "space")]
    scope_separator: String,
    #[serde(default)]
    authorize_params: BTreeMap<String, String>,
    #[serde(default)]
    implied_scopes: Option<Vec<String>>,
    #[serde(default)]
    pkce: Option<bool>,
    #[serde(default)]
    refresh: RefreshPolicy,
    #[serde(default)]
    identity: Option<IdentityFields>,
    #[serde(default)]
    callback_metadata: Vec<String>,
    #[serde(default)]
    refresh_refused_hint: Option<String>,
    #[serde(default)]
    api_base_url: Option<String>,
    #[serde(default)]
    api_hosts: Option<Vec<String>>,
}

fn space() -> String {
    " ".into()
}

/// An issuer: an https URL without query or fragment (OIDC Discovery §2), or plain http
/// on a loopback address (a provider on this machine, the tests').
pub(crate) fn check_issuer(issuer: &str) -> Result<url::Url, String> {
    let u = url::Url::parse(issuer).map_err(|e| format!("is not a URL: {e}"))?;
    if u.query().is_some() || u.fragment().is_some() {
        return Err("must have no query or fragment (OpenID Connect Discovery §2)".into());
    }
    if u.host_str().is_none() {
        return Err("must name a host".into());
    }
    match u.scheme() {
        "https" => Ok(u),
        "http" if is_loopback(&u) => Ok(u),
        _ => Err("must be an https URL (plain http only on a loopback address)".into()),
    }
}

/// `127.0.0.0/8`, `::1` or `localhost`.
pub(crate) fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

impl RawOidc {
    /// Check the entry and build the provider, its endpoints as far as the entry names
    /// them (the rest come from discovery).
    pub(crate) fn build(self, entry: &Entry) -> Result<OAuthProvider, CatalogueError> {
        let bad = |field: &str, reason: &str| entry.invalid(field, reason);
        check_issuer(&self.issuer).map_err(|e| bad("issuer", &e))?;
        let mut set_endpoints = Vec::new();
        for (field, url) in [
            ("authorize_url", self.authorize_url.as_ref()),
            ("token_url", self.token_url.as_ref()),
            ("revoke_url", self.revoke_url.as_ref()),
            ("identity_url", self.identity_url.as_ref()),
            ("api_base_url", self.api_base_url.as_ref()),
        ] {
            if let Some(u) = url {
                check_url(u).map_err(|e| bad(field, &e))?;
                if field != "api_base_url" {
                    set_endpoints.push(field);
                }
            }
        }
        match (self.revocation, &self.revoke_url) {
            (Some(Revocation::None), Some(_)) => {
                return Err(bad(
                    "revoke_url",
                    "is set but `revocation` is `none`; say how to revoke (rfc7009)",
                ));
            }
            (Some(Revocation::SlackAuthRevoke), _) => {
                return Err(bad(
                    "revocation",
                    "an OpenID provider revokes with rfc7009 or not at all (none)",
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
        if let Some(scopes) = &self.implied_scopes
            && scopes.iter().any(|s| s.trim().is_empty())
        {
            return Err(bad("implied_scopes", "a scope must not be empty"));
        }
        let identity = self.identity.unwrap_or_else(|| IdentityFields {
            user_id: vec!["/sub".into()],
            email: vec!["/email".into()],
        });
        if identity.user_id.is_empty() {
            return Err(bad(
                "identity.user_id",
                "must list at least one JSON pointer (e.g. /sub)",
            ));
        }
        for (which, pointers) in [("user_id", &identity.user_id), ("email", &identity.email)] {
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
        let api_hosts = match &self.api_hosts {
            Some(hosts) => api_hosts("api_hosts", hosts).map_err(|(f, reason)| bad(&f, &reason))?,
            // The issuer's own URL: its userinfo endpoint and whatever the provider
            // serves under it, nothing else.
            None => vec![pin("issuer", &self.issuer).map_err(|e| bad(&e.field, &e.reason))?],
        };
        let scopes_set = self.implied_scopes.is_some();
        Ok(OAuthProvider {
            name: entry.name.clone(),
            display_name: self.display_name.unwrap_or_else(|| entry.name.clone()),
            authorize_url: self.authorize_url.unwrap_or_default(),
            token_url: self.token_url.unwrap_or_default(),
            revocation: self.revocation.unwrap_or(if self.revoke_url.is_some() {
                Revocation::Rfc7009
            } else {
                Revocation::None
            }),
            revoke_url: self.revoke_url,
            identity_url: self.identity_url.unwrap_or_default(),
            scope_separator: self.scope_separator,
            authorize_params: self.authorize_params.into_iter().collect(),
            implied_scopes: self.implied_scopes.unwrap_or_default(),
            pkce: self.pkce.unwrap_or(true),
            dialect: TokenDialect::Standard,
            refresh: self.refresh,
            identity,
            callback_metadata: self.callback_metadata,
            refresh_refused_hint: self.refresh_refused_hint.filter(|h| !h.trim().is_empty()),
            api_base_url: self.api_base_url.unwrap_or_else(|| self.issuer.clone()),
            api_hosts,
            // Pre-authenticated URLs are a provider's own API design (Graph's upload
            // sessions); a generic OpenID provider has none unless the operator says.
            transfer_hosts: Vec::new(),
            oidc: Some(OidcProfile {
                issuer: self.issuer,
                set_endpoints,
                pkce: self.pkce,
                revocation: self.revocation,
                scopes_set,
            }),
        })
    }
}
