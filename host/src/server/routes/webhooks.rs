//! Inbound provider webhooks and the events they carry:
//!
//! - `POST /webhooks/{service}`: app-wide webhooks, verified with the app's secret from
//!   the config (Slack's signing secret, QuickBooks' verifier token) and routed to the
//!   links they are for (Slack by workspace, QuickBooks by company);
//! - `POST /webhooks/{service}/{link_id}`: per-link webhooks (Microsoft Graph, Google
//!   push), verified with the link's own sealed webhook secret;
//! - `POST /api/v1/integrations/{service}/{link_id}/webhook-secret`: make (or replace) a
//!   link's webhook secret, shown once, with the URL to give the provider;
//! - `GET /api/v1/events`: the company's stored events, newest first, with paging.
//!
//! The raw body is checked (`crate::webhooks`) before anything reads it; a refusal
//! (`401 invalid_signature`) stores nothing, and every event is stored before the
//! provider is answered, at most once per company, service and provider event id.

use crate::error::ErrorName;
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::ApiError;
use crate::server::extract::{ApiPath, ApiQuery, whole_number};
use crate::store::{
    DeliveryStore, EventQuery, EventRecord, LinkRecord, Store, WebhookRoute, now, sealing,
};
use crate::vault::Secret;
use crate::webhooks::{self, Event, Refusal, Verified};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;

/// The providers whose webhooks the host verifies (the metrics' provider labels).
const APP_WIDE: &[&str] = &["slack", "quickbooks"];
const PER_LINK: &[&str] = &["microsoft", "google"];

fn refused(st: &AppState, service: &str, refusal: &Refusal) -> ApiError {
    st.metrics.webhook(service, refusal.verdict());
    ApiError::new(
        ErrorName::InvalidSignature,
        format!("webhook refused, nothing stored: {refusal}"),
    )
}

fn read_body(
    st: &AppState,
    service: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            st.metrics.webhook(service, "too_large");
            ApiError::new(
                ErrorName::BodyTooLarge,
                format!(
                    "a webhook body is at most {} bytes",
                    webhooks::MAX_BODY_BYTES
                ),
            )
        } else {
            ApiError::invalid_input(e.body_text())
        }
    })
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `POST /webhooks/{service}`: Slack Events API, QuickBooks.
#[utoipa::path(post, path = "/webhooks/{service}", tag = "webhooks",
    params(("service" = String, Path, description = "`slack` or `quickbooks`")),
    request_body(content = String, description = "The provider's signed body, verified as bytes before it is read", content_type = "application/json"),
    summary = "An app-wide provider webhook (Slack: X-Slack-Signature; QuickBooks: intuit-signature), verified before it is read",
    responses((status = 200, description = "Stored (or acknowledged); Slack's url_verification answers its challenge as text/plain", content((crate::server::openapi::WebhookReceipt = "application/json"), (String = "text/plain"))),
        (status = 400, description = "invalid_input", body = crate::server::openapi::Error),
        (status = 401, description = "invalid_signature: unsigned, mis-signed, stale, replayed or no secret configured; nothing stored", body = crate::server::openapi::Error),
        (status = 404, description = "not_configured: no webhooks of that service", body = crate::server::openapi::Error),
        (status = 413, description = "body_too_large", body = crate::server::openapi::Error)))]
pub async fn receive(
    State(st): State<Arc<AppState>>,
    ApiPath(service): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !APP_WIDE.contains(&service.as_str()) {
        let hint = if PER_LINK.contains(&service.as_str()) {
            format!(" ({service} webhooks are per link: /webhooks/{service}/{{link_id}})")
        } else {
            String::new()
        };
        return Err(ApiError::new(
            ErrorName::NotConfigured,
            format!("this host takes no `{service}` webhooks{hint}"),
        ));
    }
    let body = read_body(&st, &service, body)?;
    let secret = st
        .oauth
        .as_ref()
        .and_then(|o| o.provider(&service).ok())
        .and_then(|p| p.webhook_secret.clone());
    let verified = match service.as_str() {
        "slack" => webhooks::slack::verify(secret.as_ref(), &headers, &body, unix_now()),
        _ => webhooks::quickbooks::verify(secret.as_ref(), &headers, &body),
    }
    .map_err(|r| refused(&st, &service, &r))?;
    respond(&st, &service, None, verified, StatusCode::OK).await
}

