//! The edge where the `oauth2` crate meets a provider. The crate does the protocol: the
//! authorize URL (PKCE S256 and `state`), the code and refresh grants, RFC 7009
//! revocation, and typed error answers (RFC 6749 §5.2). This file gives it:
//!
//! - its HTTP client: ours, reqwest with redirects off, a timeout, and no proxy taken
//!   from the environment ([`http_client`]);
//! - each provider's token dialect, normalised on the answer before the crate parses it
//!   ([`normalise`]): Slack's `ok:false` errors and `authed_user` nesting, and the small
//!   liberties standard providers take;
//! - the mapping of what the crate reports to [`OAuthError`].
//!
//! Nothing above this file knows a dialect: the lifecycle code asks a
//! [`ProviderClient`] to exchange, refresh or revoke and gets [`Tokens`] or an error.

use super::OAuthError;
use super::providers::Provider;
use crate::catalogue::oauth::{Revocation, TokenDialect};
use crate::vault::Secret;
use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse,
    BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AccessToken, AsyncHttpClient, AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret,
    CsrfToken, EndpointNotSet, EndpointSet, ErrorResponse, ExtraTokenFields, HttpClientError,
    HttpRequest, HttpResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, RevocationUrl, StandardRevocableToken, StandardTokenResponse, TokenResponse,
    TokenUrl,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// How long one request to a provider may take.
const TIMEOUT: Duration = Duration::from_secs(20);

/// The HTTP client every request to a provider goes through.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        // A token endpoint that redirects would take the client secret and the code
        // along to wherever it points.
        .redirect(reqwest::redirect::Policy::none())
        // reqwest honours HTTP_PROXY, HTTPS_PROXY and ALL_PROXY from the environment by
        // default: the client secret, codes and tokens go to the provider and to no
        // proxy an environment happens to name.
        .no_proxy()
        .build()
        .expect("an HTTP client with the default TLS backend builds")
}

/// What a token endpoint answered, once the crate parsed it.
pub(crate) struct Tokens {
    /// The access token.
    pub access_token: Secret,
    /// A refresh token, when the provider gave one (a new one when it rotates).
    pub refresh_token: Option<Secret>,
    /// How long the access token lives (None: long-lived).
    pub expires_in: Option<Duration>,
    /// The scopes granted, when the provider says.
    pub scopes: Option<Vec<String>>,
    /// The provider's id of the user, when the token answer carries it (Slack).
    pub provider_user_id: Option<String>,
    /// Provider facts worth keeping on the link (Slack's team and bot user).
    pub metadata: Value,
}

impl Tokens {
    /// When the access token expires, counted from `issued`; None when long-lived (or
    /// when the lifetime given reaches past any date).
    pub fn expiry(&self, issued: time::OffsetDateTime) -> Option<time::OffsetDateTime> {
        issued.checked_add(time::Duration::try_from(self.expires_in?).ok()?)
    }
}

/// The token answer's members besides the standard ones. Kept only to pick named
/// facts out of (never stored whole: it may hold an `id_token` or a second token).
#[derive(Default, Serialize, Deserialize)]
struct OtherFields {
    #[serde(flatten)]
    fields: Map<String, Value>,
}

impl std::fmt::Debug for OtherFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.fields.keys()).finish()
    }
}

impl ExtraTokenFields for OtherFields {}

type TokenAnswer = StandardTokenResponse<OtherFields, BasicTokenType>;

/// The crate's client for one provider: authorize and token endpoints set.
type CrateClient = oauth2::Client<
    BasicErrorResponse,
    TokenAnswer,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// A new authorization: the URL to send the browser to, and what the callback needs.
pub(crate) struct Authorization {
    /// The provider's authorize URL with every parameter.
    pub url: String,
    /// The `state` in the URL (256 random bits).
    pub state: String,
    /// The PKCE verifier, when the provider supports PKCE.
    pub pkce_verifier: Option<Secret>,
}

/// One provider, spoken to through the crate and our HTTP client.
pub(crate) struct ProviderClient<'a> {
    http: &'a reqwest::Client,
    provider: &'a Provider,
}

