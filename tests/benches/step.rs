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

/// Steps per second through the REST API (http-request against a loopback server) at
/// concurrency 32, beside native reqwest making the same requests.
async fn api_throughput(engine: Arc<flow8_host::runtime::SandboxEngine>, cache: CompileCache) {
    use flow8_host::server::{AppState, auth, serve};
    let requests: usize = std::env::var("BENCH_API_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let concurrency = 32;
    let upstream = flow8_tests::RecordingServer::start();
    let data = tempfile::tempdir().unwrap();
    let vault = Arc::new(Vault::new(MasterKey::generate()));
    let store = Arc::new(EmbeddedStore::open(data.path()).await.unwrap());
    let new: NewComponent = serde_json::from_value(serde_json::json!({
        "name": "api", "kind": "http",
        "config": {"provider": "http", "base_url": upstream.url(""), "auth_value": "Bearer bench-secret-123", "max_retries": 0}
    }))
    .unwrap();
    store
        .insert_component(components::prepare(new, "bench", &vault).unwrap())
        .await
        .unwrap();
    let (token, _) = auth::create_token(&*store, "bench", "bench-user", false, "bench")
        .await
        .unwrap();
    let registry = Arc::new(ModuleRegistry::new(engine, cache, vec![wasm_dir()]));
    let outbound = OutboundClient::new(OutboundPolicy {
        allow_loopback: true,
        ..OutboundPolicy::default()
    })
    .unwrap();
    let state = Arc::new(AppState {
        runtime: Runtime::new(registry, outbound, store, vault, StepLimits::default()),
        metrics: Default::default(),
        install_dir: data.path().join("company-modules"),
        workspaces_dir: data.path().join("workspaces"),
        max_body_bytes: 1024 * 1024,
        max_module_bytes: 64 * 1024 * 1024,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}/api/v1/steps", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, state, std::future::pending()));
    let client = reqwest::Client::new();
    let body = serde_json::json!({"name": "bench", "module_ref": "http-request",
        "input_mapping": {"url": "/ping"}, "bindings": {"request": "api"}})
    .to_string();
    let target = upstream.url("/ping");

    async fn run_load<F, Fut>(
        requests: usize,
        concurrency: usize,
        f: F,
    ) -> (Duration, Vec<Duration>)
    where
        F: Fn() -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let f = f.clone();
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                    let t = Instant::now();
                    f().await;
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        (start.elapsed(), all)
    }

    // Warm both paths (connection pools, compiled module).
    let warm = {
        let (client, target, api, body, token) = (
            client.clone(),
            target.clone(),
            api.clone(),
            body.clone(),
            token.clone(),
        );
        move || {
            let (client, target, api, body, token) = (
                client.clone(),
                target.clone(),
                api.clone(),
                body.clone(),
                token.clone(),
            );
            async move {
                assert!(
                    client
                        .get(&target)
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .is_success()
                );
                let r = client
                    .post(&api)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.text().await.unwrap());
            }
        }
    };
    run_load(200, concurrency, warm).await;

    let native = {
        let (client, target) = (client.clone(), target.clone());
        move || {
            let (client, target) = (client.clone(), target.clone());
            async move {
                let r = client.get(&target).send().await.unwrap();
                assert!(r.status().is_success());
                r.bytes().await.unwrap();
            }
        }
    };
    let (native_total, native_lat) = run_load(requests, concurrency, native).await;
    let steps = {
        let (client, api, body, token) = (client.clone(), api.clone(), body.clone(), token.clone());
        move || {
            let (client, api, body, token) =
                (client.clone(), api.clone(), body.clone(), token.clone());
            async move {
                let r = client
                    .post(&api)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                r.bytes().await.unwrap();
            }
        }
    };
    let (steps_total, steps_lat) = run_load(requests, concurrency, steps).await;
    let native_rps = requests as f64 / native_total.as_secs_f64();
    let steps_rps = requests as f64 / steps_total.as_secs_f64();
    let n = stats(native_lat);
    let s = stats(steps_lat);
    println!();
    println!(
        "REST API throughput: http-request steps against a loopback server ({requests} requests, concurrency {concurrency})"
    );
    println!("| path | requests/s | p50 | p99 |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| native reqwest -> server (baseline) | {native_rps:.0} | {} | {} |",
        us(n.median),
        us(n.p99)
    );
    println!(
        "| POST /api/v1/steps -> http-request -> server | {steps_rps:.0} | {} | {} |",
        us(s.median),
        us(s.p99)
    );
    println!();
    println!(
        "steps/s ÷ native requests/s = {:.2} (target >= 0.8); added latency per step: p50 {}, p99 {}",
        steps_rps / native_rps,
        us(s.median.saturating_sub(n.median)),
        us(s.p99.saturating_sub(n.p99))
    );
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
    let pooling = engine.pooling();

    println!();
    println!("flow8 host step benchmark ({iterations} iterations, pooling allocator: {pooling})");
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

    api_throughput(engine.clone(), cache.clone()).await;
}
