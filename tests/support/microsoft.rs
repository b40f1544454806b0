//! A flow8 host set up for the Microsoft 365 modules' tests: a real OAuth2 server
//! (oauth2-mock-server) standing in for Microsoft's identity platform, the Graph fake
//! (`graph_fake`) as the provider's API and pre-authenticated transfer host, and a
//! `flow8-host serve` process configured for both (and a Google provider on the same
//! OAuth server, for links of the wrong service). Links are connected the way a user
//! does: the authorize URL, the provider's consent, the callback in the same browser.

use crate::graph_fake::GraphFake;
use crate::oauth_server::OAuthServer;
use crate::{Cli, ServerProcess, create_token, wasm_dir};
use serde_json::{Value, json};
use std::path::PathBuf;

/// The host, its servers and a member's API token.
pub struct Microsoft {
    /// The identity provider.
    pub oauth: OAuthServer,
    /// Graph.
    pub graph: GraphFake,
    /// The host's data directory and CLI.
    pub cli: Cli,
    /// The config file the server (and CLI runs) use.
    pub config_path: PathBuf,
    /// `flow8-host serve`.
    pub server: ServerProcess,
    /// company-a's member alice.
    pub member: String,
    /// A client that does not follow redirects.
    pub http: reqwest::Client,
}

/// The config for `scopes` on Microsoft, the fakes' addresses, and a redirect URI on
/// `port`.
pub fn config(oauth: &OAuthServer, graph: &GraphFake, port: u16, scopes: &[&str]) -> String {
    format!(
        "oauth_refresh_window_seconds: 300\noauth2:\n  microsoft:\n    client_id: 550e8400-e29b-41d4-a716-446655440000\n    client_secret: test\n    redirect_uri: http://127.0.0.1:{port}/auth/callback\n    scopes: [{s}]\n    authorize_url: {o}/authorize\n    token_url: {o}/token\n    identity_url: {o}/userinfo\n{g}  google:\n    client_id: google-client\n    client_secret: test\n    redirect_uri: http://127.0.0.1:{port}/auth/callback\n    scopes: [openid, email]\n    authorize_url: {o}/authorize\n    token_url: {o}/token\n    identity_url: {o}/userinfo\n    revoke_url: {o}/revoke\n",
        s = scopes.join(", "),
        o = oauth.base,
        g = graph.provider_config(),
    )
}

impl Microsoft {
    /// Start everything; Microsoft links get `scopes`.
    pub fn start(scopes: &[&str]) -> Microsoft {
        let oauth = OAuthServer::start(3600, &[]);
        let graph = GraphFake::start();
        let cli = Cli::new();
        let port = ServerProcess::free_port();
        let config_path = cli.data_dir.path().join("config.yml");
        std::fs::write(&config_path, config(&oauth, &graph, port, scopes)).expect("config");
        let member = create_token(&cli, "company-a", "alice", false);
        let server = ServerProcess::start_on(
            &cli,
            &wasm_dir(),
            &format!("127.0.0.1:{port}"),
            &["--config", config_path.to_str().expect("utf-8 path")],
        );
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Microsoft {
            oauth,
            graph,
            cli,
            config_path,
            server,
            member,
            http,
        }
    }

    /// Connect a link of `service` for alice; its id.
    pub async fn connect(&self, service: &str) -> String {
        let r = self
            .http
            .get(
                self.server
                    .url(&format!("/api/v1/integrations/authorize?service={service}")),
            )
            .bearer_auth(&self.member)
            .send()
            .await
            .expect("authorize");
        let answer = r.json::<Value>().await.expect("authorize answer");
        let auth_url = answer["auth_url"].as_str().expect("auth_url").to_string();
        let callback = crate::consent(&self.http, &auth_url).await;
        let r = self
            .http
            .get(&callback)
            .header("accept", "application/json")
            .header("cookie", crate::binding_cookie(&answer))
            .send()
            .await
            .expect("callback");
        let v = r.json::<Value>().await.expect("callback answer");
        v["link"]["id"].as_str().expect("link id").to_string()
    }

    /// The workspace `name` of company-a (created), as flow8 prepares it.
    pub fn workspace(&self, name: &str) -> PathBuf {
        let dir = self
            .cli
            .data_dir
            .path()
            .join("workspaces/company-a")
            .join(name);
        std::fs::create_dir_all(&dir).expect("workspace");
        dir
    }

    /// `POST /api/v1/steps` as alice: status and answer.
    pub async fn step(&self, module: &str, workspace: Option<&str>, input: Value) -> (u16, Value) {
        self.step_with_limits(module, workspace, input, None).await
    }

    /// [`Microsoft::step`] with the step's `limits` (`{"memory_mib": 4}`).
    pub async fn step_with_limits(
        &self,
        module: &str,
        workspace: Option<&str>,
        input: Value,
        limits: Option<Value>,
    ) -> (u16, Value) {
        let mut body =
            json!({"name": format!("{module}-step"), "module_ref": module, "input_mapping": input});
        if let Some(w) = workspace {
            body["workspace"] = json!(w);
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
            .expect("step");
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.expect("step answer"))
    }

    /// `flow8-host run-module MODULE input.json --allow-loopback [--workspace DIR]` with
    /// this host's config and data directory.
    pub fn run_module(
        &self,
        module: &str,
        workspace: Option<&std::path::Path>,
        input: &Value,
    ) -> crate::CliOutput {
        let file = self
            .cli
            .data_dir
            .path()
            .join(format!("{module}-input.json"));
        std::fs::write(&file, input.to_string()).expect("input file");
        let mut args = vec![
            "run-module".to_string(),
            module.to_string(),
            file.display().to_string(),
            "--allow-loopback".to_string(),
            "--config".to_string(),
            self.config_path.display().to_string(),
            // The links are alice's of company-a, connected through the API.
            "--company".to_string(),
            "company-a".to_string(),
        ];
        if let Some(w) = workspace {
            args.push("--workspace".into());
            args.push(w.display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli.run(&args)
    }
}

/// `n` bytes that are not all alike (so a byte out of place shows).
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}
