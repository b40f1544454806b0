//! How an API-key provider's field values are checked: the fixed set of named checks a
//! catalogue entry picks from (`check: bucket`, `check: {int: {min, max}}`, ...) and the
//! declarative secret format rules (`format: {prefixes, length, charset, ...}`).
//!
//! flow8: "Validate API key format: reject malformed keys before storing". Every
//! refusal names the field and never repeats a value (values include plaintext secrets).

use crate::manifest::HostPattern;
use serde::Deserialize;
use serde_json::Value;

/// A field value was refused: which field (`allowed_hosts[1]` for a list item) and why,
/// never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's name.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn invalid(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// At most this many extra hosts in a `host_list` field.
pub const MAX_HOST_LIST: usize = 32;
/// Longest string value accepted (secrets and plain fields alike).
pub const MAX_TEXT: usize = 4096;

/// How a field's value is checked (`check:` in the catalogue; `text` when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Check {
    /// A non-empty string without control characters (secrets: also their format).
    #[default]
    Text,
    /// A host name or IP address (no scheme, no port).
    Host,
    /// An S3 region name.
    Region,
    /// An S3 bucket name.
    Bucket,
    /// `http(s)://host[:port]` only (an S3-compatible endpoint).
    Origin,
    /// An http(s) URL without user info or fragment.
    HttpUrl,
    /// 1-65535.
    Port,
    /// `true` or `false`.
    Bool,
    /// A whole number in a range.
    Int {
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
    },
    /// Host patterns (`scheme://host[:port]`, `*.` wildcards), none matching every host.
    HostList,
    /// An HTTP header name a credential may ride in.
    HeaderName,
    /// An email address, `user@example.com` or `Name <user@example.com>` (SMTP `from`).
    Email,
    /// How an SMTP connection is secured: `starttls`, `tls` (implicit) or `none`.
    SmtpSecurity,
    /// An absolute directory on a file server (`/` or `/upload/in`), without `.` or
    /// `..` segments (an FTP component's `base_dir`).
    RemoteDir,
}

fn is_host_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn check_http_url(field: &str, u: &url::Url) -> Result<(), FieldError> {
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(invalid(field, "must be an http(s) URL with a host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(invalid(
            field,
            "must not carry user info; put credentials in the secret fields",
        ));
    }
    if u.fragment().is_some() {
        return Err(invalid(field, "must not have a #fragment"));
    }
    Ok(())
}

/// A non-empty string of reasonable length without control characters.
fn text<'a>(name: &str, v: &'a Value) -> Result<&'a str, FieldError> {
    match v.as_str() {
        Some(s) if s.trim().is_empty() => Err(invalid(name, "must not be empty")),
        Some(s) if s.len() > MAX_TEXT => {
            Err(invalid(name, format!("must be at most {MAX_TEXT} bytes")))
        }
        Some(s) if s.chars().any(char::is_control) => {
            Err(invalid(name, "must not contain control characters"))
        }
        Some(s) => Ok(s),
        None => Err(invalid(name, "must be a string")),
    }
}

/// Whether a header name is one a credential may ride in: a valid name the host does
/// not set itself.
pub fn check_header_name(field: &str, s: &str) -> Result<(), FieldError> {
    if http::HeaderName::from_bytes(s.as_bytes()).is_err() {
        return Err(invalid(field, "is not a valid HTTP header name"));
    }
    // The same list that keeps modules from setting these headers.
    if crate::runtime::policy::headers::is_forbidden(s) {
        return Err(invalid(
            field,
            "is a header the host sets itself (framing, routing or the connection)",
        ));
    }
    Ok(())
}

