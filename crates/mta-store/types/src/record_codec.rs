//! The versioned on-disk format of a `MessageRecord`, independent of the IPC wire frame
//! (bincode, in `mta-ipc`), so that a change of the wire format is not a disk migration.
//! Two writers use it: the store for its values (`mta-store`), and isesctl for the envelope
//! it writes beside each message's content in the spool (the record the supervisor's
//! `spool_recovery` puts back if the store lost it). It lives here, not in `mta-store`, so
//! that isesctl links it without linking sled.
//!
//! A value is `b'R'`, a format version byte, then the record in postcard (a compact,
//! maintained serde format). The current version holds `MessageRecord` as this build
//! defines it; a change to that type bumps `VERSION` and adds a decoder for the old version
//! here (postcard is positional: a field added anywhere changes the layout).
//!
//! - Version 1: `ParsedFields` without `authentication_results` (record schema 2).
//! - Version 2: `ParsedFields.authentication_results` (issue 15; record schema 3).
//! - Version 3: typed outcomes (`RcptStatus::Expanded`, `Relayed`/`Failed` with a typed
//!   `Reply`, `Attempt.outcome`), `Envelope.auth` (the SMTP AUTH identity) and
//!   `HopTrace.origin` (record schema 4). Versions 1 and 2 kept outcomes as text: their
//!   decoder converts them once, here, so that no other code reads reply strings.
//!
//! Values written by the first store (before this format) carry no tag: they are the wire
//! codec's bytes. `decode` still reads them, so an old queue comes up; `Engine::open`
//! rewrites them in this format once (see `Engine::rebuild`). Spool envelopes were never
//! written that way (JSON before this codec): their reader checks for the tag first.

use mta_types::message::ParsedFields;
use mta_types::MessageRecord;

/// The first byte of every tagged value.
pub const TAG: u8 = b'R';
pub const VERSION: u8 = 3;

/// The layouts of versions 1 and 2 (and of the untagged first store, laid out as version 1),
/// read and converted (an upgraded store comes up with its queue; `Engine::open` rewrites
/// these records in the current version once). They differ only in `ParsedFields`.
mod old {
    use mta_types::message::{
        Attempt, ContentRef, Envelope, HopTrace, Notify, Origin, ParsedFields, Ret, UnixMillis,
    };
    use mta_types::outcome::{DeliveryOutcome, Enhanced, Reply};
    use mta_types::{Address, Location, MessageRecord, QueueId, RcptStatus, Recipient};
    use serde::Deserialize;

    /// The `Delivered` mailbox text by which versions 1 and 2 marked an expanded alias.
    const ALIAS_EXPANDED: &str = "alias expanded to ";
    /// The first route stage by which versions 1 and 2 marked a delivery report.
    const REPORT_STAGE: &str = "drt";

    #[derive(Deserialize)]
    pub struct Record<F> {
        schema: u16,
        id: QueueId,
        location: Location,
        received_at: UnixMillis,
        size: u64,
        envelope: OldEnvelope,
        recipients: Vec<OldRecipient>,
        content: ContentRef,
        fields: Option<F>,
        trace: OldTrace,
        not_before: UnixMillis,
        note: Option<String>,
    }

    #[derive(Deserialize)]
    struct OldEnvelope {
        mail_from: Option<Address>,
        ret: Option<Ret>,
        envid: Option<String>,
        helo: String,
        client_ip: String,
        protocol: String,
        utf8: bool,
        eight_bit: bool,
    }

    #[derive(Deserialize)]
    struct OldRecipient {
        address: Address,
        orcpt: Option<String>,
        notify: Option<Notify>,
        status: OldStatus,
        attempts: Vec<OldAttempt>,
        next_retry: Option<UnixMillis>,
        delay_reported: bool,
        final_reported: bool,
    }

    #[derive(Deserialize)]
    enum OldStatus {
        Pending,
        Delivered {
            at: UnixMillis,
            mailbox: String,
        },
        Relayed {
            at: UnixMillis,
            host: String,
            reply: String,
        },
        Failed {
            at: UnixMillis,
            status: String,
            reason: String,
        },
    }

