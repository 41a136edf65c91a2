//! What the spool knows that the queue store may not: recovery at each start.
//!
//! isesctl writes each message's first record as the envelope of its spool frame (in the
//! store's versioned record codec, `mta_store_types::record_codec`; the previous release
//! wrote JSON, still read: `envelope_record`), syncs the spool, then commits the records
//! *spooled* (`Durability::Spooled`): applied in the store, on disk with the store's next
//! flush (half a second at most). A crash or power loss in between leaves acknowledged
//! messages whose records only the spool holds.
//! `replay_unsaved` puts them back, at every start, before any task runs:
//!
//! - Every record the store applies moves its segment's *spool mark* forward to the end of
//!   the content it points at, in the same atomic batch (mta-store `keys::spool_mark`). A
//!   flush that made a record durable made the mark durable too; and isesctl commits its
//!   batches one after the other in spool order. So the frames after a segment's durable
//!   mark are exactly those whose records may not be durable.
//! - For each of those frames with an envelope whose queue ID has no record, the record
//!   goes back as it was accepted (Inbound Work, or Held with its milter's reason), if its
//!   content still checks; then every segment is marked at its end and the store flushed.
//! - A frame after the mark whose record is there was committed and not flushed, and has
//!   nothing to replay; one whose message was refused after it was written (the store
//!   commit failed) comes back too — a duplicate, never a loss, as with any crash.
//! - The first start that keeps marks (an upgraded or new store) replays nothing: older
//!   builds committed their records durably.
//!
//! And once, at the start that finds the store damaged (`run_if_damaged`):
//!
//! sled drops every log entry after a damaged one (mta-store's `durability.rs`), so a
//! damaged `store/db` can lose records of acknowledged messages. Compaction is held off
//! while the store's `DAMAGED` report exists, so the content and envelope of every message
//! whose record was lost are still in the spool. Every envelope whose queue ID has no
//! record becomes a Dead record pointing at its content, with a note that says where it
//! came from.
//!
//! Why Dead and not its queue: a message finished after the damaged entry (delivered,
//! relayed, bounced) lost the record of that too, and cannot be told from one that was
//! still waiting. Dead keeps every one for the operator — `release dead <id>` sends it
//! through conversion and routing again, `delete <id>` drops it — instead of repeating
//! deliveries or losing mail silently.

use anyhow::Context;
use mta_ipc::store::Change;
use mta_store::types::record_codec::{self, FormatError};
use mta_store::{Engine, StoreService};
use mta_types::{Location, MessageRecord};
use std::path::Path;

/// Written beside `DAMAGED` once the rebuild is complete, so a restart does not redo it.
pub const REBUILT_REPORT: &str = "REBUILT";
/// Records are put in batches of this many.
const BATCH: usize = 1000;

#[derive(Debug, Default)]
pub struct Recovered {
    /// Dead records made from envelopes.
    pub rebuilt: u64,
    /// Envelopes whose record was still there.
    pub present: u64,
    /// Frames with an envelope that could not be read (a newer or older writer's).
    pub unreadable: u64,
    /// Segments whose walk stopped at damage (named in the log).
    pub damaged_segments: u64,
}

/// Runs the rebuild if this start found the store damaged, or an earlier start found it
/// and did not finish the rebuild.
pub fn run_if_damaged(
    store: &StoreService,
    store_dir: &Path,
    spool_dir: &Path,
) -> anyhow::Result<()> {
    let engine = store.engine();
    let report = store_dir.join(REBUILT_REPORT);
    if engine.damage_found_now() {
        // A report of an earlier damage's rebuild says nothing about this one.
        let _ = std::fs::remove_file(&report);
    } else if engine.damage().is_none() || report.exists() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let found = rebuild(store, spool_dir)?;
    engine.flush().context("flushing the rebuilt records")?;
    let text = format!(
        "{} messages rebuilt into Dead from the spool's envelopes ({} still had their record, \
         {} envelopes unreadable, {} segments damaged), in {} ms. Each says \"rebuilt from spool\" \
         in `show queue`: `release dead <id>` routes it again, `delete <id>` drops it.",
        found.rebuilt,
        found.present,
        found.unreadable,
        found.damaged_segments,
        started.elapsed().as_millis()
    );
    if found.rebuilt > 0 {
        tracing::error!("{text}");
    } else {
        tracing::warn!("{text}");
    }
    std::fs::write(&report, format!("{text}\n"))
        .with_context(|| format!("cannot write {}", report.display()))?;
    Ok(())
}