fn config_error(what: &str, e: impl std::fmt::Display) -> OAuthError {
    OAuthError::Provider(format!("{what} is not a URL: {e}"))
}

impl<'a> ProviderClient<'a> {
    /// A provider over our HTTP client.
    pub fn new(http: &'a reqwest::Client, provider: &'a Provider) -> ProviderClient<'a> {
        ProviderClient { http, provider }
    }

    fn dialect(&self) -> TokenDialect {
        self.provider.defaults.dialect
    }

    fn crate_client(&self) -> Result<CrateClient, OAuthError> {
        let p = self.provider;
        let mut client = oauth2::Client::new(ClientId::new(p.client_id.clone()))
            .set_auth_uri(
                AuthUrl::new(p.authorize_url.clone())
                    .map_err(|e| config_error("authorize_url", e))?,
            )
            .set_token_uri(
                TokenUrl::new(p.token_url.clone()).map_err(|e| config_error("token_url", e))?,
            )
            .set_redirect_uri(
                RedirectUrl::new(p.redirect_uri.clone())
                    .map_err(|e| config_error("redirect_uri", e))?,
            )
            // Client credentials in the form body (RFC 6749 §2.3.1), as every provider
            // in the catalogue accepts and Slack documents.
            .set_auth_type(AuthType::RequestBody);
        if let Some(s) = &p.client_secret {
            client = client.set_client_secret(ClientSecret::new(s.expose().to_string()));
        }
        Ok(client)
    }

    fn transport(&self) -> Transport<'a> {
        Transport {
            http: self.http,
            dialect: self.dialect(),
        }
    }

    /// A new authorize URL with a fresh `state` and, where supported, PKCE S256.
    pub fn authorization(&self) -> Result<Authorization, OAuthError> {
        let p = self.provider;
        let client = self.crate_client()?;
        let mut request = client.authorize_url(|| CsrfToken::new_random_len(32));
        let mut pkce_verifier = None;
        if p.defaults.pkce {
            let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
            request = request.set_pkce_challenge(challenge);
            pkce_verifier = Some(Secret::new(verifier.secret().clone()));
        }
        // The crate joins scopes with spaces; some providers want commas (Slack).
        let mut scopes = p.scopes.clone();
        for s in &p.defaults.implied_scopes {
            if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
        if !scopes.is_empty() {
            request = request.add_extra_param("scope", scopes.join(&p.defaults.scope_separator));
        }
        for (k, v) in &p.defaults.authorize_params {
            request = request.add_extra_param(k.as_str(), v.as_str());
        }
        let (url, state) = request.url();
        Ok(Authorization {
            url: url.to_string(),
            state: state.secret().clone(),
            pkce_verifier,
        })
    }

    /// Exchange an authorization code (with its PKCE verifier) for tokens.
    pub async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: Option<&Secret>,
    ) -> Result<Tokens, OAuthError> {
        let client = self.crate_client()?;
        let mut request = client.exchange_code(AuthorizationCode::new(code.to_string()));
        if let Some(v) = pkce_verifier {
            request = request.set_pkce_verifier(PkceCodeVerifier::new(v.expose().to_string()));
        }
        let transport = self.transport();
        let answer = request
            .request_async(&transport)
            .await
            .map_err(token_error)?;
        Ok(tokens(self.dialect(), answer))
    }

    /// Spend a refresh token for new tokens.
    pub async fn refresh(&self, refresh_token: &Secret) -> Result<Tokens, OAuthError> {
        let client = self.crate_client()?;
        let token = RefreshToken::new(refresh_token.expose().to_string());
        let transport = self.transport();
        let answer = client
            .exchange_refresh_token(&token)
            .request_async(&transport)
            .await
            .map_err(token_error)?;
        Ok(tokens(self.dialect(), answer))
    }

    /// Revoke a link's grant at the provider: the refresh token when there is one (which
    /// revokes its access tokens, RFC 7009 §2.1), else the access token, in the
    /// provider's revocation style. `Ok(false)` when the provider has no revocation
    /// endpoint.
    pub async fn revoke(
        &self,
        access_token: &Secret,
        refresh_token: Option<&Secret>,
    ) -> Result<bool, OAuthError> {
        let p = self.provider;
        let style = p.defaults.revocation;
        let Some(url) = p.revoke_url.as_ref().filter(|_| style != Revocation::None) else {
            return Ok(false);
        };
        if style == Revocation::SlackAuthRevoke {
            // Slack's auth.revoke is no RFC 7009 endpoint: the token to revoke is the
            // request's own credential, and errors are HTTP 200 with ok:false
            // (api.slack.com/methods/auth.revoke).
            let resp = self
                .http
                .post(url)
                .bearer_auth(access_token.expose())
                .send()
                .await
                .map_err(|e| OAuthError::Provider(e.without_url().to_string()))?;
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if !status.is_success() || body["ok"] != Value::Bool(true) {
                return Err(OAuthError::Provider(format!(
                    "auth.revoke answered {status}: {}",
                    body["error"].as_str().unwrap_or("no JSON")
                )));
            }
            return Ok(true);
        }
        let token = match refresh_token {
            Some(r) => {
                StandardRevocableToken::RefreshToken(RefreshToken::new(r.expose().to_string()))
            }
            None => StandardRevocableToken::AccessToken(AccessToken::new(
                access_token.expose().to_string(),
            )),
        };
        let url = RevocationUrl::new(url.clone()).map_err(|e| config_error("revoke_url", e))?;
        if url.url().scheme() != "https" {
            // RFC 7009 §2 has clients refuse a revocation endpoint that is not HTTPS, and
            // the crate does. A provider on this machine (a local identity provider, the
            // tests' oauth2-mock-server on 127.0.0.1) is reached over plain HTTP: for a
            // loopback endpoint only, this host sends the same RFC 7009 request itself.
            // Serving the tests' provider over TLS instead would need a test CA that
            // every host process and CLI run trusts, for this one request.
            if !is_loopback(url.url()) {
                return Err(OAuthError::Provider(
                    "revoke_url is plain http on a non-loopback host; a token is never sent there"
                        .into(),
                ));
            }
            return self
                .revoke_on_loopback(url.url(), &token)
                .await
                .map(|()| true);
        }
        let transport = self.transport();
        self.crate_client()?
            .set_revocation_url(url)
            .revoke_token(token)
            .map_err(|e| OAuthError::Provider(e.to_string()))?
            .request_async(&transport)
            .await
            .map_err(token_error)?;
        Ok(true)
    }

    /// The RFC 7009 request the crate would send, for a loopback plain-http endpoint.
    async fn revoke_on_loopback(
        &self,
        url: &url::Url,
        token: &StandardRevocableToken,
    ) -> Result<(), OAuthError> {
        use oauth2::RevocableToken as _;
        let p = self.provider;
        let mut form = vec![("token", token.secret().to_string())];
        if let Some(hint) = token.type_hint() {
            form.push(("token_type_hint", hint.to_string()));
        }
        form.push(("client_id", p.client_id.clone()));
        if let Some(s) = &p.client_secret {
            form.push(("client_secret", s.expose().to_string()));
        }
        let resp = self
            .http
            .post(url.clone())
            .header("accept", "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| OAuthError::Provider(e.without_url().to_string()))?;
        // RFC 7009 §2.2: the answer's code says it all.
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(OAuthError::Provider(format!(
                "revocation answered {}",
                resp.status()
            )))
        }
    }

    /// The provider's who-am-I answer for an access token (health checks, the user's
    /// identity at connect time).
    pub async fn identity(&self, access_token: &str) -> Result<Value, OAuthError> {
        let resp = self
            .http
            .get(&self.provider.identity_url)
            .bearer_auth(access_token)
            .send()
            .await
            .map_err(|e| OAuthError::Provider(e.without_url().to_string()))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        // Slack's Web API answers errors with HTTP 200 and ok:false.
        if !status.is_success() || body["ok"] == Value::Bool(false) {
            return Err(OAuthError::Provider(format!(
                "identity endpoint answered {status}: {}",
                body["error"]
            )));
        }
        Ok(body)
    }
}

