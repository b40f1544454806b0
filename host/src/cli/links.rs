//! `flow8-host links`: OAuth links for local use, so a person testing modules can
//! connect a real account and run `just run-module slack-message ...` with it.
//! `connect` runs the same flow as the server: it prints the provider URL, receives
//! the callback on the configured (loopback) `redirect_uri`, and stores the link in the
//! local store. `list`, `test` and `delete` mirror the API.

use super::print_json;
use super::{Cli, fail};
use crate::app::HostSettings;
use crate::error::ErrorName;
use crate::oauth::OAuthService;
use crate::server::pages;
use crate::server::routes::integrations::view;
use crate::store::Store;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use clap::Subcommand;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// `links` subcommands.
#[derive(Debug, Subcommand)]
pub enum LinksCommand {
    /// Connect an account: open the printed URL in a browser and consent.
    Connect {
        /// `slack`, `microsoft`, `google`, ...
        service: String,
        /// The user the link belongs to.
        #[arg(long, default_value = "local")]
        user: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// List links (no tokens).
    List {
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
    },
    /// Health-check a link with the provider's identity endpoint.
    Test {
        /// Link id.
        link_id: String,
    },
    /// Unlink and revoke.
    Delete {
        /// Service.
        service: String,
        /// Link id.
        link_id: String,
    },
}

type Done = tokio::sync::mpsc::Sender<Result<crate::store::LinkRecord, (ErrorName, String)>>;

/// What the loopback callback shares: the service, where to report, and the browser
/// binding of the one authorization this process started. The process that printed
/// the URL is the one that receives the callback, so the binding stays in it instead
/// of a browser cookie.
type CallbackState = (Arc<OAuthService>, Done, Arc<String>);

/// The loopback callback: the same pages as the API server's `/auth/callback`.
async fn callback(
    State((oauth, done, binding)): State<CallbackState>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Response {
    match oauth.callback(&params, Some(binding.as_str())).await {
        Ok(link) => {
            // The configured provider's catalogue entry names the service.
            let name = oauth
                .provider(&link.integration_type)
                .map(|p| p.defaults.display_name.as_str())
                .unwrap_or(&link.integration_type);
            let warning = oauth.connect_warning(&link);
            let page = pages::connected_with(name, warning.as_deref());
            let _ = done.send(Ok(link)).await;
            pages::respond(StatusCode::OK, page)
        }
        Err(e) => {
            let _ = done.send(Err((e.name(), e.to_string()))).await;
            let e = crate::server::error::ApiError::from(e);
            pages::respond(
                e.status(),
                pages::not_connected(e.name.as_str(), &e.message),
            )
        }
    }
}

pub(super) async fn run(cli: &Cli, settings: &HostSettings, cmd: &LinksCommand) -> ExitCode {
    let (store, vault) = match super::commands::open_store(settings).await {
        Ok(x) => x,
        Err((name, msg)) => return fail(name, msg),
    };
    let audit = crate::server::audit::AuditWriter::start(store.clone());
    let oauth = match crate::app::oauth_service(
        &settings.config,
        &settings.data_dir,
        store.clone(),
        vault,
        &audit,
        // Lifecycle events a command causes (a refresh refused) are stored and queued;
        // a serving host delivers them.
        &crate::delivery::Deliveries::new(store.clone()),
    )
    .await
    {
        Ok(Some(o)) => o,
        Ok(None) => {
            return fail(
                ErrorName::NotConfigured,
                "no oauth2 providers in the configuration (--config)",
            );
        }
        Err(e) => return fail(e.name(), e),
    };
    let company = cli.company.as_str();
    match cmd {
        LinksCommand::Connect {
            service,
            user,
            timeout_secs,
        } => {
            let provider = match oauth.provider(service) {
                Ok(p) => p.clone(),
                Err(e) => return fail(e.name(), e),
            };
            let redirect = match url::Url::parse(&provider.redirect_uri) {
                Ok(u) => u,
                Err(e) => return fail(ErrorName::InvalidConfig, format!("redirect_uri: {e}")),
            };
            let loopback = matches!(
                redirect.host_str(),
                Some("127.0.0.1" | "localhost" | "[::1]")
            );
            if !loopback || redirect.port_or_known_default().is_none() {
                return fail(
                    ErrorName::InvalidConfig,
                    "for `links connect` the provider's redirect_uri must be a loopback URL with a port (e.g. http://127.0.0.1:8765/auth/callback)",
                );
            }
            let addr = format!(
                "{}:{}",
                redirect.host_str().unwrap_or("127.0.0.1"),
                redirect.port_or_known_default().unwrap_or(80)
            );
            let listener = match tokio::net::TcpListener::bind(
                addr.trim_start_matches('[').replace("]:", ":"),
            )
            .await
            {
                Ok(l) => l,
                Err(e) => {
                    return fail(
                        ErrorName::ListenFailed,
                        format!("cannot listen on {addr} for the callback: {e}"),
                    );
                }
            };
            let binding = Arc::new(crate::oauth::new_browser_binding());
            let url = match oauth.authorize_url(company, user, service, &binding).await {
                Ok(u) => u,
                Err(e) => return fail(e.name(), e),
            };
            let (tx, mut rx) = tokio::sync::mpsc::channel(1);
            let app = axum::Router::new()
                .route(redirect.path(), axum::routing::get(callback))
                .with_state((oauth.clone(), tx, binding));
            let server = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            eprintln!(
                "Open this URL in a browser and consent; waiting for the callback on {}:",
                provider.redirect_uri
            );
            println!("{url}");
            let result = tokio::time::timeout(Duration::from_secs(*timeout_secs), rx.recv()).await;
            server.abort();
            match result {
                Ok(Some(Ok(link))) => {
                    // The service recorded `integration_linked` (its events go to the audit log).
                    let mut v = view(&link);
                    if let Some(w) = oauth.connect_warning(&link) {
                        eprintln!("warning: {w}");
                        v["refreshable"] = false.into();
                        v["warning"] = w.into();
                    }
                    print_json(&v);
                    ExitCode::SUCCESS
                }
                Ok(Some(Err((name, message)))) => fail(name, message),
                _ => fail(ErrorName::Timeout, "no callback arrived in time"),
            }
        }
        LinksCommand::List { service } => match store.list_links(company, service.as_deref()).await
        {
            Ok(links) => {
                let links = oauth.settle_expired(links).await;
                print_json(&serde_json::Value::Array(links.iter().map(view).collect()));
                ExitCode::SUCCESS
            }
            Err(e) => fail(ErrorName::StoreUnavailable, e),
        },
        LinksCommand::Test { link_id } => match oauth.test(company, link_id).await {
            Ok(v) => {
                print_json(&v);
                ExitCode::SUCCESS
            }
            Err(e) => fail(e.name(), e),
        },
        LinksCommand::Delete { service, link_id } => {
            match oauth.unlink(company, service, link_id, None).await {
                Ok(link) => {
                    let mut v = view(&link);
                    v["deleted"] = true.into();
                    print_json(&v);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e.name(), e),
            }
        }
    }
}
