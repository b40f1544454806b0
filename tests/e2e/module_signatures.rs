//! Module signatures end to end: `flow8-host modules keygen|sign`, installs over the API
//! where the operator requires signatures by trusted keys (unsigned, signed by an
//! untrusted key, and altered modules refused by name, each followed by a step that runs
//! normally), and the same check at load: a module installed before the operator
//! required signatures, or signed by a key since removed, stops running.

use crate::oci_distribution::{call, shared_modules, step};
use flow8_tests::{Cli, ServerProcess, create_token, wasm};
use serde_json::Value;
use std::path::Path;

struct Key {
    file: String,
    public: String,
    id: String,
}

fn keygen(cli: &Cli, dir: &Path, name: &str) -> Key {
    let file = dir.join(name).display().to_string();
    let v = cli.run(&["modules", "keygen", "--out", &file]).ok_json();
    // The private key never reaches stdout; the public one is what operators trust.
    let private = std::fs::read_to_string(&file).unwrap();
    let secret = private.trim().rsplit(':').next().unwrap().to_string();
    assert!(!v.to_string().contains(&secret));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key file is the owner's alone");
    }
    Key {
        file,
        public: v["public_key"].as_str().unwrap().to_string(),
        id: v["key_id"].as_str().unwrap().to_string(),
    }
}

fn sign(cli: &Cli, module: &Path, key: &Key, out: &Path) -> String {
    cli.run(&[
        "modules",
        "sign",
        &module.display().to_string(),
        "--key",
        &key.file,
        "--out",
        &out.display().to_string(),
    ])
    .ok_json();
    std::fs::read_to_string(out).unwrap().trim().to_string()
}

fn config(dir: &Path, required: bool, trusted: &[&Key]) -> String {
    let keys: Vec<String> = trusted
        .iter()
        .map(|k| format!("\"{}\"", k.public))
        .collect();
    let path = dir.join(format!("signatures-{required}-{}.yml", trusted.len()));
    std::fs::write(
        &path,
        format!(
            "module_signatures:\n  required: {required}\n  trusted_keys: [{}]\n",
            keys.join(", ")
        ),
    )
    .unwrap();
    path.display().to_string()
}

