//! The store's on-disk record format: its own versioned type, independent of the IPC wire
//! frame (bincode, in `mta-ipc`), so that a change of the wire format is not a disk
//! migration.
//!
//! A stored value is `b'R'`, a format version byte, then the record in postcard (a compact,
//! maintained serde format). The current version holds `MessageRecord` as this build
//! defines it; a change to that type bumps `VERSION` and adds a decoder for the old version
//! here (postcard is positional: a field added anywhere changes the layout).
//!
//! - Version 1: `ParsedFields` without `authentication_results` (record schema 2).
//! - Version 2: `ParsedFields.authentication_results` (issue 15; record schema 3).
//!
//! Values written by the first store (before this format) carry no tag: they are the wire
//! codec's bytes. `decode` still reads them, so an old queue comes up; `Engine::open`
//! rewrites them in this format once (see `Engine::rebuild`).

use mta_types::MessageRecord;

const TAG: u8 = b'R';
pub const VERSION: u8 = 2;

/// Version 1's layout, read and converted (an upgraded store comes up with its queue;
/// `Engine::open` rewrites these records in the current version once).
mod v1 {
    use mta_types::message::{ContentRef, Envelope, HopTrace, ParsedFields, UnixMillis};
    use mta_types::{Location, MessageRecord, QueueId, Recipient};
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub struct Record {
        schema: u16,
        id: QueueId,
        location: Location,
        received_at: UnixMillis,
        size: u64,
        envelope: Envelope,
        recipients: Vec<Recipient>,
        content: ContentRef,
        fields: Option<Fields>,
        trace: HopTrace,
        not_before: UnixMillis,
        note: Option<String>,
    }

    #[derive(Deserialize)]
    struct Fields {
        from: Option<String>,
        to: Option<String>,
        cc: Option<String>,
        subject: Option<String>,
        date: Option<String>,
        message_id: Option<String>,
    }

    impl From<Record> for MessageRecord {
        fn from(r: Record) -> MessageRecord {
            MessageRecord {
                schema: r.schema,
                id: r.id,
                location: r.location,
                received_at: r.received_at,
                size: r.size,
                envelope: r.envelope,
                recipients: r.recipients,
                content: r.content,
                fields: r.fields.map(|f| ParsedFields {
                    from: f.from,
                    to: f.to,
                    cc: f.cc,
                    subject: f.subject,
                    date: f.date,
                    message_id: f.message_id,
                    authentication_results: None,
                }),
                trace: r.trace,
                not_before: r.not_before,
                note: r.note,
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("empty value")]
    Empty,
    #[error("record format version {0} is newer than this build reads ({VERSION})")]
    Newer(u8),
    #[error("undecodable record (format {version}): {reason}")]
    Undecodable { version: u8, reason: String },
}

pub fn encode(record: &MessageRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.push(TAG);
    out.push(VERSION);
    // Writing into a Vec cannot fail, and every field of MessageRecord is serializable.
    postcard::to_io(record, &mut out).expect("postcard encodes a MessageRecord into a Vec");
    out
}

pub fn decode(bytes: &[u8]) -> Result<MessageRecord, FormatError> {
    match bytes {
        [] => Err(FormatError::Empty),
        [TAG, VERSION, body @ ..] => {
            postcard::from_bytes(body).map_err(|e| FormatError::Undecodable {
                version: VERSION,
                reason: e.to_string(),
            })
        }
        [TAG, 1, body @ ..] => postcard::from_bytes::<v1::Record>(body)
            .map(MessageRecord::from)
            .map_err(|e| FormatError::Undecodable {
                version: 1,
                reason: e.to_string(),
            }),
        [TAG, v, ..] if *v > VERSION => Err(FormatError::Newer(*v)),
        legacy => {
            let record: MessageRecord =
                mta_ipc::frame::decode(legacy).map_err(|e| FormatError::Undecodable {
                    version: 0,
                    reason: e.to_string(),
                })?;
            Ok(record)
        }
    }
}

/// Whether `bytes` is in the current format (else `Engine::rebuild` rewrites it).
pub fn is_current(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == TAG && bytes[1] == VERSION
}

#[cfg(test)]
mod version_tests {
    use super::*;
    use mta_types::message::{ContentRef, Envelope, HopTrace, ParsedFields, RECORD_SCHEMA};
    use mta_types::{Location, QueueId, QueueName, Recipient};

    /// A record as a store of format version 1 wrote it (postcard lays out a struct as
    /// its fields in order, as it does a tuple), read by this build: nothing is lost.
    #[test]
    fn a_version_1_record_is_read_with_its_fields() {
        let r = MessageRecord {
            schema: 2,
            id: QueueId::generate(),
            location: Location::Queue(QueueName::OutboundWork),
            received_at: 1_000,
            size: 42,
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
            recipients: vec![Recipient::new("r@example.net".parse().unwrap())],
            content: ContentRef {
                segment: "x.seg".into(),
                offset: 7,
                len: 42,
            },
            fields: Some(ParsedFields {
                subject: Some("hello".into()),
                message_id: Some("<m@x>".into()),
                ..Default::default()
            }),
            trace: HopTrace::default(),
            not_before: 5,
            note: Some("deferred".into()),
        };
        let f = r.fields.clone().unwrap();
        let v1_fields = (f.from, f.to, f.cc, f.subject, f.date, f.message_id);
        let v1 = (
            r.schema,
            r.id,
            r.location,
            r.received_at,
            r.size,
            r.envelope.clone(),
            r.recipients.clone(),
            r.content.clone(),
            Some(v1_fields),
            r.trace.clone(),
            r.not_before,
            r.note.clone(),
        );
        let mut bytes = vec![TAG, 1];
        bytes.extend(postcard::to_allocvec(&v1).unwrap());
        assert_eq!(decode(&bytes).unwrap(), r);
        // And the current version round-trips.
        let mut now = r.clone();
        now.schema = RECORD_SCHEMA;
        now.fields.as_mut().unwrap().authentication_results = Some("x; spf=pass".into());
        assert_eq!(decode(&encode(&now)).unwrap(), now);
        assert!(is_current(&encode(&now)) && !is_current(&bytes));
    }
}
