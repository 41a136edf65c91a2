//! The one place that writes a recipient's delivery outcome to the log, in Postfix's shape,
//! so operators' habits (and their grep patterns) carry over:
//! `qid=… to=<…> [orig_to=<…>] relay=… delay=1.25s dsn=2.0.0 status=sent (250 2.0.0 Ok)`.

use mta_types::{Address, QueueId};
use std::fmt;

/// The `status=` word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Deferred,
    Bounced,
    Expired,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Sent => "sent",
            Outcome::Deferred => "deferred",
            Outcome::Bounced => "bounced",
            Outcome::Expired => "expired",
        })
    }
}

/// One recipient's outcome. `orig_to` is shown when the recipient came from an alias;
/// `extra` (e.g. `retry_in=60s`) goes at the end.
#[allow(clippy::too_many_arguments)]
pub fn log_outcome(
    qid: QueueId,
    to: &Address,
    orig_to: Option<&str>,
    relay: &str,
    delay_secs: f64,
    dsn: &str,
    outcome: Outcome,
    text: &str,
    extra: &str,
) {
    let orig = orig_to
        .map(|o| format!(" orig_to=<{o}>"))
        .unwrap_or_default();
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(" {extra}")
    };
    let line = format!("qid={qid} to=<{to}>{orig} relay={relay} delay={delay_secs:.2}s dsn={dsn} status={outcome} ({text}){extra}");
    match outcome {
        Outcome::Deferred => tracing::warn!("{line}"),
        _ => tracing::info!("{line}"),
    }
}
