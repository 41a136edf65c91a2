//! router — Router.
//!
//! Reads: `mail.box` (claims up to 256 due messages at a time, lease 120 s).
//! Writes: local recipients to their Maildir (`maildir.rs`: tmp/ + fsync, rename into new/,
//! fsync the directory) with `Return-Path:` and `Delivered-To:` prepended, or to an LMTP
//! server (`lmtp.rs`: the user's `lmtp` key or `[lmtp] address`; pooled connections, one
//! outcome per mailbox from the server's reply for it, after the Maildirs are synced); per-recipient
//! outcomes in the record (delivered / pending with an attempt and a retry time / failed
//! 5.1.1); then the record is finished (`MessageRecord::finish`: `Done`, `reports` for drt when
//! a delivery report is due, or `Dead` for an undeliverable report), stays in `mail.box` until its next local retry, or moves
//! to `smtp.box` for its non-local recipients (`routing.rs` has the rules, aliases included).
//! One store commit per batch. Kicks: `omsgcnv`, once per batch that filled `smtp.box`;
//! `drt`, once per batch that filled `reports`.
//! Config: `local_domains`, `directory` (users and aliases; `ctx.directory()`, swapped by
//! `tell smtpmta refresh`), `[outbound] retry`, `[lmtp]`; knobs `SMTPClientDebug` (the
//! LMTP sessions) and
//! `Log_MailRouting` (20: alias expansions; 30: mailboxes and next queues).
//! Logs: one line per recipient outcome, Postfix style (`local_delivery.rs`).
//! Counters: `Mail.LMTP.Connections`, `Mail.LMTP.Failures` (committed with each batch).
//! Answers: `show tasks` ("idle; delivered N, deferred M, bounced B, to smtp.box K,
//! lmtp connections L"),
//! `tell router show` (each destination BUSY, WAIT, RETRY or READY, and the threads) and
//! `tell router show queue` (messages per location and queue): `show.rs`.

mod lmtp;
mod local_delivery;
mod maildir;
mod routing;
mod show;

use local_delivery::{finish_batch, route_batch, Stats};
use mta_ipc::console::TellCommand;
use mta_ipc::store::Change;
use mta_ipc::task::TaskReport;
use mta_ipc::TaskStatus;
use mta_task::{Drain, QueueWorker, Task, TaskContext, TellError, WorkError, WorkResult};
use mta_types::{MessageRecord, QueueName, TaskName};
use routing::Routing;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

struct Router {
    stats: Arc<Stats>,
    drain: Drain,
    lmtp: Arc<lmtp::Pool>,
}

impl Task for Router {
    const NAME: TaskName = TaskName::Router;

    async fn start(ctx: &TaskContext) -> anyhow::Result<Self> {
        let config = ctx.config();
        Ok(Router {
            stats: Arc::new(Stats::default()),
            drain: Drain::default(),
            lmtp: lmtp::Pool::new(config.lmtp.clone(), config.hostname.clone()),
        })
    }

    async fn run(self: Arc<Self>, ctx: TaskContext) -> anyhow::Result<()> {
        self.drain.run(&*self, &ctx).await
    }

    fn status(&self) -> TaskStatus {
        self.drain.status("routing", self.stats.counters())
    }

    async fn report(
        &self,
        ctx: &TaskContext,
        command: &TellCommand,
    ) -> Option<Result<TaskReport, TellError>> {
        match command {
            TellCommand::Other(words)
                if words.len() == 1 && words[0].eq_ignore_ascii_case("show") =>
            {
                Some(
                    show::show(ctx, self.drain.is_busy())
                        .await
                        .map(TaskReport::Router)
                        .map_err(TellError::Failed),
                )
            }
            _ => None,
        }
    }

    async fn tell(&self, ctx: &TaskContext, command: TellCommand) -> Result<String, TellError> {
        match command {
            TellCommand::Other(words)
                if words.len() == 2
                    && words[0].eq_ignore_ascii_case("show")
                    && words[1].eq_ignore_ascii_case("queue") =>
            {
                show::show_queue(ctx, self.drain.is_busy())
                    .await
                    .map_err(TellError::Failed)
            }
            other => Err(Self::unknown(other, "it knows: show, show queue")),
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
    ) -> WorkResult<(usize, usize)> {
        let knobs = ctx.knobs();
        let levels = local_delivery::Levels {
            routing: knobs.log_mail_routing,
            lookup: knobs.debug_router_lookup,
        };
        let config = ctx.config();
        let directory = ctx.directory();
        let (task_ctx, stats, dir) = (ctx.clone(), self.stats.clone(), directory.clone());
        let routed = tokio::task::spawn_blocking(move || {
            let config = task_ctx.config();
            let routing = routing(config, &dir);
            route_batch(records, &routing, &config.spool_dir(), levels, &stats)
        })
        .await
        .map_err(|e| WorkError::panicked("routing", e))?;
        if let Some(e) = routed.unsynced {
            return Err(WorkError::Output {
                what: "a mailbox could not be made durable",
                detail: e.to_string(),
            });
        }
        // LMTP only now that the Maildirs are durable: a batch retried for a Maildir
        // would otherwise hand its LMTP mailboxes over twice.
        let mut messages = routed.messages;
        let routing = routing(config, &directory);
        let spool = config.spool_dir();
        let debug = knobs.smtp_client_debug;
        lmtp::deliver(
            &self.lmtp,
            &mut messages,
            &spool,
            &routing,
            levels,
            &self.stats,
            debug,
        )
        .await;
        let batch = finish_batch(messages, &routing, levels, &self.stats);
        let mut changes = batch.changes;
        let counters = self.lmtp.take_counters();
        if !counters.is_empty() {
            let opened = counters
                .iter()
                .find(|(n, _)| n == mta_types::counters::LMTP_CONNECTIONS)
                .map_or(0, |(_, n)| *n);
            self.stats
                .lmtp_connections
                .fetch_add(opened, Ordering::Relaxed);
            changes.push(Change::AddCounters(counters));
        }
        // If the commit fails, the mailboxes are written but the outcomes are not recorded:
        // the messages come back and are delivered again (at-least-once, never lost).
        Ok((changes, (batch.to_smtp, batch.to_reports)))
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

/// The routing rules for a batch, from the config and the directory snapshot it uses.
fn routing<'a>(
    config: &'a mta_config::Config,
    directory: &'a mta_config::Directory,
) -> Routing<'a> {
    Routing {
        directory,
        local_domains: &config.local_domains,
        retry: &config.outbound.retry,
        lmtp_default: config.lmtp.address.as_ref(),
    }
}

fn main() -> ExitCode {
    mta_task::run::<Router>()
}
