//! The shipped catalogue loads and says what the Rust tables it replaced said; broken
//! entries are refused naming provider and field; the config file's `providers:` block
//! adds providers and changes shipped ones.

use super::api_key::{AttachRule, PinRule};
use super::checks::Check;
use super::oauth::{RefreshPolicy, Revocation, TokenDialect};
use super::*;

fn overrides(yaml: &str) -> Mapping {
    serde_norway::from_str(yaml).unwrap()
}

fn refused(yaml: &str) -> CatalogueError {
    Catalogue::with_overrides(&overrides(yaml)).unwrap_err()
}

/// `(provider, field)` of an `Invalid` error.
fn named(e: &CatalogueError) -> (&str, &str) {
    match e {
        CatalogueError::Invalid {
            provider, field, ..
        } => (provider, field),
        other => panic!("expected an entry error, got {other:?}"),
    }
}

#[test]
fn the_shipped_catalogue_loads_in_file_order() {
    let c = Catalogue::builtin();
    assert_eq!(
        c.oauth_names(),
        [
            "microsoft",
            "google",
            "slack",
            "clio",
            "quickbooks",
            "bexio"
        ]
    );
    assert_eq!(
        c.api_key_names(),
        ["s3", "anthropic", "openai", "smtp", "ftp", "http"]
    );
    assert!(c.oauth("s3").is_none() && c.api_key("slack").is_none());
}

