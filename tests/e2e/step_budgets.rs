//! The budgets that keep one step from taking the host down (issue 18): input
//! schemas refused at load when validating them could cost too much, validation itself
//! bounded, a log and report whose size is capped whatever the module prints, handles
//! and workspace bytes and files capped per step, and one memory cap for all of a
//! component's memories. Each hostile step is stopped with a named error, and the next
//! step on the same host runs normally. In-process on the shared engine and registry,
//! like `hostile_guests.rs`; the components with two memories or a chosen manifest are
//! built here from WAT (`flow8_tests::wat_guest`).

use axum::body::Body;
use flow8_host::components::{self, NewComponent};
use flow8_host::config::HostConfig;
use flow8_host::runtime::error::ErrorName;
use flow8_host::runtime::sandbox::StepLimits;
use flow8_host::runtime::{StepReport, StepRequest};
use flow8_host::store::Store;
use flow8_tests::in_process_host;
use flow8_tests::wat_guest::WatGuest;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tower::ServiceExt;

const COMPANY: &str = "company-a";

struct Host {
    host: flow8_host::app::Host,
    _data: tempfile::TempDir,
}

async fn host() -> Host {
    let data = tempfile::tempdir().unwrap();
    let host = in_process_host(HostConfig::default(), data.path()).await;
    let new: NewComponent = serde_json::from_value(json!({
        "name": "api", "kind": "http",
        "config": {"provider": "http", "base_url": "http://127.0.0.1:9", "auth_value": "Bearer budget-canary-77"}
    }))
    .unwrap();
    host.store
        .insert_component(
            components::prepare(new, COMPANY, &host.vault, host.modules.catalogue()).unwrap(),
        )
        .await
        .unwrap();
    Host { host, _data: data }
}

struct Step {
    module_ref: String,
    input: Value,
    limits: StepLimits,
    workspace: Option<PathBuf>,
    bind_api: bool,
}

fn hostile(input: Value) -> Step {
    Step {
        module_ref: "hostile".into(),
        input,
        limits: StepLimits::default(),
        workspace: None,
        bind_api: false,
    }
}

impl Host {
    async fn run(&self, step: Step) -> StepReport {
        let mut bindings = BTreeMap::new();
        if step.bind_api {
            bindings.insert("api".to_string(), "api".to_string());
        }
        self.host
            .runtime
            .run_step(StepRequest {
                company_id: COMPANY.into(),
                module_ref: step.module_ref,
                input: step.input,
                bindings,
                limits: Some(step.limits),
                workspace: step.workspace,
                pinned_to: Vec::new(),
            })
            .await
    }

    /// The host still serves a normal step.
    async fn assert_healthy(&self) {
        let r = self.run(hostile(json!({"attack": "ok"}))).await;
        let out = r.result.expect("a normal step after an attack");
        assert_eq!(out["ok"], true);
    }
}

fn error_of(r: &StepReport) -> (ErrorName, String) {
    match &r.result {
        Err(e) => (e.name, e.message.clone()),
        Ok(v) => panic!("expected an error, got output {v}"),
    }
}

