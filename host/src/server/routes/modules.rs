//! `/api/v1/modules`: the modules a company can run (shared first-party modules plus
//! the ones its admins installed), and installing or removing a third party's `.wasm`.
//! An upload is validated whole (component, world, manifest, hosts, size) before it is
//! accepted, then kept in the store (bytes and metadata), so every host on that store
//! runs it; a new version or a removal is seen by the next step on every host, while
//! steps already running finish on the version they started with.

use crate::error::ErrorName;
use crate::runtime::module::LoadedModule;
use crate::runtime::registry::{InstalledEntry, ModuleEntry};
use crate::server::AppState;
use crate::server::audit;
use crate::server::auth::Caller;
use crate::server::error::ApiError;
use crate::server::extract::ApiPath;
use crate::store::{ModuleRecord, Store, StoreError};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;

fn describe(m: &LoadedModule, scope: &str) -> Value {
    json!({
        "name": m.manifest.name,
        "version": m.manifest.version,
        "description": m.manifest.description,
        "digest": m.digest,
        "size": m.size,
        "scope": scope,
        "manifest": m.manifest,
    })
}

fn loaded(entries: &[ModuleEntry], scope: &str) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    entries
        .iter()
        .filter_map(|e| e.module.as_ref().ok())
        .filter(|m| seen.insert(m.digest.clone()))
        .map(|m| describe(m, scope))
        .collect()
}

fn installed(entries: &[InstalledEntry]) -> Vec<Value> {
    entries
        .iter()
        .filter_map(|e| e.module.as_ref().ok())
        .map(|m| describe(m, "company"))
        .collect()
}

/// `GET /api/v1/modules`
#[utoipa::path(get, path = "/api/v1/modules", tag = "modules", security(("bearer" = [])),
    summary = "Modules this company can run",
    responses((status = 200, description = "Modules", body = crate::server::openapi::ModuleList)))]
pub async fn list(State(st): State<Arc<AppState>>, caller: Caller) -> Json<Value> {
    let registry = &st.modules;
    let company = match registry.installed(&*st.store, &caller.company_id).await {
        Ok(entries) => installed(&entries),
        Err(e) => {
            tracing::warn!(error = %e, "installed modules could not be listed");
            Vec::new()
        }
    };
    let mut modules = company;
    modules.extend(loaded(&registry.scan().await, "shared"));
    Json(json!({"modules": modules}))
}

/// `GET /api/v1/modules/{module_ref}` (`name` or `name@version`)
#[utoipa::path(get, path = "/api/v1/modules/{module_ref}", tag = "modules", security(("bearer" = [])), params(("module_ref" = String, Path, description = "name or name@version")),
    summary = "One module by name or name@version",
    responses((status = 200, description = "The module", body = crate::server::openapi::Module),
        (status = 400, description = "invalid_input: the ref does not decode", body = crate::server::openapi::Error), (status = 404, description = "not_found", body = crate::server::openapi::Error)))]
pub async fn get_one(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(module_ref): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    if module_ref.contains('/') || module_ref.ends_with(".wasm") {
        return Err(ApiError::not_found("module"));
    }
    let m = st
        .modules
        .resolve_for(&*st.store, &caller.company_id, &module_ref)
        .await
        .map_err(|_| ApiError::not_found("module"))?;
    Ok(Json(describe(&m, "resolved")))
}

/// `POST /api/v1/admin/modules` with the `.wasm` as the body.
#[utoipa::path(post, path = "/api/v1/admin/modules", tag = "modules", security(("bearer" = [])),
    summary = "Install a module for the company: the .wasm as the body",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The component"),
    responses((status = 201, description = "Installed", body = crate::server::openapi::Module),
        (status = 400, description = "invalid_input", body = crate::server::openapi::Error), (status = 403, description = "admin_required", body = crate::server::openapi::Error), (status = 409, description = "conflict: installed already, or a first-party name", body = crate::server::openapi::Error),
        (status = 422, description = "invalid_module or invalid_manifest", body = crate::server::openapi::Error), (status = 503, description = "store_unavailable", body = crate::server::openapi::Error), (status = 507, description = "storage_error", body = crate::server::openapi::Error)))]
pub async fn install(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require_admin()?;
    // Past the route's body limit the framework's answer is plain text: name it.
    let body = body.map_err(|e| {
        ApiError::new(
            ErrorName::BodyTooLarge,
            format!("the module could not be read: {}", e.body_text()),
        )
    })?;
    // Installed modules are kept under the company's id: one within the rule.
    crate::company::check(&caller.company_id)
        .map_err(|e| ApiError::invalid_input(e.to_string()))?;
    let registry = &st.modules;
    let module = registry
        .load_bytes(&body)
        .await
        .map_err(|e| ApiError::new(e.name, e.message))?;
    let name = module.manifest.name.clone();
    let version = module.manifest.version.clone();
    if registry.is_shared_name(&name).await {
        return Err(ApiError::new(
            ErrorName::Conflict,
            format!("`{name}` is a first-party module; give yours another name"),
        ));
    }
    let record = ModuleRecord {
        company_id: caller.company_id.clone(),
        name: name.clone(),
        version: version.clone(),
        digest: module.digest.clone(),
        size: body.len() as u64,
        installed_at: crate::store::now(),
        installed_by: Some(caller.user_id.clone()),
    };
    st.store
        .put_module(record, body.to_vec())
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => ApiError::new(
                ErrorName::Conflict,
                format!("{name}@{version} is already installed; bump the version"),
            ),
            StoreError::Unavailable(_) => ApiError::from(e),
            other => ApiError::new(ErrorName::StorageError, "the module could not be stored")
                .with_internal(other),
        })?;
    audit::record(
        &st.store,
        &caller.company_id,
        Some(&caller.user_id),
        "module_installed",
        "module",
        &format!("{name}@{version}"),
        json!({}),
        json!({"name": name, "version": version, "digest": module.digest}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(describe(&module, "company"))))
}

/// `DELETE /api/v1/admin/modules/{name@version}`
#[utoipa::path(delete, path = "/api/v1/admin/modules/{module_ref}", tag = "modules", security(("bearer" = [])),
    params(("module_ref" = String, Path, description = "name@version")),
    summary = "Remove an installed module",
    responses((status = 204, description = "Removed"),
        (status = 400, description = "invalid_input: not name@version", body = crate::server::openapi::Error), (status = 403, description = "admin_required", body = crate::server::openapi::Error), (status = 404, description = "not_found", body = crate::server::openapi::Error),
        (status = 503, description = "store_unavailable", body = crate::server::openapi::Error), (status = 507, description = "storage_error", body = crate::server::openapi::Error)))]
pub async fn remove(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(module_ref): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let Some((name, version)) = module_ref.split_once('@') else {
        return Err(ApiError::invalid_input("name the module as name@version"));
    };
    let removed = st
        .store
        .delete_module(&caller.company_id, name, version)
        .await
        .map_err(|e| match e {
            StoreError::Unavailable(_) => ApiError::from(e),
            other => {
                tracing::error!(error = %other, "cannot remove installed module");
                ApiError::new(ErrorName::StorageError, "the module could not be removed")
            }
        })?;
    if removed.is_none() {
        return Err(ApiError::not_found("installed module"));
    }
    audit::record(
        &st.store,
        &caller.company_id,
        Some(&caller.user_id),
        "module_removed",
        "module",
        &module_ref,
        json!({"name": name, "version": version}),
        json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
