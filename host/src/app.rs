//! The composition root: the one place a whole host is built from its configuration.
//! Every command (`serve`, `run-module`, `modules`, `components`, `links`, ...), the
//! end-to-end tests and the benches build their host here, so they cannot disagree on
//! which module directories, outbound policy, limits, store, provider catalogue or OAuth
//! providers apply.
//!
//! The order of precedence is settled before this point: defaults, then the config
//! file, then `FLOW8_*` variables (`config::HostConfig::load`), then a command's flags
//! (applied to the `HostConfig` and checked by the same `HostConfig::validate`).

use crate::catalogue::Catalogue;
use crate::config::HostConfig;
use crate::error::ErrorName;
use crate::oauth::OAuthService;
use crate::outbound::OutboundClient;
use crate::runtime::cache::CompileCache;
use crate::runtime::registry::ModuleRegistry;
use crate::runtime::{EngineConfig, Runtime, SandboxEngine};
use crate::server::{AppState, audit::AuditWriter};
use crate::store::{AnyStore, Store, StoreLocation};
use crate::vault::Vault;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why a host could not be built. Each variant carries the flow8 error name the CLI
/// prints and the API would answer.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The configuration is not usable (providers, patterns, limits).
    #[error("{0}")]
    InvalidConfig(String),
    /// The master key could not be loaded or created.
    #[error("{0}")]
    Vault(String),
    /// The master key does not open this store's secrets.
    #[error("{0}")]
    WrongMasterKey(String),
    /// The store could not be opened or read.
    #[error("{0}")]
    StoreUnavailable(String),
    /// An OpenID provider's discovery document could not be read or used.
    #[error("{0}")]
    Discovery(String),
    /// Something in the host itself failed (engine, HTTP client).
    #[error("{0}")]
    Internal(String),
}

impl HostError {
    /// The flow8 error name.
    pub fn name(&self) -> ErrorName {
        match self {
            HostError::InvalidConfig(_) => ErrorName::InvalidConfig,
            HostError::Vault(_) => ErrorName::VaultError,
            HostError::WrongMasterKey(_) => ErrorName::WrongMasterKey,
            HostError::StoreUnavailable(_) => ErrorName::StoreUnavailable,
            HostError::Discovery(_) => ErrorName::ProviderError,
            HostError::Internal(_) => ErrorName::InternalError,
        }
    }
}

/// What a host is built from besides its configuration: where its files are, and parts
/// a caller may share between several hosts (one engine and one registry across the
/// tests of a test binary, so each module compiles once).
#[derive(Clone)]
pub struct HostSettings {
    /// The resolved configuration.
    pub config: HostConfig,
    /// Data directory: embedded store, key file, compile cache, installed modules.
    pub data_dir: PathBuf,
    /// Module directories searched before the config file's (`--modules-dir`).
    pub extra_module_dirs: Vec<PathBuf>,
    /// Compiled-module cache (default `FLOW8_CACHE_DIR`, else `<data-dir>/cache`).
    pub cache_dir: Option<PathBuf>,
    /// An engine to share (default: a new one with `EngineConfig::default()`).
    pub engine: Option<Arc<SandboxEngine>>,
    /// A module registry to share (default: a new one over the module directories).
    pub modules: Option<Arc<ModuleRegistry>>,
    /// An already opened store (default: the one `config.store` names).
    pub store: Option<Arc<AnyStore>>,
    /// A vault to use (default: `Vault::load(data_dir)`: `FLOW8_MASTER_KEY` or the key file).
    pub vault: Option<Arc<Vault>>,
}

impl std::fmt::Debug for HostSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSettings")
            .field("data_dir", &self.data_dir)
            .field("extra_module_dirs", &self.extra_module_dirs)
            .finish_non_exhaustive()
    }
}

impl HostSettings {
    /// Settings for `config` with its files in `data_dir`.
    pub fn new(config: HostConfig, data_dir: impl Into<PathBuf>) -> HostSettings {
        HostSettings {
            config,
            data_dir: data_dir.into(),
            extra_module_dirs: Vec::new(),
            cache_dir: None,
            engine: None,
            modules: None,
            store: None,
            vault: None,
        }
    }

    /// Search these module directories first.
    pub fn module_dirs(mut self, dirs: impl IntoIterator<Item = PathBuf>) -> HostSettings {
        self.extra_module_dirs.extend(dirs);
        self
    }

    /// Share this engine.
    pub fn engine(mut self, engine: Arc<SandboxEngine>) -> HostSettings {
        self.engine = Some(engine);
        self
    }

    /// Share this module registry.
    pub fn modules(mut self, modules: Arc<ModuleRegistry>) -> HostSettings {
        self.modules = Some(modules);
        self
    }

