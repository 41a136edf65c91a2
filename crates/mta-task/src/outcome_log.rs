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

/// One recipient's outcome line, as every task that delivers writes it.
#[derive(Clone, Copy, Debug)]
pub struct OutcomeLine<'a> {
    pub qid: QueueId,
    pub to: &'a Address,
    /// Shown as `orig_to=<…>` when the recipient came from an alias.
    pub orig_to: Option<&'a str>,
    /// `relay=`: `host[ip]:port`, `local`, or the next hop as grouped.
    pub relay: &'a str,
    /// Since the message arrived.
    pub delay_secs: f64,
    pub dsn: &'a str,
    pub outcome: Outcome,
    /// The reply or verdict, shown in parentheses.
    pub text: &'a str,
    /// At the end of the line, e.g. `retry_in=60s site=… rule=…` (empty: nothing).
    pub extra: &'a str,
}

/// Writes one recipient's outcome line (deferrals at WARN, everything else at INFO).
pub fn log_outcome(line: &OutcomeLine<'_>) {
    let OutcomeLine {
        qid,
        to,
        orig_to,
        relay,
        delay_secs,
        dsn,
        outcome,
        text,
        extra,
    } = *line;
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
