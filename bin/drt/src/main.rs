//! drt — Delivery Report Task.
//!
//! Reads: `reports` (claims up to 64 messages at a time, lease 120 s): messages whose
//! recipients need a delivery status notification — failed (NOTIFY allows failure, the
//! default), delivered or relayed with NOTIFY=SUCCESS, or still pending past
//! `[outbound] delay_warning` (put here by osesctl, see `MessageRecord::delay_report_due`).
//! Writes: one RFC 3464 report per message (`report.rs`, rendered by `mta-convert`), appended
//! to drt's own spool segment and synced once per batch; then in one store commit per batch:
//! each report as a new record from `<>` to the original sender in `mail.box` (routed like
//! any message: local → Maildir, remote → smtp.box), and each original marked reported and
//! `Done` (or, after a delay report, back in the queue it waits in). A report that cannot be
//! delivered ends `Dead` (`MessageRecord::finished_location`), never reported again.
//! Kicks: router. Config: `hostname`, `local_domains`, `[outbound] delay_warning`,
//! `queue_lifetime`.
//! Logs: `qid=… report=<dsn qid> to=<sender> action=failed nrcpt=N`.
//! Statistics: the store counts Mail.DeliveryReportsSent as the report records commit.
//! RFCs: 3464, 3461, 3834.

mod report;

use mta_ipc::TaskStatus;
use mta_spool::SpoolWriter;
use mta_task::{Task, TaskContext};
use mta_types::{QueueName, TaskName};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most messages claimed at once.
const BATCH: u32 = 64;
const LEASE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_secs(1);

struct Drt {
    spool: Arc<Mutex<SpoolWriter>>,
    sent: AtomicU64,
}

impl Task for Drt {
    const NAME: TaskName = TaskName::Drt;

    async fn start(ctx: &TaskContext) -> anyhow::Result<Self> {
        let spool = SpoolWriter::open(&ctx.config().spool_dir(), "drt")?;
        Ok(Drt {
            spool: Arc::new(Mutex::new(spool)),
            sent: AtomicU64::new(0),
        })
    }

    async fn run(self: Arc<Self>, ctx: TaskContext) -> anyhow::Result<()> {
        while ctx.next_work(POLL).await {
            while !ctx.shutting_down() && self.one_batch(&ctx).await == BATCH as usize {}
        }
        Ok(())
    }

    fn status(&self) -> TaskStatus {
        TaskStatus {
            detail: format!("idle; reports sent {}", self.sent.load(Ordering::Relaxed)),
            handlers: Vec::new(),
        }
    }
}

impl Drt {
    /// Claims, reports and commits one batch; returns how many messages it claimed.
    async fn one_batch(&self, ctx: &TaskContext) -> usize {
        let records = match ctx.store().claim(QueueName::Reports, BATCH, LEASE).await {
            Ok(r) if r.is_empty() => return 0,
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot claim from {}: {e}", QueueName::Reports);
                return 0;
            }
        };
        let claimed = records.len();
        let ids: Vec<_> = records.iter().map(|r| r.id).collect();
        let (task_ctx, spool) = (ctx.clone(), self.spool.clone());
        let batch = tokio::task::spawn_blocking(move || {
            let mut spool = spool.lock().expect("spool lock");
            report::report_batch(records, task_ctx.config(), &mut spool)
        })
        .await
        .expect("reporting panicked");
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("cannot write delivery reports: {e}; retrying later");
                let _ = ctx.store().release(ids).await;
                return 0;
            }
        };
        match ctx.store().commit(batch.changes).await {
            Ok(()) => {
                self.sent.fetch_add(batch.reports as u64, Ordering::Relaxed);
                for line in batch.log {
                    tracing::info!("{line}");
                }
                if batch.reports > 0 {
                    ctx.kicker(QueueName::MailBox).kick();
                }
                if batch.to_outbound > 0 {
                    ctx.kicker(QueueName::OutboundWork).kick();
                }
            }
            Err(e) => {
                // The reports are in the spool but not recorded: they are written again
                // (the orphaned bytes are reclaimed by compaction).
                tracing::warn!("cannot commit {claimed} delivery reports: {e}");
                let _ = ctx.store().release(ids).await;
                return 0;
            }
        }
        claimed
    }
}

fn main() -> ExitCode {
    mta_task::run::<Drt>()
}
