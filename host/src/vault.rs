//! Encryption of credentials at rest with NaCl secretbox (XSalsa20-Poly1305, as
//! `crypto_secretbox`), stored in the flow8 shape `{"encrypted": true, "nonce": ...,
//! "ciphertext": ...}` plus the id of the master key that sealed it, so keys can be
//! rotated. Secret values and keys never print: their `Debug` says `***`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::{Key, Nonce, XSalsa20Poly1305};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Why a key could not be loaded or a secret not be opened. Never carries key or
/// plaintext bytes.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The envelope names a key this host does not have.
    #[error(
        "this secret was encrypted with master key {key_id}, which this host does not have: is FLOW8_MASTER_KEY the key this data was written with?"
    )]
    UnknownKey {
        /// The envelope's key id.
        key_id: String,
    },
    /// Authentication failed: wrong key, or the ciphertext was altered.
    #[error("a secret failed authentication: it was altered, or sealed with a different key")]
    Tampered,
    /// The envelope is not the expected shape.
    #[error("encrypted value is malformed: {0}")]
    Malformed(String),
    /// The key material is not a 32-byte key.
    #[error("master key is not valid: {0}")]
    BadKey(String),
    /// The key file could not be read or written.
    #[error("master key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The host was started with another key than the one the store was written with.
    #[error(
        "the store was written with master key {expected_key_id}, but this host has key {got_key_id}: start it with the original FLOW8_MASTER_KEY (or key file)"
    )]
    WrongMasterKey {
        /// Key id recorded in the store.
        expected_key_id: String,
        /// Key id of the key in hand.
        got_key_id: String,
    },
}

/// A decrypted secret. Never printed; zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wrap a value.
    pub fn new(value: String) -> Secret {
        Secret(Zeroizing::new(value))
    }

    /// The value, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A 32-byte master key and its id.
#[derive(Clone)]
pub struct MasterKey {
    bytes: Zeroizing<[u8; 32]>,
    id: String,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({}, ***)", self.id)
    }
}

impl MasterKey {
    fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        let mut h = Sha256::new();
        h.update(b"flow8-master-key-id:");
        h.update(bytes);
        let id = hex::encode(&h.finalize()[..8]);
        MasterKey {
            bytes: Zeroizing::new(bytes),
            id,
        }
    }

    /// A fresh random key.
    pub fn generate() -> MasterKey {
        MasterKey::from_bytes(rand::random())
    }

    /// Parse 64 hex characters or standard base64 of 32 bytes.
    pub fn parse(text: &str) -> Result<MasterKey, VaultError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Zeroizing::new(hex::decode(text).map_err(|e| VaultError::BadKey(e.to_string()))?)
        } else {
            Zeroizing::new(B64.decode(text).map_err(|_| {
                VaultError::BadKey("expected 64 hex characters or base64 of 32 bytes".into())
            })?)
        };
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| VaultError::BadKey(format!("it is {} bytes; a key is 32", bytes.len())))?;
        Ok(MasterKey::from_bytes(arr))
    }

    /// The key from `FLOW8_MASTER_KEY`, else from `<data_dir>/master.key`, which is
    /// created (mode 0600) on first use.
    pub fn load(data_dir: &Path) -> Result<MasterKey, VaultError> {
        if let Ok(v) = std::env::var("FLOW8_MASTER_KEY")
            && !v.trim().is_empty()
        {
            return MasterKey::parse(&v);
        }
        let path = data_dir.join("master.key");
        let io = |source| VaultError::KeyFile {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode();
                    if mode & 0o077 != 0 {
                        return Err(VaultError::BadKey(format!(
                            "{} is readable by others (mode {:o}); chmod 600 it",
                            path.display(),
                            mode & 0o777
                        )));
                    }
                }
                MasterKey::parse(&text)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = MasterKey::generate();
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                match opts.open(&path) {
                    Ok(mut f) => {
                        use std::io::Write;
                        let text = Zeroizing::new(hex::encode(*key.bytes));
                        f.write_all(text.as_bytes()).map_err(io)?;
                        f.sync_all().map_err(io)?;
                        tracing::info!(path = %path.display(), key_id = %key.id, "created a new master key");
                        Ok(key)
                    }
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        MasterKey::parse(&std::fs::read_to_string(&path).map_err(io)?)
                    }
                    Err(e) => Err(io(e)),
                }
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The key id (16 hex characters, derived from the key; not secret).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A sealed secret as stored: the flow8 shape plus the key id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Always `true`.
    pub encrypted: bool,
    /// 24-byte nonce, base64.
    pub nonce: String,
    /// Ciphertext with its Poly1305 tag, base64.
    pub ciphertext: String,
    /// Id of the master key that sealed it.
    pub key_id: String,
}

impl Envelope {
    /// Whether a JSON value is an envelope (so config fields can be told apart).
    pub fn from_json(v: &serde_json::Value) -> Option<Envelope> {
        if v.get("encrypted") == Some(&serde_json::Value::Bool(true)) {
            serde_json::from_value(v.clone()).ok()
        } else {
            None
        }
    }
}

const CHECK_PLAINTEXT: &str = "flow8-master-key-check";

