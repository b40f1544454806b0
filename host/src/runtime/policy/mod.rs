//! The security decisions of one step, as a plain value: where a request may go (the
//! manifest's hosts, the pins of the credential the host attaches, the pins of every
//! credential the module has read), which headers a module may set, when a binding may
//! be force-refreshed, and which secret values are redacted from what leaves the
//! sandbox. No I/O, no async, no wasmtime types: the capabilities (`http`,
//! `credentials`, `object-storage`) ask it and act on the answer, and `tests.rs`
//! checks it as a table.
//!
//! The operator's policy (its host allowlist, private and loopback addresses) is not
//! here: it needs name resolution and covers every outbound request of the host, so
//! `crate::outbound` applies it after this policy has allowed a request.

pub mod headers;
#[cfg(test)]
mod tests;

use super::grants::{Attach, GrantedCredential};
use crate::manifest::{CredentialKind, HostPattern, any_matches};
use crate::outbound::origin;
use crate::vault::Secret;
use std::sync::Arc;
use url::Url;

/// Secret values shorter than this are not redacted: replacing every `abc` would shred
/// ordinary text. (Issue 18 revisits this rule.)
pub const MIN_REDACTED_LEN: usize = 6;

/// Which guest-visible error a denial is. The one mapping to the WIT error variants is
/// `impl From<PolicyDenial> for GuestError` in `crate::capabilities`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialKind {
    /// `forbidden`: the destination is not allowed.
    Forbidden,
    /// `access-denied`: the binding is not granted to the step.
    AccessDenied,
    /// `invalid-input`: the request itself is not acceptable.
    InvalidInput,
    /// `token-revoked`: the token cannot be refreshed (again) in this step.
    TokenRevoked,
}

/// Who asked for a binding; the wording of "not bound" differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingUse {
    /// The `credentials` interface (`get`, `config`, `refresh`).
    Credentials,
    /// A request that names the binding for the host to attach (`http`, `object-storage`).
    Request,
}

/// Why the policy refused. The messages are what the module (and the step's error) sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyDenial {
    /// Only `http` and `https` leave the host.
    #[error("scheme `{scheme}` is not http or https")]
    Scheme {
        /// The URL's scheme.
        scheme: String,
    },
    /// `https://user:pass@host` would carry a credential the host did not attach.
    #[error("URLs with user info are refused; attach credentials by binding")]
    UserInfo,
    /// Not among the manifest's hosts (nor the attached credential's own hosts).
    #[error("{destination} is not among the module's allowed hosts")]
    HostNotAllowed {
        /// `scheme://host:port`.
        destination: String,
    },
    /// The binding is not granted to this step.
    #[error("credential `{binding}` is not bound to this step{}", not_bound_hint(*.asked_by))]
    NotBound {
        /// The binding name.
        binding: String,
        /// Who asked.
        asked_by: BindingUse,
    },
    /// An SMTP or FTP credential (or a component without an HTTP secret) has no way to
    /// ride on a request.
    #[error("credential `{binding}` is not an HTTP credential; it cannot be attached to a request")]
    NotAttachable {
        /// The binding name.
        binding: String,
    },
    /// The attached credential is pinned elsewhere.
    #[error(
        "credential `{binding}` may only be sent to its own service's hosts, not {destination}"
    )]
    OutsidePins {
        /// The binding name.
        binding: String,
        /// `scheme://host:port`.
        destination: String,
    },
    /// The module read a credential pinned elsewhere (taint).
    #[error(
        "this step read credential `{binding}`, so it may only talk to that credential's hosts, not {destination}"
    )]
    Tainted {
        /// The credential read.
        binding: String,
        /// `scheme://host:port`.
        destination: String,
    },
    /// A header the host owns (see `headers::FORBIDDEN_HEADERS`).
    #[error("header `{name}` is set by the host, not by modules")]
    HostOwnedHeader {
        /// The header as the module wrote it.
        name: String,
    },
    /// A header the host writes when it attaches this request's credential.
    #[error(
        "header `{name}` is set by the host when it attaches credential `{binding}`; do not set it on this request"
    )]
    AttachedHeader {
        /// The header as the module wrote it.
        name: String,
        /// The credential attached.
        binding: String,
    },
    /// Only OAuth links refresh.
    #[error("credential `{binding}` is not an OAuth link; only links refresh")]
    NotRefreshable {
        /// The binding name.
        binding: String,
    },
    /// At most one forced refresh per binding per step.
    #[error("the {service} token was already refreshed once in this step and is still refused")]
    AlreadyRefreshed {
        /// The OAuth service.
        service: String,
    },
    /// The host has no refresher, or the link holds no bearer token.
    #[error("the {service} token cannot be refreshed")]
    CannotRefresh {
        /// The OAuth service.
        service: String,
    },
}

