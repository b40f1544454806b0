//! A module that binds a credential but does not declare `credentials.get`, and calls it
//! anyway: the host must refuse the read (`access_denied`) and hand over no secret.
//! `{"read": false}` is a well-behaved step.

use flow8_sdk::{Credential, Error, Manifest, Module, credentials};
use serde_json::{Value, json};

struct Undeclared;

impl Module for Undeclared {
    type Input = Value;
    type Output = Value;

    fn manifest() -> Manifest {
        Manifest::new("undeclared-secret", "0.1.0")
            .description("Test module that reads a secret it did not declare.")
            .credential(Credential::component("api", "http").optional())
    }

    fn execute(input: Value) -> Result<Value, Error> {
        if input["read"] == json!(false) {
            return Ok(json!({"ok": true}));
        }
        let secrets = credentials::get("api")?;
        Ok(json!({"fields": secrets.names().count()}))
    }
}

flow8_sdk::export_module!(Undeclared);
