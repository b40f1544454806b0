//! Budgets for a module's input schema, checked when the module loads, and the
//! validator built under them. A schema is the module author's code running on the
//! host, outside the sandbox: one whose `anyOf` held two `$ref`s to the level below,
//! repeated, took 223 s and 7.3 GB to validate a single input. So a schema is refused
//! (`invalid_manifest`, with a one-line reason) unless:
//!
//! - its JSON is at most [`MAX_SCHEMA_BYTES`] and nests at most [`MAX_SCHEMA_DEPTH`] deep;
//! - every `$ref` is a local JSON pointer (`#` or `#/...`) that resolves, the refs form
//!   no cycle, and `$dynamicRef`/`$recursiveRef` and `$id` below the root are absent
//!   (so what a ref points at is known here, exactly as the validator will resolve it);
//! - validating one input value evaluates at most [`MAX_EVALUATIONS`] subschemas in the
//!   worst case: the schema's size with every `$ref` expanded and every branch of
//!   `anyOf`/`oneOf`/`allOf` (and `if`/`then`/`else`, `not`, ...) counted, computed once
//!   per node so the check itself is linear;
//! - it has at most [`MAX_PATTERNS`] regular expressions (`pattern`,
//!   `patternProperties`), each at most [`MAX_PATTERN_BYTES`] long; the validator runs
//!   them on the `regex` crate, which matches in linear time (no backtracking, so no
//!   look-around or backreferences), with compiled programs and lazy-DFA caches capped.
//!
//! Each schema node is applied to a given input value at most once per path through
//! the expanded schema, so validating an input of `n` values costs at most
//! `n × evaluations` subschema checks: the runtime refuses inputs past a work budget
//! and runs the larger validations on a blocking thread under the step's deadline
//! (`runtime::validate_step_input`).

use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};

/// The largest input schema, as compact JSON.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// How deep objects and arrays may nest in the schema document.
pub const MAX_SCHEMA_DEPTH: usize = 64;
/// Subschema evaluations one input value may cost, worst case.
pub const MAX_EVALUATIONS: u64 = 1_000;
/// Regular expressions per schema.
pub const MAX_PATTERNS: usize = 64;
/// The longest regular expression, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1_000;
/// The compiled size one regular expression may take (the `regex` crate's size limit).
pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// The lazy-DFA cache one regular expression may fill while matching.
pub const REGEX_DFA_SIZE_LIMIT: usize = 64 * 1024;

/// Why a schema is refused: one line each, naming the budget it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaBudgetError {
    /// The schema's JSON is too large.
    #[error("the schema is {bytes} bytes; at most {MAX_SCHEMA_BYTES} are allowed")]
    TooLarge {
        /// Its size as compact JSON.
        bytes: usize,
    },
    /// Objects and arrays nest too deep.
    #[error("the schema nests deeper than {MAX_SCHEMA_DEPTH} levels (at `{at}`)")]
    TooDeep {
        /// Where the limit was passed (JSON pointer).
        at: String,
    },
    /// Validating one value could evaluate too many subschemas.
    #[error(
        "validating one value could evaluate {evaluations} subschemas (`$ref`s expanded, every `anyOf`/`oneOf`/`allOf` branch counted); at most {MAX_EVALUATIONS} are allowed"
    )]
    FanOut {
        /// The worst case, saturating.
        evaluations: u64,
    },
    /// A `$ref` the host cannot resolve in the schema itself.
    #[error(
        "`$ref` \"{reference}\" at `{at}` is not a local JSON pointer (`#` or `#/...`); remote refs and anchors are not supported"
    )]
    RefNotLocal {
        /// The ref.
        reference: String,
        /// Where it is.
        at: String,
    },
    /// A `$ref` whose pointer leads nowhere.
    #[error("`$ref` \"{reference}\" at `{at}` points at nothing in the schema")]
    RefUnresolved {
        /// The ref.
        reference: String,
        /// Where it is.
        at: String,
    },
    /// `$ref`s that lead back to themselves.
    #[error(
        "`$ref` \"{reference}\" at `{at}` leads back to itself; recursive schemas are not supported"
    )]
    RefCycle {
        /// The ref.
        reference: String,
        /// Where it is.
        at: String,
    },
    /// A keyword whose target depends on the validation path.
    #[error("`{keyword}` at `{at}` is not supported (use `$ref` to a local JSON pointer)")]
    DynamicRef {
        /// `$dynamicRef` or `$recursiveRef`.
        keyword: String,
        /// Where it is.
        at: String,
    },
    /// A nested resource, which would change what refs below it resolve against.
    #[error("`{keyword}` at `{at}` is not supported below the schema's root")]
    NestedId {
        /// `$id` or `id`.
        keyword: String,
        /// Where it is.
        at: String,
    },
    /// Too many regular expressions.
    #[error("the schema has more than {MAX_PATTERNS} regular expressions")]
    TooManyPatterns,
    /// A regular expression is too long.
    #[error(
        "the regular expression at `{at}` is {bytes} bytes; at most {MAX_PATTERN_BYTES} are allowed"
    )]
    PatternTooLong {
        /// Where it is.
        at: String,
        /// Its length.
        bytes: usize,
    },
}

