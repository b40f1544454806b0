//! A JSON body extractor whose rejections are the API's named errors (malformed JSON,
//! wrong types, unknown fields, wrong content type, too large).

use super::error::ApiError;
use crate::error::ErrorName;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};

/// `Json<T>` with named errors.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::new(
                ErrorName::InvalidJson,
                format!("the body is not valid JSON: {}", e.body_text()),
            )),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::invalid_input(e.body_text())),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                ErrorName::UnsupportedMediaType,
                "send the body as `Content-Type: application/json`",
            )),
            Err(JsonRejection::BytesRejection(e)) => Err(ApiError::new(
                ErrorName::BodyTooLarge,
                format!("the body could not be read: {}", e.body_text()),
            )),
            Err(e) => Err(ApiError::invalid_input(e.body_text())),
        }
    }
}
