//! API-key providers (`auth_mode: api_key`): the fields of a component and how each is
//! checked, which are secret, their defaults, which show in the `config_summary`, how
//! the host attaches the credential to a request, and the hosts it is pinned to.
//!
//! Pins are fixed patterns or derived from the component's own fields by a rule the
//! entry names (`origin_of: base_url`, `host_list: allowed_hosts`, `aws_s3: {...}`); the
//! derivations are here, in Rust, and produce typed [`Pin`]s. An S3 component is pinned
//! to its own bucket, never to its endpoint's other buckets.

use super::checks::{Check, FieldError, Format, RawFormat, check_header_name, pin};
use super::pins::Pin;
use super::{CatalogueError, Entry};
use crate::manifest::{HostMatch, HostPattern, PortMatch};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Whether a field shows in the `config_summary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Summary {
    /// Always (the default for plain fields).
    Shown,
    /// Only when `true` (S3's `path_style`, which matters only for custom endpoints).
    WhenTrue,
    /// Never (always so for secrets).
    Hidden,
}

/// A field's default, filled in when a component is created without it.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldDefault {
    /// This value.
    Value(Value),
    /// `true` when that other field was given, else `false`.
    IsSet(String),
}

/// One field of a component's `config`.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Its name in `config`.
    pub name: String,
    /// Sealed by the vault, never shown.
    pub secret: bool,
    /// A component without it is refused.
    pub required: bool,
    /// How its value is checked.
    pub check: Check,
    /// Format rules (strings only).
    pub format: Option<Format>,
    /// Filled in when absent.
    pub default: Option<FieldDefault>,
    /// Whether it shows in the summary.
    pub summary: Summary,
}

impl Field {
    /// Check a value: its shape, then its format.
    pub fn check(&self, v: &Value) -> Result<(), FieldError> {
        self.check.check(&self.name, v)?;
        // A short secret cannot be told from ordinary text, so it could not be redacted
        // from what a step returns without shredding that text: refused here, whatever
        // the provider's own format says (and one stored before this rule is redacted
        // anyway, see `runtime::policy::redact`).
        if self.secret
            && let Some(s) = v.as_str()
            && s.chars().count() < crate::runtime::policy::MIN_SECRET_LEN
        {
            return Err(FieldError {
                field: self.name.clone(),
                reason: format!(
                    "is too short: a secret has at least {} characters",
                    crate::runtime::policy::MIN_SECRET_LEN
                ),
            });
        }
        if let (Some(format), Some(s)) = (&self.format, v.as_str()) {
            format.check(&self.name, s)?;
        }
        Ok(())
    }
}

/// How the host attaches the credential to an outbound request (`attach:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachRule {
    /// Not an HTTP credential (SMTP, FTP): `credentials.get` only.
    None,
    /// `Authorization: Bearer <field>`.
    Bearer {
        /// The secret field holding the token.
        field: String,
    },
    /// `<name>: <value_field>`, the value verbatim.
    Header {
        /// The header name, or the fallback when `name_field` is unset.
        name: Option<String>,
        /// A field naming the header (the `http` provider's `auth_header`).
        name_field: Option<String>,
        /// The secret field holding the value; without it nothing is attached.
        value_field: String,
    },
    /// AWS Signature Version 4.
    AwsSigV4 {
        /// Signing service name (`s3`).
        service: String,
        /// The field holding the region.
        region_field: String,
        /// The secret field holding the access key id.
        access_key_field: String,
        /// The secret field holding the secret access key.
        secret_key_field: String,
    },
}

/// Where a credential may be sent (`pins:`, each rule adding hosts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinRule {
    /// These hosts (each with an optional path prefix).
    Hosts(Vec<Pin>),
    /// `scheme://host[:port]` of the URL in that field.
    OriginOf(String),
    /// The patterns listed in that `host_list` field.
    HostList(String),
    /// S3: the component's bucket, path-style (`endpoint/bucket`) on its custom
    /// endpoint or virtual-host (`bucket.endpoint`) where it allows that, or on AWS's
    /// global and regional hosts both ways. A component naming no bucket is pinned
    /// nowhere: a pin to the endpoint would cover every bucket on it, other people's too.
    AwsS3 {
        /// The `bucket` field.
        bucket_field: String,
        /// The `origin` field of an S3-compatible endpoint.
        endpoint_field: String,
        /// The `bool` field choosing path-style addressing.
        path_style_field: String,
        /// The `region` field.
        region_field: String,
    },
}

