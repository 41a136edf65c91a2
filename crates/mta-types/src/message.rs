//! The native document: the project's own typed record of a message, the analogue of a
//! Notes mail document. It travels between tasks through the store; the content itself
//! stays in the spool and is referenced by `ContentRef`.

use crate::outcome::{DeliveryOutcome, Enhanced, Reply};
use crate::{Address, QueueId, QueueName};
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// Bumped whenever `MessageRecord` changes shape; the store refuses records it cannot read.
pub const RECORD_SCHEMA: u16 = 4;

/// Milliseconds since the Unix epoch (the store's clock unit).
pub type UnixMillis = u64;

pub fn now_ms() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where message content lives: a byte range of an append-only spool segment.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContentRef {
    /// Segment file name inside `<data_dir>/spool/`.
    pub segment: String,
    pub offset: u64,
    pub len: u64,
}

/// Where a message is: in a queue waiting for its consumer, or in a terminal or parked state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Location {
    Queue(QueueName),
    /// Parked by the operator (`hold`); `release` puts it back in `Queue(held_from)`.
    Held {
        from: QueueName,
    },
    /// Will not be routed: too many hops, or its delivery report could not be delivered.
    Dead,
    /// `imsgcnv` could not convert it; kept for the operator.
    ConversionError,
    /// Every recipient has a final outcome; the record goes away at the next commit.
    Done,
}

impl Location {
    pub fn label(self) -> &'static str {
        match self {
            Location::Queue(QueueName::OutboundWork) => "Pending Transmission",
            Location::Queue(_) => "Pending",
            Location::Held { .. } => "Held",
            Location::Dead => "Dead",
            Location::ConversionError => "Conversion Error",
            Location::Done => "Done",
        }
    }
}

/// RFC 3461 RET: the one type for it, from the MAIL parameter (mta-smtp) to the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    Full,
    Hdrs,
}

/// RFC 3461 NOTIFY: `never`, or any of success/failure/delay. The one type for it, from
/// the RCPT parameter (mta-smtp) to the record and drt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    pub never: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    /// `NOTIFY=NEVER`.
    pub const NEVER: Notify = Notify {
        never: true,
        success: false,
        failure: false,
        delay: false,
    };

    /// `NOTIFY=` some of SUCCESS, FAILURE, DELAY.
    pub const fn on(success: bool, failure: bool, delay: bool) -> Notify {
        Notify {
            never: false,
            success,
            failure,
            delay,
        }
    }
}

/// The SMTP envelope as received, plus the session facts the Received header and the
/// logs need.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// `None` is the null reverse-path `<>` (a delivery report: never bounced).
    pub mail_from: Option<Address>,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    pub helo: String,
    pub client_ip: String,
    pub protocol: String,
    /// SMTPUTF8 was given on MAIL.
    pub utf8: bool,
    /// BODY=8BITMIME (or the content has 8-bit octets).
    pub eight_bit: bool,
    /// The SMTP AUTH identity the client authenticated as (RFC 4954), if it did. Schema 4.
    pub auth: Option<String>,
}

impl Envelope {
    /// An envelope with no DSN parameters, no AUTH identity and 7-bit ASCII content: what
    /// our own messages (delivery reports, TLS reports) carry; set the rest with `..`.
    pub fn new(
        mail_from: Option<Address>,
        helo: impl Into<String>,
        client_ip: impl Into<String>,
        protocol: impl Into<String>,
    ) -> Envelope {
        Envelope {
            mail_from,
            ret: None,
            envid: None,
            helo: helo.into(),
            client_ip: client_ip.into(),
            protocol: protocol.into(),
            utf8: false,
            eight_bit: false,
            auth: None,
        }
    }

    /// The reverse-path as logs and reports print it inside `<>`: empty for the null path.
    pub fn return_path(&self) -> String {
        self.mail_from
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

/// One recipient's state. The final states carry typed outcomes (see `crate::outcome`);
/// `outcome()` gives the one `DeliveryOutcome` each stands for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RcptStatus {
    /// Not yet handled (or waiting for a retry).
    Pending,
    /// Written to a local Maildir.
    Delivered { at: UnixMillis, mailbox: String },
    /// A local alias the router replaced by these recipients (added to the message).
    Expanded { at: UnixMillis, to: Vec<Address> },
    /// Accepted by the next hop.
    Relayed {
        at: UnixMillis,
        host: String,
        reply: Reply,
    },
    /// Permanently failed (or expired); `status` is the enhanced code, e.g. 5.1.1, and
    /// `reply` the server's reply or our own verdict.
    Failed {
        at: UnixMillis,
        status: Enhanced,
        reply: Reply,
    },
}

impl RcptStatus {
    pub fn is_final(&self) -> bool {
        !matches!(self, RcptStatus::Pending)
    }

