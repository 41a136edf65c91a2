//! Claims in flight. Not durable on purpose: when the supervisor restarts, every task
//! restarts with it and nothing is leased any more.

use mta_types::QueueId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Leases {
    by_id: HashMap<QueueId, Lease>,
}

struct Lease {
    owner_pid: u32,
    expires: Instant,
}

impl Leases {
    pub fn is_leased(&self, id: &QueueId, now: Instant) -> bool {
        self.by_id.get(id).is_some_and(|l| l.expires > now)
    }

    pub fn grant(&mut self, id: QueueId, owner_pid: u32, duration: Duration, now: Instant) {
        self.by_id.insert(
            id,
            Lease {
                owner_pid,
                expires: now + duration,
            },
        );
    }

    pub fn end(&mut self, id: &QueueId) {
        self.by_id.remove(id);
    }

    pub fn end_if_owner(&mut self, id: &QueueId, owner_pid: u32) {
        if self.by_id.get(id).is_some_and(|l| l.owner_pid == owner_pid) {
            self.by_id.remove(id);
        }
    }

    /// Ends every lease of a process that exited; returns how many.
    pub fn end_owner(&mut self, owner_pid: u32) -> usize {
        let before = self.by_id.len();
        self.by_id.retain(|_, l| l.owner_pid != owner_pid);
        before - self.by_id.len()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undelivered_answer_ends_only_the_lease_its_owner_still_holds() {
        let (mut leases, now) = (Leases::default(), Instant::now());
        let (a, b) = (QueueId::generate(), QueueId::generate());
        let minute = Duration::from_secs(60);
        leases.grant(a, 100, minute, now);
        leases.grant(b, 100, minute, now);
        // The owner died and its leases were returned; another task claimed `b` since.
        assert_eq!(leases.end_owner(100), 2);
        leases.grant(b, 200, minute, now);
        leases.end_if_owner(&a, 100);
        leases.end_if_owner(&b, 100);
        assert!(leases.is_leased(&b, now), "the new holder keeps its lease");
        leases.grant(a, 100, minute, now);
        leases.end_if_owner(&a, 100);
        assert!(!leases.is_leased(&a, now));
    }
}
