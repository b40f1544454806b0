//! `POST /api/v1/steps`: run one flow step, body as in flow8 (`name`, `module_ref`,
//! `input_mapping`) plus `bindings` (binding name -> component name or id, or OAuth
//! link id), optional limits, the workspace and the taint its input carries
//! (`pinned_to`). The answer is the step report (output or named error, log, duration,
//! credentials used, and whether the output is derived from a secret: `tainted`,
//! `pinned_to`); a failed step answers with the status its error maps to. Every
//! credential use is audited.

use crate::error::ErrorName;
use crate::runtime::sandbox::StepLimits;
use crate::runtime::{StepReport, StepRequest};
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::ApiError;
use crate::server::extract::ApiJson;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Per-step limit overrides (each at most the host's default). The numbers arrive as
/// `f64` so that every value from outside, however large, negative or fractional, meets
/// one range check that names the field and its range (`extract::whole_number`) before
/// any arithmetic.
/// The document's maxima are this host's defaults (`openapi::document_for`).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// The step's whole wall time, seconds (at least 0.01, one epoch tick).
    #[schema(minimum = 0.01)]
    deadline_seconds: Option<f64>,
    /// All of the component's memories and tables together, MiB.
    #[schema(value_type = Option<u64>, minimum = 1)]
    memory_mib: Option<f64>,
    /// The output JSON, KiB.
    #[schema(value_type = Option<u64>, minimum = 1)]
    output_kib: Option<f64>,
    /// Handles the module holds at once.
    #[schema(value_type = Option<u64>, minimum = 16)]
    open_files: Option<f64>,
    /// Bytes the module writes to its workspace, MiB.
    #[schema(value_type = Option<u64>, minimum = 1)]
    workspace_mib: Option<f64>,
    /// Files, directories and links the module creates in its workspace.
    #[schema(value_type = Option<u64>, minimum = 1)]
    workspace_files: Option<f64>,
}

/// The step body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepBody {
    /// The step's name in its flow.
    #[serde(default)]
    name: String,
    /// The module: `name` or `name@version` (paths are for the local CLI).
    #[schema(pattern = r"^[A-Za-z0-9_-]+(@[0-9][0-9A-Za-z.+-]*[0-9])?$")]
    module_ref: String,
    /// The input.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    input_mapping: Value,
    /// Binding name -> component name or id.
    #[serde(default)]
    bindings: BTreeMap<String, String>,
    /// Limit overrides.
    #[serde(default)]
    limits: Option<LimitOverrides>,
    /// The step's workspace (a directory name under the company's workspace root),
    /// which the module sees as `/`: where flow8 put the files the step reads.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    workspace: Option<String>,
    /// The taint the input carries: the `pinned_to` of the reports of the steps its
    /// `input_mapping` took outputs from, passed on as they were. It only narrows where
    /// the step may send data.
    #[serde(
        default,
        deserialize_with = "crate::runtime::policy::deserialize_documented_taints"
    )]
    #[schema(value_type = Vec<crate::server::openapi::Taint>)]
    pinned_to: Vec<crate::runtime::policy::Taint>,
}

fn empty_object() -> Value {
    json!({})
}

fn limits(defaults: StepLimits, o: Option<LimitOverrides>) -> Result<StepLimits, ApiError> {
    use crate::runtime::sandbox::{
        MIN_DEADLINE_SECONDS, OPEN_FILES_RANGE, WORKSPACE_FILES_RANGE, WORKSPACE_MIB_RANGE,
    };
    use crate::server::extract::whole_number;
    const MIB: usize = 1024 * 1024;
    let Some(o) = o else {
        return Ok(defaults);
    };
    let mut l = defaults;
    if let Some(d) = o.deadline_seconds {
        // NaN and infinities fail the comparison too.
        if !(MIN_DEADLINE_SECONDS..=defaults.deadline.as_secs_f64()).contains(&d) {
            return Err(ApiError::invalid_input(format!(
                "limits.deadline_seconds must be in [{MIN_DEADLINE_SECONDS}, {}]",
                defaults.deadline.as_secs_f64()
            )));
        }
        l.deadline = Duration::from_secs_f64(d);
    }
    // Each maximum is the host's default (a step lowers a limit, never raises it), so
    // once in range the byte counts below cannot overflow.
    let at_most = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    if let Some(m) = o.memory_mib {
        let m = whole_number(
            "limits.memory_mib",
            m,
            1,
            at_most(defaults.memory_bytes / MIB),
        )?;
        l.memory_bytes = usize::try_from(m).unwrap_or(usize::MAX).saturating_mul(MIB);
    }
    if let Some(k) = o.output_kib {
        let k = whole_number(
            "limits.output_kib",
            k,
            1,
            at_most(defaults.output_bytes / 1024),
        )?;
        l.output_bytes = usize::try_from(k)
            .unwrap_or(usize::MAX)
            .saturating_mul(1024);
    }
    let open_files = o
        .open_files
        .map(|n| {
            whole_number(
                "limits.open_files",
                n,
                at_most(*OPEN_FILES_RANGE.start()),
                at_most(defaults.open_files),
            )
        })
        .transpose()?
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let workspace_mib = o
        .workspace_mib
        .map(|m| {
            whole_number(
                "limits.workspace_mib",
                m,
                *WORKSPACE_MIB_RANGE.start(),
                defaults.workspace_bytes / 1024 / 1024,
            )
        })
        .transpose()?;
    let workspace_files = o
        .workspace_files
        .map(|n| {
            whole_number(
                "limits.workspace_files",
                n,
                *WORKSPACE_FILES_RANGE.start(),
                defaults.workspace_files,
            )
        })
        .transpose()?;
    crate::runtime::sandbox::override_budgets(
        &mut l,
        &defaults,
        open_files,
        workspace_mib,
        workspace_files,
    )
    .map_err(ApiError::invalid_input)?;
    Ok(l)
}

