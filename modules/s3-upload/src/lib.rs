//! The s3-upload module (flow8's "AWS S3" usage): upload a file from the step's
//! workspace to a bucket with the bound S3 component. The host signs every request
//! (SigV4) and streams the file, so this module never sees the secret key or the bytes.

use flow8_sdk::storage::{PutObject, put_object};
use flow8_sdk::{Credential, Error, Manifest, Module, log};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default)]
    bucket: Option<String>,
    key: String,
    file_path: String,
    #[serde(default)]
    acl: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
}

#[derive(Debug, Serialize)]
struct Output {
    bucket: String,
    key: String,
    etag: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_id: Option<String>,
    url: String,
    size: u64,
    parts: u32,
}

/// A content type from the file name, for the common cases (the input can always say).
fn guess_content_type(path: &str) -> Option<&'static str> {
    let ext = path.rsplit('.').next()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "pdf" => "application/pdf",
        "json" => "application/json",
        "csv" => "text/csv",
        "txt" => "text/plain; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "xml" => "application/xml",
        "zip" => "application/zip",
        _ => return None,
    })
}

struct S3Upload;

impl Module for S3Upload {
    type Input = Input;
    type Output = Output;

    fn manifest() -> Manifest {
        Manifest::new("s3-upload", env!("CARGO_PKG_VERSION"))
            .description("Upload a workspace file to S3 or an S3-compatible store; the host signs and streams it.")
            .input_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["key", "file_path"],
                "properties": {
                    "bucket": {"type": "string", "minLength": 3, "maxLength": 63},
                    "key": {"type": "string", "minLength": 1, "maxLength": 1024},
                    "file_path": {"type": "string", "minLength": 1},
                    "acl": {"type": "string", "enum": ["private", "public-read", "public-read-write", "authenticated-read",
                                                        "aws-exec-read", "bucket-owner-read", "bucket-owner-full-control"]},
                    "content_type": {"type": "string"}
                }
            }))
            .credential(Credential::component("storage", "s3"))
            // AWS endpoints; an S3-compatible endpoint must also be allowed by the
            // component's pinning, which the host applies on top.
            .allowed_host("https://*.amazonaws.com")
            .allowed_host("https://*:*")
            .allowed_host("http://*:*")
    }

    fn execute(input: Input) -> Result<Output, Error> {
        let content_type = input
            .content_type
            .clone()
            .or_else(|| guess_content_type(&input.file_path).map(str::to_string));
        let config = flow8_sdk::credentials::config("storage")?;
        let bucket = input
            .bucket
            .clone()
            .or_else(|| config["bucket"].as_str().map(str::to_string))
            .ok_or_else(|| {
                Error::invalid_input("`bucket` is required (the component names none)")
            })?;
        log::info(&format!(
            "uploading {} to s3://{bucket}/{}",
            input.file_path, input.key
        ));
        let r = put_object(&PutObject {
            credential: "storage".into(),
            bucket: Some(bucket.clone()),
            key: input.key.clone(),
            file_path: input.file_path,
            content_type,
            acl: input.acl,
        })?;
        Ok(Output {
            bucket,
            key: input.key,
            etag: r.etag,
            version_id: r.version_id,
            url: r.url,
            size: r.size,
            parts: r.parts,
        })
    }
}

flow8_sdk::export_module!(S3Upload);