    /// Use this store instead of opening `config.store`.
    pub fn store(mut self, store: impl Into<AnyStore>) -> HostSettings {
        self.store = Some(Arc::new(store.into()));
        self
    }

    /// Use this vault instead of loading one from the data directory.
    pub fn vault(mut self, vault: Vault) -> HostSettings {
        self.vault = Some(Arc::new(vault));
        self
    }

    /// Where hosts before the store kept admins' installed modules
    /// (`<data-dir>/company-modules/<company>/`); imported into the store at start.
    pub fn company_modules_dir(&self) -> PathBuf {
        self.data_dir.join("company-modules")
    }

    /// Every directory shared modules are loaded from, in search order: the extra ones,
    /// the config file's, then `<data-dir>/modules`.
    pub fn all_module_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = self.extra_module_dirs.clone();
        dirs.extend(self.config.modules_dirs.iter().cloned());
        dirs.push(crate::cli::config::installed_modules_dir(&self.data_dir));
        dirs
    }

    fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| crate::cli::config::cache_dir(&self.data_dir))
    }

    /// The provider catalogue: the shipped one with the config file's `providers:`.
    pub fn catalogue(&self) -> Result<Arc<Catalogue>, HostError> {
        self.config
            .catalogue()
            .map_err(|e| HostError::InvalidConfig(format!("providers: {e}")))
    }

    /// The module registry these settings describe (shared one, or a new one checking
    /// manifests against the configuration's catalogue). Commands that only look at
    /// modules (`modules list`) build just this part.
    pub fn build_modules(&self) -> Result<Arc<ModuleRegistry>, HostError> {
        if let Some(m) = &self.modules {
            return Ok(m.clone());
        }
        let catalogue = self.catalogue()?;
        let engine = match &self.engine {
            Some(e) => e.clone(),
            None => SandboxEngine::new(EngineConfig {
                pool_instances: self.config.sandboxes.pool,
                ..EngineConfig::default()
            })
            .map_err(|e| HostError::Internal(format!("cannot start the engine: {e}")))?,
        };
        let cache = CompileCache::at(self.cache_dir())
            .map(|c| c.with_limits(self.config.compile_cache.limits()))
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "compile cache unavailable; compiling every time");
                CompileCache::disabled()
            });
        let signatures = crate::distribution::signature::SignaturePolicy::from_config(
            &self.config.module_signatures,
        )
        .map_err(|e| HostError::InvalidConfig(format!("module_signatures: {e}")))?;
        Ok(Arc::new(
            ModuleRegistry::new(engine, cache, self.all_module_dirs())
                .with_catalogue(catalogue)
                .with_signature_policy(Arc::new(signatures))
                .with_review_policy(crate::runtime::review::ReviewPolicy {
                    require_approval: self.config.module_review.require_approval,
                    forbid_credentials_get: self.config.module_review.forbid_credentials_get,
                })
                .with_installed_modules(),
        ))
    }

    /// The store and vault these settings describe, the master key checked against the
    /// store's key check value (written on first use). Commands that only manage
    /// records (`components`, `tokens`, `keys`, `store`) build just this part.
    pub async fn build_store(&self) -> Result<(Arc<AnyStore>, Arc<Vault>), HostError> {
        let vault = match &self.vault {
            Some(v) => v.clone(),
            None => {
                Arc::new(Vault::load(&self.data_dir).map_err(|e| HostError::Vault(e.to_string()))?)
            }
        };
        let store = match &self.store {
            Some(s) => s.clone(),
            None => {
                let location = StoreLocation::parse(self.config.store.expose())
                    .map_err(|e| HostError::InvalidConfig(format!("store: {e}")))?;
                Arc::new(
                    AnyStore::open(&location, &self.data_dir)
                        .await
                        .map_err(|e| {
                            HostError::StoreUnavailable(format!("{}: {e}", location.describe()))
                        })?,
                )
            }
        };
        let unavailable = |e: crate::store::StoreError| HostError::StoreUnavailable(e.to_string());
        match store.get_meta("vault_check").await.map_err(unavailable)? {
            Some(c) => vault
                .verify_check_value(&c)
                .map_err(|e| HostError::WrongMasterKey(e.to_string()))?,
            None => store
                .put_meta("vault_check", &vault.check_value())
                .await
                .map_err(unavailable)?,
        }
        Ok((store, vault))
    }
}