/// `127.0.0.0/8`, `::1` or `localhost`.
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// The crate's HTTP client: our reqwest client, then the provider's dialect applied to
/// the answer before the crate reads it.
struct Transport<'a> {
    http: &'a reqwest::Client,
    dialect: TokenDialect,
}

impl<'c> AsyncHttpClient<'c> for Transport<'_> {
    type Error = HttpClientError<reqwest::Error>;
    type Future =
        Pin<Box<dyn Future<Output = Result<HttpResponse, Self::Error>> + Send + Sync + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let answer = self.http.call(request).await?;
            Ok(normalise(self.dialect, answer))
        })
    }
}

/// Slack's `oauth.v2.access` error names that mean the code or refresh token is no good
/// (api.slack.com/methods/oauth.v2.access#errors): RFC 6749's `invalid_grant`.
const SLACK_GRANT_ERRORS: &[&str] = &[
    "invalid_code",
    "code_already_used",
    "code_expired",
    "invalid_refresh_token",
    "token_revoked",
    "token_expired",
];

/// Rewrite a token endpoint's answer in the dialect the crate reads (RFC 6749 §5.1,
/// §5.2): errors as a non-200 status with `error` (and `error_description`), tokens at
/// the top level with `token_type`, `scope` space-separated, `expires_in` a number.
/// An answer that is not a JSON object is left to the crate, except an error status,
/// which becomes a `server_error` naming the status.
pub(crate) fn normalise(dialect: TokenDialect, answer: HttpResponse) -> HttpResponse {
    let (mut parts, body) = answer.into_parts();
    let mut doc = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(doc)) => doc,
        _ if parts.status.is_success() => return HttpResponse::from_parts(parts, body),
        _ => {
            let mut doc = Map::new();
            doc.insert("error".into(), json!("server_error"));
            doc.insert(
                "error_description".into(),
                json!(format!(
                    "HTTP {} without a JSON body",
                    parts.status.as_u16()
                )),
            );
            doc
        }
    };
    let failed = match dialect {
        TokenDialect::Standard => doc.get("error").is_some_and(Value::is_string),
        TokenDialect::Slack => slack(&mut doc),
    };
    if failed {
        // Some providers (GitHub, Slack) answer errors with HTTP 200.
        if parts.status == http::StatusCode::OK {
            parts.status = http::StatusCode::BAD_REQUEST;
        }
    } else {
        standard_liberties(&mut doc);
    }
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().expect("a valid header"),
    );
    let body = serde_json::to_vec(&doc).unwrap_or(body);
    parts.headers.remove(http::header::CONTENT_LENGTH);
    HttpResponse::from_parts(parts, body)
}

