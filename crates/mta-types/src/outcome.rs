//! Delivery outcomes as data: what happened to one recipient at one step, typed so that no
//! consumer (delivery reports, counters, the console, the status page, metrics) has to
//! re-parse a reply string to find out whether it was a delivery, an alias expansion, a
//! relay, a temporary or a permanent failure, or which code the server gave.
//!
//! A recipient's `RcptStatus` says where it stands now; each `Attempt` in its history
//! carries the `DeliveryOutcome` of that attempt; the store's recent-outcome list (the
//! status page's "last deliveries") is a list of them too.

use crate::message::UnixMillis;
use crate::Address;
use serde::{Deserialize, Serialize};
use std::fmt;

/// An enhanced status code `class.subject.detail` (RFC 3463), e.g. 5.1.1: the one type for
/// it on the wire (mta-smtp's replies), in records, logs and delivery reports. Kept in
/// records and frames as its text ("5.1.1"), so records written as text read unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Enhanced {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl Enhanced {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Enhanced {
        Enhanced {
            class,
            subject,
            detail,
        }
    }

    /// `X.0.0` for a reply code's class (`451` -> 4.0.0).
    pub const fn of_code(code: u16) -> Enhanced {
        Enhanced::new((code / 100) as u8, 0, 0)
    }

    /// A permanent failure (class 5).
    pub fn is_permanent(self) -> bool {
        self.class == 5
    }

    /// A temporary failure (class 4).
    pub fn is_transient(self) -> bool {
        self.class == 4
    }
}

impl From<(u8, u16, u16)> for Enhanced {
    fn from((class, subject, detail): (u8, u16, u16)) -> Enhanced {
        Enhanced::new(class, subject, detail)
    }
}

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// Text that is not an enhanced status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an enhanced status code (class 2, 4 or 5, then two numbers up to 999)")]
pub struct NotEnhanced(pub String);

impl std::str::FromStr for Enhanced {
    type Err = NotEnhanced;
    fn from_str(s: &str) -> Result<Enhanced, NotEnhanced> {
        let bad = || NotEnhanced(s.to_string());
        let mut parts = s.split('.');
        let mut number = |max: u16| -> Result<u16, NotEnhanced> {
            let p = parts.next().ok_or_else(bad)?;
            if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse::<u16>().ok().filter(|n| *n <= max).ok_or_else(bad)
        };
        let class = number(9)? as u8;
        let (subject, detail) = (number(999)?, number(999)?);
        if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
            return Err(bad());
        }
        Ok(Enhanced::new(class, subject, detail))
    }
}

impl From<Enhanced> for String {
    fn from(e: Enhanced) -> String {
        e.to_string()
    }
}

impl TryFrom<String> for Enhanced {
    type Error = NotEnhanced;
    fn try_from(s: String) -> Result<Enhanced, NotEnhanced> {
        s.parse()
    }
}

/// A reply kept for a recipient: the next hop's SMTP reply, or our own verdict (unknown
/// user, expiry, DNS failure), which has no SMTP code of its own. The one reply type, see
/// `crate::reply`.
pub use crate::reply::Reply;

/// What happened to one recipient at one step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryOutcome {
    /// Written to the local Maildir of this directory user.
    Delivered { mailbox: String },
    /// A local alias, replaced by these recipients (not a delivery: RFC 3464 "expanded").
    Expanded { to: Vec<Address> },
    /// The next hop accepted it with this reply.
    Relayed { reply: Reply },
    /// A temporary failure; the next attempt is due at `next`.
    Deferred { reply: Reply, next: UnixMillis },
    /// A permanent failure (or expiry); `status` is the enhanced code reported in the DSN.
    Failed { status: Enhanced, reply: Reply },
    /// The sender was sent a delivery report about this recipient.
    Reported,
}

