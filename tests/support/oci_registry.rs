//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF distribution
//! registry 2.8; `just test-prereqs` installs it where missing) on a fresh loopback port,
//! its config file and storage in a temporary directory written here, anonymous or with
//! HTTP basic auth from an htpasswd file (bcrypt: the only scheme the registry accepts).
//! Started on its own readiness line (`listening on ...`), killed on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The user of a registry started with auth.
pub const USER: &str = "flow8-publisher";
/// Its password.
pub const PASSWORD: &str = "oci-Pa55word-7c2f91";

/// The registry process; killed on drop.
pub struct OciRegistry {
    /// `127.0.0.1:<port>`, as written in `oci://` references.
    pub host: String,
    _dir: tempfile::TempDir,
    child: Child,
}

/// The registry binary, or None when it is not installed.
pub fn binary() -> Option<std::path::PathBuf> {
    ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

impl OciRegistry {
    /// Start a registry; with `auth`, only [`USER`] / [`PASSWORD`] may push or pull.
    pub fn start(auth: bool) -> OciRegistry {
        let bin = binary().expect("docker-registry is not installed: run `just test-prereqs`");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = crate::ServerProcess::free_port();
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n  secret: flow8-test-{port}\n",
            dir.path().join("data").display()
        );
        if auth {
            let hash = bcrypt::hash(PASSWORD, 5).expect("bcrypt");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{USER}:{hash}\n")).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: flow8-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_file = dir.path().join("config.yml");
        std::fs::write(&config_file, config).expect("write the registry config");
        let mut child = Command::new(bin)
            .arg("serve")
            .arg(&config_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start docker-registry");
        // It logs to stderr; "listening on" comes once the socket is bound.
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut seen = Vec::new();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("listening on") => break,
                Some(Ok(l)) => seen.push(l),
                _ => {
                    let _ = child.kill();
                    panic!("docker-registry did not start:\n{}", seen.join("\n"));
                }
            }
        }
        // Keep draining so the registry never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        OciRegistry {
            host,
            _dir: dir,
            child,
        }
    }

    /// `oci://<host>/<path>`.
    pub fn reference(&self, path: &str) -> String {
        format!("oci://{}/{path}", self.host)
    }
}

impl Drop for OciRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
