//! A real FTP server for tests: pyftpdlib (PyPI, pinned in `py-servers/requirements.txt`,
//! installed into `tests/.venv` by `just test-servers`) run by `py-servers/ftp_server.py`
//! on a fresh loopback port, serving a temporary directory to one username and
//! password, plain or explicit FTPS (AUTH TLS, protected data connections) on a
//! certificate signed by a CA made for this server alone (`ca_file`). Under the root,
//! `readonly/` refuses writes and `full/` answers every write as a full disk. The
//! server exits when the test process does (it watches its stdin) and is killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// The username every test server accepts.
pub const USER: &str = "flow8-ftp";
/// Its password.
pub const PASSWORD: &str = "ftp-Pa55word-4d1e8b";

/// The server process; killed on drop.
pub struct FtpServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    root: tempfile::TempDir,
    state: tempfile::TempDir,
    child: Child,
    _lifeline: Option<ChildStdin>,
}

impl FtpServer {
    /// Start a server, with explicit FTPS required when `tls`.
    pub fn start(tls: bool) -> FtpServer {
        let py = crate::mongo_server::python();
        assert!(
            py.exists(),
            "pyftpdlib is not installed ({} missing): run `just test-servers`",
            py.display()
        );
        let root = tempfile::tempdir().expect("temp dir");
        let state = tempfile::tempdir().expect("temp dir");
        let port = crate::ServerProcess::free_port();
        let mut cmd = Command::new(&py);
        cmd.arg(crate::repo_root().join("tests/py-servers/ftp_server.py"))
            .args(["--port", &port.to_string()])
            .arg("--root")
            .arg(root.path())
            .arg("--state")
            .arg(state.path())
            .args(["--user", USER, "--password", PASSWORD]);
        if tls {
            cmd.arg("--tls");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the FTP server");
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
                panic!("the FTP server did not start ({other:?}):\n{err}");
            }
        }
        // Keep draining both streams so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        if let Some(e) = child.stderr.take() {
            std::thread::spawn(move || for _ in BufReader::new(e).lines() {});
        }
        FtpServer {
            port,
            root,
            state,
            child,
            _lifeline: lifeline,
        }
    }

    /// The directory the server serves as `/`.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The CA certificate (PEM) that signed the server's certificate (FTPS only).
    pub fn ca_file(&self) -> PathBuf {
        self.state.path().join("ca.pem")
    }

    /// The login attempts so far: `(login, ok, over TLS)`.
    pub fn logins(&self) -> Vec<(String, bool, bool)> {
        let Ok(text) = std::fs::read_to_string(self.state.path().join("logins.jsonl")) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| {
                (
                    v["login"].as_str().unwrap_or_default().to_string(),
                    v["ok"] == true,
                    v["tls"] == true,
                )
            })
            .collect()
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        self._lifeline = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
