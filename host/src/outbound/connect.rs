//! Connections the host opens for modules over protocols other than HTTP (SMTP for
//! `mail`, FTP for `file-transfer`). The destination is always a component's own host
//! and port, never one a module names, and it passes the same operator policy as HTTP:
//! the allowed hosts (matched on host and port, whatever their scheme) and the address
//! classes (no loopback or private address unless the operator allows it). A name is
//! resolved once and only an allowed address is connected to, so there is no window
//! between the check and the connect (as `resolver` does for HTTP).
//!
//! TLS for these connections trusts the Mozilla roots (`webpki-roots`, as reqwest does
//! here) plus the operator's `outbound.extra_ca_file` (an internal mail relay, tests).

use super::{OutboundError, OutboundPolicy, address};
use crate::manifest::HostPattern;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// `host:port` as a URL authority (IPv6 literals in brackets).
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Whether the operator's allowed hosts cover `host:port` (the patterns' schemes are
/// HTTP's; what counts here is their host and port).
pub fn operator_allows(policy: &OutboundPolicy, host: &str, port: u16) -> bool {
    let Ok(url) = url::Url::parse(&format!("https://{}/", authority(host, port))) else {
        return false;
    };
    policy.allowed_hosts.iter().any(|p| {
        HostPattern {
            scheme: "https".into(),
            ..p.clone()
        }
        .matches(&url)
    })
}

/// Whether the policy lets a connection reach `ip`; the refusal names its class.
pub fn check_address(policy: &OutboundPolicy, ip: IpAddr) -> Result<(), OutboundError> {
    if address::allowed(ip, policy.allow_loopback, policy.allow_private) {
        Ok(())
    } else {
        Err(OutboundError::Forbidden(format!(
            "address {ip} is {:?}, which the operator does not allow modules to reach",
            address::classify(ip)
        )))
    }
}

/// Open a TCP connection to `host:port` as the policy allows, within `timeout`.
pub async fn connect_tcp(
    policy: &OutboundPolicy,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, OutboundError> {
    if !operator_allows(policy, host, port) {
        return Err(OutboundError::Forbidden(format!(
            "the operator's policy does not allow {}",
            authority(host, port)
        )));
    }
    let work = async {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let candidates: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => {
                check_address(policy, ip)?;
                vec![SocketAddr::new(ip, port)]
            }
            Err(_) => {
                let found: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
                    .await
                    .map_err(|e| OutboundError::Network(format!("cannot resolve `{bare}`: {e}")))?
                    .collect();
                let allowed: Vec<SocketAddr> = found
                    .iter()
                    .copied()
                    .filter(|a| {
                        address::allowed(a.ip(), policy.allow_loopback, policy.allow_private)
                    })
                    .collect();
                if allowed.is_empty() {
                    // As for HTTP: the addresses go to the operator's log, not the module.
                    let addrs = found
                        .iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", ");
                    tracing::info!(host = %bare, %addrs, "a component's server resolves only to refused addresses");
                    return Err(OutboundError::Forbidden(
                        super::resolver::AddressRefused {
                            host: bare.to_string(),
                        }
                        .to_string(),
                    ));
                }
                allowed
            }
        };
        let mut last = None;
        for addr in candidates {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(OutboundError::Network(format!(
            "cannot connect to {}: {}",
            authority(host, port),
            last.map(|e| e.to_string()).unwrap_or_default()
        )))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(OutboundError::Timeout(timeout)),
    }
}

