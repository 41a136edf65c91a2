//! One claimed batch of `mail.box`, in three phases: route each message (`routing.rs`) and
//! write its Maildirs (`maildir.rs`), blocking, then sync them (`route_batch`); deliver
//! the LMTP mailboxes (`lmtp.rs`, async, only once the Maildirs are durable); then move
//! each message on and return the changes to commit (`finish_batch`). Every mailbox's
//! outcome is recorded, counted and logged by one function (`record_outcome`).
//!
//! Content is read from the spool once per message, and only when it has a mailbox to write.
//! Each Maildir copy gets `Return-Path:` and `Delivered-To:` prepended (`mta-convert`); an
//! LMTP server adds its own.
//!
//! Log lines, Postfix style, one per recipient outcome:
//! `qid=… to=<…> [orig_to=<…>] relay=local delay=0.12s dsn=2.0.0 status=sent (delivered to maildir)`,
//! `relay=lmtp[unix:/run/dovecot/lmtp] … status=sent (250 2.0.0 <alice@localhost> Saved)`,
//! `status=bounced (user unknown)`, `status=deferred (reason)`; `qid=… removed` when the
//! record is done, whatever the knobs.
//!
//! The debug knobs (docs/CONFIG.md defines each level; lines have target
//! `mta_types::DEBUG_TARGET`, so `debug_outfile` gets them too):
//! `Log_MailRouting` 10 adds one status line per batch taken from mail.box; 20 the
//! warnings (a local delivery deferred, an unknown user, alias expansions); 30 the
//! mailbox chosen for each write and where each message goes next; 40 the whole document
//! (sender, each recipient and its state, Message-ID, size, hop count) and each successful
//! delivery as Domino words it. `DebugRouterLookup` 1 logs each directory lookup's result,
//! 2 also its start, 3 also every member of an alias.

use crate::maildir::Maildir;
use crate::routing::{Found, Lookup, MailboxDelivery, MailboxOutcome, Routing};
use mta_convert::trace_headers_for_delivery;
use mta_ipc::store::Change;
use mta_types::message::{now_ms, UnixMillis};
use mta_types::outcome::Reply;
use mta_types::{Enhanced, Location, MessageRecord, QueueName, RcptStatus, Recipient};
use std::path::Path;
use std::sync::atomic::Ordering;

mta_task::task_counters! {
    /// Counters for `show tasks` (per recipient, except `to_smtp`: messages).
    pub struct Stats {
        delivered: "delivered",
        deferred: "deferred",
        bounced: "bounced",
        to_smtp: "to smtp.box",
        /// Connections opened to LMTP servers.
        lmtp_connections: "lmtp connections",
    }
}

/// The Maildirs a batch wrote into, and the files it renamed into each `new/`: every
/// `new/` is synced once at the end of the batch, before any outcome is committed.
#[derive(Default)]
struct Unsynced(Vec<(Maildir, Vec<std::path::PathBuf>)>);

impl Unsynced {
    fn add(&mut self, maildir: &Path, file: std::path::PathBuf) {
        match self.0.iter_mut().find(|(m, _)| m.root() == maildir) {
            Some((_, files)) => files.push(file),
            None => self.0.push((Maildir::new(maildir), vec![file])),
        }
    }