/// `POST /api/v1/steps`: a step report, whether the step failed before it ran (a bad
/// body or limits, the company over its rate) or inside the sandbox; both carry `error`
/// and `message`. A `rate_limit_exceeded` answer says when to retry in `Retry-After`.
#[utoipa::path(post, path = "/api/v1/steps", tag = "steps", security(("bearer" = [])),
    summary = "Run one flow step; the answer is its report, whether it ran or was refused",
    request_body = StepBody,
    responses((status = 200, description = "The step ran: its output", body = crate::server::openapi::StepReport),
        (status = 401, description = "unauthorized (before any step)", body = crate::server::openapi::Error),
        (status = 429, description = "rate_limit_exceeded: the company's step rate or sandbox queue", body = crate::server::openapi::StepReport,
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 400, description = "invalid_json or invalid_input: the body, its limits or the input", body = crate::server::openapi::StepReport),
        (status = 403, description = "access_denied, insufficient_scope or forbidden", body = crate::server::openapi::StepReport),
        (status = 404, description = "module_not_found, not_found (a workspace) or not_configured", body = crate::server::openapi::StepReport),
        (status = 413, description = "body_too_large", body = crate::server::openapi::StepReport),
        (status = 415, description = "unsupported_media_type", body = crate::server::openapi::StepReport),
        (status = 422, description = "the module failed: module_error, a limit, invalid_module or invalid_manifest", body = crate::server::openapi::StepReport),
        (status = 500, description = "internal_error or vault_error", body = crate::server::openapi::StepReport),
        (status = 502, description = "upstream_error, provider_error or network_error", body = crate::server::openapi::StepReport),
        (status = 503, description = "store_unavailable", body = crate::server::openapi::StepReport),
        (status = 504, description = "deadline_exceeded", body = crate::server::openapi::StepReport),
        (status = 507, description = "storage_error", body = crate::server::openapi::StepReport)))]
pub async fn run(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    body: Result<ApiJson<StepBody>, ApiError>,
) -> Response {
    // Counted before the body is looked at: a flood of bad bodies costs the same.
    if let Err(wait) = st.step_rate.check(&caller.company_id) {
        let seconds = u32::try_from(wait.as_secs().saturating_add(1)).unwrap_or(u32::MAX);
        let error = crate::runtime::error::StepError {
            retry_after_seconds: Some(seconds),
            ..crate::runtime::error::StepError::new(
                ErrorName::RateLimitExceeded,
                "this company is starting steps faster than the host allows; retry after the time in Retry-After",
            )
        };
        let mut value = serde_json::to_value(StepReport::refused(error))
            .unwrap_or_else(|_| json!({"status": "error"}));
        value["name"] = Value::String(String::new());
        return answer(StatusCode::TOO_MANY_REQUESTS, value, Some(seconds));
    }
    let (step_name, result) = match body {
        Ok(ApiJson(body)) => {
            use tracing::Instrument;
            let span = tracing::info_span!("api_step", step = %body.name, user = %caller.user_id);
            (
                body.name.clone(),
                run_body(&st, &caller, body).instrument(span).await,
            )
        }
        Err(e) => (String::new(), Err(e)),
    };
    let (status, mut value) = match result {
        Ok(answer) => answer,
        Err(e) => {
            let status = e.status();
            let report =
                StepReport::refused(crate::runtime::error::StepError::new(e.name, e.message));
            (
                status,
                serde_json::to_value(&report).unwrap_or_else(|_| json!({"status": "error"})),
            )
        }
    };
    value["name"] = Value::String(step_name);
    let retry = (status == StatusCode::TOO_MANY_REQUESTS)
        .then(|| value["retry_after_seconds"].as_u64())
        .flatten()
        .and_then(|s| u32::try_from(s).ok());
    answer(status, value, retry)
}