/// A resolved attachment for one component (field names, not values: the secrets are
/// opened by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// `Authorization: Bearer <field>`.
    Bearer {
        /// Secret field holding the token.
        field: String,
    },
    /// `<name>: <field>`, the value verbatim.
    Header {
        /// Header name.
        name: String,
        /// Secret field holding the value.
        field: String,
    },
    /// AWS Signature Version 4.
    AwsSigV4 {
        /// Region.
        region: String,
        /// Service (`s3`).
        service: String,
        /// Secret field holding the access key id.
        access_key_field: String,
        /// Secret field holding the secret access key.
        secret_key_field: String,
    },
    /// Nothing to attach to an HTTP request.
    NotHttp,
}

/// One API-key provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyProvider {
    /// The provider name (`config.provider`, a manifest binding's `service`).
    pub name: String,
    /// For people.
    pub display_name: String,
    /// The component kind (`storage`, `ai`, ...): defaults are per company and kind.
    pub kind: String,
    /// The fields, in order (the first wrong one is reported).
    pub fields: Vec<Field>,
    /// How the host attaches the credential.
    pub attach: AttachRule,
    /// Where the credential may be sent.
    pub pins: Vec<PinRule>,
}

fn str_field<'a>(config: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    config.get(k).and_then(Value::as_str)
}

/// `scheme://host[:port]` of a URL, or `scheme://*.host[:port]` for its subdomains
/// (domains of two labels or more only).
fn origin_pattern(u: &url::Url, subdomains: bool) -> Option<HostPattern> {
    if !matches!(u.scheme(), "http" | "https") {
        return None;
    }
    let host = match u.host()? {
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if subdomains {
                if !d.contains('.') {
                    return None;
                }
                HostMatch::Subdomains(d)
            } else {
                HostMatch::Exact(d)
            }
        }
        _ if subdomains => return None,
        url::Host::Ipv4(ip) => HostMatch::Exact(ip.to_string()),
        url::Host::Ipv6(ip) => HostMatch::Exact(format!("[{ip}]")),
    };
    Some(HostPattern {
        scheme: u.scheme().to_string(),
        host,
        port: PortMatch::Exact(u.port_or_known_default()?),
    })
}

/// `https://<host>` on the default port.
fn https(host: HostMatch) -> HostPattern {
    HostPattern {
        scheme: "https".into(),
        host,
        port: PortMatch::Exact(443),
    }
}

impl ApiKeyProvider {
    /// The field of that name.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Whether that field is secret.
    pub fn is_secret(&self, name: &str) -> bool {
        self.field(name).is_some_and(|f| f.secret)
    }

    /// The fields that are secret, in order.
    pub fn secret_fields(&self) -> impl Iterator<Item = &Field> {
        self.fields.iter().filter(|f| f.secret)
    }

