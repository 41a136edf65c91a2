//! mta-store-types — the queue store's vocabulary, owned by the store (`mta-store`) and
//! carried on the wire by `mta-ipc` (which re-exports it under `mta_ipc::store` and
//! `mta_ipc::tracking`, so callers keep their paths).
//!
//! What a task asks the store (`StoreRequest`: claim with a lease, commit `Change`s with a
//! `Durability`, look up, views) and what it answers (`StoreResponse`), the views' rows,
//! the `track` cursor, and `StoreError`, the one error for everything that can go wrong
//! with the store, whether the store itself sees it (sled, its files) or a task on the
//! other side of the socket does. And `record_codec`, the versioned bytes of a
//! `MessageRecord` on disk: the store's values and the envelopes isesctl writes beside each
//! message's content in the spool, one codec for both. No sled type and no I/O here: the
//! tasks link this crate, not sled.

pub mod record_codec;

use mta_types::{Location, MessageRecord, QueueId, QueueName};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What a queue consumer takes: up to `max` messages of `queue` that are due and not
/// leased, oldest first, leased to it for `lease_ms` (the lease returns when its process
/// exits). On the wire it is the three fields in order, as the requests carried them
/// before it was a type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub queue: QueueName,
    pub max: u32,
    pub lease_ms: u64,
}

impl Claim {
    pub fn new(queue: QueueName, max: u32, lease: std::time::Duration) -> Claim {
        let lease_ms = lease.as_millis() as u64;
        Claim {
            queue,
            max,
            lease_ms,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StoreRequest {
    Claim(Claim),
    /// Apply every change in one atomic transaction; with `Durability::Durable` the reply
    /// comes once it is on stable storage. Releases the leases of the records changed.
    Commit {
        changes: Vec<Change>,
        durability: Durability,
    },
    /// `Commit`, then `Claim` in the same round trip: a queue consumer hands back one batch
    /// and takes the next. The claim happens only if the commit succeeded.
    CommitClaim {
        changes: Vec<Change>,
        durability: Durability,
        claim: Claim,
    },
    /// Give leased messages back unchanged.
    Release {
        ids: Vec<QueueId>,
    },
    Get {
        id: QueueId,
    },
    /// One page of the per-destination summary (`tell router show queue`): rows after
    /// `after`, at most `limit` (the store caps it): a view never travels in one frame.
    Destinations {
        after: Option<(Location, String)>,
        limit: u32,
    },
    /// One operation on every message for a destination (`domain`; None: every
    /// destination), carried out by the store in bounded chunks, each one durable
    /// commit. Messages a task holds are skipped and counted as busy.
    Bulk {
        op: BulkOp,
        domain: Option<String>,
    },
    /// Counts per location.
    Counts,
    /// A TLS policy state record (osesctl's MTA-STS cache, TLS-RPT counts), by name.
    PolicyGet {
        name: String,
    },
    /// Sets (`Some`) or removes a TLS policy state record; applied at once, durable with
    /// the next flush.
    PolicyPut {
        name: String,
        value: Option<Vec<u8>>,
    },
}

/// When a commit's reply may go out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Durability {
    /// After the changes are on stable storage (fdatasync'ed): for a hand-off that lets
    /// someone forget the message — the 250 to an SMTP client, an operator's command.
    Durable,
    /// As soon as the changes are applied; they reach stable storage with the next durable
    /// commit or within the store's flush interval. For a stage that moves a message along
    /// the pipeline: if a power loss takes the change away, the record is back where it
    /// was, and the stage does its work again (a duplicate at worst, never a loss). Work
    /// whose result lives outside the record (a Maildir file, spooled content) must be
    /// durable itself before it is committed this way.
    Replayable,
    /// As `Replayable` (the reply goes out once the changes are applied), for records whose
    /// message isesctl has just made durable in the spool together with the record itself
    /// (the frame's envelope): if a crash or power loss takes the change away before the
    /// store's next flush, the supervisor puts the record back from the spool at its next
    /// start (`spool_recovery`). So the 250 waits for one device flush — the spool's —
    /// instead of two in a row. It is new mail: below the store's free-space reserve it is
    /// refused, as a durable commit adding records is.
    Spooled,
}

impl Durability {
    /// Whether a commit of this kind that puts records may be new mail (refused below
    /// the store's free-space reserve, so queued mail can still move).
    pub fn adds_mail(self) -> bool {
        matches!(self, Durability::Durable | Durability::Spooled)
    }
}

/// What `Bulk` does to each message of the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BulkOp {
    /// `route`: due now (its recipients for the destination lose their retry time).
    RouteNow,
    /// `route localdelivery`: local recipients waiting in mail.box for a retry are due now.
    RouteLocalDelivery,
    /// Queued → Held.
    Hold,
    /// Held → back to the queue it came from, due now.
    Release,
    /// Its pending recipients for the destination are dropped without a report; a message
    /// with nothing left pending is removed.
    Delete,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkResult {
    pub changed: u64,
    /// Held by a task at the time (a lease): left alone, try again.
    pub busy: u64,
}

/// One (location, destination) of the queue, from the counts the store keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationRow {
    pub location: Location,
    /// The recipient domain ("" for messages with no pending recipient).
    pub domain: String,
    pub messages: u64,
    /// The earliest due time among them (ms since the epoch; 0: due now).
    pub next_due: u64,
    pub last_error: String,
}

// Sent over IPC and moved once; boxing the big variant would add an allocation per
// message for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Change {
    /// Insert or replace the record; its `location` says which queue it is in now.
    /// `Location::Done` removes it.
    Put(MessageRecord),
    Remove(QueueId),
    /// Add to statistics counters (`Mail.Inbound.Sessions`, …), atomically with the rest of
    /// the commit. Counters the store keeps itself (Mail.Delivered, …) are updated by the
    /// store as records change; tasks add only what the store cannot see.
    AddCounters(Vec<(String, u64)>),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounts {
    /// `(location label, queue, count)`.
    pub rows: Vec<(String, String, u64)>,
}

// Sent over IPC and moved once; boxing the big variant would add an allocation per
// message for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StoreResponse {
    Done,
    Claimed(Vec<MessageRecord>),
    Record(Option<MessageRecord>),
    Destinations(Vec<DestinationRow>),
    Bulk(BulkResult),
    Counts(QueueCounts),
    Policy(Option<Vec<u8>>),
    /// The request could not be carried out (the store says why); nothing changed.
    Error(String),
    /// A commit failed because the disk (or quota) is full; nothing of it is durable.
    DiskFull(String),
}

