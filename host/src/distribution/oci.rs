//! Modules in OCI registries, in the layout other Wasm hosts use (the CNCF "Wasm OCI
//! artifact", as `wkg` and wasmCloud publish it): an image manifest whose config has
//! media type `application/vnd.wasm.config.v0+json` (`architecture: wasm`, `os:
//! wasip2`, the layer digests, the component's imports and exports) and exactly one
//! layer, `application/wasm`, the component's bytes. So `wkg oci pull`, `oras pull` or
//! any other host can fetch a flow8 module, and flow8 can fetch theirs.
//!
//! flow8's manifest needs no layer of its own: it is inside the component (its
//! `manifest` export) and the host always reads it from there. A copy goes into the
//! image manifest's annotations (`dev.flow8.module.manifest`, beside the standard
//! `org.opencontainers.image.title|version|description`) for registry browsers only;
//! nothing trusts it.
//!
//! A signature (see `signature`) is pushed as its own small artifact in the same
//! repository, tagged `sha256-<module digest>.sig` (the tag scheme OCI 1.1 gives
//! registries without the referrers API, and the one cosign uses), with the module's
//! image manifest as its `subject`, so registries that have the referrers API list it
//! there too. A pull fetches it when it exists.
//!
//! Everything pulled is checked: the manifest against a pinned `@sha256:` digest, the
//! layer's size against the host's module limit before it is read, its bytes against its
//! digest (which is the host's module digest: SHA-256 of the bytes).

use super::signature::{MAX_SIGNATURE_BYTES, ModuleSignature};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The Wasm OCI artifact's config media type.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The Wasm OCI artifact's layer media type.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// The signature artifact's layer media type.
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.flow8.module.signature.v1+json";
/// The signature artifact's type (OCI 1.1 `artifactType`).
pub const SIGNATURE_ARTIFACT_TYPE: &str = "application/vnd.flow8.module.signature.v1";
/// The OCI empty descriptor's media type (the signature artifact's config).
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The annotation that carries a copy of the flow8 manifest.
pub const MANIFEST_ANNOTATION: &str = "dev.flow8.module.manifest";

/// Why a push or pull failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The reference does not parse.
    #[error("{0}")]
    BadReference(String),
    /// Authentication was refused.
    #[error("the registry refused the credentials (or asks for some): {0}")]
    Unauthorized(String),
    /// The reference names nothing.
    #[error("the registry has no `{0}`")]
    NotFound(String),
    /// What the reference names is not a Wasm component artifact, or breaks a limit.
    #[error("`{reference}` is not a flow8 module artifact: {reason}")]
    NotAModule {
        /// The reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// The manifest or layer bytes do not match their digest.
    #[error("the registry's answer does not match its digest: {0}")]
    DigestMismatch(String),
    /// Anything else the registry or the network did.
    #[error("{0}")]
    Registry(String),
}

impl OciError {
    /// The error name this failure answers with.
    pub fn name(&self) -> crate::error::ErrorName {
        use crate::error::ErrorName;
        match self {
            OciError::BadReference(_) => ErrorName::InvalidInput,
            OciError::NotFound(_) => ErrorName::ModuleNotFound,
            OciError::NotAModule { .. } => ErrorName::InvalidModule,
            OciError::DigestMismatch(_) => ErrorName::DigestMismatch,
            OciError::Unauthorized(_) | OciError::Registry(_) => ErrorName::RegistryError,
        }
    }

    fn from_client(e: OciDistributionError, what: &str) -> OciError {
        match e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => {
                OciError::Unauthorized(what.to_string())
            }
            OciDistributionError::DigestError(d) => OciError::DigestMismatch(d.to_string()),
            OciDistributionError::ImageManifestNotFoundError(_) => {
                OciError::NotFound(what.to_string())
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<_> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::BlobUnknown
                    )
                }) {
                    OciError::NotFound(what.to_string())
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    OciError::Unauthorized(what.to_string())
                } else {
                    OciError::Registry(format!("{what}: {envelope}"))
                }
            }
            OciDistributionError::ServerError { code: 404, .. } => {
                OciError::NotFound(what.to_string())
            }
            OciDistributionError::ServerError { code: 401, .. } => {
                OciError::Unauthorized(what.to_string())
            }
            // reqwest's message names the URL (never credentials: they go in a header).
            other => OciError::Registry(format!("{what}: {other}")),
        }
    }
}

