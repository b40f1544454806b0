//! Starting a connection: authorization requests (the provider URL with a single-use,
//! expiring, user-bound `state` and PKCE, both made by the `oauth2` crate) and connect
//! sessions (a single-use link to the host's connect page). Each is stored hashed; the
//! callback (`callback.rs`) or the connect page uses it up.
//!
//! An authorization is also bound to the browser that started it. Whoever starts it
//! (the connect page, the API's caller) gets a random browser binding to put in that
//! browser's [`BINDING_COOKIE`]; the state is stored under the hash of state and
//! binding together, so the callback finds it only with the same cookie. A forwarded
//! authorization link, opened in someone else's browser, then connects nobody's
//! account to the company that made it.

use super::{OAuthError, OAuthService};
use crate::store::{OAuthStateRecord, Store, now, sealing};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// How long a `state` is good for (flow8: codes expire after 10 minutes).
pub const STATE_TTL: Duration = Duration::from_secs(600);

/// The `service` marking a pending record as a connect session, not an authorization
/// (no provider has this name: it is not a valid service name).
pub(super) const CONNECT_SESSION: &str = "flow8:connect-session";

/// How a `state` or session token is stored (the value itself only travels in URLs).
pub(super) fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The cookie that carries a browser binding to `/auth/callback`.
pub const BINDING_COOKIE: &str = "flow8_oauth_binding";

/// A new browser binding: 256 random bits, URL-safe (a cookie value as it is).
pub fn new_browser_binding() -> String {
    B64URL.encode(rand::random::<[u8; 32]>())
}

/// What an authorization state is stored under: the state and the browser binding
/// together, so one without the other finds nothing.
pub(super) fn state_key(state: &str, binding: &str) -> String {
    sha256_hex(&format!("{state}\n{binding}"))
}

impl OAuthService {
    /// A short-lived, single-use connect session for a user (Nango-style): the token
    /// opens the host's connect page once, so a browser never holds an API token.
    /// Stored hashed, like an authorization state, and expiring with the same TTL.
    pub async fn create_connect_session(
        &self,
        company_id: &str,
        user_id: &str,
    ) -> Result<(String, time::OffsetDateTime), OAuthError> {
        let token = B64URL.encode(rand::random::<[u8; 32]>());
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

    /// Start a connection: the provider URL to send the user's browser to. Its `state`
    /// and PKCE verifier wait in the store (hashed with `binding`, sealed) for the
    /// callback, which must bring the same binding (see [`new_browser_binding`]).
    pub async fn authorize_url(
        &self,
        company_id: &str,
        user_id: &str,
        service: &str,
        binding: &str,
    ) -> Result<String, OAuthError> {
        let p = self.provider(service)?;
        let authorization = self.client(p).authorization()?;
        let state_hash = state_key(&authorization.state, binding);
        // Sealed for this pending authorization alone.
        let pkce_verifier = authorization.pkce_verifier.as_ref().map(|v| {
            self.vault
                .encrypt(v.expose(), &sealing::oauth_state(company_id, &state_hash))
        });
        self.store
            .insert_oauth_state(OAuthStateRecord {
                state_hash,
                company_id: company_id.into(),
                user_id: user_id.into(),
                service: service.into(),
                pkce_verifier,
                expires_at: now() + STATE_TTL,
            })
            .await?;
        Ok(authorization.url)
    }
}
