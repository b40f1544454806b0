//! Host configuration: defaults, then a YAML file (`--config` or `FLOW8_CONFIG`, the
//! shape of flow8's `config/config.yml`), then `FLOW8_*` environment variables. Unknown
//! keys in the file are refused, so a typo never silently does nothing.

use crate::manifest::HostPattern;
use crate::outbound::OutboundPolicy;
use crate::runtime::sandbox::StepLimits;
use crate::vault::Secret;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("config file {path} is not valid: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An environment variable is not valid.
    #[error("{name} is not valid: {message}")]
    Env {
        /// The variable.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// Egress settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Host patterns any module may reach (intersected with each manifest).
    pub allowed_hosts: Vec<String>,
    /// Let modules reach loopback addresses.
    pub allow_loopback: bool,
    /// Let modules reach private and link-local addresses.
    pub allow_private: bool,
    /// Largest response body handed to a module, bytes.
    pub max_response_bytes: usize,
    /// Let SMTP and FTP components log in without TLS (loopback relays, tests).
    pub allow_plaintext_login: bool,
    /// PEM file of extra CA certificates trusted by SMTP and FTP TLS.
    pub extra_ca_file: Option<PathBuf>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        let p = OutboundPolicy::default();
        OutboundConfig {
            allowed_hosts: p.allowed_hosts.iter().map(|h| h.to_string()).collect(),
            allow_loopback: p.allow_loopback,
            allow_private: p.allow_private,
            max_response_bytes: p.max_response_bytes,
            allow_plaintext_login: p.allow_plaintext_login,
            extra_ca_file: p.extra_ca_file,
        }
    }
}

/// Default per-step limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Step deadline.
    pub deadline_seconds: f64,
    /// Memory cap.
    pub memory_mib: usize,
    /// Output cap.
    pub output_kib: usize,
    /// Handles (open files, directories, streams) a step may hold at once.
    pub open_files: usize,
    /// Bytes a step may write to its workspace, MiB.
    pub workspace_mib: u64,
    /// Files, directories and links a step may create in its workspace.
    pub workspace_files: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = StepLimits::default();
        LimitsConfig {
            deadline_seconds: l.deadline.as_secs_f64(),
            memory_mib: l.memory_bytes / (1024 * 1024),
            output_kib: l.output_bytes / 1024,
            open_files: l.open_files,
            workspace_mib: l.workspace_bytes / (1024 * 1024),
            workspace_files: l.workspace_files,
        }
    }
}

/// The sandbox pool and each company's share of it (see `runtime::fair`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxesConfig {
    /// Sandboxes the pool holds: steps running at once on this host, all companies.
    pub pool: u32,
    /// Steps of one company running at once.
    pub per_company_running: usize,
    /// Steps of one company waiting for a sandbox; one more answers `rate_limit_exceeded`.
    pub per_company_waiting: usize,
}

impl Default for SandboxesConfig {
    fn default() -> Self {
        SandboxesConfig {
            pool: crate::runtime::EngineConfig::default().pool_instances,
            per_company_running: 32,
            per_company_waiting: 256,
        }
    }
}

/// Rate limits of the API, per company (a token bucket each).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// `POST /api/v1/steps` a company may make per second, sustained.
    pub steps_per_second: f64,
    /// Steps a company may start at once above that rate (the bucket's size).
    pub steps_burst: u32,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            steps_per_second: 100.0,
            steps_burst: 200,
        }
    }
}

/// How much the on-disk compile cache keeps (see `runtime::cache`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompileCacheConfig {
    /// The most MiB of compiled components kept; the least recently used go first.
    pub max_mib: u64,
    /// Entries unused for this many days are removed.
    pub max_age_days: u64,
}

impl Default for CompileCacheConfig {
    fn default() -> Self {
        CompileCacheConfig {
            max_mib: 2048,
            max_age_days: 30,
        }
    }
}

