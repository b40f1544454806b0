//! API-key "components" (flow8's API Key Integrations): how a creation body is
//! validated against its provider's catalogue entry before anything is stored, secret
//! fields sealed by the vault and opened again for a step, and the non-secret
//! `config_summary` the API shows. What each provider has (fields, checks, defaults,
//! attachment, pins) is in the catalogue (`crate::catalogue::api_key`).
//!
//! flow8: "Validate API key format: reject malformed keys before storing". Every
//! refusal names the field and never repeats a value.

use crate::catalogue::checks::FieldError;
use crate::catalogue::{ApiKeyProvider, Catalogue};
use crate::store::{ComponentRecord, new_object_id, now, sealing};
use crate::vault::{Envelope, Secret, Vault};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The creation body: `{"name", "kind", "config": {"provider", ...}}`. Unknown
/// top-level fields are refused, and so is anything that is not this shape, with
/// errors that never repeat a value (the config holds plaintext secrets).
#[derive(Clone)]
pub struct NewComponent {
    /// Unique name within the company.
    pub name: String,
    /// `storage`, `ai`, `smtp`, `ftp` or `http`. When absent it is the provider's
    /// (flow8's rotation example creates a component without one).
    pub kind: Option<String>,
    /// Provider config, secrets in plaintext (sealed before storing).
    pub config: Map<String, Value>,
}

impl NewComponent {
    /// Read a creation body from JSON.
    pub fn from_json(body: Value) -> Result<NewComponent, ComponentError> {
        let bad = |m: &str| ComponentError::InvalidBody(m.to_string());
        let Value::Object(mut body) = body else {
            return Err(bad("the body must be a JSON object"));
        };
        if let Some(k) = body
            .keys()
            .find(|k| !matches!(k.as_str(), "name" | "kind" | "config"))
        {
            return Err(ComponentError::InvalidBody(format!(
                "unknown field `{k}`; the body has `name`, `kind` and `config`"
            )));
        }
        let name = match body.remove("name") {
            Some(Value::String(s)) => s,
            None | Some(Value::Null) => return Err(bad("`name` is required")),
            Some(_) => return Err(bad("`name` must be a string")),
        };
        let kind = match body.remove("kind") {
            Some(Value::String(s)) => Some(s),
            None | Some(Value::Null) => None,
            Some(_) => return Err(bad("`kind` must be a string")),
        };
        let config = match body.remove("config") {
            Some(Value::Object(m)) => m,
            None | Some(Value::Null) => return Err(bad("`config` is required")),
            Some(_) => return Err(bad("`config` must be an object")),
        };
        Ok(NewComponent { name, kind, config })
    }
}

/// Shows the config's field names only: its values include plaintext secrets.
impl std::fmt::Debug for NewComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewComponent")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("config", &self.config.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<'de> Deserialize<'de> for NewComponent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NewComponent, D::Error> {
        // Via `Value` so that type errors are ours: serde's would quote the value.
        NewComponent::from_json(Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Why a component body was refused, or a stored one could not be used. Never
/// includes a secret value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ComponentError {
    /// The body is not `{"name", "kind", "config"}`.
    #[error("the component body is not valid: {0}")]
    InvalidBody(String),
    /// The name breaks the naming rule.
    #[error("name must be 1-64 characters of a-z, 0-9, '-', '_' and '.'")]
    InvalidName,
    /// `config.provider` is not a known API-key provider.
    #[error("config.provider `{provider}` is not known; known: {known}")]
    UnknownProvider {
        /// The provider given.
        provider: String,
        /// The API-key providers the catalogue has, comma-separated.
        known: String,
    },
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
        /// What is wrong (never the value).
        reason: String,
    },
    /// A field the provider does not have.
    #[error("config.{0} is not a field of this provider")]
    UnknownField(String),
    /// A stored secret field could not be opened.
    #[error("config.{field} cannot be decrypted: {reason}")]
    Sealed {
        /// Field name.
        field: String,
        /// Why (a vault error, never the value).
        reason: String,
    },
}

impl From<FieldError> for ComponentError {
    fn from(e: FieldError) -> ComponentError {
        ComponentError::InvalidField {
            field: e.field,
            reason: e.reason,
        }
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> ComponentError {
    ComponentError::InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

fn check_name(name: &str) -> Result<(), ComponentError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ComponentError::InvalidName)
    }
}

