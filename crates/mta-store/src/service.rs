//! The store as a service: requests from every task, one committer doing group commit.

use crate::engine::Engine;
use crate::leases::Leases;
use crate::StoreError;
use mta_store_types::{
    BulkOp, BulkResult, Change, Claim, DestinationRow, Durability, StoreRequest, StoreResponse,
};
use mta_types::message::now_ms;
use mta_types::outcome::Reply;
use mta_types::{Location, MessageRecord, QueueId, QueueName, RcptStatus};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most commit requests folded into one flush.
const GROUP_LIMIT: usize = 1024;
/// Most records one claim hands out.
const CLAIM_LIMIT: u32 = 1000;
/// Most rows in one page of a view.
const PAGE_LIMIT: u32 = 1000;
/// Records rewritten per commit by a bulk operation (bounded memory, and tasks' commits
/// interleave with it).
const BULK_CHUNK: usize = 500;
/// Replayable changes reach stable storage at the latest this long after they were applied
/// (when no durable commit took them along earlier), so a power loss replays at most
/// about this much of the pipeline's work.
const REPLAYABLE_FLUSH: Duration = Duration::from_millis(500);

/// `REPLAYABLE_FLUSH`, unless a test stretches it (`SMTPMTA_TEST_HOOKS=1` with
/// `SMTPMTA_TEST_STORE_FLUSH_MS`) to kill the suite while spooled records are certainly not
/// on disk yet (tests/faults.rs checks the replay from the spool that way).
fn replayable_flush() -> Duration {
    let hooks = std::env::var("SMTPMTA_TEST_HOOKS").is_ok_and(|v| v == "1");
    std::env::var("SMTPMTA_TEST_STORE_FLUSH_MS")
        .ok()
        .filter(|_| hooks)
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(REPLAYABLE_FLUSH)
}
/// Below `mta_spool::RESERVE_BYTES` free on the store's file system, durable commits
/// that add or rewrite records (new mail from the intake, an operator's hold) are refused
/// as "disk full" before anything of them is applied, while the pipeline's own progress
/// (deliveries, removals: small, and they free space) goes on. sled stops writing for
/// good after one failed write (it keeps the error and returns it for every later
/// operation), so the store must refuse before the disk is really full.
use mta_spool::RESERVE_BYTES;

struct CommitJob {
    changes: Vec<Change>,
    durability: Durability,
    reply: oneshot::Sender<Result<(), CommitError>>,
}

/// Why a commit did not happen (nothing of it is durable).
#[derive(Clone, Debug, thiserror::Error)]
pub enum CommitError {
    /// The disk or quota is full: a temporary condition (the intake answers 452 4.3.1).
    #[error("disk full: {0}")]
    DiskFull(String),
    #[error("{0}")]
    Failed(String),
}

impl From<StoreError> for CommitError {
    fn from(e: StoreError) -> CommitError {
        if e.is_disk_full() {
            CommitError::DiskFull(e.to_string())
        } else {
            CommitError::Failed(e.to_string())
        }
    }
}

/// Why a bulk operation (`hold domain`, `route`, …) stopped; the chunks committed before
/// it stay done. `Display` is the store's or the commit's own words.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Commit(#[from] CommitError),
}

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

/// A request that failed, as the reply will say it.
enum Answer {
    DiskFull(String),
    Error(String),
}

/// Cheap to clone; every clone serves the same database.
#[derive(Clone)]
pub struct StoreService {
    inner: Arc<Inner>,
    /// Held only by the service handles (not by the committer), so the committer ends —
    /// and the database closes — when the last handle is dropped.
    commits: mpsc::Sender<CommitJob>,
}

struct Inner {
    engine: Engine,
    leases: Mutex<Leases>,
    /// Routed destinations of the Outbound Work Queue and mail.box (lock after `leases`).
    routed: Mutex<Vec<Routed>>,
    /// The store's directory, whose file system `RESERVE_BYTES` is measured on.
    dir: std::path::PathBuf,
}

/// `route <domain>` (or everything, `domain` None): its pending messages are due now,
/// whatever their retry times. Nothing is rewritten: claims walk the destination's index
/// behind the due head and hand its messages out as due (the copy handed out has the
/// domain's retry times cleared); the task's commit of the outcome writes the record.
/// So a route costs nothing per message up front, and a million-message destination
/// drains at claim speed. Kept in memory only: after a restart the retry schedule holds
/// again (a route is a nudge, as in Domino).
struct Routed {
    /// The Outbound Work Queue for `route`, mail.box for `route localdelivery`.
    loc: Location,
    domain: Option<String>,
    /// When it was routed: a recipient attempted since is not taken again.
    since: u64,
    /// The last index key walked.
    cursor: Option<Vec<u8>>,
}

/// Most index keys one claim walks in routed destinations (a claim stays bounded however
/// many of them it must skip).
const ROUTED_WALK: usize = 4 * CLAIM_LIMIT as usize;

