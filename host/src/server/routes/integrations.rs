//! OAuth2 integrations (flow8's "Creating OAuth2 Integration", "Unlinking",
//! "Testing Connectivity" and "Monitoring Token Expiry"): connect, callback, list,
//! unlink, health test. Tokens never appear in an answer.

use crate::error::ErrorName;
use crate::oauth::{OAuthError, OAuthService};
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::ApiError;
use crate::server::extract::ApiJson;
use crate::server::pages;
use crate::store::{LinkRecord, LinkStatus, Store};
use axum::Json;
use axum::extract::{Path, Query, State};
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
        "created_at": l.created_at.format(&Rfc3339).unwrap_or_default(),
    })
}

/// `?service=`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceParam {
    service: String,
}

/// `GET /api/v1/integrations/authorize?service=slack`
pub async fn authorize(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    q: Result<Query<ServiceParam>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::invalid_input(e.body_text()))?;
    let url = oauth(&st)?
        .authorize_url(&caller.company_id, &caller.user_id, &q.service)
        .await?;
    Ok(Json(json!({"auth_url": url})))
}

/// `GET /auth/callback?code&state` (the provider sends the browser here).
pub async fn callback(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(params): Query<BTreeMap<String, String>>,
) -> Response {
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    let result = match oauth(&st) {
        Ok(o) => o.callback(&params).await.map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match result {
        Ok(link) => {
            let return_url = st
                .oauth
                .as_ref()
                .and_then(|o| o.provider(&link.integration_type).ok())
                .and_then(|p| p.return_url.clone());
            if wants_json {
                (
                    StatusCode::OK,
                    Json(json!({"status": "connected", "link": view(&link)})),
                )
                    .into_response()
            } else if let Some(url) = return_url {
                Redirect::to(&url).into_response()
            } else {
                pages::respond(StatusCode::OK, pages::connected(&link.integration_type))
            }
        }
        Err(e) => {
            if wants_json {
                e.into_response()
            } else {
                pages::respond(
                    e.status(),
                    pages::not_connected(e.name.as_str(), &e.message),
                )
            }
        }
    }
}

/// `GET /api/v1/integrations/links` filters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkFilter {
    service: Option<String>,
    expiring_within_days: Option<u32>,
    needs_reconnect: Option<bool>,
}

/// The widest expiry window a link listing takes (ten years).
const MAX_EXPIRY_WINDOW_DAYS: u32 = 3650;

/// `GET /api/v1/integrations/links`
pub async fn list(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    q: Result<Query<LinkFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(f) = q.map_err(|e| ApiError::invalid_input(e.body_text()))?;
    let links = match f.expiring_within_days {
        // Every number from outside is range-checked: 4294967295 days overflowed the
        // date arithmetic and panicked the handler.
        Some(days) if !(1..=MAX_EXPIRY_WINDOW_DAYS).contains(&days) => {
            return Err(ApiError::invalid_input(format!(
                "expiring_within_days must be 1-{MAX_EXPIRY_WINDOW_DAYS}"
            )));
        }
        Some(days) => {
            oauth(&st)?
                .expiring(
                    &caller.company_id,
                    std::time::Duration::from_secs(u64::from(days) * 86_400),
                )
                .await?
        }
        None => {
            st.store
                .list_links(&caller.company_id, f.service.as_deref())
                .await?
        }
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

async fn unlink_one(
    st: &AppState,
    caller: &Caller,
    service: &str,
    id: &str,
) -> Result<(), ApiError> {
    // The service records `integration_unlinked` (its events go to the audit log).
    oauth(st)?
        .unlink(&caller.company_id, service, id, Some(&caller.user_id))
        .await?;
    Ok(())
}

/// `DELETE /api/v1/integrations/{service}/{link_id}`
pub async fn unlink(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path((service, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    unlink_one(&st, &caller, &service, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/integrations/links?service=slack`: every link of the service
/// (flow8's "Revoke all tokens for a service"). Admins only.
pub async fn unlink_all(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    q: Result<Query<ServiceParam>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let Query(q) = q.map_err(|e| ApiError::invalid_input(e.body_text()))?;
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestBody {
    link_id: String,
}

/// `POST /api/v1/integrations/test`
pub async fn test(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<TestBody>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        oauth(&st)?.test(&caller.company_id, &body.link_id).await?,
    ))
}
