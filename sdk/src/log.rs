//! The step's log, returned with the step's result (`flow8_sdk::log::info("...")`).
//!
//! Lines go to the host, which bounds the log's size, redacts the step's secrets and
//! attaches the log to the step's report. Prefer these to `println!`/`eprintln!`
//! (which the host also captures, without a level). Never log secrets.

use crate::__private::bindings::flow8::integration::log::{Level, write};

/// A trace line (very detailed diagnostics).
pub fn trace(message: &str) {
    write(Level::Trace, message);
}

/// A debug line.
pub fn debug(message: &str) {
    write(Level::Debug, message);
}

/// An info line.
pub fn info(message: &str) {
    write(Level::Info, message);
}

/// A warning.
pub fn warn(message: &str) {
    write(Level::Warn, message);
}

/// An error line.
pub fn error(message: &str) {
    write(Level::Error, message);
}
