//! The subcommands' arguments and what they do.

use super::print_json;
use super::{Cli, Command, config, fail};
use crate::app::{Host, HostSettings};
use crate::components::{self, NewComponent};
use crate::error::ErrorName;
use crate::runtime::StepRequest;
use crate::store::{AnyStore, Store, StoreLocation};
use crate::vault::Vault;
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// `run-module` arguments.
#[derive(Debug, Args)]
pub struct RunModuleArgs {
    /// A module name (`http-request`), `name@version`, or a path to a `.wasm`.
    pub module: String,
    /// The step input: a JSON file, or `-` for standard input.
    pub input: String,
    /// Bind a credential: `BINDING=COMPONENT` (component name or id). Repeatable.
    #[arg(long = "bind", value_name = "BINDING=COMPONENT")]
    pub bind: Vec<String>,
    /// The step's workspace directory (the module sees it as `/`). Default: none.
    #[arg(long)]
    pub workspace: Option<PathBuf>,
    /// Step deadline in seconds, 0.01-3600 (default: the config file's `limits`, else 30).
    #[arg(long)]
    pub deadline_secs: Option<f64>,
    /// Memory cap in MiB, 1-1024 (default: the config file's `limits`, else 64).
    #[arg(long)]
    pub memory_mib: Option<usize>,
    /// Output cap in KiB, 1-65536 (default: the config file's `limits`, else 1024).
    #[arg(long)]
    pub output_kib: Option<usize>,
    /// Let the module reach loopback addresses (127.0.0.1, ::1): for local servers.
    #[arg(long, env = "FLOW8_ALLOW_LOOPBACK", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub allow_loopback: bool,
    /// Let the module reach private and link-local addresses.
    #[arg(long, env = "FLOW8_ALLOW_PRIVATE", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub allow_private: bool,
    /// Let SMTP and FTP components log in without TLS (a local relay, tests).
    #[arg(long, env = "FLOW8_ALLOW_PLAINTEXT_LOGIN", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub allow_plaintext_login: bool,
    /// Only these hosts (patterns like `https://*.example.com`), on top of the manifest.
    #[arg(long = "allow-host", value_name = "PATTERN")]
    pub allow_hosts: Vec<String>,
    /// Print the whole step report (status, output or error, log, duration, credentials
    /// used) as JSON instead of just the output.
    #[arg(long)]
    pub report: bool,
}

