//! The ftp-upload module (flow8's "FTP" usage): upload a file of the step's workspace
//! to an FTP server with the bound FTP component. The host logs in (explicit FTPS
//! unless the component says otherwise) and streams the file, so this module never
//! holds the password or the bytes.

use flow8_sdk::file_transfer::upload;
use flow8_sdk::{Credential, Error, Manifest, Module, log};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    file_path: String,
    remote_path: String,
    #[serde(default)]
    create_dirs: bool,
}

#[derive(Debug, Serialize)]
struct Output {
    remote_path: String,
    size: u64,
}

struct FtpUpload;

impl Module for FtpUpload {
    type Input = Input;
    type Output = Output;

    fn manifest() -> Manifest {
        Manifest::new("ftp-upload", env!("CARGO_PKG_VERSION"))
            .description(
                "Upload a workspace file to an FTP(S) server; the host logs in and streams it.",
            )
            .input_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["file_path", "remote_path"],
                "properties": {
                    "file_path": {"type": "string", "minLength": 1},
                    "remote_path": {"type": "string", "minLength": 1, "maxLength": 1024},
                    "create_dirs": {"type": "boolean"}
                }
            }))
            // The host connects to the component's own server: no HTTP hosts needed.
            .credential(Credential::component("ftp", "ftp"))
    }

    fn execute(input: Input) -> Result<Output, Error> {
        log::info(&format!(
            "uploading {} to {}",
            input.file_path, input.remote_path
        ));
        let t = upload(
            "ftp",
            &input.file_path,
            &input.remote_path,
            input.create_dirs,
        )?;
        Ok(Output {
            remote_path: t.remote_path,
            size: t.size,
        })
    }
}

flow8_sdk::export_module!(FtpUpload);
