//! A module whose manifest asks for more than the host allows (`https://*.com`); the
//! host must refuse to load it.

use flow8_sdk::{Error, Manifest, Module};
use serde_json::Value;

struct BadManifest;

impl Module for BadManifest {
    type Input = Value;
    type Output = Value;

    fn manifest() -> Manifest {
        Manifest::new("bad-manifest", "0.1.0").allowed_host("https://*.com")
    }

    fn execute(input: Value) -> Result<Value, Error> {
        Ok(input)
    }
}

flow8_sdk::export_module!(BadManifest);
