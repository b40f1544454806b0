//! The outlook-read-mail module (flow8's "read mail, delta query for incremental
//! sync"): a mail folder's messages through Microsoft Graph's delta query
//! (`GET /me/mailFolders/{id}/messages/delta`, learn.microsoft.com/graph/api/message-delta).
//! The first run reads the folder; its output carries the `@odata.deltaLink`, which the
//! next run passes back (`delta_link`) to get only what changed since: new and changed
//! messages, and the ids of removed ones (`@removed`). Pages (`@odata.nextLink`) are
//! followed up to `max_pages`; a run that stops early carries `next_link` to go on
//! from. The host attaches the token.

use flow8_graph::{Graph, encode_segment};
use flow8_sdk::http::Request;
use flow8_sdk::{Credential, Error, Manifest, Module, log};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const BINDING: &str = "microsoft";
/// What a message carries when the input does not `select`.
const DEFAULT_SELECT: &[&str] = &[
    "id",
    "subject",
    "from",
    "toRecipients",
    "receivedDateTime",
    "isRead",
    "hasAttachments",
    "bodyPreview",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[allow(dead_code)]
    link_id: String,
    #[serde(default)]
    folder: Option<String>,
    #[serde(default)]
    select: Option<Vec<String>>,
    #[serde(default)]
    delta_link: Option<String>,
    #[serde(default)]
    next_link: Option<String>,
    #[serde(default)]
    page_size: Option<u32>,
    #[serde(default)]
    max_pages: Option<u32>,
}

#[derive(Debug, Serialize)]
struct Output {
    /// New and changed messages, in the order Graph gave them.
    messages: Vec<Value>,
    /// Ids of messages removed from the folder since the delta link (`@removed`).
    removed: Vec<String>,
    /// Pass this back as `delta_link` next time: only changes since this run.
    #[serde(skip_serializing_if = "Option::is_none")]
    delta_link: Option<String>,
    /// Set when `max_pages` stopped the run before the end: pass it back as
    /// `next_link` to go on.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_link: Option<String>,
    /// Whether the folder was read to the end (a `delta_link` came).
    complete: bool,
    pages: u32,
}

struct OutlookReadMail;

impl Module for OutlookReadMail {
    type Input = Input;
    type Output = Output;

    fn manifest() -> Manifest {
        Manifest::new("outlook-read-mail", env!("CARGO_PKG_VERSION"))
            .description("Read a mail folder's messages through Microsoft Graph's delta query; the output's delta_link, passed back next run, fetches only changes.")
            .input_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["link_id"],
                "properties": {
                    "link_id": {"type": "string", "minLength": 1},
                    "folder": {"type": "string", "minLength": 1, "maxLength": 400,
                               "description": "A well-known folder name (inbox, sentitems, drafts, archive, ...) or a folder id; default inbox."},
                    "select": {"type": "array", "maxItems": 50, "items": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9]*$"}},
                    "delta_link": {"type": "string", "minLength": 1,
                                   "description": "The previous run's delta_link: only changes since then."},
                    "next_link": {"type": "string", "minLength": 1,
                                  "description": "The previous run's next_link, when it stopped at max_pages."},
                    "page_size": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "max_pages": {"type": "integer", "minimum": 1, "maximum": 100}
                }
            }))
            .credential(
                Credential::oauth_link(BINDING, "microsoft")
                    .scopes(["Mail.Read"])
                    .input_field("link_id"),
            )
            .allowed_host("https://graph.microsoft.com")
    }

    fn execute(input: Input) -> Result<Output, Error> {
        let graph = Graph::new(BINDING)?;
        let url = match (&input.next_link, &input.delta_link) {
            (Some(link), _) | (None, Some(link)) => {
                // A link from an earlier run carries the query and the sync state; it
                // must be Graph's own (the host would refuse another host anyway).
                if !graph.is_graph_url(link) {
                    return Err(Error::invalid_input(format!(
                        "`{link}` is not a Microsoft Graph link (it must start with {})",
                        graph.base()
                    )));
                }
                link.clone()
            }
            (None, None) => {
                let folder = input.folder.as_deref().unwrap_or("inbox");
                let select: Vec<&str> = match &input.select {
                    Some(s) => s.iter().map(String::as_str).collect(),
                    None => DEFAULT_SELECT.to_vec(),
                };
                let mut url = graph.url(&format!(
                    "/me/mailFolders/{}/messages/delta",
                    encode_segment(folder)
                ));
                if !select.is_empty() {
                    url.push_str(&format!("?%24select={}", select.join(",")));
                }
                url
            }
        };
        let mut request = Request::get(&url);
        if let Some(n) = input.page_size {
            // Delta queries page by this preference, not `$top`.
            request = request.header("prefer", &format!("odata.maxpagesize={n}"));
        }
        let mut messages = Vec::new();
        let mut removed = Vec::new();
        let mut pages = 0;
        let last = graph.pages(request, input.max_pages.unwrap_or(10), |page| {
            pages += 1;
            for m in page["value"].as_array().into_iter().flatten() {
                if m.get("@removed").is_some() {
                    if let Some(id) = m["id"].as_str() {
                        removed.push(id.to_string());
                    }
                } else {
                    messages.push(m.clone());
                }
            }
            Ok(())
        })?;
        let delta_link = last["@odata.deltaLink"].as_str().map(str::to_string);
        let next_link = last["@odata.nextLink"].as_str().map(str::to_string);
        log::info(&format!(
            "{} messages, {} removed, in {pages} pages",
            messages.len(),
            removed.len()
        ));
        Ok(Output {
            messages,
            removed,
            complete: delta_link.is_some(),
            delta_link,
            next_link,
            pages,
        })
    }
}

flow8_sdk::export_module!(OutlookReadMail);
