//! Extractors whose rejections are the API's named errors: a JSON body (malformed JSON,
//! wrong types, unknown fields, wrong content type, too large), query strings and path
//! segments (not UTF-8, bad percent-encoding, wrong types); and the one range check every
//! number from outside goes through, so a refusal names the field and its range.

use super::error::ApiError;
use crate::error::ErrorName;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;

/// `Json<T>` with named errors. Every body the API takes is a JSON object: serde would
/// also read a struct from an array (`[]` filling every optional field), so anything
/// else is refused by name before `T` sees it.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                ErrorName::UnsupportedMediaType,
                "send the body as `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                ApiError::new(
                    ErrorName::BodyTooLarge,
                    format!("the body could not be read: {}", e.body_text()),
                )
            })?;
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                    Ok(_) => ApiError::invalid_input("the body must be a JSON object"),
                    Err(e) => ApiError::new(
                        ErrorName::InvalidJson,
                        format!("the body is not valid JSON: {e}"),
                    ),
                },
            );
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::new(
                ErrorName::InvalidJson,
                format!("the body is not valid JSON: {}", e.body_text()),
            )),
            Err(e) => Err(ApiError::invalid_input(e.body_text())),
        }
    }
}

/// `application/json` or an `application/*+json` type, parameters aside (what axum's
/// `Json` accepts).
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// `Query<T>` with named errors (axum's own rejection is a plain-text body).
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| ApiQuery(v))
            .map_err(|e: QueryRejection| {
                ApiError::invalid_input(format!("the query string: {}", e.body_text()))
            })
    }
}

/// `Path<T>` with named errors: a segment that is not UTF-8 once percent-decoded is bad
/// input, not a plain-text 400 from the framework.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| ApiPath(v))
            .map_err(|e: PathRejection| {
                ApiError::invalid_input(format!("the path: {}", e.body_text()))
            })
    }
}

/// A whole number from outside, checked against its range before any arithmetic: JSON
/// and query numbers arrive as `f64` so that a negative, fractional or huge value is
/// refused by this one message, naming `field` and the range, instead of a type error
/// without one (or an overflow later).
pub fn whole_number(field: &str, value: f64, min: u64, max: u64) -> Result<u64, ApiError> {
    // Both bounds are below 2^53, where every whole f64 is exact; NaN fails both tests.
    if value.fract() == 0.0 && value >= min as f64 && value <= max as f64 {
        Ok(value as u64)
    } else {
        Err(ApiError::invalid_input(format!(
            "{field} must be a whole number {min}-{max}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::whole_number;

    #[test]
    fn whole_numbers_are_refused_outside_their_range_by_name() {
        assert_eq!(whole_number("n", 7.0, 1, 10).ok(), Some(7));
        for bad in [
            0.0,
            11.0,
            -1.0,
            1.5,
            f64::NAN,
            f64::INFINITY,
            1.8e19,
            4294967295.0,
        ] {
            let e = whole_number("limits.n", bad, 1, 10).unwrap_err();
            assert_eq!(e.message, "limits.n must be a whole number 1-10", "{bad}");
        }
    }
}
