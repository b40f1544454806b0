//! What the operator configures and sees, over real HTTP against `flow8-host serve`:
//! `/metrics` answers only the operator's metrics token and labels only modules that
//! resolved (a flood of junk `module_ref`s adds nothing), and connect links are built
//! from the configured `public_url`, whatever a request's `Host` or `X-Forwarded-*`
//! headers say. The compile cache stays within the size the operator configures.

use flow8_tests::{Cli, ServerProcess, create_token, wasm_dir};
use serde_json::{Value, json};

const METRICS_TOKEN: &str = "operator-metrics-token-5c1e9a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_answer_only_the_operators_token_and_label_only_resolved_modules() {
    let mut cli = Cli::new();
    cli.env
        .push(("FLOW8_METRICS_TOKEN".into(), METRICS_TOKEN.into()));
    let admin = create_token(&cli, "company-a", "alice", true);
    let server = ServerProcess::start(&cli, &wasm_dir(), &[]);
    let http = reqwest::Client::new();
    let metrics = |token: Option<&str>| {
        let mut req = http.get(server.url("/metrics"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    // No token, a company admin's token, a wrong one: the page is not theirs.
    for token in [
        None,
        Some(admin.as_str()),
        Some("operator-metrics-token-wrong"),
    ] {
        let r = metrics(token).await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{token:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "unauthorized", "{v}");
    }
    // Junk module names, some long: each is a step that did not resolve.
    let step = |module_ref: String| {
        http.post(server.url("/api/v1/steps"))
            .bearer_auth(&admin)
            .json(
                &json!({"name": "s", "module_ref": module_ref, "input_mapping": {"attack": "ok"}}),
            )
            .send()
    };
    for i in 0..40 {
        let r = step(format!("junk-{i}-{}", "x".repeat(2000)))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404);
    }
    // The next step runs normally.
    let r = step("hostile".into()).await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let r = metrics(Some(METRICS_TOKEN)).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains("junk-"), "a caller's text became a label");
    assert!(
        text.contains("flow8_steps_total{module=\"(unresolved)\",outcome=\"module_not_found\"} 40"),
        "{text}"
    );
    assert!(
        text.contains("flow8_steps_total{module=\"hostile\",outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(text.len() < 64 * 1024, "{}", text.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_links_use_the_configured_public_url_not_forwarded_headers() {
    let cli = Cli::new();
    // The provider is never called: only connect links are made.
    let config = "oauth_background_refresh_seconds: 0\npublic_url: https://flow8.example.com/integrations/\noauth2:\n  google:\n    client_id: flow8-test-client\n    redirect_uri: https://flow8.example.com/integrations/auth/callback\n    scopes: [drive]\n    authorize_url: http://127.0.0.1:9/authorize\n    token_url: http://127.0.0.1:9/token\n";
    let path = cli.data_dir.path().join("config.yml");
    std::fs::write(&path, config).unwrap();
    let member = create_token(&cli, "company-a", "alice", false);
    let server = ServerProcess::start(&cli, &wasm_dir(), &["--config", path.to_str().unwrap()]);
    let http = reqwest::Client::new();
    let session = |forged: bool| {
        let mut req = http
            .post(server.url("/api/v1/integrations/connect-sessions"))
            .bearer_auth(&member)
            .json(&json!({}));
        if forged {
            req = req
                .header("x-forwarded-host", "attacker.example")
                .header("x-forwarded-proto", "http")
                .header("host", "attacker.example");
        }
        req.send()
    };
    for forged in [true, false] {
        let r = session(forged).await.unwrap();
        assert_eq!(r.status().as_u16(), 201, "forged: {forged}");
        let v: Value = r.json().await.unwrap();
        let url = v["connect_url"].as_str().unwrap();
        assert!(
            url.starts_with("https://flow8.example.com/integrations/connect/"),
            "forged: {forged}: {v}"
        );
        assert!(!url.contains("attacker"), "{v}");
        assert_eq!(
            url.strip_prefix("https://flow8.example.com/integrations"),
            v["connect_path"].as_str(),
            "{v}"
        );
    }
    // The page itself is served here; on an https public URL its binding cookie is
    // Secure.
    let v: Value = session(false).await.unwrap().json().await.unwrap();
    let r = http
        .get(server.url(v["connect_path"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
}

/// Issue 17 item 5: the compile cache grew without bound (tens of MB per JavaScript or
/// Python module). With `compile_cache.max_mib` set below what three compiled modules
/// take, loading them leaves only what fits, and the host still loads what it evicted.
#[test]
fn the_compile_cache_keeps_within_its_configured_size() {
    let modules = tempfile::tempdir().unwrap();
    for m in ["http_request", "slack_message", "s3_upload"] {
        std::fs::copy(
            wasm_dir().join(format!("{m}.wasm")),
            modules.path().join(format!("{m}.wasm")),
        )
        .unwrap();
    }
    let cache = tempfile::tempdir().unwrap();
    let cwasm = || -> Vec<u64> {
        std::fs::read_dir(cache.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .map(|e| e.metadata().unwrap().len())
            .collect()
    };
    let mut cli = Cli::new();
    cli.env
        .push(("FLOW8_CACHE_DIR".into(), cache.path().display().to_string()));
    cli.env.push((
        "FLOW8_MODULES_PATH".into(),
        modules.path().display().to_string(),
    ));
    let list = |cli: &Cli, config: Option<&str>| {
        let mut args = Vec::new();
        let path = cli.data_dir.path().join("config.yml");
        if let Some(c) = config {
            std::fs::write(&path, c).unwrap();
            args.extend(["--config", path.to_str().unwrap()]);
        }
        args.extend(["modules", "list", "--json"]);
        let names = cli.run(&args).ok_json().to_string();
        for n in ["http-request", "slack-message", "s3-upload"] {
            assert!(names.contains(n), "{n} not listed: {names}");
        }
    };
    // Unbounded (the default limit is far above this), every module keeps its entry.
    list(&cli, None);
    let sizes = cwasm();
    assert_eq!(sizes.len(), 3, "{sizes:?}");
    // A limit all three do not fit in.
    let mib = 1;
    assert!(
        sizes.iter().sum::<u64>() > mib * 1024 * 1024,
        "entries too small for a {mib} MiB limit to matter: {sizes:?}"
    );
    let config = format!("compile_cache: {{ max_mib: {mib} }}\n");
    // At start the cache is brought within the limit; the modules still load (those
    // evicted are compiled again) and the cache stays within it after.
    list(&cli, Some(&config));
    let after = cwasm();
    assert!(
        after.iter().sum::<u64>() <= mib * 1024 * 1024 || after.len() == 1,
        "{after:?} over {mib} MiB"
    );
    assert!(
        !after.is_empty() && after.len() < 3,
        "the newest entries kept, not all: {after:?}"
    );
}
