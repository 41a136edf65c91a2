//! Message tracking in the store: each message's history (`mta_types::tracking`) under
//! `h` + id, and three indexes (sender, recipient, Message-ID), written in the same atomic
//! batch as the record change that causes them — so they ride the group commit: no extra
//! flush, no extra read (the history is computed from the record being written).
//!
//! Written only when something a history shows changes (arrival, parsed fields, a
//! recipient's outcome or a new attempt, a move into a parked or final state), not on
//! every move between queues. Pruned by age: keys sort by queue id, which sorts by
//! arrival, so a pass reads only the oldest entries, at most `PRUNE_CHUNK` of them.
//!
//! Value format: `b'H'`, a version byte, then the entry in postcard (the store's own
//! versioned encoding, independent of the record's).
//! - Version 1: `TrackEntry` as first defined (issue 12).

use crate::keys;
use mta_types::tracking::{normalize_message_id, TrackEntry};
use mta_types::{Location, MessageRecord, QueueId};

const TAG: u8 = b'H';
const VERSION: u8 = 1;

/// Most history entries one prune pass removes.
pub const PRUNE_CHUNK: usize = 2000;

pub fn encode(e: &TrackEntry) -> Vec<u8> {
    let mut out = vec![TAG, VERSION];
    postcard::to_io(e, &mut out).expect("postcard encodes a TrackEntry into a Vec");
    out
}