impl CompileCacheConfig {
    /// The cache's limits (call after `HostConfig::validate`, which bounds both).
    pub fn limits(&self) -> crate::runtime::cache::CacheLimits {
        crate::runtime::cache::CacheLimits {
            max_bytes: self.max_mib.saturating_mul(1024 * 1024),
            max_age: std::time::Duration::from_secs(self.max_age_days.saturating_mul(24 * 3600)),
        }
    }
}

/// Which module signatures the host trusts, and whether it requires them (see
/// `distribution::signature`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModuleSignaturesConfig {
    /// Every company's installed modules must carry a signature by a trusted key.
    pub required: bool,
    /// Public keys (`ed25519:<base64>`) trusted for every company.
    pub trusted_keys: Vec<String>,
    /// Per company: `required` over the host-wide one, and keys trusted for it alone.
    pub companies: std::collections::BTreeMap<String, CompanySignaturesConfig>,
}

/// One company's signature settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompanySignaturesConfig {
    /// Over the host-wide `required` (unset: the host-wide one).
    pub required: Option<bool>,
    /// Keys trusted for this company's modules, beside the host-wide ones.
    pub trusted_keys: Vec<String>,
}

/// Capability review of installed modules (see `runtime::review`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModuleReviewConfig {
    /// Installed modules run only once an admin approved what they ask for.
    pub require_approval: bool,
    /// Installed (third-party) modules may not declare `credentials.get`.
    pub forbid_credentials_get: bool,
}

/// How long an install over the API may take before it is answered as compiling
/// (`module_install:`; see `server::install_jobs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModuleInstallConfig {
    /// An install still compiling after this many seconds is answered `202 Accepted`
    /// with the install's status URL, and finishes in the background; 0 answers every
    /// install that way.
    pub answer_within_seconds: f64,
}

impl Default for ModuleInstallConfig {
    fn default() -> Self {
        ModuleInstallConfig {
            answer_within_seconds: 10.0,
        }
    }
}

impl ModuleInstallConfig {
    /// The wait (call after `HostConfig::validate`, which bounds it).
    pub fn answer_within(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.answer_within_seconds.clamp(0.0, 600.0))
    }
}

/// OCI registries the API may install modules from (the CLI pulls from any).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OciConfig {
    /// The registries, by `host[:port]`.
    pub registries: Vec<OciRegistryConfig>,
}

/// One OCI registry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OciRegistryConfig {
    /// `host` or `host:port`, as written in `oci://` references.
    pub host: String,
    /// Plain HTTP instead of HTTPS (a registry on loopback; never across a network).
    pub insecure: bool,
    /// Basic-auth user name (unset: anonymous).
    pub username: Option<String>,
    /// Its password.
    pub password: Option<Secret>,
}

/// The webhook subscription renewer (`webhook_subscriptions:`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSubscriptionsConfig {
    /// Renew a subscription that expires within this many seconds.
    pub renew_before_seconds: u64,
    /// How often `serve` looks for subscriptions due (0: never).
    pub check_seconds: u64,
    /// How long one host's renewal lease holds (a host that dies holding one delays
    /// the renewal by at most this).
    pub lease_seconds: u64,
}

impl Default for WebhookSubscriptionsConfig {
    fn default() -> Self {
        WebhookSubscriptionsConfig {
            renew_before_seconds: 3600,
            check_seconds: 60,
            lease_seconds: 60,
        }
    }
}

impl WebhookSubscriptionsConfig {
    /// The renewer's timing (call after `HostConfig::validate`).
    pub fn timing(&self) -> crate::subscriptions::Timing {
        crate::subscriptions::Timing {
            renew_before: std::time::Duration::from_secs(self.renew_before_seconds),
            check_every: std::time::Duration::from_secs(self.check_seconds.max(1)),
            lease: std::time::Duration::from_secs(self.lease_seconds),
        }
    }
}

