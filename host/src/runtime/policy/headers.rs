//! Which request headers a module may set, and which header names a credential may be
//! attached under. One list serves both questions: a header the host owns is one a
//! module may not set and one a credential must not be put in.

use super::PolicyDenial;
use crate::runtime::grants::{Attach, GrantedCredential};

/// Headers the host sets (or keeps out) itself, lower case. A module may not set them
/// on a request, and an API-key component may not name one as its `auth_header`.
///
/// The union of the two lists the host used to keep (one for guest headers, one for
/// components), each entry for its own reason. Hop-by-hop headers are those of RFC 9110
/// §7.6.1 and the connection-specific ones of RFC 9113 §8.2.2; the host's HTTP client
/// owns the connection, so a module cannot use them to reshape it.
pub const FORBIDDEN_HEADERS: &[&str] = &[
    // Routing: the host authorizes a URL; another `Host` would send the request to a
    // different virtual host than the one the manifest and the pins allowed.
    "host",
    // Framing (RFC 9112 §6): a length or coding that disagrees with the body the host
    // sends is request smuggling.
    "content-length",
    "transfer-encoding",
    // Hop-by-hop connection management (RFC 9110 §7.6.1).
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    // Switching protocols would hand the connection to the module, out of the host's
    // request checks and response limits (RFC 9110 §7.8).
    "upgrade",
    // `100-continue` changes when and whether the client sends the body (RFC 9110
    // §10.1.1); the client decides that, not the module.
    "expect",
    // Credentials for a proxy the operator (not the module) configures: a module's
    // value would go to the proxy, and a credential put here would too.
    "proxy-authorization",
];

/// Whether `name` (any case) is a header only the host may set.
pub fn is_forbidden(name: &str) -> bool {
    FORBIDDEN_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
}

/// The headers the host writes when it attaches a credential, lower case. A module may
/// not set them on that request: the host would otherwise overwrite the module's value
/// silently (or, for a signature, sign over a value the module chose).
pub fn attached_headers(attach: &Attach) -> Vec<&str> {
    match attach {
        Attach::Bearer(_) => vec!["authorization"],
        Attach::Header { name, .. } => vec![name.as_str()],
        // What `outbound::sigv4::sign_request` adds.
        Attach::AwsSigV4 { .. } => vec!["authorization", "x-amz-date", "x-amz-content-sha256"],
        Attach::NotHttp => Vec::new(),
    }
}

/// Whether a module may set header `name` on a request the host attaches `attached` to
/// (`None`: attaches nothing). Case-insensitive, as header names are (RFC 9110 §5.1).
pub fn check_guest_header(
    name: &str,
    attached: Option<&GrantedCredential>,
) -> Result<(), PolicyDenial> {
    if is_forbidden(name) {
        return Err(PolicyDenial::HostOwnedHeader {
            name: name.to_string(),
        });
    }
    if let Some(grant) = attached
        && attached_headers(&grant.attach)
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
    {
        return Err(PolicyDenial::AttachedHeader {
            name: name.to_string(),
            binding: grant.binding.clone(),
        });
    }
    Ok(())
}
