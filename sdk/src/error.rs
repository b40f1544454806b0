//! The error a module returns; its cases are the WIT `error` variant, which the host
//! reports under flow8's error names.

use crate::__private::bindings::flow8::integration::types as wit;
use std::fmt;

/// What went wrong in a step: the WIT `error` variant. The host reports it under the
/// flow8 name shown by [`Error::name`]; `Display` shows `name: message`.
///
/// Host functions ([`crate::http::Request::send`], [`crate::credentials::get`], ...)
/// return the same type, so `?` passes a host refusal (`forbidden`, `access_denied`)
/// straight through to the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The step input is wrong (`invalid_input`).
    InvalidInput(String),
    /// The credential is missing or not the step's (`access_denied`).
    AccessDenied(String),
    /// The credential lacks a scope (`insufficient_scope`).
    InsufficientScope(String),
    /// The provider revoked the credential (`token_revoked`).
    TokenRevoked(String),
    /// The provider is rate limiting (`rate_limit_exceeded`).
    RateLimitExceeded {
        /// Detail.
        message: String,
        /// Seconds the provider asked to wait.
        retry_after_seconds: Option<u32>,
    },
    /// The provider answered with an error (`upstream_error`).
    Upstream {
        /// HTTP status.
        status: u16,
        /// Provider's code or message.
        message: String,
    },
    /// DNS, connect, TLS or timeout (`network_error`).
    Network(String),
    /// The host refused the request (`forbidden`).
    Forbidden(String),
    /// A sandbox limit was reached (`limit_exceeded`).
    LimitExceeded(String),
    /// A bug or unexpected condition in the module (WIT `internal`; the host reports
    /// it as `module_error`).
    Internal(String),
}

impl Error {
    /// `invalid_input`.
    pub fn invalid_input(msg: impl Into<String>) -> Error {
        Error::InvalidInput(msg.into())
    }
    /// `access_denied`.
    pub fn access_denied(msg: impl Into<String>) -> Error {
        Error::AccessDenied(msg.into())
    }
    /// `insufficient_scope`.
    pub fn insufficient_scope(msg: impl Into<String>) -> Error {
        Error::InsufficientScope(msg.into())
    }
    /// `token_revoked`.
    pub fn token_revoked(msg: impl Into<String>) -> Error {
        Error::TokenRevoked(msg.into())
    }
    /// `rate_limit_exceeded`.
    pub fn rate_limit_exceeded(msg: impl Into<String>, retry_after_seconds: Option<u32>) -> Error {
        Error::RateLimitExceeded {
            message: msg.into(),
            retry_after_seconds,
        }
    }
    /// `upstream_error`.
    pub fn upstream(status: u16, msg: impl Into<String>) -> Error {
        Error::Upstream {
            status,
            message: msg.into(),
        }
    }
    /// `network_error`: the call failed before a response.
    pub fn network(msg: impl Into<String>) -> Error {
        Error::Network(msg.into())
    }
    /// `forbidden`.
    pub fn forbidden(msg: impl Into<String>) -> Error {
        Error::Forbidden(msg.into())
    }
    /// `limit_exceeded`.
    pub fn limit_exceeded(msg: impl Into<String>) -> Error {
        Error::LimitExceeded(msg.into())
    }
    /// A bug or unexpected condition (WIT `internal`, reported as `module_error`).
    pub fn internal(msg: impl Into<String>) -> Error {
        Error::Internal(msg.into())
    }

