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
