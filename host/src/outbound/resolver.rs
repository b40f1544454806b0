//! The DNS resolver reqwest uses for module traffic. It resolves a name and drops every
//! address the operator's policy refuses, so the address that is checked is the address
//! that is connected to (no DNS-rebinding window between a check and the connect).

use super::address;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::SocketAddr;

/// The error a refused resolution carries; found again in reqwest's error chain to give
/// the module a `forbidden` error instead of a generic network one. Its message does
/// not say what the name resolved to: that would let a module map the host's internal
/// network through names it controls. The addresses go to the operator's log only.
#[derive(Debug, thiserror::Error)]
#[error("`{host}` resolves only to addresses the operator does not allow modules to reach")]
pub struct AddressRefused {
    /// The host name.
    pub host: String,
}

/// Resolves with the system resolver, then filters by policy.
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    /// Let loopback through.
    pub allow_loopback: bool,
    /// Let private ranges through.
    pub allow_private: bool,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| address::allowed(a.ip(), policy.allow_loopback, policy.allow_private))
                .collect();
            if allowed.is_empty() {
                let addrs = found
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                tracing::info!(%host, %addrs, "a module's request went to a name that resolves only to refused addresses");
                return Err(Box::new(AddressRefused { host }) as _);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}
