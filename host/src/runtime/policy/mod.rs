//! The security decisions of one step, as a plain value: where a request may go (the
//! manifest's hosts, the pins of the credential the host attaches, the pins of every
//! credential the module has read or had reflected back to it, and the pins data
//! derived from an earlier step's secret carries in), which methods and headers a
//! module may use, which bucket an S3 component signs for, when a binding may be
//! force-refreshed, and which secret values are redacted from what leaves the sandbox
//! (`redact`). No I/O, no async, no wasmtime types: the capabilities (`http`,
//! `credentials`, `object-storage`) ask it and act on the answer, and `tests.rs`
//! checks it as a table.
//!
//! Taint follows the data: the report of a tainted step says so (`taints`), and the
//! runtime hands the taint of the step's workspace and of its input to the next step
//! (`inherit`), which is confined to the same pins.
//!
//! The operator's policy (its host allowlist, private and loopback addresses) is not
//! here: it needs name resolution and covers every outbound request of the host, so
//! `crate::outbound` applies it after this policy has allowed a request.

pub mod headers;
#[cfg(test)]
mod props;
pub mod redact;
#[cfg(test)]
mod tests;

use super::grants::{Attach, GrantedCredential};
use crate::catalogue::pins::{Pin, any_pin_matches};
use crate::manifest::{CredentialKind, HostPattern, any_matches};
use crate::outbound::origin;
use crate::vault::Secret;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use url::Url;

/// A component's secret has at least this many characters (creation refuses shorter
/// ones). Redaction does not depend on it: every value is redacted, however short.
pub const MIN_SECRET_LEN: usize = 6;

/// Methods no request may use: `TRACE` and `TRACK` echo the request, attached
/// credential included, back to the module (RFC 9110 §9.3.8); `CONNECT` would turn the
/// host into a tunnel past its own checks (RFC 9110 §9.3.6).
pub const REFUSED_METHODS: &[&str] = &["TRACE", "TRACK", "CONNECT"];

/// How a step came to hold a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaintHow {
    /// The module read it (`credentials.get`).
    Read,
    /// A response to a request the host attached it to carried it back.
    Reflected,
}

/// Data derived from a credential's secret, and where it may go: the pins of that
/// credential. A step's report lists one per credential whose secret it held (or whose
/// taint it inherited); a destination must match a pin of every one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Taint {
    /// The binding name of the step whose module held the secret.
    pub credential: String,
    /// The credential's service (provider).
    pub service: String,
    /// Where data derived from it may go.
    pub pins: Vec<Pin>,
}

