//! API errors: one envelope, `{"error": "<name>", "message": "..."}`, with the name from
//! the catalogue (`crate::error::ErrorName`) and the status the catalogue gives it. A
//! failed step answers the same two fields inside its report. Messages never carry
//! internals or secrets: what an operator needs rides along as `internal` detail,
//! which the router's error log writes and the answer never shows.

use crate::error::ErrorName;
use crate::store::StoreError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Error name.
    pub name: ErrorName,
    /// For a person.
    pub message: String,
    /// For the operator's log only (a store's own error text, an I/O error).
    pub internal: Option<String>,
}

/// What the error log (see `server::log_errors`) writes for an answer: the name and
/// the internal detail. Taken out of the response before it is sent.
#[derive(Debug, Clone)]
pub struct ErrorDetail {
    /// Error name.
    pub name: ErrorName,
    /// Operator-only detail.
    pub internal: Option<String>,
}

impl ApiError {
    /// An error with a name and message; its status is the catalogue's.
    pub fn new(name: ErrorName, message: impl Into<String>) -> ApiError {
        ApiError {
            name,
            message: message.into(),
            internal: None,
        }
    }

    /// Detail for the operator's log, never sent.
    pub fn with_internal(mut self, detail: impl std::fmt::Display) -> ApiError {
        self.internal = Some(detail.to_string());
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.name.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// `invalid_input`.
    pub fn invalid_input(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorName::InvalidInput, message)
    }

    /// `not_found` (also for another company's resources: no existence leak).
    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(ErrorName::NotFound, format!("no {what} with that id"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status(),
            Json(serde_json::json!({"error": self.name, "message": self.message})),
        )
            .into_response();
        response.extensions_mut().insert(ErrorDetail {
            name: self.name,
            internal: self.internal,
        });
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict(m) => ApiError::new(ErrorName::Conflict, m),
            StoreError::Unavailable(m) => ApiError::new(
                ErrorName::StoreUnavailable,
                "the credential store is unavailable; try again",
            )
            .with_internal(m),
            StoreError::Corrupt(m) => {
                ApiError::new(ErrorName::InternalError, "stored data could not be read")
                    .with_internal(m)
            }
        }
    }
}