    /// The final outcome this status records (`None` while pending), with its time.
    pub fn outcome(&self) -> Option<(UnixMillis, DeliveryOutcome)> {
        Some(match self {
            RcptStatus::Pending => return None,
            RcptStatus::Delivered { at, mailbox } => (
                *at,
                DeliveryOutcome::Delivered {
                    mailbox: mailbox.clone(),
                },
            ),
            RcptStatus::Expanded { at, to } => (*at, DeliveryOutcome::Expanded { to: to.clone() }),
            RcptStatus::Relayed { at, reply, .. } => (
                *at,
                DeliveryOutcome::Relayed {
                    reply: reply.clone(),
                },
            ),
            RcptStatus::Failed { at, status, reply } => (
                *at,
                DeliveryOutcome::Failed {
                    status: *status,
                    reply: reply.clone(),
                },
            ),
        })
    }
}

/// One delivery attempt, kept for message tracking and delivery reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub at: UnixMillis,
    /// The next hop (`mx.example[192.0.2.1]`), or `local` for a Maildir.
    pub host: String,
    pub outcome: DeliveryOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: Address,
    /// RFC 3461 ORCPT as given (`rfc822;user@example.com`).
    pub orcpt: Option<String>,
    pub notify: Option<Notify>,
    pub status: RcptStatus,
    pub attempts: Vec<Attempt>,
    /// Earliest time of the next attempt for a pending recipient.
    pub next_retry: Option<UnixMillis>,
    /// A delay DSN was sent for this recipient (sent once, see `delay_report_due`).
    pub delay_reported: bool,
    /// Its final outcome was reported (or needs no report): `drt` will not report it again.
    pub final_reported: bool,
}

impl Recipient {
    pub fn new(address: Address) -> Recipient {
        Recipient {
            address,
            orcpt: None,
            notify: None,
            status: RcptStatus::Pending,
            attempts: Vec::new(),
            next_retry: None,
            delay_reported: false,
            final_reported: false,
        }
    }

    /// Keeps one attempt at `host` and what it came to (tracking, reports, retry schedule).
    pub fn attempted(&mut self, at: UnixMillis, host: impl Into<String>, outcome: DeliveryOutcome) {
        let host = host.into();
        self.attempts.push(Attempt { at, host, outcome });
    }

    /// A final state: no retry follows.
    pub fn finish(&mut self, status: RcptStatus) {
        self.status = status;
        self.next_retry = None;
    }

    /// Relayed to `host`, which took it with `reply`: the attempt and the final state.
    pub fn relayed(&mut self, at: UnixMillis, host: String, reply: Reply) {
        let outcome = DeliveryOutcome::Relayed {
            reply: reply.clone(),
        };
        self.attempted(at, host.clone(), outcome);
        self.finish(RcptStatus::Relayed { at, host, reply });
    }

    /// NOTIFY allows a failure report (RFC 3461: the default is FAILURE).
    pub fn notify_failure(&self) -> bool {
        self.notify.is_none_or(|n| !n.never && n.failure)
    }

    /// NOTIFY allows a delay report (the default, NOTIFY absent, allows it).
    pub fn notify_delay(&self) -> bool {
        self.notify.is_none_or(|n| !n.never && n.delay)
    }

    /// NOTIFY=SUCCESS was given.
    pub fn notify_success(&self) -> bool {
        self.notify.is_some_and(|n| !n.never && n.success)
    }

    /// The kind of report this recipient needs now, if any (delays excepted: see
    /// `MessageRecord::delay_report_due`).
    pub fn final_report(&self) -> Option<ReportAction> {
        if self.final_reported {
            return None;
        }
        match &self.status {
            RcptStatus::Failed { .. } if self.notify_failure() => Some(ReportAction::Failed),
            RcptStatus::Delivered { .. } if self.notify_success() => Some(ReportAction::Delivered),
            RcptStatus::Expanded { .. } if self.notify_success() => Some(ReportAction::Expanded),
            RcptStatus::Relayed { .. } if self.notify_success() => Some(ReportAction::Relayed),
            _ => None,
        }
    }
}

