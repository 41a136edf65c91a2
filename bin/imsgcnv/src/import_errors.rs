//! `SMTPSaveImportErrors`: copies of messages for diagnosing conversion problems, in
//! `<data_dir>/import-errors/`.
//!
//! - 1: a copy of each message that did not reach `mail.box` (Conversion Error or Dead),
//!   as `<qid>.eml` (the spool content byte for byte);
//! - 2: also `<qid>.trace`: the verdict, the conversion warnings, the envelope and hop count;
//! - 3: both, for every message.
//!
//! The copies are for the operator, not part of the queue: they are not synced, and failing to
//! write one is logged and changes nothing about the message.

use crate::conversion::Verdict;
use mta_types::MessageRecord;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub struct ImportErrors {
    dir: PathBuf,
    level: u8,
}

impl ImportErrors {
    /// `level` is the knob's value for this batch.
    pub fn new(data_dir: &Path, level: u8) -> ImportErrors {
        ImportErrors {
            dir: data_dir.join("import-errors"),
            level,
        }
    }

    /// Saves what the level asks for. `content` is `None` when it could not be read.
    pub fn save(&self, record: &MessageRecord, content: Option<&[u8]>, verdict: &Verdict) {
        let wanted = self.level >= 3 || (self.level >= 1 && verdict.is_failure());
        if !wanted {
            return;
        }
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            tracing::warn!(
                "qid={} cannot save import copy in {}: {e}",
                record.id,
                self.dir.display()
            );
            return;
        }
        if let Some(content) = content {
            self.write(record, "eml", content);
        }
        if self.level >= 2 {
            self.write(record, "trace", trace_text(record, verdict).as_bytes());
        }
    }

    fn write(&self, record: &MessageRecord, ext: &str, bytes: &[u8]) {
        let path = self.dir.join(format!("{}.{ext}", record.id));
        match std::fs::write(&path, bytes) {
            Ok(()) => tracing::info!("qid={} saved {}", record.id, path.display()),
            Err(e) => tracing::warn!("qid={} cannot save {}: {e}", record.id, path.display()),
        }
    }
}

/// The conversion trace written at level 2 and above.
fn trace_text(record: &MessageRecord, verdict: &Verdict) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "qid: {}", record.id);
    let _ = writeln!(t, "received-at-ms: {}", record.received_at);
    let from = record.envelope.return_path();
    let _ = writeln!(t, "from: <{from}>");
    for r in &record.recipients {
        let _ = writeln!(t, "to: <{}>", r.address);
    }
    let _ = writeln!(t, "size: {}", record.size);
    let _ = writeln!(t, "hops: {}", record.trace.hop_count);
    let _ = writeln!(t, "location: {}", record.location.label());
    match verdict {
        Verdict::Converted { warnings } => {
            let _ = writeln!(t, "result: converted");
            for w in warnings {
                let _ = writeln!(t, "warning: {w}");
            }
        }
        Verdict::TooManyHops { hops, limit } => {
            let _ = writeln!(
                t,
                "result: dead: too many hops ({hops} Received headers, limit {limit})"
            );
        }
        Verdict::Failed { reason } => {
            let _ = writeln!(t, "result: conversion error: {reason}");
        }
    }
    if let Some(note) = &record.note {
        let _ = writeln!(t, "note: {note}");
    }
    t
}
