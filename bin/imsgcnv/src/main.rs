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
use mta_task::{Drain, QueueWorker, Task, TaskContext, WorkResult};
use mta_types::{MessageRecord, QueueName, TaskName};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Default)]
struct Imsgcnv {
    stats: Arc<Stats>,
    drain: Drain,
}

impl Task for Imsgcnv {
    const NAME: TaskName = TaskName::Imsgcnv;

    async fn start(_ctx: &TaskContext) -> anyhow::Result<Self> {
        Ok(Imsgcnv::default())
    }

    async fn run(self: Arc<Self>, ctx: TaskContext) -> anyhow::Result<()> {
        self.drain.run(&*self, &ctx).await
    }

    fn status(&self) -> TaskStatus {
        self.drain.status("converting", self.stats.counters())
    }
}

impl QueueWorker for Imsgcnv {
    const QUEUE: QueueName = QueueName::InboundWork;
    /// Messages put in mail.box.
    type Done = usize;

    async fn work(&self, ctx: &TaskContext, records: Vec<MessageRecord>) -> WorkResult<usize> {
        let config = ctx.config();
        let (spool_dir, max_hops) = (config.spool_dir(), config.inbound.max_hops);
        let import_errors =
            ImportErrors::new(&config.data_dir, ctx.knobs().smtp_save_import_errors);
        let stats = self.stats.clone();
        let bytes = records.iter().map(|r| r.size).sum();
        let batch = mta_task::read_work(bytes, move || {
            convert_batch(records, &spool_dir, max_hops, &import_errors, &stats)
        })
        .await?;
        Ok((batch.changes, batch.to_mailbox))
    }

    fn committed(&self, ctx: &TaskContext, to_mailbox: usize) {
        if to_mailbox > 0 {
            ctx.kicker(QueueName::MailBox).kick();
        }
    }
}

fn main() -> ExitCode {
    mta_task::run::<Imsgcnv>()
}