    /// Syncs every `new/`. On a failure the files delivered into that Maildir are taken
    /// back (their renames may not survive a crash) and the batch is not committed: it is
    /// retried, and the deliveries into other Maildirs may repeat (at-least-once).
    fn sync(self) -> Result<(), String> {
        let mut failed = None;
        for (maildir, files) in self.0 {
            if let Err(e) = maildir.sync_new() {
                for f in &files {
                    let _ = std::fs::remove_file(f);
                }
                tracing::warn!(
                    "{e}: {} deliveries taken back; the batch is retried",
                    files.len()
                );
                failed.get_or_insert(e.to_string());
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

/// The outcome of a batch.
pub struct Batch {
    pub changes: Vec<Change>,
    /// Messages moved to `smtp.box` (omsgcnv is kicked when non-zero).
    pub to_smtp: usize,
    /// Messages moved to `reports` (drt is kicked when non-zero).
    pub to_reports: usize,
}

/// A claimed message between the phases of a batch: routed, its Maildirs written, its
/// LMTP mailboxes still to deliver (`lmtp.rs`), not yet moved on.
pub struct Routed {
    pub record: MessageRecord,
    /// The mailboxes an LMTP server holds, delivered after the Maildirs are synced.
    pub lmtp: Vec<MailboxDelivery>,
}

/// The first phase's outcome.
pub struct RoutedBatch {
    pub messages: Vec<Routed>,
    /// A Maildir whose `new/` could not be synced: nothing of the batch may be committed
    /// (and nothing more delivered: the batch is retried).
    pub unsynced: Option<String>,
}

/// The debug knobs the router reads, as they were when the batch was claimed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Levels {
    /// `Log_MailRouting`: 0, 10, 20, 30 or 40.
    pub routing: u8,
    /// `DebugRouterLookup`: 0 to 3.
    pub lookup: u8,
}

/// First phase (blocking: reads the spool and writes Maildirs): routes each message and
/// writes its Maildirs; LMTP mailboxes are left in `Routed::lmtp`.
pub fn route_batch(
    records: Vec<MessageRecord>,
    routing: &Routing<'_>,
    spool_dir: &Path,
    levels: Levels,
    stats: &Stats,
) -> RoutedBatch {
    if levels.routing >= 10 {
        let qids: Vec<String> = records.iter().map(|r| r.id.to_string()).collect();
        tracing::info!(
            target: mta_types::DEBUG_TARGET,
            "Router: {} message(s) taken from mail.box: qid={}",
            qids.len(),
            qids.join(",")
        );
    }
    let mut unsynced = Unsynced::default();
    let messages = records
        .into_iter()
        .map(|record| route_one(record, routing, spool_dir, levels, stats, &mut unsynced))
        .collect();
    RoutedBatch {
        messages,
        unsynced: unsynced.sync().err(),
    }
}

/// Last phase: moves each message on (`Routing::finish`) and makes the batch's changes.
pub fn finish_batch(
    messages: Vec<Routed>,
    routing: &Routing<'_>,
    levels: Levels,
    stats: &Stats,
) -> Batch {
    let mut batch = Batch {
        changes: Vec::with_capacity(messages.len()),
        to_smtp: 0,
        to_reports: 0,
    };
    for Routed { mut record, .. } in messages {
        let location = if record.location == Location::Dead {
            Location::Dead
        } else {
            finish_one(&mut record, routing, levels.routing)
        };
        if location == Location::Queue(QueueName::SmtpBox) {
            batch.to_smtp += 1;
            stats.to_smtp.fetch_add(1, Ordering::Relaxed);
        }
        if location == Location::Queue(QueueName::Reports) {
            batch.to_reports += 1;
        }
        batch.changes.push(Change::Put(record));
    }
    batch
}

fn route_one(
    mut record: MessageRecord,
    routing: &Routing<'_>,
    spool_dir: &Path,
    levels: Levels,
    stats: &Stats,
    unsynced: &mut Unsynced,
) -> Routed {
    let qid = record.id;
    let now = now_ms();
    if levels.routing >= 40 {
        log_document(&record);
    }
    let plan = routing.plan(&mut record, now);
    for lookup in &plan.lookups {
        log_lookup(&record, lookup, levels.lookup);
    }
    if levels.routing >= 20 {
        for (alias, targets) in &plan.expansions {
            let list: Vec<String> = targets.iter().map(|t| format!("<{t}>")).collect();
            tracing::info!(target: mta_types::DEBUG_TARGET, "Router: qid={qid} alias <{alias}> expanded to {}", list.join(", "));
        }
    }
    for &i in &plan.bounced {
        log_outcome(&record, i, now, "local", "");
        stats.bounced.fetch_add(1, Ordering::Relaxed);
        if levels.routing >= 20 {
            let r = &record.recipients[i];
            if let Some((_, outcome)) = r.status.outcome() {
                tracing::info!(target: mta_types::DEBUG_TARGET, "Router: warning: qid={qid} recipient <{}> failed: {outcome}", r.address);
            }
        }
    }
    let (lmtp, maildirs): (Vec<_>, Vec<_>) =
        plan.deliveries.into_iter().partition(|d| d.lmtp.is_some());
    if !maildirs.is_empty() {
        write_maildirs(
            &mut record,
            &maildirs,
            routing,
            spool_dir,
            levels,
            stats,
            unsynced,
        );
    }
    Routed { record, lmtp }
}

/// Writes the message into each of `maildirs` and records each outcome (the record goes
/// Dead when its content is gone).
fn write_maildirs(
    record: &mut MessageRecord,
    maildirs: &[MailboxDelivery],
    routing: &Routing<'_>,
    spool_dir: &Path,
    levels: Levels,
    stats: &Stats,
    unsynced: &mut Unsynced,
) {
    let content = mta_spool::read(spool_dir, &record.content);
    if let Err(e) = &content {
        if e.is_missing() {
            mta_task::queue_worker::content_missing(record, e);
            return;
        }
    }
    for delivery in maildirs {
        if levels.routing >= 30 {
            tracing::info!(
                target: mta_types::DEBUG_TARGET,
                "Router: qid={} mailbox of {} is {}",
                record.id,
                delivery.user,
                delivery.maildir.display()
            );
        }
        let outcome = match &content {
            Ok(bytes) => write_mailbox(record, delivery, bytes, unsynced),
            Err(e) => MailboxOutcome::Deferred(Reply::local(
                (4, 3, 0),
                format!("cannot read the content: {e}"),
            )),
        };
        record_outcome(record, delivery, &outcome, routing, levels, stats);
    }
}

/// Records one mailbox's outcome in the record, counts it and logs it (one line per
/// recipient); the Maildir and the LMTP paths both end here.
pub fn record_outcome(
    record: &mut MessageRecord,
    delivery: &MailboxDelivery,
    outcome: &MailboxOutcome,
    routing: &Routing<'_>,
    levels: Levels,
    stats: &Stats,
) {
    let qid = record.id;
    let now = now_ms();
    match outcome {
        MailboxOutcome::Deferred(reply) | MailboxOutcome::Failed(reply) if levels.routing >= 20 => {
            tracing::info!(
                target: mta_types::DEBUG_TARGET,
                "Router: warning: qid={qid} delivery to {} {}: {} {}",
                delivery.user,
                if matches!(outcome, MailboxOutcome::Failed(_)) { "failed" } else { "deferred" },
                reply.status_or((4, 3, 0)),
                reply.text()
            )
        }
        MailboxOutcome::Delivered(_) if levels.routing >= 40 => tracing::info!(
            target: mta_types::DEBUG_TARGET,
            "Router: Message qid={qid} delivered to {} from <{}> Size {} Hop Count {}",
            delivery.delivered_to,
            record.envelope.return_path(),
            record.size,
            record.trace.hop_count
        ),
        _ => {}
    }
    routing.record_delivery(record, delivery, outcome, now);
    let (counter, sent) = match outcome {
        MailboxOutcome::Delivered(text) => (&stats.delivered, text.as_str()),
        MailboxOutcome::Deferred(_) => (&stats.deferred, ""),
        MailboxOutcome::Failed(_) => (&stats.bounced, ""),
    };
    let relay = delivery.relay();
    for &i in &delivery.recipients {
        log_outcome(record, i, now, &relay, sent);
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Moves the message on and logs where it went.
fn finish_one(record: &mut MessageRecord, routing: &Routing<'_>, log_level: u8) -> Location {
    let qid = record.id;
    let now = now_ms();
    let location = routing.finish(record, now);
    match location {
        Location::Done => tracing::info!("qid={qid} removed"),
        Location::Dead => tracing::warn!(
            "qid={qid} moved to Dead: {}",
            record.note.as_deref().unwrap_or("")
        ),
        Location::Queue(QueueName::Reports) => {
            tracing::info!("qid={qid} moved to reports (delivery report due)")
        }
        Location::Queue(QueueName::MailBox) if log_level >= 30 => tracing::info!(
            target: mta_types::DEBUG_TARGET,
            "Router: qid={qid} waits in mail.box for a local retry in {}s",
            record.not_before.saturating_sub(now).div_ceil(1000)
        ),
        _ if log_level >= 30 => tracing::info!(
            target: mta_types::DEBUG_TARGET,
            "Router: qid={qid} moved to {}",
            describe(location)
        ),
        _ => {}
    }
    location
}

/// `Log_MailRouting` 40: the document as the router sees it (003: "full document
/// information for Mail Box, the full names of senders and recipients").
fn log_document(record: &MessageRecord) {
    let qid = record.id;
    let from = record.envelope.return_path();
    let message_id = record
        .fields
        .as_ref()
        .and_then(|f| f.message_id.clone())
        .unwrap_or_default();
    tracing::info!(
        target: mta_types::DEBUG_TARGET,
        "Router: Message qid={qid} has {} recipient(s) from <{from}> size {} message-id={message_id} hop count {}",
        record.recipients.len(),
        record.size,
        record.trace.hop_count
    );
    for (i, r) in record.recipients.iter().enumerate() {
        tracing::info!(
            target: mta_types::DEBUG_TARGET,
            "Router: qid={qid} Recipient {i} <{}> {:?}",
            r.address,
            r.status
        );
    }
}

/// `DebugRouterLookup`, in the words of 003's `DebugRLookup` lines.
fn log_lookup(record: &MessageRecord, lookup: &Lookup, level: u8) {
    if level == 0 {
        return;
    }
    let qid = record.id;
    let address = &lookup.address;
    if level >= 2 {
        tracing::info!(target: mta_types::DEBUG_TARGET, "DebugRLookup: qid={qid} Lookup beginning for <{address}> (key {})", address.lookup_key());
    }
    match &lookup.found {
        Found::User {
            name,
            maildir,
            lmtp,
        } => tracing::info!(
            target: mta_types::DEBUG_TARGET,
            "DebugRLookup: qid={qid} Lookup result for <{address}>: user {name}, mailbox {}",
            lmtp.as_ref()
                .map_or_else(|| maildir.display().to_string(), |e| format!("lmtp {e}"))
        ),
        Found::Alias(members) => {
            tracing::info!(
                target: mta_types::DEBUG_TARGET,
                "DebugRLookup: qid={qid} Lookup result for <{address}>: alias with {} member(s)",
                members.len()
            );
            if level >= 3 {
                for (n, m) in members.iter().enumerate() {
                    tracing::info!(target: mta_types::DEBUG_TARGET, "DebugRLookup: qid={qid} Lookup alias member {} <{m}>", n + 1);
                }
            }
        }
        Found::NotListed => tracing::info!(
            target: mta_types::DEBUG_TARGET,
            "DebugRLookup: qid={qid} Lookup error for <{address}>: not listed in the directory"
        ),
    }
}

fn write_mailbox(
    record: &MessageRecord,
    delivery: &MailboxDelivery,
    content: &[u8],
    unsynced: &mut Unsynced,
) -> MailboxOutcome {
    let prefix =
        trace_headers_for_delivery(record.envelope.mail_from.as_ref(), &delivery.delivered_to);
    match Maildir::new(&delivery.maildir).deliver_unsynced(prefix.as_bytes(), content) {
        Ok(file) => {
            unsynced.add(&delivery.maildir, file);
            MailboxOutcome::Delivered("delivered to maildir".into())
        }
        Err(e) => {
            // Every local failure is deferred; that is right only while all are transient.
            debug_assert!(e.is_transient(), "a permanent local delivery error: {e}");
            MailboxOutcome::Deferred(Reply::local(e.enhanced_status(), e.to_string()))
        }
    }
}

fn describe(location: Location) -> String {
    match location {
        Location::Queue(q) => q.to_string(),
        other => other.label().to_string(),
    }
}

/// The original address when the recipient came from an alias (its ORCPT names another
/// address), for `orig_to=<…>`.
fn orig_to(r: &Recipient) -> Option<&str> {
    let orcpt = r.orcpt.as_deref()?;
    let original = orcpt.split_once(';').map_or(orcpt, |(_, addr)| addr).trim();
    (!original.eq_ignore_ascii_case(&r.address.to_string())).then_some(original)
}

/// One line for recipient `i`: `relay` is `local` or the LMTP server; `sent` the text
/// of a delivery (`delivered to maildir`, or the LMTP server's reply).
fn log_outcome(record: &MessageRecord, i: usize, now: UnixMillis, relay: &str, sent: &str) {
    use mta_task::Outcome;
    let r = &record.recipients[i];
    let orig = orig_to(r);
    let delay = now.saturating_sub(record.received_at) as f64 / 1000.0;
    let log = |dsn: Enhanced, outcome, text: &str| {
        mta_task::log_outcome(&mta_task::OutcomeLine {
            qid: record.id,
            to: &r.address,
            orig_to: orig,
            relay,
            delay_secs: delay,
            dsn: &dsn.to_string(),
            outcome,
            text,
            extra: "",
        })
    };
    match &r.status {
        RcptStatus::Delivered { .. } => log(Enhanced::new(2, 0, 0), Outcome::Sent, sent),
        RcptStatus::Failed { status, reply, .. } => log(*status, Outcome::Bounced, &reply.text()),
        RcptStatus::Pending => {
            let reply = r.attempts.last().and_then(|a| a.outcome.reply());
            let dsn = reply.map_or(Enhanced::new(4, 3, 0), |t| t.status_or((4, 3, 0)));
            log(
                dsn,
                Outcome::Deferred,
                &reply.map_or(String::new(), |t| t.text()),
            )
        }
        // Not written to a mailbox here (expansions are logged with the plan).
        RcptStatus::Relayed { .. } | RcptStatus::Expanded { .. } => {}
    }
}
