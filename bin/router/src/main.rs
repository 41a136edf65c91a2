//! router — Router.
//!
//! Reads: `mail.box` (claims up to 256 due messages at a time, lease 120 s).
//! Writes: local recipients to their Maildir (`maildir.rs`: tmp/ + fsync, rename into new/,
//! fsync the directory) with `Return-Path:` and `Delivered-To:` prepended; per-recipient
//! outcomes in the record (delivered / pending with an attempt and a retry time / failed
//! 5.1.1); then the record is finished (`MessageRecord::finish`: `Done`, `reports` for drt when
//! a delivery report is due, or `Dead` for an undeliverable report), stays in `mail.box` until its next local retry, or moves
//! to `smtp.box` for its non-local recipients (`routing.rs` has the rules, aliases included).
//! One store commit per batch. Kicks: `omsgcnv`, once per batch that filled `smtp.box`;
//! `drt`, once per batch that filled `reports`.
//! Config: `local_domains`, `directory` (users and aliases; `ctx.directory()`, swapped by
//! `tell smtpmta refresh`), `[outbound] retry`; knob
//! `Log_MailRouting` (20: alias expansions; 30: mailboxes and next queues).
//! Logs: one line per recipient outcome, Postfix style (`local_delivery.rs`).
//! Answers: `show tasks` ("idle; delivered N, deferred M, bounced B, to smtp.box K"),
//! `tell router show` (each destination BUSY, WAIT, RETRY or READY, and the threads) and
//! `tell router show queue` (messages per location and queue): `show.rs`.

mod local_delivery;
mod maildir;
mod routing;
mod show;

use local_delivery::{deliver_batch, Stats};
use mta_ipc::console::TellCommand;
use mta_ipc::store::Change;
use mta_ipc::task::TaskReport;
use mta_ipc::{TaskState, TaskStatus};
use mta_task::{QueueWorker, Task, TaskContext};
use mta_types::{MessageRecord, QueueName, TaskName};
use routing::Routing;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

struct Router {
    stats: Arc<Stats>,
    busy: AtomicBool,
}

impl Task for Router {
    const NAME: TaskName = TaskName::Router;

    async fn start(_ctx: &TaskContext) -> anyhow::Result<Self> {
        Ok(Router {
            stats: Arc::new(Stats::default()),
            busy: AtomicBool::new(false),
        })
    }

    async fn run(self: Arc<Self>, ctx: TaskContext) -> anyhow::Result<()> {
        mta_task::drain(&*self, &ctx, &self.busy).await;
        Ok(())
    }

    fn status(&self) -> TaskStatus {
        let s = &self.stats;
        let (state, current) = if self.busy.load(Ordering::Relaxed) {
            (TaskState::Busy, "routing")
        } else {
            (TaskState::Idle, "idle")
        };
        TaskStatus {
            state,
            current: current.into(),
            counters: vec![
                ("delivered".into(), s.delivered.load(Ordering::Relaxed)),
                ("deferred".into(), s.deferred.load(Ordering::Relaxed)),
                ("bounced".into(), s.bounced.load(Ordering::Relaxed)),
                ("to smtp.box".into(), s.to_smtp.load(Ordering::Relaxed)),
            ],
            handlers: Vec::new(),
        }
    }

    async fn report(
        &self,
        ctx: &TaskContext,
        command: &TellCommand,
    ) -> Option<Result<TaskReport, String>> {
        match command {
            TellCommand::Other(words)
                if words.len() == 1 && words[0].eq_ignore_ascii_case("show") =>
            {
                let busy = self.busy.load(Ordering::Relaxed);
                Some(show::show(ctx, busy).await.map(TaskReport::Router))
            }
            _ => None,
        }
    }

    async fn tell(&self, ctx: &TaskContext, command: TellCommand) -> Result<String, String> {
        match command {
            TellCommand::Other(words)
                if words.len() == 2
                    && words[0].eq_ignore_ascii_case("show")
                    && words[1].eq_ignore_ascii_case("queue") =>
            {
                show::show_queue(ctx, self.busy.load(Ordering::Relaxed)).await
            }
            TellCommand::Other(words) => Err(format!(
                "router does not know `{}` (it knows: show, show queue)",
                words.join(" ")
            )),
            other => Err(format!(
                "router does not know `{other}` (it knows: show, show queue)"
            )),
        }
    }
}

impl QueueWorker for Router {
    const QUEUE: QueueName = QueueName::MailBox;
    /// `(to smtp.box, to reports)`.
    type Done = (usize, usize);

    async fn work(
        &self,
        ctx: &TaskContext,
        records: Vec<MessageRecord>,
    ) -> Result<(Vec<Change>, (usize, usize)), String> {
        let knobs = ctx.knobs();
        let levels = local_delivery::Levels {
            routing: knobs.log_mail_routing,
            lookup: knobs.debug_router_lookup,
        };
        let (task_ctx, stats) = (ctx.clone(), self.stats.clone());
        let batch = tokio::task::spawn_blocking(move || {
            let config = task_ctx.config();
            let directory = task_ctx.directory();
            let routing = Routing {
                directory: &directory,
                local_domains: &config.local_domains,
                retry: &config.outbound.retry,
            };
            deliver_batch(records, &routing, &config.spool_dir(), levels, &stats)
        })
        .await
        .map_err(|e| format!("routing panicked: {e}"))?;
        if let Some(e) = batch.unsynced {
            return Err(format!("a mailbox could not be made durable: {e}"));
        }
        // If the commit fails, the mailboxes are written but the outcomes are not recorded:
        // the messages come back and are delivered again (at-least-once, never lost).
        Ok((batch.changes, (batch.to_smtp, batch.to_reports)))
    }

    fn committed(&self, ctx: &TaskContext, (to_smtp, to_reports): (usize, usize)) {
        if to_smtp > 0 {
            ctx.kicker(QueueName::SmtpBox).kick();
        }
        if to_reports > 0 {
            ctx.kicker(QueueName::Reports).kick();
        }
    }
}

fn main() -> ExitCode {
    mta_task::run::<Router>()
}
