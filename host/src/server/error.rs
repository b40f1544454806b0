//! API errors: a status code and `{"error": "<name>", "message": "..."}`. Names are the
//! flow8 error names where one applies; messages never carry internals or secrets.

use crate::runtime::error::{ErrorName, StepError};
use crate::store::StoreError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Error name.
    pub name: &'static str,
    /// For a person.
    pub message: String,
}

impl ApiError {
    /// An error with a status, name and message.
    pub fn new(status: StatusCode, name: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            name,
            message: message.into(),
        }
    }

    /// 400 `invalid_input`.
    pub fn invalid_input(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    /// 404 `not_found` (also for another company's resources: no existence leak).
    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} with that id"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({"error": self.name, "message": self.message})),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::Unavailable(m) => {
                tracing::error!(error = %m, "store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the credential store is unavailable; try again",
                )
            }
            StoreError::Corrupt(m) => {
                tracing::error!(error = %m, "store data corrupt");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "stored data could not be read",
                )
            }
        }
    }
}

/// The HTTP status a step failure answers with.
pub fn step_status(e: &StepError) -> StatusCode {
    match e.name {
        ErrorName::InvalidInput | ErrorName::InvalidModule | ErrorName::InvalidManifest => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ErrorName::ModuleNotFound => StatusCode::NOT_FOUND,
        ErrorName::AccessDenied | ErrorName::InsufficientScope | ErrorName::Forbidden => {
            StatusCode::FORBIDDEN
        }
        ErrorName::TokenRevoked => StatusCode::UNAUTHORIZED,
        ErrorName::RateLimitExceeded => StatusCode::TOO_MANY_REQUESTS,
        ErrorName::UpstreamError | ErrorName::NetworkError => StatusCode::BAD_GATEWAY,
        ErrorName::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        ErrorName::MemoryLimitExceeded
        | ErrorName::OutputTooLarge
        | ErrorName::LimitExceeded
        | ErrorName::ModuleError => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorName::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorName::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