/// What the check found: the worst-case cost of validating one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaCost {
    /// Subschema evaluations per input value, worst case (at least 1).
    pub evaluations: u64,
}

/// Keywords whose value is one subschema.
const ONE_SCHEMA: &[&str] = &[
    "not",
    "if",
    "then",
    "else",
    "contains",
    "additionalProperties",
    "additionalItems",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contentSchema",
];
/// Keywords whose value is an array of subschemas.
const SCHEMA_ARRAY: &[&str] = &["allOf", "anyOf", "oneOf", "prefixItems"];
/// Keywords whose value is an object of subschemas.
const SCHEMA_MAP: &[&str] = &[
    "properties",
    "patternProperties",
    "dependentSchemas",
    "dependencies",
];
/// Keywords holding subschemas that are only evaluated through a `$ref`.
const DEFINITIONS: &[&str] = &["$defs", "definitions"];

/// Check `schema` against every budget above.
pub fn check(schema: &Value) -> Result<SchemaCost, SchemaBudgetError> {
    let bytes = serde_json::to_vec(schema).map(|v| v.len()).unwrap_or(0);
    if bytes > MAX_SCHEMA_BYTES {
        return Err(SchemaBudgetError::TooLarge { bytes });
    }
    check_depth(schema, 0, &mut String::new())?;
    let mut walk = Walk {
        root: schema,
        memo: HashMap::new(),
        in_progress: HashSet::new(),
        patterns: 0,
    };
    let evaluations = walk.cost(schema, "")?;
    if evaluations > MAX_EVALUATIONS {
        return Err(SchemaBudgetError::FanOut { evaluations });
    }
    Ok(SchemaCost { evaluations })
}

/// A validator for a schema that passed [`check`]: draft as the schema says (2020-12
/// by default), patterns on the linear-time engine with its size limits.
pub fn validator(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .with_pattern_options(
            jsonschema::PatternOptions::regex()
                .size_limit(REGEX_SIZE_LIMIT)
                .dfa_size_limit(REGEX_DFA_SIZE_LIMIT),
        )
        .build(schema)
        .map_err(|e| {
            let at = e.schema_path.to_string();
            if matches!(&e.kind, jsonschema::error::ValidationErrorKind::Format { format } if format == "regex")
            {
                format!(
                    "the regular expression at `{at}` is not accepted: the host matches patterns in linear time (no look-around or backreferences) and compiles each to at most {REGEX_SIZE_LIMIT} bytes"
                )
            } else {
                format!("{e} (at `{at}`)")
            }
        })
}

/// Input values in `v`: every object, array and scalar counts one, and so does every
/// object key (`propertyNames` and `patternProperties` are evaluated per key).
pub fn count_values(v: &Value) -> u64 {
    // Iterative: an input is as deep as its parser allowed, and this runs on the step
    // path.
    let mut n = 0u64;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        n += 1;
        match v {
            Value::Array(a) => stack.extend(a.iter()),
            Value::Object(o) => {
                n += o.len() as u64;
                stack.extend(o.values());
            }
            _ => {}
        }
    }
    n
}

