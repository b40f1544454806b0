//! Records a host keeps for later steps and calls (`record_cache_seconds`, issue 19 item
//! 6) never outlive a change by more than the bound: two `flow8-host serve` processes on
//! one store, a component deleted through one of them. The host that deleted it refuses
//! the next step at once; the other refuses every step that reaches it later than the
//! configured bound. (Links unlinked through another host: `mongodb_hosts`; an API token
//! revoked with the CLI: `api_server`.)

use flow8_tests::api_client::call;
use flow8_tests::bounded::{Answer, refused_past_the_bound};
use flow8_tests::{Cli, RecordingServer, ServerProcess, create_token, wasm_dir};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The bound under test: `record_cache_seconds` in both hosts' config.
const BOUND: Duration = Duration::from_secs(1);

async fn step(server: &ServerProcess, token: &str) -> (u16, Value) {
    let body = json!({"name": "s", "module_ref": "http-request",
        "input_mapping": {"url": "/x"}, "bindings": {"request": "partner-api"}});
    call(
        "POST",
        &server.url("/api/v1/steps"),
        token,
        Some(("application/json", body.to_string().into_bytes())),
        &[],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_component_serves_no_step_here_at_once_and_none_elsewhere_past_the_bound() {
    let cli = Cli::new();
    let admin = create_token(&cli, "company-a", "alice", true);
    let config = cli.data_dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!("record_cache_seconds: {}\n", BOUND.as_secs_f64()),
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let here = ServerProcess::start(&cli, &wasm_dir(), &args);
    let there = ServerProcess::start(&cli, &wasm_dir(), &args);
    let upstream = RecordingServer::start();
    let component = json!({"name": "partner-api", "kind": "http",
        "config": {"provider": "http", "base_url": upstream.url(""), "auth_value": "Bearer cache-test", "max_retries": 0}});
    let (s, created) = call(
        "POST",
        &here.url("/api/v1/admin/components"),
        &admin,
        Some(("application/json", component.to_string().into_bytes())),
        &[],
    )
    .await;
    assert_eq!(s, 201, "{created}");
    // Both hosts use it (and so may keep its record).
    for server in [&here, &there] {
        let (s, v) = step(server, &admin).await;
        assert_eq!((s, v["status"].as_str()), (200, Some("ok")), "{v}");
    }

    let id = created["id"].as_str().unwrap();
    let (s, v) = call(
        "DELETE",
        &here.url(&format!("/api/v1/admin/components/{id}")),
        &admin,
        None,
        &[],
    )
    .await;
    assert!((200..300).contains(&s), "{s} {v}");
    let deleted_at = Instant::now();

    // The host whose store made the change: at once.
    let (s, v) = step(&here, &admin).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("access_denied")),
        "{v}"
    );

    // The other host: any step sent past the bound is refused. Steps sent before it may
    // still use the kept record.
    refused_past_the_bound(deleted_at, BOUND, || async {
        Answer::of_step(step(&there, &admin).await, (403, "access_denied"))
    })
    .await;
}