/// Slack's `oauth.v2.access` (api.slack.com/methods/oauth.v2.access): `ok:false` with an
/// `error` name on failure, at HTTP 200; on success a bot token at the top level, or
/// only a user token nested under `authed_user`; scopes comma-separated. Rewrites `doc`
/// to the standard shape; true when it is an error.
fn slack(doc: &mut Map<String, Value>) -> bool {
    if doc.get("ok") != Some(&Value::Bool(true)) {
        let name = doc
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown_error")
            .to_string();
        let mut error = Map::new();
        if SLACK_GRANT_ERRORS.contains(&name.as_str()) {
            error.insert("error".into(), json!("invalid_grant"));
            error.insert(
                "error_description".into(),
                json!(format!("Slack answered {name}")),
            );
        } else {
            error.insert("error".into(), json!(name));
            if let Some(d) = doc.get("error_description") {
                error.insert("error_description".into(), d.clone());
            }
        }
        *doc = error;
        return true;
    }
    if !doc.contains_key("access_token")
        && let Some(Value::Object(user)) = doc.get_mut("authed_user")
    {
        // A user token only: lift it (and its own lifetime and scopes) to the top; the
        // user's id stays under authed_user.
        let lifted: Vec<(String, Value)> = [
            "access_token",
            "refresh_token",
            "expires_in",
            "scope",
            "token_type",
        ]
        .iter()
        .filter_map(|k| user.remove(*k).map(|v| (k.to_string(), v)))
        .collect();
        doc.extend(lifted);
    }
    if let Some(Value::String(scope)) = doc.get_mut("scope") {
        *scope = scope
            .split(',')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
    }
    false
}