/// `POST /webhooks/{service}/{link_id}`: Microsoft Graph, Google push.
#[utoipa::path(post, path = "/webhooks/{service}/{link_id}", tag = "webhooks",
    params(("service" = String, Path, description = "`microsoft` or `google`"), ("link_id" = String, Path, description = "The link whose webhook secret checks it"),
        ("validationToken" = Option<String>, Query, description = "Graph's subscription validation: echoed as text/plain")),
    request_body(content = String, description = "Graph's notifications (JSON); Google sends headers only", content_type = "application/json"),
    summary = "A per-link provider webhook (Graph: clientState and the validationToken handshake; Google: X-Goog-Channel-Token)",
    responses((status = 200, description = "Google: stored (a sync stores nothing); Graph: the validation token as text/plain", content((crate::server::openapi::WebhookReceipt = "application/json"), (String = "text/plain"))),
        (status = 202, description = "Graph: stored", body = crate::server::openapi::WebhookReceipt),
        (status = 400, description = "invalid_input", body = crate::server::openapi::Error),
        (status = 401, description = "invalid_signature: no, a wrong or a replayed secret, or a link without one; nothing stored", body = crate::server::openapi::Error),
        (status = 404, description = "not_configured: no per-link webhooks of that service", body = crate::server::openapi::Error),
        (status = 413, description = "body_too_large", body = crate::server::openapi::Error),
        (status = 500, description = "vault_error: the link's secret does not open", body = crate::server::openapi::Error)))]
pub async fn receive_for_link(
    State(st): State<Arc<AppState>>,
    ApiPath((service, link_id)): ApiPath<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !PER_LINK.contains(&service.as_str()) {
        return Err(ApiError::new(
            ErrorName::NotConfigured,
            format!("this host takes no per-link `{service}` webhooks"),
        ));
    }
    let body = read_body(&st, &service, body)?;
    // An unknown link is refused like a link without a secret: a caller learns nothing
    // about which link ids exist.
    let link = st
        .store
        .find_webhook_links(&service, &WebhookRoute::LinkId(link_id))
        .await?
        .into_iter()
        .next();
    let secret = match &link {
        Some(l) => link_secret(&st, l)?,
        None => None,
    };
    let verified = if service == "microsoft" {
        let token = query.as_deref().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "validationToken")
                .map(|(_, v)| v.into_owned())
        });
        match token {
            Some(t) => webhooks::graph::validation(secret.as_ref(), &t),
            None => webhooks::graph::verify(secret.as_ref(), &body),
        }
    } else {
        webhooks::google::verify(secret.as_ref(), &headers)
    };
    let verified = match verified {
        Ok(v) => v,
        Err(r) => {
            if let Some(l) = &link
                && st.refused_webhook_audit.check(&l.id).is_ok()
            {
                st.audit
                    .record(crate::server::audit::entry(
                        &l.company_id,
                        None,
                        "webhook_refused",
                        "integration",
                        &l.id,
                        Value::Null,
                        json!({"service": service, "reason": r.verdict()}),
                    ))
                    .await;
            }
            return Err(refused(&st, &service, &r));
        }
    };
    let ok = if service == "microsoft" {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    respond(&st, &service, link.as_ref(), verified, ok).await
}

fn link_secret(st: &AppState, link: &LinkRecord) -> Result<Option<Secret>, ApiError> {
    let Some(sealed) = &link.webhook_signature_secret else {
        return Ok(None);
    };
    st.vault
        .decrypt(sealed, &link.webhook_secret_context())
        .map(Some)
        .map_err(|e| {
            ApiError::new(
                ErrorName::VaultError,
                "the link's webhook secret does not open",
            )
            .with_internal(e)
        })
}

