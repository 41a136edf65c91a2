//! Converting claimed messages: content → native document → the next queue.
//!
//! `convert_record` is the decision for one message, without I/O: it fills the document's
//! parsed fields and hop count, adds `imsgcnv` to the routing trace and says where the message
//! goes — `mail.box` (converted, perhaps with warnings), `Dead` (more `Received:` fields than
//! `[inbound] max_hops`) or `Conversion Error` (not a message at all, or its content cannot be
//! read). Nothing is ever dropped: a message that cannot be converted is parked with the reason
//! in its note, for the operator.
//!
//! `convert_batch` does the I/O around it for one claimed batch: reads each message's content
//! once from the spool, saves copies for `SMTPSaveImportErrors`, logs one line per message and
//! returns the changes to commit in one transaction.

use crate::import_errors::ImportErrors;
use mta_convert::convert_inbound;
use mta_ipc::store::Change;
use mta_types::message::{now_ms, UnixMillis};
use mta_types::{Location, MessageRecord, QueueName};
use std::path::Path;
use std::sync::atomic::Ordering;

/// What became of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Converted and now in `mail.box`; the warnings did not stop it.
    Converted { warnings: Vec<String> },
    /// More `Received:` fields than the limit: now `Dead`.
    TooManyHops { hops: u32, limit: u32 },
    /// Not a message, or its content is unreadable: now in `Conversion Error`.
    Failed { reason: String },
}

impl Verdict {
    /// True when the message did not make it to `mail.box` (what `SMTPSaveImportErrors`
    /// levels 1 and 2 keep).
    pub fn is_failure(&self) -> bool {
        !matches!(self, Verdict::Converted { .. })
    }
}

/// Converts one message. `content` is the spool content, or why it could not be read.
pub fn convert_record(
    record: &mut MessageRecord,
    content: Result<&[u8], String>,
    max_hops: u32,
    now: UnixMillis,
) -> Verdict {
    record.trace.route.push(("imsgcnv".to_string(), now));
    let converted = match content {
        Err(reason) => Err(format!("cannot read the content: {reason}")),
        Ok(bytes) => convert_inbound(bytes).map_err(|e| e.to_string()),
    };
    match converted {
        Err(reason) => {
            record.location = Location::ConversionError;
            record.note = Some(reason.clone());
            Verdict::Failed { reason }
        }
        Ok(c) => {
            record.fields = Some(c.fields);
            record.trace.hop_count = c.hop_count;
            if c.hop_count > max_hops {
                record.location = Location::Dead;
                record.note = Some(format!(
                    "too many hops ({} Received headers, limit {max_hops})",
                    c.hop_count
                ));
                Verdict::TooManyHops {
                    hops: c.hop_count,
                    limit: max_hops,
                }
            } else {
                record.location = Location::Queue(QueueName::MailBox);
                record.note = (!c.warnings.is_empty())
                    .then(|| format!("conversion warnings: {}", c.warnings.join("; ")));
                Verdict::Converted {
                    warnings: c.warnings,
                }
            }
        }
    }
}

mta_task::task_counters! {
    /// Counters for `show tasks`.
    pub struct Stats {
        converted: "converted",
        errors: "errors",
        dead: "dead",
    }
}

