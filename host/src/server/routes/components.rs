//! `/api/v1/admin/components`: API-key components (flow8's "Storing API Keys"). Answers
//! carry `config_summary`, never a credential. Rotation is the flow8 procedure: create
//! the new component, repoint flows, delete the old one.

use crate::catalogue::Catalogue;
use crate::components::{self, NewComponent};
use crate::server::AppState;
use crate::server::audit;
use crate::server::auth::Caller;
use crate::server::error::ApiError;
use crate::server::extract::ApiJson;
use crate::server::extract::ApiPath;
use crate::store::{ComponentRecord, Store};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;

/// The API's view of a component.
pub fn summary(catalogue: &Catalogue, c: &ComponentRecord) -> Value {
    json!({
        "id": c.id,
        "name": c.name,
        "kind": c.kind,
        "config_summary": components::config_summary(catalogue, c),
        "is_default": c.is_default,
        "created_at": c.created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
    })
}

fn audit_state(catalogue: &Catalogue, c: &ComponentRecord) -> Value {
    json!({"name": c.name, "kind": c.kind, "config_summary": components::config_summary(catalogue, c), "is_default": c.is_default})
}

/// `POST /api/v1/admin/components`
#[utoipa::path(post, path = "/api/v1/admin/components", tag = "components", security(("bearer" = [])),
    summary = "Create an API-key component (flow8's body); answers config_summary, never a credential",
    request_body = crate::server::openapi::NewComponent,
    responses((status = 201, description = "Created", body = crate::server::openapi::Component),
        (status = 400, description = "invalid_input: the body or a field is not valid", body = crate::server::openapi::Error),
        (status = 403, description = "admin_required", body = crate::server::openapi::Error), (status = 409, description = "conflict: a component of that name exists", body = crate::server::openapi::Error)))]
pub async fn create(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<NewComponent>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require_admin()?;
    let record = components::prepare(body, &caller.company_id, &st.vault, st.modules.catalogue())
        .map_err(|e| ApiError::invalid_input(e.to_string()))?;
    st.store.insert_component(record.clone()).await?;
    audit::record(
        &st.store,
        &caller.company_id,
        Some(&caller.user_id),
        "component_created",
        "component",
        &record.id,
        json!({}),
        audit_state(st.modules.catalogue(), &record),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(summary(st.modules.catalogue(), &record)),
    ))
}

async fn list_all(st: &AppState, caller: &Caller) -> Result<Json<Value>, ApiError> {
    let list = st.store.list_components(&caller.company_id).await?;
    Ok(Json(
        json!({"components": list.iter().map(|c| summary(st.modules.catalogue(), c)).collect::<Vec<_>>()}),
    ))
}

/// `GET /api/v1/admin/components`
#[utoipa::path(get, path = "/api/v1/admin/components", tag = "components", security(("bearer" = [])),
    summary = "The company's components",
    responses((status = 200, description = "Summaries", body = crate::server::openapi::ComponentList), (status = 403, description = "admin_required", body = crate::server::openapi::Error)))]
pub async fn list(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    list_all(&st, &caller).await
}

/// `GET /api/v1/components`: members see the summaries too (to bind components to steps).
#[utoipa::path(get, path = "/api/v1/components", tag = "components", security(("bearer" = [])),
    summary = "The company's components (summaries), for binding them to steps",
    responses((status = 200, description = "Summaries", body = crate::server::openapi::ComponentList)))]
pub async fn list_for_members(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    list_all(&st, &caller).await
}

async fn find(st: &AppState, caller: &Caller, id: &str) -> Result<ComponentRecord, ApiError> {
    st.store
        .get_component(&caller.company_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("component"))
}

/// `GET /api/v1/admin/components/{id}`
#[utoipa::path(get, path = "/api/v1/admin/components/{id}", tag = "components", security(("bearer" = [])), params(("id" = String, Path, description = "The component's id")),
    summary = "One component",
    responses((status = 200, description = "Its summary", body = crate::server::openapi::Component),
        (status = 400, description = "invalid_input: the id does not decode", body = crate::server::openapi::Error), (status = 403, description = "admin_required", body = crate::server::openapi::Error), (status = 404, description = "not_found", body = crate::server::openapi::Error)))]
pub async fn get_one(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    Ok(Json(summary(
        st.modules.catalogue(),
        &find(&st, &caller, &id).await?,
    )))
}

/// `DELETE /api/v1/admin/components/{id}`
#[utoipa::path(delete, path = "/api/v1/admin/components/{id}", tag = "components", security(("bearer" = [])), params(("id" = String, Path, description = "The component's id")),
    summary = "Delete a component",
    responses((status = 204, description = "Deleted"),
        (status = 400, description = "invalid_input: the id does not decode", body = crate::server::openapi::Error), (status = 403, description = "admin_required", body = crate::server::openapi::Error), (status = 404, description = "not_found", body = crate::server::openapi::Error)))]
pub async fn remove(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let record = find(&st, &caller, &id).await?;
    if !st.store.delete_component(&caller.company_id, &id).await? {
        return Err(ApiError::not_found("component"));
    }
    audit::record(
        &st.store,
        &caller.company_id,
        Some(&caller.user_id),
        "component_deleted",
        "component",
        &id,
        audit_state(st.modules.catalogue(), &record),
        json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/admin/components/{id}/default`
#[utoipa::path(post, path = "/api/v1/admin/components/{id}/default", tag = "components", security(("bearer" = [])), params(("id" = String, Path, description = "The component's id")),
    summary = "Make a component the default of its kind",
    responses((status = 200, description = "Its summary", body = crate::server::openapi::Component),
        (status = 400, description = "invalid_input: the id does not decode", body = crate::server::openapi::Error), (status = 403, description = "admin_required", body = crate::server::openapi::Error), (status = 404, description = "not_found", body = crate::server::openapi::Error)))]
pub async fn make_default(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let before = find(&st, &caller, &id).await?;
    if !st
        .store
        .set_default_component(&caller.company_id, &id)
        .await?
    {
        return Err(ApiError::not_found("component"));
    }
    let after = find(&st, &caller, &id).await?;
    audit::record(
        &st.store,
        &caller.company_id,
        Some(&caller.user_id),
        "component_made_default",
        "component",
        &id,
        audit_state(st.modules.catalogue(), &before),
        audit_state(st.modules.catalogue(), &after),
    )
    .await;
    Ok(Json(summary(st.modules.catalogue(), &after)))
}
