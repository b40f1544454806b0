//! How modules travel and how the host knows who made them: `oci` pushes and pulls
//! modules as Wasm OCI artifacts (with their signatures), `signature` signs and checks
//! them against the operator's trusted keys.

pub mod oci;
pub mod signature;
