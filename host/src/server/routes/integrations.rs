//! OAuth2 integrations (flow8's "Creating OAuth2 Integration", "Unlinking",
//! "Testing Connectivity" and "Monitoring Token Expiry"): connect, callback, list,
//! unlink, health test. Tokens never appear in an answer.

use crate::error::ErrorName;
use crate::oauth::ownership::{self, Actor};
use crate::oauth::{OAuthError, OAuthService};
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::ApiError;
use crate::server::extract::{ApiJson, ApiPath, ApiQuery};
use crate::server::pages;
use crate::store::{LinkRecord, LinkStatus, Store};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;

pub(crate) fn oauth(st: &AppState) -> Result<&Arc<OAuthService>, ApiError> {
    st.oauth.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorName::NotConfigured,
            "no OAuth2 providers are configured on this host",
        )
    })
}

impl From<OAuthError> for ApiError {
    fn from(e: OAuthError) -> ApiError {
        let message = match &e {
            OAuthError::NotFound => "no such link".to_string(),
            // The store's own words are for the operator's log.
            OAuthError::Store(crate::store::StoreError::Unavailable(_)) => {
                "the credential store is unavailable; try again".to_string()
            }
            other => other.to_string(),
        };
        let error = ApiError::new(e.name(), message);
        match e {
            OAuthError::Store(inner) => error.with_internal(inner),
            OAuthError::Vault(inner) => error.with_internal(inner),
            _ => error,
        }
    }
}

/// A link as the API shows it: no tokens.
pub fn view(l: &LinkRecord) -> Value {
    json!({
        "id": l.id,
        "integration_type": l.integration_type,
        "user_id": l.user_id,
        "scopes": l.scopes,
        "token_expiry": l.token_expiry.and_then(|t| t.format(&Rfc3339).ok()),
        "provider_user_id": l.provider_user_id,
        "provider_user_email": l.provider_user_email,
        "status": l.status,
        "status_reason": l.status_reason,
        "shared_with": l.shared_with,
        "created_at": l.created_at.format(&Rfc3339).unwrap_or_default(),
    })
}

/// `?service=`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ServiceParam {
    /// The provider (`slack`, `microsoft`, ...).
    service: String,
}

/// What a provider sends back to `/auth/callback` (RFC 6749 §4.1.2): `code` and `state`,
/// or `error` (and `error_description`) when the user or provider refused.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct CallbackParams {
    /// The authorization code.
    code: Option<String>,
    /// The authorization's state, as this host made it.
    state: String,
    /// The provider's error name.
    error: Option<String>,
    /// The provider's words.
    error_description: Option<String>,
}

/// `GET /api/v1/integrations/authorize?service=slack`: the provider URL, and the browser
/// binding the callback will ask for. The answer sets it as a cookie (for a caller that
/// is the user's browser, on this host's site), and names it in `browser_binding` for a
/// caller that sends the browser on itself: that caller sets the cookie in the same
/// browser (see the README's "OAuth connections").
#[utoipa::path(get, path = "/api/v1/integrations/authorize", tag = "integrations", security(("bearer" = [])), params(ServiceParam),
    summary = "Start an OAuth connection for the caller: the provider's URL and the browser binding",
    responses((status = 200, description = "Send the browser to auth_url", body = crate::server::openapi::Authorization,
            headers(("Set-Cookie" = String, description = "The browser binding"))),
        (status = 400, description = "invalid_input", body = crate::server::openapi::Error), (status = 404, description = "not_configured: no such provider on this host", body = crate::server::openapi::Error)))]
pub async fn authorize(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ServiceParam>,
) -> Result<Response, ApiError> {
    let binding = crate::oauth::new_browser_binding();
    let url = oauth(&st)?
        .authorize_url(&caller.company_id, &caller.user_id, &q.service, &binding)
        .await?;
    let cookie = binding_cookie(&st, &binding);
    let mut response = Json(json!({
        "auth_url": url,
        "browser_binding": {
            "cookie": crate::oauth::BINDING_COOKIE,
            "value": binding,
            "set_cookie": cookie,
        },
    }))
    .into_response();
    set_cookie(&mut response, &cookie);
    Ok(response)
}

