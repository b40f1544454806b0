//! The smtp-send module against a real SMTP server (aiosmtpd, `support/smtp_server.rs`)
//! with AUTH and STARTTLS or implicit TLS on a certificate of a CA made for the test:
//! what the server received (envelope, headers, both bodies, attachment bytes, the AUTH
//! credentials the host used), and the named errors (wrong password, refused recipient,
//! temporary failures retried, unreachable server, addresses and plain text the
//! operator did not allow). The password never reaches the module's memory, the log
//! or the output.

use flow8_tests::smtp_server::{Mode, Options, PASSWORD, SmtpServer, USER};
use flow8_tests::{Cli, CliOutput, wasm_dir};
use serde_json::{Value, json};

/// A CLI whose host trusts the server's test CA.
fn cli_for(server: &SmtpServer) -> Cli {
    let mut cli = Cli::new();
    cli.env.push((
        "FLOW8_EXTRA_CA_FILE".into(),
        server.ca_file().to_string_lossy().into_owned(),
    ));
    cli
}

fn create_component(cli: &Cli, name: &str, server_port: u16, security: &str, password: &str) {
    let body = json!({
        "name": name,
        "kind": "smtp",
        "config": {
            "provider": "smtp",
            "host": "localhost",
            "port": server_port,
            "security": security,
            "from": "Flow8 Robot <flow8@example.com>",
            "username": USER,
            "password": password
        }
    });
    cli.run_with_stdin(&["components", "create", "-"], &body.to_string())
        .ok_json();
}

fn send(cli: &Cli, workspace: &std::path::Path, input: &Value, extra: &[&str]) -> CliOutput {
    let input_path = cli.data_dir.path().join("smtp-input.json");
    std::fs::write(&input_path, input.to_string()).unwrap();
    let mut args = vec![
        "run-module",
        "smtp-send",
        input_path.to_str().unwrap(),
        "--workspace",
        workspace.to_str().unwrap(),
        "--bind",
        "mail=smtp-test",
    ];
    args.extend_from_slice(extra);
    cli.run(&args)
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

fn simple(to: &str) -> Value {
    json!({"to": [to], "subject": "ping", "text": "ping"})
}

#[test]
fn an_email_with_both_bodies_and_attachments_arrives_as_sent() {
    let server = SmtpServer::start(Mode::StartTls);
    let cli = cli_for(&server);
    create_component(&cli, "smtp-test", server.port, "starttls", PASSWORD);
    let workspace = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(workspace.path().join("tmp")).unwrap();
    let pdf = pseudo_random_bytes(150_000, 9);
    std::fs::write(workspace.path().join("tmp/invoice.pdf"), &pdf).unwrap();
    std::fs::write(workspace.path().join("notes.txt"), "line one\nline two\n").unwrap();
    let input = json!({
        "to": ["Ann Example <ann@example.com>", "bob@example.com"],
        "cc": ["carol@example.com"],
        "bcc": ["archive@example.com"],
        "reply_to": ["billing@example.com"],
        "subject": "Invoice 2026-04 — Grüße",
        "text": "Hello Ann,\nyour invoice is attached.\n",
        "html": "<p>Hello Ann,</p><p>your invoice is <b>attached</b>.</p>",
        "attachments": [
            {"file_path": "/tmp/invoice.pdf", "filename": "invoice-2026-04.pdf", "content_type": "application/pdf"},
            {"file_path": "notes.txt"}
        ]
    });
    let out = send(
        &cli,
        workspace.path(),
        &input,
        &["--allow-loopback", "--report"],
    );
    let report = out.ok_json();
    assert_eq!(report["status"], "ok", "{report}");
    let output = &report["output"];
    let message_id = output["message_id"].as_str().unwrap().to_string();
    assert!(
        message_id.starts_with('<') && message_id.ends_with("@example.com>"),
        "{output}"
    );
    assert_eq!(
        output["accepted"],
        json!([
            "ann@example.com",
            "bob@example.com",
            "carol@example.com",
            "archive@example.com"
        ])
    );

    let got = server.received();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    // The host logged in with the component's credentials, over TLS.
    assert_eq!(m.auth_login.as_deref(), Some(USER));
    assert_eq!(m.auth_password.as_deref(), Some(PASSWORD));
    assert!(m.encrypted, "STARTTLS was not used");
    assert_eq!(m.mail_from, "flow8@example.com");
    assert_eq!(
        m.rcpt_tos,
        [
            "ann@example.com",
            "bob@example.com",
            "carol@example.com",
            "archive@example.com"
        ]
    );
    let p = &m.parsed;
    assert_eq!(p.header("From"), ["Flow8 Robot <flow8@example.com>"]);
    assert_eq!(
        p.header("To"),
        ["Ann Example <ann@example.com>, bob@example.com"]
    );
    assert_eq!(p.header("Cc"), ["carol@example.com"]);
    assert_eq!(p.header("Reply-To"), ["billing@example.com"]);
    assert_eq!(p.header("Subject"), ["Invoice 2026-04 — Grüße"]);
    assert_eq!(p.header("Message-ID"), [message_id.as_str()]);
    assert_eq!(p.header("Date").len(), 1);
    // Bcc recipients get the message; no header names them.
    assert!(p.header("Bcc").is_empty());
    assert!(!String::from_utf8_lossy(&m.data()).contains("archive@example.com"));
    assert_eq!(
        p.text
            .as_deref()
            .map(|t| t.replace("\r\n", "\n"))
            .as_deref(),
        Some("Hello Ann,\nyour invoice is attached.\n")
    );
    assert_eq!(
        p.html.as_deref().map(str::trim_end),
        Some("<p>Hello Ann,</p><p>your invoice is <b>attached</b>.</p>")
    );
    assert_eq!(p.attachments.len(), 2);
    assert_eq!(
        p.attachments[0].filename.as_deref(),
        Some("invoice-2026-04.pdf")
    );
    assert_eq!(p.attachments[0].content_type, "application/pdf");
    assert_eq!(p.attachments[0].data(), pdf, "attachment bytes differ");
    assert_eq!(p.attachments[1].filename.as_deref(), Some("notes.txt"));
    assert_eq!(p.attachments[1].content_type, "application/octet-stream");
    assert_eq!(p.attachments[1].data(), b"line one\nline two\n");

    // The audit trail names the server, and nothing the user sees holds the password.
    let used = report["credentials_used"].to_string();
    assert!(used.contains("smtp://localhost"), "{used}");
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains(PASSWORD), "the password leaked: {text}");
    }
    for (path, bytes) in cli.data_files() {
        assert!(
            !flow8_tests::contains_bytes(&bytes, PASSWORD.as_bytes()),
            "{} holds the password in plain text",
            path.display()
        );
    }
}

