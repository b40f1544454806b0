//! `flow8:integration/log`: the module's log lines, kept with the step's result.

use crate::runtime::bindings::flow8::integration::log::{Host, Level};
use crate::runtime::sandbox::{LogLevel, StepState};

impl Host for StepState {
    async fn write(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        self.log.push(level, message);
        Ok(())
    }
}
