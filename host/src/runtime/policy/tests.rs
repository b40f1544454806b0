//! The step policy as a table: manifest hosts, grants with their pins, the secrets the
//! module has read or had reflected back, the taint carried in from earlier steps, a
//! method, a URL, the binding to attach and the guest's headers, and the decision
//! expected. Then brute-force checks over small generated sets (taint and pins against
//! a plain set-membership oracle), buckets, refreshes, and redaction.

use super::redact::Redactor;
use super::*;
use base64::Engine;

/// How a test grant attaches; also decides its kind and service.
#[derive(Debug, Clone, Copy)]
enum A {
    /// An OAuth link: `Authorization: Bearer`.
    Bearer,
    /// An API-key component put in this header.
    Header(&'static str),
    /// An S3 component: SigV4.
    SigV4,
    /// An SMTP component: not attachable.
    NotHttp,
}

/// A grant: binding name, how it attaches, its pinned hosts.
#[derive(Debug, Clone, Copy)]
struct G(&'static str, A, &'static [&'static str]);

fn secret_of(binding: &str) -> String {
    format!("secret-of-{binding}")
}

fn grant(g: G) -> GrantedCredential {
    let G(binding, attach, pins) = g;
    let secret = Secret::new(secret_of(binding));
    let (kind, service, attach) = match attach {
        A::Bearer => (
            CredentialKind::OauthLink,
            "slack",
            Attach::Bearer(secret.clone()),
        ),
        A::Header(name) => (
            CredentialKind::Component,
            "http",
            Attach::Header {
                name: http::HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
                value: secret.clone(),
            },
        ),
        A::SigV4 => (
            CredentialKind::Component,
            "s3",
            Attach::AwsSigV4 {
                region: "eu-west-1".into(),
                service: "s3".into(),
                access_key_id: Secret::new("AKIAEXAMPLEEXAMPLE01".into()),
                secret_access_key: secret.clone(),
            },
        ),
        A::NotHttp => (CredentialKind::Component, "smtp", Attach::NotHttp),
    };
    GrantedCredential {
        binding: binding.into(),
        kind,
        service: service.into(),
        resource_id: format!("id-{binding}"),
        config: serde_json::json!({}),
        secrets: vec![("secret".into(), secret)],
        pinned: pins_of(pins),
        transfer: Vec::new(),
        attach,
    }
}

fn pins_of(list: &[&str]) -> Vec<Pin> {
    list.iter()
        .map(|p| Pin::parse(p).expect("test pin"))
        .collect()
}

fn patterns(list: &[&str]) -> Vec<HostPattern> {
    list.iter()
        .map(|p| HostPattern::parse(p).expect("test pattern"))
        .collect()
}

fn policy(manifest: &[&str], grants: &[G]) -> StepPolicy {
    StepPolicy::new(
        Arc::new(patterns(manifest)),
        grants.iter().copied().map(grant).collect(),
    )
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Allowed; the host attaches this binding (or nothing).
    Allow(Option<&'static str>),
    /// Refused as this kind, with this text in the message.
    Deny(DenialKind, &'static str),
}
use DenialKind::{AccessDenied, Forbidden, InvalidInput};
use Expect::{Allow, Deny};

#[derive(Debug, Clone, Copy)]
struct Case {
    name: &'static str,
    manifest: &'static [&'static str],
    grants: &'static [G],
    /// Bindings the module reads (`credentials.get`) before the request.
    read: &'static [&'static str],
    /// Responses to attached requests that came back with the binding's secret.
    reflected: &'static [(&'static str, Enc)],
    /// Taint the step's input or workspace carries in.
    inherited: &'static [Inh],
    method: &'static str,
    url: &'static str,
    attach: Option<&'static str>,
    /// Header names the module sets on the request.
    headers: &'static [&'static str],
    expect: Expect,
}

const PARTNER: G = G(
    "partner",
    A::Header("authorization"),
    &[
        "https://api.partner.example",
        "https://files.partner.example",
    ],
);
const FILES: G = G(
    "files",
    A::Header("x-files-key"),
    &[
        "https://files.partner.example",
        "https://cdn.partner.example",
    ],
);
/// Slack as the catalogue pins it: the Web API only.
const SLACK: G = G("slack", A::Bearer, &["https://slack.com/api/"]);
const API: G = G("api", A::Header("x-api-key"), &["http://127.0.0.1:8080"]);
/// An S3 component of bucket `invoices`, as the catalogue pins it: that bucket by
/// virtual host and by path, nothing else on the endpoint.
const S3: G = G(
    "s3",
    A::SigV4,
    &[
        "https://invoices.s3.eu-west-1.amazonaws.com",
        "https://s3.eu-west-1.amazonaws.com/invoices",
    ],
);
/// Its path-style twin on an S3-compatible endpoint.
const MINIO: G = G("minio", A::SigV4, &["http://127.0.0.1:9000/invoices"]);
/// SMTP: pinned to its mail host, which an HTTP request could name, and still not attachable.
const MAIL: G = G("mail", A::NotHttp, &["https://mail.partner.example"]);
/// A credential with no pins at all: once read, nothing may be reached.
const UNPINNED: G = G("ftp", A::NotHttp, &[]);

const M_PARTNER: &[&str] = &[
    "https://api.partner.example",
    "https://files.partner.example",
    "https://cdn.partner.example",
    "https://mail.partner.example",
    "https://other.example",
];
const ALL: &[G] = &[PARTNER, FILES, SLACK, API, S3, MAIL, UNPINNED, MINIO];