    #[derive(Deserialize)]
    struct OldAttempt {
        at: UnixMillis,
        host: String,
        reply: String,
    }

    #[derive(Deserialize)]
    struct OldTrace {
        hop_count: u32,
        route: Vec<(String, UnixMillis)>,
    }

    /// Version 1's `ParsedFields` (no `authentication_results`).
    #[derive(Deserialize)]
    pub struct FieldsV1 {
        from: Option<String>,
        to: Option<String>,
        cc: Option<String>,
        subject: Option<String>,
        date: Option<String>,
        message_id: Option<String>,
    }

    impl From<FieldsV1> for ParsedFields {
        fn from(f: FieldsV1) -> ParsedFields {
            ParsedFields {
                from: f.from,
                to: f.to,
                cc: f.cc,
                subject: f.subject,
                date: f.date,
                message_id: f.message_id,
                authentication_results: None,
            }
        }
    }

    impl OldStatus {
        fn convert(self) -> RcptStatus {
            match self {
                OldStatus::Pending => RcptStatus::Pending,
                OldStatus::Delivered { at, mailbox } => {
                    match mailbox.strip_prefix(ALIAS_EXPANDED) {
                        Some(list) => RcptStatus::Expanded {
                            at,
                            // The router wrote the targets as it had parsed them.
                            to: list
                                .split(", ")
                                .filter_map(|a| a.trim().parse().ok())
                                .collect(),
                        },
                        None => RcptStatus::Delivered { at, mailbox },
                    }
                }
                OldStatus::Relayed { at, host, reply } => RcptStatus::Relayed {
                    at,
                    host,
                    reply: Reply::from_legacy_text(&reply),
                },
                OldStatus::Failed { at, status, reason } => RcptStatus::Failed {
                    at,
                    // Old records kept the code as text; one that is not a code was
                    // still a permanent failure.
                    status: status.parse().unwrap_or(Enhanced::new(5, 0, 0)),
                    reply: Reply::from_legacy_text(&reason),
                },
            }
        }
    }

    impl OldRecipient {
        fn convert(self) -> Recipient {
            let status = self.status.convert();
            let n = self.attempts.len();
            let nexts: Vec<UnixMillis> = self.attempts.iter().skip(1).map(|a| a.at).collect();
            let attempts = self
                .attempts
                .into_iter()
                .enumerate()
                .map(|(i, a)| {
                    let reply = Reply::from_legacy_text(&a.reply);
                    // The last attempt of a final recipient made it final; every other
                    // one was a temporary failure, retried at the next attempt's time (the
                    // last pending one at `next_retry`).
                    let outcome = match (&status, i + 1 == n) {
                        (RcptStatus::Relayed { reply, .. }, true) => DeliveryOutcome::Relayed {
                            reply: reply.clone(),
                        },
                        (RcptStatus::Failed { status, .. }, true) => DeliveryOutcome::Failed {
                            status: *status,
                            reply,
                        },
                        _ => DeliveryOutcome::Deferred {
                            reply,
                            next: nexts.get(i).copied().or(self.next_retry).unwrap_or(a.at),
                        },
                    };
                    Attempt {
                        at: a.at,
                        host: a.host,
                        outcome,
                    }
                })
                .collect();
            Recipient {
                address: self.address,
                orcpt: self.orcpt,
                notify: self.notify,
                status,
                attempts,
                next_retry: self.next_retry,
                delay_reported: self.delay_reported,
                final_reported: self.final_reported,
            }
        }
    }