#[test]
fn implicit_tls_and_operator_allowed_plain_text_work() {
    let tls = SmtpServer::start(Mode::Tls);
    let cli = cli_for(&tls);
    create_component(&cli, "smtp-test", tls.port, "tls", PASSWORD);
    let ws = tempfile::tempdir().unwrap();
    send(
        &cli,
        ws.path(),
        &simple("ann@example.com"),
        &["--allow-loopback"],
    )
    .ok_json();
    let got = tls.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].encrypted);
    assert_eq!(got[0].auth_password.as_deref(), Some(PASSWORD));

    // A server without TLS: refused unless the operator allows plain-text logins.
    let plain = SmtpServer::start(Mode::Plain);
    let cli = cli_for(&plain);
    create_component(&cli, "smtp-test", plain.port, "none", PASSWORD);
    let out = send(
        &cli,
        ws.path(),
        &simple("ann@example.com"),
        &["--allow-loopback"],
    );
    assert_eq!(out.error_name().as_deref(), Some("forbidden"), "{out:?}");
    assert!(
        out.stderr.contains("allow_plaintext_login"),
        "{}",
        out.stderr
    );
    assert!(plain.auth_attempts().is_empty(), "it logged in anyway");
    let out = send(
        &cli,
        ws.path(),
        &simple("ann@example.com"),
        &["--allow-loopback", "--allow-plaintext-login"],
    )
    .ok_json();
    assert_eq!(out["accepted"], json!(["ann@example.com"]));
    assert!(!plain.received()[0].encrypted);

    // A component that asks for STARTTLS from a server that offers none is not
    // downgraded: nothing is sent, the password never crosses in clear.
    create_component(&cli, "smtp-starttls", plain.port, "starttls", PASSWORD);
    let input_path = cli.data_dir.path().join("in.json");
    std::fs::write(&input_path, simple("ann@example.com").to_string()).unwrap();
    let out = cli.run(&[
        "run-module",
        "smtp-send",
        input_path.to_str().unwrap(),
        "--bind",
        "mail=smtp-starttls",
        "--allow-loopback",
        "--allow-plaintext-login",
    ]);
    assert_eq!(
        out.error_name().as_deref(),
        Some("network_error"),
        "{out:?}"
    );
    assert!(out.stderr.contains("STARTTLS"), "{}", out.stderr);
    assert_eq!(
        plain.auth_attempts().len(),
        1,
        "only the allowed plain login"
    );
}

