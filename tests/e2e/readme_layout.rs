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
