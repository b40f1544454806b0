//! The README's `## Layout` table names every part of the host a newcomer looks for: each
//! file and folder under `host/src/` (but the crate roots `lib.rs` and `main.rs`), each
//! crate under `host/crates/`, and every top-level folder. A part added without a row, or
//! a row naming a part that is gone, fails here.

use flow8_tests::repo_root;
use std::collections::BTreeSet;

/// The backticked paths in the layout table's first column.
fn layout_paths(readme: &str) -> BTreeSet<String> {
    let section = readme
        .split("\n## Layout")
        .nth(1)
        .expect("README.md has a `## Layout` section");
    let section = section.split("\n## ").next().unwrap_or("");
    let mut paths = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let first_column = row.split(" | ").next().unwrap_or("");
        for (i, piece) in first_column.split('`').enumerate() {
            if i % 2 == 1 {
                paths.insert(piece.trim_end_matches('/').to_string());
            }
        }
    }
    paths
}

#[test]
fn the_readme_layout_table_matches_the_tree() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let listed = layout_paths(&readme);
    let mut parts = Vec::new();
    for entry in std::fs::read_dir(root.join("host/src")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name != "lib.rs" && name != "main.rs" {
            parts.push(format!("host/src/{name}"));
        }
    }
    for entry in std::fs::read_dir(root.join("host/crates")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        parts.push(format!("host/crates/{name}"));
    }
    for top in [
        "wit",
        "sdk",
        "modules",
        "tests",
        "host/catalogue/providers.yaml",
        "host/templates",
    ] {
        parts.push(top.to_string());
    }
    let missing: Vec<&String> = parts.iter().filter(|p| !listed.contains(*p)).collect();
    assert!(
        missing.is_empty(),
        "README.md's layout table lacks {missing:?}"
    );
    let gone: Vec<&String> = listed
        .iter()
        .filter(|p| !root.join(p.as_str()).exists())
        .collect();
    assert!(
        gone.is_empty(),
        "README.md's layout table names paths that do not exist: {gone:?}"
    );
}

/// The module names in the first column of the README's `## First-party modules` table,
/// each with the rest of its row. Only the one table counts: its lines run unbroken
/// from the header (a row after a blank line or a paragraph is not in the table as
/// Markdown renders it).
fn module_rows(readme: &str) -> Vec<(String, String)> {
    let section = readme
        .split("\n## First-party modules")
        .nth(1)
        .expect("README.md has a `## First-party modules` section");
    let section = section.split("\n## ").next().unwrap_or("");
    let table = section
        .lines()
        .skip_while(|l| !l.starts_with("| module |"))
        .take_while(|l| l.starts_with('|'));
    let mut rows = Vec::new();
    for row in table.filter(|l| l.starts_with("| `")) {
        let mut columns = row.split(" | ");
        let first = columns.next().unwrap_or("");
        let rest: Vec<&str> = columns.collect();
        for (i, piece) in first.split('`').enumerate() {
            if i % 2 == 1 {
                rows.push((piece.to_string(), rest.join(" | ")));
            }
        }
    }
    rows
}

/// Every module folder (a crate under `modules/` that exports a module; not the shared
/// client crates `graph` and `google-common`, nor `examples/`) has a row in the README's
/// module table saying its credential binding and hosts, a README of its own and at
/// least one example input (a JSON object with a `link_id` when it binds a link); and
/// every row names a module folder.
#[test]
fn the_readme_module_table_names_every_module() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let rows = module_rows(&readme);
    let listed: BTreeSet<&str> = rows.iter().map(|(m, _)| m.as_str()).collect();
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(root.join("modules")).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(lib) = std::fs::read_to_string(dir.join("src/lib.rs")) else {
            continue;
        };
        if lib.contains("export_module!") {
            modules.insert(dir.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(modules.len() >= 19, "found only {modules:?}");
    let missing: Vec<&String> = modules
        .iter()
        .filter(|m| !listed.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md's module table lacks {missing:?}"
    );
    let gone: Vec<&&str> = listed.iter().filter(|m| !modules.contains(**m)).collect();
    assert!(
        gone.is_empty(),
        "README.md's module table names modules that are not in modules/: {gone:?}"
    );
    for (module, rest) in &rows {
        let columns: Vec<&str> = rest.split(" | ").collect();
        assert!(
            columns.len() >= 3
                && columns
                    .iter()
                    .all(|c| !c.trim_matches(['|', ' ']).is_empty()),
            "{module}: the row says what it does, its credential and its hosts: {rest}"
        );
        let dir = root.join("modules").join(module);
        assert!(dir.join("README.md").is_file(), "{module} has no README.md");
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        let binds_a_link = lib.contains("oauth_link(");
        let examples: Vec<_> = std::fs::read_dir(dir.join("examples"))
            .unwrap_or_else(|_| panic!("{module} has no examples/"))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        assert!(!examples.is_empty(), "{module} has no example input");
        // One example is the step's input (others may be a component's fields).
        let inputs: Vec<serde_json::Value> = examples
            .iter()
            .map(|p| {
                serde_json::from_str(&std::fs::read_to_string(p).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            })
            .collect();
        assert!(
            inputs.iter().all(serde_json::Value::is_object),
            "{module}: an example is not a JSON object"
        );
        if binds_a_link {
            assert!(
                inputs
                    .iter()
                    .any(|v| v.get("link_id").is_some()
                        || v["input_mapping"].get("link_id").is_some()),
                "{module} binds a link, but no example input names one"
            );
        }
    }
}