#[test]
fn smtp_errors_come_back_named_and_the_next_step_still_runs() {
    let server = SmtpServer::start_with(
        Mode::StartTls,
        Options {
            refuse: vec!["nobody@example.com".into()],
            tempfail: 0,
        },
    );
    let cli = cli_for(&server);
    let ws = tempfile::tempdir().unwrap();

    // A wrong password: access_denied, and the wrong password is not repeated.
    create_component(
        &cli,
        "smtp-test",
        server.port,
        "starttls",
        "wrong-Pa55word-000",
    );
    let out = send(
        &cli,
        ws.path(),
        &simple("ann@example.com"),
        &["--allow-loopback"],
    );
    assert_eq!(
        out.error_name().as_deref(),
        Some("access_denied"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("wrong-Pa55word-000"), "{}", out.stderr);
    assert_eq!(server.auth_attempts(), [(Some(USER.to_string()), false)]);
    assert!(server.received().is_empty());
    cli.run(&["components", "delete", "smtp-test"]).ok_json();

    // A refused recipient is named, and nothing is sent to the others.
    create_component(&cli, "smtp-test", server.port, "starttls", PASSWORD);
    let input =
        json!({"to": ["ann@example.com", "nobody@example.com"], "subject": "s", "text": "t"});
    let out = send(&cli, ws.path(), &input, &["--allow-loopback"]);
    assert_eq!(
        out.error_name().as_deref(),
        Some("invalid_input"),
        "{out:?}"
    );
    assert!(out.stderr.contains("nobody@example.com"), "{}", out.stderr);
    assert!(server.received().is_empty());

    // Bad addresses and paths are refused before any connection.
    for (input, needle) in [
        (json!({"to": ["not an address"], "subject": "s"}), "to[0]"),
        (
            json!({"to": ["a@example.com"], "subject": "a\r\nBcc: x@example.com"}),
            "subject",
        ),
        (
            json!({"to": ["a@example.com"], "subject": "s", "attachments": [{"file_path": "../../etc/passwd"}]}),
            "../../etc/passwd",
        ),
        (json!({"subject": "no one"}), "to"),
    ] {
        let out = send(&cli, ws.path(), &input, &["--allow-loopback"]);
        assert_eq!(
            out.error_name().as_deref(),
            Some("invalid_input"),
            "{input}: {out:?}"
        );
        assert!(out.stderr.contains(needle), "{input}: {}", out.stderr);
    }

    // Loopback is refused unless the operator allows it, like HTTP.
    let out = send(&cli, ws.path(), &simple("ann@example.com"), &[]);
    assert_eq!(out.error_name().as_deref(), Some("forbidden"), "{out:?}");

    // Nothing listens: network_error.
    let dead = flow8_tests::ServerProcess::free_port();
    create_component(&cli, "smtp-dead", dead, "starttls", PASSWORD);
    let input_path = cli.data_dir.path().join("dead.json");
    std::fs::write(&input_path, simple("ann@example.com").to_string()).unwrap();
    let out = cli.run(&[
        "run-module",
        "smtp-send",
        input_path.to_str().unwrap(),
        "--bind",
        "mail=smtp-dead",
        "--allow-loopback",
    ]);
    assert_eq!(
        out.error_name().as_deref(),
        Some("network_error"),
        "{out:?}"
    );

    // After all that, the same server and component send normally.
    let out = send(
        &cli,
        ws.path(),
        &simple("ann@example.com"),
        &["--allow-loopback"],
    )
    .ok_json();
    assert_eq!(out["accepted"], json!(["ann@example.com"]));
    assert_eq!(server.received().len(), 1);
}

#[test]
fn temporary_failures_are_retried_within_the_deadline() {
    let server = SmtpServer::start_with(
        Mode::StartTls,
        Options {
            refuse: vec![],
            tempfail: 2,
        },
    );
    let cli = cli_for(&server);
    create_component(&cli, "smtp-test", server.port, "starttls", PASSWORD);
    let ws = tempfile::tempdir().unwrap();
    let out = send(
        &cli,
        ws.path(),
        &simple("ann@example.com"),
        &["--allow-loopback"],
    )
    .ok_json();
    assert_eq!(out["accepted"], json!(["ann@example.com"]));
    // Two 451s, then accepted once: three logins, one message.
    assert_eq!(server.received().len(), 1);
    assert_eq!(server.auth_attempts().len(), 3);

    // With more failures than the deadline leaves time for: the 4xx comes back.
    let stubborn = SmtpServer::start_with(
        Mode::StartTls,
        Options {
            refuse: vec![],
            tempfail: 1000,
        },
    );
    let cli = cli_for(&stubborn);
    create_component(&cli, "smtp-test", stubborn.port, "starttls", PASSWORD);
    let out = send(
        &cli,
        ws.path(),
        &simple("ann@example.com"),
        &["--allow-loopback", "--deadline-secs", "4"],
    );
    assert_eq!(
        out.error_name().as_deref(),
        Some("upstream_error"),
        "{out:?}"
    );
    assert!(out.stderr.contains("451"), "{}", out.stderr);
    assert!(stubborn.received().is_empty());
}

fn run_hostile(cli: &Cli, input: &Value, binds: &[&str]) -> Value {
    let input_path = cli.data_dir.path().join("hostile.json");
    std::fs::write(&input_path, input.to_string()).unwrap();
    let wasm = wasm_dir().join("hostile_guest.wasm");
    let mut args = vec![
        "run-module",
        wasm.to_str().unwrap(),
        input_path.to_str().unwrap(),
        "--allow-loopback",
    ];
    for b in binds {
        args.push("--bind");
        args.push(b);
    }
    cli.run(&args).ok_json()
}

#[test]
fn the_smtp_password_never_reaches_the_module() {
    let server = SmtpServer::start(Mode::StartTls);
    let cli = cli_for(&server);
    create_component(&cli, "smtp-test", server.port, "starttls", PASSWORD);
    let needle: Vec<u8> = PASSWORD.bytes().map(|b| b ^ 0x5a).collect();
    let input = json!({"attack": "smtp_then_scan", "to": "ann@example.com", "needle_xor": needle});
    let out = run_hostile(&cli, &input, &["smtp=smtp-test"]);
    // The host logged in with the password and sent...
    assert!(out["sent"]["message_id"].is_string(), "{out}");
    assert_eq!(server.received().len(), 1);
    assert_eq!(
        server.received()[0].auth_password.as_deref(),
        Some(PASSWORD)
    );
    // ...and the module found it nowhere it can look.
    assert_eq!(out["needle_len"], PASSWORD.len());
    assert_eq!(out["config_has_secret"], false, "{out}");
    assert_eq!(out["memory_hits"], 0, "{out}");

    // Control: the same scan finds it when the module reads it on purpose.
    let mut control = input.clone();
    control["read_first"] = json!("smtp");
    let out = run_hostile(&cli, &control, &["smtp=smtp-test"]);
    assert!(out["memory_hits"].as_u64().unwrap() >= 1, "{out}");
    // Reading its own password does not stop the component's own server.
    assert!(out["sent"]["message_id"].is_string(), "{out}");

    // A step that read another credential may not send email: the message would carry
    // that secret to recipients no pin names.
    let body = json!({"name": "api", "kind": "http", "config": {"provider": "http",
        "base_url": "https://api.example.com", "auth_value": "Bearer other-secret-123"}});
    cli.run_with_stdin(&["components", "create", "-"], &body.to_string())
        .ok_json();
    let mut tainted = input.clone();
    tainted["read_first"] = json!("api");
    let out = run_hostile(&cli, &tainted, &["smtp=smtp-test", "api=api"]);
    assert_eq!(out["sent"]["error"]["kind"], "forbidden", "{out}");
    assert_eq!(server.received().len(), 2, "the tainted step sent mail");
}
