//! The catalogue of error names: every name the host answers with, from the REST API,
//! a step report or the CLI (`error: <name>: <message>`). The seed's names are flow8's
//! API (`access_denied`, `insufficient_scope`, `token_revoked`, `rate_limit_exceeded`,
//! `invalid_grant`); the others name bad input, bad modules, limits and the host's own
//! failures. Each name has one HTTP status, and the README's error table is checked
//! against this list by a test, so the two cannot drift.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! catalogue {
    ($( $(#[doc = $doc:literal])* $variant:ident = $wire:literal, $status:literal; )*) => {
        /// The name of a failure, as callers see it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorName {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl ErrorName {
            /// Every name, in catalogue order.
            pub const ALL: &'static [ErrorName] = &[$(ErrorName::$variant),*];

            /// The wire name, e.g. `access_denied`.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorName::$variant => $wire,)* }
            }

            /// The HTTP status the API answers this failure with.
            pub fn http_status(self) -> u16 {
                match self { $(ErrorName::$variant => $status,)* }
            }

            /// What the name means, for documentation.
            pub fn summary(self) -> &'static str {
                match self { $(ErrorName::$variant => concat!($($doc),*).trim_start(),)* }
            }

            /// The name for a wire name.
            pub fn parse(wire: &str) -> Option<ErrorName> {
                match wire { $($wire => Some(ErrorName::$variant),)* _ => None }
            }
        }
    };
}

catalogue! {
    // Bad input and bad modules.
    /// The input or request body is not valid (not JSON, breaks the schema, a number out of range).
    InvalidInput = "invalid_input", 400;
    /// The request body is not JSON.
    InvalidJson = "invalid_json", 400;
    /// The request body is larger than the host accepts.
    BodyTooLarge = "body_too_large", 413;
    /// The request body is not sent as `Content-Type: application/json`.
    UnsupportedMediaType = "unsupported_media_type", 415;
    /// No module of that name or version.
    ModuleNotFound = "module_not_found", 404;
    /// The file is not a WebAssembly component of the flow8 `module` world.
    InvalidModule = "invalid_module", 422;
    /// The module's manifest is missing or breaks the rules.
    InvalidManifest = "invalid_manifest", 422;
    /// The module's bytes do not match the digest its reference pins (`name@sha256:...`, `oci://...@sha256:...`).
    DigestMismatch = "digest_mismatch", 422;
    /// This host requires installed modules to be signed by a trusted key, and the module is unsigned.
    SignatureRequired = "signature_required", 422;
    /// The module's signature does not match its bytes (altered), or is by a key this host does not trust where signatures are required.
    SignatureInvalid = "signature_invalid", 422;
    /// The installed module asks for capabilities no admin has approved (a new version asking for more needs a new approval).
    ApprovalRequired = "approval_required", 403;
    /// The OCI registry refused or failed a push or pull (authentication, not found, not a Wasm artifact, protocol).
    RegistryError = "registry_error", 502;
    // Credentials and providers (the flow8 document's names first).
    /// A credential is missing, unlinked or not the caller's to use, or consent was refused.
    AccessDenied = "access_denied", 403;
    /// The link lacks a scope the module needs; reconnect it to grant the scope.
    InsufficientScope = "insufficient_scope", 403;
    /// The provider revoked the credential, or it expired with no way to refresh; reconnect.
    TokenRevoked = "token_revoked", 401;
    /// The provider refused an authorization code or refresh token.
    InvalidGrant = "invalid_grant", 400;
    /// The authorization request (`state`) is unknown, used, expired or not the caller's.
    InvalidState = "invalid_state", 400;
    /// The provider is rate limiting (see `retry_after_seconds`).
    RateLimitExceeded = "rate_limit_exceeded", 429;
    /// The provider answered with an error.
    UpstreamError = "upstream_error", 502;
    /// The provider failed in a way it does not name (an unexpected answer).
    ProviderError = "provider_error", 502;
    /// DNS, connect, TLS or protocol failure talking to a provider.
    NetworkError = "network_error", 502;
    /// The host refused an outbound request (host or address not allowed, credential pinned elsewhere).
    Forbidden = "forbidden", 403;
    /// The OAuth service or provider is not configured on this host.
    NotConfigured = "not_configured", 404;
    // Sandbox limits and module failures.
    /// The step ran past its deadline (its whole wall time).
    DeadlineExceeded = "deadline_exceeded", 504;
    /// The module tried to use more memory than the step allows.
    MemoryLimitExceeded = "memory_limit_exceeded", 422;
    /// The module's output is larger than the step allows.
    OutputTooLarge = "output_too_large", 422;
    /// Another sandbox limit (response size, requests per step, call stack, open files, workspace bytes or files, input validation work).
    LimitExceeded = "limit_exceeded", 422;
    /// The module crashed (trap, panic) or broke the contract (output not JSON).
    ModuleError = "module_error", 422;
    // The API itself.
    /// No or an unknown API token.
    Unauthorized = "unauthorized", 401;
    /// An inbound webhook's signature or token is missing, wrong, stale or replayed, or its service has no secret configured; nothing was stored.
    InvalidSignature = "invalid_signature", 401;
    /// The route is for company admins.
    AdminRequired = "admin_required", 403;
    /// No such resource for the caller's company (another company's resources too).
    NotFound = "not_found", 404;
    /// No such route.
    NoSuchRoute = "no_such_route", 404;
    /// The route does not take that method.
    MethodNotAllowed = "method_not_allowed", 405;
    /// The resource exists already, or changed meanwhile.
    Conflict = "conflict", 409;
    // The host's own failures.
    /// The store (embedded or MongoDB) could not be reached; try again.
    StoreUnavailable = "store_unavailable", 503;
    /// Writing files in the host's data directory failed (a full disk, permissions).
    StorageError = "storage_error", 507;
    /// The configuration (file, environment or flags) is not valid.
    InvalidConfig = "invalid_config", 400;
    /// The master key could not be read, created or used, or a stored secret does not open (altered, or moved from another record).
    VaultError = "vault_error", 500;
    /// The master key does not open this store's secrets.
    WrongMasterKey = "wrong_master_key", 500;
    /// The server could not listen on its address.
    ListenFailed = "listen_failed", 500;
    /// A file the command reads or writes could not be used.
    IoError = "io_error", 500;
    /// The command waited too long (an OAuth callback that never came).
    Timeout = "timeout", 504;
    /// A bug or an unexpected condition in the host.
    InternalError = "internal_error", 500;
}

impl fmt::Display for ErrorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_unique_snake_case_and_round_trip() {
        let mut seen = std::collections::BTreeSet::new();
        for &n in ErrorName::ALL {
            let wire = n.as_str();
            assert!(seen.insert(wire), "{wire} twice");
            assert!(
                wire.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{wire}"
            );
            assert_eq!(ErrorName::parse(wire), Some(n));
            assert_eq!(serde_json::to_value(n).unwrap(), wire);
            assert!((400..600).contains(&n.http_status()), "{wire}");
            assert!(!n.summary().is_empty(), "{wire}");
        }
    }

    #[test]
    fn the_readme_lists_exactly_the_catalogue() {
        // The README's "Error names" table: one `| \`name\` | meaning |` row per name.
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n## Error names")
            .nth(1)
            .expect("README.md has an `## Error names` section");
        let section = section.split("\n## ").next().unwrap_or("");
        let listed: std::collections::BTreeSet<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        let catalogue: std::collections::BTreeSet<&str> =
            ErrorName::ALL.iter().map(|n| n.as_str()).collect();
        assert_eq!(
            listed, catalogue,
            "README.md's error table and the catalogue differ"
        );
    }
}
