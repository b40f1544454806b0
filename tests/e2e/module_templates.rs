//! `flow8-host modules new NAME --lang rust|js|python` (issue 15, item 3): each template
//! is written, built with its own recipe (`just build` in its folder) and run by the
//! host as `just run-module DIR/NAME.wasm DIR/example-input.json` runs it (the host
//! binary's `run-module`: `just run-module` would run cargo inside this cargo test).
//! The JavaScript and Python builds use the toolchains `just examples` installed.

use flow8_tests::{Cli, repo_root, wasm_dir};
use serde_json::json;
use std::path::Path;
use std::process::Command;

/// Write, build and run module `name` in `lang`; `env` is the build's environment.
fn new_build_run(name: &str, lang: &str, env: &[(&str, String)]) {
    let cli = Cli::new();
    let dir = cli.data_dir.path().join(name);
    let dir_text = dir.display().to_string();
    let out = cli
        .run(&["modules", "new", name, "--lang", lang, "--dir", &dir_text])
        .ok_json();
    assert_eq!(out["dir"], dir_text.as_str(), "{out}");
    assert!(dir.join("example-input.json").exists(), "{out}");
    let just = std::env::var_os("JUST").unwrap_or_else(|| "just".into());
    let mut build = Command::new(just);
    build.arg("build").current_dir(&dir);
    for (k, v) in env {
        build.env(k, v);
    }
    let built = build
        .output()
        .expect("run just (install it with `cargo install just`)");
    assert!(
        built.status.success(),
        "{lang}: just build failed:\n{}\n{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let wasm = dir.join(format!("{name}.wasm"));
    assert!(wasm.exists(), "{lang}: no {}", wasm.display());
    // Every template's build names the module where a host reads it uncompiled.
    let bytes = std::fs::read(&wasm).unwrap();
    assert_eq!(
        flow8_host::runtime::name_hint::read(&bytes).as_deref(),
        Some(name),
        "{lang}: the flow8:module-name section"
    );
    // Compiled into the tests' shared cache first: a 12-18 MB language runtime takes a
    // debug host on a busy machine longer than a step's deadline to compile, and a
    // step counts loading its module against the deadline.
    let wasm_text = wasm.display().to_string();
    let inspected = cli.run(&["modules", "inspect", &wasm_text]).ok_json();
    assert_eq!(inspected["name"], name, "{inspected}");
    let ran = cli
        .run(&[
            "run-module",
            &wasm.display().to_string(),
            &dir.join("example-input.json").display().to_string(),
        ])
        .ok_json();
    assert_eq!(ran, json!({"greeting": "Hello, flow8!"}), "{lang}");
}

fn tool(path: &str) -> String {
    let p = repo_root().join(path);
    assert!(
        p.exists(),
        "{} is missing: run `just examples` first",
        p.display()
    );
    p.display().to_string()
}

#[test]
fn the_rust_template_builds_and_runs() {
    // The guests' wasm target directory: warm, and not the directory this test's cargo
    // holds locked.
    let target = wasm_dir().join("../..");
    new_build_run(
        "template-rust",
        "rust",
        &[("CARGO_TARGET_DIR", target.display().to_string())],
    );
    // What the recipe built in that shared directory is not left for the registry.
    let _ =
        std::fs::remove_file(Path::new(&target).join("wasm32-wasip2/release/template_rust.wasm"));
}

#[test]
fn the_javascript_template_builds_and_runs() {
    new_build_run(
        "template-js",
        "js",
        &[(
            "COMPONENTIZE_JS",
            tool("modules/examples/js-fetch/node_modules/.bin/componentize-js"),
        )],
    );
}

#[test]
fn the_python_template_builds_and_runs() {
    new_build_run(
        "template-python",
        "python",
        &[(
            "COMPONENTIZE_PY",
            tool("modules/examples/python-echo/.venv/bin/componentize-py"),
        )],
    );
}

#[test]
fn a_bad_name_or_an_existing_folder_is_refused() {
    let cli = Cli::new();
    let out = cli.run(&["modules", "new", "Bad_Name"]);
    assert_eq!(
        out.error_name().as_deref(),
        Some("invalid_input"),
        "{out:?}"
    );
    let dir = cli.data_dir.path().display().to_string();
    let out = cli.run(&["modules", "new", "ok-name", "--dir", &dir]);
    assert_eq!(
        out.error_name().as_deref(),
        Some("invalid_input"),
        "{out:?}"
    );
    assert!(out.stderr.contains("exists already"), "{out:?}");
}
