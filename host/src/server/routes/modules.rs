//! `/api/v1/modules`: the modules a company can run (shared first-party modules plus
//! the ones its admins installed), and installing or removing a third party's `.wasm`.
//! An upload is validated whole (component, world, manifest, hosts, size) before it is
//! accepted, then kept in the store (bytes and metadata), so every host on that store
//! runs it; a new version or a removal is seen by the next step on every host, while
//! steps already running finish on the version they started with.
//!
//! A module can also be installed from an OCI registry the operator lists
//! (`oci.registries`): `POST /api/v1/admin/modules/pull` with `{"reference":
//! "oci://registry/ns/name:tag"}` (or `...@sha256:<manifest digest>`, which the pull
//! checks). Either way the module's signature (the `X-Flow8-Signature` header, or the
//! registry's signature tag) is checked against the trusted keys before anything is
//! stored, and kept beside the module so every load checks it again.

use crate::error::ErrorName;
use crate::runtime::module::LoadedModule;
use crate::runtime::registry::{InstalledEntry, ModuleEntry};
use crate::runtime::review::Capabilities;
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
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// The header a raw upload carries its signature document in.
pub const SIGNATURE_HEADER: &str = "x-flow8-signature";

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
    params(("x-flow8-signature" = Option<String>, Header, description = "The module's signature document (the JSON `flow8-host modules sign` writes)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The component"),
    responses((status = 201, description = "Installed", body = crate::server::openapi::Module),
        (status = 202, description = "Still compiling after `module_install.answer_within_seconds`: the install goes on, and its `status_url` (also the `Location` header) tells how it ends", body = crate::server::openapi::InstallStatus),
        (status = 400, description = "invalid_input", body = crate::server::openapi::Error), (status = 403, description = "admin_required", body = crate::server::openapi::Error), (status = 409, description = "conflict: installed already, or a first-party name", body = crate::server::openapi::Error),
        (status = 422, description = "invalid_module, invalid_manifest, signature_required or signature_invalid", body = crate::server::openapi::Error), (status = 503, description = "store_unavailable", body = crate::server::openapi::Error), (status = 507, description = "storage_error", body = crate::server::openapi::Error)))]
pub async fn install(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, axum::http::HeaderMap, Json<Value>), ApiError> {
    caller.require_admin()?;
    // Past the route's body limit the framework's answer is plain text: name it.
    let body = body.map_err(|e| {
        ApiError::new(
            ErrorName::BodyTooLarge,
            format!("the module could not be read: {}", e.body_text()),
        )
    })?;
    let signature = match headers.get(SIGNATURE_HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::new(
                        ErrorName::SignatureInvalid,
                        "the signature header is not a flow8 module signature",
                    )
                })?
                .to_string(),
        ),
    };
    install_answered(st, caller, body, signature, None).await
}

/// `POST /api/v1/admin/modules/pull` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullBody {
    /// `oci://registry/namespace/name:tag` or `oci://registry/namespace/name@sha256:<hex>`
    /// (the image manifest's digest), on a registry the operator lists.
    #[schema(
        pattern = r"^oci://[A-Za-z0-9.:\[\]-]+/[a-z0-9._/-]+(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(@sha256:[a-f0-9]{64})?$",
        max_length = 1024
    )]
    reference: String,
}

/// `POST /api/v1/admin/modules/pull`: install a module from an OCI registry.
#[utoipa::path(post, path = "/api/v1/admin/modules/pull", tag = "modules", security(("bearer" = [])),
    summary = "Install a module for the company from an OCI registry the operator lists",
    request_body = PullBody,
    responses((status = 201, description = "Installed", body = crate::server::openapi::Module),
        (status = 202, description = "Pulled and still compiling after `module_install.answer_within_seconds`: see its `status_url`", body = crate::server::openapi::InstallStatus),
        (status = 400, description = "invalid_input: not an OCI reference", body = crate::server::openapi::Error), (status = 403, description = "admin_required, or forbidden: a registry the operator does not list", body = crate::server::openapi::Error),
        (status = 404, description = "module_not_found: the registry has no such reference", body = crate::server::openapi::Error), (status = 409, description = "conflict: installed already, or a first-party name", body = crate::server::openapi::Error),
        (status = 422, description = "invalid_module, invalid_manifest, digest_mismatch, signature_required or signature_invalid", body = crate::server::openapi::Error),
        (status = 502, description = "registry_error", body = crate::server::openapi::Error), (status = 503, description = "store_unavailable", body = crate::server::openapi::Error), (status = 507, description = "storage_error", body = crate::server::openapi::Error)))]
