//! Finding a step's secrets in what leaves the sandbox, and in what comes back to it.
//!
//! A secret is looked for in its plain form and in the encodings a module (or an echo
//! endpoint) can wrap it in without the host noticing: standard and URL-safe base64
//! (at each of the three alignments it can take inside a longer base64 text, as in a
//! Basic `Authorization` value), hexadecimal in either case, and, in text, percent-
//! encoding and JSON escapes (`\u0073ecret`), decoded before the search so mixed forms
//! (`s%65cr\u0065t`) are found too. The step's output is redacted after it is parsed:
//! every string, object key and number of the parsed value is searched, so JSON
//! escapes in the output text cannot carry a secret past the search.
//!
//! Every value is searched, however short: a secret shorter than
//! [`super::MIN_SECRET_LEN`] cannot be stored any more (component creation refuses
//! it), and one stored before that rule is redacted anyway, at the cost of ordinary
//! text that happens to contain it. Only its whole base64 encodings are searched then,
//! not the fragments a short value leaves at other alignments.
//!
//! What this cannot see: a secret transformed otherwise (reversed, split across two
//! strings, encrypted). Such output goes only to the step's own company, and the step
//! policy's taint keeps it from reaching any other host.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use memchr::memmem::Finder;
use serde_json::Value;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Base64 fragments shorter than this are not searched: too short to tell from text.
const MIN_FRAGMENT: usize = 8;

/// One secret and its encoded forms, each a searcher built once (a step's output is
/// searched string by string, so building them per search cost more than searching).
/// Its `Debug` shows how many forms it has, never their bytes: a step's policy, which
/// holds these, is `Debug` too.
#[derive(Clone)]
struct Needle {
    /// The secret itself (telling one needle from another when redactors are joined).
    secret: Vec<u8>,
    /// Forms matched byte for byte (the plain value, base64 variants).
    exact: Vec<Finder<'static>>,
    /// Forms matched ignoring ASCII case (hexadecimal), held in lower case.
    any_case: Vec<Finder<'static>>,
}

impl Needle {
    fn new(secret: &str) -> Needle {
        let raw = secret.as_bytes().to_vec();
        let mut exact = vec![raw.clone()];
        for engine in [&STANDARD, &URL_SAFE] {
            exact.push(engine.encode(&raw).into_bytes());
        }
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            exact.push(engine.encode(&raw).into_bytes());
            // Inside a longer base64 text the secret starts at byte offset 0, 1 or 2 of
            // a 3-byte group: encode it behind `k` filler bytes and keep the characters
            // that depend on the secret's bits alone.
            for k in 0..3usize {
                let mut padded = vec![0u8; k];
                padded.extend_from_slice(&raw);
                let text = engine.encode(&padded);
                let first = (8 * k).div_ceil(6);
                let end = (8 * (k + raw.len())) / 6;
                if end > first && end - first >= MIN_FRAGMENT {
                    exact.push(text.as_bytes()[first..end].to_vec());
                }
            }
        }
        exact.sort();
        exact.dedup();
        // The longest first, so a form that contains another is replaced whole.
        exact.sort_by_key(|f| std::cmp::Reverse(f.len()));
        let finder = |form: &[u8]| Finder::new(form).into_owned();
        Needle {
            exact: exact.iter().map(|f| finder(f)).collect(),
            any_case: vec![finder(hex::encode(&raw).as_bytes())],
            secret: raw,
        }
    }

    fn forms(&self) -> impl Iterator<Item = &[u8]> {
        self.exact.iter().chain(&self.any_case).map(Finder::needle)
    }
}

impl std::fmt::Debug for Needle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Needle")
            .field("forms", &(self.exact.len() + self.any_case.len()))
            .finish_non_exhaustive()
    }
}

/// Redacts a step's secret values (the step policy's `redaction_values`).
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    needles: Vec<Needle>,
    /// The fewest bytes any form of any secret takes: a shorter text (and its decoded
    /// views, never longer) holds none, and most of an output's strings and keys are
    /// shorter.
    shortest: usize,
}

/// A decoded view of a text: its bytes after decoding one escape syntax, each mapped
/// back to where in the original its escape starts (`None`: the text itself). Offsets
/// are `u32` to keep a view of a large answer at five bytes per byte.
struct View<'t> {
    bytes: std::borrow::Cow<'t, [u8]>,
    from: Option<Vec<u32>>,
    source_len: usize,
}

