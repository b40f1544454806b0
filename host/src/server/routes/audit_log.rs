//! `GET /api/v1/admin/audit`: the company's audit log, newest first, with filters
//! (`action_type`, `resource_type`, `resource_id`, `since`, `until` as RFC 3339) and
//! paging (`limit` up to 500, `offset`).

use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::ApiError;
use crate::server::extract::{ApiQuery, whole_number};
use crate::store::{AuditQuery, Store};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Query parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only entries of this action (`component_created`, `credential_used`, ...).
    action_type: Option<String>,
    /// Only entries about this kind of resource.
    resource_type: Option<String>,
    /// Only entries about this resource.
    resource_id: Option<String>,
    /// From this time on (RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Before this time (RFC 3339).
    #[param(format = DateTime)]
    until: Option<String>,
    /// Entries on the page (whole numbers, range-checked by `whole_number`).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 500)]
    limit: Option<f64>,
    /// Entries skipped.
    #[param(value_type = Option<u64>, minimum = 0, maximum = 1000000000)]
    offset: Option<f64>,
}

/// The most entries one page shows.
pub const MAX_LIMIT: u64 = 500;
/// The furthest a page may start: past any company's log, and far from overflowing the
/// `offset + limit` the next page's offset is.
pub const MAX_OFFSET: u64 = 1_000_000_000;

fn when(name: &str, v: Option<String>) -> Result<Option<OffsetDateTime>, ApiError> {
    v.map(|s| {
        OffsetDateTime::parse(&s, &Rfc3339)
            .map_err(|_| ApiError::invalid_input(format!("`{name}` is not an RFC 3339 time")))
    })
    .transpose()
}

/// `GET /api/v1/admin/audit`
#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "audit", security(("bearer" = [])), params(AuditParams),
    summary = "The audit log, newest first",
    responses((status = 200, description = "A page", body = crate::server::openapi::AuditPage),
        (status = 400, description = "invalid_input: a filter or paging number", body = crate::server::openapi::Error), (status = 403, description = "admin_required", body = crate::server::openapi::Error)))]
pub async fn list(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    params: Result<ApiQuery<AuditParams>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let ApiQuery(p) = params?;
    let limit = whole_number("limit", p.limit.unwrap_or(50.0), 1, MAX_LIMIT)?;
    let offset = whole_number("offset", p.offset.unwrap_or(0.0), 0, MAX_OFFSET)?;
    let query = AuditQuery {
        action_type: p.action_type,
        resource_type: p.resource_type,
        resource_id: p.resource_id,
        since: when("since", p.since)?,
        until: when("until", p.until)?,
        offset,
        limit: limit + 1,
    };
    let mut entries = st.store.list_audit(&caller.company_id, &query).await?;
    let more = entries.len() as u64 > limit;
    entries.truncate(limit as usize);
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|e| {
            json!({
                "id": e.id,
                "action_type": e.action_type,
                "resource_type": e.resource_type,
                "resource_id": e.resource_id,
                "before_state": e.before_state,
                "after_state": e.after_state,
                "timestamp": e.timestamp.format(&Rfc3339).unwrap_or_default(),
                "user_id": e.user_id,
                "company_id": e.company_id,
            })
        })
        .collect();
    Ok(Json(json!({
        "entries": entries,
        "next_offset": if more { Some(offset + limit) } else { None },
    })))
}
