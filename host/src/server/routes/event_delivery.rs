//! Delivering events on to flow8, company by company (admins only, like the events):
//!
//! - `POST /api/v1/events/endpoint`: set the company's endpoint URL; the first time
//!   (or with `rotate_secret`) a new signing secret is made and shown once; where the
//!   company had none, its recent `no_endpoint` events are queued again;
//! - `GET /api/v1/events/endpoint`: the endpoint (never its secret);
//! - `DELETE /api/v1/events/endpoint`: stop delivering (events are still stored);
//! - `POST /api/v1/events/{id}/redeliver`: queue an event again, whatever its state
//!   (a parked one, one stored while there was no endpoint, one flow8 lost).
//!
//! The work is `crate::delivery::endpoint` (the CLI's `flow8-host events` runs the
//! same). The URL is checked against the operator's egress policy when it is set (an address
//! literal the policy refuses is refused here) and again on every delivery (a name is
//! resolved then, and a loopback, private or metadata address refused unless the
//! operator allows it).

use crate::delivery::endpoint::EndpointError;
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::ApiError;
use crate::server::extract::{ApiJson, ApiPath};
use crate::store::delivery::{DeliveryStatus, EventEndpointRecord};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;

pub use crate::delivery::endpoint::MAX_URL_LEN;

/// The body of `POST /api/v1/events/endpoint`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointBody {
    /// Where events are POSTed (http or https, no user name or password, no fragment).
    #[schema(max_length = 2048)]
    url: String,
    /// Make a new signing secret even if the endpoint has one (shown once; the old one
    /// stops signing at once).
    #[serde(default)]
    rotate_secret: bool,
}

/// The company's endpoint.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct EventEndpoint {
    url: String,
    /// The new signing secret (`whsec_...`), only in the answer that made it.
    #[schema(nullable = true)]
    signing_secret: Option<String>,
    /// Only in the answer to setting it: events queued again because the company had
    /// no endpoint before (stored within `delivery.replay_on_endpoint_set_hours`).
    #[schema(nullable = true)]
    replayed: Option<u64>,
    created_at: String,
    updated_at: String,
}

/// An event's delivery.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct EventDelivery {
    /// `pending`, `delivered`, `parked` (after `delivery.max_attempts` failures) or
    /// `no_endpoint`.
    state: String,
    /// Failed attempts.
    attempts: u32,
    #[schema(nullable = true)]
    next_attempt_at: Option<String>,
    #[schema(nullable = true)]
    last_error: Option<String>,
    #[schema(nullable = true)]
    delivered_at: Option<String>,
}

/// A redelivered event.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Redelivery {
    id: String,
    delivery: EventDelivery,
}

fn time_str(t: Option<time::OffsetDateTime>) -> Value {
    t.and_then(|t| t.format(&Rfc3339).ok())
        .map(Value::String)
        .unwrap_or(Value::Null)
}

/// The API's view of a delivery.
pub fn delivery_json(d: &DeliveryStatus) -> Value {
    json!({
        "state": d.state.as_str(),
        "attempts": d.attempts,
        "next_attempt_at": time_str(d.next_attempt_at),
        "last_error": d.last_error,
        "delivered_at": time_str(d.delivered_at),
    })
}

/// The API's (and the CLI's) view of an endpoint: `replayed` only in the answer to
/// setting it.
pub fn endpoint_json(
    e: &EventEndpointRecord,
    secret: Option<&str>,
    replayed: Option<usize>,
) -> Value {
    let mut v = json!({
        "url": e.url,
        "signing_secret": secret,
        "created_at": time_str(Some(e.created_at)),
        "updated_at": time_str(Some(e.updated_at)),
    });
    if let (Some(n), Some(m)) = (replayed, v.as_object_mut()) {
        m.insert("replayed".into(), json!(n));
    }
    v
}

impl From<EndpointError> for ApiError {
    fn from(e: EndpointError) -> ApiError {
        match e {
            EndpointError::Store(e) => ApiError::from(e),
            e => ApiError::new(e.name(), e.to_string()),
        }
    }
}

/// `POST /api/v1/events/endpoint`
#[utoipa::path(post, path = "/api/v1/events/endpoint", tag = "webhooks", security(("bearer" = [])),
    request_body = EndpointBody,
    summary = "Set where the company's events are delivered; a new signing secret is shown once",
    responses((status = 200, description = "The endpoint (with the signing secret when one was made)", body = EventEndpoint),
        (status = 400, description = "invalid_input: not an http(s) URL, or one the operator's egress policy refuses", body = crate::server::openapi::Error),
        (status = 403, description = "admin_required", body = crate::server::openapi::Error),
        (status = 409, description = "conflict: the endpoint changed meanwhile", body = crate::server::openapi::Error)))]
pub async fn set_endpoint(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<EndpointBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let set = st
        .endpoints
        .set(
            &caller.company_id,
            Some(&caller.user_id),
            &body.url,
            body.rotate_secret,
        )
        .await?;
    Ok(Json(endpoint_json(
        &set.record,
        set.new_secret.as_deref(),
        Some(set.replayed),
    )))
}

/// `GET /api/v1/events/endpoint`
#[utoipa::path(get, path = "/api/v1/events/endpoint", tag = "webhooks", security(("bearer" = [])),
    summary = "Where the company's events are delivered (never the secret)",
    responses((status = 200, description = "The endpoint", body = EventEndpoint),
        (status = 403, description = "admin_required", body = crate::server::openapi::Error),
        (status = 404, description = "not_found: no endpoint set", body = crate::server::openapi::Error)))]
pub async fn get_endpoint(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let e = st.endpoints.get(&caller.company_id).await?;
    Ok(Json(endpoint_json(&e, None, None)))
}

/// `DELETE /api/v1/events/endpoint`
#[utoipa::path(delete, path = "/api/v1/events/endpoint", tag = "webhooks", security(("bearer" = [])),
    summary = "Stop delivering the company's events (they are still stored, as `no_endpoint`)",
    responses((status = 204, description = "Removed"),
        (status = 403, description = "admin_required", body = crate::server::openapi::Error),
        (status = 404, description = "not_found: no endpoint set", body = crate::server::openapi::Error)))]
pub async fn delete_endpoint(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    st.endpoints
        .remove(&caller.company_id, Some(&caller.user_id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/events/{id}/redeliver`
#[utoipa::path(post, path = "/api/v1/events/{id}/redeliver", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "The event's id (from `GET /api/v1/events`)")),
    summary = "Deliver an event again (parked, never delivered, or lost by flow8): pending, its failed attempts forgotten",
    responses((status = 200, description = "Queued", body = Redelivery),
        (status = 400, description = "invalid_input: the id does not decode", body = crate::server::openapi::Error),
        (status = 403, description = "admin_required", body = crate::server::openapi::Error),
        (status = 404, description = "not_found: no such event of the company", body = crate::server::openapi::Error)))]
pub async fn redeliver(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let status = st
        .endpoints
        .redeliver(&caller.company_id, Some(&caller.user_id), &id)
        .await?;
    Ok(Json(json!({"id": id, "delivery": delivery_json(&status)})))
}