fn push_token(path: &mut String, token: &str) {
    path.push('/');
    for c in token.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

fn check_depth(v: &Value, depth: usize, path: &mut String) -> Result<(), SchemaBudgetError> {
    let children: Box<dyn Iterator<Item = (String, &Value)>> = match v {
        Value::Array(a) => Box::new(a.iter().enumerate().map(|(i, v)| (i.to_string(), v))),
        Value::Object(o) => Box::new(o.iter().map(|(k, v)| (k.clone(), v))),
        _ => return Ok(()),
    };
    if depth >= MAX_SCHEMA_DEPTH {
        return Err(SchemaBudgetError::TooDeep { at: path.clone() });
    }
    for (k, child) in children {
        let len = path.len();
        push_token(path, &k);
        check_depth(child, depth + 1, path)?;
        path.truncate(len);
    }
    Ok(())
}

/// Decode a URI fragment's percent escapes (a `$ref` is a URI reference).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

struct Walk<'a> {
    root: &'a Value,
    /// Cost of the subschema at a JSON pointer, once known.
    memo: HashMap<String, u64>,
    /// Pointers whose cost is being computed: meeting one again is a cycle.
    in_progress: HashSet<String>,
    patterns: usize,
}

impl Walk<'_> {
    /// Worst-case evaluations when the subschema at `path` is applied to one value.
    fn cost(&mut self, node: &Value, path: &str) -> Result<u64, SchemaBudgetError> {
        let Value::Object(map) = node else {
            // `true`, `false`, or something the validator itself refuses.
            return Ok(1);
        };
        if let Some(c) = self.memo.get(path) {
            return Ok(*c);
        }
        self.in_progress.insert(path.to_string());
        let total = self.object_cost(map, path);
        self.in_progress.remove(path);
        let total = total?;
        self.memo.insert(path.to_string(), total);
        Ok(total)
    }

    fn object_cost(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
    ) -> Result<u64, SchemaBudgetError> {
        let at = |k: &str| {
            let mut p = path.to_string();
            push_token(&mut p, k);
            p
        };
        let mut total: u64 = 1;
        for (k, v) in map {
            let k = k.as_str();
            let add = match k {
                "$ref" => match v {
                    Value::String(r) => self.ref_cost(r, &at(k))?,
                    _ => 0,
                },
                "$dynamicRef" | "$recursiveRef" => {
                    return Err(SchemaBudgetError::DynamicRef {
                        keyword: k.to_string(),
                        at: at(k),
                    });
                }
                "$id" | "id" if !path.is_empty() && v.is_string() => {
                    return Err(SchemaBudgetError::NestedId {
                        keyword: k.to_string(),
                        at: at(k),
                    });
                }
                "pattern" => {
                    if let Value::String(p) = v {
                        self.pattern(p, at(k))?;
                    }
                    0
                }
                "items" => match v {
                    Value::Array(items) => self.array_cost(items, &at(k))?,
                    v => self.cost(v, &at(k))?,
                },
                k if ONE_SCHEMA.contains(&k) => self.cost(v, &at(k))?,
                k if SCHEMA_ARRAY.contains(&k) => match v {
                    Value::Array(items) => self.array_cost(items, &at(k))?,
                    _ => 0,
                },
                k if SCHEMA_MAP.contains(&k) || DEFINITIONS.contains(&k) => {
                    let Value::Object(members) = v else { continue };
                    let base = at(k);
                    let mut sum: u64 = 0;
                    for (name, sub) in members {
                        if k == "patternProperties" {
                            let mut p = base.clone();
                            push_token(&mut p, name);
                            self.pattern(name, p)?;
                        }
                        // `dependencies` also holds arrays of property names.
                        if k == "dependencies" && sub.is_array() {
                            continue;
                        }
                        let mut p = base.clone();
                        push_token(&mut p, name);
                        sum = sum.saturating_add(self.cost(sub, &p)?);
                    }
                    // Definitions are checked like the rest but cost only where a
                    // `$ref` uses them.
                    if DEFINITIONS.contains(&k) { 0 } else { sum }
                }
                _ => 0,
            };
            total = total.saturating_add(add);
        }
        Ok(total)
    }

    fn array_cost(&mut self, items: &[Value], base: &str) -> Result<u64, SchemaBudgetError> {
        let mut sum: u64 = 0;
        for (i, sub) in items.iter().enumerate() {
            let mut p = base.to_string();
            push_token(&mut p, &i.to_string());
            sum = sum.saturating_add(self.cost(sub, &p)?);
        }
        Ok(sum)
    }

    fn ref_cost(&mut self, reference: &str, at: &str) -> Result<u64, SchemaBudgetError> {
        let not_local = || SchemaBudgetError::RefNotLocal {
            reference: reference.to_string(),
            at: at.to_string(),
        };
        let fragment = reference.strip_prefix('#').ok_or_else(not_local)?;
        if !(fragment.is_empty() || fragment.starts_with('/')) {
            return Err(not_local());
        }
        let pointer = percent_decode(fragment).ok_or_else(not_local)?;
        let target =
            self.root
                .pointer(&pointer)
                .ok_or_else(|| SchemaBudgetError::RefUnresolved {
                    reference: reference.to_string(),
                    at: at.to_string(),
                })?;
        // The pointer as `push_token` spells paths, so a ref and a walk meet in `memo`
        // and in `in_progress` whichever way the pointer was written.
        let mut canonical = String::new();
        for token in pointer.split('/').skip(1) {
            push_token(&mut canonical, &token.replace("~1", "/").replace("~0", "~"));
        }
        if self.in_progress.contains(&canonical) {
            return Err(SchemaBudgetError::RefCycle {
                reference: reference.to_string(),
                at: at.to_string(),
            });
        }
        self.cost(target, &canonical)
    }

    fn pattern(&mut self, pattern: &str, at: String) -> Result<(), SchemaBudgetError> {
        self.patterns += 1;
        if self.patterns > MAX_PATTERNS {
            return Err(SchemaBudgetError::TooManyPatterns);
        }
        if pattern.len() > MAX_PATTERN_BYTES {
            return Err(SchemaBudgetError::PatternTooLong {
                at,
                bytes: pattern.len(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `anyOf` of two refs to the level below, `levels` deep: 2^levels evaluations.
    pub(crate) fn fan_out(levels: usize) -> Value {
        let mut defs = Map::new();
        defs.insert("l0".into(), json!({"type": "string"}));
        for i in 1..=levels {
            let below = format!("#/$defs/l{}", i - 1);
            defs.insert(
                format!("l{i}"),
                json!({"anyOf": [{"$ref": below}, {"$ref": below, "minLength": 1}]}),
            );
        }
        json!({"$defs": defs, "$ref": format!("#/$defs/l{levels}")})
    }

    #[test]
    fn a_schema_that_does_not_compile_is_refused_by_the_one_validator() {
        // `Manifest::parse` leaves compiling to the loader: this is where it happens.
        assert!(validator(&json!({"type": 12})).is_err());
        assert!(validator(&json!({"type": "string", "pattern": "(?=a)"})).is_err());
        assert!(validator(&json!({"type": "string", "pattern": "^a+$"})).is_ok());
    }

    #[test]
    fn ordinary_schemas_pass_with_their_cost() {
        let s = json!({"type": "object", "required": ["channel"],
            "properties": {"channel": {"type": "string", "pattern": "^[CG][A-Z0-9]+$"},
                           "blocks": {"type": "array", "items": {"$ref": "#/$defs/block"}}},
            "$defs": {"block": {"type": "object", "additionalProperties": {"type": "string"}}}});
        // root, channel, blocks, items -> block (+ its additionalProperties)
        assert_eq!(check(&s).unwrap().evaluations, 6);
        assert_eq!(check(&json!({})).unwrap().evaluations, 1);
        assert_eq!(check(&json!(true)).unwrap().evaluations, 1);
        validator(&s).unwrap();
    }

    #[test]
    fn exponential_fan_out_is_refused_and_the_check_is_linear() {
        assert!(check(&fan_out(6)).is_ok());
        // 2^200 evaluations: the check saturates instead of overflowing, at once.
        let e = check(&fan_out(200)).unwrap_err();
        assert!(
            matches!(e, SchemaBudgetError::FanOut { evaluations } if evaluations == u64::MAX),
            "{e}"
        );
        assert!(e.to_string().contains("anyOf"), "{e}");
    }

    #[test]
    fn refs_must_be_local_acyclic_and_resolve() {
        let cases = [
            (
                json!({"$ref": "https://example.com/s.json"}),
                "not a local JSON pointer",
            ),
            (json!({"$ref": "#anchor"}), "not a local JSON pointer"),
            (json!({"$ref": "#/$defs/missing"}), "points at nothing"),
            (
                json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}),
                "leads back to itself",
            ),
            (
                json!({"properties": {"x": {"$ref": "#"}}}),
                "leads back to itself",
            ),
            (
                json!({"$defs": {"a": {"items": {"$ref": "#/%24defs/a"}}}}),
                "leads back to itself",
            ),
            (json!({"$dynamicRef": "#meta"}), "`$dynamicRef`"),
            (
                json!({"properties": {"x": {"$id": "https://evil.example/x"}}}),
                "below the schema's root",
            ),
        ];
        for (schema, want) in cases {
            let e = check(&schema).unwrap_err().to_string();
            assert!(e.contains(want), "{schema}: {e}");
        }
        // A property named like a keyword is a property, and a ref may be percent-encoded.
        assert!(
            check(
                &json!({"properties": {"$ref": {"type": "string"}, "id": {"const": 1}},
            "$defs": {"a b": {"type": "string"}}, "items": {"$ref": "#/$defs/a%20b"}})
            )
            .is_ok()
        );
    }

    #[test]
    fn size_depth_and_patterns_are_bounded() {
        let big = json!({"enum": ["x".repeat(MAX_SCHEMA_BYTES)]});
        assert!(matches!(
            check(&big),
            Err(SchemaBudgetError::TooLarge { .. })
        ));
        let mut deep = json!({"type": "string"});
        for _ in 0..40 {
            deep = json!({"properties": {"a": deep}});
        }
        assert!(matches!(
            check(&deep),
            Err(SchemaBudgetError::TooDeep { .. })
        ));
        let long = json!({"pattern": "a".repeat(MAX_PATTERN_BYTES + 1)});
        assert!(matches!(
            check(&long),
            Err(SchemaBudgetError::PatternTooLong { .. })
        ));
        let props: Map<String, Value> = (0..=MAX_PATTERNS)
            .map(|i| (format!("^p{i}$"), json!({})))
            .collect();
        assert_eq!(
            check(&json!({"patternProperties": props})),
            Err(SchemaBudgetError::TooManyPatterns)
        );
    }

    #[test]
    fn the_validator_matches_patterns_in_linear_time_only() {
        // Backreferences and look-around need backtracking: refused, with the reason.
        for p in ["^(a+)\\1$", "^(?=a)a$"] {
            let e = validator(&json!({"pattern": p})).unwrap_err();
            assert!(e.contains("linear time"), "{p}: {e}");
        }
        // A pattern whose compiled program is too large.
        let e = validator(&json!({"pattern": "\\w{1000}{1000}"})).unwrap_err();
        assert!(e.contains("linear time"), "{e}");
        // The classic catastrophic-backtracking pattern is fine on a linear engine.
        let v = validator(&json!({"type": "string", "pattern": "^(a+)+$"})).unwrap();
        let hostile = format!("{}!", "a".repeat(100_000));
        assert!(!v.is_valid(&json!(hostile)));
    }

    #[test]
    fn values_are_counted_iteratively() {
        // 6 values and 2 keys.
        assert_eq!(count_values(&json!({"a": [1, 2, {"b": null}]})), 8);
        let mut deep = json!(0);
        for _ in 0..100_000 {
            deep = Value::Array(vec![deep]);
        }
        assert_eq!(count_values(&deep), 100_001);
        // serde_json's drop of a deep value recurses; let it go without dropping.
        std::mem::forget(deep);
    }
}
