//! The provider catalogue: everything the host knows about the services it integrates
//! with, OAuth2 providers (Slack, Microsoft, ...) and API-key providers (S3, OpenAI, ...),
//! in one declarative format in the spirit of Nango's `providers.yaml`.
//!
//! The catalogue shipped in the binary is `host/catalogue/providers.yaml`; the host
//! config file's `providers:` block has the same shape and is laid over it: a new name
//! adds a provider, a shipped name is changed key by key (a `null` removes a key). The
//! result is parsed into typed entries once at start-up and checked once: a broken
//! entry is refused naming the provider and the field. Host patterns are parsed here,
//! so nothing downstream parses them back.
//!
//! - [`oauth`]: OAuth2 providers (endpoints, dialects, refresh and revocation, identity).
//! - [`oidc`]: generic OpenID Connect providers, named by their issuer (the endpoints
//!   come from discovery).
//! - [`api_key`]: API-key providers (fields, defaults, summary, attachment, pins).
//! - [`checks`]: the named field checks and secret format rules API-key fields use.
//!
//! The OAuth2 lifecycle (`crate::oauth`), API-key components (`crate::components`), the
//! module registry (which refuses a manifest binding an unknown service) and the step
//! grants all read one `Catalogue`.

pub mod api_key;
pub mod checks;
pub mod oauth;
pub mod oidc;
pub mod pins;

pub use api_key::ApiKeyProvider;
pub use oauth::OAuthProvider;
pub use pins::Pin;

use crate::manifest::{CredentialKind, Manifest, ManifestError};
use serde_norway::{Mapping, Value};
use std::sync::{Arc, LazyLock};

/// The shipped catalogue.
const SHIPPED: &str = include_str!("../../catalogue/providers.yaml");