/// The `Set-Cookie` value that puts a browser binding in the browser: HttpOnly (no
/// script reads it), `SameSite=Lax` (sent on the provider's top-level redirect back,
/// not on cross-site subrequests), Secure on an https public URL, and no longer-lived
/// than the authorization it binds.
pub(crate) fn binding_cookie(st: &AppState, binding: &str) -> String {
    let secure = if st.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    format!(
        "{}={binding}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        crate::oauth::BINDING_COOKIE,
        crate::oauth::STATE_TTL.as_secs()
    )
}

/// Add a `Set-Cookie` header (the value is ours: base64url and fixed attributes).
pub(crate) fn set_cookie(response: &mut Response, cookie: &str) {
    if let Ok(v) = axum::http::HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The browser binding a request's cookies carry, if any.
fn binding_from(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == crate::oauth::BINDING_COOKIE)
        .map(|(_, value)| value.trim().to_string())
}

/// `GET /auth/callback?code&state` (the provider sends the browser here). Every answer,
/// page, JSON or redirect, is never cached and carries the pages' CSP: the URL held an
/// authorization code.
#[utoipa::path(get, path = "/auth/callback", tag = "integrations", params(CallbackParams),
    summary = "The provider's redirect target: stores the link, shows Connected! (JSON with Accept: application/json)",
    responses((status = 200, description = "Connected", content((String = "text/html"), (crate::server::openapi::Connected = "application/json"))),
        (status = 303, description = "Connected; to the provider's return_url"),
        (status = 400, description = "invalid_state, invalid_grant or invalid_input", content((String = "text/html"), (crate::server::openapi::Error = "application/json"))),
        (status = 403, description = "access_denied: consent was refused", content((String = "text/html"), (crate::server::openapi::Error = "application/json"))),
        (status = 404, description = "not_configured", content((String = "text/html"), (crate::server::openapi::Error = "application/json"))),
        (status = 429, description = "rate_limit_exceeded at the provider", content((String = "text/html"), (crate::server::openapi::Error = "application/json"))),
        (status = 500, description = "internal_error or vault_error", content((String = "text/html"), (crate::server::openapi::Error = "application/json"))),
        (status = 502, description = "upstream_error, provider_error or network_error", content((String = "text/html"), (crate::server::openapi::Error = "application/json"))),
        (status = 503, description = "store_unavailable", content((String = "text/html"), (crate::server::openapi::Error = "application/json")))))]
pub async fn callback(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    params: Result<Query<BTreeMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let mut response = match params {
        Ok(Query(params)) => callback_answer(&st, &headers, &params).await,
        // A query string that is not UTF-8 or not `key=value` pairs: said on the page
        // (or in JSON) like any other refused callback.
        Err(e) => failed_callback(
            &headers,
            ApiError::invalid_input(format!("the query string: {}", e.body_text())),
        ),
    };
    pages::private_headers(response.headers_mut());
    response
}

/// Whether the caller asked for JSON rather than the page.
fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"))
}

/// A refused callback: the error envelope for JSON callers, else the page.
fn failed_callback(headers: &HeaderMap, e: ApiError) -> Response {
    if wants_json(headers) {
        e.into_response()
    } else {
        pages::respond(
            e.status(),
            pages::not_connected(e.name.as_str(), &e.message),
        )
    }
}

