//! Intake: makes accepted messages durable, many at a time (group commit).
//!
//! One actor task owns this process's spool writer. A session's `deliver` sends its
//! message here and waits; the actor takes the first message waiting, then every other
//! one already queued (up to `MAX_BATCH`), appends each message's record (the frame's
//! envelope, in the store's record codec) and content to the spool segment, syncs the
//! spool ONCE — the one device wait of the 250 — then commits all their records to the Inbound Work Queue in ONE
//! store transaction, *spooled* (`Durability::Spooled`: the reply comes once the store has
//! applied it, and its flush follows within half a second; should a crash come first, the
//! supervisor puts the records back from the spool at its next start, `spool_recovery`),
//! and only then answers each session `250 … queued as <QID>` and kicks `imsgcnv` once.
//! Batches are committed one after the other in spool order, on one connection: the
//! store's spool mark relies on it. Nothing is acknowledged that is not durable: a spool
//! failure answers `452 4.3.1` (disk full) or `451 4.3.0`, a store failure `451 4.3.0`.
//!
//! Logs one line per accepted message: `qid=… from=<…> size=… nrcpt=… client=helo[ip]`
//! (and `sasl_username=…` when the client authenticated).

use anyhow::Context as _;
use mta_ipc::store::Change;
use mta_ipc::{Kicker, StoreClient};
use mta_smtp::Reply;
use mta_spool::SpoolWriter;
use mta_store_types::record_codec;
use mta_task::TaskContext;
use mta_types::message::{now_ms, ContentRef, Location, MessageRecord, Recipient};
use mta_types::{QueueId, QueueName};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most messages made durable by one spool sync and one store commit.
const MAX_BATCH: usize = 256;
/// Batches written to the spool that may wait for their store commit while the next one is
/// written: the commit of one batch overlaps the spool write of the next.
const COMMITS_IN_FLIGHT: usize = 4;

/// The sessions' handle on the intake actor (cheap to clone).
#[derive(Clone)]
pub struct Intake {
    tx: mpsc::Sender<Request>,
    /// Sessions accepted since the counter was last committed: added to the next batch's
    /// commit (or a periodic one), so counting costs no fsync of its own.
    sessions: Arc<AtomicU64>,
    /// Other counters (the DKIM verification results), committed the same way.
    counts: Counts,
}

/// Counters added by name (the DKIM verification results, a milter's counters), committed
/// with the next batch.
type Counts =
    Arc<std::sync::Mutex<std::collections::BTreeMap<std::borrow::Cow<'static, str>, u64>>>;

