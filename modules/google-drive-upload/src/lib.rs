//! The google-drive-upload module: a file of the step's workspace to the user's Google
//! Drive, with Drive's resumable upload
//! (developers.google.com/drive/api/guides/manage-uploads#resumable):
//!
//! 1. `POST /upload/drive/v3/files?uploadType=resumable` with the file's metadata (name,
//!    parent folder, MIME type) as JSON and `X-Upload-Content-Type` /
//!    `X-Upload-Content-Length`; Drive answers `200` with the session URI in `Location`;
//! 2. `PUT` the file's bytes to that URI, streamed by the host from the workspace (they
//!    never pass through the module); Drive answers `200`/`201` with the file resource.
//!
//! The session URI must be on the Drive upload root the step started from; the host
//! attaches the token to it too, so it may only go to Google's pins anyway. A session
//! that fails (5xx, 429, or 404 once it expired) is started again from the beginning,
//! within the step's deadline: the host streams whole files, not ranges.

use flow8_sdk::http::Request;
use flow8_sdk::retry::Backoff;
use flow8_sdk::{Credential, Error, Manifest, Module, log};
use google_common::{BINDING, Roots, encode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    #[allow(dead_code)]
    link_id: String,
    /// The workspace file.
    file_path: String,
    /// The name in Drive (default: the path's last segment).
    #[serde(default)]
    name: Option<String>,
    /// The parent folder's id (default: My Drive's root).
    #[serde(default)]
    folder_id: Option<String>,
    /// The file's MIME type (default: Drive decides from the name).
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Output {
    id: String,
    name: String,
    #[serde(rename = "mimeType")]
    mime_type: String,
    #[serde(rename = "webViewLink")]
    web_view_link: String,
    size: u64,
}

/// The fields asked of Drive for the output (Drive v3 answers only id, name, mimeType
/// and kind unless `fields` names more).
const FIELDS: &str = "id,name,mimeType,size,webViewLink,parents";

fn metadata(input: &Input, name: &str) -> Value {
    let mut m = json!({"name": name});
    if let Some(f) = &input.folder_id {
        m["parents"] = json!([f]);
    }
    if let Some(t) = &input.mime_type {
        m["mimeType"] = json!(t);
    }
    if let Some(d) = &input.description {
        m["description"] = json!(d);
    }
    m
}

/// The session URI, if it is on `upload_root` (scheme, host, port and path prefix).
fn session_uri(location: Option<&str>, upload_root: &str) -> Result<String, Error> {
    let location = location.ok_or_else(|| {
        Error::upstream(200, "Drive started no upload session (no Location header)")
    })?;
    if !location.starts_with(&format!("{upload_root}?")) {
        return Err(Error::upstream(
            200,
            format!("Drive's upload session is not on {upload_root}: {location}"),
        ));
    }
    Ok(location.to_string())
}

struct DriveUpload;

impl Module for DriveUpload {
    type Input = Input;
    type Output = Output;

    fn manifest() -> Manifest {
        Manifest::new("google-drive-upload", env!("CARGO_PKG_VERSION"))
            .description("Upload a workspace file to Google Drive (resumable upload, streamed by the host); output its id and webViewLink.")
            .input_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["link_id", "file_path"],
                "properties": {
                    "link_id": {"type": "string", "minLength": 1},
                    "file_path": {"type": "string", "minLength": 1},
                    "name": {"type": "string", "minLength": 1, "maxLength": 1024},
                    "folder_id": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[A-Za-z0-9_-]+$"},
                    "mime_type": {"type": "string", "minLength": 3, "maxLength": 255},
                    "description": {"type": "string", "maxLength": 4096}
                }
            }))
            .credential(
                Credential::oauth_link(BINDING, "google")
                    .scopes(["https://www.googleapis.com/auth/drive.file"])
                    .input_field("link_id"),
            )
            .allowed_host("https://www.googleapis.com")
    }

    fn execute(input: Input) -> Result<Output, Error> {
        let roots = Roots::of_link()?;
        let meta = std::fs::metadata(&input.file_path)
            .map_err(|e| Error::invalid_input(format!("`{}`: {e}", input.file_path)))?;
        if !meta.is_file() {
            return Err(Error::invalid_input(format!(
                "`{}` is not a file",
                input.file_path
            )));
        }
        let size = meta.len();
        let name = input.name.clone().unwrap_or_else(|| {
            input
                .file_path
                .rsplit('/')
                .next()
                .unwrap_or(&input.file_path)
                .to_string()
        });
        if name.is_empty() {
            return Err(Error::invalid_input("the file needs a name"));
        }
        let upload_root = format!("{}/upload/drive/v3/files", roots.drive);
        let content_type = input
            .mime_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into());
        let start = Request::post(&format!(
            "{upload_root}?uploadType=resumable&supportsAllDrives=true&fields={}",
            encode(FIELDS, b",")
        ))
        .header("x-upload-content-type", &content_type)
        .header("x-upload-content-length", &size.to_string())
        .json(&metadata(&input, &name))?
        .credential(BINDING);
        let backoff = Backoff::with_max_retries(3);
        let mut attempt = 0;
        let file = loop {
            let answer = google_common::send("Drive", &start)?;
            let session = session_uri(answer.header("location"), &upload_root)?;
            let put = Request::put(&session)
                .header("content-type", &content_type)
                .workspace_file(&input.file_path)
                .credential(BINDING);
            let resp = put.send()?;
            if resp.is_success() {
                break google_common::json("Drive", &resp)?;
            }
            // A failed or expired session: start a new one (the whole file again).
            if resp.status >= 500 || resp.status == 429 || resp.status == 404 {
                attempt += 1;
                let wait = resp
                    .retry_after()
                    .map(|s| std::time::Duration::from_secs(s.into()));
                if attempt <= backoff.max_retries && backoff.wait(attempt, wait) {
                    log::warn(&format!(
                        "Drive answered {} to the upload; starting a new session (attempt {attempt})",
                        resp.status
                    ));
                    continue;
                }
            }
            return Err(google_common::error(
                "Drive",
                resp.status,
                &resp.body,
                resp.retry_after(),
            ));
        };
        Ok(Output {
            id: file["id"]
                .as_str()
                .ok_or_else(|| Error::upstream(200, "Drive answered without a file id"))?
                .to_string(),
            name: file["name"].as_str().unwrap_or(&name).to_string(),
            mime_type: file["mimeType"]
                .as_str()
                .unwrap_or(&content_type)
                .to_string(),
            web_view_link: file["webViewLink"].as_str().unwrap_or_default().to_string(),
            // Drive gives `size` as a string (an int64 in JSON).
            size: file["size"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .or_else(|| file["size"].as_u64())
                .unwrap_or(size),
        })
    }
}

flow8_sdk::export_module!(DriveUpload);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_must_be_on_the_upload_root() {
        let root = "https://www.googleapis.com/upload/drive/v3/files";
        assert!(
            session_uri(
                Some(&format!("{root}?uploadType=resumable&upload_id=x")),
                root
            )
            .is_ok()
        );
        assert!(session_uri(Some("https://evil.example/upload/drive/v3/files?x"), root).is_err());
        assert!(
            session_uri(
                Some("https://www.googleapis.com/upload/drive/v3/filesX?a"),
                root
            )
            .is_err()
        );
        assert!(session_uri(None, root).is_err());
    }
}