pub async fn pull(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    crate::server::extract::ApiJson(body): crate::server::extract::ApiJson<PullBody>,
) -> Result<(StatusCode, axum::http::HeaderMap, Json<Value>), ApiError> {
    use crate::distribution::oci;
    caller.require_admin()?;
    let reference =
        oci::OciRef::parse(&body.reference).map_err(|e| ApiError::new(e.name(), e.to_string()))?;
    // Only registries the operator lists: an admin's reference must not make the host
    // fetch from an address of the admin's choosing (the metadata service, loopback).
    let Some(registry) = st
        .oci
        .registries
        .iter()
        .find(|r| r.host.eq_ignore_ascii_case(reference.registry()))
    else {
        return Err(ApiError::new(
            ErrorName::Forbidden,
            format!(
                "this host does not install from {}; the operator lists registries in `oci.registries`",
                reference.registry()
            ),
        ));
    };
    let access = oci::RegistryAccess {
        insecure: registry.insecure,
        basic: registry.username.clone().zip(registry.password.clone()),
    };
    let pulled = oci::pull(&reference, &access, st.max_module_bytes)
        .await
        .map_err(|e| ApiError::new(e.name(), e.to_string()))?;
    let source = reference.pinned(&pulled.manifest_digest);
    install_answered(
        st,
        caller,
        Bytes::from(pulled.bytes),
        pulled.signature,
        Some(source),
    )
    .await
}

/// Run an install, and answer it when it is done or, once
/// `module_install.answer_within_seconds` have passed, as `202 Accepted` with the module
/// marked compiling (see `server::install_jobs`). The install goes on either way: a
/// client that disconnects loses nothing.
async fn install_answered(
    st: Arc<AppState>,
    caller: Caller,
    bytes: Bytes,
    signature: Option<String>,
    source: Option<String>,
) -> Result<(StatusCode, axum::http::HeaderMap, Json<Value>), ApiError> {
    let work = {
        let (st, caller, bytes) = (st.clone(), caller.clone(), bytes.clone());
        tokio::spawn(async move { install_bytes(&st, &caller, &bytes, signature, source).await })
    };
    let joined = |r: Result<Result<Value, ApiError>, tokio::task::JoinError>| {
        r.unwrap_or_else(|e| {
            Err(
                ApiError::new(ErrorName::InternalError, "the install failed")
                    .with_internal(e.to_string()),
            )
        })
    };
    let mut work = work;
    // A wait of 0 answers every install as compiling, however quick it would be.
    let wait = st.installs.answer_within();
    let waited = if wait.is_zero() {
        None
    } else {
        tokio::time::timeout(wait, &mut work).await.ok()
    };
    match waited {
        Some(r) => Ok((
            StatusCode::CREATED,
            axum::http::HeaderMap::new(),
            Json(joined(r)?),
        )),
        None => {
            let (id, body) = st.installs.start(&caller.company_id, &bytes);
            tracing::info!(install_id = %id, company = %caller.company_id,
                "install still compiling; answered 202");
            let state = st.clone();
            tokio::spawn(async move {
                let result = joined(work.await);
                state.installs.finish(&id, result);
            });
            let mut headers = axum::http::HeaderMap::new();
            if let Ok(v) =
                axum::http::HeaderValue::from_str(body["status_url"].as_str().unwrap_or_default())
            {
                headers.insert(axum::http::header::LOCATION, v);
            }
            Ok((StatusCode::ACCEPTED, headers, Json(body)))
        }
    }
}

