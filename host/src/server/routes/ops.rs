//! Operational endpoints: liveness, readiness (the store answers), Prometheus metrics,
//! the OpenAPI document, and the answer for routes that do not exist.

use crate::server::AppState;
use crate::server::error::ApiError;
use crate::store::Store;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use std::sync::Arc;

/// `GET /healthz`: the process is up.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the store answers.
pub async fn readyz<S: Store>(
    State(st): State<Arc<AppState<S>>>,
) -> Result<&'static str, ApiError> {
    st.runtime.store().get_meta("schema_version").await?;
    Ok("ready")
}

/// `GET /metrics`
pub async fn metrics<S: Store>(State(st): State<Arc<AppState<S>>>) -> impl IntoResponse {
    let engine = st.runtime.modules().engine();
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

/// Any other route.
pub async fn no_such_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_route",
        "no such route; see /openapi.json",
    )
}
