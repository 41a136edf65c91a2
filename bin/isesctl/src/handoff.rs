//! A message handed off by a fleet peer (`XFLEET`, `mta_smtp::handoff`): what its
//! parameters change in the record made at intake. Only a client authenticated as the
//! fleet peer gets this far with them (the session refuses everyone else with 555).
//!
//! - `received_at` is the arrival on the first node, so the queue lifetime and the delay
//!   warning count from there (at most now: a peer's clock ahead of ours must not put
//!   an arrival in the future);
//! - each recipient gets its attempts back: the last one as it was (time, error), the
//!   earlier ones as placeholders naming the first node (the retry schedule reads their
//!   number), at most `MAX_ATTEMPTS`; and whether a delay report was sent already;
//! - the route trace and the note say where it came from and its queue ID there.
//!
//! Logs: `qid=… handed off from <node> as <qid there>` per message.

use mta_smtp::handoff::HandoffRcpt;
use mta_types::message::{Attempt, UnixMillis};
use mta_types::outcome::Reply;
use mta_types::{DeliveryOutcome, MessageRecord, Recipient};

/// Most attempts rebuilt per recipient (a record stays small whatever the peer says).
const MAX_ATTEMPTS: u32 = 64;

/// Applies MAIL's and RCPT's `XFLEET` to `record` (made from `env` by the intake).
pub fn apply(record: &mut MessageRecord, env: &mta_smtp::Transaction, now: UnixMillis) {
    let Some(origin) = &env.mail_params.handoff else {
        return;
    };
    record.received_at = origin.arrival_ms.min(now);
    let from = format!("{} as {}", origin.node, origin.qid);
    record
        .trace
        .route
        .push((format!("handed off from {from}"), now));
    record.note = Some(format!("handed off from {from}"));
    for (rcpt, (_, params)) in record.recipients.iter_mut().zip(&env.rcpts) {
        if let Some(history) = &params.handoff {
            restore(rcpt, history, &origin.node, record.received_at);
        }
    }
    tracing::info!(qid = %record.id, "qid={} handed off from {from}", record.id);
}

fn restore(rcpt: &mut Recipient, history: &HandoffRcpt, node: &str, arrival: UnixMillis) {
    rcpt.delay_reported = history.delay_reported;
    let n = history.attempts.min(MAX_ATTEMPTS);
    rcpt.attempts = (1..=n)
        .map(|i| {
            let last = i == n;
            let text = if last && !history.last_error.is_empty() {
                history.last_error.clone()
            } else {
                format!("attempt {i} on {node}, before the hand-off")
            };
            Attempt {
                at: if last {
                    history.last_at.max(arrival)
                } else {
                    arrival
                },
                host: node.to_string(),
                outcome: DeliveryOutcome::Deferred {
                    reply: Reply::local(mta_types::outcome::Enhanced::new(4, 0, 0), text),
                    next: 0,
                },
            }
        })
        .collect();
}
