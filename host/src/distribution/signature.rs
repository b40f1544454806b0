//! Module signatures: a publisher signs a module's SHA-256 digest with an ed25519 key
//! (`flow8-host modules keygen|sign`), the signature travels beside the module (a
//! `.wasm.sig` file, the store's module record, an OCI tag), and an operator lists the
//! public keys it trusts, host-wide or per company, and may require a trusted signature
//! on every installed module. Install and load both check (`SignaturePolicy::check`).
//!
//! What is signed is not the bytes but a domain-separated statement about them,
//! `flow8-module-signature-v1\0sha256:<hex>`, so a flow8 signature can never be replayed
//! as a signature over anything else made with the same key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// What a signature's bytes are over, before the digest.
const CONTEXT: &[u8] = b"flow8-module-signature-v1\0";
/// How a public key is written: `ed25519:<base64 of 32 bytes>`.
const KEY_PREFIX: &str = "ed25519:";
/// How a private key file starts (the rest is the base64 of the 32-byte seed).
const PRIVATE_PREFIX: &str = "flow8-ed25519-private-key:";
/// The largest signature document accepted (a real one is about 250 bytes).
pub const MAX_SIGNATURE_BYTES: usize = 4096;

/// Why a signature or key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Signatures are required and the module has none.
    #[error("this host requires modules to be signed by a trusted key; the module is unsigned")]
    Unsigned,
    /// The signature document does not parse.
    #[error("the signature is not a flow8 module signature: {0}")]
    Malformed(String),
    /// The signature is for other bytes, or does not verify under its key.
    #[error(
        "the signature does not match the module's bytes (altered, or signed for another module)"
    )]
    Mismatch,
    /// The signature verifies, but under a key the operator does not trust.
    #[error("the module is signed by key {0}, which this host does not trust")]
    Untrusted(String),
    /// A key (file, or a trusted key in the config) does not parse.
    #[error("{0}")]
    BadKey(String),
}

/// A public key, parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parse `ed25519:<base64>`.
    pub fn parse(text: &str) -> Result<PublicKey, SignatureError> {
        let b64 = text.trim().strip_prefix(KEY_PREFIX).ok_or_else(|| {
            SignatureError::BadKey(format!("a public key is written `{KEY_PREFIX}<base64>`"))
        })?;
        let bytes = B64
            .decode(b64)
            .map_err(|_| SignatureError::BadKey("the public key is not base64".into()))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SignatureError::BadKey("an ed25519 public key is 32 bytes".into()))?;
        VerifyingKey::from_bytes(&arr)
            .map(PublicKey)
            .map_err(|_| SignatureError::BadKey("not a valid ed25519 public key".into()))
    }

    /// `ed25519:<base64>`.
    pub fn encode(&self) -> String {
        format!("{KEY_PREFIX}{}", B64.encode(self.0.as_bytes()))
    }

    /// A short, stable name for the key (the first 16 hex digits of its SHA-256), for
    /// messages and the audit log.
    pub fn id(&self) -> String {
        crate::runtime::module::digest(self.0.as_bytes())[..16].to_string()
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

/// A private key. Never printed: `Debug` shows only its public key's id.
pub struct PrivateKey(SigningKey);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PrivateKey(public {}, secret redacted)",
            self.public().id()
        )
    }
}

impl PrivateKey {
    /// A new random key.
    pub fn generate() -> PrivateKey {
        let seed: [u8; 32] = rand::random();
        PrivateKey(SigningKey::from_bytes(&seed))
    }

    /// Its public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The key file's text.
    fn to_file_text(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(format!(
            "{PRIVATE_PREFIX}{}\n",
            B64.encode(self.0.to_bytes())
        ))
    }

    /// Parse a key file's text.
    pub fn parse(text: &str) -> Result<PrivateKey, SignatureError> {
        let b64 = text.trim().strip_prefix(PRIVATE_PREFIX).ok_or_else(|| {
            SignatureError::BadKey(
                "not a flow8 private key file (make one with `flow8-host modules keygen`)".into(),
            )
        })?;
        let bytes = zeroize::Zeroizing::new(
            B64.decode(b64)
                .map_err(|_| SignatureError::BadKey("the private key is not base64".into()))?,
        );
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SignatureError::BadKey("an ed25519 private key is 32 bytes".into()))?;
        Ok(PrivateKey(SigningKey::from_bytes(&arr)))
    }

    /// Read a key file.
    pub fn read(path: &Path) -> Result<PrivateKey, SignatureError> {
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            SignatureError::BadKey(format!("cannot read `{}`: {e}", path.display()))
        })?);
        PrivateKey::parse(&text)
    }

    /// Write the key file (mode 0600, never over an existing file) and `<path>.pub`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path)?;
        f.write_all(self.to_file_text().as_bytes())?;
        f.sync_all()?;
        let mut pub_path = path.as_os_str().to_owned();
        pub_path.push(".pub");
        std::fs::write(pub_path, format!("{}\n", self.public().encode()))
    }

    /// Sign a module's digest (hex SHA-256 of its bytes).
    pub fn sign(&self, digest_hex: &str) -> ModuleSignature {
        let sig = self.0.sign(&message(digest_hex));
        ModuleSignature {
            algorithm: "ed25519".into(),
            digest: format!("sha256:{digest_hex}"),
            public_key: self.public().encode(),
            signature: B64.encode(sig.to_bytes()),
        }
    }
}

