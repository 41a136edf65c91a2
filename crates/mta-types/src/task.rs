//! The names of the tasks and of the queues between them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Every executable of the suite, in the order the supervisor starts them
/// (inbound last, so the rest of the pipeline is ready when mail arrives) and stops them
/// (inbound first, so nothing new arrives while the rest drains).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaskName {
    Smtpmta,
    Isesctl,
    Imsgcnv,
    Router,
    Omsgcnv,
    Osesctl,
    Drt,
    Mtacon,
}

impl TaskName {
    /// The six tasks the supervisor launches, in shutdown order (inbound first).
    pub const CHILDREN: [TaskName; 6] = [
        TaskName::Isesctl,
        TaskName::Imsgcnv,
        TaskName::Router,
        TaskName::Omsgcnv,
        TaskName::Osesctl,
        TaskName::Drt,
    ];

    /// The executable's file name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskName::Smtpmta => "smtpmta",
            TaskName::Isesctl => "isesctl",
            TaskName::Imsgcnv => "imsgcnv",
            TaskName::Router => "router",
            TaskName::Omsgcnv => "omsgcnv",
            TaskName::Osesctl => "osesctl",
            TaskName::Drt => "drt",
            TaskName::Mtacon => "mtacon",
        }
    }

    /// The Domino description shown by `show tasks`.
    pub fn description(self) -> &'static str {
        match self {
            TaskName::Smtpmta => "SMTP MTA Supervisor",
            TaskName::Isesctl => "Inbound Session Controller",
            TaskName::Imsgcnv => "Inbound Message Conversion",
            TaskName::Router => "Router",
            TaskName::Omsgcnv => "Outbound Message Conversion",
            TaskName::Osesctl => "Outbound Session Controller",
            TaskName::Drt => "Delivery Report Task",
            TaskName::Mtacon => "Server Console",
        }
    }
}

impl fmt::Display for TaskName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown task `{0}` (tasks: smtpmta, isesctl, imsgcnv, router, omsgcnv, osesctl, drt)")]
pub struct UnknownTask(pub String);

impl FromStr for TaskName {
    type Err = UnknownTask;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        [TaskName::Smtpmta, TaskName::Mtacon]
            .into_iter()
            .chain(TaskName::CHILDREN)
            .find(|t| t.as_str() == lower)
            .ok_or_else(|| UnknownTask(s.to_string()))
    }
}

/// The durable queues a message moves through, named as in Domino.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum QueueName {
    /// Accepted by an inbound session handler, waiting for `imsgcnv`.
    InboundWork,
    /// Converted to a native document, waiting for `router`.
    MailBox,
    /// Non-local recipients, waiting for `omsgcnv`.
    SmtpBox,
    /// Ready for transmission, waiting for `osesctl`.
    OutboundWork,
    /// Outcomes waiting for the Delivery Report Task.
    Reports,
}

impl QueueName {
    pub const ALL: [QueueName; 5] = [
        QueueName::InboundWork,
        QueueName::MailBox,
        QueueName::SmtpBox,
        QueueName::OutboundWork,
        QueueName::Reports,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::InboundWork => "inbound-work",
            QueueName::MailBox => "mail.box",
            QueueName::SmtpBox => "smtp.box",
            QueueName::OutboundWork => "outbound-work",
            QueueName::Reports => "reports",
        }
    }

    /// The task that consumes this queue (and so is kicked when work arrives in it).
    pub fn consumer(self) -> TaskName {
        match self {
            QueueName::InboundWork => TaskName::Imsgcnv,
            QueueName::MailBox => TaskName::Router,
            QueueName::SmtpBox => TaskName::Omsgcnv,
            QueueName::OutboundWork => TaskName::Osesctl,
            QueueName::Reports => TaskName::Drt,
        }
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[inbound] bare_newline`: what an inbound session does with a bare LF (an LF not preceded
/// by CR) in message content, like Postfix 3.9's `smtpd_forbid_bare_newline`. Either way only
/// `<CR><LF>.<CR><LF>` ends DATA, so SMTP smuggling stays impossible; a bare CR is refused
/// under both (nothing sends one on purpose, and it could end a line at a careless next hop).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareNewline {
    /// The bare LF becomes CRLF and the message is accepted (Postfix 3.7's behaviour, which
    /// many scripts and old clients rely on).
    #[default]
    Normalize,
    /// The message is refused with `554 5.6.0`.
    Reject,
}

impl BareNewline {
    pub fn as_str(self) -> &'static str {
        match self {
            BareNewline::Normalize => "normalize",
            BareNewline::Reject => "reject",
        }
    }
}