impl<'t> View<'t> {
    fn identity(text: &'t [u8]) -> View<'t> {
        View {
            bytes: std::borrow::Cow::Borrowed(text),
            from: None,
            source_len: text.len(),
        }
    }

    /// The range of the original the decoded bytes `start..=end` came from.
    fn source(&self, start: usize, end: usize) -> (usize, usize) {
        let Some(from) = &self.from else {
            return (start, end + 1);
        };
        let s = from[start] as usize;
        // The escape holding byte `end` ends where the next escape starts.
        let e = from[end + 1..]
            .iter()
            .find(|&&f| f != from[end])
            .map_or(self.source_len, |&f| f as usize);
        (s, e)
    }

    /// `%XX` decoded (RFC 3986 §2.1), `+` left as is.
    fn percent(text: &[u8]) -> Option<View<'static>> {
        if !text.contains(&b'%') || text.len() > u32::MAX as usize {
            return None;
        }
        let mut bytes = Vec::with_capacity(text.len());
        let mut from = Vec::with_capacity(text.len());
        let mut i = 0;
        while i < text.len() {
            from.push(i as u32);
            if text[i] == b'%'
                && let Some(b) = text.get(i + 1..i + 3).and_then(hex_byte)
            {
                bytes.push(b);
                i += 3;
            } else {
                bytes.push(text[i]);
                i += 1;
            }
        }
        Some(View {
            bytes: bytes.into(),
            from: Some(from),
            source_len: text.len(),
        })
    }

    /// JSON string escapes decoded (RFC 8259 §7), surrogate pairs included.
    fn json(text: &[u8]) -> Option<View<'static>> {
        if !text.contains(&b'\\') || text.len() > u32::MAX as usize {
            return None;
        }
        let mut bytes = Vec::with_capacity(text.len());
        let mut from = Vec::with_capacity(text.len());
        let mut i = 0;
        while i < text.len() {
            let (buf, n, len) = json_escape(&text[i..]).unwrap_or(([text[i], 0, 0, 0], 1, 1));
            for b in &buf[..n] {
                bytes.push(*b);
                from.push(i as u32);
            }
            i += len;
        }
        Some(View {
            bytes: bytes.into(),
            from: Some(from),
            source_len: text.len(),
        })
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let s = std::str::from_utf8(two).ok()?;
    u8::from_str_radix(s, 16).ok()
}