/// The extra trust anchors of `outbound.extra_ca_file`, DER.
pub fn extra_roots(policy: &OutboundPolicy) -> Result<Vec<CertificateDer<'static>>, OutboundError> {
    let Some(path) = &policy.extra_ca_file else {
        return Ok(Vec::new());
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            OutboundError::Network(format!(
                "cannot read outbound.extra_ca_file `{}`: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(OutboundError::Network(format!(
            "outbound.extra_ca_file `{}` holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// A small map of TLS client settings built once per process and then shared: they
/// hold the Mozilla roots and the operator's extra CA file, neither of which changes
/// while the host runs (the file is checked when the host starts), so building them
/// (reading and parsing the file) for every SMTP or FTP connection was wasted work.
/// Keyed by what they were built from; at most `MAX_TLS_SETTINGS` are kept.
pub struct TlsSettingsCache<K, V> {
    built: std::sync::Mutex<std::collections::HashMap<K, V>>,
}

/// Settings a [`TlsSettingsCache`] keeps before it starts again from empty.
const MAX_TLS_SETTINGS: usize = 256;

impl<K: std::hash::Hash + Eq, V: Clone> TlsSettingsCache<K, V> {
    /// An empty cache (for a `static`).
    pub fn new() -> TlsSettingsCache<K, V> {
        TlsSettingsCache {
            built: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The settings for `key`, built by `build` the first time (a failure is not kept:
    /// the next connection tries again).
    pub fn get_or_build<E>(&self, key: K, build: impl FnOnce() -> Result<V, E>) -> Result<V, E> {
        let lock = || {
            self.built
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some(v) = lock().get(&key) {
            return Ok(v.clone());
        }
        let v = build()?;
        let mut built = lock();
        if built.len() >= MAX_TLS_SETTINGS {
            built.clear();
        }
        built.insert(key, v.clone());
        Ok(v)
    }
}

impl<K: std::hash::Hash + Eq, V: Clone> Default for TlsSettingsCache<K, V> {
    fn default() -> Self {
        TlsSettingsCache::new()
    }
}

/// The client configurations [`tls_config`] built, by extra CA file.
static TLS_CONFIGS: std::sync::LazyLock<
    TlsSettingsCache<Option<std::path::PathBuf>, Arc<rustls::ClientConfig>>,
> = std::sync::LazyLock::new(TlsSettingsCache::new);

/// The TLS client configuration for SMTP and FTP connections: the Mozilla roots and
/// the operator's extra ones, certificates and names always verified. Built once per
/// extra CA file and process.
pub fn tls_config(policy: &OutboundPolicy) -> Result<Arc<rustls::ClientConfig>, OutboundError> {
    TLS_CONFIGS.get_or_build(policy.extra_ca_file.clone(), || build_tls_config(policy))
}

fn build_tls_config(policy: &OutboundPolicy) -> Result<Arc<rustls::ClientConfig>, OutboundError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots(policy)? {
        roots.add(cert).map_err(|e| {
            OutboundError::Network(format!(
                "outbound.extra_ca_file holds a bad certificate: {e}"
            ))
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OutboundError::Network(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_are_built_once_per_key_failures_are_not_kept_and_the_cache_is_bounded() {
        let cache = TlsSettingsCache::<u32, u32>::new();
        let mut builds = 0;
        for _ in 0..3 {
            let v = cache.get_or_build(7, || {
                builds += 1;
                Ok::<_, ()>(70)
            });
            assert_eq!(v, Ok(70));
        }
        assert_eq!(builds, 1);
        // A failed build is tried again by the next caller.
        assert_eq!(
            cache.get_or_build(8, || Err::<u32, _>("no file")),
            Err("no file")
        );
        assert_eq!(cache.get_or_build(8, || Ok::<_, &str>(80)), Ok(80));
        // Past its bound it starts again from empty rather than growing.
        for k in 0..(MAX_TLS_SETTINGS as u32 + 10) {
            cache.get_or_build(100 + k, || Ok::<_, ()>(k)).unwrap();
        }
        assert!(cache.built.lock().unwrap().len() <= MAX_TLS_SETTINGS);
    }

    fn policy(patterns: &[&str]) -> OutboundPolicy {
        OutboundPolicy {
            allowed_hosts: patterns
                .iter()
                .map(|p| HostPattern::parse(p).unwrap())
                .collect(),
            ..OutboundPolicy::default()
        }
    }

    #[test]
    fn the_operators_hosts_apply_by_host_and_port() {
        let any = OutboundPolicy::default();
        assert!(operator_allows(&any, "smtp.example.com", 587));
        let narrow = policy(&["https://smtp.example.com:587", "https://*.files.example:*"]);
        assert!(operator_allows(&narrow, "smtp.example.com", 587));
        assert!(!operator_allows(&narrow, "smtp.example.com", 25));
        assert!(!operator_allows(&narrow, "evil.example", 587));
        assert!(operator_allows(&narrow, "ftp.files.example", 21));
    }

    #[tokio::test]
    async fn refused_addresses_are_never_connected() {
        let p = OutboundPolicy::default();
        for host in [
            "127.0.0.1",
            "169.254.169.254",
            "10.0.0.1",
            "::1",
            "localhost",
        ] {
            match connect_tcp(&p, host, 25, Duration::from_secs(5)).await {
                Err(OutboundError::Forbidden(m)) => assert!(!m.is_empty()),
                other => panic!("{host}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn loopback_is_reached_when_allowed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = OutboundPolicy {
            allow_loopback: true,
            ..OutboundPolicy::default()
        };
        let s = connect_tcp(&p, "127.0.0.1", port, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(s.peer_addr().unwrap().port(), port);
    }
}
