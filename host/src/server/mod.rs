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
pub mod routes;

use crate::runtime::Runtime;
use crate::store::Store;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use std::path::PathBuf;
use std::sync::Arc;

/// What every handler shares.
pub struct AppState<S: Store> {
    /// Runs steps; holds the store, vault and module registry.
    pub runtime: Runtime<S>,
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
pub fn router<S: Store>(state: Arc<AppState<S>>) -> Router {
    let json_limit = DefaultBodyLimit::max(state.max_body_bytes);
    let module_limit = DefaultBodyLimit::max(state.max_module_bytes);
    let api = Router::new()
        .route(
            "/api/v1/admin/components",
            post(routes::components::create::<S>).get(routes::components::list::<S>),
        )
        .route(
            "/api/v1/admin/components/{id}",
            get(routes::components::get_one::<S>).delete(routes::components::remove::<S>),
        )
        .route(
            "/api/v1/admin/components/{id}/default",
            post(routes::components::make_default::<S>),
        )
        .route(
            "/api/v1/components",
            get(routes::components::list_for_members::<S>),
        )
        .route("/api/v1/steps", post(routes::steps::run::<S>))
        .route("/api/v1/admin/audit", get(routes::audit_log::list::<S>))
        .route(
            "/api/v1/integrations/authorize",
            get(routes::integrations::authorize::<S>),
        )
        .route(
            "/api/v1/integrations/links",
            get(routes::integrations::list::<S>).delete(routes::integrations::unlink_all::<S>),
        )
        .route(
            "/api/v1/integrations/test",
            post(routes::integrations::test::<S>),
        )
        .route(
            "/api/v1/integrations/connect-sessions",
            post(routes::connect::create::<S>),
        )
        .route(
            "/api/v1/integrations/{service}/{link_id}",
            delete(routes::integrations::unlink::<S>),
        )
        .route("/api/v1/modules", get(routes::modules::list::<S>))
        .route(
            "/api/v1/modules/{module_ref}",
            get(routes::modules::get_one::<S>),
        )
        .layer(json_limit);
    let installs = Router::new()
        .route("/api/v1/admin/modules", post(routes::modules::install::<S>))
        .route(
            "/api/v1/admin/modules/{module_ref}",
            delete(routes::modules::remove::<S>),
        )
        .layer(module_limit);
    Router::new()
        .route("/healthz", get(routes::ops::healthz))
        .route("/readyz", get(routes::ops::readyz::<S>))
        .route("/metrics", get(routes::ops::metrics::<S>))
        .route("/openapi.json", get(routes::ops::openapi))
        .route("/auth/callback", get(routes::integrations::callback::<S>))
        .route("/connect/{token}", get(routes::connect::page::<S>))
        .merge(api)
        .merge(installs)
        .fallback(routes::ops::no_such_route)
        .with_state(state)
}

/// Serve until `shutdown` resolves, then let running requests (steps) finish.
pub async fn serve<S: Store>(
    listener: tokio::net::TcpListener,
    state: Arc<AppState<S>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
