//! Where the host keeps its files and what its defaults are, shared by every command.

use std::path::PathBuf;

/// The data directory: `--data-dir`/`FLOW8_DATA_DIR`, else `$XDG_DATA_HOME/flow8`, else
/// `~/.local/share/flow8`, else `./.flow8`.
pub fn data_dir(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(d) = explicit {
        return d;
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("flow8");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/flow8");
    }
    PathBuf::from(".flow8")
}

/// Compiled-module cache: `FLOW8_CACHE_DIR`, else `<data-dir>/cache`.
pub fn cache_dir(data_dir: &std::path::Path) -> PathBuf {
    std::env::var_os("FLOW8_CACHE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| data_dir.join("cache"))
}

/// Installed modules: `<data-dir>/modules`.
pub fn installed_modules_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("modules")
}
