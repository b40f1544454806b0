//! Master-key rotation and moving between stores, driven through the `flow8-host` CLI
//! as an operator would, with a server running beside it: `keys rotate` killed half way
//! and resumed (on the embedded store with a key file, and on MongoDB with keys from the
//! environment), and `store export` / `store import` from the embedded store to MongoDB
//! and back with secrets sealed throughout, installed modules and webhook events with
//! them.

use flow8_host::store::embedded::EmbeddedStore;
use flow8_host::store::mongodb::MongoStore;
use flow8_host::store::{
    ComponentRecord, EventQuery, EventRecord, LinkRecord, ModuleRecord, Store, new_object_id, now,
};
use flow8_host::vault::{MasterKey, Vault};
use flow8_tests::mongo_server::MongoServer;
use flow8_tests::{Cli, RecordingServer, ServerProcess, contains_bytes, create_token, wasm_dir};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const KEY_1: &str = "0101010101010101010101010101010101010101010101010101010101010101";
const KEY_2: &str = "0202020202020202020202020202020202020202020202020202020202020202";

fn sealed_component(vault: &Vault, company: &str, name: &str, base_url: &str) -> ComponentRecord {
    let mut config = serde_json::Map::new();
    config.insert("provider".into(), json!("http"));
    config.insert("base_url".into(), json!(base_url));
    config.insert("auth_header".into(), json!("X-Api-Key"));
    let id = new_object_id();
    config.insert(
        "auth_value".into(),
        vault
            .encrypt(
                &format!("canary-{name}"),
                &flow8_host::store::sealing::component(company, &id, "auth_value"),
            )
            .to_json(),
    );
    ComponentRecord {
        id,
        company_id: company.into(),
        name: name.into(),
        kind: "http".into(),
        config,
        is_default: false,
        created_at: now(),
        updated_at: now(),
    }
}

/// Bytes standing for an installed module (the store keeps bytes; it does not load them).
const MODULE_BYTES: &[u8] = b"\0asm\x0d\0\x01\0 an installed module's bytes";

fn installed_module(company: &str) -> ModuleRecord {
    ModuleRecord {
        company_id: company.into(),
        name: "their-module".into(),
        version: "1.2.0".into(),
        digest: flow8_host::runtime::module::digest(MODULE_BYTES),
        size: MODULE_BYTES.len() as u64,
        installed_at: now().replace_nanosecond(0).unwrap(),
        installed_by: Some("alice".into()),
        signature: Some("ed25519:carried-over-signature".into()),
        source: Some("oci://registry.example/acme/their-module:1.2.0".into()),
        approval: None,
    }
}

fn webhook_event(company: &str) -> EventRecord {
    EventRecord {
        id: new_object_id(),
        company_id: company.into(),
        service: "slack".into(),
        provider_event_id: "Ev0EXPORT1".into(),
        link_id: None,
        event_type: "message".into(),
        payload: json!({"event": {"type": "message", "text": "carried over"}}),
        received_at: now().replace_nanosecond(0).unwrap(),
    }
}