/// Everything the host is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Where `serve` listens (flow8's default port is 4454).
    pub listen: SocketAddr,
    /// Data directory (store, key file, compile cache, installed modules).
    pub data_dir: Option<PathBuf>,
    /// Where links, components, tokens and the audit log live: `embedded` (SQLite in
    /// the data directory, the default) or a `mongodb://` URI. `FLOW8_STORE` overrides.
    /// A `Secret`: the URI may carry the database password.
    pub store: Secret,
    /// Extra module directories.
    pub modules_dirs: Vec<PathBuf>,
    /// Root of step workspaces (default `<data-dir>/workspaces`).
    pub workspaces_dir: Option<PathBuf>,
    /// Largest JSON request body the API accepts, bytes.
    pub max_body_bytes: usize,
    /// Largest `.wasm` an admin may install, bytes.
    pub max_module_bytes: usize,
    /// Egress policy.
    pub outbound: OutboundConfig,
    /// Default step limits.
    pub limits: LimitsConfig,
    /// Log as JSON lines.
    pub log_json: bool,
    /// Providers added to the shipped catalogue, or shipped ones changed (entries of
    /// `host/catalogue/providers.yaml`'s shape; see `crate::catalogue`).
    pub providers: serde_norway::Mapping,
    /// OAuth2 providers (flow8's `oauth2:` block): `slack: {client_id, client_secret,
    /// redirect_uri, scopes, ...}`, for any OAuth2 provider of the catalogue.
    pub oauth2: std::collections::BTreeMap<String, crate::oauth::providers::ProviderConfig>,
    /// Refresh OAuth tokens that expire within this many seconds (flow8: one hour).
    pub oauth_refresh_window_seconds: u64,
    /// How often `serve` renews links nearing expiry in the background (0: never).
    pub oauth_background_refresh_seconds: u64,
    /// How long a record read for one step or call may serve later ones
    /// (`store::read_cache`): a step's component and OAuth link, an API caller's token.
    /// The bound, in seconds, within which a record changed or deleted by another host
    /// or the CLI (a deleted component, an unlinked link, a revoked token) stops being
    /// used here; this host's own changes apply at once. 0 reads the store every time.
    /// `component_cache_seconds`, its name before it covered links and tokens, is read
    /// as this.
    #[serde(alias = "component_cache_seconds")]
    pub record_cache_seconds: f64,
    /// The sandbox pool and each company's share of it.
    pub sandboxes: SandboxesConfig,
    /// Per-company API rate limits.
    pub rate_limits: RateLimitsConfig,
    /// The compile cache's size and age limits.
    pub compile_cache: CompileCacheConfig,
    /// The webhook subscription renewer's timing.
    pub webhook_subscriptions: WebhookSubscriptionsConfig,
    /// The bearer token `/metrics` asks for (the operator's, not a company's; at least
    /// 16 characters). Unset: `/metrics` is off. `FLOW8_METRICS_TOKEN` overrides.
    pub metrics_token: Option<Secret>,
    /// The URL browsers reach this host at (`https://flow8.example.com`), the base of
    /// the connect links it hands out. Default: `http://<listen>`. Never taken from a
    /// request's `Host` or `X-Forwarded-*` headers, which a caller chooses.
    pub public_url: Option<String>,
    /// Trusted module signing keys and whether signatures are required.
    pub module_signatures: ModuleSignaturesConfig,
    /// Registries modules may be installed from over the API.
    pub oci: OciConfig,
    /// Capability review of installed modules.
    pub module_review: ModuleReviewConfig,
    /// Installs over the API that are still compiling (`module_install:`).
    pub module_install: ModuleInstallConfig,
    /// Delivering stored events to each company's endpoint (`delivery:`).
    pub delivery: crate::delivery::DeliveryConfig,
    /// Token-usage alerts (`usage_alerts:`).
    pub usage_alerts: crate::usage::UsageAlertsConfig,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 4454)),
            data_dir: None,
            store: Secret::new("embedded".into()),
            modules_dirs: Vec::new(),
            workspaces_dir: None,
            max_body_bytes: 1024 * 1024,
            max_module_bytes: crate::runtime::module::MAX_MODULE_BYTES,
            outbound: OutboundConfig::default(),
            limits: LimitsConfig::default(),
            log_json: false,
            providers: Default::default(),
            oauth2: Default::default(),
            oauth_refresh_window_seconds: 3600,
            oauth_background_refresh_seconds: 60,
            record_cache_seconds: DEFAULT_RECORD_CACHE.as_secs_f64(),
            sandboxes: SandboxesConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            compile_cache: CompileCacheConfig::default(),
            webhook_subscriptions: WebhookSubscriptionsConfig::default(),
            metrics_token: None,
            public_url: None,
            module_signatures: ModuleSignaturesConfig::default(),
            oci: OciConfig::default(),
            module_review: ModuleReviewConfig::default(),
            module_install: ModuleInstallConfig::default(),
            delivery: crate::delivery::DeliveryConfig::default(),
            usage_alerts: crate::usage::UsageAlertsConfig::default(),
        }
    }
}

