//! The SDK for flow8 integration modules.
//!
//! A module is a Rust library built for `wasm32-wasip2` (`crate-type = ["cdylib"]`). It
//! implements [`Module`]: a manifest (what it is, what input it takes, which credentials
//! it needs, which hosts it talks to) and `execute` (typed input in, typed output out).
//! [`export_module!`] turns it into a WebAssembly component of the flow8 `module` world.
//! Nothing here exposes the generated WIT bindings; the contract is `wit/` in the
//! repository.
//!
//! ```no_run
//! use flow8_sdk::{Credential, Error, Manifest, Module, http, log};
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
//!         let response = http::Request::post("https://slack.com/api/chat.postMessage")
//!             .json(&serde_json::json!({"channel": input.channel, "text": input.message}))?
//!             .credential("slack")
//!             .send()?;
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
pub mod http;
pub mod log;
mod manifest;
pub mod retry;
pub mod step;
pub mod storage;

pub use error::Error;
pub use manifest::{Credential, Manifest};

/// Re-exported so modules use the same `serde_json` as the SDK.
pub use serde_json;

/// A flow8 integration module.
pub trait Module {
    /// The step input (flow8's `input_mapping`), deserialised from JSON.
    type Input: serde::de::DeserializeOwned;
    /// The step output, serialised to JSON.
    type Output: serde::Serialize;

    /// What the module declares about itself. Read once by the host when it loads the
    /// module; must not call the host.
    fn manifest() -> Manifest;

    /// Run one step.
    fn execute(input: Self::Input) -> Result<Self::Output, Error>;
}

/// Export a [`Module`] implementation as the component's `manifest` and `execute`.
#[macro_export]
macro_rules! export_module {
    ($module:ty) => {
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

        $crate::__private::bindings::__export_module_world!(__Flow8ModuleExport with_types_in $crate::__private::bindings);
    };
}

#[doc(hidden)]
pub mod __private {
    //! Used by `export_module!`; not part of the API.

    #[allow(missing_docs, clippy::all)]
    pub mod bindings {
        wit_bindgen::generate!({
            path: "../wit",
            world: "flow8:integration/module",
            pub_export_macro: true,
            export_macro_name: "__export_module_world",
            default_bindings_module: "::flow8_sdk::__private::bindings",
        });
    }

    use super::{Error, Module};

    pub fn manifest_json<M: Module>() -> String {
        M::manifest().to_json()
    }

    pub fn execute<M: Module>(input: String) -> Result<String, bindings::Error> {
        let run = || -> Result<String, Error> {
            let input: M::Input = serde_json::from_str(&input).map_err(|e| {
                Error::invalid_input(format!("the input does not fit this module: {e}"))
            })?;
            let output = M::execute(input)?;
            serde_json::to_string(&output)
                .map_err(|e| Error::internal(format!("the output cannot be serialised: {e}")))
        };
        run().map_err(Error::into_wit)
    }
}