/// The answer, with `Retry-After` when there is a time to wait.
fn answer(status: StatusCode, value: Value, retry_after: Option<u32>) -> Response {
    let mut response = (status, Json(value)).into_response();
    if let Some(s) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    response
}

async fn run_body(
    st: &AppState,
    caller: &Caller,
    body: StepBody,
) -> Result<(StatusCode, Value), ApiError> {
    if body.module_ref.trim().is_empty()
        || body.module_ref.contains('/')
        || body.module_ref.ends_with(".wasm")
    {
        return Err(ApiError::invalid_input(
            "module_ref is a module name or name@version (paths are for the local CLI)",
        ));
    }
    let limits = limits(st.runtime.default_limits(), body.limits)?;
    let workspace = match &body.workspace {
        None => None,
        Some(w) => {
            // Both name a directory: the company id by its own rule, the workspace by
            // the same one.
            crate::company::check(&caller.company_id)
                .map_err(|e| ApiError::invalid_input(e.to_string()))?;
            if !crate::company::is_valid(w) {
                return Err(ApiError::invalid_input(format!(
                    "workspace is a name of 1-{} letters, digits, '-' and '_'",
                    crate::company::MAX_LEN
                )));
            }
            let dir = st.workspaces_dir.join(&caller.company_id).join(w);
            // A well-formed name of a workspace that is not there is a missing
            // resource, like an unknown module, not a malformed body.
            if !dir.is_dir() {
                return Err(ApiError::new(
                    ErrorName::NotFound,
                    format!("workspace `{w}` does not exist"),
                ));
            }
            Some(dir)
        }
    };
    let actor = crate::oauth::ownership::Actor {
        user_id: caller.user_id.clone(),
        admin: caller.admin,
    };
    let report: StepReport = st
        .runtime
        .run_step_as(
            StepRequest {
                company_id: caller.company_id.clone(),
                module_ref: body.module_ref.clone(),
                input: body.input_mapping,
                bindings: body.bindings,
                limits: Some(limits),
                workspace,
                pinned_to: body.pinned_to,
            },
            Some(actor),
        )
        .await;
    let module_name = report
        .module
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_else(|| body.module_ref.clone());
    let outcome = match &report.result {
        Ok(_) => "ok",
        Err(e) => e.name.as_str(),
    };
    // Only a resolved module's name becomes a label (the caller's text never does).
    st.metrics.step(
        report.module.as_ref().map(|m| m.name.as_str()),
        outcome,
        report.duration_ms / 1000.0,
    );

    // Another user's link, used through a share or as an admin: said so in the log.
    for u in &report.other_users_links {
        st.audit
            .record(crate::server::audit::entry(
                &caller.company_id,
                Some(&caller.user_id),
                "link_used_by_other_user",
                "integration",
                &u.link_id,
                json!({}),
                json!({
                    "step": body.name,
                    "module": module_name,
                    "owner": u.owner,
                    "access": u.access.as_str(),
                }),
            ))
            .await;
    }
    // One audit entry per distinct use of a credential.
    let mut seen = std::collections::BTreeSet::new();
    for u in &report.credentials_used {
        if !seen.insert((u.binding.clone(), u.how, u.destination.clone())) {
            continue;
        }
        st.audit
            .record(crate::server::audit::entry(
                &caller.company_id,
                Some(&caller.user_id),
                "credential_used",
                crate::server::audit::resource_type(u.kind),
                &u.resource_id,
                json!({}),
                json!({
                    "step": body.name,
                    "module": module_name,
                    "module_version": report.module.as_ref().map(|m| m.version.clone()),
                    "binding": u.binding,
                    "how": u.how,
                    "destination": u.destination,
                }),
            ))
            .await;
    }
    // Token-usage alerts: each credential the step used, judged against its baseline.
    let module_label = report
        .module
        .as_ref()
        .map(|m| format!("{}@{}", m.name, m.version))
        .unwrap_or_else(|| module_name.clone());
    let used_at = crate::store::now();
    let mut judged = std::collections::BTreeSet::new();
    for u in &report.credentials_used {
        if !judged.insert(u.resource_id.clone()) {
            continue;
        }
        let resource_type = crate::server::audit::resource_type(u.kind);
        for anomaly in st
            .usage
            .observe(&caller.company_id, &u.resource_id, &module_label, used_at)
        {
            st.metrics.usage_alert(anomaly.kind());
            st.audit
                .record(crate::server::audit::entry(
                    &caller.company_id,
                    Some(&caller.user_id),
                    "credential_usage_alert",
                    resource_type,
                    &u.resource_id,
                    json!({}),
                    json!({"kind": anomaly.kind(), "module": module_label, "binding": u.binding}),
                ))
                .await;
            let link = (resource_type == "integration").then_some(u.resource_id.as_str());
            let event = crate::delivery::HostEvent::unusual_use(
                &caller.company_id,
                resource_type,
                &u.resource_id,
                link,
                &module_label,
                &anomaly,
                used_at,
            );
            if let Err(e) = st.deliveries.emit(event).await {
                tracing::warn!(error = %e, "a usage alert could not be stored; it is not delivered");
            }
        }
    }
    let status = match &report.result {
        Ok(_) => StatusCode::OK,
        Err(e) => {
            StatusCode::from_u16(e.name.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        }
    };
    let value = serde_json::to_value(&report).map_err(|e| {
        ApiError::new(
            ErrorName::InternalError,
            "the step report could not be written",
        )
        .with_internal(e)
    })?;
    Ok((status, value))
}

/// Property tests of the step body: any JSON, and any numbers in `limits` (huge,
/// negative, fractional, not finite), is read or refused, never a panic, and limits a
/// body sets are never above the host's defaults.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn number() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            (0u64..100_000).prop_map(|n| n as f64),
            Just(17_592_186_044_416.0),
            Just(f64::MAX),
            Just(f64::NAN),
            Just(-0.0),
            Just(0.5),
        ]
    }

    fn json_number(n: f64) -> Value {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn limits_from_any_numbers_are_refused_or_within_the_defaults(
            fields in prop::collection::vec((0usize..7, number()), 0..7)
        ) {
            const NAMES: [&str; 7] = [
                "deadline_seconds", "memory_mib", "output_kib", "open_files",
                "workspace_mib", "workspace_files", "unknown",
            ];
            let mut o = serde_json::Map::new();
            for (i, n) in &fields {
                o.insert(NAMES[*i].into(), json_number(*n));
            }
            let body = json!({"module_ref": "http-request", "limits": o});
            let Ok(body) = serde_json::from_value::<StepBody>(body) else {
                return Ok(());
            };
            let defaults = StepLimits::default();
            match limits(defaults, body.limits) {
                Err(e) => prop_assert_eq!(e.name, ErrorName::InvalidInput),
                Ok(l) => {
                    prop_assert!(l.deadline <= defaults.deadline);
                    prop_assert!(l.deadline >= Duration::from_millis(10), "{:?}", l.deadline);
                    prop_assert!(l.memory_bytes <= defaults.memory_bytes && l.memory_bytes > 0);
                    prop_assert!(l.output_bytes <= defaults.output_bytes && l.output_bytes > 0);
                    prop_assert!(l.open_files <= defaults.open_files);
                    prop_assert!(l.workspace_bytes <= defaults.workspace_bytes);
                    prop_assert!(l.workspace_files <= defaults.workspace_files);
                }
            }
        }

        #[test]
        fn any_json_body_is_read_or_refused(body in json_value(3)) {
            let _ = serde_json::from_value::<StepBody>(body);
        }
    }

    /// A deadline too short for the clock that stops a module (schemathesis sent
    /// 1.4e-45, which became 0 ns and a `504 deadline_exceeded` for every step) is
    /// refused by name; the shortest one allowed is taken.
    #[test]
    fn a_deadline_shorter_than_one_tick_is_refused() {
        let defaults = StepLimits::default();
        for tiny in [1.401298464324817e-45, 5e-324, 0.0099] {
            let body: StepBody = serde_json::from_value(
                json!({"module_ref": "m", "limits": {"deadline_seconds": tiny}}),
            )
            .unwrap();
            let e = limits(defaults, body.limits).unwrap_err();
            assert_eq!(e.name, ErrorName::InvalidInput, "{tiny}");
            assert!(
                e.message
                    .contains("limits.deadline_seconds must be in [0.01, 30]"),
                "{}",
                e.message
            );
        }
        let body: StepBody = serde_json::from_value(
            json!({"module_ref": "m", "limits": {"deadline_seconds": 0.01}}),
        )
        .unwrap();
        let l = limits(defaults, body.limits).unwrap();
        assert_eq!(l.deadline, Duration::from_millis(10));
    }

    /// JSON values a few levels deep, with the body's own field names as keys often.
    fn json_value(depth: u32) -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            prop::sample::select(
                &[
                    "name",
                    "module_ref",
                    "input_mapping",
                    "bindings",
                    "limits",
                    "workspace",
                    "pinned_to",
                    "credential",
                    "service",
                    "pins",
                    "memory_mib",
                ][..]
            )
            .prop_map(str::to_string),
            "[a-z_]{0,8}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            number().prop_map(json_number),
            "[ -~]{0,12}".prop_map(Value::String),
            Just(json!("https://slack.com/api/")),
        ];
        leaf.prop_recursive(depth, 32, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
