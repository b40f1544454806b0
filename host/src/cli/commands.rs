//! The subcommands' arguments and what they do.

use super::print_json;
use super::{Cli, Command, config, fail};
use crate::components::{self, NewComponent};
use crate::manifest::HostPattern;
use crate::outbound::{OutboundClient, OutboundPolicy};
use crate::runtime::cache::CompileCache;
use crate::runtime::registry::ModuleRegistry;
use crate::runtime::sandbox::StepLimits;
use crate::runtime::{EngineConfig, Runtime, SandboxEngine, StepRequest};
use crate::store::Store;
use crate::store::any::{AnyStore, StoreLocation};
use crate::vault::Vault;
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

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
    /// Step deadline in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub deadline_secs: f64,
    /// Memory cap in MiB.
    #[arg(long, default_value_t = 64)]
    pub memory_mib: usize,
    /// Output cap in KiB.
    #[arg(long, default_value_t = 1024)]
    pub output_kib: usize,
    /// Let the module reach loopback addresses (127.0.0.1, ::1): for local servers.
    #[arg(long, env = "FLOW8_ALLOW_LOOPBACK")]
    pub allow_loopback: bool,
    /// Let the module reach private and link-local addresses.
    #[arg(long, env = "FLOW8_ALLOW_PRIVATE")]
    pub allow_private: bool,
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
    let file_config = match crate::config::HostConfig::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail("invalid_config", e),
    };
    let mut cli = cli;
    let data_dir = config::data_dir(
        cli.data_dir
            .clone()
            .or_else(|| file_config.data_dir.clone()),
    );
    if cli.store.is_none() {
        cli.store = Some(file_config.store.clone());
    }
    if let Some(s) = &cli.store
        && let Err(e) = StoreLocation::parse(s)
    {
        return fail("invalid_config", format!("--store: {e}"));
    }
    match &cli.command {
        Command::RunModule(args) => run_module(&cli, &data_dir, &file_config, args).await,
        Command::Modules(cmd) => modules(&cli, &data_dir, cmd).await,
        Command::Components(cmd) => components_cmd(&cli, &data_dir, cmd).await,
        Command::Serve(args) => serve(&cli, &data_dir, file_config, args).await,
        Command::Tokens(cmd) => tokens(&cli, &data_dir, cmd).await,
        Command::Links(cmd) => super::links::run(&cli, &data_dir, &file_config, cmd).await,
        Command::Keys(cmd) => super::keys::keys(&cli, &data_dir, cmd).await,
        Command::Store(cmd) => super::keys::store_cmd(&cli, &data_dir, cmd).await,
    }
}

async fn serve(
    cli: &Cli,
    data_dir: &Path,
    mut cfg: crate::config::HostConfig,
    args: &ServeArgs,
) -> ExitCode {
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if args.allow_loopback {
        cfg.outbound.allow_loopback = true;
    }
    let (store, vault) = match open_local(cli, data_dir).await {
        Ok(x) => x,
        Err((name, msg)) => return fail(&name, msg),
    };
    let mut dirs = cli.modules_dirs.clone();
    dirs.extend(cfg.modules_dirs.iter().cloned());
    dirs.push(config::installed_modules_dir(data_dir));
    let engine = match SandboxEngine::new(EngineConfig::default()) {
        Ok(e) => e,
        Err(e) => return fail("internal_error", e),
    };
    let cache =
        CompileCache::at(config::cache_dir(data_dir)).unwrap_or_else(|_| CompileCache::disabled());
    let install_root = data_dir.join("company-modules");
    let registry =
        Arc::new(ModuleRegistry::new(engine, cache, dirs).with_company_root(install_root.clone()));
    // Compile everything once before taking traffic.
    let found = registry.scan().await;
    let outbound = match OutboundClient::new(cfg.outbound_policy()) {
        Ok(c) => c,
        Err(e) => return fail("internal_error", e),
    };
    let oauth = match super::links::oauth_service(&cfg, data_dir, store.clone(), vault.clone()) {
        Ok(o) => o,
        Err(e) => return fail("invalid_config", e),
    };
    let mut runtime = Runtime::new(registry, outbound, store, vault, cfg.step_limits());
    if let Some(o) = oauth {
        // Refreshes a crash or a store outage left in the journal reach the store first.
        o.spawn_journal_flusher(Duration::from_secs(2));
        if cfg.oauth_background_refresh_seconds > 0 {
            o.spawn_background_refresher(Duration::from_secs(cfg.oauth_background_refresh_seconds));
        }
        runtime = runtime.with_oauth(o);
    }
    let audit = crate::server::audit::AuditWriter::start(runtime.store().clone());
    let state = Arc::new(crate::server::AppState {
        runtime,
        metrics: Default::default(),
        audit,
        install_dir: install_root,
        workspaces_dir: cfg
            .workspaces_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("workspaces")),
        max_body_bytes: cfg.max_body_bytes,
        max_module_bytes: cfg.max_module_bytes,
    });
    let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            return fail(
                "listen_failed",
                format!("cannot listen on {}: {e}", cfg.listen),
            );
        }
    };
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
        Err(e) => fail("internal_error", e),
    }
}

