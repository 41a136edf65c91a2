//! mta-limit — rate and concurrency limits behind one small interface, for any task that
//! must say "not now" to someone: osesctl shapes its traffic per destination site with it,
//! and isesctl can hold per-client inbound limits with the same two questions.
//!
//! The two questions a [`Limiter`] answers, for a key (a site name, a client address):
//! - [`Limiter::check`]: may one more event happen now under a [`Rate`]? (GCRA, the
//!   arithmetic of `mta_types::rate`, one timestamp per key, burst [`burst`]) —
//!   [`Verdict::Allowed`], or
//!   [`Verdict::RetryAfter`] with how long until it may.
//! - [`Limiter::lease`]: one of at most `max` concurrent slots (a connection); the
//!   [`Lease`] gives the slot back when dropped.
//!
//! [`MemoryLimiter`] answers both from this process's memory; [`FleetLimiter`]
//! (`shared.rs`) counts them across a fleet of nodes in Redis (one Lua script call per
//! check, [`fleet::Fleet`]), falling back to local shares when Redis is away. Callers
//! never learn which one they talk to. Reads no config (the caller passes
//! [`fleet::FleetSettings`]); only the fleet's link changes are logged.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use mta_types::rate::{BadRate, Gcra, Rate};
pub use shared::{FleetLimiter, LOCAL};

pub mod fleet;
mod shared;

/// The burst a quiet key may spend at once: a tenth of a period's worth (at least 1).
pub fn burst(rate: Rate) -> u32 {
    (rate.count / 10).max(1)
}

/// The answer to a rate check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Not now: ask again after this long.
    RetryAfter(Duration),
}

/// A slot of a concurrency limit; dropping it gives the slot back.
pub struct Lease {
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Lease {
    /// A lease that gives its slot back by calling `release` (once, when dropped).
    pub fn new(release: impl FnOnce() + Send + Sync + 'static) -> Lease {
        Lease {
            release: Some(Box::new(release)),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Lease")
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Rate checks and concurrency leases by key.
pub trait Limiter: Send + Sync {
    /// May one more event happen now for `key` under `rate`? An allowed event is counted.
    fn check<'a>(&'a self, key: &'a str, rate: Rate) -> BoxFuture<'a, Verdict>;
    /// One of at most `max` concurrent slots for `key`; `None` when all are taken.
    fn lease<'a>(&'a self, key: &'a str, max: u32) -> BoxFuture<'a, Option<Lease>>;
}

/// Both kinds of limit in this process's memory: a GCRA timestamp per (key, rate) and a
/// counter per lease key. Each check is one short lock; nothing waits.
#[derive(Default)]
pub struct MemoryLimiter {
    /// The theoretical arrival time of the next event (µs since `epoch`), per key.
    tats: Mutex<HashMap<String, u64>>,
    leases: Mutex<HashMap<String, Arc<AtomicU32>>>,
    epoch: std::sync::OnceLock<Instant>,
}

impl MemoryLimiter {
    pub fn new() -> MemoryLimiter {
        MemoryLimiter::default()
    }

    /// The GCRA step at `now` (burst: [`burst`]). A key seen for the first time starts
    /// with no burst credit: credit builds up only while the key is quiet, so a steady
    /// stream never exceeds `count` in any `period`.
    pub fn check_at(&self, key: &str, rate: Rate, now: Instant) -> Verdict {
        let epoch = *self.epoch.get_or_init(|| now);
        let now_us =
            u64::try_from(now.saturating_duration_since(epoch).as_micros()).unwrap_or(u64::MAX);
        let gcra = Gcra::new(rate, burst(rate));
        let mut tats = self.tats.lock().expect("limiter lock");
        let tat = tats.entry(key.to_string()).or_insert_with(|| {
            let interval = u64::try_from(rate.period.as_micros()).unwrap_or(u64::MAX)
                / u64::from(rate.count.max(1));
            now_us + interval.max(1) * u64::from(burst(rate) - 1)
        });
        match gcra.check(tat, now_us) {
            Ok(()) => Verdict::Allowed,
            Err(wait) => Verdict::RetryAfter(wait),
        }
    }

    /// Slots of `key` in use now.
    pub fn in_use(&self, key: &str) -> u32 {
        let leases = self.leases.lock().expect("limiter lock");
        leases.get(key).map_or(0, |n| n.load(Ordering::SeqCst))
    }

    fn lease_now(&self, key: &str, max: u32) -> Option<Lease> {
        let counter = {
            let mut leases = self.leases.lock().expect("limiter lock");
            leases.entry(key.to_string()).or_default().clone()
        };
        let taken = counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < max).then_some(n + 1)
        });
        taken.ok()?;
        Some(Lease::new(move || {
            counter.fetch_sub(1, Ordering::SeqCst);
        }))
    }
}

impl Limiter for MemoryLimiter {
    fn check<'a>(&'a self, key: &'a str, rate: Rate) -> BoxFuture<'a, Verdict> {
        let verdict = self.check_at(key, rate, Instant::now());
        Box::pin(std::future::ready(verdict))
    }

    fn lease<'a>(&'a self, key: &'a str, max: u32) -> BoxFuture<'a, Option<Lease>> {
        let lease = self.lease_now(key, max);
        Box::pin(std::future::ready(lease))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_is_a_tenth_of_a_period() {
        assert_eq!(burst("300/min".parse().unwrap()), 30);
        assert_eq!(burst("5/min".parse().unwrap()), 1);
    }

    #[test]
    fn a_steady_stream_gets_the_rate_and_no_more() {
        let l = MemoryLimiter::new();
        let rate: Rate = "120/min".parse().unwrap();
        let start = Instant::now();
        // Ask every 10 ms for two minutes: allowed exactly at the rate, no first burst.
        let mut allowed = Vec::new();
        for step in 0..12_000u64 {
            let now = start + Duration::from_millis(step * 10);
            if l.check_at("site", rate, now) == Verdict::Allowed {
                allowed.push(step * 10);
            }
        }
        for window in allowed.windows(121) {
            assert!(
                window[120] - window[0] >= 60_000,
                "121 events within a minute"
            );
        }
        assert!((239..=241).contains(&allowed.len()), "{}", allowed.len());
    }

    #[test]
    fn a_quiet_key_may_burst_a_tenth_of_a_period() {
        let l = MemoryLimiter::new();
        let rate: Rate = "100/min".parse().unwrap();
        let start = Instant::now();
        assert_eq!(l.check_at("k", rate, start), Verdict::Allowed);
        // Quiet for a minute: the burst (10) is there at once, then the rate.
        let later = start + Duration::from_secs(60);
        let burst = (0..20)
            .take_while(|_| l.check_at("k", rate, later) == Verdict::Allowed)
            .count();
        assert_eq!(burst, 10);
        match l.check_at("k", rate, later) {
            Verdict::RetryAfter(d) => assert!(d <= Duration::from_millis(600), "{d:?}"),
            v => panic!("{v:?}"),
        }
        assert_eq!(l.check_at("other", rate, later), Verdict::Allowed);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn leases_count_and_come_back_when_dropped() {
        let l = MemoryLimiter::new();
        let a = l.lease("site", 2).await.unwrap();
        let _b = l.lease("site", 2).await.unwrap();
        assert!(l.lease("site", 2).await.is_none());
        assert_eq!(l.in_use("site"), 2);
        drop(a);
        assert_eq!(l.in_use("site"), 1);
        assert!(l.lease("site", 2).await.is_some());
    }
}
