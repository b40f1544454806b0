//! The embedded store and the vault, through the CLI: secrets never reach the disk in
//! plaintext, and a wrong master key is a clear error, not garbage.

use flow8_tests::{Cli, contains_bytes};
use serde_json::json;

const CANARY_KEY_ID: &str = "AKIAIOSFODNN7CANARY1";
const CANARY_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYCANARYKEY1";

fn s3_body(name: &str) -> String {
    json!({
        "name": name,
        "kind": "storage",
        "config": {
            "provider": "s3",
            "bucket": "flow8-artifacts",
            "access_key_id": CANARY_KEY_ID,
            "secret_access_key": CANARY_SECRET
        }
    })
    .to_string()
}

#[test]
fn a_stored_secret_is_nowhere_in_the_data_directory_in_plaintext() {
    let cli = Cli::new();
    let out = cli.run_with_stdin(&["components", "create", "-"], &s3_body("aws-s3-prod"));
    let created = out.ok_json();
    // The flow8 document's response shape: no credentials, defaults filled in.
    assert_eq!(created["kind"], "storage");
    assert_eq!(created["is_default"], false);
    assert_eq!(
        created["config_summary"],
        json!({"provider": "s3", "bucket": "flow8-artifacts", "region": "us-east-1"})
    );
    assert!(!out.stdout.contains(CANARY_SECRET) && !out.stdout.contains(CANARY_KEY_ID));

    let files = cli.data_files();
    assert!(
        files
            .iter()
            .any(|(p, _)| p.to_string_lossy().contains("flow8.db")),
        "{files:?}"
    );
    for (path, bytes) in &files {
        for canary in [CANARY_SECRET, CANARY_KEY_ID] {
            assert!(
                !contains_bytes(bytes, canary.as_bytes()),
                "{} holds {canary} in plaintext",
                path.display()
            );
        }
    }
}

#[test]
fn a_wrong_master_key_fails_clearly() {
    let mut cli = Cli::new();
    cli.env.push(("FLOW8_MASTER_KEY".into(), "11".repeat(32)));
    cli.run_with_stdin(&["components", "create", "-"], &s3_body("aws-s3-prod"))
        .ok_json();

    cli.env = vec![("FLOW8_MASTER_KEY".into(), "22".repeat(32))];
    let out = cli.run(&["components", "list"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.error_name().as_deref(),
        Some("wrong_master_key"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty());

    // With the right key, everything is still there.
    cli.env = vec![("FLOW8_MASTER_KEY".into(), "11".repeat(32))];
    let list = cli.run(&["components", "list"]).ok_json();
    assert_eq!(list[0]["name"], "aws-s3-prod");
}

#[test]
fn bad_component_bodies_name_the_field_and_store_nothing() {
    let cli = Cli::new();
    let bad = json!({"name": "s3", "kind": "storage", "config": {"provider": "s3", "bucket": "b",
        "access_key_id": "not-a-key", "secret_access_key": CANARY_SECRET}});
    let out = cli.run_with_stdin(&["components", "create", "-"], &bad.to_string());
    assert_eq!(
        out.error_name().as_deref(),
        Some("invalid_input"),
        "{out:?}"
    );
    assert!(out.stderr.contains("access_key_id"), "{}", out.stderr);
    assert!(!out.stderr.contains(CANARY_SECRET));

    let out = cli.run_with_stdin(&["components", "create", "-"], "{\"name\": ");
    assert_eq!(
        out.error_name().as_deref(),
        Some("invalid_input"),
        "{out:?}"
    );

    assert_eq!(cli.run(&["components", "list"]).ok_json(), json!([]));

    // Duplicate names are a conflict, and the first one is kept.
    cli.run_with_stdin(&["components", "create", "-"], &s3_body("dup"))
        .ok_json();
    let out = cli.run_with_stdin(&["components", "create", "-"], &s3_body("dup"));
    assert_eq!(out.error_name().as_deref(), Some("conflict"), "{out:?}");
    assert_eq!(
        cli.run(&["components", "list"])
            .ok_json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