async fn callback_answer(
    st: &AppState,
    headers: &HeaderMap,
    params: &BTreeMap<String, String>,
) -> Response {
    let wants_json = wants_json(headers);
    let binding = binding_from(headers);
    let result = match oauth(st) {
        Ok(o) => o
            .callback(params, binding.as_deref())
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match result {
        Ok(link) => {
            let return_url = st
                .oauth
                .as_ref()
                .and_then(|o| o.provider(&link.integration_type).ok())
                .and_then(|p| p.return_url.clone());
            // Said at connect time: a link that will stop working when its token expires.
            let warning = st.oauth.as_ref().and_then(|o| o.connect_warning(&link));
            if wants_json {
                let mut answer = json!({"status": "connected", "link": view(&link)});
                if let Some(w) = &warning {
                    answer["refreshable"] = json!(false);
                    answer["warning"] = json!(w);
                }
                (StatusCode::OK, Json(answer)).into_response()
            } else if let Some(url) = return_url {
                Redirect::to(&url).into_response()
            } else {
                let name = st.modules.catalogue().display_name(&link.integration_type);
                pages::respond(
                    StatusCode::OK,
                    pages::connected_with(name, warning.as_deref()),
                )
            }
        }
        Err(e) => failed_callback(headers, e),
    }
}

/// `GET /api/v1/integrations/links` filters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LinkFilter {
    /// Only this provider's links.
    service: Option<String>,
    /// A whole number of days, checked by `whole_number` (so `-1` or `1.5` is refused
    /// naming the range, not as a bare type error).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 3650)]
    expiring_within_days: Option<f64>,
    /// Only links that need (or do not need) the user to connect again.
    needs_reconnect: Option<bool>,
}

/// The widest expiry window a link listing takes (ten years).
pub const MAX_EXPIRY_WINDOW_DAYS: u64 = 3650;

/// `GET /api/v1/integrations/links`
#[utoipa::path(get, path = "/api/v1/integrations/links", tag = "integrations", security(("bearer" = [])), params(LinkFilter),
    summary = "The company's links, never their tokens",
    responses((status = 200, description = "Links", body = crate::server::openapi::LinkList),
        (status = 400, description = "invalid_input: a filter", body = crate::server::openapi::Error), (status = 404, description = "not_configured (expiring_within_days needs OAuth)", body = crate::server::openapi::Error)))]
pub async fn list(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiQuery(f): ApiQuery<LinkFilter>,
) -> Result<Json<Value>, ApiError> {
    // Every number from outside is range-checked: 4294967295 days overflowed the date
    // arithmetic and panicked the handler.
    let days = f
        .expiring_within_days
        .map(|d| {
            crate::server::extract::whole_number(
                "expiring_within_days",
                d,
                1,
                MAX_EXPIRY_WINDOW_DAYS,
            )
        })
        .transpose()?;
    let links = match days {
        Some(days) => {
            oauth(&st)?
                .expiring(
                    &caller.company_id,
                    std::time::Duration::from_secs(days.saturating_mul(86_400)),
                )
                .await?
        }
        None => {
            st.store
                .list_links(&caller.company_id, f.service.as_deref())
                .await?
        }
    };
    // A link that expired with no way to refresh is shown as needing reconnection.
    let links = match &st.oauth {
        Some(o) => o.settle_expired(links).await,
        None => links,
    };
    let links: Vec<Value> = links
        .iter()
        .filter(|l| f.service.as_deref().is_none_or(|s| l.integration_type == s))
        .filter(|l| {
            f.needs_reconnect
                .is_none_or(|n| n == (l.status == LinkStatus::NeedsReconnect))
        })
        .map(view)
        .collect();
    Ok(Json(json!({"links": links})))
}

pub(crate) fn actor(caller: &Caller) -> Actor {
    Actor {
        user_id: caller.user_id.clone(),
        admin: caller.admin,
    }
}

/// The company's link of `service`, if the caller may delete it or change its shares
/// (its owner or an admin); another member's link is refused by name.
pub(crate) async fn managed_link(
    st: &AppState,
    caller: &Caller,
    service: &str,
    id: &str,
) -> Result<LinkRecord, ApiError> {
    let link = st
        .store
        .get_link(&caller.company_id, id)
        .await?
        .filter(|l| l.integration_type == service)
        .ok_or_else(|| ApiError::new(ErrorName::NotFound, "no such link"))?;
    if ownership::may_manage(&link, &actor(caller)).is_none() {
        return Err(ApiError::new(
            ErrorName::AccessDenied,
            "this link belongs to the user who connected it: only they or an admin may delete it or change whom it is shared with",
        ));
    }
    Ok(link)
}

