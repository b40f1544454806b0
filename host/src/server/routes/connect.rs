//! The connect page (flow8's first arrow, "User initiates connection"): flow8 asks the
//! API for a short-lived, single-use connect link for a user and opens it in the
//! user's browser. The page lists the company's integrations and a "Connect ..." link
//! per configured provider; each link is an authorization URL with its own state (bound
//! to user, company and service), so the browser never holds an API token. The
//! provider sends the browser back to `/auth/callback`, which shows "Connected!".

use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::ApiError;
use crate::server::extract::ApiJson;
use crate::store::Store;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;

/// `POST /api/v1/integrations/connect-sessions` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewConnectSession {
    /// Offer only these services on the page (default: every configured one).
    #[serde(default)]
    pub services: Option<Vec<String>>,
}

/// `POST /api/v1/integrations/connect-sessions`: a connect link for the caller.
pub async fn create(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewConnectSession>,
) -> Result<Response, ApiError> {
    let oauth = super::integrations::oauth(&st)?;
    if let Some(list) = &body.services {
        for s in list {
            oauth.provider(s)?;
        }
    }
    let (token, expires_at) = oauth
        .create_connect_session(&caller.company_id, &caller.user_id)
        .await?;
    let mut path = format!("/connect/{token}");
    if let Some(list) = body.services.filter(|l| !l.is_empty()) {
        path.push_str("?services=");
        path.push_str(&list.join(","));
    }
    // The URL the browser opens, on the host flow8 called (behind a proxy, the
    // forwarded scheme and host).
    let host = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1:4454");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("http");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "connect_url": format!("{scheme}://{host}{path}"),
            "connect_path": path,
            "expires_at": expires_at.format(&Rfc3339).unwrap_or_default(),
        })),
    )
        .into_response())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Headers for a page reached with a secret in its URL: never cached, never sent on as
/// a Referer (the provider must not see the connect token), never framed.
fn private_page(status: StatusCode, html: String) -> Response {
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
        ],
        Html(html),
    )
        .into_response()
}

/// The catalogue's name for people ("QuickBooks"), else the service name.
fn display_name(oauth: &crate::oauth::OAuthService, service: &str) -> String {
    oauth
        .provider(service)
        .map(|p| p.defaults.display_name.clone())
        .unwrap_or_else(|_| service.to_string())
}

/// `?services=` on the connect page.
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    services: Option<String>,
}

/// `GET /connect/{token}`: the connect page (uses the session up).
pub async fn page(
    State(st): State<Arc<AppState>>,
    Path(token): Path<String>,
    axum::extract::Query(q): axum::extract::Query<PageQuery>,
) -> Response {
    let gone = |msg: &str| {
        private_page(
            StatusCode::GONE,
            format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>Link expired</title></head>\
                 <body style=\"font-family:sans-serif;margin:4em\"><h1>Link expired</h1><p id=\"error\">{}</p></body></html>",
                esc(msg)
            ),
        )
    };
    let Ok(oauth) = super::integrations::oauth(&st) else {
        return gone("no OAuth2 providers are configured on this host");
    };
    let (company, user) = match oauth.open_connect_session(&token).await {
        Ok(x) => x,
        Err(crate::oauth::OAuthError::InvalidState) => {
            return gone(
                "This connect link has expired or was already used. Ask flow8 for a new one.",
            );
        }
        Err(e) => return gone(&e.to_string()),
    };
    let wanted: Option<Vec<String>> = q
        .services
        .map(|s| s.split(',').map(str::to_string).collect());
    let links = st
        .store
        .list_links(&company, None)
        .await
        .unwrap_or_default();
    let mut rows = String::new();
    for l in &links {
        rows.push_str(&format!(
            "<li class=\"link\" data-service=\"{s}\">{n}: {who} ({status})</li>",
            s = esc(&l.integration_type),
            n = esc(&display_name(oauth, &l.integration_type)),
            who = esc(if l.provider_user_email.is_empty() {
                &l.provider_user_id
            } else {
                &l.provider_user_email
            }),
            status = esc(&l.status),
        ));
    }
    if rows.is_empty() {
        rows.push_str("<li>No integrations yet.</li>");
    }
    let mut buttons = String::new();
    for service in oauth.services() {
        if wanted.as_ref().is_some_and(|w| !w.contains(&service)) {
            continue;
        }
        match oauth.authorize_url(&company, &user, &service).await {
            Ok(url) => buttons.push_str(&format!(
                "<p><a id=\"connect-{s}\" href=\"{u}\" rel=\"noreferrer\" style=\"display:inline-block;padding:.6em 1.2em;background:#2b59c3;color:#fff;text-decoration:none;border-radius:4px\">Connect {n}</a></p>",
                s = esc(&service),
                u = esc(&url),
                n = esc(&display_name(oauth, &service)),
            )),
            Err(e) => return gone(&e.to_string()),
        }
    }
    private_page(
        StatusCode::OK,
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Your integrations</title></head>\
             <body style=\"font-family:sans-serif;margin:4em\"><h1>Your integrations</h1>\
             <ul id=\"links\">{rows}</ul>{buttons}\
             <p style=\"color:#666\">Each button works once and for ten minutes.</p></body></html>"
        ),
    )
}