/// Store a verified request's events (each before answering), then answer it.
async fn respond(
    st: &AppState,
    service: &str,
    link: Option<&LinkRecord>,
    verified: Verified,
    ok: StatusCode,
) -> Result<Response, ApiError> {
    let (events, retry) = match verified {
        Verified::Handshake { body, content_type } => {
            st.metrics.webhook(service, "handshake");
            return Ok((
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                body,
            )
                .into_response());
        }
        Verified::Events { events, retry } => (events, retry),
    };
    let (mut stored, mut duplicates, mut unrouted) = (0u64, 0u64, 0u64);
    for event in events {
        let targets: Vec<LinkRecord> = match (&event.route, link) {
            (Some(route), _) => st.store.find_webhook_links(service, route).await?,
            (None, Some(l)) => vec![l.clone()],
            (None, None) => Vec::new(),
        };
        if targets.is_empty() {
            unrouted += 1;
        }
        // A workspace linked by several companies: each gets its copy.
        let mut companies = std::collections::BTreeSet::new();
        for target in targets {
            if !companies.insert(target.company_id.clone()) {
                continue;
            }
            if store_event(st, service, &target, &event).await? {
                stored += 1;
            } else {
                duplicates += 1;
            }
        }
    }
    if stored == 0 && duplicates > 0 {
        if retry {
            // The provider did not see our first answer and says so: acknowledged.
            st.metrics.webhook(service, "duplicate");
            return Ok((ok, Json(json!({"stored": 0, "duplicates": duplicates}))).into_response());
        }
        return Err(refused(st, service, &Refusal::Replayed));
    }
    // `acknowledged`: verified but nothing to store (a Google `sync`, Slack's
    // `app_rate_limited`); `unrouted`: events no link is for.
    let verdict = match (stored, unrouted) {
        (1.., _) => "accepted",
        (0, 1..) => "unrouted",
        (0, 0) => "acknowledged",
    };
    st.metrics.webhook(service, verdict);
    Ok((
        ok,
        Json(json!({"stored": stored, "duplicates": duplicates, "unrouted": unrouted})),
    )
        .into_response())
}

async fn store_event(
    st: &AppState,
    service: &str,
    link: &LinkRecord,
    event: &Event,
) -> Result<bool, ApiError> {
    let record = EventRecord {
        id: crate::store::new_object_id(),
        company_id: link.company_id.clone(),
        service: service.to_string(),
        provider_event_id: event.provider_event_id.clone(),
        link_id: Some(link.id.clone()),
        event_type: event.event_type.clone(),
        payload: event.payload.clone(),
        received_at: now(),
    };
    // Stored and queued for delivery to the company's endpoint in one write.
    let inserted = st.deliveries.store(record.clone()).await?;
    if inserted && event.lifecycle {
        // Graph says the subscription needs attention (reauthorize, recreate, resync).
        st.audit
            .record(crate::server::audit::entry(
                &link.company_id,
                None,
                "webhook_subscription_lifecycle",
                "integration",
                &link.id,
                Value::Null,
                json!({
                    "service": service,
                    "lifecycle_event": event.event_type,
                    "subscription_id": event.payload.get("subscriptionId"),
                    "event_id": record.id,
                }),
            ))
            .await;
        // Graph removed the subscription, or wants it reauthorized: the subscription
        // service acts on it (under its lease) after Graph has its answer, which it
        // wants within seconds.
        if let (Some(subs), Some(sid)) = (
            &st.subscriptions,
            event.payload.get("subscriptionId").and_then(Value::as_str),
        ) {
            let (subs, link, kind, sid) = (
                subs.clone(),
                link.clone(),
                event.event_type.clone(),
                sid.to_string(),
            );
            tokio::spawn(async move { subs.lifecycle(&link, &kind, &sid).await });
        }
    }
    Ok(inserted)
}

/// `POST /api/v1/integrations/{service}/{link_id}/webhook-secret`: a new webhook secret
/// for the link (its owner or an admin), replacing any before it; shown once.
#[utoipa::path(post, path = "/api/v1/integrations/{service}/{link_id}/webhook-secret", tag = "webhooks", security(("bearer" = [])),
    params(("service" = String, Path, description = "`microsoft` or `google`"), ("link_id" = String, Path, description = "The link's id")),
    summary = "Make or replace a link's webhook secret (its owner or an admin), shown once with the URL to give the provider",
    responses((status = 200, description = "The secret and URL", body = crate::server::openapi::WebhookSecret),
        (status = 400, description = "invalid_input: a service verified with the app's secret", body = crate::server::openapi::Error),
        (status = 403, description = "access_denied: another member's link", body = crate::server::openapi::Error),
        (status = 404, description = "not_found", body = crate::server::openapi::Error),
        (status = 409, description = "conflict: the link kept changing", body = crate::server::openapi::Error)))]