/// `modules` subcommands.
#[derive(Debug, Subcommand)]
pub enum ModulesCommand {
    /// List the modules found in the module directories.
    List {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one module's manifest and digest.
    Inspect {
        /// Name, `name@version`, or path to a `.wasm`.
        module: String,
    },
    /// Make an ed25519 signing key (private key file and `<file>.pub`).
    Keygen(super::distribution::KeygenArgs),
    /// Sign a `.wasm` (writes `<module>.sig`).
    Sign(super::distribution::SignArgs),
    /// Push a module (and its signature) to an OCI registry.
    Push(super::distribution::PushArgs),
    /// Pull a module (and its signature) from an OCI registry into a directory.
    Pull(super::distribution::PullArgs),
    /// Write a new module (manifest, source, build recipe, example input) into DIR
    /// (default: ./NAME); `just build` there makes NAME.wasm.
    New {
        /// The module's name (1-64 of a-z, 0-9, `-`, starting with a letter).
        name: String,
        /// Its language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: super::templates::Lang,
        /// Where to write it (must not exist).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The flow8-sdk a Rust module depends on (default: this repository's `sdk/`).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

/// `components` subcommands.
#[derive(Debug, Subcommand)]
pub enum ComponentsCommand {
    /// Create a component from the flow8 creation body (`{"name", "kind", "config"}`),
    /// read from a file or `-`. Prints the summary (never a credential).
    Create {
        /// JSON file or `-`.
        body: String,
    },
    /// List components (summaries only).
    List,
    /// Delete a component by name or id.
    Delete {
        /// Name or id.
        component: String,
    },
    /// Make a component the default of its kind.
    Default {
        /// Name or id.
        component: String,
    },
}

/// `serve` arguments.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [env: FLOW8_LISTEN] (default from the config file, else 127.0.0.1:4454).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Let modules reach loopback addresses (local development and tests).
    #[arg(long)]
    pub allow_loopback: bool,
}

/// `tokens` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token (printed once; only its hash is stored).
    Create {
        /// Company the token is scoped to (defaults to --company).
        #[arg(long = "for-company")]
        for_company: Option<String>,
        /// The user it acts for.
        #[arg(long)]
        user: String,
        /// Allow admin routes.
        #[arg(long)]
        admin: bool,
        /// A label.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List tokens (never the tokens themselves).
    List,
    /// Revoke a token by id.
    Revoke {
        /// Token id.
        id: String,
    },
}

pub(super) async fn dispatch(cli: Cli) -> ExitCode {
    let mut config = match crate::config::HostConfig::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(ErrorName::InvalidConfig, e),
    };
    // `--store` / FLOW8_STORE over the file's `store:`.
    if let Some(s) = &cli.store {
        config.store = crate::vault::Secret::new(s.clone());
    }
    if let Err(e) = StoreLocation::parse(config.store.expose()) {
        return fail(ErrorName::InvalidConfig, format!("store: {e}"));
    }
    if let Err(e) = crate::company::check(&cli.company) {
        return fail(ErrorName::InvalidInput, format!("--company: {e}"));
    }
    let data_dir = config::data_dir(cli.data_dir.clone().or_else(|| config.data_dir.clone()));
    let settings = HostSettings::new(config, data_dir).module_dirs(cli.modules_dirs.clone());
    match &cli.command {
        Command::RunModule(args) => run_module(&cli, settings, args).await,
        Command::Modules(ModulesCommand::Keygen(args)) => super::distribution::keygen(args),
        Command::Modules(ModulesCommand::Sign(args)) => super::distribution::sign(args),
        Command::Modules(ModulesCommand::Push(args)) => {
            super::distribution::push(&settings, args).await
        }
        Command::Modules(ModulesCommand::Pull(args)) => {
            super::distribution::pull(&settings, &cli.company, args).await
        }
        Command::Modules(cmd) => modules(&settings, cmd).await,
        Command::Components(cmd) => components_cmd(&cli, &settings, cmd).await,
        Command::Serve(args) => serve(settings, args).await,
        Command::Tokens(cmd) => tokens(&cli, &settings, cmd).await,
        Command::Links(cmd) => super::links::run(&cli, &settings, cmd).await,
        Command::Keys(cmd) => super::keys::keys(&settings, cmd).await,
        Command::Store(cmd) => super::keys::store_cmd(&settings, cmd).await,
        Command::Events(cmd) => super::events::run(&cli.company, &settings, cmd).await,
    }
}

/// The store and vault of these settings, or the printed error's name and message.
pub(crate) async fn open_store(
    settings: &HostSettings,
) -> Result<(Arc<AnyStore>, Arc<Vault>), (ErrorName, String)> {
    settings
        .build_store()
        .await
        .map_err(|e| (e.name(), e.to_string()))
}

async fn serve(mut settings: HostSettings, args: &ServeArgs) -> ExitCode {
    if let Some(l) = args.listen {
        settings.config.listen = l;
    }
    if args.allow_loopback {
        settings.config.outbound.allow_loopback = true;
    }
    let mut host = match Host::from_config(settings).await {
        Ok(h) => h,
        Err(e) => return fail(e.name(), e),
    };
    // Compile everything once before taking traffic.
    let found = host.modules.scan().await;
    host.start_background_tasks();
    let listener = match tokio::net::TcpListener::bind(host.config.listen).await {
        Ok(l) => l,
        Err(e) => {
            return fail(
                ErrorName::ListenFailed,
                format!("cannot listen on {}: {e}", host.config.listen),
            );
        }
    };
    // The address really bound (the port may have been 0): the default public URL.
    if let Ok(bound) = listener.local_addr() {
        host.config.listen = bound;
    }
    if host.config.public_url.is_none() && host.config.listen.ip().is_unspecified() {
        tracing::warn!(
            listen = %host.config.listen,
            "public_url is not set and the host listens on every address: connect links will name an address browsers cannot open; set public_url"
        );
    }
    let state = host.api_state();
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(%addr, modules = found.len(), "serving");
    // The line tests and scripts wait for (the port may have been 0).
    println!("listening on http://{addr}");
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down; letting running steps finish");
    };
    match crate::server::serve(listener, state, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(ErrorName::InternalError, e),
    }
}

