//! The outcome collector: merges the handlers' per-recipient outcomes into the claimed
//! records and commits them in groups.
//!
//! The controller registers each claimed record with the number of lists it is in before
//! any list is handed out; each handler reports once per (list, message) with the outcomes
//! of that list's recipients (none when it did not get to the message). When a record's
//! last list has reported, the record is finished here: retry times, expiry, location,
//! and it joins the next commit (one store commit for everything finished meanwhile). A
//! record nobody touched is released instead (it stays Pending Transmission).
//!
//! Retry: a temporary failure keeps the recipient `Pending` with `next_retry = now +
//! retry[min(attempts-1, last)]`; once the message is older than `queue_lifetime` the
//! recipient fails with 4.4.7 (the last error kept in the reason). The record's
//! `not_before` is its earliest pending `next_retry`.
//!
//! Logs one line per recipient outcome, Postfix style:
//! `qid=… to=<…> relay=host[ip]:port delay=1.2s dsn=2.0.0 status=sent (250 2.0.0 Ok)`,
//! `status=deferred (…)`, `status=bounced (…)`, and `qid=… removed` when done.

use mta_config::OutboundConfig;
use mta_ipc::store::Change;
use mta_ipc::{Kicker, StoreClient};
use mta_task::{log_outcome, Outcome, OutcomeLine};
use mta_types::message::{now_ms, Attempt, Recipient, UnixMillis};
use mta_types::outcome::Reply;
use mta_types::{DeliveryOutcome, Enhanced};
use mta_types::{Location, MessageRecord, QueueId, QueueName, RcptStatus};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// What happened to one recipient in one attempt.
#[derive(Clone, Debug)]
pub enum RcptOutcome {
    /// 2xx to DATA: the next hop has it.
    Sent { host: String, reply: Reply },
    /// Permanent failure (5xx, null MX, NXDOMAIN, a capability the next hop lacks).
    Bounced {
        host: String,
        status: Enhanced,
        reply: Reply,
    },
    /// Temporary failure: retried on the schedule.
    Deferred { host: String, reply: Reply },
    /// The spooled content is gone: the whole message goes to Dead (no retry can help).
    ContentMissing { reason: String },
    /// Not attempted: the destination is suspended (traffic shaping) until `until`; due
    /// again then, with no attempt counted.
    Suspended {
        host: String,
        until: UnixMillis,
        by: String,
    },
}

#[allow(clippy::large_enum_variant)] // one per claimed record, moved once
pub enum Event {
    /// A claimed record and the number of lists carrying its recipients.
    Register { record: MessageRecord, lists: usize },
    /// One list's outcomes for one message (`results` empty: not attempted).
    Report {
        id: QueueId,
        results: Vec<(usize, RcptOutcome)>,
        /// `site=… rule=…`, added to each outcome line (traffic shaping).
        tag: Option<Arc<str>>,
    },
    /// A handler opened an SMTP session (for `Mail.Outbound.Sessions`).
    SessionOpened,
    /// Commit what is finished and stop.
    Shutdown,
}

#[derive(Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub deferred: AtomicU64,
    pub bounced: AtomicU64,
}

struct InFlight {
    record: MessageRecord,
    lists_left: usize,
    changed: bool,
}

/// The code, enhanced code and text of a server's reply: `250 2.0.0 Ok: queued`.
pub fn reply_text(reply: &mta_smtp::Reply) -> String {
    reply.to_string()
}

impl RcptOutcome {
    /// The one place a reply becomes a recipient's outcome: 2xx sent, 5xx bounced (with
    /// the reply's enhanced status), anything else deferred.
    pub fn of_reply(host: &str, reply: &mta_smtp::Reply) -> RcptOutcome {
        let host = host.to_string();
        let recorded = reply.recorded();
        if reply.is_completion() {
            RcptOutcome::Sent {
                host,
                reply: recorded,
            }
        } else if reply.is_permanent() {
            RcptOutcome::Bounced {
                host,
                // The enhanced status, or 5.0.0 from the code.
                status: reply.status_or((5, 0, 0)),
                reply: recorded,
            }
        } else {
            RcptOutcome::Deferred {
                host,
                reply: recorded,
            }
        }
    }