impl Stats {
    fn count(&self, verdict: &Verdict) {
        let counter = match verdict {
            Verdict::Converted { .. } => &self.converted,
            Verdict::TooManyHops { .. } => &self.dead,
            Verdict::Failed { .. } => &self.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The result of one batch: the changes to commit, and whether any went to `mail.box`.
pub struct Batch {
    pub changes: Vec<Change>,
    pub to_mailbox: usize,
}

/// Converts a claimed batch (blocking: reads the spool and may write import-error copies).
pub fn convert_batch(
    records: Vec<MessageRecord>,
    spool_dir: &Path,
    max_hops: u32,
    import_errors: &ImportErrors,
    stats: &Stats,
) -> Batch {
    let mut changes = Vec::with_capacity(records.len());
    let mut to_mailbox = 0;
    for mut record in records {
        let content = match mta_spool::read(spool_dir, &record.content) {
            Err(e) if e.is_missing() => {
                mta_task::queue_worker::content_missing(&mut record, &e);
                changes.push(Change::Put(record));
                continue;
            }
            other => other.map_err(|e| e.to_string()),
        };
        let verdict = convert_record(
            &mut record,
            content.as_deref().map_err(Clone::clone),
            max_hops,
            now_ms(),
        );
        log(&record, &verdict);
        import_errors.save(&record, content.as_deref().ok(), &verdict);
        stats.count(&verdict);
        if matches!(verdict, Verdict::Converted { .. }) {
            to_mailbox += 1;
        }
        changes.push(Change::Put(record));
    }
    Batch {
        changes,
        to_mailbox,
    }
}

/// One line per message, Postfix style (`cleanup`'s `message-id=` line).
fn log(record: &MessageRecord, verdict: &Verdict) {
    let qid = record.id;
    match verdict {
        Verdict::Converted { warnings } => {
            let message_id = record
                .fields
                .as_ref()
                .and_then(|f| f.message_id.as_deref())
                .unwrap_or("");
            let message_id = if message_id.starts_with('<') {
                message_id.to_string()
            } else {
                format!("<{message_id}>")
            };
            tracing::info!(
                "qid={qid} message-id={message_id} hops={}",
                record.trace.hop_count
            );
            for w in warnings {
                tracing::warn!("qid={qid} warning: {w}");
            }
        }
        Verdict::TooManyHops { hops, limit } => {
            tracing::warn!("qid={qid} dead: too many hops ({hops} Received headers, limit {limit})")
        }
        Verdict::Failed { reason } => {
            tracing::warn!("qid={qid} conversion error: {reason}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mta_types::message::{ContentRef, Envelope, HopTrace, RECORD_SCHEMA};
    use mta_types::{QueueId, Recipient};

    fn record() -> MessageRecord {
        MessageRecord {
            schema: RECORD_SCHEMA,
            id: QueueId::generate(),
            location: Location::Queue(QueueName::InboundWork),
            received_at: 1,
            size: 0,
            envelope: Envelope::new(
                Some("a@example.org".parse().unwrap()),
                "client",
                "127.0.0.1",
                "ESMTP",
            ),
            recipients: vec![Recipient::new("postmaster@localhost".parse().unwrap())],
            content: ContentRef {
                segment: "x.seg".into(),
                offset: 0,
                len: 0,
            },
            fields: None,
            trace: HopTrace::default(),
            not_before: 0,
            note: None,
        }
    }

    fn received(n: usize) -> String {
        "Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n".repeat(n)
    }

    #[test]
    fn a_message_goes_to_mail_box_with_its_fields() {
        let mut r = record();
        let content = format!(
            "{}Message-ID: <1@x>\r\nSubject: hi\r\n\r\nbody\r\n",
            received(2)
        );
        let v = convert_record(&mut r, Ok(content.as_bytes()), 25, 7);
        assert_eq!(v, Verdict::Converted { warnings: vec![] });
        assert_eq!(r.location, Location::Queue(QueueName::MailBox));
        assert_eq!(r.trace.hop_count, 2);
        assert_eq!(r.trace.route, vec![("imsgcnv".to_string(), 7)]);
        let f = r.fields.unwrap();
        assert_eq!(f.message_id.as_deref(), Some("<1@x>"));
        assert_eq!(f.subject.as_deref(), Some("hi"));
        assert_eq!(r.note, None);
    }

    #[test]
    fn over_the_hop_limit_is_dead() {
        let mut r = record();
        let content = format!("{}Subject: loop\r\n\r\nbody\r\n", received(30));
        let v = convert_record(&mut r, Ok(content.as_bytes()), 25, 7);
        assert_eq!(
            v,
            Verdict::TooManyHops {
                hops: 30,
                limit: 25
            }
        );
        assert_eq!(r.location, Location::Dead);
        assert_eq!(
            r.note.as_deref(),
            Some("too many hops (30 Received headers, limit 25)")
        );
    }

    #[test]
    fn at_the_hop_limit_is_still_routed() {
        let mut r = record();
        let content = format!("{}\r\nbody\r\n", received(25));
        let v = convert_record(&mut r, Ok(content.as_bytes()), 25, 7);
        assert!(!v.is_failure());
    }

    #[test]
    fn garbage_is_a_conversion_error_kept_with_its_reason() {
        let mut r = record();
        let v = convert_record(&mut r, Ok(b""), 25, 7);
        assert!(matches!(v, Verdict::Failed { .. }));
        assert_eq!(r.location, Location::ConversionError);
        assert_eq!(r.note.as_deref(), Some("content is empty"));
    }

    #[test]
    fn unreadable_content_is_a_conversion_error() {
        let mut r = record();
        let v = convert_record(&mut r, Err("no such file".into()), 25, 7);
        assert_eq!(
            v,
            Verdict::Failed {
                reason: "cannot read the content: no such file".into()
            }
        );
        assert_eq!(r.location, Location::ConversionError);
    }

    #[test]
    fn warnings_are_kept_in_the_note() {
        let mut r = record();
        let v = convert_record(&mut r, Ok(b"Hello world\r\n"), 25, 7);
        assert!(matches!(v, Verdict::Converted { ref warnings } if !warnings.is_empty()));
        assert!(r.note.unwrap().starts_with("conversion warnings: "));
    }
}