/// `host` or `host:port` as a registry is written: refuses schemes, paths, userinfo.
pub fn check_registry_host(host: &str) -> Result<(), String> {
    if host.is_empty()
        || host.len() > 253
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    {
        return Err(format!(
            "`{host}` is not a registry host (`host` or `host:port`, no scheme or path)"
        ));
    }
    Ok(())
}

/// A parsed `oci://registry/repository[:tag][@sha256:...]` reference.
#[derive(Debug, Clone)]
pub struct OciRef(Reference);

impl OciRef {
    /// Parse a reference; `oci://` is optional. The registry must be explicit (no
    /// Docker Hub default): `registry.example.com/ns/name:1.0.0`.
    pub fn parse(text: &str) -> Result<OciRef, OciError> {
        let bare = text.strip_prefix("oci://").unwrap_or(text);
        let bad = |why: &str| {
            OciError::BadReference(format!(
                "`{text}` is not an OCI reference ({why}); write oci://registry/namespace/name:tag or ...@sha256:<64 hex>"
            ))
        };
        if bare.len() > 1024 || bare.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("too long, or has spaces"));
        }
        let (registry, rest) = bare.split_once('/').ok_or_else(|| bad("no registry"))?;
        if rest.is_empty() {
            return Err(bad("no repository"));
        }
        check_registry_host(registry).map_err(|e| bad(&e))?;
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(bad("the first part must be a registry host"));
        }
        // The parser reads a bare repository as `:latest`; a module reference names
        // its tag or digest, so what it runs does not change under it unseen.
        let last = rest.rsplit('/').next().unwrap_or(rest);
        if !rest.contains('@') && !last.contains(':') {
            return Err(bad("no tag or digest"));
        }
        let r: Reference = bare.parse().map_err(|e| bad(&format!("{e}")))?;
        if r.tag().is_none() && r.digest().is_none() {
            return Err(bad("no tag or digest"));
        }
        if let Some(d) = r.digest()
            && !is_sha256(d)
        {
            return Err(bad("a digest is sha256:<64 lowercase hex>"));
        }
        Ok(OciRef(r))
    }

    /// `host[:port]`.
    pub fn registry(&self) -> &str {
        self.0.resolve_registry()
    }

    /// The pinned manifest digest, if any.
    pub fn digest(&self) -> Option<&str> {
        self.0.digest()
    }

    /// This repository pinned to a manifest digest: `oci://registry/repo@sha256:...`.
    pub fn pinned(&self, manifest_digest: &str) -> String {
        format!(
            "oci://{}/{}@{manifest_digest}",
            self.0.registry(),
            self.0.repository()
        )
    }

    /// The same repository at another tag.
    fn with_tag(&self, tag: &str) -> Reference {
        Reference::with_tag(
            self.0.registry().to_string(),
            self.0.repository().to_string(),
            tag.to_string(),
        )
    }
}

impl std::fmt::Display for OciRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "oci://{}", self.0.whole())
    }
}

