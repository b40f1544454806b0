//! What a company id may be. Every read and write is scoped to a company, and its id
//! also names directories on disk (the company's installed modules, its step
//! workspaces), so one rule, here, decides which ids are valid. It is checked where an
//! id enters the host (API tokens, the CLI's `--company`) and again wherever an id
//! becomes a path, so no route accepts an id another refuses.

/// The longest company id.
pub const MAX_LEN: usize = 128;

/// How a company id breaks the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCompanyId {
    /// Empty or too long.
    #[error(
        "a company id is 1-{MAX_LEN} characters of ASCII letters, digits, '-' and '_'; this one has {0}"
    )]
    Length(usize),
    /// A character outside the rule.
    #[error(
        "a company id is 1-{MAX_LEN} characters of ASCII letters, digits, '-' and '_'; this one has other characters"
    )]
    Characters,
}

/// Check a company id against the rule: 1 to [`MAX_LEN`] characters of ASCII letters,
/// digits, `-` and `_` (flow8's ObjectId hex ids, and names such as `acme-eu`). No dot,
/// slash or other separator, so an id is always one safe path component.
pub fn check(id: &str) -> Result<(), InvalidCompanyId> {
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(InvalidCompanyId::Characters);
    }
    // ASCII only from here: bytes are characters.
    if id.is_empty() || id.len() > MAX_LEN {
        return Err(InvalidCompanyId::Length(id.len()));
    }
    Ok(())
}

/// Whether `id` follows the rule (see [`check`]).
pub fn is_valid(id: &str) -> bool {
    check(id).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        for good in [
            "a",
            "local",
            "company-a",
            "acme_eu",
            "65f0c2a1b2c3d4e5f6a7b8c9",
            &"x".repeat(MAX_LEN),
        ] {
            assert!(is_valid(good), "{good}");
        }
        for bad in [
            "",
            &"x".repeat(MAX_LEN + 1),
            "acme.corp",
            "../etc",
            "a/b",
            "a b",
            "ä",
            "a\0",
        ] {
            let e = check(bad).unwrap_err();
            assert!(e.to_string().contains("1-128 characters"), "{e}");
        }
    }
}
