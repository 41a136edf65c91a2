//! One drain's run: passes over the queue until `drain stop`.
//!
//! A pass walks each location of the drain's scope a page at a time
//! (`StoreService::claim_page`: at most `PAGE` index keys, the records no task holds
//! leased to the supervisor), and feeds the records through a channel of `2 × sessions`
//! to the sessions to the peer. So memory stays bounded whatever the queue holds: a page,
//! the channel, and one message per session. A record the run cannot finish now is
//! given back unchanged (its lease ends) and met again by a later pass.
//!
//! Between passes: none when the last one made progress, a back-off (1 s doubling to
//! 30 s) when it handed nothing off (the peer down, or every message busy in a task),
//! 2 s once nothing is left. Each pass tells isesctl and osesctl again what a drain
//! wants of them, so a task restarted meanwhile is brought in line.

use super::outcome::{self, Effect};
use super::peer::PeerSession;
use super::{Phase, Progress};
use crate::Supervisor;
use mta_ipc::console::DrainScope;
use mta_ipc::store::Change;
use mta_types::message::now_ms;
use mta_types::{MessageRecord, QueueId};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Mutex};

/// Index keys walked per page.
const PAGE: usize = 200;
/// How long the supervisor holds a record it took (it commits or releases it well before).
const LEASE: Duration = Duration::from_secs(600);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const WATCH: Duration = Duration::from_secs(2);

/// What a run needs to know, fixed when it starts.
pub struct Plan {
    /// The peer as outcomes name it (`name[ip]:port`).
    pub label: String,
    pub peer: SocketAddr,
    pub include: DrainScope,
    /// This node's `[cluster] node` (XFLEET's origin).
    pub node: String,
    pub secret: String,
    pub hostname: String,
    pub spool_dir: PathBuf,
    pub sessions: usize,
}

/// Messages this run will not offer again: refused for good by the peer while parked
/// (held, dead), or with nothing pending. Grows only with such messages.
type Passed = Arc<std::sync::Mutex<HashSet<QueueId>>>;

pub async fn run(
    sup: Arc<Supervisor>,
    plan: Plan,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) {
    let plan = Arc::new(plan);
    let passed: Passed = Arc::default();
    let mut backoff = BACKOFF_MIN;
    while !*stop.borrow() {
        super::set_transports(&sup, true).await;
        progress.passes.fetch_add(1, Ordering::Relaxed);
        let before = progress.sent.load(Ordering::Relaxed);
        pass(&sup, &plan, &progress, &passed, &stop).await;
        let left = left(&sup, plan.include, &passed);
        let pause = if left == 0 {
            if progress.empty_since_ms.load(Ordering::Relaxed) == 0 {
                progress.empty_since_ms.store(now_ms(), Ordering::Relaxed);
                tracing::info!(
                    "drain to {}: nothing left to hand off ({} sent)",
                    plan.label,
                    before
                );
            }
            progress.set_phase(Phase::Empty);
            WATCH
        } else if progress.sent.load(Ordering::Relaxed) > before {
            progress.empty_since_ms.store(0, Ordering::Relaxed);
            progress.set_phase(Phase::Relaying);
            backoff = BACKOFF_MIN;
            Duration::from_millis(200)
        } else {
            progress.empty_since_ms.store(0, Ordering::Relaxed);
            let wait = backoff;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            progress.set_phase(Phase::Waiting {
                until_ms: now_ms() + wait.as_millis() as u64,
            });
            wait
        };
        let _ = tokio::time::timeout(pause, stop.wait_for(|s| *s)).await;
    }
    progress.set_phase(Phase::Stopped);
}

/// Messages still in the scope, less those this run has set aside (which are forgotten
/// once they have left the scope).
fn left(sup: &Supervisor, include: DrainScope, passed: &Passed) -> u64 {
    let engine = sup.store.engine();
    let all: u64 = super::locations(include)
        .into_iter()
        .map(|l| engine.count_in(l))
        .sum();
    let mut passed = passed.lock().expect("passed lock");
    passed.retain(
        |id| matches!(engine.get(*id), Ok(Some(r)) if super::in_scope(r.location, include)),
    );
    all.saturating_sub(passed.len() as u64)
}

/// One walk over the scope, with `plan.sessions` sessions to the peer.
async fn pass(
    sup: &Arc<Supervisor>,
    plan: &Arc<Plan>,
    progress: &Arc<Progress>,
    passed: &Passed,
    stop: &watch::Receiver<bool>,
) {
    let (tx, rx) = mpsc::channel::<MessageRecord>(plan.sessions * 2);
    let rx = Arc::new(Mutex::new(rx));
    // Set by a session that cannot reach the peer: the pass ends early.
    let broken = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..plan.sessions)
        .map(|_| {
            let worker = Worker {
                sup: sup.clone(),
                plan: plan.clone(),
                progress: progress.clone(),
                passed: passed.clone(),
                broken: broken.clone(),
                stop: stop.clone(),
            };
            tokio::spawn(worker.serve(rx.clone()))
        })
        .collect();
    'walk: for loc in super::locations(plan.include) {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = sup.store.claim_page(loc, after.as_deref(), PAGE, LEASE);
            let (records, last) = match page {
                Ok(p) => p,
                Err(e) => {
                    progress.error(format!("queue store: {e}"));
                    break 'walk;
                }
            };
            let mut records = records.into_iter();
            while let Some(record) = records.next() {
                let skip = passed.lock().expect("passed lock").contains(&record.id);
                if skip {
                    sup.store.release(&[record.id]);
                    continue;
                }
                if *stop.borrow()
                    || broken.load(Ordering::Relaxed)
                    || tx.send(record).await.is_err()
                {
                    let rest: Vec<QueueId> = records.map(|r| r.id).collect();
                    sup.store.release(&rest);
                    break 'walk;
                }
            }
            match last {
                Some(k) => after = Some(k),
                None => break,
            }
        }
    }
    drop(tx);
    for w in workers {
        let _ = w.await;
    }
}