/// What standard providers take liberties with, for a successful token answer.
fn standard_liberties(doc: &mut Map<String, Value>) {
    // RFC 6749 §5.1 requires token_type; without one the token is a Bearer token (the
    // only kind this host uses). Slack says "bot" or "user".
    if doc.contains_key("access_token") && !doc.contains_key("token_type") {
        doc.insert("token_type".into(), json!("bearer"));
    }
    // Some providers send expires_in as a string, or a negative number for "expired".
    let seconds = match doc.get("expires_in") {
        Some(Value::String(s)) => Some(s.trim().parse::<i64>().ok()),
        Some(Value::Number(n)) if n.as_u64().is_none() => Some(n.as_i64()),
        _ => None,
    };
    if let Some(seconds) = seconds {
        match seconds {
            Some(s) => doc.insert("expires_in".into(), json!(s.max(0))),
            None => doc.remove("expires_in"),
        };
    }
}

/// The crate's parsed answer as [`Tokens`], with the dialect's extra facts.
fn tokens(dialect: TokenDialect, answer: TokenAnswer) -> Tokens {
    let other = &answer.extra_fields().fields;
    let (provider_user_id, metadata) = match dialect {
        TokenDialect::Standard => (None, json!({})),
        TokenDialect::Slack => {
            let pick = |k: &str| other.get(k).cloned().unwrap_or(Value::Null);
            (
                other
                    .get("authed_user")
                    .and_then(|u| u["id"].as_str())
                    .map(str::to_string),
                json!({"team": pick("team"), "bot_user_id": pick("bot_user_id"), "app_id": pick("app_id")}),
            )
        }
    };
    Tokens {
        access_token: Secret::new(answer.access_token().secret().clone()),
        refresh_token: answer
            .refresh_token()
            .map(|r| Secret::new(r.secret().clone())),
        expires_in: answer.expires_in(),
        scopes: answer
            .scopes()
            .map(|s| s.iter().map(|s| s.to_string()).collect()),
        provider_user_id,
        metadata,
    }
}

/// RFC 6749 error names (and Slack's, once normalised) as this host's errors; the
/// provider's own name leads the message.
fn token_error<T>(e: RequestTokenError<HttpClientError<reqwest::Error>, T>) -> OAuthError
where
    T: ErrorResponse + ProviderError + 'static,
{
    match e {
        RequestTokenError::ServerResponse(answer) => {
            let message = answer.to_string();
            match answer.kind() {
                ErrorKind::InvalidGrant => OAuthError::InvalidGrant(message),
                ErrorKind::AccessDenied => OAuthError::AccessDenied(message),
                ErrorKind::Failed => OAuthError::Provider(message),
                ErrorKind::Other => OAuthError::Upstream(message),
            }
        }
        RequestTokenError::Request(e) => {
            OAuthError::Provider(format!("token endpoint unreachable: {}", unreachable(e)))
        }
        // Only where the answer broke, never the answer itself (it may hold a token).
        RequestTokenError::Parse(e, _) => OAuthError::Provider(match e.path().to_string() {
            root if root == "." => {
                "the token endpoint's answer is not a token response (a required member is missing)"
                    .to_string()
            }
            path => format!("the token endpoint's answer is not a token response (at `{path}`)"),
        }),
        RequestTokenError::Other(m) => OAuthError::Provider(m),
    }
}

fn unreachable(e: HttpClientError<reqwest::Error>) -> String {
    match e {
        HttpClientError::Reqwest(e) => e.without_url().to_string(),
        other => other.to_string(),
    }
}

/// How the host treats an error a provider named.
enum ErrorKind {
    /// The code or refresh token is no good.
    InvalidGrant,
    /// The user or provider refused.
    AccessDenied,
    /// The provider failed (`server_error`, `temporarily_unavailable`, or an answer
    /// that was no JSON or named no error, which `normalise` names `server_error` and
    /// `unknown_error`).
    Failed,
    /// Any other error it names (`invalid_request`, `invalid_client`, ...).
    Other,
}

