//! The step's log, returned with the step's result.

use crate::__private::bindings::flow8::integration::log::{Level, write};

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
