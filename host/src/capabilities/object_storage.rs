//! `flow8:integration/object-storage`: S3 uploads done by the host. The module names a
//! bound S3 component, a bucket and key, and a workspace file; the host builds the
//! object URL, asks the step policy the same destination question as `http` (manifest
//! hosts, credential pinning, taint) and whether the component names that bucket (it
//! signs for no other), signs each request with SigV4 and streams the file:
//! one PUT up to `MULTIPART_THRESHOLD`, a multipart upload of `PART_SIZE` parts above
//! it (so memory stays at one part whatever the file size).

use crate::outbound::{OutboundBody, OutboundRequest, OutboundResponse, origin, sigv4};
use crate::runtime::bindings::flow8::integration::object_storage::{
    Host, PutObjectRequest, PutObjectResult,
};
use crate::runtime::bindings::{GuestError, RateLimit, UpstreamError};
use crate::runtime::grants::Attach;
use crate::runtime::policy::BindingUse;
use crate::runtime::sandbox::{CredentialUse, StepState};
use tokio::io::AsyncReadExt;

/// Files up to this size go in one PUT.
pub const MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
/// Part size of multipart uploads (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 8 * 1024 * 1024;

impl Host for StepState {
    async fn put_object(
        &mut self,
        request: PutObjectRequest,
    ) -> wasmtime::Result<Result<PutObjectResult, GuestError>> {
        Ok(self.put_object_checked(request).await)
    }
}

struct Signer {
    /// The binding, for the step policy's look at each answer.
    binding: String,
    region: String,
    service: String,
    access_key_id: String,
    secret_access_key: String,
}

/// The text of the first `<tag>...</tag>` in an S3 XML answer.
fn xml_tag<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&close)? + start;
    Some(&xml[start..end])
}

/// S3's error answer as a named error (AWS S3 API reference, "Error responses").
fn s3_error(resp: &OutboundResponse) -> GuestError {
    let text = String::from_utf8_lossy(&resp.body);
    let code = xml_tag(&text, "Code").unwrap_or("").to_string();
    let message = xml_tag(&text, "Message").unwrap_or("").to_string();
    let detail = format!("S3 answered {} {code}: {message}", resp.status);
    match code.as_str() {
        "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccountProblem" => {
            GuestError::AccessDenied(detail)
        }
        "NoSuchBucket" | "NoSuchKey" | "InvalidBucketName" | "KeyTooLongError"
        | "InvalidArgument" | "EntityTooLarge" => GuestError::InvalidInput(detail),
        "SlowDown" | "RequestLimitExceeded" | "TooManyRequests" => {
            GuestError::RateLimitExceeded(RateLimit {
                message: detail,
                retry_after_seconds: resp
                    .headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                    .and_then(|(_, v)| v.parse().ok()),
            })
        }
        _ => GuestError::Upstream(UpstreamError {
            status: resp.status,
            message: if code.is_empty() { detail } else { code },
        }),
    }
}

fn header<'a>(resp: &'a OutboundResponse, name: &str) -> Option<&'a str> {
    resp.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !b.starts_with(['-', '.'])
        && !b.ends_with(['-', '.'])
}

impl StepState {
    async fn s3_send(
        &mut self,
        signer: &Signer,
        method: http::Method,
        url: url::Url,
        mut headers: http::HeaderMap,
        body: OutboundBody,
        payload_hash: &str,
    ) -> Result<OutboundResponse, GuestError> {
        self.count_request()?;
        let timeout = self.request_timeout(None)?;
        let key = sigv4::SigningKey {
            region: &signer.region,
            service: &signer.service,
            access_key_id: &signer.access_key_id,
            secret_access_key: &signer.secret_access_key,
        };
        sigv4::sign_request(&key, &method, &url, &mut headers, payload_hash)
            .map_err(GuestError::Internal)?;
        let resp = self
            .send_outbound(OutboundRequest {
                method,
                url,
                headers,
                body,
                timeout,
            })
            .await?;
        // What S3 answers stays with the host (the module gets an ETag or a named
        // error), but an error message can quote the request: held to the same rule.
        if self.policy.note_response(&signer.binding, &[&resp.body]) {
            self.record_workspace_taint()?;
        }
        if (200..300).contains(&resp.status) {
            Ok(resp)
        } else {
            Err(s3_error(&resp))
        }
    }