fn message(digest_hex: &str) -> Vec<u8> {
    let mut m = CONTEXT.to_vec();
    m.extend_from_slice(b"sha256:");
    m.extend_from_slice(digest_hex.as_bytes());
    m
}

/// A signature document (`.wasm.sig`, the store, the OCI signature artifact).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleSignature {
    /// Always `ed25519`.
    pub algorithm: String,
    /// What was signed: `sha256:<hex>` of the module's bytes.
    pub digest: String,
    /// The signer's public key, `ed25519:<base64>`.
    pub public_key: String,
    /// The signature, base64 of 64 bytes.
    pub signature: String,
}

impl ModuleSignature {
    /// Parse a signature document.
    pub fn parse(bytes: &[u8]) -> Result<ModuleSignature, SignatureError> {
        if bytes.len() > MAX_SIGNATURE_BYTES {
            return Err(SignatureError::Malformed(format!(
                "larger than {MAX_SIGNATURE_BYTES} bytes"
            )));
        }
        serde_json::from_slice(bytes).map_err(|e| SignatureError::Malformed(e.to_string()))
    }

    /// The document, as stored and shipped.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Check the signature is over these bytes (by digest) and verifies under its own
    /// key; returns that key. Says nothing about whether the key is trusted.
    pub fn verify(&self, digest_hex: &str) -> Result<PublicKey, SignatureError> {
        if self.algorithm != "ed25519" {
            return Err(SignatureError::Malformed(format!(
                "algorithm `{}` is not supported (ed25519 is)",
                self.algorithm
            )));
        }
        let key = PublicKey::parse(&self.public_key)
            .map_err(|e| SignatureError::Malformed(e.to_string()))?;
        let sig_bytes = B64
            .decode(&self.signature)
            .map_err(|_| SignatureError::Malformed("the signature is not base64".into()))?;
        let sig = Signature::from_slice(&sig_bytes)
            .map_err(|_| SignatureError::Malformed("an ed25519 signature is 64 bytes".into()))?;
        // The digest it names and the digest of the bytes must agree, and the signature
        // must be over that digest: either failing means other bytes.
        if self.digest != format!("sha256:{digest_hex}") {
            return Err(SignatureError::Mismatch);
        }
        key.0
            .verify_strict(&message(digest_hex), &sig)
            .map_err(|_| SignatureError::Mismatch)?;
        Ok(key)
    }
}

/// The operator's trust: keys host-wide and per company, and whether a trusted signature
/// is required (host-wide, or per company).
#[derive(Debug, Clone, Default)]
pub struct SignaturePolicy {
    required: bool,
    trusted: Vec<PublicKey>,
    companies: BTreeMap<String, (Option<bool>, Vec<PublicKey>)>,
}

/// What a check found: who signed, if anyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureStatus {
    /// The signer's key id, when the module carries a signature that verifies.
    pub signed_by: Option<String>,
    /// Whether that key is one the operator trusts for this company.
    pub trusted: bool,
}

