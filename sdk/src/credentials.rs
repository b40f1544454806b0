//! The credentials granted to the step, by the binding names the manifest declares.
//! Prefer [`crate::http::Request::credential`]: the host attaches the secret and it
//! never enters the module. Reading a secret here restricts the rest of the step to
//! that credential's own hosts, and [`get`] needs the manifest to declare it
//! (`Manifest::declare_credentials_get()`); undeclared, the host answers
//! `access_denied`, and an operator may refuse installed modules that declare it.
//!
//! ```no_run
//! use flow8_sdk::credentials;
//!
//! # fn run() -> Result<(), flow8_sdk::Error> {
//! if credentials::is_bound("request") {
//!     let config = credentials::config("request")?; // e.g. {"base_url": ..., "timeout_seconds": 10}
//!     let secrets = credentials::get("request")?;
//!     let _key = secrets.field("api_key");
//!     println!("{secrets:?}"); // {"api_key": "***"}
//! }
//! # Ok(()) }
//! ```

use crate::__private::bindings::flow8::integration::credentials as wit;
use crate::Error;
use std::fmt;

/// Whether the step bound this binding (optional bindings may be unbound).
pub fn is_bound(binding: &str) -> bool {
    wit::is_bound(binding)
}

/// The binding's non-secret configuration (a component's config without its secrets,
/// e.g. `base_url`, `timeout_seconds`, `region`).
pub fn config(binding: &str) -> Result<serde_json::Value, Error> {
    let text = wit::config(binding).map_err(Error::from_wit)?;
    serde_json::from_str(&text).map_err(|e| Error::internal(format!("credential config: {e}")))
}

/// Ask the host to refresh an OAuth binding's token after the provider refused it
/// (HTTP 401). Allowed once per binding per step; later requests that attach the
/// binding carry the new token. A refused refresh is `token_revoked`.
pub fn refresh(binding: &str) -> Result<(), Error> {
    wit::refresh(binding).map_err(Error::from_wit)
}

/// The binding's decrypted secret fields.
pub fn get(binding: &str) -> Result<Secrets, Error> {
    wit::get(binding)
        .map(|fields| Secrets { fields })
        .map_err(Error::from_wit)
}

/// Decrypted secret fields. `Debug` shows the field names only, and the values are
/// overwritten when it is dropped: hold it no longer than the call that needs it.
pub struct Secrets {
    fields: Vec<(String, String)>,
}

impl Secrets {
    /// A field's value, e.g. `access_token` or `api_key`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The field names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(k, _)| k.as_str())
    }
}

impl Drop for Secrets {
    /// Overwrite the values before their memory goes back to the allocator, so a later
    /// allocation (or a memory dump) does not find them.
    fn drop(&mut self) {
        for (_, value) in &mut self.fields {
            let mut bytes = std::mem::take(value).into_bytes();
            for b in bytes.iter_mut() {
                // SAFETY: `b` is a valid, exclusive reference into `bytes`. A volatile
                // write keeps the compiler from removing stores to memory about to be freed.
                unsafe { std::ptr::write_volatile(b, 0) };
            }
            drop(std::hint::black_box(bytes));
        }
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.fields.iter().map(|(k, _)| (k, "***")))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_values() {
        let s = Secrets {
            fields: vec![("api_key".into(), "sk-live-123".into())],
        };
        assert_eq!(s.field("api_key"), Some("sk-live-123"));
        assert_eq!(s.field("other"), None);
        let shown = format!("{s:?}");
        assert!(!shown.contains("sk-live"), "{shown}");
        assert!(shown.contains("api_key"), "{shown}");
    }
}
