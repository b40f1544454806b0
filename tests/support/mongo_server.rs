//! A real MongoDB-wire-protocol server for tests: SecantusDB (PyPI `secantusdb`),
//! installed by `just test-servers` into `tests/.venv`. Each server gets a fresh port;
//! `start` keeps its data in memory, `start_in` in a directory that survives a
//! `stop` and `restart` (the store-down test). A server exits when the test process
//! does, however it ends: it watches its stdin, whose other end only the test holds.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};

/// Runs SecantusDB and exits when stdin closes (the test process is gone), so no test
/// run leaves a server behind, even one killed with `kill -9`.
const LAUNCHER: &str = "import os, runpy, sys, threading\n\
def watch():\n    sys.stdin.buffer.read()\n    os._exit(0)\n\
threading.Thread(target=watch, daemon=True).start()\n\
sys.argv = ['secantus'] + sys.argv[1:]\n\
runpy.run_module('secantus', run_name='__main__', alter_sys=True)\n";

/// The server process; killed on drop.
pub struct MongoServer {
    /// The port it listens on (kept across restarts).
    pub port: u16,
    storage: String,
    child: Option<Child>,
    /// Held only to be closed: its end of the server's stdin.
    _lifeline: Option<ChildStdin>,
}

/// One server shared by every test of this process that runs at the same time (each
/// uses its own database); the last one to let go stops it.
pub fn shared() -> Arc<MongoServer> {
    static SHARED: Mutex<Weak<MongoServer>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = slot.upgrade() {
        return s;
    }
    let s = Arc::new(MongoServer::start());
    *slot = Arc::downgrade(&s);
    s
}

/// The Python that has SecantusDB installed.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("FLOW8_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    crate::repo_root().join("tests/.venv/bin/python")
}

impl MongoServer {
    /// A server with its data in memory.
    pub fn start() -> MongoServer {
        MongoServer::launch(":memory:".into(), crate::ServerProcess::free_port())
    }

    /// A server keeping its data in `dir` (so it can be stopped and started again).
    pub fn start_in(dir: &Path) -> MongoServer {
        MongoServer::launch(
            dir.to_string_lossy().into_owned(),
            crate::ServerProcess::free_port(),
        )
    }

    fn launch(storage: String, port: u16) -> MongoServer {
        let py = python();
        assert!(
            py.exists(),
            "SecantusDB is not installed ({} missing): run `just test-servers`",
            py.display()
        );
        let mut cmd = Command::new(&py);
        cmd.args(["-c", LAUNCHER, "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--storage-path", &storage, "--standalone"])
            .args(["--log-level", "INFO"]);
        if storage != ":memory:" {
            // Data that must survive a kill is synced at every commit.
            cmd.arg("--sync-on-commit");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start SecantusDB");
        let lifeline = child.stdin.take();
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut seen = String::new();
        loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if l.contains("listening on") {
                        break;
                    }
                    seen.push_str(&l);
                    seen.push('\n');
                }
                _ => panic!("SecantusDB exited before listening:\n{seen}"),
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        MongoServer {
            port,
            storage,
            child: Some(child),
            _lifeline: lifeline,
        }
    }

    /// A connection URI for database `db`.
    pub fn uri(&self, db: &str) -> String {
        format!("mongodb://127.0.0.1:{}/{db}", self.port)
    }

    /// Kill the server (its data stays if it has a directory).
    pub fn stop(&mut self) {
        self._lifeline = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        // The port was just released; retry briefly if it is not free yet.
        let fresh = MongoServer::launch(self.storage.clone(), self.port);
        *self = fresh;
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.stop();
    }
}
