//! Modules through a real OCI registry (Debian's `docker-registry`, the CNCF
//! distribution registry, started by `support/oci_registry.rs`), with and without basic
//! auth: `flow8-host modules push`, `modules pull` and `run-module` on what came back,
//! installing over the API from an `oci://` reference, and digest pins in `module_ref`.

use flow8_tests::oci_registry::{self, OciRegistry};
use flow8_tests::wat_guest::WatGuest;
use flow8_tests::{Cli, ServerProcess, create_token, wasm};
use serde_json::{Value, json};
use std::path::Path;

/// The registry binary is a test prerequisite: say so instead of failing obscurely.
fn registry_installed() -> bool {
    if oci_registry::binary().is_none() {
        panic!("docker-registry is not installed: run `just test-prereqs`");
    }
    true
}

pub(crate) use flow8_tests::api_client::call;

pub(crate) async fn step(server: &ServerProcess, token: &str, module_ref: &str) -> (u16, Value) {
    let body = json!({"module_ref": module_ref, "input_mapping": {"attack": "ok"}});
    call(
        "POST",
        &server.url("/api/v1/steps"),
        token,
        Some(("application/json", body.to_string().into_bytes())),
        &[],
    )
    .await
}

/// A module directory with only `http-request` (so test modules keep their own names).
pub(crate) fn shared_modules() -> tempfile::TempDir {
    let shared = tempfile::tempdir().unwrap();
    std::fs::copy(
        wasm("http_request"),
        shared.path().join("http_request.wasm"),
    )
    .unwrap();
    shared
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("config.yml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_pull_and_run_through_a_registry_with_basic_auth() {
    assert!(registry_installed());
    let registry = OciRegistry::start(true);
    let work = tempfile::tempdir().unwrap();
    let module = work.path().join("hostile.wasm");
    std::fs::copy(wasm("hostile_guest"), &module).unwrap();
    let module_s = module.display().to_string();
    let mut cli = Cli::new();
    let key = work.path().join("publisher.key");
    let k = cli
        .run(&["modules", "keygen", "--out", &key.display().to_string()])
        .ok_json();
    let public_key = k["public_key"].as_str().unwrap().to_string();
    let signed = cli
        .run(&[
            "modules",
            "sign",
            &module_s,
            "--key",
            &key.display().to_string(),
        ])
        .ok_json();
    assert_eq!(signed["key_id"], k["key_id"]);
    let tag_ref = registry.reference("acme/hostile:0.1.0");

    // No credentials: the registry refuses, by name.
    let out = cli.run(&["modules", "push", &module_s, &tag_ref, "--insecure"]);
    assert_eq!(
        out.error_name().as_deref(),
        Some("registry_error"),
        "{out:?}"
    );
    // A wrong password: refused the same way, and the password is not printed.
    cli.env
        .push(("FLOW8_OCI_PASSWORD".into(), "wrong-password".into()));
    let out = cli.run(&[
        "modules",
        "push",
        &module_s,
        &tag_ref,
        "--insecure",
        "--username",
        oci_registry::USER,
    ]);
    assert_eq!(
        out.error_name().as_deref(),
        Some("registry_error"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("wrong-password"));
    cli.env.pop();
    cli.env
        .push(("FLOW8_OCI_PASSWORD".into(), oci_registry::PASSWORD.into()));
    let pushed = cli
        .run(&[
            "modules",
            "push",
            &module_s,
            &tag_ref,
            "--insecure",
            "--username",
            oci_registry::USER,
        ])
        .ok_json();
    let digest = pushed["digest"].as_str().unwrap().to_string();
    let manifest_digest = pushed["manifest_digest"].as_str().unwrap().to_string();
    assert!(manifest_digest.starts_with("sha256:"));
    assert_eq!(
        pushed["signature_tag"],
        format!("{}.sig", digest.replace(':', "-"))
    );

    // What the registry holds is the Wasm OCI artifact other hosts read: one
    // `application/wasm` layer whose digest is the module's, the wasm config type.
    let manifest: Value = reqwest::Client::new()
        .get(format!(
            "http://{}/v2/acme/hostile/manifests/0.1.0",
            registry.host
        ))
        .basic_auth(oci_registry::USER, Some(oci_registry::PASSWORD))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(manifest["layers"][0]["digest"], digest);
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.title"],
        "hostile"
    );

    // Pull (tag, then the pinned manifest digest) and run what came back.
    let out_dir = work.path().join("pulled");
    let pulled = cli
        .run(&[
            "modules",
            "pull",
            &tag_ref,
            "--out",
            &out_dir.display().to_string(),
            "--insecure",
            "--username",
            oci_registry::USER,
        ])
        .ok_json();
    assert_eq!(pulled["digest"], digest);
    assert_eq!(pulled["signed_by"], k["key_id"]);
    let path = pulled["path"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&module).unwrap()
    );
    assert!(
        Path::new(&format!("{path}.sig")).is_file(),
        "the signature beside it"
    );
    let pinned_ref = format!("{}@{manifest_digest}", registry.reference("acme/hostile"));
    let pinned = cli
        .run(&[
            "modules",
            "pull",
            &pinned_ref,
            "--out",
            &work.path().join("pinned").display().to_string(),
            "--insecure",
            "--username",
            oci_registry::USER,
        ])
        .ok_json();
    assert_eq!(pinned["digest"], digest);
    // A pin the registry does not have names nothing: refused, nothing written.
    let wrong = format!(
        "{}@sha256:{}",
        registry.reference("acme/hostile"),
        "0".repeat(64)
    );
    let none = work.path().join("none");
    let out = cli.run(&[
        "modules",
        "pull",
        &wrong,
        "--out",
        &none.display().to_string(),
        "--insecure",
        "--username",
        oci_registry::USER,
    ]);
    assert_eq!(
        out.error_name().as_deref(),
        Some("module_not_found"),
        "{out:?}"
    );
    assert!(!none.exists());
    let input = work.path().join("input.json");
    std::fs::write(&input, r#"{"attack": "ok"}"#).unwrap();
    let ran = cli
        .run(&["run-module", &path, &input.display().to_string()])
        .ok_json();
    assert_eq!(ran["ok"], true, "{ran}");

    // The API installs from the registry the operator lists, with its credentials,
    // where signatures are required and the publisher's key is trusted.
    let config = write_config(
        work.path(),
        &format!(
            "oci:\n  registries:\n    - host: \"{}\"\n      insecure: true\n      username: {}\n      password: {}\nmodule_signatures:\n  required: true\n  trusted_keys: [\"{public_key}\"]\n",
            registry.host,
            oci_registry::USER,
            oci_registry::PASSWORD
        ),
    );
    cli.env.push(("FLOW8_CONFIG".into(), config));
    let admin = create_token(&cli, "acme", "alice", true);
    let shared = shared_modules();
    let server = ServerProcess::start(&cli, shared.path(), &[]);
    let pull_url = server.url("/api/v1/admin/modules/pull");
    let body = |r: &str| {
        Some((
            "application/json",
            json!({"reference": r}).to_string().into_bytes(),
        ))
    };
    let (s, v) = call("POST", &pull_url, &admin, body(&tag_ref), &[]).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["digest"], digest.trim_start_matches("sha256:"));
    assert_eq!(v["signed_by"], k["key_id"]);
    assert_eq!(
        v["source"],
        format!("{}@{manifest_digest}", registry.reference("acme/hostile"))
    );
    let (s, v) = step(&server, &admin, "hostile").await;
    assert_eq!((s, &v["output"]["ok"]), (200, &json!(true)), "{v}");
    // A registry the operator does not list is refused before anything is fetched.
    let (s, v) = call(
        "POST",
        &pull_url,
        &admin,
        body("oci://169.254.169.254/latest/meta-data:1"),
        &[],
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (403, Some("forbidden")), "{v}");
    let (s, v) = call("POST", &pull_url, &admin, body("not a reference"), &[]).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_input")),
        "{v}"
    );
    let (s, v) = call("POST", &pull_url, &admin, body(&wrong), &[]).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (404, Some("module_not_found")),
        "{v}"
    );

    // `module_ref` pins: the installed bytes' digest runs, another digest is refused
    // by name, and the next step runs normally.
    let hex = digest.trim_start_matches("sha256:");
    let (s, v) = step(&server, &admin, &format!("hostile@sha256:{hex}")).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = step(
        &server,
        &admin,
        &format!("hostile@sha256:{}", "ab".repeat(32)),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (422, Some("digest_mismatch")),
        "{v}"
    );
    let (s, v) = step(&server, &admin, "hostile").await;
    assert_eq!(s, 200, "{v}");
    // A first-party module can be pinned too.
    let (s, v) = step(
        &server,
        &admin,
        &format!("http-request@sha256:{}", "cd".repeat(32)),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (422, Some("digest_mismatch")),
        "{v}"
    );
    assert!(server.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_registry_serves_modules_to_the_api_and_refuses_what_is_not_one() {
    assert!(registry_installed());
    let registry = OciRegistry::start(false);
    let work = tempfile::tempdir().unwrap();
    let guest = WatGuest::with_schema("oci-wat", json!({"type": "object"}));
    let path = guest.write(work.path(), "oci-wat").display().to_string();
    let cli = Cli::new();
    let r = registry.reference("tools/oci-wat:0.1.0");
    // Unsigned, anonymous: pushed as is.
    let pushed = cli
        .run(&["modules", "push", &path, &r, "--insecure"])
        .ok_json();
    assert_eq!(pushed["signature_tag"], Value::Null);
    // Plain HTTP is only ever used when asked for: without --insecure the client
    // speaks TLS to a plain-HTTP registry and fails, by name.
    let out = cli.run(&[
        "modules",
        "pull",
        &r,
        "--out",
        &work.path().display().to_string(),
    ]);
    assert_eq!(
        out.error_name().as_deref(),
        Some("registry_error"),
        "{out:?}"
    );
    // Something that is not a flow8 module (a file that is not a component) is not
    // pushed at all.
    let junk = work.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0").unwrap();
    let out = cli.run(&[
        "modules",
        "push",
        &junk.display().to_string(),
        &registry.reference("tools/junk:1"),
        "--insecure",
    ]);
    assert_eq!(
        out.error_name().as_deref(),
        Some("invalid_module"),
        "{out:?}"
    );
    // A pin on a push is refused (pushes go to tags).
    let out = cli.run(&[
        "modules",
        "push",
        &path,
        &format!(
            "{}@sha256:{}",
            registry.reference("tools/x"),
            "1".repeat(64)
        ),
        "--insecure",
    ]);
    assert_eq!(
        out.error_name().as_deref(),
        Some("invalid_input"),
        "{out:?}"
    );

    let mut cli = cli;
    let config = write_config(
        work.path(),
        &format!(
            "oci:\n  registries:\n    - host: \"{}\"\n      insecure: true\n",
            registry.host
        ),
    );
    cli.env.push(("FLOW8_CONFIG".into(), config));
    let admin = create_token(&cli, "acme", "alice", true);
    let member = create_token(&cli, "acme", "bob", false);
    let shared = shared_modules();
    let server = ServerProcess::start(&cli, shared.path(), &[]);
    let pull_url = server.url("/api/v1/admin/modules/pull");
    let body = |r: &str| {
        Some((
            "application/json",
            json!({"reference": r}).to_string().into_bytes(),
        ))
    };
    let (s, v) = call("POST", &pull_url, &member, body(&r), &[]).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("admin_required")),
        "{v}"
    );
    let (s, v) = call(
        "POST",
        &pull_url,
        &admin,
        body(&registry.reference("tools/missing:1")),
        &[],
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (404, Some("module_not_found")),
        "{v}"
    );
    let (s, v) = call("POST", &pull_url, &admin, body(&r), &[]).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["signed_by"], Value::Null);
    let (s, v) = call("POST", &pull_url, &admin, body(&r), &[]).await;
    assert_eq!((s, v["error"].as_str()), (409, Some("conflict")), "{v}");
    let (s, v) = step(&server, &member, "oci-wat").await;
    assert_eq!(s, 200, "{v}");
    let (s, audit) = call(
        "GET",
        &server.url("/api/v1/admin/audit?action_type=module_installed"),
        &admin,
        None,
        &[],
    )
    .await;
    assert_eq!(s, 200);
    assert!(audit.to_string().contains("oci://"), "{audit}");
    assert!(server.terminate());
}
