//! A component that exports flow8's `execute` but no `manifest`: not a flow8 module.

wit_bindgen::generate!({ path: "wit", world: "no-manifest", generate_all });

struct NoManifest;

impl Guest for NoManifest {
    fn execute(input: String) -> Result<String, Error> {
        Ok(input)
    }
}

export!(NoManifest);
