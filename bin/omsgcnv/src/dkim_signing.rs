//! DKIM signing of mail leaving for another host (`[[dkim]]`).
//!
//! The signature header is prepended to the content exactly as it was received: the copy
//! written here is `DKIM-Signature: …` followed by the spooled bytes, unchanged, so the
//! body relay stays byte-exact. Messages without a key for their domain are not touched.
//! Logs: `qid=… dkim signed d=… s=… a=…`, or why not.

use mta_auth::SigningKeys;
use mta_ipc::store::Change;
use mta_spool::SpoolWriter;
use mta_types::{MessageRecord, QueueId};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The keys and the spool writer for signed copies.
pub struct Signing {
    keys: SigningKeys,
    spool: Mutex<SpoolWriter>,
    signed: AtomicU64,
}

impl Signing {
    /// `None` without `[[dkim]]` keys (then omsgcnv writes nothing to the spool).
    pub fn open(config: &mta_config::Config) -> anyhow::Result<Option<Signing>> {
        let keys = SigningKeys::load(config)?;
        if keys.is_empty() {
            return Ok(None);
        }
        let dir = config.spool_dir();
        let spool = SpoolWriter::open(&dir, "omsgcnv")
            .map_err(|e| anyhow::anyhow!("cannot open the spool in {}: {e}", dir.display()))?;
        Ok(Some(Signing {
            keys,
            spool: Mutex::new(spool),
            signed: AtomicU64::new(0),
        }))
    }

    pub fn signed(&self) -> u64 {
        self.signed.load(Ordering::Relaxed)
    }

    /// One batch's signing: holds the spool writer until `finish`.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            signing: self,
            spool: self.spool.lock().unwrap_or_else(|p| p.into_inner()),
            written: Vec::new(),
            failed: Vec::new(),
        }
    }
}

pub struct Batch<'a> {
    signing: &'a Signing,
    spool: MutexGuard<'a, SpoolWriter>,
    /// Records whose signed copy was appended (not yet synced).
    written: Vec<QueueId>,
    /// Records whose copy could not be written.
    failed: Vec<QueueId>,
}

impl Batch<'_> {
    /// Signs `record`'s `content` if a key signs for it, pointing the record at the signed
    /// copy. A signing failure leaves the message unsigned (logged); a spool failure keeps
    /// the record out of this batch's commit.
    pub fn sign(&mut self, record: &mut MessageRecord, content: &[u8]) {
        let sender = record
            .envelope
            .mail_from
            .as_ref()
            .map(|a| a.domain().as_str());
        let (header, key) = match self.signing.keys.sign(content, sender) {
            Ok(Some(signed)) => signed,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("qid={} dkim signing failed, sent unsigned: {e}", record.id);
                return;
            }
        };
        match self.spool.append(&[header.as_bytes(), content]) {
            Ok(copy) => {
                tracing::info!(
                    "qid={} dkim signed d={} s={} a={}",
                    record.id,
                    key.domain,
                    key.selector,
                    key.algorithm.as_str()
                );
                record.size = copy.len;
                record.content = copy;
                self.written.push(record.id);
            }
            Err(e) => {
                tracing::warn!(
                    "qid={} dkim: cannot write the signed copy, retried later: {e}",
                    record.id
                );
                self.failed.push(record.id);
            }
        }
    }

    /// Syncs the signed copies; returns the records to leave out of the commit, and the
    /// counter change.
    pub fn finish(mut self) -> (Vec<QueueId>, Vec<Change>) {
        let mut dropped = std::mem::take(&mut self.failed);
        if self.written.is_empty() {
            return (dropped, Vec::new());
        }
        if let Err(e) = self.spool.sync() {
            tracing::warn!(
                "dkim: spool sync failed, {} signed message(s) retried later: {e}",
                self.written.len()
            );
            dropped.append(&mut self.written);
            return (dropped, Vec::new());
        }
        let n = self.written.len() as u64;
        self.signing.signed.fetch_add(n, Ordering::Relaxed);
        (
            dropped,
            vec![Change::AddCounters(vec![(
                mta_auth::counters::SIGNED.to_string(),
                n,
            )])],
        )
    }
}