/// What `track` asks (the console parses it, the store answers it): each part optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackQuery {
    /// The return path (`from=<>` finds delivery reports).
    pub from: Option<String>,
    pub to: Option<String>,
    /// Arrived at or after (Unix ms).
    pub since_ms: Option<u64>,
    /// The Message-ID, with or without `<>`.
    pub message_id: Option<String>,
    /// Where the page starts (set by the console when it pages).
    pub after: Option<TrackCursor>,
}

/// Where a `track` page starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrackCursor {
    /// Among the messages still in the store: the ones after this queue id.
    Queued(QueueId),
    /// In the tracking log: this segment (its start, Unix ms), from this byte offset.
    Log { segment: u64, offset: u64 },
}

/// Written as the queue id, or `log-<segment>-<offset>`: what `track ... after=` takes.
impl std::fmt::Display for TrackCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrackCursor::Queued(id) => write!(f, "{id}"),
            TrackCursor::Log { segment, offset } => write!(f, "log-{segment}-{offset}"),
        }
    }
}

/// Why a text is not a [`TrackCursor`]: the text, as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a queue id or a `log-<segment>-<offset>` position")]
pub struct BadCursor(pub String);

impl std::str::FromStr for TrackCursor {
    type Err = BadCursor;
    fn from_str(s: &str) -> Result<TrackCursor, BadCursor> {
        let bad = || BadCursor(s.to_string());
        if let Some(rest) = s.strip_prefix("log-") {
            let (segment, offset) = rest.split_once('-').ok_or_else(bad)?;
            return Ok(TrackCursor::Log {
                segment: segment.parse().map_err(|_| bad())?,
                offset: offset.parse().map_err(|_| bad())?,
            });
        }
        s.parse().map(TrackCursor::Queued).map_err(|_| bad())
    }
}

/// Everything that can go wrong with the queue store: one type, whether the store sees it
/// (the supervisor hosts it) or a task that asked over the store's socket.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the queue store {path} is in use by another process (sled holds it locked): is another smtpmta running on this data_dir?")]
    Locked { path: PathBuf },
    /// sled could not open the store; sled's error arrives as the `io::Error` sled turns it
    /// into, since sled types never leave `mta-store`.
    #[error("cannot open the queue store {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A read, write or sync of sled or of the store's own files failed.
    #[error("queue store i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("record {id} cannot be read: {reason}")]
    Corrupt { id: String, reason: String },
    /// The task could not reach the store (the supervisor's socket; `mta_ipc::IpcError`).
    #[error("store unreachable: {0}")]
    Unreachable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store could not carry the request out and said why; nothing changed.
    #[error("store refused: {0}")]
    Refused(String),
    #[error("unexpected store reply: {0}")]
    Unexpected(String),
    /// A commit failed for lack of disk space (the store's answer, seen by the task).
    #[error("store disk full: {0}")]
    DiskFull(String),
}

impl StoreError {
    /// The disk (or the quota) is full: a temporary condition (452 4.3.1 at intake, which
    /// the client retries), not a local error.
    pub fn is_disk_full(&self) -> bool {
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        let io = match self {
            StoreError::DiskFull(_) => return true,
            StoreError::Io(e) | StoreError::Open { source: e, .. } => e,
            _ => return false,
        };
        // sled hands out its stored write error as a new io::Error of the same kind (no OS
        // code), so the kind decides as well.
        matches!(io.raw_os_error(), Some(ENOSPC) | Some(EDQUOT))
            || matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_is_told_apart_whichever_side_sees_it() {
        let enospc = std::io::Error::from_raw_os_error(28);
        assert!(StoreError::Io(enospc).is_disk_full());
        let kind = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert!(StoreError::Open {
            path: "q".into(),
            source: kind
        }
        .is_disk_full());
        assert!(StoreError::DiskFull("no space".into()).is_disk_full());
        assert!(!StoreError::Refused("no".into()).is_disk_full());
        let eio = std::io::Error::from_raw_os_error(5);
        assert!(!StoreError::Io(eio).is_disk_full());
    }

    #[test]
    fn track_cursors_print_as_they_parse() {
        for c in [
            TrackCursor::Log {
                segment: 17,
                offset: 4096,
            },
            TrackCursor::Queued(QueueId::from_u64(77)),
        ] {
            assert_eq!(c.to_string().parse::<TrackCursor>(), Ok(c));
        }
        assert!("log-x-1".parse::<TrackCursor>().is_err());
    }
}
