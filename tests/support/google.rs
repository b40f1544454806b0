//! The Google setup the Gmail, Drive and Sheets tests (and the transfer benchmark)
//! share: a Google link made through a real OAuth2 server (oauth2-mock-server, whose
//! access tokens carry the granted scopes), Google's APIs played by `google_fake.rs`,
//! and a `serve` configured for both; plus a Microsoft link, a link of another service.

use crate::google_fake::GoogleFake;
use crate::oauth_server::OAuthServer;
use crate::{Cli, ServerProcess, create_token, wasm_dir};
use serde_json::{Value, json};
use std::path::PathBuf;

/// The scopes the test's Google client asks for: what the four modules need.
pub const GOOGLE_SCOPES: [&str; 3] = [
    "https://www.googleapis.com/auth/gmail.send",
    "https://www.googleapis.com/auth/drive.file",
    "https://www.googleapis.com/auth/spreadsheets",
];

pub struct GoogleSetup {
    pub oauth: OAuthServer,
    pub google: GoogleFake,
    pub cli: Cli,
    pub server: ServerProcess,
    pub config_path: PathBuf,
    /// alice, member of company-a.
    pub member: String,
    pub http: reqwest::Client,
    /// alice's Google link.
    pub link_id: String,
    /// alice's Microsoft link (a link of another service).
    pub microsoft_link_id: String,
    /// The authorize URL the host made for the Google link.
    pub auth_url: String,
}

impl GoogleSetup {
    pub async fn start() -> GoogleSetup {
        let oauth = OAuthServer::start(3600, &[]);
        let google = GoogleFake::start();
        let cli = Cli::new();
        let port = ServerProcess::free_port();
        let o = &oauth.base;
        let scopes: Vec<String> = GOOGLE_SCOPES.iter().map(|s| format!("'{s}'")).collect();
        let config = format!(
            "oauth_background_refresh_seconds: 0\noauth_refresh_window_seconds: 300\noauth2:\n  google:\n    client_id: google-client\n    client_secret: google-secret\n    redirect_uri: http://127.0.0.1:{port}/auth/callback\n    scopes: [{}]\n    authorize_url: {o}/authorize\n    token_url: {o}/token\n    identity_url: {o}/userinfo\n    api_base_url: {g}\n    api_hosts: ['{g}/']\n  microsoft:\n    client_id: ms-client\n    client_secret: ms-secret\n    redirect_uri: http://127.0.0.1:{port}/auth/callback\n    scopes: [Mail.Send]\n    authorize_url: {o}/authorize\n    token_url: {o}/token\n    identity_url: {o}/userinfo\n    api_base_url: {g}/v1.0\n    api_hosts: ['{g}/v1.0/']\n",
            scopes.join(", "),
            g = google.base(),
        );
        let config_path = cli.data_dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let member = create_token(&cli, "company-a", "alice", false);
        let server = ServerProcess::start_on(
            &cli,
            &wasm_dir(),
            &format!("127.0.0.1:{port}"),
            &["--config", config_path.to_str().unwrap()],
        );
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut s = GoogleSetup {
            oauth,
            google,
            cli,
            server,
            config_path,
            member,
            http,
            link_id: String::new(),
            microsoft_link_id: String::new(),
            auth_url: String::new(),
        };
        (s.link_id, s.auth_url) = s.connect("google").await;
        (s.microsoft_link_id, _) = s.connect("microsoft").await;
        s
    }

    /// Connect `service` for alice, as a browser would: the link id and the authorize URL.
    async fn connect(&self, service: &str) -> (String, String) {
        let r = self
            .http
            .get(
                self.server
                    .url(&format!("/api/v1/integrations/authorize?service={service}")),
            )
            .bearer_auth(&self.member)
            .send()
            .await
            .unwrap();
        let answer: Value = r.json().await.unwrap();
        let auth_url = answer["auth_url"].as_str().unwrap().to_string();
        let callback = crate::consent(&self.http, &auth_url).await;
        let r = self
            .http
            .get(&callback)
            .header("accept", "application/json")
            .header("cookie", crate::binding_cookie(&answer))
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        (body["link"]["id"].as_str().unwrap().to_string(), auth_url)
    }

    /// The workspace `name` of company-a, created.
    pub fn workspace(&self, name: &str) -> PathBuf {
        let ws = self
            .cli
            .data_dir
            .path()
            .join(format!("workspaces/company-a/{name}"));
        std::fs::create_dir_all(&ws).unwrap();
        ws
    }

    /// `POST /api/v1/steps` of `module` with `input` in workspace `ws`.
    pub async fn step(&self, module: &str, input: Value, ws: Option<&str>) -> (u16, Value) {
        self.step_with_limits(module, input, ws, None).await
    }

    /// [`GoogleSetup::step`] with the step's `limits` (`{"memory_mib": 4}`).
    pub async fn step_with_limits(
        &self,
        module: &str,
        input: Value,
        ws: Option<&str>,
        limits: Option<Value>,
    ) -> (u16, Value) {
        let mut body = json!({"name": "google-step", "module_ref": module, "input_mapping": input});
        if let Some(ws) = ws {
            body["workspace"] = json!(ws);
        }
        if let Some(l) = limits {
            body["limits"] = l;
        }
        let r = self
            .http
            .post(self.server.url("/api/v1/steps"))
            .bearer_auth(&self.member)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// The operator's CLI on the server's data dir and config.
    pub fn cli(&self) -> Cli {
        Cli {
            data_dir: tempfile::tempdir().unwrap(),
            env: vec![
                (
                    "FLOW8_DATA_DIR".into(),
                    self.cli.data_dir.path().display().to_string(),
                ),
                (
                    "FLOW8_CONFIG".into(),
                    self.config_path.display().to_string(),
                ),
                ("FLOW8_COMPANY".into(), "company-a".into()),
            ],
        }
    }

    /// `run-module MODULE input` with `--workspace ws` from the CLI.
    pub fn run_module(
        &self,
        module: &str,
        input: &Value,
        ws: &std::path::Path,
    ) -> crate::CliOutput {
        let cli = self.cli();
        let path = cli.data_dir.path().join("input.json");
        std::fs::write(&path, input.to_string()).unwrap();
        cli.run(&[
            "run-module",
            module,
            path.to_str().unwrap(),
            "--workspace",
            ws.to_str().unwrap(),
            "--allow-loopback",
        ])
    }

    /// The fake's calls since `from`.
    pub fn calls_since(&self, from: usize) -> Vec<crate::google_fake::GoogleCall> {
        self.google.calls().split_off(from)
    }

    /// Assert the error name (and status) of a step's answer.
    pub fn assert_error(answer: &(u16, Value), status: u16, name: &str) {
        assert_eq!(
            (answer.0, answer.1["error"].as_str()),
            (status, Some(name)),
            "{}",
            answer.1
        );
    }
}

/// Bytes that compress badly and contain every byte value (a real file's worst case).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
