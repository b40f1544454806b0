//! API-key "components" (flow8's API Key Integrations): the providers the host knows
//! (S3, Anthropic, OpenAI, SMTP, FTP, generic HTTP), how a creation body is validated
//! before anything is stored, which fields are secret (sealed by the vault), the
//! non-secret `config_summary` the API shows, the hosts each credential is pinned to,
//! and how the host attaches it to a request.

use crate::store::{ComponentRecord, new_object_id, now};
use crate::vault::{Envelope, Secret, Vault};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The creation body: `{"name", "kind", "config": {"provider", ...}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewComponent {
    /// Unique name within the company.
    pub name: String,
    /// `storage`, `ai`, `smtp`, `ftp` or `http` (inferred from the provider when absent).
    #[serde(default)]
    pub kind: Option<String>,
    /// Provider config, secrets in plaintext (sealed before storing).
    pub config: Map<String, Value>,
}

/// Why a component body was refused. Never includes a secret value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ComponentError {
    /// The name breaks the naming rule.
    #[error("name must be 1-64 characters of a-z, 0-9, '-', '_' and '.'")]
    InvalidName,
    /// `config.provider` is not a known provider.
    #[error("config.provider `{0}` is not known; known: s3, anthropic, openai, smtp, ftp, http")]
    UnknownProvider(String),
    /// The kind does not match the provider.
    #[error("kind `{kind}` does not match provider `{provider}` (expected `{expected}`)")]
    KindMismatch {
        /// Given kind.
        kind: String,
        /// Provider.
        provider: String,
        /// The provider's kind.
        expected: String,
    },
    /// A required field is missing.
    #[error("config.{0} is required")]
    MissingField(String),
    /// A field is not valid.
    #[error("config.{field} is not valid: {reason}")]
    InvalidField {
        /// Field name.
        field: String,
        /// What is wrong (never the value of a secret).
        reason: String,
    },
    /// A field the provider does not have.
    #[error("config.{0} is not a field of this provider")]
    UnknownField(String),
    /// A sealed field could not be opened.
    #[error("config.{field} cannot be decrypted: {reason}")]
    Sealed {
        /// Field name.
        field: String,
        /// Vault error.
        reason: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FieldType {
    Str,
    Url,
    Port,
    Bool,
    Int(i64, i64),
    StrList,
}

struct Field {
    name: &'static str,
    secret: bool,
    required: bool,
    ty: FieldType,
}

const fn f(name: &'static str, secret: bool, required: bool, ty: FieldType) -> Field {
    Field {
        name,
        secret,
        required,
        ty,
    }
}

struct Provider {
    name: &'static str,
    kind: &'static str,
    fields: &'static [Field],
}

use FieldType::*;

const PROVIDERS: &[Provider] = &[
    Provider {
        name: "s3",
        kind: "storage",
        fields: &[
            f("bucket", false, false, Str),
            f("region", false, false, Str),
            f("endpoint", false, false, Url),
            f("path_style", false, false, Bool),
            f("access_key_id", true, true, Str),
            f("secret_access_key", true, true, Str),
        ],
    },
    Provider {
        name: "anthropic",
        kind: "ai",
        fields: &[f("api_key", true, true, Str), f("model", false, false, Str)],
    },
    Provider {
        name: "openai",
        kind: "ai",
        fields: &[f("api_key", true, true, Str), f("model", false, false, Str)],
    },
    Provider {
        name: "smtp",
        kind: "smtp",
        fields: &[
            f("host", false, true, Str),
            f("port", false, false, Port),
            f("username", false, true, Str),
            f("password", true, true, Str),
            f("tls", false, false, Bool),
        ],
    },
    Provider {
        name: "ftp",
        kind: "ftp",
        fields: &[
            f("host", false, true, Str),
            f("port", false, false, Port),
            f("username", false, true, Str),
            f("password", true, true, Str),
        ],
    },
    Provider {
        name: "http",
        kind: "http",
        fields: &[
            f("base_url", false, true, Url),
            f("auth_header", false, false, Str),
            f("auth_value", true, false, Str),
            f("timeout_seconds", false, false, Int(1, 300)),
            f("max_retries", false, false, Int(0, 10)),
            f("allowed_hosts", false, false, StrList),
        ],
    },
];

fn provider_def(name: &str) -> Option<&'static Provider> {
    PROVIDERS.iter().find(|p| p.name == name)
}

/// The kind of components a provider makes (`storage` for `s3`, ...).
pub fn kind_of(provider: &str) -> Option<&'static str> {
    provider_def(provider).map(|p| p.kind)
}

fn invalid(field: &str, reason: impl Into<String>) -> ComponentError {
    ComponentError::InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

fn check_type(field: &Field, v: &Value) -> Result<(), ComponentError> {
    let ok = match field.ty {
        Str => v.as_str().is_some_and(|s| !s.trim().is_empty()),
        Url => match v.as_str().map(url::Url::parse) {
            Some(Ok(u)) => {
                if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                    return Err(invalid(field.name, "must be an http(s) URL with a host"));
                }
                if !u.username().is_empty() || u.password().is_some() {
                    return Err(invalid(
                        field.name,
                        "must not carry user info; use the secret fields",
                    ));
                }
                true
            }
            _ => false,
        },
        Port => v.as_u64().is_some_and(|p| (1..=65535).contains(&p)),
        Bool => v.is_boolean(),
        Int(lo, hi) => v.as_i64().is_some_and(|n| (lo..=hi).contains(&n)),
        StrList => v
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x.as_str().is_some())),
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field.name,
            match field.ty {
                Str => "must be a non-empty string".to_string(),
                Url => "must be an http(s) URL".to_string(),
                Port => "must be a port number 1-65535".to_string(),
                Bool => "must be true or false".to_string(),
                Int(lo, hi) => format!("must be a whole number from {lo} to {hi}"),
                StrList => "must be a list of strings".to_string(),
            },
        ))
    }
}

/// Format checks of secrets (flow8: "Validate API key format: reject malformed keys
/// before storing"). Messages never include the value.
fn check_secret_format(provider: &str, field: &str, value: &str) -> Result<(), ComponentError> {
    let all = |s: &str, ok: fn(char) -> bool| s.chars().all(ok);
    match (provider, field) {
        ("s3", "access_key_id") => {
            let ok = value.len() == 20
                && (value.starts_with("AKIA") || value.starts_with("ASIA"))
                && all(value, |c| c.is_ascii_uppercase() || c.is_ascii_digit());
            if !ok {
                return Err(invalid(
                    field,
                    "an AWS access key id is 20 characters: AKIA or ASIA then 16 of A-Z, 0-9",
                ));
            }
        }
        ("s3", "secret_access_key")
            if (value.len() != 40
                || !all(value, |c| c.is_ascii_alphanumeric() || "/+=".contains(c))) =>
        {
            return Err(invalid(
                field,
                "an AWS secret access key is 40 characters of A-Z, a-z, 0-9, '/', '+', '='",
            ));
        }
        ("anthropic", "api_key") if (!value.starts_with("sk-ant-") || value.len() < 20) => {
            return Err(invalid(field, "an Anthropic API key starts with `sk-ant-`"));
        }
        ("openai", "api_key")
            if (!value.starts_with("sk-") || value.starts_with("sk-ant-") || value.len() < 20) =>
        {
            return Err(invalid(
                field,
                "an OpenAI API key starts with `sk-` (and is not an Anthropic key)",
            ));
        }
        _ => {}
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Validate a creation body, fill defaults and seal the secrets.
pub fn prepare(
    new: NewComponent,
    company_id: &str,
    vault: &Vault,
) -> Result<ComponentRecord, ComponentError> {
    let name_ok = !new.name.is_empty()
        && new.name.len() <= 64
        && new
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if !name_ok {
        return Err(ComponentError::InvalidName);
    }
    let provider_name = match new.config.get("provider") {
        Some(Value::String(p)) => p.clone(),
        Some(_) => return Err(invalid("provider", "must be a string")),
        None => return Err(ComponentError::MissingField("provider".into())),
    };
    let provider = provider_def(&provider_name)
        .ok_or_else(|| ComponentError::UnknownProvider(provider_name.clone()))?;
    let kind = new.kind.unwrap_or_else(|| provider.kind.to_string());
    if kind != provider.kind {
        return Err(ComponentError::KindMismatch {
            kind,
            provider: provider_name,
            expected: provider.kind.into(),
        });
    }
    for key in new.config.keys() {
        if key != "provider" && !provider.fields.iter().any(|f| f.name == key) {
            return Err(ComponentError::UnknownField(key.clone()));
        }
    }
    let mut config = Map::new();
    config.insert("provider".into(), Value::String(provider_name.clone()));
    for field in provider.fields {
        match new.config.get(field.name) {
            None | Some(Value::Null) => {
                if field.required {
                    return Err(ComponentError::MissingField(field.name.into()));
                }
            }
            Some(v) => {
                check_type(field, v)?;
                if field.secret {
                    let s = v.as_str().expect("checked above");
                    check_secret_format(&provider_name, field.name, s)?;
                    let sealed =
                        serde_json::to_value(vault.encrypt(s)).expect("envelopes serialise");
                    config.insert(field.name.into(), sealed);
                } else {
                    config.insert(field.name.into(), v.clone());
                }
            }
        }
    }
    if provider_name == "http" {
        if let Some(Value::Array(hosts)) = config.get("allowed_hosts") {
            for (i, h) in hosts.iter().enumerate() {
                let h = h.as_str().unwrap_or_default();
                crate::manifest::HostPattern::parse(h)
                    .map_err(|e| invalid(&format!("allowed_hosts[{i}]"), e))?;
            }
        }
        if let Some(Value::String(h)) = config.get("auth_header")
            && http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            return Err(invalid("auth_header", "is not a valid HTTP header name"));
        }
    }
    fill_defaults(&provider_name, &mut config);
    let t = now();
    Ok(ComponentRecord {
        id: new_object_id(),
        company_id: company_id.into(),
        name: new.name,
        kind,
        config,
        is_default: false,
        created_at: t,
        updated_at: t,
    })
}

fn fill_defaults(provider: &str, config: &mut Map<String, Value>) {
    let mut default = |k: &str, v: Value| {
        config.entry(k.to_string()).or_insert(v);
    };
    match provider {
        "s3" => default("region", "us-east-1".into()),
        "smtp" => {
            default("port", 587.into());
            default("tls", true.into());
        }
        "ftp" => default("port", 21.into()),
        "http" => {
            default("auth_header", "Authorization".into());
            default("timeout_seconds", 30.into());
            default("max_retries", 3.into());
        }
        _ => {}
    }
    if provider == "s3" {
        let has_endpoint = config.contains_key("endpoint");
        config.entry("path_style").or_insert(has_endpoint.into());
    }
}

/// The component's provider (`s3`, `http`, ...).
pub fn provider(record: &ComponentRecord) -> &str {
    record
        .config
        .get("provider")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn is_secret_field(provider: &str, field: &str) -> bool {
    provider_def(provider)
        .and_then(|p| p.fields.iter().find(|f| f.name == field))
        .is_some_and(|f| f.secret)
}

/// The non-secret fields, defaults filled (the API's `config_summary`).
pub fn config_summary(record: &ComponentRecord) -> Map<String, Value> {
    let p = provider(record).to_string();
    record
        .config
        .iter()
        .filter(|(k, v)| !is_secret_field(&p, k) && Envelope::from_json(v).is_none())
        // An S3 summary reads as the flow8 document shows it; path_style only matters
        // (and is shown) for S3-compatible endpoints.
        .filter(|(k, v)| !(p == "s3" && k.as_str() == "path_style" && *v == &Value::Bool(false)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The secret fields, opened.
pub fn decrypt_secrets(
    record: &ComponentRecord,
    vault: &Vault,
) -> Result<Vec<(String, Secret)>, ComponentError> {
    let mut out = Vec::new();
    for (k, v) in &record.config {
        if let Some(env) = Envelope::from_json(v) {
            let secret = vault.decrypt(&env).map_err(|e| ComponentError::Sealed {
                field: k.clone(),
                reason: e.to_string(),
            })?;
            out.push((k.clone(), secret));
        }
    }
    Ok(out)
}

fn str_field<'a>(record: &'a ComponentRecord, k: &str) -> Option<&'a str> {
    record.config.get(k).and_then(Value::as_str)
}

fn origin_pattern(u: &url::Url, wildcard: bool) -> Option<String> {
    let host = match u.host()? {
        url::Host::Ipv6(ip) => format!("[{ip}]"),
        h => h.to_string(),
    };
    let port = u.port_or_known_default()?;
    let prefix = if wildcard { "*." } else { "" };
    Some(format!("{}://{prefix}{host}:{port}", u.scheme()))
}

/// Where this component's credential may be sent (host patterns, `wit/MANIFEST.md` syntax).
pub fn pinned_hosts(record: &ComponentRecord) -> Vec<String> {
    match provider(record) {
        "s3" => match str_field(record, "endpoint").and_then(|e| url::Url::parse(e).ok()) {
            Some(u) => {
                let path_style = record
                    .config
                    .get("path_style")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                let mut v: Vec<String> = origin_pattern(&u, false).into_iter().collect();
                if !path_style && u.host_str().is_some_and(|h| h.contains('.')) {
                    v.extend(origin_pattern(&u, true));
                }
                v
            }
            None => {
                let region = str_field(record, "region").unwrap_or("us-east-1");
                vec![
                    "https://s3.amazonaws.com".into(),
                    "https://*.s3.amazonaws.com".into(),
                    format!("https://s3.{region}.amazonaws.com"),
                    format!("https://*.s3.{region}.amazonaws.com"),
                ]
            }
        },
        "anthropic" => vec!["https://api.anthropic.com".into()],
        "openai" => vec!["https://api.openai.com".into()],
        "http" => {
            let mut v: Vec<String> = str_field(record, "base_url")
                .and_then(|b| url::Url::parse(b).ok())
                .and_then(|u| origin_pattern(&u, false))
                .into_iter()
                .collect();
            if let Some(Value::Array(extra)) = record.config.get("allowed_hosts") {
                v.extend(extra.iter().filter_map(|h| h.as_str().map(str::to_string)));
            }
            v
        }
        _ => Vec::new(),
    }
}

/// How the host attaches a component's credential to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// `Authorization: Bearer <field>`.
    Bearer {
        /// Secret field holding the token.
        field: String,
    },
    /// `<name>: <field>`.
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
        service: &'static str,
    },
    /// Not usable over HTTP (SMTP, FTP).
    NotHttp,
}

/// How to attach this component's credential.
pub fn attachment(record: &ComponentRecord) -> Attachment {
    match provider(record) {
        "openai" => Attachment::Bearer {
            field: "api_key".into(),
        },
        "anthropic" => Attachment::Header {
            name: "x-api-key".into(),
            field: "api_key".into(),
        },
        "http" if record.config.contains_key("auth_value") => Attachment::Header {
            name: str_field(record, "auth_header")
                .unwrap_or("Authorization")
                .to_string(),
            field: "auth_value".into(),
        },
        "s3" => Attachment::AwsSigV4 {
            region: str_field(record, "region")
                .unwrap_or("us-east-1")
                .to_string(),
            service: "s3",
        },
        _ => Attachment::NotHttp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::MasterKey;
    use serde_json::json;

    fn new(v: Value) -> NewComponent {
        serde_json::from_value(v).unwrap()
    }

    const AK: &str = "AKIAIOSFODNN7EXAMPLE";
    const SK: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    #[test]
    fn the_flow8_s3_example_is_sealed_and_summarised() {
        let vault = Vault::new(MasterKey::generate());
        let r = prepare(
            new(
                json!({"name": "aws-s3-prod", "kind": "storage", "config": {"provider": "s3",
                "bucket": "flow8-artifacts", "access_key_id": AK, "secret_access_key": SK}}),
            ),
            "c1",
            &vault,
        )
        .unwrap();
        assert_eq!(r.config["access_key_id"]["encrypted"], true);
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains(AK) && !text.contains(SK));
        assert_eq!(
            Value::Object(config_summary(&r)),
            json!({"provider": "s3", "bucket": "flow8-artifacts", "region": "us-east-1"})
        );
        let secrets = decrypt_secrets(&r, &vault).unwrap();
        assert!(
            secrets
                .iter()
                .any(|(k, v)| k == "secret_access_key" && v.expose() == SK)
        );
        assert_eq!(
            attachment(&r),
            Attachment::AwsSigV4 {
                region: "us-east-1".into(),
                service: "s3"
            }
        );
        assert!(pinned_hosts(&r).contains(&"https://*.s3.us-east-1.amazonaws.com".to_string()));
    }

    #[test]
    fn malformed_secrets_are_refused_naming_the_field_never_the_value() {
        let vault = Vault::new(MasterKey::generate());
        let cases = [
            (
                json!({"provider": "s3", "access_key_id": "nope-not-a-key-value", "secret_access_key": SK}),
                "access_key_id",
            ),
            (
                json!({"provider": "s3", "access_key_id": AK, "secret_access_key": "short"}),
                "secret_access_key",
            ),
            (
                json!({"provider": "anthropic", "api_key": "sk-proj-abcdefghijklmnopqrst"}),
                "api_key",
            ),
            (
                json!({"provider": "openai", "api_key": "sk-ant-abcdefghijklmnopqrst"}),
                "api_key",
            ),
            (
                json!({"provider": "smtp", "host": "mail.example.com", "port": 70000, "username": "u", "password": "p"}),
                "port",
            ),
            (
                json!({"provider": "http", "base_url": "ftp://x"}),
                "base_url",
            ),
            (
                json!({"provider": "http", "base_url": "https://u:p@x.example"}),
                "base_url",
            ),
            (
                json!({"provider": "http", "base_url": "https://x.example", "max_retries": 11}),
                "max_retries",
            ),
            (
                json!({"provider": "http", "base_url": "https://x.example", "allowed_hosts": ["https://*.com"]}),
                "allowed_hosts[0]",
            ),
        ];
        for (config, field) in cases {
            let err =
                prepare(new(json!({"name": "x", "config": config})), "c", &vault).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(field), "{msg} should name {field}");
            for value in ["abcdefghijklmnopqrst", "short", "nope-not-a-key", "u:p@"] {
                assert!(!msg.contains(value), "{msg} echoes a value");
            }
        }
        assert_eq!(
            prepare(
                new(json!({"name": "x", "config": {"provider": "s3"}})),
                "c",
                &vault
            )
            .unwrap_err(),
            ComponentError::MissingField("access_key_id".into())
        );
        assert!(matches!(
            prepare(
                new(json!({"name": "x", "kind": "ai", "config": {"provider": "s3"}})),
                "c",
                &vault
            ),
            Err(ComponentError::KindMismatch { .. })
        ));
        assert!(matches!(
            prepare(new(json!({"name": "x", "config": {"provider": "http", "base_url": "https://a.b", "colour": 1}})), "c", &vault),
            Err(ComponentError::UnknownField(f)) if f == "colour"
        ));
        assert_eq!(
            prepare(new(json!({"name": "Bad Name", "config": {"provider": "http", "base_url": "https://a.b"}})), "c", &vault).unwrap_err(),
            ComponentError::InvalidName
        );
    }

    #[test]
    fn providers_pin_and_attach_as_documented() {
        let vault = Vault::new(MasterKey::generate());
        let http = prepare(
            new(json!({"name": "api", "config": {"provider": "http", "base_url": "http://127.0.0.1:8080/v1",
                "auth_value": "Bearer t0ken-value", "allowed_hosts": ["https://*.example.com"]}})),
            "c",
            &vault,
        )
        .unwrap();
        assert_eq!(http.kind, "http");
        assert_eq!(
            pinned_hosts(&http),
            vec!["http://127.0.0.1:8080", "https://*.example.com"]
        );
        assert_eq!(
            attachment(&http),
            Attachment::Header {
                name: "Authorization".into(),
                field: "auth_value".into()
            }
        );
        let summary = Value::Object(config_summary(&http));
        assert_eq!(summary["timeout_seconds"], 30);
        assert!(!summary.to_string().contains("t0ken"));

        let oa = prepare(new(json!({"name": "oa", "config": {"provider": "openai", "api_key": "sk-proj-abcdefghijklmnopqrst"}})), "c", &vault).unwrap();
        assert_eq!(oa.kind, "ai");
        assert_eq!(
            attachment(&oa),
            Attachment::Bearer {
                field: "api_key".into()
            }
        );
        assert_eq!(pinned_hosts(&oa), vec!["https://api.openai.com"]);

        let minio = prepare(
            new(json!({"name": "minio", "config": {"provider": "s3", "endpoint": "http://127.0.0.1:9000",
                "bucket": "b", "access_key_id": AK, "secret_access_key": SK}})),
            "c",
            &vault,
        )
        .unwrap();
        assert_eq!(pinned_hosts(&minio), vec!["http://127.0.0.1:9000"]);
        assert_eq!(config_summary(&minio)["path_style"], true);

        let smtp = prepare(new(json!({"name": "mail", "config": {"provider": "smtp", "host": "smtp.example.com", "username": "u", "password": "pw"}})), "c", &vault).unwrap();
        assert_eq!(config_summary(&smtp)["port"], 587);
        assert_eq!(attachment(&smtp), Attachment::NotHttp);
        assert!(pinned_hosts(&smtp).is_empty());
    }
}