/// The OAuth service a configuration describes over a store and vault, if it
/// configures any provider (its refresh journal in the data directory): each `oauth2:`
/// entry over the catalogue's provider of that name, telling the audit log what happens
/// to links. OpenID providers (`auth_mode: oidc`) are discovered here, once: a host
/// whose provider's discovery fails does not start (`provider_error`, naming it).
pub async fn oauth_service(
    config: &HostConfig,
    data_dir: &Path,
    store: Arc<AnyStore>,
    vault: Arc<Vault>,
    audit: &AuditWriter,
    deliveries: &crate::delivery::Deliveries,
) -> Result<Option<Arc<OAuthService>>, HostError> {
    let catalogue = config
        .catalogue()
        .map_err(|e| HostError::InvalidConfig(format!("providers: {e}")))?;
    let mut providers = crate::oauth::providers::configure(&catalogue, &config.oauth2)
        .map_err(HostError::InvalidConfig)?;
    if providers.is_empty() {
        return Ok(None);
    }
    crate::oauth::discovery::discover_all(&mut providers, &crate::oauth::http_client())
        .await
        .map_err(|e| HostError::Discovery(e.to_string()))?;
    // Two consumers: the audit log, and the lifecycle events delivered to flow8.
    let lifecycle = crate::delivery::LifecycleEvents::new(deliveries.clone(), store.clone());
    let mut oauth = OAuthService::new(store, vault, providers)
        .with_journal(data_dir.join(crate::oauth::journal::JOURNAL_DIR))
        .with_link_cache(config.record_cache())
        .with_events(Arc::new(crate::oauth::events::Fanout(vec![
            Arc::new(audit.clone()),
            Arc::new(lifecycle),
        ])));
    oauth.refresh_window = Duration::from_secs(config.oauth_refresh_window_seconds);
    Ok(Some(Arc::new(oauth)))
}

/// A whole host: store, vault, module registry, outbound client, OAuth service, audit
/// writer and the step runtime over them.
pub struct Host {
    /// The configuration it was built from.
    pub config: HostConfig,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where admins' modules are installed (`<data-dir>/company-modules`).
    pub company_modules_dir: PathBuf,
    /// The store.
    pub store: Arc<AnyStore>,
    /// The vault.
    pub vault: Arc<Vault>,
    /// The module registry.
    pub modules: Arc<ModuleRegistry>,
    /// The outbound HTTP client with the operator's egress policy.
    pub outbound: OutboundClient,
    /// The OAuth service, when the configuration names providers.
    pub oauth: Option<Arc<OAuthService>>,
    /// Runs steps.
    pub runtime: Runtime,
    /// The group-committing audit writer.
    pub audit: AuditWriter,
    /// Metrics, shared by the API and the background tasks.
    pub metrics: Arc<crate::server::metrics::Metrics>,
    /// The event delivery queue.
    pub deliveries: crate::delivery::Deliveries,
    /// Per-credential usage baselines.
    pub usage: Arc<crate::usage::UsageMonitor>,
    /// Webhook subscriptions (Graph, Google), when OAuth providers are configured.
    pub subscriptions: Option<Arc<crate::subscriptions::SubscriptionService>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("data_dir", &self.data_dir)
            .field("modules", &self.modules)
            .finish_non_exhaustive()
    }
}

impl Host {
    /// Build every part of a host from its settings. Needs a Tokio runtime (the audit
    /// writer is a task).
    pub async fn from_config(settings: HostSettings) -> Result<Host, HostError> {
        settings
            .config
            .validate()
            .map_err(|e| HostError::InvalidConfig(e.to_string()))?;
        let (store, vault) = settings.build_store().await?;
        let modules = settings.build_modules()?;
        // Modules installed before they lived in the store: imported once, then moved
        // aside (see `ModuleRegistry::import_dir`).
        let legacy = settings.company_modules_dir();
        if legacy.is_dir() {
            let n = modules
                .import_dir(
                    &*store,
                    &legacy,
                    &settings.data_dir.join("company-modules.imported"),
                )
                .await;
            if n > 0 {
                tracing::info!(count = n, "installed modules imported into the store");
            }
        }
        let outbound = OutboundClient::new(settings.config.outbound_policy())
            .map_err(|e| HostError::Internal(e.to_string()))?;
        let audit = AuditWriter::start(store.clone());
        let deliveries = crate::delivery::Deliveries::new(store.clone());
        let oauth = oauth_service(
            &settings.config,
            &settings.data_dir,
            store.clone(),
            vault.clone(),
            &audit,
            &deliveries,
        )
        .await?;
        let mut runtime = Runtime::new(
            modules.clone(),
            outbound.clone(),
            store.clone(),
            vault.clone(),
            settings.config.step_limits(),
        )
        .with_company_share(settings.config.company_share())
        .with_component_cache(settings.config.record_cache())
        .with_workspace_taints(crate::runtime::taint::WorkspaceTaints::in_dir(
            settings.data_dir.join("workspace-taint"),
        ));
        if let Some(o) = &oauth {
            runtime = runtime.with_oauth(o.clone());
        }
        let usage = Arc::new(crate::usage::UsageMonitor::new(
            settings.config.usage_alerts.clone(),
        ));
        // Its calls carry links' tokens through the same outbound client (the
        // operator's egress policy) as every module request.
        let subscriptions = oauth.as_ref().map(|o| {
            Arc::new(
                crate::subscriptions::SubscriptionService::new(
                    store.clone(),
                    vault.clone(),
                    o.clone(),
                    outbound.clone(),
                    audit.clone(),
                    settings.config.public_base(),
                    settings.config.webhook_subscriptions.timing(),
                )
                .with_events(Arc::new(deliveries.clone())),
            )
        });
        Ok(Host {
            subscriptions,
            company_modules_dir: settings.company_modules_dir(),
            config: settings.config,
            data_dir: settings.data_dir,
            store,
            vault,
            modules,
            outbound,
            oauth,
            runtime,
            audit,
            metrics: Default::default(),
            deliveries,
            usage,
        })
    }

