//! omsgcnv — Outbound Message Conversion.
//!
//! Reads: `smtp.box` (claims up to 256 messages at a time, lease 120 s). Writes: the
//! Outbound Work Queue, one store commit per batch. Kicks: `osesctl`, once per batch that
//! put anything in the Outbound Work Queue.
//!
//! The wire form of a relayed message is its spooled content byte for byte (the trace
//! header was prepended at intake), so DKIM signatures and the sender's MIME survive;
//! "conversion" is a check that the content is safe to put on the wire: content with a
//! bare CR or LF could end the DATA transfer early at the next hop (SMTP smuggling), so its
//! pending recipients fail with 5.6.0 instead. Messages made here (DSNs from `drt`,
//! submissions without Date/Message-ID) will be rendered to MIME here by a later issue.
//! 8BITMIME/SMTPUTF8 downgrades are decided per next hop by `oseshlrN`.
//!
//! DKIM (RFC 6376, 8463; `dkim_signing.rs`): a message whose From domain (else envelope
//! sender domain) has a `[[dkim]]` key is signed with relaxed/relaxed canonicalisation;
//! the `DKIM-Signature:` header is prepended to the content byte for byte in omsgcnv's own
//! spool segment (`omsgcnv-*.seg`, fsynced once per batch before the commit), and the old
//! copy is reclaimed by compaction. Counts `Mail.DKIM.Signed`.
//! Config: `data_dir` (the spool), `[[dkim]]`. Logs: `qid=… to outbound work queue`, or why not.
//! Answers: `show tasks` ("idle; converted N, failed M").

use mta_ipc::store::Change;
use mta_ipc::TaskStatus;
use mta_task::{Drain, QueueWorker, Task, TaskContext, WorkResult};
use mta_types::message::now_ms;
use mta_types::{Location, MessageRecord, QueueName, RcptStatus, TaskName};
mod dkim_signing;

use dkim_signing::Signing;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

mta_task::task_counters! {
    struct Stats {
        converted: "converted",
        failed: "failed",
    }
}

struct Omsgcnv {
    stats: Arc<Stats>,
    drain: Drain,
    /// `None` without `[[dkim]]` keys.
    signing: Option<Arc<Signing>>,
}

impl Task for Omsgcnv {
    const NAME: TaskName = TaskName::Omsgcnv;

    async fn start(ctx: &TaskContext) -> anyhow::Result<Self> {
        Ok(Omsgcnv {
            stats: Arc::new(Stats::default()),
            drain: Drain::default(),
            signing: Signing::open(ctx.config())?.map(Arc::new),
        })
    }

    async fn run(self: Arc<Self>, ctx: TaskContext) -> anyhow::Result<()> {
        self.drain.run(&*self, &ctx).await
    }

    fn status(&self) -> TaskStatus {
        let mut counters = self.stats.counters();
        if let Some(s) = &self.signing {
            counters.push(("signed".into(), s.signed()));
        }
        self.drain.status("converting", counters)
    }
}

impl QueueWorker for Omsgcnv {
    const QUEUE: QueueName = QueueName::SmtpBox;
    /// Messages put in the Outbound Work Queue.
    type Done = usize;

    async fn work(&self, ctx: &TaskContext, records: Vec<MessageRecord>) -> WorkResult<usize> {
        let spool_dir = ctx.config().spool_dir();
        let stats = self.stats.clone();
        let signing = self.signing.clone();
        let bytes = records.iter().map(|r| r.size).sum();
        mta_task::read_work(bytes, move || {
            convert_batch(records, &spool_dir, &stats, signing.as_deref())
        })
        .await
    }

    fn committed(&self, ctx: &TaskContext, to_outbound: usize) {
        if to_outbound > 0 {
            ctx.kicker(QueueName::OutboundWork).kick();
        }
    }
}

/// The batch's changes and how many messages went to the Outbound Work Queue.
fn convert_batch(
    records: Vec<MessageRecord>,
    spool_dir: &Path,
    stats: &Stats,
    signing: Option<&Signing>,
) -> (Vec<Change>, usize) {
    let mut changes = Vec::with_capacity(records.len());
    let mut to_outbound = 0;
    let mut batch = signing.map(Signing::batch);
    for mut record in records {
        let problem = match mta_spool::read(spool_dir, &record.content) {
            Ok(content) if mta_smtp::has_bare_line_ending(&content) => Some((
                mta_types::Enhanced::new(5, 6, 0),
                "content has a bare CR or LF; not relayed (SMTP smuggling risk)".to_string(),
            )),
            Ok(content) => {
                if let Some(batch) = batch.as_mut() {
                    if !record.all_final() {
                        batch.sign(&mut record, &content);
                    }
                }
                None
            }
            Err(e) if e.is_missing() => {
                mta_task::queue_worker::content_missing(&mut record, &e);
                stats.failed.fetch_add(1, Ordering::Relaxed);
                changes.push(Change::Put(record));
                continue;
            }
            // Unreadable content is not retried forever: the spool is ours and fsynced, so
            // this is damage, and the sender should hear of it.
            Err(e) => Some((
                mta_types::Enhanced::new(4, 3, 0),
                format!("queued content unreadable: {e}"),
            )),
        };
        if let Some((status, reason)) = problem {
            bounce_pending(&mut record, status, &reason);
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        if record.all_final() {
            // The shared rule: failures owed a report go to drt, the rest are removed.
            record.location = record.finished_location();
            tracing::info!("qid={} finished; to {}", record.id, record.location.label());
        } else {
            record.location = Location::Queue(QueueName::OutboundWork);
            to_outbound += 1;
            stats.converted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("qid={} to outbound work queue", record.id);
        }
        changes.push(Change::Put(record));
    }
    if let Some(batch) = batch {
        // The signed copies must be durable before the records pointing at them commit;
        // records whose copy could not be made durable are left out (retried when their
        // claim's lease ends), never sent unsigned.
        let (dropped, counters) = batch.finish();
        if !dropped.is_empty() {
            let before = changes.len();
            changes.retain(|c| !matches!(c, Change::Put(r) if dropped.contains(&r.id)));
            to_outbound -= before - changes.len();
        }
        changes.extend(counters);
    }
    (changes, to_outbound)
}

/// Fails every pending recipient of a message that cannot be sent (`status`, `reason`).
fn bounce_pending(record: &mut MessageRecord, status: mta_types::Enhanced, reason: &str) {
    let now = now_ms();
    for r in record
        .recipients
        .iter_mut()
        .filter(|r| r.status == RcptStatus::Pending)
    {
        tracing::info!(
            "qid={} to=<{}> relay=none dsn={status} status=bounced ({status} {reason})",
            record.id,
            r.address
        );
        r.status = RcptStatus::Failed {
            at: now,
            status,
            reply: mta_types::outcome::Reply::local(status, reason.to_string()),
        };
    }
}

fn main() -> ExitCode {
    mta_task::run::<Omsgcnv>()
}