/// Why a catalogue (the shipped one, or the config file's `providers:` block over it)
/// was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CatalogueError {
    /// Not YAML, or not a mapping of provider names to entries.
    #[error("the provider catalogue is not valid: {0}")]
    Malformed(String),
    /// One entry is wrong.
    #[error("provider `{provider}`: `{field}` {reason}")]
    Invalid {
        /// The provider's name.
        provider: String,
        /// The field, e.g. `token_url` or `fields[2].check`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// One provider of the catalogue.
#[derive(Debug, Clone, PartialEq)]
pub enum Provider {
    /// A user connects an account; the host owns the OAuth2 lifecycle.
    OAuth(Arc<OAuthProvider>),
    /// A company stores an API key (a component).
    ApiKey(Arc<ApiKeyProvider>),
}

impl Provider {
    /// The provider's name.
    pub fn name(&self) -> &str {
        match self {
            Provider::OAuth(p) => &p.name,
            Provider::ApiKey(p) => &p.name,
        }
    }
}

/// Every provider this host knows, in catalogue order (shipped first, then the config
/// file's additions).
#[derive(Debug, Clone, PartialEq)]
pub struct Catalogue {
    providers: Vec<Provider>,
}

/// The entry being checked, for naming it in errors.
pub(crate) struct Entry {
    pub(crate) name: String,
}

impl Entry {
    pub(crate) fn invalid(&self, field: &str, reason: &str) -> CatalogueError {
        CatalogueError::Invalid {
            provider: self.name.clone(),
            field: field.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Provider names (and component kinds): 1-64 characters of a-z, 0-9 and `-`, starting
/// with a letter, so they are safe in URLs, environment variable names and logs.
pub(crate) fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_lowercase())
        && s.len() <= 64
        && c.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Lay `over` onto `base`: mappings merge key by key (recursively), a `null` removes the
/// key, anything else replaces.
fn overlay(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(&k);
                } else if let Some(existing) = b.get_mut(&k) {
                    overlay(existing, v);
                } else {
                    b.insert(k, v);
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// A serde error inside an entry, as `(field, reason)`: serde names a missing or
/// unknown field in its message, the path says where.
fn serde_field(e: serde_path_to_error::Error<serde_norway::Error>) -> (String, String) {
    let path = e.path().to_string();
    let message = e.inner().to_string();
    let (named, reason) = if let Some(rest) = message.strip_prefix("missing field `") {
        (rest.split('`').next(), "is required".to_string())
    } else if let Some(rest) = message.strip_prefix("unknown field `") {
        let mut parts = rest.splitn(2, "`, ");
        let name = parts.next();
        let expected = parts.next().unwrap_or("");
        (
            name,
            format!("is not known; {expected}")
                .trim_end_matches("; ")
                .to_string(),
        )
    } else {
        (None, message.clone())
    };
    let field = match (path.as_str(), named) {
        (".", Some(n)) => n.to_string(),
        (".", None) => "(entry)".to_string(),
        (p, Some(n)) if !p.ends_with(n) => format!("{p}.{n}"),
        (p, _) => p.to_string(),
    };
    (field, reason)
}

fn parse_entry(name: &str, value: Value) -> Result<Provider, CatalogueError> {
    let entry = Entry { name: name.into() };
    let Value::Mapping(mut m) = value else {
        return Err(entry.invalid("(entry)", "must be a mapping of fields"));
    };
    let mode = m.remove("auth_mode");
    let de_err = |e| {
        let (field, reason) = serde_field(e);
        entry.invalid(&field, &reason)
    };
    match mode.as_ref().and_then(Value::as_str) {
        Some("oauth2") => {
            let raw: oauth::RawOAuth =
                serde_path_to_error::deserialize(Value::Mapping(m)).map_err(de_err)?;
            Ok(Provider::OAuth(Arc::new(raw.build(&entry)?)))
        }
        Some("api_key") => {
            let raw: api_key::RawApiKey =
                serde_path_to_error::deserialize(Value::Mapping(m)).map_err(de_err)?;
            Ok(Provider::ApiKey(Arc::new(raw.build(&entry)?)))
        }
        Some("oidc") => {
            let raw: oidc::RawOidc =
                serde_path_to_error::deserialize(Value::Mapping(m)).map_err(de_err)?;
            Ok(Provider::OAuth(Arc::new(raw.build(&entry)?)))
        }
        _ => Err(entry.invalid("auth_mode", "must be `oauth2`, `oidc` or `api_key`")),
    }
}

fn parse_mapping(text: &str, what: &str) -> Result<Mapping, CatalogueError> {
    match serde_norway::from_str::<Value>(text) {
        Ok(Value::Mapping(m)) => Ok(m),
        Ok(Value::Null) => Ok(Mapping::new()),
        Ok(_) => Err(CatalogueError::Malformed(format!(
            "{what} must be a mapping of provider names to entries"
        ))),
        Err(e) => Err(CatalogueError::Malformed(format!("{what}: {e}"))),
    }
}

static BUILTIN: LazyLock<Arc<Catalogue>> = LazyLock::new(|| {
    // The shipped file is part of the binary and a unit test loads it: failing here is
    // a host bug, not bad input.
    Arc::new(
        Catalogue::load(SHIPPED, &Mapping::new())
            .unwrap_or_else(|e| panic!("the shipped provider catalogue is broken: {e}")),
    )
});

impl Catalogue {
    /// The shipped catalogue alone (parsed once per process).
    pub fn builtin() -> Arc<Catalogue> {
        BUILTIN.clone()
    }

    /// The shipped catalogue with the config file's `providers:` block laid over it.
    pub fn with_overrides(overrides: &Mapping) -> Result<Arc<Catalogue>, CatalogueError> {
        if overrides.is_empty() {
            return Ok(Catalogue::builtin());
        }
        Catalogue::load(SHIPPED, overrides).map(Arc::new)
    }

    /// Parse `base` (a catalogue document) with `overrides` laid over it, and check
    /// every entry.
    pub fn load(base: &str, overrides: &Mapping) -> Result<Catalogue, CatalogueError> {
        let mut raw = parse_mapping(base, "the shipped catalogue")?;
        for (key, value) in overrides {
            let Some(name) = key.as_str() else {
                return Err(CatalogueError::Malformed(
                    "providers: every key is a provider name".into(),
                ));
            };
            match raw.get_mut(key) {
                Some(existing) => {
                    let mode = |v: &Value| v.get("auth_mode").cloned();
                    if let Some(m) = mode(value)
                        && Some(&m) != mode(existing).as_ref()
                    {
                        return Err(Entry { name: name.into() }.invalid(
                            "auth_mode",
                            "cannot change a shipped provider's auth mode; add a provider of another name",
                        ));
                    }
                    overlay(existing, value.clone());
                }
                None => {
                    raw.insert(key.clone(), value.clone());
                }
            }
        }
        let mut providers = Vec::with_capacity(raw.len());
        for (key, value) in raw {
            let name = match key.as_str() {
                Some(n) if valid_name(n) => n.to_string(),
                _ => {
                    return Err(CatalogueError::Malformed(format!(
                        "provider name {key:?} must be 1-64 characters of a-z, 0-9 and '-', starting with a letter"
                    )));
                }
            };
            providers.push(parse_entry(&name, value)?);
        }
        Ok(Catalogue { providers })
    }

    /// A provider by name.
    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.name() == name)
    }

    /// A service's name as pages show it: its provider's `display_name` (which defaults
    /// to the provider's name), or the service id itself for a service this catalogue
    /// does not know (a link of a provider since removed from the config file).
    pub fn display_name<'a>(&'a self, service: &'a str) -> &'a str {
        match self.get(service) {
            Some(Provider::OAuth(p)) => &p.display_name,
            Some(Provider::ApiKey(p)) => &p.display_name,
            None => service,
        }
    }

    /// An OAuth2 provider by name.
    pub fn oauth(&self, name: &str) -> Option<&Arc<OAuthProvider>> {
        match self.get(name)? {
            Provider::OAuth(p) => Some(p),
            Provider::ApiKey(_) => None,
        }
    }

    /// An API-key provider by name.
    pub fn api_key(&self, name: &str) -> Option<&Arc<ApiKeyProvider>> {
        match self.get(name)? {
            Provider::ApiKey(p) => Some(p),
            Provider::OAuth(_) => None,
        }
    }

    /// The OAuth2 providers' names, in catalogue order.
    pub fn oauth_names(&self) -> Vec<&str> {
        self.providers
            .iter()
            .filter(|p| matches!(p, Provider::OAuth(_)))
            .map(Provider::name)
            .collect()
    }

    /// The API-key providers' names, in catalogue order.
    pub fn api_key_names(&self) -> Vec<&str> {
        self.providers
            .iter()
            .filter(|p| matches!(p, Provider::ApiKey(_)))
            .map(Provider::name)
            .collect()
    }

    /// Every binding of a manifest names a service of its kind this host knows
    /// (`invalid_manifest` otherwise, naming the known ones).
    pub fn check_bindings(&self, manifest: &Manifest) -> Result<(), ManifestError> {
        for (i, b) in manifest.credentials.iter().enumerate() {
            // A link of any service: the link's own provider is checked when a step
            // resolves it (it must be an OAuth2 provider of this catalogue then).
            if b.accepts_any_service() {
                continue;
            }
            let (known, what) = match b.kind {
                CredentialKind::OauthLink => (self.oauth(&b.service).is_some(), "OAuth service"),
                CredentialKind::Component => {
                    (self.api_key(&b.service).is_some(), "component provider")
                }
            };
            if !known {
                let names = match b.kind {
                    CredentialKind::OauthLink => self.oauth_names(),
                    CredentialKind::Component => self.api_key_names(),
                };
                return Err(ManifestError::InvalidField {
                    field: format!("credentials[{i}].service"),
                    reason: format!(
                        "unknown {what} `{}`; known: {}",
                        b.service,
                        names.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
