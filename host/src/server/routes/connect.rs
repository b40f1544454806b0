//! The connect page (flow8's first arrow, "User initiates connection"): flow8 asks the
//! API for a short-lived, single-use connect link for a user and opens it in the
//! user's browser. The page lists the company's integrations and a "Connect ..." link
//! per configured provider; each link is an authorization URL with its own state (bound
//! to user, company and service, and to this browser by a cookie the page sets), so
//! the browser never holds an API token. The
//! provider sends the browser back to `/auth/callback`, which shows "Connected!".

use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::ApiError;
use crate::server::extract::ApiJson;
use crate::server::pages;
use crate::store::Store;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;

/// `POST /api/v1/integrations/connect-sessions` body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConnectSession {
    /// Offer only these services on the page (default: every configured one).
    #[serde(default)]
    pub services: Option<Vec<String>>,
}

/// `POST /api/v1/integrations/connect-sessions`: a connect link for the caller.
#[utoipa::path(post, path = "/api/v1/integrations/connect-sessions", tag = "integrations", security(("bearer" = [])),
    summary = "A single-use connect link (10 minutes) for the caller",
    request_body = NewConnectSession,
    responses((status = 201, description = "The link", body = crate::server::openapi::ConnectSession),
        (status = 404, description = "not_configured: no OAuth providers, or one named is not configured", body = crate::server::openapi::Error)))]
pub async fn create(
    State(st): State<Arc<AppState>>,
    caller: Caller,
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
    // The URL the browser opens: the configured public URL, never one a request's
    // `Host` or `X-Forwarded-Host` names (a caller could point it at any site).
    let connect_url = format!("{}{path}", st.public_url);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "connect_url": connect_url,
            "connect_path": path,
            "expires_at": expires_at.format(&Rfc3339).unwrap_or_default(),
        })),
    )
        .into_response())
}

/// `?services=` on the connect page.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Offer only these services, comma-separated.
    services: Option<String>,
}

/// `GET /connect/{token}`: the connect page (uses the session up).
#[utoipa::path(get, path = "/connect/{token}", tag = "integrations",
    params(("token" = String, Path, description = "The connect link's token"), PageQuery),
    summary = "The connect page (uses the link up): the company's integrations and a Connect button per provider",
    responses((status = 200, description = "The page", body = String, content_type = "text/html"),
        (status = 410, description = "The link expired, was used or is not valid", body = String, content_type = "text/html")))]
pub async fn page(
    State(st): State<Arc<AppState>>,
    token: Result<Path<String>, axum::extract::rejection::PathRejection>,
    q: Result<axum::extract::Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let gone = |msg: &str| pages::respond(StatusCode::GONE, pages::link_expired(msg));
    // A token that is not UTF-8 once decoded, or a malformed query, opens no session:
    // the page says so like for any unknown link (the framework's plain-text 400 did).
    let (Ok(Path(token)), Ok(axum::extract::Query(q))) = (token, q) else {
        return gone("This connect link is not valid. Ask flow8 for a new one.");
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
    let catalogue = st.modules.catalogue();
    let rows: Vec<pages::LinkRow<'_>> = links
        .iter()
        .map(|l| pages::LinkRow {
            service: &l.integration_type,
            name: catalogue.display_name(&l.integration_type),
            who: if l.provider_user_email.is_empty() {
                &l.provider_user_id
            } else {
                &l.provider_user_email
            },
            status: l.status.as_str(),
        })
        .collect();
    // One binding for the page's buttons, set in the browser that opened the page: the
    // callback finds a button's state only with it, so a button's URL forwarded to
    // another browser connects nothing.
    let binding = crate::oauth::new_browser_binding();
    let mut buttons = Vec::new();
    for service in oauth.services() {
        if wanted.as_ref().is_some_and(|w| !w.contains(&service)) {
            continue;
        }
        match oauth
            .authorize_url(&company, &user, &service, &binding)
            .await
        {
            Ok(url) => buttons.push(pages::ConnectButton {
                name: catalogue.display_name(&service).to_string(),
                service,
                url,
            }),
            Err(e) => return gone(&e.to_string()),
        }
    }
    let mut response = pages::respond(StatusCode::OK, pages::connect(&rows, &buttons));
    super::integrations::set_cookie(
        &mut response,
        &super::integrations::binding_cookie(&st, &binding),
    );
    response
}
