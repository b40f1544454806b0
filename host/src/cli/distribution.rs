//! `flow8-host modules keygen|sign|push|pull`: make a signing key, sign a module, and
//! move modules through OCI registries (see `crate::distribution`). Registry passwords
//! come from `FLOW8_OCI_PASSWORD` or the config file's `oci.registries`, never a flag
//! (a flag shows in the process list); private keys only ever live in their key file.

use super::{fail, print_json};
use crate::app::HostSettings;
use crate::distribution::oci::{self, ModuleArtifact, OciRef, RegistryAccess};
use crate::distribution::signature::{ModuleSignature, PrivateKey};
use crate::error::ErrorName;
use crate::runtime::module::digest;
use crate::runtime::registry::ModuleRegistry;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// `modules keygen` arguments.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the private key (mode 0600; never over an existing file); the
    /// public key goes to `<OUT>.pub`.
    #[arg(long)]
    pub out: PathBuf,
}

/// `modules sign` arguments.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The `.wasm` to sign.
    pub module: PathBuf,
    /// The private key file (`modules keygen`).
    #[arg(long)]
    pub key: PathBuf,
    /// Where to write the signature (default: `<module>.sig`, beside the module).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// How to reach a registry from the command line.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Plain HTTP (a registry on loopback); also set per registry by `oci.registries`.
    #[arg(long)]
    pub insecure: bool,
    /// Basic-auth user; the password is read from `FLOW8_OCI_PASSWORD`.
    #[arg(long, env = "FLOW8_OCI_USERNAME")]
    pub username: Option<String>,
}

/// `modules push` arguments.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The module: a `.wasm` path, a name or `name@version`.
    pub module: String,
    /// Where: `oci://registry/namespace/name:tag`.
    pub reference: String,
    /// The signature to push with it (default: `<module>.sig` when that file exists).
    #[arg(long)]
    pub signature: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `modules pull` arguments.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// `oci://registry/namespace/name:tag` or `...@sha256:<manifest digest>`.
    pub reference: String,
    /// A directory to write `<name>-<version>.wasm` (and `.wasm.sig`) into.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub(super) fn keygen(args: &KeygenArgs) -> ExitCode {
    let key = PrivateKey::generate();
    if let Err(e) = key.write(&args.out) {
        return fail(
            ErrorName::IoError,
            format!("cannot write `{}`: {e}", args.out.display()),
        );
    }
    let public = key.public();
    print_json(&serde_json::json!({
        "key_file": args.out.display().to_string(),
        "public_key_file": format!("{}.pub", args.out.display()),
        "public_key": public.encode(),
        "key_id": public.id(),
    }));
    ExitCode::SUCCESS
}

fn sig_path(module: &Path) -> PathBuf {
    let mut p = module.as_os_str().to_owned();
    p.push(".sig");
    PathBuf::from(p)
}

pub(super) fn sign(args: &SignArgs) -> ExitCode {
    let key = match PrivateKey::read(&args.key) {
        Ok(k) => k,
        Err(e) => return fail(ErrorName::InvalidInput, e),
    };
    let bytes = match std::fs::read(&args.module) {
        Ok(b) => b,
        Err(e) => {
            return fail(
                ErrorName::IoError,
                format!("cannot read `{}`: {e}", args.module.display()),
            );
        }
    };
    let d = digest(&bytes);
    let sig = key.sign(&d);
    let out = args.out.clone().unwrap_or_else(|| sig_path(&args.module));
    if let Err(e) = std::fs::write(&out, sig.to_json() + "\n") {
        return fail(
            ErrorName::IoError,
            format!("cannot write `{}`: {e}", out.display()),
        );
    }
    print_json(&serde_json::json!({
        "digest": format!("sha256:{d}"),
        "key_id": key.public().id(),
        "signature_file": out.display().to_string(),
    }));
    ExitCode::SUCCESS
}

/// The access for a reference: the config's entry for its registry, then the flags.
fn access(
    settings: &HostSettings,
    reference: &OciRef,
    args: &RegistryArgs,
) -> Result<RegistryAccess, (ErrorName, String)> {
    let configured = settings
        .config
        .oci
        .registries
        .iter()
        .find(|r| r.host.eq_ignore_ascii_case(reference.registry()));
    let mut access = RegistryAccess {
        insecure: args.insecure || configured.is_some_and(|r| r.insecure),
        basic: configured.and_then(|r| r.username.clone().zip(r.password.clone())),
    };
    if let Some(user) = &args.username {
        let password = std::env::var("FLOW8_OCI_PASSWORD").map_err(|_| {
            (
                ErrorName::InvalidInput,
                "--username needs the password in FLOW8_OCI_PASSWORD".to_string(),
            )
        })?;
        access.basic = Some((user.clone(), crate::vault::Secret::new(password)));
    }
    Ok(access)
}

