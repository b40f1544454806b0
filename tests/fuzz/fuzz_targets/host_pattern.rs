//! Fuzz target: host patterns (`HostPattern::parse`, the manifest's `allowed_hosts` and
//! the catalogue's credential pins) and their matching against URLs. The input is a
//! pattern, a newline, and a URL. No input panics; a pattern prints as text that parses
//! back to itself; and a URL a pattern matches is on the pattern's scheme and port and
//! on its host: that exact name, or a strict subdomain of its domain that is a domain
//! name (never an IP address).
#![no_main]

use flow8_manifest::{HostMatch, HostPattern, PortMatch};
use libfuzzer_sys::fuzz_target;
use url::{Host, Url};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, url) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(p) = HostPattern::parse(pattern) else {
        return;
    };
    assert_eq!(
        HostPattern::parse(&p.to_string()).as_ref(),
        Ok(&p),
        "pattern {p} does not print as itself"
    );
    let Ok(url) = Url::parse(url) else {
        return;
    };
    if !p.matches(&url) {
        return;
    }
    assert_eq!(url.scheme(), p.scheme, "{p} matched {url}");
    let port = url
        .port_or_known_default()
        .expect("a matched URL has a port");
    if let PortMatch::Exact(want) = p.port {
        assert_eq!(port, want, "{p} matched {url}");
    }
    let host = url
        .host_str()
        .expect("a matched URL has a host")
        .trim_end_matches('.')
        .to_ascii_lowercase();
    match &p.host {
        HostMatch::Any => {}
        HostMatch::Exact(h) => assert_eq!(&host, h, "{p} matched {url}"),
        HostMatch::Subdomains(d) => {
            assert!(
                matches!(url.host(), Some(Host::Domain(_))),
                "{p} matched the IP address in {url}"
            );
            let under = host
                .strip_suffix(d.as_str())
                .and_then(|s| s.strip_suffix('.'));
            assert!(
                under.is_some_and(|label| !label.is_empty()),
                "{p} matched {url}, not a strict subdomain"
            );
        }
    }
});
