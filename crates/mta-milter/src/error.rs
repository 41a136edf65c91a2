//! What can go wrong talking to a milter. Every variant means the same to the session:
//! this milter is out for the rest of the SMTP session and its `default_action` applies;
//! the variants say why, for the log line.

use std::time::Duration;

/// A milter that is down, slow or speaks garbage.
#[derive(Debug, thiserror::Error)]
pub enum MilterError {
    /// The connection could not be made (refused, no such socket, ...).
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    /// No answer within the configured time (`connect`, `command` or `content` timeout).
    #[error("no reply to {stage} within {after:?}")]
    Timeout {
        stage: &'static str,
        after: Duration,
    },
    /// The connection broke, or the milter closed it.
    #[error("connection lost during {stage}: {source}")]
    Io {
        stage: &'static str,
        source: std::io::Error,
    },
    /// A packet that does not follow the protocol (bad length, unknown code, missing NUL,
    /// a modification outside end of message, ...).
    #[error("malformed reply during {stage}: {detail}")]
    Protocol { stage: &'static str, detail: String },
    /// Option negotiation failed (a version or actions we cannot honour).
    #[error("option negotiation failed: {0}")]
    Negotiation(String),
}

impl MilterError {
    /// Short label for metrics: `unreachable`, `timeout` or `broken`.
    pub fn kind(&self) -> &'static str {
        match self {
            MilterError::Connect { .. } => "unreachable",
            MilterError::Timeout { .. } => "timeout",
            MilterError::Io { .. } | MilterError::Protocol { .. } | MilterError::Negotiation(_) => {
                "broken"
            }
        }
    }
}
