//! Message tracking in the store. A message still in the store is tracked through its
//! record: its history is computed from it when asked (`of_record`), and nothing is written
//! for it. When it leaves (delivered, relayed, reported, deleted), its final history goes
//! to the tracking log (`tracklog.rs`), kept `tracking_days`.
//!
//! So tracking costs nothing per message while it is queued (a million deferred messages
//! add no key, no page, no memory), and one append per message when it leaves, riding the
//! batch that removes its record.
//!
//! `track` answers in two parts, each walked a bounded number of entries per page (an IPC
//! frame): the records still in the store (oldest first), then the log (in the order
//! messages finished, from the first segment that can hold an arrival at or after
//! `since`). A message that finishes while an operator pages appears in both parts rather
//! than in neither.
//!
//! Entry format (in the log): `b'H'`, a version byte, then the entry in postcard (the
//! store's own versioned encoding, independent of the record's).
//! - Version 1: `TrackEntry` as first defined (issue 12).
//! - Version 2: `TrackEntry.auth` (the SMTP AUTH identity) added as the last field: postcard
//!   writes `None` as one 0 byte, so a version-1 entry is read as version 2 with that
//!   byte appended.
//!
//! Before the log, histories and three index keys per message were kept in sled under the
//! prefixes `LEGACY`; `prune_legacy` removes them a chunk at a time.

use crate::engine::sled_err;
use crate::keys;
use crate::tracklog::TrackLog;
use mta_store_types::record_codec;
use mta_store_types::TrackCursor;
use mta_types::tracking::{normalize_message_id, TrackEntry};
use mta_types::{Location, MessageRecord, QueueId};

const TAG: u8 = b'H';
const VERSION: u8 = 2;
/// The layout without `auth`; see the module's header.
const VERSION_1: u8 = 1;

/// Most legacy keys one prune pass removes.
pub const PRUNE_CHUNK: usize = 2000;

/// Key prefixes of the histories and indexes once kept in sled.
const LEGACY: [u8; 4] = [b'h', b'j', b'k', b'p'];

pub fn encode(e: &TrackEntry) -> Vec<u8> {
    let mut out = vec![TAG, VERSION];
    postcard::to_io(e, &mut out).expect("postcard encodes a TrackEntry into a Vec");
    out
}

