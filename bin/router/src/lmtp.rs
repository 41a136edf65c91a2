//! Delivery over LMTP (RFC 2033): the second phase of a batch, after the Maildirs are
//! durable. Each message goes to each LMTP server holding some of its mailboxes in one
//! transaction (`mta_smtp::lmtp`), and each mailbox gets its own outcome from the server's
//! reply for it: 2xx delivered, 4xx (a mailbox over quota: `452 4.2.2`) deferred on the
//! retry schedule, 5xx (`550 5.1.1` unknown) failed, so the sender gets a report.
//!
//! Durability: a recipient is marked delivered only from the server's 2xx for it, which
//! an LMTP server sends once the mailbox is written; the record commits after that. A
//! connection lost after the content leaves the unanswered recipients deferred (a retry
//! may deliver twice, never lose).
//!
//! The pool: per server, at most `[lmtp] max_connections` connections, so the messages of
//! a batch go in parallel up to that; a connection goes back to the pool after each
//! message and is reused for the next (closed after `IDLE_FOR` unused). A pooled
//! connection that fails before the content went out is replaced by a new one and the
//! message tried again at once. A server that cannot be reached or times out is taken as
//! down for `DOWN_FOR`: its messages are deferred at once meanwhile, so a dead server
//! costs one timeout per batch, not one per message (the claim on a batch lasts 120 s).
//!
//! Logs: `qid=… LMTP server … unreachable: …` (warn) and the outcome lines
//! (`local_delivery::record_outcome`). Counters: `Mail.LMTP.Connections` (opened) and
//! `Mail.LMTP.Failures` (transactions deferred for the server's failure), committed with
//! the batch; `show tasks` shows the connections opened since the router started.

use crate::local_delivery::{record_outcome, Levels, Routed, Stats};
use crate::routing::{MailboxOutcome, Routing};
use mta_config::LmtpConfig;
use mta_smtp::client::SessionError;
use mta_smtp::lmtp::{LmtpClient, LmtpMessage, Transfer};
use mta_types::outcome::Reply;
use mta_types::{ContentRef, Endpoint, Enhanced, QueueId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How long a server that failed is taken as down.
const DOWN_FOR: Duration = Duration::from_secs(10);
/// An idle connection older than this is closed instead of reused (servers drop idle
/// clients after a while; this stays under their timeouts).
const IDLE_FOR: Duration = Duration::from_secs(30);

/// The connections to every LMTP server the router delivers to.
pub struct Pool {
    config: LmtpConfig,
    hostname: String,
    servers: Mutex<HashMap<Endpoint, Arc<Server>>>,
    /// Since the last `take_counters`: connections opened, and transactions deferred
    /// because their server failed.
    opened: AtomicU64,
    failed: AtomicU64,
}

struct Server {
    endpoint: Endpoint,
    permits: Semaphore,
    idle: Mutex<Vec<(LmtpClient, Instant)>>,
    /// Until when the server is taken as down, and why.
    down: Mutex<Option<(Instant, String)>>,
}

impl Server {
    fn down(&self) -> Option<String> {
        let down = self.down.lock().expect("lmtp lock");
        down.as_ref()
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, why)| why.clone())
    }

    fn mark_down(&self, why: String) {
        *self.down.lock().expect("lmtp lock") = Some((Instant::now() + DOWN_FOR, why));
    }

    fn take_idle(&self) -> Option<LmtpClient> {
        let mut idle = self.idle.lock().expect("lmtp lock");
        while let Some((client, since)) = idle.pop() {
            if since.elapsed() < IDLE_FOR {
                return Some(client);
            }
        }
        None
    }

    /// Keeps a connection for the next message, if the server lets it be reused.
    fn keep(&self, client: LmtpClient, reusable: bool) {
        if reusable {
            let mut idle = self.idle.lock().expect("lmtp lock");
            idle.push((client, Instant::now()));
        }
    }
}

/// One message for one server: which of its LMTP mailboxes, and what to send.
struct Job {
    message: usize,
    deliveries: Vec<usize>,
    endpoint: Endpoint,
    qid: QueueId,
    mail_from: String,
    recipients: Vec<String>,
    content: ContentRef,
    eight_bit: bool,
    utf8: bool,
}

