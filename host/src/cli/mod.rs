//! The `flow8-host` command line: run a module (`run-module`), inspect modules, manage
//! API-key components, API tokens and OAuth links in the configured store, serve the
//! REST API, rotate master keys, move the store, and set where events are delivered.
//! Errors are printed as `error: <name>: <message>` on stderr with a non-zero exit code.

mod commands;
pub mod config;
mod distribution;
mod events;
mod keys;
mod links;
mod templates;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// The flow8 integration host.
#[derive(Debug, Parser)]
#[command(name = "flow8-host", version, about)]
pub struct Cli {
    /// Where the embedded store, master key and compile cache live [env: FLOW8_DATA_DIR]
    /// (default: $XDG_DATA_HOME/flow8 or ~/.local/share/flow8).
    #[arg(long, global = true, env = "FLOW8_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Extra directories of `.wasm` modules, searched before `<data-dir>/modules`
    /// (colon-separated in the environment).
    #[arg(
        long = "modules-dir",
        global = true,
        env = "FLOW8_MODULES_PATH",
        value_delimiter = ':'
    )]
    pub modules_dirs: Vec<PathBuf>,
    /// The company whose components the command uses (local use: `local`).
    #[arg(long, global = true, env = "FLOW8_COMPANY", default_value = "local")]
    pub company: String,
    /// Where the store is: `embedded` (SQLite in the data directory, the default) or a
    /// `mongodb://` URI [env: FLOW8_STORE; or `store:` in the config file].
    #[arg(long, global = true, env = "FLOW8_STORE")]
    pub store: Option<String>,
    /// A YAML config file (flow8's `config/config.yml` shape) [env: FLOW8_CONFIG].
    #[arg(long, global = true, env = "FLOW8_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log as JSON lines instead of text (stderr).
    #[arg(long, global = true, env = "FLOW8_LOG_JSON", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub log_json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one module step and print its output JSON.
    RunModule(commands::RunModuleArgs),
    /// Installed and built modules.
    #[command(subcommand)]
    Modules(commands::ModulesCommand),
    /// API-key components in the local store.
    #[command(subcommand)]
    Components(commands::ComponentsCommand),
    /// Serve the REST API (default 127.0.0.1:4454).
    Serve(commands::ServeArgs),
    /// API tokens for the REST API.
    #[command(subcommand)]
    Tokens(commands::TokensCommand),
    /// OAuth links in the local store (connect, list, test, delete).
    #[command(subcommand)]
    Links(links::LinksCommand),
    /// Master keys: which keys seal the store's secrets, and rotation.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Move the store's documents to another store (export, import), secrets sealed.
    #[command(subcommand)]
    Store(keys::StoreCommand),
    /// Events out to flow8: the company's endpoint, redelivery (as the admin API).
    #[command(subcommand)]
    Events(events::EventsCommand),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: internal_error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(commands::dispatch(cli))
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOW8_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Print a JSON answer on stdout. A reader that went away (`| head`) is not an error.
pub(crate) fn print_json(v: &serde_json::Value) {
    use std::io::Write;
    let text = serde_json::to_string_pretty(v).expect("JSON values serialise");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

/// Print a named error and return the failure exit code.
pub(crate) fn fail(name: crate::error::ErrorName, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {name}: {message}");
    ExitCode::from(1)
}
