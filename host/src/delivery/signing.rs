//! Signing events the Standard Webhooks way (<https://www.standardwebhooks.com>, the
//! spec's "Signature scheme"): the receiver gets `webhook-id`, `webhook-timestamp`
//! (Unix seconds) and `webhook-signature: v1,<base64 HMAC-SHA256>`, the HMAC keyed
//! with the secret's bytes over `{id}.{timestamp}.{body}`. A secret is `whsec_`
//! followed by the base64 of 32 random bytes, as the spec's libraries expect it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};

/// The prefix of a signing secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Why a stored secret cannot sign.
#[derive(Debug, thiserror::Error)]
#[error("the endpoint's signing secret is not `whsec_` and base64")]
pub struct BadSecret;

/// A new signing secret (`whsec_` + base64 of 32 random bytes).
pub fn new_secret() -> String {
    format!(
        "{SECRET_PREFIX}{}",
        STANDARD.encode(rand::random::<[u8; 32]>())
    )
}

/// The key bytes of a secret.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, BadSecret> {
    let b64 = secret.strip_prefix(SECRET_PREFIX).ok_or(BadSecret)?;
    let key = STANDARD.decode(b64).map_err(|_| BadSecret)?;
    if key.is_empty() {
        return Err(BadSecret);
    }
    Ok(key)
}

/// The `webhook-signature` value for one message.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = <hmac::Hmac<sha2_011::Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks spec's test vectors (its reference
    /// libraries' tests): this secret, id, timestamp and payload sign to this value.
    #[test]
    fn matches_the_specs_test_vector() {
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_are_prefixed_base64_of_32_bytes() {
        let s = new_secret();
        assert_eq!(secret_key(&s).unwrap().len(), 32);
        assert_ne!(s, new_secret());
        assert!(secret_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(secret_key("whsec_!!!").is_err());
        assert!(secret_key("whsec_").is_err());
    }
}
