//! `just bench`: what a step costs, measured in one run against baselines.
//!
//! - native: the same JSON echo a tiny module does, in plain Rust;
//! - raw wasmtime: instantiate + call `execute` of a small module in a bare store;
//! - full host step: resolve the module by name, validate the input, decrypt a bound
//!   credential, build the locked-down sandbox, instantiate, execute, check the output;
//! - module load: a precompiled module from the on-disk cache, and a cold compile.
//!
//! Prints a table of medians and 99th percentiles and the full-step/raw ratio.

use flow8_bench_load::{Load, Stats, measure, run_load, stats, us};
use flow8_host::app::{Host, HostSettings};
use flow8_host::components::{self, NewComponent};
use flow8_host::config::HostConfig;
use flow8_host::runtime::cache::CompileCache;
use flow8_host::runtime::engine::CodeTier;
use flow8_host::runtime::module::LoadedModule;
use flow8_host::runtime::registry::ModuleRegistry;
use flow8_host::runtime::{StepRequest, raw_execute};
use flow8_host::store::{AnyStore, Store};
use flow8_host::vault::{MasterKey, Vault};
use flow8_tests::{shared_engine, wasm, wasm_dir};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The allocator `flow8-host` itself uses (host/src/main.rs), so the in-process
/// figures match the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A host as every command builds it (the composition root), over `registry`, with its
/// embedded store in `data` (or `store`) and a fresh master key.
async fn bench_host(
    config: HostConfig,
    data: &std::path::Path,
    registry: Arc<ModuleRegistry>,
    store: Option<Arc<AnyStore>>,
) -> Host {
    let mut settings = HostSettings::new(config, data)
        .modules(registry)
        .vault(Vault::new(MasterKey::generate()));
    settings.store = store;
    Host::from_config(settings).await.unwrap()
}

/// A step of company `bench` with no limits, workspace or pins of its own.
fn bench_step(
    module_ref: &str,
    input: serde_json::Value,
    bindings: BTreeMap<String, String>,
) -> StepRequest {
    StepRequest {
        company_id: "bench".into(),
        module_ref: module_ref.into(),
        input,
        bindings,
        limits: None,
        workspace: None,
        pinned_to: Vec::new(),
    }
}

/// Add the company `bench`'s http component `name` (base URL `base_url`, a bearer key,
/// no retries) to `host`'s store.
async fn add_http_component(host: &Host, name: &str, base_url: &str) {
    add_component(
        host,
        serde_json::json!({
            "name": name, "kind": "http",
            "config": {"provider": "http", "base_url": base_url, "auth_value": "Bearer bench-secret-123", "max_retries": 0}
        }),
    )
    .await;
}

/// Add the company `bench`'s component from flow8's create body to `host`'s store.
async fn add_component(host: &Host, body: serde_json::Value) {
    let new: NewComponent = serde_json::from_value(body).unwrap();
    host.store
        .insert_component(
            components::prepare(new, "bench", &host.vault, host.modules.catalogue()).unwrap(),
        )
        .await
        .unwrap();
}

/// Serve `host`'s REST API on a loopback port; the URL of its step route.
async fn serve_steps_api(host: &Host) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}/api/v1/steps", listener.local_addr().unwrap());
    tokio::spawn(flow8_host::server::serve(
        listener,
        host.api_state(),
        std::future::pending(),
    ));
    api
}

/// The default configuration with loopback allowed (the bench's servers are local) and
/// a step rate far above what the bench sends: the limiter still runs on every step (its
/// cost is measured) but never refuses one. `BENCH_RECORD_CACHE_SECONDS` sets
/// `record_cache_seconds`.
fn loopback() -> HostConfig {
    let mut config = HostConfig::default();
    config.outbound.allow_loopback = true;
    config.rate_limits.steps_per_second = 100_000.0;
    config.rate_limits.steps_burst = 1_000_000;
    // BENCH_RECORD_CACHE_SECONDS=0 reads the component, link and API token on every step
    // (issue 19 item 6).
    if let Some(seconds) = std::env::var("BENCH_RECORD_CACHE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.record_cache_seconds = seconds;
    }
    config
}