/// The counter change for the sessions and named counts since the last one, if any.
fn session_counters(sessions: &AtomicU64, counts: &Counts) -> Vec<Change> {
    let mut counters: Vec<(String, u64)> =
        std::mem::take(&mut *counts.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .map(|(name, n)| (name.into_owned(), n))
            .collect();
    match sessions.swap(0, Ordering::Relaxed) {
        0 => {}
        n => counters.push((mta_types::counters::INBOUND_SESSIONS.to_string(), n)),
    }
    if counters.is_empty() {
        Vec::new()
    } else {
        vec![Change::AddCounters(counters)]
    }
}

/// How often counted sessions are committed when no mail arrives to carry them.
const COUNTER_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

enum Request {
    Deliver(Box<Job>),
    /// Take no more messages, finish those queued, then answer.
    Close(oneshot::Sender<()>),
}

struct Job {
    /// Complete but for `content` (filled in once the content is in the spool).
    record: MessageRecord,
    content: Vec<u8>,
    reply: oneshot::Sender<Reply>,
}

impl Intake {
    /// Opens the spool writer and starts the actor.
    pub fn spawn(ctx: &TaskContext) -> anyhow::Result<Intake> {
        let dir = ctx.config().spool_dir();
        let spool = SpoolWriter::open(&dir, ctx.me().as_str())
            .with_context(|| format!("cannot open the spool in {}", dir.display()))?;
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let (commits, batches) = mpsc::channel(COMMITS_IN_FLIGHT);
        let sessions = Arc::new(AtomicU64::new(0));
        let counts: Counts = Arc::default();
        let actor = Actor {
            sessions: sessions.clone(),
            counts: Arc::clone(&counts),
            spool: Some(spool),
            store: ctx.store().clone(),
            commits: Some(commits),
            committer: tokio::spawn(commit_in_order(
                batches,
                Committer {
                    store: StoreClient::new(&ctx.config().run_dir(), ctx.me()),
                    sessions: sessions.clone(),
                    counts: Arc::clone(&counts),
                    imsgcnv: ctx.kicker(QueueName::InboundWork),
                },
            )),
            closed: None,
        };
        tokio::spawn(actor.run(rx));
        Ok(Intake {
            tx,
            sessions,
            counts,
        })
    }

    /// Counts one accepted SMTP session for `Mail.Inbound.Sessions`.
    pub fn count_session(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds one to the statistics counter `name` (committed with the next batch).
    pub fn count(&self, name: &'static str) {
        self.count_named(std::borrow::Cow::Borrowed(name));
    }

    /// `count` for a name made at run time (a milter's counters carry its name).
    pub fn count_named(&self, name: impl Into<std::borrow::Cow<'static, str>>) {
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.into())
            .or_default() += 1;
    }

    /// Makes one message durable in the Inbound Work Queue (or, `held` with a milter's
    /// quarantine reason, in Held: `release` sends it on); the reply for the end of DATA.
    pub async fn deliver(
        &self,
        qid: QueueId,
        env: &mta_smtp::Transaction,
        content: Vec<u8>,
        held: Option<String>,
    ) -> Reply {
        let (reply, answer) = oneshot::channel();
        let mut record = record_for(qid, env, content.len() as u64);
        let now = record.received_at;
        crate::handoff::apply(&mut record, env, now);
        if let Some(reason) = held {
            record.location = Location::Held {
                from: QueueName::InboundWork,
            };
            record.note = Some(reason);
        }
        let job = Job {
            record,
            content,
            reply,
        };
        if self.tx.send(Request::Deliver(Box::new(job))).await.is_err() {
            tracing::warn!(qid = %qid, "intake closed (shutting down): message not accepted");
            return Reply::local_error();
        }
        answer.await.unwrap_or_else(|_| Reply::local_error())
    }

    /// Stops taking messages and waits until those already handed in are answered.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Request::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

struct Actor {
    sessions: Arc<AtomicU64>,
    counts: Counts,
    /// Lent to a blocking thread during each batch's file I/O.
    spool: Option<SpoolWriter>,
    store: StoreClient,
    /// Batches synced in the spool, to the committer in spool order (`None` once closed).
    commits: Option<mpsc::Sender<Vec<(Job, ContentRef)>>>,
    committer: tokio::task::JoinHandle<()>,
    closed: Option<oneshot::Sender<()>>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut tick = tokio::time::interval(COUNTER_FLUSH);
        loop {
            let first = tokio::select! {
                request = rx.recv() => match request {
                    Some(r) => r,
                    None => break,
                },
                _ = tick.tick() => {
                    let counters = session_counters(&self.sessions, &self.counts);
                    if !counters.is_empty() {
                        if let Err(e) = self.store.commit_replayable(counters).await {
                            tracing::warn!(error = %e, "could not record the session counter");
                        }
                    }
                    continue;
                }
            };
            let mut batch = Vec::new();
            self.take(first, &mut batch, &mut rx);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(request) => self.take(request, &mut batch, &mut rx),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                mta_task::test_hooks::panic_point("isesctl intake");
                self.make_durable(batch).await;
            }
        }
        // Closed and drained (or every session handle is gone): the committer answers
        // what it holds, then stops.
        self.commits = None;
        let _ = (&mut self.committer).await;
        let counters = session_counters(&self.sessions, &self.counts);
        if !counters.is_empty() {
            let _ = self.store.commit(counters).await; // durable: the last counts before exit
        }
        if let Some(done) = self.closed.take() {
            let _ = done.send(());
        }
    }

    fn take(&mut self, request: Request, batch: &mut Vec<Job>, rx: &mut mpsc::Receiver<Request>) {
        match request {
            Request::Deliver(job) => batch.push(*job),
            Request::Close(done) => {
                // `recv` now yields what is already queued, then None.
                rx.close();
                self.closed = Some(done);
            }
        }
    }

    async fn make_durable(&mut self, batch: Vec<Job>) {
        let spool = self
            .spool
            .take()
            .expect("the spool writer is back after each batch");
        let (spool, written) = tokio::task::spawn_blocking(move || write_batch(spool, batch))
            .await
            .expect("spool writer thread panicked");

        self.spool = Some(spool);

        let mut synced = Vec::with_capacity(written.len());
        for (job, result) in written {
            match result {
                Ok(content) => synced.push((job, content)),
                Err(reply) => {
                    let _ = job.reply.send(reply);
                }
            }
        }
        if synced.is_empty() {
            return;
        }
        // Waits only when `COMMITS_IN_FLIGHT` batches are ahead of this one.
        if let Some(commits) = &self.commits {
            if let Err(mpsc::error::SendError(batch)) = commits.send(synced).await {
                for (job, _) in batch {
                    let _ = job.reply.send(Reply::local_error());
                }
            }
        }
    }
}