fn hex4(text: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(text.get(..4)?).ok()?;
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// The escape at the start of `text`: its decoded bytes (`buf[..n]`) and its length.
fn json_escape(text: &[u8]) -> Option<([u8; 4], usize, usize)> {
    if text.first() != Some(&b'\\') {
        return None;
    }
    let simple = |b: u8| Some(([b, 0, 0, 0], 1, 2));
    match *text.get(1)? {
        b'"' => simple(b'"'),
        b'\\' => simple(b'\\'),
        b'/' => simple(b'/'),
        b'b' => simple(0x08),
        b'f' => simple(0x0c),
        b'n' => simple(b'\n'),
        b'r' => simple(b'\r'),
        b't' => simple(b'\t'),
        b'u' => {
            let hi = hex4(&text[2..])?;
            let (c, len) = if (0xd800..0xdc00).contains(&hi) {
                // A high surrogate needs its low half: `\ud83d\ude00`.
                if text.get(6..8) != Some(b"\\u") {
                    return None;
                }
                let lo = hex4(&text[8..])?;
                if !(0xdc00..0xe000).contains(&lo) {
                    return None;
                }
                let c = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
                (char::from_u32(c)?, 12)
            } else {
                (char::from_u32(hi)?, 6)
            };
            let mut buf = [0u8; 4];
            let n = c.encode_utf8(&mut buf).len();
            Some((buf, n, len))
        }
        _ => None,
    }
}

impl Redactor {
    /// A redactor of these values (empty ones are dropped: they would match between
    /// every two characters).
    pub fn new(values: impl IntoIterator<Item = String>) -> Redactor {
        let mut values: Vec<String> = values.into_iter().filter(|v| !v.is_empty()).collect();
        values.sort();
        values.dedup();
        // Longest first, so a secret containing another is replaced whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        Redactor::of(values.iter().map(|v| Needle::new(v)).collect())
    }

    /// A redactor of everything `parts` redact and of `more` values, reusing the
    /// parts' searchers (each secret once).
    pub fn union<'r>(
        parts: impl IntoIterator<Item = &'r Redactor>,
        more: impl IntoIterator<Item = String>,
    ) -> Redactor {
        let mut needles: Vec<Needle> = Vec::new();
        for needle in parts.into_iter().flat_map(|r| &r.needles) {
            if !needles.iter().any(|n| n.secret == needle.secret) {
                needles.push(needle.clone());
            }
        }
        for value in more {
            if !value.is_empty() && !needles.iter().any(|n| n.secret == value.as_bytes()) {
                needles.push(Needle::new(&value));
            }
        }
        needles.sort_by_key(|n| std::cmp::Reverse(n.secret.len()));
        Redactor::of(needles)
    }

    fn of(needles: Vec<Needle>) -> Redactor {
        let shortest = needles
            .iter()
            .flat_map(Needle::forms)
            .map(<[u8]>::len)
            .min()
            .unwrap_or(0);
        Redactor { needles, shortest }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// The most bytes of text one secret can take in any form it is looked for in: its
    /// longest form, each byte of which an escape (`\u00XX`, six bytes) may spell. A
    /// text read in pieces is searched with this much of the previous piece kept.
    pub fn longest_spelling(&self) -> usize {
        self.needles
            .iter()
            .flat_map(Needle::forms)
            .map(|f| f.len() * 6)
            .max()
            .unwrap_or(0)
    }

    /// The ranges of `text` holding a secret in any form, merged, in order.
    fn ranges(&self, text: &[u8]) -> Vec<(usize, usize)> {
        let mut found: Vec<(usize, usize)> = Vec::new();
        if self.needles.is_empty() || text.len() < self.shortest {
            return found;
        }
        let views = [
            Some(View::identity(text)),
            View::percent(text),
            View::json(text),
        ];
        for view in views.iter().flatten() {
            let hay = &view.bytes[..];
            // Lower-cased at most once per view, for the forms matched in any case.
            let mut lower: Option<Vec<u8>> = None;
            for needle in &self.needles {
                for form in &needle.exact {
                    for start in form.find_iter(hay) {
                        found.push(view.source(start, start + form.needle().len() - 1));
                    }
                }
                for form in &needle.any_case {
                    if form.needle().len() > hay.len() {
                        continue;
                    }
                    let lower = lower.get_or_insert_with(|| hay.to_ascii_lowercase());
                    for start in form.find_iter(lower) {
                        found.push(view.source(start, start + form.needle().len() - 1));
                    }
                }
            }
        }
        found.sort();
        let mut merged: Vec<(usize, usize)> = Vec::new();
        for (s, e) in found {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        merged
    }

    /// Whether `bytes` hold a secret in any form.
    pub fn finds_in(&self, bytes: &[u8]) -> bool {
        !self.is_empty() && !self.ranges(bytes).is_empty()
    }

    /// The text with every secret, in any form, replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        self.redacted(text).unwrap_or_else(|| text.to_string())
    }

    /// [`Redactor::redact`], or `None` when the text holds no secret (nothing copied).
    fn redacted(&self, text: &str) -> Option<String> {
        let bytes = text.as_bytes();
        let ranges = self.ranges(bytes);
        if ranges.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(bytes.len());
        let mut at = 0;
        for (s, e) in ranges {
            out.extend_from_slice(&bytes[at..s]);
            out.extend_from_slice(MASK.as_bytes());
            at = e;
        }
        out.extend_from_slice(&bytes[at..]);
        // Ranges end on escape or character boundaries; lossy only as a guard.
        Some(
            String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into()),
        )
    }

    /// A parsed value with every string, object key and number that holds a secret
    /// redacted (a number becomes the redacted string).
    pub fn redact_value(&self, value: Value) -> Value {
        if self.is_empty() {
            return value;
        }
        match value {
            Value::String(s) => Value::String(self.redacted(&s).unwrap_or(s)),
            Value::Number(n) => match self.redacted(&n.to_string()) {
                Some(redacted) => Value::String(redacted),
                None => Value::Number(n),
            },
            Value::Array(mut items) => {
                for item in &mut items {
                    *item = self.redact_value(std::mem::take(item));
                }
                Value::Array(items)
            }
            // No key holds a secret (the usual case): the values are redacted in place.
            Value::Object(mut map) if !map.keys().any(|k| self.redacted(k).is_some()) => {
                for v in map.values_mut() {
                    *v = self.redact_value(std::mem::take(v));
                }
                Value::Object(map)
            }
            Value::Object(map) => {
                let mut out = serde_json::Map::new();
                for (k, v) in map {
                    let mut key = self.redact(&k);
                    // Two keys redacted alike must not overwrite each other.
                    while out.contains_key(&key) {
                        key.push('*');
                    }
                    out.insert(key, self.redact_value(v));
                }
                Value::Object(out)
            }
            other => other,
        }
    }
}
