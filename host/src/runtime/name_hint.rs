//! A module's name read without compiling it. Reading the manifest means compiling the
//! component and calling its `manifest` export, seconds for a language runtime; a host
//! looking for one module by name on a cold compile cache would compile every file in
//! the module directories first. Modules built with the Rust SDK carry their Cargo
//! package name in a custom section, `flow8:module-name` (written by
//! `flow8_sdk::export_module!`, inside the component's core module), which this reads.
//!
//! It is only a hint, never trusted for what a module is: the registry uses it to skip
//! files that say they hold another module, and when no module answers to a name it
//! compiles the skipped files as well. A file that lies about its name can only hide
//! itself; the name a module is indexed under is always its manifest's.

/// The custom section's name.
pub const SECTION: &str = "flow8:module-name";

/// The longest name read; anything longer is no hint.
const MAX_LEN: usize = 128;

/// The name `bytes` (a component or core module) says it holds, if it says one: the
/// `flow8:module-name` section at any depth, holding 1-128 of `a-z 0-9 - _`. Several
/// sections that disagree, an unreadable file, or a malformed name give no hint.
pub fn read(bytes: &[u8]) -> Option<String> {
    let mut found: Option<&str> = None;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let wasmparser::Payload::CustomSection(section) = payload.ok()? else {
            continue;
        };
        if section.name() != SECTION {
            continue;
        }
        let name = std::str::from_utf8(section.data()).ok()?;
        let well_formed = !name.is_empty()
            && name.len() <= MAX_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !well_formed || found.is_some_and(|f| f != name) {
            return None;
        }
        found = Some(name);
    }
    found.map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core module holding these custom sections (name, contents), in order.
    fn module_with(sections: &[(&str, &[u8])]) -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        for (name, data) in sections {
            let mut body = vec![name.len() as u8];
            body.extend_from_slice(name.as_bytes());
            body.extend_from_slice(data);
            m.push(0);
            m.push(body.len() as u8);
            m.extend(body);
        }
        m
    }

    #[test]
    fn the_section_names_the_module_and_anything_doubtful_names_nothing() {
        assert_eq!(
            read(&module_with(&[
                ("producers", b"x"),
                (SECTION, b"http-request")
            ]))
            .as_deref(),
            Some("http-request")
        );
        assert_eq!(
            read(&module_with(&[(SECTION, b"a_b-9"), (SECTION, b"a_b-9")])).as_deref(),
            Some("a_b-9"),
            "the same name twice is still that name"
        );
        for doubtful in [
            module_with(&[]),
            module_with(&[(SECTION, b"")]),
            module_with(&[(SECTION, b"Http")]),
            module_with(&[(SECTION, b"a b")]),
            module_with(&[(SECTION, b"\xff\xfe")]),
            module_with(&[(SECTION, &[b'a'; 129])]),
            module_with(&[(SECTION, b"one"), (SECTION, b"two")]),
            b"not wasm at all".to_vec(),
            b"\0asm\x01\0\0\0\x00\x7f".to_vec(),
        ] {
            assert_eq!(read(&doubtful), None, "{doubtful:?}");
        }
    }
}
