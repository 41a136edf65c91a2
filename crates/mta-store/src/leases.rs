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
