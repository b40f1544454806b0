//! A real OAuth2 authorization server for tests: `oauth2-mock-server` from npm, run by
//! `tests/oauth-server/server.mjs` (PKCE, code and refresh grants, RFC 7009 revoke,
//! userinfo; rotating refresh tokens, `invalid_grant` for spent or revoked ones). Its
//! token requests and revocations are collected from its stdout as JSON events.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The server process; killed on drop.
pub struct OAuthServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    child: Child,
    events: crate::event_log::EventLog,
}

impl OAuthServer {
    /// Start it; `ttl_sequence` gives the lifetimes of the first tokens (then `ttl`).
    pub fn start(ttl: u64, ttl_sequence: &[u64]) -> OAuthServer {
        OAuthServer::start_with(ttl, ttl_sequence, 0)
    }

    /// Like `start`, holding back each successful refresh answer `refresh_delay_ms`
    /// after the old refresh token is spent and the event printed.
    pub fn start_with(ttl: u64, ttl_sequence: &[u64], refresh_delay_ms: u64) -> OAuthServer {
        OAuthServer::spawn(ttl, ttl_sequence, refresh_delay_ms, false)
    }

    /// Like `start`, holding back every successful refresh answer (after the old refresh
    /// token is spent and the event printed) until [`OAuthServer::release_refreshes`].
    pub fn start_gated(ttl: u64, ttl_sequence: &[u64]) -> OAuthServer {
        OAuthServer::spawn(ttl, ttl_sequence, 0, true)
    }

    /// Answer the refreshes a gated server holds, and hold no later one.
    pub fn release_refreshes(&self) {
        use std::io::{Read, Write};
        let authority = self.base.trim_start_matches("http://");
        let mut stream =
            std::net::TcpStream::connect(authority).expect("connect to the OAuth2 server");
        write!(
            stream,
            "POST /flow8-test/release-refreshes HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("send the release");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .expect("read the release answer");
        assert!(
            answer.ends_with("released"),
            "the server did not release: {answer}"
        );
    }

    fn spawn(ttl: u64, ttl_sequence: &[u64], refresh_delay_ms: u64, gated: bool) -> OAuthServer {
        let dir = crate::repo_root().join("tests/oauth-server");
        assert!(
            dir.join("node_modules/oauth2-mock-server").exists(),
            "oauth2-mock-server is not installed: run `just test` (it runs npm ci in tests/oauth-server)"
        );
        let mut child = Command::new("node")
            .arg("server.mjs")
            .arg("0")
            .current_dir(&dir)
            .env("TOKEN_TTL", ttl.to_string())
            .env("REFRESH_DELAY_MS", refresh_delay_ms.to_string())
            .env("REFRESH_HOLD", if gated { "gate" } else { "" })
            .env(
                "TTL_SEQUENCE",
                ttl_sequence
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node (is Node.js installed?)");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let base = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(url) = l.strip_prefix("ready ") {
                        // It reports `localhost`; it listens on 127.0.0.1.
                        break url.trim().replace("localhost", "127.0.0.1");
                    }
                }
                _ => panic!("the OAuth2 server exited before it was ready"),
            }
        };
        let events = crate::event_log::EventLog::read(lines);
        OAuthServer {
            base,
            child,
            events,
        }
    }

    /// Events so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events.snapshot()
    }

    /// Token requests of a grant type.
    pub fn token_requests(&self, grant_type: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| e["event"] == "token" && e["grant_type"] == grant_type)
            .count()
    }

    /// Wait (up to 10 s) until `cond` holds for the events seen so far: the server prints
    /// an event before it answers, but this process reads it on another thread.
    pub fn wait_until(&self, cond: impl Fn(&OAuthServer) -> bool) -> bool {
        self.events
            .wait_until(std::time::Duration::from_secs(10), || cond(self))
    }

    /// Token requests of a grant type, once at least `at_least` have been seen (or 10 s).
    pub fn token_requests_at_least(&self, grant_type: &str, at_least: usize) -> usize {
        self.wait_until(|s| s.token_requests(grant_type) >= at_least);
        self.token_requests(grant_type)
    }

    /// The refresh tokens issued, once at least `n` have been (or 10 s).
    pub fn refresh_tokens_at_least(&self, n: usize) -> Vec<String> {
        self.wait_until(|s| s.refresh_tokens_issued().len() >= n);
        self.refresh_tokens_issued()
    }

    /// The access tokens issued (by any grant), oldest first.
    pub fn access_tokens_issued(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e["event"] == "token" && e["outcome"] == "ok")
            .filter_map(|e| e["access_token"].as_str().map(str::to_string))
            .collect()
    }

    /// Tokens revoked.
    pub fn revoked(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e["event"] == "revoke")
            .filter_map(|e| e["token"].as_str().map(str::to_string))
            .collect()
    }

    /// Wait (up to 10 s) until the server has seen the revocation of `token`.
    pub fn wait_for_revocation(&self, token: &str) -> bool {
        self.wait_until(|s| s.revoked().iter().any(|t| t == token))
    }

    /// The refresh tokens issued, oldest first.
    pub fn refresh_tokens_issued(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e["event"] == "token" && e["outcome"] == "ok")
            .filter_map(|e| e["refresh_token"].as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
