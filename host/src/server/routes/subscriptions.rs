//! Webhook subscriptions of a link (Microsoft Graph subscriptions, Google watch
//! channels), for its owner or an admin:
//!
//! - `POST /api/v1/integrations/{link_id}/subscriptions`: make one at the provider
//!   (`{"resource", "change_type", "topic_name"}`), its notifications going to the
//!   link's webhook URL and checked against the link's webhook secret (made if the link
//!   has none);
//! - `GET /api/v1/integrations/{link_id}/subscriptions`: the link's subscriptions with
//!   their expiry;
//! - `DELETE /api/v1/integrations/{link_id}/subscriptions/{subscription_id}`: remove one
//!   at the provider and here.
//!
//! The host renews them ahead of expiry (`crate::subscriptions`).

use crate::error::ErrorName;
use crate::oauth::ownership;
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::ApiError;
use crate::server::extract::{ApiJson, ApiPath};
use crate::store::{LinkRecord, Store, SubscriptionRecord};
use crate::subscriptions::{NewSubscription, SubscriptionError, SubscriptionService};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;

impl From<SubscriptionError> for ApiError {
    fn from(e: SubscriptionError) -> ApiError {
        match e {
            SubscriptionError::OAuth(o) => o.into(),
            SubscriptionError::Store(s) => s.into(),
            other => {
                let name = other.name();
                ApiError::new(name, other.to_string())
            }
        }
    }
}

/// `POST /api/v1/integrations/{link_id}/subscriptions` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionBody {
    /// Graph: a resource path (`me/mailFolders('Inbox')/messages`, `me/drive/root`);
    /// Google: `drive/changes`, `drive/files/{file_id}` or `gmail`.
    #[schema(min_length = 1, max_length = 512)]
    resource: String,
    /// Graph's `changeType`: created, updated, deleted, comma-separated (default
    /// `created,updated`).
    #[serde(default)]
    change_type: Option<String>,
    /// Gmail only: the Pub/Sub topic Gmail publishes to (`projects/{p}/topics/{t}`).
    #[serde(default)]
    topic_name: Option<String>,
}

fn service(st: &AppState) -> Result<&Arc<SubscriptionService>, ApiError> {
    st.subscriptions.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorName::NotConfigured,
            "no OAuth2 providers are configured on this host",
        )
    })
}

/// The company's link, if the caller is its owner or an admin.
async fn managed(st: &AppState, caller: &Caller, link_id: &str) -> Result<LinkRecord, ApiError> {
    let link = st
        .store
        .get_link(&caller.company_id, link_id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorName::NotFound, "no such link"))?;
    if ownership::may_manage(&link, &super::integrations::actor(caller)).is_none() {
        return Err(ApiError::new(
            ErrorName::AccessDenied,
            "only the link's owner or an admin manages its webhook subscriptions",
        ));
    }
    Ok(link)
}

fn view(s: &SubscriptionService, link: &LinkRecord, r: &SubscriptionRecord) -> Value {
    json!({
        "id": r.id,
        "link_id": r.link_id,
        "service": r.service,
        "resource": r.resource,
        "change_type": r.change_type,
        "topic_name": r.topic_name,
        "provider_id": r.provider_id,
        "expires_at": r.expires_at.format(&Rfc3339).unwrap_or_default(),
        "status": r.status.as_str(),
        "last_error": r.last_error,
        "renewals": r.renewals,
        "notification_url": s.notification_url(link),
        "created_at": r.created_at.format(&Rfc3339).unwrap_or_default(),
        "updated_at": r.updated_at.format(&Rfc3339).unwrap_or_default(),
    })
}

/// `POST /api/v1/integrations/{link_id}/subscriptions`: make a subscription.
#[utoipa::path(post, path = "/api/v1/integrations/{link_id}/subscriptions", tag = "webhooks", security(("bearer" = [])),
    params(("link_id" = String, Path, description = "The link (microsoft or google) whose token makes it and whose webhook URL receives it")),
    request_body = SubscriptionBody,
    summary = "Make a webhook subscription at the provider (Graph subscription, Google watch channel) for a link; renewed by the host",
    responses((status = 201, description = "Made", body = crate::server::openapi::Subscription),
        (status = 400, description = "invalid_input: a resource the provider does not take", body = crate::server::openapi::Error),
        (status = 401, description = "token_revoked: the link needs reconnecting", body = crate::server::openapi::Error),
        (status = 403, description = "access_denied (another member's link) or forbidden (the provider's API is outside the egress policy)", body = crate::server::openapi::Error),
        (status = 404, description = "not_found or not_configured (no subscriptions for the link's service)", body = crate::server::openapi::Error),
        (status = 409, description = "conflict: the link kept changing", body = crate::server::openapi::Error),
        (status = 502, description = "upstream_error, provider_error or network_error: the provider refused or did not answer", body = crate::server::openapi::Error)))]
pub async fn create(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(link_id): ApiPath<String>,
    ApiJson(body): ApiJson<SubscriptionBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // What the document says of the body is checked before the link is looked up, so
    // a malformed request is refused as malformed whatever link it names.
    let n = body.resource.chars().count();
    if !(1..=512).contains(&n) {
        return Err(ApiError::invalid_input("resource must be 1-512 characters"));
    }
    let s = service(&st)?;
    let link = managed(&st, &caller, &link_id).await?;
    let rec = s
        .create(
            &link,
            NewSubscription {
                resource: body.resource,
                change_type: body.change_type,
                topic_name: body.topic_name,
            },
            Some(&caller.user_id),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(view(s, &link, &rec))))
}

/// `GET /api/v1/integrations/{link_id}/subscriptions`: the link's subscriptions.
#[utoipa::path(get, path = "/api/v1/integrations/{link_id}/subscriptions", tag = "webhooks", security(("bearer" = [])),
    params(("link_id" = String, Path, description = "The link")),
    summary = "A link's webhook subscriptions, with their expiry",
    responses((status = 200, description = "The subscriptions, oldest first", body = crate::server::openapi::SubscriptionList),
        (status = 403, description = "access_denied: another member's link", body = crate::server::openapi::Error),
        (status = 404, description = "not_found or not_configured", body = crate::server::openapi::Error)))]
pub async fn list(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(link_id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let s = service(&st)?;
    let link = managed(&st, &caller, &link_id).await?;
    let subs: Vec<Value> = s
        .list(&link)
        .await?
        .iter()
        .map(|r| view(s, &link, r))
        .collect();
    Ok(Json(json!({ "subscriptions": subs })))
}

/// `DELETE /api/v1/integrations/{link_id}/subscriptions/{subscription_id}`.
#[utoipa::path(delete, path = "/api/v1/integrations/{link_id}/subscriptions/{subscription_id}", tag = "webhooks", security(("bearer" = [])),
    params(("link_id" = String, Path, description = "The link"), ("subscription_id" = String, Path, description = "The subscription's id (the host's, not the provider's)")),
    summary = "Remove a webhook subscription at the provider and here",
    responses((status = 204, description = "Removed"),
        (status = 401, description = "token_revoked: the link needs reconnecting", body = crate::server::openapi::Error),
        (status = 403, description = "access_denied or forbidden", body = crate::server::openapi::Error),
        (status = 404, description = "not_found or not_configured", body = crate::server::openapi::Error),
        (status = 502, description = "upstream_error, provider_error or network_error: the provider refused; it is kept", body = crate::server::openapi::Error)))]
pub async fn remove(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiPath((link_id, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let s = service(&st)?;
    let link = managed(&st, &caller, &link_id).await?;
    s.delete(&link, &id, Some(&caller.user_id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