impl SignaturePolicy {
    /// From the config file's `module_signatures:` block.
    pub fn from_config(c: &crate::config::ModuleSignaturesConfig) -> Result<Self, SignatureError> {
        let parse_all = |keys: &[String], at: &str| {
            keys.iter()
                .map(|k| {
                    PublicKey::parse(k).map_err(|e| SignatureError::BadKey(format!("{at}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let mut companies = BTreeMap::new();
        for (company, cc) in &c.companies {
            crate::company::check(company)
                .map_err(|e| SignatureError::BadKey(format!("module_signatures.companies: {e}")))?;
            companies.insert(
                company.clone(),
                (
                    cc.required,
                    parse_all(
                        &cc.trusted_keys,
                        &format!("module_signatures.companies.{company}.trusted_keys"),
                    )?,
                ),
            );
        }
        Ok(SignaturePolicy {
            required: c.required,
            trusted: parse_all(&c.trusted_keys, "module_signatures.trusted_keys")?,
            companies,
        })
    }

    /// Whether a company's installed modules must carry a trusted signature.
    pub fn required_for(&self, company_id: &str) -> bool {
        self.companies
            .get(company_id)
            .and_then(|(r, _)| *r)
            .unwrap_or(self.required)
    }

    fn trusts(&self, company_id: &str, key: &PublicKey) -> bool {
        self.trusted.contains(key)
            || self
                .companies
                .get(company_id)
                .is_some_and(|(_, keys)| keys.contains(key))
    }

    /// Check a company's module (by digest) and the signature it carries, if any. A
    /// signature that does not verify is refused whether or not signatures are required
    /// (it says the bytes were altered); an unsigned module or one signed by a key the
    /// operator does not trust is refused where signatures are required.
    pub fn check(
        &self,
        company_id: &str,
        digest_hex: &str,
        signature: Option<&str>,
    ) -> Result<SignatureStatus, SignatureError> {
        let Some(text) = signature else {
            if self.required_for(company_id) {
                return Err(SignatureError::Unsigned);
            }
            return Ok(SignatureStatus {
                signed_by: None,
                trusted: false,
            });
        };
        let sig = ModuleSignature::parse(text.as_bytes())?;
        let key = sig.verify(digest_hex)?;
        let trusted = self.trusts(company_id, &key);
        if !trusted && self.required_for(company_id) {
            return Err(SignatureError::Untrusted(key.id()));
        }
        Ok(SignatureStatus {
            signed_by: Some(key.id()),
            trusted,
        })
    }
}

impl SignatureError {
    /// The error name a refusal answers with.
    pub fn name(&self) -> crate::error::ErrorName {
        match self {
            SignatureError::Unsigned => crate::error::ErrorName::SignatureRequired,
            SignatureError::BadKey(_) => crate::error::ErrorName::InvalidInput,
            _ => crate::error::ErrorName::SignatureInvalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CompanySignaturesConfig, ModuleSignaturesConfig};

    const D1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn policy(required: bool, keys: &[&PrivateKey]) -> SignaturePolicy {
        SignaturePolicy::from_config(&ModuleSignaturesConfig {
            required,
            trusted_keys: keys.iter().map(|k| k.public().encode()).collect(),
            companies: Default::default(),
        })
        .unwrap()
    }

    #[test]
    fn a_trusted_signature_passes_and_names_its_key() {
        let k = PrivateKey::generate();
        let sig = k.sign(D1).to_json();
        let st = policy(true, &[&k]).check("acme", D1, Some(&sig)).unwrap();
        assert_eq!(st.signed_by, Some(k.public().id()));
        assert!(st.trusted);
    }

    #[test]
    fn other_bytes_unsigned_and_untrusted_are_refused_by_name() {
        let k = PrivateKey::generate();
        let other = PrivateKey::generate();
        let p = policy(true, &[&k]);
        let sig = k.sign(D1).to_json();
        // Altered bytes: the digest no longer matches.
        assert_eq!(
            p.check("acme", D2, Some(&sig)),
            Err(SignatureError::Mismatch)
        );
        // A signature whose digest field was edited to match other bytes.
        let mut forged = k.sign(D1);
        forged.digest = format!("sha256:{D2}");
        assert_eq!(
            p.check("acme", D2, Some(&forged.to_json())),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(p.check("acme", D1, None), Err(SignatureError::Unsigned));
        let resigned = other.sign(D1).to_json();
        assert_eq!(
            p.check("acme", D1, Some(&resigned)),
            Err(SignatureError::Untrusted(other.public().id()))
        );
        assert_eq!(
            SignatureError::Unsigned.name(),
            crate::error::ErrorName::SignatureRequired
        );
        assert_eq!(
            SignatureError::Mismatch.name(),
            crate::error::ErrorName::SignatureInvalid
        );
    }

    #[test]
    fn not_required_accepts_unsigned_but_never_a_broken_signature() {
        let k = PrivateKey::generate();
        let p = policy(false, &[]);
        assert!(p.check("acme", D1, None).is_ok());
        let st = p.check("acme", D1, Some(&k.sign(D1).to_json())).unwrap();
        assert!(!st.trusted);
        assert_eq!(
            p.check("acme", D2, Some(&k.sign(D1).to_json())),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            p.check("acme", D1, Some("{not json")),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn a_company_may_require_signatures_and_trust_its_own_keys() {
        let k = PrivateKey::generate();
        let mut companies = BTreeMap::new();
        companies.insert(
            "acme".to_string(),
            CompanySignaturesConfig {
                required: Some(true),
                trusted_keys: vec![k.public().encode()],
            },
        );
        let p = SignaturePolicy::from_config(&ModuleSignaturesConfig {
            required: false,
            trusted_keys: vec![],
            companies,
        })
        .unwrap();
        assert!(p.required_for("acme") && !p.required_for("other"));
        let sig = k.sign(D1).to_json();
        assert!(p.check("acme", D1, Some(&sig)).unwrap().trusted);
        assert!(!p.check("other", D1, Some(&sig)).unwrap().trusted);
    }

    #[test]
    fn private_keys_round_trip_and_never_print() {
        let k = PrivateKey::generate();
        let text = k.to_file_text();
        let back = PrivateKey::parse(&text).unwrap();
        assert_eq!(back.public(), k.public());
        let b64 = text
            .trim()
            .strip_prefix(PRIVATE_PREFIX)
            .unwrap()
            .to_string();
        assert!(!format!("{k:?}").contains(&b64));
        assert!(PublicKey::parse(&k.public().encode()).is_ok());
        assert!(PublicKey::parse("ed25519:AAAA").is_err());
        assert!(PrivateKey::parse("ed25519:AAAA").is_err());
    }
}
