//! A manifest the host accepted, written out and read again, is the same manifest. The
//! manifest fuzz target found a schema number (`maxLength` of about 1.02e77) that
//! serde_json's default float parser read one unit off after a round trip; the crate
//! turns on `float_roundtrip` so it reads every number exactly.
#![cfg(feature = "validate")]

use flow8_manifest::Manifest;

#[test]
fn a_schema_number_survives_a_round_trip_exactly() {
    let text = r#"{"manifest_version":1,"name":"ftp-upload","version":"0.1.0",
        "description":"Upload a file.",
        "input_schema":{"type":"object","properties":{"remote_path":{"type":"string",
            "minLength":1,"maxLength":102333333333333333333333333333333333333333333333333333333333333333333333333333.0}}},
        "credentials":[],"allowed_hosts":[]}"#;
    let manifest = Manifest::parse(text).expect("a valid manifest");
    let again = serde_json::to_string(&manifest).expect("it serializes");
    assert_eq!(Manifest::parse(&again).expect("it parses again"), manifest);
}
