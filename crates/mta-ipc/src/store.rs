//! The client stub every task uses to reach the store service.
//!
//! The store itself (sled) lives in the supervisor; its requests are the operations in
//! domain terms: claim ready work from a queue with a lease, commit changes atomically and
//! durably, look records up. Those types are the store's own (`mta-store-types`); they are
//! re-exported here, under the paths the tasks have always used.

use crate::client::IpcError;
use crate::supervisor::{SupervisorClient, SupervisorRequest, SupervisorResponse};
pub use mta_store_types::{
    BulkOp, BulkResult, Change, Claim, DestinationRow, Durability, QueueCounts, StoreError,
    StoreRequest, StoreResponse,
};
use mta_types::{Location, MessageRecord, QueueId, TaskName};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// A task's handle on the store: cheap to clone, reconnects when the connection breaks.
#[derive(Clone)]
pub struct StoreClient {
    inner: Arc<Mutex<Option<SupervisorClient>>>,
    run_dir: PathBuf,
    me: TaskName,
}

/// How an IPC failure reaches a store caller: the store was unreachable.
impl From<IpcError> for StoreError {
    fn from(e: IpcError) -> StoreError {
        StoreError::Unreachable(Box::new(e))
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
        let answer = client
            .call(&SupervisorRequest::Store(request), timeout)
            .await;
        let broken = match answer {
            Ok(SupervisorResponse::Store(StoreResponse::Error(e)))
            | Ok(SupervisorResponse::Error(e)) => return Err(StoreError::Refused(e)),
            Ok(SupervisorResponse::Store(StoreResponse::DiskFull(e))) => {
                return Err(StoreError::DiskFull(e))
            }
            Ok(SupervisorResponse::Store(r)) => return Ok(r),
            Ok(other) => IpcError::Unexpected(format!("{other:?}")),
            Err(e) => e,
        };
        // A broken connection is not reused: the reply to a commit in flight is unknown,
        // and the caller retries (at-least-once).
        *guard = None;
        Err(broken.into())
    }

    /// Sends a request the store answers with `Done`.
    async fn request_done(&self, request: StoreRequest) -> Result<(), StoreError> {
        match self.request(request).await? {
            StoreResponse::Done => Ok(()),
            other => Err(StoreError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Sends a request the store answers with the records it claimed.
    async fn request_claimed(
        &self,
        request: StoreRequest,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        match self.request(request).await? {
            StoreResponse::Claimed(records) => Ok(records),
            other => Err(StoreError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn claim(&self, claim: Claim) -> Result<Vec<MessageRecord>, StoreError> {
        self.request_claimed(StoreRequest::Claim(claim)).await
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
        self.request_done(StoreRequest::Commit {
            changes,
            durability,
        })
        .await
    }

    /// Commits one batch and claims the next from `queue` in one round trip. An error
    /// means nothing is known to be committed (the caller releases and retries).
    pub async fn commit_and_claim(
        &self,
        changes: Vec<Change>,
        durability: Durability,
        claim: Claim,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        self.request_claimed(StoreRequest::CommitClaim {
            changes,
            durability,
            claim,
        })
        .await
    }

    /// Adds to statistics counters (durable with the next flush; a power loss may lose
    /// the last second of counts), e.g. `add_counters(&[("Mail.Inbound.Sessions", 1)])`.
    pub async fn add_counters(&self, counters: &[(&str, u64)]) -> Result<(), StoreError> {
        let counters = counters.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        self.commit_replayable(vec![Change::AddCounters(counters)])
            .await
    }

    pub async fn release(&self, ids: Vec<QueueId>) -> Result<(), StoreError> {
        self.request_done(StoreRequest::Release { ids }).await
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
        self.request_done(StoreRequest::PolicyPut { name, value })
            .await
    }

    pub async fn counts(&self) -> Result<QueueCounts, StoreError> {
        match self.request(StoreRequest::Counts).await? {
            StoreResponse::Counts(c) => Ok(c),
            other => Err(StoreError::Unexpected(format!("{other:?}"))),
        }
    }
}
