//! `flow8-host modules new NAME --lang rust|js|python`: a new module's folder with its
//! manifest and source, a build recipe (`just build` there writes `NAME.wasm`) and an
//! example input, so that `just run-module DIR/NAME.wasm DIR/example-input.json` runs it
//! as written. JavaScript and Python get a copy of the WIT contract (their toolchains
//! read it) and their toolchain pinned as the examples in `modules/examples/` are.

use std::path::{Path, PathBuf};

/// A template's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust with `flow8-sdk`, built for wasm32-wasip2.
    Rust,
    /// JavaScript with componentize-js.
    Js,
    /// Python with componentize-py.
    Python,
}

/// Why a template was not written.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The name breaks the manifest's rule.
    #[error(
        "`{0}` is not a module name: 1-64 characters of a-z, 0-9 and `-`, starting with a letter"
    )]
    BadName(String),
    /// Nothing is overwritten.
    #[error("{0} exists already; choose another name or --dir")]
    Exists(PathBuf),
    /// The folder or a file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// What.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The WIT contract, for the toolchains that read it.
const WORLD_WIT: &str = include_str!("../../../wit/world.wit");

/// The SDK the Rust template depends on: this repository's (the SDK is not published).
fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk")
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The `flow8:module-name` custom section naming `name` (what the Rust SDK writes; see
/// `runtime::name_hint`), as `printf` octal escapes of its id, size and name length:
/// appended to a built component it lets a host skip it, uncompiled, when a step names
/// another module. `name` is at most 64 bytes, so each length is one LEB128 byte.
fn name_section_escapes(name: &str) -> String {
    let section = crate::runtime::name_hint::SECTION;
    format!(
        "\\000\\{:03o}\\{:03o}{section}",
        1 + section.len() + name.len(),
        section.len()
    )
}

/// The files of a module `name` in `lang`, by relative path.
pub fn files(name: &str, lang: Lang, sdk: &Path) -> Vec<(&'static str, String)> {
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{sdk}}", &sdk.display().to_string())
            .replace("{{name_section}}", &name_section_escapes(name))
    };
    let input = r#"{"name": "flow8"}
"#
    .to_string();
    match lang {
        Lang::Rust => vec![
            ("Cargo.toml", fill(RUST_CARGO)),
            ("src/lib.rs", fill(RUST_LIB)),
            ("justfile", fill(RUST_JUSTFILE)),
            ("example-input.json", input),
        ],
        Lang::Js => vec![
            ("package.json", fill(JS_PACKAGE)),
            ("app.js", fill(JS_APP)),
            ("justfile", fill(JS_JUSTFILE)),
            ("wit/world.wit", WORLD_WIT.to_string()),
            ("example-input.json", input),
        ],
        Lang::Python => vec![
            ("requirements.txt", "componentize-py==0.25.1\n".to_string()),
            ("app.py", fill(PY_APP)),
            ("justfile", fill(PY_JUSTFILE)),
            ("wit/world.wit", WORLD_WIT.to_string()),
            ("example-input.json", input),
        ],
    }
}

/// Write module `name` in `lang` into `dir` (which must not exist); returns the files.
pub fn write(
    name: &str,
    lang: Lang,
    dir: &Path,
    sdk: Option<&Path>,
) -> Result<Vec<PathBuf>, TemplateError> {
    if !valid_name(name) {
        return Err(TemplateError::BadName(name.to_string()));
    }
    if dir.exists() {
        return Err(TemplateError::Exists(dir.to_path_buf()));
    }
    let sdk = sdk.map(Path::to_path_buf).unwrap_or_else(default_sdk);
    let mut written = Vec::new();
    for (rel, text) in files(name, lang, &sdk) {
        let path = dir.join(rel);
        let io = |source| TemplateError::Write {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, text).map_err(io)?;
        written.push(path);
    }
    Ok(written)
}

const RUST_CARGO: &str = r#"[package]
name = "{{name}}"
version = "0.1.0"
edition = "2024"
publish = false

# A workspace of its own, so it builds wherever it is.
[workspace]

[lib]
crate-type = ["cdylib"]

[dependencies]
flow8-sdk = { path = "{{sdk}}" }
serde_json = "1"

[profile.release]
opt-level = "s"
strip = true
"#;

const RUST_LIB: &str = r#"//! {{name}}: a flow8 module. The host calls `manifest` once when it loads the module
//! and `execute` once per step, in a fresh sandbox.

use flow8_sdk::{Error, Manifest, Module};
use serde_json::{Value, json};

struct Main;

impl Module for Main {
    type Input = Value;
    type Output = Value;

