//! The key layout of the one sled tree. Every index is a key range, so a view or a claim
//! reads only the range it needs.
//!
//! | key | value | what |
//! |---|---|---|
//! | `m` id | record (`record_codec`) | the message record |
//! | `q` loc due id | – | the due index: each location's records by next attempt time (0 for parked locations, so they list in arrival order) |
//! | `d` loc domain 0 due id | – | the destination index: one key per distinct domain among the record's pending recipients |
//! | `D` loc domain 0 | `DestSummary` | per (location, destination): messages and the last error |
//! | `n` loc | u64 | messages per location |
//! | `g` segment | u64 | records pointing into a spool segment (compaction) |
//! | `c` segment | u64 | the spool mark: where in the segment the last frame a committed record points at ends (`spool_recovery` replays the frames after it) |
//! | `C` | – | the spool marks are kept (set at the first start that keeps them) |
//! | `s` name | u64 | statistics counters (`stats.rs`) |
//! | `v` | u8 | the layout version (`LAYOUT`) |
//! | `x` id | raw bytes | a record that could not be read, kept for the operator |
//! | `P` name | the caller's bytes | outbound TLS policy state (`policy_get`/`policy_put`): cached MTA-STS policies (`sts:<domain>`), TLS-RPT counts (`tlsrpt`) |
//! | `h` id | history (`tracking.rs`) | message tracking: one message's history, kept after it left the queue |
//! | `j` sender 0 id | – | tracking index by return path (lower case; empty for `<>`) |
//! | `k` recipient 0 id | – | tracking index by recipient (lower case) |
//! | `p` message-id 0 id | – | tracking index by Message-ID (`normalize_message_id`) |
//!
//! `loc` is one byte per location; `due` and `id` are 8 bytes big-endian, so keys sort by
//! time.

use mta_types::{Location, QueueId, QueueName};

/// Bumped when the index layout changes; `Engine::open` rebuilds the indexes from the
/// records when the stored layout differs.
pub const LAYOUT: u8 = 2;

pub const RECORD: u8 = b'm';
pub const DUE: u8 = b'q';
pub const DEST: u8 = b'd';
pub const DEST_SUMMARY: u8 = b'D';
pub const LOC_COUNT: u8 = b'n';
pub const SEGMENT_REFS: u8 = b'g';
pub const COUNTER: u8 = b's';
pub const LAYOUT_KEY: &[u8] = b"v";
pub const DAMAGED: u8 = b'x';
pub const POLICY: u8 = b'P';

/// The key of a TLS policy state record.
pub fn policy(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(POLICY);
    k.extend_from_slice(name.as_bytes());
    k
}
/// The id at the end of a key that ends with one (a record's, an index's).
pub fn id_at_end(k: &[u8]) -> Option<QueueId> {
    let n = k.len();
    Some(QueueId::from_bytes(
        k.get(n.checked_sub(8)?..)?.try_into().ok()?,
    ))
}

/// The number of the last flush (u64 big-endian), written with every flush: compared at
/// open with the mark file beside the database (`durability.rs`).
pub const FLUSH_SEQ_KEY: &[u8] = b"f";
/// Prefixes of every derived key (rebuilt from the records).
pub const DERIVED: &[u8] = &[DUE, DEST, DEST_SUMMARY, LOC_COUNT, SEGMENT_REFS, b'l'];

pub fn record(id: QueueId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = RECORD;
    k[1..].copy_from_slice(&id.to_bytes());
    k
}

pub fn id_of_record_key(k: &[u8]) -> Option<QueueId> {
    let b: [u8; 8] = k.get(1..9)?.try_into().ok()?;
    Some(QueueId::from_bytes(b))
}

pub fn damaged(id: QueueId) -> [u8; 9] {
    let mut k = record(id);
    k[0] = DAMAGED;
    k
}

/// One byte per location, so each queue or state is a contiguous key range. Held
/// messages share one byte whatever queue they came from.
pub fn location_byte(loc: Location) -> Option<u8> {
    Some(match loc {
        Location::Queue(QueueName::InboundWork) => b'i',
        Location::Queue(QueueName::MailBox) => b'm',
        Location::Queue(QueueName::SmtpBox) => b's',
        Location::Queue(QueueName::OutboundWork) => b'o',
        Location::Queue(QueueName::Reports) => b'r',
        Location::Held { .. } => b'H',
        Location::Dead => b'D',
        Location::ConversionError => b'E',
        Location::Done => return None,
    })
}

