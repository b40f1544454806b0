//! Operational endpoints: liveness, readiness (the store answers), Prometheus metrics,
//! the OpenAPI document, and the answer for routes that do not exist.

use crate::error::ErrorName;
use crate::server::AppState;
use crate::server::error::ApiError;
use crate::store::Store;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", summary = "Liveness",
    responses((status = 200, description = "The process is up", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the store answers.
#[utoipa::path(get, path = "/readyz", tag = "operations", summary = "Readiness: the store answers",
    responses((status = 200, description = "The store answers", body = String, content_type = "text/plain")))]
pub async fn readyz(State(st): State<Arc<AppState>>) -> Result<&'static str, ApiError> {
    st.store.get_meta("schema_version").await?;
    Ok("ready")
}

/// `GET /metrics`: for the operator only. The page is host-wide (every company's
/// modules and traffic), so no company's token opens it, admin or not: it asks for
/// `Authorization: Bearer <metrics_token>` (the config file's or
/// `FLOW8_METRICS_TOKEN`), which a Prometheus scrape job sends as its `authorization`
/// credentials. Without a configured token it is off (every request answers 401).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    summary = "Prometheus metrics, for the operator's metrics token (no company's token opens it)",
    security(("metrics_token" = [])),
    responses((status = 200, description = "The exposition text", body = String, content_type = "text/plain"),
        (status = 401, description = "unauthorized: not the metrics token, or metrics are off", body = crate::server::openapi::Error)))]
pub async fn metrics(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    // Unconfigured, no token is the right one: the same answer as a wrong token, with
    // what to do about it.
    let Some(expected) = &st.metrics_token_hash else {
        return Err(ApiError::new(
            ErrorName::Unauthorized,
            "metrics are off on this host: set metrics_token (or FLOW8_METRICS_TOKEN) and scrape with it as the bearer token",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // Hashes are compared, so the time a comparison takes says nothing about the token.
    let matches = presented.is_some_and(|t| {
        let got: [u8; 32] = Sha256::digest(t.as_bytes()).into();
        &got == expected
    });
    if !matches {
        return Err(ApiError::new(
            ErrorName::Unauthorized,
            "/metrics needs `Authorization: Bearer <metrics_token>` (the operator's token, not a company's)",
        ));
    }
    let engine = st.modules.engine();
    let mut text = st.metrics.render();
    text.push_str(&format!(
        "# HELP flow8_sandboxes_in_use Steps running in a sandbox now (steps beyond the capacity wait).\n# TYPE flow8_sandboxes_in_use gauge\nflow8_sandboxes_in_use {}\n\
         # HELP flow8_sandboxes_waiting Steps waiting for a sandbox now.\n# TYPE flow8_sandboxes_waiting gauge\nflow8_sandboxes_waiting {}\n\
         # HELP flow8_sandboxes_capacity Sandboxes the instance pool holds.\n# TYPE flow8_sandboxes_capacity gauge\nflow8_sandboxes_capacity {}\n",
        engine.sandboxes_in_use(),
        engine.sandboxes_waiting(),
        engine.config().pool_instances
    ));
    if let Some(subs) = &st.subscriptions {
        text.push_str(&subs.render_metrics());
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

/// `GET /openapi.json`
#[utoipa::path(get, path = "/openapi.json", tag = "operations", summary = "This document",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn openapi(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(crate::server::openapi::document_for(
        &st.runtime.default_limits(),
    ))
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
