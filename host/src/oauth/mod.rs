//! The OAuth2 lifecycle, owned by the host so modules never do it: connect (authorize
//! URL with a single-use, expiring, user-bound `state` and PKCE), callback (code
//! exchange, identity, encrypted `DBLink`), refresh before expiry by exactly one
//! refresher per link (a per-process single flight plus a lease in the store,
//! re-read after taking it, compare-and-set write), unlink with best-effort revocation,
//! and health checks.

pub mod journal;
pub mod providers;

use crate::catalogue::oauth::{RefreshPolicy, Revocation, TokenDialect};
use crate::error::ErrorName;
use crate::store::AnyStore;
use crate::store::{LinkRecord, OAuthStateRecord, Store, StoreError, new_object_id, now};
use crate::vault::{Secret, Vault};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use providers::Provider;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;

/// How long a `state` is good for (flow8: codes expire after 10 minutes).
pub const STATE_TTL: Duration = Duration::from_secs(600);

/// The `service` marking a pending record as a connect session, not an authorization
/// (no provider has this name: it is not a valid service name).
const CONNECT_SESSION: &str = "flow8:connect-session";

/// Why an OAuth operation failed; `name()` is the flow8 error name.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// No such service, or the operator did not configure it.
    #[error("OAuth service `{0}` is not configured on this host")]
    NotConfigured(String),
    /// The `state` is unknown, used, expired, or not the caller's.
    #[error("the authorization request is unknown, already used or expired; start again")]
    InvalidState,
    /// The user (or provider) refused consent.
    #[error("the authorization was refused: {0}")]
    AccessDenied(String),
    /// The provider refused the code or refresh token.
    #[error("the provider refused the grant: {0}")]
    InvalidGrant(String),
    /// The link was revoked at the provider; the user must reconnect.
    #[error("the {0} connection was revoked; reconnect it")]
    TokenRevoked(String),
    /// No such link for this company.
    #[error("no such link")]
    NotFound,
    /// The provider answered with something unexpected or could not be reached.
    #[error("the provider failed: {0}")]
    Provider(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sealed token could not be opened.
    #[error("a stored token cannot be decrypted: {0}")]
    Vault(String),
}

impl OAuthError {
    /// The flow8 error name.
    pub fn name(&self) -> ErrorName {
        match self {
            OAuthError::NotConfigured(_) => ErrorName::NotConfigured,
            OAuthError::InvalidState => ErrorName::InvalidState,
            OAuthError::AccessDenied(_) => ErrorName::AccessDenied,
            OAuthError::InvalidGrant(_) => ErrorName::InvalidGrant,
            OAuthError::TokenRevoked(_) => ErrorName::TokenRevoked,
            OAuthError::NotFound => ErrorName::NotFound,
            OAuthError::Provider(_) => ErrorName::ProviderError,
            OAuthError::Store(StoreError::Conflict(_)) => ErrorName::Conflict,
            OAuthError::Store(_) => ErrorName::StoreUnavailable,
            OAuthError::Vault(_) => ErrorName::InternalError,
        }
    }
}

/// What a token endpoint answered, normalised across dialects.
#[derive(Debug)]
struct Tokens {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: Option<i64>,
    scopes: Option<Vec<String>>,
    provider_user_id: Option<String>,
    metadata: Value,
}

/// The OAuth service of one host process.
pub struct OAuthService {
    store: Arc<AnyStore>,
    vault: Arc<Vault>,
    providers: BTreeMap<String, Provider>,
    http: reqwest::Client,
    /// Refresh when the token expires within this window (flow8: 1 hour).
    pub refresh_window: Duration,
    /// How long a refresh lease holds.
    pub lease: Duration,
    owner: String,
    single_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    journal: Option<journal::RefreshJournal>,
}

/// At most this many links are renewed per background tick (the rest wait a tick).
const BACKGROUND_REFRESH_BATCH: u32 = 500;

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn random_token() -> String {
    B64URL.encode(rand::random::<[u8; 32]>())
}

impl OAuthService {
    /// A service over configured providers.
    pub fn new(
        store: Arc<AnyStore>,
        vault: Arc<Vault>,
        providers: BTreeMap<String, Provider>,
    ) -> OAuthService {
        OAuthService {
            store,
            vault,
            providers,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client with default TLS builds"),
            refresh_window: Duration::from_secs(3600),
            lease: Duration::from_secs(30),
            owner: new_object_id(),
            single_flight: Mutex::new(HashMap::new()),
            journal: None,
        }
    }

    /// Keep refresh answers in a local journal until the store has them (see
    /// [`journal`]): a store outage or a crash right after a provider rotated the refresh
    /// token then loses nothing.
    pub fn with_journal(mut self, dir: impl Into<std::path::PathBuf>) -> OAuthService {
        self.journal = Some(journal::RefreshJournal::at(dir));
        self
    }