async fn tokens(cli: &Cli, settings: &HostSettings, cmd: &TokensCommand) -> ExitCode {
    let (store, _vault) = match open_store(settings).await {
        Ok(x) => x,
        Err((name, msg)) => return fail(name, msg),
    };
    match cmd {
        TokensCommand::Create {
            for_company,
            user,
            admin,
            name,
        } => {
            let company = for_company.clone().unwrap_or_else(|| cli.company.clone());
            if let Err(e) = crate::company::check(&company) {
                return fail(ErrorName::InvalidInput, format!("--for-company: {e}"));
            }
            match crate::server::auth::create_token(&store, &company, user, *admin, name).await {
                Ok((token, record)) => {
                    print_json(&serde_json::json!({
                        "id": record.id,
                        "token": token,
                        "company_id": record.company_id,
                        "user_id": record.user_id,
                        "admin": record.admin,
                        "name": record.name,
                    }));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(ErrorName::StoreUnavailable, e),
            }
        }
        TokensCommand::List => match store.list_tokens().await {
            Ok(list) => {
                let list: Vec<serde_json::Value> = list
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "id": t.id, "company_id": t.company_id, "user_id": t.user_id,
                            "admin": t.admin, "name": t.name, "revoked": t.revoked_at.is_some(),
                        })
                    })
                    .collect();
                print_json(&serde_json::Value::Array(list));
                ExitCode::SUCCESS
            }
            Err(e) => fail(ErrorName::StoreUnavailable, e),
        },
        TokensCommand::Revoke { id } => match store.revoke_token(id).await {
            Ok(true) => {
                print_json(&serde_json::json!({"id": id, "revoked": true}));
                ExitCode::SUCCESS
            }
            Ok(false) => fail(ErrorName::NotFound, format!("no live token `{id}`")),
            Err(e) => fail(ErrorName::StoreUnavailable, e),
        },
    }
}

fn read_input(source: &str) -> Result<String, String> {
    if source == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        Ok(s)
    } else {
        std::fs::read_to_string(source).map_err(|e| format!("cannot read `{source}`: {e}"))
    }
}

fn parse_json(text: &str, what: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{what} is not valid JSON: {e}"))
}

