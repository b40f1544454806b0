//! The REST API flow8 talks to (`flow8-host serve`, port 4454 by default): API-key
//! components, flow-step execution, the audit log, the module registry, and the
//! operational endpoints (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`). Built to
//! be tested: `router(state)` and `serve(listener, shutdown)`.

pub mod audit;
pub mod auth;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod pages;
pub mod routes;

use crate::runtime::Runtime;
use crate::store::AnyStore;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use std::path::PathBuf;
use std::sync::Arc;

/// What every handler shares.
pub struct AppState {
    /// Runs steps.
    pub runtime: Runtime,
    /// The store every handler reads and writes.
    pub store: Arc<AnyStore>,
    /// Seals and opens secrets.
    pub vault: Arc<crate::vault::Vault>,
    /// The module registry.
    pub modules: Arc<crate::runtime::registry::ModuleRegistry>,
    /// The OAuth service, when providers are configured.
    pub oauth: Option<Arc<crate::oauth::OAuthService>>,
    /// Metrics.
    pub metrics: metrics::Metrics,
    /// Group-committing audit writer for the step path.
    pub audit: audit::AuditWriter,
    /// Where admins' modules are installed.
    pub install_dir: PathBuf,
    /// Root of step workspaces: a step naming workspace `w` of company `c` gets
    /// `<workspaces_dir>/<c>/<w>` as its filesystem (flow8 puts the step's files there).
    pub workspaces_dir: PathBuf,
    /// Largest JSON body.
    pub max_body_bytes: usize,
    /// Largest installed module.
    pub max_module_bytes: usize,
}

/// The API's routes.
pub fn router(state: Arc<AppState>) -> Router {
    let json_limit = DefaultBodyLimit::max(state.max_body_bytes);
    let module_limit = DefaultBodyLimit::max(state.max_module_bytes);
    let api = Router::new()
        .route(
            "/api/v1/admin/components",
            post(routes::components::create).get(routes::components::list),
        )
        .route(
            "/api/v1/admin/components/{id}",
            get(routes::components::get_one).delete(routes::components::remove),
        )
        .route(
            "/api/v1/admin/components/{id}/default",
            post(routes::components::make_default),
        )
        .route(
            "/api/v1/components",
            get(routes::components::list_for_members),
        )
        .route("/api/v1/steps", post(routes::steps::run))
        .route("/api/v1/admin/audit", get(routes::audit_log::list))
        .route(
            "/api/v1/integrations/authorize",
            get(routes::integrations::authorize),
        )
        .route(
            "/api/v1/integrations/links",
            get(routes::integrations::list).delete(routes::integrations::unlink_all),
        )
        .route(
            "/api/v1/integrations/test",
            post(routes::integrations::test),
        )
        .route(
            "/api/v1/integrations/connect-sessions",
            post(routes::connect::create),
        )
        .route(
            "/api/v1/integrations/{service}/{link_id}",
            delete(routes::integrations::unlink),
        )
        .route("/api/v1/modules", get(routes::modules::list))
        .route(
            "/api/v1/modules/{module_ref}",
            get(routes::modules::get_one),
        )
        .layer(json_limit);
    let installs = Router::new()
        .route("/api/v1/admin/modules", post(routes::modules::install))
        .route(
            "/api/v1/admin/modules/{module_ref}",
            delete(routes::modules::remove),
        )
        .layer(module_limit);
    let routes = Router::new()
        .route("/healthz", get(routes::ops::healthz))
        .route("/readyz", get(routes::ops::readyz))
        .route("/metrics", get(routes::ops::metrics))
        .route("/openapi.json", get(routes::ops::openapi))
        .route("/auth/callback", get(routes::integrations::callback))
        .route("/connect/{token}", get(routes::connect::page))
        .merge(api)
        .merge(installs);
    edge(routes).with_state(state)
}

/// What every route of the API is wrapped in: named answers for unknown routes and
/// methods, a panic caught as `500 internal_error`, and the one error log.
pub fn edge(routes: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    routes
        .fallback(routes::ops::no_such_route)
        .method_not_allowed_fallback(routes::ops::method_not_allowed)
        .layer(axum::middleware::from_fn(catch_panics))
        .layer(axum::middleware::map_response(log_errors))
}

/// A handler that panics answers `500 internal_error` (and is logged) instead of
/// dropping the connection. Handlers share no state a panic could leave half-changed:
/// the store's writes are transactions or compare-and-set, and the in-memory maps
/// (metrics, the registry's caches) are only ever replaced whole.
async fn catch_panics(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use futures_util::FutureExt;
    let route = request.uri().path().to_string();
    match std::panic::AssertUnwindSafe(next.run(request))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            error::ApiError::new(
                crate::error::ErrorName::InternalError,
                "the host failed while answering; the failure is logged",
            )
            .with_internal(format!("panic in {route}: {what}"))
            .into_response()
        }
    }
}

/// The one place API errors are logged: server errors with the operator-only detail
/// they carry, client errors at debug level. The detail never leaves the host.
async fn log_errors(mut response: axum::response::Response) -> axum::response::Response {
    if let Some(detail) = response.extensions_mut().remove::<error::ErrorDetail>() {
        let status = response.status().as_u16();
        let internal = detail.internal.as_deref().unwrap_or("");
        if response.status().is_server_error() {
            tracing::error!(error = %detail.name, status, internal, "request failed");
        } else {
            tracing::debug!(error = %detail.name, status, internal, "request refused");
        }
    }
    response
}

/// Serve until `shutdown` resolves, then let running requests (steps) finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
