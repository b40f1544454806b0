//! The credentials granted to the step, by the binding names the manifest declares.
//! Prefer [`crate::http::Request::credential`]: the host attaches the secret and it
//! never enters the module. Reading a secret here restricts the rest of the step to
//! that credential's own hosts.

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

/// The binding's decrypted secret fields.
pub fn get(binding: &str) -> Result<Secrets, Error> {
    wit::get(binding)
        .map(|fields| Secrets { fields })
        .map_err(Error::from_wit)
}

/// Decrypted secret fields. `Debug` shows the field names only.
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

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.fields.iter().map(|(k, _)| (k, "***")))
            .finish()
    }
}
