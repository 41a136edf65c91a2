//! Message tracking: the compact history of one message's life, kept by the store for
//! `tracking_days` after the message arrived, whether or not it is still queued
//! (Domino's Message Tracking). `show message` shows it once the record is gone; `track`
//! searches it by sender, recipient, arrival time and Message-ID.
//!
//! Bounded: at most `MAX_RECIPIENTS` recipients, `MAX_ATTEMPTS` attempts each (the last
//! ones), and texts cut at `MAX_TEXT` characters, so one entry stays a few hundred bytes
//! whatever the message.

use crate::message::{Attempt, UnixMillis};
use crate::{MessageRecord, QueueId, RcptStatus};
use serde::{Deserialize, Serialize};

pub const MAX_RECIPIENTS: usize = 100;
pub const MAX_ATTEMPTS: usize = 10;
pub const MAX_TEXT: usize = 300;

/// One message's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackEntry {
    pub id: QueueId,
    pub received_at: UnixMillis,
    /// The return path; empty for `<>`.
    pub from: String,
    pub size: u64,
    /// As in the header, without the angle brackets.
    pub message_id: Option<String>,
    pub subject: Option<String>,
    pub client_ip: String,
    /// Where the message is, or how it ended: a location label (`Pending`, `Held`,
    /// `Dead`, `Conversion Error`), `Done` or `Deleted`.
    pub state: String,
    pub note: Option<String>,
    pub recipients: Vec<TrackRecipient>,
    /// Recipients beyond `MAX_RECIPIENTS`, not listed.
    pub more_recipients: u32,
    /// When this entry was last written.
    pub updated_at: UnixMillis,
    /// The SMTP AUTH identity the message was submitted under, if any. Last, so that an
    /// entry of the first layout reads as this one without it (`mta-store`'s tracking
    /// format, version 2).
    pub auth: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackRecipient {
    pub address: String,
    /// `pending`, `delivered`, `relayed` or `failed`.
    pub outcome: String,
    /// When the outcome was final.
    pub at: Option<UnixMillis>,
    /// The mailbox, the next hop and its reply, or the failure.
    pub detail: String,
    /// The last `MAX_ATTEMPTS` attempts.
    pub attempts: Vec<Attempt>,
    pub attempts_total: u32,
}

fn cut(s: &str) -> String {
    match s.char_indices().nth(MAX_TEXT) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A Message-ID as searched and indexed: trimmed, without `<>`, lower case.
pub fn normalize_message_id(s: &str) -> String {
    s.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_ascii_lowercase()
}

impl TrackEntry {
    /// The history of `record` now; `state` says where it is or how it ended.
    pub fn of(record: &MessageRecord, state: &str, now: UnixMillis) -> TrackEntry {
        let fields = record.fields.as_ref();
        TrackEntry {
            id: record.id,
            received_at: record.received_at,
            from: record
                .envelope
                .mail_from
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            size: record.size,
            message_id: fields
                .and_then(|f| f.message_id.as_deref())
                .map(|m| cut(m.trim().trim_start_matches('<').trim_end_matches('>'))),
            subject: fields.and_then(|f| f.subject.as_deref()).map(cut),
            client_ip: record.envelope.client_ip.clone(),
            state: state.to_string(),
            note: record.note.as_deref().map(cut),
            recipients: record
                .recipients
                .iter()
                .take(MAX_RECIPIENTS)
                .map(|r| {
                    let (outcome, at, detail) = match r.status.outcome() {
                        None => ("pending", None, String::new()),
                        Some((at, o)) => (
                            o.label(),
                            Some(at),
                            match &r.status {
                                RcptStatus::Relayed { host, .. } => format!("{host}: {o}"),
                                _ => o.to_string(),
                            },
                        ),
                    };
                    let skip = r.attempts.len().saturating_sub(MAX_ATTEMPTS);
                    TrackRecipient {
                        address: r.address.to_string(),
                        outcome: outcome.to_string(),
                        at,
                        detail: cut(&detail),
                        attempts: r.attempts[skip..]
                            .iter()
                            .map(|a| Attempt {
                                at: a.at,
                                host: cut(&a.host),
                                outcome: a.outcome.clone(),
                            })
                            .collect(),
                        attempts_total: r.attempts.len() as u32,
                    }
                })
                .collect(),
            more_recipients: record.recipients.len().saturating_sub(MAX_RECIPIENTS) as u32,
            updated_at: now,
            auth: record.envelope.auth.as_deref().map(cut),
        }
    }

    /// The Message-ID as indexed (`normalize_message_id`).
    pub fn message_id_key(&self) -> Option<String> {
        self.message_id.as_deref().map(normalize_message_id)
    }
}
