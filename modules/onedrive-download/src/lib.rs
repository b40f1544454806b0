//! The onedrive-download module: download a file from the user's OneDrive into the
//! step's workspace, by path (`GET /me/drive/root:/{path}:/content`) or by item id
//! (`GET /me/drive/items/{id}/content`; learn.microsoft.com/graph/api/driveitem-get-content).
//! The host streams the bytes to disk: they never pass through the module's memory.
//!
//! Graph answers `302 Found` with a pre-authenticated download URL on another host
//! (SharePoint, 1drv.com). That URL is its own authorization, so it is fetched with no
//! credential: the host would refuse to attach the token there anyway (it is pinned to
//! Graph), and reaches that host only because it is among the Microsoft provider's
//! `transfer_hosts`. Each hop is a new request the host checks.

use flow8_graph::{Graph, drive_path, encode_segment, error};
use flow8_sdk::http::{Request, SavedResponse};
use flow8_sdk::retry::Backoff;
use flow8_sdk::{Credential, Error, Manifest, Module, log};
use serde::{Deserialize, Serialize};
use serde_json::json;

const BINDING: &str = "microsoft";
/// Redirects followed after Graph's own (a download host may hop once more).
const MAX_HOPS: u32 = 3;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[allow(dead_code)]
    link_id: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    item_id: Option<String>,
    save_as: String,
    #[serde(default)]
    max_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Output {
    /// The workspace file written.
    path: String,
    /// Bytes written.
    size: u64,
    /// The answer's `Content-Type`, when it said.
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    /// Whether Graph redirected to a download URL (the usual case).
    redirected: bool,
}

/// `Location` resolved against the URL it answered (RFC 9110 §10.2.2 allows relative).
fn resolve(base: &str, location: &str) -> String {
    let lower = location.to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return location.to_string();
    }
    let origin_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|i| base[i..].find('/').map(|j| i + j))
        .unwrap_or(base.len());
    if location.starts_with('/') {
        format!("{}{location}", &base[..origin_end])
    } else {
        let dir = base[..base.find('?').unwrap_or(base.len())]
            .rsplit_once('/')
            .map(|(d, _)| d)
            .unwrap_or(base);
        format!("{dir}/{location}")
    }
}

fn saved(r: &SavedResponse, save_as: &str, redirected: bool) -> Option<Output> {
    r.saved.as_ref().map(|s| Output {
        path: save_as.to_string(),
        size: s.size,
        content_type: r.response.header("content-type").map(str::to_string),
        redirected,
    })
}

struct OneDriveDownload;

impl Module for OneDriveDownload {
    type Input = Input;
    type Output = Output;

    fn manifest() -> Manifest {
        Manifest::new("onedrive-download", env!("CARGO_PKG_VERSION"))
            .description("Download a OneDrive file (by path or item id) into the step workspace; the host streams it to disk and follows Graph's redirect to the download URL without the token.")
            .input_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["link_id", "save_as"],
                "properties": {
                    "link_id": {"type": "string", "minLength": 1},
                    "path": {"type": "string", "minLength": 1, "maxLength": 4000,
                             "description": "The file's path in the user's OneDrive: /Documents/report.pdf"},
                    "item_id": {"type": "string", "minLength": 1, "maxLength": 400},
                    "save_as": {"type": "string", "minLength": 1,
                                "description": "The workspace file to write (its directory must exist)."},
                    "max_bytes": {"type": "integer", "minimum": 1}
                },
                "oneOf": [{"required": ["path"]}, {"required": ["item_id"]}]
            }))
            .credential(
                Credential::oauth_link(BINDING, "microsoft")
                    .scopes(["Files.Read"])
                    .input_field("link_id"),
            )
            .allowed_host("https://graph.microsoft.com")
    }

    fn execute(input: Input) -> Result<Output, Error> {
        let graph = Graph::new(BINDING)?;
        let item = match (&input.path, &input.item_id) {
            (Some(p), None) => drive_path(p)?,
            (None, Some(id)) => format!("/me/drive/items/{}", encode_segment(id)),
            _ => {
                return Err(Error::invalid_input("give either `path` or `item_id`"));
            }
        };
        let max = input.max_bytes.unwrap_or(u64::MAX);
        let mut url = graph.url(&format!("{item}/content"));
        let first = graph.send_to_workspace(Request::get(&url), &input.save_as, max)?;
        if let Some(out) = saved(&first, &input.save_as, false) {
            return Ok(out);
        }
        let mut answer = first.response;
        let backoff = Backoff::with_max_retries(3);
        for hop in 0..MAX_HOPS {
            if !matches!(answer.status, 301 | 302 | 303 | 307 | 308) {
                return Err(error(&answer));
            }
            let Some(location) = answer.header("location") else {
                return Err(Error::upstream(
                    answer.status,
                    "Microsoft Graph redirected without a Location",
                ));
            };
            url = resolve(&url, location);
            // No credential: the download URL is pre-authenticated, and the token stays
            // with Graph.
            log::info(&format!(
                "following the download redirect (hop {}) without the token",
                hop + 1
            ));
            let r = backoff.send_to_workspace(&Request::get(&url), &input.save_as, max)?;
            if let Some(out) = saved(&r, &input.save_as, true) {
                return Ok(out);
            }
            answer = r.response;
        }
        Err(Error::upstream(
            answer.status,
            format!("more than {MAX_HOPS} redirects after Microsoft Graph's"),
        ))
    }
}

flow8_sdk::export_module!(OneDriveDownload);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve() {
        let base = "https://graph.microsoft.com/v1.0/me/drive/items/1/content?x=1";
        assert_eq!(
            resolve(base, "https://contoso.sharepoint.com/d?tempauth=1"),
            "https://contoso.sharepoint.com/d?tempauth=1"
        );
        assert_eq!(resolve(base, "/dl/1"), "https://graph.microsoft.com/dl/1");
        assert_eq!(
            resolve(base, "other"),
            "https://graph.microsoft.com/v1.0/me/drive/items/1/other"
        );
    }
}