/// The inverse of `location_byte` (Held comes back as held from mail.box: the byte does
/// not say which queue; the record does).
pub fn location_of_byte(b: u8) -> Option<Location> {
    Some(match b {
        b'i' => Location::Queue(QueueName::InboundWork),
        b'm' => Location::Queue(QueueName::MailBox),
        b's' => Location::Queue(QueueName::SmtpBox),
        b'o' => Location::Queue(QueueName::OutboundWork),
        b'r' => Location::Queue(QueueName::Reports),
        b'H' => Location::Held {
            from: QueueName::MailBox,
        },
        b'D' => Location::Dead,
        b'E' => Location::ConversionError,
        _ => return None,
    })
}

pub fn due(loc: u8, due: u64, id: QueueId) -> [u8; 18] {
    let mut k = [0u8; 18];
    k[0] = DUE;
    k[1] = loc;
    k[2..10].copy_from_slice(&due.to_be_bytes());
    k[10..].copy_from_slice(&id.to_bytes());
    k
}

/// The due-index range of `loc` with due times up to and including `until`.
pub fn due_range(loc: u8, until: u64) -> (Vec<u8>, Vec<u8>) {
    let start = vec![DUE, loc];
    let mut end = vec![DUE, loc];
    match until.checked_add(1) {
        Some(next) => end.extend_from_slice(&next.to_be_bytes()),
        None => end = vec![DUE, loc + 1],
    }
    (start, end)
}

pub fn id_of_due_key(k: &[u8]) -> Option<(u64, QueueId)> {
    let due = u64::from_be_bytes(k.get(2..10)?.try_into().ok()?);
    let id = QueueId::from_bytes(k.get(10..18)?.try_into().ok()?);
    Some((due, id))
}

fn dest_prefix_into(out: &mut Vec<u8>, tag: u8, loc: u8, domain: &str) {
    out.push(tag);
    out.push(loc);
    out.extend_from_slice(domain.as_bytes());
    out.push(0);
}

pub fn dest(loc: u8, domain: &str, due: u64, id: QueueId) -> Vec<u8> {
    let mut k = Vec::with_capacity(domain.len() + 19);
    dest_prefix_into(&mut k, DEST, loc, domain);
    k.extend_from_slice(&due.to_be_bytes());
    k.extend_from_slice(&id.to_bytes());
    k
}

/// Every destination-index key of (`loc`, `domain`).
pub fn dest_prefix(loc: u8, domain: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(domain.len() + 3);
    dest_prefix_into(&mut k, DEST, loc, domain);
    k
}

pub fn id_of_dest_key(k: &[u8]) -> Option<(u64, QueueId)> {
    let n = k.len();
    let due = u64::from_be_bytes(k.get(n.checked_sub(16)?..n - 8)?.try_into().ok()?);
    let id = QueueId::from_bytes(k.get(n - 8..)?.try_into().ok()?);
    Some((due, id))
}

pub fn dest_summary(loc: u8, domain: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(domain.len() + 3);
    dest_prefix_into(&mut k, DEST_SUMMARY, loc, domain);
    k
}

/// (location byte, domain) of a `D` key.
pub fn parse_dest_summary(k: &[u8]) -> Option<(u8, String)> {
    let loc = *k.get(1)?;
    let body = k.get(2..k.len().checked_sub(1)?)?;
    Some((loc, String::from_utf8_lossy(body).into_owned()))
}

pub fn loc_count(loc: u8) -> [u8; 2] {
    [LOC_COUNT, loc]
}

pub fn segment_refs(segment: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(segment.len() + 1);
    k.push(SEGMENT_REFS);
    k.extend_from_slice(segment.as_bytes());
    k
}

pub const SPOOL_MARK: u8 = b'c';
pub const SPOOL_MARKS_KEPT: &[u8] = b"C";

pub fn spool_mark(segment: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(segment.len() + 1);
    k.push(SPOOL_MARK);
    k.extend_from_slice(segment.as_bytes());
    k
}

pub fn counter(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    k.push(COUNTER);
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn u64_value(v: &[u8]) -> u64 {
    <[u8; 8]>::try_from(v).map(u64::from_be_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_keys_sort_by_time_then_id_and_parse_back() {
        let a = QueueId::from_u64(5);
        let b = QueueId::from_u64(1);
        assert!(due(b'o', 10, a) < due(b'o', 11, b));
        assert_eq!(id_of_due_key(&due(b'o', 10, a)), Some((10, a)));
        let (start, end) = due_range(b'o', 10);
        assert!(start.as_slice() <= &due(b'o', 0, a)[..]);
        assert!(&due(b'o', 10, a)[..] < end.as_slice());
        assert!(&due(b'o', 11, a)[..] >= end.as_slice());
        assert_eq!(
            id_of_dest_key(&dest(b'o', "example.com", 7, b)),
            Some((7, b))
        );
        assert_eq!(
            parse_dest_summary(&dest_summary(b'o', "example.com")),
            Some((b'o', "example.com".to_string()))
        );
    }
}
