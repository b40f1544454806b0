//! Credential pins: where a credential (or data derived from it) may be sent. A pin is a
//! host pattern (`scheme://host[:port]`, as in the manifest) and, optionally, a path
//! prefix: `https://slack.com/api/` pins a Slack token to the Web API and not to
//! `hooks.slack.com` webhooks or anything else on `slack.com`; `http://s3.local/invoices`
//! pins an S3 key to one bucket of a path-style endpoint. A whole origin or a wildcard
//! domain is a pin to every resource behind it, attacker-owned buckets included, so the
//! shipped catalogue names the resource wherever a service shares its hosts.

use crate::manifest::HostPattern;
use std::fmt;
use std::sync::LazyLock;
use url::Url;

/// The written form of a pin in the API (a step body's `pinned_to`, a report's): the
/// language the OpenAPI document states for `Taint.pins`, which the host enforces on
/// what a request carries. Every pin it covers parses, and prints back inside it, so a
/// report's `pinned_to` can be passed to the next step as it is. It is `http` or
/// `https`; `*`, `*.` a domain of two labels or more, a domain name (lower case, labels
/// of letters, digits and inner `-`, the last starting with a letter) or a dotted IPv4
/// address; a port 1-65535 or `*`; path segments of URL characters without `%`, none
/// starting with `.`. Not covered: IPv6 literals (an endpoint on one gives a pin the
/// next step cannot be given back).
pub const PIN_PATTERN: &str = concat!(
    r"^https?://",
    r"(?:\*",
    r"|\*\.(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?",
    r"|(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?",
    r"|(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9]))",
    r"(?::(?:\*|[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?",
    r"(?:/[A-Za-z0-9_~!$&'()*+,;=:@-][A-Za-z0-9._~!$&'()*+,;=:@-]*)*/?$",
);

static PIN_FORM: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(PIN_PATTERN).expect("PIN_PATTERN is a valid regex"));

/// One place a credential may be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The scheme, host and port.
    pub host: HostPattern,
    /// A path prefix, or `None` for every path. A prefix ending in `/` covers the paths
    /// below it; one that does not also covers the path itself (`/bucket` covers
    /// `/bucket` and `/bucket/key`, not `/bucket-two`).
    pub path: Option<String>,
}

impl Pin {
    /// A pin to every path of these hosts.
    pub fn host(host: HostPattern) -> Pin {
        Pin { host, path: None }
    }

    /// A pin to the paths under `prefix` (which must start with `/`) of these hosts.
    pub fn under(host: HostPattern, prefix: &str) -> Result<Pin, String> {
        check_prefix(prefix)?;
        Ok(Pin {
            host,
            path: (prefix != "/").then(|| prefix.to_string()),
        })
    }

    /// Parse `scheme://host[:port][/path/prefix]`.
    pub fn parse(text: &str) -> Result<Pin, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("`{text}` is not scheme://host[:port][/path]"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        let host = HostPattern::parse(&format!("{scheme}://{authority}"))?;
        match path {
            None => Ok(Pin::host(host)),
            Some(p) => Pin::under(host, p).map_err(|e| format!("`{text}`: {e}")),
        }
    }

    /// Parse a pin written in the API's form ([`PIN_PATTERN`]): what a request may
    /// carry. Anything outside that form is refused, even where [`Pin::parse`] would
    /// read it (`HTTPS://A.example`, `https://a.example:443`), so the document and the
    /// host agree on one language.
    pub fn parse_documented(text: &str) -> Result<Pin, String> {
        if !PIN_FORM.is_match(text) {
            return Err(format!(
                "`{}` is not a pin as the API writes one: scheme://host[:port][/path], \
                 lower-case host, no query, `%` escapes or `.` segments",
                text.escape_debug()
            ));
        }
        Pin::parse(text)
    }

    /// Whether this pin prints inside the API's form ([`PIN_PATTERN`]).
    pub fn is_documented_form(&self) -> bool {
        PIN_FORM.is_match(&self.to_string())
    }

    /// Whether a request to `url` falls under this pin.
    pub fn matches(&self, url: &Url) -> bool {
        if !self.host.matches(url) {
            return false;
        }
        let Some(prefix) = &self.path else {
            return true;
        };
        let path = url.path();
        // The URL parser has already resolved `.` and `..` segments (their encoded forms
        // too, WHATWG URL §4.4). What it keeps encoded, a server may still decode into a
        // separator: `/api%2f..%2fhooks` is not under `/api/` for every server, so such a
        // path is never under a path pin.
        let lower = path.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%2e") {
            return false;
        }
        if prefix.ends_with('/') {
            path.starts_with(prefix.as_str())
        } else {
            path == prefix
                || path
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        }
    }
}