/// `GET /api/v1/admin/modules/installs/{install_id}` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InstallWait {
    /// Wait up to this many whole seconds for a compiling install to end, and answer
    /// then (a long poll); 0 or absent answers at once.
    #[param(value_type = Option<u64>, minimum = 0, maximum = 30)]
    wait_seconds: Option<f64>,
}

/// `GET /api/v1/admin/modules/installs/{install_id}`: where an install answered as
/// compiling stands.
#[utoipa::path(get, path = "/api/v1/admin/modules/installs/{install_id}", tag = "modules", security(("bearer" = [])),
    params(("install_id" = String, Path, description = "The id a `202 Accepted` install answer gave"), InstallWait),
    summary = "Where an install that was still compiling stands",
    responses((status = 200, description = "`compiling`, `installed` (with `module`) or `failed` (with `error` and `message`)", body = crate::server::openapi::InstallStatus),
        (status = 400, description = "invalid_input: the id does not decode, or wait_seconds is out of range", body = crate::server::openapi::Error), (status = 403, description = "admin_required", body = crate::server::openapi::Error),
        (status = 404, description = "not_found: no such install of this company on this host, or finished over an hour ago", body = crate::server::openapi::Error)))]
pub async fn install_status(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(install_id): ApiPath<String>,
    crate::server::extract::ApiQuery(q): crate::server::extract::ApiQuery<InstallWait>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let wait = q
        .wait_seconds
        .map(|w| {
            crate::server::extract::whole_number(
                "wait_seconds",
                w,
                0,
                crate::server::install_jobs::MAX_WAIT_SECONDS,
            )
        })
        .transpose()?
        .unwrap_or(0);
    st.installs
        .status_within(
            &caller.company_id,
            &install_id,
            std::time::Duration::from_secs(wait),
        )
        .await
        .map(Json)
        .ok_or_else(|| ApiError::not_found("install"))
}

/// Validate, check the signature, store and audit one module.
async fn install_bytes(
    st: &AppState,
    caller: &Caller,
    body: &[u8],
    signature: Option<String>,
    source: Option<String>,
) -> Result<Value, ApiError> {
    // Installed modules are kept under the company's id: one within the rule.
    crate::company::check(&caller.company_id)
        .map_err(|e| ApiError::invalid_input(e.to_string()))?;
    let registry = &st.modules;
    let module = registry
        .load_bytes(body)
        .await
        .map_err(|e| ApiError::new(e.name, e.message))?;
    let name = module.manifest.name.clone();
    let version = module.manifest.version.clone();
    let signed = registry
        .signature_policy()
        .check(&caller.company_id, &module.digest, signature.as_deref())
        .map_err(|e| ApiError::new(e.name(), format!("{name}@{version}: {e}")))?;
    if registry.is_shared_name(&name).await {
        return Err(ApiError::new(
            ErrorName::Conflict,
            format!("`{name}` is a first-party module; give yours another name"),
        ));
    }
    let review = registry.review_policy();
    if review.forbid_credentials_get && module.manifest.reads_secrets() {
        return Err(ApiError::new(
            ErrorName::Forbidden,
            format!(
                "{name}@{version} declares `credentials.get` (it reads secrets into its memory), which this host does not allow installed modules; attach credentials to requests instead"
            ),
        ));
    }
    let asks = Capabilities::of(&module);
    // An approval of an earlier version carries over when this one asks for nothing
    // more; anything more waits for an admin.
    let carried = if review.require_approval {
        let earlier = st
            .store
            .list_modules(&caller.company_id)
            .await
            .map_err(ApiError::from)?;
        earlier
            .into_iter()
            .filter(|r| r.name == name)
            .filter_map(|r| r.approval)
            .find(|a| {
                serde_json::from_value::<Capabilities>(a.capabilities.clone())
                    .is_ok_and(|approved| asks.beyond(&approved).is_empty())
            })
    } else {
        None
    };
    let approved = !review.require_approval || carried.is_some();
    let record = ModuleRecord {
        company_id: caller.company_id.clone(),
        name: name.clone(),
        version: version.clone(),
        digest: module.digest.clone(),
        size: body.len() as u64,
        installed_at: crate::store::now(),
        installed_by: Some(caller.user_id.clone()),
        // Only a signature that verified is kept (one that did not was refused above).
        signature: signed.signed_by.as_ref().and(signature),
        source: source.clone(),
        approval: carried.clone(),
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
        json!({"name": name, "version": version, "digest": module.digest,
            "signed_by": signed.signed_by, "signature_trusted": signed.trusted, "source": source}),
    )
    .await;
    let mut answer = describe(&module, "company");
    answer["signed_by"] = json!(signed.signed_by);
    answer["source"] = json!(source);
    answer["capabilities"] = json!(asks);
    answer["approval"] = json!({
        "required": review.require_approval,
        "approved": approved,
        "carried_from": carried.map(|a| a.approved_version),
    });
    Ok(answer)
}