    async fn put_object_checked(
        &mut self,
        req: PutObjectRequest,
    ) -> Result<PutObjectResult, GuestError> {
        let grant = self.policy.granted(&req.credential, BindingUse::Request)?;
        let Attach::AwsSigV4 {
            region,
            service,
            access_key_id,
            secret_access_key,
        } = grant.attach.clone()
        else {
            return Err(GuestError::InvalidInput(format!(
                "credential `{}` is not an S3 component",
                req.credential
            )));
        };
        let config = grant.config.clone();
        let (resource_id, kind) = (grant.resource_id.clone(), grant.kind);
        let bucket = req
            .bucket
            .clone()
            .or_else(|| config["bucket"].as_str().map(str::to_string))
            .ok_or_else(|| {
                GuestError::InvalidInput("no bucket given, and the component names none".into())
            })?;
        if !valid_bucket(&bucket) {
            return Err(GuestError::InvalidInput(format!(
                "`{bucket}` is not a valid bucket name"
            )));
        }
        self.policy.check_bucket(&req.credential, &bucket)?;
        if req.key.is_empty() || req.key.len() > 1024 {
            return Err(GuestError::InvalidInput(
                "the object key must be 1-1024 bytes".into(),
            ));
        }
        let path_style = config["path_style"].as_bool().unwrap_or(false);
        let mut url = match config["endpoint"].as_str() {
            Some(endpoint) => url::Url::parse(endpoint).map_err(|e| {
                GuestError::Internal(format!("the component's endpoint is not a URL: {e}"))
            })?,
            None if path_style => url::Url::parse(&format!("https://s3.{region}.amazonaws.com"))
                .map_err(|e| GuestError::Internal(e.to_string()))?,
            None => url::Url::parse(&format!("https://{bucket}.s3.{region}.amazonaws.com"))
                .map_err(|e| GuestError::Internal(e.to_string()))?,
        };
        {
            let mut segs = url
                .path_segments_mut()
                .map_err(|_| GuestError::Internal("the endpoint cannot take a path".into()))?;
            segs.pop_if_empty();
            if path_style || config["endpoint"].is_string() {
                segs.push(&bucket);
            }
            segs.extend(req.key.split('/'));
        }
        self.sync_workspace_taint()?;
        self.policy.authorize(&url, Some(&req.credential))?;
        let signer = Signer {
            binding: req.credential.clone(),
            region,
            service,
            access_key_id: access_key_id.expose().to_string(),
            secret_access_key: secret_access_key.expose().to_string(),
        };
        let mut file = self.open_workspace_file(&req.file_path)?;
        let size = file
            .metadata()
            .await
            .map_err(|e| GuestError::Internal(format!("cannot read the workspace file: {e}")))?
            .len();
        self.record_use(CredentialUse {
            binding: req.credential.clone(),
            resource_id,
            kind,
            how: "attached",
            destination: Some(origin(&url)),
        });
        let mut headers = http::HeaderMap::new();
        if let Some(ct) = &req.content_type {
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_str(ct).map_err(|_| {
                    GuestError::InvalidInput("content_type is not a valid header value".into())
                })?,
            );
        }
        if let Some(acl) = &req.acl {
            let known = [
                "private",
                "public-read",
                "public-read-write",
                "authenticated-read",
                "aws-exec-read",
                "bucket-owner-read",
                "bucket-owner-full-control",
            ];
            if !known.contains(&acl.as_str()) {
                return Err(GuestError::InvalidInput(format!(
                    "`{acl}` is not a canned S3 ACL"
                )));
            }
            headers.insert(
                "x-amz-acl",
                http::HeaderValue::from_str(acl).expect("known ACLs are valid"),
            );
        }
        let read_err = |e: std::io::Error| {
            GuestError::Internal(format!("cannot read the workspace file: {e}"))
        };

        if size <= MULTIPART_THRESHOLD {
            let (hash, _) = sigv4::file_hash(&mut file).await.map_err(read_err)?;
            let resp = self
                .s3_send(
                    &signer,
                    http::Method::PUT,
                    url.clone(),
                    headers,
                    OutboundBody::File(file),
                    &hash,
                )
                .await?;
            return Ok(PutObjectResult {
                etag: header(&resp, "etag")
                    .unwrap_or("")
                    .trim_matches('"')
                    .to_string(),
                version_id: header(&resp, "x-amz-version-id").map(str::to_string),
                url: url.to_string(),
                size,
                parts: 0,
            });
        }

