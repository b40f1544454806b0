//! The module manifest: what a module declares about itself (name, version, input
//! schema, credential bindings, allowed hosts) and the host-pattern language used for
//! allowed hosts and credential pinning. The JSON format is specified in
//! `wit/MANIFEST.md`.
//!
//! One definition serves both sides of the contract. The SDK (`flow8-sdk`, built for
//! `wasm32-wasip2` inside every module) builds a manifest with [`Manifest::new`] and
//! its builder methods ([`builder`]) and re-exports these types; it needs only serde
//! and serde_json. The host turns on the `validate` feature: [`Manifest::parse`]
//! checks every rule of `wit/MANIFEST.md` and refuses anything broader than it allows,
//! and [`HostPattern::matches`] matches URLs.

pub mod builder;

use serde::{Deserialize, Serialize};
use std::fmt;
#[cfg(feature = "validate")]
use url::Url;

/// Why a manifest (or a host pattern in it) was refused.
#[cfg(feature = "validate")]
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// The manifest is not valid JSON of the expected shape.
    #[error("manifest is not valid: {0}")]
    Malformed(String),
    /// A field breaks a rule of `wit/MANIFEST.md`.
    #[error("manifest field `{field}` is not valid: {reason}")]
    InvalidField {
        /// The field's path, e.g. `allowed_hosts[2]`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

#[cfg(feature = "validate")]
fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ManifestError {
    ManifestError::InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The `service` of an `oauth-link` binding that accepts a link of any OAuth service the
/// host knows (the generic provider API module, `api-request`): the step names the link,
/// and the link's own service decides where its token may go (its provider's pins).
pub const ANY_SERVICE: &str = "*";

/// How a credential binding is satisfied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialKind {
    /// A user's connected OAuth2 account (a flow8 `DBLink`).
    OauthLink,
    /// An API-key component (`/api/v1/admin/components`).
    Component,
}

/// One credential a module asks the host for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialBinding {
    /// The binding name the module uses.
    pub name: String,
    /// Link or component.
    pub kind: CredentialKind,
    /// OAuth service or component provider: a name in the host's provider catalogue
    /// (checked when the module is loaded, `flow8_host::catalogue::Catalogue::check_bindings`).
    pub service: String,
    /// Scopes the link must have (OAuth only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Whether a step must bind it.
    #[serde(default = "yes")]
    pub required: bool,
    /// Input field naming the link to use (OAuth only), e.g. `link_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_field: Option<String>,
    /// Input field holding more scopes the link must have (OAuth only): an array of
    /// strings, checked with `scopes` before the step runs. For modules whose needs
    /// depend on the call the step makes (`api-request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes_field: Option<String>,
}

impl CredentialBinding {
    /// Whether this binding accepts a link of any OAuth service ([`ANY_SERVICE`]).
    pub fn accepts_any_service(&self) -> bool {
        self.kind == CredentialKind::OauthLink && self.service == ANY_SERVICE
    }
}

fn yes() -> bool {
    true
}

/// A module's manifest, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version; only `1` exists.
    pub manifest_version: u32,
    /// The module's name (`module_ref`).
    pub name: String,
    /// Semantic version.
    pub version: String,
    /// What the module does.
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the step input.
    #[serde(default = "empty_schema")]
    pub input_schema: serde_json::Value,
    /// Credentials the module asks for.
    #[serde(default)]
    pub credentials: Vec<CredentialBinding>,
    /// Where the module may send HTTP requests.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Capabilities beyond requests the host attaches credentials to: only
    /// `credentials.get` (the module reads a bound credential's secret into its own
    /// memory) exists. Undeclared, the host refuses that call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
}

/// The capability a module declares to read secrets with `credentials.get`.
pub const READ_SECRETS: &str = "credentials.get";

impl Manifest {
    /// Whether the module declares `credentials.get`.
    pub fn reads_secrets(&self) -> bool {
        self.capabilities.iter().any(|c| c == READ_SECRETS)
    }
}

fn empty_schema() -> serde_json::Value {
    serde_json::json!({})
}

#[cfg(feature = "validate")]
fn valid_name(name: &str, allow_underscore: bool) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= 64
        && chars.all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || c == '-'
                || (allow_underscore && c == '_')
        })
}