/// `POST /api/v1/admin/modules/{name@version}/approval`: approve what an installed
/// module asks for now (its capability set, as the install answered it).
#[utoipa::path(post, path = "/api/v1/admin/modules/{module_ref}/approval", tag = "modules", security(("bearer" = [])),
    params(("module_ref" = String, Path, description = "name@version")),
    summary = "Approve the capabilities an installed module asks for",
    responses((status = 200, description = "Approved", body = crate::server::openapi::Module),
        (status = 400, description = "invalid_input: not name@version", body = crate::server::openapi::Error), (status = 403, description = "admin_required", body = crate::server::openapi::Error), (status = 404, description = "not_found", body = crate::server::openapi::Error),
        (status = 422, description = "signature_required or signature_invalid: the module no longer passes", body = crate::server::openapi::Error),
        (status = 503, description = "store_unavailable", body = crate::server::openapi::Error), (status = 507, description = "storage_error", body = crate::server::openapi::Error)))]
pub async fn approve(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(module_ref): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let Some((name, version)) = module_ref.split_once('@') else {
        return Err(ApiError::invalid_input("name the module as name@version"));
    };
    let records = st
        .store
        .list_modules(&caller.company_id)
        .await
        .map_err(ApiError::from)?;
    let Some(record) = records
        .into_iter()
        .find(|r| r.name == name && r.version == version)
    else {
        return Err(ApiError::not_found("installed module"));
    };
    // What it asks for now, from its bytes (signature checked again on the way).
    let module = st
        .modules
        .resolve_installed_unreviewed(&*st.store, &record)
        .await
        .map_err(|e| ApiError::new(e.name, e.message))?;
    let asks = Capabilities::of(&module);
    let approval = crate::store::ModuleApproval {
        capabilities: json!(asks),
        approved_by: caller.user_id.clone(),
        approved_at: crate::store::now()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        approved_version: version.to_string(),
    };
    let found = st
        .store
        .set_module_approval(&caller.company_id, name, version, approval)
        .await
        .map_err(|e| match e {
            StoreError::Unavailable(_) => ApiError::from(e),
            other => ApiError::new(ErrorName::StorageError, "the approval could not be stored")
                .with_internal(other),
        })?;
    if !found {
        return Err(ApiError::not_found("installed module"));
    }
    audit::record(
        &st.store,
        &caller.company_id,
        Some(&caller.user_id),
        "module_approved",
        "module",
        &module_ref,
        json!({"approval": record.approval.map(|a| a.capabilities)}),
        json!({"name": name, "version": version, "digest": module.digest, "capabilities": asks}),
    )
    .await;
    let mut answer = describe(&module, "company");
    answer["capabilities"] = json!(asks);
    answer["approval"] =
        json!({"required": st.modules.review_policy().require_approval, "approved": true});
    Ok(Json(answer))
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
