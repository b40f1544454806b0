//! Which credentials a step may use. Before a module runs, the host resolves each
//! binding its manifest declares to a component or an OAuth link of the step's own
//! company, decrypts it, and records the hosts it is pinned to and how the host
//! attaches it to a request, both from the provider's catalogue entry. The module only
//! ever sees what `credentials.get` hands it, and only for bindings resolved here.

use super::component_cache::ComponentCache;
use super::error::StepError;
use crate::catalogue::Catalogue;
use crate::catalogue::Pin;
use crate::catalogue::api_key::Attachment;
use crate::components;
use crate::manifest::{CredentialBinding, CredentialKind, Manifest};
use crate::store::AnyStore;
use crate::store::ComponentRecord;
use crate::vault::{Secret, Vault};
use std::collections::BTreeMap;
use tracing::Instrument;

/// How the host attaches a credential to an outbound request.
#[derive(Debug, Clone)]
pub enum Attach {
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// A named header with the secret as its value.
    Header {
        /// Header name.
        name: http::HeaderName,
        /// Header value.
        value: Secret,
    },
    /// AWS Signature Version 4.
    AwsSigV4 {
        /// AWS region.
        region: String,
        /// Signing service name.
        service: String,
        /// Access key id.
        access_key_id: Secret,
        /// Secret access key.
        secret_access_key: Secret,
    },
    /// Not an HTTP credential (SMTP, FTP): `credentials.get` only.
    NotHttp,
}

/// A credential granted to one step.
#[derive(Debug, Clone)]
pub struct GrantedCredential {
    /// The manifest's binding name.
    pub binding: String,
    /// Link or component.
    pub kind: CredentialKind,
    /// OAuth service or component provider.
    pub service: String,
    /// The component or link id.
    pub resource_id: String,
    /// Non-secret configuration handed to the module on request.
    pub config: serde_json::Value,
    /// Decrypted secret fields.
    pub secrets: Vec<(String, Secret)>,
    /// Where this credential may be sent: hosts, each with an optional path prefix.
    pub pinned: Vec<Pin>,
    /// Where the provider's pre-authenticated URLs live (an OAuth link's provider's
    /// `transfer_hosts`): requests that carry no credential may go there; the
    /// credential itself never does (these are not pins).
    pub transfer: Vec<Pin>,
    /// How the host attaches it.
    pub attach: Attach,
}

