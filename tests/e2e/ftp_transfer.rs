//! The ftp-upload and ftp-download modules against a real FTP server (pyftpdlib,
//! `support/ftp_server.rs`), plain on loopback (where the operator allows plain-text
//! logins) and explicit FTPS on a certificate of a CA made for the test: small and
//! 50 MB files byte-identical both ways, remote directories created on request, the
//! component's base directory, and the named errors (wrong password, missing file,
//! permission denied, full disk, paths escaping the base directory or the workspace,
//! plain text the operator did not allow). The password never reaches the output or
//! the log.

use flow8_tests::ftp_server::{FtpServer, PASSWORD, USER};
use flow8_tests::{Cli, CliOutput};
use serde_json::{Value, json};
use std::path::Path;

fn cli_for(server: &FtpServer) -> Cli {
    let mut cli = Cli::new();
    // A plain server has no certificate.
    if !server.ca_file().exists() {
        return cli;
    }
    cli.env.push((
        "FLOW8_EXTRA_CA_FILE".into(),
        server.ca_file().to_string_lossy().into_owned(),
    ));
    cli
}

fn create_component(cli: &Cli, name: &str, port: u16, tls: bool, base_dir: &str, password: &str) {
    let body = json!({"name": name, "kind": "ftp", "config": {"provider": "ftp",
        "host": "localhost", "port": port, "tls": tls, "base_dir": base_dir,
        "username": USER, "password": password}});
    cli.run_with_stdin(&["components", "create", "-"], &body.to_string())
        .ok_json();
}

fn run(cli: &Cli, module: &str, ws: &Path, input: Value, bind: &str, extra: &[&str]) -> CliOutput {
    let input_path = cli.data_dir.path().join("ftp-input.json");
    std::fs::write(&input_path, input.to_string()).unwrap();
    let bind = format!("ftp={bind}");
    let mut args = vec![
        "run-module",
        module,
        input_path.to_str().unwrap(),
        "--workspace",
        ws.to_str().unwrap(),
        "--bind",
        &bind,
        "--allow-loopback",
        "--deadline-secs",
        "300",
    ];
    args.extend_from_slice(extra);
    let out = cli.run(&args);
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains(PASSWORD), "the password leaked: {text}");
    }
    out
}

fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
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

#[test]
fn small_and_50_mb_files_round_trip_over_explicit_ftps() {
    let server = FtpServer::start(true);
    let cli = cli_for(&server);
    create_component(&cli, "ftps", server.port, true, "/", PASSWORD);
    let ws = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ws.path().join("tmp")).unwrap();
    // Bytes that a text-mode transfer would change (CR, LF, NUL).
    let mut small = b"line\r\nline\nline\r\0\n".to_vec();
    small.extend(pseudo_random_bytes(10_000, 3));
    let large = pseudo_random_bytes(50 * 1024 * 1024, 17);
    std::fs::write(ws.path().join("tmp/small.bin"), &small).unwrap();
    std::fs::write(ws.path().join("large.bin"), &large).unwrap();

    for (file, remote, bytes) in [
        ("/tmp/small.bin", "reports/2026-04/small.bin", &small),
        ("large.bin", "big/large.bin", &large),
    ] {
        let out = run(
            &cli,
            "ftp-upload",
            ws.path(),
            json!({"file_path": file, "remote_path": remote, "create_dirs": true}),
            "ftps",
            &[],
        )
        .ok_json();
        assert_eq!(out["size"], bytes.len(), "{out}");
        assert_eq!(out["remote_path"], format!("/{remote}"));
        assert!(
            std::fs::read(server.root().join(remote)).unwrap() == **bytes,
            "{remote} differs on the server"
        );
    }
    // Every login was the component's, over TLS.
    assert!(!server.logins().is_empty());
    assert!(
        server
            .logins()
            .iter()
            .all(|(u, ok, tls)| u == USER && *ok && *tls),
        "{:?}",
        server.logins()
    );

    for (remote, file, bytes) in [
        ("reports/2026-04/small.bin", "/tmp/small-back.bin", &small),
        ("big/large.bin", "large-back.bin", &large),
    ] {
        let out = run(
            &cli,
            "ftp-download",
            ws.path(),
            json!({"remote_path": remote, "file_path": file}),
            "ftps",
            &[],
        )
        .ok_json();
        assert_eq!(out["size"], bytes.len(), "{out}");
        assert!(
            std::fs::read(ws.path().join(file.trim_start_matches('/'))).unwrap() == **bytes,
            "{file} differs in the workspace"
        );
    }
}

