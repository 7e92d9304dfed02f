//! A token bucket per identity (`--rate-limit` requests per minute).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets that hold up to a minute's requests and refill continuously.
pub struct RateLimiter {
    capacity: f64,
    per_second: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Idle buckets are forgotten once there are this many, so that the map stays bounded.
const PRUNE_AT: usize = 10_000;

impl RateLimiter {
    /// `n` requests a minute, in bursts of up to `n`.
    pub fn per_minute(n: u32) -> Self {
        Self {
            capacity: n as f64,
            per_second: n as f64 / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a request from `key`'s bucket; `Err(seconds)` until it has one again.
    pub fn take(&self, key: &str) -> Result<(), u64> {
        self.take_at(key, Instant::now())
    }

    fn take_at(&self, key: &str, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() >= PRUNE_AT {
            // A full bucket holds no state worth keeping.
            let (cap, rate) = (self.capacity, self.per_second);
            buckets.retain(|_, (level, at)| {
                *level + now.duration_since(*at).as_secs_f64() * rate < cap
            });
        }
        let (level, at) = buckets
            .entry(key.to_owned())
            .or_insert((self.capacity, now));
        *level =
            (*level + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.capacity);
        *at = now;
        if *level >= 1.0 {
            *level -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *level) / self.per_second).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_empties_refills_and_is_per_key() {
        let limiter = RateLimiter::per_minute(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.take_at("alice", t0), Ok(()));
        }
        assert_eq!(
            limiter.take_at("alice", t0),
            Err(20),
            "one request every 20 s"
        );
        assert_eq!(limiter.take_at("bob", t0), Ok(()), "bob has his own bucket");
        assert_eq!(
            limiter.take_at("alice", t0 + Duration::from_secs(10)),
            Err(10)
        );
        assert_eq!(
            limiter.take_at("alice", t0 + Duration::from_secs(20)),
            Ok(())
        );
    }
}
