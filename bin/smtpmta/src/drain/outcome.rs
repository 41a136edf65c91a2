//! What the peer's replies do to a message being handed off.
//!
//! - A recipient the peer took (its RCPT and the end of DATA answered 2xx) is `Relayed`
//!   to the peer, with the peer's 250 as the reply and the hand-off noted ("handed off to
//!   <peer> as <its queue ID>"); its reports are the peer's now (`final_reported`: the
//!   NOTIFY went along), so this node writes none for it.
//! - One refused for good (5xx) stays pending here and the message is held (from the
//!   queue it was in) with the reply as the reason, for the operator: a drain never
//!   bounces mail.
//! - Anything else (4xx, the session broke) changes nothing: the record is given back and
//!   a later pass tries again.
//!
//! A message whose recipients are all final leaves the queue the usual way (`finish`),
//! its history going to the tracking log with the note.

use mta_smtp::client::{EnvelopeReplies, SessionError};
use mta_smtp::Reply;
use mta_types::message::UnixMillis;
use mta_types::{Location, MessageRecord};

/// What to do with the record after the attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Some recipients went (and none was refused): commit.
    HandedOff { qid: String },
    /// Some recipient was refused for good: held here; commit.
    Refused { reason: String },
    /// Nothing changed: give the record back.
    Retry { reason: String },
}

pub fn apply(
    record: &mut MessageRecord,
    rcpts: &[usize],
    sent: Result<EnvelopeReplies, SessionError>,
    peer: &str,
    now: UnixMillis,
) -> Effect {
    let sent = match sent {
        Ok(s) => s,
        Err(e) => {
            return Effect::Retry {
                reason: format!("{peer}: {e}"),
            }
        }
    };
    if !sent.mail.is_positive() {
        let reason = format!("{peer} refused MAIL: {}", sent.mail.code_text());
        return if sent.mail.is_permanent() {
            hold(record, reason)
        } else {
            Effect::Retry { reason }
        };
    }
    let data = sent.data.as_ref();
    let data_ok = data.is_some_and(Reply::is_completion);
    let mut taken = Vec::new();
    let mut refused = Vec::new();
    for (i, reply) in rcpts.iter().zip(&sent.rcpts) {
        if reply.is_positive() {
            match data {
                Some(_) if data_ok => taken.push(*i),
                Some(d) if d.is_permanent() => refused.push((*i, d.code_text())),
                _ => {}
            }
        } else if reply.is_permanent() {
            refused.push((*i, reply.code_text()));
        }
    }
    let qid = data
        .filter(|_| data_ok)
        .and_then(mta_smtp::handoff::queued_id)
        .unwrap_or_else(|| "?".into());
    if !taken.is_empty() {
        let reply = data.expect("taken only after DATA").recorded();
        for i in &taken {
            let r = &mut record.recipients[*i];
            r.relayed(now, peer.to_string(), reply.clone());
            r.final_reported = true;
        }
        record.note = Some(format!("handed off to {peer} as {qid}"));
    }
    if let Some((i, why)) = refused.first() {
        let reason = format!(
            "hand-off to {peer} refused for <{}>: {why}",
            record.recipients[*i].address
        );
        return hold(record, reason);
    }
    if taken.is_empty() {
        let why = sent
            .rcpts
            .iter()
            .find(|r| !r.is_positive())
            .map(Reply::code_text)
            .or_else(|| data.map(Reply::code_text))
            .unwrap_or_else(|| "no recipient accepted".into());
        return Effect::Retry {
            reason: format!("{peer}: {why}"),
        };
    }
    if record.all_final() {
        record.finish();
    }
    Effect::HandedOff { qid }
}

/// Holds the message here with `reason` (its refused recipients stay pending), unless it
/// is parked already (held, dead): then only the reason changes.
fn hold(record: &mut MessageRecord, reason: String) -> Effect {
    if let Location::Queue(from) = record.location {
        record.location = Location::Held { from };
    }
    let handed = record.note.take().filter(|n| n.starts_with("handed off"));
    record.note = Some(match handed {
        Some(h) => format!("{reason}; the others {h}"),
        None => reason.clone(),
    });
    Effect::Refused { reason }
}