fn rebuild(store: &StoreService, spool_dir: &Path) -> anyhow::Result<Recovered> {
    let engine = store.engine();
    let mut found = Recovered::default();
    let mut segments = mta_spool::list_segments(spool_dir)?;
    segments.sort_by(|a, b| a.name.cmp(&b.name));
    for segment in segments {
        let mut batch: Vec<Change> = Vec::new();
        let mut failure: Option<anyhow::Error> = None;
        let walked = mta_spool::scan_segment(spool_dir, &segment.name, |frame| {
            if frame.envelope.is_empty() || failure.is_some() {
                return;
            }
            let Some(mut record) = lost_record(
                engine,
                &frame,
                &mut found.present,
                &mut found.unreadable,
                "its message is not rebuilt",
            ) else {
                return;
            };
            record.location = Location::Dead;
            record.note = Some(format!(
                "rebuilt from spool segment {} offset {} after the queue store was damaged; it may \
                 have been delivered before the damage",
                frame.content.segment, frame.content.offset
            ));
            record.content = frame.content;
            record.not_before = 0;
            tracing::warn!(
                "qid={} record lost in the damaged queue store: rebuilt into Dead from the spool",
                record.id
            );
            found.rebuilt += 1;
            batch.push(Change::Put(record));
            if batch.len() >= BATCH {
                if let Err(e) = engine.apply(&std::mem::take(&mut batch)) {
                    failure = Some(e.into());
                }
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        if !batch.is_empty() {
            engine.apply(&batch)?;
        }
        if let Err(e) = walked {
            found.damaged_segments += 1;
            tracing::error!("{e}; the messages after it in that segment are not rebuilt");
        }
    }
    Ok(found)
}

/// Why a frame's envelope gives no record.
#[derive(Debug, thiserror::Error)]
enum EnvelopeError {
    #[error("an envelope that cannot be read: {0}")]
    Codec(#[from] FormatError),
    #[error("an envelope of the previous release (JSON) that cannot be read: {0}")]
    Json(#[from] serde_json::Error),
    #[error("an envelope that cannot be read: it starts with byte {0:#04x}, neither the record codec's tag nor JSON")]
    Unknown(u8),
    #[error("an empty envelope")]
    Empty,
}

/// The record isesctl wrote as a frame's envelope: in the store's record codec, or, written
/// by the previous release, in JSON (read for one release; then this match loses its
/// JSON arm and smtpmta its only use of serde_json for records).
///
/// The first byte tells them apart without ambiguity: every codec value starts with its
/// tag `R` (0x52), and serde_json writes a record (a struct) as an object with no leading
/// white space, so it starts with `{` (0x7B). No JSON text starts with `R` and no codec
/// value with `{`. The codec's untagged legacy form (the store's first records, bincode)
/// was never an envelope, so untagged bytes are not tried as one: they are an error.
fn envelope_record(envelope: &[u8]) -> Result<MessageRecord, EnvelopeError> {
    match envelope.first() {
        Some(&record_codec::TAG) => Ok(record_codec::decode(envelope)?),
        Some(b'{') => Ok(serde_json::from_slice(envelope)?),
        Some(&other) => Err(EnvelopeError::Unknown(other)),
        None => Err(EnvelopeError::Empty),
    }
}

/// The record in a frame's envelope if the store has none with its queue ID: what the
/// rebuild and the replay put back. Counts a frame whose record the store has in `present`
/// (a record it cannot read is there too: a claim that meets it quarantines it), and one
/// whose envelope cannot be read in `unreadable`, logging why and what is `not_done`.
fn lost_record(
    engine: &Engine,
    frame: &mta_spool::Frame,
    present: &mut u64,
    unreadable: &mut u64,
    not_done: &str,
) -> Option<MessageRecord> {
    match envelope_record(&frame.envelope) {
        Err(e) => {
            *unreadable += 1;
            tracing::warn!(
                "spool segment {} offset {}: {e}; {not_done}",
                frame.content.segment,
                frame.content.offset
            );
            None
        }
        Ok(record) => match engine.get(record.id) {
            Ok(None) => Some(record),
            Ok(Some(_)) | Err(_) => {
                *present += 1;
                None
            }
        },
    }
}

#[derive(Debug, Default)]
pub struct Replayed {
    /// Records put back from their envelopes.
    pub replayed: u64,
    /// Frames after a mark whose record was there.
    pub present: u64,
    /// Frames after a mark that could not be put back (unreadable envelope, content that
    /// fails its check): never acknowledged, or damaged on disk (named in the log).
    pub skipped: u64,
}

/// Puts back the records of spooled messages that the store lost in a crash (module
/// comment), then marks every segment at its end. Runs at every start, before the tasks.
pub fn replay_unsaved(store: &StoreService, spool_dir: &Path) -> anyhow::Result<Replayed> {
    let engine = store.engine();
    let segments = mta_spool::list_segments(spool_dir)?;
    let mut found = Replayed::default();
    if engine.spool_marks_kept()? && engine.damage().is_none() {
        for segment in &segments {
            let from = engine.spool_mark(&segment.name)?;
            if from < segment.size {
                tracing::info!(
                    "spool segment {} has {} bytes after the store's mark at {from}: replaying",
                    segment.name,
                    segment.size - from
                );
                replay_segment(store, spool_dir, &segment.name, from, &mut found)?;
            }
        }
    }
    let ends: Vec<(String, u64)> = segments.into_iter().map(|s| (s.name, s.size)).collect();
    engine.set_spool_marks(&ends)?;
    engine
        .flush()
        .context("flushing the replayed records and the spool marks")?;
    if found.replayed > 0 {
        tracing::warn!(
            "{} accepted messages put back into the queue from the spool (their records were not yet on disk at the crash); {} had their record, {} not put back",
            found.replayed, found.present, found.skipped
        );
    }
    Ok(found)
}

fn replay_segment(
    store: &StoreService,
    spool_dir: &Path,
    segment: &str,
    from: u64,
    found: &mut Replayed,
) -> anyhow::Result<()> {
    let engine = store.engine();
    let mut batch: Vec<Change> = Vec::new();
    let walked = mta_spool::scan_segment_from(spool_dir, segment, from, |frame| {
        if frame.envelope.is_empty() {
            return;
        }
        let Some(mut record) = lost_record(
            engine,
            &frame,
            &mut found.present,
            &mut found.skipped,
            "after the store's mark, its message is not put back",
        ) else {
            return;
        };
        if let Err(e) = mta_spool::read(spool_dir, &frame.content) {
            found.skipped += 1;
            tracing::warn!(
                "qid={} spooled content fails its check ({e}): not put back (a write the crash cut was never acknowledged)",
                record.id
            );
            return;
        }
        tracing::warn!(
            "qid={} record not yet on disk at the crash: put back from the spool",
            record.id
        );
        record.content = frame.content;
        found.replayed += 1;
        batch.push(Change::Put(record));
    });
    if !batch.is_empty() {
        engine.apply(&batch)?;
    }
    if let Err(e) = walked {
        // The torn end of the newest segment is normal after a crash: what was cut there
        // was never synced, so never acknowledged.
        tracing::info!("{e}: the frames from there on were never acknowledged");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mta_types::message::{ContentRef, Envelope as MailEnvelope, HopTrace, Notify, Ret};
    use mta_types::message::{Recipient, RECORD_SCHEMA};
    use mta_types::{QueueId, QueueName};

    /// A record as isesctl's intake writes it into the envelope: two recipients, DSN
    /// parameters, an authenticated client, no content reference yet.
    fn intake_record(id: QueueId) -> MessageRecord {
        let mut envelope = MailEnvelope::new(
            Some("alice@example.org".parse().unwrap()),
            "client.example.org",
            "192.0.2.7",
            "ESMTPS",
        );
        envelope.envid = Some("QQ314159".into());
        envelope.ret = Some(Ret::Hdrs);
        envelope.eight_bit = true;
        envelope.auth = Some("alice".into());
        let mut bob = Recipient::new("bob@example.net".parse().unwrap());
        bob.orcpt = Some("rfc822;bob@example.net".into());
        bob.notify = Some(Notify {
            never: false,
            success: true,
            failure: true,
            delay: false,
        });
        MessageRecord {
            schema: RECORD_SCHEMA,
            id,
            location: Location::Queue(QueueName::InboundWork),
            received_at: 1_796_000_000_000,
            size: 2345,
            envelope,
            recipients: vec![bob, Recipient::new("carol@localhost".parse().unwrap())],
            content: ContentRef {
                segment: String::new(),
                offset: 0,
                len: 2345,
            },
            fields: None,
            trace: HopTrace::default(),
            not_before: 0,
            note: None,
        }
    }

    /// `intake_record(QueueId::from_u64(0x0123_4567_89ab_cdef))` as the previous release's
    /// isesctl wrote it (`serde_json::to_vec`), kept as text: a change to `MessageRecord`
    /// that would leave such envelopes unread fails here.
    const JSON_ENVELOPE: &str = r#"{"schema":4,"id":81985529216486895,"location":{"Queue":"InboundWork"},"received_at":1796000000000,"size":2345,"envelope":{"mail_from":{"local":"alice","domain":"example.org"},"ret":"Hdrs","envid":"QQ314159","helo":"client.example.org","client_ip":"192.0.2.7","protocol":"ESMTPS","utf8":false,"eight_bit":true,"auth":"alice"},"recipients":[{"address":{"local":"bob","domain":"example.net"},"orcpt":"rfc822;bob@example.net","notify":{"never":false,"success":true,"failure":true,"delay":false},"status":"Pending","attempts":[],"next_retry":null,"delay_reported":false,"final_reported":false},{"address":{"local":"carol","domain":"localhost"},"orcpt":null,"notify":null,"status":"Pending","attempts":[],"next_retry":null,"delay_reported":false,"final_reported":false}],"content":{"segment":"","offset":0,"len":2345},"fields":null,"trace":{"hop_count":0,"route":[],"origin":"Received"},"not_before":0,"note":null}"#;

    #[test]
    fn an_envelope_in_the_record_codec_reads_back_as_the_record() {
        let record = intake_record(QueueId::generate());
        let envelope = record_codec::encode(&record);
        assert_eq!(envelope[0], record_codec::TAG);
        assert_eq!(envelope_record(&envelope).unwrap(), record);
    }

    #[test]
    fn a_json_envelope_of_the_previous_release_is_still_read() {
        let record = envelope_record(JSON_ENVELOPE.as_bytes()).unwrap();
        assert_eq!(
            record,
            intake_record(QueueId::from_u64(0x0123_4567_89ab_cdef))
        );
    }

    #[test]
    fn a_damaged_envelope_is_an_error_that_says_so() {
        let envelope = record_codec::encode(&intake_record(QueueId::generate()));
        // Every cut of a codec envelope and of a JSON one.
        for cut in 1..envelope.len() {
            let e = envelope_record(&envelope[..cut]).unwrap_err();
            assert!(matches!(e, EnvelopeError::Codec(_)), "cut at {cut}: {e}");
        }
        for cut in 1..JSON_ENVELOPE.len() {
            let e = envelope_record(&JSON_ENVELOPE.as_bytes()[..cut]).unwrap_err();
            assert!(matches!(e, EnvelopeError::Json(_)), "cut at {cut}: {e}");
        }
        let mut newer = envelope.clone();
        newer[1] = record_codec::VERSION + 1;
        let mut no_version = envelope.clone();
        no_version[1] = 0;
        let mut garbled = envelope.clone();
        garbled[0] = 0;
        for (bytes, says) in [
            (&newer[..], "newer than this build reads"),
            (&no_version[..], "no such format version"),
            (&garbled[..], "starts with byte 0x00"),
            (&[][..], "empty"),
        ] {
            let e = envelope_record(bytes).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    /// After an upgrade the spool holds envelopes of both releases: the replay puts back
    /// the records the store lost from either, counts the one it has and skips the one it
    /// cannot read.
    #[test]
    fn the_replay_puts_back_lost_records_from_json_and_codec_envelopes() {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        std::fs::create_dir(&spool_dir).unwrap();
        let store = StoreService::open(&dir.path().join("store"), None).unwrap();
        // The first start keeps marks from then on.
        replay_unsaved(&store, &spool_dir).unwrap();

        let committed = intake_record(QueueId::generate());
        let from_json = intake_record(QueueId::from_u64(0x0123_4567_89ab_cdef));
        let from_codec = intake_record(QueueId::generate());
        let mut spool = mta_spool::SpoolWriter::open(&spool_dir, "isesctl").unwrap();
        let mut append = |envelope: &[u8]| {
            spool
                .append_with_envelope(envelope, &[b"Subject: x\r\n\r\nbody\r\n"])
                .unwrap()
        };
        let mut stored = committed.clone();
        stored.content = append(&record_codec::encode(&committed));
        let json_at = append(JSON_ENVELOPE.as_bytes());
        let codec_at = append(&record_codec::encode(&from_codec));
        append(b"\x00 not an envelope");
        // A frame after the mark whose record the store has.
        append(&record_codec::encode(&committed));
        spool.sync().unwrap();
        // Its commit moves the mark past the first frame: the four after it are replayed.
        store.engine().apply(&[Change::Put(stored)]).unwrap();

        let found = replay_unsaved(&store, &spool_dir).unwrap();
        assert_eq!(
            (found.replayed, found.present, found.skipped),
            (2, 1, 1),
            "{found:?}"
        );
        for (record, at) in [(from_json, json_at), (from_codec, codec_at)] {
            let back = store.engine().get(record.id).unwrap().expect("put back");
            assert_eq!(back.content, at);
            assert_eq!(back.location, Location::Queue(QueueName::InboundWork));
            assert_eq!(back.recipients, record.recipients);
        }
    }
}