    /// The flow8 error name the host reports this error under.
    pub fn name(&self) -> &'static str {
        match self {
            Error::InvalidInput(_) => "invalid_input",
            Error::AccessDenied(_) => "access_denied",
            Error::InsufficientScope(_) => "insufficient_scope",
            Error::TokenRevoked(_) => "token_revoked",
            Error::RateLimitExceeded { .. } => "rate_limit_exceeded",
            Error::Upstream { .. } => "upstream_error",
            Error::Network(_) => "network_error",
            Error::Forbidden(_) => "forbidden",
            Error::LimitExceeded(_) => "limit_exceeded",
            Error::Internal(_) => "module_error",
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            Error::InvalidInput(m)
            | Error::AccessDenied(m)
            | Error::InsufficientScope(m)
            | Error::TokenRevoked(m)
            | Error::Network(m)
            | Error::Forbidden(m)
            | Error::LimitExceeded(m)
            | Error::Internal(m) => m,
            Error::RateLimitExceeded { message, .. } | Error::Upstream { message, .. } => message,
        }
    }

    /// Whether retrying the same call later might succeed (rate limits, 5xx, network).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::RateLimitExceeded { .. } | Error::Network(_) => true,
            Error::Upstream { status, .. } => *status >= 500,
            _ => false,
        }
    }

    pub(crate) fn into_wit(self) -> wit::Error {
        match self {
            Error::InvalidInput(m) => wit::Error::InvalidInput(m),
            Error::AccessDenied(m) => wit::Error::AccessDenied(m),
            Error::InsufficientScope(m) => wit::Error::InsufficientScope(m),
            Error::TokenRevoked(m) => wit::Error::TokenRevoked(m),
            Error::RateLimitExceeded {
                message,
                retry_after_seconds,
            } => wit::Error::RateLimitExceeded(wit::RateLimit {
                message,
                retry_after_seconds,
            }),
            Error::Upstream { status, message } => {
                wit::Error::Upstream(wit::UpstreamError { status, message })
            }
            Error::Network(m) => wit::Error::Network(m),
            Error::Forbidden(m) => wit::Error::Forbidden(m),
            Error::LimitExceeded(m) => wit::Error::LimitExceeded(m),
            Error::Internal(m) => wit::Error::Internal(m),
        }
    }

    pub(crate) fn from_wit(e: wit::Error) -> Error {
        match e {
            wit::Error::InvalidInput(m) => Error::InvalidInput(m),
            wit::Error::AccessDenied(m) => Error::AccessDenied(m),
            wit::Error::InsufficientScope(m) => Error::InsufficientScope(m),
            wit::Error::TokenRevoked(m) => Error::TokenRevoked(m),
            wit::Error::RateLimitExceeded(r) => Error::RateLimitExceeded {
                message: r.message,
                retry_after_seconds: r.retry_after_seconds,
            },
            wit::Error::Upstream(u) => Error::Upstream {
                status: u.status,
                message: u.message,
            },
            wit::Error::Network(m) => Error::Network(m),
            wit::Error::Forbidden(m) => Error::Forbidden(m),
            wit::Error::LimitExceeded(m) => Error::LimitExceeded(m),
            wit::Error::Internal(m) => Error::Internal(m),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name(), self.message())
    }
}

impl std::error::Error for Error {}

/// A JSON value the module builds or reads could not be (de)serialised: a bug in the
/// module (`module_error`). Step input never takes this path: it is parsed by
/// [`crate::export_module!`] and reported as `invalid_input` naming the field.
impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::Internal(format!("JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_names() {
        assert_eq!(
            Error::invalid_input("`url` is required").to_string(),
            "invalid_input: `url` is required"
        );
        let e = Error::rate_limit_exceeded("slow down", Some(7));
        assert_eq!(e.name(), "rate_limit_exceeded");
        assert!(e.is_retryable());
        assert_eq!(Error::upstream(502, "bad gateway").name(), "upstream_error");
        assert!(Error::upstream(502, "x").is_retryable());
        assert!(!Error::upstream(404, "x").is_retryable());
        assert_eq!(Error::internal("bug").name(), "module_error");
        assert_eq!(Error::network("reset").name(), "network_error");
        let json: Error = serde_json::from_str::<u8>("x").unwrap_err().into();
        assert_eq!(json.name(), "module_error");
    }

    #[test]
    fn wit_round_trip() {
        for e in [
            Error::invalid_input("a"),
            Error::access_denied("b"),
            Error::insufficient_scope("c"),
            Error::token_revoked("d"),
            Error::rate_limit_exceeded("e", None),
            Error::upstream(500, "f"),
            Error::network("g"),
            Error::forbidden("h"),
            Error::limit_exceeded("i"),
            Error::internal("j"),
        ] {
            assert_eq!(Error::from_wit(e.clone().into_wit()), e);
        }
    }
}
