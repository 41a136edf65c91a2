//! The store as a service: requests from every task, one committer doing group commit.

use crate::engine::{Engine, StoreError};
use crate::leases::Leases;
use mta_ipc::store::{Change, StoreRequest, StoreResponse};
use mta_types::message::now_ms;
use mta_types::{Location, MessageRecord, QueueId};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Most commit requests folded into one flush.
const GROUP_LIMIT: usize = 1024;
/// Most records one claim hands out.
const CLAIM_LIMIT: u32 = 1000;

type CommitJob = (Vec<Change>, oneshot::Sender<Result<(), String>>);

/// Why a console operation on one record did not happen.
#[derive(Debug, thiserror::Error)]
pub enum OperateError {
    #[error("no such message")]
    NotFound,
    #[error("busy: a task is working on it, try again")]
    Busy,
    #[error("{0}")]
    Refused(String),
    #[error("queue store: {0}")]
    Store(String),
}

/// Cheap to clone; every clone serves the same database.
#[derive(Clone)]
pub struct StoreService {
    inner: Arc<Inner>,
    /// Held only by the service handles (not by the committer), so the committer ends —
    /// and the database closes — when the last handle is dropped.
    commits: mpsc::UnboundedSender<CommitJob>,
}

struct Inner {
    engine: Engine,
    leases: Mutex<Leases>,
}

impl StoreService {
    /// Opens the database and starts the committer on the current tokio runtime.
    pub fn open(dir: &Path) -> Result<StoreService, StoreError> {
        let engine = Engine::open(dir)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            engine,
            leases: Mutex::new(Leases::default()),
        });
        tokio::spawn(committer(inner.clone(), rx));
        Ok(StoreService { inner, commits: tx })
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Ends the leases of a process that exited, so its claims return to their queues.
    pub fn release_owner(&self, pid: u32) -> usize {
        self.inner.leases.lock().expect("lease lock").end_owner(pid)
    }

    pub fn leased(&self) -> usize {
        self.inner.leases.lock().expect("lease lock").len()
    }

    /// For the console (`hold`, `release`, `delete`): hands record `id` to `change` and
    /// commits what it returns, unless a task holds the record (a lease): then `Busy`.
    /// Meanwhile the record is leased to this process, so no task can claim it.
    pub async fn operate(
        &self,
        id: QueueId,
        change: impl FnOnce(MessageRecord) -> Result<Change, String>,
    ) -> Result<(), OperateError> {
        let record = {
            let mut leases = self.inner.leases.lock().expect("lease lock");
            let now = Instant::now();
            if leases.is_leased(&id, now) {
                return Err(OperateError::Busy);
            }
            let record = self
                .inner
                .engine
                .get(id)
                .map_err(|e| OperateError::Store(e.to_string()))?
                .ok_or(OperateError::NotFound)?;
            leases.grant(id, std::process::id(), Duration::from_secs(60), now);
            record
        };
        let result = match change(record) {
            Ok(c) => self.commit(vec![c]).await.map_err(OperateError::Store),
            Err(e) => Err(OperateError::Refused(e)),
        };
        // The commit ended the lease; after a refusal or an error end it here.
        self.inner.leases.lock().expect("lease lock").end(&id);
        result
    }

    /// Applies changes and waits until they are durable.
    pub async fn commit(&self, changes: Vec<Change>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.commits
            .send((changes, tx))
            .map_err(|_| "store is shutting down".to_string())?;
        rx.await.map_err(|_| "store is shutting down".to_string())?
    }

    pub async fn handle(&self, owner_pid: u32, request: StoreRequest) -> StoreResponse {
        let engine = &self.inner.engine;
        let result: Result<StoreResponse, String> = match request {
            StoreRequest::Claim {
                queue,
                max,
                lease_ms,
            } => self
                .claim(
                    Location::Queue(queue),
                    max.min(CLAIM_LIMIT),
                    Duration::from_millis(lease_ms),
                    owner_pid,
                )
                .map(StoreResponse::Claimed)
                .map_err(|e| e.to_string()),
            StoreRequest::Commit { changes } => {
                self.commit(changes).await.map(|_| StoreResponse::Done)
            }
            StoreRequest::Release { ids } => {
                let mut leases = self.inner.leases.lock().expect("lease lock");
                ids.iter().for_each(|id| leases.end(id));
                Ok(StoreResponse::Done)
            }
            StoreRequest::Get { id } => engine
                .get(id)
                .map(StoreResponse::Record)
                .map_err(|e| e.to_string()),
            StoreRequest::List { queue, limit } => self
                .list(queue, limit)
                .map(StoreResponse::Records)
                .map_err(|e| e.to_string()),
            StoreRequest::Counts => Ok(StoreResponse::Counts(engine.counts())),
        };
        result.unwrap_or_else(StoreResponse::Error)
    }

    fn claim(
        &self,
        loc: Location,
        max: u32,
        lease: Duration,
        owner_pid: u32,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let engine = &self.inner.engine;
        let now = Instant::now();
        let now_wall = now_ms();
        let mut leases = self.inner.leases.lock().expect("lease lock");
        let mut out = Vec::new();
        for id in engine.ids_in(loc) {
            if out.len() as u32 >= max {
                break;
            }
            let id = id?;
            if leases.is_leased(&id, now) {
                continue;
            }
            let Some(record) = engine.get(id)? else {
                continue;
            };
            if record.not_before > now_wall || record.location != loc {
                continue;
            }
            leases.grant(id, owner_pid, lease, now);
            out.push(record);
        }
        Ok(out)
    }

    fn list(
        &self,
        queue: Option<mta_types::QueueName>,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let engine = &self.inner.engine;
        let mut out = Vec::new();
        match queue {
            Some(q) => {
                for id in engine.ids_in(Location::Queue(q)).take(limit as usize) {
                    if let Some(r) = engine.get(id?)? {
                        out.push(r);
                    }
                }
            }
            None => {
                for r in engine.records().take(limit as usize) {
                    out.push(r?);
                }
            }
        }
        Ok(out)
    }
}