fn is_sha256(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// How to reach one registry: over plain HTTP or not, and with which credentials.
#[derive(Clone, Default)]
pub struct RegistryAccess {
    /// Plain HTTP (a loopback registry).
    pub insecure: bool,
    /// Basic-auth user and password.
    pub basic: Option<(String, crate::vault::Secret)>,
}

impl std::fmt::Debug for RegistryAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAccess")
            .field("insecure", &self.insecure)
            .field("user", &self.basic.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl RegistryAccess {
    fn client(&self, registry: &str) -> Client {
        Client::new(ClientConfig {
            protocol: if self.insecure {
                ClientProtocol::HttpsExcept(vec![registry.to_string()])
            } else {
                ClientProtocol::Https
            },
            // One module, one layer: nothing to parallelise, and a slow registry must
            // not hold a request forever.
            max_concurrent_upload: 1,
            max_concurrent_download: 1,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            user_agent: concat!("flow8-host/", env!("CARGO_PKG_VERSION")),
            // An image index is a container thing: a module artifact is one manifest.
            platform_resolver: None,
            ..ClientConfig::default()
        })
    }

    fn auth(&self) -> RegistryAuth {
        match &self.basic {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.expose().to_string()),
            None => RegistryAuth::Anonymous,
        }
    }
}

/// What a push left in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The reference pushed, pinned: `oci://registry/repo@sha256:<manifest digest>`.
    pub pinned: String,
    /// The image manifest's digest.
    pub manifest_digest: String,
    /// The signature's tag, when one was pushed.
    pub signature_tag: Option<String>,
}

/// What a pull brought.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The component.
    pub bytes: Vec<u8>,
    /// The image manifest's digest.
    pub manifest_digest: String,
    /// The module's signature document, when the registry has one for these bytes.
    pub signature: Option<String>,
}

/// The module a push describes (from the loaded module, so nothing is guessed).
#[derive(Debug, Clone)]
pub struct ModuleArtifact<'a> {
    /// The component's bytes.
    pub bytes: &'a [u8],
    /// Its manifest's name, version, description and JSON.
    pub name: &'a str,
    /// The version.
    pub version: &'a str,
    /// The description.
    pub description: &'a str,
    /// The flow8 manifest, JSON (an annotation, for registry browsers).
    pub manifest_json: String,
    /// The component's imports and exports (the Wasm OCI config's `component`).
    pub imports: Vec<String>,
    /// Its exports.
    pub exports: Vec<String>,
}

fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::runtime::module::digest(bytes))
}

