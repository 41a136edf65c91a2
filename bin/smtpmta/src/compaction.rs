//! Queue compaction (Domino's "message queue compacting"): the supervisor reclaims spool
//! segments no record points into any more — those of finished messages, and those a
//! crash left behind. Records of finished messages are removed by the commit that
//! finishes them (`Location::Done`), so only the spool needs sweeping.
//!
//! A segment is deleted only when no record points into it AND its writer can no longer
//! append to it or commit a record pointing into it:
//! - its writer process (the pid in `<owner>-<pid>-<start>-<n>.seg`) is gone, and it was
//!   last written over a minute ago (a commit in flight at the writer's death has landed); or
//! - its writer is alive, it is not the writer's newest segment (rotated: never appended
//!   to again), and it was last written more than `ROTATED_AGE` ago.
//!
//! A live writer's newest segment is never deleted: it may still be appended to.
//!
//! Runs every `INTERVAL` and on `tell smtpmta compact`.

use crate::Supervisor;
use mta_spool::SegmentInfo;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub const INTERVAL: Duration = Duration::from_secs(600);
const DEAD_WRITER_AGE: Duration = Duration::from_secs(60);
const ROTATED_AGE: Duration = Duration::from_secs(600);

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    pub removed: usize,
    pub freed: u64,
    pub kept: usize,
    pub spool_bytes: u64,
}

/// `<owner>-<pid>-<start>-<n>.seg2` (or `.seg`) → (`<owner>-<pid>-<start>`, pid, n).
fn parse_name(name: &str) -> Option<(&str, u32, u32)> {
    let stem = name
        .strip_suffix(mta_spool::SEGMENT_SUFFIX)
        .or_else(|| name.strip_suffix(mta_spool::UNFRAMED_SUFFIX))?;
    let (prefix, n) = stem.rsplit_once('-')?;
    let (rest, _start) = prefix.rsplit_once('-')?;
    let (_owner, pid) = rest.rsplit_once('-')?;
    Some((prefix, pid.parse().ok()?, n.parse().ok()?))
}

/// The segments that may go: unreferenced, and no writer can still use them.
pub fn reclaimable(
    segments: &[SegmentInfo],
    referenced: &dyn Fn(&str) -> bool,
    alive: &dyn Fn(u32) -> bool,
    now: SystemTime,
) -> Vec<String> {
    let mut newest: HashMap<&str, u32> = HashMap::new();
    for s in segments {
        if let Some((prefix, _, n)) = parse_name(&s.name) {
            let e = newest.entry(prefix).or_insert(n);
            *e = (*e).max(n);
        }
    }
    segments
        .iter()
        .filter(|s| !referenced(&s.name))
        .filter(|s| {
            let Some((prefix, pid, n)) = parse_name(&s.name) else {
                return false; // not ours to judge
            };
            let age = now.duration_since(s.modified).unwrap_or(Duration::ZERO);
            if !alive(pid) {
                age >= DEAD_WRITER_AGE
            } else {
                newest.get(prefix) != Some(&n) && age >= ROTATED_AGE
            }
        })
        .map(|s| s.name.clone())
        .collect()
}

pub fn spool_bytes(dir: &Path) -> u64 {
    mta_spool::list_segments(dir)
        .map(|s| s.iter().map(|s| s.size).sum())
        .unwrap_or(0)
}

/// One compaction pass (blocking: reads the store and the spool folder). `flushed` makes
/// every change applied so far durable; it runs after the references are read and before
/// anything is deleted, because a replayable commit that dropped a segment's last
/// reference is only in memory until then: a power loss would bring the reference back,
/// pointing at a deleted segment.
pub fn compact(
    sup: &Supervisor,
    flushed: impl FnOnce() -> Result<(), String>,
) -> Result<Compacted, String> {
    let dir = sup.config().spool_dir();
    if sup.store.engine().damage().is_some() {
        // The content of messages whose records the damage lost is only in the spool.
        return Err(
            "compaction is held off: the queue store was found damaged (see its DAMAGED report)"
                .into(),
        );
    }
    // List first: a segment created after the listing is not looked at.
    let segments = mta_spool::list_segments(&dir).map_err(|e| e.to_string())?;
    let referenced = sup
        .store
        .engine()
        .referenced_segments()
        .map_err(|e| e.to_string())?;
    flushed()?;
    let doomed = reclaimable(
        &segments,
        &|name| referenced.contains(name),
        &mta_task::pid_alive,
        SystemTime::now(),
    );
    let mut out = Compacted::default();
    let mut gone = Vec::new();
    for s in &segments {
        if doomed.contains(&s.name) {
            match mta_spool::remove_segment(&dir, &s.name) {
                Ok(()) => {
                    out.removed += 1;
                    out.freed += s.size;
                    gone.push(s.name.clone());
                    continue;
                }
                Err(e) => tracing::warn!("compaction: cannot remove {}: {e}", s.name),
            }
        }
        out.kept += 1;
        out.spool_bytes += s.size;
    }
    // A deleted segment's spool mark says nothing any more (`spool_recovery`).
    if let Err(e) = sup.store.engine().forget_spool_marks(&gone) {
        tracing::warn!("compaction: the spool marks of deleted segments stay: {e}");
    }
    tracing::info!(
        removed = out.removed,
        freed = out.freed,
        kept = out.kept,
        "queue compacted"
    );
    Ok(out)
}

pub async fn compact_now(sup: Arc<Supervisor>) -> Result<Compacted, String> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let store = sup.store.clone();
        compact(&sup, || {
            runtime.block_on(store.flush()).map_err(|e| e.to_string())
        })
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The schedule: a pass every `INTERVAL` while the supervisor runs.
pub async fn schedule(sup: Arc<Supervisor>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.tick().await; // the first tick is immediate: skip it
    loop {
        tick.tick().await;
        if let Err(e) = compact_now(sup.clone()).await {
            tracing::warn!("compaction failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(name: &str, age_s: u64, now: SystemTime) -> SegmentInfo {
        SegmentInfo {
            name: name.into(),
            size: 10,
            modified: now - Duration::from_secs(age_s),
        }
    }

    #[test]
    fn never_a_live_writers_newest_or_a_referenced_segment() {
        let now = SystemTime::now();
        let segs = vec![
            seg("isesctl-100-5-0.seg2", 3600, now), // live, rotated, old: goes (framed)
            seg("isesctl-100-5-1.seg2", 3600, now), // live, newest: stays
            seg("router-100-5-0.seg", 3600, now),   // other prefix of a live pid, newest: stays
            seg("drt-200-7-0.seg", 120, now),       // dead writer, idle 2 min: goes
            seg("drt-200-7-1.seg", 10, now),        // dead writer, just written: stays for now
            seg("imsgcnv-200-9-0.seg", 3600, now),  // referenced: stays
            seg("isesctl-100-4-0.seg", 60, now),    // live, rotated, recent: stays
            seg("isesctl-100-4-1.seg", 60, now),
            seg("weird.seg", 9999, now), // not our name: stays
        ];
        let got = reclaimable(
            &segs,
            &|n| n == "imsgcnv-200-9-0.seg",
            &|pid| pid == 100,
            now,
        );
        assert_eq!(got, vec!["isesctl-100-5-0.seg2", "drt-200-7-0.seg"]);
    }
}