pub fn decode(bytes: &[u8]) -> Option<TrackEntry> {
    match bytes {
        [TAG, VERSION, body @ ..] => postcard::from_bytes(body).ok(),
        _ => None,
    }
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// The history writes one record change causes, added to the change's batch. `new`
/// None: the record was removed (`Change::Remove`); `new` with `Location::Done`: it
/// finished.
pub fn record_change(
    batch: &mut sled::Batch,
    old: Option<&MessageRecord>,
    new: Option<&MessageRecord>,
    now: u64,
) {
    let (record, state) = match (old, new) {
        (_, Some(n)) => (n, n.location.label()),
        (Some(o), None) => (o, "Deleted"),
        (None, None) => return,
    };
    // A quarantine placeholder (no recipients, no old record) must not overwrite the
    // history of the message it stands for.
    if old.is_none() && record.recipients.is_empty() {
        return;
    }
    let changed = match (old, new) {
        (None, _) | (_, None) => true,
        (Some(o), Some(n)) => {
            o.fields != n.fields
                || o.recipients.len() != n.recipients.len()
                || o.recipients
                    .iter()
                    .zip(&n.recipients)
                    .any(|(a, b)| a.status != b.status || a.attempts.len() != b.attempts.len())
                || (o.location != n.location && !matches!(n.location, Location::Queue(_)))
                || (o.note != n.note && !matches!(n.location, Location::Queue(_)))
        }
    };
    if !changed {
        return;
    }
    let id = record.id;
    let entry = TrackEntry::of(record, state, now);
    batch.insert(&keys::history(id)[..], encode(&entry));
    // Index keys for what is new since `old` (re-inserting an existing key is harmless,
    // but costs a write).
    if old.is_none() {
        batch.insert(
            keys::track_index(keys::BY_SENDER, &lower(&entry.from), id),
            &[][..],
        );
    }
    let known = old.map_or(0, |o| o.recipients.len().min(entry.recipients.len()));
    for r in &entry.recipients[known..] {
        batch.insert(
            keys::track_index(keys::BY_RECIPIENT, &lower(&r.address), id),
            &[][..],
        );
    }
    let old_mid = old
        .and_then(|o| o.fields.as_ref())
        .and_then(|f| f.message_id.as_deref())
        .map(normalize_message_id);
    if let Some(mid) = entry.message_id_key() {
        if old_mid.as_deref() != Some(mid.as_str()) {
            batch.insert(keys::track_index(keys::BY_MESSAGE_ID, &mid, id), &[][..]);
        }
    }
}

/// The index keys of an entry (for pruning).
fn index_keys(e: &TrackEntry) -> Vec<Vec<u8>> {
    let mut out = vec![keys::track_index(keys::BY_SENDER, &lower(&e.from), e.id)];
    for r in &e.recipients {
        out.push(keys::track_index(
            keys::BY_RECIPIENT,
            &lower(&r.address),
            e.id,
        ));
    }
    if let Some(mid) = e.message_id_key() {
        out.push(keys::track_index(keys::BY_MESSAGE_ID, &mid, e.id));
    }
    out
}

/// Removes histories of messages that arrived before `cutoff_ms`, oldest first, at most
/// `PRUNE_CHUNK`; returns how many. Reads only what it removes.
pub fn prune(tree: &sled::Tree, cutoff_ms: u64) -> Result<usize, sled::Error> {
    let end = keys::history(QueueId::first_at(cutoff_ms));
    let mut batch = sled::Batch::default();
    let mut n = 0;
    for kv in tree.range(&[keys::HISTORY][..]..&end[..]).take(PRUNE_CHUNK) {
        let (k, v) = kv?;
        if let Some(e) = decode(&v) {
            index_keys(&e).into_iter().for_each(|k| batch.remove(k));
        }
        batch.remove(k);
        n += 1;
    }
    if n > 0 {
        tree.apply_batch(batch)?;
    }
    Ok(n)
}

pub fn get(tree: &sled::Tree, id: QueueId) -> Result<Option<TrackEntry>, sled::Error> {
    Ok(tree.get(keys::history(id))?.and_then(|v| decode(&v)))
}

/// What `track` asks, normalised.
pub struct Query {
    pub from: Option<String>,
    pub to: Option<String>,
    pub since_ms: Option<u64>,
    pub message_id: Option<String>,
    pub after: Option<QueueId>,
}

/// Most index keys one page walks (a page stays bounded however few of them match).
pub const SCAN_LIMIT: usize = 20_000;

/// One page: up to `rows` matching histories, oldest first, and where the next page
/// starts (None: the end). The most selective criterion given drives the walk
/// (Message-ID, then sender, then recipient, else arrival time); the rest filter.
pub fn query(
    tree: &sled::Tree,
    q: &Query,
    rows: usize,
) -> Result<(Vec<TrackEntry>, Option<QueueId>), sled::Error> {
    let from = q.from.as_deref().map(lower);
    let to = q.to.as_deref().map(lower);
    let mid = q.message_id.as_deref().map(normalize_message_id);
    let prefix = match (&mid, &from, &to) {
        (Some(m), _, _) => keys::track_prefix(keys::BY_MESSAGE_ID, m),
        (_, Some(f), _) => keys::track_prefix(keys::BY_SENDER, f),
        (_, _, Some(t)) => keys::track_prefix(keys::BY_RECIPIENT, t),
        _ => vec![keys::HISTORY],
    };
    let first = match (q.after, q.since_ms) {
        (Some(a), _) => QueueId::from_u64(a.as_u64().saturating_add(1)),
        (None, Some(s)) => QueueId::first_at(s),
        (None, None) => QueueId::from_u64(0),
    };
    let mut start = prefix.clone();
    start.extend_from_slice(&first.to_bytes());
    let mut end = prefix;
    *end.last_mut().expect("non-empty prefix") += 1;
    let mut out = Vec::new();
    let mut walked = 0;
    for kv in tree.range(start..end) {
        let (k, v) = kv?;
        walked += 1;
        let Some(id) = keys::id_at_end(&k) else {
            continue;
        };
        let entry = if k.first() == Some(&keys::HISTORY) {
            decode(&v)
        } else {
            get(tree, id)?
        };
        if let Some(e) = entry {
            let hit = from.as_ref().is_none_or(|f| lower(&e.from) == *f)
                && to
                    .as_ref()
                    .is_none_or(|t| e.recipients.iter().any(|r| lower(&r.address) == *t))
                && mid
                    .as_ref()
                    .is_none_or(|m| e.message_id_key().as_ref() == Some(m))
                && q.since_ms.is_none_or(|s| e.received_at >= s);
            if hit {
                out.push(e);
                if out.len() >= rows {
                    return Ok((out, Some(id)));
                }
            }
        }
        if walked >= SCAN_LIMIT {
            return Ok((out, Some(id)));
        }
    }
    Ok((out, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Engine;
    use mta_ipc::store::Change;
    use mta_types::message::{now_ms, ContentRef, Envelope, ParsedFields, RECORD_SCHEMA};
    use mta_types::{QueueName, RcptStatus, Recipient};

    fn record(id: QueueId, from: &str, to: &str, mid: &str) -> MessageRecord {
        MessageRecord {
            schema: RECORD_SCHEMA,
            id,
            location: Location::Queue(QueueName::InboundWork),
            received_at: id.timestamp_ms(),
            size: 10,
            envelope: Envelope {
                mail_from: Some(from.parse().unwrap()),
                ret: None,
                envid: None,
                helo: "h".into(),
                client_ip: "127.0.0.1".into(),
                protocol: "ESMTP".into(),
                utf8: false,
                eight_bit: false,
                auth: None,
            },
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

    /// A finished message keeps its history with the final outcome; each index finds it;
    /// pages continue where the last ended; pruning removes only what is past
    /// `tracking_days`, with its index keys, a bounded chunk at a time.
    #[test]
    fn histories_are_found_paged_and_pruned_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path(), None).unwrap();
        let now = now_ms();
        let old = QueueId::first_at(now - 10 * 86_400_000);
        let new = QueueId::generate();
        let mut a = record(old, "a@x.test", "r@y.test", "m1@x");
        let b = record(new, "b@x.test", "R@y.test", "m2@x");
        e.apply(&[Change::Put(a.clone()), Change::Put(b.clone())])
            .unwrap();
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

        let by = |f: fn(&mut Query)| {
            let mut q = none();
            f(&mut q);
            query(&e, q)
        };
        assert_eq!(by(|q| q.from = Some("A@x.test".into())), vec![old]);
        assert_eq!(by(|q| q.to = Some("r@y.test".into())), vec![old, new]);
        assert_eq!(by(|q| q.message_id = Some("<M2@x>".into())), vec![new]);
        let mut since = none();
        since.since_ms = Some(now - 86_400_000);
        assert_eq!(query(&e, since), vec![new]);
        assert_eq!(by(|_| {}), vec![old, new]);
        // One row a page: the second page starts after the first.
        let (page, next) = e.track(&none(), 1).unwrap();
        assert_eq!((page[0].id, next), (old, Some(old)));
        let mut q = none();
        q.after = next;
        assert_eq!(query(&e, q), vec![new]);

        e.set_tracking_days(7);
        assert_eq!(e.prune_history(now).unwrap(), 1);
        assert!(e.history(old).unwrap().is_none());
        assert_eq!(by(|q| q.to = Some("r@y.test".into())), vec![new]);
        assert_eq!(
            by(|q| q.from = Some("a@x.test".into())),
            Vec::<QueueId>::new()
        );
        assert_eq!(e.prune_history(now).unwrap(), 0);
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
            status: "5.1.1".into(),
            reply: mta_types::outcome::Reply::remote(550, Some("5.1.1".into()), "no such user"),
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
