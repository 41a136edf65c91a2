//! Rebuilding, from the spool, the records a damaged queue store lost.
//!
//! sled drops every log entry after a damaged one (mta-store's `durability.rs`), so a
//! damaged `store/db` can lose records of acknowledged messages. isesctl writes each
//! message's first record as the envelope of its spool frame, and compaction is held off
//! while the store's `DAMAGED` report exists, so the content and envelope of every message
//! whose record was lost are still in the spool. Once, at the start that finds the
//! damage, before any task runs, every envelope whose queue ID has no record becomes a
//! Dead record pointing at its content, with a note that says where it came from.
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
            let Ok(mut record) = serde_json::from_slice::<MessageRecord>(&frame.envelope) else {
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
