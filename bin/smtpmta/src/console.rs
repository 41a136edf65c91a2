//! The supervisor's side of the console: execute a `ConsoleCommand`.

use crate::tasks::{push_knobs, refresh_task, show_tasks, tell_task};
use crate::Supervisor;
use mta_ipc::console::{
    ConsoleCommand, ConsoleReply, ParkedMessage, QueueReport, ServerInfo, TellCommand,
};
use mta_types::message::now_ms;
use mta_types::TaskName;
use std::sync::Arc;

pub async fn execute(sup: &Arc<Supervisor>, command: ConsoleCommand) -> ConsoleReply {
    match command {
        ConsoleCommand::Help => ConsoleReply::Text(mta_ipc::console::help_text()),
        ConsoleCommand::ShowTasks => ConsoleReply::Tasks(show_tasks(sup).await),
        ConsoleCommand::ShowTaskTime => {
            ConsoleReply::TaskTimes(crate::task_time::show_task_time(&show_tasks(sup).await))
        }
        ConsoleCommand::ShowServer => ConsoleReply::Server(server_info(sup).await),
        ConsoleCommand::ShowConfig => ConsoleReply::Config(config_view(sup)),
        ConsoleCommand::ShowQueue => show_queue(sup),
        ConsoleCommand::ShowStatMail => match crate::stats::show_stat(sup, "mail").await {
            Ok(stats) => ConsoleReply::Stats(stats),
            Err(e) => ConsoleReply::Error(e),
        },
        ConsoleCommand::ShowStat { pattern } => {
            match crate::stats::show_stat(sup, &pattern).await {
                Ok(stats) => ConsoleReply::Stats(stats),
                Err(e) => ConsoleReply::Error(e),
            }
        }
        ConsoleCommand::ShowMessage { qid } => crate::operations::show_message(sup, &qid),
        ConsoleCommand::Hold { qid } => crate::operations::hold(sup, &qid).await,
        ConsoleCommand::Release { qid } => crate::operations::release(sup, &qid).await,
        ConsoleCommand::ReleaseDead { qid } => crate::operations::release_dead(sup, &qid).await,
        ConsoleCommand::Bounce { qid } => crate::operations::bounce(sup, &qid).await,
        ConsoleCommand::Track(query) => crate::tracking::track(sup, &query),
        ConsoleCommand::Delete { qid } => crate::operations::delete(sup, &qid).await,
        ConsoleCommand::Bulk { op, domain } => crate::operations::bulk(sup, op, &domain).await,
        ConsoleCommand::RouteLocalDelivery => crate::operations::route_local_delivery(sup).await,
        ConsoleCommand::Trace { address } => match crate::trace::trace(sup, &address).await {
            Ok(text) => ConsoleReply::Text(text),
            Err(e) => ConsoleReply::Error(e),
        },
        ConsoleCommand::SetConfig { knob, value } => set_config(sup, &knob, &value).await,
        ConsoleCommand::ShowClients => {
            let words = vec!["show".to_string(), "clients".to_string()];
            tell_task(sup, TaskName::Isesctl, TellCommand::Other(words)).await
        }
        ConsoleCommand::ShowFleet => ConsoleReply::Fleet(crate::fleet::report(sup).await),
        ConsoleCommand::ShowVersion => {
            ConsoleReply::Text(format!("smtpmta {}", env!("CARGO_PKG_VERSION")))
        }
        ConsoleCommand::Tell {
            task: TaskName::Smtpmta,
            command,
        } => tell_supervisor(sup, command).await,
        ConsoleCommand::Tell { task, command } => tell_task(sup, task, command).await,
    }
}

async fn tell_supervisor(sup: &Arc<Supervisor>, command: TellCommand) -> ConsoleReply {
    match command {
        TellCommand::Quit => {
            sup.request_quit();
            ConsoleReply::Text("smtpmta: shutting down (inbound first)".into())
        }
        TellCommand::ShowStatus => ConsoleReply::Tasks(show_tasks(sup).await),
        TellCommand::StopInboundTransport | TellCommand::StartInboundTransport => {
            tell_task(sup, TaskName::Isesctl, command).await
        }
        TellCommand::StopOutboundTransport | TellCommand::StartOutboundTransport => {
            tell_task(sup, TaskName::Osesctl, command).await
        }
        TellCommand::Refresh => refresh(sup).await,
        TellCommand::Reload => crate::reload::reload(sup).await,
        TellCommand::Restart => {
            sup.request_restart();
            ConsoleReply::Text(
                "smtpmta: restarting from its binary on disk: every task stops gracefully, isesctl first (the SMTP sockets stay open: connections wait), then the supervisor starts again and brings the tasks back one by one on the new binaries, isesctl last".into(),
            )
        }
        TellCommand::Compact => match crate::compaction::compact_now(sup.clone()).await {
            Ok(c) => ConsoleReply::Text(format!(
                "queue compacted: {} spool segment(s) removed ({} bytes freed), {} kept ({} bytes)",
                c.removed, c.freed, c.kept, c.spool_bytes
            )),
            Err(e) => ConsoleReply::Error(format!("compaction failed: {e}")),
        },
        // The TLS-RPT counts and the sending live in osesctl (issue 28).
        TellCommand::Other(words)
            if words
                .iter()
                .map(|w| w.to_ascii_lowercase())
                .eq(["send", "tls", "reports"]) =>
        {
            tell_task(sup, TaskName::Osesctl, TellCommand::Other(words)).await
        }
        TellCommand::Drain(command) => crate::drain::command(sup, command).await,
        TellCommand::InboundDraining(_) => ConsoleReply::Error(
            "smtpmta sends this to isesctl itself; use `tell smtpmta drain to|stop`".into(),
        ),
        TellCommand::Other(words) => ConsoleReply::Error(format!(
            "smtpmta does not know `{}`; type `help` for the list",
            words.join(" ")
        )),
    }
}