/// A step body's `pinned_to`, each pin in the API's written form
/// ([`crate::catalogue::pins::PIN_PATTERN`], as the OpenAPI document states it): a pin
/// the host would read but the document does not describe (`HTTPS://A.example`) is
/// refused as bad input, so what a request may carry is what the document says.
/// (Stored taints are read with [`Pin`]'s own, wider parser.)
pub fn deserialize_documented_taints<'de, D>(d: D) -> Result<Vec<Taint>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error as _;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Written {
        credential: String,
        service: String,
        pins: Vec<String>,
    }
    Vec::<Written>::deserialize(d)?
        .into_iter()
        .map(|w| {
            let pins = w
                .pins
                .iter()
                .map(|p| Pin::parse_documented(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(D::Error::custom)?;
            Ok(Taint {
                credential: w.credential,
                service: w.service,
                pins,
            })
        })
        .collect()
}

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
    /// The module read a credential pinned elsewhere (taint), or a response carried it
    /// back.
    #[error(
        "{} credential `{binding}`, so it may only talk to that credential's hosts, not {destination}",
        match how { TaintHow::Read => "this step read", TaintHow::Reflected => "a response returned to this step" }
    )]
    Tainted {
        /// The credential read.
        binding: String,
        /// How the step got it.
        how: TaintHow,
        /// `scheme://host:port`.
        destination: String,
    },
    /// The step's input or workspace holds data derived from an earlier step's secret.
    #[error(
        "this step's input or workspace holds data derived from credential `{credential}` ({service}) of an earlier step, so it may only talk to that credential's hosts, not {destination}"
    )]
    InheritedTaint {
        /// The earlier step's binding.
        credential: String,
        /// Its service.
        service: String,
        /// `scheme://host:port`.
        destination: String,
    },
    /// A method that echoes the request or opens a tunnel.
    #[error("method `{method}` is refused: it would echo the request or open a tunnel")]
    Method {
        /// The method as the module wrote it.
        method: String,
    },
    /// An S3 component signs only for the bucket it names.
    #[error(
        "credential `{binding}` is for bucket {}; the host does not sign for bucket `{bucket}`",
        named.as_deref().map(|n| format!("`{n}`")).unwrap_or_else(|| "(none: the component names no bucket)".into())
    )]
    BucketNotNamed {
        /// The binding name.
        binding: String,
        /// The bucket asked for.
        bucket: String,
        /// The component's bucket, if it names one.
        named: Option<String>,
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
    /// A `mail` or `file-transfer` call named a binding of another provider.
    #[error("credential `{binding}` is not an {expected} component")]
    WrongProvider {
        /// The binding name.
        binding: String,
        /// The provider the capability speaks (`smtp`, `ftp`).
        expected: &'static str,
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
            D::HostNotAllowed { .. }
            | D::OutsidePins { .. }
            | D::Tainted { .. }
            | D::InheritedTaint { .. }
            | D::Method { .. }
            | D::BucketNotNamed { .. } => DenialKind::Forbidden,
            D::NotBound { .. } => DenialKind::AccessDenied,
            D::Scheme { .. }
            | D::UserInfo
            | D::NotAttachable { .. }
            | D::HostOwnedHeader { .. }
            | D::AttachedHeader { .. }
            | D::NotRefreshable { .. }
            | D::WrongProvider { .. } => DenialKind::InvalidInput,
            D::AlreadyRefreshed { .. } | D::CannotRefresh { .. } => DenialKind::TokenRevoked,
        }
    }
}

/// One granted credential and what the step has done with it.
#[derive(Debug)]
struct Entry {
    grant: GrantedCredential,
    /// The step holds its secret (the module read it, or a response reflected it): the
    /// step is tainted by its pins.
    held: Option<TaintHow>,
    /// It was force-refreshed in this step.
    refreshed: bool,
    /// Its secrets' searcher, built at its first use in the step (every response to a
    /// request it is attached to is searched, and so is the output) and dropped with
    /// the step or when a refresh replaces the secrets.
    redactor: std::sync::OnceLock<Arc<redact::Redactor>>,
}

