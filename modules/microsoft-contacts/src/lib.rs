//! The microsoft-contacts module (flow8's "list contacts"): the user's Outlook
//! contacts through Microsoft Graph `GET /me/contacts`
//! (learn.microsoft.com/graph/api/user-list-contacts), `$top` per page and `$select`ed
//! fields, following `@odata.nextLink` up to `max_pages`; a run that stops early
//! carries `next_link` to go on from. The host attaches the token.

use flow8_graph::Graph;
use flow8_sdk::http::Request;
use flow8_sdk::{Credential, Error, Manifest, Module, log};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const BINDING: &str = "microsoft";
const DEFAULT_SELECT: &[&str] = &[
    "id",
    "displayName",
    "givenName",
    "surname",
    "emailAddresses",
    "companyName",
    "businessPhones",
    "mobilePhone",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[allow(dead_code)]
    link_id: String,
    #[serde(default)]
    top: Option<u32>,
    #[serde(default)]
    select: Option<Vec<String>>,
    #[serde(default)]
    max_pages: Option<u32>,
    #[serde(default)]
    next_link: Option<String>,
}

#[derive(Debug, Serialize)]
struct Output {
    contacts: Vec<Value>,
    /// Set when `max_pages` stopped the listing: pass it back as `next_link`.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_link: Option<String>,
    pages: u32,
}

struct MicrosoftContacts;

impl Module for MicrosoftContacts {
    type Input = Input;
    type Output = Output;

    fn manifest() -> Manifest {
        Manifest::new("microsoft-contacts", env!("CARGO_PKG_VERSION"))
            .description("List the user's Outlook contacts through Microsoft Graph (GET /me/contacts) with $top, $select and paging.")
            .input_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["link_id"],
                "properties": {
                    "link_id": {"type": "string", "minLength": 1},
                    "top": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "select": {"type": "array", "maxItems": 50, "items": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9]*$"}},
                    "max_pages": {"type": "integer", "minimum": 1, "maximum": 100},
                    "next_link": {"type": "string", "minLength": 1}
                }
            }))
            .credential(
                Credential::oauth_link(BINDING, "microsoft")
                    .scopes(["Contacts.Read"])
                    .input_field("link_id"),
            )
            .allowed_host("https://graph.microsoft.com")
    }

    fn execute(input: Input) -> Result<Output, Error> {
        let graph = Graph::new(BINDING)?;
        let url = match &input.next_link {
            Some(link) if graph.is_graph_url(link) => link.clone(),
            Some(link) => {
                return Err(Error::invalid_input(format!(
                    "`{link}` is not a Microsoft Graph link (it must start with {})",
                    graph.base()
                )));
            }
            None => {
                let select: Vec<&str> = match &input.select {
                    Some(s) => s.iter().map(String::as_str).collect(),
                    None => DEFAULT_SELECT.to_vec(),
                };
                let mut query = vec![format!("%24top={}", input.top.unwrap_or(100))];
                if !select.is_empty() {
                    query.push(format!("%24select={}", select.join(",")));
                }
                graph.url(&format!("/me/contacts?{}", query.join("&")))
            }
        };
        let mut contacts = Vec::new();
        let mut pages = 0;
        let last = graph.pages(Request::get(&url), input.max_pages.unwrap_or(10), |page| {
            pages += 1;
            contacts.extend(page["value"].as_array().into_iter().flatten().cloned());
            Ok(())
        })?;
        log::info(&format!("{} contacts in {pages} pages", contacts.len()));
        Ok(Output {
            contacts,
            next_link: last["@odata.nextLink"].as_str().map(str::to_string),
            pages,
        })
    }
}

flow8_sdk::export_module!(MicrosoftContacts);
