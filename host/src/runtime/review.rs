//! Capability review: what an installed module asks for, in the terms an admin decides
//! on (the hosts it may call, the credentials it binds and their kinds and scopes,
//! whether it reads secrets into its memory with `credentials.get`, which host
//! capabilities it imports: standard `wasi:http`, flow8's HTTP, mail, file transfer,
//! object storage), and whether an approval covers it. An approval is of a set: a later
//! version asking for nothing more is covered by it; one asking for more (a new host, a
//! new binding, a new scope, `credentials.get`, a new import) needs a new approval.

use super::module::LoadedModule;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// One credential a module binds, as an admin reviews it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CredentialAsk {
    /// The binding name.
    pub name: String,
    /// `oauth-link` or `component`.
    pub kind: String,
    /// The provider, or `*`.
    pub service: String,
    /// The OAuth scopes it needs.
    pub scopes: BTreeSet<String>,
}

/// What a module asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Its manifest's `allowed_hosts`.
    pub hosts: BTreeSet<String>,
    /// Its credential bindings.
    pub credentials: BTreeSet<CredentialAsk>,
    /// Whether it declares `credentials.get` (reads secrets into its memory).
    pub reads_secrets: bool,
    /// The host capabilities it imports: `wasi:http`, `http`, `mail`, `file-transfer`,
    /// `object-storage`, `credentials`.
    pub uses: BTreeSet<String>,
    /// Every interface it imports, as named in the component.
    pub imports: BTreeSet<String>,
}

/// The short names of the host capabilities an import name stands for.
fn capability_of(import: &str) -> Option<&'static str> {
    let base = import.split('@').next().unwrap_or(import);
    Some(match base {
        b if b.starts_with("wasi:http/") => "wasi:http",
        "flow8:integration/http" => "http",
        "flow8:integration/mail" => "mail",
        "flow8:integration/file-transfer" => "file-transfer",
        "flow8:integration/object-storage" => "object-storage",
        "flow8:integration/credentials" => "credentials",
        _ => return None,
    })
}

impl Capabilities {
    /// What this module asks for.
    pub fn of(module: &LoadedModule) -> Capabilities {
        let m = &module.manifest;
        let imports: BTreeSet<String> = module.imported_host_interfaces().into_iter().collect();
        Capabilities {
            hosts: m.allowed_hosts.iter().cloned().collect(),
            credentials: m
                .credentials
                .iter()
                .map(|c| CredentialAsk {
                    name: c.name.clone(),
                    kind: serde_json::to_value(c.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    service: c.service.clone(),
                    scopes: c.scopes.iter().cloned().collect(),
                })
                .collect(),
            reads_secrets: m.reads_secrets(),
            uses: imports
                .iter()
                .filter_map(|i| capability_of(i.as_str()))
                .map(str::to_string)
                .collect(),
            imports,
        }
    }

    /// What this set asks for beyond `approved`, one line each; empty: covered.
    pub fn beyond(&self, approved: &Capabilities) -> Vec<String> {
        let mut more = Vec::new();
        for h in self.hosts.difference(&approved.hosts) {
            more.push(format!("host {h}"));
        }
        for c in &self.credentials {
            match approved
                .credentials
                .iter()
                .find(|a| a.name == c.name && a.kind == c.kind && a.service == c.service)
            {
                None => more.push(format!("credential {} ({} {})", c.name, c.kind, c.service)),
                Some(a) => {
                    for s in c.scopes.difference(&a.scopes) {
                        more.push(format!("scope {s} on credential {}", c.name));
                    }
                }
            }
        }
        if self.reads_secrets && !approved.reads_secrets {
            more.push("credentials.get (reads secrets into its memory)".into());
        }
        for i in self.imports.difference(&approved.imports) {
            more.push(format!("import {i}"));
        }
        more
    }
}

/// The operator's review rules (`module_review:` in the config file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReviewPolicy {
    /// Installed modules run only once an admin approved what they ask for.
    pub require_approval: bool,
    /// Installed (third-party) modules may not declare `credentials.get`.
    pub forbid_credentials_get: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(hosts: &[&str], scopes: &[&str], reads: bool) -> Capabilities {
        Capabilities {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            credentials: [CredentialAsk {
                name: "api".into(),
                kind: "oauth-link".into(),
                service: "slack".into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
            }]
            .into(),
            reads_secrets: reads,
            uses: ["http".to_string()].into(),
            imports: ["flow8:integration/http@0.1.0".to_string()].into(),
        }
    }

    #[test]
    fn the_same_or_less_is_covered_and_more_is_named() {
        let approved = caps(&["https://slack.com"], &["chat:write"], false);
        assert!(
            caps(&["https://slack.com"], &["chat:write"], false)
                .beyond(&approved)
                .is_empty()
        );
        assert!(caps(&[], &[], false).beyond(&approved).is_empty());
        assert_eq!(
            caps(
                &["https://slack.com", "https://evil.example"],
                &["chat:write"],
                false
            )
            .beyond(&approved),
            ["host https://evil.example"]
        );
        assert_eq!(
            caps(&["https://slack.com"], &["chat:write", "admin"], true).beyond(&approved),
            [
                "scope admin on credential api",
                "credentials.get (reads secrets into its memory)"
            ]
        );
        let mut wasi = approved.clone();
        wasi.imports
            .insert("wasi:http/outgoing-handler@0.2.6".into());
        assert_eq!(
            wasi.beyond(&approved),
            ["import wasi:http/outgoing-handler@0.2.6"]
        );
    }

    #[test]
    fn imports_name_their_capability() {
        assert_eq!(
            capability_of("wasi:http/outgoing-handler@0.2.6"),
            Some("wasi:http")
        );
        assert_eq!(capability_of("flow8:integration/mail@0.1.0"), Some("mail"));
        assert_eq!(
            capability_of("flow8:integration/file-transfer@0.1.0"),
            Some("file-transfer")
        );
        assert_eq!(capability_of("wasi:cli/stdout@0.2.6"), None);
    }
}
