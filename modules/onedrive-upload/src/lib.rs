//! The onedrive-upload module: a workspace file to the user's OneDrive. Small files
//! (up to 4 MiB) in one `PUT /me/drive/root:/{path}:/content`
//! (learn.microsoft.com/graph/api/driveitem-put-content); larger ones through an
//! upload session (`POST /me/drive/root:/{path}:/createUploadSession`,
//! learn.microsoft.com/graph/api/driveitem-createuploadsession) whose pre-authenticated
//! `uploadUrl` takes the file in chunks that are multiples of 320 KiB, each `PUT` with
//! `Content-Range` and streamed by the host from the workspace. The token is attached
//! by the host to Graph calls only, never to the upload URL (Graph's docs: sending it
//! there may fail the upload; the host sends it only to Graph).

use flow8_graph::{CHUNK_UNIT, Graph, drive_path, upload_session};
use flow8_sdk::http::Request;
use flow8_sdk::{Credential, Error, Manifest, Module, log};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const BINDING: &str = "microsoft";
/// Graph's simple upload takes files up to 4 MB; above, an upload session.
const SIMPLE_MAX: u64 = 4 * 1024 * 1024;
/// Default chunk: 10 × 320 KiB (Microsoft recommends 5-10 MiB; under 60 MiB a request).
const DEFAULT_CHUNK_UNITS: u64 = 10;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[allow(dead_code)]
    link_id: String,
    file_path: String,
    path: String,
    #[serde(default)]
    conflict_behavior: Option<String>,
    #[serde(default)]
    chunk_kib: Option<u64>,
    #[serde(default)]
    force_session: bool,
}

#[derive(Debug, Serialize)]
struct Output {
    id: String,
    name: String,
    size: u64,
    #[serde(rename = "webUrl", skip_serializing_if = "Option::is_none")]
    web_url: Option<String>,
    /// `simple` (one PUT) or `upload_session`.
    upload: &'static str,
    /// Chunks sent (1 for a simple upload).
    chunks: u32,
}

fn output(item: &Value, size: u64, upload: &'static str, chunks: u32) -> Result<Output, Error> {
    Ok(Output {
        id: item["id"]
            .as_str()
            .ok_or_else(|| Error::upstream(200, "Graph answered the upload without the item's id"))?
            .to_string(),
        name: item["name"].as_str().unwrap_or_default().to_string(),
        size: item["size"].as_u64().unwrap_or(size),
        web_url: item["webUrl"].as_str().map(str::to_string),
        upload,
        chunks,
    })
}

struct OneDriveUpload;

impl Module for OneDriveUpload {
    type Input = Input;
    type Output = Output;

    fn manifest() -> Manifest {
        Manifest::new("onedrive-upload", env!("CARGO_PKG_VERSION"))
            .description("Upload a workspace file to OneDrive: small files in one PUT, large ones through an upload session in 320 KiB-multiple chunks streamed by the host.")
            .input_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["link_id", "file_path", "path"],
                "properties": {
                    "link_id": {"type": "string", "minLength": 1},
                    "file_path": {"type": "string", "minLength": 1, "description": "The workspace file to upload."},
                    "path": {"type": "string", "minLength": 1, "maxLength": 4000, "description": "Where in the user's OneDrive: /Documents/report.pdf"},
                    "conflict_behavior": {"type": "string", "enum": ["replace", "fail", "rename"]},
                    "chunk_kib": {"type": "integer", "minimum": 320, "maximum": 61120, "multipleOf": 320,
                                  "description": "Upload-session chunk size in KiB, a multiple of 320 (default 3200)."},
                    "force_session": {"type": "boolean", "description": "Use an upload session even for a small file."}
                }
            }))
            .credential(
                Credential::oauth_link(BINDING, "microsoft")
                    .scopes(["Files.ReadWrite"])
                    .input_field("link_id"),
            )
            .allowed_host("https://graph.microsoft.com")
    }

    fn execute(input: Input) -> Result<Output, Error> {
        let meta = std::fs::metadata(&input.file_path).map_err(|e| {
            Error::invalid_input(format!(
                "`{}` is not in the workspace: {e}",
                input.file_path
            ))
        })?;
        if !meta.is_file() {
            return Err(Error::invalid_input(format!(
                "`{}` is not a file",
                input.file_path
            )));
        }
        let size = meta.len();
        let graph = Graph::new(BINDING)?;
        let item = drive_path(&input.path)?;
        let conflict = input.conflict_behavior.as_deref().unwrap_or("replace");
        if size <= SIMPLE_MAX && !input.force_session {
            let url = graph.url(&format!(
                "{item}/content?%40microsoft.graph.conflictBehavior={conflict}"
            ));
            let request = Request::put(&url)
                .header("content-type", "application/octet-stream")
                .workspace_file(&input.file_path);
            let answer: Value = graph.send_ok(request)?.json()?;
            return output(&answer, size, "simple", 1);
        }
        if size == 0 {
            return Err(Error::invalid_input(
                "an empty file is uploaded in one PUT; leave force_session off",
            ));
        }
        let name = input.path.rsplit('/').next().unwrap_or_default();
        let session = Request::post(&graph.url(&format!("{item}/createUploadSession"))).json(
            &json!({"item": {"@microsoft.graph.conflictBehavior": conflict, "name": name}}),
        )?;
        let session: Value = graph.send_ok(session)?.json()?;
        let upload_url = session["uploadUrl"].as_str().ok_or_else(|| {
            Error::upstream(200, "Graph made an upload session without an uploadUrl")
        })?;
        let chunk = input
            .chunk_kib
            .map(|k| k * 1024)
            .unwrap_or(DEFAULT_CHUNK_UNITS * CHUNK_UNIT);
        if !chunk.is_multiple_of(CHUNK_UNIT) {
            return Err(Error::invalid_input("chunk_kib must be a multiple of 320"));
        }
        let done = upload_session(upload_url, &input.file_path, size, chunk)?;
        log::info(&format!("uploaded {size} bytes in {} chunks", done.chunks));
        output(&done.body, size, "upload_session", done.chunks)
    }
}

flow8_sdk::export_module!(OneDriveUpload);