/// The attack's schema: `anyOf` of two refs to the level below, `levels` deep.
fn fan_out(levels: usize) -> Value {
    let mut defs = Map::new();
    defs.insert("l0".into(), json!({"type": "string"}));
    for i in 1..=levels {
        let below = format!("#/$defs/l{}", i - 1);
        defs.insert(
            format!("l{i}"),
            json!({"anyOf": [{"$ref": below}, {"$ref": below, "maxLength": 64}]}),
        );
    }
    json!({"$defs": defs, "$ref": format!("#/$defs/l{levels}")})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exponential_input_schema_is_refused_when_the_module_loads() {
    let h = host().await;
    let dir = tempfile::tempdir().unwrap();
    // 2^20 evaluations for an input every branch refuses (a number, not a string):
    // before the budget this validated, slowly; at 40 levels it would not finish.
    let bomb = WatGuest::with_schema("schema-bomb", fan_out(20)).write(dir.path(), "bomb");
    let r = h
        .run(Step {
            module_ref: bomb.display().to_string(),
            ..hostile(json!(5))
        })
        .await;
    let (name, message) = error_of(&r);
    assert_eq!(name, ErrorName::InvalidManifest, "{message}");
    assert!(
        message.starts_with("input_schema: validating one value could evaluate"),
        "{message}"
    );
    assert!(message.contains("anyOf"), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");

    // The other budgets, each with its own one-line reason.
    let cases = [
        (
            json!({"$defs": {"a": {"items": {"$ref": "#/$defs/a"}}}, "$ref": "#/$defs/a"}),
            "recursive schemas are not supported",
        ),
        (
            json!({"$ref": "https://schemas.example/x.json"}),
            "not a local JSON pointer",
        ),
        (
            json!({"type": "string", "pattern": "^(?=a)a+$"}),
            "linear time",
        ),
        (
            json!({"enum": ["x".repeat(70 * 1024)]}),
            "at most 65536 are allowed",
        ),
    ];
    for (i, (schema, want)) in cases.into_iter().enumerate() {
        let path =
            WatGuest::with_schema("schema-bad", schema).write(dir.path(), &format!("bad{i}"));
        let r = h
            .run(Step {
                module_ref: path.display().to_string(),
                ..hostile(json!({}))
            })
            .await;
        let (name, message) = error_of(&r);
        assert_eq!(name, ErrorName::InvalidManifest, "{message}");
        assert!(message.contains(want), "case {i}: {message}");
        assert!(message.starts_with("input_schema: "), "case {i}: {message}");
    }

    // A schema within the budgets loads and validates (so the refusals above are the
    // budgets, not a component that never loads).
    let fine = WatGuest::with_schema("schema-fine", fan_out(4)).write(dir.path(), "fine");
    let r = h
        .run(Step {
            module_ref: fine.display().to_string(),
            ..hostile(json!("a string"))
        })
        .await;
    assert_eq!(r.result.expect("valid input runs")["grown"], true);
    let r = h
        .run(Step {
            module_ref: fine.display().to_string(),
            ..hostile(json!(5))
        })
        .await;
    assert_eq!(error_of(&r).0, ErrorName::InvalidInput, "{r:?}");
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_work_and_input_size_are_bounded() {
    let h = host().await;
    let dir = tempfile::tempdir().unwrap();
    // About 250 subschemas per value, 400,000 values: 10^8 evaluations, past the
    // host's validation budget; refused before any of it runs.
    let mut schema = fan_out(6);
    let top = schema["$ref"].take();
    schema["type"] = json!("array");
    schema["items"] = json!({"$ref": top});
    schema.as_object_mut().unwrap().remove("$ref");
    let guest = WatGuest::with_schema("schema-wide", schema).write(dir.path(), "wide");
    let many: Vec<Value> = (0..400_000).map(|_| json!(5)).collect();
    let r = h
        .run(Step {
            module_ref: guest.display().to_string(),
            ..hostile(Value::Array(many))
        })
        .await;
    let (name, message) = error_of(&r);
    assert_eq!(name, ErrorName::LimitExceeded, "{message}");
    assert!(message.contains("400001 values"), "{message}");

    // Work above the in-place threshold runs on a blocking thread and still answers.
    let some: Vec<Value> = (0..2_000).map(|_| json!("s")).collect();
    let r = h
        .run(Step {
            module_ref: guest.display().to_string(),
            ..hostile(Value::Array(some))
        })
        .await;
    assert_eq!(r.result.expect("validated off the runtime")["grown"], true);

    // An input larger than the host takes.
    let r = h
        .run(hostile(
            json!({"attack": "ok", "pad": "p".repeat(17 * 1024 * 1024)}),
        ))
        .await;
    let (name, message) = error_of(&r);
    assert_eq!(name, ErrorName::InvalidInput, "{message}");
    assert!(message.contains("at most 16777216"), "{message}");
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_lines_a_huge_error_and_repeated_reads_do_not_grow_the_report() {
    let h = host().await;
    let limits = StepLimits::default();
    // Two million empty stdout lines: each costs the log its overhead.
    let r = h
        .run(hostile(
            json!({"attack": "empty_lines", "lines": 2_000_000}),
        ))
        .await;
    assert_eq!(
        r.result.as_ref().expect("the step itself succeeds")["lines"],
        2_000_000
    );
    assert!(r.log_truncated, "{} lines kept", r.log.len());
    assert!(
        r.log.len() <= limits.log_bytes / flow8_host::runtime::sandbox::LOG_LINE_OVERHEAD,
        "{} lines kept",
        r.log.len()
    );
    let size = serde_json::to_vec(&r).unwrap().len();
    assert!(
        size <= limits.log_bytes + limits.output_bytes + 4096,
        "the report is {size} bytes"
    );

    // An 8 MiB error message under a 1 KiB output cap is cut, with a marker.
    let r = h
        .run(Step {
            limits: StepLimits {
                output_bytes: 1024,
                ..StepLimits::default()
            },
            ..hostile(json!({"attack": "big_error", "size": 8 * 1024 * 1024}))
        })
        .await;
    let (name, message) = error_of(&r);
    assert_eq!(name, ErrorName::ModuleError);
    assert!(message.len() <= 1024, "{} bytes", message.len());
    assert!(
        message.ends_with("[truncated: 8388608 bytes in all]"),
        "{message}"
    );

    // Ten thousand reads of one credential are one use in the report.
    let r = h
        .run(Step {
            bind_api: true,
            ..hostile(json!({"attack": "read_many", "binding": "api", "times": 10_000}))
        })
        .await;
    assert_eq!(r.result.as_ref().unwrap()["read"], 10_000, "{r:?}");
    assert_eq!(
        r.credentials_used.len(),
        1,
        "{:?}",
        r.credentials_used.len()
    );
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_handles_and_workspace_bytes_and_files_are_capped_per_step() {
    let h = host().await;
    let ws = tempfile::tempdir().unwrap();
    let in_ws = |input: Value, limits: StepLimits| Step {
        workspace: Some(ws.path().to_path_buf()),
        limits,
        ..hostile(input)
    };
    let defaults = StepLimits::default();

    // 20,000 handles on one file: the resource table's capacity stops it.
    let r = h
        .run(in_ws(
            json!({"attack": "hold_open", "count": 20_000}),
            defaults,
        ))
        .await;
    let (name, message) = error_of(&r);
    assert_eq!(name, ErrorName::LimitExceeded, "{message}");
    assert!(message.contains("256 handles"), "{message}");
    h.assert_healthy().await;

    let small = StepLimits {
        workspace_bytes: 8 * 1024 * 1024,
        workspace_files: 100,
        ..defaults
    };
    // 64 MiB through a file's stream under an 8 MiB budget.
    let r = h
        .run(in_ws(json!({"attack": "fill_workspace", "mib": 64}), small))
        .await;
    let (name, message) = error_of(&r);
    assert_eq!(name, ErrorName::LimitExceeded, "{message}");
    assert!(
        message.contains("wrote more than 8388608 bytes"),
        "{message}"
    );
    let on_disk = std::fs::metadata(ws.path().join("fill.bin")).unwrap().len();
    assert!(
        on_disk <= 8 * 1024 * 1024,
        "{on_disk} bytes reached the disk"
    );
    h.assert_healthy().await;

    // A sparse 1 GiB file made with set_len counts its size.
    let r = h
        .run(in_ws(
            json!({"attack": "grow_file", "bytes": 1u64 << 30}),
            small,
        ))
        .await;
    assert_eq!(error_of(&r).0, ErrorName::LimitExceeded, "{r:?}");

    // 2,000 new files under a budget of 100.
    let r = h
        .run(in_ws(
            json!({"attack": "many_files", "count": 2_000}),
            small,
        ))
        .await;
    let (name, message) = error_of(&r);
    assert_eq!(name, ErrorName::LimitExceeded, "{message}");
    assert!(message.contains("more than 100 files"), "{message}");
    let created = std::fs::read_dir(ws.path().join("many")).unwrap().count();
    assert!(created < 100, "{created} files were created");

    // Within the budgets the same attacks are ordinary work.
    let r = h
        .run(in_ws(json!({"attack": "fill_workspace", "mib": 2}), small))
        .await;
    assert_eq!(r.result.expect("2 MiB fits")["written_mib"], 2);
    let r = h
        .run(in_ws(json!({"attack": "hold_open", "count": 50}), defaults))
        .await;
    assert_eq!(r.result.expect("50 handles fit")["opened"], 50);
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_cap_covers_all_of_a_components_memories() {
    let h = host().await;
    let dir = tempfile::tempdir().unwrap();
    let guest = |grow: u32, file: &str| {
        let mut g = WatGuest::with_schema("two-memories", json!({}));
        g.grow_first = grow;
        g.grow_second = grow;
        g.write(dir.path(), file)
    };
    let cap = StepLimits {
        memory_bytes: 16 * 1024 * 1024,
        ..StepLimits::default()
    };
    // 1 MiB more in each memory: fine.
    let r = h
        .run(Step {
            module_ref: guest(16, "small").display().to_string(),
            limits: cap,
            ..hostile(json!({}))
        })
        .await;
    assert_eq!(r.result.expect("a little memory")["grown"], true);
    // 10 MiB more in each: under the cap alone, over it together.
    let r = h
        .run(Step {
            module_ref: guest(160, "big").display().to_string(),
            limits: cap,
            ..hostile(json!({}))
        })
        .await;
    let (name, message) = error_of(&r);
    assert_eq!(name, ErrorName::MemoryLimitExceeded, "{message}");
    assert!(message.contains("16777216"), "{message}");
    h.assert_healthy().await;
}

/// Through the API: a schema bomb is refused at install, a flood of empty lines makes
/// a small answer, the new limits are range-checked, and the next step runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_a_schema_bomb_and_answers_small_reports() {
    let h = host().await;
    let (token, _) =
        flow8_host::server::auth::create_token(&h.host.store, COMPANY, "alice", true, "t")
            .await
            .unwrap();
    let app = flow8_host::server::router(h.host.api_state());
    let call = |uri: &str, content_type: &str, body: Vec<u8>| {
        let req = http::Request::builder()
            .method("POST")
            .uri(uri)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap();
        let app = app.clone();
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
                .await
                .unwrap();
            (
                status,
                bytes.len(),
                serde_json::from_slice::<Value>(&bytes).unwrap(),
            )
        }
    };
    let bomb = WatGuest::with_schema("schema-bomb", fan_out(40)).component();
    let (status, _, v) = call("/api/v1/admin/modules", "application/wasm", bomb).await;
    assert_eq!(status.as_u16(), 422, "{v}");
    assert_eq!(v["error"], "invalid_manifest", "{v}");

    let step = |input: Value, limits: Value| {
        json!({"name": "s", "module_ref": "hostile", "input_mapping": input, "limits": limits})
            .to_string()
            .into_bytes()
    };
    let (status, len, v) = call(
        "/api/v1/steps",
        "application/json",
        step(
            json!({"attack": "empty_lines", "lines": 3_000_000}),
            json!({}),
        ),
    )
    .await;
    assert_eq!(status.as_u16(), 200, "{v}");
    assert_eq!(v["log_truncated"], true);
    assert!(len < 512 * 1024, "the answer is {len} bytes");

    for limits in [
        json!({"open_files": 1}),
        json!({"open_files": 100_000}),
        json!({"workspace_mib": 0}),
        json!({"workspace_files": 10_000_000}),
    ] {
        let (status, _, v) = call(
            "/api/v1/steps",
            "application/json",
            step(json!({"attack": "ok"}), limits.clone()),
        )
        .await;
        assert_eq!(status.as_u16(), 400, "{limits}: {v}");
        let key = limits.as_object().unwrap().keys().next().unwrap().clone();
        assert!(v["message"].as_str().unwrap().contains(&key), "{v}");
    }
    let (status, _, v) = call(
        "/api/v1/steps",
        "application/json",
        step(
            json!({"attack": "ok"}),
            json!({"open_files": 64, "workspace_mib": 1, "workspace_files": 10}),
        ),
    )
    .await;
    assert_eq!((status.as_u16(), &v["status"]), (200, &json!("ok")), "{v}");
}
