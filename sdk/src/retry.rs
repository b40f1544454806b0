//! Retrying calls the way providers ask: exponential backoff with full jitter
//! (AWS Architecture Blog, "Exponential Backoff And Jitter"), `Retry-After` honoured
//! (RFC 9110 §10.2.3), and never sleeping past the step's deadline.

use crate::step;
use std::time::Duration;

/// How to retry.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff ceiling.
    pub base: Duration,
    /// Largest backoff.
    pub cap: Duration,
    /// Time to keep in hand before the deadline.
    pub margin: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            max_retries: 3,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
            margin: Duration::from_millis(250),
        }
    }
}

/// A random number from the platform's randomness (on wasip2, `wasi:random`) without a
/// dependency: std seeds `RandomState` from it.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish()
}

impl Backoff {
    /// The wait before retry number `attempt` (1-based): the server's `Retry-After` when
    /// it gave one, otherwise a random time up to `min(cap, base * 2^(attempt-1))`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(d) = retry_after {
            return d;
        }
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.cap);
        let ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(random_u64() % (ms + 1))
    }

    /// Sleep before retry `attempt` if it fits before the deadline; `false` if it does not.
    pub fn wait(&self, attempt: u32, retry_after: Option<Duration>) -> bool {
        let d = self.delay(attempt, retry_after);
        if d + self.margin >= step::remaining() {
            return false;
        }
        std::thread::sleep(d);
        true
    }
}
