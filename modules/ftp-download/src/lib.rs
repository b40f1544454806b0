//! The ftp-download module (flow8's "FTP" usage): download a file from an FTP server
//! into the step's workspace with the bound FTP component. The host logs in (explicit
//! FTPS unless the component says otherwise) and streams the file into the workspace,
//! so this module never holds the password or the bytes.

use flow8_sdk::file_transfer::download;
use flow8_sdk::{Credential, Error, Manifest, Module, log};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    remote_path: String,
    file_path: String,
}

#[derive(Debug, Serialize)]
struct Output {
    file_path: String,
    remote_path: String,
    size: u64,
}

struct FtpDownload;

impl Module for FtpDownload {
    type Input = Input;
    type Output = Output;

    fn manifest() -> Manifest {
        Manifest::new("ftp-download", env!("CARGO_PKG_VERSION"))
            .description("Download a file from an FTP(S) server into the workspace; the host logs in and streams it.")
            .input_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["remote_path", "file_path"],
                "properties": {
                    "remote_path": {"type": "string", "minLength": 1, "maxLength": 1024},
                    "file_path": {"type": "string", "minLength": 1}
                }
            }))
            .credential(Credential::component("ftp", "ftp"))
    }

    fn execute(input: Input) -> Result<Output, Error> {
        log::info(&format!(
            "downloading {} to {}",
            input.remote_path, input.file_path
        ));
        let t = download("ftp", &input.remote_path, &input.file_path)?;
        Ok(Output {
            file_path: t.file_path,
            remote_path: t.remote_path,
            size: t.size,
        })
    }
}

flow8_sdk::export_module!(FtpDownload);