async fn unlink_one(
    st: &AppState,
    caller: &Caller,
    service: &str,
    id: &str,
) -> Result<(), ApiError> {
    // Its webhook subscriptions go first, while the link's token still works (the
    // revocation below ends it).
    if let Some(subs) = &st.subscriptions
        && let Some(link) = st
            .store
            .get_link(&caller.company_id, id)
            .await?
            .filter(|l| l.integration_type == service)
    {
        subs.delete_for_link(&link, Some(&caller.user_id)).await;
    }
    // The service records `integration_unlinked` (its events go to the audit log, with
    // the actor and the link's owner).
    oauth(st)?
        .unlink(&caller.company_id, service, id, Some(&caller.user_id))
        .await?;
    Ok(())
}

/// `DELETE /api/v1/integrations/{service}/{link_id}`: the link's owner, or an admin.
#[utoipa::path(delete, path = "/api/v1/integrations/{service}/{link_id}", tag = "integrations", security(("bearer" = [])), params(("service" = String, Path, description = "The link's provider"), ("link_id" = String, Path, description = "The link's id")),
    summary = "Unlink a link and revoke its tokens at the provider (its owner, or an admin)",
    responses((status = 204, description = "Unlinked"),
        (status = 400, description = "invalid_input: a path segment does not decode", body = crate::server::openapi::Error), (status = 403, description = "access_denied: another member's link", body = crate::server::openapi::Error),
        (status = 404, description = "not_found or not_configured", body = crate::server::openapi::Error)))]