        // Multipart: create, upload parts one at a time, complete (abort on failure).
        let mut create_url = url.clone();
        create_url.set_query(Some("uploads"));
        let resp = self
            .s3_send(
                &signer,
                http::Method::POST,
                create_url,
                headers,
                OutboundBody::Empty,
                &sigv4::payload_hash(b""),
            )
            .await?;
        let text = String::from_utf8_lossy(&resp.body).into_owned();
        let upload_id = xml_tag(&text, "UploadId")
            .ok_or_else(|| {
                GuestError::Upstream(UpstreamError {
                    status: resp.status,
                    message: "CreateMultipartUpload answered without an UploadId".into(),
                })
            })?
            .to_string();
        let result = self
            .upload_parts(&signer, &url, &upload_id, &mut file)
            .await;
        let etags = match result {
            Ok(etags) => etags,
            Err(e) => {
                let mut abort_url = url.clone();
                abort_url
                    .query_pairs_mut()
                    .append_pair("uploadId", &upload_id);
                let _ = self
                    .s3_send(
                        &signer,
                        http::Method::DELETE,
                        abort_url,
                        http::HeaderMap::new(),
                        OutboundBody::Empty,
                        &sigv4::payload_hash(b""),
                    )
                    .await;
                return Err(e);
            }
        };
        let mut complete = String::from("<CompleteMultipartUpload>");
        for (i, etag) in etags.iter().enumerate() {
            complete.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{etag}</ETag></Part>",
                i + 1
            ));
        }
        complete.push_str("</CompleteMultipartUpload>");
        let mut complete_url = url.clone();
        complete_url
            .query_pairs_mut()
            .append_pair("uploadId", &upload_id);
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/xml"),
        );
        let hash = sigv4::payload_hash(complete.as_bytes());
        let resp = self
            .s3_send(
                &signer,
                http::Method::POST,
                complete_url,
                headers,
                OutboundBody::Bytes(complete.into_bytes()),
                &hash,
            )
            .await?;
        let text = String::from_utf8_lossy(&resp.body).into_owned();
        // S3 may answer 200 with an error document to a Complete request.
        if xml_tag(&text, "Code").is_some() {
            return Err(s3_error(&OutboundResponse {
                status: 500,
                ..resp
            }));
        }
        Ok(PutObjectResult {
            etag: xml_tag(&text, "ETag")
                .unwrap_or("")
                .replace("&quot;", "")
                .trim_matches('"')
                .to_string(),
            version_id: header(&resp, "x-amz-version-id").map(str::to_string),
            url: url.to_string(),
            size,
            parts: etags.len() as u32,
        })
    }

    async fn upload_parts(
        &mut self,
        signer: &Signer,
        url: &url::Url,
        upload_id: &str,
        file: &mut tokio::fs::File,
    ) -> Result<Vec<String>, GuestError> {
        let mut etags = Vec::new();
        let mut buf = vec![0u8; PART_SIZE];
        loop {
            let mut filled = 0;
            while filled < PART_SIZE {
                let n = file.read(&mut buf[filled..]).await.map_err(|e| {
                    GuestError::Internal(format!("cannot read the workspace file: {e}"))
                })?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            let part = buf[..filled].to_vec();
            let hash = sigv4::payload_hash(&part);
            let mut part_url = url.clone();
            part_url
                .query_pairs_mut()
                .append_pair("partNumber", &(etags.len() + 1).to_string())
                .append_pair("uploadId", upload_id);
            let resp = self
                .s3_send(
                    signer,
                    http::Method::PUT,
                    part_url,
                    http::HeaderMap::new(),
                    OutboundBody::Bytes(part),
                    &hash,
                )
                .await?;
            etags.push(header(&resp, "etag").unwrap_or("").to_string());
            if filled < PART_SIZE {
                break;
            }
        }
        Ok(etags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_errors_are_named() {
        let resp = |status, code: &str| OutboundResponse {
            status,
            headers: vec![("retry-after".into(), "2".into())],
            body: format!(
                "<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>m</Message></Error>"
            )
            .into_bytes(),
        };
        assert!(matches!(
            s3_error(&resp(403, "SignatureDoesNotMatch")),
            GuestError::AccessDenied(_)
        ));
        assert!(matches!(
            s3_error(&resp(403, "AccessDenied")),
            GuestError::AccessDenied(_)
        ));
        assert!(matches!(
            s3_error(&resp(404, "NoSuchBucket")),
            GuestError::InvalidInput(_)
        ));
        assert!(matches!(
            s3_error(&resp(503, "SlowDown")),
            GuestError::RateLimitExceeded(RateLimit {
                retry_after_seconds: Some(2),
                ..
            })
        ));
        assert!(matches!(
            s3_error(&resp(500, "InternalError")),
            GuestError::Upstream(_)
        ));
        assert!(valid_bucket("flow8-artifacts"));
        assert!(!valid_bucket("Flow8"));
        assert!(!valid_bucket("a"));
    }
}