/// A taint carried in from an earlier step: its credential and pins.
#[derive(Debug, Clone, Copy)]
struct Inh(&'static str, &'static [&'static str]);

/// How a response carries a secret back.
#[derive(Debug, Clone, Copy)]
enum Enc {
    Plain,
    Base64,
    Hex,
    Percent,
    JsonEscaped,
    /// A body that does not hold it.
    Absent,
}

fn encode(secret: &str, enc: Enc) -> String {
    match enc {
        Enc::Plain => format!("{{\"echo\":\"{secret}\"}}"),
        Enc::Base64 => base64::engine::general_purpose::STANDARD.encode(secret),
        Enc::Hex => hex::encode_upper(secret),
        Enc::Percent => secret.bytes().map(|b| format!("%{b:02X}")).collect(),
        Enc::JsonEscaped => secret
            .chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect(),
        Enc::Absent => "{\"ok\":true}".into(),
    }
}

const BASE: Case = Case {
    name: "",
    manifest: M_PARTNER,
    grants: ALL,
    read: &[],
    reflected: &[],
    inherited: &[],
    method: "GET",
    url: "https://api.partner.example/v1",
    attach: None,
    headers: &[],
    expect: Allow(None),
};

const CASES: &[Case] = &[
    // The manifest's hosts: scheme, host, port.
    Case {
        name: "a manifest host is allowed",
        ..BASE
    },
    Case {
        name: "path, query and fragment do not matter",
        url: "https://api.partner.example/a/b?c=d#e",
        ..BASE
    },
    Case {
        name: "a host outside the manifest is refused",
        url: "https://evil.example/",
        expect: Deny(
            Forbidden,
            "https://evil.example:443 is not among the module's allowed hosts",
        ),
        ..BASE
    },
    Case {
        name: "an empty manifest allows nothing",
        manifest: &[],
        expect: Deny(Forbidden, "is not among the module's allowed hosts"),
        ..BASE
    },
    Case {
        name: "the scheme's default port is the pattern's port",
        url: "https://api.partner.example:443/",
        ..BASE
    },
    Case {
        name: "another port is another origin",
        url: "https://api.partner.example:8443/",
        expect: Deny(Forbidden, "https://api.partner.example:8443 is not among"),
        ..BASE
    },
    Case {
        name: "the pattern's scheme must match",
        url: "http://api.partner.example/",
        expect: Deny(Forbidden, "http://api.partner.example:80 is not among"),
        ..BASE
    },
    Case {
        name: "an explicit port in the pattern",
        manifest: &["http://127.0.0.1:8080"],
        url: "http://127.0.0.1:8080/x",
        ..BASE
    },
    Case {
        name: "an explicit port in the pattern refuses the next one",
        manifest: &["http://127.0.0.1:8080"],
        url: "http://127.0.0.1:8081/x",
        expect: Deny(Forbidden, "http://127.0.0.1:8081 is not among"),
        ..BASE
    },
    Case {
        name: "a :* pattern takes any port",
        manifest: &["http://127.0.0.1:*"],
        url: "http://127.0.0.1:65535/",
        ..BASE
    },
    Case {
        name: "a *. pattern covers deep subdomains",
        manifest: &["https://*.partner.example"],
        url: "https://a.b.partner.example/",
        ..BASE
    },
    Case {
        name: "a *. pattern does not cover its apex",
        manifest: &["https://*.partner.example"],
        url: "https://partner.example/",
        expect: Deny(Forbidden, "is not among the module's allowed hosts"),
        ..BASE
    },
    Case {
        name: "a *. pattern does not cover a longer name with the same suffix",
        manifest: &["https://*.partner.example"],
        url: "https://evilpartner.example/",
        expect: Deny(Forbidden, "is not among the module's allowed hosts"),
        ..BASE
    },
    Case {
        name: "host names match in any case and with a trailing dot",
        url: "https://API.Partner.Example./v1",
        ..BASE
    },
    Case {
        name: "user and password in the URL are refused",
        url: "https://user:pw@api.partner.example/",
        expect: Deny(
            InvalidInput,
            "URLs with user info are refused; attach credentials by binding",
        ),
        ..BASE
    },
    Case {
        name: "a user name alone in the URL is refused",
        url: "https://user@api.partner.example/",
        expect: Deny(InvalidInput, "user info"),
        ..BASE
    },
    Case {
        name: "ftp is not http",
        url: "ftp://api.partner.example/",
        expect: Deny(InvalidInput, "scheme `ftp` is not http or https"),
        ..BASE
    },
    Case {
        name: "file URLs are refused before any host check",
        url: "file:///etc/passwd",
        expect: Deny(InvalidInput, "scheme `file` is not http or https"),
        ..BASE
    },
    // Attaching a credential.
    Case {
        name: "attach to its own pinned host in the manifest",
        attach: Some("partner"),
        expect: Allow(Some("partner")),
        ..BASE
    },
    Case {
        name: "attach to its own pinned host that the manifest does not list",
        manifest: &["https://other.example"],
        url: "https://files.partner.example/upload",
        attach: Some("partner"),
        expect: Allow(Some("partner")),
        ..BASE
    },
    Case {
        name: "an S3 component reaches its buckets without a manifest entry",
        manifest: &[],
        url: "https://invoices.s3.eu-west-1.amazonaws.com/2026/01.pdf",
        attach: Some("s3"),
        expect: Allow(Some("s3")),
        ..BASE
    },
    Case {
        name: "an OAuth link reaches its service's API path",
        manifest: &[],
        url: "https://slack.com/api/chat.postMessage",
        attach: Some("slack"),
        expect: Allow(Some("slack")),
        ..BASE
    },
    Case {
        name: "attach to a manifest host the credential is not pinned to",
        url: "https://api.partner.example/",
        attach: Some("files"),
        expect: Deny(
            Forbidden,
            "credential `files` may only be sent to its own service's hosts, not https://api.partner.example:443",
        ),
        ..BASE
    },
    Case {
        name: "attach to a host neither listed nor pinned",
        url: "https://evil.example/",
        attach: Some("partner"),
        expect: Deny(Forbidden, "is not among the module's allowed hosts"),
        ..BASE
    },
    Case {
        name: "an S3 component pinned to one region cannot sign for another",
        manifest: &["https://*.s3.us-east-1.amazonaws.com"],
        url: "https://invoices.s3.us-east-1.amazonaws.com/k",
        attach: Some("s3"),
        expect: Deny(Forbidden, "credential `s3` may only be sent"),
        ..BASE
    },
    Case {
        name: "attach an unbound binding",
        attach: Some("nope"),
        expect: Deny(AccessDenied, "credential `nope` is not bound to this step"),
        ..BASE
    },
    Case {
        name: "attach an unbound binding to an unlisted host: the host is refused first",
        url: "https://evil.example/",
        attach: Some("nope"),
        expect: Deny(Forbidden, "is not among the module's allowed hosts"),
        ..BASE
    },
    Case {
        name: "an SMTP credential cannot be attached, even to its own host",
        url: "https://mail.partner.example/",
        attach: Some("mail"),
        expect: Deny(
            InvalidInput,
            "credential `mail` is not an HTTP credential; it cannot be attached to a request",
        ),
        ..BASE
    },
    Case {
        name: "an FTP credential cannot be attached to a manifest host",
        attach: Some("ftp"),
        expect: Deny(InvalidInput, "credential `ftp` is not an HTTP credential"),
        ..BASE
    },
    // Taint: reading a secret narrows where the step may go.
    Case {
        name: "granted but unread credentials do not narrow anything",
        url: "https://other.example/",
        ..BASE
    },
    Case {
        name: "after reading one credential its pins are reachable",
        read: &["partner"],
        url: "https://files.partner.example/",
        ..BASE
    },
    Case {
        name: "after reading one credential other manifest hosts are not",
        read: &["partner"],
        url: "https://other.example/",
        expect: Deny(
            Forbidden,
            "this step read credential `partner`, so it may only talk to that credential's hosts, not https://other.example:443",
        ),
        ..BASE
    },
    Case {
        name: "after reading two, a host in both pin lists is reachable",
        read: &["partner", "files"],
        url: "https://files.partner.example/",
        ..BASE
    },
    Case {
        name: "after reading two, a host only the first is pinned to is not",
        read: &["partner", "files"],
        url: "https://api.partner.example/",
        expect: Deny(Forbidden, "this step read credential `files`"),
        ..BASE
    },
    Case {
        name: "after reading two, a host only the second is pinned to is not",
        read: &["partner", "files"],
        url: "https://cdn.partner.example/",
        expect: Deny(Forbidden, "this step read credential `partner`"),
        ..BASE
    },
    Case {
        name: "after reading a credential with no pins, nothing is reachable",
        read: &["ftp"],
        expect: Deny(Forbidden, "this step read credential `ftp`"),
        ..BASE
    },
    Case {
        name: "read then attach the same credential to its host",
        read: &["partner"],
        url: "https://files.partner.example/",
        attach: Some("partner"),
        expect: Allow(Some("partner")),
        ..BASE
    },
    Case {
        name: "read one, attach another to a host only the attached one is pinned to",
        read: &["partner"],
        url: "https://cdn.partner.example/",
        attach: Some("files"),
        expect: Deny(Forbidden, "this step read credential `partner`"),
        ..BASE
    },
    Case {
        name: "read one, attach another to a host both are pinned to",
        read: &["partner"],
        url: "https://files.partner.example/",
        attach: Some("files"),
        expect: Allow(Some("files")),
        ..BASE
    },
    Case {
        name: "the own-service allowance does not lift the taint",
        manifest: &[],
        read: &["partner"],
        url: "https://invoices.s3.eu-west-1.amazonaws.com/k",
        attach: Some("s3"),
        expect: Deny(Forbidden, "this step read credential `partner`"),
        ..BASE
    },
    Case {
        name: "reading an unbound binding is refused",
        read: &["nope"],
        expect: Deny(
            AccessDenied,
            "credential `nope` is not bound to this step (declare it in the manifest and bind it when running the step)",
        ),
        ..BASE
    },
    // Headers the module sets.
    Case {
        name: "ordinary headers are the module's",
        headers: &["content-type", "Accept", "X-Request-Id"],
        ..BASE
    },
    Case {
        name: "without attachment the module may send its own Authorization",
        headers: &["Authorization"],
        ..BASE
    },
    Case {
        name: "a module may use a secret it read, at that secret's hosts",
        read: &["partner"],
        headers: &["Authorization"],
        ..BASE
    },
    Case {
        name: "Authorization is refused when the host attaches it",
        attach: Some("partner"),
        headers: &["content-type", "authorization"],
        expect: Deny(
            InvalidInput,
            "header `authorization` is set by the host when it attaches credential `partner`; do not set it on this request",
        ),
        ..BASE
    },
    Case {
        name: "Authorization is refused in any case under a bearer token",
        manifest: &[],
        url: "https://slack.com/api/chat.postMessage",
        attach: Some("slack"),
        headers: &["AUTHORIZATION"],
        expect: Deny(InvalidInput, "header `AUTHORIZATION` is set by the host"),
        ..BASE
    },
    Case {
        name: "the API-key header of the attached credential is refused",
        manifest: &[],
        url: "http://127.0.0.1:8080/v1",
        attach: Some("api"),
        headers: &["X-Api-Key"],
        expect: Deny(InvalidInput, "when it attaches credential `api`"),
        ..BASE
    },
    Case {
        name: "an API-key credential leaves Authorization to the module",
        manifest: &[],
        url: "http://127.0.0.1:8080/v1",
        attach: Some("api"),
        headers: &["Authorization"],
        expect: Allow(Some("api")),
        ..BASE
    },
    Case {
        name: "the SigV4 signature's own headers are refused",
        manifest: &[],
        url: "https://invoices.s3.eu-west-1.amazonaws.com/k",
        attach: Some("s3"),
        headers: &["x-amz-acl", "X-Amz-Date"],
        expect: Deny(InvalidInput, "header `X-Amz-Date` is set by the host when"),
        ..BASE
    },
    Case {
        name: "the SigV4 payload hash is the host's",
        manifest: &[],
        url: "https://invoices.s3.eu-west-1.amazonaws.com/k",
        attach: Some("s3"),
        headers: &["x-amz-content-sha256"],
        expect: Deny(InvalidInput, "when it attaches credential `s3`"),
        ..BASE
    },
    Case {
        name: "other S3 headers are the module's",
        manifest: &[],
        url: "https://invoices.s3.eu-west-1.amazonaws.com/k",
        attach: Some("s3"),
        headers: &["x-amz-acl", "content-type", "x-amz-meta-invoice"],
        expect: Allow(Some("s3")),
        ..BASE
    },
    Case {
        name: "the destination is judged before the headers",
        url: "https://evil.example/",
        headers: &["Host"],
        expect: Deny(Forbidden, "is not among the module's allowed hosts"),
        ..BASE
    },
    // Resource pins (issue 18 item 7): the resource, not the origin or the domain.
    Case {
        name: "a Slack token is not sent to a hooks.slack.com webhook",
        manifest: &["https://hooks.slack.com"],
        url: "https://hooks.slack.com/services/T000/B000/XXXX",
        attach: Some("slack"),
        expect: Deny(Forbidden, "credential `slack` may only be sent"),
        ..BASE
    },
    Case {
        name: "a Slack token is not sent to slack.com outside /api/",
        manifest: &["https://slack.com"],
        url: "https://slack.com/intl/en-gb/",
        attach: Some("slack"),
        expect: Deny(Forbidden, "credential `slack` may only be sent"),
        ..BASE
    },
    Case {
        name: "a Slack token is not sent to files.slack.com",
        manifest: &[],
        url: "https://files.slack.com/upload",
        attach: Some("slack"),
        expect: Deny(Forbidden, "is not among the module's allowed hosts"),
        ..BASE
    },
    Case {
        name: "an encoded separator does not climb out of the API path",
        manifest: &["https://slack.com"],
        url: "https://slack.com/api/x%2F..%2F..%2Fhooks",
        attach: Some("slack"),
        expect: Deny(Forbidden, "credential `slack` may only be sent"),
        ..BASE
    },
    Case {
        name: "after reading a Slack token a webhook is out of reach",
        manifest: &["https://hooks.slack.com"],
        read: &["slack"],
        url: "https://hooks.slack.com/services/T000/B000/XXXX",
        expect: Deny(Forbidden, "this step read credential `slack`"),
        ..BASE
    },
    Case {
        name: "an S3 component does not sign for another bucket by virtual host",
        manifest: &["https://*.s3.eu-west-1.amazonaws.com"],
        url: "https://attacker.s3.eu-west-1.amazonaws.com/k",
        attach: Some("s3"),
        expect: Deny(Forbidden, "credential `s3` may only be sent"),
        ..BASE
    },
    Case {
        name: "an S3 component signs for its bucket by path",
        manifest: &[],
        url: "https://s3.eu-west-1.amazonaws.com/invoices/2026/01.pdf",
        attach: Some("s3"),
        expect: Allow(Some("s3")),
        ..BASE
    },
    Case {
        name: "an S3 component does not sign for another bucket by path",
        manifest: &["https://s3.eu-west-1.amazonaws.com"],
        url: "https://s3.eu-west-1.amazonaws.com/attacker/k",
        attach: Some("s3"),
        expect: Deny(Forbidden, "credential `s3` may only be sent"),
        ..BASE
    },
    Case {
        name: "a bucket whose name starts like the component's is another bucket",
        manifest: &["http://127.0.0.1:9000"],
        url: "http://127.0.0.1:9000/invoices-evil/k",
        attach: Some("minio"),
        expect: Deny(Forbidden, "credential `minio` may only be sent"),
        ..BASE
    },
    Case {
        name: "a path-style component signs for its bucket on its endpoint",
        manifest: &[],
        url: "http://127.0.0.1:9000/invoices/a/b.pdf",
        attach: Some("minio"),
        expect: Allow(Some("minio")),
        ..BASE
    },
    Case {
        name: "after reading S3 keys, another bucket on the same endpoint is out of reach",
        manifest: &["http://127.0.0.1:*"],
        read: &["minio"],
        url: "http://127.0.0.1:9000/attacker/keys.txt",
        expect: Deny(Forbidden, "this step read credential `minio`"),
        ..BASE
    },
    Case {
        name: "after reading S3 keys, the component's bucket is in reach",
        manifest: &["http://127.0.0.1:*"],
        read: &["minio"],
        url: "http://127.0.0.1:9000/invoices/k",
        ..BASE
    },
    // Methods (item 8).
    Case {
        name: "TRACE is refused",
        method: "TRACE",
        expect: Deny(
            Forbidden,
            "method `TRACE` is refused: it would echo the request or open a tunnel",
        ),
        ..BASE
    },
    Case {
        name: "TRACE is refused with a credential attached, in any case",
        method: "trace",
        attach: Some("partner"),
        expect: Deny(Forbidden, "method `trace` is refused"),
        ..BASE
    },
    Case {
        name: "TRACK is refused",
        method: "Track",
        expect: Deny(Forbidden, "method `Track` is refused"),
        ..BASE
    },
    Case {
        name: "CONNECT is refused",
        method: "CONNECT",
        expect: Deny(Forbidden, "method `CONNECT` is refused"),
        ..BASE
    },
    Case {
        name: "other methods are the module's",
        method: "PATCH",
        attach: Some("partner"),
        expect: Allow(Some("partner")),
        ..BASE
    },
    // A secret reflected by a response taints the step as a read would (item 8).
    Case {
        name: "a secret an echo endpoint returned confines the step",
        reflected: &[("partner", Enc::Plain)],
        url: "https://other.example/",
        expect: Deny(
            Forbidden,
            "a response returned to this step credential `partner`, so it may only talk to that credential's hosts",
        ),
        ..BASE
    },
    Case {
        name: "a reflected secret in base64 confines the step",
        reflected: &[("partner", Enc::Base64)],
        url: "https://other.example/",
        expect: Deny(
            Forbidden,
            "a response returned to this step credential `partner`",
        ),
        ..BASE
    },
    Case {
        name: "a reflected secret in upper-case hex confines the step",
        reflected: &[("partner", Enc::Hex)],
        url: "https://other.example/",
        expect: Deny(Forbidden, "credential `partner`"),
        ..BASE
    },
    Case {
        name: "a reflected secret percent-encoded confines the step",
        reflected: &[("partner", Enc::Percent)],
        url: "https://other.example/",
        expect: Deny(Forbidden, "credential `partner`"),
        ..BASE
    },
    Case {
        name: "a reflected secret in JSON escapes confines the step",
        reflected: &[("partner", Enc::JsonEscaped)],
        url: "https://other.example/",
        expect: Deny(Forbidden, "credential `partner`"),
        ..BASE
    },
    Case {
        name: "a reflected secret still lets the step reach its own hosts",
        reflected: &[("partner", Enc::Plain)],
        url: "https://files.partner.example/",
        ..BASE
    },
    Case {
        name: "an answer without the secret does not confine the step",
        reflected: &[("partner", Enc::Absent)],
        url: "https://other.example/",
        ..BASE
    },
    // Taint carried in from an earlier step (item 6).
    Case {
        name: "a step with no credential is held to the pins its workspace carries",
        grants: &[],
        inherited: &[Inh("api", &["http://127.0.0.1:8080"])],
        url: "https://other.example/",
        expect: Deny(
            Forbidden,
            "this step's input or workspace holds data derived from credential `api` (http) of an earlier step, so it may only talk to that credential's hosts, not https://other.example:443",
        ),
        ..BASE
    },
    Case {
        name: "the carried-in pins themselves are reachable",
        manifest: &["http://127.0.0.1:*"],
        grants: &[],
        inherited: &[Inh("api", &["http://127.0.0.1:8080"])],
        url: "http://127.0.0.1:8080/v1",
        ..BASE
    },
    Case {
        name: "a carried-in taint is not lifted by attaching the step's own credential",
        manifest: &[],
        inherited: &[Inh("api", &["http://127.0.0.1:8080"])],
        url: "https://slack.com/api/chat.postMessage",
        attach: Some("slack"),
        expect: Deny(Forbidden, "derived from credential `api`"),
        ..BASE
    },
    Case {
        name: "two carried-in taints: only what both allow",
        grants: &[],
        inherited: &[
            Inh(
                "a",
                &[
                    "https://api.partner.example",
                    "https://files.partner.example",
                ],
            ),
            Inh("b", &["https://files.partner.example"]),
        ],
        url: "https://api.partner.example/",
        expect: Deny(Forbidden, "derived from credential `b`"),
        ..BASE
    },
    Case {
        name: "a carried-in taint with no pins allows nothing",
        grants: &[],
        inherited: &[Inh("ftp", &[])],
        expect: Deny(Forbidden, "derived from credential `ftp`"),
        ..BASE
    },
];

/// One case, run as the capabilities run it: the reads, then the request's
/// authorization, then each header.
fn run(case: &Case) -> Result<Option<String>, PolicyDenial> {
    let mut p = policy(case.manifest, case.grants);
    p.inherit(case.inherited.iter().map(|Inh(c, pins)| Taint {
        credential: c.to_string(),
        service: "http".into(),
        pins: pins_of(pins),
    }));
    for b in case.read {
        p.record_secret_read(b)?;
    }
    for (b, enc) in case.reflected {
        let body = encode(&secret_of(b), *enc);
        let found = p.note_response(b, &[b"content-type: application/json\n", body.as_bytes()]);
        assert_eq!(found, !matches!(enc, Enc::Absent), "{}: {body}", case.name);
    }
    let url = Url::parse(case.url).expect("test URL");
    let authorized = p.authorize(&url, case.attach)?;
    StepPolicy::check_method(case.method)?;
    for h in case.headers {
        authorized.check_guest_header(h)?;
    }
    Ok(authorized.attached().map(|g| g.binding.clone()))
}

fn check(case: &Case) -> Result<(), String> {
    let got = run(case);
    let ok = match (case.expect, &got) {
        (Allow(want), Ok(attached)) => want == attached.as_deref(),
        (Deny(kind, text), Err(d)) => d.kind() == kind && d.to_string().contains(text),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{}: expected {:?}, got {:?}",
            case.name,
            case.expect,
            got.map_err(|d| format!("{:?} {d}", d.kind()))
        ))
    }
}