/// What `push` and `pull` both start from: the parsed reference, the access to its
/// registry (config, then flags) and this host's module registry; or the exit a failure
/// of any of them ends the command with.
fn prepare(
    settings: &HostSettings,
    reference: &str,
    args: &RegistryArgs,
) -> Result<(OciRef, RegistryAccess, Arc<ModuleRegistry>), ExitCode> {
    let reference = OciRef::parse(reference).map_err(|e| fail(e.name(), e))?;
    let access = access(settings, &reference, args).map_err(|(n, m)| fail(n, m))?;
    let registry = settings.build_modules().map_err(|e| fail(e.name(), e))?;
    Ok((reference, access, registry))
}

pub(super) async fn push(settings: &HostSettings, args: &PushArgs) -> ExitCode {
    let (reference, access, registry) = match prepare(settings, &args.reference, &args.registry) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    // Load it first: only a module this host would run is pushed, and its manifest
    // and imports describe the artifact.
    let module = match registry.resolve(&args.module).await {
        Ok(m) => m,
        Err(e) => return fail(e.name, e.message),
    };
    let path = if args.module.ends_with(".wasm") || args.module.contains('/') {
        Some(PathBuf::from(&args.module))
    } else {
        None
    };
    let bytes = match &path {
        Some(p) => std::fs::read(p),
        None => match registry
            .scan()
            .await
            .into_iter()
            .find(|e| e.module.as_ref().is_ok_and(|m| m.digest == module.digest))
        {
            Some(e) => std::fs::read(&e.path),
            None => Err(std::io::Error::other("the module's file is gone")),
        },
    };
    let bytes = match bytes {
        Ok(b) if digest(&b) == module.digest => b,
        Ok(_) => {
            return fail(
                ErrorName::IoError,
                "the module's file changed while it was read",
            );
        }
        Err(e) => return fail(ErrorName::IoError, e),
    };
    let sig_file = args
        .signature
        .clone()
        .or_else(|| path.as_deref().map(sig_path).filter(|p| p.is_file()));
    let signature = match &sig_file {
        None => None,
        Some(f) => {
            let parsed = std::fs::read(f)
                .map_err(|e| (ErrorName::IoError, format!("`{}`: {e}", f.display())))
                .and_then(|b| ModuleSignature::parse(&b).map_err(|e| (e.name(), e.to_string())))
                .and_then(|s| {
                    // A signature for other bytes would only be refused at the far end.
                    s.verify(&module.digest)
                        .map(|_| s)
                        .map_err(|e| (e.name(), format!("`{}`: {e}", f.display())))
                });
            match parsed {
                Ok(s) => Some(s),
                Err((n, m)) => return fail(n, m),
            }
        }
    };
    let artifact = ModuleArtifact {
        bytes: &bytes,
        name: &module.manifest.name,
        version: &module.manifest.version,
        description: &module.manifest.description,
        manifest_json: serde_json::to_string(&module.manifest).unwrap_or_default(),
        imports: module.imported_host_interfaces(),
        exports: module.exported_interfaces(),
    };
    match oci::push(&reference, &artifact, signature.as_ref(), &access).await {
        Ok(p) => {
            print_json(&serde_json::json!({
                "reference": reference.to_string(),
                "pinned": p.pinned,
                "manifest_digest": p.manifest_digest,
                "digest": format!("sha256:{}", module.digest),
                "name": module.manifest.name,
                "version": module.manifest.version,
                "signature_tag": p.signature_tag,
            }));
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.name(), e),
    }
}

pub(super) async fn pull(settings: &HostSettings, company: &str, args: &PullArgs) -> ExitCode {
    let (reference, access, registry) = match prepare(settings, &args.reference, &args.registry) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    let pulled = match oci::pull(&reference, &access, settings.config.max_module_bytes).await {
        Ok(p) => p,
        Err(e) => return fail(e.name(), e),
    };
    let module = match registry.load_bytes(&pulled.bytes).await {
        Ok(m) => m,
        Err(e) => return fail(e.name, e.message),
    };
    // The same check an install makes, for the company of `--company`: a signature
    // that does not match is never written to disk beside the module.
    let signed = match registry.signature_policy().check(
        company,
        &module.digest,
        pulled.signature.as_deref(),
    ) {
        Ok(s) => s,
        Err(e) => return fail(e.name(), e),
    };
    let file = args.out.join(format!(
        "{}-{}.wasm",
        module.manifest.name, module.manifest.version
    ));
    if let Err(e) = std::fs::create_dir_all(&args.out)
        .and_then(|()| std::fs::write(&file, &pulled.bytes))
        .and_then(|()| match &pulled.signature {
            Some(s) => std::fs::write(sig_path(&file), s),
            None => Ok(()),
        })
    {
        return fail(
            ErrorName::IoError,
            format!("cannot write `{}`: {e}", file.display()),
        );
    }
    print_json(&serde_json::json!({
        "path": file.display().to_string(),
        "name": module.manifest.name,
        "version": module.manifest.version,
        "digest": format!("sha256:{}", module.digest),
        "manifest_digest": pulled.manifest_digest,
        "signed_by": signed.signed_by,
        "signature_trusted": signed.trusted,
    }));
    ExitCode::SUCCESS
}