    /// Our own verdict (no remote reply): a 5.x.x status bounces, anything else defers.
    pub fn local(host: &str, status: Enhanced, text: impl Into<String>) -> RcptOutcome {
        let host = host.to_string();
        let reply = Reply::local(status, text.into());
        if status.is_permanent() {
            RcptOutcome::Bounced {
                host,
                status,
                reply,
            }
        } else {
            RcptOutcome::Deferred { host, reply }
        }
    }
}

pub async fn run_collector(
    mut rx: mpsc::UnboundedReceiver<Event>,
    store: StoreClient,
    config: OutboundConfig,
    stats: Arc<Stats>,
    wake: Arc<Notify>,
    drt: Kicker,
) {
    let mut c = Collector {
        inflight: HashMap::new(),
        sessions: 0,
        stop: false,
        puts: Vec::new(),
        releases: Vec::new(),
        config,
        stats,
    };
    while !c.stop {
        let Some(first) = rx.recv().await else { break };
        let now = now_ms();
        c.handle(first, now);
        for _ in 1..4096 {
            match rx.try_recv() {
                Ok(e) => c.handle(e, now),
                Err(_) => break,
            }
        }
        c.commit(&store, &drt).await;
        if !c.releases.is_empty() {
            let releases = std::mem::take(&mut c.releases);
            if let Err(e) = store.release(releases).await {
                tracing::warn!("cannot release messages: {e} (their leases will expire)");
            }
            wake.notify_one();
        }
    }
}

/// The collector's state between batches of events.
struct Collector {
    inflight: HashMap<QueueId, InFlight>,
    /// Sessions opened since the last commit.
    sessions: u64,
    stop: bool,
    /// Records finished in this batch, and ids nobody touched.
    puts: Vec<MessageRecord>,
    releases: Vec<QueueId>,
    config: OutboundConfig,
    stats: Arc<Stats>,
}

impl Collector {
    fn handle(&mut self, event: Event, now: UnixMillis) {
        match event {
            Event::Shutdown => self.stop = true,
            Event::SessionOpened => self.sessions += 1,
            Event::Register { record, lists: 0 } => self.releases.push(record.id),
            Event::Register { record, lists } => {
                let f = InFlight {
                    record,
                    lists_left: lists,
                    changed: false,
                };
                self.inflight.insert(f.record.id, f);
            }
            Event::Report { id, results, tag } => self.report(id, results, tag, now),
        }
    }

    fn report(
        &mut self,
        id: QueueId,
        results: Vec<(usize, RcptOutcome)>,
        tag: Option<Arc<str>>,
        now: UnixMillis,
    ) {
        let Some(f) = self.inflight.get_mut(&id) else {
            return;
        };
        let tag = tag.as_deref();
        for (i, outcome) in results {
            apply(
                &mut f.record,
                i,
                outcome,
                tag,
                &self.config,
                now,
                &self.stats,
            );
            f.changed = true;
        }
        f.lists_left -= 1;
        if f.lists_left > 0 {
            return;
        }
        let f = self.inflight.remove(&id).expect("present");
        if f.changed {
            let mut record = f.record;
            let warning = self.config.delay_warning.as_millis() as u64;
            finish(&mut record, now, warning);
            self.puts.push(record);
        } else {
            self.releases.push(id);
        }
    }

