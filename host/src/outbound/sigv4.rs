//! AWS Signature Version 4 for S3 requests, with the `aws-sigv4` crate: the host signs,
//! so the secret key never leaves it. Payloads are signed by their SHA-256
//! (`x-amz-content-sha256`), which files get by streaming, never by buffering.

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use sha2::{Digest, Sha256};
use std::time::SystemTime;

/// SHA-256 of bytes, hex (the payload hash SigV4 signs).
pub fn payload_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// SHA-256 of a file, read in chunks.
pub async fn file_hash(file: &mut tokio::fs::File) -> std::io::Result<(String, u64)> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    file.seek(std::io::SeekFrom::Start(0)).await?;
    Ok((hex::encode(h.finalize()), total))
}

/// Who signs, for which region and service.
pub struct SigningKey<'a> {
    /// AWS region.
    pub region: &'a str,
    /// Service name (`s3`).
    pub service: &'a str,
    /// Access key id.
    pub access_key_id: &'a str,
    /// Secret access key.
    pub secret_access_key: &'a str,
}

/// Sign a request in place: adds `authorization`, `x-amz-date` and
/// `x-amz-content-sha256` to `headers`.
pub fn sign_request(
    key: &SigningKey<'_>,
    method: &http::Method,
    url: &url::Url,
    headers: &mut http::HeaderMap,
    payload_sha256: &str,
) -> Result<(), String> {
    let (region, service) = (key.region, key.service);
    let identity = Credentials::new(
        key.access_key_id,
        key.secret_access_key,
        None,
        None,
        "flow8-component",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    // S3 signs the path as sent: no normalisation, single encoding.
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .map_err(|e| format!("signing parameters: {e}"))?
        .into();
    let header_pairs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_string(), v.to_string()))
        })
        .collect();
    let signable = SignableRequest::new(
        method.as_str(),
        url.as_str(),
        header_pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Precomputed(payload_sha256.to_string()),
    )
    .map_err(|e| format!("request cannot be signed: {e}"))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| format!("signing failed: {e}"))?
        .into_parts();
    let mut shadow = http::Request::builder()
        .method(method.clone())
        .uri(url.as_str())
        .body(())
        .map_err(|e| format!("request cannot be signed: {e}"))?;
    instructions.apply_to_request_http1x(&mut shadow);
    for (k, v) in shadow.headers() {
        let mut v = v.clone();
        if k == http::header::AUTHORIZATION {
            v.set_sensitive(true);
        }
        headers.insert(k.clone(), v);
    }
    Ok(())
}
