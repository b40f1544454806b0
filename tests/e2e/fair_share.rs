//! Fair shares of the sandbox pool, over real HTTP against `flow8-host serve` with a
//! small pool: one company floods the host with slow steps, and another company's step
//! still runs at once; the flooding company's queue is bounded (`429
//! rate_limit_exceeded`, `Retry-After`); and once the flood has drained the first
//! company's next step runs normally.

use flow8_tests::{Cli, RecordingServer, Reply, ServerProcess, create_token, wasm_dir};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const METRICS_TOKEN: &str = "operator-metrics-token-fair-share";
const POOL: usize = 4;
const FLOOD: usize = 8;
/// Long enough that all of the flood is there at once, even on a loaded machine.
const FLOOD_DEADLINE: f64 = 12.0;

/// A gauge's value on the metrics page (0 when the page does not have it).
fn gauge(text: &str, name: &str) -> usize {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_companys_flood_does_not_starve_another_company() {
    let mut cli = Cli::new();
    cli.env
        .push(("FLOW8_METRICS_TOKEN".into(), METRICS_TOKEN.into()));
    let config = format!(
        "sandboxes: {{pool: {POOL}, per_company_running: 2, per_company_waiting: {}}}\n",
        FLOOD - 2
    );
    let path = cli.data_dir.path().join("config.yml");
    std::fs::write(&path, config).unwrap();
    let a = create_token(&cli, "company-a", "alice", false);
    let b = create_token(&cli, "company-b", "bob", false);
    let server = ServerProcess::start(&cli, &wasm_dir(), &["--config", path.to_str().unwrap()]);
    // The upstream of company A's steps answers only after their deadline: each holds
    // its sandbox until then.
    let upstream = RecordingServer::start();
    upstream
        .script((0..FLOOD).map(|_| Reply::text(200, "late").with_delay(Duration::from_secs(60))));
    let http = reqwest::Client::new();
    let step = |token: &str, input: Value, deadline: f64| {
        http.post(server.url("/api/v1/steps"))
            .bearer_auth(token)
            .json(
                &json!({"name": "s", "module_ref": "hostile", "input_mapping": input,
                "limits": {"deadline_seconds": deadline}}),
            )
            .send()
    };
    // One step first, so the module is loaded (compiled, on a cold cache) before the
    // flood: the flood's steps then only wait for sandboxes, not for the compiler.
    let r = step(&a, json!({"attack": "ok"}), 30.0).await.unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!((status, v["status"].as_str()), (200, Some("ok")), "{v}");

    let slow = json!({"attack": "http", "url": upstream.url("/slow")});
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| tokio::spawn(step(&a, slow.clone(), FLOOD_DEADLINE)))
        .collect();

    // Wait (bounded: the flood is on its way, nothing else signals it) until company A
    // has done its worst: every sandbox taken, or all of its steps running or queued.
    let until = Instant::now() + Duration::from_secs(FLOOD_DEADLINE as u64);
    loop {
        let text = http
            .get(server.url("/metrics"))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let (in_use, waiting) = (
            gauge(&text, "flow8_sandboxes_in_use"),
            gauge(&text, "flow8_sandboxes_waiting"),
        );
        if in_use == POOL || in_use + waiting >= FLOOD {
            break;
        }
        assert!(Instant::now() < until, "the flood never arrived: {text}");
        // The metrics have no change notification: a bounded poll (the deadline above).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Company B's step runs now, well within a deadline shorter than A's steps take.
    let r = step(&b, json!({"attack": "ok"}), 5.0).await.unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!((status, v["status"].as_str()), (200, Some("ok")), "{v}");

    // Company A's queue is full: one more step is refused at once, with a time to retry.
    let r = step(&a, json!({"attack": "ok"}), 3.0).await.unwrap();
    let (status, retry_after) = (r.status().as_u16(), r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (status, v["error"].as_str()),
        (429, Some("rate_limit_exceeded")),
        "{v}"
    );
    assert!(retry_after, "{v}");

    // A's steps end by their deadline: those that waited with `deadline_exceeded`;
    // those that ran with it too, or with the failed upstream call as their output
    // (200) or as the module's own error (422), depending on where the deadline met
    // them. None of them got the upstream's answer.
    for f in flood {
        let r = f.await.unwrap().unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert!(
            status == 504 || status == 422 || (status == 200 && v["output"]["error"].is_object()),
            "{status} {v}"
        );
    }
    // After the flood, company A's next step runs normally.
    let r = step(&a, json!({"attack": "ok"}), 10.0).await.unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!((status, v["status"].as_str()), (200, Some("ok")), "{v}");
}
