//! API tokens and who is calling. Every call carries `Authorization: Bearer <token>`;
//! tokens are created by the operator's CLI, shown once, stored as SHA-256 hashes, and
//! revocable. A token fixes the company every read and write is scoped to.

use super::AppState;
use super::error::ApiError;
use crate::error::ErrorName;
use crate::store::AnyStore;
use crate::store::{Store, TokenRecord, new_object_id, now};
use axum::extract::FromRequestParts;

use axum::http::request::Parts;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Token records by SHA-256, as a call found them: a later call with the same token
/// within `record_cache_seconds` is answered without reading the store. A token created
/// anywhere works at once (a miss is not kept); one revoked through this host is refused
/// at once, one revoked with the CLI or through another host within the bound.
pub type TokenCache = crate::store::read_cache::ReadCache<String, TokenRecord>;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Company scope.
    pub company_id: String,
    /// The user.
    pub user_id: String,
    /// Admin routes allowed.
    pub admin: bool,
}

impl Caller {
    /// Refuse non-admins.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorName::AdminRequired,
                "this route needs an admin token",
            ))
        }
    }
}

/// SHA-256 of a token, hex: what the store keeps.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Create a token; returns the plaintext (to show once) and the stored record.
pub async fn create_token(
    store: &AnyStore,
    company_id: &str,
    user_id: &str,
    admin: bool,
    name: &str,
) -> Result<(String, TokenRecord), crate::store::StoreError> {
    let raw: [u8; 32] = rand::random();
    let token = format!(
        "f8_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let record = TokenRecord {
        id: new_object_id(),
        company_id: company_id.into(),
        user_id: user_id.into(),
        admin,
        name: name.into(),
        token_hash: hash_token(&token),
        created_at: now(),
        revoked_at: None,
    };
    store.insert_token(record.clone()).await?;
    Ok((token, record))
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorName::Unauthorized, message)
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Caller, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing `Authorization: Bearer <token>`"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("the Authorization header is not `Bearer <token>`"))?;
        let hash = hash_token(token);
        let record = state
            .tokens
            .get_or_read(
                &state.store,
                hash.clone(),
                state.store.find_token_by_hash(&hash),
            )
            .await?
            .ok_or_else(|| unauthorized("unknown token"))?;
        if record.revoked_at.is_some() {
            return Err(unauthorized("this token was revoked"));
        }
        Ok(Caller {
            company_id: record.company_id.clone(),
            user_id: record.user_id.clone(),
            admin: record.admin,
        })
    }
}
