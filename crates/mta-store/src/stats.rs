//! Statistics counters kept by the store: every state change passes through
//! `Engine::apply` with the record as it was, so the counters are updated there, in the
//! same atomic batch as the change that caused them (they can never disagree with the
//! queue after a crash).
//!
//! Key: `s` + counter name → u64 big-endian. Cumulative counters (since the store was
//! created): see `CUMULATIVE`. Live values (Mail.Waiting, Mail.Hold, Mail.Dead,
//! Mail.WaitingForDeliveryThreads) are counted from the queue indexes at query time.

use mta_types::message::ALIAS_EXPANDED;
use mta_types::{Location, MessageRecord, QueueName, RcptStatus};
use std::collections::BTreeMap;

pub use mta_types::counters::*;

/// Every cumulative counter, in the order `show stat mail` lists them.
pub const CUMULATIVE: &[&str] = &[
    RECEIVED,
    DELIVERED,
    TRANSFERRED,
    TOTAL_ROUTED,
    TOTAL_FAILURES,
    CONVERSION_ERRORS,
    TOTAL_DEAD,
    REPORTS_SENT,
    INBOUND_SESSIONS,
    OUTBOUND_SESSIONS,
    DEFERRED,
    DELIVER_TIME_SUM_MS,
    DELIVER_TIME_COUNT,
    SIZE_DELIVERED_SUM,
];

/// How many recent outcomes the store remembers (the status page's "last deliveries").
pub const RECENT_OUTCOMES: usize = 50;

/// One recipient's delivery outcome or attempt, as the status page lists it. Kept in memory
/// only (since the supervisor started): the lasting history is the record's attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentOutcome {
    pub at: u64,
    pub id: mta_types::QueueId,
    pub recipient: String,
    pub outcome: Outcome,
    /// The mailbox, the next hop and its reply, or the failure's reason.
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Relayed,
    Deferred,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Relayed => "relayed",
            Outcome::Deferred => "deferred",
            Outcome::Failed => "failed",
        }
    }
}

/// Increments accumulated while one batch is built, and the outcomes it records.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct Deltas(pub BTreeMap<String, u64>, pub Vec<RecentOutcome>);

impl Deltas {
    pub fn add(&mut self, name: &str, by: u64) {
        if by > 0 {
            *self.0.entry(name.to_string()).or_default() += by;
        }
    }

    /// The counters a change of one record causes (`old` as stored before, `new` as put).
    pub fn record_change(&mut self, old: Option<&MessageRecord>, new: &MessageRecord) {
        let old_loc = old.map(|r| r.location);
        let mail_box = Location::Queue(QueueName::MailBox);
        if old_loc == Some(mail_box) && new.location != mail_box {
            self.add(TOTAL_ROUTED, 1);
        }
        if new.location == Location::ConversionError && old_loc != Some(Location::ConversionError) {
            self.add(CONVERSION_ERRORS, 1);
        }
        if new.location == Location::Dead && old_loc != Some(Location::Dead) {
            self.add(TOTAL_DEAD, 1);
        }
        if old.is_none() && new.is_report() {
            self.add(REPORTS_SENT, 1);
        }
        if old.is_none() && !new.is_report() {
            self.add(RECEIVED, 1);
        }
        for (i, r) in new.recipients.iter().enumerate() {
            let was_final = old
                .and_then(|o| o.recipients.get(i))
                .is_some_and(|o| o.address == r.address && o.status.is_final());
            if was_final {
                continue;
            }
            let mut outcome = |at: u64, outcome: Outcome, detail: String| {
                self.1.push(RecentOutcome {
                    at,
                    id: new.id,
                    recipient: r.address.to_string(),
                    outcome,
                    detail,
                })
            };
            match &r.status {
                RcptStatus::Delivered { mailbox, .. } if mailbox.starts_with(ALIAS_EXPANDED) => {}
                RcptStatus::Delivered { at, mailbox } => {
                    outcome(*at, Outcome::Delivered, mailbox.clone());
                    self.add(DELIVERED, 1);
                    self.add(BYTES_DELIVERED, new.size);
                    self.delivery(new, *at);
                }
                RcptStatus::Relayed { at, host, reply } => {
                    outcome(*at, Outcome::Relayed, format!("{host}: {reply}"));
                    self.add(TRANSFERRED, 1);
                    self.add(BYTES_TRANSFERRED, new.size);
                    self.delivery(new, *at);
                }
                RcptStatus::Failed { at, status, reason } => {
                    let detail = if reason.starts_with(status.as_str()) {
                        reason.clone()
                    } else {
                        format!("{status} {reason}")
                    };
                    outcome(*at, Outcome::Failed, detail);
                    self.add(TOTAL_FAILURES, 1)
                }
                RcptStatus::Pending => {
                    // A new attempt on a recipient still pending: a temporary failure.
                    let before = old
                        .and_then(|o| o.recipients.get(i))
                        .filter(|o| o.address == r.address)
                        .map_or(0, |o| o.attempts.len());
                    if let Some(a) = r.attempts.last().filter(|_| r.attempts.len() > before) {
                        outcome(a.at, Outcome::Deferred, format!("{}: {}", a.host, a.reply));
                    }
                    self.add(DEFERRED, r.attempts.len().saturating_sub(before) as u64);
                }
            }
        }
    }