/// The API-key provider of that name, or `UnknownProvider` naming the known ones.
pub fn provider_def<'c>(
    catalogue: &'c Catalogue,
    name: &str,
) -> Result<&'c ApiKeyProvider, ComponentError> {
    catalogue
        .api_key(name)
        .map(|p| &**p)
        .ok_or_else(|| ComponentError::UnknownProvider {
            provider: name.to_string(),
            known: catalogue.api_key_names().join(", "),
        })
}

/// Validate a creation body against its provider's catalogue entry, fill defaults and
/// seal every secret field into an [`Envelope`] (a JSON object in `config`). The record
/// gets a fresh id, is not the default, and is stamped now.
pub fn prepare(
    new: NewComponent,
    company_id: &str,
    vault: &Vault,
    catalogue: &Catalogue,
) -> Result<ComponentRecord, ComponentError> {
    check_name(&new.name)?;
    let provider_name = match new.config.get("provider") {
        Some(Value::String(p)) => p.clone(),
        Some(Value::Null) | None => return Err(ComponentError::MissingField("provider".into())),
        Some(_) => return Err(invalid("provider", "must be a string")),
    };
    let provider = provider_def(catalogue, &provider_name)?;
    let kind = match new.kind {
        None => provider.kind.clone(),
        Some(k) if k == provider.kind => k,
        Some(k) => {
            return Err(ComponentError::KindMismatch {
                kind: k,
                provider: provider_name,
                expected: provider.kind.clone(),
            });
        }
    };
    // Unknown fields first: a misspelt secret name is reported as such, not as the
    // correctly spelt one missing.
    if let Some(key) = new
        .config
        .keys()
        .find(|k| *k != "provider" && provider.field(k).is_none())
    {
        return Err(ComponentError::UnknownField(key.clone()));
    }
    // The id first: each secret is sealed for this record's field.
    let id = new_object_id();
    let mut config = Map::new();
    config.insert("provider".into(), Value::String(provider_name.clone()));
    for field in &provider.fields {
        let value = match new.config.get(&field.name) {
            None | Some(Value::Null) if field.required => {
                return Err(ComponentError::MissingField(field.name.clone()));
            }
            None | Some(Value::Null) => continue,
            Some(v) => v,
        };
        field.check(value)?;
        match value {
            Value::String(s) if field.secret => {
                let context = sealing::component(company_id, &id, &field.name);
                config.insert(field.name.clone(), vault.encrypt(s, &context).to_json());
            }
            // A secret field's check lets only strings through.
            _ if field.secret => return Err(invalid(&field.name, "must be a string")),
            v => {
                config.insert(field.name.clone(), v.clone());
            }
        }
    }
    provider.fill_defaults(&mut config);
    let t = now();
    Ok(ComponentRecord {
        id,
        company_id: company_id.into(),
        name: new.name,
        kind,
        config,
        is_default: false,
        created_at: t,
        updated_at: t,
    })
}