/// Group commit: take every commit waiting, apply each as its own atomic batch, flush
/// once, then answer them all and end their leases.
async fn committer(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<CommitJob>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < GROUP_LIMIT {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut results: Vec<(
            Result<Vec<QueueId>, String>,
            oneshot::Sender<Result<(), String>>,
        )> = Vec::with_capacity(jobs.len());
        for (changes, reply) in jobs {
            results.push((
                inner.engine.apply(&changes).map_err(|e| e.to_string()),
                reply,
            ));
        }
        let flushed = inner.engine.flush().await.map_err(|e| e.to_string());
        if let Err(e) = &flushed {
            tracing::error!(error = %e, "store flush failed; commits in this group are refused");
        }
        let mut leases = inner.leases.lock().expect("lease lock");
        for (applied, reply) in results {
            let outcome = match (&flushed, applied) {
                (Ok(()), Ok(ids)) => {
                    ids.iter().for_each(|id| leases.end(id));
                    Ok(())
                }
                (Err(e), _) => Err(e.clone()),
                (_, Err(e)) => Err(e),
            };
            let _ = reply.send(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mta_types::{ContentRef, Envelope, QueueName, Recipient};

    fn record(loc: Location) -> MessageRecord {
        MessageRecord {
            schema: 0,
            id: QueueId::generate(),
            location: loc,
            received_at: now_ms(),
            size: 5,
            envelope: Envelope {
                mail_from: None,
                ret: None,
                envid: None,
                helo: "h".into(),
                client_ip: "127.0.0.1".into(),
                protocol: "ESMTP".into(),
                utf8: false,
                eight_bit: false,
            },
            recipients: vec![Recipient::new("a@localhost".parse().unwrap())],
            content: ContentRef {
                segment: "s.seg".into(),
                offset: 0,
                len: 5,
            },
            fields: None,
            trace: Default::default(),
            not_before: 0,
            note: None,
        }
    }

    #[tokio::test]
    async fn claim_commit_move_and_leases() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreService::open(dir.path()).unwrap();
        let a = record(Location::Queue(QueueName::InboundWork));
        let b = record(Location::Queue(QueueName::InboundWork));
        store
            .commit(vec![Change::Put(a.clone()), Change::Put(b.clone())])
            .await
            .unwrap();

        let got = store
            .claim(
                Location::Queue(QueueName::InboundWork),
                10,
                Duration::from_secs(60),
                1,
            )
            .unwrap();
        assert_eq!(
            got.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![a.id, b.id]
        );
        // Leased: a second claim gets nothing.
        assert!(store
            .claim(
                Location::Queue(QueueName::InboundWork),
                10,
                Duration::from_secs(60),
                2
            )
            .unwrap()
            .is_empty());

        let mut moved = got[0].clone();
        moved.location = Location::Queue(QueueName::MailBox);
        store.commit(vec![Change::Put(moved)]).await.unwrap();
        assert_eq!(
            store
                .engine()
                .count_in(Location::Queue(QueueName::InboundWork)),
            1
        );
        assert_eq!(
            store.engine().count_in(Location::Queue(QueueName::MailBox)),
            1
        );

        // The owner dies: its remaining claim returns.
        assert_eq!(store.release_owner(1), 1);
        let again = store
            .claim(
                Location::Queue(QueueName::InboundWork),
                10,
                Duration::from_secs(60),
                2,
            )
            .unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, b.id);

        let mut done = again[0].clone();
        done.location = Location::Done;
        store.commit(vec![Change::Put(done)]).await.unwrap();
        assert!(store.engine().get(b.id).unwrap().is_none());
        assert_eq!(
            store
                .engine()
                .count_in(Location::Queue(QueueName::InboundWork)),
            0
        );
    }

    #[tokio::test]
    async fn survives_reopen_and_respects_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut later = record(Location::Queue(QueueName::OutboundWork));
        later.not_before = now_ms() + 60_000;
        {
            let store = StoreService::open(dir.path()).unwrap();
            store
                .commit(vec![Change::Put(later.clone())])
                .await
                .unwrap();
        }
        // sled needs its background threads to let go of the lock.
        let store = loop {
            match StoreService::open(dir.path()) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        assert_eq!(
            store.engine().get(later.id).unwrap().unwrap().not_before,
            later.not_before
        );
        assert!(store
            .claim(
                Location::Queue(QueueName::OutboundWork),
                10,
                Duration::from_secs(60),
                1
            )
            .unwrap()
            .is_empty());
    }

    #[test]
    fn second_open_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Engine::open(dir.path()).unwrap();
        let err = Engine::open(dir.path())
            .err()
            .expect("second open must fail");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    }
}