/// How a job ended: an outcome per delivery, or the content is gone.
enum JobEnd {
    Outcomes(Vec<MailboxOutcome>),
    ContentMissing(String),
}

impl Pool {
    pub fn new(config: LmtpConfig, hostname: String) -> Arc<Pool> {
        Arc::new(Pool {
            config,
            hostname,
            servers: Mutex::new(HashMap::new()),
            opened: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// The counters to commit with this batch (`Mail.LMTP.*`), reset to zero.
    pub fn take_counters(&self) -> Vec<(String, u64)> {
        [
            (mta_types::counters::LMTP_CONNECTIONS, &self.opened),
            (mta_types::counters::LMTP_FAILURES, &self.failed),
        ]
        .into_iter()
        .map(|(name, n)| (name.to_string(), n.swap(0, Ordering::Relaxed)))
        .filter(|(_, n)| *n > 0)
        .collect()
    }

    fn server(&self, endpoint: &Endpoint) -> Arc<Server> {
        let mut servers = self.servers.lock().expect("lmtp lock");
        servers
            .entry(endpoint.clone())
            .or_insert_with(|| {
                Arc::new(Server {
                    endpoint: endpoint.clone(),
                    permits: Semaphore::new(self.config.max_connections),
                    idle: Mutex::new(Vec::new()),
                    down: Mutex::new(None),
                })
            })
            .clone()
    }
}

/// Second phase: delivers every LMTP mailbox of the batch and records each outcome.
pub async fn deliver(
    pool: &Arc<Pool>,
    messages: &mut [Routed],
    spool_dir: &std::path::Path,
    routing: &Routing<'_>,
    levels: Levels,
    stats: &Stats,
    debug: u8,
) {
    let jobs = jobs(messages);
    if jobs.is_empty() {
        return;
    }
    let mut set = tokio::task::JoinSet::new();
    for job in jobs {
        let (pool, spool_dir) = (pool.clone(), spool_dir.to_path_buf());
        set.spawn(async move {
            let end = run(&pool, &job, &spool_dir, debug).await;
            (job, end)
        });
    }
    while let Some(done) = set.join_next().await {
        let (job, end) = match done {
            Ok(pair) => pair,
            // A panic in a job: its mailboxes stay Pending and due, and the next pass
            // takes them (the batch commits without an outcome for them).
            Err(e) => {
                tracing::error!("an LMTP delivery panicked: {e}");
                continue;
            }
        };
        let routed = &mut messages[job.message];
        match end {
            JobEnd::ContentMissing(why) => {
                routed.record.content_missing(&why);
                tracing::error!("qid={} moved to Dead: content missing: {why}", job.qid);
            }
            JobEnd::Outcomes(outcomes) => {
                for (&d, outcome) in job.deliveries.iter().zip(&outcomes) {
                    let delivery = routed.lmtp[d].clone();
                    record_outcome(
                        &mut routed.record,
                        &delivery,
                        outcome,
                        routing,
                        levels,
                        stats,
                    );
                }
            }
        }
    }
}

/// One job per (message, LMTP server); a message whose content is gone has none.
fn jobs(messages: &[Routed]) -> Vec<Job> {
    let mut jobs: Vec<Job> = Vec::new();
    for (m, routed) in messages.iter().enumerate() {
        let record = &routed.record;
        if record.location == mta_types::Location::Dead {
            continue;
        }
        for (d, delivery) in routed.lmtp.iter().enumerate() {
            let Some(endpoint) = &delivery.lmtp else {
                continue;
            };
            let rcpt = delivery.mailbox_address.to_string();
            if let Some(job) = jobs
                .iter_mut()
                .find(|j| j.message == m && &j.endpoint == endpoint)
            {
                job.deliveries.push(d);
                job.recipients.push(rcpt);
                continue;
            }
            jobs.push(Job {
                message: m,
                deliveries: vec![d],
                endpoint: endpoint.clone(),
                qid: record.id,
                mail_from: record.envelope.return_path(),
                recipients: vec![rcpt],
                content: record.content.clone(),
                eight_bit: record.envelope.eight_bit,
                utf8: record.envelope.utf8,
            });
        }
    }
    jobs
}

/// Delivers one job: waits for a connection slot, reads the content, sends.
async fn run(pool: &Pool, job: &Job, spool_dir: &std::path::Path, debug: u8) -> JobEnd {
    let server = pool.server(&job.endpoint);
    let all = |outcome: MailboxOutcome| JobEnd::Outcomes(vec![outcome; job.deliveries.len()]);
    let Ok(_permit) = server.permits.acquire().await else {
        return all(deferred((4, 3, 0), "the LMTP pool is closed".into()));
    };
    if let Some(why) = server.down() {
        pool.failed.fetch_add(1, Ordering::Relaxed);
        return all(deferred((4, 4, 1), why));
    }
    let (dir, content_ref) = (spool_dir.to_path_buf(), job.content.clone());
    let read = mta_task::read_work(job.content.len, move || mta_spool::read(&dir, &content_ref));
    let content = match read.await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) if e.is_missing() => return JobEnd::ContentMissing(e.to_string()),
        Ok(Err(e)) => return all(deferred((4, 3, 0), format!("cannot read the content: {e}"))),
        Err(e) => return all(deferred((4, 3, 0), e.to_string())),
    };
    let tx = LmtpMessage {
        mail_from: &job.mail_from,
        recipients: &job.recipients,
        content: &content,
        eight_bit: job.eight_bit,
        utf8: job.utf8,
    };
    match transfer(pool, &server, &tx, debug).await {
        Ok(transfer) => JobEnd::Outcomes(outcomes(pool, &server, job, transfer)),
        Err(e) => {
            let why = format!("LMTP server {} unreachable: {e}", job.endpoint);
            tracing::warn!("qid={} {why}; deferred", job.qid);
            server.mark_down(why.clone());
            pool.failed.fetch_add(1, Ordering::Relaxed);
            all(deferred((4, 4, 1), why))
        }
    }
}

/// One transaction on a pooled connection, or on a new one when there is none or the
/// pooled one fails before the content went out. `Err`: no connection could be made.
async fn transfer(
    pool: &Pool,
    server: &Server,
    tx: &LmtpMessage<'_>,
    debug: u8,
) -> Result<Transfer, SessionError> {
    if let Some(mut client) = server.take_idle() {
        let t = client.deliver(tx).await;
        if t.error.is_none() || t.content_sent || t.replies.iter().any(Option::is_some) {
            server.keep(client, t.reusable);
            return Ok(t);
        }
        // The server dropped the idle connection: a new one below.
    }
    let c = &pool.config;
    let mut client = LmtpClient::connect(
        &server.endpoint,
        c.connect_timeout,
        c.timeout,
        &pool.hostname,
        debug,
    )
    .await?;
    pool.opened.fetch_add(1, Ordering::Relaxed);
    let t = client.deliver(tx).await;
    server.keep(client, t.reusable);
    Ok(t)
}

/// Each delivery's outcome from the server's replies; a reply that never came (the
/// connection failed) defers its mailbox, logged once with the reason.
fn outcomes(pool: &Pool, server: &Server, job: &Job, t: Transfer) -> Vec<MailboxOutcome> {
    let lost = t.error.as_ref().map(|e| {
        let why = format!("lost the LMTP server {}: {e}", job.endpoint);
        tracing::warn!(
            "qid={} {why}; the recipients without a reply are deferred",
            job.qid
        );
        pool.failed.fetch_add(1, Ordering::Relaxed);
        if matches!(e, SessionError::Timeout { .. }) {
            server.mark_down(why.clone());
        }
        why
    });
    t.replies
        .iter()
        .map(|reply| match reply {
            Some(r) if r.is_completion() => {
                MailboxOutcome::Delivered(r.wire().trim_end().replace("\r\n", " "))
            }
            Some(r) if r.is_permanent() => MailboxOutcome::Failed(recorded(r)),
            Some(r) => MailboxOutcome::Deferred(recorded(r)),
            None => deferred((4, 4, 2), lost.clone().unwrap_or_default()),
        })
        .collect()
}

/// The reply as the record keeps it, with the `X.0.0` status when it has none.
fn recorded(r: &mta_smtp::Reply) -> Reply {
    let status = r.status_or(Enhanced::of_code(r.code.unwrap_or_default()));
    Reply {
        status: Some(status),
        ..r.recorded()
    }
}

fn deferred(status: (u8, u16, u16), why: String) -> MailboxOutcome {
    MailboxOutcome::Deferred(Reply::local(status, why))
}