impl Check {
    /// Check a value of field `name` (its shape and, for plain fields, its format).
    pub fn check(self, name: &str, v: &Value) -> Result<(), FieldError> {
        let text = || text(name, v);
        match self {
            Check::Text => {
                text()?;
            }
            Check::Host => {
                let s = text()?;
                let ok = s.parse::<std::net::IpAddr>().is_ok()
                    || match url::Host::parse(s) {
                        Ok(url::Host::Domain(d)) => is_host_name(&d),
                        Ok(_) => true,
                        Err(_) => false,
                    };
                if !ok {
                    return Err(invalid(
                        name,
                        "must be a host name or IP address (no scheme, port or path)",
                    ));
                }
            }
            Check::Region => {
                let s = text()?;
                let ok = s.len() <= 64
                    && s.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !s.starts_with('-')
                    && !s.ends_with('-');
                if !ok {
                    return Err(invalid(
                        name,
                        "must be a region name of a-z, 0-9 and '-' (e.g. us-east-1)",
                    ));
                }
            }
            Check::Bucket => {
                // https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
                let s = text()?;
                let ok = (3..=63).contains(&s.len())
                    && s.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-'
                    })
                    && s.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && s.ends_with(|c: char| c.is_ascii_alphanumeric())
                    && !s.contains("..")
                    && s.parse::<std::net::Ipv4Addr>().is_err();
                if !ok {
                    return Err(invalid(
                        name,
                        "must be an S3 bucket name: 3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit",
                    ));
                }
            }
            Check::Origin => {
                let u = url::Url::parse(text()?).map_err(|_| {
                    invalid(
                        name,
                        "must be an http(s) URL such as https://minio.example.com:9000",
                    )
                })?;
                check_http_url(name, &u)?;
                if u.path() != "/" || u.query().is_some() {
                    return Err(invalid(
                        name,
                        "must be scheme://host[:port] only, without a path or query",
                    ));
                }
            }
            Check::HttpUrl => {
                let u = url::Url::parse(text()?)
                    .map_err(|_| invalid(name, "must be an http(s) URL"))?;
                check_http_url(name, &u)?;
            }
            Check::Port => {
                if !v.as_u64().is_some_and(|p| (1..=65535).contains(&p)) {
                    return Err(invalid(name, "must be a port number 1-65535"));
                }
            }
            Check::Bool => {
                if !v.is_boolean() {
                    return Err(invalid(name, "must be true or false"));
                }
            }
            Check::Int { min, max } => {
                if !v.as_i64().is_some_and(|n| (min..=max).contains(&n)) {
                    return Err(invalid(
                        name,
                        format!("must be a whole number from {min} to {max}"),
                    ));
                }
            }
            Check::HostList => {
                host_list(name, v)?;
            }
            Check::HeaderName => check_header_name(name, text()?)?,
            Check::Email => {
                if text()?.trim().parse::<lettre::message::Mailbox>().is_err() {
                    return Err(invalid(
                        name,
                        "must be an email address such as flow8@example.com or Flow8 <flow8@example.com>",
                    ));
                }
            }
            Check::SmtpSecurity => {
                if !matches!(text()?, "starttls" | "tls" | "none") {
                    return Err(invalid(
                        name,
                        "must be starttls, tls (implicit TLS, usually port 465) or none",
                    ));
                }
            }
            Check::RemoteDir => {
                let s = text()?;
                let ok = s.starts_with('/')
                    && s.len() <= 1024
                    && s.split('/').all(|seg| seg != "." && seg != "..")
                    && !s.contains('\\');
                if !ok {
                    return Err(invalid(
                        name,
                        "must be an absolute directory such as /upload, without . or .. segments",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The patterns of a `host_list` value, each checked (a stored one too: a credential is
/// never pinned to every host).
pub fn host_list(name: &str, v: &Value) -> Result<Vec<HostPattern>, FieldError> {
    let Some(hosts) = v.as_array() else {
        return Err(invalid(name, "must be a list of host patterns"));
    };
    if hosts.len() > MAX_HOST_LIST {
        return Err(invalid(
            name,
            format!("may list at most {MAX_HOST_LIST} hosts"),
        ));
    }
    let mut out = Vec::with_capacity(hosts.len());
    for (i, h) in hosts.iter().enumerate() {
        let item = format!("{name}[{i}]");
        let h = h
            .as_str()
            .ok_or_else(|| invalid(&item, "must be a string"))?;
        out.push(pin_pattern(&item, h)?);
    }
    Ok(out)
}

/// A host pattern a credential may be pinned to: valid, and not every host.
pub fn pin_pattern(field: &str, text: &str) -> Result<HostPattern, FieldError> {
    let pattern = HostPattern::parse(text).map_err(|e| invalid(field, e))?;
    if pattern.is_any_host() {
        return Err(invalid(
            field,
            "a credential cannot be allowed to every host; name the hosts",
        ));
    }
    Ok(pattern)
}

/// A pin (a host pattern and an optional path prefix, `super::pins`): valid, and not
/// every host.
pub fn pin(field: &str, text: &str) -> Result<super::pins::Pin, FieldError> {
    let pin = super::pins::Pin::parse(text).map_err(|e| invalid(field, e))?;
    if pin.host.is_any_host() {
        return Err(invalid(
            field,
            "a credential cannot be allowed to every host; name the hosts",
        ));
    }
    Ok(pin)
}

/// Characters a value may hold, as ranges (`A-Za-z0-9_-` in the catalogue: `a-b` is a
/// range, a `-` first or last is itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charset(Vec<(char, char)>);

impl Charset {
    /// Parse `A-Za-z0-9/+=`.
    pub fn parse(spec: &str) -> Result<Charset, String> {
        let chars: Vec<char> = spec.chars().collect();
        if chars.is_empty() {
            return Err("must name at least one character".into());
        }
        let mut ranges = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let lo = chars[i];
            if i + 2 < chars.len() && chars[i + 1] == '-' {
                let hi = chars[i + 2];
                if hi < lo {
                    return Err(format!("the range `{lo}-{hi}` is backwards"));
                }
                ranges.push((lo, hi));
                i += 3;
            } else {
                ranges.push((lo, lo));
                i += 1;
            }
        }
        Ok(Charset(ranges))
    }

    /// Whether `c` is in the set.
    pub fn contains(&self, c: char) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c))
    }
}

/// A prefix that means the value belongs to another provider (an Anthropic key given to
/// `openai`), with what to tell the user.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtherProvider {
    /// The other provider's prefix.
    pub prefix: String,
    /// The refusal, e.g. "this is an Anthropic key (`sk-ant-`); use provider `anthropic`".
    pub message: String,
}

/// A secret's format (`format:` in the catalogue). Every rule given must hold; one
/// message explains them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    /// Refused first, each with its own message.
    pub other_providers: Vec<OtherProvider>,
    /// Exact length in bytes.
    pub length: Option<usize>,
    /// Smallest length in bytes.
    pub min_length: Option<usize>,
    /// One of these must start the value (none: any start).
    pub prefixes: Vec<String>,
    /// Every character must be in this set.
    pub charset: Option<Charset>,
    /// Why a value breaking the rules is refused (never the value).
    pub message: String,
}