impl Manifest {
    /// Parse and validate a manifest document.
    #[cfg(feature = "validate")]
    pub fn parse(json: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest =
            serde_json::from_str(json).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Check every rule of `wit/MANIFEST.md`.
    #[cfg(feature = "validate")]
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.manifest_version != 1 {
            return Err(invalid("manifest_version", "only version 1 is known"));
        }
        if !valid_name(&self.name, false) {
            return Err(invalid(
                "name",
                "1-64 characters of a-z, 0-9 and '-', starting with a letter",
            ));
        }
        if semver::Version::parse(&self.version).is_err() {
            return Err(invalid("version", "not a semantic version such as 1.2.3"));
        }
        if self.description.chars().count() > 1000 {
            return Err(invalid("description", "longer than 1,000 characters"));
        }
        if !self.input_schema.is_object() && !self.input_schema.is_boolean() {
            return Err(invalid("input_schema", "a JSON Schema is an object"));
        }
        // Compiling the schema is the loader's work, not this check's: the host budgets
        // a module's schema (size, fan-out, patterns) before it compiles it, once, with
        // a linear-time regex engine (flow8-host's `runtime::schema_budget`).
        let mut seen = std::collections::HashSet::new();
        for (i, b) in self.credentials.iter().enumerate() {
            let field = |f: &str| format!("credentials[{i}].{f}");
            if !valid_name(&b.name, true) {
                return Err(invalid(
                    field("name"),
                    "1-64 characters of a-z, 0-9, '-' and '_'",
                ));
            }
            if !seen.insert(b.name.as_str()) {
                return Err(invalid(
                    field("name"),
                    format!("`{}` is declared twice", b.name),
                ));
            }
            // Whether the host knows the service depends on its catalogue (the config
            // file may add providers): the registry checks that when it loads the module.
            if b.service == ANY_SERVICE {
                if b.kind != CredentialKind::OauthLink {
                    return Err(invalid(
                        field("service"),
                        "`*` (any service) is for `oauth-link` bindings only: a component's provider decides how its secret is attached",
                    ));
                }
                if !b.scopes.is_empty() {
                    return Err(invalid(
                        field("scopes"),
                        "scope names belong to one service; a `*` binding takes them from the input (`scopes_field`)",
                    ));
                }
            } else if !valid_name(&b.service, false) {
                return Err(invalid(
                    field("service"),
                    "a provider name: 1-64 characters of a-z, 0-9 and '-', starting with a letter",
                ));
            }
            if b.kind == CredentialKind::Component {
                if !b.scopes.is_empty() {
                    return Err(invalid(field("scopes"), "only OAuth links have scopes"));
                }
                if b.input_field.is_some() {
                    return Err(invalid(
                        field("input_field"),
                        "only OAuth links are named in the input",
                    ));
                }
                if b.scopes_field.is_some() {
                    return Err(invalid(
                        field("scopes_field"),
                        "only OAuth links have scopes",
                    ));
                }
            }
            for (name, value) in [
                ("input_field", &b.input_field),
                ("scopes_field", &b.scopes_field),
            ] {
                if let Some(v) = value
                    && (v.is_empty() || v.len() > 64)
                {
                    return Err(invalid(
                        field(name),
                        "an input field name of 1-64 characters",
                    ));
                }
            }
        }
        let mut declared = std::collections::HashSet::new();
        for (i, c) in self.capabilities.iter().enumerate() {
            if c != READ_SECRETS {
                return Err(invalid(
                    format!("capabilities[{i}]"),
                    format!("`{c}` is not a capability (`{READ_SECRETS}` is the only one)"),
                ));
            }
            if !declared.insert(c.as_str()) {
                return Err(invalid(
                    format!("capabilities[{i}]"),
                    format!("`{c}` is declared twice"),
                ));
            }
        }
        for (i, h) in self.allowed_hosts.iter().enumerate() {
            HostPattern::parse(h)
                .map_err(|reason| invalid(format!("allowed_hosts[{i}]"), reason))?;
        }
        Ok(())
    }

