//! Fuzz target: the master key file (`master.key`: a current key, then older keys, hex
//! or base64, with blank lines and `#` comments) read by `Vault::from_key_file_text`,
//! the same parser `Vault::load` runs on the file. No input panics; a key file that
//! loads gives a vault whose key id is 16 hex characters and that opens what it seals.
#![no_main]

use flow8_vault::{RecordKind, SealContext, Vault};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(vault) = Vault::from_key_file_text(text) else {
        return;
    };
    let id = vault.key_id();
    assert!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert!(
        !vault.old_key_ids().contains(&id),
        "the current key is also listed as old"
    );
    let context = SealContext {
        company: "acme",
        kind: RecordKind::Link,
        record: "lnk_1",
        field: "access_token",
    };
    let sealed = vault.encrypt("token", &context);
    assert_eq!(sealed.key_id, id);
    let opened = vault.decrypt(&sealed, &context).expect("opens");
    assert_eq!(opened.expose(), "token");
});