/// The store holds the installed module (bytes too) and the event, as written.
async fn has_module_and_event<S: Store>(store: &S, module: &ModuleRecord, event: &EventRecord) {
    assert_eq!(
        store.list_modules("company-a").await.unwrap(),
        vec![module.clone()]
    );
    assert_eq!(
        store
            .get_module_bytes("company-a", &module.digest)
            .await
            .unwrap()
            .as_deref(),
        Some(MODULE_BYTES)
    );
    let events = store
        .list_events(
            "company-a",
            &EventQuery {
                limit: 10,
                ..EventQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(events, vec![event.clone()]);
}

fn sealed_link(vault: &Vault, company: &str) -> LinkRecord {
    let id = new_object_id();
    let seal = |plain: &str, field| {
        vault.encrypt(
            plain,
            &flow8_host::store::sealing::link(company, &id, field),
        )
    };
    LinkRecord {
        access_token: seal(
            "xoxb-canary-access",
            flow8_host::store::sealing::ACCESS_TOKEN,
        ),
        refresh_token: Some(seal(
            "xoxe-canary-refresh",
            flow8_host::store::sealing::REFRESH_TOKEN,
        )),
        id: id.clone(),
        user_id: "alice".into(),
        company_id: company.into(),
        integration_type: "slack".into(),
        token_expiry: None,
        scopes: vec!["chat:write".into()],
        provider_user_id: "U1".into(),
        provider_user_email: "alice@example.com".into(),
        provider_metadata: json!({}),
        status: flow8_host::store::LinkStatus::Active,
        status_reason: None,
        shared_with: Vec::new(),
        webhook_signature_secret: None,
        refresh_lease_owner: None,
        refresh_lease_until: None,
        refresh_retry_after: None,
        version: 0,
        created_at: now(),
        updated_at: now(),
    }
}

async fn seed<S: Store>(store: &S, vault: &Vault, components: usize, links: usize) {
    for i in 0..components {
        store
            .insert_component(sealed_component(
                vault,
                "company-a",
                &format!("bulk-{i}"),
                "https://api.example.com",
            ))
            .await
            .unwrap();
    }
    for _ in 0..links {
        store
            .insert_link(sealed_link(vault, "company-a"))
            .await
            .unwrap();
    }
}

/// Run a step on `server` with component `name` and check the credential arrived.
async fn step_uses(server: &ServerProcess, token: &str, api: &RecordingServer, name: &str) {
    let body = json!({"module_ref": "http-request", "bindings": {"request": name},
        "input_mapping": {"url": format!("/{name}")}});
    let r = reqwest::Client::new()
        .post(server.url("/api/v1/steps"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{v}");
    let got = api.requests();
    let last = got
        .iter()
        .rev()
        .find(|r| r.uri == format!("/{name}"))
        .expect("the request arrived");
    assert!(
        last.headers
            .iter()
            .any(|(k, v)| k == "x-api-key" && *v == format!("canary-{name}")),
        "{:?}",
        last.headers
    );
}

/// Run a slow `keys rotate` and SIGKILL it once it reports its first batch; what it
/// printed until then.
fn rotate_and_kill_after_first_batch(cli: &Cli, batch_size: &str) -> Vec<String> {
    let mut cmd = Command::new(flow8_tests::host_bin());
    cmd.args([
        "keys",
        "rotate",
        "--batch-size",
        batch_size,
        "--pause-ms",
        "300",
    ])
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
    .env("FLOW8_DATA_DIR", cli.data_dir.path())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in &cli.env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let line = err.next().expect("rotate printed progress").unwrap();
        seen.push(line.clone());
        if line.starts_with("progress:") {
            break;
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    seen
}

fn key_file_lines(cli: &Cli) -> Vec<String> {
    std::fs::read_to_string(cli.data_dir.path().join("master.key"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_killed_half_way_loses_nothing_and_resumes_while_a_server_serves() {
    let mut cli = Cli::new();
    cli.env.push(("FLOW8_COMPANY".into(), "company-a".into()));
    let member = create_token(&cli, "company-a", "alice", false);
    let api = RecordingServer::start();
    // Seed through the library (the store file and key file a host would use).
    {
        let store = EmbeddedStore::open(cli.data_dir.path()).await.unwrap();
        let vault = Vault::load(cli.data_dir.path()).unwrap();
        seed(&store, &vault, 59, 40).await;
        store
            .insert_component(sealed_component(&vault, "company-a", "api", &api.url("")))
            .await
            .unwrap();
    }
    let old_key = key_file_lines(&cli)[0].clone();
    let server = ServerProcess::start(&cli, &wasm_dir(), &[]);
    step_uses(&server, &member, &api, "api").await;

    // Start a slow rotation and kill it after its first batch.
    let seen = rotate_and_kill_after_first_batch(&cli, "10");
    assert!(
        seen.iter().any(|l| l.contains("new master key")),
        "{seen:?}"
    );
    let keys = key_file_lines(&cli);
    assert_eq!(keys.len(), 2, "new key first, the old one kept");
    assert_eq!(keys[1], old_key);

    // Half done: both keys seal secrets, and everything still opens.
    let status = cli.run(&["keys", "status"]).ok_json();
    let new_id = status["current_key_id"].as_str().unwrap().to_string();
    let by_key = status["secrets_by_key"].as_object().unwrap().clone();
    assert_eq!(by_key.len(), 2, "{status}");
    assert!(status["remaining"].as_u64().unwrap() > 0, "{status}");
    assert!(by_key[&new_id].as_u64().unwrap() > 0, "{status}");
    assert_eq!(status["rotation"]["state"], "running");
    // The running server serves throughout, whichever key seals the component now.
    step_uses(&server, &member, &api, "api").await;

    // Resume: no third key, everything re-sealed.
    let out = cli.run(&["keys", "rotate", "--batch-size", "25"]);
    let report = out.ok_json();
    assert!(out.stderr.contains("resuming"), "{}", out.stderr);
    assert_eq!(report["key_id"], new_id.as_str());
    assert!(report["unreadable"].as_array().unwrap().is_empty());
    assert_eq!(key_file_lines(&cli).len(), 2);
    let status = cli.run(&["keys", "status"]).ok_json();
    assert_eq!(status["remaining"], 0, "{status}");
    assert_eq!(status["unbound"], 0, "every secret is bound now: {status}");
    // 60 components with one secret, 40 links with two.
    assert_eq!(status["secrets_by_key"][&new_id], 140, "{status}");
    assert_eq!(status["rotation"]["state"], "done");
    // The server that started with the old key file reads the re-sealed secrets.
    step_uses(&server, &member, &api, "api").await;

    // Pruning right after the rotation waits for pending authorizations (ten minutes)
    // unless told not to; then the old key leaves the file and everything still opens.
    let early = cli.run(&["keys", "prune"]);
    assert_eq!(
        early.error_name().as_deref(),
        Some("conflict"),
        "{}",
        early.stderr
    );
    let pruned = cli
        .run(&["keys", "prune", "--ignore-pending-authorizations"])
        .ok_json();
    assert_eq!(
        pruned["dropped_key_ids"].as_array().map(Vec::len),
        Some(1),
        "{pruned}"
    );
    assert_eq!(key_file_lines(&cli), [keys[0].clone()]);
    step_uses(&server, &member, &api, "api").await;

    // The new key alone opens everything; the old key alone is refused at start.
    let mut new_only = Cli::new();
    new_only
        .env
        .push(("FLOW8_MASTER_KEY".into(), keys[0].clone()));
    new_only
        .env
        .push(("FLOW8_COMPANY".into(), "company-a".into()));
    let data = cli.data_dir.path().to_str().unwrap().to_string();
    let listed = new_only.run(&["--data-dir", &data, "components", "list"]);
    assert_eq!(listed.ok_json().as_array().map(Vec::len), Some(60));
    let mut old_only = Cli::new();
    old_only.env.push(("FLOW8_MASTER_KEY".into(), old_key));
    let refused = old_only.run(&["--data-dir", &data, "components", "list"]);
    assert_eq!(
        refused.error_name().as_deref(),
        Some("wrong_master_key"),
        "{}",
        refused.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_on_mongodb_with_keys_from_the_environment_killed_and_resumed() {
    let mongo = MongoServer::start();
    let uri = mongo.uri("flow8");
    {
        let store = MongoStore::connect(&uri).await.unwrap();
        let vault = Vault::new(MasterKey::parse(KEY_1).unwrap());
        store
            .put_meta("vault_check", &vault.check_value())
            .await
            .unwrap();
        seed(&store, &vault, 30, 20).await;
    }
    let with = |keys: &[(&str, &str)]| {
        let mut c = Cli::new();
        c.env.push(("FLOW8_STORE".into(), uri.clone()));
        for (k, v) in keys {
            c.env.push((k.to_string(), v.to_string()));
        }
        c
    };
    // The new key without the old one: refused at start, nothing touched.
    let out = with(&[("FLOW8_MASTER_KEY", KEY_2)]).run(&["keys", "rotate"]);
    assert_eq!(
        out.error_name().as_deref(),
        Some("wrong_master_key"),
        "{}",
        out.stderr
    );
    // New key current, old key in FLOW8_PREVIOUS_MASTER_KEYS: re-seal everything.
    let rotating = with(&[
        ("FLOW8_MASTER_KEY", KEY_2),
        ("FLOW8_PREVIOUS_MASTER_KEYS", KEY_1),
    ]);
    // Killed after its first batch of 5: half done, everything readable.
    rotate_and_kill_after_first_batch(&rotating, "5");
    let status = rotating.run(&["keys", "status"]).ok_json();
    let new_id = status["current_key_id"].as_str().unwrap().to_string();
    let done_before = status["secrets_by_key"][&new_id].as_u64().unwrap_or(0);
    assert!(done_before >= 5, "{status}");
    assert!(status["remaining"].as_u64().unwrap() > 0, "{status}");
    assert_eq!(status["rotation"]["state"], "running");
    // Resumed: the rest is re-sealed, nothing twice.
    let report = rotating.run(&["keys", "rotate"]).ok_json();
    assert_eq!(
        report["components_resealed"].as_u64().unwrap()
            + report["links_resealed"].as_u64().unwrap()
            + report["already_current"].as_u64().unwrap(),
        50
    );
    assert!(report["already_current"].as_u64().unwrap() >= 5, "{report}");
    let status = rotating.run(&["keys", "status"]).ok_json();
    // 30 components with one secret, 20 links with two.
    assert_eq!(status["secrets_by_key"][&new_id], 70, "{status}");
    assert_eq!(status["remaining"], 0, "{status}");
    let again = rotating.run(&["keys", "rotate"]).ok_json();
    assert_eq!(again["components_resealed"], 0);
    assert_eq!(again["already_current"], 50);
    // With keys from the environment, prune names the previous keys that can go.
    let pruned = rotating
        .run(&["keys", "prune", "--ignore-pending-authorizations"])
        .ok_json();
    let old_id = Vault::new(MasterKey::parse(KEY_1).unwrap()).key_id();
    assert_eq!(
        pruned["unused_previous_key_ids"],
        json!([old_id]),
        "{pruned}"
    );
    // Afterwards the new key alone is enough, and the old one alone is refused.
    let status = with(&[("FLOW8_MASTER_KEY", KEY_2)])
        .run(&["keys", "status"])
        .ok_json();
    assert_eq!(status["remaining"], 0, "{status}");
    assert_eq!(status["key_source"], "env");
    let out = with(&[("FLOW8_MASTER_KEY", KEY_1)]).run(&["keys", "status"]);
    assert_eq!(
        out.error_name().as_deref(),
        Some("wrong_master_key"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_from_embedded_import_into_mongodb_and_back() {
    let api = RecordingServer::start();
    let mut local = Cli::new();
    local.env.push(("FLOW8_MASTER_KEY".into(), KEY_1.into()));
    let member = create_token(&local, "company-a", "alice", false);
    let module = installed_module("company-a");
    let event = webhook_event("company-a");
    {
        let store = EmbeddedStore::open(local.data_dir.path()).await.unwrap();
        let vault = Vault::new(MasterKey::parse(KEY_1).unwrap());
        seed(&store, &vault, 5, 3).await;
        store
            .insert_component(sealed_component(&vault, "company-a", "api", &api.url("")))
            .await
            .unwrap();
        store
            .put_module(module.clone(), MODULE_BYTES.to_vec())
            .await
            .unwrap();
        assert!(store.insert_event(event.clone()).await.unwrap());
    }
    // Use the store once so the audit log has an entry to carry over.
    let server = ServerProcess::start(&local, &wasm_dir(), &[]);
    step_uses(&server, &member, &api, "api").await;
    drop(server);

    let file = local.data_dir.path().join("export.jsonl");
    let exported = local
        .run(&["store", "export", "--out", file.to_str().unwrap()])
        .ok_json();
    assert_eq!(exported["exported"]["components"], 6);
    assert_eq!(exported["exported"]["db_links"], 3);
    assert_eq!(exported["exported"]["api_tokens"], 1);
    assert_eq!(exported["exported"]["modules"], 1);
    assert_eq!(exported["exported"]["events"], 1);
    let bytes = std::fs::read(&file).unwrap();
    for canary in [
        "canary-api",
        "canary-bulk-0",
        "xoxb-canary-access",
        "xoxe-canary-refresh",
        &member,
    ] {
        assert!(
            !contains_bytes(&bytes, canary.as_bytes()),
            "{canary} in the export"
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    // Into MongoDB, by a host with the same key; a second import skips everything.
    let mongo = MongoServer::start();
    let mut cloud = Cli::new();
    cloud.env.push(("FLOW8_MASTER_KEY".into(), KEY_1.into()));
    cloud.env.push(("FLOW8_STORE".into(), mongo.uri("flow8")));
    let imported = cloud
        .run(&["store", "import", file.to_str().unwrap()])
        .ok_json();
    assert_eq!(imported["imported"]["components"], 6, "{imported}");
    assert_eq!(imported["imported"]["db_links"], 3);
    assert_eq!(imported["imported"]["api_tokens"], 1);
    assert!(imported["imported"]["audit_log"].as_u64().unwrap() >= 1);
    assert_eq!(imported["imported"]["modules"], 1);
    assert_eq!(imported["imported"]["events"], 1);
    has_module_and_event(
        &MongoStore::connect(&mongo.uri("flow8")).await.unwrap(),
        &module,
        &event,
    )
    .await;
    let again = cloud
        .run(&["store", "import", file.to_str().unwrap()])
        .ok_json();
    assert_eq!(again["imported"]["components"], 0);
    assert_eq!(again["skipped"]["components"], 6);
    assert_eq!(again["skipped"]["modules"], 1);
    assert_eq!(again["skipped"]["events"], 1);
    assert_eq!(again["imported"]["modules"], 0);
    assert_eq!(again["imported"]["events"], 0);
    assert_eq!(
        again["skipped"]["audit_log"],
        imported["imported"]["audit_log"]
    );
    // The moved API token and component work on a host serving from MongoDB.
    let server = ServerProcess::start(&cloud, &wasm_dir(), &[]);
    step_uses(&server, &member, &api, "api").await;
    drop(server);

    // A host with another key is refused before anything is written.
    let mut stranger = Cli::new();
    stranger.env.push(("FLOW8_MASTER_KEY".into(), KEY_2.into()));
    let out = stranger.run(&["store", "import", file.to_str().unwrap()]);
    assert_eq!(
        out.error_name().as_deref(),
        Some("wrong_master_key"),
        "{}",
        out.stderr
    );
    assert_eq!(
        stranger.run(&["components", "list"]).ok_json(),
        json!([]),
        "nothing was imported"
    );

    // And back: MongoDB to a fresh embedded store.
    let back_file = cloud.data_dir.path().join("back.jsonl");
    cloud
        .run(&["store", "export", "--out", back_file.to_str().unwrap()])
        .ok_json();
    let mut home = Cli::new();
    home.env.push(("FLOW8_MASTER_KEY".into(), KEY_1.into()));
    home.env.push(("FLOW8_COMPANY".into(), "company-a".into()));
    let back = home
        .run(&["store", "import", back_file.to_str().unwrap()])
        .ok_json();
    assert_eq!(back["imported"]["components"], 6);
    assert_eq!(back["imported"]["db_links"], 3);
    assert_eq!(back["imported"]["modules"], 1);
    assert_eq!(back["imported"]["events"], 1);
    has_module_and_event(
        &EmbeddedStore::open(home.data_dir.path()).await.unwrap(),
        &module,
        &event,
    )
    .await;
    let listed = home.run(&["components", "list"]).ok_json();
    assert_eq!(listed.as_array().map(Vec::len), Some(6));
    let server = ServerProcess::start(&home, &wasm_dir(), &[]);
    step_uses(&server, &member, &api, "api").await;
}
