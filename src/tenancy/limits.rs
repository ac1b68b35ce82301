//! Per-tenant limits: GCRA request rate with burst and rows per minute (one governor direct limiter
//! per tenant, and per tenant × model where `model_limits` say so), and concurrent requests
//! (refused at once, never queued).
use super::config::Limits;
use crate::error::Error;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The limiters of one tenant (or of one tenant × model). Kept across reloads while the limits
/// are unchanged, so a reload does not hand out a fresh burst.
pub struct LimiterSet {
    pub limits: Limits,
    rate: Option<DefaultDirectRateLimiter>,
    rows: Option<DefaultDirectRateLimiter>,
    concurrent: Arc<AtomicU32>,
    clock: DefaultClock,
}

impl std::fmt::Debug for LimiterSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimiterSet").field("limits", &self.limits).finish_non_exhaustive()
    }
}

/// Holds one concurrency slot until dropped.
#[derive(Debug)]
pub struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Which limit refused a request (for messages, metrics and the `QuotaFailure` subject).
pub const RATE: &str = "requests_per_second";
pub const ROWS: &str = "rows_per_minute";
pub const CONCURRENT: &str = "max_concurrent";

fn nz(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN)
}

impl LimiterSet {
    pub fn new(limits: Limits) -> LimiterSet {
        let rate = limits.requests_per_second.map(|r| {
            let burst = limits.burst.unwrap_or(r);
            RateLimiter::direct(Quota::per_second(nz(r)).allow_burst(nz(burst)))
        });
        let rows = limits.rows_per_minute.map(|n| RateLimiter::direct(Quota::per_minute(nz(n))));
        LimiterSet { limits, rate, rows, concurrent: Arc::new(AtomicU32::new(0)), clock: DefaultClock::default() }
    }

    /// Takes one request from the rate limit.
    pub fn check_rate(&self, who: &str) -> Result<(), Error> {
        let Some(rate) = &self.rate else { return Ok(()) };
        rate.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            let r = self.limits.requests_per_second.unwrap_or(0);
            let b = self.limits.burst.unwrap_or(r);
            Error::RateLimited {
                limit: RATE,
                message: format!("{who} is over its {RATE} limit ({r} per second, burst {b})"),
                retry_after: wait,
            }
        })
    }

    /// Takes `rows` rows from the rows-per-minute limit.
    pub fn check_rows(&self, who: &str, rows: u64) -> Result<(), Error> {
        let (Some(limiter), Some(limit)) = (&self.rows, self.limits.rows_per_minute) else { return Ok(()) };
        if rows == 0 {
            return Ok(());
        }
        let n = u32::try_from(rows).unwrap_or(u32::MAX);
        match limiter.check_n(nz(n)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Error::RateLimited {
                limit: ROWS,
                message: format!("{who} is over its {ROWS} limit ({limit} rows per minute)"),
                retry_after: not_until.wait_time_from(self.clock.now()),
            }),
            Err(_) => Err(Error::InvalidArgument(format!(
                "the request has {rows} rows, more than {who}'s {ROWS} limit of {limit} allows in one request"
            ))),
        }
    }

    /// Takes a concurrency slot, or refuses at once.
    pub fn admit(&self, who: &str) -> Result<Option<Slot>, Error> {
        let Some(max) = self.limits.max_concurrent else { return Ok(None) };
        let now = self.concurrent.fetch_add(1, Ordering::AcqRel) + 1;
        let slot = Slot(Arc::clone(&self.concurrent));
        if now > max {
            return Err(Error::ResourceExhausted(format!(
                "{who} is at its {CONCURRENT} limit ({max} requests at once)"
            )));
        }
        Ok(Some(slot))
    }
}

/// Whole seconds for `Retry-After`: rounded up, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_burst_rows_and_concurrency() {
        let l = LimiterSet::new(Limits {
            requests_per_second: Some(5),
            burst: Some(5),
            rows_per_minute: Some(10),
            max_concurrent: Some(2),
        });
        for _ in 0..5 {
            l.check_rate("tenant 'a'").unwrap();
        }
        match l.check_rate("tenant 'a'").unwrap_err() {
            Error::RateLimited { limit, message, retry_after } => {
                assert_eq!(limit, RATE);
                assert_eq!(message, "tenant 'a' is over its requests_per_second limit (5 per second, burst 5)");
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(200));
            }
            e => panic!("{e:?}"),
        }
        l.check_rows("tenant 'a'", 10).unwrap();
        assert!(matches!(l.check_rows("tenant 'a'", 1), Err(Error::RateLimited { limit: ROWS, .. })));
        assert!(matches!(l.check_rows("tenant 'a'", 11), Err(Error::InvalidArgument(_))));
        let a = l.admit("t").unwrap();
        let _b = l.admit("t").unwrap();
        assert_eq!(l.admit("t").unwrap_err().to_string(), "t is at its max_concurrent limit (2 requests at once)");
        drop(a);
        assert!(l.admit("t").is_ok());
        assert_eq!(retry_after_secs(Duration::from_millis(200)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2100)), 3);
    }
}