/// The OAuth table the catalogue replaced (`oauth/providers.rs` `CATALOGUE`), value for
/// value.
#[test]
fn oauth_providers_keep_every_value_of_the_old_table() {
    type Row = (
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
        bool,
        TokenDialect,
        RefreshPolicy,
        &'static [&'static str],
        &'static str,
    );
    use RefreshPolicy::{Auto, Manual};
    use TokenDialect::{Slack, Standard};
    let old: &[Row] = &[
        (
            "microsoft",
            "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
            "https://login.microsoftonline.com/common/oauth2/v2.0/token",
            None,
            "https://graph.microsoft.com/v1.0/me",
            " ",
            &[],
            &["offline_access"],
            true,
            Standard,
            Auto,
            &[
                "https://graph.microsoft.com/v1.0/",
                "https://graph.microsoft.com/beta/",
            ],
            "https://graph.microsoft.com/v1.0",
        ),
        (
            "google",
            "https://accounts.google.com/o/oauth2/v2/auth",
            "https://oauth2.googleapis.com/token",
            Some("https://oauth2.googleapis.com/revoke"),
            "https://openidconnect.googleapis.com/v1/userinfo",
            " ",
            &[("access_type", "offline"), ("prompt", "consent")],
            &[],
            true,
            Standard,
            Auto,
            &[
                "https://www.googleapis.com/drive/",
                "https://www.googleapis.com/upload/drive/",
                "https://www.googleapis.com/calendar/",
                "https://www.googleapis.com/oauth2/",
                "https://gmail.googleapis.com/gmail/",
                "https://gmail.googleapis.com/upload/gmail/",
                "https://sheets.googleapis.com/v4/",
                "https://docs.googleapis.com/v1/",
                "https://people.googleapis.com/v1/",
                "https://openidconnect.googleapis.com/v1/",
            ],
            "https://www.googleapis.com",
        ),
        (
            "slack",
            "https://slack.com/oauth/v2/authorize",
            "https://slack.com/api/oauth.v2.access",
            Some("https://slack.com/api/auth.revoke"),
            "https://slack.com/api/auth.test",
            ",",
            &[],
            &[],
            false,
            Slack,
            Auto,
            &["https://slack.com/api/"],
            "https://slack.com/api",
        ),
        (
            "clio",
            "https://app.clio.com/oauth/authorize",
            "https://app.clio.com/oauth/token",
            Some("https://app.clio.com/oauth/deauthorize"),
            "https://app.clio.com/api/v4/users/who_am_i",
            " ",
            &[],
            &[],
            false,
            Standard,
            Manual,
            &[
                "https://app.clio.com/api/",
                "https://eu.app.clio.com/api/",
                "https://ca.app.clio.com/api/",
                "https://au.app.clio.com/api/",
            ],
            "https://app.clio.com/api/v4",
        ),
        (
            "quickbooks",
            "https://appcenter.intuit.com/connect/oauth2",
            "https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer",
            Some("https://developer.api.intuit.com/v2/oauth2/tokens/revoke"),
            "https://accounts.platform.intuit.com/v1/openid_connect/userinfo",
            " ",
            &[],
            &[],
            false,
            Standard,
            Auto,
            &[
                "https://quickbooks.api.intuit.com/v3/",
                "https://sandbox-quickbooks.api.intuit.com/v3/",
            ],
            "https://quickbooks.api.intuit.com/v3",
        ),
        (
            "bexio",
            "https://idp.bexio.com/authorize",
            "https://idp.bexio.com/token",
            None,
            "https://idp.bexio.com/userinfo",
            " ",
            &[],
            &[],
            false,
            Standard,
            Manual,
            &["https://api.bexio.com"],
            "https://api.bexio.com",
        ),
    ];
    let c = Catalogue::builtin();
    for (
        name,
        authorize,
        token,
        revoke,
        identity,
        sep,
        params,
        implied,
        pkce,
        dialect,
        refresh,
        hosts,
        base,
    ) in old
    {
        let p = c.oauth(name).unwrap();
        assert_eq!(p.authorize_url, *authorize, "{name}");
        assert_eq!(p.token_url, *token, "{name}");
        assert_eq!(p.revoke_url.as_deref(), *revoke, "{name}");
        assert_eq!(p.identity_url, *identity, "{name}");
        assert_eq!(p.scope_separator, *sep, "{name}");
        let want: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(p.authorize_params, want, "{name}");
        assert_eq!(p.implied_scopes, *implied, "{name}");
        assert_eq!(p.pkce, *pkce, "{name}");
        assert_eq!(p.dialect, *dialect, "{name}");
        assert_eq!(p.refresh, *refresh, "{name}");
        let pinned: Vec<String> = p.api_hosts.iter().map(|h| h.to_string()).collect();
        assert_eq!(pinned, *hosts, "{name}");
        // A report's `pinned_to` carries these; the API's written form covers them.
        for pin in p.api_hosts.iter().chain(&p.transfer_hosts) {
            assert!(pin.is_documented_form(), "{name}: {pin}");
        }
        assert_eq!(p.api_base_url, *base, "{name}");
        // Revocation was chosen by dialect (Slack's auth.revoke) and by whether there
        // was a URL.
        let style = match (revoke, dialect) {
            (None, _) => Revocation::None,
            (Some(_), Slack) => Revocation::SlackAuthRevoke,
            (Some(_), Standard) => Revocation::Rfc7009,
        };
        assert_eq!(p.revocation, style, "{name}");
        // The identity lists the callback read, in its order.
        assert_eq!(
            p.identity.user_id,
            ["/sub", "/id", "/user_id", "/userPrincipalName"],
            "{name}"
        );
        assert_eq!(
            p.identity.email,
            ["/email", "/mail", "/userPrincipalName"],
            "{name}"
        );
    }
    assert_eq!(
        c.oauth("quickbooks").unwrap().callback_metadata,
        ["realmId"]
    );
}