pub async fn unlink(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiPath((service, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    oauth(&st)?;
    managed_link(&st, &caller, &service, &id).await?;
    unlink_one(&st, &caller, &service, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/integrations/{service}/{link_id}/shares` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShareBody {
    /// The member to share with, or `*` for every member of the company.
    #[schema(pattern = r"^[\x21-\x24\x26-\x7e]{1,128}$")]
    user_id: String,
}

fn check_user_id(user_id: &str) -> Result<(), ApiError> {
    if user_id.is_empty()
        || user_id.len() > 128
        || user_id
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '%')
    {
        // `%` too: in the path it is where a percent-encoded character starts, so a
        // value holding one would not be the value a client meant.
        return Err(ApiError::invalid_input(
            "user_id is 1-128 characters without spaces or `%`, or `*` for every member",
        ));
    }
    Ok(())
}

/// `POST /api/v1/integrations/{service}/{link_id}/shares`: let another member (or every
/// member, `*`) use the link in their steps. The owner or an admin; audited.
#[utoipa::path(post, path = "/api/v1/integrations/{service}/{link_id}/shares", tag = "integrations", security(("bearer" = [])), params(("service" = String, Path, description = "The link's provider"), ("link_id" = String, Path, description = "The link's id")),
    summary = "Let another member (or every member, *) use the link; its owner or an admin",
    request_body = ShareBody,
    responses((status = 200, description = "The link", body = crate::server::openapi::Link),
        (status = 400, description = "invalid_input", body = crate::server::openapi::Error), (status = 403, description = "access_denied", body = crate::server::openapi::Error), (status = 404, description = "not_found or not_configured", body = crate::server::openapi::Error)))]
pub async fn share(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiPath((service, id)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<ShareBody>,
) -> Result<Json<Value>, ApiError> {
    check_user_id(&body.user_id)?;
    set_share(&st, &caller, &service, &id, &body.user_id, true).await
}

/// `DELETE /api/v1/integrations/{service}/{link_id}/shares/{user_id}`: stop sharing.
#[utoipa::path(delete, path = "/api/v1/integrations/{service}/{link_id}/shares/{user_id}", tag = "integrations", security(("bearer" = [])), params(("service" = String, Path, description = "The link's provider"), ("link_id" = String, Path, description = "The link's id"), ("user_id" = String, Path, description = "The member, or *", pattern = r"^[\x21-\x24\x26-\x7e]{1,128}$")),
    summary = "Stop sharing the link with a member (or *); its owner or an admin",
    responses((status = 200, description = "The link", body = crate::server::openapi::Link),
        (status = 400, description = "invalid_input", body = crate::server::openapi::Error), (status = 403, description = "access_denied", body = crate::server::openapi::Error), (status = 404, description = "not_found or not_configured", body = crate::server::openapi::Error)))]
pub async fn unshare(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiPath((service, id, user_id)): ApiPath<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_user_id(&user_id)?;
    set_share(&st, &caller, &service, &id, &user_id, false).await
}

async fn set_share(
    st: &AppState,
    caller: &Caller,
    service: &str,
    id: &str,
    user_id: &str,
    shared: bool,
) -> Result<Json<Value>, ApiError> {
    let oauth = oauth(st)?;
    let before = managed_link(st, caller, service, id).await?;
    let after = oauth
        .set_share(&caller.company_id, service, id, user_id, shared)
        .await?;
    if before.shared_with != after.shared_with {
        st.audit
            .record(crate::server::audit::entry(
                &caller.company_id,
                Some(&caller.user_id),
                if shared { "link_shared" } else { "link_unshared" },
                "integration",
                id,
                json!({"shared_with": before.shared_with}),
                json!({"shared_with": after.shared_with, "user_id": user_id, "owner": after.user_id}),
            ))
            .await;
    }
    Ok(Json(view(&after)))
}

/// `DELETE /api/v1/integrations/links?service=slack`: every link of the service
/// (flow8's "Revoke all tokens for a service"). Admins only.
#[utoipa::path(delete, path = "/api/v1/integrations/links", tag = "integrations", security(("bearer" = [])), params(ServiceParam),
    summary = "Unlink and revoke every link of a service (admins)",
    responses((status = 200, description = "How many", body = crate::server::openapi::Unlinked),
        (status = 400, description = "invalid_input", body = crate::server::openapi::Error), (status = 403, description = "admin_required or access_denied", body = crate::server::openapi::Error), (status = 404, description = "not_configured", body = crate::server::openapi::Error)))]
pub async fn unlink_all(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    q: Result<ApiQuery<ServiceParam>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let ApiQuery(q) = q?;
    let links = st
        .store
        .list_links(&caller.company_id, Some(&q.service))
        .await?;
    let mut deleted = 0;
    for l in &links {
        unlink_one(&st, &caller, &q.service, &l.id).await?;
        deleted += 1;
    }
    Ok(Json(json!({"service": q.service, "deleted": deleted})))
}

/// `POST /api/v1/integrations/test` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestBody {
    /// The link's id.
    link_id: String,
}

/// `POST /api/v1/integrations/test`
#[utoipa::path(post, path = "/api/v1/integrations/test", tag = "integrations", security(("bearer" = [])),
    summary = "Health check of a link with the provider's identity endpoint",
    request_body = TestBody,
    responses((status = 200, description = "Its health", body = crate::server::openapi::LinkHealth),
        (status = 404, description = "not_found or not_configured", body = crate::server::openapi::Error), (status = 429, description = "rate_limit_exceeded at the provider", body = crate::server::openapi::Error),
        (status = 502, description = "upstream_error, provider_error or network_error", body = crate::server::openapi::Error)))]
pub async fn test(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<TestBody>,
) -> Result<Json<Value>, ApiError> {
    let oauth = oauth(&st)?;
    // Testing uses the token: the same rule as a step (another member's link answers
    // as if there were none).
    let link = st
        .store
        .get_link(&caller.company_id, &body.link_id)
        .await?
        .filter(|l| ownership::may_use(l, &actor(&caller)).is_some())
        .ok_or_else(|| ApiError::new(ErrorName::NotFound, "no such link"))?;
    Ok(Json(oauth.test(&caller.company_id, &link.id).await?))
}