/// How long a record may serve later reads by default (`record_cache_seconds`).
pub const DEFAULT_RECORD_CACHE: std::time::Duration = std::time::Duration::from_secs(2);

/// The longest `record_cache_seconds`: a deleted component, an unlinked link or a revoked
/// token must stop being used soon.
const MAX_RECORD_CACHE_SECONDS: f64 = 60.0;

impl HostConfig {
    /// How long a record may serve later reads (call after `validate`).
    pub fn record_cache(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(
            self.record_cache_seconds
                .clamp(0.0, MAX_RECORD_CACHE_SECONDS),
        )
    }
}

/// The largest sandbox pool (each sandbox reserves address space for its memory).
const MAX_SANDBOXES: u32 = 4096;
/// The most steps one company may keep waiting.
const MAX_WAITING: usize = 65_536;
/// The highest configurable step rate per company.
const MAX_STEPS_PER_SECOND: f64 = 100_000.0;
/// The largest configurable burst.
const MAX_BURST: u32 = 1_000_000;

/// A base URL browsers can open: http(s), a host, no query, fragment or userinfo.
fn check_public_url(u: &str) -> Result<(), String> {
    let url = url::Url::parse(u).map_err(|e| format!("`{u}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("`{u}` is not an http(s) URL with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!("`{u}` has a query, fragment or user name"));
    }
    Ok(())
}

fn env_bool(name: &str) -> Result<Option<bool>, ConfigError> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) => match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Some(true)),
            "0" | "false" | "no" | "off" | "" => Ok(Some(false)),
            _ => Err(ConfigError::Env {
                name: name.into(),
                message: format!("`{v}` is not true or false"),
            }),
        },
    }
}