async fn run_module(cli: &Cli, mut settings: HostSettings, args: &RunModuleArgs) -> ExitCode {
    let input = match read_input(&args.input).and_then(|t| parse_json(&t, "the input")) {
        Ok(v) => v,
        Err(e) => return fail(ErrorName::InvalidInput, e),
    };
    let mut bindings = BTreeMap::new();
    for b in &args.bind {
        match b.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => {
                bindings.insert(k.to_string(), v.to_string());
            }
            _ => {
                return fail(
                    ErrorName::InvalidInput,
                    format!("--bind `{b}` is not BINDING=COMPONENT"),
                );
            }
        }
    }
    // The flags go into the configuration and are checked by the same rules as the
    // config file's values (a `--memory-mib` the file would refuse is refused too).
    let config = &mut settings.config;
    if args.allow_loopback {
        config.outbound.allow_loopback = true;
    }
    if args.allow_private {
        config.outbound.allow_private = true;
    }
    if args.allow_plaintext_login {
        config.outbound.allow_plaintext_login = true;
    }
    if !args.allow_hosts.is_empty() {
        config.outbound.allowed_hosts = args.allow_hosts.clone();
    }
    if let Some(d) = args.deadline_secs {
        config.limits.deadline_seconds = d;
    }
    if let Some(m) = args.memory_mib {
        config.limits.memory_mib = m;
    }
    if let Some(o) = args.output_kib {
        config.limits.output_kib = o;
    }
    if let Err(e) = config.validate() {
        return fail(ErrorName::InvalidInput, e);
    }
    let host = match Host::from_config(settings).await {
        Ok(h) => h,
        Err(e) => return fail(e.name(), e),
    };
    let runtime = &host.runtime;
    let report = runtime
        .run_step(StepRequest {
            company_id: cli.company.clone(),
            module_ref: args.module.clone(),
            input,
            bindings,
            limits: None,
            workspace: args.workspace.clone(),
            pinned_to: Vec::new(),
        })
        .await;
    if args.report {
        print_json(&serde_json::to_value(&report).expect("reports serialise"));
        return if report.result.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    for line in &report.log {
        eprintln!(
            "[{}] {}",
            serde_json::to_value(line.level)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            line.message
        );
    }
    match report.result {
        Ok(output) => {
            print_json(&output);
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.name, e.message),
    }
}

fn manifest_json(m: &crate::runtime::module::LoadedModule) -> serde_json::Value {
    serde_json::json!({
        "name": m.manifest.name,
        "version": m.manifest.version,
        "description": m.manifest.description,
        "digest": m.digest,
        "size": m.size,
        "manifest": m.manifest,
    })
}