/// The start of the note of a message held by `hold_undeliverable`.
pub const HELD_UNDELIVERABLE: &str = "undeliverable, held (hold_undeliverable)";

/// RFC 3464 `Action:` of one recipient in a delivery report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReportAction {
    Failed,
    Delayed,
    Delivered,
    Relayed,
    Expanded,
}

impl ReportAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportAction::Failed => "failed",
            ReportAction::Delayed => "delayed",
            ReportAction::Delivered => "delivered",
            ReportAction::Relayed => "relayed",
            ReportAction::Expanded => "expanded",
        }
    }
}

/// Header fields the router and the console need, parsed once by `imsgcnv`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsedFields {
    pub from: Option<String>,
    pub to: Option<String>,
    pub cc: Option<String>,
    pub subject: Option<String>,
    pub date: Option<String>,
    pub message_id: Option<String>,
    /// The first `Authentication-Results:` field (ours, prepended at intake: isesctl
    /// removes those claiming our hostname that came from outside). Schema 3.
    pub authentication_results: Option<String>,
}

/// Who made a message: a client over SMTP (or `sendmail`), or `drt` (a delivery report).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    #[default]
    Received,
    /// A delivery report written by `drt` (counted as Mail.DeliveryReportsSent).
    Report,
}

/// Routing trace, like Notes' RouteServers/RouteTimes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopTrace {
    /// Number of `Received:` headers in the content.
    pub hop_count: u32,
    /// Tasks and hosts the message passed here, with times.
    pub route: Vec<(String, UnixMillis)>,
    /// Who made it here (schema 4; earlier records said so by a first stage "drt").
    pub origin: Origin,
}

/// The native document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub schema: u16,
    pub id: QueueId,
    pub location: Location,
    pub received_at: UnixMillis,
    /// Content size in octets (including the prepended Received header).
    pub size: u64,
    pub envelope: Envelope,
    pub recipients: Vec<Recipient>,
    pub content: ContentRef,
    /// Filled in by `imsgcnv`.
    pub fields: Option<ParsedFields>,
    pub trace: HopTrace,
    /// Not claimable before this time (retry scheduling).
    pub not_before: UnixMillis,
    /// Why the message is where it is (Dead, Conversion Error, last error), for the console.
    pub note: Option<String>,
}

