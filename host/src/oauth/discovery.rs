//! OpenID Connect Discovery 1.0 for the generic OpenID provider profile
//! (`auth_mode: oidc`, `crate::catalogue::oidc`): when a host builds its OAuth service,
//! it reads each such provider's `<issuer>/.well-known/openid-configuration` once and
//! fills in what neither the catalogue entry nor the `oauth2:` block set: the
//! authorize, token, userinfo and revocation endpoints, PKCE (on unless the provider
//! lists `code_challenge_methods_supported` without `S256`), and the scopes `openid`
//! and `offline_access` (where offered, with `prompt=consent`, without which a strict
//! provider issues no refresh token: OIDC Core §11).
//!
//! The document must name exactly the configured issuer (Discovery §4.3: a document
//! served for another issuer is a mix-up), and every endpoint must be https (plain http
//! only on a loopback address), as the client secret and the tokens go there.

use super::providers::Provider;
use crate::catalogue::oauth::{Revocation, check_url};
use crate::catalogue::oidc::{OidcProfile, check_issuer, is_loopback};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long the discovery request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The largest discovery document read (real ones are a few KiB).
const MAX_DOCUMENT: usize = 256 * 1024;

/// Why a provider's discovery failed.
#[derive(Debug, thiserror::Error)]
#[error("oauth2.{service}: OpenID discovery at {url} failed: {reason}")]
pub struct DiscoveryError {
    /// The service.
    pub service: String,
    /// The document's URL.
    pub url: String,
    /// What went wrong.
    pub reason: String,
}

/// The members of a discovery document the host uses (OIDC Discovery §3).
#[derive(Debug, Deserialize)]
struct Document {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    revocation_endpoint: Option<String>,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    scopes_supported: Option<Vec<String>>,
}

/// The discovery document's URL for an issuer (Discovery §4: the path is appended to
/// the issuer's, without a doubled slash).
pub fn document_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// An endpoint a discovery document names: an http(s) URL, https unless on loopback.
fn endpoint(member: &str, url: &str) -> Result<String, String> {
    check_url(url).map_err(|e| format!("`{member}` {e}"))?;
    let parsed = url::Url::parse(url).map_err(|e| format!("`{member}` is not a URL: {e}"))?;
    if parsed.scheme() != "https" && !is_loopback(&parsed) {
        return Err(format!(
            "`{member}` is plain http on a non-loopback host; no secret is sent there"
        ));
    }
    Ok(url.to_string())
}

/// Read every OpenID provider's discovery document and complete its configuration.
pub async fn discover_all(
    providers: &mut BTreeMap<String, Provider>,
    http: &reqwest::Client,
) -> Result<(), DiscoveryError> {
    for (service, p) in providers.iter_mut() {
        let Some(profile) = p.defaults.oidc.clone() else {
            continue;
        };
        let url = document_url(&profile.issuer);
        let fail = |reason: String| DiscoveryError {
            service: service.clone(),
            url: url.clone(),
            reason,
        };
        let document = fetch(http, &url).await.map_err(fail)?;
        apply(p, &profile, document).map_err(fail)?;
        tracing::info!(service = %service, issuer = %profile.issuer, pkce = p.defaults.pkce, revocation = ?p.defaults.revocation, "OpenID provider discovered");
    }
    Ok(())
}

async fn fetch(http: &reqwest::Client, url: &str) -> Result<Document, String> {
    let resp = http
        .get(url)
        .header("accept", "application/json")
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("it answered HTTP {}", status.as_u16()));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT as u64)
    {
        return Err("the document is larger than 256 KiB".into());
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if body.len() > MAX_DOCUMENT {
        return Err("the document is larger than 256 KiB".into());
    }
    serde_json::from_slice(&body).map_err(|e| format!("not a discovery document: {e}"))
}