    impl<F: Into<ParsedFields>> From<Record<F>> for MessageRecord {
        fn from(r: Record<F>) -> MessageRecord {
            let e = r.envelope;
            let report = e.mail_from.is_none()
                && r.trace
                    .route
                    .first()
                    .is_some_and(|(stage, _)| stage == REPORT_STAGE);
            MessageRecord {
                schema: r.schema,
                id: r.id,
                location: r.location,
                received_at: r.received_at,
                size: r.size,
                envelope: Envelope {
                    mail_from: e.mail_from,
                    ret: e.ret,
                    envid: e.envid,
                    helo: e.helo,
                    client_ip: e.client_ip,
                    protocol: e.protocol,
                    utf8: e.utf8,
                    eight_bit: e.eight_bit,
                    // Not kept before version 3.
                    auth: None,
                },
                recipients: r
                    .recipients
                    .into_iter()
                    .map(OldRecipient::convert)
                    .collect(),
                content: r.content,
                fields: r.fields.map(Into::into),
                trace: HopTrace {
                    hop_count: r.trace.hop_count,
                    route: r.trace.route,
                    origin: if report {
                        Origin::Report
                    } else {
                        Origin::Received
                    },
                },
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
        [TAG, 1, body @ ..] => postcard::from_bytes::<old::Record<old::FieldsV1>>(body)
            .map(MessageRecord::from)
            .map_err(|e| FormatError::Undecodable {
                version: 1,
                reason: e.to_string(),
            }),
        [TAG, 2, body @ ..] => postcard::from_bytes::<old::Record<ParsedFields>>(body)
            .map(MessageRecord::from)
            .map_err(|e| FormatError::Undecodable {
                version: 2,
                reason: e.to_string(),
            }),
        [TAG, v, ..] if *v > VERSION => Err(FormatError::Newer(*v)),
        // The first store's untagged values never start with the tag (their first byte is
        // the low byte of the record's schema number, which never reached 82), so this is damage.
        [TAG, rest @ ..] => Err(FormatError::Undecodable {
            version: rest.first().copied().unwrap_or(0),
            reason: "no such format version".into(),
        }),
        legacy => {
            let record: old::Record<old::FieldsV1> =
                legacy_decode(legacy).map_err(|e| FormatError::Undecodable {
                    version: 0,
                    reason: e.to_string(),
                })?;
            Ok(record.into())
        }
    }
}

/// Version 0 records are the IPC frame's payload of their day: bincode with fixed-width
/// integers, nothing trailing (`mta_ipc::frame`'s options; the store reads them itself, so
/// it needs no wire crate).
fn legacy_decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(bytes.len() as u64)
        .reject_trailing_bytes()
        .deserialize(bytes)
}

/// Whether `bytes` is in the current format (else `Engine::rebuild` rewrites it).
pub fn is_current(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == TAG && bytes[1] == VERSION
}

#[cfg(test)]
mod version_tests {
    //! Old-format bytes are built here from tuples and enums of the test's own (postcard
    //! lays out a struct as its fields in order, as it does a tuple, and an enum variant as
    //! its index then its fields), not from the decoder's types, so a slip in those shows.
    use super::*;
    use mta_types::message::{Attempt, ContentRef, Envelope, HopTrace, Origin, RECORD_SCHEMA};
    use mta_types::outcome::{DeliveryOutcome, Reply};
    use mta_types::{Address, Location, QueueId, QueueName, RcptStatus, Recipient};
    use serde::Serialize;

    /// `RcptStatus` as versions 1 and 2 wrote it.
    #[derive(Serialize)]
    enum OldStatus {
        Pending,
        Delivered(u64, String),
        Relayed(u64, String, String),
        Failed(u64, String, String),
    }

    type OldEnvelope = (
        Option<Address>,
        Option<mta_types::message::Ret>,
        Option<String>,
        String,
        String,
        String,
        bool,
        bool,
    );
    /// address, orcpt, notify, status, attempts (at, host, reply), next_retry,
    /// delay_reported, final_reported.
    type OldRecipient = (
        Address,
        Option<String>,
        Option<mta_types::message::Notify>,
        OldStatus,
        Vec<(u64, String, String)>,
        Option<u64>,
        bool,
        bool,
    );

    fn a(s: &str) -> Address {
        s.parse().unwrap()
    }

    fn old_envelope(from: Option<&str>) -> OldEnvelope {
        (
            from.map(a),
            None,
            Some("env-1".into()),
            "h".into(),
            "127.0.0.1".into(),
            "ESMTP".into(),
            false,
            true,
        )
    }

