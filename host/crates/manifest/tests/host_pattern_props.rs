//! Property tests of host patterns against URLs: patterns and URLs are generated as
//! parts (scheme, labels or address, port, user info, case, trailing dot, IDN), and
//! `HostPattern::matches` must agree with an oracle that decides from those parts
//! alone, never from the URL parser's or the matcher's view. Whatever the URL's spelling,
//! no pattern matches a host it does not name: user info is not the host, a port is
//! not the default port, `*.domain` covers only strict subdomains that are names (an
//! IPv4 address in any spelling is no subdomain), and an IP literal matches the same
//! address however either side writes it.

use flow8_manifest::HostPattern;
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};
use url::Url;

/// Labels a generated name is made of: a few collide as suffixes of each other, one is
/// the punycode of the IDN label below, and one is all digits.
const LABELS: &[&str] = &["a", "b", "ex", "example", "com", "xn--exmple-cua", "7"];
/// `exämple`, which a URL parser turns into `xn--exmple-cua`.
const IDN: &str = "exämple";

#[derive(Debug, Clone, PartialEq)]
enum Name {
    /// Labels (indexes into LABELS), the top-level one last; never all digits at the end.
    Domain(Vec<usize>),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl Name {
    /// The canonical host, as the oracle sees it.
    fn labels(&self) -> Option<Vec<&'static str>> {
        match self {
            Name::Domain(l) => Some(l.iter().map(|&i| LABELS[i]).collect()),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum PatHost {
    Any,
    Exact(Name),
    /// `*.` and a domain of at least two labels.
    Subdomains(Vec<usize>),
}

#[derive(Debug, Clone)]
struct Pattern {
    https: bool,
    host: PatHost,
    /// None: the scheme's default port; Some(None): `:*`.
    port: Option<Option<u16>>,
}

#[derive(Debug, Clone)]
struct Spelled {
    https: bool,
    name: Name,
    /// How the name is written: case of each letter (by a bit mask), a trailing dot,
    /// IDN labels in Unicode, IPv4 in decimal or hex, IPv6 in a long form.
    upper: u32,
    trailing_dot: bool,
    unicode_idn: bool,
    v4_form: u8,
    v6_long: bool,
    port: Option<u16>,
    /// User info before the host, possibly itself looking like a host.
    userinfo: Option<String>,
}

const PORTS: &[u16] = &[80, 443, 8080, 8443];

fn domain(min: usize) -> impl Strategy<Value = Vec<usize>> {
    // The last label is not all digits: such a name is an IPv4 address to a URL parser.
    (
        prop::collection::vec(0..LABELS.len(), min - 1..=3),
        0..LABELS.len() - 1,
    )
        .prop_map(|(mut l, last)| {
            l.push(last);
            l
        })
}

fn name() -> impl Strategy<Value = Name> {
    prop_oneof![
        4 => domain(1).prop_map(Name::Domain),
        1 => prop_oneof![Just([127, 0, 0, 1]), Just([10, 0, 0, 7]), any::<[u8; 4]>()]
            .prop_map(|o| Name::V4(Ipv4Addr::from(o))),
        1 => prop_oneof![Just(Ipv6Addr::LOCALHOST), any::<[u16; 8]>().prop_map(Ipv6Addr::from)]
            .prop_map(Name::V6),
    ]
}

fn pattern() -> impl Strategy<Value = Pattern> {
    let host = prop_oneof![
        1 => Just(PatHost::Any),
        3 => name().prop_map(PatHost::Exact),
        3 => domain(2).prop_map(PatHost::Subdomains),
    ];
    let port = prop_oneof![
        Just(None),
        Just(Some(None)),
        prop::sample::select(PORTS).prop_map(|p| Some(Some(p))),
    ];
    (any::<bool>(), host, port).prop_map(|(https, host, port)| Pattern { https, host, port })
}

fn spelled() -> impl Strategy<Value = Spelled> {
    let userinfo = prop_oneof![
        3 => Just(None),
        1 => Just(Some("user".to_string())),
        1 => Just(Some("user:pw".to_string())),
        2 => domain(1).prop_map(|l| Some(l.iter().map(|&i| LABELS[i]).collect::<Vec<_>>().join("."))),
    ];
    (
        any::<bool>(),
        name(),
        any::<u32>(),
        any::<bool>(),
        any::<bool>(),
        0u8..3,
        any::<bool>(),
        prop::option::of(prop::sample::select(PORTS)),
        userinfo,
    )
        .prop_map(
            |(https, name, upper, trailing_dot, unicode_idn, v4_form, v6_long, port, userinfo)| {
                Spelled {
                    https,
                    name,
                    upper,
                    trailing_dot,
                    unicode_idn,
                    v4_form,
                    v6_long,
                    port,
                    userinfo,
                }
            },
        )
}

fn scheme(https: bool) -> &'static str {
    if https { "https" } else { "http" }
}

fn default_port(https: bool) -> u16 {
    if https { 443 } else { 80 }
}

impl Pattern {
    fn text(&self) -> String {
        let host = match &self.host {
            PatHost::Any => "*".to_string(),
            PatHost::Exact(Name::Domain(l)) => join(l),
            PatHost::Exact(Name::V4(a)) => a.to_string(),
            // Half of them in the long form, which the pattern must read as the same
            // address the URL names.
            PatHost::Exact(Name::V6(a)) if a.segments()[7] % 2 == 1 => long_v6(a),
            PatHost::Exact(Name::V6(a)) => format!("[{a}]"),
            PatHost::Subdomains(l) => format!("*.{}", join(l)),
        };
        let port = match self.port {
            None => String::new(),
            Some(None) => ":*".into(),
            Some(Some(p)) => format!(":{p}"),
        };
        format!("{}://{host}{port}", scheme(self.https))
    }
}

fn long_v6(a: &Ipv6Addr) -> String {
    let s = a.segments();
    format!(
        "[{:04x}:{:04x}:{:04x}:{:04x}:{:04x}:{:04x}:{:04x}:{:04x}]",
        s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]
    )
}

fn join(labels: &[usize]) -> String {
    labels
        .iter()
        .map(|&i| LABELS[i])
        .collect::<Vec<_>>()
        .join(".")
}

impl Spelled {
    fn text(&self) -> String {
        let host = match &self.name {
            Name::Domain(l) => {
                let mut bit = 0;
                let mut labels: Vec<String> = Vec::new();
                for &i in l {
                    let label = if self.unicode_idn && LABELS[i] == "xn--exmple-cua" {
                        IDN.to_string()
                    } else {
                        LABELS[i].to_string()
                    };
                    let cased: String = label
                        .chars()
                        .map(|c| {
                            bit += 1;
                            if self.upper & (1 << (bit % 32)) != 0 {
                                c.to_uppercase().next().unwrap_or(c)
                            } else {
                                c
                            }
                        })
                        .collect();
                    labels.push(cased);
                }
                let mut h = labels.join(".");
                if self.trailing_dot {
                    h.push('.');
                }
                h
            }
            Name::V4(a) => match self.v4_form {
                0 => a.to_string(),
                1 => u32::from(*a).to_string(),
                _ => format!("0x{:x}", u32::from(*a)),
            },
            Name::V6(a) => {
                if self.v6_long {
                    long_v6(a)
                } else {
                    format!("[{a}]")
                }
            }
        };
        let userinfo = self
            .userinfo
            .as_ref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        format!("{}://{userinfo}{host}{port}/path", scheme(self.https))
    }
}

/// The oracle: from the parts alone.
fn should_match(p: &Pattern, u: &Spelled) -> bool {
    if p.https != u.https {
        return false;
    }
    let port = u.port.unwrap_or(default_port(u.https));
    let port_ok = match p.port {
        None => port == default_port(p.https),
        Some(None) => true,
        Some(Some(want)) => port == want,
    };
    if !port_ok {
        return false;
    }
    match &p.host {
        PatHost::Any => true,
        PatHost::Exact(n) => match (n, &u.name) {
            (Name::Domain(_), Name::Domain(_)) => n.labels() == u.name.labels(),
            (Name::V4(a), Name::V4(b)) => a == b,
            (Name::V6(a), Name::V6(b)) => a == b,
            _ => false,
        },
        PatHost::Subdomains(d) => match u.name.labels() {
            Some(host) => {
                let d: Vec<&str> = d.iter().map(|&i| LABELS[i]).collect();
                host.len() > d.len() && host[host.len() - d.len()..] == d[..]
            }
            None => false,
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn a_pattern_matches_exactly_the_hosts_it_names(p in pattern(), u in spelled()) {
        let text = p.text();
        let parsed = HostPattern::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        // A pattern prints as text that parses back to itself.
        let reparsed = HostPattern::parse(&parsed.to_string());
        prop_assert_eq!(reparsed.as_ref(), Ok(&parsed));
        let spelled = u.text();
        let url = Url::parse(&spelled).map_err(|e| TestCaseError::fail(format!("{spelled}: {e}")))?;
        prop_assert_eq!(parsed.matches(&url), should_match(&p, &u), "{} against {} ({})", text, spelled, url);
    }

    /// A wildcard over a name whose last label is a number is over an IPv4 address
    /// (WHATWG URL's "ends in a number"): no URL is a subdomain of that.
    #[test]
    fn a_wildcard_over_a_number_is_refused(a in any::<[u8; 4]>(), tail in 1usize..4) {
        let addr = Ipv4Addr::from(a).to_string();
        let domain: Vec<&str> = addr.split('.').skip(4 - tail.max(2)).collect();
        let text = format!("https://*.{}", domain.join("."));
        prop_assert!(HostPattern::parse(&text).is_err(), "{} parsed", text);
    }
}