async fn tokens(cli: &Cli, data_dir: &Path, cmd: &TokensCommand) -> ExitCode {
    let (store, _vault) = match open_local(cli, data_dir).await {
        Ok(x) => x,
        Err((name, msg)) => return fail(&name, msg),
    };
    match cmd {
        TokensCommand::Create {
            for_company,
            user,
            admin,
            name,
        } => {
            let company = for_company.clone().unwrap_or_else(|| cli.company.clone());
            match crate::server::auth::create_token(&*store, &company, user, *admin, name).await {
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
                Err(e) => fail("store_unavailable", e),
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
            Err(e) => fail("store_unavailable", e),
        },
        TokensCommand::Revoke { id } => match store.revoke_token(id).await {
            Ok(true) => {
                print_json(&serde_json::json!({"id": id, "revoked": true}));
                ExitCode::SUCCESS
            }
            Ok(false) => fail("not_found", format!("no live token `{id}`")),
            Err(e) => fail("store_unavailable", e),
        },
    }
}

/// Open the configured store (embedded or MongoDB) and the vault, checking the master
/// key matches the data.
pub(crate) async fn open_local(
    cli: &Cli,
    data_dir: &Path,
) -> Result<(Arc<AnyStore>, Arc<Vault>), (String, String)> {
    let vault = Vault::load(data_dir).map_err(|e| ("vault_error".to_string(), e.to_string()))?;
    let location = cli.store_location();
    let store = AnyStore::open(&location, data_dir).await.map_err(|e| {
        (
            "store_unavailable".to_string(),
            format!("{}: {e}", location.describe()),
        )
    })?;
    let check = store
        .get_meta("vault_check")
        .await
        .map_err(|e| ("store_unavailable".to_string(), e.to_string()))?;
    match check {
        Some(c) => vault
            .verify_check_value(&c)
            .map_err(|e| ("wrong_master_key".to_string(), e.to_string()))?,
        None => store
            .put_meta("vault_check", &vault.check_value())
            .await
            .map_err(|e| ("store_unavailable".to_string(), e.to_string()))?,
    }
    Ok((Arc::new(store), Arc::new(vault)))
}

fn module_dirs(cli: &Cli, data_dir: &Path) -> Vec<PathBuf> {
    let mut dirs = cli.modules_dirs.clone();
    dirs.push(config::installed_modules_dir(data_dir));
    dirs
}

fn registry(cli: &Cli, data_dir: &Path) -> Result<Arc<ModuleRegistry>, String> {
    let engine = SandboxEngine::new(EngineConfig::default()).map_err(|e| e.to_string())?;
    let cache = CompileCache::at(config::cache_dir(data_dir)).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "compile cache unavailable; compiling every time");
        CompileCache::disabled()
    });
    Ok(Arc::new(ModuleRegistry::new(
        engine,
        cache,
        module_dirs(cli, data_dir),
    )))
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