    /// The allowed hosts as parsed patterns (the manifest was validated, so this cannot fail).
    #[cfg(feature = "validate")]
    pub fn host_patterns(&self) -> Vec<HostPattern> {
        self.allowed_hosts
            .iter()
            .filter_map(|h| HostPattern::parse(h).ok())
            .collect()
    }

    /// The binding of that name, if declared.
    pub fn binding(&self, name: &str) -> Option<&CredentialBinding> {
        self.credentials.iter().find(|b| b.name == name)
    }
}

/// Which hosts a pattern covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `scheme://*`: any host (public addresses only, unless the operator allows more).
    Any,
    /// Exactly this host.
    Exact(String),
    /// Strict subdomains of this domain (`*.example.com` covers `a.example.com`, not `example.com`).
    Subdomains(String),
}

/// Which ports a pattern covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortMatch {
    /// `:*`
    Any,
    /// One port (the scheme's default when none was written).
    Exact(u16),
}

/// `scheme://host[:port]` with `*.` subdomain wildcards and `:*` ports (see `wit/MANIFEST.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// `http` or `https`.
    pub scheme: String,
    /// Host part.
    pub host: HostMatch,
    /// Port part.
    pub port: PortMatch,
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

impl HostPattern {
    /// Parse a pattern, refusing anything broader than the language allows. An exact
    /// host is kept as a URL parser writes it (`[0:0::1]` is `[::1]`, `0x7f.1` is
    /// `127.0.0.1`), so it matches the URLs that name it however they spell it; a
    /// wildcard is over a domain name, never an IP address.
    #[cfg(feature = "validate")]
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("`{text}` is not scheme://host[:port]"))?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("scheme `{scheme}` is not http or https"));
        }
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return Err(format!(
                "`{text}` must be scheme://host[:port] with no path, query or user info"
            ));
        }
        // Split the port off, minding IPv6 literals like [::1]:8080.
        let (host, port) = if let Some(stripped) = rest.strip_prefix('[') {
            let end = stripped
                .find(']')
                .ok_or_else(|| format!("`{text}` has an unclosed IPv6 literal"))?;
            let host = &rest[..end + 2];
            let after = &stripped[end + 1..];
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("`{text}` has junk after the IPv6 literal"))?,
                ),
            };
            (host, port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        let port = match port {
            None => PortMatch::Exact(default_port(scheme)),
            Some("*") => PortMatch::Any,
            Some(p) => PortMatch::Exact(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("port `{p}` is not 1-65535 or *"))?,
            ),
        };
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            if domain.contains('*') {
                return Err(format!(
                    "`{text}`: only one leading `*.` wildcard is allowed"
                ));
            }
            if domain.split('.').filter(|l| !l.is_empty()).count() < 2 {
                return Err(format!(
                    "`{text}` is too broad: a wildcard needs a domain of at least two labels"
                ));
            }
            check_hostname(domain, text)?;
            // `*.0.1` would cover 127.0.0.1: a URL parser reads a name that ends in a
            // number as an IPv4 address (WHATWG URL, "ends in a number"), which has no
            // subdomains.
            if !matches!(url::Host::parse(domain), Ok(url::Host::Domain(_))) {
                return Err(format!(
                    "`{text}`: a wildcard covers the subdomains of a domain name, not of an IP address"
                ));
            }
            HostMatch::Subdomains(domain.to_string())
        } else {
            if host.contains('*') {
                return Err(format!(
                    "`{text}`: `*` may only stand alone or as a leading `*.`"
                ));
            }
            if !host.starts_with('[') {
                check_hostname(&host, text)?;
            } else if host[1..host.len() - 1]
                .parse::<std::net::Ipv6Addr>()
                .is_err()
            {
                return Err(format!("`{text}` has an invalid IPv6 literal"));
            }
            let canonical = url::Host::parse(&host)
                .map_err(|e| format!("`{text}` names no host a URL can reach: {e}"))?;
            HostMatch::Exact(canonical.to_string())
        };
        Ok(HostPattern {
            scheme: scheme.to_string(),
            host,
            port,
        })
    }

    /// Whether a URL falls under this pattern.
    #[cfg(feature = "validate")]
    pub fn matches(&self, url: &Url) -> bool {
        if url.scheme() != self.scheme {
            return false;
        }
        let Some(port) = url.port_or_known_default() else {
            return false;
        };
        if let PortMatch::Exact(p) = self.port
            && p != port
        {
            return false;
        }
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(h) => *h == host,
            // An IP address is nobody's subdomain, whatever its digits end in.
            HostMatch::Subdomains(_) if !matches!(url.host(), Some(url::Host::Domain(_))) => false,
            HostMatch::Subdomains(d) => {
                host.len() > d.len() + 1
                    && host.ends_with(d.as_str())
                    && host.as_bytes()[host.len() - d.len() - 1] == b'.'
            }
        }
    }

    /// Whether this pattern is `scheme://*`.
    pub fn is_any_host(&self) -> bool {
        self.host == HostMatch::Any
    }
}

