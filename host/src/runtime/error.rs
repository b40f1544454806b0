//! Every way a step can fail, by name. The names are flow8's API (the integrations
//! document's `access_denied`, `insufficient_scope`, `token_revoked`,
//! `rate_limit_exceeded`, `invalid_grant`) plus clear ones for bad input, bad modules
//! and sandbox limits. Messages never carry a secret.

use serde::Serialize;

pub use crate::error::ErrorName;

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
