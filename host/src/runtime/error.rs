//! Every way a step can fail, by name. The names are flow8's API (the integrations
//! document's `access_denied`, `insufficient_scope`, `token_revoked`,
//! `rate_limit_exceeded`, `invalid_grant`) plus clear ones for bad input, bad modules
//! and sandbox limits. Messages never carry a secret.

use serde::Serialize;
use std::fmt;

/// The name of a failure, as callers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorName {
    /// The input is not JSON, or breaks the module's input schema, or the module said so.
    InvalidInput,
    /// No module of that name or version.
    ModuleNotFound,
    /// The file is not a WebAssembly component, or not one of the flow8 `module` world.
    InvalidModule,
    /// The module's manifest is missing or breaks the rules.
    InvalidManifest,
    /// A credential is missing, unlinked, or not the step's to use.
    AccessDenied,
    /// The link lacks a scope the module needs.
    InsufficientScope,
    /// The provider revoked the credential.
    TokenRevoked,
    /// The provider is rate limiting.
    RateLimitExceeded,
    /// The provider answered with an error.
    UpstreamError,
    /// DNS, connect, TLS, or protocol failure talking to a provider.
    NetworkError,
    /// The host refused an outbound request (host or address not allowed, credential
    /// pinned elsewhere).
    Forbidden,
    /// The step ran past its deadline.
    DeadlineExceeded,
    /// The module tried to use more memory than the step allows.
    MemoryLimitExceeded,
    /// The module's output is larger than the step allows.
    OutputTooLarge,
    /// Some other sandbox limit (response size, log size, call stack).
    LimitExceeded,
    /// The module crashed (trap, panic) or broke the contract (output not JSON).
    ModuleError,
    /// The credential store could not be reached.
    StoreUnavailable,
    /// A bug or an unexpected condition in the host.
    InternalError,
}

impl ErrorName {
    /// The wire name, e.g. `access_denied`.
    pub fn as_str(self) -> &'static str {
        use ErrorName::*;
        match self {
            InvalidInput => "invalid_input",
            ModuleNotFound => "module_not_found",
            InvalidModule => "invalid_module",
            InvalidManifest => "invalid_manifest",
            AccessDenied => "access_denied",
            InsufficientScope => "insufficient_scope",
            TokenRevoked => "token_revoked",
            RateLimitExceeded => "rate_limit_exceeded",
            UpstreamError => "upstream_error",
            NetworkError => "network_error",
            Forbidden => "forbidden",
            DeadlineExceeded => "deadline_exceeded",
            MemoryLimitExceeded => "memory_limit_exceeded",
            OutputTooLarge => "output_too_large",
            LimitExceeded => "limit_exceeded",
            ModuleError => "module_error",
            StoreUnavailable => "store_unavailable",
            InternalError => "internal_error",
        }
    }
}

impl fmt::Display for ErrorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named failure with a message fit for the person who ran the step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{name}: {message}")]
pub struct StepError {
    /// What kind of failure.
    pub name: ErrorName,
    /// What happened, for a person.
    pub message: String,
    /// The upstream HTTP status, for `upstream_error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Seconds to wait, for `rate_limit_exceeded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u32>,
}

impl StepError {
    /// A failure with a name and message.
    pub fn new(name: ErrorName, message: impl Into<String>) -> StepError {
        StepError {
            name,
            message: message.into(),
            status: None,
            retry_after_seconds: None,
        }
    }
}

/// Shorthand constructors.
macro_rules! ctor {
    ($($fn:ident => $name:ident),* $(,)?) => {
        impl StepError {
            $(
                #[doc = concat!("A `", stringify!($fn), "` failure.")]
                pub fn $fn(message: impl Into<String>) -> StepError {
                    StepError::new(ErrorName::$name, message)
                }
            )*
        }
    };
}

ctor! {
    invalid_input => InvalidInput,
    module_not_found => ModuleNotFound,
    invalid_module => InvalidModule,
    invalid_manifest => InvalidManifest,
    access_denied => AccessDenied,
    forbidden => Forbidden,
    internal => InternalError,
    module_error => ModuleError,
}