#[test]
fn api_key_providers_keep_the_old_field_table() {
    // (provider, kind, [(field, secret, required, check)]) from `components.rs` `PROVIDERS`.
    type Fields = &'static [(&'static str, bool, bool, Check)];
    use Check::*;
    let old: &[(&str, &str, Fields)] = &[
        (
            "s3",
            "storage",
            &[
                ("access_key_id", true, true, Text),
                ("secret_access_key", true, true, Text),
                ("bucket", false, false, Bucket),
                ("region", false, false, Region),
                ("endpoint", false, false, Origin),
                ("path_style", false, false, Bool),
            ],
        ),
        (
            "anthropic",
            "ai",
            // base_url since the AI modules: a compatible gateway.
            &[
                ("api_key", true, true, Text),
                ("model", false, false, Text),
                ("base_url", false, false, HttpUrl),
            ],
        ),
        (
            "openai",
            "ai",
            // base_url since the AI modules: a compatible gateway.
            &[
                ("api_key", true, true, Text),
                ("model", false, false, Text),
                ("base_url", false, false, HttpUrl),
            ],
        ),
        (
            "smtp",
            "smtp",
            &[
                ("host", false, true, Host),
                ("port", false, false, Port),
                ("username", false, true, Text),
                ("password", true, true, Text),
                ("security", false, false, SmtpSecurity),
                ("from", false, false, Email),
            ],
        ),
        (
            "ftp",
            "ftp",
            &[
                ("host", false, true, Host),
                ("port", false, false, Port),
                ("username", false, true, Text),
                ("password", true, true, Text),
                ("tls", false, false, Bool),
                ("base_dir", false, false, RemoteDir),
            ],
        ),
        (
            "http",
            "http",
            &[
                ("base_url", false, true, HttpUrl),
                ("auth_header", false, false, HeaderName),
                ("auth_value", true, false, Text),
                ("timeout_seconds", false, false, Int { min: 1, max: 300 }),
                ("max_retries", false, false, Int { min: 0, max: 10 }),
                ("allowed_hosts", false, false, HostList),
            ],
        ),
    ];
    let c = Catalogue::builtin();
    for (name, kind, fields) in old {
        let p = c.api_key(name).unwrap();
        assert_eq!(p.kind, *kind);
        let got: Vec<(&str, bool, bool, Check)> = p
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.secret, f.required, f.check))
            .collect();
        assert_eq!(got, *fields, "{name}");
    }
    // An AI key goes to its provider's API and, when the component names one, to its
    // gateway: nowhere else.
    for (name, host) in [
        ("openai", "https://api.openai.com"),
        ("anthropic", "https://api.anthropic.com"),
    ] {
        let p = c.api_key(name).unwrap();
        let config = |base: Option<&str>| {
            let mut m = serde_json::Map::new();
            if let Some(b) = base {
                m.insert("base_url".into(), b.into());
            }
            p.pins(&m)
                .unwrap()
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(config(None), [host], "{name}");
        assert_eq!(
            config(Some("https://gw.example.com/v1")),
            [host, "https://gw.example.com"],
            "{name}"
        );
    }
    let http = c.api_key("http").unwrap();
    assert_eq!(
        http.attach,
        AttachRule::Header {
            name: Some("Authorization".into()),
            name_field: Some("auth_header".into()),
            value_field: "auth_value".into()
        }
    );
    assert_eq!(
        http.pins,
        [
            PinRule::OriginOf("base_url".into()),
            PinRule::HostList("allowed_hosts".into())
        ]
    );
    assert_eq!(c.api_key("smtp").unwrap().attach, AttachRule::None);
}