/// The error answers of the token and revocation endpoints, by kind.
trait ProviderError {
    fn kind(&self) -> ErrorKind;
}

impl ProviderError for BasicErrorResponse {
    fn kind(&self) -> ErrorKind {
        match self.error() {
            BasicErrorResponseType::InvalidGrant => ErrorKind::InvalidGrant,
            BasicErrorResponseType::Extension(e) if e == "access_denied" => ErrorKind::AccessDenied,
            BasicErrorResponseType::Extension(e)
                if matches!(
                    e.as_str(),
                    "server_error" | "temporarily_unavailable" | "unknown_error"
                ) =>
            {
                ErrorKind::Failed
            }
            _ => ErrorKind::Other,
        }
    }
}

impl ProviderError for BasicRevocationErrorResponse {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    /// A real token endpoint on a loopback port answering `status` and `body` to every
    /// request; the form bodies it received.
    async fn endpoint(status: u16, body: Value) -> (String, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let answer = move |form: String| {
            let (record, body) = (record.clone(), body.clone());
            async move {
                record.lock().unwrap().push(form);
                (
                    StatusCode::from_u16(status).unwrap(),
                    [("content-type", "application/json")],
                    body.to_string(),
                )
            }
        };
        let app = axum::Router::new().fallback(answer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    fn provider(service: &str, base: &str, extra: Value) -> Provider {
        let mut c = json!({
            "client_id": "client-1", "client_secret": "secret-1",
            "redirect_uri": "http://127.0.0.1:1/auth/callback", "scopes": ["a:read", "b:write"],
            "authorize_url": format!("{base}/authorize"), "token_url": format!("{base}/token"),
            "revoke_url": format!("{base}/revoke"), "identity_url": format!("{base}/me"),
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        let config = BTreeMap::from([(service.to_string(), serde_json::from_value(c).unwrap())]);
        super::super::providers::configure(&crate::catalogue::Catalogue::builtin(), &config)
            .unwrap()
            .remove(service)
            .unwrap()
    }

    async fn exchange(service: &str, status: u16, body: Value) -> Result<Tokens, OAuthError> {
        let (base, _) = endpoint(status, body).await;
        let p = provider(service, &base, json!({}));
        let http = http_client();
        ProviderClient::new(&http, &p)
            .exchange_code("the-code", None)
            .await
    }

    #[tokio::test]
    async fn slack_ok_false_is_the_error_it_names() {
        // A bad code: HTTP 200, ok:false, Slack's own name for it.
        let e = exchange("slack", 200, json!({"ok": false, "error": "invalid_code"}))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&e, OAuthError::InvalidGrant(m) if m.contains("invalid_code")),
            "{e:?}"
        );
        // A spent refresh token after token rotation.
        let e = exchange(
            "slack",
            200,
            json!({"ok": false, "error": "invalid_refresh_token"}),
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(e, OAuthError::InvalidGrant(_)), "{e:?}");
        // Anything else is the provider's error, under Slack's name.
        let e = exchange(
            "slack",
            200,
            json!({"ok": false, "error": "invalid_client_id"}),
        )
        .await
        .err()
        .unwrap();
        assert!(
            matches!(&e, OAuthError::Upstream(m) if m.starts_with("invalid_client_id")),
            "{e:?}"
        );
        // ok:false without a name still fails (never parsed as tokens).
        let e = exchange("slack", 200, json!({"ok": false}))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, OAuthError::Provider(_)), "{e:?}");
    }

