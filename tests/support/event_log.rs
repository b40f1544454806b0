//! The JSON events a test server prints on stdout, one per line, collected by a reader
//! thread. A test waits for an event by being woken when one arrives, not by polling.

use std::io::BufRead;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The events read so far; cloning shares them.
#[derive(Clone, Default)]
pub struct EventLog {
    shared: Arc<(Mutex<Vec<serde_json::Value>>, Condvar)>,
}

impl EventLog {
    /// Collect the JSON lines of `lines` (the rest of a server's stdout) on a thread.
    pub fn read<R: BufRead + Send + 'static>(lines: std::io::Lines<R>) -> EventLog {
        let log = EventLog::default();
        let sink = log.shared.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    let (events, arrived) = &*sink;
                    events
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(v);
                    arrived.notify_all();
                }
            }
        });
        log
    }

    /// The events so far.
    pub fn snapshot(&self) -> Vec<serde_json::Value> {
        self.shared
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Wait (up to `timeout`) until `cond` holds, checking it again each time an event
    /// arrives: the server prints an event as it answers, but this process reads it on
    /// another thread.
    pub fn wait_until(&self, timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let (events, arrived) = &*self.shared;
        let mut seen = events.lock().unwrap_or_else(PoisonError::into_inner).len();
        loop {
            if cond() {
                return true;
            }
            let guard = events.lock().unwrap_or_else(PoisonError::into_inner);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let (guard, _) = arrived
                .wait_timeout_while(guard, left, |e| e.len() == seen)
                .unwrap_or_else(PoisonError::into_inner);
            seen = guard.len();
        }
    }
}