fn now_rfc3339() -> String {
    crate::store::now()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The signature tag for a module digest (hex).
pub fn signature_tag(digest_hex: &str) -> String {
    format!("sha256-{digest_hex}.sig")
}

/// Push a module (and its signature, if given) to `reference` (a tag).
pub async fn push(
    reference: &OciRef,
    module: &ModuleArtifact<'_>,
    signature: Option<&ModuleSignature>,
    access: &RegistryAccess,
) -> Result<Pushed, OciError> {
    if reference.digest().is_some() {
        return Err(OciError::BadReference(
            "push to a tag (oci://registry/repo:tag), not a digest".into(),
        ));
    }
    let client = access.client(reference.registry());
    let auth = access.auth();
    let layer_digest = sha256_of(module.bytes);
    let config = serde_json::json!({
        "created": now_rfc3339(),
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer_digest],
        "component": {"imports": module.imports, "exports": module.exports, "target": null},
    });
    let config = Config::new(
        serde_json::to_vec(&config).unwrap_or_default(),
        WASM_CONFIG_MEDIA_TYPE.to_string(),
        None,
    );
    let layer = ImageLayer::new(
        module.bytes.to_vec(),
        WASM_LAYER_MEDIA_TYPE.to_string(),
        None,
    );
    let mut annotations = BTreeMap::new();
    annotations.insert(
        "org.opencontainers.image.title".to_string(),
        module.name.to_string(),
    );
    annotations.insert(
        "org.opencontainers.image.version".to_string(),
        module.version.to_string(),
    );
    annotations.insert(
        "org.opencontainers.image.description".to_string(),
        module.description.to_string(),
    );
    annotations.insert(
        "org.opencontainers.image.created".to_string(),
        now_rfc3339(),
    );
    annotations.insert(
        MANIFEST_ANNOTATION.to_string(),
        module.manifest_json.clone(),
    );
    let layers = [layer];
    let manifest = OciImageManifest::build(&layers, &config, Some(annotations));
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap_or_default();
    let manifest_digest = sha256_of(&manifest_bytes);
    let what = reference.to_string();
    client
        .push(&reference.0, &layers, config, &auth, Some(manifest.clone()))
        .await
        .map_err(|e| OciError::from_client(e, &what))?;
    // The digest the registry will serve: ask rather than trust our own serialisation.
    let manifest_digest = client
        .fetch_manifest_digest(&reference.0, &auth)
        .await
        .unwrap_or(manifest_digest);
    let mut signature_tag_pushed = None;
    if let Some(sig) = signature {
        let digest_hex = crate::runtime::module::digest(module.bytes);
        let tag = signature_tag(&digest_hex);
        let sig_ref = reference.with_tag(&tag);
        let sig_bytes = sig.to_json().into_bytes();
        let empty = Config::new(b"{}".to_vec(), EMPTY_MEDIA_TYPE.to_string(), None);
        let sig_layers = [ImageLayer::new(
            sig_bytes,
            SIGNATURE_MEDIA_TYPE.to_string(),
            None,
        )];
        let mut sig_manifest = OciImageManifest::build(&sig_layers, &empty, None);
        sig_manifest.artifact_type = Some(SIGNATURE_ARTIFACT_TYPE.to_string());
        sig_manifest.subject = Some(OciDescriptor {
            media_type: oci_client::manifest::OCI_IMAGE_MEDIA_TYPE.to_string(),
            digest: manifest_digest.clone(),
            size: manifest_bytes.len() as i64,
            urls: None,
            annotations: None,
        });
        client
            .push(&sig_ref, &sig_layers, empty, &auth, Some(sig_manifest))
            .await
            .map_err(|e| OciError::from_client(e, &format!("{what} (signature)")))?;
        signature_tag_pushed = Some(tag);
    }
    Ok(Pushed {
        pinned: reference.pinned(&manifest_digest),
        manifest_digest,
        signature_tag: signature_tag_pushed,
    })
}

/// A writer that keeps at most `max` bytes and fails past them (a registry that sends
/// more than the manifest said, or more than the host accepts, stops the read there).
struct Bounded {
    buf: Vec<u8>,
    max: usize,
}

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.buf.len().saturating_add(data.len()) > self.max {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "more than {} bytes",
                self.max
            ))));
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

async fn pull_bounded(
    client: &Client,
    reference: &Reference,
    layer: &OciDescriptor,
    max: usize,
    what: &str,
) -> Result<Vec<u8>, OciError> {
    let size = usize::try_from(layer.size).unwrap_or(usize::MAX);
    if size > max {
        return Err(OciError::NotAModule {
            reference: what.to_string(),
            reason: format!(
                "its layer is {} bytes; at most {max} are accepted",
                layer.size
            ),
        });
    }
    let mut out = Bounded {
        buf: Vec::with_capacity(size),
        max: size,
    };
    client
        .pull_blob(reference, layer, &mut out)
        .await
        .map_err(|e| OciError::from_client(e, what))?;
    // pull_blob checked the bytes against the layer's digest; the size too, here.
    if out.buf.len() != size {
        return Err(OciError::DigestMismatch(format!(
            "{what}: the layer is {} bytes, its descriptor says {size}",
            out.buf.len()
        )));
    }
    Ok(out.buf)
}