    #[tokio::test]
    async fn slack_bot_and_user_tokens_are_read_where_slack_puts_them() {
        let bot = exchange(
            "slack",
            200,
            json!({"ok": true, "access_token": "xoxb-1", "token_type": "bot",
                "scope": "chat:write,files:write", "bot_user_id": "U0BOT", "app_id": "A1",
                "team": {"id": "T1"}, "authed_user": {"id": "U123"}}),
        )
        .await
        .unwrap();
        assert_eq!(bot.access_token.expose(), "xoxb-1");
        assert_eq!(bot.scopes.unwrap(), ["chat:write", "files:write"]);
        assert_eq!(bot.provider_user_id.as_deref(), Some("U123"));
        assert!(bot.refresh_token.is_none() && bot.expires_in.is_none());
        assert_eq!(
            bot.metadata,
            json!({"team": {"id": "T1"}, "bot_user_id": "U0BOT", "app_id": "A1"})
        );
        // Only a user token: nested under authed_user, with its own rotation fields.
        let user = exchange(
            "slack",
            200,
            json!({"ok": true, "app_id": "A1", "team": {"id": "T1"},
                "authed_user": {"id": "U9", "scope": "search:read", "access_token": "xoxp-9",
                    "token_type": "user", "refresh_token": "xoxe-1", "expires_in": 43200}}),
        )
        .await
        .unwrap();
        assert_eq!(user.access_token.expose(), "xoxp-9");
        assert_eq!(user.refresh_token.unwrap().expose(), "xoxe-1");
        assert_eq!(user.expires_in, Some(Duration::from_secs(43200)));
        assert_eq!(user.scopes.unwrap(), ["search:read"]);
        assert_eq!(user.provider_user_id.as_deref(), Some("U9"));
        // Neither: not a token answer.
        let e = exchange(
            "slack",
            200,
            json!({"ok": true, "authed_user": {"id": "U9"}}),
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(e, OAuthError::Provider(_)), "{e:?}");
    }