    /// The REST API's shared state over this host.
    pub fn api_state(&self) -> Arc<AppState> {
        Arc::new(AppState {
            runtime: self.runtime.clone(),
            store: self.store.clone(),
            vault: self.vault.clone(),
            modules: self.modules.clone(),
            oauth: self.oauth.clone(),
            metrics: self.metrics.clone(),
            deliveries: self.deliveries.clone(),
            endpoints: self.endpoints(),
            usage: self.usage.clone(),
            subscriptions: self.subscriptions.clone(),
            audit: self.audit.clone(),
            installs: crate::server::install_jobs::InstallJobs::new(
                self.config.module_install.answer_within(),
            ),
            install_dir: self.company_modules_dir.clone(),
            workspaces_dir: self
                .config
                .workspaces_dir
                .clone()
                .unwrap_or_else(|| self.data_dir.join("workspaces")),
            max_body_bytes: self.config.max_body_bytes,
            max_module_bytes: self.config.max_module_bytes,
            oci: self.config.oci.clone(),
            step_rate: crate::server::rate_limit::RateLimiter::new(
                self.config.rate_limits.steps_per_second,
                self.config.rate_limits.steps_burst,
            ),
            refused_webhook_audit: crate::server::rate_limit::RateLimiter::new(
                1.0 / 60.0,
                crate::server::WEBHOOK_REFUSED_AUDIT_BURST,
            ),
            public_url: self.config.public_base(),
            metrics_token_hash: self.config.metrics_token.as_ref().map(|t| {
                use sha2::Digest;
                sha2::Sha256::digest(t.expose().as_bytes()).into()
            }),
            tokens: crate::server::auth::TokenCache::new(
                crate::store::read_cache::Records::Tokens,
                self.config.record_cache(),
            ),
        })
    }

    /// The company endpoint and redelivery operations over this host's parts.
    pub fn endpoints(&self) -> crate::delivery::endpoint::EndpointAdmin {
        crate::delivery::endpoint::EndpointAdmin::new(
            self.store.clone(),
            self.vault.clone(),
            self.outbound.clone(),
            self.audit.clone(),
            self.deliveries.clone(),
            self.config.delivery.replay_on_endpoint_set_hours,
        )
    }

    /// The deliverer of this host's event queue (`start_background_tasks` runs it
    /// when `delivery.enabled`).
    pub fn deliverer(&self) -> Arc<crate::delivery::Deliverer> {
        Arc::new(crate::delivery::Deliverer::new(
            self.store.clone(),
            self.vault.clone(),
            self.outbound.clone(),
            self.config.delivery.clone(),
            self.metrics.clone(),
            self.audit.clone(),
            self.deliveries.clone(),
        ))
    }

    /// Start what a serving host runs in the background: the refresh-journal flusher,
    /// when configured the background token refresher, the event deliverer and the
    /// webhook subscription renewer.
    pub fn start_background_tasks(&self) {
        if self.config.delivery.enabled {
            self.deliverer().spawn();
        }
        if let Some(s) = &self.subscriptions
            && self.config.webhook_subscriptions.check_seconds > 0
        {
            s.spawn_renewer();
        }
        if let Some(o) = &self.oauth {
            // Refreshes a crash or a store outage left in the journal reach the store first.
            o.spawn_journal_flusher(Duration::from_secs(2));
            if self.config.oauth_background_refresh_seconds > 0 {
                o.spawn_background_refresher(Duration::from_secs(
                    self.config.oauth_background_refresh_seconds,
                ));
            }
        }
    }
}