impl DeliveryOutcome {
    /// One word, as the status page, `--json` and metrics label it.
    pub fn label(&self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered { .. } => "delivered",
            DeliveryOutcome::Expanded { .. } => "expanded",
            DeliveryOutcome::Relayed { .. } => "relayed",
            DeliveryOutcome::Deferred { .. } => "deferred",
            DeliveryOutcome::Failed { .. } => "failed",
            DeliveryOutcome::Reported => "reported",
        }
    }

    /// The reply the outcome carries, if any.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            DeliveryOutcome::Relayed { reply }
            | DeliveryOutcome::Deferred { reply, .. }
            | DeliveryOutcome::Failed { reply, .. } => Some(reply),
            _ => None,
        }
    }

    /// The enhanced status a log line or report gives it.
    pub fn status(&self) -> Enhanced {
        const OK: Enhanced = Enhanced::new(2, 0, 0);
        match self {
            DeliveryOutcome::Delivered { .. } | DeliveryOutcome::Expanded { .. } => OK,
            DeliveryOutcome::Relayed { reply } => reply.status_or(OK),
            DeliveryOutcome::Deferred { reply, .. } => reply.status_or((4, 0, 0)),
            DeliveryOutcome::Failed { status, .. } => *status,
            DeliveryOutcome::Reported => OK,
        }
    }
}

/// The outcome's details without its label: the mailbox, the targets, or the reply.
impl fmt::Display for DeliveryOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeliveryOutcome::Delivered { mailbox } => write!(f, "{mailbox}"),
            DeliveryOutcome::Expanded { to } => {
                let list: Vec<String> = to.iter().map(ToString::to_string).collect();
                write!(f, "to {}", list.join(", "))
            }
            DeliveryOutcome::Relayed { reply } | DeliveryOutcome::Deferred { reply, .. } => {
                write!(f, "{reply}")
            }
            DeliveryOutcome::Failed { status, reply } => {
                if reply.status == Some(*status) {
                    write!(f, "{reply}")
                } else {
                    write!(f, "{status} {reply}")
                }
            }
            DeliveryOutcome::Reported => write!(f, "delivery report sent"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_reply_text_is_split_into_its_codes() {
        assert_eq!(
            Reply::from_legacy_text("550 5.1.1 <b@x>: User unknown"),
            Reply::remote(550, Some((5, 1, 1).into()), "<b@x>: User unknown")
        );
        assert_eq!(
            Reply::from_legacy_text("451 try later"),
            Reply::remote(451, None, "try later")
        );
        assert_eq!(
            Reply::from_legacy_text("4.4.3 servfail.test: timed out"),
            Reply::local((4, 4, 3), "servfail.test: timed out")
        );
        let ours = Reply::from_legacy_text("user unknown");
        assert_eq!((ours.code, ours.status), (None, None));
        assert_eq!(ours.text(), "user unknown");
    }

    #[test]
    fn a_reply_prints_as_it_was_given() {
        for s in [
            "250 2.0.0 Ok: queued",
            "451 try later",
            "4.4.3 lookup failed",
        ] {
            assert_eq!(Reply::from_legacy_text(s).to_string(), s);
        }
        let failed = DeliveryOutcome::Failed {
            status: (5, 1, 1).into(),
            reply: Reply::local((5, 1, 1), "user unknown"),
        };
        assert_eq!(failed.to_string(), "5.1.1 user unknown");
        assert_eq!(
            DeliveryOutcome::Deferred {
                reply: Reply::remote(451, None, "later"),
                next: 0
            }
            .status()
            .to_string(),
            "4.0.0"
        );
    }

    #[test]
    fn enhanced_codes_parse_print_and_keep_their_text_form() {
        let e: Enhanced = "5.1.10".parse().unwrap();
        assert_eq!(e, Enhanced::new(5, 1, 10));
        assert_eq!(e.to_string(), "5.1.10");
        for bad in [
            "", "5.1", "3.0.0", "5.1.1.1", "5.1000.0", "5.a.1", "5..1", "25.0.0",
        ] {
            assert!(bad.parse::<Enhanced>().is_err(), "{bad}");
        }
        // Records and frames keep the text: "5.1.1" in JSON, the same bytes as a String.
        assert_eq!(serde_json::to_string(&e).unwrap(), "\"5.1.10\"");
        assert_eq!(
            serde_json::from_str::<Enhanced>("\"4.4.7\"").unwrap(),
            Enhanced::new(4, 4, 7)
        );
        assert!(Enhanced::new(5, 0, 0).is_permanent() && Enhanced::new(4, 0, 0).is_transient());
    }
}
