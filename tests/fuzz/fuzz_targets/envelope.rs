//! Fuzz target: sealed envelopes as the store holds them (`{"encrypted", "nonce",
//! "ciphertext", "key_id", "alg"}`), read by `Envelope::from_json` and opened by
//! `Vault::decrypt`, and the key check value (`Vault::verify_check_value`). No input
//! panics, whatever JSON it is; an envelope prints as JSON that reads back to itself;
//! and the input sealed as a secret opens to itself in its own record and in no other.
#![no_main]

use flow8_vault::{Envelope, MasterKey, RecordKind, SealContext, Vault, VaultError};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

/// The key the seed envelopes in `corpus/envelope` were sealed with, so the fuzzer
/// starts from envelopes that open.
const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

static VAULT: LazyLock<Vault> =
    LazyLock::new(|| Vault::new(MasterKey::parse(KEY).expect("the fuzz key parses")));

const CONTEXT: SealContext<'static> = SealContext {
    company: "acme",
    kind: RecordKind::Component,
    record: "cmp_1",
    field: "api_key",
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = VAULT.verify_check_value(text);
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text)
        && let Some(envelope) = Envelope::from_json(&value)
    {
        assert_eq!(
            Envelope::from_json(&envelope.to_json()).as_ref(),
            Some(&envelope)
        );
        let _ = VAULT.decrypt(&envelope, &CONTEXT);
        let _ = VAULT.reseal(&envelope, &CONTEXT);
    }
    let sealed = VAULT.encrypt(text, &CONTEXT);
    let opened = VAULT
        .decrypt(&sealed, &CONTEXT)
        .expect("a fresh envelope opens");
    assert_eq!(opened.expose(), text);
    let elsewhere = SealContext {
        record: "cmp_2",
        ..CONTEXT
    };
    assert!(matches!(
        VAULT.decrypt(&sealed, &elsewhere),
        Err(VaultError::WrongRecord { .. })
    ));
});