/// A path prefix: starts with `/`, visible ASCII with no query, fragment, backslash or
/// percent escape, and no `.` or `..` segment (the URL parser would resolve it away
/// from under the prefix).
fn check_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err("a path prefix starts with `/`".into());
    }
    if prefix
        .chars()
        .any(|c| !c.is_ascii_graphic() || matches!(c, '?' | '#' | '\\' | '%'))
    {
        return Err("a path prefix is visible ASCII without `?`, `#`, `\\` or `%` escapes".into());
    }
    if prefix.split('/').any(|s| s == "." || s == "..") {
        return Err("a path prefix has no `.` or `..` segments".into());
    }
    Ok(())
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.host)?;
        if let Some(p) = &self.path {
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Written as its text (`https://slack.com/api/`), in step reports and step requests.
impl serde::Serialize for Pin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Pin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Pin, D::Error> {
        let text = String::deserialize(d)?;
        Pin::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Whether any pin of the list covers `url`.
pub fn any_pin_matches(pins: &[Pin], url: &Url) -> bool {
    pins.iter().any(|p| p.matches(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pin: &str, url: &str) -> bool {
        Pin::parse(pin)
            .expect("pin")
            .matches(&Url::parse(url).expect("url"))
    }

    #[test]
    fn a_path_pin_covers_only_its_resource() {
        let rows = [
            (
                "https://slack.com/api/",
                "https://slack.com/api/chat.postMessage",
                true,
            ),
            ("https://slack.com/api/", "https://slack.com/api", false),
            ("https://slack.com/api/", "https://slack.com/apix/y", false),
            (
                "https://slack.com/api/",
                "https://hooks.slack.com/services/T/B/x",
                false,
            ),
            ("https://slack.com/api/", "https://slack.com/", false),
            (
                "https://slack.com/api/",
                "https://slack.com/api/../hooks",
                false,
            ),
            (
                "https://slack.com/api/",
                "https://slack.com/api/%2e%2e/hooks",
                false,
            ),
            (
                "https://slack.com/api/",
                "https://slack.com/api/a%2F..%2F..%2Fhooks",
                false,
            ),
            (
                "https://slack.com/api/",
                "https://slack.com/api/a%5c..",
                false,
            ),
            (
                "http://127.0.0.1:9000/invoices",
                "http://127.0.0.1:9000/invoices",
                true,
            ),
            (
                "http://127.0.0.1:9000/invoices",
                "http://127.0.0.1:9000/invoices/a/b.pdf",
                true,
            ),
            (
                "http://127.0.0.1:9000/invoices",
                "http://127.0.0.1:9000/invoices-evil/a",
                false,
            ),
            (
                "http://127.0.0.1:9000/invoices",
                "http://127.0.0.1:9000/other/invoices",
                false,
            ),
            (
                "http://127.0.0.1:9000/invoices",
                "http://127.0.0.1:9001/invoices/a",
                false,
            ),
            (
                "https://api.example.com",
                "https://api.example.com/anything",
                true,
            ),
            (
                "https://api.example.com/",
                "https://api.example.com/anything",
                true,
            ),
        ];
        for (pin, url, want) in rows {
            assert_eq!(m(pin, url), want, "{pin} vs {url}");
        }
    }

    /// The API's written form is one rule: what the pattern covers parses and prints
    /// back inside it (so a report's `pinned_to` is a valid next step's), and what it
    /// does not cover is refused even where the wider parser would read it.
    #[test]
    fn the_documented_form_is_what_the_api_takes_and_gives_back() {
        for text in [
            "https://slack.com/api/",
            "https://slack.com/api/chat.postMessage",
            "http://127.0.0.1:9000/invoices",
            "http://127.0.0.1:9000/my.bucket-2",
            "https://s3.eu-west-1.amazonaws.com/b_1/",
            "https://*.example.com",
            "https://*:*",
            "https://a.example:443",
            "https://a.example/",
            "http://localhost:8080",
            "https://x1.a-b.example/~u/a+b/*",
            "https://a.example:65535",
        ] {
            let pin = Pin::parse_documented(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(pin.is_documented_form(), "{text} prints as {pin}");
            assert_eq!(Pin::parse_documented(&pin.to_string()), Ok(pin), "{text}");
        }
        for bad in [
            "HTTPS://slack.com",
            "https://Slack.com",
            "https://a.example:0",
            "https://a.example:65536",
            "https://a.example:0443",
            "https://1.2.3.256",
            "https://01.2.3.4",
            "https://a.1",
            "https://*.com",
            "https://*.*.example.com",
            "https://[::1]",
            "https://a.example/api\n",
            "https://a.example\n",
            "https://a.example//x",
            "https://a.example/.well-known",
            "https://a.example/a/../b",
            "https://a.example/%41",
            "https://a.example/a b",
            "https://a.example/a?b",
            "https://-a.example",
            "https://a-.example",
            "ftp://a.example",
            "not a pin",
        ] {
            assert!(Pin::parse_documented(bad).is_err(), "{bad:?} was taken");
        }
        // The wider parser still reads what stored records and the catalogue hold.
        assert!(Pin::parse("https://[::1]:8443").is_ok());
        assert!(
            !Pin::parse("https://[::1]:8443")
                .unwrap()
                .is_documented_form()
        );
    }

    #[test]
    fn pins_parse_and_print_back() {
        for text in [
            "https://slack.com/api/",
            "http://127.0.0.1:9000/bucket",
            "https://graph.microsoft.com",
            "https://*.example.com",
        ] {
            assert_eq!(Pin::parse(text).expect(text).to_string(), text);
        }
        assert_eq!(
            Pin::parse("https://a.example/").expect("root").to_string(),
            "https://a.example"
        );
        for bad in [
            "https://slack.com/api/?x",
            "https://slack.com/api/#x",
            "https://slack.com/a%2fb",
            "https://slack.com/a/../b",
            "https://slack.com/a\\b",
            "slack.com/api",
            "https://user@slack.com/api",
        ] {
            assert!(Pin::parse(bad).is_err(), "{bad}");
        }
    }
}