    fn delivery(&mut self, record: &MessageRecord, at: u64) {
        let took = at.saturating_sub(record.received_at);
        self.add(&deliver_time_bucket(took), 1);
        self.add(DELIVER_TIME_SUM_MS, took);
        self.add(DELIVER_TIME_COUNT, 1);
        self.add(SIZE_DELIVERED_SUM, record.size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mta_types::message::{ContentRef, Envelope, HopTrace, RECORD_SCHEMA};
    use mta_types::{QueueId, Recipient};

    fn record(loc: Location, rcpts: usize) -> MessageRecord {
        MessageRecord {
            schema: RECORD_SCHEMA,
            id: QueueId::generate(),
            location: loc,
            received_at: 1000,
            size: 100,
            envelope: Envelope {
                mail_from: Some("s@example.org".parse().unwrap()),
                ret: None,
                envid: None,
                helo: "h".into(),
                client_ip: "127.0.0.1".into(),
                protocol: "ESMTP".into(),
                utf8: false,
                eight_bit: false,
            },
            recipients: (0..rcpts)
                .map(|i| Recipient::new(format!("u{i}@localhost").parse().unwrap()))
                .collect(),
            content: ContentRef {
                segment: "x.seg".into(),
                offset: 0,
                len: 100,
            },
            fields: None,
            trace: HopTrace::default(),
            not_before: 0,
            note: None,
        }
    }

    #[test]
    fn counts_each_outcome_once() {
        let old = record(Location::Queue(QueueName::MailBox), 3);
        let mut new = old.clone();
        new.location = Location::Queue(QueueName::SmtpBox);
        new.recipients[0].status = RcptStatus::Delivered {
            at: 1500,
            mailbox: "u0".into(),
        };
        new.recipients[1].status = RcptStatus::Failed {
            at: 1500,
            status: "5.1.1".into(),
            reason: "user unknown".into(),
        };
        let mut d = Deltas::default();
        d.record_change(Some(&old), &new);
        assert_eq!(d.0[DELIVERED], 1);
        assert_eq!(d.0[TOTAL_FAILURES], 1);
        assert_eq!(d.0[TOTAL_ROUTED], 1);
        assert_eq!(d.0[DELIVER_TIME_SUM_MS], 500);
        assert_eq!(d.0["Mail.DeliverTime.Bucket.500"], 1);
        assert_eq!(d.0[SIZE_DELIVERED_SUM], 100);
        // Committed again (e.g. later relayed): the earlier outcomes are not counted twice.
        let mut later = new.clone();
        later.recipients[2].status = RcptStatus::Relayed {
            at: 2000,
            host: "mx".into(),
            reply: "250 ok".into(),
        };
        later.location = Location::Done;
        let mut d = Deltas::default();
        d.record_change(Some(&new), &later);
        assert_eq!(d.0.get(DELIVERED), None);
        assert_eq!(d.0[TRANSFERRED], 1);
        assert_eq!(d.0.get(TOTAL_ROUTED), None);
    }

    #[test]
    fn received_once_and_each_temporary_failure_deferred() {
        let new = record(Location::Queue(QueueName::InboundWork), 2);
        let mut d = Deltas::default();
        d.record_change(None, &new);
        assert_eq!(d.0[RECEIVED], 1);
        assert_eq!(d.0.get(DEFERRED), None);
        let mut tried = new.clone();
        for r in &mut tried.recipients {
            r.attempts.push(mta_types::message::Attempt {
                at: 2000,
                host: "mx".into(),
                reply: "451 try later".into(),
            });
        }
        let mut d = Deltas::default();
        d.record_change(Some(&new), &tried);
        assert_eq!(d.0[DEFERRED], 2);
        assert_eq!(d.0.get(RECEIVED), None);
        // Committed again without a new attempt: nothing more.
        let mut d = Deltas::default();
        d.record_change(Some(&tried), &tried.clone());
        assert_eq!(d.0.get(DEFERRED), None);
    }

    #[test]
    fn alias_expansion_is_not_a_delivery() {
        let old = record(Location::Queue(QueueName::MailBox), 1);
        let mut new = old.clone();
        new.recipients[0].status = RcptStatus::Delivered {
            at: 1,
            mailbox: format!("{ALIAS_EXPANDED}a@localhost"),
        };
        let mut d = Deltas::default();
        d.record_change(Some(&old), &new);
        assert_eq!(d.0.get(DELIVERED), None);
    }
}
