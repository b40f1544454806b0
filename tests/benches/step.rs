//! `just bench`: what a step costs, measured in one run against baselines.
//!
//! - native: the same JSON echo a tiny module does, in plain Rust;
//! - raw wasmtime: instantiate + call `execute` of a small module in a bare store;
//! - full host step: resolve the module by name, validate the input, decrypt a bound
//!   credential, build the locked-down sandbox, instantiate, execute, check the output;
//! - module load: a precompiled module from the on-disk cache, and a cold compile.
//!
//! Prints a table of medians and 99th percentiles and the full-step/raw ratio.

use flow8_host::components::{self, NewComponent};
use flow8_host::outbound::{OutboundClient, OutboundPolicy};
use flow8_host::runtime::cache::CompileCache;
use flow8_host::runtime::module::LoadedModule;
use flow8_host::runtime::registry::ModuleRegistry;
use flow8_host::runtime::sandbox::StepLimits;
use flow8_host::runtime::{Runtime, StepRequest, raw_execute};
use flow8_host::store::Store;
use flow8_host::store::embedded::EmbeddedStore;
use flow8_host::vault::{MasterKey, Vault};
use flow8_tests::{shared_engine, wasm, wasm_dir};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Stats {
    median: Duration,
    p99: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        median: at(0.5),
        p99: at(0.99),
    }
}

async fn measure<F, Fut>(iterations: usize, mut f: F) -> Stats
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..iterations / 10 + 1 {
        f().await;
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        f().await;
        samples.push(t.elapsed());
    }
    stats(samples)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let iterations: usize = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let engine = shared_engine();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = CompileCache::at(cache_dir.path()).unwrap();
    let hostile_bytes = std::fs::read(wasm("hostile_guest")).unwrap();
    let http_bytes = std::fs::read(wasm("http_request")).unwrap();

    // Module load: cold compile, then load from the cache.
    let cold = {
        let t = Instant::now();
        LoadedModule::load(&engine, &cache, &http_bytes)
            .await
            .unwrap();
        t.elapsed()
    };
    let warm = measure(50, || async {
        LoadedModule::load(&engine, &cache, &http_bytes)
            .await
            .unwrap();
    })
    .await;

    // Store, vault and a credential for the full step.
    let data = tempfile::tempdir().unwrap();
    let vault = Arc::new(Vault::new(MasterKey::generate()));
    let store = Arc::new(EmbeddedStore::open(data.path()).await.unwrap());
    let new: NewComponent = serde_json::from_value(serde_json::json!({
        "name": "bench-api", "kind": "http",
        "config": {"provider": "http", "base_url": "https://api.example.com", "auth_value": "Bearer bench-secret-123"}
    }))
    .unwrap();
    store
        .insert_component(components::prepare(new, "bench", &vault).unwrap())
        .await
        .unwrap();

    let registry = Arc::new(ModuleRegistry::new(
        engine.clone(),
        cache.clone(),
        vec![wasm_dir()],
    ));
    let runtime = Runtime::new(
        registry.clone(),
        OutboundClient::new(OutboundPolicy::default()).unwrap(),
        store.clone(),
        vault.clone(),
        StepLimits::default(),
    );
    let module = registry.resolve("hostile").await.unwrap();
    let input = serde_json::json!({"attack": "ok", "document_id": "doc_001"});
    let input_text = input.to_string();

    let native = measure(iterations, || async {
        let v: serde_json::Value = serde_json::from_str(std::hint::black_box(&input_text)).unwrap();
        let out = serde_json::json!({"ok": true, "echo": v}).to_string();
        std::hint::black_box(out);
    })
    .await;
    let raw = measure(iterations, || async {
        raw_execute(&engine, &module, &input_text)
            .await
            .unwrap()
            .unwrap();
    })
    .await;
    let mut bindings = BTreeMap::new();
    bindings.insert("api".to_string(), "bench-api".to_string());
    let full = measure(iterations, || async {
        let r = runtime
            .run_step(StepRequest {
                company_id: "bench".into(),
                module_ref: "hostile".into(),
                input: input.clone(),
                bindings: bindings.clone(),
                limits: None,
                workspace: None,
            })
            .await;
        assert!(r.result.is_ok(), "{:?}", r.result);
    })
    .await;
    drop(hostile_bytes);

    println!();
    println!(
        "flow8 host step benchmark ({iterations} iterations, pooling allocator: {})",
        engine.pooling()
    );
    println!("| measurement | median | p99 |");
    println!("| --- | ---: | ---: |");
    println!(
        "| native Rust JSON echo (baseline) | {} | {} |",
        us(native.median),
        us(native.p99)
    );
    println!(
        "| raw wasmtime instantiate + execute (baseline) | {} | {} |",
        us(raw.median),
        us(raw.p99)
    );
    println!(
        "| full host step (resolve, validate, decrypt, sandbox, execute) | {} | {} |",
        us(full.median),
        us(full.p99)
    );
    println!(
        "| load precompiled http-request from cache | {} | {} |",
        us(warm.median),
        us(warm.p99)
    );
    println!("| compile http-request (cold, once) | {} | |", us(cold));
    println!();
    println!(
        "full step / raw wasmtime = {:.2} (target <= 2.0); full step median {} (target <= 100 µs); cached load {} (target <= 5 ms)",
        full.median.as_secs_f64() / raw.median.as_secs_f64(),
        us(full.median),
        us(warm.median)
    );
}