#[test]
fn the_decision_table() {
    assert!(CASES.len() >= 80, "{} rows", CASES.len());
    let failures: Vec<String> = CASES.iter().filter_map(|c| check(c).err()).collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Every forbidden header, in three spellings, with and without an attached credential.
#[test]
fn every_forbidden_header_is_refused_in_any_case() {
    let p = policy(M_PARTNER, ALL);
    let url = Url::parse("https://api.partner.example/v1").expect("url");
    let mut failures = Vec::new();
    for attach in [None, Some("partner")] {
        let authorized = p.authorize(&url, attach).expect("an allowed request");
        for name in headers::FORBIDDEN_HEADERS {
            let title: Vec<String> = name
                .split('-')
                .map(|w| w[..1].to_ascii_uppercase() + &w[1..])
                .collect();
            for spelling in [name.to_string(), name.to_ascii_uppercase(), title.join("-")] {
                let want = format!("header `{spelling}` is set by the host, not by modules");
                match authorized.check_guest_header(&spelling) {
                    Err(d) if d.kind() == InvalidInput && d.to_string() == want => {}
                    other => failures.push(format!("{spelling} (attach {attach:?}): {other:?}")),
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The union of the two lists the host used to keep, so neither check lost an entry.
#[test]
fn the_forbidden_list_covers_both_old_lists() {
    let guest_list = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
        "keep-alive",
    ];
    let component_list = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "expect",
        "proxy-connection",
    ];
    for h in guest_list.iter().chain(&component_list) {
        assert!(headers::is_forbidden(h), "{h}");
    }
    for h in headers::FORBIDDEN_HEADERS {
        assert_eq!(*h, h.to_ascii_lowercase(), "entries are lower case");
    }
    assert!(!headers::is_forbidden("authorization"));
    assert!(!headers::is_forbidden("x-api-key"));
}

/// Brute force: three credentials, each pinned to any subset of four hosts; a manifest
/// listing two of the hosts; every set of read credentials; every URL; attach nothing or
/// any one credential. The policy must agree with plain set membership: allowed exactly
/// when the URL is in the manifest or the attached credential's pins, in the attached
/// credential's pins, and in the pins of every credential read.
#[test]
fn taint_and_pins_agree_with_set_membership() {
    const HOSTS: [&str; 4] = [
        "https://a.example",
        "https://b.example",
        "https://c.example",
        "https://d.example",
    ];
    const BINDINGS: [&str; 3] = ["one", "two", "three"];
    let manifest = [HOSTS[0], HOSTS[1]];
    let urls: Vec<Url> = HOSTS
        .iter()
        .map(|h| Url::parse(&format!("{h}/path")).expect("url"))
        .collect();
    let in_set = |mask: u8, host: usize| mask & (1 << host) != 0;
    let mut checked = 0u32;
    for pins in 0..(16u32 * 16 * 16) {
        let masks: Vec<u8> = (0..3).map(|i| ((pins >> (4 * i)) & 0xf) as u8).collect();
        let grants: Vec<GrantedCredential> = (0..3)
            .map(|i| {
                let mut g = grant(G(BINDINGS[i], A::Bearer, &[]));
                g.pinned = pins_of(
                    &(0..4)
                        .filter(|&h| in_set(masks[i], h))
                        .map(|h| HOSTS[h])
                        .collect::<Vec<_>>(),
                );
                g
            })
            .collect();
        for reads in 0..8u8 {
            let mut p = StepPolicy::new(Arc::new(patterns(&manifest)), grants.clone());
            for (i, b) in BINDINGS.iter().enumerate() {
                if reads & (1 << i) != 0 {
                    p.record_secret_read(b).expect("granted");
                }
            }
            assert_eq!(p.is_tainted(), reads != 0);
            for (h, url) in urls.iter().enumerate() {
                for attach in [None, Some(0), Some(1), Some(2)] {
                    let pinned = |i: usize| in_set(masks[i], h);
                    let listed = h < manifest.len() || attach.is_some_and(pinned);
                    let want = listed
                        && attach.is_none_or(pinned)
                        && (0..3).all(|i| reads & (1 << i) == 0 || pinned(i));
                    let got = p.authorize(url, attach.map(|i| BINDINGS[i]));
                    match (&got, want) {
                        (Ok(a), true) => {
                            assert_eq!(
                                a.attached().map(|g| g.binding.as_str()),
                                attach.map(|i| BINDINGS[i])
                            );
                        }
                        (Err(d), false) => assert_eq!(d.kind(), Forbidden, "{d}"),
                        _ => panic!(
                            "pins {masks:?}, reads {reads:03b}, {url}, attach {attach:?}: expected allowed={want}, got {got:?}"
                        ),
                    }
                    // A taint denial names a credential that was read and is not pinned here.
                    if let Err(PolicyDenial::Tainted { binding, .. }) = &got {
                        let i = BINDINGS.iter().position(|b| b == binding).expect("known");
                        assert!(reads & (1 << i) != 0 && !pinned(i), "{got:?}");
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 4096 * 8 * 4 * 4);
}

#[test]
fn taint_is_recorded_per_credential() {
    let mut p = policy(M_PARTNER, ALL);
    assert!(!p.is_tainted());
    let fields = p.record_secret_read("files").expect("granted");
    assert_eq!(fields.secrets[0].1.expose(), secret_of("files"));
    p.record_secret_read("partner").expect("granted");
    p.record_secret_read("files")
        .expect("reading twice is fine");
    assert!(p.is_tainted());
    let mut read: Vec<&str> = p.read_bindings().collect();
    read.sort();
    assert_eq!(read, ["files", "partner"]);
    assert!(p.record_secret_read("nope").is_err());
}

#[test]
fn a_refresh_goes_ahead_once_per_link_and_only_for_links() {
    let mut p = policy(M_PARTNER, ALL);
    let deny = |r: Result<RefreshTicket<()>, PolicyDenial>| r.map(|_| ()).unwrap_err();

    let d = deny(p.begin_refresh("partner", Some(())));
    assert_eq!(d.kind(), InvalidInput);
    assert_eq!(
        d.to_string(),
        "credential `partner` is not an OAuth link; only links refresh"
    );
    let d = deny(p.begin_refresh("nope", Some(())));
    assert_eq!(d.kind(), AccessDenied);
    assert!(d.to_string().contains("declare it in the manifest"), "{d}");

    // A host without a refresher cannot refresh, and that does not use up the refresh.
    let d = deny(p.begin_refresh::<()>("slack", None));
    assert_eq!(d.kind(), DenialKind::TokenRevoked);
    assert_eq!(d.to_string(), "the slack token cannot be refreshed");

    let ticket = p.begin_refresh("slack", Some("refresher")).expect("first");
    assert_eq!(ticket.refresher, "refresher");
    assert_eq!(ticket.link_id, "id-slack");
    assert_eq!(ticket.rejected.expose(), secret_of("slack"));

    // Whether or not the refresh worked, a second one in the same step is refused.
    let d = deny(p.begin_refresh("slack", Some(())));
    assert_eq!(d.kind(), DenialKind::TokenRevoked);
    assert_eq!(
        d.to_string(),
        "the slack token was already refreshed once in this step and is still refused"
    );
}

#[test]
fn a_refreshed_token_is_attached_read_and_redacted_with_the_one_it_replaced() {
    let mut tiny = grant(G("tiny", A::Header("x-k"), &[]));
    tiny.secrets = vec![("pin".into(), Secret::new("12345".into()))];
    let mut p = StepPolicy::new(Arc::new(Vec::new()), vec![grant(SLACK), grant(API), tiny]);
    // A response scan before the refresh builds the searcher of the old token.
    assert!(p.note_response("slack", &[secret_of("slack").as_bytes()]));
    assert!(!p.note_response("slack", &[b"xoxb-refreshed-token"]));
    let _ticket = p.begin_refresh("slack", Some(())).expect("first refresh");
    p.record_refresh("slack", Secret::new("xoxb-refreshed-token".into()))
        .expect("granted");
    // After it, responses are searched for the new token.
    assert!(p.note_response("slack", &[b"echo xoxb-refreshed-token"]));

    let url = Url::parse("https://slack.com/api/chat.postMessage").expect("url");
    let authorized = p.authorize(&url, Some("slack")).expect("own host");
    match &authorized.attached().expect("attached").attach {
        Attach::Bearer(t) => assert_eq!(t.expose(), "xoxb-refreshed-token"),
        other => panic!("{other:?}"),
    }
    let got = p.record_secret_read("slack").expect("granted");
    assert_eq!(got.secrets.len(), 1);
    assert_eq!(got.secrets[0].0, "access_token");
    assert_eq!(got.secrets[0].1.expose(), "xoxb-refreshed-token");

    // The new token, the one it replaced (the module may have read it), the other
    // grant's, and `12345` too: a value too short to be created now, stored before
    // that rule, is redacted anyway, not skipped.
    let mut values = p.redaction_values();
    values.sort();
    assert_eq!(
        values,
        [
            "12345".to_string(),
            secret_of("api"),
            secret_of("slack"),
            "xoxb-refreshed-token".to_string()
        ]
    );
    let text = "old secret-of-slack, new xoxb-refreshed-token, pin 12345, api secret-of-api";
    let want = "old ***, new ***, pin ***, api ***";
    assert_eq!(Redactor::new(p.redaction_values()).redact(text), want);
    // The output's redactor, joined from the grants' searchers and the retired token,
    // hides the same values.
    assert_eq!(p.output_redactor().redact(text), want);
    assert_eq!(
        p.output_redactor()
            .redact_value(serde_json::json!({"xoxb-refreshed-token": [hex::encode("12345")]})),
        serde_json::json!({"***": ["***"]})
    );
    assert!(p.record_refresh("nope", Secret::new("x".into())).is_err());
    // The policy holds the searchers now; its `Debug` (and theirs) shows no secret.
    let shown = format!("{p:?} {:?}", p.output_redactor());
    for secret in p.redaction_values() {
        assert!(!shown.contains(&secret), "{secret} in {shown}");
        assert!(
            !shown.contains(&format!("{:?}", secret.as_bytes())),
            "{shown}"
        );
    }
}

#[test]
fn redaction_values_cover_every_secret_field_once() {
    let mut s3 = grant(S3);
    s3.secrets.push((
        "access_key_id".into(),
        Secret::new("AKIAEXAMPLEEXAMPLE01".into()),
    ));
    // The same value under two bindings is listed once.
    let mut twin = grant(G("twin", A::Header("x-k"), &[]));
    twin.secrets = vec![("k".into(), Secret::new(secret_of("s3")))];
    let p = StepPolicy::new(Arc::new(Vec::new()), vec![s3, twin]);
    let mut values = p.redaction_values();
    values.sort();
    assert_eq!(
        values,
        ["AKIAEXAMPLEEXAMPLE01".to_string(), secret_of("s3")]
    );
    assert!(StepPolicy::default().redaction_values().is_empty());
}

/// The texts modules see (and the end-to-end tests look for).
#[test]
fn messages_are_the_ones_modules_see() {
    let d = |b: &str| b.to_string();
    let cases = [
        (
            PolicyDenial::NotBound {
                binding: d("api"),
                asked_by: BindingUse::Request,
            },
            "credential `api` is not bound to this step",
        ),
        (
            PolicyDenial::NotBound {
                binding: d("api"),
                asked_by: BindingUse::Credentials,
            },
            "credential `api` is not bound to this step (declare it in the manifest and bind it when running the step)",
        ),
        (
            PolicyDenial::HostNotAllowed {
                destination: d("http://example.com:80"),
            },
            "http://example.com:80 is not among the module's allowed hosts",
        ),
        (
            PolicyDenial::HostOwnedHeader { name: d("Host") },
            "header `Host` is set by the host, not by modules",
        ),
    ];
    for (denial, text) in cases {
        assert_eq!(denial.to_string(), text);
    }
}

/// Redaction (issue 18 item 9): every form a secret can take in text, searched after
/// decoding percent-encoding and JSON escapes, and in the parsed output.
#[test]
fn the_redaction_table() {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    const S: &str = "xoxp-1234-secret/+?";
    let r = Redactor::new([S.to_string()]);
    let json_escaped: String = S.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
    let percent: String = S.bytes().map(|b| format!("%{b:02x}")).collect();
    let rows: Vec<(&str, String, String)> = vec![
        ("plain", format!("token={S};"), "token=***;".into()),
        ("twice", format!("{S}{S}"), "***".into()),
        ("base64", STANDARD.encode(S), "***".into()),
        ("base64 url-safe", URL_SAFE_NO_PAD.encode(S), "***".into()),
        ("hex", hex::encode(S), "***".into()),
        ("HEX", hex::encode_upper(S), "***".into()),
        ("percent", format!("a={percent}&b=1"), "a=***&b=1".into()),
        (
            "percent, mixed with plain",
            format!("a={}%2d{}", &S[..4], &S[5..]),
            "a=***".into(),
        ),
        (
            "JSON escapes",
            format!("\"{json_escaped}\""),
            "\"***\"".into(),
        ),
        (
            "JSON escapes, some",
            format!("{}\\u0070{}", &S[..3], &S[4..]),
            "***".into(),
        ),
        (
            "nothing to hide",
            "ordinary text".into(),
            "ordinary text".into(),
        ),
    ];
    let mut failures = Vec::new();
    for (name, text, want) in &rows {
        let got = r.redact(text);
        if &got != want {
            failures.push(format!("{name}: {text:?} -> {got:?}, want {want:?}"));
        }
    }
    // Inside a longer base64 text, at each of the three alignments (Basic auth).
    for prefix in ["u:", "us:", "use:"] {
        let text = STANDARD.encode(format!("{prefix}{S}"));
        let got = r.redact(&text);
        if !got.contains(MASK_TEXT) || got.len() >= text.len() {
            failures.push(format!("base64 behind {prefix:?}: {text} -> {got}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

const MASK_TEXT: &str = super::redact::MASK;

#[test]
fn the_parsed_output_is_redacted_in_every_string_key_and_number() {
    let r = Redactor::new(["xoxb-0123-token".to_string(), "987654".to_string()]);
    // What a module returns: the token in JSON escapes, as a key, nested, and a short
    // numeric secret as a number.
    let text =
        r#"{"a":"\u0078\u006f\u0078b-0123-token","xoxb-0123-token":[1,{"pin":987654}],"n":12}"#;
    assert!(
        !r.redact(text).contains("987654"),
        "textual redaction still covers plain forms"
    );
    let parsed: serde_json::Value = serde_json::from_str(text).expect("JSON");
    let out = r.redact_value(parsed);
    assert_eq!(
        out,
        serde_json::json!({"a": "***", "***": [1, {"pin": "***"}], "n": 12})
    );
    // Two keys that redact alike (the token and its hex) are both kept.
    let mut two = serde_json::Map::new();
    two.insert("xoxb-0123-token".into(), 1.into());
    two.insert(hex::encode("xoxb-0123-token"), 2.into());
    let out = r.redact_value(serde_json::Value::Object(two));
    let keys: Vec<&String> = out.as_object().expect("object").keys().collect();
    assert_eq!(keys.len(), 2, "{out}");
    assert!(keys.iter().all(|k| k.starts_with("***")), "{out}");
}

#[test]
fn short_secrets_are_redacted_not_skipped_and_refused_at_creation() {
    let r = Redactor::new(["pw1".to_string()]);
    assert_eq!(r.redact("user pw1, again pw1"), "user ***, again ***");
    assert_eq!(r.redact(&hex::encode("pw1")), "***");
    assert_eq!(
        r.redact_value(serde_json::json!({"k": "\u{70}w1"})),
        serde_json::json!({"k": "***"})
    );
    // Empty values match nothing (not everywhere).
    assert_eq!(Redactor::new([String::new()]).redact("abc"), "abc");
    assert_eq!(MIN_SECRET_LEN, 6);
}

#[test]
fn an_s3_component_signs_only_for_the_bucket_it_names() {
    let mut named = grant(MINIO);
    named.config = serde_json::json!({"bucket": "invoices"});
    let mut unnamed = grant(G("bare", A::SigV4, &[]));
    unnamed.config = serde_json::json!({});
    let p = StepPolicy::new(Arc::new(Vec::new()), vec![named, unnamed]);
    assert!(p.check_bucket("minio", "invoices").is_ok());
    let d = p.check_bucket("minio", "attacker").unwrap_err();
    assert_eq!(d.kind(), Forbidden);
    assert_eq!(
        d.to_string(),
        "credential `minio` is for bucket `invoices`; the host does not sign for bucket `attacker`"
    );
    let d = p.check_bucket("bare", "invoices").unwrap_err();
    assert_eq!(d.kind(), Forbidden);
    assert!(d.to_string().contains("names no bucket"), "{d}");
    assert_eq!(
        p.check_bucket("nope", "invoices").unwrap_err().kind(),
        AccessDenied
    );
}

#[test]
fn taints_list_what_the_step_held_then_what_it_inherited() {
    let mut p = policy(M_PARTNER, ALL);
    assert!(p.taints().is_empty());
    let carried = Taint {
        credential: "earlier".into(),
        service: "http".into(),
        pins: pins_of(&["https://api.partner.example"]),
    };
    p.inherit([carried.clone(), carried.clone()]);
    assert!(p.is_tainted());
    p.record_secret_read("files").expect("granted");
    assert!(p.note_response("api", &[secret_of("api").as_bytes()]));
    // A reflected secret is not a read one.
    assert_eq!(p.read_bindings().collect::<Vec<_>>(), ["files"]);
    let t = p.taints();
    let names: Vec<&str> = t.iter().map(|t| t.credential.as_str()).collect();
    assert_eq!(names, ["files", "api", "earlier"]);
    assert_eq!(t[1].pins, pins_of(&["http://127.0.0.1:8080"]));
    // As the report writes it, and back as a step request reads it.
    let text = serde_json::to_string(&t[2]).expect("json");
    assert_eq!(
        text,
        r#"{"credential":"earlier","service":"http","pins":["https://api.partner.example"]}"#
    );
    assert_eq!(serde_json::from_str::<Taint>(&text).expect("back"), t[2]);
    assert!(
        serde_json::from_str::<Taint>(r#"{"credential":"x","service":"y","pins":["not a pin"]}"#)
            .is_err()
    );
}

/// A body streamed to the workspace is searched piece by piece: a secret split across
/// two pieces, in any spelling `redact` knows, is still found, and marks the step.
#[test]
fn a_streamed_body_is_searched_across_its_pieces() {
    let secret = secret_of("api");
    let spellings = [
        secret.clone(),
        json_escaped(&secret),
        secret
            .bytes()
            .map(|b| format!("%{b:02X}"))
            .collect::<String>(),
    ];
    for spelling in spellings {
        for split in 1..spelling.len() {
            let mut p = policy(
                &[],
                &[G(
                    "api",
                    A::Header("x-api-key"),
                    &["https://api.example.com"],
                )],
            );
            let mut scan = p.reflection_scan("api").expect("bound");
            let (a, b) = spelling.split_at(split);
            let first = format!("{}{a}", "x".repeat(5000));
            let second = format!("{b}{}", "y".repeat(5000));
            assert!(!scan.finds_in(first.as_bytes()), "{spelling} at {split}");
            assert!(scan.finds_in(second.as_bytes()), "{spelling} at {split}");
            assert!(!p.is_tainted());
            p.note_reflected("api");
            assert!(p.is_tainted());
            assert_eq!(p.taints()[0].credential, "api");
        }
    }
    let p = policy(
        &[],
        &[G(
            "api",
            A::Header("x-api-key"),
            &["https://api.example.com"],
        )],
    );
    let mut scan = p.reflection_scan("api").expect("bound");
    assert!(!scan.finds_in(&vec![b'z'; 100_000]));
    assert!(p.reflection_scan("other").is_none());
}

fn json_escaped(text: &str) -> String {
    text.chars()
        .map(|c| format!("\\u{:04x}", c as u32))
        .collect()
}

#[test]
fn a_links_transfer_hosts_take_requests_without_the_token_and_never_with_it() {
    let mut link = grant(G(
        "microsoft",
        A::Bearer,
        &["https://graph.microsoft.com/v1.0/"],
    ));
    link.transfer = pins_of(&["https://*.sharepoint.com", "https://api.onedrive.com/rup/"]);
    let mut component = grant(G(
        "api",
        A::Header("x-api-key"),
        &["https://api.partner.example"],
    ));
    // A component's transfer hosts are never consulted (only links have them).
    component.transfer = pins_of(&["https://files.partner.example"]);
    let mut p = StepPolicy::new(Arc::new(Vec::new()), vec![link, component]);
    let upload = Url::parse("https://contoso-my.sharepoint.com/personal/_api/v2.0/up?tempauth=x")
        .expect("url");
    // No credential: allowed, nothing attached.
    let ok = p.authorize(&upload, None).expect("a transfer host");
    assert!(ok.attached().is_none());
    assert!(
        p.authorize(
            &Url::parse("https://api.onedrive.com/rup/abc").expect("url"),
            None
        )
        .is_ok()
    );
    // The token does not follow: a request there that asks for it is refused (a
    // transfer host takes only requests without a credential, and is not a pin).
    let d = p.authorize(&upload, Some("microsoft")).unwrap_err();
    assert_eq!(d.kind(), Forbidden);
    assert!(
        d.to_string()
            .contains("not among the module's allowed hosts"),
        "{d}"
    );
    // Not a transfer host, not a manifest host: refused.
    for url in [
        "https://evil.example/up",
        "https://api.onedrive.com/other",
        "https://files.partner.example/x",
    ] {
        let d = p
            .authorize(&Url::parse(url).expect("url"), None)
            .unwrap_err();
        assert_eq!(d.kind(), Forbidden, "{url}");
    }
    // A step that read the token may only talk to its pins: no transfer host either.
    p.record_secret_read("microsoft").expect("granted");
    let d = p.authorize(&upload, None).unwrap_err();
    assert!(d.to_string().contains("this step read"), "{d}");
}
