//! Property tests of the step policy (proptest): generated manifests, grants with
//! credential pins, secrets the module read or had reflected back, taint inherited
//! through a step workspace, and requests to URLs spelled in every way that matters
//! (case, trailing dot, ports, user info, encoded separators in the path). The policy
//! must agree with an oracle that decides from the generated parts alone: a request
//! leaves exactly when its destination is allowed and lies within the pins of the
//! credential attached to it, of every secret the step holds, and of every taint it
//! inherited. So no combination lets a secret reach a host outside its pins, and none
//! refuses what the rules allow.

use super::*;
use crate::runtime::taint::WorkspaceTaints;
use proptest::prelude::*;

/// Host names URLs are made of; some are subdomains of others.
const NAMES: &[&str] = &[
    "slack.com",
    "api.slack.com",
    "hooks.slack.com",
    "a.example",
    "b.a.example",
    "s3.local",
];

/// Paths: a pin's prefix covers some; `%2F` and `%2e` spellings are never under a prefix.
const PATHS: &[&str] = &[
    "/",
    "/api",
    "/api/chat.postMessage",
    "/api%2F..%2Fhooks",
    "/API/x",
    "/bucket",
    "/bucket/key",
    "/bucket-two/key",
    "/%2e%2e/bucket",
];

/// Pins a credential may have.
const PINS: &[&str] = &[
    "https://slack.com/api/",
    "https://*.slack.com",
    "https://a.example",
    "https://a.example:8443",
    "https://*.a.example:*",
    "http://s3.local/bucket",
    "https://hooks.slack.com/",
];

/// Hosts a manifest may allow.
const MANIFEST: &[&str] = &[
    "https://slack.com",
    "https://*.a.example",
    "https://*",
    "http://s3.local",
    "https://a.example:8443",
];

/// A URL in parts.
#[derive(Debug, Clone)]
struct Dest {
    https: bool,
    name: usize,
    upper: u16,
    trailing_dot: bool,
    port: Option<u16>,
    path: usize,
    userinfo: Option<&'static str>,
}

impl Dest {
    fn url(&self) -> Url {
        let name: String = NAMES[self.name]
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if self.upper & (1 << (i % 16)) != 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        let text = format!(
            "{}://{}{}{}{}{}",
            if self.https { "https" } else { "http" },
            self.userinfo.map(|u| format!("{u}@")).unwrap_or_default(),
            name,
            if self.trailing_dot { "." } else { "" },
            self.port.map(|p| format!(":{p}")).unwrap_or_default(),
            PATHS[self.path]
        );
        Url::parse(&text).expect("a generated URL parses")
    }

    fn port(&self) -> u16 {
        self.port.unwrap_or(if self.https { 443 } else { 80 })
    }
}

fn dest() -> impl Strategy<Value = Dest> {
    (
        any::<bool>(),
        0..NAMES.len(),
        any::<u16>(),
        any::<bool>(),
        prop::option::of(prop::sample::select(&[80u16, 443, 8443][..])),
        0..PATHS.len(),
        prop::option::of(prop::sample::select(&["u:pw", "slack.com"][..])),
    )
        .prop_map(
            |(https, name, upper, trailing_dot, port, path, userinfo)| Dest {
                https,
                name,
                upper,
                trailing_dot,
                port,
                path,
                userinfo,
            },
        )
}

