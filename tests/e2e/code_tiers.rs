//! Large modules start on quick-tier code (Winch) and move to optimised code (Cranelift)
//! once it is compiled (issue 19 item 4). Each test has its own engine whose quick tier
//! takes every module, so the small hostile guest stands in for a JavaScript runtime:
//! every limit holds on quick code, and the optimised code replaces it and is what the
//! compile cache gives the next host.

use flow8_host::app::{Host, HostSettings};
use flow8_host::config::HostConfig;
use flow8_host::runtime::engine::CodeTier;
use flow8_host::runtime::error::ErrorName;
use flow8_host::runtime::sandbox::StepLimits;
use flow8_host::runtime::{EngineConfig, SandboxEngine, StepReport, StepRequest};
use flow8_host::vault::{MasterKey, Vault};
use flow8_tests::wasm_dir;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// A host whose engine starts every module on the quick tier, moving it to optimised
/// code when `tier_up`; its compile cache in `cache_dir`.
async fn quick_host(data: &Path, cache_dir: &Path, tier_up: bool) -> Host {
    let engine = SandboxEngine::new(EngineConfig {
        pool_instances: 4,
        quick_tier_min_bytes: Some(0),
        tier_up,
        ..EngineConfig::default()
    })
    .unwrap();
    let settings = HostSettings::new(HostConfig::default(), data)
        .module_dirs([wasm_dir()])
        .engine(engine)
        .vault(Vault::new(MasterKey::generate()));
    let settings = HostSettings {
        cache_dir: Some(cache_dir.to_path_buf()),
        ..settings
    };
    Host::from_config(settings).await.unwrap()
}

async fn run(host: &Host, input: Value, limits: StepLimits) -> StepReport {
    host.runtime
        .run_step(StepRequest {
            company_id: "company-a".into(),
            module_ref: "hostile".into(),
            input,
            bindings: BTreeMap::new(),
            limits: Some(limits),
            workspace: None,
            pinned_to: Vec::new(),
        })
        .await
}

fn error_of(r: &StepReport) -> (ErrorName, String) {
    match &r.result {
        Err(e) => (e.name, e.message.clone()),
        Ok(v) => panic!("expected an error, got output {v}"),
    }
}

async fn tier(host: &Host) -> CodeTier {
    host.modules.resolve("hostile").await.unwrap().tier()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_tier_code_keeps_every_limit() {
    let (data, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host = quick_host(data.path(), cache.path(), false).await;
    let ok = run(&host, json!({"attack": "ok"}), StepLimits::default()).await;
    assert_eq!(ok.result.as_ref().unwrap()["ok"], true, "{ok:?}");
    assert_eq!(tier(&host).await, CodeTier::Quick);

    let deadline = StepLimits {
        deadline: Duration::from_millis(500),
        ..StepLimits::default()
    };
    let r = run(&host, json!({"attack": "loop"}), deadline).await;
    assert_eq!(error_of(&r).0, ErrorName::DeadlineExceeded, "{r:?}");
    assert!(r.duration_ms < 5_000.0, "stopped promptly: {r:?}");

    let memory = StepLimits {
        memory_bytes: 16 * 1024 * 1024,
        ..StepLimits::default()
    };
    let r = run(&host, json!({"attack": "memory_bomb"}), memory).await;
    let (name, message) = error_of(&r);
    assert_eq!(name, ErrorName::MemoryLimitExceeded, "{message}");
    assert!(message.contains("16777216"), "{message}");

    let r = run(&host, json!({"attack": "recursion"}), StepLimits::default()).await;
    let (name, message) = error_of(&r);
    assert_eq!(name, ErrorName::LimitExceeded, "{message}");
    assert!(message.contains("call stack"), "{message}");

    let after = run(&host, json!({"attack": "ok"}), StepLimits::default()).await;
    assert!(after.result.is_ok(), "{after:?}");
    assert_eq!(
        tier(&host).await,
        CodeTier::Quick,
        "no tier up when it is off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_started_on_quick_code_moves_to_optimised_code_which_the_cache_keeps() {
    let (data, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host = quick_host(data.path(), cache.path(), true).await;
    let first = run(
        &host,
        json!({"attack": "ok", "n": 1}),
        StepLimits::default(),
    )
    .await;
    assert_eq!(first.result.as_ref().unwrap()["echo"]["n"], 1, "{first:?}");
    // The tier up runs on its own thread and the host gives no signal when it swaps the
    // code in (a step just starts on the new code), so poll the very thing under test,
    // the module's tier, every 50 ms within a bound.
    let give_up = Instant::now() + Duration::from_secs(120);
    while tier(&host).await != CodeTier::Optimized {
        assert!(Instant::now() < give_up, "the optimised code never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let later = run(
        &host,
        json!({"attack": "ok", "n": 2}),
        StepLimits::default(),
    )
    .await;
    assert_eq!(later.result.as_ref().unwrap()["echo"]["n"], 2, "{later:?}");

    // Another host on the same compile cache finds the optimised code there: it starts
    // on it and compiles nothing.
    let data2 = tempfile::tempdir().unwrap();
    let next = quick_host(data2.path(), cache.path(), false).await;
    assert_eq!(tier(&next).await, CodeTier::Optimized);
    let r = run(
        &next,
        json!({"attack": "ok", "n": 3}),
        StepLimits::default(),
    )
    .await;
    assert_eq!(r.result.as_ref().unwrap()["echo"]["n"], 3, "{r:?}");
}