/// Lay a discovery document onto a configured provider: what the entry and the
/// `oauth2:` block set stays.
fn apply(p: &mut Provider, profile: &OidcProfile, doc: Document) -> Result<(), String> {
    check_issuer(&doc.issuer).map_err(|e| format!("`issuer` {e}"))?;
    if doc.issuer != profile.issuer {
        return Err(format!(
            "the document is for issuer `{}`, not `{}` (OpenID Connect Discovery §4.3)",
            doc.issuer, profile.issuer
        ));
    }
    if p.authorize_url.is_empty() {
        p.authorize_url = endpoint("authorization_endpoint", &doc.authorization_endpoint)?;
    }
    if p.token_url.is_empty() {
        p.token_url = endpoint("token_endpoint", &doc.token_endpoint)?;
    }
    if p.identity_url.is_empty() {
        p.identity_url = match &doc.userinfo_endpoint {
            Some(u) => endpoint("userinfo_endpoint", u)?,
            None => {
                return Err(
                    "the provider names no `userinfo_endpoint`; set `identity_url` for it".into(),
                );
            }
        };
    }
    let mut defaults = (*p.defaults).clone();
    match profile.revocation {
        Some(Revocation::None) => p.revoke_url = None,
        _ => {
            if p.revoke_url.is_none()
                && let Some(u) = &doc.revocation_endpoint
            {
                p.revoke_url = Some(endpoint("revocation_endpoint", u)?);
            }
        }
    }
    defaults.revocation = match (profile.revocation, &p.revoke_url) {
        (Some(r), _) => r,
        (None, Some(_)) => Revocation::Rfc7009,
        (None, None) => Revocation::None,
    };
    // PKCE wherever the provider takes S256; a provider that lists no methods may still
    // take it, and one that does not know it ignores the parameters (RFC 6749 §3.1).
    defaults.pkce = profile.pkce.unwrap_or_else(|| {
        doc.code_challenge_methods_supported
            .as_ref()
            .is_none_or(|m| m.iter().any(|m| m == "S256"))
    });
    if !profile.scopes_set {
        let offered = |s: &str| {
            doc.scopes_supported
                .as_ref()
                .is_none_or(|all| all.iter().any(|x| x == s))
        };
        let mut scopes = vec!["openid".to_string()];
        if offered("offline_access") {
            scopes.push("offline_access".into());
            // OIDC Core §11: without `prompt=consent` the provider may (and a strict
            // one does) ignore offline_access, and issue no refresh token.
            if !defaults.authorize_params.iter().any(|(k, _)| k == "prompt") {
                defaults
                    .authorize_params
                    .push(("prompt".into(), "consent".into()));
            }
        }
        defaults.implied_scopes = scopes;
    }
    defaults.authorize_url = p.authorize_url.clone();
    defaults.token_url = p.token_url.clone();
    defaults.identity_url = p.identity_url.clone();
    defaults.revoke_url = p.revoke_url.clone();
    p.defaults = Arc::new(defaults);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn provider(entry: &str, oauth2: serde_json::Value) -> Provider {
        let mut overrides: serde_norway::Mapping = serde_norway::from_str(entry).unwrap();
        let catalogue =
            crate::catalogue::Catalogue::with_overrides(&std::mem::take(&mut overrides)).unwrap();
        let config =
            BTreeMap::from([("acme".to_string(), serde_json::from_value(oauth2).unwrap())]);
        super::super::providers::configure(&catalogue, &config)
            .unwrap()
            .remove("acme")
            .unwrap()
    }

    fn client() -> serde_json::Value {
        json!({"client_id": "c", "redirect_uri": "http://127.0.0.1:1/auth/callback", "scopes": ["contacts.read"]})
    }

    fn document(extra: serde_json::Value) -> Document {
        let mut d = json!({
            "issuer": "https://id.acme.example",
            "authorization_endpoint": "https://id.acme.example/auth",
            "token_endpoint": "https://id.acme.example/token",
            "userinfo_endpoint": "https://id.acme.example/me",
            "revocation_endpoint": "https://id.acme.example/token/revocation",
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "offline_access", "email"],
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                d.as_object_mut().unwrap().remove(k);
            } else {
                d[k] = v.clone();
            }
        }
        serde_json::from_value(d).unwrap()
    }

    const ENTRY: &str = "acme: {auth_mode: oidc, issuer: 'https://id.acme.example'}";

    #[test]
    fn discovery_fills_endpoints_pkce_revocation_and_offline_access() {
        let mut p = provider(ENTRY, client());
        let profile = p.defaults.oidc.clone().unwrap();
        apply(&mut p, &profile, document(json!({}))).unwrap();
        assert_eq!(p.authorize_url, "https://id.acme.example/auth");
        assert_eq!(p.token_url, "https://id.acme.example/token");
        assert_eq!(p.identity_url, "https://id.acme.example/me");
        assert_eq!(
            p.revoke_url.as_deref(),
            Some("https://id.acme.example/token/revocation")
        );
        assert_eq!(p.defaults.revocation, Revocation::Rfc7009);
        assert!(p.defaults.pkce);
        assert_eq!(p.defaults.implied_scopes, ["openid", "offline_access"]);
        assert!(
            p.defaults
                .authorize_params
                .contains(&("prompt".into(), "consent".into()))
        );
        // The identity at /sub, the token pinned to the issuer.
        assert_eq!(p.defaults.identity.user_id, ["/sub"]);
        assert!(p.api_hosts[0].matches(&url::Url::parse("https://id.acme.example/me").unwrap()));
        assert!(!p.api_hosts[0].matches(&url::Url::parse("https://evil.example/me").unwrap()));
    }

    #[test]
    fn what_the_provider_does_not_offer_is_not_asked_for() {
        let mut p = provider(ENTRY, client());
        let profile = p.defaults.oidc.clone().unwrap();
        apply(
            &mut p,
            &profile,
            document(json!({"revocation_endpoint": null, "code_challenge_methods_supported": ["plain"], "scopes_supported": ["openid"]})),
        )
        .unwrap();
        assert_eq!(p.revoke_url, None);
        assert_eq!(p.defaults.revocation, Revocation::None);
        assert!(!p.defaults.pkce, "only `plain` offered: no S256 challenge");
        assert_eq!(p.defaults.implied_scopes, ["openid"]);
        assert!(p.defaults.authorize_params.is_empty());
        // No methods listed: PKCE anyway (a provider that does not know it ignores it).
        let mut p = provider(ENTRY, client());
        apply(
            &mut p,
            &profile,
            document(json!({"code_challenge_methods_supported": null})),
        )
        .unwrap();
        assert!(p.defaults.pkce);
    }

    #[test]
    fn what_the_entry_and_the_oauth2_block_set_stays() {
        let entry = "acme: {auth_mode: oidc, issuer: 'https://id.acme.example', pkce: false, authorize_params: {prompt: login}, token_url: 'https://token.acme.example/t'}";
        let mut oauth2 = client();
        oauth2["identity_url"] = json!("https://api.acme.example/whoami");
        let mut p = provider(entry, oauth2);
        let profile = p.defaults.oidc.clone().unwrap();
        apply(&mut p, &profile, document(json!({}))).unwrap();
        assert_eq!(p.token_url, "https://token.acme.example/t");
        assert_eq!(p.identity_url, "https://api.acme.example/whoami");
        assert_eq!(p.authorize_url, "https://id.acme.example/auth");
        assert!(!p.defaults.pkce);
        assert_eq!(
            p.defaults.authorize_params,
            [("prompt".to_string(), "login".to_string())]
        );
    }

    #[test]
    fn a_document_for_another_issuer_or_with_plain_http_endpoints_is_refused() {
        let mut p = provider(ENTRY, client());
        let profile = p.defaults.oidc.clone().unwrap();
        let e = apply(
            &mut p,
            &profile,
            document(json!({"issuer": "https://evil.example"})),
        )
        .unwrap_err();
        assert!(e.contains("not `https://id.acme.example`"), "{e}");
        let e = apply(
            &mut p,
            &profile,
            document(json!({"token_endpoint": "http://id.acme.example/token"})),
        )
        .unwrap_err();
        assert!(
            e.contains("token_endpoint") && e.contains("plain http"),
            "{e}"
        );
        let e = apply(
            &mut p,
            &profile,
            document(json!({"userinfo_endpoint": null})),
        )
        .unwrap_err();
        assert!(e.contains("identity_url"), "{e}");
    }

    #[test]
    fn an_issuer_is_https_or_loopback_http() {
        assert!(check_issuer("https://id.acme.example/realms/x").is_ok());
        assert!(check_issuer("http://127.0.0.1:8080").is_ok());
        assert!(check_issuer("http://id.acme.example").is_err());
        assert!(check_issuer("https://id.acme.example?x=1").is_err());
        assert_eq!(
            document_url("https://id.acme.example/realms/x/"),
            "https://id.acme.example/realms/x/.well-known/openid-configuration"
        );
        let e = crate::catalogue::Catalogue::with_overrides(
            &serde_norway::from_str("acme: {auth_mode: oidc, issuer: 'http://id.acme.example'}")
                .unwrap(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("issuer"), "{e}");
    }
}