fn looks_like_object_id(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Resolve every binding of `manifest` for a step of `company_id`.
///
/// `bindings` maps binding names to a component name or id (or link id); an OAuth
/// binding may instead be named by the input field its manifest declares; an
/// unbound component binding falls back to the company's default component of the
/// provider's kind.
#[allow(clippy::too_many_arguments)]
///
/// `actor` is the API caller the step runs for: an OAuth link must be theirs, shared
/// with them, or they an admin (`oauth::ownership`); each link used other than as its
/// owner is added to `other_users_links` for the audit log. None (the operator's CLI):
/// any link of the company.
pub async fn resolve(
    store: &AnyStore,
    component_cache: &ComponentCache,
    vault: &Vault,
    catalogue: &Catalogue,
    oauth: Option<&std::sync::Arc<crate::oauth::OAuthService>>,
    manifest: &Manifest,
    company_id: &str,
    bindings: &BTreeMap<String, String>,
    input: &serde_json::Value,
    actor: Option<&crate::oauth::ownership::Actor>,
    other_users_links: &mut Vec<LinkUse>,
) -> Result<Vec<GrantedCredential>, StepError> {
    for name in bindings.keys() {
        if manifest.binding(name).is_none() {
            return Err(StepError::invalid_input(format!(
                "module `{}` declares no credential binding `{name}`",
                manifest.name
            )));
        }
    }
    let mut grants = Vec::new();
    for binding in &manifest.credentials {
        let explicit = bindings.get(&binding.name).cloned().or_else(|| {
            binding
                .input_field
                .as_ref()
                .and_then(|f| input.get(f))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        });
        // Log lines of the lookup (a refresh, a store error) carry the binding.
        let span =
            tracing::debug_span!("credential", binding = %binding.name, service = %binding.service);
        let grant = async {
            Ok::<_, StepError>(match binding.kind {
                CredentialKind::Component => {
                    resolve_component(
                        store,
                        component_cache,
                        vault,
                        catalogue,
                        binding,
                        company_id,
                        explicit.as_deref(),
                    )
                    .await?
                }
                CredentialKind::OauthLink => match &explicit {
                    Some(link_id) => {
                        let scopes = needed_scopes(binding, input)?;
                        let (grant, used) =
                            resolve_link(oauth, binding, &scopes, company_id, link_id, actor)
                                .await?;
                        other_users_links.extend(used);
                        Some(grant)
                    }
                    None => None,
                },
            })
        }
        .instrument(span)
        .await?;
        match grant {
            Some(g) => grants.push(g),
            None if binding.required => {
                return Err(StepError::access_denied(format!(
                    "module `{}` needs credential `{}` ({} {}), and the step bound none",
                    manifest.name,
                    binding.name,
                    match binding.kind {
                        CredentialKind::Component => "component",
                        CredentialKind::OauthLink => "OAuth link",
                    },
                    if binding.accepts_any_service() {
                        "of any service"
                    } else {
                        binding.service.as_str()
                    }
                )));
            }
            None => {}
        }
    }
    Ok(grants)
}

/// The scopes a link bound as `binding` must have: the manifest's, then those the input
/// lists in the binding's `scopes_field` (a module whose needs depend on the call, such
/// as `api-request`). The input was validated against the module's schema, but that
/// schema is the module's: a field that is not an array of strings is refused here.
fn needed_scopes(
    binding: &CredentialBinding,
    input: &serde_json::Value,
) -> Result<Vec<String>, StepError> {
    let mut scopes = binding.scopes.clone();
    let Some(field) = &binding.scopes_field else {
        return Ok(scopes);
    };
    match input.get(field) {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Array(items)) => {
            for item in items {
                let Some(s) = item.as_str() else {
                    return Err(StepError::invalid_input(format!(
                        "`{field}` lists the scopes the link must have: an array of strings"
                    )));
                };
                if !scopes.iter().any(|x| x == s) {
                    scopes.push(s.to_string());
                }
            }
        }
        Some(_) => {
            return Err(StepError::invalid_input(format!(
                "`{field}` lists the scopes the link must have: an array of strings"
            )));
        }
    }
    Ok(scopes)
}

/// A link a step used other than as its owner: for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkUse {
    /// The link.
    pub link_id: String,
    /// The user who connected it.
    pub owner: String,
    /// Why the step's user could use it.
    pub access: crate::oauth::ownership::LinkAccess,
}