    /// Four recipients covering every old status: pending after two deferrals, relayed,
    /// failed by the next hop, and an expanded alias.
    fn old_recipients() -> Vec<OldRecipient> {
        vec![
            (
                a("p@example.net"),
                None,
                None,
                OldStatus::Pending,
                vec![
                    (
                        100,
                        "mx.example.net[192.0.2.1]".into(),
                        "451 4.7.1 later".into(),
                    ),
                    (
                        200,
                        "mx.example.net[192.0.2.1]".into(),
                        "4.4.3 lookup failed".into(),
                    ),
                ],
                Some(900),
                true,
                false,
            ),
            (
                a("r@example.net"),
                Some("rfc822;R@example.net".into()),
                None,
                OldStatus::Relayed(300, "mx[192.0.2.1]".into(), "250 2.0.0 Ok: queued".into()),
                vec![(300, "mx[192.0.2.1]".into(), "250 2.0.0 Ok: queued".into())],
                None,
                false,
                false,
            ),
            (
                a("f@example.net"),
                None,
                None,
                OldStatus::Failed(
                    400,
                    "5.1.1".into(),
                    "550 5.1.1 <f@example.net>: User unknown".into(),
                ),
                vec![(
                    400,
                    "mx[192.0.2.1]".into(),
                    "550 5.1.1 <f@example.net>: User unknown".into(),
                )],
                None,
                false,
                true,
            ),
            (
                a("list@localhost"),
                None,
                None,
                OldStatus::Delivered(500, "alias expanded to a@localhost, b@example.org".into()),
                vec![],
                None,
                false,
                false,
            ),
        ]
    }

    /// What this build makes of `old_recipients()`.
    fn converted_recipients() -> Vec<Recipient> {
        let mut p = Recipient::new(a("p@example.net"));
        p.attempts = vec![
            Attempt {
                at: 100,
                host: "mx.example.net[192.0.2.1]".into(),
                outcome: DeliveryOutcome::Deferred {
                    reply: Reply::remote(451, Some((4, 7, 1).into()), "later"),
                    next: 200,
                },
            },
            Attempt {
                at: 200,
                host: "mx.example.net[192.0.2.1]".into(),
                outcome: DeliveryOutcome::Deferred {
                    reply: Reply::local((4, 4, 3), "lookup failed"),
                    next: 900,
                },
            },
        ];
        p.next_retry = Some(900);
        p.delay_reported = true;
        let ok = Reply::remote(250, Some((2, 0, 0).into()), "Ok: queued");
        let mut r = Recipient::new(a("r@example.net"));
        r.orcpt = Some("rfc822;R@example.net".into());
        r.status = RcptStatus::Relayed {
            at: 300,
            host: "mx[192.0.2.1]".into(),
            reply: ok.clone(),
        };
        r.attempts = vec![Attempt {
            at: 300,
            host: "mx[192.0.2.1]".into(),
            outcome: DeliveryOutcome::Relayed { reply: ok },
        }];
        let unknown = Reply::remote(550, Some((5, 1, 1).into()), "<f@example.net>: User unknown");
        let mut f = Recipient::new(a("f@example.net"));
        f.status = RcptStatus::Failed {
            at: 400,
            status: (5, 1, 1).into(),
            reply: unknown.clone(),
        };
        f.attempts = vec![Attempt {
            at: 400,
            host: "mx[192.0.2.1]".into(),
            outcome: DeliveryOutcome::Failed {
                status: (5, 1, 1).into(),
                reply: unknown,
            },
        }];
        f.final_reported = true;
        let mut l = Recipient::new(a("list@localhost"));
        l.status = RcptStatus::Expanded {
            at: 500,
            to: vec![a("a@localhost"), a("b@example.org")],
        };
        vec![p, r, f, l]
    }

    fn content() -> ContentRef {
        ContentRef {
            segment: "x.seg".into(),
            offset: 7,
            len: 42,
        }
    }

