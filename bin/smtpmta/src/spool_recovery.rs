//! What the spool knows that the queue store may not: recovery at each start.
//!
//! isesctl writes each message's first record as the envelope of its spool frame, syncs
//! the spool, then commits the records *spooled* (`Durability::Spooled`): applied in the
//! store, on disk with the store's next flush (half a second at most). A crash or power
//! loss in between leaves acknowledged messages whose records only the spool holds.
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
use mta_store::StoreService;
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
            let Some(mut record) = envelope_record(&frame.envelope) else {
                found.unreadable += 1;
                tracing::warn!(
                    "spool segment {} offset {}: an envelope that cannot be read; its message is not rebuilt",
                    frame.content.segment,
                    frame.content.offset
                );
                return;
            };
            match engine.get(record.id) {
                Ok(Some(_)) => {
                    found.present += 1;
                    return;
                }
                Ok(None) => {}
                // An unreadable record is quarantined when met; it is there.
                Err(_) => return,
            }
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

/// The record isesctl wrote as a frame's envelope.
fn envelope_record(envelope: &[u8]) -> Option<MessageRecord> {
    serde_json::from_slice::<MessageRecord>(envelope).ok()
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
        let Some(mut record) = envelope_record(&frame.envelope) else {
            found.skipped += 1;
            tracing::warn!(
                "spool segment {segment} offset {}: an envelope that cannot be read after the store's mark; its message is not put back",
                frame.content.offset
            );
            return;
        };
        if !matches!(engine.get(record.id), Ok(None)) {
            found.present += 1;
            return;
        }
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