/// Pull a module (and its signature, when the registry has one) from `reference`.
pub async fn pull(
    reference: &OciRef,
    access: &RegistryAccess,
    max_module_bytes: usize,
) -> Result<Pulled, OciError> {
    let client = access.client(reference.registry());
    let auth = access.auth();
    let what = reference.to_string();
    // Checks the manifest against a pinned digest (oci-client compares the body's
    // SHA-256 with the reference's digest and the registry's header).
    let (manifest, manifest_digest) = client
        .pull_image_manifest(&reference.0, &auth)
        .await
        .map_err(|e| OciError::from_client(e, &what))?;
    if let Some(pinned) = reference.digest()
        && pinned != manifest_digest
    {
        return Err(OciError::DigestMismatch(format!(
            "{what}: the registry served manifest {manifest_digest}"
        )));
    }
    let not_module = |reason: String| OciError::NotAModule {
        reference: what.clone(),
        reason,
    };
    if manifest.config.media_type != WASM_CONFIG_MEDIA_TYPE {
        return Err(not_module(format!(
            "its config is `{}`, not `{WASM_CONFIG_MEDIA_TYPE}`",
            manifest.config.media_type
        )));
    }
    let wasm: Vec<&OciDescriptor> = manifest
        .layers
        .iter()
        .filter(|l| l.media_type == WASM_LAYER_MEDIA_TYPE)
        .collect();
    let [layer] = wasm.as_slice() else {
        return Err(not_module(format!(
            "it has {} `{WASM_LAYER_MEDIA_TYPE}` layers; a module has exactly one",
            wasm.len()
        )));
    };
    if !is_sha256(&layer.digest) {
        return Err(not_module("its layer's digest is not sha256".into()));
    }
    let bytes = pull_bounded(&client, &reference.0, layer, max_module_bytes, &what).await?;
    let digest_hex = layer.digest.trim_start_matches("sha256:");
    let signature = pull_signature(&client, &auth, reference, digest_hex).await?;
    Ok(Pulled {
        bytes,
        manifest_digest,
        signature,
    })
}

/// The signature tagged for a module digest, if the repository has one.
async fn pull_signature(
    client: &Client,
    auth: &RegistryAuth,
    reference: &OciRef,
    digest_hex: &str,
) -> Result<Option<String>, OciError> {
    let sig_ref = reference.with_tag(&signature_tag(digest_hex));
    let what = format!("oci://{}", sig_ref.whole());
    let manifest = match client.pull_image_manifest(&sig_ref, auth).await {
        Ok((m, _)) => m,
        Err(e) => {
            return match OciError::from_client(e, &what) {
                OciError::NotFound(_) => Ok(None),
                other => Err(other),
            };
        }
    };
    let Some(layer) = manifest
        .layers
        .iter()
        .find(|l| l.media_type == SIGNATURE_MEDIA_TYPE)
    else {
        return Err(OciError::NotAModule {
            reference: what,
            reason: format!("the signature tag holds no `{SIGNATURE_MEDIA_TYPE}` layer"),
        });
    };
    let bytes = pull_bounded(client, &sig_ref, layer, MAX_SIGNATURE_BYTES, &what).await?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| OciError::NotAModule {
            reference: what,
            reason: "the signature is not UTF-8".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_need_a_registry_and_a_tag_or_sha256_digest() {
        let r = OciRef::parse("oci://127.0.0.1:5000/flow8/echo:1.0.0").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.to_string(), "oci://127.0.0.1:5000/flow8/echo:1.0.0");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = OciRef::parse(&format!("oci://ghcr.io/acme/m@{d}")).unwrap();
        assert_eq!(r.digest(), Some(d.as_str()));
        for bad in [
            "oci://echo:1.0.0",
            "oci://flow8/echo:1.0.0",
            "oci://ghcr.io/acme/m",
            "oci://ghcr.io/",
            "oci://ghcr.io/acme/m@sha256:abc",
            "oci://user:pw@ghcr.io/acme/m:1",
            "oci://ghcr.io/acme/m:1 x",
            "",
        ] {
            assert!(
                matches!(OciRef::parse(bad), Err(OciError::BadReference(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn registry_hosts_are_host_and_port_only() {
        assert!(check_registry_host("127.0.0.1:5000").is_ok());
        assert!(check_registry_host("ghcr.io").is_ok());
        assert!(check_registry_host("https://ghcr.io").is_err());
        assert!(check_registry_host("ghcr.io/x").is_err());
        assert!(check_registry_host("").is_err());
    }
}