/// The committer's handles: its own store connection (one request at a time, so batches
/// reach the store in the order they were sent), the counters to carry, imsgcnv to kick.
struct Committer {
    store: StoreClient,
    sessions: Arc<AtomicU64>,
    counts: Counts,
    imsgcnv: Kicker,
}

/// Commits the batches synced in the spool, one after the other in spool order, and
/// answers their sessions.
async fn commit_in_order(mut batches: mpsc::Receiver<Vec<(Job, ContentRef)>>, c: Committer) {
    while let Some(synced) = batches.recv().await {
        let mut changes: Vec<Change> = synced
            .iter()
            .map(|(job, content)| {
                let mut record = job.record.clone();
                record.content = content.clone();
                Change::Put(record)
            })
            .collect();
        changes.extend(session_counters(&c.sessions, &c.counts));
        match c.store.commit_spooled(changes).await {
            Ok(()) => {
                for (job, _) in synced {
                    log_queued(&job.record);
                    let _ = job.reply.send(Reply::queued(job.record.id));
                }
                c.imsgcnv.kick();
            }
            Err(e) => {
                for (job, _) in synced {
                    tracing::warn!(qid = %job.record.id, error = %e, "store commit failed: message not accepted");
                    let _ = job.reply.send(if e.is_disk_full() {
                        Reply::storage_full()
                    } else {
                        Reply::local_error()
                    });
                }
            }
        }
    }
}

/// Appends every message of the batch and syncs once (blocking file I/O).
#[allow(clippy::type_complexity)]
fn write_batch(
    mut spool: SpoolWriter,
    batch: Vec<Job>,
) -> (SpoolWriter, Vec<(Job, Result<ContentRef, Reply>)>) {
    let mut written = Vec::with_capacity(batch.len());
    // Below the reserve, new mail waits (452 4.3.1) so what is queued can still move.
    if let Some(free) = mta_spool::free_space(spool.dir()).filter(|f| *f < mta_spool::RESERVE_BYTES)
    {
        for job in batch {
            tracing::warn!(qid = %job.record.id, free, reserve = mta_spool::RESERVE_BYTES, "spool file system nearly full: message not accepted");
            written.push((job, Err(Reply::storage_full())));
        }
        return (spool, written);
    }
    for mut job in batch {
        let content = std::mem::take(&mut job.content);
        // The message's first record goes beside its content, in the store's own record
        // codec: it is what the supervisor's `spool_recovery` puts back should the store
        // lose the commit, and what rebuilds a damaged store.
        let envelope = record_codec::encode(&job.record);
        let result = spool.append_with_envelope(&envelope, &[&content]).map_err(|e| {
            tracing::warn!(qid = %job.record.id, error = %e, "spool write failed: message not accepted");
            spool_reply(&e)
        });
        written.push((job, result));
    }
    if written.iter().any(|(_, r)| r.is_ok()) {
        if let Err(e) = spool.sync() {
            tracing::warn!(error = %e, "spool sync failed: batch not accepted");
            let reply = spool_reply(&e);
            for (_, result) in written.iter_mut() {
                if result.is_ok() {
                    *result = Err(reply.clone());
                }
            }
        }
    }
    (spool, written)
}

fn spool_reply(e: &mta_spool::SpoolError) -> Reply {
    if e.is_disk_full() {
        Reply::storage_full()
    } else {
        Reply::local_error()
    }
}

fn log_queued(record: &MessageRecord) {
    let env = &record.envelope;
    let from = env
        .mail_from
        .as_ref()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(
        qid = %record.id,
        from = %format_args!("<{from}>"),
        size = record.size,
        nrcpt = record.recipients.len(),
        client = %format_args!("{}[{}]", env.helo, env.client_ip),
        // Postfix's name for the SMTP AUTH identity; absent for unauthenticated clients.
        sasl_username = env.auth.as_deref(),
        "queued"
    );
}

/// The native document for a message just received, waiting for its content reference.
fn record_for(qid: QueueId, env: &mta_smtp::Transaction, size: u64) -> MessageRecord {
    let recipients = env.rcpts.iter().map(|(address, params)| {
        let mut r = Recipient::new(address.clone());
        r.orcpt = params
            .orcpt
            .as_ref()
            .map(|(kind, addr)| format!("{kind};{addr}"));
        r.notify = params.notify;
        r
    });
    let content = ContentRef {
        segment: String::new(),
        offset: 0,
        len: size,
    };
    let inbound = Location::Queue(QueueName::InboundWork);
    MessageRecord::new(
        qid,
        inbound,
        now_ms(),
        env.envelope.clone(),
        recipients.collect(),
        content,
    )
}