/// `tell smtpmta refresh`: re-reads the configuration file (for its `[debug]` knobs) and the
/// directory; if either is bad, nothing changes and the reply says why. Other settings
/// (listeners, limits) need a restart.
async fn refresh(sup: &Supervisor) -> ConsoleReply {
    let fresh = match mta_config::Config::load(&sup.config().path) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("refresh refused, keeping the configuration in effect: {e}");
            return ConsoleReply::Error(format!(
                "refresh refused, keeping the directory and knobs in effect: {e}"
            ));
        }
    };
    let (users, aliases) = (fresh.directory.users.len(), fresh.directory.aliases.len());
    *sup.directory.lock().expect("directory lock") = std::sync::Arc::new(fresh.directory);
    *sup.knobs.lock().expect("knob lock") = fresh.debug.clone();
    let mut failed = Vec::new();
    for task in TaskName::CHILDREN {
        if let Err(e) = refresh_task(sup, task, &fresh.debug).await {
            failed.push(format!("{task}: {e}"));
        }
    }
    tracing::info!(
        "refresh: directory re-read ({users} users, {aliases} aliases), knobs from [debug]"
    );
    let mut text = format!(
        "refreshed: directory {} ({users} users, {aliases} aliases); debug knobs from [debug]",
        fresh.directory_path.display()
    );
    if !failed.is_empty() {
        text.push_str(&format!("; not reached: {}", failed.join(", ")));
    }
    ConsoleReply::Text(text)
}

/// Validates the knob here, then pushes every knob to every running task; a task that
/// (re)starts later gets them when it says it is ready.
async fn set_config(sup: &Supervisor, knob: &str, value: &str) -> ConsoleReply {
    if knob.eq_ignore_ascii_case("hold_undeliverable") {
        return set_hold_undeliverable(sup, value);
    }
    let knobs = {
        let mut knobs = sup.knobs.lock().expect("knob lock");
        if let Err(e) = knobs.set(knob, value) {
            return ConsoleReply::Error(e.to_string());
        }
        knobs.clone()
    };
    let mut failed = Vec::new();
    for task in TaskName::CHILDREN {
        if let Err(e) = push_knobs(&sup.config().run_dir(), task, &knobs).await {
            failed.push(format!("{task}: {e}"));
        }
    }
    let name = mta_config::DebugKnobs::NAMES
        .iter()
        .find(|n| n.eq_ignore_ascii_case(knob))
        .copied()
        .unwrap_or(knob);
    if failed.is_empty() {
        ConsoleReply::Text(format!("{name} set to {value} in every task"))
    } else {
        ConsoleReply::Text(format!(
            "{name} set to {value}; not reached (they get it when they restart): {}",
            failed.join(", ")
        ))
    }
}

/// `set config hold_undeliverable 1`: applied by the store, which every task's commit
/// passes through, so it holds at once in every task without being pushed to them. Like
/// the knobs, it lasts until the supervisor restarts (the file's value then).
fn set_hold_undeliverable(sup: &Supervisor, value: &str) -> ConsoleReply {
    let on = match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => true,
        "0" | "false" | "no" | "off" => false,
        _ => {
            return ConsoleReply::Error(format!(
                "setting `hold_undeliverable`: `{value}` is not 0 or 1 (true or false)"
            ))
        }
    };
    sup.store.engine().set_hold_undeliverable(on);
    tracing::info!("hold_undeliverable set to {on} by the operator");
    ConsoleReply::Text(format!(
        "hold_undeliverable set to {} ({})",
        u8::from(on),
        if on {
            "permanently failed mail is held; `release` retries it, `bounce` reports it"
        } else {
            "permanently failed mail is bounced"
        }
    ))
}

/// Most parked messages listed per state; the counts cover the rest.
const PARKED_PAGE: usize = 200;

