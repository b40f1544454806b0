//! The REST API flow8 talks to (`flow8-host serve`, port 4454 by default): API-key
//! components, flow-step execution, OAuth integrations (with the provider's callback
//! and the connect page), the audit log, the module registry, and the operational
//! endpoints (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`). Built to be tested:
//! `router(state)` and `serve(listener, shutdown)`, the router built from one table of
//! routes.

pub mod audit;
pub mod auth;
pub mod error;
pub mod extract;
pub mod install_jobs;
pub mod metrics;
pub mod openapi;
pub mod pages;
pub mod rate_limit;
pub mod routes;

use crate::runtime::Runtime;
use crate::store::AnyStore;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::routing::MethodRouter;
use std::path::PathBuf;
use std::sync::Arc;

/// How many `webhook_refused` entries a link's refused webhooks may write at once; then
/// one a minute.
pub const WEBHOOK_REFUSED_AUDIT_BURST: u32 = 10;

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
    /// Metrics (shared with the background deliverer).
    pub metrics: Arc<metrics::Metrics>,
    /// The event delivery queue (stores events and wakes the deliverer).
    pub deliveries: crate::delivery::Deliveries,
    /// The company endpoint and redelivery operations (shared with the CLI).
    pub endpoints: crate::delivery::endpoint::EndpointAdmin,
    /// Per-credential usage baselines (token-usage alerts).
    pub usage: Arc<crate::usage::UsageMonitor>,
    /// Webhook subscriptions (Graph, Google), when OAuth providers are configured.
    pub subscriptions: Option<Arc<crate::subscriptions::SubscriptionService>>,
    /// Group-committing audit writer for the step path.
    pub audit: audit::AuditWriter,
    /// Installs answered as still compiling, and how they ended.
    pub installs: install_jobs::InstallJobs,
    /// Where admins' modules are installed.
    pub install_dir: PathBuf,
    /// Root of step workspaces: a step naming workspace `w` of company `c` gets
    /// `<workspaces_dir>/<c>/<w>` as its filesystem (flow8 puts the step's files there).
    pub workspaces_dir: PathBuf,
    /// Largest JSON body.
    pub max_body_bytes: usize,
    /// Largest installed module.
    pub max_module_bytes: usize,
    /// The registries admins may install modules from (`oci.registries`).
    pub oci: crate::config::OciConfig,
    /// `POST /api/v1/steps` per company.
    pub step_rate: rate_limit::RateLimiter,
    /// `webhook_refused` audit entries per link ([`WEBHOOK_REFUSED_AUDIT_BURST`], then
    /// one a minute): whoever knows a link's webhook URL cannot fill its company's audit
    /// log with forged calls. `/metrics` still counts every refusal.
    pub refused_webhook_audit: rate_limit::RateLimiter,
    /// Where browsers reach this host (`public_url`), the base of connect links.
    pub public_url: String,
    /// SHA-256 of the operator's metrics token; None: `/metrics` is off.
    pub metrics_token_hash: Option<[u8; 32]>,
    /// API token records by hash, kept `record_cache_seconds` (see `auth`): a token
    /// revoked with the CLI or through another host is refused within that bound.
    pub tokens: auth::TokenCache,
}

/// The HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `GET`
    Get,
    /// `POST`
    Post,
    /// `DELETE`
    Delete,
}

impl Verb {
    /// The method's name, upper case.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Delete => "DELETE",
        }
    }

    fn filter(self) -> axum::routing::MethodFilter {
        use axum::routing::MethodFilter;
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Post => MethodFilter::POST,
            Verb::Delete => MethodFilter::DELETE,
        }
    }
}

/// The request body a route takes, and so the size limit it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// None, or too small to matter (operations, pages).
    None,
    /// JSON, up to `max_body_bytes`.
    Json,
    /// A `.wasm` module, up to `max_module_bytes`.
    Module,
    /// A provider's webhook, up to `webhooks::MAX_BODY_BYTES`.
    Webhook,
}

/// One route: method, path, body limit and handler.
struct Endpoint {
    verb: Verb,
    path: &'static str,
    body: Body,
    handler: MethodRouter<Arc<AppState>>,
}

