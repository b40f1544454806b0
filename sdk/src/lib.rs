//! The SDK for flow8 integration modules.
//!
//! A module is a Rust library built for `wasm32-wasip2` (`crate-type = ["cdylib"]`). It
//! implements [`Module`]: a manifest (what it is, what input it takes, which credentials
//! it needs, which hosts it talks to) and `execute` (typed input in, typed output out).
//! [`export_module!`] turns it into a WebAssembly component of the flow8 `module` world.
//! Nothing here exposes the generated WIT bindings; the contract is `wit/` in the
//! repository.
//!
//! - [`Manifest`], [`Credential`]: what the module declares (`wit/MANIFEST.md`); the
//!   same types the host checks (the `flow8-manifest` crate).
//! - [`http::Request`]: outbound HTTP through the host, which can attach a bound
//!   credential itself ([`http::Request::credential`]) so the secret never enters the
//!   module; a 2xx answer's body can go straight to a workspace file
//!   ([`http::Request::send_to_workspace`]), never through the module's memory.
//! - [`credentials`]: `is_bound`, non-secret `config`, and `get` for the secrets when a
//!   module really needs them.
//! - [`retry::Backoff`]: exponential backoff with full jitter, `Retry-After`, and the
//!   step's deadline.
//! - [`log`], [`step`], [`storage`]: the step's log, its time left, S3 uploads the host
//!   signs and streams.
//! - [`mail`]: email through a bound SMTP component; the host logs in, sends and
//!   attaches workspace files, so the password never enters the module.
//! - [`file_transfer`]: FTP uploads and downloads through a bound FTP component; the
//!   host logs in and streams between the server and the workspace.
//! - [`Error`]: flow8's error names; step input that does not fit `Module::Input` is
//!   `invalid_input` naming the field.
//!
//! ```no_run
//! use flow8_sdk::{Credential, Error, Manifest, Module, http, log, retry::Backoff};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Input {
//!     channel: String,
//!     message: String,
//! }
//!
//! #[derive(Serialize)]
//! struct Output {
//!     ts: String,
//! }
//!
//! struct PostMessage;
//!
//! impl Module for PostMessage {
//!     type Input = Input;
//!     type Output = Output;
//!
//!     fn manifest() -> Manifest {
//!         Manifest::new("post-message", "0.1.0")
//!             .description("Post a message to a Slack channel.")
//!             .input_schema(serde_json::json!({
//!                 "type": "object",
//!                 "required": ["channel", "message"],
//!                 "properties": {"channel": {"type": "string"}, "message": {"type": "string"}}
//!             }))
//!             .credential(Credential::oauth_link("slack", "slack").scopes(["chat:write"]).input_field("link_id"))
//!             .allowed_host("https://slack.com")
//!     }
//!
//!     fn execute(input: Input) -> Result<Output, Error> {
//!         log::info(&format!("posting to {}", input.channel));
//!         // The host attaches the Slack token; this module never sees it.
//!         let request = http::Request::post("https://slack.com/api/chat.postMessage")
//!             .json(&serde_json::json!({"channel": input.channel, "text": input.message}))?
//!             .credential("slack");
//!         // 429 and 5xx are retried with backoff, within the step's deadline.
//!         let response = Backoff::default().send(&request)?;
//!         if response.status == 429 {
//!             return Err(Error::rate_limit_exceeded("Slack", response.retry_after()));
//!         }
//!         let body: serde_json::Value = response.json()?;
//!         let ts = body["ts"].as_str().ok_or_else(|| Error::upstream(response.status, "no ts"))?;
//!         Ok(Output { ts: ts.to_string() })
//!     }
//! }
//!
//! flow8_sdk::export_module!(PostMessage);
//! ```

#![deny(missing_docs)]

pub mod credentials;
mod error;
pub mod file_transfer;
pub mod http;
pub mod log;
pub mod mail;
pub mod retry;
pub mod step;
pub mod storage;

