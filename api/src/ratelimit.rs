//! In-process token buckets, one per key (client address or account).
//! Each instance limits on its own; with N instances the effective limit is
//! at most N times the configured one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::error::ApiError;

/// Drop full buckets once the map grows past this many keys.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Debug)]
pub struct RateLimiter {
    /// Bucket size and refill per minute.
    per_minute: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: per_minute.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let capacity = f64::from(self.per_minute);
        let rate = capacity / 60.0;
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.at = now;
    }

    /// Takes one token for `key`, or answers 429 with the seconds until one is back.
    pub fn check(&self, key: &str) -> Result<(), ApiError> {
        let now = Instant::now();
        let capacity = f64::from(self.per_minute);
        let mut buckets = match self.buckets.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if buckets.len() > SWEEP_ABOVE {
            let mut full = Vec::new();
            for (k, b) in buckets.iter_mut() {
                self.refill(b, now);
                if b.tokens >= capacity {
                    full.push(k.clone());
                }
            }
            for k in full {
                buckets.remove(&k);
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        self.refill(bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let rate = capacity / 60.0;
            let wait = ((1.0 - bucket.tokens) / rate).ceil().max(1.0);
            Err(ApiError::RateLimited {
                retry_after_secs: wait as u64,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_empties_and_says_when_to_retry() {
        let limiter = RateLimiter::new(3);
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
        }
        match limiter.check("a") {
            Err(ApiError::RateLimited { retry_after_secs }) => {
                assert!((1..=20).contains(&retry_after_secs))
            }
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(limiter.check("b").is_ok());
    }
}