struct Worker {
    sup: Arc<Supervisor>,
    plan: Arc<Plan>,
    progress: Arc<Progress>,
    passed: Passed,
    broken: Arc<AtomicBool>,
    stop: watch::Receiver<bool>,
}

impl Worker {
    /// Takes records until the pass ends; one session to the peer, opened when needed.
    async fn serve(self, rx: Arc<Mutex<mpsc::Receiver<MessageRecord>>>) {
        let mut session: Option<PeerSession> = None;
        loop {
            let Some(record) = rx.lock().await.recv().await else {
                break;
            };
            if *self.stop.borrow() || self.broken.load(Ordering::Relaxed) {
                self.sup.store.release(&[record.id]);
                continue;
            }
            if session.is_none() {
                match PeerSession::open(&self.plan).await {
                    Ok(s) => session = Some(s),
                    Err(e) => {
                        self.give_back(&record, format!("{} unreachable: {e:#}", self.plan.label));
                        self.broken.store(true, Ordering::Relaxed);
                        continue;
                    }
                }
            }
            let s = session.as_mut().expect("opened above");
            if !self.hand_off(s, record).await {
                session = None; // broken: the next message opens a new one
            }
        }
        if let Some(s) = session {
            s.quit().await;
        }
    }

    /// One message; false when the session is no longer usable.
    async fn hand_off(&self, session: &mut PeerSession, mut record: MessageRecord) -> bool {
        let rcpts: Vec<usize> = record
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.status.is_final())
            .map(|(i, _)| i)
            .collect();
        if rcpts.is_empty() {
            self.progress.skipped.fetch_add(1, Ordering::Relaxed);
            self.passed.lock().expect("passed lock").insert(record.id);
            self.sup.store.release(&[record.id]);
            return true;
        }
        let content = match self.read(&record).await {
            Ok(c) => c,
            Err(Some(missing)) => {
                record.content_missing(&missing);
                tracing::warn!(qid = %record.id, "qid={} drain: content missing, moved to Dead: {missing}", record.id);
                self.progress.failed.fetch_add(1, Ordering::Relaxed);
                self.commit(record).await;
                return true;
            }
            Err(None) => return true, // given back, with the error noted
        };
        let sent = session.send(&self.plan, &record, &rcpts, &content).await;
        let usable = sent.is_ok();
        let effect = outcome::apply(&mut record, &rcpts, sent, &self.plan.label, now_ms());
        match effect {
            Effect::HandedOff { ref qid } => {
                self.progress.sent.fetch_add(1, Ordering::Relaxed);
                tracing::info!(qid = %record.id, "qid={} handed off to {} as {qid}", record.id, self.plan.label);
                self.commit(record).await;
            }
            Effect::Refused { ref reason } => {
                self.progress.refused.fetch_add(1, Ordering::Relaxed);
                self.progress.error(reason.clone());
                tracing::warn!(qid = %record.id, "qid={} drain: {reason}", record.id);
                if super::in_scope(record.location, self.plan.include) {
                    self.passed.lock().expect("passed lock").insert(record.id);
                }
                self.commit(record).await;
            }
            Effect::Retry { reason } => self.give_back(&record, reason),
        }
        usable
    }

    /// The message's content; `Err(Some(why))` when it is gone for good, `Err(None)`
    /// when it could not be read now (the record was given back).
    async fn read(&self, record: &MessageRecord) -> Result<Vec<u8>, Option<String>> {
        let dir = self.plan.spool_dir.clone();
        let content = record.content.clone();
        match tokio::task::spawn_blocking(move || mta_spool::read(&dir, &content)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) if e.is_missing() => Err(Some(e.to_string())),
            Ok(Err(e)) => {
                self.give_back(record, format!("cannot read the queued content: {e}"));
                Err(None)
            }
            Err(e) => {
                self.give_back(record, format!("cannot read the queued content: {e}"));
                Err(None)
            }
        }
    }

    fn give_back(&self, record: &MessageRecord, reason: String) {
        self.progress.failed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(qid = %record.id, "qid={} drain: not handed off now: {reason}", record.id);
        self.progress.error(reason);
        self.sup.store.release(&[record.id]);
    }

    /// Durable before the message is forgotten here: the peer has it already, so a lost
    /// commit would only send it again (a duplicate, never a loss).
    async fn commit(&self, record: MessageRecord) {
        let id = record.id;
        if let Err(e) = self.sup.store.commit(vec![Change::Put(record)]).await {
            tracing::warn!(qid = %id, "qid={id} drain: commit failed (the message stays and may go twice): {e}");
            self.progress.error(format!("queue store: {e}"));
            self.sup.store.release(&[id]);
        }
    }
}