    #[tokio::test]
    async fn a_standard_error_is_reported_under_the_providers_error_name() {
        let e = exchange(
            "google",
            401,
            json!({"error": "invalid_client", "error_description": "The OAuth client was not found."}),
        )
        .await
        .err()
        .unwrap();
        assert!(
            matches!(&e, OAuthError::Upstream(m) if m == "invalid_client: The OAuth client was not found."),
            "{e:?}"
        );
        let e = exchange(
            "google",
            400,
            json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}),
        )
        .await
        .err()
        .unwrap();
        assert!(
            matches!(&e, OAuthError::InvalidGrant(m) if m == "invalid_grant: Token has been expired or revoked."),
            "{e:?}"
        );
        let e = exchange("google", 400, json!({"error": "access_denied"}))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, OAuthError::AccessDenied(_)), "{e:?}");
        // An error at HTTP 200 (as GitHub answers) is still an error.
        let e = exchange(
            "google",
            200,
            json!({"error": "bad_verification_code", "error_description": "The code is incorrect."}),
        )
        .await
        .err()
        .unwrap();
        assert!(
            matches!(&e, OAuthError::Upstream(m) if m.starts_with("bad_verification_code")),
            "{e:?}"
        );
        // A gateway's HTML error page: the status is named, nothing is parsed as tokens.
        let (base, _) = endpoint(502, json!("<html>Bad gateway</html>")).await;
        let p = provider("google", &base, json!({}));
        let http = http_client();
        let e = ProviderClient::new(&http, &p)
            .refresh(&Secret::new("r".into()))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&e, OAuthError::Provider(m) if m.contains("server_error") && m.contains("502")),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn standard_answers_with_liberties_are_read() {
        // No token_type, expires_in as a string: read as a Bearer token living an hour.
        let t = exchange(
            "google",
            200,
            json!({"access_token": "at", "refresh_token": "rt", "expires_in": "3600", "scope": "a:read b:write"}),
        )
        .await
        .unwrap();
        assert_eq!(t.access_token.expose(), "at");
        assert_eq!(t.expires_in, Some(Duration::from_secs(3600)));
        assert_eq!(t.scopes.unwrap(), ["a:read", "b:write"]);
        assert!(t.provider_user_id.is_none());
        // A lifetime past any date is no expiry (and no panic).
        let t = exchange(
            "google",
            200,
            json!({"access_token": "at", "token_type": "Bearer", "expires_in": u64::MAX}),
        )
        .await
        .unwrap();
        assert_eq!(t.expiry(time::OffsetDateTime::now_utc()), None);
    }

    #[tokio::test]
    async fn the_code_grant_sends_the_client_credentials_verifier_and_redirect_uri() {
        let (base, seen) = endpoint(
            200,
            json!({"access_token": "at", "token_type": "Bearer", "expires_in": 60}),
        )
        .await;
        let p = provider("google", &base, json!({}));
        let http = http_client();
        let t = ProviderClient::new(&http, &p)
            .exchange_code("the-code", Some(&Secret::new("verifier-1".into())))
            .await
            .unwrap();
        assert_eq!(t.expires_in, Some(Duration::from_secs(60)));
        let form: BTreeMap<String, String> =
            url::form_urlencoded::parse(seen.lock().unwrap()[0].as_bytes())
                .into_owned()
                .collect();
        for (k, v) in [
            ("grant_type", "authorization_code"),
            ("code", "the-code"),
            ("code_verifier", "verifier-1"),
            ("redirect_uri", "http://127.0.0.1:1/auth/callback"),
            ("client_id", "client-1"),
            ("client_secret", "secret-1"),
        ] {
            assert_eq!(form.get(k).map(String::as_str), Some(v), "{k} in {form:?}");
        }
    }

    #[test]
    fn authorize_urls_carry_state_pkce_s256_and_the_providers_scope_separator() {
        let http = http_client();
        let p = provider("google", "http://127.0.0.1:9", json!({}));
        let a = ProviderClient::new(&http, &p).authorization().unwrap();
        let q: BTreeMap<String, String> = url::Url::parse(&a.url)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
        assert_eq!(q["state"], a.state);
        assert_eq!(a.state.len(), 43, "256 bits of state");
        assert_eq!(q["code_challenge_method"], "S256");
        let verifier = PkceCodeVerifier::new(a.pkce_verifier.unwrap().expose().to_string());
        assert_eq!(
            q["code_challenge"],
            PkceCodeChallenge::from_code_verifier_sha256(&verifier).as_str()
        );
        assert_eq!(q["scope"], "a:read b:write");
        assert_eq!(q["access_type"], "offline");
        assert_eq!(q["response_type"], "code");
        // Slack: comma-separated scopes, no PKCE.
        let p = provider("slack", "http://127.0.0.1:9", json!({}));
        let a = ProviderClient::new(&http, &p).authorization().unwrap();
        let q: BTreeMap<String, String> = url::Url::parse(&a.url)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
        assert_eq!(q["scope"], "a:read,b:write");
        assert!(a.pkce_verifier.is_none() && !q.contains_key("code_challenge"));
    }

    #[tokio::test]
    async fn revocation_is_rfc_7009_and_never_plain_http_off_loopback() {
        let (base, seen) = endpoint(200, json!({})).await;
        let p = provider("google", &base, json!({}));
        let http = http_client();
        let client = ProviderClient::new(&http, &p);
        let (access, refresh) = (Secret::new("at".into()), Secret::new("rt".into()));
        assert!(client.revoke(&access, Some(&refresh)).await.unwrap());
        let form: BTreeMap<String, String> =
            url::form_urlencoded::parse(seen.lock().unwrap()[0].as_bytes())
                .into_owned()
                .collect();
        assert_eq!(form["token"], "rt");
        assert_eq!(form["token_type_hint"], "refresh_token");
        assert_eq!(form["client_id"], "client-1");
        // A plain-http endpoint elsewhere never gets the token.
        let p = provider(
            "google",
            &base,
            json!({"revoke_url": "http://revoke.example/revoke"}),
        );
        let e = ProviderClient::new(&http, &p)
            .revoke(&access, Some(&refresh))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, OAuthError::Provider(_)), "{e:?}");
        assert_eq!(seen.lock().unwrap().len(), 1);
        // No endpoint: nothing to revoke.
        let mut p = provider("google", &base, json!({}));
        p.revoke_url = None;
        assert!(
            !ProviderClient::new(&http, &p)
                .revoke(&access, None)
                .await
                .unwrap()
        );
    }
}
