//! `flow8:integration/step`: facts about the running step (time left), so modules can
//! bound their retries by the deadline.

use crate::runtime::bindings::flow8::integration::step::Host;
use crate::runtime::sandbox::StepState;

impl Host for StepState {
    async fn remaining_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(self.remaining().as_millis() as u64)
    }
}