fn not_bound_hint(asked_by: BindingUse) -> &'static str {
    match asked_by {
        BindingUse::Credentials => {
            " (declare it in the manifest and bind it when running the step)"
        }
        BindingUse::Request => "",
    }
}

impl PolicyDenial {
    /// The guest-visible error this denial is.
    pub fn kind(&self) -> DenialKind {
        use PolicyDenial as D;
        match self {
            D::HostNotAllowed { .. } | D::OutsidePins { .. } | D::Tainted { .. } => {
                DenialKind::Forbidden
            }
            D::NotBound { .. } => DenialKind::AccessDenied,
            D::Scheme { .. }
            | D::UserInfo
            | D::NotAttachable { .. }
            | D::HostOwnedHeader { .. }
            | D::AttachedHeader { .. }
            | D::NotRefreshable { .. } => DenialKind::InvalidInput,
            D::AlreadyRefreshed { .. } | D::CannotRefresh { .. } => DenialKind::TokenRevoked,
        }
    }
}

/// One granted credential and what the step has done with it.
#[derive(Debug)]
struct Entry {
    grant: GrantedCredential,
    /// The module read its secret (`credentials.get`): the step is tainted by its pins.
    read: bool,
    /// It was force-refreshed in this step.
    refreshed: bool,
}

/// A request the policy allowed, and the credential (if any) the host is to attach.
#[derive(Debug, Clone, Copy)]
pub struct Authorized<'p> {
    attach: Option<&'p GrantedCredential>,
}

impl<'p> Authorized<'p> {
    /// The credential to attach, when the request named one.
    pub fn attached(&self) -> Option<&'p GrantedCredential> {
        self.attach
    }

    /// Whether the module may set header `name` on this request.
    pub fn check_guest_header(&self, name: &str) -> Result<(), PolicyDenial> {
        headers::check_guest_header(name, self.attach)
    }
}

/// A forced refresh the policy let go ahead: the link and the token its provider refused.
#[derive(Debug)]
pub struct RefreshTicket<R> {
    /// Whatever does the refresh (handed in, handed back, so it is only used when allowed).
    pub refresher: R,
    /// The link's id.
    pub link_id: String,
    /// The access token the provider refused.
    pub rejected: Secret,
}

/// The per-step security state: built from the module's manifest hosts and the step's
/// grants; owns the taint and the secrets to redact.
#[derive(Debug)]
pub struct StepPolicy {
    manifest_hosts: Arc<Vec<HostPattern>>,
    entries: Vec<Entry>,
    /// Secret values the step held before a refresh replaced them: the module may have
    /// read them, so they stay redacted.
    retired: Vec<Secret>,
}

impl Default for StepPolicy {
    /// No hosts, no grants: nothing may leave.
    fn default() -> Self {
        StepPolicy::new(Arc::new(Vec::new()), Vec::new())
    }
}

impl StepPolicy {
    /// The policy of a step of a module allowed `manifest_hosts`, granted `grants`.
    pub fn new(manifest_hosts: Arc<Vec<HostPattern>>, grants: Vec<GrantedCredential>) -> Self {
        StepPolicy {
            manifest_hosts,
            entries: grants
                .into_iter()
                .map(|grant| Entry {
                    grant,
                    read: false,
                    refreshed: false,
                })
                .collect(),
            retired: Vec::new(),
        }
    }

