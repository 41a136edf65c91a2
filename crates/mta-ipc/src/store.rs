//! The store service's requests and the client stub every task uses to reach it.
//!
//! The store itself (sled) lives in the supervisor; these are the operations in domain
//! terms: claim ready work from a queue with a lease, commit changes atomically and
//! durably, look records up.

use crate::client::IpcError;
use crate::supervisor::SupervisorClient;
use mta_types::{Location, MessageRecord, QueueId, QueueName, TaskName};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StoreRequest {
    /// Up to `max` messages of `queue` that are due and not leased, oldest first, leased
    /// to the caller for `lease_ms` (the lease returns when the caller's process exits).
    Claim {
        queue: QueueName,
        max: u32,
        lease_ms: u64,
    },
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
        queue: QueueName,
        max: u32,
        lease_ms: u64,
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

/// A task's handle on the store: cheap to clone, reconnects when the connection breaks.
#[derive(Clone)]
pub struct StoreClient {
    inner: Arc<Mutex<Option<SupervisorClient>>>,
    run_dir: PathBuf,
    me: TaskName,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unreachable: {0}")]
    Ipc(#[from] IpcError),
    #[error("store refused: {0}")]
    Refused(String),
    #[error("unexpected store reply: {0}")]
    Unexpected(String),
    #[error("store disk full: {0}")]
    DiskFull(String),
}

impl StoreError {
    /// The commit failed for lack of disk space: a temporary condition (452 4.3.1 at
    /// intake), not a local error.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull(_))
    }
}

impl StoreClient {
    /// Commits wait for a disk flush; allow for a slow disk under load.
    pub const TIMEOUT: Duration = Duration::from_secs(60);

    pub fn new(run_dir: &Path, me: TaskName) -> StoreClient {
        StoreClient {
            inner: Arc::new(Mutex::new(None)),
            run_dir: run_dir.to_path_buf(),
            me,
        }
    }

    /// Bulk operations walk a whole destination (a million messages on a bad day).
    pub const BULK_TIMEOUT: Duration = Duration::from_secs(1800);

    async fn request(&self, request: StoreRequest) -> Result<StoreResponse, StoreError> {
        self.request_within(request, Self::TIMEOUT).await
    }

    async fn request_within(
        &self,
        request: StoreRequest,
        timeout: Duration,
    ) -> Result<StoreResponse, StoreError> {
        let mut guard = self.inner.lock().await;
        if guard.is_none() {
            *guard = Some(SupervisorClient::connect(&self.run_dir, self.me).await?);
        }
        let client = guard.as_mut().expect("connected above");
        match client.store(request, timeout).await {
            Ok(StoreResponse::Error(e)) => Err(StoreError::Refused(e)),
            Ok(StoreResponse::DiskFull(e)) => Err(StoreError::DiskFull(e)),
            Ok(r) => Ok(r),
            Err(e) => {
                // A broken connection is not reused: the reply to a commit in flight is
                // unknown, and the caller retries (at-least-once).
                *guard = None;
                Err(e.into())
            }
        }
    }

    pub async fn claim(
        &self,
        queue: QueueName,
        max: u32,
        lease: Duration,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        match self
            .request(StoreRequest::Claim {
                queue,
                max,
                lease_ms: lease.as_millis() as u64,
            })
            .await?
        {
            StoreResponse::Claimed(records) => Ok(records),
            other => Err(StoreError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Commits and waits until the changes are durable.
    pub async fn commit(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        self.commit_with(changes, Durability::Durable).await
    }

    /// Commits without waiting for the disk (see `Durability::Replayable`).
    pub async fn commit_replayable(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        self.commit_with(changes, Durability::Replayable).await
    }

    /// Commits the records of messages made durable in the spool (see `Durability::Spooled`).
    pub async fn commit_spooled(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        self.commit_with(changes, Durability::Spooled).await
    }

    pub async fn commit_with(
        &self,
        changes: Vec<Change>,
        durability: Durability,
    ) -> Result<(), StoreError> {
        match self
            .request(StoreRequest::Commit {
                changes,
                durability,
            })
            .await?
        {
            StoreResponse::Done => Ok(()),
            other => Err(StoreError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Commits one batch and claims the next from `queue` in one round trip. An error
    /// means nothing is known to be committed (the caller releases and retries).
    pub async fn commit_and_claim(
        &self,
        changes: Vec<Change>,
        durability: Durability,
        queue: QueueName,
        max: u32,
        lease: Duration,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        match self
            .request(StoreRequest::CommitClaim {
                changes,
                durability,
                queue,
                max,
                lease_ms: lease.as_millis() as u64,
            })
            .await?
        {
            StoreResponse::Claimed(records) => Ok(records),
            other => Err(StoreError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Adds to statistics counters (durable with the next flush; a power loss may lose
    /// the last second of counts), e.g. `add_counters(&[("Mail.Inbound.Sessions", 1)])`.
    pub async fn add_counters(&self, counters: &[(&str, u64)]) -> Result<(), StoreError> {
        let counters = counters.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        self.commit_replayable(vec![Change::AddCounters(counters)])
            .await
    }

    pub async fn release(&self, ids: Vec<QueueId>) -> Result<(), StoreError> {
        match self.request(StoreRequest::Release { ids }).await? {
            StoreResponse::Done => Ok(()),
            other => Err(StoreError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn get(&self, id: QueueId) -> Result<Option<MessageRecord>, StoreError> {
        match self.request(StoreRequest::Get { id }).await? {
            StoreResponse::Record(r) => Ok(r),
            other => Err(StoreError::Unexpected(format!("{other:?}"))),
        }
    }

    /// One page of the per-destination summary.
    pub async fn destinations(
        &self,
        after: Option<(Location, String)>,
        limit: u32,
    ) -> Result<Vec<DestinationRow>, StoreError> {
        match self
            .request(StoreRequest::Destinations { after, limit })
            .await?
        {
            StoreResponse::Destinations(r) => Ok(r),
            other => Err(StoreError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn bulk(&self, op: BulkOp, domain: Option<String>) -> Result<BulkResult, StoreError> {
        match self
            .request_within(StoreRequest::Bulk { op, domain }, Self::BULK_TIMEOUT)
            .await?
        {
            StoreResponse::Bulk(r) => Ok(r),
            other => Err(StoreError::Unexpected(format!("{other:?}"))),
        }
    }

    /// A TLS policy state record (`StoreRequest::PolicyGet`).
    pub async fn policy_get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = name.to_string();
        match self.request(StoreRequest::PolicyGet { name }).await? {
            StoreResponse::Policy(v) => Ok(v),
            other => Err(StoreError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Sets or removes a TLS policy state record (`StoreRequest::PolicyPut`).
    pub async fn policy_put(&self, name: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        let name = name.to_string();
        match self
            .request(StoreRequest::PolicyPut { name, value })
            .await?
        {
            StoreResponse::Done => Ok(()),
            other => Err(StoreError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn counts(&self) -> Result<QueueCounts, StoreError> {
        match self.request(StoreRequest::Counts).await? {
            StoreResponse::Counts(c) => Ok(c),
            other => Err(StoreError::Unexpected(format!("{other:?}"))),
        }
    }
}
