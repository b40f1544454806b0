//! A real SMTP server for tests: aiosmtpd (PyPI, pinned in `py-servers/requirements.txt`,
//! installed into `tests/.venv` by `just test-servers`) run by `py-servers/smtp_server.py`
//! on a fresh loopback port, with AUTH against one username and password and STARTTLS,
//! implicit TLS or plain text, its certificate signed by a CA made for this server alone
//! (`ca_file`, which the host is told to trust). Every message it accepts is kept as a
//! JSON file: the envelope, the AUTH credentials the client used, and the raw message.
//! The server exits when the test process does (it watches its stdin) and is killed on
//! drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// The username every test server accepts.
pub const USER: &str = "mailer@example.com";
/// Its password.
pub const PASSWORD: &str = "smtp-Pa55word-7f3c9e";

/// How the server secures its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// STARTTLS required before AUTH.
    StartTls,
    /// TLS from the first byte.
    Tls,
    /// No TLS at all.
    Plain,
}

/// Options beyond the mode.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Addresses whose RCPT is answered 550.
    pub refuse: Vec<String>,
    /// The first this many DATA commands are answered 451.
    pub tempfail: u32,
}

/// One message the server accepted.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Received {
    /// `MAIL FROM`.
    pub mail_from: String,
    /// `RCPT TO`s, in order.
    pub rcpt_tos: Vec<String>,
    /// The AUTH login used.
    pub auth_login: Option<String>,
    /// The AUTH password used.
    pub auth_password: Option<String>,
    /// Whether the session was encrypted.
    pub encrypted: bool,
    /// The message, base64.
    data_b64: String,
    /// The message as Python's MIME parser (`email`, policy `default`) reads it.
    pub parsed: Parsed,
}

/// A received message, parsed by the server.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Parsed {
    /// Every header, in order, decoded (RFC 2047).
    pub headers: Vec<(String, String)>,
    /// The first text/plain part that is not an attachment.
    pub text: Option<String>,
    /// The first text/html part that is not an attachment.
    pub html: Option<String>,
    /// The attachments.
    pub attachments: Vec<ParsedAttachment>,
}

impl Parsed {
    /// The values of header `name` (any case).
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// One attachment of a received message.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ParsedAttachment {
    /// Its file name.
    pub filename: Option<String>,
    /// Its MIME type.
    pub content_type: String,
    data_b64: String,
}

impl ParsedAttachment {
    /// Its bytes, decoded.
    pub fn data(&self) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(&self.data_b64)
            .expect("base64 from the server")
    }
}

impl Received {
    /// The message bytes as received.
    pub fn data(&self) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(&self.data_b64)
            .expect("base64 from the server")
    }
}

/// The server process; killed on drop.
pub struct SmtpServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
    _lifeline: Option<ChildStdin>,
}

impl SmtpServer {
    /// Start a server in `mode`.
    pub fn start(mode: Mode) -> SmtpServer {
        SmtpServer::start_with(mode, Options::default())
    }

    /// Start a server in `mode` with `options`.
    pub fn start_with(mode: Mode, options: Options) -> SmtpServer {
        let py = crate::mongo_server::python();
        assert!(
            py.exists(),
            "aiosmtpd is not installed ({} missing): run `just test-servers`",
            py.display()
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let port = crate::ServerProcess::free_port();
        let mut cmd = Command::new(&py);
        cmd.arg(crate::repo_root().join("tests/py-servers/smtp_server.py"))
            .args(["--port", &port.to_string()])
            .arg("--out")
            .arg(dir.path())
            .args(["--user", USER, "--password", PASSWORD])
            .args([
                "--mode",
                match mode {
                    Mode::StartTls => "starttls",
                    Mode::Tls => "tls",
                    Mode::Plain => "plain",
                },
            ])
            .args(["--tempfail", &options.tempfail.to_string()]);
        for r in &options.refuse {
            cmd.args(["--refuse", r]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the SMTP server");
        let lifeline = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        match lines.next() {
            Some(Ok(l)) if l.starts_with("listening on") => {}
            other => {
                let _ = child.kill();
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                panic!("the SMTP server did not start ({other:?}):\n{err}");
            }
        }
        // Keep draining both streams so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        if let Some(e) = child.stderr.take() {
            std::thread::spawn(move || for _ in BufReader::new(e).lines() {});
        }
        SmtpServer {
            port,
            dir,
            child,
            _lifeline: lifeline,
        }
    }

    /// The CA certificate (PEM) that signed the server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Where the server keeps what it received.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The messages accepted so far, in order. The server writes each one before it
    /// answers the client's DATA, so a send that succeeded is here already.
    pub fn received(&self) -> Vec<Received> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .expect("read the server's directory")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| {
                serde_json::from_slice(&std::fs::read(p).expect("read a message"))
                    .expect("a message record")
            })
            .collect()
    }

    /// The AUTH attempts so far: `(login, ok)`.
    pub fn auth_attempts(&self) -> Vec<(Option<String>, bool)> {
        let Ok(text) = std::fs::read_to_string(self.dir.path().join("auth-attempts.jsonl")) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| (v["login"].as_str().map(str::to_string), v["ok"] == true))
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self._lifeline = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