/// The oracle's reading of a pin or pattern text: scheme, host (a leading `*.` for
/// strict subdomains, `*` for any), port (`None` for `:*`), path prefix.
fn covers(spec: &str, d: &Dest) -> bool {
    let (scheme, rest) = spec.split_once("://").expect("spec");
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    let (host, port) = match authority.split_once(':') {
        Some((h, "*")) => (h, None),
        Some((h, p)) => (h, Some(p.parse::<u16>().expect("port"))),
        None => (authority, Some(if scheme == "https" { 443 } else { 80 })),
    };
    if (scheme == "https") != d.https || port.is_some_and(|p| p != d.port()) {
        return false;
    }
    let name = NAMES[d.name];
    let host_ok = match host.strip_prefix("*.") {
        _ if host == "*" => true,
        Some(domain) => name.ends_with(&format!(".{domain}")),
        None => name == host,
    };
    if !host_ok {
        return false;
    }
    // `/` is every path: the pin is the whole origin.
    let Some(prefix) = prefix.filter(|p| *p != "/") else {
        return true;
    };
    // The path the request goes to: the URL parser resolves `%2e%2e` segments (WHATWG
    // URL) before anything else sees it.
    let url = d.url();
    let path = url.path();
    if path.to_ascii_lowercase().contains("%2") {
        return false;
    }
    if prefix.ends_with('/') {
        path.starts_with(prefix)
    } else {
        path == prefix || path.starts_with(&format!("{prefix}/"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Bearer,
    Header,
    NotHttp,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Held {
    No,
    Read,
    Reflected,
}

#[derive(Debug, Clone)]
struct GrantSpec {
    kind: Kind,
    pins: Vec<usize>,
    held: Held,
}

fn grant_spec() -> impl Strategy<Value = GrantSpec> {
    (
        prop::sample::select(&[Kind::Bearer, Kind::Header, Kind::NotHttp][..]),
        prop::collection::vec(0..PINS.len(), 0..3),
        prop::sample::select(&[Held::No, Held::No, Held::Read, Held::Reflected][..]),
    )
        .prop_map(|(kind, pins, held)| GrantSpec { kind, pins, held })
}

fn binding(i: usize) -> String {
    format!("cred{i}")
}

fn granted(i: usize, g: &GrantSpec) -> GrantedCredential {
    let secret = Secret::new(format!("s3cr3t-value-{i}"));
    let (kind, service, attach) = match g.kind {
        Kind::Bearer => (
            CredentialKind::OauthLink,
            "slack",
            Attach::Bearer(secret.clone()),
        ),
        Kind::Header => (
            CredentialKind::Component,
            "http",
            Attach::Header {
                name: http::HeaderName::from_static("x-api-key"),
                value: secret.clone(),
            },
        ),
        Kind::NotHttp => (CredentialKind::Component, "smtp", Attach::NotHttp),
    };
    GrantedCredential {
        binding: binding(i),
        kind,
        service: service.into(),
        resource_id: format!("id-{i}"),
        config: serde_json::json!({}),
        secrets: vec![("secret".into(), secret)],
        pinned: pins(&g.pins),
        transfer: Vec::new(),
        attach,
    }
}

fn pins(indexes: &[usize]) -> Vec<Pin> {
    indexes
        .iter()
        .map(|&i| Pin::parse(PINS[i]).expect("pool pin"))
        .collect()
}

fn all_cover(pin_indexes: &[usize], d: &Dest) -> bool {
    pin_indexes.iter().any(|&p| covers(PINS[p], d))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_request_leaves_exactly_when_every_secret_it_could_carry_is_pinned_there(
        manifest in prop::collection::vec(0..MANIFEST.len(), 0..3),
        grants in prop::collection::vec(grant_spec(), 0..4),
        inherited in prop::collection::vec(prop::collection::vec(0..PINS.len(), 0..3), 0..3),
        d in dest(),
        attach in prop::option::of(0usize..5),
    ) {
        let hosts: Vec<HostPattern> = manifest
            .iter()
            .map(|&i| HostPattern::parse(MANIFEST[i]).expect("pool pattern"))
            .collect();
        let mut policy = StepPolicy::new(
            Arc::new(hosts),
            grants.iter().enumerate().map(|(i, g)| granted(i, g)).collect(),
        );
        for (i, g) in grants.iter().enumerate() {
            match g.held {
                Held::No => {}
                Held::Read => {
                    policy.record_secret_read(&binding(i)).expect("granted");
                }
                Held::Reflected => {
                    // A response body that echoes the secret JSON-escaped in a field.
                    let body = format!("{{\"echo\":\"s3cr3t-value-{i}\"}}");
                    prop_assert!(policy.note_response(&binding(i), &[body.as_bytes()]));
                }
            }
        }
        policy.inherit(inherited.iter().enumerate().map(|(i, p)| Taint {
            credential: format!("earlier{i}"),
            service: "slack".into(),
            pins: pins(p),
        }));
        let url = d.url();
        let attach_name = attach.map(|i| if i < grants.len() { binding(i) } else { "unbound".into() });

        let held_ok = grants
            .iter()
            .all(|g| g.held == Held::No || all_cover(&g.pins, &d));
        let inherited_ok = inherited.iter().all(|p| all_cover(p, &d));
        let listed = manifest.iter().any(|&i| covers(MANIFEST[i], &d));
        let attach_ok = match attach {
            None => listed,
            Some(i) if i >= grants.len() => false,
            Some(i) => grants[i].kind != Kind::NotHttp && all_cover(&grants[i].pins, &d),
        };
        let want = d.userinfo.is_none() && attach_ok && held_ok && inherited_ok;
        let got = policy.authorize(&url, attach_name.as_deref());
        prop_assert_eq!(got.is_ok(), want, "{} attaching {:?}: {:?}", url, attach_name, got);
        if let Ok(a) = &got {
            prop_assert_eq!(a.attached().map(|g| g.binding.clone()), attach_name);
        }

        // The next step on the same workspace, with no credential and a manifest that
        // allows any host, is held to the same pins: through the record on disk, read
        // by a host that starts afresh.
        let taints = policy.taints();
        let held = grants.iter().filter(|g| g.held != Held::No).count();
        prop_assert_eq!(taints.len(), held + inherited.len());
        let data = tempfile::tempdir().expect("tempdir");
        let workspace = tempfile::tempdir().expect("tempdir");
        WorkspaceTaints::in_dir(data.path()).add(workspace.path(), &taints).expect("recorded");
        let carried = WorkspaceTaints::in_dir(data.path()).current(workspace.path()).expect("read");
        let any_host = ["https://*:*", "http://*:*"]
            .iter()
            .map(|p| HostPattern::parse(p).expect("pattern"))
            .collect();
        let mut next = StepPolicy::new(Arc::new(any_host), Vec::new());
        next.inherit(carried);
        let want_next = d.userinfo.is_none() && held_ok && inherited_ok;
        let got_next = next.authorize(&url, None);
        prop_assert_eq!(got_next.is_ok(), want_next, "next step to {}: {:?}", url, got_next);
    }
}