async fn run_module(
    cli: &Cli,
    data_dir: &Path,
    cfg: &crate::config::HostConfig,
    args: &RunModuleArgs,
) -> ExitCode {
    let input = match read_input(&args.input).and_then(|t| parse_json(&t, "the input")) {
        Ok(v) => v,
        Err(e) => return fail("invalid_input", e),
    };
    let mut bindings = BTreeMap::new();
    for b in &args.bind {
        match b.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => {
                bindings.insert(k.to_string(), v.to_string());
            }
            _ => {
                return fail(
                    "invalid_input",
                    format!("--bind `{b}` is not BINDING=COMPONENT"),
                );
            }
        }
    }
    let mut policy = OutboundPolicy {
        allow_loopback: args.allow_loopback,
        allow_private: args.allow_private,
        ..OutboundPolicy::default()
    };
    if !args.allow_hosts.is_empty() {
        let mut patterns = Vec::new();
        for h in &args.allow_hosts {
            match HostPattern::parse(h) {
                Ok(p) => patterns.push(p),
                Err(e) => return fail("invalid_input", format!("--allow-host: {e}")),
            }
        }
        policy.allowed_hosts = patterns;
    }
    if !(args.deadline_secs > 0.0 && args.deadline_secs <= 3600.0) {
        return fail("invalid_input", "--deadline-secs must be in (0, 3600]");
    }
    let limits = StepLimits {
        deadline: Duration::from_secs_f64(args.deadline_secs),
        memory_bytes: args.memory_mib.clamp(1, 1024) * 1024 * 1024,
        output_bytes: args.output_kib.max(1) * 1024,
        ..StepLimits::default()
    };
    let (store, vault) = match open_local(cli, data_dir).await {
        Ok(x) => x,
        Err((name, msg)) => return fail(&name, msg),
    };
    let modules = match registry(cli, data_dir) {
        Ok(r) => r,
        Err(e) => return fail("internal_error", e),
    };
    let outbound = match OutboundClient::new(policy) {
        Ok(c) => c,
        Err(e) => return fail("internal_error", e),
    };
    let oauth = match super::links::oauth_service(cfg, data_dir, store.clone(), vault.clone()) {
        Ok(o) => o,
        Err(e) => return fail("invalid_config", e),
    };
    let mut runtime = Runtime::new(modules, outbound, store, vault, limits);
    if let Some(o) = oauth {
        runtime = runtime.with_oauth(o);
    }
    let report = runtime
        .run_step(StepRequest {
            company_id: cli.company.clone(),
            module_ref: args.module.clone(),
            input,
            bindings,
            limits: Some(limits),
            workspace: args.workspace.clone(),
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
        Err(e) => fail(e.name.as_str(), e.message),
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

async fn modules(cli: &Cli, data_dir: &Path, cmd: &ModulesCommand) -> ExitCode {
    let registry = match registry(cli, data_dir) {
        Ok(r) => r,
        Err(e) => return fail("internal_error", e),
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
                            serde_json::json!({"path": e.path.display().to_string(), "error": err})
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
            Err(e) => fail(e.name.as_str(), e.message),
        },
    }
}

async fn find_component<S: Store>(
    store: &S,
    company: &str,
    key: &str,
) -> Result<Option<crate::store::ComponentRecord>, crate::store::StoreError> {
    if let Some(c) = store.get_component(company, key).await? {
        return Ok(Some(c));
    }
    store.find_component_by_name(company, key).await
}

fn summary_json(c: &crate::store::ComponentRecord) -> serde_json::Value {
    serde_json::json!({
        "id": c.id,
        "name": c.name,
        "kind": c.kind,
        "config_summary": components::config_summary(c),
        "is_default": c.is_default,
    })
}

async fn components_cmd(cli: &Cli, data_dir: &Path, cmd: &ComponentsCommand) -> ExitCode {
    let (store, vault) = match open_local(cli, data_dir).await {
        Ok(x) => x,
        Err((name, msg)) => return fail(&name, msg),
    };
    let company = cli.company.as_str();
    match cmd {
        ComponentsCommand::Create { body } => {
            let body = match read_input(body).and_then(|t| parse_json(&t, "the component body")) {
                Ok(v) => v,
                Err(e) => return fail("invalid_input", e),
            };
            let new: NewComponent = match serde_json::from_value(body) {
                Ok(n) => n,
                Err(e) => {
                    return fail(
                        "invalid_input",
                        format!("the component body is not valid: {e}"),
                    );
                }
            };
            let record = match components::prepare(new, company, &vault) {
                Ok(r) => r,
                Err(e) => return fail("invalid_input", e),
            };
            if let Err(e) = store.insert_component(record.clone()).await {
                return match e {
                    crate::store::StoreError::Conflict(m) => fail("conflict", m),
                    other => fail("store_unavailable", other),
                };
            }
            print_json(&summary_json(&record));
            ExitCode::SUCCESS
        }
        ComponentsCommand::List => match store.list_components(company).await {
            Ok(list) => {
                print_json(&serde_json::Value::Array(
                    list.iter().map(summary_json).collect(),
                ));
                ExitCode::SUCCESS
            }
            Err(e) => fail("store_unavailable", e),
        },
        ComponentsCommand::Delete { component } | ComponentsCommand::Default { component } => {
            let found = match find_component(&*store, company, component).await {
                Ok(Some(c)) => c,
                Ok(None) => return fail("not_found", format!("no component `{component}`")),
                Err(e) => return fail("store_unavailable", e),
            };
            let result = if matches!(cmd, ComponentsCommand::Delete { .. }) {
                store.delete_component(company, &found.id).await
            } else {
                store.set_default_component(company, &found.id).await
            };
            match result {
                Ok(true) => {
                    let mut v = summary_json(&found);
                    if matches!(cmd, ComponentsCommand::Default { .. }) {
                        v["is_default"] = true.into();
                    } else {
                        v["deleted"] = true.into();
                    }
                    print_json(&v);
                    ExitCode::SUCCESS
                }
                Ok(false) => fail("not_found", format!("no component `{component}`")),
                Err(e) => fail("store_unavailable", e),
            }
        }
    }
}
