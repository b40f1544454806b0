//! Facts about the running step.

use std::time::Duration;

/// Time left before the step's deadline.
pub fn remaining() -> Duration {
    Duration::from_millis(crate::__private::bindings::flow8::integration::step::remaining_ms())
}
