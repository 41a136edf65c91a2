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
use mta_task::{Drain, QueueWorker, Task, TaskContext, WorkError, WorkResult};
use mta_types::{MessageRecord, QueueName, TaskName};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

struct Drt {
    spool: Arc<Mutex<SpoolWriter>>,
    sent: AtomicU64,
    drain: Drain,
}

impl Task for Drt {
    const NAME: TaskName = TaskName::Drt;

    async fn start(ctx: &TaskContext) -> anyhow::Result<Self> {
        let spool = SpoolWriter::open(&ctx.config().spool_dir(), "drt")?;
        Ok(Drt {
            spool: Arc::new(Mutex::new(spool)),
            sent: AtomicU64::new(0),
            drain: Drain::default(),
        })
    }

    async fn run(self: Arc<Self>, ctx: TaskContext) -> anyhow::Result<()> {
        self.drain.run(&*self, &ctx).await
    }

    fn status(&self) -> TaskStatus {
        let sent = self.sent.load(Ordering::Relaxed);
        (self.drain).status(
            "writing delivery reports",
            vec![("reports sent".into(), sent)],
        )
    }
}

/// What drt does once a batch is committed.
struct Reported {
    reports: usize,
    to_outbound: usize,
    log: Vec<String>,
}

impl QueueWorker for Drt {
    const QUEUE: QueueName = QueueName::Reports;
    type Done = Reported;

    async fn work(&self, ctx: &TaskContext, records: Vec<MessageRecord>) -> WorkResult<Reported> {
        let (task_ctx, spool) = (ctx.clone(), self.spool.clone());
        // If the commit fails, the reports are in the spool but not recorded: they are
        // written again (the orphaned bytes are reclaimed by compaction).
        let batch = tokio::task::spawn_blocking(move || {
            let mut spool = spool.lock().expect("spool lock");
            report::report_batch(records, task_ctx.config(), &mut spool)
        })
        .await
        .map_err(|e| WorkError::panicked("reporting", e))?
        .map_err(|e| WorkError::Output {
            what: "cannot write delivery reports",
            detail: e.to_string(),
        })?;
        let done = Reported {
            reports: batch.reports,
            to_outbound: batch.to_outbound,
            log: batch.log,
        };
        Ok((batch.changes, done))
    }

    fn committed(&self, ctx: &TaskContext, done: Reported) {
        self.sent.fetch_add(done.reports as u64, Ordering::Relaxed);
        for line in done.log {
            tracing::info!("{line}");
        }
        if done.reports > 0 {
            ctx.kicker(QueueName::MailBox).kick();
        }
        if done.to_outbound > 0 {
            ctx.kicker(QueueName::OutboundWork).kick();
        }
    }
}

fn main() -> ExitCode {
    mta_task::run::<Drt>()
}
