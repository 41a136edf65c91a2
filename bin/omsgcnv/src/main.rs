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
//! Config: `data_dir` (the spool). Logs: `qid=… to outbound work queue`, or why not.
//! Answers: `show tasks` ("idle; converted N, failed M").

use mta_ipc::store::Change;
use mta_ipc::TaskStatus;
use mta_task::{QueueWorker, Task, TaskContext};
use mta_types::message::now_ms;
use mta_types::{Location, MessageRecord, QueueName, RcptStatus, TaskName};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Default)]
struct Stats {
    converted: AtomicU64,
    failed: AtomicU64,
}

struct Omsgcnv {
    stats: Arc<Stats>,
    busy: AtomicBool,
}

impl Task for Omsgcnv {
    const NAME: TaskName = TaskName::Omsgcnv;

    async fn start(_ctx: &TaskContext) -> anyhow::Result<Self> {
        Ok(Omsgcnv {
            stats: Arc::new(Stats::default()),
            busy: AtomicBool::new(false),
        })
    }

    async fn run(self: Arc<Self>, ctx: TaskContext) -> anyhow::Result<()> {
        mta_task::drain(&*self, &ctx, &self.busy).await;
        Ok(())
    }

    fn status(&self) -> TaskStatus {
        let state = if self.busy.load(Ordering::Relaxed) {
            "converting"
        } else {
            "idle"
        };
        TaskStatus {
            detail: format!(
                "{state}; converted {}, failed {}",
                self.stats.converted.load(Ordering::Relaxed),
                self.stats.failed.load(Ordering::Relaxed)
            ),
            handlers: Vec::new(),
        }
    }
}

impl QueueWorker for Omsgcnv {
    const QUEUE: QueueName = QueueName::SmtpBox;
    /// Messages put in the Outbound Work Queue.
    type Done = usize;

    async fn work(
        &self,
        ctx: &TaskContext,
        records: Vec<MessageRecord>,
    ) -> Result<(Vec<Change>, usize), String> {
        let spool_dir = ctx.config().spool_dir();
        let stats = self.stats.clone();
        let bytes = records.iter().map(|r| r.size).sum();
        mta_task::read_work(bytes, move || convert_batch(records, &spool_dir, &stats)).await
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
) -> (Vec<Change>, usize) {
    let mut changes = Vec::with_capacity(records.len());
    let mut to_outbound = 0;
    for mut record in records {
        let problem = match mta_spool::read(spool_dir, &record.content) {
            Ok(content) if mta_smtp::has_bare_line_ending(&content) => Some((
                "5.6.0",
                "5.6.0 content has a bare CR or LF; not relayed (SMTP smuggling risk)".to_string(),
            )),
            Ok(_) => None,
            Err(e) if e.is_missing() => {
                record.content_missing(&e);
                tracing::error!(
                    "qid={} moved to Dead: {}",
                    record.id,
                    record.note.as_deref().unwrap_or("")
                );
                stats.failed.fetch_add(1, Ordering::Relaxed);
                changes.push(Change::Put(record));
                continue;
            }
            // Unreadable content is not retried forever: the spool is ours and fsynced, so
            // this is damage, and the sender should hear of it.
            Err(e) => Some(("4.3.0", format!("4.3.0 queued content unreadable: {e}"))),
        };
        if let Some((status, reason)) = problem {
            let now = now_ms();
            for r in record
                .recipients
                .iter_mut()
                .filter(|r| r.status == RcptStatus::Pending)
            {
                tracing::info!(
                    "qid={} to=<{}> relay=none dsn={status} status=bounced ({reason})",
                    record.id,
                    r.address
                );
                r.status = RcptStatus::Failed {
                    at: now,
                    status: status.into(),
                    reason: reason.clone(),
                };
            }
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
    (changes, to_outbound)
}

fn main() -> ExitCode {
    mta_task::run::<Omsgcnv>()
}