async fn install(
    server: &ServerProcess,
    token: &str,
    bytes: Vec<u8>,
    sig: Option<&str>,
) -> (u16, Value) {
    let headers: Vec<(&str, String)> = sig
        .map(|s| vec![("x-flow8-signature", s.to_string())])
        .unwrap_or_default();
    call(
        "POST",
        &server.url("/api/v1/admin/modules"),
        token,
        Some(("application/wasm", bytes)),
        &headers,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_need_a_trusted_signature_over_the_same_bytes() {
    let work = tempfile::tempdir().unwrap();
    let mut cli = Cli::new();
    let trusted = keygen(&cli, work.path(), "trusted.key");
    let stranger = keygen(&cli, work.path(), "stranger.key");
    let hostile = work.path().join("hostile.wasm");
    std::fs::copy(wasm("hostile_guest"), &hostile).unwrap();
    let other = work.path().join("other.wasm");
    std::fs::copy(wasm("no_manifest_guest"), &other).unwrap();
    let good_sig = sign(&cli, &hostile, &trusted, &work.path().join("good.sig"));
    let stranger_sig = sign(&cli, &hostile, &stranger, &work.path().join("stranger.sig"));
    // A trusted signature, but over other bytes: what an altered module carries.
    let other_sig = sign(&cli, &other, &trusted, &work.path().join("other.sig"));
    cli.env.push((
        "FLOW8_CONFIG".into(),
        config(work.path(), true, &[&trusted]),
    ));
    let admin = create_token(&cli, "acme", "alice", true);
    let shared = shared_modules();
    let server = ServerProcess::start(&cli, shared.path(), &[]);
    let bytes = std::fs::read(&hostile).unwrap();

    let (s, v) = install(&server, &admin, bytes.clone(), None).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (422, Some("signature_required")),
        "{v}"
    );
    let (_, v) = step(&server, &admin, "http-request").await;
    assert_eq!(
        v["error"], "invalid_input",
        "the next step runs (and fails only its own input): {v}"
    );
    let (s, v) = install(&server, &admin, bytes.clone(), Some(&stranger_sig)).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (422, Some("signature_invalid")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains(&stranger.id), "{v}");
    let (s, v) = install(&server, &admin, bytes.clone(), Some(&other_sig)).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (422, Some("signature_invalid")),
        "{v}"
    );
    let mut altered = bytes.clone();
    // A byte appended to a component's custom section area changes the digest while
    // keeping it loadable: a name section byte is not safe to flip, so append a custom
    // section (id 0, a 1-byte name "x", no payload).
    altered.extend_from_slice(&[0x00, 0x02, 0x01, b'x']);
    let (s, v) = install(&server, &admin, altered, Some(&good_sig)).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (422, Some("signature_invalid")),
        "{v}"
    );
    let (s, v) = install(
        &server,
        &admin,
        bytes.clone(),
        Some("{\"not\": \"a signature\"}"),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (422, Some("signature_invalid")),
        "{v}"
    );
    // None of those was stored.
    let (s, v) = step(&server, &admin, "hostile").await;
    assert_eq!(
        (s, v["error"].as_str()),
        (404, Some("module_not_found")),
        "{v}"
    );

    let (s, v) = install(&server, &admin, bytes.clone(), Some(&good_sig)).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["signed_by"], trusted.id.as_str());
    let (s, v) = step(&server, &admin, "hostile").await;
    assert_eq!((s, &v["output"]["ok"]), (200, &Value::Bool(true)), "{v}");
    assert!(server.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_check_signatures_again_under_the_current_policy() {
    let work = tempfile::tempdir().unwrap();
    let mut cli = Cli::new();
    let old = keygen(&cli, work.path(), "old.key");
    let new = keygen(&cli, work.path(), "new.key");
    let hostile = work.path().join("hostile.wasm");
    std::fs::copy(wasm("hostile_guest"), &hostile).unwrap();
    let old_sig = sign(&cli, &hostile, &old, &work.path().join("old.sig"));
    let admin = create_token(&cli, "acme", "alice", true);
    let shared = shared_modules();
    // Signatures trusted but not required: installed signed by `old`.
    cli.env
        .push(("FLOW8_CONFIG".into(), config(work.path(), false, &[&old])));
    let server = ServerProcess::start(&cli, shared.path(), &[]);
    let (s, v) = install(
        &server,
        &admin,
        std::fs::read(&hostile).unwrap(),
        Some(&old_sig),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(step(&server, &admin, "hostile").await.0, 200);
    assert!(server.terminate());

    // The operator now requires signatures and trusts only `new`: the installed module
    // is refused at load, by name, and the host goes on serving other steps.
    cli.env.pop();
    cli.env
        .push(("FLOW8_CONFIG".into(), config(work.path(), true, &[&new])));
    let server = ServerProcess::start(&cli, shared.path(), &[]);
    let (s, v) = step(&server, &admin, "hostile").await;
    assert_eq!(
        (s, v["error"].as_str()),
        (422, Some("signature_invalid")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains(&old.id), "{v}");
    let (_, v) = step(&server, &admin, "http-request").await;
    assert_eq!(
        v["error"], "invalid_input",
        "first-party modules need no signature (this one fails only its input): {v}"
    );
    assert!(server.terminate());

    // Trusting `old` again lets it run.
    cli.env.pop();
    cli.env.push((
        "FLOW8_CONFIG".into(),
        config(work.path(), true, &[&old, &new]),
    ));
    let server = ServerProcess::start(&cli, shared.path(), &[]);
    let (s, v) = step(&server, &admin, "hostile").await;
    assert_eq!(s, 200, "{v}");
    assert!(server.terminate());
}