/// `show queue`: counts from the store's counters, and the first page of each parked
/// state (never the whole queue: bounded memory whatever its size).
fn show_queue(sup: &Supervisor) -> ConsoleReply {
    use mta_types::{Location, QueueName};
    let counts = sup.store.engine().counts().rows;
    let mut parked = Vec::new();
    let mut parked_more = 0;
    for loc in [
        Location::Held {
            from: QueueName::MailBox,
        },
        Location::Dead,
        Location::ConversionError,
    ] {
        let page = match sup.store.parked(loc, None, PARKED_PAGE) {
            Ok(p) => p,
            Err(e) => return ConsoleReply::Error(format!("queue store: {e}")),
        };
        parked_more += sup
            .store
            .engine()
            .count_in(loc)
            .saturating_sub(page.len() as u64);
        parked.extend(page.into_iter().map(|record| {
            ParkedMessage {
                qid: record.id.to_string(),
                state: record.location.label().to_string(),
                from: record
                    .envelope
                    .mail_from
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                recipients: record
                    .recipients
                    .iter()
                    .map(|r| r.address.to_string())
                    .collect(),
                size: record.size,
                note: record.note.unwrap_or_default(),
            }
        }));
    }
    ConsoleReply::Queue(QueueReport {
        counts,
        parked,
        parked_more,
    })
}

async fn server_info(sup: &Supervisor) -> ServerInfo {
    use mta_types::{Location, QueueName};
    let engine = sup.store.engine();
    let pending: u64 = QueueName::ALL
        .iter()
        .map(|q| engine.count_in(Location::Queue(*q)))
        .sum();
    let sessions = crate::rates::busy_handlers(sup, TaskName::Isesctl).await
        + crate::rates::busy_handlers(sup, TaskName::Osesctl).await;
    let (_, peak, peak_at) = sup.rates.peaks();
    let now = crate::rates::sample_now(sup);
    let (minute, hour, t_peak, t_peak_at) = sup.rates.transactions(&now);
    let (peak, peak_at) = if sessions > peak {
        (sessions, now_ms())
    } else {
        (peak, peak_at)
    };
    ServerInfo {
        pending_mail: pending,
        dead_mail: engine.count_in(Location::Dead),
        held_mail: engine.count_in(Location::Held {
            from: QueueName::MailBox,
        }),
        sessions,
        sessions_peak: peak,
        sessions_peak_ms: peak_at,
        transactions_minute: minute,
        transactions_hour: hour,
        transactions_peak: t_peak.max(minute),
        transactions_peak_ms: if minute > t_peak { now_ms() } else { t_peak_at },
        version: env!("CARGO_PKG_VERSION").into(),
        hostname: sup.config().hostname.clone(),
        data_dir: sup.config().data_dir.display().to_string(),
        config: sup.config().path.display().to_string(),
        pid: std::process::id(),
        started_ms: sup.started_ms,
        uptime_secs: now_ms().saturating_sub(sup.started_ms) / 1000,
        spool_bytes: crate::compaction::spool_bytes(&sup.config().spool_dir()),
    }
}

fn config_view(sup: &Supervisor) -> Vec<(String, String)> {
    let c = sup.config();
    let list = |v: Vec<String>| format!("[{}]", v.join(", "));
    let mut rows = vec![
        ("config".into(), c.path.display().to_string()),
        ("hostname".into(), c.hostname.clone()),
        ("data_dir".into(), c.data_dir.display().to_string()),
        (
            "local_domains".into(),
            list(c.local_domains.iter().map(|d| d.to_string()).collect()),
        ),
        (
            "trusted_networks".into(),
            list(c.trusted_networks.iter().map(|n| n.to_string()).collect()),
        ),
        (
            "directory".into(),
            format!(
                "{} ({} users)",
                c.directory_path.display(),
                sup.directory().users.len()
            ),
        ),
        (
            "inbound.listen".into(),
            list(c.inbound.listen.iter().map(|a| a.to_string()).collect()),
        ),
        (
            "inbound.max_handlers".into(),
            c.inbound.max_handlers.to_string(),
        ),
        (
            "inbound.max_message_size".into(),
            c.inbound.max_message_size.to_string(),
        ),
        (
            "inbound.max_recipients".into(),
            c.inbound.max_recipients.to_string(),
        ),
        (
            "outbound.max_handlers".into(),
            c.outbound.max_handlers.to_string(),
        ),
        (
            "outbound.relay_host".into(),
            c.outbound.relay_host.clone().unwrap_or_default(),
        ),
        ("outbound.port".into(), c.outbound.port.to_string()),
        (
            "dns.nameservers".into(),
            list(c.dns.nameservers.iter().map(|a| a.to_string()).collect()),
        ),
    ];
    rows.push((
        "hold_undeliverable".into(),
        u8::from(sup.store.engine().hold_undeliverable()).to_string(),
    ));
    rows.push((
        "tracking_days".into(),
        sup.store.engine().tracking_days().to_string(),
    ));
    let knobs = sup.knobs();
    for name in mta_config::DebugKnobs::NAMES {
        rows.push((
            format!("debug.{name}"),
            knobs.value(name).unwrap_or_default(),
        ));
    }
    rows
}
