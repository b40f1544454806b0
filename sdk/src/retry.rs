//! Retrying calls the way providers ask: exponential backoff with full jitter
//! (AWS Architecture Blog, "Exponential Backoff And Jitter"), `Retry-After` honoured
//! (RFC 9110 §10.2.3), and never sleeping past the step's deadline.
//!
//! ```no_run
//! use flow8_sdk::{Error, http::Request, retry::Backoff};
//!
//! # fn run() -> Result<(), Error> {
//! let request = Request::get("https://api.example.com/items").credential("api");
//!
//! // Raw HTTP: retries 429, 5xx and network failures; returns the last response.
//! let response = Backoff::default().send(&request)?;
//!
//! // Any call: retries the errors that say retrying may help (`Error::is_retryable`).
//! let items: serde_json::Value = Backoff::with_max_retries(5).call(|| {
//!     let r = request.send()?;
//!     match r.status {
//!         429 => Err(Error::rate_limit_exceeded("slow down", r.retry_after())),
//!         s if s >= 500 => Err(Error::upstream(s, r.text())),
//!         _ => r.json(),
//!     }
//! })?;
//! # Ok(()) }
//! ```

use crate::http::{Request, Response, SavedResponse};
use crate::{Error, log, step};
use std::time::Duration;

/// How to retry.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff ceiling.
    pub base: Duration,
    /// Largest backoff (a server's `Retry-After` may ask for more, and is honoured).
    pub cap: Duration,
    /// Time to keep in hand before the deadline: a wait that would end closer to the
    /// deadline than this is not started.
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
/// dependency: std seeds `RandomState` from it, and each `RandomState::new()` on a
/// thread gets fresh keys.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish()
}

impl Backoff {
    /// The default policy with another retry budget.
    pub fn with_max_retries(max_retries: u32) -> Backoff {
        Backoff {
            max_retries,
            ..Backoff::default()
        }
    }

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

    /// Sleep before retry `attempt` if the wait ends at least `margin` before the
    /// deadline; `false` (and no sleep) if it would not.
    pub fn wait(&self, attempt: u32, retry_after: Option<Duration>) -> bool {
        let d = self.delay(attempt, retry_after);
        if d.saturating_add(self.margin) >= step::remaining() {
            return false;
        }
        std::thread::sleep(d);
        true
    }

    /// Run `op` until it succeeds, fails with an error that retrying cannot help
    /// ([`Error::is_retryable`] is false), the retries are used up, or the next wait
    /// would pass the deadline; the last result is returned. A `rate_limit_exceeded`
    /// error's `retry_after_seconds` is honoured.
    pub fn call<T>(&self, mut op: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
        let mut attempt = 0;
        loop {
            let result = op();
            let Err(e) = &result else { return result };
            if !e.is_retryable() {
                return result;
            }
            let retry_after = match e {
                Error::RateLimitExceeded {
                    retry_after_seconds: Some(s),
                    ..
                } => Some(Duration::from_secs((*s).into())),
                _ => None,
            };
            attempt += 1;
            if attempt > self.max_retries || !self.announce_and_wait(attempt, retry_after, e) {
                return result;
            }
        }
    }

    /// Send `request`, retrying `429 Too Many Requests`, 5xx answers and network
    /// failures; returns the last response whatever its status (a caller decides what a
    /// final 429 or 5xx means), or the last error.
    pub fn send(&self, request: &Request) -> Result<Response, Error> {
        self.retry_answers(|| request.send(), |r| r)
    }

    /// [`Backoff::send`] with the body of a 2xx answer streamed to the workspace
    /// ([`Request::send_to_workspace`]); 429 and 5xx answers, which are not saved, are
    /// retried the same way.
    pub fn send_to_workspace(
        &self,
        request: &Request,
        path: &str,
        max_bytes: u64,
    ) -> Result<SavedResponse, Error> {
        self.retry_answers(
            || request.send_to_workspace(path, max_bytes),
            |r| &r.response,
        )
    }

    fn retry_answers<T>(
        &self,
        mut send: impl FnMut() -> Result<T, Error>,
        response: impl Fn(&T) -> &Response,
    ) -> Result<T, Error> {
        let mut attempt = 0;
        loop {
            let result = send();
            let retry_after = match result.as_ref().map(&response) {
                Ok(r) if r.status == 429 || r.status >= 500 => {
                    r.retry_after().map(|s| Duration::from_secs(s.into()))
                }
                Err(Error::Network(_)) => None,
                _ => return result,
            };
            attempt += 1;
            let why = match result.as_ref().map(&response) {
                Ok(r) => format!("status {}", r.status),
                Err(e) => e.to_string(),
            };
            if attempt > self.max_retries || !self.announce_and_wait(attempt, retry_after, why) {
                return result;
            }
        }
    }

    fn announce_and_wait(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        why: impl std::fmt::Display,
    ) -> bool {
        let d = self.delay(attempt, retry_after);
        if d.saturating_add(self.margin) >= step::remaining() {
            log::warn(&format!(
                "{why}; not retrying: waiting {d:?} would pass the step's deadline"
            ));
            return false;
        }
        log::warn(&format!(
            "{why}; retry {attempt} of {} in {d:?}",
            self.max_retries
        ));
        std::thread::sleep(d);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_under_the_cap_and_vary() {
        let b = Backoff::default();
        for attempt in 1..=40 {
            let ceiling = b.base.saturating_mul(1 << (attempt - 1).min(20)).min(b.cap);
            for _ in 0..20 {
                assert!(b.delay(attempt, None) <= ceiling);
            }
        }
        let samples: std::collections::HashSet<Duration> =
            (0..50).map(|_| b.delay(8, None)).collect();
        assert!(samples.len() > 10, "jitter should vary: {samples:?}");
    }

    #[test]
    fn retry_after_is_honoured_even_above_the_cap() {
        let b = Backoff::default();
        assert_eq!(
            b.delay(1, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
    }
}
