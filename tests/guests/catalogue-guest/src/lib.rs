//! A module that binds two providers no shipped catalogue has: an OAuth link to
//! `acme-crm` and an API-key component of `acme-search`. A host knows them only when its
//! config file adds them (`providers:`). It makes one request with each credential
//! attached by the host, to the URLs the input names, and reports what came back; the
//! host's errors (a credential sent outside its pins) end the step.

use flow8_sdk::http::Request;
use flow8_sdk::{Credential, Error, Manifest, Module};
use serde_json::{Value, json};

struct CatalogueGuest;

fn url<'a>(input: &'a Value, k: &str) -> Result<&'a str, Error> {
    input[k]
        .as_str()
        .ok_or_else(|| Error::invalid_input(format!("`{k}` is required")))
}

impl Module for CatalogueGuest {
    type Input = Value;
    type Output = Value;

    fn manifest() -> Manifest {
        Manifest::new("catalogue-guest", "0.1.0")
            .description(
                "Calls a configured OAuth provider's API and a configured API-key provider's API.",
            )
            .input_schema(
                json!({"type": "object", "required": ["link_id", "crm_url", "search_url"]}),
            )
            .credential(
                Credential::oauth_link("crm", "acme-crm")
                    .scopes(["contacts.read"])
                    .input_field("link_id"),
            )
            .credential(Credential::component("search", "acme-search"))
            // Any loopback port, so that where a credential may go is decided by its
            // pins alone.
            .allowed_host("http://127.0.0.1:*")
    }

    fn execute(input: Value) -> Result<Value, Error> {
        let crm = Request::get(url(&input, "crm_url")?)
            .credential("crm")
            .send()?;
        let search = Request::get(url(&input, "search_url")?)
            .credential("search")
            .send()?;
        Ok(json!({
            "crm": {"status": crm.status, "body": crm.text()},
            "search": {"status": search.status, "body": search.text()},
        }))
    }
}

flow8_sdk::export_module!(CatalogueGuest);
