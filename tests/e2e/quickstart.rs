//! The README's quick start on a machine like a fresh one: `just test-prereqs` (the
//! first thing `just test` runs) is run with a PATH that hides some of the test
//! prerequisites, in its dry-run mode, and must plan to install exactly the missing
//! pieces, one at a time, and nothing that is already there (Debian's `npm` conflicts
//! with a Node.js that bundles its own, so installing it beside one breaks apt).
//! `just quickstart-check` runs both README commands for real in a fresh clone.

use flow8_tests::repo_root;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A bin folder holding only the tools the recipe needs to run, plus stand-ins for the
/// prerequisites the simulated machine `has`.
fn machine(has: &[&str], python_has_venv: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path();
    let just = on_path("just").expect("`just` is on PATH when `just test` runs the tests");
    symlink(just, bin.join("just")).unwrap();
    for tool in ["bash", "sh", "grep", "cat", "mktemp", "rm", "chmod"] {
        if let Some(p) = on_path(tool) {
            symlink(p, bin.join(tool)).unwrap();
        }
    }
    let stand_in = |name: &str, script: &str| {
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    for name in has {
        stand_in(name, "exit 0");
    }
    // python3 is always there (the machine's own); whether it can make a venv varies.
    stand_in("python3", if python_has_venv { "exit 0" } else { "exit 1" });
    dir
}

fn plan(bin: &Path) -> Vec<String> {
    let out = Command::new(bin.join("just"))
        .arg("--justfile")
        .arg(repo_root().join("justfile"))
        .arg("--working-directory")
        .arg(repo_root())
        .arg("test-prereqs")
        .env_clear()
        .env("PATH", bin)
        .env("HOME", bin)
        .env("FLOW8_PREREQS_DRY_RUN", "1")
        .output()
        .expect("run just test-prereqs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "just test-prereqs failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

fn packages(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("would install "))
        .map(|l| l.split(' ').next().unwrap())
        .collect()
}

#[test]
fn a_machine_with_everything_installs_nothing() {
    let m = machine(
        &["node", "npm", "chromium", "chromedriver", "docker-registry"],
        true,
    );
    let lines = plan(m.path());
    assert_eq!(packages(&lines), Vec::<&str>::new(), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("all present")), "{lines:?}");
}

#[test]
fn a_fresh_machine_with_nodejs_and_its_npm_gets_only_the_browser() {
    // The fresh machine of this kind: Node.js 20 with its bundled npm, no Chromium.
    let m = machine(&["node", "npm", "docker-registry"], true);
    assert_eq!(
        packages(&plan(m.path())),
        ["chromium", "chromium-driver"],
        "npm or nodejs must never be installed over a Node.js that has them"
    );
}

#[test]
fn a_bare_machine_gets_each_piece_on_its_own() {
    let m = machine(&[], false);
    assert_eq!(
        packages(&plan(m.path())),
        [
            "nodejs",
            "npm",
            "python3-venv",
            "chromium",
            "chromium-driver",
            "docker-registry"
        ]
    );
}

#[test]
fn only_the_missing_driver_is_installed_beside_a_browser() {
    let m = machine(&["node", "npm", "chromium", "docker-registry"], true);
    assert_eq!(packages(&plan(m.path())), ["chromium-driver"]);
}