#[test]
fn a_broken_entry_is_refused_naming_provider_and_field() {
    let cases = [
        (
            "slack: {token_url: 'not a url'}",
            ("slack", "token_url"),
            "is not a URL",
        ),
        (
            "slack: {api_hosts: ['https://*']}",
            ("slack", "api_hosts[0]"),
            "every host",
        ),
        (
            "microsoft: {transfer_hosts: ['https://*']}",
            ("microsoft", "transfer_hosts[0]"),
            "every host",
        ),
        (
            "slack: {revocation: sometimes}",
            ("slack", "revocation"),
            "unknown variant",
        ),
        (
            "google: {revocation: none}",
            ("google", "revoke_url"),
            "`revocation` is `none`",
        ),
        (
            "slack: {identity: {user_id: [user_id]}}",
            ("slack", "identity.user_id[0]"),
            "JSON pointer",
        ),
        (
            "google: {authorize_params: {state: x}}",
            ("google", "authorize_params.state"),
            "sets itself",
        ),
        (
            "acme: {auth_mode: oauth2, authorize_url: 'https://a.example/authorize'}",
            ("acme", "token_url"),
            "is required",
        ),
        ("acme: {auth_mode: ldap}", ("acme", "auth_mode"), "oauth2"),
        (
            "slack: {tokn_url: 'https://x.example'}",
            ("slack", "tokn_url"),
            "is not known; expected one of",
        ),
        (
            "s3: {auth_mode: oauth2}",
            ("s3", "auth_mode"),
            "cannot change",
        ),
        (
            "x1: {auth_mode: api_key, kind: x, fields: [{name: key, secret: true, check: txt}], attach: none}",
            ("x1", "fields[0].check"),
            "unknown variant",
        ),
        (
            "x2: {auth_mode: api_key, kind: x, fields: [{name: key}], attach: {bearer: {field: key}}, pins: [{hosts: ['https://x2.example']}]}",
            ("x2", "attach.bearer.field"),
            "secret",
        ),
        (
            "x3: {auth_mode: api_key, kind: x, fields: [{name: key, secret: true}], attach: {bearer: {field: key}}}",
            ("x3", "pins"),
            "pinned",
        ),
        (
            "x4: {auth_mode: api_key, kind: x, fields: [{name: key, secret: true, format: {charset: z-a, message: m}}], attach: none}",
            ("x4", "fields[0].format.charset"),
            "backwards",
        ),
        (
            "x5: {auth_mode: api_key, kind: x, fields: [{name: port, check: port, default: 70000}], attach: none}",
            ("x5", "fields[0].default"),
            "1-65535",
        ),
        (
            "x6: {auth_mode: api_key, kind: x, fields: [{name: url, check: text}], attach: none, pins: [{origin_of: url}]}",
            ("x6", "pins[0].origin_of"),
            "http_url",
        ),
        (
            "x7: {auth_mode: api_key, kind: x, fields: [{name: k, secret: true}], attach: {header: {name: Host, value_field: k}}, pins: [{hosts: ['https://x7.example']}]}",
            ("x7", "attach.header.name"),
            "the host sets itself",
        ),
    ];
    for (yaml, (provider, field), says) in cases {
        let e = refused(yaml);
        assert_eq!(named(&e), (provider, field), "{yaml}: {e}");
        let text = e.to_string();
        assert!(
            text.contains(&format!("provider `{provider}`")) && text.contains(field),
            "{text}"
        );
        assert!(text.contains(says), "{yaml}: {text}");
    }
    assert!(matches!(
        refused("Bad_Name: {auth_mode: oauth2}"),
        CatalogueError::Malformed(m) if m.contains("Bad_Name")
    ));
    assert!(matches!(
        Catalogue::load("[1, 2]", &Mapping::new()),
        Err(CatalogueError::Malformed(_))
    ));
}

