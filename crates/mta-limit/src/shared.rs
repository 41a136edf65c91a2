//! [`FleetLimiter`]: the limits counted across the fleet in Redis ([`Fleet`]), with this
//! process's [`MemoryLimiter`] beside it for what Redis cannot answer.
//!
//! - A key starting with `local:` (a limit the config marks `local:`) is always counted
//!   here, in full: a per-node limit.
//! - While the link is up, a rate check is one GCRA script call and a lease one script
//!   call (its release one more, in the background); renewals of all leases held share
//!   one call every `lease_ttl / 3`.
//! - While it is down (or still connecting), every limit is counted in memory at its
//!   local share: the fleet limit ÷ the nodes last seen alive (at least 1), so the fleet
//!   as a whole stays within the limit and nobody waits on Redis.

use crate::fleet::Fleet;
use crate::{BoxFuture, Lease, Limiter, MemoryLimiter, Rate, Verdict};
use std::sync::Arc;

/// The key prefix of a per-node limit.
pub const LOCAL: &str = "local:";

pub struct FleetLimiter {
    fleet: Arc<Fleet>,
    local: MemoryLimiter,
}

impl FleetLimiter {
    pub fn new(fleet: Arc<Fleet>) -> FleetLimiter {
        FleetLimiter {
            fleet,
            local: MemoryLimiter::new(),
        }
    }

    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }

    async fn shared_check(&self, key: &str, rate: Rate) -> Verdict {
        if let Some(v) = self.fleet.gcra(key, rate).await {
            return v;
        }
        let share = Rate {
            count: self.fleet.share(rate.count),
            period: rate.period,
        };
        self.local.check(key, share).await
    }

    async fn shared_lease(&self, key: &str, max: u32) -> Option<Lease> {
        match self.fleet.take_lease(key, max).await {
            Some(Some(id)) => {
                // Counted here too (without a limit), so that a local share taken during
                // an outage counts the connections this process already holds.
                let counted = self.local.lease(key, u32::MAX).await;
                let fleet = self.fleet.clone();
                Some(Lease::new(move || {
                    drop(counted);
                    fleet.release_lease(id);
                }))
            }
            Some(None) => None,
            None => {
                // Redis is away: a local share, counted in Redis once it is back.
                let local = self.local.lease(key, self.fleet.share(max)).await?;
                let id = self.fleet.adopt_lease(key);
                let fleet = self.fleet.clone();
                Some(Lease::new(move || {
                    drop(local);
                    fleet.release_lease(id);
                }))
            }
        }
    }
}

impl Limiter for FleetLimiter {
    fn check<'a>(&'a self, key: &'a str, rate: Rate) -> BoxFuture<'a, Verdict> {
        if key.starts_with(LOCAL) {
            return self.local.check(key, rate);
        }
        Box::pin(self.shared_check(key, rate))
    }

    fn lease<'a>(&'a self, key: &'a str, max: u32) -> BoxFuture<'a, Option<Lease>> {
        if key.starts_with(LOCAL) {
            return self.local.lease(key, max);
        }
        Box::pin(self.shared_lease(key, max))
    }
}
