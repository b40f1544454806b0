//! Object storage through a bound S3 component: the host signs the requests and
//! streams the file from the workspace (multipart above a threshold), so neither the
//! secret key nor the file's bytes pass through the module.

use crate::__private::bindings::flow8::integration::object_storage as wit;
use crate::Error;

/// An upload.
#[derive(Debug, Clone, Default)]
pub struct PutObject {
    /// The S3 component binding.
    pub credential: String,
    /// Bucket (the component's when `None`).
    pub bucket: Option<String>,
    /// Object key.
    pub key: String,
    /// Workspace path of the file.
    pub file_path: String,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// Canned ACL.
    pub acl: Option<String>,
}

/// What S3 answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutObjectResult {
    /// ETag.
    pub etag: String,
    /// Version id (versioned buckets).
    pub version_id: Option<String>,
    /// Object URL.
    pub url: String,
    /// Bytes uploaded.
    pub size: u64,
    /// Parts (0 for a single PUT).
    pub parts: u32,
}

/// Upload a workspace file.
pub fn put_object(req: &PutObject) -> Result<PutObjectResult, Error> {
    let r = wit::put_object(&wit::PutObjectRequest {
        credential: req.credential.clone(),
        bucket: req.bucket.clone(),
        key: req.key.clone(),
        file_path: req.file_path.clone(),
        content_type: req.content_type.clone(),
        acl: req.acl.clone(),
    })
    .map_err(Error::from_wit)?;
    Ok(PutObjectResult {
        etag: r.etag,
        version_id: r.version_id,
        url: r.url,
        size: r.size,
        parts: r.parts,
    })
}
