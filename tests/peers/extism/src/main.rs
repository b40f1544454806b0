//! `extism-peer-bench`: the Extism side of `just bench-peers` (issue 19, target 3).
//!
//! - `extism-peer-bench run PLUGIN.wasm` measures, in this one process, the same work
//!   flow8's bench section `BENCH_ONLY=peers` measures in its own: an HTTP step behind
//!   an HTTP front at concurrency 32 (the step body in, one GET to a loopback upstream,
//!   the upstream's status, headers and body out), and a no-network JSON echo called in
//!   process; each beside a native baseline, printed as `PEER|…` rows.
//! - `extism-peer-bench summarize ROWS` reads the rows of every round of both binaries
//!   and prints each path's median as one table, with the ratios the issue sets.
//!
//! Extism is run three ways, as its documentation offers them: plugins reused across
//! calls (`extism::Pool`, at its default size of one plugin per core), a fresh plugin per call from one
//! `CompiledPlugin` (the isolation flow8 gives every step), and reused with a host
//! function that makes the request through one pooled HTTP client (Extism's built-in
//! `http_request` builds a new client per call).

use extism::{
    CompiledPlugin, CurrentPlugin, Function, Manifest, Plugin, PluginBuilder, Pool, PoolBuilder,
    UserData, Val, ValType, Wasm,
};
use flow8_bench_load::{
    PeerRow, get_ok, median_rows, ping_step_body, post_ok, run_load, start_ping_server,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The one host Extism's manifest lets the plugin reach (`allowed_hosts`).
const ALLOWED_HOST: &str = "127.0.0.1";

/// How long a call may run (flow8's default step deadline).
const TIMEOUT: Duration = Duration::from_secs(30);

fn number(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Stand-ins for the WASI 0.2 imports Rust's standard library leaves in a plugin built
/// for wasm32-wasip2 (the only wasm target this machine's toolchain has; Extism itself
/// offers WASI 0.1 only). The plugin's paths never print, read the environment or
/// exit; a hash map's seed and resource drops do nothing, and any other call fails the
/// plugin call by name, so a stand-in cannot quietly change what is measured.
fn wasi_stand_ins(wasm: &[u8]) -> anyhow::Result<Vec<Function>> {
    let engine = wasmtime::Engine::default();
    let module = wasmtime::Module::new(&engine, wasm)?;
    let mut functions = Vec::new();
    for import in module.imports() {
        if !import.module().starts_with("wasi:") {
            continue;
        }
        let Some(ty) = import.ty().func().cloned() else {
            anyhow::bail!(
                "the plugin imports a WASI {} that is not a function",
                import.name()
            );
        };
        let name = import.name().to_string();
        let harmless = name == "insecure-seed" || name.starts_with("[resource-drop]");
        let called = format!("{}#{name}", import.module());
        functions.push(
            Function::new(
                name,
                ty.params().map(ValType::from),
                ty.results().map(ValType::from),
                UserData::new(()),
                move |_: &mut CurrentPlugin, _: &[Val], _: &mut [Val], _: UserData<()>| {
                    if harmless {
                        Ok(())
                    } else {
                        anyhow::bail!(
                            "the bench plugin called {called}, which the bench does not provide"
                        )
                    }
                },
            )
            .with_namespace(import.module()),
        );
    }
    Ok(functions)
}

/// `pooled_get(url) -> {"status", "headers", "body"}`: the plugin's GET through one
/// shared, pooled HTTP client, with the same host check as Extism's own `http_request`.
fn pooled_get() -> Function {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(TIMEOUT))
        .build()
        .into();
    Function::new(
        "pooled_get",
        [ValType::I64],
        [ValType::I64],
        UserData::new(()),
        move |plugin: &mut CurrentPlugin, inputs: &[Val], outputs: &mut [Val], _: UserData<()>| {
            let target: String = plugin.memory_get_val(&inputs[0])?;
            let parsed = url::Url::parse(&target)?;
            if parsed.host_str() != Some(ALLOWED_HOST) {
                anyhow::bail!("HTTP request to {target} is not allowed");
            }
            let mut response = agent.get(&target).call()?;
            let headers: BTreeMap<String, String> = response
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect();
            let status = response.status().as_u16();
            let body = response.body_mut().read_to_string()?;
            let answer =
                serde_json::json!({"status": status, "headers": headers, "body": body}).to_string();
            let handle = plugin.memory_new(answer)?;
            outputs[0] = plugin.memory_to_val(handle);
            Ok(())
        },
    )
}

/// The plugin compiled once, as every arrangement starts from it.
fn compile(wasm: &[u8]) -> anyhow::Result<CompiledPlugin> {
    let mut manifest = Manifest::new([Wasm::data(wasm.to_vec())]).with_allowed_host(ALLOWED_HOST);
    // BENCH_EXTISM_TIMEOUT=0 runs calls without a timeout (Extism's default), to see
    // what the deadline costs it.
    if std::env::var("BENCH_EXTISM_TIMEOUT").as_deref() != Ok("0") {
        manifest = manifest.with_timeout(TIMEOUT);
    }
    let mut functions = wasi_stand_ins(wasm)?;
    functions.push(pooled_get());
    PluginBuilder::new(manifest)
        .with_wasi(false)
        .with_http_response_headers(true)
        .with_functions(functions)
        .compile()
}

/// How a call gets its plugin.
#[derive(Clone)]
enum Arrangement {
    /// Plugins reused from call to call (Extism's `Pool`).
    Reused(Pool),
    /// A new plugin for every call.
    Fresh(Arc<CompiledPlugin>),
}

impl Arrangement {
    fn call(&self, function: &str, input: &str) -> anyhow::Result<String> {
        match self {
            Arrangement::Reused(pool) => {
                let mut plugin = pool
                    .get(TIMEOUT)?
                    .ok_or_else(|| anyhow::anyhow!("no plugin free within the timeout"))?;
                plugin.call::<&str, String>(function, input)
            }
            Arrangement::Fresh(compiled) => {
                let mut plugin = Plugin::new_from_compiled(compiled)?;
                plugin.call::<&str, String>(function, input)
            }
        }
    }
}

/// The HTTP front: `POST /step/{reused|fresh|pooled}` takes flow8's step body, runs the
/// plugin's GET of `input_mapping.url` on the upstream (off the async workers: Extism
/// calls block), and answers `{"status": "ok", "output": …}` as flow8's API does.
async fn start_front(
    base: String,
    reused: Arrangement,
    fresh: Arrangement,
) -> anyhow::Result<String> {
    use axum::body::Bytes;
    use axum::extract::Path;
    use axum::http::StatusCode;
    let app = axum::Router::new().route(
        "/step/{arrangement}",
        axum::routing::post(move |Path(arrangement): Path<String>, body: Bytes| {
            let (base, reused, fresh) = (base.clone(), reused.clone(), fresh.clone());
            async move {
                let step: serde_json::Value = match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()),
                };
                let path = step["input_mapping"]["url"].as_str().unwrap_or("/");
                let input = serde_json::json!({"url": format!("{base}{path}")}).to_string();
                let (plugin, function) = match arrangement.as_str() {
                    "reused" => (reused, "fetch"),
                    "fresh" => (fresh, "fetch"),
                    "pooled" => (reused, "fetch_pooled"),
                    _ => return (StatusCode::NOT_FOUND, "no such arrangement".to_string()),
                };
                let run = tokio::task::spawn_blocking(move || plugin.call(function, &input)).await;
                match run {
                    Ok(Ok(output)) => (
                        StatusCode::OK,
                        format!(r#"{{"status":"ok","output":{output}}}"#),
                    ),
                    Ok(Err(e)) => (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

async fn run(plugin_path: &str) -> anyhow::Result<()> {
    let wasm = std::fs::read(plugin_path)
        .map_err(|e| anyhow::anyhow!("read the plugin {plugin_path}: {e}"))?;
    let requests = number("BENCH_API_REQUESTS", 4000);
    let echoes = number("BENCH_ECHO_CALLS", 20000);
    let concurrency = number("BENCH_CONCURRENCY", 32);
    let compiled = Arc::new(compile(&wasm)?);
    let fresh = Arrangement::Fresh(compiled.clone());
    let reused = {
        let compiled = compiled.clone();
        // Extism's default pool: one plugin per core (BENCH_EXTISM_POOL sets another
        // size; the concurrency, 32, costs Extism more CPU per call, not less).
        let mut pool = PoolBuilder::new();
        if let Ok(n) = std::env::var("BENCH_EXTISM_POOL") {
            pool = pool.with_max_instances(n.parse()?);
        }
        Arrangement::Reused(pool.build(move || Plugin::new_from_compiled(&compiled)))
    };

    let upstream = start_ping_server().await;
    let front = start_front(upstream.clone(), reused.clone(), fresh.clone()).await?;
    let client = reqwest::Client::new();
    let native = get_ok(client.clone(), format!("{upstream}/ping"));
    // Warm every path: connections, the pool's plugins, the compiled code.
    run_load(200, concurrency, native.clone()).await;
    for arrangement in ["reused", "fresh", "pooled"] {
        let url = format!("{front}/step/{arrangement}");
        run_load(
            200,
            concurrency,
            post_ok(client.clone(), url, None, ping_step_body(), Some("pong")),
        )
        .await;
    }

    let section = "http";
    run_load(requests, concurrency, native)
        .await
        .print_peer_row(
            section,
            "native reqwest -> server (baseline, in Extism's bench)",
            requests,
        );
    for (arrangement, label) in [
        (
            "reused",
            "Extism, reused plugins (Pool, one per core), built-in http_request",
        ),
        (
            "fresh",
            "Extism, fresh plugin per call (CompiledPlugin), built-in http_request",
        ),
        (
            "pooled",
            "Extism, reused plugins (Pool), pooled-client host function",
        ),
    ] {
        let url = format!("{front}/step/{arrangement}");
        run_load(
            requests,
            concurrency,
            post_ok(client.clone(), url, None, ping_step_body(), Some("pong")),
        )
        .await
        .print_peer_row(section, label, requests);
    }

    // The echo, in process: called straight from the async workers (no network, so no
    // reason to move it off them), each call checked.
    let input = serde_json::json!({"attack": "ok", "document_id": "doc_001"}).to_string();
    let echo = |plugin: Arrangement| {
        let input = input.clone();
        move || {
            let (plugin, input) = (plugin.clone(), input.clone());
            async move {
                let out = plugin.call("echo", &input).expect("the echo runs");
                assert!(out.contains("doc_001"), "{out}");
            }
        }
    };
    let native_echo = {
        let input = input.clone();
        move || {
            let input = input.clone();
            async move {
                let v: serde_json::Value =
                    serde_json::from_str(std::hint::black_box(&input)).expect("JSON");
                std::hint::black_box(serde_json::json!({"ok": true, "echo": v}).to_string());
            }
        }
    };
    run_load(200, concurrency, echo(reused.clone())).await;
    run_load(200, concurrency, echo(fresh.clone())).await;
    let section = "echo";
    run_load(echoes, concurrency, native_echo)
        .await
        .print_peer_row(
            section,
            "native Rust JSON echo (baseline, in Extism's bench)",
            echoes,
        );
    run_load(echoes, concurrency, echo(reused))
        .await
        .print_peer_row(
            section,
            "Extism, reused plugins (Pool, one per core)",
            echoes,
        );
    run_load(echoes, concurrency, echo(fresh))
        .await
        .print_peer_row(
            section,
            "Extism, fresh plugin per call (CompiledPlugin)",
            echoes,
        );
    Ok(())
}

/// The rows of every round, each path's median, as the table BENCHMARKS.md records.
fn summarize(rows_path: &str) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(rows_path).map_err(|e| anyhow::anyhow!("read {rows_path}: {e}"))?;
    let rows: Vec<PeerRow> = text.lines().filter_map(PeerRow::parse).collect();
    if rows.is_empty() {
        anyhow::bail!("{rows_path} holds no PEER rows");
    }
    let rounds = rows
        .iter()
        .filter(|r| r.label == rows[0].label && r.section == rows[0].section)
        .count();
    let summary = median_rows(&rows);
    for section in ["http", "echo"] {
        let in_section: Vec<&PeerRow> = summary.iter().filter(|r| r.section == section).collect();
        if in_section.is_empty() {
            continue;
        }
        println!();
        println!(
            "{} (median of {rounds} alternating rounds per path)",
            match section {
                "http" =>
                    "HTTP step behind an HTTP front, concurrency 32, one GET to a loopback upstream",
                _ => "No-network JSON echo called in process, concurrency 32",
            }
        );
        println!("| path | per second | p50 | p99 | CPU per operation |");
        println!("| --- | ---: | ---: | ---: | ---: |");
        for r in &in_section {
            println!(
                "| {} | {:.0} | {:.1} µs | {:.1} µs | {:.0} µs |",
                r.label, r.per_second, r.p50_us, r.p99_us, r.cpu_us
            );
        }
        let flow8 = in_section.iter().find(|r| r.label.starts_with("flow8"));
        let native = in_section.iter().find(|r| {
            r.label.starts_with("native Rust JSON echo") || r.label.starts_with("native reqwest")
        });
        if let Some(flow8) = flow8 {
            for other in in_section.iter().filter(|r| r.label.starts_with("Extism")) {
                println!(
                    "CPU per operation flow8 ÷ {} = {:.2} (target < 1)",
                    other.label,
                    flow8.cpu_us / other.cpu_us.max(1e-9)
                );
            }
            if let (Some(native), "http") = (native, section) {
                println!(
                    "CPU per operation flow8 ÷ native request = {:.2} (target <= 2.5)",
                    flow8.cpu_us / native.cpu_us.max(1e-9)
                );
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("run"), Some(plugin)) => run(plugin).await,
        (Some("summarize"), Some(rows)) => summarize(rows),
        _ => Err(anyhow::anyhow!(
            "usage: extism-peer-bench run PLUGIN.wasm | summarize ROWS_FILE"
        )),
    };
    if let Err(e) = result {
        eprintln!("extism-peer-bench: {e:#}");
        std::process::exit(1);
    }
}
