//! Operational endpoints: liveness, readiness (the store answers), Prometheus metrics,
//! the OpenAPI document, and the answer for routes that do not exist.

use crate::error::ErrorName;
use crate::server::AppState;
use crate::server::error::ApiError;
use crate::store::Store;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::sync::Arc;

/// `GET /healthz`: the process is up.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the store answers.
pub async fn readyz(State(st): State<Arc<AppState>>) -> Result<&'static str, ApiError> {
    st.store.get_meta("schema_version").await?;
    Ok("ready")
}

/// `GET /metrics`
pub async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let engine = st.modules.engine();
    let mut text = st.metrics.render();
    text.push_str(&format!(
        "# HELP flow8_sandboxes_in_use Steps running in a sandbox now (steps beyond the capacity wait).\n# TYPE flow8_sandboxes_in_use gauge\nflow8_sandboxes_in_use {}\n\
         # HELP flow8_sandboxes_capacity Sandboxes the instance pool holds.\n# TYPE flow8_sandboxes_capacity gauge\nflow8_sandboxes_capacity {}\n",
        engine.sandboxes_in_use(),
        engine.config().pool_instances
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// `GET /openapi.json`
pub async fn openapi() -> Json<serde_json::Value> {
    Json(crate::server::openapi::document())
}

/// A known route with a method it does not take.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorName::MethodNotAllowed,
        "this route does not take that method; see /openapi.json",
    )
}

/// Any other route.
pub async fn no_such_route() -> ApiError {
    ApiError::new(ErrorName::NoSuchRoute, "no such route; see /openapi.json")
}
