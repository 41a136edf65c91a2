//! Statistics counters kept by the store: every state change passes through
//! `Engine::apply` with the record as it was, so the counters are updated there, in the
//! same atomic batch as the change that caused them (they can never disagree with the
//! queue after a crash).
//!
//! Key: `s` + counter name → u64 big-endian. Cumulative counters (since the store was
//! created): see `CUMULATIVE`. Live values (Mail.Waiting, Mail.Hold, Mail.Dead,
//! Mail.WaitingForDeliveryThreads) are counted from the queue indexes at query time.

use mta_types::{DeliveryOutcome, Location, MessageRecord, QueueName, RcptStatus};
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
    /// The next hop (`local` for a Maildir); empty where no host was involved (an alias
    /// expansion, a report, an operator's delete).
    pub host: String,
    pub outcome: DeliveryOutcome,
}

impl RecentOutcome {
    /// The mailbox, the next hop and its reply, or the failure's reason, as one line.
    pub fn detail(&self) -> String {
        match self.host.as_str() {
            "" | "local" => self.outcome.to_string(),
            host => format!("{host}: {}", self.outcome),
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
            let old_r = old
                .and_then(|o| o.recipients.get(i))
                .filter(|o| o.address == r.address);
            let mut outcome = |at: u64, host: &str, outcome: DeliveryOutcome| {
                self.1.push(RecentOutcome {
                    at,
                    id: new.id,
                    recipient: r.address.to_string(),
                    host: host.to_string(),
                    outcome,
                })
            };
            // A delivery report about it went out: drt marks a recipient whose state it
            // leaves as it was (a final outcome set in the same change, like the operator's
            // delete, is marked without a report).
            if old_r.is_some_and(|o| {
                o.status == r.status
                    && ((!o.final_reported && r.final_reported)
                        || (!o.delay_reported && r.delay_reported))
            }) {
                outcome(mta_types::message::now_ms(), "", DeliveryOutcome::Reported);
            }
            if was_final {
                continue;
            }
            let host = |default: &str| {
                r.attempts
                    .last()
                    .map_or(default.to_string(), |a| a.host.clone())
            };
            match &r.status {
                // Not a delivery: the targets are counted as they are delivered.
                RcptStatus::Expanded { .. } => {
                    if let Some((at, o)) = r.status.outcome() {
                        outcome(at, "", o);
                    }
                }
                RcptStatus::Delivered { at, .. } => {
                    if let Some((at, o)) = r.status.outcome() {
                        outcome(at, "local", o);
                    }
                    self.add(DELIVERED, 1);
                    self.add(BYTES_DELIVERED, new.size);
                    self.delivery(new, *at);
                }
                RcptStatus::Relayed { at, host, .. } => {
                    if let Some((at, o)) = r.status.outcome() {
                        outcome(at, host, o);
                    }
                    self.add(TRANSFERRED, 1);
                    self.add(BYTES_TRANSFERRED, new.size);
                    self.delivery(new, *at);
                }
                RcptStatus::Failed { .. } => {
                    if let Some((at, o)) = r.status.outcome() {
                        outcome(at, &host(""), o);
                    }
                    self.add(TOTAL_FAILURES, 1)
                }
                RcptStatus::Pending => {
                    // A new attempt on a recipient still pending: a temporary failure.
                    let before = old_r.map_or(0, |o| o.attempts.len());
                    if let Some(a) = r.attempts.last().filter(|_| r.attempts.len() > before) {
                        outcome(a.at, &a.host, a.outcome.clone());
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
    use mta_types::outcome::Reply;
    use mta_types::{QueueId, Recipient};

    fn record(loc: Location, rcpts: usize) -> MessageRecord {
        MessageRecord {
            schema: RECORD_SCHEMA,
            id: QueueId::generate(),
            location: loc,
            received_at: 1000,
            size: 100,
            envelope: Envelope::new(
                Some("s@example.org".parse().unwrap()),
                "h",
                "127.0.0.1",
                "ESMTP",
            ),
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
            status: (5, 1, 1).into(),
            reply: Reply::local((5, 1, 1), "user unknown"),
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
            reply: Reply::remote(250, None, "ok"),
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
                outcome: DeliveryOutcome::Deferred {
                    reply: Reply::remote(451, None, "try later"),
                    next: 3000,
                },
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
        new.recipients[0].status = RcptStatus::Expanded {
            at: 1,
            to: vec!["a@localhost".parse().unwrap()],
        };
        let mut d = Deltas::default();
        d.record_change(Some(&old), &new);
        assert_eq!(d.0.get(DELIVERED), None);
        assert_eq!(d.1.len(), 1);
        assert_eq!(d.1[0].outcome.label(), "expanded");
    }

    #[test]
    fn a_report_is_an_outcome_and_the_operators_delete_is_not_one() {
        let mut old = record(Location::Queue(QueueName::Reports), 2);
        old.recipients[0].status = RcptStatus::Failed {
            at: 1,
            status: (5, 1, 1).into(),
            reply: Reply::local((5, 1, 1), "user unknown"),
        };
        let mut new = old.clone();
        new.recipients[0].final_reported = true;
        new.recipients[1].delay_reported = true;
        let mut d = Deltas::default();
        d.record_change(Some(&old), &new);
        let labels: Vec<_> = d.1.iter().map(|o| o.outcome.label()).collect();
        assert_eq!(labels, ["reported", "reported"]);
        assert_eq!(d.0.get(TOTAL_FAILURES), None);
        // Deleted: failed and marked reported at once, no report sent.
        let mut deleted = old.clone();
        deleted.recipients[1].status = RcptStatus::Failed {
            at: 2,
            status: (5, 0, 0).into(),
            reply: Reply::local((5, 0, 0), "deleted by the operator"),
        };
        deleted.recipients[1].final_reported = true;
        let mut d = Deltas::default();
        d.record_change(Some(&old), &deleted);
        let labels: Vec<_> = d.1.iter().map(|o| o.outcome.label()).collect();
        assert_eq!(labels, ["failed"]);
    }
}
