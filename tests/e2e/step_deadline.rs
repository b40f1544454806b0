//! The step deadline is the step's wall time: everything before the module runs (its
//! credentials, an OAuth refresh, the wait for a free sandbox) counts against it, and
//! a refresh the deadline cuts short still saves the tokens the provider rotated.

use flow8_host::app::{Host, HostSettings};
use flow8_host::config::HostConfig;
use flow8_host::runtime::error::ErrorName;
use flow8_host::runtime::sandbox::StepLimits;
use flow8_host::runtime::{EngineConfig, SandboxEngine, StepReport, StepRequest};
use flow8_host::store::Store;
use flow8_host::vault::{MasterKey, Vault};
use flow8_tests::oauth_server::OAuthServer;
use flow8_tests::{RecordingServer, in_process_host, shared_cache_dir, wasm_dir};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

const COMPANY: &str = "company-a";

fn limits(deadline: Duration) -> StepLimits {
    StepLimits {
        deadline,
        ..StepLimits::default()
    }
}

fn step(input: serde_json::Value, deadline: Duration) -> StepRequest {
    StepRequest {
        company_id: COMPANY.into(),
        module_ref: "hostile".into(),
        input,
        bindings: BTreeMap::new(),
        limits: Some(limits(deadline)),
        workspace: None,
        pinned_to: Vec::new(),
    }
}

fn assert_deadline(report: &StepReport) {
    let e = report.result.as_ref().expect_err("the step must fail");
    assert_eq!(e.name, ErrorName::DeadlineExceeded, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_token_refresh_counts_against_the_deadline_and_still_saves_its_tokens() {
    // The first access token lives 20 s, inside the refresh window: the first step must
    // refresh, and the provider holds its answer back, after spending the old refresh
    // token, until the test releases it.
    let provider = OAuthServer::start_gated(3600, &[20]);
    let api = RecordingServer::start();
    let data = tempfile::tempdir().unwrap();
    let mut config = HostConfig::default();
    config.outbound.allow_loopback = true;
    // Refreshed tokens live an hour: outside a 5-minute window, so they are used as is.
    config.oauth_refresh_window_seconds = 300;
    config.oauth2.insert(
        "google".into(),
        serde_json::from_value(json!({
            "client_id": "flow8-test-client", "client_secret": "test-secret",
            "redirect_uri": "http://127.0.0.1:1/auth/callback", "scopes": ["drive"],
            "authorize_url": format!("{}/authorize", provider.base),
            "token_url": format!("{}/token", provider.base),
            "revoke_url": format!("{}/revoke", provider.base),
            "identity_url": format!("{}/userinfo", provider.base),
            "api_hosts": ["http://127.0.0.1:*"],
        }))
        .unwrap(),
    );
    let host = in_process_host(config, data.path()).await;
    let oauth = host.oauth.clone().expect("google is configured");
    let auth_url = oauth
        .authorize_url(COMPANY, "alice", "google", "test-browser")
        .await
        .unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http.get(&auth_url).send().await.unwrap();
    let location = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let params: BTreeMap<String, String> = location
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let link = oauth.callback(&params, Some("test-browser")).await.unwrap();
    let first_token = link.access_token.clone();
    let input =
        json!({"attack": "http", "url": api.url("/x"), "credential": "google", "link_id": link.id});

    // The provider answers the refresh only when released below, so a step that ends
    // at all before then ended at its own deadline, not after the refresh. (Before the
    // deadline covered credential resolution, this step waited for the refresh: here it
    // would never end; the timeout only turns that into a failure.)
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        host.runtime
            .run_step(step(input.clone(), Duration::from_secs(1))),
    )
    .await
    .expect("the 1 s step ended while the provider still held the refresh");
    assert_deadline(&report);
    assert!(
        api.requests().is_empty(),
        "a step past its deadline sent a request"
    );
    assert_eq!(provider.token_requests("refresh_token"), 1);

    // The refresh goes on without the step and saves the rotated tokens.
    provider.release_refreshes();
    let saved = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let l = host
                .store
                .get_link(COMPANY, &link.id)
                .await
                .unwrap()
                .unwrap();
            if l.access_token != first_token {
                return l;
            }
            // A poll of the very thing under test, bounded by the timeout above: the
            // detached refresh task gives no signal of its own when it has saved.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the refresh saved new tokens");
    assert_eq!(saved.status, flow8_host::store::LinkStatus::Active);
    let report = host
        .runtime
        .run_step(step(input, Duration::from_secs(20)))
        .await;
    assert!(report.result.is_ok(), "{:?}", report.result);
    assert_eq!(
        provider.token_requests("refresh_token"),
        1,
        "the next step uses the saved token; no second refresh, no invalid_grant"
    );
    assert_eq!(api.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_for_a_free_sandbox_counts_against_the_deadline() {
    // A host with a single sandbox, held by a module that spins until its deadline.
    let engine = SandboxEngine::new(EngineConfig {
        pool_instances: 1,
        ..EngineConfig::default()
    })
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let settings = HostSettings::new(HostConfig::default(), data.path())
        .module_dirs([wasm_dir()])
        .engine(engine)
        .vault(Vault::new(MasterKey::generate()));
    let settings = HostSettings {
        cache_dir: Some(shared_cache_dir()),
        ..settings
    };
    let host = Host::from_config(settings).await.unwrap();
    // Load the module first, so only the sandbox wait is left to count.
    let warm = host
        .runtime
        .run_step(step(json!({"attack": "ok"}), Duration::from_secs(60)))
        .await;
    assert!(warm.result.is_ok(), "{:?}", warm.result);

    // The spinning step holds the only sandbox until its 8 s deadline.
    let busy = {
        let runtime = host.runtime.clone();
        tokio::spawn(async move {
            runtime
                .run_step(step(json!({"attack": "loop"}), Duration::from_secs(8)))
                .await
        })
    };
    // Until the spinning step holds the sandbox, a waiting step is not waiting yet.
    while host.modules.engine().sandboxes_in_use() == 0 {
        tokio::task::yield_now().await;
    }
    let waiting = host
        .runtime
        .run_step(step(json!({"attack": "loop"}), Duration::from_secs(1)))
        .await;
    assert_deadline(&waiting);
    // The sandbox never came free meanwhile, so the waiting step's clock ran while it
    // waited. (Before, the clock started when the sandbox came free: the waiting step
    // ended only after the spinning one.)
    assert!(
        !busy.is_finished(),
        "the waiting step ended only once the sandbox came free"
    );
    assert_eq!(host.modules.engine().sandboxes_in_use(), 1);
    assert_deadline(&busy.await.unwrap());
}
