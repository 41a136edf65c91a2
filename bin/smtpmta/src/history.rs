//! The last day, minute by minute, for the status page's charts: messages received,
//! recipients delivered (to a mailbox or relayed), deferred and bounced, and the queue's
//! size. A ring of at most `DAY_MINUTES + 1` snapshots of the store's cumulative counters,
//! one taken at each minute's start by the rates sampler (`rates::run`, every 2 s): a
//! minute's figures are the difference between two snapshots, the current minute's the
//! difference between the live counters and the last snapshot. About 60 KiB at most;
//! nothing is written to disk (the charts start empty after a restart of the supervisor).

use mta_types::counters as names;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

pub const MINUTE_MS: u64 = 60_000;
pub const DAY_MINUTES: usize = 1440;

/// The store's cumulative counters the charts need, and the queue's size, at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub received: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
    /// Messages in the queues now (not cumulative).
    pub queued: u64,
}

impl Totals {
    pub fn from_counters(counters: &BTreeMap<String, u64>, queued: u64) -> Totals {
        let get = |n: &str| counters.get(n).copied().unwrap_or(0);
        Totals {
            received: get(names::RECEIVED),
            delivered: get(names::DELIVERED) + get(names::TRANSFERRED),
            deferred: get(names::DEFERRED),
            bounced: get(names::TOTAL_FAILURES),
            queued,
        }
    }
}

/// One minute of the charts: what happened in it, and the queue's size at its end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Minute {
    /// The minute's start, Unix milliseconds.
    pub start_ms: u64,
    pub received: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
    pub queued: u64,
}

#[derive(Default)]
pub struct History {
    /// (minute start, counters then), oldest first.
    snapshots: Mutex<VecDeque<(u64, Totals)>>,
}

impl History {
    /// A sample: kept when it is the first of its minute.
    pub fn record(&self, now_ms: u64, totals: Totals) {
        let minute = now_ms - now_ms % MINUTE_MS;
        let mut snapshots = self.snapshots.lock().expect("history lock");
        if snapshots.back().is_some_and(|(m, _)| *m >= minute) {
            return;
        }
        snapshots.push_back((minute, totals));
        while snapshots.len() > DAY_MINUTES + 1 {
            snapshots.pop_front();
        }
    }

    /// The last `n` minutes up to the current one (which ends at `now`, with `live`
    /// counters), oldest first; minutes before the first snapshot or in a gap are zero.
    pub fn last(&self, n: usize, now_ms: u64, live: Totals) -> Vec<Minute> {
        let current = now_ms - now_ms % MINUTE_MS;
        let snapshots = self.snapshots.lock().expect("history lock");
        let first = current.saturating_sub((n as u64 - 1) * MINUTE_MS);
        (0..n as u64)
            .map(|i| {
                let start = first + i * MINUTE_MS;
                let at = |m: u64| snapshots.iter().find(|(s, _)| *s == m).map(|(_, t)| *t);
                let begin = at(start);
                let end = if start == current {
                    Some(live)
                } else {
                    at(start + MINUTE_MS)
                };
                minute(start, begin, end)
            })
            .collect()
    }
}

fn minute(start_ms: u64, begin: Option<Totals>, end: Option<Totals>) -> Minute {
    let (Some(b), Some(e)) = (begin, end) else {
        return Minute {
            start_ms,
            queued: end.or(begin).map(|t| t.queued).unwrap_or(0),
            ..Minute::default()
        };
    };
    Minute {
        start_ms,
        received: e.received.saturating_sub(b.received),
        delivered: e.delivered.saturating_sub(b.delivered),
        deferred: e.deferred.saturating_sub(b.deferred),
        bounced: e.bounced.saturating_sub(b.bounced),
        queued: e.queued,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(received: u64, queued: u64) -> Totals {
        Totals {
            received,
            queued,
            ..Totals::default()
        }
    }

    #[test]
    fn minutes_are_differences_and_the_current_one_is_live() {
        let h = History::default();
        let m0 = 10 * MINUTE_MS;
        h.record(m0 + 5, t(100, 1));
        h.record(m0 + 30_000, t(150, 2)); // not the minute's first: ignored
        h.record(m0 + MINUTE_MS + 1, t(160, 3));
        let last = h.last(3, m0 + MINUTE_MS + 20_000, t(175, 4));
        assert_eq!(last.len(), 3);
        // Before the history: no traffic known, the queue as the first snapshot saw it.
        assert_eq!((last[0].received, last[0].queued), (0, 1));
        assert_eq!((last[1].received, last[1].queued), (60, 3));
        assert_eq!((last[2].received, last[2].queued), (15, 4));
        assert_eq!(last[2].start_ms, m0 + MINUTE_MS);
    }

    #[test]
    fn the_ring_holds_a_day() {
        let h = History::default();
        for i in 0..(DAY_MINUTES as u64 + 50) {
            h.record(i * MINUTE_MS, t(i, 0));
        }
        assert_eq!(h.snapshots.lock().unwrap().len(), DAY_MINUTES + 1);
    }
}