/// Steps per second through the REST API (http-request against a loopback server) at
/// concurrency 32, beside native reqwest making the same requests.
async fn api_throughput(engine: Arc<flow8_host::runtime::SandboxEngine>, cache: CompileCache) {
    use flow8_host::server::auth;
    let requests: usize = bench_number("BENCH_API_REQUESTS", 4000);
    let concurrency: usize = bench_number("BENCH_CONCURRENCY", 32);
    // BENCH_API_PATHS=direct (or api, proxy, native; comma-separated) runs only those
    // paths, for profiling one of them.
    let only: Option<Vec<String>> = std::env::var("BENCH_API_PATHS")
        .ok()
        .map(|v| v.split(',').map(|p| p.trim().to_string()).collect());
    let wanted = |path: &str| only.as_ref().is_none_or(|o| o.iter().any(|p| p == path));
    let upstream = flow8_tests::RecordingServer::start();
    let data = tempfile::tempdir().unwrap();
    let registry = Arc::new(ModuleRegistry::new(engine, cache, vec![wasm_dir()]));
    let host = bench_host(loopback(), data.path(), registry, None).await;
    add_http_component(&host, "api", &upstream.url("")).await;
    let (token, _) = auth::create_token(&host.store, "bench", "bench-user", false, "bench")
        .await
        .unwrap();
    let in_process = Arc::new(host.runtime.clone());
    let api = serve_steps_api(&host).await;
    let client = reqwest::Client::new();
    let body = flow8_bench_load::ping_step_body();
    let target = upstream.url("/ping");

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
    let native = if wanted("native") {
        Some(run_load(requests, concurrency, native).await)
    } else {
        None
    };
    let steps = flow8_bench_load::post_ok(
        client.clone(),
        api.clone(),
        Some(token.clone()),
        body.clone(),
        None,
    );
    let api = if wanted("api") {
        Some(run_load(requests, concurrency, steps).await)
    } else {
        None
    };
    // The best any integration host could do with this two-hop shape: a native Rust
    // proxy taking the same step body over HTTP and making the same upstream request,
    // with no authentication, sandbox, credential or audit.
    let proxy_url = start_native_proxy(client.clone(), upstream.url("")).await;
    let proxy = flow8_bench_load::post_ok(client.clone(), proxy_url, None, body.clone(), None);
    let proxy = if wanted("proxy") {
        Some(run_load(requests, concurrency, proxy).await)
    } else {
        None
    };
    // The same steps without the API in front (runtime called directly).
    let direct = {
        let runtime = in_process.clone();
        move || {
            let runtime = runtime.clone();
            async move {
                let mut bindings = BTreeMap::new();
                bindings.insert("request".to_string(), "api".to_string());
                let r = runtime
                    .run_step(bench_step(
                        "http-request",
                        serde_json::json!({"url": "/ping"}),
                        bindings,
                    ))
                    .await;
                assert!(r.result.is_ok(), "{:?}", r.result);
            }
        }
    };
    let direct = if wanted("direct") {
        Some(run_load(requests, concurrency, direct).await)
    } else {
        None
    };
    let row = |label: &str, run: &Option<Load>| -> Option<(f64, Stats)> {
        Some(run.as_ref()?.print_row(label, requests))
    };
    println!();
    println!(
        "REST API throughput: http-request steps against a loopback server ({requests} requests, concurrency {concurrency})"
    );
    println!("| path | requests/s | p50 | p99 | CPU per request |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let native = row("native reqwest -> server (baseline)", &native);
    let proxy = row(
        "native Rust proxy: POST -> reqwest -> server (best case for two hops)",
        &proxy,
    );
    row(
        "step in process (runtime.run_step) -> http-request -> server",
        &direct,
    );
    let api = row("POST /api/v1/steps -> http-request -> server", &api);
    println!();
    if let (Some((native_rps, n)), Some((steps_rps, s))) = (&native, &api) {
        println!(
            "steps/s ÷ native requests/s = {:.2} (target >= 0.8); added latency per step: p50 {}, p99 {}",
            steps_rps / native_rps,
            us(s.median.saturating_sub(n.median)),
            us(s.p99.saturating_sub(n.p99))
        );
    }
    if let (Some((proxy_rps, _)), Some((steps_rps, _))) = (&proxy, &api) {
        println!(
            "steps/s ÷ native proxy requests/s = {:.2} (the host's cost beyond the second hop itself)",
            steps_rps / proxy_rps
        );
    }
}

/// The best any integration host could do with the two-hop shape: a native Rust proxy
/// (axum in, reqwest out) taking a step body over HTTP and making the same GET of
/// `input_mapping.url` on `base`, with no authentication, sandbox, credential or audit.
/// Answers its URL.
async fn start_native_proxy(client: reqwest::Client, base: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/proxy", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/proxy",
        axum::routing::post(move |body: bytes::Bytes| {
            let (c, base) = (client.clone(), base.clone());
            async move {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let path = v["input_mapping"]["url"].as_str().unwrap_or("/");
                let r = c.get(format!("{base}{path}")).send().await.unwrap();
                let status = r.status().as_u16();
                let text = r.text().await.unwrap();
                axum::Json(
                    serde_json::json!({"status": "ok", "output": {"status": status, "body": text}}),
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// flow8's side of `just bench-peers` (issue 19, target 3), as `PEER|…` rows: the same
/// work `tests/peers/extism` measures Extism doing, in this process, against the same
/// upstream (`flow8_bench_load::start_ping_server`). An http-request step through the
/// REST API at concurrency 32 beside native reqwest and the native two-hop proxy, and
/// the no-network echo step called in process beside native Rust.
async fn peer_rows() {
    use flow8_host::server::auth;
    let requests: usize = bench_number("BENCH_API_REQUESTS", 4000);
    let echoes: usize = bench_number("BENCH_ECHO_CALLS", 20000);
    let concurrency: usize = bench_number("BENCH_CONCURRENCY", 32);
    let upstream = flow8_bench_load::start_ping_server().await;
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = CompileCache::at(cache_dir.path()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let registry = Arc::new(ModuleRegistry::new(bench_engine(), cache, vec![wasm_dir()]));
    let host = bench_host(loopback(), data.path(), registry, None).await;
    add_http_component(&host, "api", &upstream).await;
    add_http_component(&host, "bench-api", "https://api.example.com").await;
    let (token, _) = auth::create_token(&host.store, "bench", "bench-user", false, "bench")
        .await
        .unwrap();
    let runtime = Arc::new(host.runtime.clone());
    let api = serve_steps_api(&host).await;
    let client = reqwest::Client::new();
    let body = flow8_bench_load::ping_step_body();
    let native = flow8_bench_load::get_ok(client.clone(), format!("{upstream}/ping"));
    let proxy = start_native_proxy(client.clone(), upstream.clone()).await;
    let proxy = flow8_bench_load::post_ok(client.clone(), proxy, None, body.clone(), None);
    let steps = flow8_bench_load::post_ok(client.clone(), api, Some(token), body, None);
    // Warm every path: connections, the compiled module.
    run_load(200, concurrency, native.clone()).await;
    run_load(200, concurrency, proxy.clone()).await;
    run_load(200, concurrency, steps.clone()).await;
    let section = "http";
    run_load(requests, concurrency, native)
        .await
        .print_peer_row(
            section,
            "native reqwest -> server (baseline, in flow8's bench)",
            requests,
        );
    run_load(requests, concurrency, proxy).await.print_peer_row(
        section,
        "native Rust proxy: POST -> reqwest -> server (best case for two hops)",
        requests,
    );
    run_load(requests, concurrency, steps).await.print_peer_row(
        section,
        "flow8: POST /api/v1/steps -> http-request -> server (fresh sandbox per step)",
        requests,
    );

    let input = serde_json::json!({"attack": "ok", "document_id": "doc_001"});
    let input_text = input.to_string();
    let native_echo = move || {
        let input = input_text.clone();
        async move {
            let v: serde_json::Value = serde_json::from_str(std::hint::black_box(&input)).unwrap();
            std::hint::black_box(serde_json::json!({"ok": true, "echo": v}).to_string());
        }
    };
    let echo_step = move || {
        let (runtime, input) = (runtime.clone(), input.clone());
        async move {
            let mut bindings = BTreeMap::new();
            bindings.insert("api".to_string(), "bench-api".to_string());
            let r = runtime
                .run_step(bench_step("hostile", input, bindings))
                .await;
            let output = r.result.expect("the echo step runs");
            assert_eq!(output["echo"]["document_id"], "doc_001", "{output}");
        }
    };
    run_load(200, concurrency, echo_step.clone()).await;
    let section = "echo";
    run_load(echoes, concurrency, native_echo)
        .await
        .print_peer_row(
            section,
            "native Rust JSON echo (baseline, in flow8's bench)",
            echoes,
        );
    run_load(echoes, concurrency, echo_step.clone())
        .await
        .print_peer_row(
            section,
            "flow8: step in process (runtime.run_step, fresh sandbox per step)",
            echoes,
        );
    // The same step one at a time: what running steps on both cores at once costs.
    let sequential = (echoes / 4).max(1);
    run_load(sequential, 1, echo_step).await.print_peer_row(
        section,
        "flow8: the same step one at a time (concurrency 1)",
        sequential,
    );
}

/// Issue 19 item 4: what a step of the JavaScript and Python example modules
/// (`modules/examples/`, built by `just examples`) costs beside Rust's http-request,
/// each making the same GET through the host with a bound component, in process at
/// concurrency 32; and what their size costs: a compile by each tier (Winch, quick;
/// Cranelift, optimised), a load from the compile cache, and a step on each tier's code.
async fn language_steps() {
    let requests: usize = bench_number("BENCH_LANGUAGE_STEPS", 1000);
    let concurrency: usize = bench_number("BENCH_CONCURRENCY", 32);
    let upstream = flow8_bench_load::start_ping_server().await;
    let engine = bench_engine();
    // Every module on quick code, and kept there: what a large module's steps cost
    // until its optimised code is ready.
    let quick_engine =
        flow8_host::runtime::SandboxEngine::new(flow8_host::runtime::engine::EngineConfig {
            quick_tier_min_bytes: Some(0),
            tier_up: false,
            ..Default::default()
        })
        .unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = CompileCache::at(cache_dir.path()).unwrap();
    let quick_cache_dir = tempfile::tempdir().unwrap();
    let quick_cache = CompileCache::at(quick_cache_dir.path()).unwrap();
    let examples = flow8_tests::examples_dir();
    let modules = [
        (
            "http-request",
            "Rust",
            wasm_dir().join("http_request.wasm"),
            "request",
            serde_json::json!({"url": "/ping"}),
        ),
        (
            "js-fetch",
            "JavaScript (componentize-js)",
            examples.join("js-fetch.wasm"),
            "api",
            serde_json::json!({"url": format!("{upstream}/ping"), "method": "GET"}),
        ),
        (
            "python-echo",
            "Python (componentize-py)",
            examples.join("python-echo.wasm"),
            "api",
            serde_json::json!({"url": format!("{upstream}/ping"), "method": "GET"}),
        ),
    ];
    let mut loads = Vec::new();
    for (name, _, path, _, _) in &modules {
        let bytes = std::fs::read(path)
            .unwrap_or_else(|e| panic!("{}: {e} (run `just examples` first)", path.display()));
        let digest = flow8_host::runtime::module::digest(&bytes);
        // Each tier's compile of the component alone, into an empty cache.
        let t = Instant::now();
        quick_cache
            .load(&quick_engine, CodeTier::Quick, &digest, &bytes)
            .unwrap();
        let quick = t.elapsed();
        let t = Instant::now();
        cache
            .load(&engine, CodeTier::Optimized, &digest, &bytes)
            .unwrap();
        let optimized = t.elapsed();
        let cached = measure(10, || async {
            LoadedModule::load(&engine, &cache, &bytes).await.unwrap();
        })
        .await;
        loads.push((*name, bytes.len(), quick, optimized, cached));
    }
    let mut runtimes = Vec::new();
    let mut hosts = Vec::new();
    for (engine, cache) in [(engine, cache), (quick_engine, quick_cache)] {
        let data = tempfile::tempdir().unwrap();
        let registry = Arc::new(ModuleRegistry::new(
            engine,
            cache,
            vec![wasm_dir(), examples.clone()],
        ));
        let host = bench_host(loopback(), data.path(), registry, None).await;
        add_http_component(&host, "api", &upstream).await;
        runtimes.push(Arc::new(host.runtime.clone()));
        hosts.push((host, data));
    }
    println!();
    println!(
        "Languages: one GET through the host with a bound component, in process ({requests} steps, concurrency {concurrency}); steps/s, p50 and p99 on optimised code"
    );
    println!(
        "| module | language | size | compile, quick (Winch) | compile, optimised (Cranelift) | cached load (p50) | steps/s | p50 | p99 | CPU per step, optimised | CPU per step, quick |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for ((name, language, _, binding, input), (_, size, quick, optimized, cached)) in
        modules.iter().zip(&loads)
    {
        let mut rows = Vec::new();
        for runtime in &runtimes {
            let step = {
                let (runtime, name, binding, input) = (
                    runtime.clone(),
                    name.to_string(),
                    binding.to_string(),
                    input.clone(),
                );
                move || {
                    let (runtime, name, binding, input) = (
                        runtime.clone(),
                        name.clone(),
                        binding.clone(),
                        input.clone(),
                    );
                    async move {
                        let mut bindings = BTreeMap::new();
                        bindings.insert(binding, "api".to_string());
                        let r = runtime.run_step(bench_step(&name, input, bindings)).await;
                        let output = r.result.expect("the step runs");
                        assert!(output.to_string().contains("pong"), "{output}");
                    }
                }
            };
            run_load(50, concurrency, step.clone()).await;
            rows.push(run_load(requests, concurrency, step).await);
        }
        let st = stats(rows[0].latencies.clone());
        println!(
            "| {name} | {language} | {:.1} MB | {:.2} s | {:.2} s | {} | {:.0} | {} | {} | {:.0} µs | {:.0} µs |",
            *size as f64 / 1e6,
            quick.as_secs_f64(),
            optimized.as_secs_f64(),
            us(cached.median),
            requests as f64 / rows[0].total.as_secs_f64(),
            us(st.median),
            us(st.p99),
            rows[0].cpu_per_operation_us(requests),
            rows[1].cpu_per_operation_us(requests),
        );
    }
}

/// Issue 19 item 5: the background refresher's sweep at scale. `BENCH_SWEEP_LINKS` links
/// (100,000 by default) of one company, each with a token expiring within the refresh
/// window, in one embedded store; two OAuth services on that store (two hosts) sweep at
/// once against oauth2-mock-server, which refuses a spent refresh token (so a link
/// refreshed twice would be marked `needs_reconnect`). `BENCH_SWEEP_STORE=mongodb` runs
/// it on SecantusDB instead (with fewer links: `BENCH_SWEEP_LINKS=10000`).
async fn refresher_sweep() {
    use flow8_host::store::{LinkRecord, LinkStatus, new_object_id, now, sealing};
    let links: usize = bench_number("BENCH_SWEEP_LINKS", 100_000);
    let provider = flow8_tests::oauth_server::OAuthServer::start(3600, &[]);
    let data = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let mut oauth2 = BTreeMap::new();
    oauth2.insert(
        "google".to_string(),
        serde_json::from_value(serde_json::json!({
            "client_id": "bench", "client_secret": "bench-secret",
            "redirect_uri": "http://127.0.0.1:1/auth/callback", "scopes": ["drive"],
            "authorize_url": format!("{}/authorize", provider.base),
            "token_url": format!("{}/token", provider.base),
        }))
        .unwrap(),
    );
    let providers = flow8_host::oauth::providers::configure(
        &flow8_host::catalogue::Catalogue::builtin(),
        &oauth2,
    )
    .unwrap();
    let window = Duration::from_secs(300);
    let on_mongodb = std::env::var("BENCH_SWEEP_STORE").as_deref() == Ok("mongodb");
    let mongo_server = on_mongodb.then(flow8_tests::mongo_server::MongoServer::start);
    let mut hosts = Vec::new();
    for _ in 0..2 {
        let store = Arc::new(match &mongo_server {
            Some(server) => AnyStore::from(
                flow8_host::store::mongodb::MongoStore::connect(&server.uri("sweep"))
                    .await
                    .unwrap(),
            ),
            None => AnyStore::from(
                flow8_host::store::embedded::EmbeddedStore::open(data.path())
                    .await
                    .unwrap(),
            ),
        });
        let vault = Arc::new(Vault::new(key.clone()));
        let mut oauth =
            flow8_host::oauth::OAuthService::new(store.clone(), vault.clone(), providers.clone());
        oauth.refresh_window = window;
        hosts.push((store, vault, oauth));
    }
    let (store, vault) = (&hosts[0].0, &hosts[0].1);
    let t = Instant::now();
    for i in 0..links {
        let id = new_object_id();
        let created = now();
        let seal =
            |plain: String, field| vault.encrypt(&plain, &sealing::link("bench", &id, field));
        store
            .insert_link(LinkRecord {
                access_token: seal(format!("at-{i}"), sealing::ACCESS_TOKEN),
                refresh_token: Some(seal(format!("rt-{i}"), sealing::REFRESH_TOKEN)),
                id: id.clone(),
                user_id: "alice".into(),
                company_id: "bench".into(),
                integration_type: "google".into(),
                // Spread over the window: all due, the soonest first.
                token_expiry: Some(created + Duration::from_secs(10 + (i % 280) as u64)),
                scopes: vec!["drive".into()],
                provider_user_id: "u".into(),
                provider_user_email: String::new(),
                provider_metadata: serde_json::Value::Null,
                status: LinkStatus::Active,
                status_reason: None,
                shared_with: Vec::new(),
                webhook_signature_secret: None,
                refresh_lease_owner: None,
                refresh_lease_until: None,
                refresh_retry_after: None,
                version: 0,
                created_at: created,
                updated_at: created,
            })
            .await
            .unwrap();
    }
    let inserted = t.elapsed();
    let cpu = flow8_bench_load::process_cpu_time();
    let t = Instant::now();
    let (a, b) = tokio::join!(hosts[0].2.sweep_due_links(), hosts[1].2.sweep_due_links());
    let wall = t.elapsed();
    let cpu = flow8_bench_load::process_cpu_time().saturating_sub(cpu);
    let requests = provider.token_requests_at_least("refresh_token", links);
    let still_due = store
        .links_due_for_refresh(now() + window, &["google".to_string()], 1_000_000)
        .await
        .unwrap()
        .len();
    let mut reconnect = 0;
    let mut cursor = None;
    loop {
        let page = store.scan_links(cursor.as_deref(), 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        cursor = Some(last.id.clone());
        reconnect += page
            .iter()
            .filter(|l| l.status == LinkStatus::NeedsReconnect)
            .count();
    }
    let per_second = links as f64 / wall.as_secs_f64();
    println!();
    println!(
        "Refresher sweep: {links} links due, two hosts on one {} store sweeping at once, oauth2-mock-server",
        if on_mongodb {
            "MongoDB (SecantusDB)"
        } else {
            "embedded"
        }
    );
    println!("| measurement | value |");
    println!("| --- | ---: |");
    println!(
        "| links stored (setup) | {links} in {:.1} s |",
        inserted.as_secs_f64()
    );
    println!("| refresh token requests | {requests} |");
    println!("| links fresh after the sweep | {} |", links - still_due);
    println!("| links still due | {still_due} |");
    println!("| links marked needs_reconnect (a refresh token spent twice) | {reconnect} |");
    println!(
        "| host A: links claimed and renewed / not renewed / handed over | {} / {} / {} |",
        a.fresh, a.not_renewed, a.handed_over
    );
    println!(
        "| host B: links claimed and renewed / not renewed / handed over | {} / {} / {} |",
        b.fresh, b.not_renewed, b.handed_over
    );
    println!("| sweep wall time | {:.1} s |", wall.as_secs_f64());
    println!("| links renewed per second (both hosts) | {per_second:.0} |");
    println!(
        "| needed for {links} one-hour tokens | {:.0} per second ({:.0}x headroom) |",
        links as f64 / 3600.0,
        per_second / (links as f64 / 3600.0)
    );
    println!(
        "| CPU per renewed link (this process: both hosts and the load; the provider is another process) | {:.0} µs |",
        cpu.as_secs_f64() * 1e6 / links as f64
    );
}

/// A number a bench section takes from the environment (a size in MiB, a count): `var`
/// if set to one, else `default`.
fn bench_number(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A workspace in a new temporary directory holding `big.bin` (`mb` MiB of bytes that
/// are not all alike) and `tiny.bin` (4 bytes): the directory and the workspace.
fn big_and_tiny_workspace(mb: usize) -> (tempfile::TempDir, std::path::PathBuf) {
    use std::io::Write;
    let data = tempfile::tempdir().unwrap();
    let ws = data.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    let mut f = std::fs::File::create(ws.join("big.bin")).unwrap();
    let chunk: Vec<u8> = (0..1024 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    for _ in 0..mb {
        f.write_all(&chunk).unwrap();
    }
    std::fs::write(ws.join("tiny.bin"), b"tiny").unwrap();
    (data, ws)
}

/// Peak resident memory of a `flow8-host` run, sampled from /proc until it exits.
fn run_cli_peak_kib(
    args: &[&str],
    data_dir: &std::path::Path,
) -> (Duration, u64, std::process::ExitStatus) {
    let start = Instant::now();
    let mut child = std::process::Command::new(flow8_tests::host_bin())
        .args(args)
        .env("FLOW8_DATA_DIR", data_dir)
        .env("FLOW8_MODULES_PATH", wasm_dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut peak = 0u64;
    loop {
        peak = peak.max(peak_kib(child.id()));
        if let Some(status) = child.try_wait().unwrap() {
            return (start.elapsed(), peak, status);
        }
        // The sampling interval of the peak-memory probe (not a wait for readiness).
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A 100 MB upload through s3-upload to a local s3s-fs, beside a native streaming PUT
/// of the same file, and the host's peak memory growth over a tiny upload.
async fn s3_throughput() {
    use flow8_tests::s3_server::{ACCESS_KEY_ID, S3Server, SECRET_ACCESS_KEY};
    let mb = bench_number("BENCH_S3_MB", 100);
    let s3 = S3Server::start(&["bench"]);
    let (data, ws) = big_and_tiny_workspace(mb);
    let big = ws.join("big.bin");
    let body = serde_json::json!({"name": "bench-s3", "kind": "storage", "config": {"provider": "s3", "bucket": "bench",
        "endpoint": s3.endpoint(), "access_key_id": ACCESS_KEY_ID, "secret_access_key": SECRET_ACCESS_KEY}});
    let body_path = data.path().join("component.json");
    std::fs::write(&body_path, body.to_string()).unwrap();
    let data_dir = data.path().join("host");
    let (_, _, st) = run_cli_peak_kib(
        &["components", "create", body_path.to_str().unwrap()],
        &data_dir,
    );
    assert!(st.success());
    let input = |file: &str, key: &str| {
        let p = data.path().join(format!("{key}.json"));
        std::fs::write(
            &p,
            serde_json::json!({"key": key, "file_path": file}).to_string(),
        )
        .unwrap();
        p
    };
    let run = |input: std::path::PathBuf| {
        run_cli_peak_kib(
            &[
                "run-module",
                "s3-upload",
                input.to_str().unwrap(),
                "--workspace",
                ws.to_str().unwrap(),
                "--bind",
                "storage=bench-s3",
                "--allow-loopback",
                "--deadline-secs",
                "600",
            ],
            &data_dir,
        )
    };
    let (_, tiny_peak, st) = run(input("tiny.bin", "tiny"));
    assert!(st.success());
    let (host_time, big_peak, st) = run(input("big.bin", "big"));
    assert!(st.success(), "the 100 MB upload failed");

    // Native: one streaming PUT of the same file, signed with the same SigV4 code.
    let client = reqwest::Client::new();
    let url = url::Url::parse(&format!("{}/bench/native.bin", s3.endpoint())).unwrap();
    let start = Instant::now();
    let mut file = tokio::fs::File::open(&big).await.unwrap();
    let (hash, len) = flow8_host::outbound::sigv4::file_hash(&mut file)
        .await
        .unwrap();
    let mut headers = http::HeaderMap::new();
    let key = flow8_host::outbound::sigv4::SigningKey {
        region: "us-east-1",
        service: "s3",
        access_key_id: ACCESS_KEY_ID,
        secret_access_key: SECRET_ACCESS_KEY,
    };
    flow8_host::outbound::sigv4::sign_request(&key, &http::Method::PUT, &url, &mut headers, &hash)
        .unwrap();
    let resp = client
        .put(url.as_str())
        .headers(headers)
        .header("content-length", len)
        .body(reqwest::Body::from(file))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let native_time = start.elapsed();
    let mbps = |d: Duration| mb as f64 / d.as_secs_f64();
    println!();
    println!("S3 upload of {mb} MB to a local s3s-fs (SigV4 verified)");
    println!("| path | time | MB/s |");
    println!("| --- | ---: | ---: |");
    println!(
        "| native reqwest streaming PUT (baseline) | {:.2} s | {:.0} |",
        native_time.as_secs_f64(),
        mbps(native_time)
    );
    println!(
        "| flow8-host run-module s3-upload (process start, load, multipart) | {:.2} s | {:.0} |",
        host_time.as_secs_f64(),
        mbps(host_time)
    );
    println!();
    println!(
        "throughput ratio host/native = {:.2} (target >= 0.8); host peak memory {} MiB vs {} MiB for a 4-byte upload: growth {:.1} MiB (target < 32 MB)",
        native_time.as_secs_f64() / host_time.as_secs_f64(),
        big_peak / 1024,
        tiny_peak / 1024,
        (big_peak.saturating_sub(tiny_peak)) as f64 / 1024.0
    );
}

/// Verified webhook events per second (the webhooks issue): Slack Events API deliveries,
/// each signed as Slack signs them (`v0=` HMAC-SHA256 over `v0:{timestamp}:{body}`)
/// with its own `event_id`, POSTed at concurrency 32 to the host's API in this process,
/// which verifies, deduplicates, stores and acknowledges each; beside a native axum
/// handler that only verifies the same HMAC. Requests are signed before the clock
/// starts. CPU per event is this whole process's (client, server, store).
async fn webhook_throughput() {
    use hmac::{KeyInit, Mac};
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    let events: usize = bench_number("BENCH_WEBHOOK_EVENTS", 4000);
    let concurrency = 32;
    let data = tempfile::tempdir().unwrap();
    let config_path = data.path().join("config.yml");
    std::fs::write(
        &config_path,
        format!("oauth2:\n  slack:\n    client_id: \"123.456\"\n    client_secret: slack-client-secret\n    redirect_uri: http://127.0.0.1:1/auth/callback\n    signing_secret: {SECRET}\n"),
    )
    .unwrap();
    let config = HostConfig::load(Some(&config_path)).unwrap();
    let registry = Arc::new(ModuleRegistry::new(
        bench_engine(),
        CompileCache::at(data.path().join("cache")).unwrap(),
        vec![],
    ));
    let host = bench_host(config, data.path(), registry, None).await;
    flow8_tests::stored_links::insert_link(
        data.path(),
        "company-a",
        "slack",
        serde_json::json!({"team": {"id": "T0A"}}),
    )
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host_url = format!("http://{}/webhooks/slack", listener.local_addr().unwrap());
    tokio::spawn(flow8_host::server::serve(
        listener,
        host.api_state(),
        std::future::pending(),
    ));
    let sign = |ts: i64, body: &str| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("v0:{ts}:").as_bytes());
        mac.update(body.as_bytes());
        format!("v0={}", hex::encode(mac.finalize().into_bytes()))
    };
    // Every run gets events of its own (the host drops a repeated event_id).
    let signed = |run: &str, n: usize| -> Arc<Vec<(String, String, String)>> {
        let ts = time::OffsetDateTime::now_utc().unix_timestamp();
        Arc::new(
            (0..n)
                .map(|i| {
                    let body = serde_json::json!({"token": "t", "team_id": "T0A", "api_app_id": "A1",
                        "event": {"type": "message", "channel": "C1", "user": "U1", "text": "hello", "ts": "1.2"},
                        "type": "event_callback", "event_id": format!("Ev{run}{i:07}"), "event_time": ts})
                    .to_string();
                    let sig = sign(ts, &body);
                    (ts.to_string(), sig, body)
                })
                .collect(),
        )
    };
    // The native baseline: verify the signature and the timestamp window, answer 200.
    let native_url = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/webhooks/slack", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/webhooks/slack",
            axum::routing::post(|headers: http::HeaderMap, body: bytes::Bytes| async move {
                let ts = headers
                    .get("x-slack-request-timestamp")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i64>().ok());
                let sig = headers
                    .get("x-slack-signature")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("v0="))
                    .and_then(|v| hex::decode(v).ok());
                let (Some(ts), Some(sig)) = (ts, sig) else {
                    return http::StatusCode::UNAUTHORIZED;
                };
                if (time::OffsetDateTime::now_utc().unix_timestamp() - ts).abs() > 300 {
                    return http::StatusCode::UNAUTHORIZED;
                }
                let mut mac =
                    hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                mac.update(format!("v0:{ts}:").as_bytes());
                mac.update(&body);
                match mac.verify_slice(&sig) {
                    Ok(()) => http::StatusCode::OK,
                    Err(_) => http::StatusCode::UNAUTHORIZED,
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    };
    let client = reqwest::Client::new();
    let load = |url: String, events: Arc<Vec<(String, String, String)>>| {
        let client = client.clone();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        move || {
            let (client, url, events, next) =
                (client.clone(), url.clone(), events.clone(), next.clone());
            async move {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (ts, sig, body) = &events[i % events.len()];
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-slack-request-timestamp", ts)
                    .header("x-slack-signature", sig)
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let answer = r.bytes().await.unwrap();
                assert!(
                    status.is_success(),
                    "{status}: {}",
                    String::from_utf8_lossy(&answer)
                );
            }
        }
    };
    // Warm both (connection pools, the store's first writes).
    run_load(200, concurrency, load(native_url.clone(), signed("w", 200))).await;
    run_load(200, concurrency, load(host_url.clone(), signed("w", 200))).await;
    let native = run_load(events, concurrency, load(native_url, signed("n", events))).await;
    let hosted = run_load(events, concurrency, load(host_url, signed("h", events))).await;
    let query = flow8_host::store::EventQuery {
        service: None,
        offset: 0,
        limit: (events + 1000) as u64,
    };
    let stored = flow8_host::store::Store::list_events(&*host.store, "company-a", &query)
        .await
        .map(|e| e.len())
        .unwrap_or(0);
    println!();
    println!(
        "Verified webhook events: Slack Events API deliveries, signed, {events} per path, concurrency {concurrency}"
    );
    println!("| path | events/s | p50 | p99 | CPU per event |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut rates = Vec::new();
    for (label, run) in [
        (
            "native axum handler: verify the HMAC only (baseline)",
            &native,
        ),
        (
            "POST /webhooks/slack: verify, dedupe, store, acknowledge",
            &hosted,
        ),
    ] {
        let (rate, _) = run.print_row(label, events);
        rates.push((rate, run.cpu.as_secs_f64() / events as f64));
    }
    println!();
    println!(
        "host events/s ÷ native = {:.2}; CPU per event host ÷ native = {:.1}; events stored: {stored} (of {} sent)",
        rates[1].0 / rates[0].0,
        rates[1].1 / rates[0].1,
        events + 200
    );
}

/// The `VmHWM` (peak resident memory) of process `pid`, in KiB.
fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Start `pid`'s peak resident memory again from its current size (Linux 4.0+).
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// 100 MB (`BENCH_TRANSFER_MB`) through the OAuth modules that move files, against the
/// Graph and Google fakes, through a `serve` process: a OneDrive download streamed to
/// the workspace, a OneDrive upload session and a Google Drive resumable upload, each
/// streamed from the workspace by the host. For each, the server's peak memory during a
/// 1 KiB transfer and during the big one (the peak is reset before each): the growth is
/// what the file's size cost the host.
async fn transfer_memory() {
    use flow8_tests::google::{GoogleSetup, pseudo_random};
    use flow8_tests::microsoft::{Microsoft, pattern};
    use serde_json::json;
    let mb = bench_number("BENCH_TRANSFER_MB", 100);
    let n = mb * 1024 * 1024;
    let mut rows = Vec::new();

    let ms = Microsoft::start(&["Files.Read", "Files.ReadWrite"]);
    let link = ms.connect("microsoft").await;
    let ws = ms.workspace("bench");
    ms.graph.put_drive_file("/tiny.bin", pattern(1024, 1));
    ms.graph.put_drive_file("/big.bin", pattern(n, 2));
    std::fs::write(ws.join("tiny-up.bin"), pattern(1024, 3)).unwrap();
    std::fs::write(ws.join("big-up.bin"), pattern(n, 4)).unwrap();
    let pid = ms.server.pid();
    for (label, module, input) in [
        (
            "onedrive-download (Graph 302, streamed to the workspace)",
            "onedrive-download",
            json!({"link_id": link, "path": "/FILE.bin", "save_as": "/FILE-down.bin"}),
        ),
        (
            "onedrive-upload (upload session, chunks from the workspace)",
            "onedrive-upload",
            json!({"link_id": link, "file_path": "/FILE-up.bin", "path": "/Uploads/FILE.bin"}),
        ),
    ] {
        let with = |file: &str| {
            serde_json::from_str::<serde_json::Value>(&input.to_string().replace("FILE", file))
                .unwrap()
        };
        reset_peak(pid);
        let (status, v) = ms.step(module, Some("bench"), with("tiny")).await;
        assert_eq!(status, 200, "{v}");
        let tiny = peak_kib(pid);
        reset_peak(pid);
        let start = Instant::now();
        let (status, v) = ms.step(module, Some("bench"), with("big")).await;
        assert_eq!(status, 200, "{v}");
        rows.push((label, start.elapsed(), tiny, peak_kib(pid)));
    }
    drop(ms);

    let g = GoogleSetup::start().await;
    let ws = g.workspace("bench");
    std::fs::write(ws.join("tiny.bin"), pseudo_random(1024, 5)).unwrap();
    std::fs::write(ws.join("big.bin"), pseudo_random(n, 6)).unwrap();
    let pid = g.server.pid();
    let upload = |file: &str| json!({"link_id": g.link_id, "file_path": format!("/{file}.bin"), "name": file});
    reset_peak(pid);
    let (status, v) = g
        .step("google-drive-upload", upload("tiny"), Some("bench"))
        .await;
    assert_eq!(status, 200, "{v}");
    let tiny = peak_kib(pid);
    reset_peak(pid);
    let start = Instant::now();
    let (status, v) = g
        .step("google-drive-upload", upload("big"), Some("bench"))
        .await;
    assert_eq!(status, 200, "{v}");
    rows.push((
        "google-drive-upload (resumable, the file streamed from the workspace)",
        start.elapsed(),
        tiny,
        peak_kib(pid),
    ));

    println!();
    println!(
        "{mb} MB files through OAuth modules (serve process, Graph and Google fakes on loopback)"
    );
    println!("| module | time | MB/s | host peak, 1 KiB file | host peak, {mb} MB file | growth |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (label, time, tiny, big) in rows {
        println!(
            "| {label} | {:.2} s | {:.0} | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            time.as_secs_f64(),
            mb as f64 / time.as_secs_f64(),
            tiny as f64 / 1024.0,
            big as f64 / 1024.0,
            big.saturating_sub(tiny) as f64 / 1024.0
        );
    }
}

/// A 50 MB (`BENCH_FTP_MB`) upload through ftp-upload to a local pyftpdlib (plain FTP,
/// the operator's plaintext-login opt-in given), beside a native suppaftp upload of the
/// same file, and the host's peak memory growth over a 4-byte upload.
async fn ftp_throughput() {
    use flow8_tests::ftp_server::{FtpServer, PASSWORD, USER};
    let mb = bench_number("BENCH_FTP_MB", 50);
    let server = FtpServer::start(false);
    let (data, ws) = big_and_tiny_workspace(mb);
    let big = ws.join("big.bin");
    let body = serde_json::json!({"name": "bench-ftp", "kind": "ftp", "config": {"provider": "ftp",
        "host": "localhost", "port": server.port, "tls": false, "base_dir": "/",
        "username": USER, "password": PASSWORD}});
    let body_path = data.path().join("component.json");
    std::fs::write(&body_path, body.to_string()).unwrap();
    let data_dir = data.path().join("host");
    let (_, _, st) = run_cli_peak_kib(
        &["components", "create", body_path.to_str().unwrap()],
        &data_dir,
    );
    assert!(st.success());
    let run = |file: &str| {
        let p = data.path().join(format!("{file}.json"));
        std::fs::write(
            &p,
            serde_json::json!({"file_path": format!("/{file}.bin"), "remote_path": format!("host-{file}.bin")})
                .to_string(),
        )
        .unwrap();
        run_cli_peak_kib(
            &[
                "run-module",
                "ftp-upload",
                p.to_str().unwrap(),
                "--workspace",
                ws.to_str().unwrap(),
                "--bind",
                "ftp=bench-ftp",
                "--allow-loopback",
                "--allow-plaintext-login",
                "--deadline-secs",
                "600",
            ],
            &data_dir,
        )
    };
    // The first run compiles the module (its peak is the compiler's): warm the cache,
    // then measure the tiny upload against the big one.
    let (_, _, st) = run("tiny");
    assert!(st.success(), "the tiny FTP upload failed");
    let (_, tiny_peak, st) = run("tiny");
    assert!(st.success(), "the tiny FTP upload failed");
    let (host_time, big_peak, st) = run("big");
    assert!(st.success(), "the {mb} MB FTP upload failed");
    assert_eq!(
        std::fs::metadata(server.root().join("host-big.bin"))
            .unwrap()
            .len(),
        (mb * 1024 * 1024) as u64
    );

    // Native: suppaftp logs in and streams the same file (binary).
    let start = Instant::now();
    let mut ftp = suppaftp::tokio::AsyncFtpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    ftp.login(USER, PASSWORD).await.unwrap();
    let mut file = tokio::fs::File::open(&big).await.unwrap();
    ftp.put_file("native-big.bin", &mut file).await.unwrap();
    let _ = ftp.quit().await;
    let native_time = start.elapsed();
    let mbps = |d: Duration| mb as f64 / d.as_secs_f64();
    println!();
    println!("FTP upload of {mb} MB to a local pyftpdlib (plain FTP, binary)");
    println!("| path | time | MB/s |");
    println!("| --- | ---: | ---: |");
    println!(
        "| native suppaftp put_file (baseline) | {:.2} s | {:.0} |",
        native_time.as_secs_f64(),
        mbps(native_time)
    );
    println!(
        "| flow8-host run-module ftp-upload (process start, load, login, stream) | {:.2} s | {:.0} |",
        host_time.as_secs_f64(),
        mbps(host_time)
    );
    println!();
    println!(
        "throughput ratio host/native = {:.2} (target >= 0.8); host peak memory {} MiB vs {} MiB for a 4-byte upload: growth {:.1} MiB (target < 32 MB)",
        native_time.as_secs_f64() / host_time.as_secs_f64(),
        big_peak / 1024,
        tiny_peak / 1024,
        (big_peak.saturating_sub(tiny_peak)) as f64 / 1024.0
    );
}

/// SMTP messages per second (the API-key services issue): smtp-send steps in this
/// process, each a fresh sandbox whose message the host sends over its own connection
/// (STARTTLS, AUTH with the component's password, MAIL, RCPT, DATA, QUIT), beside a
/// native lettre loop sending the same message the same way (one connection per
/// message: lettre's pool is not in the host's features) to the same aiosmtpd server.
/// CPU per message is this process's (client side only; the Python server's own CPU is
/// not counted), the steadier figure: both paths wait on the same server.
async fn smtp_throughput() {
    use flow8_tests::smtp_server::{Mode, PASSWORD, SmtpServer, USER};
    use lettre::AsyncTransport;
    let messages: usize = bench_number("BENCH_SMTP_MESSAGES", 400);
    let concurrency: usize = bench_number("BENCH_SMTP_CONCURRENCY", 8);
    let server = SmtpServer::start(Mode::StartTls);
    let data = tempfile::tempdir().unwrap();
    let registry = Arc::new(ModuleRegistry::new(
        shared_engine(),
        CompileCache::at(data.path().join("cache")).unwrap(),
        vec![wasm_dir()],
    ));
    let mut config = loopback();
    config.outbound.extra_ca_file = Some(server.ca_file());
    let host = bench_host(config, data.path(), registry, None).await;
    add_component(
        &host,
        serde_json::json!({
            "name": "bench-smtp", "kind": "smtp",
            "config": {"provider": "smtp", "host": "localhost", "port": server.port,
                "security": "starttls", "from": "Flow8 Bench <bench@example.com>",
                "username": USER, "password": PASSWORD}
        }),
    )
    .await;
    let runtime = Arc::new(host.runtime.clone());
    let step = move || {
        let runtime = runtime.clone();
        async move {
            let mut bindings = BTreeMap::new();
            bindings.insert("mail".to_string(), "bench-smtp".to_string());
            let r = runtime
                .run_step(bench_step(
                    "smtp-send",
                    serde_json::json!({"to": ["ann@example.com"], "subject": "ping",
                        "text": "one short line"}),
                    bindings,
                ))
                .await;
            assert!(r.result.is_ok(), "{:?}", r.result);
        }
    };
    // Warm: the module compiled and loaded, the server's first session done.
    step.clone()().await;

    let ca = lettre::transport::smtp::client::Certificate::from_pem(
        &std::fs::read(server.ca_file()).unwrap(),
    )
    .unwrap();
    let tls = lettre::transport::smtp::client::TlsParameters::builder("localhost".into())
        .add_root_certificate(ca)
        .build_rustls()
        .unwrap();
    let transport =
        lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous("localhost")
            .port(server.port)
            .tls(lettre::transport::smtp::client::Tls::Required(tls))
            .credentials(lettre::transport::smtp::authentication::Credentials::new(
                USER.into(),
                PASSWORD.into(),
            ))
            .build();
    let native = move || {
        let transport = transport.clone();
        async move {
            let message = lettre::Message::builder()
                .from("Flow8 Bench <bench@example.com>".parse().unwrap())
                .to("ann@example.com".parse().unwrap())
                .subject("ping")
                .message_id(None)
                .date_now()
                .body("one short line".to_string())
                .unwrap();
            transport.send(message).await.unwrap();
        }
    };
    native.clone()().await;
    let before = server.received().len();
    let native = run_load(messages, concurrency, native).await;
    let host_run = run_load(messages, concurrency, step).await;
    assert_eq!(
        server.received().len(),
        before + 2 * messages,
        "a message went missing"
    );
    println!();
    println!(
        "SMTP: {messages} one-line messages to a local aiosmtpd (STARTTLS, AUTH PLAIN, one connection each), concurrency {concurrency}"
    );
    println!("| path | messages/s | p50 | p99 | CPU per message (this process) |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let (n, _) = native.print_row("native lettre AsyncSmtpTransport (baseline)", messages);
    let (h, _) = host_run.print_row("smtp-send step in process (fresh sandbox each)", messages);
    println!();
    println!(
        "messages/s ratio host/native = {:.2}; CPU per message ratio = {:.2}",
        h / n,
        host_run.cpu.as_secs_f64() / native.cpu.as_secs_f64().max(1e-9)
    );
}

/// OAuth: a refresh storm (many steps on one link about to expire) against a real
/// OAuth2 server (oauth2-mock-server), and what the refresh check costs a step whose
/// token is fresh, beside the same step with no credential.
async fn refresh_storm() {
    let storm: usize = bench_number("BENCH_STORM", 500);
    let iterations: usize = bench_number("BENCH_ITERATIONS", 2000);
    // The first access token lives 20 s (inside the 300 s window); later ones an hour.
    let provider = flow8_tests::oauth_server::OAuthServer::start(3600, &[20]);
    let upstream = flow8_tests::RecordingServer::start();
    let data = tempfile::tempdir().unwrap();
    let mut config = loopback();
    // Refresh when a token expires within 300 s (the first one lives 20 s).
    config.oauth_refresh_window_seconds = 300;
    // The storm's 500 steps all wait for one refresh and then for sandboxes at once:
    // more than the pool and a company's default queue (128 + 256) hold.
    config.sandboxes.per_company_waiting = 1024;
    config.oauth2.insert(
        "google".to_string(),
        serde_json::from_value(serde_json::json!({
            "client_id": "bench", "client_secret": "bench-secret",
            "redirect_uri": "http://127.0.0.1:1/auth/callback", "scopes": ["drive"],
            "authorize_url": format!("{}/authorize", provider.base),
            "token_url": format!("{}/token", provider.base),
            "revoke_url": format!("{}/revoke", provider.base),
            "identity_url": format!("{}/userinfo", provider.base),
            "api_hosts": ["http://127.0.0.1:*"],
        }))
        .unwrap(),
    );
    let cache_dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(ModuleRegistry::new(
        shared_engine(),
        CompileCache::at(cache_dir.path()).unwrap(),
        vec![wasm_dir()],
    ));
    let host = bench_host(config, data.path(), registry, None).await;
    let (plain_store, plain_vault) = (host.store.clone(), host.vault.clone());
    let oauth = host.oauth.clone().expect("google is configured");
    let oauth_handle = oauth.clone();
    // Connect: the provider's redirect carries the code to the callback.
    let auth_url = oauth
        .authorize_url("bench", "alice", "google", "test-browser")
        .await
        .unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http.get(&auth_url).send().await.unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let params: BTreeMap<String, String> = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let link = oauth.callback(&params, Some("test-browser")).await.unwrap();
    let runtime = Arc::new(host.runtime.clone());
    let step = |credential: bool| {
        let mut input = serde_json::json!({"attack": "http", "url": upstream.url("/x")});
        if credential {
            input["credential"] = "google".into();
            input["link_id"] = link.id.clone().into();
        }
        bench_step("hostile", input, BTreeMap::new())
    };
    // Warm the module before the storm.
    assert!(runtime.run_step(step(false)).await.result.is_ok());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..storm {
        let (runtime, req) = (runtime.clone(), step(true));
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = runtime.run_step(req).await;
            assert!(r.result.is_ok(), "{:?}", r.result);
            t.elapsed()
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.push(t.await.unwrap());
    }
    let storm_wall = start.elapsed();
    let refreshes = provider.token_requests_at_least("refresh_token", 1);
    let storm_stats = stats(latencies);
    // The token is fresh now: the refresh check's cost beside no credential at all.
    let with_link = measure(iterations, || async {
        assert!(runtime.run_step(step(true)).await.result.is_ok());
    })
    .await;
    let without = measure(iterations, || async {
        assert!(runtime.run_step(step(false)).await.result.is_ok());
    })
    .await;
    // What any credential costs: read the link and open its token, no refresh check.
    let read_only = measure(iterations, || async {
        let l = plain_store
            .get_link("bench", &link.id)
            .await
            .unwrap()
            .unwrap();
        std::hint::black_box(
            plain_vault
                .decrypt(&l.access_token, &l.access_token_context())
                .unwrap(),
        );
    })
    .await;
    // The same through the OAuth service: look the link up, see the token is fresh, open it.
    let check_only = measure(iterations, || async {
        oauth_handle.access_token("bench", &link.id).await.unwrap();
    })
    .await;
    println!();
    println!(
        "OAuth refresh storm ({storm} concurrent steps on one link about to expire; oauth2-mock-server)"
    );
    println!("| measurement | value |");
    println!("| --- | ---: |");
    println!("| token requests made (refresh grant) | {refreshes} |");
    println!("| storm step latency p50 | {} |", us(storm_stats.median));
    println!("| storm step latency p99 | {} |", us(storm_stats.p99));
    println!(
        "| storm wall time | {:.1} ms |",
        storm_wall.as_secs_f64() * 1e3
    );
    println!();
    println!("refresh check on a fresh token ({iterations} steps each, loopback HTTP call)");
    println!("| measurement | median | p99 |");
    println!("| --- | ---: | ---: |");
    println!(
        "| step with no credential | {} | {} |",
        us(without.median),
        us(without.p99)
    );
    println!(
        "| step with an OAuth link (lookup, refresh check, attach) | {} | {} |",
        us(with_link.median),
        us(with_link.p99)
    );
    println!(
        "| difference (median) | {} | |",
        us(with_link.median.saturating_sub(without.median))
    );
    println!(
        "| read the link and open its token (what any credential costs) | {} | {} |",
        us(read_only.median),
        us(read_only.p99)
    );
    println!(
        "| the same through the OAuth service, with the refresh check | {} | {} |",
        us(check_only.median),
        us(check_only.p99)
    );
    println!(
        "| the refresh check itself (median difference) | {} | |",
        us(check_only.median.saturating_sub(read_only.median))
    );
}

/// A full http-request step (credential looked up and opened) on a given store.
async fn http_step_on(
    store: Arc<AnyStore>,
    upstream: &flow8_tests::RecordingServer,
    iterations: usize,
) -> Stats {
    let cache_dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(ModuleRegistry::new(
        shared_engine(),
        CompileCache::at(cache_dir.path()).unwrap(),
        vec![wasm_dir()],
    ));
    let host = bench_host(loopback(), cache_dir.path(), registry, Some(store)).await;
    add_http_component(&host, "api", &upstream.url("")).await;
    let runtime = &host.runtime;
    let mut bindings = BTreeMap::new();
    bindings.insert("request".to_string(), "api".to_string());
    measure(iterations, || async {
        let r = runtime
            .run_step(bench_step(
                "http-request",
                serde_json::json!({"url": "/ping"}),
                bindings.clone(),
            ))
            .await;
        assert!(r.result.is_ok(), "{:?}", r.result);
    })
    .await
}

/// An active Slack link of `company`, its token sealed by `vault`.
fn bench_link(vault: &Vault, company: &str) -> flow8_host::store::LinkRecord {
    let t = flow8_host::store::now();
    let id = flow8_host::store::new_object_id();
    let access_token = vault.encrypt(
        "xoxb-bench",
        &flow8_host::store::sealing::link(company, &id, flow8_host::store::sealing::ACCESS_TOKEN),
    );
    flow8_host::store::LinkRecord {
        id,
        user_id: "u".into(),
        company_id: company.into(),
        integration_type: "slack".into(),
        access_token,
        refresh_token: None,
        token_expiry: None,
        scopes: vec![],
        provider_user_id: String::new(),
        provider_user_email: String::new(),
        provider_metadata: serde_json::Value::Null,
        status: flow8_host::store::LinkStatus::Active,
        status_reason: None,
        shared_with: Vec::new(),
        webhook_signature_secret: None,
        refresh_lease_owner: None,
        refresh_lease_until: None,
        refresh_retry_after: None,
        version: 0,
        created_at: t,
        updated_at: t,
    }
}

/// Link lookups per second from one host: 32 tasks reading one link for `window`.
async fn link_lookups_per_second(store: Arc<AnyStore>, window: Duration) -> f64 {
    let link = bench_link(&Vault::new(MasterKey::generate()), "bench");
    store.insert_link(link.clone()).await.unwrap();
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (store, done, id) = (store.clone(), done.clone(), link.id.clone());
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < window {
                assert!(store.get_link("bench", &id).await.unwrap().is_some());
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(std::sync::atomic::Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// `var` as a list of sizes (`1,10000,100000`), else `default`.
fn bench_sizes(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// Fill `store` with `n` links and `n` API-key components of 100 other companies and
/// `audit` audit entries (written 32 at a time; audit entries in batches of 1,000).
/// Their secrets are sealed with a key of their own: the step never reads them, and no
/// host has opened the store yet (it records its own key when one does).
async fn fill_other_companies(store: &Arc<AnyStore>, n: usize, audit: usize) {
    let vault = Arc::new(Vault::new(MasterKey::generate()));
    let catalogue = flow8_host::catalogue::Catalogue::builtin();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (store, next) = (store.clone(), next.clone());
        let (vault, catalogue) = (vault.clone(), catalogue.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let company = format!("other-{}", i % 100);
                store
                    .insert_link(bench_link(&vault, &company))
                    .await
                    .unwrap();
                let new: NewComponent = serde_json::from_value(serde_json::json!({
                    "name": format!("api-{i}"), "kind": "http",
                    "config": {"provider": "http", "base_url": "https://api.example.com",
                        "auth_value": format!("Bearer filler-{i}")}
                }))
                .unwrap();
                store
                    .insert_component(
                        components::prepare(new, &company, &vault, &catalogue).unwrap(),
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let t = flow8_host::store::now();
    for start in (0..audit).step_by(1000) {
        let batch = (start..audit.min(start + 1000))
            .map(|i| flow8_host::store::AuditRecord {
                id: flow8_host::store::new_object_id(),
                company_id: if i % 10 == 0 {
                    "bench".into()
                } else {
                    format!("other-{}", i % 100)
                },
                user_id: Some("u".into()),
                action_type: "credential_used".into(),
                resource_type: "component".into(),
                resource_id: format!("filler-{}", i % 1000),
                before_state: serde_json::Value::Null,
                after_state: serde_json::json!({"module": "http-request"}),
                timestamp: t,
            })
            .collect();
        store.insert_audit_batch(batch).await.unwrap();
    }
}

/// A company's installed module among `installed` of its modules: the hostile guest
/// (its `ok` step) and `installed - 1` other modules' records, on a registry with no
/// shared modules, so every step resolves it from the store.
async fn installed_module_step(store: Arc<AnyStore>, installed: usize, iterations: usize) -> Stats {
    let data = tempfile::tempdir().unwrap();
    let registry = Arc::new(
        ModuleRegistry::new(
            shared_engine(),
            CompileCache::at(data.path().join("cache")).unwrap(),
            Vec::new(),
        )
        .with_installed_modules(),
    );
    let bytes = std::fs::read(wasm("hostile_guest")).unwrap();
    let loaded = registry.load_bytes(&bytes).await.unwrap();
    let host = bench_host(loopback(), data.path(), registry, Some(store.clone())).await;
    let record = |name: &str, version: &str, bytes: &[u8]| flow8_host::store::ModuleRecord {
        company_id: "bench".into(),
        name: name.into(),
        version: version.into(),
        digest: flow8_host::runtime::module::digest(bytes),
        size: bytes.len() as u64,
        installed_at: flow8_host::store::now(),
        installed_by: Some("u".into()),
        signature: None,
        source: None,
        approval: None,
    };
    let (name, version) = (
        loaded.manifest.name.clone(),
        loaded.manifest.version.clone(),
    );
    store
        .put_module(record(&name, &version, &bytes), bytes.clone())
        .await
        .unwrap();
    for i in 1..installed {
        let filler = format!("filler module {i}").into_bytes();
        store
            .put_module(record(&format!("filler-{i:04}"), "1.0.0", &filler), filler)
            .await
            .unwrap();
    }
    let runtime = &host.runtime;
    measure(iterations, || async {
        let r = runtime
            .run_step(bench_step(
                &name,
                serde_json::json!({"attack": "ok"}),
                BTreeMap::new(),
            ))
            .await;
        assert!(r.result.is_ok(), "{:?}", r.result);
    })
    .await
}

/// Scale in work, not only speed (issue 19 item 5): one step's latency as the store
/// grows. An http-request step with a bound component, against embedded and MongoDB
/// stores holding 1, 10k and 100k links and components of other companies (and 1M audit
/// entries at the largest size; MongoDB, a local SecantusDB, 1 and 10k with 100k audit
/// entries); and an installed module's step among 1 and 500 of the company's installed
/// modules. Sizes: BENCH_SCALE_SIZES, BENCH_SCALE_AUDIT, BENCH_SCALE_MONGO_SIZES,
/// BENCH_SCALE_MONGO_AUDIT, BENCH_SCALE_MODULES; BENCH_SCALE_STORES=embedded|mongodb
/// for one store.
async fn scale_bench() {
    use flow8_host::store::mongodb::MongoStore;
    let iterations: usize = bench_number("BENCH_SCALE_ITERATIONS", 300);
    // SecantusDB (Python) writes about 200 records a second: MongoDB is filled less.
    let sizes_of = |kind: &str| match kind {
        "embedded" => (
            bench_sizes("BENCH_SCALE_SIZES", &[1, 10_000, 100_000]),
            bench_sizes("BENCH_SCALE_AUDIT", &[1_000_000])[0],
        ),
        _ => (
            bench_sizes("BENCH_SCALE_MONGO_SIZES", &[1, 10_000]),
            bench_sizes("BENCH_SCALE_MONGO_AUDIT", &[100_000])[0],
        ),
    };
    let module_counts = bench_sizes("BENCH_SCALE_MODULES", &[1, 500]);
    let only = std::env::var("BENCH_SCALE_STORES").ok();
    let mongo_server = flow8_tests::mongo_server::MongoServer::start();
    let mut rows = Vec::new();
    for kind in ["embedded", "mongodb"] {
        if only.as_deref().is_some_and(|o| o != kind) {
            continue;
        }
        let (sizes, audit) = sizes_of(kind);
        let mut database = 0;
        let mut open = || {
            database += 1;
            let uri = mongo_server.uri(&format!("scale{database}"));
            async move {
                let dir = tempfile::tempdir().unwrap();
                let store = match kind {
                    "embedded" => AnyStore::from(
                        flow8_host::store::embedded::EmbeddedStore::open(dir.path())
                            .await
                            .unwrap(),
                    ),
                    _ => AnyStore::from(MongoStore::connect(&uri).await.unwrap()),
                };
                (dir, Arc::new(store))
            }
        };
        for &n in &sizes {
            let (_dir, store) = open().await;
            let audit_here = if Some(&n) == sizes.iter().max() {
                audit
            } else {
                0
            };
            let t = Instant::now();
            fill_other_companies(&store, n, audit_here).await;
            let fill = t.elapsed();
            // A fresh upstream each time: one that kept every earlier row's requests
            // would slow the later rows.
            let upstream = flow8_tests::RecordingServer::start();
            let st = http_step_on(store, &upstream, iterations).await;
            rows.push((
                kind,
                format!("http-request step; {n} links + {n} components of other companies, {audit_here} audit entries (filled in {:.1} s)", fill.as_secs_f64()),
                st,
            ));
        }
        for &m in &module_counts {
            let (_dir, store) = open().await;
            let st = installed_module_step(store, m, iterations).await;
            rows.push((
                kind,
                format!("installed module's step among {m} installed modules of the company"),
                st,
            ));
        }
    }
    println!();
    println!(
        "Scale: one step's latency as the store grows ({iterations} steps each; MongoDB is a local SecantusDB)"
    );
    println!("| store | what the store holds | p50 | p99 |");
    println!("| --- | --- | ---: | ---: |");
    for (kind, what, st) in &rows {
        println!("| {kind} | {what} | {} | {} |", us(st.median), us(st.p99));
    }
}

/// The MongoDB store (a local SecantusDB) beside the embedded one, in one run.
async fn store_comparison() {
    use flow8_host::store::mongodb::MongoStore;
    let iterations: usize = bench_number("BENCH_STORE_ITERATIONS", 500);
    let upstream = flow8_tests::RecordingServer::start();
    let mongo_server = flow8_tests::mongo_server::MongoServer::start();
    let data = tempfile::tempdir().unwrap();
    let embedded = Arc::new(AnyStore::from(
        flow8_host::store::embedded::EmbeddedStore::open(data.path())
            .await
            .unwrap(),
    ));
    let mongo = Arc::new(AnyStore::from(
        MongoStore::connect(&mongo_server.uri("bench"))
            .await
            .unwrap(),
    ));
    let on_embedded = http_step_on(embedded.clone(), &upstream, iterations).await;
    let on_mongo = http_step_on(mongo.clone(), &upstream, iterations).await;
    let window = Duration::from_secs(3);
    let lookups_embedded = link_lookups_per_second(embedded, window).await;
    let lookups_mongo = link_lookups_per_second(mongo, window).await;
    println!();
    println!(
        "store comparison ({iterations} http-request steps each; MongoDB is a local SecantusDB)"
    );
    println!("| measurement | embedded (SQLite) | MongoDB | MongoDB / embedded |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| http-request step with credential lookup, median | {} | {} | {:.2}x |",
        us(on_embedded.median),
        us(on_mongo.median),
        on_mongo.median.as_secs_f64() / on_embedded.median.as_secs_f64()
    );
    println!(
        "| same, p99 | {} | {} | {:.2}x |",
        us(on_embedded.p99),
        us(on_mongo.p99),
        on_mongo.p99.as_secs_f64() / on_embedded.p99.as_secs_f64()
    );
    println!(
        "| link lookups per second (32 tasks, one host) | {:.0} | {:.0} | {:.3}x |",
        lookups_embedded,
        lookups_mongo,
        lookups_mongo / lookups_embedded
    );
}

/// The engine the step and API sections use. BENCH_POOLING=0: wasmtime's on-demand
/// allocator instead of the pool; BENCH_RESET_WRITTEN_PAGES=0: the pool resets a fixed
/// part of each memory instead of the pages a step wrote.
fn bench_engine() -> Arc<flow8_host::runtime::SandboxEngine> {
    let off = |var: &str| std::env::var(var).as_deref() == Ok("0");
    if !off("BENCH_POOLING") && !off("BENCH_RESET_WRITTEN_PAGES") {
        return shared_engine();
    }
    flow8_host::runtime::SandboxEngine::new(flow8_host::runtime::engine::EngineConfig {
        pooling: !off("BENCH_POOLING"),
        reset_written_pages: !off("BENCH_RESET_WRITTEN_PAGES"),
        ..Default::default()
    })
    .unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // BENCH_ONLY=step|api|s3|ftp|smtp|store|scale|oauth|sweep|transfers|webhooks|peers|languages runs one section (for iterating on it).
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("api") => {
            let cache_dir = tempfile::tempdir().unwrap();
            let engine = bench_engine();
            return api_throughput(engine, CompileCache::at(cache_dir.path()).unwrap()).await;
        }
        Ok("s3") => return s3_throughput().await,
        Ok("store") => return store_comparison().await,
        Ok("oauth") => return refresh_storm().await,
        Ok("sweep") => return refresher_sweep().await,
        Ok("transfers") => return transfer_memory().await,
        Ok("webhooks") => return webhook_throughput().await,
        Ok("ftp") => return ftp_throughput().await,
        Ok("smtp") => return smtp_throughput().await,
        Ok("scale") => return scale_bench().await,
        Ok("peers") => return peer_rows().await,
        Ok("languages") => return language_steps().await,
        _ => {}
    }
    let iterations: usize = bench_number("BENCH_ITERATIONS", 2000);
    let engine = bench_engine();
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
    let registry = Arc::new(ModuleRegistry::new(
        engine.clone(),
        cache.clone(),
        vec![wasm_dir()],
    ));
    let host = bench_host(HostConfig::default(), data.path(), registry.clone(), None).await;
    let runtime = &host.runtime;
    add_component(
        &host,
        serde_json::json!({
            "name": "bench-api", "kind": "http",
            "config": {"provider": "http", "base_url": "https://api.example.com", "auth_value": "Bearer bench-secret-123"}
        }),
    )
    .await;

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
        raw_execute(&module, &input_text).await.unwrap().unwrap();
    })
    .await;
    let mut bindings = BTreeMap::new();
    bindings.insert("api".to_string(), "bench-api".to_string());
    let full = measure(iterations, || async {
        let r = runtime
            .run_step(bench_step("hostile", input.clone(), bindings.clone()))
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

    if std::env::var("BENCH_ONLY").as_deref() == Ok("step") {
        return;
    }
    api_throughput(engine.clone(), cache.clone()).await;
    language_steps().await;
    s3_throughput().await;
    ftp_throughput().await;
    smtp_throughput().await;
    store_comparison().await;
    scale_bench().await;
    refresh_storm().await;
    refresher_sweep().await;
    webhook_throughput().await;
    transfer_memory().await;
}