pub use error::Error;
// One manifest definition for modules and the host (`host/crates/manifest`): what a
// module builds here is the type the host parses and checks.
pub use flow8_manifest::{CredentialBinding as Credential, CredentialKind, Manifest};

/// Re-exported so modules use the same `serde_json` as the SDK.
pub use serde_json;

/// A flow8 integration module.
///
/// Implement it on a unit struct and export it with [`export_module!`]. The host calls
/// [`Module::manifest`] once when it loads the module and [`Module::execute`] once per
/// step, each time in a fresh sandbox: keep no state between calls.
pub trait Module {
    /// The step input (flow8's `input_mapping`), deserialised from JSON. The host has
    /// already checked it against the manifest's `input_schema`; what does not fit this
    /// type is reported as `invalid_input` naming the field (`/headers/x-id: ...`).
    type Input: serde::de::DeserializeOwned;
    /// The step output, serialised to JSON.
    type Output: serde::Serialize;

    /// What the module declares about itself. Read once by the host when it loads the
    /// module, in a sandbox with nothing bound: it must not call the host.
    fn manifest() -> Manifest;

    /// Run one step.
    fn execute(input: Self::Input) -> Result<Self::Output, Error>;
}

/// Export a [`Module`] implementation as the component's `manifest` and `execute`.
///
/// Invoke it once, at the root of a `crate-type = ["cdylib"]` crate built for
/// `wasm32-wasip2`: `flow8_sdk::export_module!(MyModule);`. The argument may be any type
/// path that implements [`Module`]. The module crate does not need `wit-bindgen`
/// itself: the macro expands to the SDK's own (hidden) bindings.
#[macro_export]
macro_rules! export_module {
    ($module:ty) => {
        // wit-bindgen's export macro takes an identifier, not a type path, so a local
        // shim type carries the implementation.
        #[doc(hidden)]
        pub struct __Flow8ModuleExport;

        impl $crate::__private::bindings::Guest for __Flow8ModuleExport {
            fn manifest() -> ::std::string::String {
                $crate::__private::manifest_json::<$module>()
            }

            fn execute(
                input: ::std::string::String,
            ) -> ::std::result::Result<::std::string::String, $crate::__private::bindings::Error> {
                $crate::__private::execute::<$module>(input)
            }
        }

        // Emits the `manifest`/`execute` exports and the component-type custom section
        // that describes the whole world (imports and exports) for `wit-component`.
        $crate::__private::bindings::__export_module_world!(__Flow8ModuleExport with_types_in $crate::__private::bindings);

        // The module's name where a host reads it without compiling the component: the
        // crate's Cargo package name (which `flow8-host modules new` makes the
        // manifest's name). A host looking for another module by name skips this file
        // on a cold compile cache instead of compiling it to read its manifest. Only a
        // hint: the manifest decides, and a host that finds no module under a name
        // compiles every file whose hint disagreed.
        #[doc(hidden)]
        #[used]
        #[unsafe(link_section = "flow8:module-name")]
        static __FLOW8_MODULE_NAME: [u8; env!("CARGO_PKG_NAME").len()] =
            $crate::__private::name_section(env!("CARGO_PKG_NAME"));
    };
}

#[doc(hidden)]
pub mod __private {
    //! Used by `export_module!`; not part of the API. Third parties never touch the
    //! generated bindings: every function here may change in any release.

    #[allow(missing_docs, clippy::all)]
    pub mod bindings {
        wit_bindgen::generate!({
            // The contract lives in the repository's `wit/`; nobody keeps a copy.
            path: "../wit",
            world: "flow8:integration/module",
            // The export macro is used from the module's crate, not this one. With
            // `pub_export_macro` wit-bindgen splits the component-type section in two:
            // this crate carries only the imports, the module's `export_module!`
            // expansion carries the full world, so a crate that links the SDK without
            // exporting a module never claims exports it does not have.
            pub_export_macro: true,
            export_macro_name: "__export_module_world",
            default_bindings_module: "::flow8_sdk::__private::bindings",
        });
    }

    use super::{Error, Module};