    fn manifest() -> Manifest {
        Manifest::new("{{name}}", "0.1.0")
            .description("Greets whoever the input names.")
            .input_schema(json!({"type": "object", "properties": {"name": {"type": "string"}}}))
        // Declare credentials (`.credential(Credential::component("api", "http"))`) and
        // the hosts it may call (`.allowed_host("https://api.example.com")`) here.
    }

    fn execute(input: Value) -> Result<Value, Error> {
        let who = input["name"].as_str().unwrap_or("world");
        Ok(json!({"greeting": format!("Hello, {who}!")}))
    }
}

flow8_sdk::export_module!(Main);
"#;

const RUST_JUSTFILE: &str = r#"target_dir := env_var_or_default("CARGO_TARGET_DIR", justfile_directory() / "target")

# Build {{name}}.wasm (wasm32-wasip2).
build:
    rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
    cargo build --target wasm32-wasip2 --release
    cp {{target_dir}}/wasm32-wasip2/release/{{crate}}.wasm {{name}}.wasm
"#;

const JS_PACKAGE: &str = r#"{
  "name": "{{name}}",
  "private": true,
  "type": "module",
  "devDependencies": {
    "@bytecodealliance/componentize-js": "0.23.0",
    "@bytecodealliance/jco": "1.34.0"
  }
}
"#;

const JS_APP: &str = r#"// {{name}}: a flow8 module. The host calls `manifest` once when it loads the module
// and `execute` once per step, in a fresh sandbox. `fetch` works (standard wasi:http):
// name a credential binding in the `flow8-credential` header to have the host attach it.

export function manifest() {
  return JSON.stringify({
    manifest_version: 1,
    name: '{{name}}',
    version: '0.1.0',
    description: 'Greets whoever the input names.',
    input_schema: { type: 'object', properties: { name: { type: 'string' } } },
    credentials: [],
    allowed_hosts: [],
  });
}

export async function execute(inputText) {
  const input = JSON.parse(inputText);
  return JSON.stringify({ greeting: `Hello, ${input.name ?? 'world'}!` });
}
"#;

const JS_JUSTFILE: &str = r#"componentize := env_var_or_default("COMPONENTIZE_JS", justfile_directory() / "node_modules/.bin/componentize-js")

# Build {{name}}.wasm (installs the pinned toolchain into node_modules first).
build:
    test -x "{{componentize}}" || npm install --no-audit --no-fund
    "{{componentize}}" app.js --wit wit --world-name module -o {{name}}.wasm
    printf '{{name_section}}%s' '{{name}}' >> {{name}}.wasm
"#;

const PY_APP: &str = r#""""{{name}}: a flow8 module. The host calls `manifest` once when it loads the module
and `execute` once per step, in a fresh sandbox. Host interfaces are in
`wit_world.imports` (http, credentials, log, ...)."""

import json

import wit_world


class WitWorld(wit_world.WitWorld):
    def manifest(self) -> str:
        return json.dumps(
            {
                "manifest_version": 1,
                "name": "{{name}}",
                "version": "0.1.0",
                "description": "Greets whoever the input names.",
                "input_schema": {"type": "object", "properties": {"name": {"type": "string"}}},
                "credentials": [],
                "allowed_hosts": [],
            }
        )

    def execute(self, input: str) -> str:
        step = json.loads(input)
        return json.dumps({"greeting": f"Hello, {step.get('name', 'world')}!"})
"#;

const PY_JUSTFILE: &str = r#"componentize := env_var_or_default("COMPONENTIZE_PY", justfile_directory() / ".venv/bin/componentize-py")

# Build {{name}}.wasm (installs the pinned toolchain into .venv first).
build:
    test -x "{{componentize}}" || (python3 -m venv .venv && .venv/bin/pip install --quiet -r requirements.txt)
    "{{componentize}}" -d wit -w module componentize app -o {{name}}.wasm
    printf '{{name_section}}%s' '{{name}}' >> {{name}}.wasm
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_manifest_rule() {
        for ok in ["a", "my-module", "m2"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "My", "2m", "a_b", "a/b", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn every_placeholder_is_filled_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        for lang in [Lang::Rust, Lang::Js, Lang::Python] {
            let target = dir.path().join(format!("{lang:?}"));
            let files = write("hello-x", lang, &target, None).unwrap();
            for f in &files {
                let text = std::fs::read_to_string(f).unwrap();
                for p in ["{{name}}", "{{crate}}", "{{sdk}}", "{{name_section}}"] {
                    assert!(!text.contains(p), "{} keeps {p}", f.display());
                }
            }
            assert!(matches!(
                write("hello-x", lang, &target, None),
                Err(TemplateError::Exists(_))
            ));
        }
    }
}
