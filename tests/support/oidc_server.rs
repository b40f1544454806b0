//! A strict, certified OpenID Connect provider for tests: `oidc-provider` from npm
//! (node-oidc-provider), run by `tests/oidc-server/server.mjs` with PKCE required,
//! refresh-token rotation and RFC 7009 revocation on, and a login and consent the
//! script answers itself. [`OidcServer::consent`] walks its redirects as a browser
//! would (keeping the provider's cookies) up to the client's redirect URI. Its token
//! grants, refresh tokens and revocations are collected from its stdout as JSON events.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The test client the server knows.
pub const CLIENT_ID: &str = "flow8-oidc-client";
/// Its secret.
pub const CLIENT_SECRET: &str = "flow8-oidc-secret";

/// How to start the provider.
#[derive(Debug, Clone)]
pub struct OidcOptions {
    /// The client's redirect URI (the host's `/auth/callback`).
    pub redirect_uri: String,
    /// Seconds an access token lives.
    pub access_ttl: u64,
    /// Whether PKCE is required (it is, unless a test says otherwise).
    pub pkce_required: bool,
    /// Whether the consent is refused.
    pub deny: bool,
}

impl OidcOptions {
    /// PKCE required, an hour per access token, consent granted.
    pub fn new(redirect_uri: impl Into<String>) -> OidcOptions {
        OidcOptions {
            redirect_uri: redirect_uri.into(),
            access_ttl: 3600,
            pkce_required: true,
            deny: false,
        }
    }
}

/// The provider process; killed on drop.
pub struct OidcServer {
    /// The issuer, `http://127.0.0.1:PORT`.
    pub issuer: String,
    child: Child,
    events: crate::event_log::EventLog,
}

impl OidcServer {
    /// Start it; returns once it prints its issuer.
    pub fn start(options: &OidcOptions) -> OidcServer {
        let dir = crate::repo_root().join("tests/oidc-server");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "oidc-provider is not installed: run `just test` (it runs npm ci in tests/oidc-server)"
        );
        let mut child = Command::new("node")
            .arg("server.mjs")
            .arg("0")
            .current_dir(&dir)
            .env("CLIENT_ID", CLIENT_ID)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .env("REDIRECT_URI", &options.redirect_uri)
            .env("ACCESS_TTL", options.access_ttl.to_string())
            .env(
                "PKCE_REQUIRED",
                if options.pkce_required { "1" } else { "0" },
            )
            .env("CONSENT", if options.deny { "deny" } else { "grant" })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // The library's warnings (Node 20, the in-memory adapter) are for people.
            .stderr(Stdio::null())
            .spawn()
            .expect("start node (is Node.js installed?)");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let issuer = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(url) = l.strip_prefix("ready ") {
                        break url.trim().to_string();
                    }
                }
                _ => panic!("the OpenID provider exited before it was ready"),
            }
        };
        let events = crate::event_log::EventLog::read(lines);
        OidcServer {
            issuer,
            child,
            events,
        }
    }

    /// Events so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events.snapshot()
    }

    /// Wait (up to 10 s) until `cond` holds for the events seen so far: the server prints
    /// an event as it answers, but this process reads it on another thread.
    pub fn wait_until(&self, cond: impl Fn(&[serde_json::Value]) -> bool) -> bool {
        self.events
            .wait_until(std::time::Duration::from_secs(10), || cond(&self.events()))
    }

    /// Token requests of a grant type with an outcome (`ok`, `invalid_grant`, ...).
    pub fn token_requests(&self, grant_type: &str, outcome: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| {
                e["event"] == "token" && e["grant_type"] == grant_type && e["outcome"] == outcome
            })
            .count()
    }

    /// The refresh tokens issued, oldest first.
    pub fn refresh_tokens_issued(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e["event"] == "refresh_token_issued")
            .filter_map(|e| e["token"].as_str().map(str::to_string))
            .collect()
    }

    /// Grants revoked (a revoked refresh token revokes its grant).
    pub fn revocations(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| e["event"] == "revoke" && e["outcome"] == "ok")
            .count()
    }

    /// The provider's part of a connection, as a browser does it: open `auth_url`, let
    /// the provider's login and consent (answered by the server script) redirect on,
    /// carrying its cookies, and return the first redirect that leaves the provider
    /// (to the client's redirect URI, with `code` or `error`).
    pub async fn consent(&self, http: &reqwest::Client, auth_url: &str) -> String {
        let mut cookies: BTreeMap<String, String> = BTreeMap::new();
        let mut url = url::Url::parse(auth_url).expect("auth_url is a URL");
        for _ in 0..10 {
            let mut req = http.get(url.clone());
            if !cookies.is_empty() {
                let header = cookies
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                req = req.header("cookie", header);
            }
            let r = req.send().await.expect("the provider answers");
            for c in r.headers().get_all("set-cookie") {
                let pair = c
                    .to_str()
                    .expect("a cookie")
                    .split(';')
                    .next()
                    .unwrap_or("");
                if let Some((k, v)) = pair.split_once('=') {
                    if v.is_empty() {
                        cookies.remove(k);
                    } else {
                        cookies.insert(k.to_string(), v.to_string());
                    }
                }
            }
            assert!(
                r.status().is_redirection(),
                "the provider redirects on, not {} at {url}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
            let location = r.headers()["location"].to_str().expect("a location");
            let next = url.join(location).expect("a redirect URL");
            if !next.as_str().starts_with(&self.issuer) {
                return next.to_string();
            }
            url = next;
        }
        panic!("the provider redirected more than 10 times");
    }
}

impl Drop for OidcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
