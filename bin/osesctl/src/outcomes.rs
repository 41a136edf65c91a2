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
use mta_task::{log_outcome, Outcome};
use mta_types::message::{now_ms, Attempt, UnixMillis};
use mta_types::outcome::Reply;
use mta_types::{DeliveryOutcome, Enhanced};
use mta_types::{Location, MessageRecord, QueueId, QueueName, RcptStatus};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
}

#[allow(clippy::large_enum_variant)] // one per claimed record, moved once
pub enum Event {
    /// A claimed record and the number of lists carrying its recipients.
    Register { record: MessageRecord, lists: usize },
    /// One list's outcomes for one message (`results` empty: not attempted).
    Report {
        id: QueueId,
        results: Vec<(usize, RcptOutcome)>,
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

/// The enhanced code and text of a reply as kept in records: `250 2.0.0 Ok: queued`.
pub fn reply_text(reply: &mta_smtp::Reply) -> String {
    match reply.enhanced {
        Some(e) => format!("{} {e} {}", reply.code, reply.text()),
        None => format!("{} {}", reply.code, reply.text()),
    }
}

/// The enhanced status of a reply, or `X.0.0` from its code.
pub fn reply_status(reply: &mta_smtp::Reply) -> Enhanced {
    reply.enhanced.unwrap_or(Enhanced::of_code(reply.code))
}

pub async fn run_collector(
    mut rx: mpsc::UnboundedReceiver<Event>,
    store: StoreClient,
    config: OutboundConfig,
    stats: Arc<Stats>,
    wake: Arc<Notify>,
    drt: Kicker,
) {
    let mut inflight: HashMap<QueueId, InFlight> = HashMap::new();
    let mut sessions = 0u64;
    let mut stop = false;
    while !stop {
        let Some(first) = rx.recv().await else { break };
        let mut events = vec![first];
        while events.len() < 4096 {
            match rx.try_recv() {
                Ok(e) => events.push(e),
                Err(_) => break,
            }
        }
        let now = now_ms();
        let mut puts = Vec::new();
        let mut releases = Vec::new();
        for event in events {
            match event {
                Event::Shutdown => stop = true,
                Event::SessionOpened => sessions += 1,
                Event::Register { record, lists } => {
                    if lists == 0 {
                        releases.push(record.id);
                    } else {
                        inflight.insert(
                            record.id,
                            InFlight {
                                record,
                                lists_left: lists,
                                changed: false,
                            },
                        );
                    }
                }
                Event::Report { id, results } => {
                    let Some(f) = inflight.get_mut(&id) else {
                        continue;
                    };
                    for (i, outcome) in results {
                        apply(&mut f.record, i, outcome, &config, now, &stats);
                        f.changed = true;
                    }
                    f.lists_left -= 1;
                    if f.lists_left == 0 {
                        let f = inflight.remove(&id).expect("present");
                        if f.changed {
                            let mut record = f.record;
                            finish(&mut record, now, config.delay_warning.as_millis() as u64);
                            puts.push(record);
                        } else {
                            releases.push(id);
                        }
                    }
                }
            }
        }
        if !puts.is_empty() || sessions > 0 {
            let ids: Vec<QueueId> = puts.iter().map(|r| r.id).collect();
            let n = puts.len();
            let reports = puts
                .iter()
                .any(|r| r.location == Location::Queue(QueueName::Reports));
            let mut changes: Vec<Change> = puts.into_iter().map(Change::Put).collect();
            if sessions > 0 {
                changes.push(Change::AddCounters(vec![(
                    mta_types::counters::OUTBOUND_SESSIONS.to_string(),
                    sessions,
                )]));
            }
            // Replayable: if a power loss undoes it, the messages are sent again (the
            // remote may see a duplicate, nothing is lost).
            match store.commit_replayable(changes).await {
                Ok(()) => {
                    sessions = 0;
                    if reports {
                        drt.kick();
                    }
                }
                Err(e) => {
                    // Nothing changed in the store: the messages are sent again later
                    // (at-least-once; the remote may see a duplicate).
                    tracing::warn!("cannot commit {n} outbound outcomes: {e}");
                    releases.extend(ids);
                }
            }
        }
        if !releases.is_empty() {
            if let Err(e) = store.release(releases).await {
                tracing::warn!("cannot release messages: {e} (their leases will expire)");
            }
            wake.notify_one();
        }
    }
}

/// Applies one recipient's outcome to the record and logs it.
pub fn apply(
    record: &mut MessageRecord,
    i: usize,
    outcome: RcptOutcome,
    config: &OutboundConfig,
    now: UnixMillis,
    stats: &Stats,
) {
    let received_at = record.received_at;
    let id = record.id;
    if let RcptOutcome::ContentMissing { reason } = &outcome {
        if record.location != Location::Dead {
            record.content_missing(reason);
            tracing::error!(
                "qid={} moved to Dead: {}",
                record.id,
                record.note.as_deref().unwrap_or("")
            );
        }
        return;
    }
    let Some(r) = record.recipients.get_mut(i) else {
        return;
    };
    let delay = now.saturating_sub(received_at) as f64 / 1000.0;
    match outcome {
        RcptOutcome::Sent { host, reply } => {
            let text = reply.to_string();
            let dsn = reply.status_or((2, 0, 0));
            log_outcome(
                id,
                &r.address,
                None,
                &host,
                delay,
                &dsn.to_string(),
                Outcome::Sent,
                &text,
                "",
            );
            r.attempts.push(Attempt {
                at: now,
                host: host.clone(),
                outcome: DeliveryOutcome::Relayed {
                    reply: reply.clone(),
                },
            });
            r.status = RcptStatus::Relayed {
                at: now,
                host,
                reply,
            };
            r.next_retry = None;
            stats.sent.fetch_add(1, Ordering::Relaxed);
        }
        RcptOutcome::Bounced {
            host,
            status,
            reply,
        } => {
            let failed = DeliveryOutcome::Failed {
                status,
                reply: reply.clone(),
            };
            log_outcome(
                id,
                &r.address,
                None,
                &host,
                delay,
                &status.to_string(),
                Outcome::Bounced,
                &failed.to_string(),
                "",
            );
            r.attempts.push(Attempt {
                at: now,
                host,
                outcome: failed,
            });
            r.status = RcptStatus::Failed {
                at: now,
                status,
                reply,
            };
            r.next_retry = None;
            stats.bounced.fetch_add(1, Ordering::Relaxed);
        }
        RcptOutcome::Deferred { host, reply } => {
            let age = std::time::Duration::from_millis(now.saturating_sub(received_at));
            if age >= config.queue_lifetime {
                let verdict = Reply::local(
                    (4, 4, 7),
                    format!(
                        "message expired after {}s in the queue; last error: {reply}",
                        age.as_secs()
                    ),
                );
                let text = verdict.to_string();
                log_outcome(
                    id,
                    &r.address,
                    None,
                    &host,
                    delay,
                    "4.4.7",
                    Outcome::Expired,
                    &text,
                    "",
                );
                // This attempt's own reply was temporary; what it led to is the expiry.
                r.attempts.push(Attempt {
                    at: now,
                    host,
                    outcome: DeliveryOutcome::Failed {
                        status: (4, 4, 7).into(),
                        reply,
                    },
                });
                r.status = RcptStatus::Failed {
                    at: now,
                    status: (4, 4, 7).into(),
                    reply: verdict,
                };
                r.next_retry = None;
                stats.bounced.fetch_add(1, Ordering::Relaxed);
            } else {
                let n = r.attempts.len() + 1;
                let wait = config.retry[(n - 1).min(config.retry.len() - 1)];
                let next = now + wait.as_millis() as u64;
                r.next_retry = Some(next);
                let dsn = reply.status_or((4, 0, 0));
                let text = reply.to_string();
                let retry = format!("retry_in={}s", wait.as_secs_f64());
                log_outcome(
                    id,
                    &r.address,
                    None,
                    &host,
                    delay,
                    &dsn.to_string(),
                    Outcome::Deferred,
                    &text,
                    &retry,
                );
                r.attempts.push(Attempt {
                    at: now,
                    host,
                    outcome: DeliveryOutcome::Deferred { reply, next },
                });
                stats.deferred.fetch_add(1, Ordering::Relaxed);
            }
        }
        RcptOutcome::ContentMissing { .. } => {} // handled above, for the whole record
    }
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
