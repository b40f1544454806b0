//! Delivering events on to flow8, company by company (admins only, like the events):
//!
//! - `POST /api/v1/events/endpoint`: set the company's endpoint URL; the first time
//!   (or with `rotate_secret`) a new signing secret is made and shown once;
//! - `GET /api/v1/events/endpoint`: the endpoint (never its secret);
//! - `DELETE /api/v1/events/endpoint`: stop delivering (events are still stored);
//! - `POST /api/v1/events/{id}/redeliver`: queue an event again, whatever its state
//!   (a parked one, one stored while there was no endpoint, one flow8 lost).
//!
//! The URL is checked against the operator's egress policy when it is set (an address
//! literal the policy refuses is refused here) and again on every delivery (a name is
//! resolved then, and a loopback, private or metadata address refused unless the
//! operator allows it).

use crate::delivery::signing;
use crate::error::ErrorName;
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::ApiError;
use crate::server::extract::{ApiJson, ApiPath};
use crate::store::delivery::{DeliveryStatus, EventEndpointRecord, event_endpoint_context};
use crate::store::{DeliveryStore, now};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;

/// The longest endpoint URL.
pub const MAX_URL_LEN: usize = 2048;

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

fn endpoint_json(e: &EventEndpointRecord, secret: Option<&str>) -> Value {
    json!({
        "url": e.url,
        "signing_secret": secret,
        "created_at": time_str(Some(e.created_at)),
        "updated_at": time_str(Some(e.updated_at)),
    })
}

fn check_url(st: &AppState, raw: &str) -> Result<(), ApiError> {
    let bad = |m: String| ApiError::invalid_input(format!("url: {m}"));
    if raw.len() > MAX_URL_LEN {
        return Err(bad(format!("at most {MAX_URL_LEN} characters")));
    }
    let url = url::Url::parse(raw).map_err(|e| bad(format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad("an http or https URL with a host".into()));
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(bad("no user name, password or fragment".into()));
    }
    st.runtime
        .outbound()
        .check_destination(&url)
        .map_err(|e| ApiError::new(ErrorName::InvalidInput, format!("url: {e}")))
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
    check_url(&st, &body.url)?;
    let company = caller.company_id.clone();
    let t = now();
    let existing = st.store.get_event_endpoint(&company).await?;
    let seal = |secret: &str| st.vault.encrypt(secret, &event_endpoint_context(&company));
    let (record, new_secret) = match existing {
        None => {
            let secret = signing::new_secret();
            let record = EventEndpointRecord {
                company_id: company.clone(),
                url: body.url.clone(),
                signing_secret: seal(&secret),
                version: 0,
                created_at: t,
                updated_at: t,
            };
            st.store.insert_event_endpoint(record.clone()).await?;
            (record, Some(secret))
        }
        Some(old) => {
            let secret = body.rotate_secret.then(signing::new_secret);
            let mut record = old.clone();
            record.url = body.url.clone();
            record.updated_at = t;
            if let Some(s) = &secret {
                record.signing_secret = seal(s);
            }
            if !st
                .store
                .replace_event_endpoint_cas(record.clone(), old.version)
                .await?
            {
                return Err(ApiError::new(
                    ErrorName::Conflict,
                    "the endpoint changed meanwhile; try again",
                ));
            }
            (record, secret)
        }
    };
    st.audit
        .record(crate::server::audit::entry(
            &company,
            Some(&caller.user_id),
            "event_endpoint_set",
            "event_endpoint",
            &company,
            Value::Null,
            json!({"url": record.url, "new_secret": new_secret.is_some()}),
        ))
        .await;
    // Deliveries that were waiting for an endpoint's answer go now.
    st.deliveries.wake();
    Ok(Json(endpoint_json(&record, new_secret.as_deref())))
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
    match st.store.get_event_endpoint(&caller.company_id).await? {
        Some(e) => Ok(Json(endpoint_json(&e, None))),
        None => Err(ApiError::not_found("event endpoint")),
    }
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
    if !st.store.delete_event_endpoint(&caller.company_id).await? {
        return Err(ApiError::not_found("event endpoint"));
    }
    st.audit
        .record(crate::server::audit::entry(
            &caller.company_id,
            Some(&caller.user_id),
            "event_endpoint_deleted",
            "event_endpoint",
            &caller.company_id,
            Value::Null,
            Value::Null,
        ))
        .await;
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
    let Some(status) = st
        .store
        .redeliver_event(&caller.company_id, &id, now())
        .await?
    else {
        return Err(ApiError::not_found("event"));
    };
    st.audit
        .record(crate::server::audit::entry(
            &caller.company_id,
            Some(&caller.user_id),
            "event_redelivered",
            "event",
            &id,
            Value::Null,
            Value::Null,
        ))
        .await;
    st.deliveries.wake();
    Ok(Json(json!({"id": id, "delivery": delivery_json(&status)})))
}