    /// Commits the finished records and the session counter (one store commit).
    async fn commit(&mut self, store: &StoreClient, drt: &Kicker) {
        if self.puts.is_empty() && self.sessions == 0 {
            return;
        }
        let puts = std::mem::take(&mut self.puts);
        let ids: Vec<QueueId> = puts.iter().map(|r| r.id).collect();
        let n = puts.len();
        let reports = puts
            .iter()
            .any(|r| r.location == Location::Queue(QueueName::Reports));
        let mut changes: Vec<Change> = puts.into_iter().map(Change::Put).collect();
        if self.sessions > 0 {
            changes.push(Change::AddCounters(vec![(
                mta_types::counters::OUTBOUND_SESSIONS.to_string(),
                self.sessions,
            )]));
        }
        // Replayable: if a power loss undoes it, the messages are sent again (the
        // remote may see a duplicate, nothing is lost).
        match store.commit_replayable(changes).await {
            Ok(()) => {
                self.sessions = 0;
                if reports {
                    drt.kick();
                }
            }
            Err(e) => {
                // Nothing changed in the store: the messages are sent again later
                // (at-least-once; the remote may see a duplicate).
                tracing::warn!("cannot commit {n} outbound outcomes: {e}");
                self.releases.extend(ids);
            }
        }
    }
}

/// What one applied outcome says in the log.
struct Logged {
    host: String,
    dsn: Enhanced,
    outcome: Outcome,
    text: String,
    extra: String,
}

