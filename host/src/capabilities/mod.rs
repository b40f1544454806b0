//! The host functions a module may call, one file per WIT interface: `credentials`,
//! `http`, `log` and `step`. Each implements the generated `Host` trait on the step's
//! sandbox state.

pub mod credentials;
pub mod http;
pub mod log;
pub mod object_storage;
pub mod step;

use crate::runtime::bindings::flow8::integration::types;
use crate::runtime::sandbox::StepState;

impl types::Host for StepState {}