    /// `name`'s bytes as the `flow8:module-name` custom section's contents.
    pub const fn name_section<const N: usize>(name: &str) -> [u8; N] {
        let bytes = name.as_bytes();
        let mut out = [0u8; N];
        let mut i = 0;
        while i < N {
            out[i] = bytes[i];
            i += 1;
        }
        out
    }

    pub fn manifest_json<M: Module>() -> String {
        M::manifest().to_json()
    }

    pub fn execute<M: Module>(input: String) -> Result<String, bindings::Error> {
        let run = || -> Result<String, Error> {
            let input: M::Input = parse_input(&input)?;
            let output = M::execute(input)?;
            serde_json::to_string(&output)
                .map_err(|e| Error::internal(format!("the output cannot be serialised: {e}")))
        };
        run().map_err(Error::into_wit)
    }

    /// Deserialise the step input, naming the field that does not fit as a JSON Pointer
    /// (the form the host's schema errors use).
    pub fn parse_input<T: serde::de::DeserializeOwned>(input: &str) -> Result<T, Error> {
        let mut de = serde_json::Deserializer::from_str(input);
        let value: T = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| input_error(&json_pointer(e.path()), e.inner()))?;
        de.end().map_err(|e| input_error("", &e))?;
        Ok(value)
    }

    fn input_error(pointer: &str, e: &serde_json::Error) -> Error {
        let detail = without_position(e);
        if e.is_syntax() || e.is_eof() {
            Error::invalid_input(format!("the input is not valid JSON: {detail}"))
        } else if pointer.is_empty() {
            Error::invalid_input(format!("the input does not fit this module: {detail}"))
        } else {
            Error::invalid_input(format!("{pointer}: {detail}"))
        }
    }

    fn json_pointer(path: &serde_path_to_error::Path) -> String {
        use serde_path_to_error::Segment;
        let mut out = String::new();
        for segment in path.iter() {
            out.push('/');
            match segment {
                Segment::Seq { index } => out.push_str(&index.to_string()),
                // RFC 6901 §3: `~` is `~0` and `/` is `~1`.
                Segment::Map { key } => out.push_str(&key.replace('~', "~0").replace('/', "~1")),
                Segment::Enum { variant } => out.push_str(variant),
                Segment::Unknown => out.push('?'),
            }
        }
        out
    }

    /// serde_json's message without "at line 1 column 42": the path says where.
    fn without_position(e: &serde_json::Error) -> String {
        let text = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        text.strip_suffix(&suffix).unwrap_or(&text).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::__private::parse_input;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Input {
        url: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default)]
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Item {
        id: u32,
    }

    fn message(input: &str) -> String {
        parse_input::<Input>(input).unwrap_err().to_string()
    }

    #[test]
    fn input_errors_name_the_field() {
        assert_eq!(
            message(r#"{"url": 42}"#),
            "invalid_input: /url: invalid type: integer `42`, expected a string"
        );
        assert_eq!(
            message(r#"{"url": "u", "headers": {"a/b": 1}}"#),
            "invalid_input: /headers/a~1b: invalid type: integer `1`, expected a string"
        );
        assert_eq!(
            message(r#"{"url": "u", "items": [{"id": 1}, {"id": "x"}]}"#),
            "invalid_input: /items/1/id: invalid type: string \"x\", expected u32"
        );
        assert!(
            message("{}").contains("missing field `url`"),
            "{}",
            message("{}")
        );
        assert!(message(r#"{"url": "u", "x": 1}"#).contains("unknown field `x`"));
        assert!(message(r#"{"url": "#).starts_with("invalid_input: the input is not valid JSON"));
        assert!(
            message(r#"{"url": "u"} x"#).starts_with("invalid_input: the input is not valid JSON")
        );
    }

    #[test]
    fn good_input_parses() {
        let input: Input = parse_input(r#"{"url": "u", "items": [{"id": 1}]}"#).unwrap();
        assert_eq!(input.url, "u");
        assert_eq!(input.items.len(), 1);
    }
}