pub fn decode(bytes: &[u8]) -> Option<TrackEntry> {
    match bytes {
        [TAG, VERSION, body @ ..] => postcard::from_bytes(body).ok(),
        [TAG, VERSION_1, body @ ..] => {
            let mut with_no_auth = body.to_vec();
            with_no_auth.push(0);
            postcard::from_bytes(&with_no_auth).ok()
        }
        _ => None,
    }
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// The history of a record in the store: its location, last changed at its latest
/// attempt or outcome (the record keeps no time of its last move).
pub fn of_record(r: &MessageRecord) -> TrackEntry {
    let last = r
        .recipients
        .iter()
        .flat_map(|rc| {
            rc.attempts
                .iter()
                .map(|a| a.at)
                .chain(rc.status.outcome().map(|(at, _)| at))
        })
        .fold(r.received_at, u64::max);
    TrackEntry::of(r, r.location.label(), last)
}

/// The final history of a record that leaves the store with this change, if it does:
/// `new` None (removed: `Deleted`) or in `Location::Done`.
pub fn finished(
    old: Option<&MessageRecord>,
    new: Option<&MessageRecord>,
    now: u64,
) -> Option<TrackEntry> {
    let (record, state) = match (old, new) {
        (_, Some(n)) if n.location == Location::Done => (n, "Done"),
        (Some(o), None) => (o, "Deleted"),
        _ => return None,
    };
    // A quarantine placeholder (an unreadable record's stand-in: no recipients) has no
    // history to keep.
    if record.recipients.is_empty() {
        return None;
    }
    Some(TrackEntry::of(record, state, now))
}

/// One pass over the legacy keys: removes at most `PRUNE_CHUNK`; returns how many.
pub fn prune_legacy(tree: &sled::Tree) -> Result<usize, sled::Error> {
    let mut batch = sled::Batch::default();
    let mut n = 0;
    for tag in LEGACY {
        for k in tree.scan_prefix([tag]).keys().take(PRUNE_CHUNK - n) {
            batch.remove(k?);
            n += 1;
        }
        if n == PRUNE_CHUNK {
            break;
        }
    }
    if n > 0 {
        tree.apply_batch(batch)?;
    }
    Ok(n)
}

/// A message's history: from its record while it is in the store, else from the log
/// (searched from the first segment written after it arrived; it is there once).
pub fn get(
    tree: &sled::Tree,
    log: &TrackLog,
    id: QueueId,
) -> Result<Option<TrackEntry>, crate::StoreError> {
    if let Some(v) = tree.get(keys::record(id)).map_err(sled_err)? {
        let r = record_codec::decode(&v).map_err(|e| crate::StoreError::Corrupt {
            id: id.to_string(),
            reason: e.to_string(),
        })?;
        return Ok(Some(of_record(&r)));
    }
    let arrived = id.timestamp_ms();
    let segments = log.segments()?;
    let mut found = None;
    for (i, &start) in segments.iter().enumerate() {
        if segments.get(i + 1).is_some_and(|&next| next <= arrived) {
            continue;
        }
        log.read(start, 0, |r| {
            if r.entry.id == id {
                found = Some(r.entry);
            }
            found.is_none()
        })?;
        if found.is_some() {
            break;
        }
    }
    Ok(found)
}

/// What `track` asks (the console's type, answered here as it comes).
pub use mta_store_types::TrackQuery as Query;

/// Most records or log entries one page reads (a page stays bounded however few of them
/// match).
pub const SCAN_LIMIT: usize = 20_000;

struct Filter {
    from: Option<String>,
    to: Option<String>,
    mid: Option<String>,
    since: Option<u64>,
}

impl Filter {
    fn hit(&self, e: &TrackEntry) -> bool {
        self.from.as_ref().is_none_or(|f| lower(&e.from) == *f)
            && self
                .to
                .as_ref()
                .is_none_or(|t| e.recipients.iter().any(|r| lower(&r.address) == *t))
            && self
                .mid
                .as_ref()
                .is_none_or(|m| e.message_id_key().as_ref() == Some(m))
            && self.since.is_none_or(|s| e.received_at >= s)
    }
}

/// One page: up to `rows` matching histories and where the next page starts (None: the
/// end). See the module's comment for the order.
pub fn query(
    tree: &sled::Tree,
    log: &TrackLog,
    q: &Query,
    rows: usize,
) -> Result<(Vec<TrackEntry>, Option<TrackCursor>), crate::StoreError> {
    let filter = Filter {
        from: q.from.as_deref().map(lower),
        to: q.to.as_deref().map(lower),
        mid: q.message_id.as_deref().map(normalize_message_id),
        since: q.since_ms,
    };
    let mut out = Vec::new();
    let mut walked = 0;
    let log_from = match q.after {
        Some(TrackCursor::Log { segment, offset }) => (segment, offset),
        queued => {
            let first = match (queued, q.since_ms) {
                (Some(TrackCursor::Queued(a)), _) => {
                    QueueId::from_u64(a.as_u64().saturating_add(1))
                }
                (_, Some(s)) => QueueId::first_at(s),
                _ => QueueId::from_u64(0),
            };
            let end = [keys::RECORD + 1];
            for kv in tree.range(&keys::record(first)[..]..&end[..]) {
                let (k, v) = kv.map_err(sled_err)?;
                walked += 1;
                let Some(id) = keys::id_at_end(&k) else {
                    continue;
                };
                match record_codec::decode(&v) {
                    Ok(r) => {
                        let e = of_record(&r);
                        if filter.hit(&e) {
                            out.push(e);
                        }
                    }
                    Err(e) => tracing::warn!("qid={id} track: {e}"),
                }
                if out.len() >= rows || walked >= SCAN_LIMIT {
                    return Ok((out, Some(TrackCursor::Queued(id))));
                }
            }
            (0, 0)
        }
    };
    let segments = log.segments()?;
    for (i, &start) in segments.iter().enumerate() {
        let next_start = segments.get(i + 1).copied();
        let offset = match start.cmp(&log_from.0) {
            std::cmp::Ordering::Less => continue,
            std::cmp::Ordering::Equal => log_from.1,
            std::cmp::Ordering::Greater => 0,
        };
        // Every entry of a segment was written before the next one started, and after its
        // message arrived.
        if let (Some(since), Some(next)) = (filter.since, next_start) {
            if next <= since {
                continue;
            }
        }
        let mut stop = None;
        log.read(start, offset, |r| {
            walked += 1;
            if filter.hit(&r.entry) {
                out.push(r.entry);
            }
            if out.len() >= rows || walked >= SCAN_LIMIT {
                stop = Some(r.next);
                return false;
            }
            true
        })?;
        if let Some(offset) = stop {
            return Ok((
                out,
                Some(TrackCursor::Log {
                    segment: start,
                    offset,
                }),
            ));
        }
    }
    Ok((out, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Engine;
    use mta_store_types::Change;
    use mta_types::message::{now_ms, ContentRef, Envelope, ParsedFields, RECORD_SCHEMA};
    use mta_types::{QueueName, RcptStatus, Recipient};

    fn record(id: QueueId, from: &str, to: &str, mid: &str) -> MessageRecord {
        MessageRecord {
            schema: RECORD_SCHEMA,
            id,
            location: Location::Queue(QueueName::InboundWork),
            received_at: id.timestamp_ms(),
            size: 10,
            envelope: Envelope::new(Some(from.parse().unwrap()), "h", "127.0.0.1", "ESMTP"),
            recipients: vec![Recipient::new(to.parse().unwrap())],
            content: ContentRef {
                segment: "s.seg".into(),
                offset: 0,
                len: 10,
            },
            fields: Some(ParsedFields {
                message_id: Some(format!("<{mid}>")),
                ..Default::default()
            }),
            trace: Default::default(),
            not_before: 0,
            note: None,
        }
    }

    fn query(e: &Engine, q: Query) -> Vec<QueueId> {
        e.track(&q, 1000).unwrap().0.iter().map(|h| h.id).collect()
    }

    fn none() -> Query {
        Query {
            from: None,
            to: None,
            since_ms: None,
            message_id: None,
            after: None,
        }
    }

    /// A queued message is tracked through its record, a finished one through the log,
    /// with its final outcome; each criterion finds both; the queued come first; pages
    /// continue where the last ended, across the two parts.
    /// An entry written before `auth` (version 1) still reads, without it; a new one
    /// keeps it.
    #[test]
    fn version_1_entries_read_without_auth() {
        let mut record = record(QueueId::generate(), "a@x.test", "b@y.test", "m@x");
        record.envelope.auth = Some("alice".into());
        let entry = of_record(&record);
        let encoded = encode(&entry);
        assert_eq!(decode(&encoded).unwrap().auth.as_deref(), Some("alice"));
        let mut v1 = entry.clone();
        v1.auth = None;
        let mut bytes = encode(&v1);
        // The version-1 layout: the same fields without the trailing `None`.
        assert_eq!(bytes.pop(), Some(0));
        bytes[1] = VERSION_1;
        assert_eq!(decode(&bytes), Some(v1));
    }

    #[test]
    fn queued_and_finished_messages_are_found_and_paged() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path(), None).unwrap();
        let now = now_ms();
        let old = QueueId::first_at(now - 10 * 86_400_000);
        let new = QueueId::generate();
        let mut a = record(old, "a@x.test", "r@y.test", "m1@x");
        let b = record(new, "b@x.test", "R@y.test", "m2@x");
        e.apply(&[Change::Put(a.clone()), Change::Put(b.clone())])
            .unwrap();
        assert_eq!(e.history(new).unwrap().unwrap().state, "Pending");
        // Delivered and removed: the history stays, with the outcome.
        a.recipients[0].status = RcptStatus::Delivered {
            at: now,
            mailbox: "r".into(),
        };
        a.location = Location::Done;
        e.apply(&[Change::Put(a)]).unwrap();
        assert!(e.get(old).unwrap().is_none());
        let h = e.history(old).unwrap().unwrap();
        assert_eq!(
            (h.state.as_str(), h.recipients[0].outcome.as_str()),
            ("Done", "delivered")
        );
        // Removed without finishing: logged as Deleted.
        e.apply(&[Change::Remove(new)]).unwrap();
        assert_eq!(e.history(new).unwrap().unwrap().state, "Deleted");
        let c = record(QueueId::generate(), "c@x.test", "r@y.test", "m3@x");
        e.apply(&[Change::Put(c.clone())]).unwrap();

        let by = |f: fn(&mut Query)| {
            let mut q = none();
            f(&mut q);
            query(&e, q)
        };
        assert_eq!(by(|q| q.from = Some("A@x.test".into())), vec![old]);
        assert_eq!(by(|q| q.to = Some("r@y.test".into())), vec![c.id, old, new]);
        assert_eq!(by(|q| q.message_id = Some("<M2@x>".into())), vec![new]);
        let mut since = none();
        since.since_ms = Some(now - 86_400_000);
        assert_eq!(query(&e, since), vec![c.id, new]);
        assert_eq!(by(|_| {}), vec![c.id, old, new]);
        // One row a page: each page starts after the last, from the queue into the log.
        let mut q = none();
        let mut seen = Vec::new();
        for _ in 0..5 {
            let (page, next) = e.track(&q, 1).unwrap();
            seen.extend(page.iter().map(|h| h.id));
            match next {
                Some(n) => q.after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, vec![c.id, old, new]);
    }

    /// Keys of the sled-kept tracking of earlier versions are removed a chunk at a time;
    /// nothing else is.
    #[test]
    fn legacy_tracking_keys_are_pruned_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path(), None).unwrap();
        let r = record(QueueId::generate(), "a@x.test", "r@y.test", "m@x");
        e.apply(&[Change::Put(r.clone())]).unwrap();
        let tree = e.tree_for_test();
        for i in 0..(PRUNE_CHUNK as u64 + 10) {
            let mut k = vec![LEGACY[(i % 4) as usize]];
            k.extend_from_slice(&i.to_be_bytes());
            tree.insert(k, &b"x"[..]).unwrap();
        }
        assert_eq!(e.prune_history(now_ms()).unwrap(), PRUNE_CHUNK);
        assert_eq!(e.prune_history(now_ms()).unwrap(), 10);
        assert_eq!(e.prune_history(now_ms()).unwrap(), 0);
        assert!(e.get(r.id).unwrap().is_some());
    }

    /// With `hold_undeliverable`, a task's move of a permanently failed message to the
    /// Reports queue is held with the reason; an operator's bounce (from Held) is not.
    #[test]
    fn hold_undeliverable_holds_a_tasks_failure_but_not_a_bounce() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path(), None).unwrap();
        let mut r = record(QueueId::generate(), "a@x.test", "r@y.test", "m@x");
        r.location = Location::Queue(QueueName::OutboundWork);
        e.apply(&[Change::Put(r.clone())]).unwrap();
        r.recipients[0].status = RcptStatus::Failed {
            at: 1,
            status: (5, 1, 1).into(),
            reply: mta_types::outcome::Reply::remote(550, Some((5, 1, 1).into()), "no such user"),
        };
        r.location = Location::Queue(QueueName::Reports);
        e.set_hold_undeliverable(true);
        e.apply(&[Change::Put(r.clone())]).unwrap();
        let held = e.get(r.id).unwrap().unwrap();
        assert!(held.is_held_undeliverable(), "{held:?}");
        assert!(held
            .note
            .unwrap()
            .contains("550 5.1.1 no such user (r@y.test)"));
        let mut bounced = e.get(r.id).unwrap().unwrap();
        bounced.location = Location::Queue(QueueName::Reports);
        e.apply(&[Change::Put(bounced)]).unwrap();
        assert_eq!(
            e.get(r.id).unwrap().unwrap().location,
            Location::Queue(QueueName::Reports)
        );
    }
}