impl HostConfig {
    /// Defaults, then the file (if any), then the environment.
    pub fn load(file: Option<&Path>) -> Result<HostConfig, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                serde_norway::from_str::<HostConfig>(&text).map_err(|e| ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?
            }
            None => HostConfig::default(),
        };
        if let Ok(v) = std::env::var("FLOW8_LISTEN") {
            config.listen = v.parse().map_err(|e| ConfigError::Env {
                name: "FLOW8_LISTEN".into(),
                message: format!("{e}"),
            })?;
        }
        if let Ok(v) = std::env::var("FLOW8_STORE")
            && !v.trim().is_empty()
        {
            config.store = Secret::new(v);
        }
        if let Some(b) = env_bool("FLOW8_ALLOW_LOOPBACK")? {
            config.outbound.allow_loopback = b;
        }
        if let Some(b) = env_bool("FLOW8_ALLOW_PRIVATE")? {
            config.outbound.allow_private = b;
        }
        if let Some(b) = env_bool("FLOW8_ALLOW_PLAINTEXT_LOGIN")? {
            config.outbound.allow_plaintext_login = b;
        }
        if let Ok(v) = std::env::var("FLOW8_EXTRA_CA_FILE")
            && !v.is_empty()
        {
            config.outbound.extra_ca_file = Some(PathBuf::from(v));
        }
        if let Ok(v) = std::env::var("FLOW8_METRICS_TOKEN")
            && !v.is_empty()
        {
            config.metrics_token = Some(Secret::new(v));
        }
        if let Some(b) = env_bool("FLOW8_LOG_JSON")? {
            config.log_json = b;
        }
        config.validate()?;
        Ok(config)
    }

    /// Check values a command's flags or the file set (also run by `load`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Invalid {
            path: PathBuf::from("(configuration)"),
            message,
        };
        for h in &self.outbound.allowed_hosts {
            HostPattern::parse(h).map_err(|e| bad(format!("outbound.allowed_hosts: {e}")))?;
        }
        // A CA file that does not load stops the host at start, not its first email.
        crate::outbound::connect::extra_roots(&self.outbound_policy())
            .map_err(|e| bad(e.to_string()))?;
        for (service, p) in &self.oauth2 {
            if p.auto_create_users {
                return Err(bad(format!(
                    "oauth2.{service}.auto_create_users: this host creates no users (flow8's user service does; a user here is only an id on API tokens and links); remove the key or set it to false"
                )));
            }
        }
        let catalogue = self
            .catalogue()
            .map_err(|e| bad(format!("providers: {e}")))?;
        crate::oauth::providers::configure(&catalogue, &self.oauth2).map_err(bad)?;
        crate::store::any::StoreLocation::parse(self.store.expose())
            .map_err(|e| bad(format!("store: {e}")))?;
        let min_deadline = crate::runtime::sandbox::MIN_DEADLINE_SECONDS;
        if !(min_deadline..=3600.0).contains(&self.limits.deadline_seconds) {
            return Err(bad(format!(
                "limits.deadline_seconds must be in [{min_deadline}, 3600]"
            )));
        }
        if !(1..=1024 * 1024).contains(&self.compile_cache.max_mib) {
            return Err(bad("compile_cache.max_mib must be 1-1048576".into()));
        }
        if !(1..=3650).contains(&self.compile_cache.max_age_days) {
            return Err(bad("compile_cache.max_age_days must be 1-3650".into()));
        }
        if !(0.0..=MAX_RECORD_CACHE_SECONDS).contains(&self.record_cache_seconds) {
            return Err(bad(format!(
                "record_cache_seconds must be 0-{MAX_RECORD_CACHE_SECONDS}"
            )));
        }
        if !(0.0..=600.0).contains(&self.module_install.answer_within_seconds) {
            return Err(bad(
                "module_install.answer_within_seconds must be 0-600".into()
            ));
        }
        let w = &self.webhook_subscriptions;
        if !(60..=30 * 86_400).contains(&w.renew_before_seconds) {
            return Err(bad(
                "webhook_subscriptions.renew_before_seconds must be 60-2592000".into(),
            ));
        }
        if w.check_seconds > 86_400 {
            return Err(bad(
                "webhook_subscriptions.check_seconds must be 0-86400".into()
            ));
        }
        if !(1..=3600).contains(&w.lease_seconds) {
            return Err(bad(
                "webhook_subscriptions.lease_seconds must be 1-3600".into()
            ));
        }
        if self.limits.memory_mib == 0 || self.limits.memory_mib > 1024 {
            return Err(bad("limits.memory_mib must be 1-1024".into()));
        }
        if self.limits.output_kib == 0 || self.limits.output_kib > 64 * 1024 {
            return Err(bad("limits.output_kib must be 1-65536".into()));
        }
        use crate::runtime::sandbox::{
            OPEN_FILES_RANGE, WORKSPACE_FILES_RANGE, WORKSPACE_MIB_RANGE,
        };
        if !OPEN_FILES_RANGE.contains(&self.limits.open_files) {
            return Err(bad(format!(
                "limits.open_files must be {}-{}",
                OPEN_FILES_RANGE.start(),
                OPEN_FILES_RANGE.end()
            )));
        }
        if !WORKSPACE_MIB_RANGE.contains(&self.limits.workspace_mib) {
            return Err(bad(format!(
                "limits.workspace_mib must be {}-{}",
                WORKSPACE_MIB_RANGE.start(),
                WORKSPACE_MIB_RANGE.end()
            )));
        }
        if !WORKSPACE_FILES_RANGE.contains(&self.limits.workspace_files) {
            return Err(bad(format!(
                "limits.workspace_files must be {}-{}",
                WORKSPACE_FILES_RANGE.start(),
                WORKSPACE_FILES_RANGE.end()
            )));
        }
        self.validate_sharing().map_err(bad)?;
        crate::distribution::signature::SignaturePolicy::from_config(&self.module_signatures)
            .map_err(|e| bad(e.to_string()))?;
        for r in &self.oci.registries {
            crate::distribution::oci::check_registry_host(&r.host)
                .map_err(|e| bad(format!("oci.registries: {e}")))?;
        }
        self.delivery
            .validate()
            .map_err(|e| bad(format!("delivery.{e}")))?;
        self.usage_alerts
            .validate()
            .map_err(|e| bad(format!("usage_alerts.{e}")))?;
        Ok(())
    }

    /// The `sandboxes:` and `rate_limits:` blocks.
    fn validate_sharing(&self) -> Result<(), String> {
        let s = &self.sandboxes;
        if !(1..=MAX_SANDBOXES).contains(&s.pool) {
            return Err(format!("sandboxes.pool must be 1-{MAX_SANDBOXES}"));
        }
        if !(1..=s.pool as usize).contains(&s.per_company_running) {
            return Err(format!(
                "sandboxes.per_company_running must be 1-{} (sandboxes.pool)",
                s.pool
            ));
        }
        if s.per_company_waiting > MAX_WAITING {
            return Err(format!(
                "sandboxes.per_company_waiting must be 0-{MAX_WAITING}"
            ));
        }
        if let Some(u) = &self.public_url {
            check_public_url(u).map_err(|e| format!("public_url: {e}"))?;
        }
        if let Some(t) = self.metrics_token.as_ref().map(Secret::expose)
            && (t.len() < 16 || t.chars().any(|c| !c.is_ascii_graphic()))
        {
            return Err(
                "metrics_token must be at least 16 printable ASCII characters, no spaces".into(),
            );
        }
        let r = &self.rate_limits;
        if !(r.steps_per_second > 0.0 && r.steps_per_second <= MAX_STEPS_PER_SECOND) {
            return Err(format!(
                "rate_limits.steps_per_second must be in (0, {MAX_STEPS_PER_SECOND}]"
            ));
        }
        if !(1..=MAX_BURST).contains(&r.steps_burst) {
            return Err(format!("rate_limits.steps_burst must be 1-{MAX_BURST}"));
        }
        Ok(())
    }

    /// The base of URLs handed to browsers (no trailing `/`).
    pub fn public_base(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.listen),
        }
    }

    /// Each company's share of the sandbox pool.
    pub fn company_share(&self) -> crate::runtime::fair::CompanyShare {
        crate::runtime::fair::CompanyShare {
            max_running: self.sandboxes.per_company_running,
            max_waiting: self.sandboxes.per_company_waiting,
        }
    }

    /// The provider catalogue: the shipped one with this file's `providers:` laid over it.
    pub fn catalogue(
        &self,
    ) -> Result<std::sync::Arc<crate::catalogue::Catalogue>, crate::catalogue::CatalogueError> {
        crate::catalogue::Catalogue::with_overrides(&self.providers)
    }

    /// The egress policy this configuration describes.
    pub fn outbound_policy(&self) -> OutboundPolicy {
        OutboundPolicy {
            allowed_hosts: self
                .outbound
                .allowed_hosts
                .iter()
                .filter_map(|h| HostPattern::parse(h).ok())
                .collect(),
            allow_loopback: self.outbound.allow_loopback,
            allow_private: self.outbound.allow_private,
            max_response_bytes: self.outbound.max_response_bytes,
            allow_plaintext_login: self.outbound.allow_plaintext_login,
            extra_ca_file: self.outbound.extra_ca_file.clone(),
            ..OutboundPolicy::default()
        }
    }

    /// The default step limits this configuration describes.
    pub fn step_limits(&self) -> StepLimits {
        StepLimits {
            deadline: Duration::from_secs_f64(self.limits.deadline_seconds),
            memory_bytes: self.limits.memory_mib * 1024 * 1024,
            output_bytes: self.limits.output_kib * 1024,
            open_files: self.limits.open_files,
            workspace_bytes: self.limits.workspace_mib * 1024 * 1024,
            workspace_files: self.limits.workspace_files,
            ..StepLimits::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_apply_and_typos_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.yml");
        std::fs::write(&p, "listen: 127.0.0.1:9999\noutbound:\n  allow_loopback: true\nlimits:\n  deadline_seconds: 5\n").unwrap();
        let c = HostConfig::load(Some(&p)).unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert!(c.outbound_policy().allow_loopback);
        assert_eq!(c.step_limits().deadline, Duration::from_secs(5));
        std::fs::write(&p, "listen: 127.0.0.1:9999\noutbund: {}\n").unwrap();
        assert!(matches!(
            HostConfig::load(Some(&p)),
            Err(ConfigError::Invalid { .. })
        ));
        std::fs::write(&p, "outbound:\n  allowed_hosts: ['https://*.com']\n").unwrap();
        assert!(HostConfig::load(Some(&p)).is_err());
    }

    #[test]
    fn a_printed_configuration_shows_none_of_its_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.yml");
        std::fs::write(
            &p,
            "store: mongodb://flow8:db-password-7d1e@127.0.0.1:27017/flow8\n\
             metrics_token: metrics-token-0123456789\n\
             oauth2:\n  slack:\n    client_id: c1\n    client_secret: client-secret-55aa\n    redirect_uri: https://app.flow8.io/auth/callback\n",
        )
        .unwrap();
        let c = HostConfig::load(Some(&p)).unwrap();
        assert!(
            c.store
                .expose()
                .starts_with("mongodb://flow8:db-password-7d1e@")
        );
        let printed = format!("{c:?} {c:#?}");
        for secret in [
            "db-password-7d1e",
            "metrics-token-0123456789",
            "client-secret-55aa",
        ] {
            assert!(!printed.contains(secret), "{secret} printed: {printed}");
        }
    }

    #[test]
    fn compile_cache_limits_load_and_out_of_range_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.yml");
        std::fs::write(&p, "compile_cache: { max_mib: 512, max_age_days: 7 }\n").unwrap();
        let limits = HostConfig::load(Some(&p)).unwrap().compile_cache.limits();
        assert_eq!(limits.max_bytes, 512 * 1024 * 1024);
        assert_eq!(
            limits.max_age,
            std::time::Duration::from_secs(7 * 24 * 3600)
        );
        for (bad, named) in [
            ("max_mib: 0", "compile_cache.max_mib"),
            ("max_mib: 18446744073709551615", "compile_cache.max_mib"),
            ("max_age_days: 0", "compile_cache.max_age_days"),
            ("max_age_days: 100000", "compile_cache.max_age_days"),
        ] {
            std::fs::write(&p, format!("compile_cache: {{ {bad} }}\n")).unwrap();
            let e = HostConfig::load(Some(&p)).unwrap_err().to_string();
            assert!(e.contains(named), "{bad}: {e}");
        }
    }

    #[test]
    fn the_install_answer_wait_loads_and_out_of_range_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.yml");
        assert_eq!(
            HostConfig::default().module_install.answer_within(),
            std::time::Duration::from_secs(10)
        );
        std::fs::write(&p, "module_install: { answer_within_seconds: 0.5 }\n").unwrap();
        let c = HostConfig::load(Some(&p)).unwrap();
        assert_eq!(
            c.module_install.answer_within(),
            std::time::Duration::from_millis(500)
        );
        for bad in ["-1", "601", ".nan"] {
            std::fs::write(
                &p,
                format!("module_install: {{ answer_within_seconds: {bad} }}\n"),
            )
            .unwrap();
            let e = HostConfig::load(Some(&p)).unwrap_err().to_string();
            assert!(
                e.contains("module_install.answer_within_seconds"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_record_cache_bound_loads_under_both_names_and_out_of_range_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.yml");
        assert_eq!(
            HostConfig::default().record_cache(),
            std::time::Duration::from_secs(2)
        );
        for key in ["record_cache_seconds", "component_cache_seconds"] {
            for (text, want) in [("0", 0), ("0.25", 250), ("60", 60_000)] {
                std::fs::write(&p, format!("{key}: {text}\n")).unwrap();
                let c = HostConfig::load(Some(&p)).unwrap();
                assert_eq!(
                    c.record_cache(),
                    std::time::Duration::from_millis(want),
                    "{key}: {text}"
                );
            }
            for bad in ["-1", "61", ".nan", ".inf"] {
                std::fs::write(&p, format!("{key}: {bad}\n")).unwrap();
                let e = HostConfig::load(Some(&p)).unwrap_err().to_string();
                assert!(
                    e.contains("record_cache_seconds must be 0-60"),
                    "{key}: {bad}: {e}"
                );
            }
        }
    }

    #[test]
    fn auto_create_users_is_refused_unless_false() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.yml");
        let provider = |extra: &str| {
            format!(
                "oauth2:\n  microsoft:\n    client_id: 550e8400-e29b-41d4-a716-446655440000\n    redirect_uri: https://app.flow8.io/auth/callback\n    scopes: [openid]\n{extra}"
            )
        };
        std::fs::write(&p, provider("    auto_create_users: true\n")).unwrap();
        let err = HostConfig::load(Some(&p)).unwrap_err().to_string();
        assert!(
            err.contains("oauth2.microsoft.auto_create_users")
                && err.contains("flow8's user service")
                && err.contains("remove the key or set it to false"),
            "{err}"
        );
        std::fs::write(&p, provider("    auto_create_users: false\n")).unwrap();
        assert!(HostConfig::load(Some(&p)).is_ok());
        std::fs::write(&p, provider("")).unwrap();
        assert!(HostConfig::load(Some(&p)).is_ok());
    }

    #[test]
    fn providers_and_oauth2_entries_for_them_load_and_unknown_services_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.yml");
        let crm = "providers:\n  acme-crm:\n    auth_mode: oauth2\n    authorize_url: https://login.acme.example/authorize\n    token_url: https://login.acme.example/token\n    revocation: none\n    identity_url: https://api.acme.example/me\n    identity: {user_id: [/id]}\n    api_base_url: https://api.acme.example\n    api_hosts: [https://api.acme.example]\n";
        std::fs::write(
            &p,
            format!("{crm}oauth2:\n  acme-crm:\n    client_id: c\n    redirect_uri: http://127.0.0.1:1/auth/callback\n"),
        )
        .unwrap();
        let c = HostConfig::load(Some(&p)).unwrap();
        assert!(c.catalogue().unwrap().oauth("acme-crm").is_some());
        // Without the providers entry the same oauth2 entry names what is known.
        std::fs::write(
            &p,
            "oauth2:\n  acme-crm:\n    client_id: c\n    redirect_uri: http://127.0.0.1:1/auth/callback\n",
        )
        .unwrap();
        let e = HostConfig::load(Some(&p)).unwrap_err().to_string();
        assert!(
            e.contains("oauth2.acme-crm: unknown OAuth service")
                && e.contains("known: microsoft, google, slack, clio, quickbooks, bexio"),
            "{e}"
        );
        // A broken providers entry names the provider and the field.
        std::fs::write(&p, crm.replace("https://login.acme.example/token", "nope")).unwrap();
        let e = HostConfig::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("provider `acme-crm`: `token_url`"), "{e}");
    }
}