/// How long ago `since_ms` was, as `show tasks` and the status page print it ("42s",
/// "3m07s", "2h05m"); empty when unknown.
pub fn age_label(since_ms: Option<u64>) -> String {
    let Some(since) = since_ms else {
        return String::new();
    };
    let secs = now_ms().saturating_sub(since) / 1000;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

impl MessageRecord {
    /// A message as it enters the queue at `location`: its size is its content's, nothing
    /// parsed, traced or noted yet, due at once.
    pub fn new(
        id: QueueId,
        location: Location,
        received_at: UnixMillis,
        envelope: Envelope,
        recipients: Vec<Recipient>,
        content: ContentRef,
    ) -> MessageRecord {
        MessageRecord {
            schema: RECORD_SCHEMA,
            id,
            location,
            received_at,
            size: content.len,
            envelope,
            recipients,
            content,
            fields: None,
            trace: HopTrace::default(),
            not_before: 0,
            note: None,
        }
    }

    /// The next hop must speak SMTPUTF8 for this message to reach `rcpts` (indexes of its
    /// recipients): it came with SMTPUTF8, or its reverse-path or one of them is not ASCII.
    pub fn needs_utf8(&self, rcpts: &[usize]) -> bool {
        let from = self.envelope.mail_from.as_ref();
        self.envelope.utf8
            || from.is_some_and(|a| a.is_utf8())
            || rcpts.iter().any(|i| self.recipients[*i].address.is_utf8())
    }

    /// The message is 8-bit: BODY=8BITMIME was given, or `content` has an octet over 127.
    pub fn is_8bit(&self, content: &[u8]) -> bool {
        self.envelope.eight_bit || content.iter().any(|b| *b >= 0x80)
    }

    /// The spooled content is gone (a damaged or lost spool segment): nothing can be
    /// delivered, relayed or quoted any more, so the message waits in Dead with the reason
    /// for the operator instead of being retried forever.
    pub fn content_missing(&mut self, reason: impl std::fmt::Display) {
        self.location = Location::Dead;
        self.note = Some(format!("content missing: {reason}"));
    }

    pub fn all_final(&self) -> bool {
        self.recipients.iter().all(|r| r.status.is_final())
    }

    /// A delivery report written by `drt` (counted as Mail.DeliveryReportsSent when it
    /// enters the store).
    pub fn is_report(&self) -> bool {
        self.trace.origin == Origin::Report
    }

    /// Where a message goes once every recipient is final (router and osesctl use it):
    /// - from the null sender `<>` (a delivery report) with a failed recipient → `Dead`
    ///   (a report is never reported; the operator decides: `release dead`);
    /// - any recipient needing a report (failed with NOTIFY allowing it, or delivered /
    ///   relayed with NOTIFY=SUCCESS) → `Queue(Reports)` for `drt`;
    /// - otherwise `Done` (removed).
    pub fn finished_location(&self) -> Location {
        if self.envelope.mail_from.is_none() {
            let failed = self
                .recipients
                .iter()
                .any(|r| matches!(r.status, RcptStatus::Failed { .. }));
            return if failed {
                Location::Dead
            } else {
                Location::Done
            };
        }
        if self.recipients.iter().any(|r| r.final_report().is_some()) {
            Location::Queue(QueueName::Reports)
        } else {
            Location::Done
        }
    }

    /// Sets `location` to `finished_location()`, with the reason in `note` when `Dead`.
    pub fn finish(&mut self) -> Location {
        self.location = self.finished_location();
        if self.location == Location::Dead {
            let why = self
                .recipients
                .iter()
                .find_map(|r| match &r.status {
                    RcptStatus::Failed { status, reply, .. } => {
                        let outcome = DeliveryOutcome::Failed {
                            status: *status,
                            reply: reply.clone(),
                        };
                        Some(format!("{outcome} ({})", r.address))
                    }
                    _ => None,
                })
                .unwrap_or_default();
            self.note = Some(format!("delivery report undeliverable: {why}"));
        }
        self.location
    }

    /// `hold_undeliverable`: a message a task has just finished (`finish`) that is going
    /// to drt for a permanent failure (5.x.x, reportable) is held instead, with the
    /// failure as its reason. Held in `Held { from: Reports }`: `bounce` sends it on
    /// there, `release` retries it (`release_undeliverable`). Returns whether it was held.
    pub fn hold_if_undeliverable(&mut self) -> bool {
        if self.location != Location::Queue(QueueName::Reports) {
            return false;
        }
        let Some(why) = self.recipients.iter().find_map(|r| match &r.status {
            RcptStatus::Failed { status, reply, .. }
                if status.is_permanent() && r.final_report() == Some(ReportAction::Failed) =>
            {
                let reason = DeliveryOutcome::Failed {
                    status: *status,
                    reply: reply.clone(),
                };
                Some(format!("{reason} ({})", r.address))
            }
            _ => None,
        }) else {
            return false;
        };
        self.location = Location::Held {
            from: QueueName::Reports,
        };
        self.note = Some(format!("{HELD_UNDELIVERABLE}: {why}"));
        true
    }

    /// Held by `hold_if_undeliverable` (or held by the operator on its way to a failure
    /// report): a held message with a failure not yet reported.
    pub fn is_held_undeliverable(&self) -> bool {
        self.location
            == Location::Held {
                from: QueueName::Reports,
            }
            && self
                .recipients
                .iter()
                .any(|r| r.final_report() == Some(ReportAction::Failed))
    }

    /// `release` of a held undeliverable message: its unreported failures become pending
    /// again (their attempts kept) and it is routed afresh from mail.box.
    pub fn release_undeliverable(&mut self) {
        for r in &mut self.recipients {
            if r.final_report() == Some(ReportAction::Failed) {
                r.status = RcptStatus::Pending;
                r.next_retry = None;
            }
        }
        self.location = Location::Queue(QueueName::MailBox);
        self.not_before = 0;
        self.note = None;
    }

    /// Pending recipients for whom a delay report is due: the message is older than
    /// `delay_warning`, the recipient is still pending, no delay report was sent for it and
    /// NOTIFY allows one. Never for the null sender.
    pub fn delay_report_due(&self, now: UnixMillis, delay_warning_ms: u64) -> bool {
        self.envelope.mail_from.is_some()
            && now.saturating_sub(self.received_at) >= delay_warning_ms
            && self
                .recipients
                .iter()
                .any(|r| r.status == RcptStatus::Pending && !r.delay_reported && r.notify_delay())
    }
}