async fn resolve_link(
    oauth: Option<&std::sync::Arc<crate::oauth::OAuthService>>,
    binding: &CredentialBinding,
    scopes: &[String],
    company_id: &str,
    link_id: &str,
    actor: Option<&crate::oauth::ownership::Actor>,
) -> Result<(GrantedCredential, Option<LinkUse>), StepError> {
    use super::error::ErrorName;
    use crate::oauth::OAuthError;
    let not_yours = || {
        StepError::access_denied(format!(
            "OAuth link `{link_id}` for binding `{}` does not exist or is not yours",
            binding.name
        ))
    };
    let Some(oauth) = oauth else {
        return Err(not_yours());
    };
    // A refresh runs as its own task: if the step's deadline passes while the provider
    // answers, the step stops waiting but the refresh still saves the rotated tokens
    // (dropping it mid-answer would lose the refresh token the provider just spent).
    let refresh = {
        let (oauth, company_id, link_id) =
            (oauth.clone(), company_id.to_string(), link_id.to_string());
        tokio::spawn(async move { oauth.access_token(&company_id, &link_id).await })
    };
    let answer = refresh.await.map_err(|e| {
        StepError::internal(format!(
            "the credential lookup of link `{link_id}` failed: {e}"
        ))
    })?;
    let (token, link) = answer.map_err(|e| match e {
        OAuthError::NotFound => not_yours(),
        OAuthError::TokenRevoked(s) | OAuthError::InvalidGrant(s) => StepError::new(
            ErrorName::TokenRevoked,
            format!("the {s} connection was revoked or expired; the user must reconnect it"),
        ),
        OAuthError::NeedsReconnect { service, reason } => StepError::new(
            ErrorName::TokenRevoked,
            format!("the {service} connection needs reconnecting: {reason}"),
        ),
        OAuthError::Store(e) => StepError::new(ErrorName::StoreUnavailable, e.to_string()),
        // A token that does not open (e.g. moved here from another link): the vault's
        // name, never the provider's.
        OAuthError::Vault(m) => StepError::new(
            ErrorName::VaultError,
            format!("the tokens of link `{link_id}` cannot be opened: {m}"),
        ),
        OAuthError::NotConfigured(s) => StepError::access_denied(format!(
            "OAuth service `{s}` is not configured on this host"
        )),
        other => StepError::new(ErrorName::UpstreamError, other.to_string()),
    })?;
    // Another member's link: the same answer as no link at all (no telling whose).
    let used = match actor {
        None => None,
        Some(actor) => match crate::oauth::ownership::may_use(&link, actor) {
            None => return Err(not_yours()),
            Some(crate::oauth::ownership::LinkAccess::Owner) => None,
            Some(access) => Some(LinkUse {
                link_id: link.id.clone(),
                owner: link.user_id.clone(),
                access,
            }),
        },
    };
    // A binding of any service takes the link's own service, whose pins then apply;
    // the link must still be of an OAuth2 provider this host knows.
    if !binding.accepts_any_service() && link.integration_type != binding.service {
        return Err(StepError::access_denied(format!(
            "link `{link_id}` is a {} link; binding `{}` needs {}",
            link.integration_type, binding.name, binding.service
        )));
    }
    let missing: Vec<&String> = scopes.iter().filter(|s| !link.scopes.contains(s)).collect();
    if !missing.is_empty() {
        return Err(StepError::new(
            ErrorName::InsufficientScope,
            format!(
                "link `{link_id}` was not granted {}; reconnect it to grant them",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let provider = oauth.provider(&link.integration_type).ok();
    if binding.accepts_any_service() && provider.is_none() {
        // A link of a provider since removed from the config: no pins to send it to.
        return Err(StepError::access_denied(format!(
            "link `{link_id}` is a {} link, a service this host no longer knows",
            link.integration_type
        )));
    }
    let pinned: Vec<Pin> = provider.map(|p| p.api_hosts.clone()).unwrap_or_default();
    let transfer: Vec<Pin> = provider
        .map(|p| p.transfer_hosts.clone())
        .unwrap_or_default();
    let api_base_url = provider.map(|p| p.api_base_url.clone()).unwrap_or_default();
    let grant = GrantedCredential {
        binding: binding.name.clone(),
        kind: CredentialKind::OauthLink,
        service: link.integration_type.clone(),
        resource_id: link.id.clone(),
        config: serde_json::json!({
            "link_id": link.id,
            "service": link.integration_type,
            "scopes": link.scopes,
            "provider_user_id": link.provider_user_id,
            "provider_user_email": link.provider_user_email,
            "provider_metadata": link.provider_metadata,
            "api_base_url": api_base_url,
        }),
        secrets: vec![("access_token".to_string(), token.clone())],
        pinned,
        transfer,
        attach: Attach::Bearer(token),
    };
    Ok((grant, used))
}

async fn resolve_component(
    store: &AnyStore,
    component_cache: &ComponentCache,
    vault: &Vault,
    catalogue: &Catalogue,
    binding: &CredentialBinding,
    company_id: &str,
    named: Option<&str>,
) -> Result<Option<GrantedCredential>, StepError> {
    let store_err = |e: crate::store::StoreError| {
        StepError::new(super::error::ErrorName::StoreUnavailable, e.to_string())
    };
    let record = match named {
        Some(n) => Some(
            component_cache
                .named(store, company_id, n, looks_like_object_id(n))
                .await
                .map_err(store_err)?
                .ok_or_else(|| {
                    StepError::access_denied(format!(
                        "component `{n}` for binding `{}` does not exist or is not yours",
                        binding.name
                    ))
                })?,
        ),
        None => {
            // The registry checked the binding against this catalogue when it loaded
            // the module.
            let kind = catalogue
                .api_key(&binding.service)
                .map(|p| p.kind.as_str())
                .ok_or_else(|| {
                    StepError::access_denied(format!(
                        "binding `{}` names `{}`, which is no API-key provider of this host",
                        binding.name, binding.service
                    ))
                })?;
            component_cache
                .default_of(store, company_id, kind)
                .await
                .map_err(store_err)?
                .filter(|r| components::provider(r) == binding.service)
        }
    };
    let Some(record) = record else {
        return Ok(None);
    };
    grant_component(catalogue, binding, &record, vault).map(Some)
}

/// Build the grant for one component record.
pub fn grant_component(
    catalogue: &Catalogue,
    binding: &CredentialBinding,
    record: &ComponentRecord,
    vault: &Vault,
) -> Result<GrantedCredential, StepError> {
    let provider = components::provider(record);
    if provider != binding.service {
        return Err(StepError::access_denied(format!(
            "component `{}` is a `{provider}` component; binding `{}` needs `{}`",
            record.name, binding.name, binding.service
        )));
    }
    let def = components::provider_def(catalogue, provider)
        .map_err(|e| StepError::access_denied(format!("component `{}`: {e}", record.name)))?;
    let secrets = components::decrypt_secrets(catalogue, record, vault).map_err(|e| {
        let message = format!("cannot decrypt component `{}`: {e}", record.name);
        match e {
            // A sealed field that does not open (altered, or moved from another record).
            components::ComponentError::Sealed { .. } => {
                StepError::new(super::error::ErrorName::VaultError, message)
            }
            _ => StepError::internal(message),
        }
    })?;
    let field = |f: &str| secrets.iter().find(|(k, _)| k == f).map(|(_, v)| v.clone());
    let attach = match def.attachment(&record.config) {
        Attachment::Bearer { field: f } => field(&f).map(Attach::Bearer).unwrap_or(Attach::NotHttp),
        Attachment::Header { name, field: f } => {
            match (http::HeaderName::from_bytes(name.as_bytes()), field(&f)) {
                (Ok(name), Some(value)) => Attach::Header { name, value },
                _ => Attach::NotHttp,
            }
        }
        Attachment::AwsSigV4 {
            region,
            service,
            access_key_field,
            secret_key_field,
        } => match (field(&access_key_field), field(&secret_key_field)) {
            (Some(access_key_id), Some(secret_access_key)) => Attach::AwsSigV4 {
                region,
                service,
                access_key_id,
                secret_access_key,
            },
            _ => Attach::NotHttp,
        },
        Attachment::NotHttp => Attach::NotHttp,
    };
    // A stored pin that no longer parses refuses the credential rather than dropping
    // the pin silently.
    let pinned = def.pins(&record.config).map_err(|e| {
        StepError::internal(format!(
            "component `{}`: config.{} is not valid: {}",
            record.name, e.field, e.reason
        ))
    })?;
    let mut config = serde_json::Value::Object(components::config_summary(catalogue, record));
    if let Some(obj) = config.as_object_mut() {
        obj.insert("name".into(), record.name.clone().into());
        obj.insert("kind".into(), record.kind.clone().into());
    }
    Ok(GrantedCredential {
        binding: binding.name.clone(),
        kind: CredentialKind::Component,
        service: binding.service.clone(),
        resource_id: record.id.clone(),
        config,
        secrets,
        pinned,
        transfer: Vec::new(),
        attach,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn binding(scopes: &[&str], scopes_field: Option<&str>) -> CredentialBinding {
        let mut b = CredentialBinding::any_oauth_link("link").scopes(scopes.iter().copied());
        b.scopes_field = scopes_field.map(str::to_string);
        b
    }

    #[test]
    fn scopes_come_from_the_manifest_and_the_inputs_scopes_field() {
        let b = binding(&["a"], Some("scopes"));
        let input = json!({"scopes": ["b", "a", "c"]});
        assert_eq!(needed_scopes(&b, &input).unwrap(), ["a", "b", "c"]);
        assert_eq!(needed_scopes(&b, &json!({})).unwrap(), ["a"]);
        assert_eq!(needed_scopes(&b, &json!({"scopes": null})).unwrap(), ["a"]);
        // Without a scopes_field the input's `scopes` mean nothing to the host.
        assert_eq!(
            needed_scopes(&binding(&[], None), &input).unwrap(),
            Vec::<String>::new()
        );
        for bad in [
            json!({"scopes": "b"}),
            json!({"scopes": [1]}),
            json!({"scopes": {"b": true}}),
        ] {
            let e = needed_scopes(&b, &bad).unwrap_err();
            assert_eq!(e.name, crate::error::ErrorName::InvalidInput, "{bad}");
        }
    }
}