#[test]
fn plain_ftp_only_where_the_operator_allows_it_and_the_base_directory_holds() {
    let server = FtpServer::start(false);
    let cli = cli_for(&server);
    std::fs::create_dir_all(server.root().join("in")).unwrap();
    create_component(&cli, "plain", server.port, false, "/in", PASSWORD);
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("a.txt"), "hello\n").unwrap();
    let up = json!({"file_path": "a.txt", "remote_path": "a.txt"});

    let out = run(&cli, "ftp-upload", ws.path(), up.clone(), "plain", &[]);
    assert_eq!(out.error_name().as_deref(), Some("forbidden"), "{out:?}");
    assert!(
        out.stderr.contains("allow_plaintext_login"),
        "{}",
        out.stderr
    );
    assert!(server.logins().is_empty(), "it logged in anyway");

    let allow = ["--allow-plaintext-login"];
    let out = run(&cli, "ftp-upload", ws.path(), up, "plain", &allow).ok_json();
    assert_eq!(out["remote_path"], "/in/a.txt");
    assert_eq!(
        std::fs::read(server.root().join("in/a.txt")).unwrap(),
        b"hello\n"
    );
    let out = run(
        &cli,
        "ftp-download",
        ws.path(),
        json!({"remote_path": "a.txt", "file_path": "b.txt"}),
        "plain",
        &allow,
    )
    .ok_json();
    assert_eq!(out["size"], 6);
    assert_eq!(std::fs::read(ws.path().join("b.txt")).unwrap(), b"hello\n");

    // Out of the base directory, or of the workspace: refused before any transfer.
    std::fs::write(server.root().join("secret.txt"), "outside").unwrap();
    for (module, input, needle) in [
        (
            "ftp-download",
            json!({"remote_path": "../secret.txt", "file_path": "s.txt"}),
            "base directory",
        ),
        (
            "ftp-upload",
            json!({"file_path": "a.txt", "remote_path": "x/../../secret.txt"}),
            "base directory",
        ),
        (
            "ftp-upload",
            json!({"file_path": "a.txt", "remote_path": "a\r\nDELE /secret.txt"}),
            "control characters",
        ),
        (
            "ftp-upload",
            json!({"file_path": "../../etc/passwd", "remote_path": "p.txt"}),
            "../../etc/passwd",
        ),
        (
            "ftp-download",
            json!({"remote_path": "a.txt", "file_path": "../escaped.txt"}),
            "escaped.txt",
        ),
    ] {
        let out = run(&cli, module, ws.path(), input.clone(), "plain", &allow);
        assert_eq!(
            out.error_name().as_deref(),
            Some("invalid_input"),
            "{input}: {out:?}"
        );
        assert!(out.stderr.contains(needle), "{input}: {}", out.stderr);
    }
    assert_eq!(
        std::fs::read(server.root().join("secret.txt")).unwrap(),
        b"outside"
    );
    assert!(!ws.path().parent().unwrap().join("escaped.txt").exists());
    assert!(!ws.path().join("s.txt").exists());
}

#[test]
fn ftp_errors_come_back_named_and_the_next_step_still_runs() {
    let server = FtpServer::start(true);
    let cli = cli_for(&server);
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("a.txt"), "data").unwrap();

    create_component(&cli, "wrong", server.port, true, "/", "wrong-Pa55word-000");
    let out = run(
        &cli,
        "ftp-upload",
        ws.path(),
        json!({"file_path": "a.txt", "remote_path": "a.txt"}),
        "wrong",
        &[],
    );
    assert_eq!(
        out.error_name().as_deref(),
        Some("access_denied"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("wrong-Pa55word-000"), "{}", out.stderr);
    assert_eq!(server.logins(), [(USER.to_string(), false, true)]);
    assert!(!server.root().join("a.txt").exists());

    create_component(&cli, "ftps", server.port, true, "/", PASSWORD);
    let cases = [
        (
            "ftp-download",
            json!({"remote_path": "missing.txt", "file_path": "m.txt"}),
            "invalid_input",
            "missing.txt",
        ),
        (
            "ftp-upload",
            json!({"file_path": "a.txt", "remote_path": "no/such/dir/a.txt"}),
            "invalid_input",
            "no/such/dir",
        ),
        (
            "ftp-upload",
            json!({"file_path": "a.txt", "remote_path": "readonly/a.txt"}),
            "access_denied",
            "permission denied",
        ),
        (
            "ftp-upload",
            json!({"file_path": "a.txt", "remote_path": "full/a.txt"}),
            "upstream_error",
            "disk is full",
        ),
    ];
    for (module, input, name, needle) in cases {
        let out = run(&cli, module, ws.path(), input.clone(), "ftps", &[]);
        assert_eq!(out.error_name().as_deref(), Some(name), "{input}: {out:?}");
        assert!(out.stderr.contains(needle), "{input}: {}", out.stderr);
    }
    // A failed download leaves no partial file behind.
    assert!(!ws.path().join("m.txt").exists());

    // Nothing listens: network_error; loopback not allowed: forbidden.
    let dead = flow8_tests::ServerProcess::free_port();
    create_component(&cli, "dead", dead, true, "/", PASSWORD);
    let out = run(
        &cli,
        "ftp-upload",
        ws.path(),
        json!({"file_path": "a.txt", "remote_path": "a.txt"}),
        "dead",
        &[],
    );
    assert_eq!(
        out.error_name().as_deref(),
        Some("network_error"),
        "{out:?}"
    );
    let input_path = cli.data_dir.path().join("noloop.json");
    std::fs::write(
        &input_path,
        json!({"file_path": "a.txt", "remote_path": "a.txt"}).to_string(),
    )
    .unwrap();
    let out = cli.run(&[
        "run-module",
        "ftp-upload",
        input_path.to_str().unwrap(),
        "--workspace",
        ws.path().to_str().unwrap(),
        "--bind",
        "ftp=ftps",
    ]);
    assert_eq!(out.error_name().as_deref(), Some("forbidden"), "{out:?}");

    // After all that, the same server and component work.
    let out = run(
        &cli,
        "ftp-upload",
        ws.path(),
        json!({"file_path": "a.txt", "remote_path": "a.txt"}),
        "ftps",
        &[],
    )
    .ok_json();
    assert_eq!(out["size"], 4);
    assert_eq!(std::fs::read(server.root().join("a.txt")).unwrap(), b"data");
}

