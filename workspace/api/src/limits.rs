//! Per-token rate limits (API.md: RESOURCE_EXHAUSTED, 429 with `Retry-After`): one token
//! bucket per bearer token, checked in [`crate::auth::Principal::authenticate`], so it
//! holds for REST and gRPC alike. A bucket holds `burst` requests and refills at `rate`
//! per second; a request that finds it empty is refused with the seconds until the next
//! token, and is not counted.

use ovc_types::error::{Code, Status};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The metadata key carrying the seconds to wait, in the error's details.
pub const RETRY_AFTER_KEY: &str = "retry_after_seconds";

/// Token buckets by caller.
#[derive(Debug)]
pub struct RateLimiter {
    /// Requests per second per caller (`None`: unlimited).
    rate: Option<f64>,
    /// Bucket size.
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::unlimited()
    }
}

impl RateLimiter {
    /// No limit.
    pub fn unlimited() -> Self {
        RateLimiter {
            rate: None,
            burst: 0.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `rate` requests per second per caller, in bursts of up to `burst`.
    pub fn per_second(rate: f64, burst: u32) -> Self {
        RateLimiter {
            rate: (rate > 0.0).then_some(rate),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `caller`'s bucket at time `now`, or says how long to wait.
    pub fn check_at(&self, caller: &str, now: Instant) -> Result<(), Duration> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = buckets.entry(caller.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }

    /// [`RateLimiter::check_at`] now, as API.md's error.
    pub fn check(&self, caller: &str) -> Result<(), Status> {
        self.check_at(caller, Instant::now()).map_err(|wait| {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            Status::new(
                Code::ResourceExhausted,
                format!("rate limit of this token exceeded; retry in {secs} s"),
            )
            .with_reason("RATE_LIMITED")
            .with_metadata(RETRY_AFTER_KEY, secs.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_the_rate() {
        let l = RateLimiter::per_second(10.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at("a", t0).is_ok());
        }
        let wait = l
            .check_at("a", t0)
            .expect_err("the fourth is over the burst");
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        // Another caller has a bucket of its own.
        assert!(l.check_at("b", t0).is_ok());
        // 100 ms later one token is back, not more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.check_at("a", t1).is_ok());
        assert!(l.check_at("a", t1).is_err());
        // Refills never exceed the burst.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(l.check_at("a", t2).is_ok());
        }
        assert!(l.check_at("a", t2).is_err());
    }

    #[test]
    fn unlimited_never_refuses() {
        let l = RateLimiter::unlimited();
        let t = Instant::now();
        for _ in 0..10_000 {
            assert!(l.check_at("a", t).is_ok());
        }
    }

    #[test]
    fn the_refusal_carries_retry_after() {
        let l = RateLimiter::per_second(0.5, 1);
        assert!(l.check("a").is_ok());
        let s = l.check("a").expect_err("limited");
        assert_eq!(s.code, Code::ResourceExhausted);
        assert_eq!(s.details[0].reason, "RATE_LIMITED");
        assert_eq!(s.details[0].metadata[RETRY_AFTER_KEY], "2");
    }
}
