//! A component that exports flow8's `execute` (with exactly its type) but no `manifest`:
//! not a flow8 module. The host must refuse it at load (`invalid_module`), and for the
//! missing `manifest`, not for some other mismatch. Generated with wit-bindgen directly
//! from its own small world (`wit/`), which reads flow8's types from the repository's
//! `wit/` rather than a copy.

wit_bindgen::generate!({
    // Dependencies first: a later path may use packages from an earlier one.
    path: ["../../../wit", "wit"],
    world: "test:nomanifest/no-manifest",
    // Generate flow8's `types` here too (wit-bindgen asks for a `with` mapping for
    // interfaces of another package otherwise).
    generate_all,
});

struct NoManifest;

impl Guest for NoManifest {
    fn execute(input: String) -> Result<String, Error> {
        Ok(input)
    }
}

export!(NoManifest);