    fn default_str(&self, field: &str) -> Option<&str> {
        match self.field(field)?.default.as_ref()? {
            FieldDefault::Value(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// Fill the defaults of fields `config` lacks.
    pub fn fill_defaults(&self, config: &mut Map<String, Value>) {
        // "Is set" defaults look at what was given, not at other defaults.
        let given: Vec<String> = config.keys().cloned().collect();
        for f in &self.fields {
            let value = match &f.default {
                None => continue,
                Some(FieldDefault::Value(v)) => v.clone(),
                Some(FieldDefault::IsSet(other)) => Value::Bool(given.contains(other)),
            };
            config.entry(f.name.clone()).or_insert(value);
        }
    }

    /// Whether a stored `config` entry shows in the summary (keys the provider does not
    /// declare, such as `provider`, do).
    pub fn shows(&self, key: &str, value: &Value) -> bool {
        match self.field(key) {
            None => true,
            Some(f) if f.secret => false,
            Some(f) => match f.summary {
                Summary::Shown => true,
                Summary::WhenTrue => value == &Value::Bool(true),
                Summary::Hidden => false,
            },
        }
    }

    /// How to attach a component with this `config`.
    pub fn attachment(&self, config: &Map<String, Value>) -> Attachment {
        match &self.attach {
            AttachRule::None => Attachment::NotHttp,
            AttachRule::Bearer { field } => Attachment::Bearer {
                field: field.clone(),
            },
            AttachRule::Header {
                name,
                name_field,
                value_field,
            } => {
                if !config.contains_key(value_field) {
                    return Attachment::NotHttp;
                }
                let name = name_field
                    .as_deref()
                    .and_then(|f| str_field(config, f))
                    .or(name.as_deref());
                match name {
                    Some(n) => Attachment::Header {
                        name: n.to_string(),
                        field: value_field.clone(),
                    },
                    None => Attachment::NotHttp,
                }
            }
            AttachRule::AwsSigV4 {
                service,
                region_field,
                access_key_field,
                secret_key_field,
            } => Attachment::AwsSigV4 {
                region: str_field(config, region_field)
                    .or_else(|| self.default_str(region_field))
                    .unwrap_or_default()
                    .to_string(),
                service: service.clone(),
                access_key_field: access_key_field.clone(),
                secret_key_field: secret_key_field.clone(),
            },
        }
    }

    /// Where a component with this `config` may be sent. Empty for SMTP and FTP, which
    /// are not HTTP. A stored host list that no longer parses is refused, not dropped.
    pub fn pins(&self, config: &Map<String, Value>) -> Result<Vec<Pin>, FieldError> {
        let mut out: Vec<Pin> = Vec::new();
        let mut add = |p: Pin| {
            if !out.contains(&p) {
                out.push(p);
            }
        };
        for rule in &self.pins {
            match rule {
                PinRule::Hosts(hosts) => hosts.iter().cloned().for_each(&mut add),
                PinRule::OriginOf(field) => {
                    if let Some(p) = str_field(config, field)
                        .and_then(|b| url::Url::parse(b).ok())
                        .and_then(|u| origin_pattern(&u, false))
                    {
                        add(Pin::host(p));
                    }
                }
                PinRule::HostList(field) => {
                    if let Some(v) = config.get(field).filter(|v| !v.is_null()) {
                        super::checks::host_list(field, v)?
                            .into_iter()
                            .map(Pin::host)
                            .for_each(&mut add);
                    }
                }
                PinRule::AwsS3 {
                    bucket_field,
                    endpoint_field,
                    path_style_field,
                    region_field,
                } => {
                    let Some(bucket) = str_field(config, bucket_field) else {
                        continue;
                    };
                    // Checked at creation; a stored one that no longer passes pins nothing.
                    if Check::Bucket
                        .check(bucket_field, &Value::String(bucket.to_string()))
                        .is_err()
                    {
                        continue;
                    }
                    let path_pin = |host: HostPattern| {
                        Pin::under(host, &format!("/{bucket}")).map_err(|e| FieldError {
                            field: bucket_field.clone(),
                            reason: e,
                        })
                    };
                    match str_field(config, endpoint_field).and_then(|e| url::Url::parse(e).ok()) {
                        Some(u) => {
                            let path_style = config
                                .get(path_style_field)
                                .and_then(Value::as_bool)
                                .unwrap_or(true);
                            if let Some(origin) = origin_pattern(&u, false) {
                                add(path_pin(origin)?);
                            }
                            if !path_style
                                && let Some(mut origin) = origin_pattern(&u, false)
                                && let HostMatch::Exact(h) = &origin.host
                                && !h.starts_with('[')
                                && h.parse::<std::net::Ipv4Addr>().is_err()
                            {
                                origin.host = HostMatch::Exact(format!("{bucket}.{h}"));
                                add(Pin::host(origin));
                            }
                        }
                        None => {
                            let region = str_field(config, region_field)
                                .or_else(|| self.default_str(region_field))
                                .unwrap_or_default();
                            // AWS itself: the global and the regional endpoint, each by
                            // virtual host (`bucket.s3...`) and by path (`s3.../bucket`).
                            for domain in [
                                "s3.amazonaws.com".to_string(),
                                format!("s3.{region}.amazonaws.com"),
                            ] {
                                add(Pin::host(https(HostMatch::Exact(format!(
                                    "{bucket}.{domain}"
                                )))));
                                add(path_pin(https(HostMatch::Exact(domain)))?);
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// `auth_mode: api_key` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApiKey {
    #[serde(default)]
    display_name: Option<String>,
    kind: String,
    fields: Vec<RawField>,
    #[serde(with = "serde_norway::with::singleton_map")]
    attach: RawAttach,
    #[serde(default, with = "serde_norway::with::singleton_map_recursive")]
    pins: Vec<RawPin>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: String,
    #[serde(default)]
    secret: bool,
    #[serde(default)]
    required: bool,
    #[serde(default, with = "serde_norway::with::singleton_map")]
    check: Check,
    #[serde(default)]
    format: Option<RawFormat>,
    #[serde(default)]
    default: Option<Value>,
    #[serde(default)]
    default_is_set: Option<String>,
    #[serde(default)]
    summary: Option<Summary>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RawAttach {
    None,
    Bearer {
        field: String,
    },
    Header {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        name_field: Option<String>,
        value_field: String,
    },
    #[serde(rename = "aws_sigv4")]
    AwsSigV4 {
        service: String,
        region_field: String,
        access_key_field: String,
        secret_key_field: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RawPin {
    Hosts(Vec<String>),
    OriginOf(String),
    HostList(String),
    AwsS3 {
        bucket_field: String,
        endpoint_field: String,
        path_style_field: String,
        region_field: String,
    },
}

fn valid_field_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_lowercase())
        && s.len() <= 64
        && c.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl RawApiKey {
    /// Check the entry and build the provider.
    pub(crate) fn build(self, entry: &Entry) -> Result<ApiKeyProvider, CatalogueError> {
        let bad = |field: &str, reason: &str| entry.invalid(field, reason);
        if !super::valid_name(&self.kind) {
            return Err(bad(
                "kind",
                "must be 1-64 characters of a-z, 0-9 and '-', starting with a letter",
            ));
        }
        if self.fields.is_empty() {
            return Err(bad("fields", "must list at least one field"));
        }
        let mut fields: Vec<Field> = Vec::new();
        for (i, raw) in self.fields.into_iter().enumerate() {
            let at = |sub: &str| format!("fields[{i}].{sub}");
            if !valid_field_name(&raw.name) || raw.name == "provider" {
                return Err(bad(
                    &at("name"),
                    "must be 1-64 characters of a-z, 0-9 and '_', starting with a letter, and not `provider`",
                ));
            }
            if fields.iter().any(|f| f.name == raw.name) {
                return Err(bad(
                    &at("name"),
                    &format!("`{}` is declared twice", raw.name),
                ));
            }
            if raw.secret && raw.check != Check::Text {
                return Err(bad(&at("check"), "a secret field is text"));
            }
            let summary = match (raw.secret, raw.summary) {
                (true, Some(Summary::Shown | Summary::WhenTrue)) => {
                    return Err(bad(&at("summary"), "a secret is never shown"));
                }
                (true, _) => Summary::Hidden,
                (false, s) => s.unwrap_or(Summary::Shown),
            };
            if summary == Summary::WhenTrue && raw.check != Check::Bool {
                return Err(bad(&at("summary"), "`when_true` needs `check: bool`"));
            }
            let format = match raw.format {
                Some(_) if raw.check != Check::Text => {
                    return Err(bad(&at("format"), "format rules need `check: text`"));
                }
                Some(f) => Some(f.build().map_err(|(sub, reason)| {
                    entry.invalid(&at(&format!("format.{sub}")), &reason)
                })?),
                None => None,
            };
            let default = match (raw.default, raw.default_is_set) {
                (Some(_), Some(_)) => {
                    return Err(bad(
                        &at("default_is_set"),
                        "give `default` or `default_is_set`, not both",
                    ));
                }
                (Some(_), None) if raw.secret => {
                    return Err(bad(&at("default"), "a secret has no default"));
                }
                (Some(v), None) => {
                    raw.check
                        .check(&raw.name, &v)
                        .map_err(|e| entry.invalid(&at("default"), &e.reason))?;
                    Some(FieldDefault::Value(v))
                }
                (None, Some(other)) => {
                    if raw.check != Check::Bool {
                        return Err(bad(&at("default_is_set"), "needs `check: bool`"));
                    }
                    Some(FieldDefault::IsSet(other))
                }
                (None, None) => None,
            };
            fields.push(Field {
                name: raw.name,
                secret: raw.secret,
                required: raw.required,
                check: raw.check,
                format,
                default,
                summary,
            });
        }
        for (i, f) in fields.iter().enumerate() {
            if let Some(FieldDefault::IsSet(other)) = &f.default
                && !fields.iter().any(|g| &g.name == other)
            {
                return Err(bad(
                    &format!("fields[{i}].default_is_set"),
                    &format!("names no field of this provider (`{other}`)"),
                ));
            }
        }
        let field_is = |at: &str, name: &str, want: &str, ok: &dyn Fn(&Field) -> bool| match fields
            .iter()
            .find(|f| f.name == name)
        {
            Some(f) if ok(f) => Ok(()),
            Some(_) => Err(entry.invalid(at, &format!("`{name}` must be {want}"))),
            None => Err(entry.invalid(at, &format!("names no field of this provider (`{name}`)"))),
        };
        let secret = |f: &Field| f.secret;
        let attach = match self.attach {
            RawAttach::None => AttachRule::None,
            RawAttach::Bearer { field } => {
                field_is("attach.bearer.field", &field, "a secret field", &secret)?;
                AttachRule::Bearer { field }
            }
            RawAttach::Header {
                name,
                name_field,
                value_field,
            } => {
                field_is(
                    "attach.header.value_field",
                    &value_field,
                    "a secret field",
                    &secret,
                )?;
                if let Some(n) = &name {
                    check_header_name("attach.header.name", n)
                        .map_err(|e| entry.invalid(&e.field, &e.reason))?;
                }
                if let Some(nf) = &name_field {
                    field_is(
                        "attach.header.name_field",
                        nf,
                        "a `header_name` field",
                        &|f| f.check == Check::HeaderName,
                    )?;
                }
                if name.is_none() && name_field.is_none() {
                    return Err(bad("attach.header", "needs `name` or `name_field`"));
                }
                AttachRule::Header {
                    name,
                    name_field,
                    value_field,
                }
            }
            RawAttach::AwsSigV4 {
                service,
                region_field,
                access_key_field,
                secret_key_field,
            } => {
                if !super::valid_name(&service) {
                    return Err(bad("attach.aws_sigv4.service", "is not a service name"));
                }
                field_is(
                    "attach.aws_sigv4.region_field",
                    &region_field,
                    "a `region` field",
                    &|f| f.check == Check::Region,
                )?;
                field_is(
                    "attach.aws_sigv4.access_key_field",
                    &access_key_field,
                    "a secret field",
                    &secret,
                )?;
                field_is(
                    "attach.aws_sigv4.secret_key_field",
                    &secret_key_field,
                    "a secret field",
                    &secret,
                )?;
                AttachRule::AwsSigV4 {
                    service,
                    region_field,
                    access_key_field,
                    secret_key_field,
                }
            }
        };
        let mut pins = Vec::new();
        for (i, raw) in self.pins.into_iter().enumerate() {
            let at = |sub: &str| format!("pins[{i}].{sub}");
            pins.push(match raw {
                RawPin::Hosts(hosts) => {
                    if hosts.is_empty() {
                        return Err(bad(&at("hosts"), "must list at least one host"));
                    }
                    let mut parsed = Vec::new();
                    for (j, h) in hosts.iter().enumerate() {
                        parsed.push(
                            pin(&at(&format!("hosts[{j}]")), h)
                                .map_err(|e| entry.invalid(&e.field, &e.reason))?,
                        );
                    }
                    PinRule::Hosts(parsed)
                }
                RawPin::OriginOf(field) => {
                    field_is(
                        &at("origin_of"),
                        &field,
                        "an `http_url` or `origin` field",
                        &|f| matches!(f.check, Check::HttpUrl | Check::Origin) && !f.secret,
                    )?;
                    PinRule::OriginOf(field)
                }
                RawPin::HostList(field) => {
                    field_is(&at("host_list"), &field, "a `host_list` field", &|f| {
                        f.check == Check::HostList
                    })?;
                    PinRule::HostList(field)
                }
                RawPin::AwsS3 {
                    bucket_field,
                    endpoint_field,
                    path_style_field,
                    region_field,
                } => {
                    field_is(
                        &at("aws_s3.bucket_field"),
                        &bucket_field,
                        "a `bucket` field",
                        &|f| f.check == Check::Bucket,
                    )?;
                    field_is(
                        &at("aws_s3.endpoint_field"),
                        &endpoint_field,
                        "an `origin` field",
                        &|f| f.check == Check::Origin,
                    )?;
                    field_is(
                        &at("aws_s3.path_style_field"),
                        &path_style_field,
                        "a `bool` field",
                        &|f| f.check == Check::Bool,
                    )?;
                    field_is(
                        &at("aws_s3.region_field"),
                        &region_field,
                        "a `region` field",
                        &|f| f.check == Check::Region,
                    )?;
                    PinRule::AwsS3 {
                        bucket_field,
                        endpoint_field,
                        path_style_field,
                        region_field,
                    }
                }
            });
        }
        if attach != AttachRule::None && pins.is_empty() {
            return Err(bad(
                "pins",
                "a credential the host attaches must be pinned to its hosts",
            ));
        }
        Ok(ApiKeyProvider {
            name: entry.name.clone(),
            display_name: self.display_name.unwrap_or_else(|| entry.name.clone()),
            kind: self.kind,
            fields,
            attach,
            pins,
        })
    }
}