impl Entry {
    fn redactor(&self) -> Arc<redact::Redactor> {
        self.redactor
            .get_or_init(|| {
                Arc::new(redact::Redactor::new(
                    self.grant
                        .secrets
                        .iter()
                        .map(|(_, s)| s.expose().to_string()),
                ))
            })
            .clone()
    }
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

/// A search for a credential's secrets in a body read in pieces: each piece is searched
/// together with the end of the one before it, long enough for any spelling of a secret
/// to straddle the two (`Redactor::longest_spelling`).
#[derive(Debug)]
pub struct ReflectionScan {
    redactor: Arc<redact::Redactor>,
    tail: Vec<u8>,
    keep: usize,
}

impl ReflectionScan {
    /// Whether a secret shows in the body read so far, up to and including `chunk`.
    pub fn finds_in(&mut self, chunk: &[u8]) -> bool {
        if self.redactor.is_empty() {
            return false;
        }
        self.tail.extend_from_slice(chunk);
        let found = self.redactor.finds_in(&self.tail);
        let cut = self.tail.len().saturating_sub(self.keep);
        self.tail.drain(..cut);
        found
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
    /// Taint the step's input and workspace carry in from earlier steps.
    inherited: Vec<Taint>,
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
                    held: None,
                    refreshed: false,
                    redactor: std::sync::OnceLock::new(),
                })
                .collect(),
            retired: Vec::new(),
            inherited: Vec::new(),
        }
    }

    /// The step's input or workspace holds data derived from these secrets: from now on
    /// it may only reach their pins. Taint only ever narrows; a taint known already is
    /// not added twice.
    pub fn inherit(&mut self, taints: impl IntoIterator<Item = Taint>) {
        for t in taints {
            if !self.inherited.contains(&t) {
                self.inherited.push(t);
            }
        }
    }

    /// Every taint of the step: the secrets it held (in grant order), then those it
    /// inherited. What the step's report lists and its workspace keeps.
    pub fn taints(&self) -> Vec<Taint> {
        let mut out: Vec<Taint> = self
            .entries
            .iter()
            .filter(|e| e.held.is_some())
            .map(|e| Taint {
                credential: e.grant.binding.clone(),
                service: e.grant.service.clone(),
                pins: e.grant.pinned.clone(),
            })
            .collect();
        for t in &self.inherited {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }

    /// Whether a request may use `method` (any case).
    pub fn check_method(method: &str) -> Result<(), PolicyDenial> {
        if REFUSED_METHODS
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method))
        {
            return Err(PolicyDenial::Method {
                method: method.to_string(),
            });
        }
        Ok(())
    }

    /// Whether the S3 component of `binding` signs for `bucket`: only the bucket it
    /// names (its pins say the same for every request; this names the reason).
    pub fn check_bucket(&self, binding: &str, bucket: &str) -> Result<(), PolicyDenial> {
        let grant = self.granted(binding, BindingUse::Request)?;
        let named = grant.config.get("bucket").and_then(|b| b.as_str());
        if named == Some(bucket) {
            return Ok(());
        }
        Err(PolicyDenial::BucketNotNamed {
            binding: binding.to_string(),
            bucket: bucket.to_string(),
            named: named.map(str::to_string),
        })
    }

    /// A response to a request the host attached `binding` to: if any of `parts`
    /// (headers, body) holds one of its secrets in any form `redact` knows, the step
    /// now holds that secret, as if the module had read it. Returns whether it did.
    pub fn note_response(&mut self, binding: &str, parts: &[&[u8]]) -> bool {
        let Some(entry) = self.entry_mut(binding) else {
            return false;
        };
        let redactor = entry.redactor();
        let found = parts.iter().any(|p| redactor.finds_in(p));
        if found && entry.held.is_none() {
            entry.held = Some(TaintHow::Reflected);
        }
        found
    }

    /// A search of a response streamed past the module (to a workspace file) for the
    /// secrets of `binding`, the credential the host attached to its request; `None`
    /// when it is not bound. Feed it the body piece by piece
    /// ([`ReflectionScan::finds_in`]) and call [`StepPolicy::note_reflected`] on a find.
    pub fn reflection_scan(&self, binding: &str) -> Option<ReflectionScan> {
        let redactor = self.entry(binding)?.redactor();
        Some(ReflectionScan {
            keep: redactor.longest_spelling(),
            redactor,
            tail: Vec::new(),
        })
    }

    /// A streamed answer to a request the host attached `binding` to carried one of its
    /// secrets back: the step now holds it, as if the module had read it.
    pub fn note_reflected(&mut self, binding: &str) {
        if let Some(entry) = self.entry_mut(binding)
            && entry.held.is_none()
        {
            entry.held = Some(TaintHow::Reflected);
        }
    }

    fn entry(&self, binding: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.grant.binding == binding)
    }

    fn entry_mut(&mut self, binding: &str) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.grant.binding == binding)
    }

    /// The entry of `binding`, or the denial `credentials.*` gets when it is not bound.
    fn bound_mut(&mut self, binding: &str) -> Result<&mut Entry, PolicyDenial> {
        self.entry_mut(binding)
            .ok_or_else(|| PolicyDenial::NotBound {
                binding: binding.to_string(),
                asked_by: BindingUse::Credentials,
            })
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
            .is_some_and(|g| any_pin_matches(&g.pinned, url));
        // A request that carries no credential may go to the pre-authenticated URLs of
        // a granted link's provider (a Graph upload session, a OneDrive download URL):
        // the URL itself is the authorization there, so the token must not follow
        // (the attach check below refuses it: these hosts are not pins).
        let to_transfer_host = attach.is_none()
            && self.entries.iter().any(|e| {
                e.grant.kind == CredentialKind::OauthLink && any_pin_matches(&e.grant.transfer, url)
            });
        if !to_own_service && !to_transfer_host && !any_matches(&self.manifest_hosts, url) {
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
        for e in &self.entries {
            if let Some(how) = e.held
                && !any_pin_matches(&e.grant.pinned, url)
            {
                return Err(PolicyDenial::Tainted {
                    binding: e.grant.binding.clone(),
                    how,
                    destination: origin(url),
                });
            }
        }
        // Data an earlier step derived from its secrets is held to those secrets' pins.
        if let Some(t) = self
            .inherited
            .iter()
            .find(|t| !any_pin_matches(&t.pins, url))
        {
            return Err(PolicyDenial::InheritedTaint {
                credential: t.credential.clone(),
                service: t.service.clone(),
                destination: origin(url),
            });
        }
        Ok(Authorized { attach })
    }

    /// Whether the host may open a connection for `binding` to its component's own
    /// server (`destination`, `scheme://host:port`), for the `mail` (`smtp`) and
    /// `file-transfer` (`ftp`) capabilities: the binding is granted and is a component
    /// of `provider`, and the step holds no other secret and inherits no taint. Pins are
    /// HTTP destinations, and what such a connection carries (an email to anyone, a
    /// file) leaves for places no pin names, so a tainted step cannot send it. The
    /// component's own secret does not count: it goes to its own server.
    pub fn authorize_connection(
        &self,
        binding: &str,
        provider: &'static str,
        destination: &str,
    ) -> Result<&GrantedCredential, PolicyDenial> {
        let grant = self.granted(binding, BindingUse::Request)?;
        if grant.kind != CredentialKind::Component || grant.service != provider {
            return Err(PolicyDenial::WrongProvider {
                binding: binding.to_string(),
                expected: provider,
            });
        }
        for e in &self.entries {
            if let Some(how) = e.held
                && e.grant.binding != binding
            {
                return Err(PolicyDenial::Tainted {
                    binding: e.grant.binding.clone(),
                    how,
                    destination: destination.to_string(),
                });
            }
        }
        if let Some(t) = self.inherited.first() {
            return Err(PolicyDenial::InheritedTaint {
                credential: t.credential.clone(),
                service: t.service.clone(),
                destination: destination.to_string(),
            });
        }
        Ok(grant)
    }

    /// The module reads the secret of `binding` (`credentials.get`): from now on the
    /// step may only reach that credential's hosts. Returns the grant whose secret
    /// fields the module gets.
    pub fn record_secret_read(
        &mut self,
        binding: &str,
    ) -> Result<&GrantedCredential, PolicyDenial> {
        let entry = self.bound_mut(binding)?;
        entry.held = Some(TaintHow::Read);
        Ok(&entry.grant)
    }

    /// Whether the step holds any secret, or data derived from one.
    pub fn is_tainted(&self) -> bool {
        self.entries.iter().any(|e| e.held.is_some()) || !self.inherited.is_empty()
    }

    /// The bindings whose secrets the module has read.
    pub fn read_bindings(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|e| e.held == Some(TaintHow::Read))
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
        let entry = self.bound_mut(binding)?;
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
        let entry = self.bound_mut(binding)?;
        let old = std::mem::replace(
            &mut entry.grant.secrets,
            vec![("access_token".to_string(), token.clone())],
        );
        entry.grant.attach = Attach::Bearer(token);
        entry.redactor = std::sync::OnceLock::new();
        self.retired.extend(old.into_iter().map(|(_, s)| s));
        Ok(())
    }

    /// The searcher of every secret value this step was handed (see
    /// [`StepPolicy::redaction_values`]), for its output: made of the searchers its
    /// response scans built already, so each secret's forms are encoded once a step.
    pub fn output_redactor(&self) -> redact::Redactor {
        let parts: Vec<Arc<redact::Redactor>> = self.entries.iter().map(Entry::redactor).collect();
        redact::Redactor::union(
            parts.iter().map(|r| &**r),
            self.retired.iter().map(|s| s.expose().to_string()),
        )
    }

    /// Every secret value this step was handed (the grants' current secrets and those a
    /// refresh replaced), once each, however short (`redact` explains why).
    pub fn redaction_values(&self) -> Vec<String> {
        let mut values: Vec<String> = Vec::new();
        let current = self
            .entries
            .iter()
            .flat_map(|e| e.grant.secrets.iter().map(|(_, s)| s));
        for secret in current.chain(&self.retired) {
            let v = secret.expose();
            if !v.is_empty() && !values.iter().any(|x| x == v) {
                values.push(v.to_string());
            }
        }
        values
    }
}