impl StoreService {
    /// Opens the database and starts the committer thread.
    /// `data_dir`: the highest directory whose entries are synced when the store opens.
    pub fn open(dir: &Path, data_dir: Option<&Path>) -> Result<StoreService, StoreError> {
        let engine = Engine::open(dir, data_dir)?;
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            engine,
            leases: Mutex::new(Leases::default()),
            routed: Mutex::new(Vec::new()),
            dir: dir.to_path_buf(),
        });
        // Both threads start here, so a machine that cannot start them fails at open.
        let (flushes, pending) = mpsc::channel::<Vec<Applied>>();
        let flusher_inner = inner.clone();
        let flusher = std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn(move || flusher(&flusher_inner, pending))
            .map_err(StoreError::Io)?;
        let committer_inner = inner.clone();
        std::thread::Builder::new()
            .name("store-committer".into())
            .spawn(move || committer(committer_inner, rx, flushes, flusher))
            .map_err(StoreError::Io)?;
        Ok(StoreService { inner, commits: tx })
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Ends the leases of a process that exited, so its claims return to their queues.
    pub fn release_owner(&self, pid: u32) -> usize {
        self.inner.leases.lock().expect("lease lock").end_owner(pid)
    }

    /// Ends the leases of `ids` (their holder let them go, or never got them).
    pub fn end_leases(&self, ids: &[QueueId]) {
        let mut leases = self.inner.leases.lock().expect("lease lock");
        ids.iter().for_each(|id| leases.end(id));
    }

    /// Ends the leases of `ids` that `owner_pid` still holds: an answer that never
    /// reached it. A lease another process has taken since stays.
    pub fn end_leases_of(&self, owner_pid: u32, ids: &[QueueId]) {
        let mut leases = self.inner.leases.lock().expect("lease lock");
        ids.iter().for_each(|id| leases.end_if_owner(id, owner_pid));
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
            Ok(c) => self
                .commit(vec![c])
                .await
                .map_err(|e| OperateError::Store(e.to_string())),
            Err(e) => Err(OperateError::Refused(e)),
        };
        // The commit ended the lease; after a refusal or an error end it here.
        self.inner.leases.lock().expect("lease lock").end(&id);
        result
    }

    /// Applies changes and waits until they are durable.
    pub async fn commit(&self, changes: Vec<Change>) -> Result<(), CommitError> {
        self.commit_with(changes, Durability::Durable).await
    }

    /// Applies changes; waits for the disk only if `durability` says so.
    pub async fn commit_with(
        &self,
        changes: Vec<Change>,
        durability: Durability,
    ) -> Result<(), CommitError> {
        let shutting_down = || CommitError::Failed("store is shutting down".to_string());
        let (reply, rx) = oneshot::channel();
        self.commits
            .send(CommitJob {
                changes,
                durability,
                reply,
            })
            .map_err(|_| shutting_down())?;
        rx.await.map_err(|_| shutting_down())?
    }

    /// Makes everything committed so far durable (an empty durable commit: it rides the
    /// next group flush).
    pub async fn flush(&self) -> Result<(), CommitError> {
        self.commit(Vec::new()).await
    }

    pub async fn handle(&self, owner_pid: u32, request: StoreRequest) -> StoreResponse {
        let engine = &self.inner.engine;
        // A full disk has its own answer, so the intake can say 452 4.3.1.
        let committed = |r: Result<(), CommitError>| match r {
            Ok(()) => Ok(()),
            Err(CommitError::DiskFull(e)) => Err(Answer::DiskFull(e)),
            Err(CommitError::Failed(e)) => Err(Answer::Error(e)),
        };
        let result: Result<StoreResponse, Answer> = match request {
            StoreRequest::Claim(claim) => self
                .claim_reply(claim, owner_pid)
                .map_err(|e| Answer::Error(e.to_string())),
            StoreRequest::Commit {
                changes,
                durability,
            } => {
                committed(self.commit_with(changes, durability).await).map(|_| StoreResponse::Done)
            }
            StoreRequest::CommitClaim {
                changes,
                durability,
                claim,
            } => committed(self.commit_with(changes, durability).await).and_then(|()| {
                self.claim_reply(claim, owner_pid)
                    .map_err(|e| Answer::Error(e.to_string()))
            }),
            StoreRequest::Release { ids } => {
                self.end_leases(&ids);
                Ok(StoreResponse::Done)
            }
            StoreRequest::Get { id } => engine
                .get(id)
                .map(StoreResponse::Record)
                .map_err(|e| Answer::Error(e.to_string())),
            StoreRequest::Destinations { after, limit } => engine
                .destinations(after, limit.min(PAGE_LIMIT) as usize)
                .map(StoreResponse::Destinations)
                .map_err(|e| Answer::Error(e.to_string())),
            StoreRequest::Bulk { op, domain } => self
                .bulk(op, domain.as_deref())
                .await
                .map(StoreResponse::Bulk)
                .map_err(|e| Answer::Error(e.to_string())),
            StoreRequest::Counts => Ok(StoreResponse::Counts(engine.counts())),
            StoreRequest::PolicyGet { name } => engine
                .policy_get(&name)
                .map(StoreResponse::Policy)
                .map_err(|e| Answer::Error(e.to_string())),
            StoreRequest::PolicyPut { name, value } => engine
                .policy_put(&name, value)
                .map(|()| StoreResponse::Done)
                .map_err(|e| Answer::Error(e.to_string())),
        };
        result.unwrap_or_else(|answer| match answer {
            Answer::DiskFull(e) => StoreResponse::DiskFull(e),
            Answer::Error(e) => StoreResponse::Error(e),
        })
    }

    fn claim_reply(&self, claim: Claim, owner_pid: u32) -> Result<StoreResponse, StoreError> {
        self.claim(
            Location::Queue(claim.queue),
            claim.max.min(CLAIM_LIMIT),
            Duration::from_millis(claim.lease_ms),
            owner_pid,
        )
        .map(StoreResponse::Claimed)
    }

    /// Hands out due records of `loc`, oldest due first, reading only the due index's
    /// head: records waiting for a later time cost nothing here.
    fn claim(
        &self,
        loc: Location,
        max: u32,
        lease: Duration,
        owner_pid: u32,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let engine = &self.inner.engine;
        let now = Instant::now();
        let mut out = Vec::new();
        let mut damaged = Vec::new();
        {
            let mut leases = self.inner.leases.lock().expect("lease lock");
            for item in engine.due(loc, now_ms()) {
                if out.len() as u32 >= max {
                    break;
                }
                let (key, id) = item?;
                if leases.is_leased(&id, now) {
                    continue;
                }
                match engine.get(id) {
                    Ok(Some(record)) if record.location == loc => {
                        leases.grant(id, owner_pid, lease, now);
                        out.push(record);
                    }
                    Ok(_) => {}
                    Err(e) => damaged.push((id, key, e.to_string())),
                }
            }
        }
        if (out.len() as u32) < max {
            let mut leases = self.inner.leases.lock().expect("lease lock");
            let mut routed = self.inner.routed.lock().expect("routed lock");
            let mut walked = 0;
            routed.retain_mut(|r| {
                if r.loc != loc || out.len() as u32 >= max || walked >= ROUTED_WALK {
                    return true;
                }
                let keys = match engine.index_after(
                    loc,
                    r.domain.as_deref(),
                    r.cursor.as_deref(),
                    (ROUTED_WALK - walked).min((max as usize - out.len()) + 64),
                ) {
                    Ok(k) => k,
                    Err(e) => {
                        tracing::warn!("route: {e}");
                        return true;
                    }
                };
                if keys.is_empty() {
                    return false; // walked to the end: this route is done
                }
                for (key, id) in keys {
                    if out.len() as u32 >= max {
                        break;
                    }
                    walked += 1;
                    r.cursor = Some(key);
                    if leases.is_leased(&id, now) {
                        continue;
                    }
                    if let Ok(Some(mut record)) = engine.get(id) {
                        if record.location == loc && route_now(&mut record, r, now_ms()) {
                            leases.grant(id, owner_pid, lease, now);
                            out.push(record);
                        }
                    }
                }
                true
            });
        }
        for (id, key, reason) in damaged {
            engine.quarantine(id, &key, &reason)?;
        }
        Ok(out)
    }

    /// Routes a destination of `loc` (every destination when None): returns how many
    /// messages it has.
    fn route(&self, loc: Location, domain: Option<&str>) -> Result<u64, StoreError> {
        let count = match domain {
            Some(d) => self.inner.engine.destination_count(loc, d)?,
            None => self.inner.engine.count_in(loc),
        };
        let mut routed = self.inner.routed.lock().expect("routed lock");
        routed.retain(|r| r.loc != loc || r.domain.as_deref() != domain);
        routed.push(Routed {
            loc,
            domain: domain.map(str::to_string),
            since: now_ms(),
            cursor: None,
        });
        Ok(count)
    }

    /// `route`, and hold, release or delete by destination: walks the destination index
    /// of each location concerned in chunks; each chunk is one durable commit.
    pub async fn bulk(&self, op: BulkOp, domain: Option<&str>) -> Result<BulkResult, BulkError> {
        if op == BulkOp::RouteNow {
            let domain = domain.map(str::to_ascii_lowercase);
            let changed =
                self.route(Location::Queue(QueueName::OutboundWork), domain.as_deref())?;
            return Ok(BulkResult { changed, busy: 0 });
        }
        if op == BulkOp::RouteLocalDelivery {
            // Local recipients waiting for a retry stay in mail.box (the router's queue).
            let changed = self.route(Location::Queue(QueueName::MailBox), None)?;
            return Ok(BulkResult { changed, busy: 0 });
        }
        let queues = QueueName::ALL.map(Location::Queue);
        let held = [Location::Held {
            from: QueueName::MailBox,
        }];
        let locations: &[Location] = match op {
            BulkOp::RouteNow | BulkOp::RouteLocalDelivery => &[], // by a `Routed` marker (above)
            BulkOp::Hold => &queues,
            BulkOp::Release => &held,
            BulkOp::Delete => &[
                Location::Queue(QueueName::InboundWork),
                Location::Queue(QueueName::MailBox),
                Location::Queue(QueueName::SmtpBox),
                Location::Queue(QueueName::OutboundWork),
                Location::Queue(QueueName::Reports),
                Location::Held {
                    from: QueueName::MailBox,
                },
            ],
        };
        let domain = domain.map(str::to_ascii_lowercase);
        let mut result = BulkResult::default();
        for loc in locations {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let engine = &self.inner.engine;
                let keys =
                    engine.index_after(*loc, domain.as_deref(), after.as_deref(), BULK_CHUNK)?;
                let Some((last, _)) = keys.last() else {
                    break;
                };
                after = Some(last.clone());
                let ids: Vec<QueueId> = keys.into_iter().map(|(_, id)| id).collect();
                let changes = self.bulk_chunk(op, domain.as_deref(), &ids, &mut result)?;
                if !changes.is_empty() {
                    self.commit(changes).await?;
                }
            }
        }
        Ok(result)
    }

    /// The changes of one chunk; records it takes are leased to the supervisor until the
    /// commit ends the lease.
    fn bulk_chunk(
        &self,
        op: BulkOp,
        domain: Option<&str>,
        ids: &[QueueId],
        result: &mut BulkResult,
    ) -> Result<Vec<Change>, StoreError> {
        let engine = &self.inner.engine;
        let now = Instant::now();
        let now_wall = now_ms();
        let in_domain = |r: &mta_types::Recipient| {
            r.status == RcptStatus::Pending
                && domain.is_none_or(|d| r.address.domain().as_str().eq_ignore_ascii_case(d))
        };
        let mut leases = self.inner.leases.lock().expect("lease lock");
        let mut changes = Vec::new();
        for id in ids {
            if leases.is_leased(id, now) {
                result.busy += 1;
                continue;
            }
            let Some(mut r) = engine.get(*id)? else {
                continue;
            };
            let changed = match op {
                BulkOp::RouteNow | BulkOp::RouteLocalDelivery => false, // by a `Routed` marker, never rewritten here
                BulkOp::Hold => match r.location {
                    Location::Queue(from) => {
                        r.location = Location::Held { from };
                        r.note = Some(format!("held by the operator (from {from})"));
                        true
                    }
                    _ => false,
                },
                BulkOp::Release => match r.location {
                    Location::Held { from } => {
                        r.location = Location::Queue(from);
                        r.not_before = 0;
                        r.note = None;
                        true
                    }
                    _ => false,
                },
                BulkOp::Delete => {
                    let mut hit = false;
                    for rc in r.recipients.iter_mut().filter(|rc| in_domain(rc)) {
                        rc.status = RcptStatus::Failed {
                            at: now_wall,
                            status: (5, 0, 0).into(),
                            reply: Reply::local((5, 0, 0), "deleted by the operator"),
                        };
                        rc.final_reported = true;
                        hit = true;
                    }
                    if hit && r.all_final() {
                        r.location = r.finished_location();
                    }
                    hit
                }
            };
            if changed {
                leases.grant(*id, std::process::id(), Duration::from_secs(600), now);
                result.changed += 1;
                changes.push(Change::Put(r));
            }
        }
        Ok(changes)
    }

    /// For a drain (`tell smtpmta drain`): the records of `loc` after index key `after`,
    /// whatever their due time, walking at most `max` index keys; those no task holds are
    /// leased to this process for `lease` and returned. The second value is the last key
    /// walked (the next page starts after it; None: the end of `loc`).
    pub fn claim_page(
        &self,
        loc: Location,
        after: Option<&[u8]>,
        max: usize,
        lease: Duration,
    ) -> Result<(Vec<MessageRecord>, Option<Vec<u8>>), StoreError> {
        let engine = &self.inner.engine;
        let keys = engine.index_after(loc, None, after, max)?;
        let last = keys.last().map(|(k, _)| k.clone());
        let now = Instant::now();
        let mut leases = self.inner.leases.lock().expect("lease lock");
        let mut out = Vec::new();
        for (_, id) in keys {
            if leases.is_leased(&id, now) {
                continue;
            }
            // A record moved since the key was read is met again where it is now.
            if let Some(record) = engine.get(id)?.filter(|r| same_place(r.location, loc)) {
                leases.grant(id, std::process::id(), lease, now);
                out.push(record);
            }
        }
        Ok((out, last))
    }

    /// Gives records this process leased (`claim_page`) back unchanged.
    pub fn release(&self, ids: &[QueueId]) {
        self.end_leases(ids);
    }

    /// One page of the parked messages (Held, Dead, Conversion Error) of `loc`.
    pub fn parked(
        &self,
        loc: Location,
        after: Option<QueueId>,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        self.inner.engine.parked_page(loc, after, limit)
    }

    /// One page of destination rows.
    pub fn destinations(
        &self,
        after: Option<(Location, String)>,
        limit: usize,
    ) -> Result<Vec<DestinationRow>, StoreError> {
        self.inner.engine.destinations(after, limit)
    }
}

