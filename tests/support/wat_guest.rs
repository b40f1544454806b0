//! Test components made in the test from `tests/guests/wat/module.wat`: a component of
//! the flow8 `module` world in the WebAssembly text format with two core instances, each
//! with its own linear memory, and a manifest the test chooses. For what a Rust guest cannot
//! be: a component with two memories, or one whose manifest differs from test to test.

use std::path::{Path, PathBuf};

/// What the component's `execute` does and what its `manifest` says.
#[derive(Debug, Clone)]
pub struct WatGuest {
    /// The manifest JSON `manifest` returns.
    pub manifest: serde_json::Value,
    /// Pages (64 KiB) `execute` grows the main instance's memory by.
    pub grow_first: u32,
    /// Pages `execute` grows the other instance's memory by.
    pub grow_second: u32,
}

impl WatGuest {
    /// A guest named `name` (version 0.1.0) with this input schema, growing nothing.
    pub fn with_schema(name: &str, input_schema: serde_json::Value) -> WatGuest {
        WatGuest {
            manifest: serde_json::json!({
                "manifest_version": 1, "name": name, "version": "0.1.0",
                "input_schema": input_schema,
            }),
            grow_first: 0,
            grow_second: 0,
        }
    }

    /// The component's bytes.
    pub fn component(&self) -> Vec<u8> {
        self.component_with_imports("")
    }

    /// The component's bytes, with `imports` (component-level `(import ...)` forms, in
    /// the text format) added before everything else: interfaces it asks the host for
    /// and never calls.
    pub fn component_with_imports(&self, imports: &str) -> Vec<u8> {
        let manifest = self.manifest.to_string();
        let escaped: String = manifest.bytes().map(|b| format!("\\{b:02x}")).collect();
        let text = std::fs::read_to_string(crate::repo_root().join("tests/guests/wat/module.wat"))
            .expect("tests/guests/wat/module.wat")
            .replace("\"MANIFEST\"", &format!("\"{escaped}\""))
            .replace("MANIFEST_LEN", &manifest.len().to_string())
            .replace("GROW0", &self.grow_first.to_string())
            .replace("GROW1", &self.grow_second.to_string())
            .replacen("(component\n", &format!("(component\n{imports}\n"), 1);
        wat::parse_str(&text).expect("the WAT template is a valid component")
    }

    /// Write the component to `dir/<file>.wasm`; the path is a `module_ref`.
    pub fn write(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(format!("{file}.wasm"));
        std::fs::write(&path, self.component()).expect("write the component");
        path
    }
}