/// The component's provider (`s3`, `http`, ...); empty when the record has none.
pub fn provider(record: &ComponentRecord) -> &str {
    record
        .config
        .get("provider")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The non-secret fields, defaults filled (the API's `config_summary`), as the
/// provider's entry says (S3's `path_style` only when set, so the flow8 example reads
/// `{"provider": "s3", "bucket": ..., "region": "us-east-1"}`). Sealed values never
/// show, whatever the catalogue says now.
pub fn config_summary(catalogue: &Catalogue, record: &ComponentRecord) -> Map<String, Value> {
    let def = catalogue.api_key(provider(record));
    record
        .config
        .iter()
        .filter(|(k, v)| Envelope::from_json(v).is_none() && def.is_none_or(|d| d.shows(k, v)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The secret fields, decrypted, in the provider's field order (for the runtime to
/// hand to a module or attach to a request). A secret field that is not an envelope
/// is refused: the store never holds plaintext.
pub fn decrypt_secrets(
    catalogue: &Catalogue,
    record: &ComponentRecord,
    vault: &Vault,
) -> Result<Vec<(String, Secret)>, ComponentError> {
    let def = provider_def(catalogue, provider(record))?;
    let mut out = Vec::new();
    for field in def.secret_fields() {
        let sealed = match record.config.get(&field.name) {
            None | Some(Value::Null) => continue,
            Some(v) => Envelope::from_json(v).ok_or_else(|| ComponentError::Sealed {
                field: field.name.clone(),
                reason: "the stored value is not an encrypted envelope".into(),
            })?,
        };
        let context = record.seal_context(&field.name);
        let secret = vault
            .decrypt(&sealed, &context)
            .map_err(|e| ComponentError::Sealed {
                field: field.name.clone(),
                reason: e.to_string(),
            })?;
        out.push((field.name.clone(), secret));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::api_key::Attachment;
    use crate::vault::MasterKey;
    use serde_json::json;
    use std::sync::Arc;

    fn cat() -> Arc<Catalogue> {
        Catalogue::builtin()
    }

    fn def(r: &ComponentRecord) -> Arc<ApiKeyProvider> {
        cat().api_key(provider(r)).unwrap().clone()
    }

    /// The record's pins as the manifest syntax writes them.
    fn pinned_hosts(r: &ComponentRecord) -> Vec<String> {
        def(r)
            .pins(&r.config)
            .unwrap()
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    fn attachment(r: &ComponentRecord) -> Attachment {
        def(r).attachment(&r.config)
    }

    fn config_summary(r: &ComponentRecord) -> Map<String, Value> {
        super::config_summary(&cat(), r)
    }

    fn decrypt_secrets(
        r: &ComponentRecord,
        vault: &Vault,
    ) -> Result<Vec<(String, Secret)>, ComponentError> {
        super::decrypt_secrets(&cat(), r, vault)
    }

    fn prepare(
        new: NewComponent,
        company: &str,
        vault: &Vault,
    ) -> Result<ComponentRecord, ComponentError> {
        super::prepare(new, company, vault, &cat())
    }

    fn new(v: Value) -> NewComponent {
        serde_json::from_value(v).unwrap()
    }

    fn make(vault: &Vault, config: Value) -> Result<ComponentRecord, ComponentError> {
        prepare(
            new(json!({"name": "c", "config": config})),
            "company",
            vault,
        )
    }

    const AK: &str = "AKIAIOSFODNN7EXAMPLE";
    const SK: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const ANT: &str = "sk-ant-api03-secretvalue_0123456789";
    const OAI: &str = "sk-proj-secretvalue_0123456789";
    const PW: &str = "pa55word-secret";
    const TOKEN: &str = "Bearer t0ken-secret-value";

    /// One good config per provider, with its plaintext secrets.
    fn good() -> Vec<(Value, Vec<&'static str>)> {
        vec![
            (
                json!({"provider": "s3", "bucket": "flow8-artifacts", "access_key_id": AK, "secret_access_key": SK}),
                vec![AK, SK],
            ),
            (json!({"provider": "anthropic", "api_key": ANT}), vec![ANT]),
            (
                json!({"provider": "openai", "api_key": OAI, "model": "gpt-4o"}),
                vec![OAI],
            ),
            (
                json!({"provider": "smtp", "host": "smtp.example.com", "username": "mailer", "password": PW}),
                vec![PW],
            ),
            (
                json!({"provider": "ftp", "host": "192.0.2.10", "username": "up", "password": PW}),
                vec![PW],
            ),
            (
                json!({"provider": "http", "base_url": "https://api.example.com/v1", "auth_value": TOKEN}),
                vec![TOKEN],
            ),
        ]
    }

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
        assert_eq!(
            (r.name.as_str(), r.kind.as_str()),
            ("aws-s3-prod", "storage")
        );
        assert_eq!(r.company_id, "c1");
        assert!(!r.is_default);
        assert_eq!(r.id.len(), 24);
        assert_eq!(r.created_at, r.updated_at);
        assert_eq!(r.config["access_key_id"]["encrypted"], true);
        assert_eq!(r.config["secret_access_key"]["key_id"], vault.key_id());
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains(AK) && !text.contains(SK));
        assert_eq!(
            Value::Object(config_summary(&r)),
            json!({"provider": "s3", "bucket": "flow8-artifacts", "region": "us-east-1"})
        );
        let secrets = decrypt_secrets(&r, &vault).unwrap();
        let names: Vec<&str> = secrets.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["access_key_id", "secret_access_key"]);
        assert_eq!(secrets[0].1.expose(), AK);
        assert_eq!(secrets[1].1.expose(), SK);
        assert_eq!(
            attachment(&r),
            Attachment::AwsSigV4 {
                region: "us-east-1".into(),
                service: "s3".into(),
                access_key_field: "access_key_id".into(),
                secret_key_field: "secret_access_key".into(),
            }
        );
        assert_eq!(
            pinned_hosts(&r),
            [
                "https://flow8-artifacts.s3.amazonaws.com",
                "https://s3.amazonaws.com/flow8-artifacts",
                "https://flow8-artifacts.s3.us-east-1.amazonaws.com",
                "https://s3.us-east-1.amazonaws.com/flow8-artifacts"
            ]
        );
        assert_eq!(provider(&r), "s3");
    }

    #[test]
    fn every_provider_seals_summarises_and_opens() {
        let vault = Vault::new(MasterKey::generate());
        for (config, secrets) in good() {
            let p = config["provider"].as_str().unwrap().to_string();
            let r = make(&vault, config).unwrap();
            assert_eq!(r.kind, cat().api_key(&p).unwrap().kind);
            let stored = serde_json::to_string(&r).unwrap();
            let summary = Value::Object(config_summary(&r)).to_string();
            for s in &secrets {
                assert!(!stored.contains(s), "{p}: stored plaintext");
                assert!(!summary.contains(s), "{p}: summary shows a secret");
            }
            assert!(
                !summary.contains("encrypted") && !summary.contains("ciphertext"),
                "{p}"
            );
            let opened = decrypt_secrets(&r, &vault).unwrap();
            assert_eq!(opened.len(), secrets.len(), "{p}");
            for ((field, value), plain) in opened.iter().zip(&secrets) {
                assert!(
                    Envelope::from_json(&r.config[field]).is_some(),
                    "{p}.{field}"
                );
                assert_eq!(value.expose(), *plain);
            }
            for pattern in pinned_hosts(&r) {
                let pin =
                    crate::catalogue::Pin::parse(&pattern).unwrap_or_else(|e| panic!("{p}: {e}"));
                // A report's `pinned_to` carries it; the API's form covers it.
                assert!(pin.is_documented_form(), "{p}: {pin}");
            }
        }
    }

    #[test]
    fn defaults_are_filled() {
        let vault = Vault::new(MasterKey::generate());
        let made: Vec<ComponentRecord> = good()
            .into_iter()
            .map(|(c, _)| make(&vault, c).unwrap())
            .collect();
        let [s3, _, _, smtp, ftp, http] = <[ComponentRecord; 6]>::try_from(made).unwrap();
        assert_eq!(s3.config["region"], "us-east-1");
        assert_eq!(s3.config["path_style"], false);
        assert_eq!(smtp.config["port"], 587);
        assert_eq!(smtp.config["security"], "starttls");
        assert!(!smtp.config.contains_key("from"));
        assert_eq!(ftp.config["port"], 21);
        assert_eq!(ftp.config["tls"], true);
        assert_eq!(ftp.config["base_dir"], "/");
        assert_eq!(http.config["auth_header"], "Authorization");
        assert_eq!(http.config["timeout_seconds"], 30);
        assert_eq!(http.config["max_retries"], 3);
        assert!(!http.config.contains_key("allowed_hosts"));
        // Given values win over defaults.
        let smtp = make(
            &vault,
            json!({"provider": "smtp", "host": "mail.example.com", "port": 465, "security": "tls",
                   "from": "Flow8 <flow8@example.com>", "username": "u", "password": PW}),
        )
        .unwrap();
        assert_eq!(
            (smtp.config["port"].clone(), smtp.config["security"].clone()),
            (json!(465), json!("tls"))
        );
        let summary = config_summary(&smtp);
        assert_eq!(summary["from"], "Flow8 <flow8@example.com>");
        assert_eq!(summary["security"], "tls");
        assert!(!summary.contains_key("password"));
        let ftp = make(
            &vault,
            json!({"provider": "ftp", "host": "ftp.example.com", "tls": false, "base_dir": "/upload/in",
                   "username": "u", "password": PW}),
        )
        .unwrap();
        assert_eq!(
            (ftp.config["tls"].clone(), ftp.config["base_dir"].clone()),
            (json!(false), json!("/upload/in"))
        );
        let minio = make(
            &vault,
            json!({"provider": "s3", "endpoint": "http://127.0.0.1:9000", "access_key_id": AK, "secret_access_key": SK}),
        )
        .unwrap();
        assert_eq!(minio.config["path_style"], true);
        let summary = config_summary(&minio);
        assert_eq!(summary["path_style"], true);
        assert_eq!(summary["endpoint"], "http://127.0.0.1:9000");
    }

    #[test]
    fn bad_values_are_refused_naming_the_field_never_the_value() {
        let vault = Vault::new(MasterKey::generate());
        let s3 = |k: &str, v: Value| {
            let mut c = json!({"provider": "s3", "access_key_id": AK, "secret_access_key": SK});
            c[k] = v;
            c
        };
        let http = |k: &str, v: Value| {
            let mut c = json!({"provider": "http", "base_url": "https://api.example.com"});
            c[k] = v;
            c
        };
        let smtp = |k: &str, v: Value| {
            let mut c = json!({"provider": "smtp", "host": "smtp.example.com", "username": "u", "password": PW});
            c[k] = v;
            c
        };
        let ftp = |k: &str, v: Value| {
            let mut c = json!({"provider": "ftp", "host": "ftp.example.com", "username": "u", "password": PW});
            c[k] = v;
            c
        };
        let cases = [
            (
                s3("access_key_id", json!("AKIAIOSFODNN7EXAMPL")),
                "access_key_id",
            ),
            (
                s3("access_key_id", json!("AKIAiosfodnn7example")),
                "access_key_id",
            ),
            (
                s3("access_key_id", json!("XKIAIOSFODNN7EXAMPLE")),
                "access_key_id",
            ),
            (s3("access_key_id", json!(12345)), "access_key_id"),
            (
                s3(
                    "secret_access_key",
                    json!("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKE"),
                ),
                "secret_access_key",
            ),
            (
                s3(
                    "secret_access_key",
                    json!("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEK!Y"),
                ),
                "secret_access_key",
            ),
            (
                s3(
                    "secret_access_key",
                    json!({"encrypted": true, "nonce": "", "ciphertext": ""}),
                ),
                "secret_access_key",
            ),
            (s3("bucket", json!("Flow8_Artifacts")), "bucket"),
            (s3("bucket", json!("ab")), "bucket"),
            (s3("bucket", json!("192.168.1.1")), "bucket"),
            (s3("region", json!("us east 1")), "region"),
            (s3("region", json!("x.evil.com/")), "region"),
            (s3("endpoint", json!("ftp://minio.local")), "endpoint"),
            (
                s3("endpoint", json!("https://minio.local/prefix")),
                "endpoint",
            ),
            (
                s3("endpoint", json!("https://key:secret@minio.local")),
                "endpoint",
            ),
            (s3("path_style", json!("yes")), "path_style"),
            (
                json!({"provider": "anthropic", "api_key": "sk-proj-secretvalue_0123456789"}),
                "api_key",
            ),
            (
                json!({"provider": "anthropic", "api_key": "sk-ant-secret value 0123456789"}),
                "api_key",
            ),
            (json!({"provider": "openai", "api_key": ANT}), "api_key"),
            (
                json!({"provider": "openai", "api_key": "pk-secretvalue_0123456789"}),
                "api_key",
            ),
            (
                json!({"provider": "openai", "api_key": "sk-short"}),
                "api_key",
            ),
            (smtp("port", json!(70000)), "port"),
            (smtp("port", json!(0)), "port"),
            (smtp("port", json!("587")), "port"),
            (smtp("host", json!("smtp://smtp.example.com")), "host"),
            (smtp("host", json!("smtp.example.com:25")), "host"),
            (smtp("security", json!("ssl")), "security"),
            (smtp("security", json!(true)), "security"),
            (smtp("from", json!("not an address")), "from"),
            (smtp("from", json!("Flow8 <flow8@>")), "from"),
            (
                smtp("from", json!("a@example.com\r\nBcc: b@example.com")),
                "from",
            ),
            (ftp("tls", json!("yes")), "tls"),
            (ftp("base_dir", json!("upload")), "base_dir"),
            (ftp("base_dir", json!("/upload/../etc")), "base_dir"),
            (ftp("base_dir", json!("/upload/./in")), "base_dir"),
            (ftp("port", json!(65536)), "port"),
            (smtp("password", json!("")), "password"),
            (smtp("password", json!("pa55\r\nword-secret")), "password"),
            (smtp("username", json!("   ")), "username"),
            (
                json!({"provider": "ftp", "host": "ftp .example.com", "username": "u", "password": PW}),
                "host",
            ),
            (http("base_url", json!("ftp://x.example")), "base_url"),
            (
                http("base_url", json!("https://user:pa55word-secret@x.example")),
                "base_url",
            ),
            (http("base_url", json!("not a url")), "base_url"),
            (http("timeout_seconds", json!(0)), "timeout_seconds"),
            (http("timeout_seconds", json!(301)), "timeout_seconds"),
            (http("timeout_seconds", json!(2.5)), "timeout_seconds"),
            (http("max_retries", json!(11)), "max_retries"),
            (http("max_retries", json!(-1)), "max_retries"),
            (
                http("allowed_hosts", json!("https://a.example.com")),
                "allowed_hosts",
            ),
            (
                http("allowed_hosts", json!(["https://*.com"])),
                "allowed_hosts[0]",
            ),
            (
                http(
                    "allowed_hosts",
                    json!(["https://ok.example.com", "https://*"]),
                ),
                "allowed_hosts[1]",
            ),
            (http("allowed_hosts", json!([42])), "allowed_hosts[0]"),
            (http("auth_header", json!("X Api Key")), "auth_header"),
            (http("auth_header", json!("Host")), "auth_header"),
            // A credential there would go to the operator's proxy, not the service.
            (
                http("auth_header", json!("Proxy-Authorization")),
                "auth_header",
            ),
            (
                http("auth_value", json!("Bearer pa55word-secret\n")),
                "auth_value",
            ),
            (
                http("auth_value", json!("Bearer pa55word-secret\u{e9}")),
                "auth_value",
            ),
        ];
        for (config, field) in cases {
            let shown = config.to_string();
            let err = make(&vault, config).unwrap_err();
            assert!(
                matches!(&err, ComponentError::InvalidField { field: f, .. } if f == field),
                "{shown}: expected InvalidField({field}), got {err:?}"
            );
            let msg = format!("{err} {err:?}");
            for secret in ["pa55word-secret", "secretvalue", "EXAMPLE", "user:"] {
                assert!(!msg.contains(secret), "{msg} echoes a value");
            }
        }
    }

    #[test]
    fn missing_and_unknown_fields_are_named() {
        let vault = Vault::new(MasterKey::generate());
        let missing = [
            (
                json!({"provider": "s3", "secret_access_key": SK}),
                "access_key_id",
            ),
            (
                json!({"provider": "s3", "access_key_id": AK}),
                "secret_access_key",
            ),
            (
                json!({"provider": "s3", "access_key_id": AK, "secret_access_key": null}),
                "secret_access_key",
            ),
            (json!({"provider": "anthropic"}), "api_key"),
            (json!({"provider": "openai", "model": "gpt-4o"}), "api_key"),
            (
                json!({"provider": "smtp", "username": "u", "password": PW}),
                "host",
            ),
            (
                json!({"provider": "smtp", "host": "h.example.com", "password": PW}),
                "username",
            ),
            (
                json!({"provider": "ftp", "host": "h.example.com", "username": "u"}),
                "password",
            ),
            (json!({"provider": "http"}), "base_url"),
            (json!({"bucket": "b"}), "provider"),
        ];
        for (config, field) in missing {
            assert_eq!(
                make(&vault, config).unwrap_err(),
                ComponentError::MissingField(field.into())
            );
        }
        // A misspelt secret is named as what it is, not as the missing one.
        assert_eq!(
            make(
                &vault,
                json!({"provider": "s3", "access_key_id": AK, "secret_acess_key": SK})
            )
            .unwrap_err(),
            ComponentError::UnknownField("secret_acess_key".into())
        );
        let unknown = make(&vault, json!({"provider": "gcs"})).unwrap_err();
        assert_eq!(
            unknown,
            ComponentError::UnknownProvider {
                provider: "gcs".into(),
                known: "s3, anthropic, openai, smtp, ftp, http".into()
            }
        );
        assert_eq!(
            unknown.to_string(),
            "config.provider `gcs` is not known; known: s3, anthropic, openai, smtp, ftp, http"
        );
        assert_eq!(
            make(&vault, json!({"provider": 3})).unwrap_err(),
            invalid("provider", "must be a string")
        );
        assert!(matches!(
            prepare(new(json!({"name": "x", "kind": "ai", "config": {"provider": "s3"}})), "c", &vault),
            Err(ComponentError::KindMismatch { kind, expected, .. }) if kind == "ai" && expected == "storage"
        ));
        // The kind, when given and right, is kept; when absent it is the provider's.
        let r = prepare(new(json!({"name": "x", "kind": "ai", "config": {"provider": "openai", "api_key": OAI}})), "c", &vault).unwrap();
        assert_eq!(r.kind, "ai");
    }

    #[test]
    fn names_follow_the_rule() {
        let vault = Vault::new(MasterKey::generate());
        let config = json!({"provider": "http", "base_url": "https://a.example.com"});
        for good in ["a", "aws-s3-prod", "v1.2_x", "a".repeat(64).as_str()] {
            prepare(new(json!({"name": good, "config": config})), "c", &vault).unwrap();
        }
        for bad in ["", "Bad", "has space", "a/b", "é", "a".repeat(65).as_str()] {
            assert_eq!(
                prepare(new(json!({"name": bad, "config": config})), "c", &vault).unwrap_err(),
                ComponentError::InvalidName,
                "{bad}"
            );
        }
    }

    #[test]
    fn bodies_are_checked_without_echoing_values() {
        let bad = [
            json!({"name": "x", "config": {}, "is_default": true}),
            json!({"name": "x", "config": "sk-ant-secretvalue"}),
            json!({"name": 42, "config": {}}),
            json!({"config": {}}),
            json!({"name": "x"}),
            json!({"name": "x", "kind": ["sk-ant-secretvalue"], "config": {}}),
            json!(["sk-ant-secretvalue"]),
        ];
        for body in bad {
            let err = NewComponent::from_json(body.clone()).unwrap_err();
            assert!(matches!(err, ComponentError::InvalidBody(_)), "{body}");
            let serde_err = serde_json::from_value::<NewComponent>(body).unwrap_err();
            for msg in [err.to_string(), serde_err.to_string()] {
                assert!(!msg.contains("secretvalue") && !msg.contains("42"), "{msg}");
            }
        }
        let ok = new(json!({"name": "x", "kind": null, "config": {"provider": "s3"}}));
        assert_eq!(ok.kind, None);
    }

    #[test]
    fn a_secret_moved_to_another_component_does_not_open_there() {
        let vault = Vault::new(MasterKey::generate());
        let a = prepare(
            new(json!({"name": "a", "config": {"provider": "openai", "api_key": OAI}})),
            "company-a",
            &vault,
        )
        .unwrap();
        let mut b = prepare(
            new(json!({"name": "b", "config": {"provider": "openai", "api_key": "sk-proj-othervalue_9876543210"}})),
            "company-b",
            &vault,
        )
        .unwrap();
        assert_eq!(decrypt_secrets(&a, &vault).unwrap()[0].1.expose(), OAI);
        b.config
            .insert("api_key".into(), a.config["api_key"].clone());
        match decrypt_secrets(&b, &vault).unwrap_err() {
            ComponentError::Sealed { field, reason } => {
                assert_eq!(field, "api_key");
                assert!(
                    reason.contains("does not belong to this record"),
                    "{reason}"
                );
                assert!(!reason.contains(OAI), "{reason}");
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn decrypting_needs_the_right_key_and_an_envelope() {
        let vault = Vault::new(MasterKey::generate());
        let mut r = make(&vault, json!({"provider": "openai", "api_key": OAI})).unwrap();
        let other = Vault::new(MasterKey::generate());
        match decrypt_secrets(&r, &other).unwrap_err() {
            ComponentError::Sealed { field, reason } => {
                assert_eq!(field, "api_key");
                assert!(reason.contains(&vault.key_id()), "{reason}");
            }
            e => panic!("{e:?}"),
        }
        // Plaintext where a secret belongs is never handed out.
        r.config.insert("api_key".into(), json!(OAI));
        assert!(matches!(
            decrypt_secrets(&r, &vault),
            Err(ComponentError::Sealed { field, .. }) if field == "api_key"
        ));
        assert!(!config_summary(&r).contains_key("api_key"));
        r.config.insert("provider".into(), json!("nope"));
        assert!(matches!(
            decrypt_secrets(&r, &vault),
            Err(ComponentError::UnknownProvider { .. })
        ));
    }

    #[test]
    fn providers_pin_and_attach_as_documented() {
        let vault = Vault::new(MasterKey::generate());
        let http = make(
            &vault,
            json!({"provider": "http", "base_url": "http://127.0.0.1:8080/v1",
                "auth_value": "Bearer t0ken-value", "allowed_hosts": ["https://*.example.com", "http://127.0.0.1:8080"]}),
        )
        .unwrap();
        assert_eq!(http.kind, "http");
        assert_eq!(
            pinned_hosts(&http),
            ["http://127.0.0.1:8080", "https://*.example.com"]
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

        let custom = make(
            &vault,
            json!({"provider": "http", "base_url": "https://API.Example.com:443/", "auth_header": "X-Api-Key", "auth_value": "k-123456"}),
        )
        .unwrap();
        assert_eq!(pinned_hosts(&custom), ["https://api.example.com"]);
        assert_eq!(
            attachment(&custom),
            Attachment::Header {
                name: "X-Api-Key".into(),
                field: "auth_value".into()
            }
        );
        let open = make(
            &vault,
            json!({"provider": "http", "base_url": "https://[::1]:9443"}),
        )
        .unwrap();
        assert_eq!(pinned_hosts(&open), ["https://[::1]:9443"]);
        assert_eq!(attachment(&open), Attachment::NotHttp);

        let oa = make(&vault, json!({"provider": "openai", "api_key": OAI})).unwrap();
        assert_eq!(oa.kind, "ai");
        assert_eq!(
            attachment(&oa),
            Attachment::Bearer {
                field: "api_key".into()
            }
        );
        assert_eq!(pinned_hosts(&oa), ["https://api.openai.com"]);

        let an = make(&vault, json!({"provider": "anthropic", "api_key": ANT})).unwrap();
        assert_eq!(
            attachment(&an),
            Attachment::Header {
                name: "x-api-key".into(),
                field: "api_key".into()
            }
        );
        assert_eq!(pinned_hosts(&an), ["https://api.anthropic.com"]);

        // An S3 component is pinned to its bucket only; naming none, to nothing (a pin
        // to the endpoint would cover other people's buckets).
        let eu = make(
            &vault,
            json!({"provider": "s3", "region": "eu-west-1", "bucket": "b-1", "access_key_id": AK, "secret_access_key": SK}),
        )
        .unwrap();
        assert_eq!(
            pinned_hosts(&eu),
            [
                "https://b-1.s3.amazonaws.com",
                "https://s3.amazonaws.com/b-1",
                "https://b-1.s3.eu-west-1.amazonaws.com",
                "https://s3.eu-west-1.amazonaws.com/b-1"
            ]
        );
        let no_bucket = make(
            &vault,
            json!({"provider": "s3", "region": "eu-west-1", "access_key_id": AK, "secret_access_key": SK}),
        )
        .unwrap();
        assert!(pinned_hosts(&no_bucket).is_empty());
        assert_eq!(
            attachment(&eu),
            Attachment::AwsSigV4 {
                region: "eu-west-1".into(),
                service: "s3".into(),
                access_key_field: "access_key_id".into(),
                secret_key_field: "secret_access_key".into(),
            }
        );

        let s3_compat = |endpoint: &str, path_style: Option<bool>| {
            let mut c = json!({"provider": "s3", "endpoint": endpoint, "bucket": "b-1", "access_key_id": AK, "secret_access_key": SK});
            if let Some(p) = path_style {
                c["path_style"] = json!(p);
            }
            pinned_hosts(&make(&vault, c).unwrap())
        };
        assert_eq!(
            s3_compat("http://127.0.0.1:9000", None),
            ["http://127.0.0.1:9000/b-1"]
        );
        // An IP address has no virtual hosts.
        assert_eq!(
            s3_compat("http://127.0.0.1:9000", Some(false)),
            ["http://127.0.0.1:9000/b-1"]
        );
        assert_eq!(
            s3_compat("https://minio.example.com:9000", Some(false)),
            [
                "https://minio.example.com:9000/b-1",
                "https://b-1.minio.example.com:9000"
            ]
        );
        assert_eq!(
            s3_compat("https://minio.example.com", None),
            ["https://minio.example.com/b-1"]
        );

        for config in [
            json!({"provider": "smtp", "host": "smtp.example.com", "username": "u", "password": PW}),
            json!({"provider": "ftp", "host": "ftp.example.com", "username": "u", "password": PW}),
        ] {
            let r = make(&vault, config).unwrap();
            assert_eq!(attachment(&r), Attachment::NotHttp);
            assert!(pinned_hosts(&r).is_empty());
        }
    }
}