/// Seals and opens secrets. Holds the current key and, during rotation, older ones.
#[derive(Clone)]
pub struct Vault {
    current: MasterKey,
    old: Vec<MasterKey>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("key_id", &self.current.id)
            .field(
                "old_keys",
                &self.old.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Vault {
    /// A vault sealing with `current`.
    pub fn new(current: MasterKey) -> Vault {
        Vault {
            current,
            old: Vec::new(),
        }
    }

    /// Also open secrets sealed with an older key.
    pub fn with_old_key(mut self, key: MasterKey) -> Vault {
        self.old.push(key);
        self
    }

    /// The current key's id.
    pub fn key_id(&self) -> &str {
        &self.current.id
    }

    fn cipher(key: &MasterKey) -> XSalsa20Poly1305 {
        XSalsa20Poly1305::new(Key::from_slice(&key.bytes[..]))
    }

    /// Seal a plaintext with a fresh random nonce.
    pub fn encrypt(&self, plaintext: &str) -> Envelope {
        let nonce: [u8; 24] = rand::random();
        let ciphertext = Vault::cipher(&self.current)
            .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
            .expect("XSalsa20-Poly1305 encryption of an in-memory buffer cannot fail");
        Envelope {
            encrypted: true,
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ciphertext),
            key_id: self.current.id.clone(),
        }
    }

    /// Open an envelope.
    pub fn decrypt(&self, envelope: &Envelope) -> Result<Secret, VaultError> {
        if !envelope.encrypted {
            return Err(VaultError::Malformed("`encrypted` is false".into()));
        }
        let key = std::iter::once(&self.current)
            .chain(self.old.iter())
            .find(|k| k.id == envelope.key_id)
            .ok_or_else(|| VaultError::UnknownKey {
                key_id: envelope.key_id.clone(),
            })?;
        let nonce = B64
            .decode(&envelope.nonce)
            .map_err(|_| VaultError::Malformed("nonce is not base64".into()))?;
        if nonce.len() != 24 {
            return Err(VaultError::Malformed(format!(
                "nonce is {} bytes; secretbox uses 24",
                nonce.len()
            )));
        }
        let ciphertext = B64
            .decode(&envelope.ciphertext)
            .map_err(|_| VaultError::Malformed("ciphertext is not base64".into()))?;
        let plain = Zeroizing::new(
            Vault::cipher(key)
                .decrypt(Nonce::from_slice(&nonce), ciphertext.as_slice())
                .map_err(|_| VaultError::Tampered)?,
        );
        let text = String::from_utf8(plain.to_vec())
            .map_err(|_| VaultError::Malformed("plaintext is not UTF-8".into()))?;
        Ok(Secret::new(text))
    }

    /// A value the store keeps so a host started with the wrong key fails at start.
    pub fn check_value(&self) -> String {
        serde_json::to_string(&self.encrypt(CHECK_PLAINTEXT)).expect("envelopes serialise")
    }

    /// Verify a stored check value against this vault's keys.
    pub fn verify_check_value(&self, stored: &str) -> Result<(), VaultError> {
        let envelope: Envelope = serde_json::from_str(stored)
            .map_err(|e| VaultError::Malformed(format!("key check value: {e}")))?;
        match self.decrypt(&envelope) {
            Ok(s) if s.expose() == CHECK_PLAINTEXT => Ok(()),
            Ok(_) | Err(VaultError::Tampered) | Err(VaultError::UnknownKey { .. }) => {
                Err(VaultError::WrongMasterKey {
                    expected_key_id: envelope.key_id,
                    got_key_id: self.current.id.clone(),
                })
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_fresh_nonces() {
        let v = Vault::new(MasterKey::generate());
        let a = v.encrypt("xoxb-123");
        let b = v.encrypt("xoxb-123");
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_eq!(v.decrypt(&a).unwrap().expose(), "xoxb-123");
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["encrypted"], true);
        assert!(!json.to_string().contains("xoxb"));
    }

    #[test]
    fn tampering_and_wrong_keys_are_named() {
        let v = Vault::new(MasterKey::generate());
        let mut e = v.encrypt("secret");
        let mut raw = B64.decode(&e.ciphertext).unwrap();
        raw[0] ^= 1;
        e.ciphertext = B64.encode(raw);
        assert!(matches!(v.decrypt(&e), Err(VaultError::Tampered)));

        let other = Vault::new(MasterKey::generate());
        let sealed = v.encrypt("secret");
        assert!(matches!(
            other.decrypt(&sealed),
            Err(VaultError::UnknownKey { .. })
        ));
        assert!(matches!(
            other.verify_check_value(&v.check_value()),
            Err(VaultError::WrongMasterKey { .. })
        ));
        v.verify_check_value(&v.check_value()).unwrap();

        // Rotation: the old key still opens old envelopes.
        let key = MasterKey::generate();
        let old = Vault::new(key.clone());
        let sealed = old.encrypt("old");
        let rotated = Vault::new(MasterKey::generate()).with_old_key(key);
        assert_eq!(rotated.decrypt(&sealed).unwrap().expose(), "old");
    }

    #[test]
    fn nothing_secret_prints() {
        let k = MasterKey::parse(&"ab".repeat(32)).unwrap();
        assert!(!format!("{k:?}").contains("abab"));
        let s = Secret::new("hunter2-secret".into());
        assert_eq!(format!("{s:?} {s}"), "Secret(***) ***");
        assert!(MasterKey::parse("short").is_err());
        let b64 = B64.encode([7u8; 32]);
        assert_eq!(
            MasterKey::parse(&b64).unwrap().id(),
            MasterKey::from_bytes([7u8; 32]).id()
        );
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        // The environment variable would win; this test runs only when it is unset.
        if std::env::var_os("FLOW8_MASTER_KEY").is_some() {
            return;
        }
        let a = MasterKey::load(dir.path()).unwrap();
        let b = MasterKey::load(dir.path()).unwrap();
        assert_eq!(a.id(), b.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("master.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(
                dir.path().join("master.key"),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
            assert!(matches!(
                MasterKey::load(dir.path()),
                Err(VaultError::BadKey(_))
            ));
        }
    }
}