/// Applies one recipient's outcome to the record and logs it (the one place that does).
pub fn apply(
    record: &mut MessageRecord,
    i: usize,
    outcome: RcptOutcome,
    tag: Option<&str>,
    config: &OutboundConfig,
    now: UnixMillis,
    stats: &Stats,
) {
    let (received_at, id) = (record.received_at, record.id);
    if let RcptOutcome::ContentMissing { reason } = &outcome {
        if record.location != Location::Dead {
            record.content_missing(reason);
            let note = record.note.as_deref().unwrap_or("");
            tracing::error!("qid={id} moved to Dead: {note}");
        }
        return;
    }
    let Some(r) = record.recipients.get_mut(i) else {
        return;
    };
    let logged = match outcome {
        RcptOutcome::Sent { host, reply } => sent(r, host, reply, now),
        RcptOutcome::Bounced {
            host,
            status,
            reply,
        } => bounced(r, host, status, reply, now),
        RcptOutcome::Deferred { host, reply } => {
            let age = Duration::from_millis(now.saturating_sub(received_at));
            if age >= config.queue_lifetime {
                expired(r, host, reply, age, now)
            } else {
                deferred(r, host, reply, config, now)
            }
        }
        RcptOutcome::Suspended { host, until, by } => suspended(r, host, until, by, now),
        RcptOutcome::ContentMissing { .. } => return, // handled above, for the whole record
    };
    let extra = match (logged.extra.as_str(), tag) {
        (e, None) => e.to_string(),
        ("", Some(t)) => t.to_string(),
        (e, Some(t)) => format!("{e} {t}"),
    };
    let counter = match logged.outcome {
        Outcome::Sent => &stats.sent,
        Outcome::Deferred => &stats.deferred,
        Outcome::Bounced | Outcome::Expired => &stats.bounced,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    log_outcome(&OutcomeLine {
        qid: id,
        to: &r.address,
        orig_to: None,
        relay: &logged.host,
        delay_secs: now.saturating_sub(received_at) as f64 / 1000.0,
        dsn: &logged.dsn.to_string(),
        outcome: logged.outcome,
        text: &logged.text,
        extra: &extra,
    });
}

/// Not attempted (the destination is suspended): due again when the suspension ends; no
/// attempt is added, so the retry schedule and the attempt count stay as they were.
fn suspended(
    r: &mut Recipient,
    host: String,
    until: UnixMillis,
    by: String,
    now: UnixMillis,
) -> Logged {
    r.next_retry = Some(until);
    let secs = until.saturating_sub(now).div_ceil(1000);
    Logged {
        host,
        dsn: Enhanced::new(4, 7, 0),
        outcome: Outcome::Deferred,
        text: format!("destination suspended for {secs}s more by {by}; not attempted"),
        extra: format!("retry_in={secs}s"),
    }
}

fn sent(r: &mut Recipient, host: String, reply: Reply, now: UnixMillis) -> Logged {
    let logged = Logged {
        host: host.clone(),
        dsn: reply.status_or((2, 0, 0)),
        outcome: Outcome::Sent,
        text: reply.to_string(),
        extra: String::new(),
    };
    r.relayed(now, host, reply);
    logged
}

fn bounced(
    r: &mut Recipient,
    host: String,
    status: Enhanced,
    reply: Reply,
    now: UnixMillis,
) -> Logged {
    let failed = DeliveryOutcome::Failed {
        status,
        reply: reply.clone(),
    };
    let logged = Logged {
        host: host.clone(),
        dsn: status,
        outcome: Outcome::Bounced,
        text: failed.to_string(),
        extra: String::new(),
    };
    r.attempted(now, host, failed);
    r.finish(RcptStatus::Failed {
        at: now,
        status,
        reply,
    });
    logged
}

/// A temporary failure of a message older than `queue_lifetime`: final, 4.4.7.
const EXPIRED: Enhanced = Enhanced::new(4, 4, 7);

/// The expiry of a recipient (see [`EXPIRED`]).
fn expired(
    r: &mut Recipient,
    host: String,
    reply: Reply,
    age: Duration,
    now: UnixMillis,
) -> Logged {
    let verdict = Reply::local(
        EXPIRED,
        format!(
            "message expired after {}s in the queue; last error: {reply}",
            age.as_secs()
        ),
    );
    let logged = Logged {
        host: host.clone(),
        dsn: EXPIRED,
        outcome: Outcome::Expired,
        text: verdict.to_string(),
        extra: String::new(),
    };
    // This attempt's own reply was temporary; what it led to is the expiry.
    let failed = DeliveryOutcome::Failed {
        status: EXPIRED,
        reply,
    };
    r.attempted(now, host, failed);
    r.finish(RcptStatus::Failed {
        at: now,
        status: EXPIRED,
        reply: verdict,
    });
    logged
}

fn deferred(
    r: &mut Recipient,
    host: String,
    reply: Reply,
    config: &OutboundConfig,
    now: UnixMillis,
) -> Logged {
    let n = r.attempts.len() + 1;
    let wait = config.retry[(n - 1).min(config.retry.len() - 1)];
    let next = now + wait.as_millis() as u64;
    r.next_retry = Some(next);
    let logged = Logged {
        host: host.clone(),
        dsn: reply.status_or((4, 0, 0)),
        outcome: Outcome::Deferred,
        text: reply.to_string(),
        extra: format!("retry_in={}s", wait.as_secs_f64()),
    };
    r.attempts.push(Attempt {
        at: now,
        host,
        outcome: DeliveryOutcome::Deferred { reply, next },
    });
    logged
}

/// Sets the record's location and retry time after its outcomes are in: finished records
/// go where `MessageRecord::finish` says; a record still retrying whose sender is owed a
/// delay report (`[outbound] delay_warning` passed) goes to drt first, which sends the
/// report once and puts it back in the Outbound Work Queue.
pub fn finish(record: &mut MessageRecord, now: UnixMillis, delay_warning_ms: u64) {
    if record.location == Location::Dead {
        return; // its content is missing (`RcptOutcome::ContentMissing`)
    }
    if record.all_final() {
        record.finish();
        match record.location {
            Location::Done => tracing::info!("qid={} removed", record.id),
            other => tracing::info!("qid={} finished; to {}", record.id, other.label()),
        }
        return;
    }
    record.location = if record.delay_report_due(now, delay_warning_ms) {
        Location::Queue(QueueName::Reports)
    } else {
        Location::Queue(QueueName::OutboundWork)
    };
    record.not_before = record
        .recipients
        .iter()
        .filter(|r| r.status == RcptStatus::Pending)
        .map(|r| r.next_retry.unwrap_or(now))
        .min()
        .unwrap_or(now);
    record.note = record
        .recipients
        .iter()
        .filter(|r| r.status == RcptStatus::Pending)
        .filter_map(|r| r.attempts.last())
        .filter_map(|a| a.outcome.reply().map(ToString::to_string))
        .next_back();
}
