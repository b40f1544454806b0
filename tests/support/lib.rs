//! Test support for the flow8 host's end-to-end tests: where the built binaries and
//! modules are, a recording HTTP server, a runner for the `flow8-host` CLI with its own
//! data directory, and one shared engine and module registry for in-process tests.

pub mod ai_fake;
pub mod api_client;
pub mod background;
pub mod bounded;
pub mod browser;
pub mod event_log;
pub mod event_receiver;
pub mod ftp_server;
pub mod google;
pub mod google_fake;
pub mod graph_fake;
pub mod microsoft;
pub mod mongo_server;
pub mod oauth_server;
pub mod oci_registry;
pub mod oidc_server;
pub mod recording_server;
pub mod s3_server;
pub mod slack_fake;
pub mod smtp_server;
pub mod stored_links;
pub mod subscription_fakes;
pub mod wat_guest;

use flow8_host::runtime::cache::CompileCache;
use flow8_host::runtime::registry::ModuleRegistry;
use flow8_host::runtime::{EngineConfig, SandboxEngine};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, OnceLock};

pub use recording_server::{RecordedRequest, RecordingServer, Reply};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

/// The cargo profile directory this test binary was built into (target/debug).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/e2e-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binaries live in <target>/<profile>/deps")
        .to_path_buf()
}

/// The `flow8-host` binary (built by `just test` before the tests run).
pub fn host_bin() -> PathBuf {
    let bin = std::env::var_os("FLOW8_HOST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| profile_dir().join("flow8-host"));
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `just test` (it builds the host first)",
        bin.display()
    );
    bin
}

/// Where the wasm32-wasip2 builds of modules and test guests are.
pub fn wasm_dir() -> PathBuf {
    std::env::var_os("FLOW8_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/wasm/wasm32-wasip2/release"))
}

/// Where `just examples` puts the JavaScript and Python example components
/// (`FLOW8_EXAMPLES_DIR`, else beside the wasm32-wasip2 builds).
pub fn examples_dir() -> PathBuf {
    std::env::var_os("FLOW8_EXAMPLES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| wasm_dir().join("../../examples"))
}

/// A built module or guest, e.g. `wasm("http_request")`.
pub fn wasm(name: &str) -> PathBuf {
    let p = wasm_dir().join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run the tests with `just test` (it builds the modules and guests first)",
        p.display()
    );
    p
}

/// The compiled-module cache all tests share (so each module compiles once per run).
pub fn shared_cache_dir() -> PathBuf {
    profile_dir().join("flow8-test-compile-cache")
}

/// One engine for every in-process test of this binary.
pub fn shared_engine() -> Arc<SandboxEngine> {
    static ENGINE: OnceLock<Arc<SandboxEngine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| SandboxEngine::new(EngineConfig::default()).expect("engine"))
        .clone()
}

/// One module registry (over the built modules and guests) for every in-process test.
pub fn shared_registry() -> Arc<ModuleRegistry> {
    static REGISTRY: OnceLock<Arc<ModuleRegistry>> = OnceLock::new();
    REGISTRY
        .get_or_init(|| {
            let cache = CompileCache::at(shared_cache_dir()).expect("cache dir");
            Arc::new(ModuleRegistry::new(
                shared_engine(),
                cache,
                vec![wasm_dir()],
            ))
        })
        .clone()
}

/// An in-process host built by the composition root (`Host::from_config`) with `config`,
/// a fresh master key, and the shared engine and registry (so modules compile once per
/// test binary). Its store is the embedded one in `data_dir`, or, when
/// `FLOW8_TEST_STORE=mongodb`, a database of its own on one SecantusDB shared by the
/// process: `just test` runs the hostile-module suites that way too.
pub async fn in_process_host(
    config: flow8_host::config::HostConfig,
    data_dir: &Path,
) -> flow8_host::app::Host {
    let mut settings = flow8_host::app::HostSettings::new(config, data_dir)
        .modules(shared_registry())
        .vault(flow8_host::vault::Vault::new(
            flow8_host::vault::MasterKey::generate(),
        ));
    if std::env::var("FLOW8_TEST_STORE").as_deref() == Ok("mongodb") {
        // Kept for the whole process; it exits with it (see `mongo_server`).
        static SERVER: OnceLock<mongo_server::MongoServer> = OnceLock::new();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let server = SERVER.get_or_init(mongo_server::MongoServer::start);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let db = format!("host_{}_{n}", std::process::id());
        let store = flow8_host::store::mongodb::MongoStore::connect(&server.uri(&db))
            .await
            .expect("connect to SecantusDB");
        settings = settings.store(store);
    }
    flow8_host::app::Host::from_config(settings)
        .await
        .expect("the host builds")
}

/// A `flow8-host` CLI with its own data directory (and so its own store and key).
pub struct Cli {
    /// The data directory (deleted on drop).
    pub data_dir: tempfile::TempDir,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

impl Default for Cli {
    fn default() -> Self {
        Cli::new()
    }
}

/// What a CLI run printed.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit code (None if killed).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// Standard output as JSON (panics with both streams when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n--- stdout\n{}\n--- stderr\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Assert success and return stdout as JSON.
    pub fn ok_json(&self) -> serde_json::Value {
        assert_eq!(
            self.code,
            Some(0),
            "command failed:\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self.json()
    }

    /// The `error: <name>: ...` name printed on stderr.
    pub fn error_name(&self) -> Option<String> {
        self.stderr
            .lines()
            .find_map(|l| l.strip_prefix("error: "))
            .and_then(|l| l.split(':').next())
            .map(str::to_string)
    }
}

impl Cli {
    /// A fresh data directory.
    pub fn new() -> Cli {
        Cli {
            data_dir: tempfile::tempdir().expect("temp dir"),
            env: Vec::new(),
        }
    }