#[test]
fn the_ftp_password_never_reaches_the_module() {
    let server = FtpServer::start(true);
    let cli = cli_for(&server);
    create_component(&cli, "ftps", server.port, true, "/", PASSWORD);
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("f.bin"), pseudo_random_bytes(20_000, 5)).unwrap();
    let needle: Vec<u8> = PASSWORD.bytes().map(|b| b ^ 0x5a).collect();
    let hostile = flow8_tests::wasm_dir().join("hostile_guest.wasm");
    let scan = |input: Value| {
        let out = run(
            &cli,
            hostile.to_str().unwrap(),
            ws.path(),
            input,
            "ftps",
            &[],
        );
        out.ok_json()
    };
    let input = json!({"attack": "ftp_then_scan", "file_path": "f.bin", "remote_path": "f.bin", "needle_xor": needle});
    let out = scan(input.clone());
    assert_eq!(out["upload"]["size"], 20_000, "{out}");
    assert!(server.root().join("f.bin").exists());
    assert_eq!(out["needle_len"], PASSWORD.len());
    assert_eq!(out["memory_hits"], 0, "{out}");
    // Control: the scan finds the password when the module reads it on purpose.
    let mut control = input;
    control["read_first"] = json!("ftp");
    let out = scan(control);
    assert!(out["memory_hits"].as_u64().unwrap() >= 1, "{out}");
}

/// A download that fails halfway (here: the step's workspace budget runs out in the
/// middle of the transfer) leaves the file it would have replaced as it was, with no
/// partial file beside it; the same download within the budget replaces it whole.
#[test]
fn a_download_that_fails_halfway_leaves_the_old_file_as_it_was() {
    let server = FtpServer::start(false);
    let mut cli = cli_for(&server);
    let config_path = cli.data_dir.path().join("config.yml");
    std::fs::write(
        &config_path,
        "limits:\n  workspace_mib: 1\noutbound:\n  allow_plaintext_login: true\n",
    )
    .unwrap();
    cli.env
        .push(("FLOW8_CONFIG".into(), config_path.display().to_string()));
    create_component(&cli, "plain", server.port, false, "/", PASSWORD);
    let ws = tempfile::tempdir().unwrap();
    let old = pseudo_random_bytes(4_000, 23);
    std::fs::write(ws.path().join("report.bin"), &old).unwrap();
    std::fs::write(
        server.root().join("big.bin"),
        pseudo_random_bytes(3 * 1024 * 1024, 29),
    )
    .unwrap();

    let out = run(
        &cli,
        "ftp-download",
        ws.path(),
        json!({"remote_path": "big.bin", "file_path": "report.bin"}),
        "plain",
        &[],
    );
    assert_eq!(
        out.error_name().as_deref(),
        Some("limit_exceeded"),
        "{out:?}"
    );
    assert!(
        std::fs::read(ws.path().join("report.bin")).unwrap() == old,
        "a failed download changed the file it would have replaced"
    );
    let names: Vec<_> = std::fs::read_dir(ws.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        ["report.bin"],
        "nothing else is left in the workspace"
    );

    let small = pseudo_random_bytes(300_000, 31);
    std::fs::write(server.root().join("small.bin"), &small).unwrap();
    let out = run(
        &cli,
        "ftp-download",
        ws.path(),
        json!({"remote_path": "small.bin", "file_path": "report.bin"}),
        "plain",
        &[],
    )
    .ok_json();
    assert_eq!(out["size"], small.len(), "{out}");
    assert!(std::fs::read(ws.path().join("report.bin")).unwrap() == small);
}