/// Held messages share one index whatever queue they came from.
fn same_place(a: Location, b: Location) -> bool {
    match (a, b) {
        (Location::Held { .. }, Location::Held { .. }) => true,
        _ => a == b,
    }
}

/// The copy of a routed message that a claim hands out: the routed domain's pending
/// recipients lose their retry times, unless they were attempted since the route. False
/// when none of them is waiting for a retry (nothing to route).
fn route_now(record: &mut MessageRecord, route: &Routed, now: u64) -> bool {
    let mut hit = false;
    for rc in record.recipients.iter_mut().filter(|rc| {
        rc.status == RcptStatus::Pending
            && route
                .domain
                .as_deref()
                .is_none_or(|d| rc.address.domain().as_str().eq_ignore_ascii_case(d))
    }) {
        let attempted_since = rc.attempts.last().is_some_and(|a| a.at >= route.since);
        if rc.next_retry.is_some_and(|t| t > now) && !attempted_since {
            rc.next_retry = None;
            hit = true;
        }
    }
    if hit {
        record.not_before = 0;
    }
    hit
}

/// Group commit, on its own thread: take every commit waiting and apply each as its own
/// atomic batch. Replayable commits are answered (and their leases ended) right away; the
/// durable ones of the group go to the flusher (`flusher`), which flushes — sled's flush
/// plus the real syncs — and answers them, while this thread applies the next group: a
/// flush no longer holds up the other stages' commits. Replayable changes not yet flushed
/// are flushed within `REPLAYABLE_FLUSH` when nothing durable comes to take them along.
/// How long without a commit counts as quiet (`on_quiet`).
const QUIET: Duration = Duration::from_secs(3);
static QUIET_HOOK: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what the committer thread runs, on itself, once the store has had no commit for
/// `QUIET` after some: the supervisor gives its allocator's free memory back there (the
/// committer is the thread that allocates and frees sled's nodes). Set once; later calls
/// are ignored.
pub fn on_quiet(hook: fn()) {
    let _ = QUIET_HOOK.set(hook);
}

