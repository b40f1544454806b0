//! The flow8 integration host: runs flow8's integration modules (WebAssembly
//! components) in a fresh sandbox per step and owns their credentials.
//!
//! Where things live:
//! - `app`: the composition root: `Host::from_config` builds a whole host, for every
//!   command, test and bench.
//! - `manifest` (the `flow8-manifest` crate, shared with the SDK): what a module
//!   declares (hosts, credential bindings, input schema) and the rules it must keep.
//! - `runtime`: engine, compile cache, module registry, the per-step sandbox.
//! - `capabilities`: the host functions modules call (credentials, http, object storage,
//!   log, step).
//! - `outbound`: the egress policy and HTTP client every module request goes through.
//! - `vault` (the `flow8-vault` crate): encryption of secrets at rest, master keys and
//!   the key file; `key_rotation` re-seals a store's secrets under a new key.
//! - `store` (the `flow8-store` crate): storage behind a trait; `store::embedded` is the
//!   SQLite default, `store::mongodb` the production store, `store::transfer` export and
//!   import.
//! - `catalogue`: what the host knows about each provider (OAuth2 and API-key), from the
//!   shipped `catalogue/providers.yaml` and the config file's `providers:` block.
//! - `components`: API-key components (S3, OpenAI, HTTP, ...): validation, sealing, summaries.
//! - `oauth`: the OAuth2 lifecycle (the `oauth2` crate speaks the protocol): connect,
//!   callback, refresh, revoke, health, and events for the audit log.
//! - `server`: the REST API (`flow8-host serve`): components, steps, OAuth integrations
//!   and the connect page, audit log, modules.
//! - `webhooks`: how each provider signs its inbound webhooks (Slack, QuickBooks,
//!   Microsoft Graph, Google push), checked before anything is parsed.
//! - `delivery`: events out to flow8: a background deliverer with Standard Webhooks
//!   signatures, retries and a dead letter per endpoint.
//! - `distribution`: modules from OCI registries (push, pull, digest pins) and their
//!   ed25519 signatures and the operator's trusted keys.
//! - `subscriptions`: webhook subscriptions kept alive for links (Graph subscriptions,
//!   Google watch channels): made, renewed by one host at a time, remade, removed.
//! - `company`: the one rule for company ids (the scope of every record, and a path).
//! - `config`: defaults, the config file and `FLOW8_*` variables.
//! - `error`: the catalogue of error names every answer uses.
//! - `cli`: the `flow8-host` command line.

pub mod app;
pub mod capabilities;
pub mod catalogue;
pub mod cli;
pub mod company;
pub mod components;
pub mod config;
pub mod delivery;
pub mod distribution;
pub mod error;
pub mod key_rotation;
pub mod oauth;
pub mod outbound;
pub mod runtime;
pub mod server;
pub mod subscriptions;
pub mod usage;
pub mod webhooks;

// The seams that are crates of their own (`host/crates/`), under the names the host's
// modules use for them.
pub use flow8_manifest as manifest;
pub use flow8_store as store;
pub use flow8_vault as vault;