fn endpoint<H, T>(verb: Verb, path: &'static str, body: Body, handler: H) -> Endpoint
where
    H: Handler<T, Arc<AppState>>,
    T: 'static,
{
    Endpoint {
        verb,
        path,
        body,
        handler: axum::routing::on(verb.filter(), handler),
    }
}

/// Every route the server serves: the one table [`router`] is built from, and that
/// [`served_routes`] shows, so a test can hold the OpenAPI document against it.
fn endpoints() -> Vec<Endpoint> {
    use Body::{Json, Module, None, Webhook};
    use Verb::{Delete, Get, Post};
    use routes::{
        audit_log, components, connect, event_delivery, integrations, modules, ops, steps,
        subscriptions, webhooks,
    };
    vec![
        endpoint(Get, "/healthz", None, ops::healthz),
        endpoint(Get, "/readyz", None, ops::readyz),
        endpoint(Get, "/metrics", None, ops::metrics),
        endpoint(Get, "/openapi.json", None, ops::openapi),
        endpoint(Get, "/auth/callback", None, integrations::callback),
        endpoint(Get, "/connect/{token}", None, connect::page),
        endpoint(Post, "/api/v1/admin/components", Json, components::create),
        endpoint(Get, "/api/v1/admin/components", Json, components::list),
        endpoint(
            Get,
            "/api/v1/admin/components/{id}",
            Json,
            components::get_one,
        ),
        endpoint(
            Delete,
            "/api/v1/admin/components/{id}",
            Json,
            components::remove,
        ),
        endpoint(
            Post,
            "/api/v1/admin/components/{id}/default",
            Json,
            components::make_default,
        ),
        endpoint(
            Get,
            "/api/v1/components",
            Json,
            components::list_for_members,
        ),
        endpoint(Post, "/api/v1/steps", Json, steps::run),
        endpoint(Get, "/api/v1/admin/audit", Json, audit_log::list),
        endpoint(
            Get,
            "/api/v1/integrations/authorize",
            Json,
            integrations::authorize,
        ),
        endpoint(Get, "/api/v1/integrations/links", Json, integrations::list),
        endpoint(
            Delete,
            "/api/v1/integrations/links",
            Json,
            integrations::unlink_all,
        ),
        endpoint(Post, "/api/v1/integrations/test", Json, integrations::test),
        endpoint(
            Post,
            "/api/v1/integrations/connect-sessions",
            Json,
            connect::create,
        ),
        endpoint(
            Delete,
            "/api/v1/integrations/{service}/{link_id}",
            Json,
            integrations::unlink,
        ),
        endpoint(
            Post,
            "/api/v1/integrations/{service}/{link_id}/shares",
            Json,
            integrations::share,
        ),
        endpoint(
            Delete,
            "/api/v1/integrations/{service}/{link_id}/shares/{user_id}",
            Json,
            integrations::unshare,
        ),
        endpoint(Get, "/api/v1/modules", Json, modules::list),
        endpoint(Get, "/api/v1/modules/{module_ref}", Json, modules::get_one),
        endpoint(Post, "/api/v1/admin/modules", Module, modules::install),
        endpoint(Post, "/api/v1/admin/modules/pull", Json, modules::pull),
        endpoint(
            Get,
            "/api/v1/admin/modules/installs/{install_id}",
            Json,
            modules::install_status,
        ),
        endpoint(
            Post,
            "/api/v1/admin/modules/{module_ref}/approval",
            Json,
            modules::approve,
        ),
        endpoint(
            Delete,
            "/api/v1/admin/modules/{module_ref}",
            Module,
            modules::remove,
        ),
        endpoint(Post, "/webhooks/{service}", Webhook, webhooks::receive),
        endpoint(
            Post,
            "/webhooks/{service}/{link_id}",
            Webhook,
            webhooks::receive_for_link,
        ),
        endpoint(
            Post,
            "/api/v1/integrations/{service}/{link_id}/webhook-secret",
            Json,
            webhooks::create_secret,
        ),
        endpoint(Get, "/api/v1/events", Json, webhooks::list),
        endpoint(
            Post,
            "/api/v1/events/endpoint",
            Json,
            event_delivery::set_endpoint,
        ),
        endpoint(
            Get,
            "/api/v1/events/endpoint",
            Json,
            event_delivery::get_endpoint,
        ),
        endpoint(
            Delete,
            "/api/v1/events/endpoint",
            Json,
            event_delivery::delete_endpoint,
        ),
        endpoint(
            Post,
            "/api/v1/events/{id}/redeliver",
            Json,
            event_delivery::redeliver,
        ),
        endpoint(
            Post,
            "/api/v1/integrations/{link_id}/subscriptions",
            Json,
            subscriptions::create,
        ),
        endpoint(
            Get,
            "/api/v1/integrations/{link_id}/subscriptions",
            Json,
            subscriptions::list,
        ),
        endpoint(
            Delete,
            "/api/v1/integrations/{link_id}/subscriptions/{subscription_id}",
            Json,
            subscriptions::remove,
        ),
    ]
}

/// Method and path of every route the server serves, from the table the router is
/// built from.
pub fn served_routes() -> Vec<(Verb, &'static str)> {
    endpoints().into_iter().map(|e| (e.verb, e.path)).collect()
}

/// The API's routes.
pub fn router(state: Arc<AppState>) -> Router {
    let (mut plain, mut json, mut installs, mut hooks) =
        (Router::new(), Router::new(), Router::new(), Router::new());
    for e in endpoints() {
        let group = match e.body {
            Body::None => &mut plain,
            Body::Json => &mut json,
            Body::Module => &mut installs,
            Body::Webhook => &mut hooks,
        };
        // Two methods on one path merge into one route.
        *group = std::mem::take(group).route(e.path, e.handler);
    }
    let routes = plain
        .merge(json.layer(DefaultBodyLimit::max(state.max_body_bytes)))
        .merge(installs.layer(DefaultBodyLimit::max(state.max_module_bytes)))
        .merge(hooks.layer(DefaultBodyLimit::max(crate::webhooks::MAX_BODY_BYTES)));
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
