//! Per-company rate limits of the API: a token bucket per company, refilled at a steady
//! rate up to its burst. A company over its rate is told `429 rate_limit_exceeded` with
//! `Retry-After`, and other companies are not affected.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept before full (idle) ones are dropped: a full bucket is the same as none.
const PRUNE_AT: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One limit (e.g. `POST /api/v1/steps`), one bucket per company.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// `per_second` sustained, `burst` at once (both checked by the config loader).
    pub fn new(per_second: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            per_second,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one token for `company`; when there is none, how long until there is.
    pub fn check(&self, company: &str) -> Result<(), Duration> {
        self.check_at(company, Instant::now())
    }

    fn check_at(&self, company: &str, now: Instant) -> Result<(), Duration> {
        // Counters only, each update complete: a poisoned lock still holds good numbers.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= PRUNE_AT {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| b.tokens + rate * now.duration_since(b.at).as_secs_f64() < burst);
        }
        let bucket = buckets.entry(company.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_company_gets_its_burst_then_its_rate_and_others_are_untouched() {
        let limiter = RateLimiter::new(2.0, 3);
        let t = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at("a", t).is_ok());
        }
        let wait = limiter.check_at("a", t).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(limiter.check_at("b", t).is_ok());
        // Half a second later one more token has come back, and only one.
        let later = t + Duration::from_millis(500);
        assert!(limiter.check_at("a", later).is_ok());
        assert!(limiter.check_at("a", later).is_err());
    }
}
