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
//! `tell router show queue` (messages per location and queue).

mod local_delivery;
mod maildir;
mod routing;

use local_delivery::{deliver_batch, Stats};
use mta_ipc::console::TellCommand;
use mta_ipc::store::Change;
use mta_ipc::TaskStatus;
use mta_task::{QueueWorker, Task, TaskContext};
use mta_types::{MessageRecord, QueueName, TaskName};
use routing::Routing;
use std::fmt::Write as _;
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
        let state = if self.busy.load(Ordering::Relaxed) {
            "routing"
        } else {
            "idle"
        };
        TaskStatus {
            detail: format!(
                "{state}; delivered {}, deferred {}, bounced {}, to smtp.box {}",
                s.delivered.load(Ordering::Relaxed),
                s.deferred.load(Ordering::Relaxed),
                s.bounced.load(Ordering::Relaxed),
                s.to_smtp.load(Ordering::Relaxed)
            ),
            handlers: Vec::new(),
        }
    }

    async fn tell(&self, ctx: &TaskContext, command: TellCommand) -> Result<String, String> {
        match command {
            TellCommand::Other(words)
                if words.len() == 2
                    && words[0].eq_ignore_ascii_case("show")
                    && words[1].eq_ignore_ascii_case("queue") =>
            {
                show_queue(ctx).await
            }
            TellCommand::Other(words) => Err(format!(
                "router does not know `{}` (it knows: show queue)",
                words.join(" ")
            )),
            other => Err(format!(
                "router does not know the command {other:?} (it knows: show queue)"
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
        let log_level = ctx.knobs().log_mail_routing;
        let (task_ctx, stats) = (ctx.clone(), self.stats.clone());
        let batch = tokio::task::spawn_blocking(move || {
            let config = task_ctx.config();
            let directory = task_ctx.directory();
            let routing = Routing {
                directory: &directory,
                local_domains: &config.local_domains,
                retry: &config.outbound.retry,
            };
            deliver_batch(records, &routing, &config.spool_dir(), log_level, &stats)
        })
        .await
        .map_err(|e| format!("routing panicked: {e}"))?;
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

/// `tell router show queue`: messages per location and queue.
/// `tell router show queue`, as Domino prints it: one row per destination and state —
/// Msgs, State, Via (next hop), Destination, Last error, Next retry.
async fn show_queue(ctx: &TaskContext) -> Result<String, String> {
    let records = ctx
        .store()
        .list(None, 100_000)
        .await
        .map_err(|e| e.to_string())?;
    if records.is_empty() {
        return Ok("No messages in any queue.".into());
    }
    let relay = ctx.config().outbound.relay_host.clone();
    // (state, via, destination) -> (msgs, last error, earliest next retry)
    let mut rows: std::collections::BTreeMap<(String, String, String), (u64, String, u64)> =
        Default::default();
    for r in &records {
        let state = match r.location {
            mta_types::Location::Queue(_) if r.not_before > mta_types::message::now_ms() => {
                "Retry".to_string()
            }
            other => other.label().to_string(),
        };
        let mut destinations: Vec<(String, String)> = r
            .recipients
            .iter()
            .filter(|rc| rc.status == mta_types::RcptStatus::Pending)
            .map(|rc| {
                let domain = rc.address.domain().clone();
                if ctx.config().is_local_domain(&domain) {
                    ("local".to_string(), "LocalDelivery".to_string())
                } else {
                    (
                        relay.clone().unwrap_or_else(|| "MX".to_string()),
                        domain.to_string(),
                    )
                }
            })
            .collect();
        destinations.sort();
        destinations.dedup();
        if destinations.is_empty() {
            destinations.push(("-".into(), "-".into()));
        }
        for (via, dest) in destinations {
            let row =
                rows.entry((state.clone(), via, dest))
                    .or_insert((0, String::new(), u64::MAX));
            row.0 += 1;
            if let Some(note) = &r.note {
                row.1 = note.clone();
            }
            if r.not_before > 0 {
                row.2 = row.2.min(r.not_before);
            }
        }
    }
    let mut out = format!(
        "{:>5}  {:<20} {:<22} {:<24} {:<10} {}\n",
        "Msgs", "State", "Via", "Destination", "Next retry", "Last error"
    );
    for ((state, via, dest), (msgs, error, next)) in &rows {
        let next = if *next == u64::MAX {
            "-".to_string()
        } else {
            format!(
                "in {}s",
                next.saturating_sub(mta_types::message::now_ms()) / 1000
            )
        };
        let _ = writeln!(
            out,
            "{msgs:>5}  {state:<20} {via:<22} {dest:<24} {next:<10} {error}"
        );
    }
    let _ = write!(out, "{:>5}  messages in all", records.len());
    Ok(out)
}

fn main() -> ExitCode {
    mta_task::run::<Router>()
}
