//! imsgcnv — Inbound Message Conversion.
//!
//! Reads: the Inbound Work Queue (claims up to 256 messages at a time, lease 120 s).
//! Writes: `mail.box` (converted), `Dead` (more `Received:` fields than `[inbound] max_hops`),
//! `Conversion Error` (content that is not a message, or unreadable content) — one store
//! commit per batch. Kicks: `router`, once per batch that put anything in `mail.box`.
//! Config: `[inbound] max_hops`, `data_dir`; knob `SMTPSaveImportErrors` (read per batch;
//! copies in `<data_dir>/import-errors/`, see `import_errors.rs`).
//! Logs: one line per message, `qid=… message-id=<…> hops=N`, or why it failed.
//! Answers: `show tasks` ("idle; converted N, errors M, dead D").
//! RFCs: 5322 and 2045/2046 through `mta-convert`. Content is never rewritten here.

mod conversion;
mod import_errors;

use conversion::{convert_batch, Stats};
use import_errors::ImportErrors;
use mta_ipc::TaskStatus;
use mta_task::{Task, TaskContext};
use mta_types::{QueueName, TaskName};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Most messages claimed at once.
const BATCH: u32 = 256;
/// How long a claim is ours before the store gives it to someone else.
const LEASE: Duration = Duration::from_secs(120);
/// Poll interval when no kick comes.
const POLL: Duration = Duration::from_secs(1);

struct Imsgcnv {
    stats: Arc<Stats>,
    busy: AtomicBool,
}

impl Task for Imsgcnv {
    const NAME: TaskName = TaskName::Imsgcnv;

    async fn start(_ctx: &TaskContext) -> anyhow::Result<Self> {
        Ok(Imsgcnv {
            stats: Arc::new(Stats::default()),
            busy: AtomicBool::new(false),
        })
    }

    async fn run(self: Arc<Self>, ctx: TaskContext) -> anyhow::Result<()> {
        while ctx.next_work(POLL).await {
            // Keep going while full batches come back: there may be more waiting.
            while !ctx.shutting_down() && self.one_batch(&ctx).await == BATCH as usize {}
        }
        Ok(())
    }

    fn status(&self) -> TaskStatus {
        let s = &self.stats;
        let state = if self.busy.load(Ordering::Relaxed) {
            "converting"
        } else {
            "idle"
        };
        TaskStatus {
            detail: format!(
                "{state}; converted {}, errors {}, dead {}",
                s.converted.load(Ordering::Relaxed),
                s.errors.load(Ordering::Relaxed),
                s.dead.load(Ordering::Relaxed)
            ),
            handlers: Vec::new(),
        }
    }
}

impl Imsgcnv {
    /// Claims, converts and commits one batch; returns how many messages it claimed.
    async fn one_batch(&self, ctx: &TaskContext) -> usize {
        let records = match ctx
            .store()
            .claim(QueueName::InboundWork, BATCH, LEASE)
            .await
        {
            Ok(r) if r.is_empty() => return 0,
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot claim from {}: {e}", QueueName::InboundWork);
                return 0;
            }
        };
        let claimed = records.len();
        let ids: Vec<_> = records.iter().map(|r| r.id).collect();
        self.busy.store(true, Ordering::Relaxed);

        let config = ctx.config();
        let (spool_dir, max_hops) = (config.spool_dir(), config.inbound.max_hops);
        let import_errors =
            ImportErrors::new(&config.data_dir, ctx.knobs().smtp_save_import_errors);
        let stats = self.stats.clone();
        let batch = tokio::task::spawn_blocking(move || {
            convert_batch(records, &spool_dir, max_hops, &import_errors, &stats)
        })
        .await
        .expect("conversion panicked");

        let result = ctx.store().commit(batch.changes).await;
        self.busy.store(false, Ordering::Relaxed);
        match result {
            Ok(()) if batch.to_mailbox > 0 => ctx.kicker(QueueName::MailBox).kick(),
            Ok(()) => {}
            Err(e) => {
                // Nothing changed: give the messages back so the next pass retries them
                // (if this fails too, the leases expire).
                tracing::warn!("cannot commit {claimed} converted messages: {e}");
                let _ = ctx.store().release(ids).await;
                return 0;
            }
        }
        claimed
    }
}

fn main() -> ExitCode {
    mta_task::run::<Imsgcnv>()
}