    /// Write a journaled refresh to the store if the store still holds the refresh token
    /// it spent; drop it if the link moved on. `Err` while the store cannot take it.
    async fn flush_journal_entry(&self, entry: journal::JournalEntry) -> Result<(), OAuthError> {
        let Some(j) = &self.journal else {
            return Ok(());
        };
        let id = entry.link.id.clone();
        loop {
            let Some(current) = self.store.get_link(&entry.link.company_id, &id).await? else {
                j.remove(&id);
                return Ok(());
            };
            if !self.same_secret(&current.refresh_token, &entry.spent_refresh_token) {
                // Refreshed or reconnected since: the journaled answer is obsolete.
                j.remove(&id);
                return Ok(());
            }
            let mut link = entry.link.clone();
            link.status = "active".into();
            link.refresh_lease_owner = None;
            link.refresh_lease_until = None;
            if self.store.update_link_cas(link, current.version).await? {
                tracing::info!(link = %id, "a journaled refresh reached the store");
                j.remove(&id);
                return Ok(());
            }
        }
    }

    /// Do two sealed values hold the same secret (a key rotation re-seals without
    /// changing it)?
    fn same_secret(
        &self,
        a: &Option<crate::vault::Envelope>,
        b: &Option<crate::vault::Envelope>,
    ) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(x), Some(y)) if x == y => true,
            (Some(x), Some(y)) => match (self.vault.decrypt(x), self.vault.decrypt(y)) {
                (Ok(p), Ok(q)) => p == q,
                _ => false,
            },
            _ => false,
        }
    }

    /// Flush every journaled refresh the store can take now.
    pub async fn flush_journal(&self) {
        let Some(j) = &self.journal else { return };
        for entry in j.pending() {
            let id = entry.link.id.clone();
            if let Err(e) = self.flush_journal_entry(entry).await {
                tracing::warn!(link = %id, error = %e, "a journaled refresh is still waiting for the store");
            }
        }
    }

    /// Flush the journal now and then every `every` (for `serve`).
    pub fn spawn_journal_flusher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                this.flush_journal().await;
            }
        })
    }

    /// Before refreshing a link: its journaled refresh, if any, must reach the store
    /// first (refreshing again would spend a refresh token that is already spent).
    async fn settle_journal(&self, link_id: &str) -> Result<(), OAuthError> {
        if let Some(entry) = self.journal.as_ref().and_then(|j| j.get(link_id)) {
            self.flush_journal_entry(entry).await?;
        }
        Ok(())
    }

    /// The configured provider of a service.
    pub fn provider(&self, service: &str) -> Result<&Provider, OAuthError> {
        self.providers
            .get(service)
            .ok_or_else(|| OAuthError::NotConfigured(service.to_string()))
    }

    /// Services the operator configured.
    pub fn services(&self) -> Vec<String> {
        self.providers.keys().cloned().collect()
    }

    /// Configured services whose tokens are refreshed before they expire (the others
    /// are long-lived: reconnected when revoked, never refreshed).
    fn auto_refresh_services(&self) -> Vec<String> {
        self.providers
            .iter()
            .filter(|(_, p)| p.defaults.refresh == RefreshPolicy::Auto)
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// A short-lived, single-use connect session for a user (Nango-style): the token
    /// opens the host's connect page once, so a browser never holds an API token.
    /// Stored hashed, like an authorization state, and expiring with the same TTL.
    pub async fn create_connect_session(
        &self,
        company_id: &str,
        user_id: &str,
    ) -> Result<(String, time::OffsetDateTime), OAuthError> {
        let token = random_token();
        let expires_at = now() + STATE_TTL;
        self.store
            .insert_oauth_state(OAuthStateRecord {
                state_hash: sha256_hex(&token),
                company_id: company_id.into(),
                user_id: user_id.into(),
                service: CONNECT_SESSION.into(),
                pkce_verifier: None,
                expires_at,
            })
            .await?;
        Ok((token, expires_at))
    }

    /// Use up a connect session: the company and user it was made for. Unknown, used,
    /// expired, or an authorization state instead of a session: `InvalidState`.
    pub async fn open_connect_session(&self, token: &str) -> Result<(String, String), OAuthError> {
        let record = self
            .store
            .take_oauth_state(&sha256_hex(token))
            .await?
            .ok_or(OAuthError::InvalidState)?;
        if record.service != CONNECT_SESSION {
            return Err(OAuthError::InvalidState);
        }
        Ok((record.company_id, record.user_id))
    }

    /// Start a connection: the provider URL to send the user's browser to.
    pub async fn authorize_url(
        &self,
        company_id: &str,
        user_id: &str,
        service: &str,
    ) -> Result<String, OAuthError> {
        let p = self.provider(service)?;
        let state = random_token();
        let verifier = p.defaults.pkce.then(random_token);
        self.store
            .insert_oauth_state(OAuthStateRecord {
                state_hash: sha256_hex(&state),
                company_id: company_id.into(),
                user_id: user_id.into(),
                service: service.into(),
                pkce_verifier: verifier.as_ref().map(|v| self.vault.encrypt(v)),
                expires_at: now() + STATE_TTL,
            })
            .await?;
        let mut scopes = p.scopes.clone();
        for s in &p.defaults.implied_scopes {
            if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
        let mut url = url::Url::parse(&p.authorize_url)
            .map_err(|e| OAuthError::Provider(format!("authorize_url is not a URL: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &p.client_id)
                .append_pair("redirect_uri", &p.redirect_uri)
                .append_pair("scope", &scopes.join(&p.defaults.scope_separator))
                .append_pair("state", &state);
            if let Some(v) = &verifier {
                q.append_pair(
                    "code_challenge",
                    &B64URL.encode(Sha256::digest(v.as_bytes())),
                )
                .append_pair("code_challenge_method", "S256");
            }
            for (k, v) in &p.defaults.authorize_params {
                q.append_pair(k, v);
            }
        }
        Ok(url.to_string())
    }

    async fn token_request(
        &self,
        p: &Provider,
        form: &[(&str, &str)],
    ) -> Result<Tokens, OAuthError> {
        let mut form: Vec<(&str, &str)> = form.to_vec();
        form.push(("client_id", &p.client_id));
        if let Some(s) = &p.client_secret {
            form.push(("client_secret", s.expose()));
        }
        let resp = self
            .http
            .post(&p.token_url)
            .header("accept", "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| {
                OAuthError::Provider(format!("token endpoint unreachable: {}", e.without_url()))
            })?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.map_err(|_| {
            OAuthError::Provider(format!("token endpoint answered {status} without JSON"))
        })?;
        parse_tokens(p.defaults.dialect, status, &body)
    }

    /// Finish a connection: check the state, exchange the code, read the identity, and
    /// store the link with its tokens sealed. Nothing is stored on any failure.
    pub async fn callback(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Result<LinkRecord, OAuthError> {
        let state = params.get("state").ok_or(OAuthError::InvalidState)?;
        let pending = self
            .store
            .take_oauth_state(&sha256_hex(state))
            .await?
            .ok_or(OAuthError::InvalidState)?;
        if pending.service == CONNECT_SESSION {
            // A connect-page token is not an authorization state (and is now used up).
            return Err(OAuthError::InvalidState);
        }
        if let Some(error) = params.get("error") {
            let detail = params.get("error_description").cloned().unwrap_or_default();
            return Err(OAuthError::AccessDenied(
                format!("{error} {detail}").trim().to_string(),
            ));
        }
        let code = params
            .get("code")
            .ok_or_else(|| OAuthError::InvalidGrant("no code in the callback".into()))?;
        let p = self.provider(&pending.service)?;
        let verifier = match &pending.pkce_verifier {
            Some(e) => Some(
                self.vault
                    .decrypt(e)
                    .map_err(|e| OAuthError::Vault(e.to_string()))?,
            ),
            None => None,
        };
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", p.redirect_uri.as_str()),
        ];
        if let Some(v) = &verifier {
            form.push(("code_verifier", v.expose()));
        }
        let tokens = self.token_request(p, &form).await?;
        let identity = self
            .identity(p, &tokens.access_token)
            .await
            .unwrap_or(Value::Null);
        let mut metadata = tokens.metadata.clone();
        for key in &p.defaults.callback_metadata {
            // e.g. QuickBooks names the company on the redirect (`realmId`).
            if let Some(v) = params.get(key) {
                metadata[key.as_str()] = Value::String(v.clone());
            }
        }
        let provider_user_id = tokens
            .provider_user_id
            .clone()
            .or_else(|| p.defaults.identity.user_id(&identity))
            .unwrap_or_default();
        let provider_user_email = p.defaults.identity.email(&identity).unwrap_or_default();
        let t = now();
        let link = LinkRecord {
            id: new_object_id(),
            user_id: pending.user_id,
            company_id: pending.company_id,
            integration_type: pending.service,
            access_token: self.vault.encrypt(&tokens.access_token),
            refresh_token: tokens
                .refresh_token
                .as_deref()
                .map(|r| self.vault.encrypt(r)),
            token_expiry: tokens
                .expires_in
                .map(|s| t + Duration::from_secs(s.max(0) as u64)),
            scopes: tokens.scopes.unwrap_or_else(|| p.scopes.clone()),
            provider_user_id,
            provider_user_email,
            provider_metadata: metadata,
            status: "active".into(),
            refresh_lease_owner: None,
            refresh_lease_until: None,
            version: 0,
            created_at: t,
            updated_at: t,
        };
        self.store.insert_link(link.clone()).await?;
        Ok(link)
    }

    async fn identity(&self, p: &Provider, access_token: &str) -> Result<Value, OAuthError> {
        let resp = self
            .http
            .get(&p.identity_url)
            .bearer_auth(access_token)
            .send()
            .await
            .map_err(|e| OAuthError::Provider(e.without_url().to_string()))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() || body["ok"] == Value::Bool(false) {
            return Err(OAuthError::Provider(format!(
                "identity endpoint answered {status}: {}",
                body["error"]
            )));
        }
        Ok(body)
    }

    /// A company's link, or `NotFound`.
    async fn link(&self, company_id: &str, link_id: &str) -> Result<LinkRecord, OAuthError> {
        self.store
            .get_link(company_id, link_id)
            .await?
            .ok_or(OAuthError::NotFound)
    }

    fn flight(&self, link_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.single_flight
            .lock()
            .expect("single-flight lock")
            .entry(link_id.to_string())
            .or_default()
            .clone()
    }

    fn needs_refresh(&self, link: &LinkRecord) -> bool {
        link.token_expiry.is_some_and(|t| {
            t - now()
                < time::Duration::try_from(self.refresh_window).unwrap_or(time::Duration::HOUR)
        })
    }

    /// The link's access token for a step of `company_id`, refreshed first when it
    /// expires within the refresh window.
    pub async fn access_token(
        &self,
        company_id: &str,
        link_id: &str,
    ) -> Result<(Secret, LinkRecord), OAuthError> {
        let link = self.link(company_id, link_id).await?;
        let link = self.fresh(link).await?;
        let token = self
            .vault
            .decrypt(&link.access_token)
            .map_err(|e| OAuthError::Vault(e.to_string()))?;
        Ok((token, link))
    }

    /// Refresh a link whose access token the provider just refused (`rejected`), unless
    /// another refresher already replaced it; the token to use now. Same single flight
    /// and lease as the expiry refresh.
    pub async fn force_refresh(
        &self,
        company_id: &str,
        link_id: &str,
        rejected: &Secret,
    ) -> Result<Secret, OAuthError> {
        let link = self.link(company_id, link_id).await?;
        let p = self.provider(&link.integration_type)?;
        if p.defaults.refresh == RefreshPolicy::Manual || link.refresh_token.is_none() {
            return Err(OAuthError::TokenRevoked(link.integration_type));
        }
        let flight = self.flight(&link.id);
        let _guard = flight.lock().await;
        self.settle_journal(&link.id).await?;
        let deadline = tokio::time::Instant::now() + self.lease + Duration::from_secs(5);
        loop {
            let current = self.link(company_id, link_id).await?;
            if current.status == "needs_reconnect" {
                return Err(OAuthError::TokenRevoked(current.integration_type));
            }
            let token = self
                .vault
                .decrypt(&current.access_token)
                .map_err(|e| OAuthError::Vault(e.to_string()))?;
            if &token != rejected {
                return Ok(token);
            }
            let until = now() + self.lease;
            if let Some(leased) = self
                .store
                .try_lease_link(company_id, link_id, &self.owner, until)
                .await?
            {
                let fresh = self.refresh_leased(p, leased, true).await?;
                return self
                    .vault
                    .decrypt(&fresh.access_token)
                    .map_err(|e| OAuthError::Vault(e.to_string()));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(OAuthError::Provider(
                    "another host is refreshing this link and has not finished".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn fresh(&self, link: LinkRecord) -> Result<LinkRecord, OAuthError> {
        if link.status == "needs_reconnect" {
            return Err(OAuthError::TokenRevoked(link.integration_type));
        }
        let p = self.provider(&link.integration_type)?;
        if !self.needs_refresh(&link)
            || p.defaults.refresh == RefreshPolicy::Manual
            || link.refresh_token.is_none()
        {
            return Ok(link);
        }
        // One refresher per link in this process...
        let flight = self.flight(&link.id);
        let _guard = flight.lock().await;
        self.settle_journal(&link.id).await?;
        let deadline = tokio::time::Instant::now() + self.lease + Duration::from_secs(5);
        loop {
            let current = self.link(&link.company_id, &link.id).await?;
            if current.status == "needs_reconnect" {
                return Err(OAuthError::TokenRevoked(current.integration_type));
            }
            if !self.needs_refresh(&current) {
                return Ok(current);
            }
            // ...and across processes: a lease in the store, re-read after taking it.
            let until = now() + self.lease;
            match self
                .store
                .try_lease_link(&link.company_id, &link.id, &self.owner, until)
                .await?
            {
                Some(leased) => return self.refresh_leased(p, leased, false).await,
                None => {
                    let still_valid = current.token_expiry.is_some_and(|t| t > now());
                    if still_valid {
                        // Someone else is refreshing; the current token still works.
                        return Ok(current);
                    }
                    if tokio::time::Instant::now() > deadline {
                        return Err(OAuthError::Provider(
                            "another host is refreshing this link and has not finished".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn refresh_leased(
        &self,
        p: &Provider,
        leased: LinkRecord,
        force: bool,
    ) -> Result<LinkRecord, OAuthError> {
        if !force && !self.needs_refresh(&leased) {
            return Ok(leased);
        }
        let refresh = match &leased.refresh_token {
            Some(e) => self
                .vault
                .decrypt(e)
                .map_err(|e| OAuthError::Vault(e.to_string()))?,
            None => return Ok(leased),
        };
        let mut attempt = 0;
        let tokens = loop {
            attempt += 1;
            match self
                .token_request(
                    p,
                    &[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", refresh.expose()),
                    ],
                )
                .await
            {
                Ok(t) => break t,
                Err(OAuthError::InvalidGrant(reason)) => {
                    // The refresh token is dead: mark the link once, no retry storm.
                    let mut dead = leased.clone();
                    dead.status = "needs_reconnect".into();
                    dead.refresh_lease_owner = None;
                    dead.refresh_lease_until = None;
                    let marked = self
                        .store
                        .update_link_cas(dead.clone(), leased.version)
                        .await?;
                    if !marked {
                        // The link changed meanwhile (unlinked, or marked by another
                        // host): this host marked nothing, so it records nothing.
                        tracing::info!(link = %leased.id, service = %leased.integration_type, %reason, "refresh refused; the link changed meanwhile and is left as it is");
                        return Err(OAuthError::TokenRevoked(leased.integration_type));
                    }
                    tracing::warn!(link = %leased.id, service = %leased.integration_type, %reason, "refresh refused; link needs reconnection");
                    crate::server::audit::record(
                        &self.store,
                        &leased.company_id,
                        None,
                        "integration_needs_reconnect",
                        "integration",
                        &leased.id,
                        json!({"status": "active"}),
                        json!({"status": "needs_reconnect", "integration_type": leased.integration_type}),
                    )
                    .await;
                    return Err(OAuthError::TokenRevoked(leased.integration_type));
                }
                Err(e) if attempt < 3 => {
                    tracing::warn!(link = %leased.id, error = %e, attempt, "refresh failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * (1 << attempt))).await;
                }
                Err(e) => {
                    if leased.token_expiry.is_some_and(|t| t > now()) {
                        // The provider is down but the token still works: use it.
                        return Ok(leased);
                    }
                    return Err(e);
                }
            }
        };
        let t = now();
        let mut updated = leased.clone();
        updated.access_token = self.vault.encrypt(&tokens.access_token);
        // A provider that rotates gives a new refresh token; one that does not keeps the old.
        if let Some(r) = &tokens.refresh_token {
            updated.refresh_token = Some(self.vault.encrypt(r));
        }
        updated.token_expiry = tokens
            .expires_in
            .map(|s| t + Duration::from_secs(s.max(0) as u64));
        if let Some(s) = tokens.scopes {
            updated.scopes = s;
        }
        updated.refresh_lease_owner = None;
        updated.refresh_lease_until = None;
        // The old refresh token may be spent now: the answer goes to the local journal
        // first (synced), then to the store; the journal entry goes once the store has it.
        let journaled = match &self.journal {
            Some(j) => match j.record(&journal::JournalEntry {
                link: updated.clone(),
                spent_refresh_token: leased.refresh_token.clone(),
            }) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(link = %leased.id, error = %e, "cannot write the refresh journal; saving to the store only");
                    false
                }
            },
            None => false,
        };
        // Persist the new tokens before anyone uses them; retry a failing store (fewer
        // times when the journal holds them: it writes them once the store is back).
        let max_tries = if journaled { 2 } else { 5 };
        let mut tries = 0;
        loop {
            tries += 1;
            match self
                .store
                .update_link_cas(updated.clone(), leased.version)
                .await
            {
                Ok(true) => {
                    if let Some(j) = &self.journal {
                        j.remove(&leased.id);
                    }
                    break;
                }
                Ok(false) => {
                    if journaled {
                        // Whoever changed it, the journal decides with the store's
                        // current refresh token whether these tokens still belong there.
                        let entry = journal::JournalEntry {
                            link: updated.clone(),
                            spent_refresh_token: leased.refresh_token.clone(),
                        };
                        self.flush_journal_entry(entry).await?;
                        return self.link(&leased.company_id, &leased.id).await;
                    }
                    return Err(OAuthError::Provider(
                        "the link changed while it was being refreshed (lease lost)".into(),
                    ));
                }
                Err(e) if tries < max_tries => {
                    tracing::error!(link = %leased.id, error = %e, "cannot save refreshed tokens; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        updated.version = leased.version + 1;
        Ok(updated)
    }

    /// Delete a link and revoke it at the provider (best effort).
    pub async fn unlink(
        &self,
        company_id: &str,
        service: &str,
        link_id: &str,
    ) -> Result<LinkRecord, OAuthError> {
        let link = self.link(company_id, link_id).await?;
        if link.integration_type != service {
            return Err(OAuthError::NotFound);
        }
        let link = self
            .store
            .delete_link(company_id, link_id)
            .await?
            .ok_or(OAuthError::NotFound)?;
        if let Ok(p) = self.provider(service)
            && let Err(e) = self.revoke(p, &link).await
        {
            tracing::warn!(link = %link.id, error = %e, "revocation at the provider failed (the link is deleted anyway)");
        }
        Ok(link)
    }

    async fn revoke(&self, p: &Provider, link: &LinkRecord) -> Result<(), OAuthError> {
        let style = p.defaults.revocation;
        let Some(url) = p.revoke_url.as_ref().filter(|_| style != Revocation::None) else {
            return Ok(());
        };
        let access = self
            .vault
            .decrypt(&link.access_token)
            .map_err(|e| OAuthError::Vault(e.to_string()))?;
        let req = if style == Revocation::SlackAuthRevoke {
            // Slack: auth.revoke with the token itself as the credential.
            self.http.post(url).bearer_auth(access.expose())
        } else {
            // RFC 7009: revoke the refresh token (which revokes its access tokens) when there is one.
            let (token, hint) = match &link.refresh_token {
                Some(e) => (
                    self.vault
                        .decrypt(e)
                        .map_err(|e| OAuthError::Vault(e.to_string()))?,
                    "refresh_token",
                ),
                None => (access, "access_token"),
            };
            let mut form = vec![
                ("token", token.expose().to_string()),
                ("token_type_hint", hint.to_string()),
                ("client_id", p.client_id.clone()),
            ];
            if let Some(s) = &p.client_secret {
                form.push(("client_secret", s.expose().to_string()));
            }
            self.http.post(url).form(&form)
        };
        let resp = req
            .send()
            .await
            .map_err(|e| OAuthError::Provider(e.without_url().to_string()))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(OAuthError::Provider(format!(
                "revocation answered {}",
                resp.status()
            )))
        }
    }

    /// flow8's health check: call the provider's identity endpoint with the link.
    pub async fn test(&self, company_id: &str, link_id: &str) -> Result<Value, OAuthError> {
        let (token, link) = match self.access_token(company_id, link_id).await {
            Ok(x) => x,
            Err(OAuthError::TokenRevoked(service)) => {
                return Ok(
                    json!({"status": "error", "service": service, "latency_ms": 0, "token_valid": false,
                    "scopes_granted": [], "user": null, "error": "token_revoked"}),
                );
            }
            Err(e) => return Err(e),
        };
        let p = self.provider(&link.integration_type)?;
        let start = std::time::Instant::now();
        let result = self.identity(p, token.expose()).await;
        let latency = start.elapsed().as_millis() as u64;
        let user = match &result {
            Ok(v) => p
                .defaults
                .identity
                .user_id(v)
                .unwrap_or_else(|| link.provider_user_id.clone()),
            Err(_) => link.provider_user_id.clone(),
        };
        Ok(json!({
            "status": if result.is_ok() { "ok" } else { "error" },
            "service": link.integration_type,
            "latency_ms": latency,
            "token_valid": result.is_ok(),
            "scopes_granted": link.scopes,
            "user": user,
        }))
    }

    /// Renew links nearing expiry in the background, every `every`, so steps rarely wait
    /// for a refresh. Uses the same path as a step (single flight, lease), so it never
    /// races a step or another host.
    pub fn spawn_background_refresher(
        self: &Arc<Self>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let window =
                    time::Duration::try_from(this.refresh_window).unwrap_or(time::Duration::HOUR);
                let due = match this
                    .store
                    .links_due_for_refresh(
                        now() + window,
                        &this.auto_refresh_services(),
                        BACKGROUND_REFRESH_BATCH,
                    )
                    .await
                {
                    Ok(links) => links,
                    Err(e) => {
                        tracing::warn!(error = %e, "background refresher cannot list links");
                        continue;
                    }
                };
                for link in due {
                    if let Err(e) = this.access_token(&link.company_id, &link.id).await {
                        tracing::warn!(link = %link.id, error = %e, "background refresh failed");
                    }
                }
            }
        })
    }

    /// The company's links expiring within `within` (flow8's 7-day query), soonest first.
    pub async fn expiring(
        &self,
        company_id: &str,
        within: Duration,
    ) -> Result<Vec<LinkRecord>, OAuthError> {
        let t = now();
        let limit: OffsetDateTime = t + within;
        let mut links: Vec<LinkRecord> = self
            .store
            .list_links(company_id, None)
            .await?
            .into_iter()
            .filter(|l| l.token_expiry.is_some_and(|e| e > t && e < limit))
            .collect();
        links.sort_by_key(|l| l.token_expiry);
        Ok(links)
    }
}

/// Normalise a token endpoint's answer.
fn parse_tokens(dialect: TokenDialect, status: u16, body: &Value) -> Result<Tokens, OAuthError> {
    let error = |body: &Value| {
        let code = body["error"]
            .as_str()
            .unwrap_or("unknown_error")
            .to_string();
        let detail = body["error_description"].as_str().unwrap_or("").to_string();
        match code.as_str() {
            // Slack's names for a bad code or refresh token.
            "invalid_grant"
            | "invalid_code"
            | "code_already_used"
            | "invalid_refresh_token"
            | "token_revoked" => {
                OAuthError::InvalidGrant(format!("{code} {detail}").trim().to_string())
            }
            "access_denied" => OAuthError::AccessDenied(detail),
            _ => OAuthError::Provider(format!("{code} {detail}").trim().to_string()),
        }
    };
    let scopes = |v: &Value, sep: char| {
        v.as_str().map(|s| {
            s.split(sep)
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
    };
    match dialect {
        TokenDialect::Standard => {
            if !(200..300).contains(&status) || body.get("error").is_some() {
                return Err(error(body));
            }
            let access_token = body["access_token"]
                .as_str()
                .ok_or_else(|| OAuthError::Provider("no access_token in the answer".into()))?
                .to_string();
            Ok(Tokens {
                access_token,
                refresh_token: body["refresh_token"].as_str().map(str::to_string),
                expires_in: body["expires_in"].as_i64(),
                scopes: scopes(&body["scope"], ' '),
                provider_user_id: None,
                metadata: json!({}),
            })
        }
        TokenDialect::Slack => {
            // Slack answers errors with HTTP 200 and ok:false.
            if body["ok"] != Value::Bool(true) {
                return Err(error(body));
            }
            // A bot token at the top level; a user token nested under authed_user.
            let (token_holder, user_id) = if body["access_token"].is_string() {
                (body, body["authed_user"]["id"].as_str())
            } else {
                (&body["authed_user"], body["authed_user"]["id"].as_str())
            };
            let access_token = token_holder["access_token"]
                .as_str()
                .ok_or_else(|| {
                    OAuthError::Provider("Slack answered without an access_token".into())
                })?
                .to_string();
            Ok(Tokens {
                access_token,
                // Only when the app enabled token rotation.
                refresh_token: token_holder["refresh_token"].as_str().map(str::to_string),
                expires_in: token_holder["expires_in"].as_i64(),
                scopes: scopes(&token_holder["scope"], ','),
                provider_user_id: user_id.map(str::to_string),
                metadata: json!({"team": body["team"], "bot_user_id": body["bot_user_id"], "app_id": body["app_id"]}),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> (Arc<AnyStore>, OAuthService) {
        let store = Arc::new(AnyStore::from(
            crate::store::embedded::EmbeddedStore::open_in_memory().unwrap(),
        ));
        let vault = Arc::new(Vault::new(crate::vault::MasterKey::generate()));
        let mut config = BTreeMap::new();
        config.insert(
            "google".to_string(),
            serde_json::from_value(json!({
                "client_id": "c", "client_secret": "s",
                "redirect_uri": "http://127.0.0.1:1/auth/callback", "scopes": ["drive"],
                "authorize_url": "http://127.0.0.1:9/authorize",
                "token_url": "http://127.0.0.1:9/token",
            }))
            .unwrap(),
        );
        let providers =
            providers::configure(&crate::catalogue::Catalogue::builtin(), &config).unwrap();
        (store.clone(), OAuthService::new(store, vault, providers))
    }

    fn params(state: &str) -> BTreeMap<String, String> {
        [("state", state), ("code", "c")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn states_are_single_use_expire_and_are_not_connect_sessions() {
        let (store, oauth) = service();
        // Expired: refused (and gone).
        store
            .insert_oauth_state(OAuthStateRecord {
                state_hash: sha256_hex("old"),
                company_id: "A".into(),
                user_id: "u".into(),
                service: "google".into(),
                pkce_verifier: None,
                expires_at: now() - Duration::from_secs(1),
            })
            .await
            .unwrap();
        assert!(matches!(
            oauth.callback(&params("old")).await,
            Err(OAuthError::InvalidState)
        ));
        // Never issued.
        assert!(matches!(
            oauth.callback(&params("forged")).await,
            Err(OAuthError::InvalidState)
        ));
        // A connect-page token is no authorization state, and the other way round.
        let (session, _) = oauth.create_connect_session("A", "u").await.unwrap();
        assert!(matches!(
            oauth.callback(&params(&session)).await,
            Err(OAuthError::InvalidState)
        ));
        let url = oauth.authorize_url("A", "u", "google").await.unwrap();
        let state = url::Url::parse(&url)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .into_owned();
        assert!(matches!(
            oauth.open_connect_session(&state).await,
            Err(OAuthError::InvalidState)
        ));
        // Each is single use: that state was used up by the attempt.
        assert!(matches!(
            oauth.callback(&params(&state)).await,
            Err(OAuthError::InvalidState)
        ));
        let (session, _) = oauth.create_connect_session("A", "u").await.unwrap();
        assert_eq!(
            oauth.open_connect_session(&session).await.unwrap(),
            ("A".to_string(), "u".to_string())
        );
        assert!(matches!(
            oauth.open_connect_session(&session).await,
            Err(OAuthError::InvalidState)
        ));
    }

    /// A refresh the provider refuses (`invalid_grant`), at a token endpoint that first
    /// lets `unlink_meanwhile` delete the link, as a user unlinking while the refresh is
    /// in flight would: the `integration_needs_reconnect` entries it leaves.
    async fn audits_of_a_refused_refresh(unlink_meanwhile: bool) -> Vec<crate::store::AuditRecord> {
        let store = Arc::new(AnyStore::from(
            crate::store::embedded::EmbeddedStore::open_in_memory().unwrap(),
        ));
        let vault = Arc::new(Vault::new(crate::vault::MasterKey::generate()));
        let t = now();
        let link = LinkRecord {
            id: new_object_id(),
            user_id: "u".into(),
            company_id: "A".into(),
            integration_type: "google".into(),
            access_token: vault.encrypt("expiring"),
            refresh_token: Some(vault.encrypt("revoked-at-the-provider")),
            token_expiry: Some(t + Duration::from_secs(60)),
            scopes: vec!["drive".into()],
            provider_user_id: "p".into(),
            provider_user_email: String::new(),
            provider_metadata: Value::Null,
            status: "active".into(),
            refresh_lease_owner: None,
            refresh_lease_until: None,
            version: 0,
            created_at: t,
            updated_at: t,
        };
        store.insert_link(link.clone()).await.unwrap();
        let (meanwhile, id) = (store.clone(), link.id.clone());
        let token = axum::routing::post(move || async move {
            if unlink_meanwhile {
                meanwhile.delete_link("A", &id).await.unwrap();
            }
            (
                axum::http::StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": "invalid_grant"})),
            )
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/token", token);
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut config = BTreeMap::new();
        config.insert(
            "google".to_string(),
            serde_json::from_value(json!({
                "client_id": "c", "client_secret": "s",
                "redirect_uri": "http://127.0.0.1:1/auth/callback", "scopes": ["drive"],
                "token_url": format!("http://{addr}/token"),
            }))
            .unwrap(),
        );
        let oauth = OAuthService::new(
            store.clone(),
            vault,
            providers::configure(&crate::catalogue::Catalogue::builtin(), &config).unwrap(),
        );
        assert!(matches!(
            oauth.access_token("A", &link.id).await,
            Err(OAuthError::TokenRevoked(_))
        ));
        let query = crate::store::AuditQuery {
            action_type: Some("integration_needs_reconnect".into()),
            limit: 10,
            ..Default::default()
        };
        store.list_audit("A", &query).await.unwrap()
    }

    #[tokio::test]
    async fn a_refused_refresh_is_audited_only_when_this_host_marked_the_link() {
        let marked = audits_of_a_refused_refresh(false).await;
        assert_eq!(marked.len(), 1, "{marked:?}");
        assert_eq!(marked[0].resource_type, "integration");
        assert_eq!(marked[0].after_state["status"], "needs_reconnect");
        // Unlinked while the refresh was in flight: nothing was marked, nothing is audited.
        let unlinked = audits_of_a_refused_refresh(true).await;
        assert!(unlinked.is_empty(), "{unlinked:?}");
    }

    #[test]
    fn slack_quirks_are_normalised() {
        let ok = json!({"ok": true, "access_token": "xoxb-1", "scope": "chat:write,files:write",
            "authed_user": {"id": "U123"}, "team": {"id": "T1"}});
        let t = parse_tokens(TokenDialect::Slack, 200, &ok).unwrap();
        assert_eq!(t.access_token, "xoxb-1");
        assert_eq!(t.scopes.unwrap(), vec!["chat:write", "files:write"]);
        assert_eq!(t.provider_user_id.as_deref(), Some("U123"));
        assert!(t.refresh_token.is_none());
        let user_only = json!({"ok": true, "authed_user": {"id": "U9", "access_token": "xoxp-9", "refresh_token": "xoxe-1", "expires_in": 43200}});
        let t = parse_tokens(TokenDialect::Slack, 200, &user_only).unwrap();
        assert_eq!(
            (
                t.access_token.as_str(),
                t.refresh_token.as_deref(),
                t.expires_in
            ),
            ("xoxp-9", Some("xoxe-1"), Some(43200))
        );
        let err = json!({"ok": false, "error": "invalid_code"});
        assert!(matches!(
            parse_tokens(TokenDialect::Slack, 200, &err),
            Err(OAuthError::InvalidGrant(_))
        ));
        let std_err = json!({"error": "invalid_grant"});
        assert!(matches!(
            parse_tokens(TokenDialect::Standard, 400, &std_err),
            Err(OAuthError::InvalidGrant(_))
        ));
    }
}