#[test]
fn a_config_entry_adds_a_provider_and_another_changes_a_shipped_endpoint() {
    let c = Catalogue::with_overrides(&overrides(
        r#"
acme-crm:
  auth_mode: oauth2
  display_name: Acme CRM
  authorize_url: https://login.acme.example/authorize
  token_url: https://login.acme.example/token
  revocation: none
  identity_url: https://api.acme.example/me
  identity: {user_id: [/data/id], email: [/data/email]}
  api_base_url: https://api.acme.example/v2
  api_hosts: [https://api.acme.example]
acme-search:
  auth_mode: api_key
  kind: search
  fields:
    - {name: base_url, check: http_url, required: true}
    - {name: api_key, secret: true, required: true, format: {min_length: 8, message: "an Acme key is at least 8 characters"}}
  attach: {header: {name: x-api-key, value_field: api_key}}
  pins: [{origin_of: base_url}]
microsoft:
  token_url: https://login.microsoftonline.us/common/oauth2/v2.0/token
  api_hosts: [https://graph.microsoft.us]
"#,
    ))
    .unwrap();
    let crm = c.oauth("acme-crm").unwrap();
    assert_eq!(crm.display_name, "Acme CRM");
    // What pages show: the configured name, the name itself without one, the shipped
    // names, and an unknown service as it is.
    assert_eq!(c.display_name("acme-crm"), "Acme CRM");
    assert_eq!(c.display_name("acme-search"), "acme-search");
    assert_eq!(c.display_name("s3"), "Amazon S3");
    assert_eq!(c.display_name("gone"), "gone");
    // Defaults an added provider gets.
    assert_eq!(crm.scope_separator, " ");
    assert!(crm.pkce);
    assert_eq!(
        (crm.dialect, crm.refresh),
        (TokenDialect::Standard, RefreshPolicy::Auto)
    );
    let answer = serde_json::json!({"data": {"id": "u-7", "email": "a@acme.example"}});
    assert_eq!(crm.identity.user_id(&answer).as_deref(), Some("u-7"));
    assert_eq!(
        crm.identity.email(&answer).as_deref(),
        Some("a@acme.example")
    );
    let search = c.api_key("acme-search").unwrap();
    let config = serde_json::json!({"provider": "acme-search", "base_url": "https://search.acme.example:8443/v1", "api_key": "x"});
    let config = config.as_object().unwrap();
    let pins: Vec<String> = search
        .pins(config)
        .unwrap()
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(pins, ["https://search.acme.example:8443"]);
    assert_eq!(
        search.attachment(config),
        api_key::Attachment::Header {
            name: "x-api-key".into(),
            field: "api_key".into()
        }
    );
    // Added after the shipped ones.
    assert_eq!(c.oauth_names().last(), Some(&"acme-crm"));
    assert_eq!(c.api_key_names().last(), Some(&"acme-search"));
    // The override changed only what it named.
    let ms = c.oauth("microsoft").unwrap();
    let shipped = Catalogue::builtin();
    let before = shipped.oauth("microsoft").unwrap();
    assert_eq!(
        ms.token_url,
        "https://login.microsoftonline.us/common/oauth2/v2.0/token"
    );
    assert_eq!(ms.api_hosts[0].to_string(), "https://graph.microsoft.us");
    assert_eq!(ms.authorize_url, before.authorize_url);
    assert_eq!(ms.implied_scopes, before.implied_scopes);
    // A null removes a key: Google without revocation.
    let c = Catalogue::with_overrides(&overrides("google: {revoke_url: null, revocation: none}"))
        .unwrap();
    assert_eq!(c.oauth("google").unwrap().revocation, Revocation::None);
}

#[test]
fn manifests_may_bind_only_known_services_of_their_kind() {
    let manifest = |kind: &str, service: &str| {
        Manifest::parse(&format!(
            r#"{{"manifest_version":1,"name":"m","version":"0.1.0","credentials":[{{"name":"c","kind":"{kind}","service":"{service}"}}]}}"#
        ))
        .unwrap()
    };
    let c = Catalogue::builtin();
    c.check_bindings(&manifest("oauth-link", "slack")).unwrap();
    c.check_bindings(&manifest("component", "s3")).unwrap();
    // A link of any service: which one is known when a step names the link.
    c.check_bindings(&manifest("oauth-link", "*")).unwrap();
    for (kind, service, known) in [
        ("oauth-link", "myspace", "microsoft, google, slack"),
        ("oauth-link", "s3", "microsoft, google"),
        ("component", "slack", "s3, anthropic"),
    ] {
        match c.check_bindings(&manifest(kind, service)) {
            Err(ManifestError::InvalidField { field, reason }) => {
                assert_eq!(field, "credentials[0].service");
                assert!(
                    reason.contains(service) && reason.contains(known),
                    "{reason}"
                );
            }
            other => panic!("{kind} {service}: {other:?}"),
        }
    }
}

#[test]
fn microsoft_names_the_hosts_of_its_pre_authenticated_urls_and_others_none() {
    let c = Catalogue::builtin();
    let ms = c.oauth("microsoft").unwrap();
    let hosts: Vec<String> = ms.transfer_hosts.iter().map(|h| h.to_string()).collect();
    assert!(
        hosts.contains(&"https://*.sharepoint.com".to_string()),
        "{hosts:?}"
    );
    let upload =
        url::Url::parse("https://contoso-my.sharepoint.com/personal/x/_api/v2.0/up").unwrap();
    assert!(ms.transfer_hosts.iter().any(|p| p.matches(&upload)));
    // None of them is a pin: the token never goes there.
    assert!(!ms.api_hosts.iter().any(|p| p.matches(&upload)));
    for other in ["google", "slack", "clio", "quickbooks", "bexio"] {
        assert!(c.oauth(other).unwrap().transfer_hosts.is_empty(), "{other}");
    }
}