fn committer(
    inner: Arc<Inner>,
    rx: mpsc::Receiver<CommitJob>,
    flushes: mpsc::Sender<Vec<Applied>>,
    flusher: std::thread::JoinHandle<()>,
) {
    // The flusher only stops once this sender is dropped; should it have died, flush here.
    let flush_now = |waiting: Vec<Applied>| {
        if let Err(mpsc::SendError(waiting)) = flushes.send(waiting) {
            flush_and_answer(&inner, waiting);
        }
    };
    let replayable_flush = replayable_flush();
    // When replayable changes were first applied since the last flush was asked for.
    let mut unflushed_since: Option<Instant> = None;
    // Whether commits came since the quiet hook last ran.
    let mut busy = false;
    loop {
        let first = match unflushed_since {
            None if busy => match rx.recv_timeout(QUIET) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    busy = false;
                    if let Some(hook) = QUIET_HOOK.get() {
                        hook();
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
            Some(since) => {
                let wait = replayable_flush.saturating_sub(since.elapsed());
                match rx.recv_timeout(wait) {
                    Ok(job) => job,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        flush_now(Vec::new());
                        unflushed_since = None;
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        };
        busy = true;
        let mut jobs = vec![first];
        while jobs.len() < GROUP_LIMIT {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut waiting: Vec<Applied> = Vec::new();
        let short_of_space = below_reserve(&inner.dir, &jobs);
        for mut job in jobs {
            let adds = |job: &CommitJob| job.changes.iter().any(|c| matches!(c, Change::Put(_)));
            let applied = match &short_of_space {
                Some(free) if job.durability.adds_mail() && adds(&job) => {
                    Err(CommitError::DiskFull(format!(
                        "{free} bytes free on the queue store's file system, below its reserve of {RESERVE_BYTES}"
                    )))
                }
                // The job's changes are moved into the batch, not copied.
                _ => inner
                    .engine
                    .apply_owned(std::mem::take(&mut job.changes))
                    .map_err(CommitError::from),
            };
            // The leases of the records a commit changed end when it is applied, for both
            // kinds: from then on a claim sees the new record (the next stage may claim it
            // before a durable commit's flush is done), and ending the leases only after
            // the flush ended the *next* stage's lease too, so the record was claimed
            // twice (seen as duplicate deliveries by tests/shaping.rs).
            if let Ok(ids) = &applied {
                let mut leases = inner.leases.lock().expect("lease lock");
                ids.iter().for_each(|id| leases.end(id));
            }
            match job.durability {
                Durability::Durable => waiting.push((applied, job.reply)),
                Durability::Replayable | Durability::Spooled => {
                    if applied.is_ok() {
                        unflushed_since.get_or_insert_with(Instant::now);
                    }
                    let _ = job.reply.send(applied.map(|_| ()));
                }
            }
        }
        if !waiting.is_empty() {
            // Everything applied so far (replayable changes too) rides this flush: it
            // starts after these applies.
            flush_now(waiting);
            unflushed_since = None;
        }
    }
    // The last handle is gone: the flusher answers what it holds, then whatever was
    // applied is made durable before the database closes.
    drop(flushes);
    let _ = flusher.join();
    if let Err(e) = inner.engine.flush_at_close() {
        tracing::error!(error = %e, "store flush at close failed");
    }
}

/// A durable commit applied and waiting for its flush: what applying it gave (the records
/// it changed) and its reply.
type Applied = (
    Result<Vec<QueueId>, CommitError>,
    oneshot::Sender<Result<(), CommitError>>,
);

/// The flusher thread: takes every group waiting, flushes once for all of them (each was
/// applied before it was sent here, so the flush covers it), then answers them.
fn flusher(inner: &Inner, pending: mpsc::Receiver<Vec<Applied>>) {
    while let Ok(first) = pending.recv() {
        let mut waiting = first;
        while let Ok(more) = pending.try_recv() {
            waiting.extend(more);
        }
        flush_and_answer(inner, waiting);
    }
}

fn flush_and_answer(inner: &Inner, waiting: Vec<Applied>) {
    let flushed = inner.engine.flush().map_err(CommitError::from);
    if let Err(e) = &flushed {
        tracing::error!(error = %e, "store flush failed; commits in this group are refused");
        exit_if_store_stopped(inner);
    }
    for (applied, reply) in waiting {
        let outcome = match (&flushed, applied) {
            // The leases ended when the commit was applied (see the committer).
            (Ok(()), Ok(_)) => Ok(()),
            (Err(e), _) => Err(e.clone()),
            (_, Err(e)) => Err(e),
        };
        let _ = reply.send(outcome);
    }
}

/// After a failed flush: sled keeps the error of a failed write and returns it for every
/// later operation, so the database will not write again in this process. Nothing
/// unacknowledged is at stake (the group's commits get no reply, so their clients retry),
/// and what was acknowledged is on disk; the supervisor exits with EX_TEMPFAIL so that its
/// service manager (etc/smtpmta.service: Restart=on-failure) starts it again on a fresh
/// open, which recovers the database to its last durable state.
fn exit_if_store_stopped(inner: &Inner) {
    if let Err(e) = inner.engine.flush() {
        tracing::error!(error = %e, "the queue store can no longer write; exiting so that the service manager restarts smtpmta");
        std::process::exit(75);
    }
}

/// The free bytes on the store's file system when a durable or spooled commit of this
/// group adds records and they are below `RESERVE_BYTES` (one statvfs per such group).
fn below_reserve(dir: &Path, jobs: &[CommitJob]) -> Option<u64> {
    let adds = jobs
        .iter()
        .any(|j| j.durability.adds_mail() && j.changes.iter().any(|c| matches!(c, Change::Put(_))));
    if !adds {
        return None;
    }
    // When it cannot be told, the write itself decides.
    let free = mta_spool::free_space(dir)?;
    if free >= RESERVE_BYTES {
        return None;
    }
    tracing::warn!(
        free,
        reserve = RESERVE_BYTES,
        "queue store file system nearly full: new mail refused (452 4.3.1)"
    );
    Some(free)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mta_types::{ContentRef, Envelope, QueueName, Recipient};

    /// Claims up to `max` due records of `queue` for `owner`, leased for a minute.
    pub(super) fn claim(
        store: &StoreService,
        queue: QueueName,
        max: u32,
        owner: u32,
    ) -> Vec<MessageRecord> {
        let lease = Duration::from_secs(60);
        store
            .claim(Location::Queue(queue), max, lease, owner)
            .unwrap()
    }

    /// How many records `queue` holds.
    pub(super) fn count(store: &StoreService, queue: QueueName) -> u64 {
        store.engine().count_in(Location::Queue(queue))
    }

    /// Opens the store at `dir` again, once sled's background threads have let go of the
    /// lock the last open held.
    pub(super) async fn reopen(dir: &Path) -> StoreService {
        loop {
            match StoreService::open(dir, None) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    pub(super) fn record(loc: Location) -> MessageRecord {
        MessageRecord {
            schema: 0,
            id: QueueId::generate(),
            location: loc,
            received_at: now_ms(),
            size: 5,
            envelope: Envelope::new(None, "h", "127.0.0.1", "ESMTP"),
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

    /// The spool mark moves with every record put, forward only, in the same batch; a
    /// spooled commit answers before any flush.
    #[tokio::test]
    async fn a_put_moves_its_segments_spool_mark_forward_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreService::open(dir.path(), None).unwrap();
        let engine = store.engine();
        assert!(!engine.spool_marks_kept().unwrap());
        assert_eq!(engine.spool_mark("s.seg").unwrap(), 0);
        let mut a = record(Location::Queue(QueueName::InboundWork));
        a.content.offset = 100;
        a.content.len = 50;
        let mut b = record(Location::Queue(QueueName::InboundWork));
        b.content.offset = 20;
        store
            .commit_with(vec![Change::Put(a.clone())], Durability::Spooled)
            .await
            .unwrap();
        assert_eq!(engine.spool_mark("s.seg").unwrap(), 150);
        store
            .commit_with(vec![Change::Put(b)], Durability::Spooled)
            .await
            .unwrap();
        assert_eq!(engine.spool_mark("s.seg").unwrap(), 150, "an older frame");
        engine
            .set_spool_marks(&[("s.seg".into(), 120), ("t.seg".into(), 7)])
            .unwrap();
        assert!(engine.spool_marks_kept().unwrap());
        assert_eq!(engine.spool_mark("s.seg").unwrap(), 150, "never back");
        assert_eq!(engine.spool_mark("t.seg").unwrap(), 7);
        engine.forget_spool_marks(&["t.seg".into()]).unwrap();
        assert_eq!(engine.spool_mark("t.seg").unwrap(), 0);
        assert!(engine
            .tree_for_test()
            .get(crate::keys::spool_mark("t.seg"))
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn claim_commit_move_and_leases() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreService::open(dir.path(), None).unwrap();
        let a = record(Location::Queue(QueueName::InboundWork));
        let b = record(Location::Queue(QueueName::InboundWork));
        store
            .commit(vec![Change::Put(a.clone()), Change::Put(b.clone())])
            .await
            .unwrap();

        let got = claim(&store, QueueName::InboundWork, 10, 1);
        assert_eq!(
            got.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![a.id, b.id]
        );
        // Leased: a second claim gets nothing.
        assert!(claim(&store, QueueName::InboundWork, 10, 2).is_empty());

        let mut moved = got[0].clone();
        moved.location = Location::Queue(QueueName::MailBox);
        store.commit(vec![Change::Put(moved)]).await.unwrap();
        assert_eq!(count(&store, QueueName::InboundWork), 1);
        assert_eq!(count(&store, QueueName::MailBox), 1);

        // The owner dies: its remaining claim returns.
        assert_eq!(store.release_owner(1), 1);
        let again = claim(&store, QueueName::InboundWork, 10, 2);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, b.id);

        let mut done = again[0].clone();
        done.location = Location::Done;
        store.commit(vec![Change::Put(done)]).await.unwrap();
        assert!(store.engine().get(b.id).unwrap().is_none());
        assert_eq!(count(&store, QueueName::InboundWork), 0);
    }

    #[tokio::test]
    async fn survives_reopen_and_respects_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut later = record(Location::Queue(QueueName::OutboundWork));
        later.not_before = now_ms() + 60_000;
        {
            let store = StoreService::open(dir.path(), None).unwrap();
            store
                .commit(vec![Change::Put(later.clone())])
                .await
                .unwrap();
        }
        let store = reopen(dir.path()).await;
        assert_eq!(
            store.engine().get(later.id).unwrap().unwrap().not_before,
            later.not_before
        );
        assert!(claim(&store, QueueName::OutboundWork, 10, 1).is_empty());
    }

    #[test]
    fn second_open_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Engine::open(dir.path(), None).unwrap();
        let err = Engine::open(dir.path(), None)
            .err()
            .expect("second open must fail");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    }
}

#[cfg(test)]
mod damage_tests {
    use super::tests::{claim, count, reopen};
    use super::*;
    use mta_types::{QueueName, Recipient};

    /// Applies `op` to the messages for `domain`; how many it changed.
    async fn bulk(store: &StoreService, op: BulkOp, domain: &str) -> u64 {
        store.bulk(op, Some(domain)).await.unwrap().changed
    }

    /// The other tests' record, from a sender (its failures are reportable), to `to`.
    fn record(loc: Location, to: &str) -> MessageRecord {
        let mut r = super::tests::record(loc);
        r.envelope.mail_from = Some("s@example.org".parse().unwrap());
        r.recipients = vec![Recipient::new(to.parse().unwrap())];
        r
    }

    /// An unreadable record goes to Dead with the reason; the rest of its queue flows.
    #[tokio::test]
    async fn an_unreadable_record_goes_to_dead_and_the_queue_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreService::open(dir.path(), None).unwrap();
        let good = record(Location::Queue(QueueName::MailBox), "a@localhost");
        let bad = record(Location::Queue(QueueName::MailBox), "b@localhost");
        store
            .commit(vec![Change::Put(bad.clone()), Change::Put(good.clone())])
            .await
            .unwrap();
        store.engine().corrupt_for_test(bad.id);
        let got = claim(&store, QueueName::MailBox, 10, 1);
        assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), vec![good.id]);
        let dead = store
            .engine()
            .get(bad.id)
            .unwrap()
            .expect("a Dead placeholder");
        assert_eq!(dead.location, Location::Dead);
        assert!(dead.note.unwrap().contains("unreadable"));
        assert_eq!(store.engine().count_in(Location::Dead), 1);
        assert_eq!(count(&store, QueueName::MailBox), 1);
    }

    /// The per-destination summaries and counts follow every change, and bulk operations
    /// walk only their destination.
    #[tokio::test]
    async fn destination_summaries_and_bulk_operations() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreService::open(dir.path(), None).unwrap();
        let later = now_ms() + 3_600_000;
        let mut changes = Vec::new();
        for i in 0..1200 {
            let to = if i % 3 == 0 { "x@b.test" } else { "x@a.test" };
            let mut r = record(Location::Queue(QueueName::OutboundWork), to);
            r.not_before = later;
            r.recipients[0].next_retry = Some(later);
            r.note = Some(format!("4.4.1 error {i}"));
            changes.push(Change::Put(r));
        }
        store.commit(changes).await.unwrap();
        let rows = store.destinations(None, 10).unwrap();
        let summary: Vec<(String, u64)> = rows
            .iter()
            .map(|r| (r.domain.clone(), r.messages))
            .collect();
        assert_eq!(
            summary,
            vec![("a.test".into(), 800), ("b.test".into(), 400)]
        );
        assert!(rows.iter().all(|r| r.next_due == later));
        // Nothing is due: a claim reads nothing.
        assert!(claim(&store, QueueName::OutboundWork, 10, 1).is_empty());
        // Route one destination: exactly its messages become due.
        let routed = store.bulk(BulkOp::RouteNow, Some("B.test")).await.unwrap();
        assert_eq!(routed.changed, 400);
        let due = claim(&store, QueueName::OutboundWork, 1000, 1);
        assert_eq!(due.len(), 400);
        store.release_owner(1);
        // Hold, then release, the other.
        assert_eq!(bulk(&store, BulkOp::Hold, "a.test").await, 800);
        assert_eq!(
            store.engine().count_in(Location::Held {
                from: QueueName::MailBox
            }),
            800
        );
        assert_eq!(bulk(&store, BulkOp::Release, "a.test").await, 800);
        assert_eq!(count(&store, QueueName::OutboundWork), 1200);
        // Delete one destination: its messages are gone, counts and summaries follow.
        assert_eq!(bulk(&store, BulkOp::Delete, "b.test").await, 400);
        assert_eq!(count(&store, QueueName::OutboundWork), 800);
        let rows = store.destinations(None, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].domain.as_str(), rows[0].messages), ("a.test", 800));
        assert_eq!(store.engine().referenced_segments().unwrap().len(), 1);
    }

    /// `route` hands each message of the destination out once, as due, without rewriting
    /// it; messages attempted since the route are not taken again, and the route ends.
    #[tokio::test]
    async fn a_route_hands_out_each_message_once_then_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreService::open(dir.path(), None).unwrap();
        let later = now_ms() + 3_600_000;
        let deferred = |to: &str| {
            let mut r = record(Location::Queue(QueueName::OutboundWork), to);
            r.not_before = later;
            r.recipients[0].next_retry = Some(later);
            r
        };
        let routed: Vec<MessageRecord> = (0..3).map(|_| deferred("x@r.test")).collect();
        let other = deferred("x@other.test");
        let mut changes: Vec<Change> = routed.iter().cloned().map(Change::Put).collect();
        changes.push(Change::Put(other.clone()));
        store.commit(changes).await.unwrap();
        let loc = Location::Queue(QueueName::OutboundWork);
        let lease = Duration::from_secs(60);
        assert!(store.claim(loc, 10, lease, 1).unwrap().is_empty());

        let result = store.bulk(BulkOp::RouteNow, Some("R.test")).await.unwrap();
        assert_eq!(result.changed, 3);
        // Nothing was rewritten: the stored records still wait for their retry.
        let stored = store.engine().get(routed[0].id).unwrap().unwrap();
        assert_eq!(stored.recipients[0].next_retry, Some(later));
        let got = store.claim(loc, 10, lease, 1).unwrap();
        let mut ids: Vec<QueueId> = got.iter().map(|r| r.id).collect();
        ids.sort();
        let mut want: Vec<QueueId> = routed.iter().map(|r| r.id).collect();
        want.sort();
        assert_eq!(ids, want, "the routed destination only, once each");
        assert!(got
            .iter()
            .all(|r| r.recipients[0].next_retry.is_none() && r.not_before == 0));

        // Tried and deferred again: they are not handed out again, and the route is over.
        let retried: Vec<Change> = got
            .into_iter()
            .map(|mut r| {
                r.recipients[0].attempts.push(mta_types::message::Attempt {
                    at: now_ms(),
                    host: "r.test".into(),
                    outcome: mta_types::DeliveryOutcome::Deferred {
                        reply: Reply::local((4, 4, 1), "connection refused"),
                        next: later,
                    },
                });
                r.recipients[0].next_retry = Some(later);
                r.not_before = later;
                Change::Put(r)
            })
            .collect();
        store.commit(retried).await.unwrap();
        assert!(store.claim(loc, 10, lease, 1).unwrap().is_empty());
        assert!(store.claim(loc, 10, lease, 1).unwrap().is_empty());
        assert!(store.inner.routed.lock().unwrap().is_empty());
        assert_eq!(store.engine().count_in(loc), 4);
    }

    /// A store written before the layout existed (or with derived keys lost) is rebuilt
    /// from its records at open.
    #[tokio::test]
    async fn indexes_are_rebuilt_from_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let r = record(Location::Queue(QueueName::MailBox), "a@localhost");
        {
            let store = StoreService::open(dir.path(), None).unwrap();
            store.commit(vec![Change::Put(r.clone())]).await.unwrap();
            store.engine().forget_layout_for_test();
        }
        let store = reopen(dir.path()).await;
        assert_eq!(count(&store, QueueName::MailBox), 1);
        let got = claim(&store, QueueName::MailBox, 10, 1);
        assert_eq!(got.len(), 1);
    }
}