async fn modules(settings: &HostSettings, cmd: &ModulesCommand) -> ExitCode {
    if let ModulesCommand::New {
        name,
        lang,
        dir,
        sdk,
    } = cmd
    {
        let dir = dir.clone().unwrap_or_else(|| PathBuf::from(name));
        return match super::templates::write(name, *lang, &dir, sdk.as_deref()) {
            Ok(files) => {
                print_json(&serde_json::json!({
                    "dir": dir.display().to_string(),
                    "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
                    "build": format!("cd {} && just build", dir.display()),
                    "run": format!(
                        "just run-module {}/{name}.wasm {}/example-input.json",
                        dir.display(),
                        dir.display()
                    ),
                }));
                ExitCode::SUCCESS
            }
            Err(e) => fail(crate::error::ErrorName::InvalidInput, e),
        };
    }
    let registry = match settings.build_modules() {
        Ok(r) => r,
        Err(e) => return fail(e.name(), e),
    };
    match cmd {
        ModulesCommand::List { json } => {
            let entries = registry.scan().await;
            if *json {
                let list: Vec<serde_json::Value> = entries
                    .iter()
                    .map(|e| match &e.module {
                        Ok(m) => {
                            let mut v = manifest_json(m);
                            v["path"] = e.path.display().to_string().into();
                            v
                        }
                        Err(err) => {
                            serde_json::json!({"path": e.path.display().to_string(), "error": err.name, "message": err.message})
                        }
                    })
                    .collect();
                print_json(&serde_json::Value::Array(list));
            } else {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                for e in &entries {
                    // A reader that went away (`| head`) ends the listing quietly.
                    let line = match &e.module {
                        Ok(m) => writeln!(
                            out,
                            "{:<24} {:<10} {}  {}",
                            m.manifest.name,
                            m.manifest.version,
                            &m.digest[..12],
                            m.manifest.description
                        ),
                        Err(err) => {
                            writeln!(out, "{:<24} (not loadable: {err})", e.path.display())
                        }
                    };
                    if line.is_err() {
                        break;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        ModulesCommand::Inspect { module } => match registry.resolve(module).await {
            Ok(m) => {
                print_json(&manifest_json(&m));
                ExitCode::SUCCESS
            }
            Err(e) => fail(e.name, e.message),
        },
        // Dispatched before the registry is built (see `dispatch`).
        ModulesCommand::Keygen(_)
        | ModulesCommand::Sign(_)
        | ModulesCommand::Push(_)
        | ModulesCommand::Pull(_) => fail(ErrorName::InternalError, "dispatched elsewhere"),
        // Answered above, before a registry is built.
        ModulesCommand::New { .. } => ExitCode::SUCCESS,
    }
}

async fn find_component(
    store: &AnyStore,
    company: &str,
    key: &str,
) -> Result<Option<crate::store::ComponentRecord>, crate::store::StoreError> {
    if let Some(c) = store.get_component(company, key).await? {
        return Ok(Some(c));
    }
    store.find_component_by_name(company, key).await
}

fn summary_json(
    catalogue: &crate::catalogue::Catalogue,
    c: &crate::store::ComponentRecord,
) -> serde_json::Value {
    serde_json::json!({
        "id": c.id,
        "name": c.name,
        "kind": c.kind,
        "config_summary": components::config_summary(catalogue, c),
        "is_default": c.is_default,
    })
}

async fn components_cmd(cli: &Cli, settings: &HostSettings, cmd: &ComponentsCommand) -> ExitCode {
    let catalogue = match settings.config.catalogue() {
        Ok(c) => c,
        Err(e) => return fail(ErrorName::InvalidConfig, e),
    };
    let (store, vault) = match open_store(settings).await {
        Ok(x) => x,
        Err((name, msg)) => return fail(name, msg),
    };
    let company = cli.company.as_str();
    match cmd {
        ComponentsCommand::Create { body } => {
            let body = match read_input(body).and_then(|t| parse_json(&t, "the component body")) {
                Ok(v) => v,
                Err(e) => return fail(ErrorName::InvalidInput, e),
            };
            let new: NewComponent = match serde_json::from_value(body) {
                Ok(n) => n,
                Err(e) => {
                    return fail(
                        ErrorName::InvalidInput,
                        format!("the component body is not valid: {e}"),
                    );
                }
            };
            let record = match components::prepare(new, company, &vault, &catalogue) {
                Ok(r) => r,
                Err(e) => return fail(ErrorName::InvalidInput, e),
            };
            if let Err(e) = store.insert_component(record.clone()).await {
                return match e {
                    crate::store::StoreError::Conflict(m) => fail(ErrorName::Conflict, m),
                    other => fail(ErrorName::StoreUnavailable, other),
                };
            }
            print_json(&summary_json(&catalogue, &record));
            ExitCode::SUCCESS
        }
        ComponentsCommand::List => match store.list_components(company).await {
            Ok(list) => {
                print_json(&serde_json::Value::Array(
                    list.iter().map(|c| summary_json(&catalogue, c)).collect(),
                ));
                ExitCode::SUCCESS
            }
            Err(e) => fail(ErrorName::StoreUnavailable, e),
        },
        ComponentsCommand::Delete { component } | ComponentsCommand::Default { component } => {
            let found = match find_component(&store, company, component).await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    return fail(ErrorName::NotFound, format!("no component `{component}`"));
                }
                Err(e) => return fail(ErrorName::StoreUnavailable, e),
            };
            let result = if matches!(cmd, ComponentsCommand::Delete { .. }) {
                store.delete_component(company, &found.id).await
            } else {
                store.set_default_component(company, &found.id).await
            };
            match result {
                Ok(true) => {
                    let mut v = summary_json(&catalogue, &found);
                    if matches!(cmd, ComponentsCommand::Default { .. }) {
                        v["is_default"] = true.into();
                    } else {
                        v["deleted"] = true.into();
                    }
                    print_json(&v);
                    ExitCode::SUCCESS
                }
                Ok(false) => fail(ErrorName::NotFound, format!("no component `{component}`")),
                Err(e) => fail(ErrorName::StoreUnavailable, e),
            }
        }
    }
}
