//! Fuzz target: the module manifest parser (`Manifest::parse`, what the host runs on the
//! JSON a module's `manifest` export returns). No input panics, and a manifest it
//! accepts is stable: every allowed host parses as a pattern, each pattern prints as
//! text that parses back to the same pattern, and the manifest survives a JSON round
//! trip unchanged and still valid.
#![no_main]

use flow8_manifest::{HostPattern, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(manifest) = Manifest::parse(text) else {
        return;
    };
    let patterns = manifest.host_patterns();
    assert_eq!(
        patterns.len(),
        manifest.allowed_hosts.len(),
        "every host of a validated manifest parses"
    );
    for p in &patterns {
        assert_eq!(
            HostPattern::parse(&p.to_string()).as_ref(),
            Ok(p),
            "pattern {p} does not print as itself"
        );
    }
    let again = serde_json::to_string(&manifest).expect("a manifest serializes");
    assert_eq!(
        Manifest::parse(&again).expect("a serialized manifest parses"),
        manifest
    );
});