/// `format:` as written in the catalogue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFormat {
    #[serde(default)]
    other_providers: Vec<OtherProvider>,
    #[serde(default)]
    length: Option<usize>,
    #[serde(default)]
    min_length: Option<usize>,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    charset: Option<String>,
    message: String,
}

impl RawFormat {
    /// Check the rules themselves; `Err((subfield, reason))`.
    pub(crate) fn build(self) -> Result<Format, (&'static str, String)> {
        let charset = self
            .charset
            .as_deref()
            .map(Charset::parse)
            .transpose()
            .map_err(|e| ("charset", e))?;
        if self.message.trim().is_empty() {
            return Err(("message", "must say what a valid value looks like".into()));
        }
        if self.prefixes.iter().any(String::is_empty) {
            return Err(("prefixes", "a prefix must not be empty".into()));
        }
        if self
            .other_providers
            .iter()
            .any(|o| o.prefix.is_empty() || o.message.trim().is_empty())
        {
            return Err((
                "other_providers",
                "each needs a non-empty prefix and message".into(),
            ));
        }
        if let (Some(n), Some(m)) = (self.length, self.min_length)
            && m > n
        {
            return Err(("min_length", "is larger than length".into()));
        }
        Ok(Format {
            other_providers: self.other_providers,
            length: self.length,
            min_length: self.min_length,
            prefixes: self.prefixes,
            charset,
            message: self.message,
        })
    }
}

impl Format {
    /// Check a value; the refusal names `field`, never the value.
    pub fn check(&self, field: &str, value: &str) -> Result<(), FieldError> {
        if let Some(o) = self
            .other_providers
            .iter()
            .find(|o| value.starts_with(&o.prefix))
        {
            return Err(invalid(field, o.message.clone()));
        }
        let ok = self.length.is_none_or(|n| value.len() == n)
            && self.min_length.is_none_or(|n| value.len() >= n)
            && (self.prefixes.is_empty() || self.prefixes.iter().any(|p| value.starts_with(p)))
            && self
                .charset
                .as_ref()
                .is_none_or(|c| value.chars().all(|ch| c.contains(ch)));
        if ok {
            Ok(())
        } else {
            Err(invalid(field, self.message.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charsets_parse_ranges_and_literal_dashes() {
        let c = Charset::parse("A-Za-z0-9_-").unwrap();
        for ok in ['A', 'z', '5', '_', '-'] {
            assert!(c.contains(ok), "{ok}");
        }
        for bad in ['/', ' ', 'é', '.'] {
            assert!(!c.contains(bad), "{bad}");
        }
        let header = Charset::parse("\t -~").unwrap();
        assert!(header.contains('\t') && header.contains(' ') && header.contains('~'));
        assert!(!header.contains('\n') && !header.contains('\u{7f}') && !header.contains('é'));
        assert!(Charset::parse("z-a").is_err());
        assert!(Charset::parse("").is_err());
    }
}
