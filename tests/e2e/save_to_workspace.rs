//! Responses streamed into the step's workspace (`http.send-to-workspace`, the modules'
//! `save_to`): a 20 MB body lands on disk byte for byte while the module runs in 16
//! MiB of memory (and the same body without `save_to` does not fit), the size cap
//! and the workspace budget leave no file behind, a path outside the workspace or in
//! a missing directory is refused, and an answer that is not 2xx comes back in the
//! output instead.

use flow8_tests::{Cli, RecordingServer, Reply};
use serde_json::{Value, json};

/// Bytes no compression or pattern makes easy (xorshift).
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A binary answer.
pub fn binary(bytes: Vec<u8>) -> Reply {
    Reply {
        status: 200,
        headers: vec![("content-type".into(), "application/octet-stream".into())],
        body: bytes,
        delay: std::time::Duration::ZERO,
    }
}

struct Run {
    cli: Cli,
    ws: tempfile::TempDir,
    api: RecordingServer,
}

impl Run {
    fn new() -> Run {
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir(ws.path().join("downloads")).unwrap();
        Run {
            cli: Cli::new(),
            ws,
            api: RecordingServer::start(),
        }
    }

    /// `run-module http-request` with `input` in this workspace, in 16 MiB of memory.
    fn run(&self, input: Value) -> flow8_tests::CliOutput {
        let path = self.cli.data_dir.path().join("input.json");
        std::fs::write(&path, input.to_string()).unwrap();
        self.cli.run(&[
            "run-module",
            "http-request",
            path.to_str().unwrap(),
            "--workspace",
            self.ws.path().to_str().unwrap(),
            "--memory-mib",
            "16",
            "--allow-loopback",
        ])
    }

    fn file(&self, path: &str) -> std::path::PathBuf {
        self.ws.path().join(path)
    }
}

#[test]
fn a_large_download_streams_to_disk_byte_for_byte() {
    let r = Run::new();
    let big = pseudo_random_bytes(20 * 1024 * 1024, 7);
    r.api.script([binary(big.clone())]);
    let out = r
        .run(json!({"url": r.api.url("/files/big.bin"), "save_to": {"path": "/downloads/big.bin"}}))
        .ok_json();
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["body"], Value::Null);
    assert_eq!(
        out["saved"],
        json!({"path": "/downloads/big.bin", "size": big.len()})
    );
    assert_eq!(out["headers"]["content-type"], "application/octet-stream");
    let on_disk = std::fs::read(r.file("downloads/big.bin")).unwrap();
    assert!(on_disk == big, "the file differs from what the server sent");

    // Control: the same answer through the module's memory does not fit in this step
    // (so the download above did not pass through it).
    r.api.script([binary(big.clone())]);
    let out = r.run(json!({"url": r.api.url("/files/big.bin"), "max_retries": 0}));
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(
        matches!(
            out.error_name().as_deref(),
            Some("limit_exceeded" | "memory_limit_exceeded")
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn caps_paths_and_error_answers() {
    let r = Run::new();
    let ok = || {
        r.api.script([binary(b"fine".to_vec())]);
        let out = r
            .run(json!({"url": r.api.url("/f"), "save_to": {"path": "downloads/ok.bin"}}))
            .ok_json();
        assert_eq!(out["saved"]["size"], 4, "{out}");
        assert_eq!(std::fs::read(r.file("downloads/ok.bin")).unwrap(), b"fine");
    };
    ok();

    // Longer than max_bytes: limit_exceeded and no file, whether the server says the
    // length up front or not (the recording server does).
    r.api.script([binary(pseudo_random_bytes(100_000, 3))]);
    let out = r.run(json!({"url": r.api.url("/f"), "save_to": {"path": "/downloads/capped.bin", "max_bytes": 1000}}));
    assert_eq!(
        out.error_name().as_deref(),
        Some("limit_exceeded"),
        "{}",
        out.stderr
    );
    assert!(!r.file("downloads/capped.bin").exists());
    ok();

    // Outside the workspace, or in a directory that is not there: refused before any
    // request is sent.
    let outside = tempfile::tempdir().unwrap();
    let escape = format!(
        "../{}/stolen.bin",
        outside.path().file_name().unwrap().to_string_lossy()
    );
    for path in [escape.as_str(), "/no-such-dir/x.bin", "/downloads", "/"] {
        let sent = r.api.requests().len();
        let out = r.run(json!({"url": r.api.url("/f"), "save_to": {"path": path}}));
        assert_eq!(
            out.error_name().as_deref(),
            Some("invalid_input"),
            "{path}: {}",
            out.stderr
        );
        assert_eq!(r.api.requests().len(), sent, "{path}: a request was sent");
        ok();
    }
    assert!(!outside.path().join("stolen.bin").exists());

    // Not 2xx: the answer comes back in the output, and no file is written.
    r.api
        .script([Reply::json(404, json!({"error": "not found"}))]);
    let out = r
        .run(json!({"url": r.api.url("/gone"), "save_to": {"path": "/downloads/gone.bin"}}))
        .ok_json();
    assert_eq!(out["status"], 404);
    assert_eq!(out["body"], json!({"error": "not found"}));
    assert!(out.get("saved").is_none(), "{out}");
    assert!(!r.file("downloads/gone.bin").exists());
    ok();
}

/// A download that fails after it started (here: longer than `max_bytes`, the server
/// not saying so up front is the same path) must not cost the user the file it would
/// have replaced: the old one stays byte for byte, and no partial file is left beside it.
#[test]
fn a_failed_download_leaves_the_file_it_would_replace_untouched() {
    let r = Run::new();
    let old = pseudo_random_bytes(5_000, 11);
    std::fs::write(r.file("downloads/report.bin"), &old).unwrap();
    r.api.script([binary(pseudo_random_bytes(100_000, 5))]);
    let out = r.run(json!({"url": r.api.url("/r"),
        "save_to": {"path": "/downloads/report.bin", "max_bytes": 50_000}}));
    assert_eq!(
        out.error_name().as_deref(),
        Some("limit_exceeded"),
        "{}",
        out.stderr
    );
    assert!(
        std::fs::read(r.file("downloads/report.bin")).unwrap() == old,
        "the file a failed download would have replaced changed"
    );
    let names: Vec<_> = std::fs::read_dir(r.file("downloads"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        ["report.bin"],
        "nothing else is left in the directory"
    );

    // A download that completes replaces it whole.
    let new = pseudo_random_bytes(20_000, 6);
    r.api.script([binary(new.clone())]);
    let out = r
        .run(json!({"url": r.api.url("/r"), "save_to": {"path": "/downloads/report.bin"}}))
        .ok_json();
    assert_eq!(out["saved"]["size"], new.len(), "{out}");
    assert!(std::fs::read(r.file("downloads/report.bin")).unwrap() == new);
}