    /// The record this build expects from the old bytes (the old schema number is kept:
    /// it says which build wrote the record).
    fn expected(schema: u16, id: QueueId, auth_results: Option<&str>) -> MessageRecord {
        MessageRecord {
            schema,
            id,
            location: Location::Queue(QueueName::OutboundWork),
            received_at: 1_000,
            size: 42,
            envelope: Envelope {
                envid: Some("env-1".into()),
                eight_bit: true,
                ..Envelope::new(Some(a("s@example.org")), "h", "127.0.0.1", "ESMTP")
            },
            recipients: converted_recipients(),
            content: content(),
            fields: Some(mta_types::message::ParsedFields {
                subject: Some("hello".into()),
                message_id: Some("<m@x>".into()),
                authentication_results: auth_results.map(Into::into),
                ..Default::default()
            }),
            trace: HopTrace {
                hop_count: 1,
                route: vec![("imsgcnv".into(), 1_001)],
                origin: Origin::Received,
            },
            not_before: 5,
            note: Some("deferred".into()),
        }
    }

    type Trace = (u32, Vec<(String, u64)>);

    fn old_record<F: Serialize>(schema: u16, id: QueueId, fields: F) -> Vec<u8> {
        let trace: Trace = (1, vec![("imsgcnv".into(), 1_001)]);
        postcard::to_allocvec(&(
            schema,
            id,
            Location::Queue(QueueName::OutboundWork),
            1_000u64,
            42u64,
            old_envelope(Some("s@example.org")),
            old_recipients(),
            content(),
            Some(fields),
            trace,
            5u64,
            Some("deferred".to_string()),
        ))
        .unwrap()
    }

    type FieldsV1 = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );

    fn fields_v1() -> FieldsV1 {
        (
            None,
            None,
            None,
            Some("hello".into()),
            None,
            Some("<m@x>".into()),
        )
    }

    #[test]
    fn a_version_1_record_is_read_with_typed_outcomes() {
        let id = QueueId::generate();
        let mut bytes = vec![TAG, 1];
        bytes.extend(old_record(2, id, fields_v1()));
        assert_eq!(decode(&bytes).unwrap(), expected(2, id, None));
        assert!(!is_current(&bytes));
    }

    #[test]
    fn a_version_2_record_is_read_with_typed_outcomes() {
        let id = QueueId::generate();
        let f = fields_v1();
        let v2_fields = (
            f.0,
            f.1,
            f.2,
            f.3,
            f.4,
            f.5,
            Some("x; spf=pass".to_string()),
        );
        let mut bytes = vec![TAG, 2];
        bytes.extend(old_record(3, id, v2_fields));
        assert_eq!(
            decode(&bytes).unwrap(),
            expected(3, id, Some("x; spf=pass"))
        );
        assert!(!is_current(&bytes));
    }

    #[test]
    fn an_old_delivery_report_keeps_its_origin() {
        let id = QueueId::generate();
        let trace: Trace = (0, vec![("drt".into(), 1), ("router".into(), 2)]);
        let mut bytes = vec![TAG, 2];
        bytes.extend(
            postcard::to_allocvec(&(
                3u16,
                id,
                Location::Queue(QueueName::MailBox),
                1u64,
                10u64,
                old_envelope(None),
                Vec::<OldRecipient>::new(),
                content(),
                None::<()>,
                trace,
                0u64,
                None::<String>,
            ))
            .unwrap(),
        );
        let r = decode(&bytes).unwrap();
        assert!(r.is_report(), "{:?}", r.trace);
        assert_eq!(r.trace.route.len(), 2);
    }

    #[test]
    fn the_current_version_round_trips_with_the_auth_identity() {
        let mut now = expected(RECORD_SCHEMA, QueueId::generate(), Some("x; spf=pass"));
        now.envelope.auth = Some("alice".into());
        now.trace.origin = Origin::Report;
        let bytes = encode(&now);
        assert_eq!(decode(&bytes).unwrap(), now);
        assert!(is_current(&bytes));
        assert!(matches!(
            decode(&[TAG, VERSION + 1, 0]),
            Err(FormatError::Newer(_))
        ));
    }
}