    /// Run `flow8-host ARGS` with `stdin` as standard input.
    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> CliOutput {
        let mut cmd = Command::new(host_bin());
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("FLOW8_DATA_DIR", self.data_dir.path())
            .env("FLOW8_CACHE_DIR", shared_cache_dir())
            .env("FLOW8_MODULES_PATH", wasm_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn flow8-host");
        {
            use std::io::Write;
            let mut i = child.stdin.take().expect("stdin");
            let _ = i.write_all(stdin.as_bytes());
        }
        let Output {
            status,
            stdout,
            stderr,
        } = child.wait_with_output().expect("wait flow8-host");
        CliOutput {
            code: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    /// Run `flow8-host ARGS`.
    pub fn run(&self, args: &[&str]) -> CliOutput {
        self.run_with_stdin(args, "")
    }

    /// Every file under the data directory, read whole (to look for plaintext secrets).
    pub fn data_files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![self.data_dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("read dir").flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(bytes) = std::fs::read(&p) {
                    out.push((p, bytes));
                }
            }
        }
        out
    }
}

/// A `flow8-host serve` process on an ephemeral loopback port; killed on drop.
pub struct ServerProcess {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    child: std::process::Child,
    /// What the server logged (stderr), collected by a thread.
    pub stderr: Arc<std::sync::Mutex<String>>,
}

impl ServerProcess {
    /// Start `flow8-host serve` for this CLI's data directory and wait until it listens.
    pub fn start(cli: &Cli, modules_dir: &Path, extra: &[&str]) -> ServerProcess {
        ServerProcess::start_on(cli, modules_dir, "127.0.0.1:0", extra)
    }

    /// A free loopback port (for configs that must name the server's URL up front).
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    }

    /// Start on a given address.
    pub fn start_on(cli: &Cli, modules_dir: &Path, listen: &str, extra: &[&str]) -> ServerProcess {
        use std::io::{BufRead, BufReader, Read};
        let mut cmd = Command::new(host_bin());
        cmd.args(["serve", "--listen", listen, "--allow-loopback"])
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("FLOW8_DATA_DIR", cli.data_dir.path())
            .env("FLOW8_CACHE_DIR", shared_cache_dir())
            .env("FLOW8_MODULES_PATH", modules_dir)
            .env("FLOW8_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &cli.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn flow8-host serve");
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        {
            let mut err = child.stderr.take().expect("stderr");
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .expect("lock")
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        break addr.trim().to_string();
                    }
                }
                _ => panic!(
                    "flow8-host serve exited before listening:\n{}",
                    stderr.lock().expect("lock")
                ),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        ServerProcess {
            base,
            child,
            stderr,
        }
    }

    /// The server's process id (for reading its memory from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `base` + path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Send SIGTERM and wait for the process to exit; returns whether it exited cleanly.
    pub fn terminate(mut self) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The provider's consent, as a browser does it: open `auth_url` (the test OAuth server
/// and the provider fakes consent at once) and return the callback URL its redirect
/// sends the browser to.
pub async fn consent(http: &reqwest::Client, auth_url: &str) -> String {
    let r = http
        .get(auth_url)
        .send()
        .await
        .expect("the provider answers");
    assert!(
        r.status().is_redirection(),
        "the provider redirects to the callback, not {}",
        r.status()
    );
    r.headers()["location"]
        .to_str()
        .expect("a callback URL")
        .to_string()
}

/// The `Cookie` header of the browser that started an authorization: the binding
/// `GET /api/v1/integrations/authorize` answered (its caller puts it in the browser).
pub fn binding_cookie(authorize_answer: &serde_json::Value) -> String {
    let b = &authorize_answer["browser_binding"];
    format!(
        "{}={}",
        b["cookie"].as_str().expect("browser_binding.cookie"),
        b["value"].as_str().expect("browser_binding.value")
    )
}

/// Create an API token with the CLI; returns the token.
pub fn create_token(cli: &Cli, company: &str, user: &str, admin: bool) -> String {
    let mut args = vec!["tokens", "create", "--for-company", company, "--user", user];
    if admin {
        args.push("--admin");
    }
    cli.run(&args).ok_json()["token"]
        .as_str()
        .expect("token")
        .to_string()
}

/// `flow8-host links connect SERVICE` as a person would run it: read the printed URL,
/// "open" it (follow the provider's redirect to the CLI's loopback callback), and return
/// the link the CLI stored and printed.
pub async fn links_connect(cli: &Cli, config: &Path, service: &str) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Read};
    let mut child = Command::new(host_bin())
        .args(["links", "connect", service, "--timeout-secs", "60"])
        .env("FLOW8_DATA_DIR", cli.data_dir.path())
        .env("FLOW8_CACHE_DIR", shared_cache_dir())
        .env("FLOW8_CONFIG", config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn links connect");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut url = String::new();
    stdout.read_line(&mut url).expect("the URL line");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = http.get(url.trim()).send().await.expect("provider");
    let callback = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let page = http
        .get(&callback)
        .send()
        .await
        .expect("callback")
        .text()
        .await
        .unwrap_or_default();
    assert!(page.contains("Connected!"), "{page}");
    let status = tokio::task::spawn_blocking(move || child.wait().expect("wait"))
        .await
        .expect("join");
    assert!(status.success(), "links connect failed");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("link JSON");
    serde_json::from_str(&rest).expect("the stored link as JSON")
}

/// Whether `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
