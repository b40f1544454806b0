//! Host-side bindings generated from `wit/` (the single source of truth).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "flow8:integration/module",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use flow8::integration::types::{Error as GuestError, RateLimit, UpstreamError};