#[cfg(feature = "validate")]
fn check_hostname(host: &str, text: &str) -> Result<(), String> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("`{text}` has an invalid host name"))
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        match &self.host {
            HostMatch::Any => write!(f, "*")?,
            HostMatch::Exact(h) => write!(f, "{h}")?,
            HostMatch::Subdomains(d) => write!(f, "*.{d}")?,
        }
        match self.port {
            PortMatch::Any => write!(f, ":*"),
            PortMatch::Exact(p) if p == default_port(&self.scheme) => Ok(()),
            PortMatch::Exact(p) => write!(f, ":{p}"),
        }
    }
}

/// Whether any pattern in the list matches the URL.
#[cfg(feature = "validate")]
pub fn any_matches(patterns: &[HostPattern], url: &Url) -> bool {
    patterns.iter().any(|p| p.matches(url))
}

#[cfg(all(test, feature = "validate"))]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn patterns_parse_and_match() {
        let p = HostPattern::parse("https://slack.com").unwrap();
        assert!(p.matches(&url("https://slack.com/api/chat.postMessage")));
        assert!(p.matches(&url("https://SLACK.com:443/x")));
        assert!(!p.matches(&url("https://slack.com:8443/x")));
        assert!(!p.matches(&url("http://slack.com/x")));
        assert!(!p.matches(&url("https://evil-slack.com/x")));
        assert!(!p.matches(&url("https://slack.com.evil.io/x")));

        let w = HostPattern::parse("https://*.slack.com").unwrap();
        assert!(w.matches(&url("https://files.slack.com/")));
        assert!(w.matches(&url("https://a.b.slack.com/")));
        assert!(!w.matches(&url("https://slack.com/")));
        assert!(!w.matches(&url("https://xslack.com/")));

        let any_port = HostPattern::parse("http://127.0.0.1:*").unwrap();
        assert!(any_port.matches(&url("http://127.0.0.1:5555/")));
        assert!(!any_port.matches(&url("http://127.0.0.2:5555/")));

        let v6 = HostPattern::parse("http://[::1]:8080").unwrap();
        assert!(v6.matches(&url("http://[::1]:8080/x")));
        assert_eq!(v6.to_string(), "http://[::1]:8080");

        let any = HostPattern::parse("https://*").unwrap();
        assert!(any.is_any_host());
        assert!(any.matches(&url("https://example.org/")));
        assert!(!any.matches(&url("http://example.org/")));
    }

    /// Found by the host-pattern property test (tests/host_pattern_props.rs).
    #[test]
    fn ip_literals_match_as_addresses_and_are_nobodys_subdomain() {
        // The same address however the pattern writes it.
        let long = HostPattern::parse("https://[0000:0000:0000:0000:0000:0000:0000:0001]").unwrap();
        assert!(long.matches(&url("https://[::1]/x")));
        assert_eq!(long.to_string(), "https://[::1]");
        let hex = HostPattern::parse("http://0x7f.1:8080").unwrap();
        assert!(hex.matches(&url("http://127.0.0.1:8080/")));
        // A wildcard over a number is over an IPv4 address: refused, and no IPv4
        // address is a subdomain of anything.
        for bad in ["https://*.0.0.1", "https://*.0.1", "https://*.example.123"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad} should be refused");
        }
        let w = HostPattern {
            scheme: "https".into(),
            host: HostMatch::Subdomains("0.1".into()),
            port: PortMatch::Any,
        };
        assert!(!w.matches(&url("https://127.0.0.1/")));
        // A name a URL cannot hold is no pattern either.
        assert!(HostPattern::parse("https://xn--a.example").is_err());
    }

    #[test]
    fn patterns_refuse_what_is_too_broad_or_malformed() {
        for bad in [
            "https://*.com",
            "https://*.*.com",
            "https://a*.example.com",
            "ftp://example.com",
            "example.com",
            "https://example.com/path",
            "https://user@example.com",
            "https://example.com:0",
            "https://example.com:99999",
            "https://exa mple.com",
            "https://",
            "https://[::1",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn manifest_validation_names_the_field() {
        let good = r#"{"manifest_version":1,"name":"slack-message","version":"0.1.0",
            "credentials":[{"name":"slack","kind":"oauth-link","service":"slack","scopes":["chat:write"],"input_field":"link_id"}],
            "allowed_hosts":["https://slack.com"]}"#;
        let m = Manifest::parse(good).unwrap();
        assert!(m.credentials[0].required);
        assert_eq!(m.binding("slack").unwrap().scopes, vec!["chat:write"]);

        let broad = good.replace("https://slack.com", "https://*.com");
        assert!(
            matches!(Manifest::parse(&broad), Err(ManifestError::InvalidField { field, .. }) if field == "allowed_hosts[0]")
        );
        let unknown = good.replace("\"version\"", "\"extra\":1,\"version\"");
        assert!(matches!(
            Manifest::parse(&unknown),
            Err(ManifestError::Malformed(_))
        ));
        let bad_service = good.replace("\"service\":\"slack\"", "\"service\":\"My Space\"");
        assert!(
            matches!(Manifest::parse(&bad_service), Err(ManifestError::InvalidField { field, .. }) if field == "credentials[0].service")
        );
        // A link of any service: oauth-link only, scopes from the input.
        let any = r#"{"manifest_version":1,"name":"api-request","version":"0.1.0",
            "credentials":[{"name":"link","kind":"oauth-link","service":"*","input_field":"link_id","scopes_field":"scopes"}]}"#;
        let m = Manifest::parse(any).unwrap();
        assert!(m.credentials[0].accepts_any_service());
        assert_eq!(m.credentials[0].scopes_field.as_deref(), Some("scopes"));
        assert!(!Manifest::parse(good).unwrap().credentials[0].accepts_any_service());
        for (bad, field) in [
            (
                any.replace("oauth-link", "component").replace(
                    ",\"input_field\":\"link_id\",\"scopes_field\":\"scopes\"",
                    "",
                ),
                "credentials[0].service",
            ),
            (
                any.replace("\"service\":\"*\"", "\"service\":\"*\",\"scopes\":[\"a\"]"),
                "credentials[0].scopes",
            ),
            (
                any.replace("\"scopes_field\":\"scopes\"", "\"scopes_field\":\"\""),
                "credentials[0].scopes_field",
            ),
            (
                any.replace("\"service\":\"*\"", "\"service\":\"*.x\""),
                "credentials[0].service",
            ),
        ] {
            assert!(
                matches!(Manifest::parse(&bad), Err(ManifestError::InvalidField { field: f, .. }) if f == field),
                "{bad}: {:?}",
                Manifest::parse(&bad)
            );
        }
        let component_scopes_field = r#"{"manifest_version":1,"name":"x","version":"0.1.0",
            "credentials":[{"name":"k","kind":"component","service":"openai","scopes_field":"scopes"}]}"#;
        assert!(
            matches!(Manifest::parse(component_scopes_field), Err(ManifestError::InvalidField { field, .. }) if field == "credentials[0].scopes_field")
        );

        let bad_version = good.replace("0.1.0", "one");
        assert!(Manifest::parse(&bad_version).is_err());
        let not_a_schema = good.replace(
            "\"allowed_hosts\"",
            "\"input_schema\":[1],\"allowed_hosts\"",
        );
        assert!(
            matches!(Manifest::parse(&not_a_schema), Err(ManifestError::InvalidField { field, .. }) if field == "input_schema")
        );
    }
}