    fn entry(&self, binding: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.grant.binding == binding)
    }

    fn entry_mut(&mut self, binding: &str) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.grant.binding == binding)
    }

    /// The grant of `binding`, if the step has one.
    pub fn grant(&self, binding: &str) -> Option<&GrantedCredential> {
        self.entry(binding).map(|e| &e.grant)
    }

    /// The grant of `binding`, or the denial `asked_by` gets when there is none.
    pub fn granted(
        &self,
        binding: &str,
        asked_by: BindingUse,
    ) -> Result<&GrantedCredential, PolicyDenial> {
        self.grant(binding).ok_or_else(|| PolicyDenial::NotBound {
            binding: binding.to_string(),
            asked_by,
        })
    }

    /// Whether a request to `url` may leave, attaching `attach_binding` if given. In
    /// order: the scheme, user info, the manifest's hosts (or the attached credential's
    /// own hosts), the binding being granted and attachable, its pins, and the pins of
    /// every credential the module has read.
    pub fn authorize(
        &self,
        url: &Url,
        attach_binding: Option<&str>,
    ) -> Result<Authorized<'_>, PolicyDenial> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(PolicyDenial::Scheme {
                scheme: url.scheme().to_string(),
            });
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(PolicyDenial::UserInfo);
        }
        let attach = attach_binding.map(|b| (b, self.grant(b)));
        // A request that carries a bound credential may also go to that credential's
        // own hosts as the operator configured them (a sovereign cloud, a regional
        // endpoint, a test server): the module declared the service, not its address.
        let to_own_service = attach
            .and_then(|(_, g)| g)
            .is_some_and(|g| any_matches(&g.pinned, url));
        if !to_own_service && !any_matches(&self.manifest_hosts, url) {
            return Err(PolicyDenial::HostNotAllowed {
                destination: origin(url),
            });
        }
        let attach = match attach {
            None => None,
            Some((binding, None)) => {
                return Err(PolicyDenial::NotBound {
                    binding: binding.to_string(),
                    asked_by: BindingUse::Request,
                });
            }
            Some((binding, Some(grant))) => {
                if matches!(grant.attach, Attach::NotHttp) {
                    return Err(PolicyDenial::NotAttachable {
                        binding: binding.to_string(),
                    });
                }
                if !to_own_service {
                    return Err(PolicyDenial::OutsidePins {
                        binding: binding.to_string(),
                        destination: origin(url),
                    });
                }
                Some(grant)
            }
        };
        // Once a secret is in the module's memory, the module may talk only to the
        // hosts that secret belongs to: nothing it does can carry it elsewhere.
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| e.read && !any_matches(&e.grant.pinned, url))
        {
            return Err(PolicyDenial::Tainted {
                binding: e.grant.binding.clone(),
                destination: origin(url),
            });
        }
        Ok(Authorized { attach })
    }

    /// The module reads the secret of `binding` (`credentials.get`): from now on the
    /// step may only reach that credential's hosts. Returns the grant whose secret
    /// fields the module gets.
    pub fn record_secret_read(
        &mut self,
        binding: &str,
    ) -> Result<&GrantedCredential, PolicyDenial> {
        let entry = self
            .entry_mut(binding)
            .ok_or_else(|| PolicyDenial::NotBound {
                binding: binding.to_string(),
                asked_by: BindingUse::Credentials,
            })?;
        entry.read = true;
        Ok(&entry.grant)
    }

    /// Whether the module has read any secret.
    pub fn is_tainted(&self) -> bool {
        self.entries.iter().any(|e| e.read)
    }

    /// The bindings whose secrets the module has read.
    pub fn read_bindings(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|e| e.read)
            .map(|e| e.grant.binding.as_str())
    }

    /// Whether a forced refresh of `binding` may go ahead (an OAuth link holding a bearer
    /// token, not refreshed yet in this step, on a host that has a `refresher`). Marks it
    /// refreshed: a refused refresh is not retried within the step.
    pub fn begin_refresh<R>(
        &mut self,
        binding: &str,
        refresher: Option<R>,
    ) -> Result<RefreshTicket<R>, PolicyDenial> {
        let entry = self
            .entry_mut(binding)
            .ok_or_else(|| PolicyDenial::NotBound {
                binding: binding.to_string(),
                asked_by: BindingUse::Credentials,
            })?;
        let grant = &entry.grant;
        if grant.kind != CredentialKind::OauthLink {
            return Err(PolicyDenial::NotRefreshable {
                binding: binding.to_string(),
            });
        }
        if entry.refreshed {
            return Err(PolicyDenial::AlreadyRefreshed {
                service: grant.service.clone(),
            });
        }
        let (Attach::Bearer(rejected), Some(refresher)) = (&grant.attach, refresher) else {
            return Err(PolicyDenial::CannotRefresh {
                service: grant.service.clone(),
            });
        };
        let ticket = RefreshTicket {
            refresher,
            link_id: grant.resource_id.clone(),
            rejected: rejected.clone(),
        };
        entry.refreshed = true;
        Ok(ticket)
    }

    /// A forced refresh of `binding` got `token`: later requests attach it, `get`
    /// returns it, and the token it replaces stays redacted.
    pub fn record_refresh(&mut self, binding: &str, token: Secret) -> Result<(), PolicyDenial> {
        let entry = self
            .entry_mut(binding)
            .ok_or_else(|| PolicyDenial::NotBound {
                binding: binding.to_string(),
                asked_by: BindingUse::Credentials,
            })?;
        let old = std::mem::replace(
            &mut entry.grant.secrets,
            vec![("access_token".to_string(), token.clone())],
        );
        entry.grant.attach = Attach::Bearer(token);
        self.retired.extend(old.into_iter().map(|(_, s)| s));
        Ok(())
    }

    /// Every secret value this step was handed (the grants' current secrets and those a
    /// refresh replaced), once each, except values shorter than `MIN_REDACTED_LEN`.
    pub fn redaction_values(&self) -> Vec<String> {
        let mut values: Vec<String> = Vec::new();
        let current = self
            .entries
            .iter()
            .flat_map(|e| e.grant.secrets.iter().map(|(_, s)| s));
        for secret in current.chain(&self.retired) {
            let v = secret.expose();
            if v.len() >= MIN_REDACTED_LEN && !values.iter().any(|x| x == v) {
                values.push(v.to_string());
            }
        }
        values
    }
}