pub async fn create_secret(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiPath((service, link_id)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    if !PER_LINK.contains(&service.as_str()) {
        return Err(ApiError::new(
            ErrorName::InvalidInput,
            format!(
                "`{service}` webhooks are verified with the app's secret from the config, not a per-link one; per-link webhooks: {}",
                PER_LINK.join(", ")
            ),
        ));
    }
    let mut tries = 0;
    loop {
        let link = super::integrations::managed_link(&st, &caller, &service, &link_id).await?;
        // 32 random bytes, URL-safe: usable as Graph's clientState (at most 128
        // characters) and Google's channel token (at most 256).
        let secret = {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
        };
        let mut updated = link.clone();
        updated.webhook_signature_secret = Some(st.vault.encrypt(
            &secret,
            &sealing::link(&link.company_id, &link.id, sealing::WEBHOOK_SECRET),
        ));
        updated.updated_at = now();
        if st.store.update_link_cas(updated, link.version).await? {
            st.audit
                .record(crate::server::audit::entry(
                    &caller.company_id,
                    Some(&caller.user_id),
                    "webhook_secret_created",
                    "integration",
                    &link.id,
                    json!({"had_secret": link.webhook_signature_secret.is_some()}),
                    json!({"service": service}),
                ))
                .await;
            return Ok(Json(json!({
                "webhook_secret": secret,
                "webhook_url": format!("{}/webhooks/{service}/{}", st.public_url.trim_end_matches('/'), link.id),
            })));
        }
        tries += 1;
        if tries >= 3 {
            return Err(ApiError::new(
                ErrorName::Conflict,
                "the link changed meanwhile; try again",
            ));
        }
    }
}

/// Query parameters of `GET /api/v1/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Only this provider's events.
    service: Option<String>,
    /// Events on the page (whole numbers, range-checked by `whole_number`).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 500)]
    limit: Option<f64>,
    /// Events skipped.
    #[param(value_type = Option<u64>, minimum = 0, maximum = 1000000000)]
    offset: Option<f64>,
}

/// `GET /api/v1/events`: the company's events, newest first (`service`, `limit` up to
/// 500, `offset`); admins only, as the audit log (events come from every member's links).
#[utoipa::path(get, path = "/api/v1/events", tag = "webhooks", security(("bearer" = [])), params(EventParams),
    summary = "The company's events from verified webhooks, newest first",
    responses((status = 200, description = "A page", body = crate::server::openapi::EventPage),
        (status = 400, description = "invalid_input: a filter or paging number", body = crate::server::openapi::Error),
        (status = 403, description = "admin_required", body = crate::server::openapi::Error)))]
pub async fn list(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    params: Result<ApiQuery<EventParams>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let ApiQuery(p) = params?;
    let limit = whole_number(
        "limit",
        p.limit.unwrap_or(50.0),
        1,
        super::audit_log::MAX_LIMIT,
    )?;
    let offset = whole_number(
        "offset",
        p.offset.unwrap_or(0.0),
        0,
        super::audit_log::MAX_OFFSET,
    )?;
    let query = EventQuery {
        service: p.service,
        offset,
        limit: limit + 1,
    };
    let mut events = st.store.list_events(&caller.company_id, &query).await?;
    let more = events.len() as u64 > limit;
    events.truncate(limit as usize);
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let mut deliveries: std::collections::HashMap<String, Value> = st
        .store
        .delivery_statuses(&caller.company_id, &ids)
        .await?
        .iter()
        .map(|d| (d.event_id.clone(), super::event_delivery::delivery_json(d)))
        .collect();
    let events: Vec<Value> = events
        .into_iter()
        .map(|e| {
            json!({
                "delivery": deliveries.remove(&e.id),
                "id": e.id,
                "service": e.service,
                "provider_event_id": e.provider_event_id,
                "link_id": e.link_id,
                "event_type": e.event_type,
                "payload": e.payload,
                "received_at": e.received_at.format(&Rfc3339).unwrap_or_default(),
            })
        })
        .collect();
    Ok(Json(json!({
        "events": events,
        "next_offset": if more { Some(offset + limit) } else { None },
    })))
}
