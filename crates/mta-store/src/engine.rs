//! The sled engine: key layout (`keys.rs`), atomic batches that keep every index and
//! counter in step with the records, range reads. Synchronous but for `flush`;
//! `service` wraps it.

use crate::durability::StoreFiles;
use crate::keys;
use crate::stats::Deltas;
use mta_store_types::record_codec;
use mta_store_types::{Change, DestinationRow, QueueCounts, StoreError, TrackCursor};
use mta_types::message::RECORD_SCHEMA;
use mta_types::{Location, MessageRecord, QueueId, QueueName, RcptStatus};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// New counter values and destination summaries of a batch, cached once it is applied.
type StagedCounts = (Vec<(Vec<u8>, u64)>, Vec<(Vec<u8>, DestSummary)>);

/// sled's error as the store's: sled turns it into an `io::Error` (its I/O errors keep
/// their OS code), so no sled type leaves this crate. `?` cannot convert it by itself: the
/// error type is `mta-store-types`', which does not know sled.
pub(crate) fn sled_err(e: sled::Error) -> StoreError {
    StoreError::Io(e.into())
}

/// Per (location, destination): what `tell router show queue` shows without reading the
/// records.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct DestSummary {
    messages: u64,
    last_error: String,
}

/// Where one record sits in the indexes.
struct Indexed {
    loc: u8,
    due: u64,
    /// Distinct domains of its pending recipients ("" when none is pending).
    domains: Vec<String>,
    segment: String,
}

fn index_of(r: &MessageRecord) -> Option<Indexed> {
    let loc = keys::location_byte(r.location)?;
    let due = match r.location {
        Location::Queue(_) => r.not_before,
        _ => 0,
    };
    let mut domains: Vec<String> = r
        .recipients
        .iter()
        .filter(|rc| rc.status == RcptStatus::Pending)
        .map(|rc| rc.address.domain().as_str().to_ascii_lowercase())
        .collect();
    domains.sort();
    domains.dedup();
    if domains.is_empty() {
        domains.push(String::new());
    }
    Some(Indexed {
        loc,
        due,
        domains,
        segment: r.content.segment.clone(),
    })
}

pub struct Engine {
    db: sled::Db,
    tree: sled::Tree,
    files: Arc<Mutex<StoreFiles>>,
    /// Held by whoever applies a batch (the committer; `rebuild` and `quarantine`): the
    /// read-add-write of counters needs one writer at a time. It also keeps the values of
    /// the counters, counts and summaries last written, so a batch updates them without
    /// reading them back from sled first.
    writer: Mutex<WriterCache>,
    /// The last `RECENT_OUTCOMES` recipient outcomes applied (in memory only).
    recent: Mutex<std::collections::VecDeque<crate::stats::RecentOutcome>>,
    /// The number of the last flush (`keys::FLUSH_SEQ_KEY`).
    flush_seq: AtomicU64,
    /// Set when the database was found behind its mark (`durability.rs`); kept in the
    /// `DAMAGED` report file until the operator removes it.
    damage: Option<String>,
    /// The damage was found at this open (not reported by an earlier one).
    damage_found_now: bool,
    /// `hold_undeliverable` (the supervisor sets it from the config and `set config`).
    hold_undeliverable: AtomicBool,
    /// `tracking_days` (0: no history is written).
    tracking_days: AtomicU32,
    /// Histories of messages that left the store (`tracklog.rs`).
    tracklog: crate::tracklog::TrackLog,
}

/// The last written value of each small derived key (counter, count, segment reference,
/// destination summary) — exactly what sled holds, as every write of them goes through
/// the writer lock. Summaries are dropped when there are too many (a backlog to many
/// domains): they are read from sled again.
#[derive(Default)]
struct WriterCache {
    numbers: HashMap<Vec<u8>, u64>,
    summaries: HashMap<Vec<u8>, DestSummary>,
}

/// Most destination summaries the writer cache keeps.
const CACHED_SUMMARIES: usize = 10_000;

impl WriterCache {
    fn number(&mut self, tree: &sled::Tree, key: &[u8]) -> Result<u64, StoreError> {
        if let Some(v) = self.numbers.get(key) {
            return Ok(*v);
        }
        let v = tree
            .get(key)
            .map_err(sled_err)?
            .map(|v| keys::u64_value(&v))
            .unwrap_or(0);
        self.numbers.insert(key.to_vec(), v);
        Ok(v)
    }

    fn summary(&mut self, tree: &sled::Tree, key: &[u8]) -> Result<DestSummary, StoreError> {
        if let Some(v) = self.summaries.get(key) {
            return Ok(v.clone());
        }
        Ok(tree
            .get(key)
            .map_err(sled_err)?
            .and_then(|v| postcard::from_bytes(&v).ok())
            .unwrap_or_default())
    }

    fn set_summary(&mut self, key: &[u8], summary: DestSummary) {
        if self.summaries.len() >= CACHED_SUMMARIES {
            self.summaries.clear();
        }
        self.summaries.insert(key.to_vec(), summary);
    }
}

/// Counter and index changes accumulated over one batch, applied at its end.
#[derive(Default)]
struct IndexDeltas {
    locations: BTreeMap<u8, i64>,
    destinations: BTreeMap<Vec<u8>, (i64, Option<String>)>,
    segments: BTreeMap<String, i64>,
    /// Per spool segment, the furthest end of content a record put in this batch points at
    /// (the spool mark, `keys::spool_mark`).
    marks: BTreeMap<String, u64>,
}

impl IndexDeltas {
    fn add(&mut self, ix: &Indexed, by: i64, note: Option<&String>) {
        *self.locations.entry(ix.loc).or_default() += by;
        for d in &ix.domains {
            let e = self
                .destinations
                .entry(keys::dest_summary(ix.loc, d))
                .or_default();
            e.0 += by;
            if by > 0 {
                if let Some(n) = note {
                    e.1 = Some(n.clone());
                }
            }
        }
        *self.segments.entry(ix.segment.clone()).or_default() += by;
    }

    /// Notes that a record put in this batch points at `content`.
    fn mark(&mut self, content: &mta_types::ContentRef) {
        if content.segment.is_empty() {
            return;
        }
        let end = content.offset + content.len;
        let mark = self.marks.entry(content.segment.clone()).or_default();
        *mark = (*mark).max(end);
    }
}

fn remove_index(batch: &mut sled::Batch, id: QueueId, ix: &Indexed) {
    batch.remove(&keys::due(ix.loc, ix.due, id)[..]);
    for d in &ix.domains {
        batch.remove(keys::dest(ix.loc, d, ix.due, id));
    }
}

fn insert_index(batch: &mut sled::Batch, id: QueueId, ix: &Indexed) {
    batch.insert(&keys::due(ix.loc, ix.due, id)[..], &[][..]);
    for d in &ix.domains {
        batch.insert(keys::dest(ix.loc, d, ix.due, id), &[][..]);
    }
}

impl Engine {
    /// Opens (or creates) the store in `dir`. `data_dir` is the highest directory whose
    /// entries are synced at open.
    pub fn open(dir: &Path, data_dir: Option<&Path>) -> Result<Engine, StoreError> {
        // Before sled: its open overwrites the place where its recovery stopped.
        let log_stop = crate::sled_log::scan(dir);
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            // The page cache only speeds reads of hot records; the queue's working set
            // is what is due, so a small cache keeps memory flat under a backlog. sled
            // counts the cache by its pages' size on disk, and they take about twice that
            // in memory: with a million deferred records the suite's PSS was 332 MiB at
            // 64 MiB, 274 at 32 and 231 at 16, while the relay rate stayed the same
            // (2,343 and 2,300 msg/s, 1 KiB × 20 sessions).
            .cache_capacity(16 * 1024 * 1024)
            // No background flusher: the committer flushes (and syncs for real) after every
            // group with a durable commit, and replayable changes within 500 ms; sled's own
            // timer would only add flushes — and CPU while the queue is idle.
            .flush_every_ms(None)
            .open()
            .map_err(|e| {
                let locked = matches!(&e, sled::Error::Io(io) if io.to_string().contains("lock"));
                if locked {
                    StoreError::Locked {
                        path: dir.to_path_buf(),
                    }
                } else {
                    StoreError::Open {
                        path: dir.to_path_buf(),
                        source: e.into(),
                    }
                }
            })?;
        let tree = db.open_tree("queue").map_err(sled_err)?;
        let files = StoreFiles::open(dir, data_dir)?;
        let mut engine = Engine {
            db,
            tree,
            files: Arc::new(Mutex::new(files)),
            writer: Mutex::new(WriterCache::default()),
            recent: Mutex::new(Default::default()),
            flush_seq: Default::default(),
            damage: None,
            damage_found_now: false,
            hold_undeliverable: Default::default(),
            tracking_days: AtomicU32::new(7),
            tracklog: crate::tracklog::TrackLog::open(&dir.join("tracking"))?,
        };
        engine.check_flush_mark(dir, log_stop)?;
        let layout = engine.tree.get(keys::LAYOUT_KEY).map_err(sled_err)?;
        if layout.as_deref() != Some(&[keys::LAYOUT][..]) {
            engine.rebuild()?;
        }
        Ok(engine)
    }

    /// Recomputes every derived key (indexes, counts, segment references) from the
    /// records, rewriting records in the current format. Runs at open when the layout
    /// changed (or was never written: a new or pre-layout store); a new store costs
    /// nothing. Bounded memory: derived keys are deleted and rebuilt in chunks.
    pub fn rebuild(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        for prefix in keys::DERIVED {
            loop {
                let chunk: Vec<sled::IVec> = self
                    .tree
                    .scan_prefix([*prefix])
                    .keys()
                    .take(10_000)
                    .collect::<Result<_, _>>()
                    .map_err(sled_err)?;
                if chunk.is_empty() {
                    break;
                }
                let mut batch = sled::Batch::default();
                chunk.iter().for_each(|k| batch.remove(k));
                self.tree.apply_batch(batch).map_err(sled_err)?;
            }
        }
        let mut after: Option<sled::IVec> = None;
        let mut records = 0u64;
        loop {
            let range = match &after {
                Some(k) => self.tree.range::<&[u8], _>((
                    std::ops::Bound::Excluded(&k[..]),
                    std::ops::Bound::Excluded(&[keys::RECORD + 1][..]),
                )),
                None => self
                    .tree
                    .range::<&[u8], _>(&[keys::RECORD][..]..&[keys::RECORD + 1][..]),
            };
            let chunk: Vec<(sled::IVec, sled::IVec)> = range
                .take(1000)
                .collect::<Result<_, _>>()
                .map_err(sled_err)?;
            let Some((last, _)) = chunk.last() else {
                break;
            };
            after = Some(last.clone());
            let mut puts = Vec::with_capacity(chunk.len());
            for (k, v) in &chunk {
                match self.decode(k, v) {
                    Ok(r) => puts.push(r),
                    Err(e) => tracing::error!("{e}"),
                }
            }
            records += puts.len() as u64;
            // Applied as new: nothing derived exists for them any more.
            self.apply_inner(puts.into_iter().map(Change::Put).collect(), true)?;
        }
        self.tree
            .insert(keys::LAYOUT_KEY, &[keys::LAYOUT][..])
            .map_err(sled_err)?;
        self.db.flush().map_err(sled_err)?;
        self.files.lock().expect("store files").sync()?;
        tracing::info!(
            records,
            ms = started.elapsed().as_millis() as u64,
            "queue store indexes rebuilt (layout {})",
            keys::LAYOUT
        );
        Ok(())
    }

    /// Decodes a stored record; an unreadable one becomes a Dead placeholder (see
    /// `damaged_placeholder`), so one bad value never stops a queue.
    fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<MessageRecord, StoreError> {
        record_codec::decode(bytes).map_err(|e| StoreError::Corrupt {
            id: keys::id_of_record_key(key)
                .map(|id| id.to_string())
                .unwrap_or_else(|| format!("{key:?}")),
            reason: e.to_string(),
        })
    }

    /// A TLS policy state record (`keys::POLICY`): small values one task owns (osesctl's
    /// MTA-STS cache and TLS-RPT counts). Written outside the committer's batches: they
    /// touch no index or counter, and reach the disk with the next flush (a cache: losing
    /// the last write to a power cut costs one more fetch).
    pub fn policy_get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree
            .get(keys::policy(name))
            .map_err(sled_err)?
            .map(|v| v.to_vec()))
    }

    /// Sets (`Some`) or removes (`None`) a TLS policy state record.
    pub fn policy_put(&self, name: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        match value {
            Some(v) => self.tree.insert(keys::policy(name), v).map_err(sled_err)?,
            None => self.tree.remove(keys::policy(name)).map_err(sled_err)?,
        };
        Ok(())
    }

    pub fn get(&self, id: QueueId) -> Result<Option<MessageRecord>, StoreError> {
        match self.tree.get(keys::record(id)).map_err(sled_err)? {
            Some(v) => Ok(Some(self.decode(&keys::record(id), &v)?)),
            None => Ok(None),
        }
    }

    /// Moves an unreadable record aside (its bytes kept under `x`) and puts a Dead
    /// placeholder in its place that says why, so the operator sees it in `show queue`
    /// and the queue it was in goes on. Its index keys are found by `due_key` (the key it
    /// was met under).
    pub fn quarantine(&self, id: QueueId, due_key: &[u8], reason: &str) -> Result<(), StoreError> {
        let raw = self
            .tree
            .get(keys::record(id))
            .map_err(sled_err)?
            .unwrap_or_default();
        tracing::error!(
            "qid={id} record unreadable in the queue store ({} bytes at key m{id}): {reason}; moved to Dead",
            raw.len()
        );
        let mut batch = sled::Batch::default();
        batch.insert(&keys::damaged(id)[..], raw);
        batch.remove(due_key);
        {
            let mut writer = self.writer.lock().expect("store writer");
            // The location is known from the key it was met under; its destinations are
            // not (their summaries keep counting it until the next rebuild).
            if let Some(loc) = due_key.get(1) {
                let key = keys::loc_count(*loc);
                let count = writer.number(&self.tree, &key)?.saturating_sub(1);
                batch.insert(&key[..], &count.to_be_bytes()[..]);
                writer.numbers.insert(key.to_vec(), count);
            }
            batch.remove(&keys::record(id)[..]);
            self.tree.apply_batch(batch).map_err(sled_err)?;
        }
        let placeholder = MessageRecord {
            schema: RECORD_SCHEMA,
            id,
            location: Location::Dead,
            received_at: id.timestamp_ms(),
            size: 0,
            envelope: mta_types::Envelope::new(None, "", "", ""),
            recipients: Vec::new(),
            content: mta_types::ContentRef {
                segment: String::new(),
                offset: 0,
                len: 0,
            },
            fields: None,
            trace: Default::default(),
            not_before: 0,
            note: Some(format!(
                "record unreadable in the queue store: {reason} (raw bytes kept under key x{id})"
            )),
        };
        self.apply(&[Change::Put(placeholder)])?;
        Ok(())
    }

    /// Applies the changes as one atomic batch (not yet durable: see `flush`), with the
    /// indexes, counts and statistics counters they cause in the same batch.
    /// Returns the ids whose records changed.
    pub fn apply(&self, changes: &[Change]) -> Result<Vec<QueueId>, StoreError> {
        self.apply_inner(changes.to_vec(), false)
    }

    /// `apply` for a caller that gives its changes away (the committer): no copy.
    pub fn apply_owned(&self, changes: Vec<Change>) -> Result<Vec<QueueId>, StoreError> {
        self.apply_inner(changes, false)
    }

    fn apply_inner(&self, changes: Vec<Change>, fresh: bool) -> Result<Vec<QueueId>, StoreError> {
        let mut writer = self.writer.lock().expect("store writer");
        let writer = &mut *writer;
        let mut batch = sled::Batch::default();
        let mut touched = Vec::with_capacity(changes.len());
        let mut deltas = Deltas::default();
        let mut index = IndexDeltas::default();
        // Within one batch a later change to the same id sees the earlier one's record.
        let mut staged: HashMap<QueueId, Option<MessageRecord>> = Default::default();
        let tracking = self.tracking_days() > 0 && !fresh;
        let now = mta_types::message::now_ms();
        let mut finished = Vec::new();
        for change in changes {
            let (id, record) = match change {
                Change::Put(r) => (r.id, Some(r)),
                Change::Remove(id) => (id, None),
                Change::AddCounters(counters) => {
                    counters.iter().for_each(|(n, v)| deltas.add(n, *v));
                    continue;
                }
            };
            let old = match staged.remove(&id) {
                Some(old) => old,
                None if fresh => None,
                None => match self.get(id) {
                    Ok(r) => r,
                    // An unreadable old value: replaced (or removed) all the same.
                    Err(e) => {
                        tracing::warn!("{e}; overwritten");
                        None
                    }
                },
            };
            if let Some(ix) = old.as_ref().and_then(index_of) {
                remove_index(&mut batch, id, &ix);
                index.add(&ix, -1, None);
            }
            let mut record = record;
            if let Some(r) = &mut record {
                if !fresh {
                    self.hold_policy(old.as_ref(), r);
                    deltas.record_change(old.as_ref(), r);
                }
            }
            if tracking {
                finished.extend(crate::tracking::finished(
                    old.as_ref(),
                    record.as_ref(),
                    now,
                ));
            }
            match record.filter(|r| r.location != Location::Done) {
                Some(mut r) => {
                    r.schema = RECORD_SCHEMA;
                    let ix = index_of(&r).expect("a location other than Done is indexed");
                    insert_index(&mut batch, id, &ix);
                    index.add(&ix, 1, r.note.as_ref());
                    index.mark(&r.content);
                    batch.insert(&keys::record(id)[..], record_codec::encode(&r));
                    staged.insert(id, Some(r));
                }
                None => {
                    batch.remove(&keys::record(id)[..]);
                    staged.insert(id, None);
                }
            }
            touched.push(id);
        }
        // Only the holder of the writer lock applies batches: read-add-write is safe. The
        // new values go to the cache only once the batch is applied.
        let (numbers, summaries) = self.stage_counts(writer, &mut batch, &deltas, index)?;
        if let Err(e) = self.tree.apply_batch(batch) {
            // What sled holds now is not known for sure: read it again next time.
            *writer = WriterCache::default();
            return Err(sled_err(e));
        }
        // After the batch: a history is never logged for a removal that did not happen.
        // Tracking never fails a commit.
        if let Err(e) = self.tracklog.append(&finished, now) {
            tracing::warn!(
                "message tracking: {} histories not logged: {e}",
                finished.len()
            );
        }
        writer.numbers.extend(numbers);
        summaries
            .into_iter()
            .for_each(|(k, v)| writer.set_summary(&k, v));
        if !deltas.1.is_empty() {
            let mut recent = self.recent.lock().expect("recent outcomes");
            for o in deltas.1 {
                if recent.len() == crate::stats::RECENT_OUTCOMES {
                    recent.pop_front();
                }
                recent.push_back(o);
            }
        }
        Ok(touched)
    }

    /// Adds the batch's counter, location, destination and segment-reference changes to
    /// `batch`; returns the new values, for the writer's cache once the batch is applied.
    fn stage_counts(
        &self,
        writer: &mut WriterCache,
        batch: &mut sled::Batch,
        deltas: &Deltas,
        index: IndexDeltas,
    ) -> Result<StagedCounts, StoreError> {
        let mut numbers: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut summaries: Vec<(Vec<u8>, DestSummary)> = Vec::new();
        for (name, by) in &deltas.0 {
            let key = keys::counter(name);
            let value = writer.number(&self.tree, &key)?.saturating_add(*by);
            batch.insert(&key[..], &value.to_be_bytes()[..]);
            numbers.push((key, value));
        }
        for (loc, by) in index.locations {
            if by != 0 {
                let key = keys::loc_count(loc).to_vec();
                let value = writer.number(&self.tree, &key)?.saturating_add_signed(by);
                batch.insert(&key[..], &value.to_be_bytes()[..]);
                numbers.push((key, value));
            }
        }
        for (key, (by, note)) in index.destinations {
            let mut summary = writer.summary(&self.tree, &key)?;
            summary.messages = summary.messages.saturating_add_signed(by);
            if let Some(n) = note {
                summary.last_error = n;
            }
            if summary.messages == 0 {
                batch.remove(&key[..]);
            } else {
                let value = postcard::to_allocvec(&summary).expect("encode a summary");
                batch.insert(&key[..], value);
            }
            summaries.push((key, summary));
        }
        for (segment, end) in index.marks {
            self.stage_mark(writer, batch, &mut numbers, &segment, end)?;
        }
        for (segment, by) in index.segments {
            if by != 0 {
                let key = keys::segment_refs(&segment);
                let value = writer.number(&self.tree, &key)?.saturating_add_signed(by);
                if value == 0 {
                    batch.remove(&key[..]);
                    writer.numbers.remove(&key);
                } else {
                    batch.insert(&key[..], &value.to_be_bytes()[..]);
                    numbers.push((key, value));
                }
            }
        }
        Ok((numbers, summaries))
    }

    /// Sets `hold_undeliverable`: from now on, messages finished with a permanent
    /// failure are held instead of reported.
    pub fn set_hold_undeliverable(&self, on: bool) {
        self.hold_undeliverable.store(on, Ordering::Relaxed);
    }

    pub fn hold_undeliverable(&self) -> bool {
        self.hold_undeliverable.load(Ordering::Relaxed)
    }

    /// `hold_undeliverable` is applied here, where every task's commit passes, rather
    /// than in each task that can finish a message (router, local delivery, osesctl,
    /// omsgcnv): one place, and the setting changes at once without being pushed to the
    /// tasks. Only a task's move of a queued message into the Reports queue is held; an
    /// operator's `bounce` (from Held) goes through.
    fn hold_policy(&self, old: Option<&MessageRecord>, new: &mut MessageRecord) {
        let from_task = matches!(
            old.map(|o| o.location),
            Some(Location::Queue(q)) if q != QueueName::Reports
        );
        if from_task && self.hold_undeliverable() && new.hold_if_undeliverable() {
            tracing::info!("qid={} {}", new.id, new.note.as_deref().unwrap_or_default());
        }
    }

    /// Sets `tracking_days` (0: no history is written; what is kept is pruned).
    pub fn set_tracking_days(&self, days: u32) {
        self.tracking_days.store(days, Ordering::Relaxed);
    }

    pub fn tracking_days(&self) -> u32 {
        self.tracking_days.load(Ordering::Relaxed)
    }

    /// One prune pass of message tracking: deletes the log's segments older than
    /// `tracking_days`, and at most `tracking::PRUNE_CHUNK` keys left by the sled-kept
    /// tracking of earlier versions; returns how many of those (call again while it is the
    /// whole chunk).
    pub fn prune_history(&self, now_ms: u64) -> Result<usize, StoreError> {
        let keep_ms = u64::from(self.tracking_days()) * 86_400_000;
        let segments = self.tracklog.prune(now_ms.saturating_sub(keep_ms))?;
        if segments > 0 {
            tracing::info!("message tracking: {segments} log segments past tracking_days deleted");
        }
        let _writer = self.writer.lock().expect("store writer");
        crate::tracking::prune_legacy(&self.tree).map_err(sled_err)
    }

    /// A message's history (message tracking), queued or not.
    pub fn history(
        &self,
        id: QueueId,
    ) -> Result<Option<mta_types::tracking::TrackEntry>, StoreError> {
        crate::tracking::get(&self.tree, &self.tracklog, id)
    }

    /// One page of `track` (see `tracking::query`).
    pub fn track(
        &self,
        q: &crate::tracking::Query,
        rows: usize,
    ) -> Result<(Vec<mta_types::tracking::TrackEntry>, Option<TrackCursor>), StoreError> {
        crate::tracking::query(&self.tree, &self.tracklog, q, rows)
    }

    fn u64_at(&self, key: &[u8]) -> Result<u64, StoreError> {
        Ok(self
            .tree
            .get(key)
            .map_err(sled_err)?
            .map(|v| keys::u64_value(&v))
            .unwrap_or(0))
    }

    /// The most recent recipient outcomes, newest first.
    pub fn recent_outcomes(&self) -> Vec<crate::stats::RecentOutcome> {
        let recent = self.recent.lock().expect("recent outcomes");
        recent.iter().rev().cloned().collect()
    }

    /// One statistics counter (0 if never counted).
    pub fn counter(&self, name: &str) -> Result<u64, StoreError> {
        self.u64_at(&keys::counter(name))
    }

    /// Every statistics counter stored, by name.
    pub fn counters(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut out = BTreeMap::new();
        for kv in self.tree.scan_prefix([keys::COUNTER]) {
            let (k, v) = kv.map_err(sled_err)?;
            out.insert(
                String::from_utf8_lossy(&k[1..]).into_owned(),
                keys::u64_value(&v),
            );
        }
        Ok(out)
    }

    /// Makes everything applied so far durable: sled's flush, then the real syncs
    /// (`durability.rs`). One call covers any number of batches (group commit). Blocks:
    /// the store's committer thread calls it.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.flush_marked(false)
    }

    /// `flush`, and the mark rewritten whatever its age (at close).
    pub fn flush_at_close(&self) -> Result<(), StoreError> {
        self.flush_marked(true)
    }

    fn flush_marked(&self, close: bool) -> Result<(), StoreError> {
        let seq = self.flush_seq.load(Ordering::Relaxed) + 1;
        self.tree
            .insert(keys::FLUSH_SEQ_KEY, &seq.to_be_bytes()[..])
            .map_err(sled_err)?;
        self.db.flush().map_err(sled_err)?;
        let mut files = self.files.lock().expect("store files");
        files.sync()?;
        // History, not mail: a failed sync of the tracking log never fails a commit.
        if let Err(e) = self.tracklog.sync(close) {
            tracing::warn!("message tracking: the log's sync failed: {e}");
        }
        self.flush_seq.store(seq, Ordering::Relaxed);
        files.mark(seq, close)?;
        Ok(())
    }

    /// At open: a database whose last flush number is below its mark lost writes that
    /// were durable (sled dropped its log after a damaged entry, `durability.rs`). Said in
    /// the log and in the `DAMAGED` report, which stays (and holds spool compaction off, so
    /// the content of messages whose records were lost is kept) until the operator
    /// removes it. A report left from an earlier start counts as well.
    fn check_flush_mark(
        &mut self,
        dir: &Path,
        log_stop: Option<crate::sled_log::LogStop>,
    ) -> Result<(), StoreError> {
        let seq = self
            .tree
            .get(keys::FLUSH_SEQ_KEY)
            .map_err(sled_err)?
            .map(|v| keys::u64_value(&v))
            .unwrap_or(0);
        self.flush_seq.store(seq, Ordering::Relaxed);
        let mut files = self.files.lock().expect("store files");
        let mark = files.mark_at_open;
        let report_path = dir.join(crate::durability::DAMAGE_REPORT);
        if seq < mark {
            let db = dir.join("db");
            let at = match &log_stop {
                Some(stop) => format!("{stop}"),
                None => "where, the log's walk could not tell".to_string(),
            };
            let text = format!(
                "the queue store {} is damaged: it opened at flush {seq}, but flush {mark} had been \
                 made durable (mark file {}). sled stops reading its log at the first damaged \
                 entry and drops every later one ({at}), so records written after it are lost: \
                 messages accepted or moved since may be missing from the queue. Their content \
                 stays in the spool: compaction is held off while this report ({}) exists; \
                 remove it once the spool has been looked at.",
                db.display(),
                dir.join(crate::durability::MARK_FILE).display(),
                report_path.display(),
            );
            tracing::error!("{text}");
            std::fs::write(&report_path, format!("{text}\n"))?;
            crate::durability::sync_dir(dir)?;
            files.reset_mark(seq)?;
            self.damage = Some(text);
            self.damage_found_now = true;
        } else if let Ok(text) = std::fs::read_to_string(&report_path) {
            tracing::error!(
                "the queue store was found damaged at an earlier start ({}): spool compaction stays off until it is removed",
                report_path.display()
            );
            self.damage = Some(text.trim().to_string());
        }
        Ok(())
    }

    /// The damage found at open (`check_flush_mark`), while its report exists.
    pub fn damage(&self) -> Option<&str> {
        self.damage.as_deref()
    }

    /// Whether this open found the damage (rather than an earlier one's report).
    pub fn damage_found_now(&self) -> bool {
        self.damage_found_now
    }

    /// fsync/fdatasync calls made on the store's files since it opened.
    pub fn syncs(&self) -> u64 {
        self.files.lock().expect("store files").syncs
    }

    /// Due-index keys of `loc` due by `until`, oldest due first: (key, id). A poll reads
    /// only these, never the records waiting for a later time.
    pub fn due(
        &self,
        loc: Location,
        until: u64,
    ) -> impl Iterator<Item = Result<(sled::IVec, QueueId), StoreError>> + '_ {
        let (start, end) = keys::location_byte(loc)
            .map(|b| keys::due_range(b, until))
            .unwrap_or_default();
        self.tree.range(start..end).keys().map(|k| {
            let k = k.map_err(sled_err)?;
            let (_, id) = keys::id_of_due_key(&k).ok_or_else(|| StoreError::Corrupt {
                id: format!("{k:?}"),
                reason: "malformed due-index key".into(),
            })?;
            Ok((k, id))
        })
    }

    /// The next due time in `loc` (None: empty).
    pub fn next_due(&self, loc: Location) -> Result<Option<u64>, StoreError> {
        let Some(b) = keys::location_byte(loc) else {
            return Ok(None);
        };
        Ok(self
            .tree
            .scan_prefix([keys::DUE, b])
            .keys()
            .next()
            .transpose()
            .map_err(sled_err)?
            .and_then(|k| keys::id_of_due_key(&k))
            .map(|(due, _)| due))
    }

    /// Messages of (`loc`, `domain`) with a pending recipient there, from its summary.
    pub fn destination_count(&self, loc: Location, domain: &str) -> Result<u64, StoreError> {
        let Some(b) = keys::location_byte(loc) else {
            return Ok(0);
        };
        Ok(self
            .tree
            .get(keys::dest_summary(b, domain))
            .map_err(sled_err)?
            .and_then(|v| postcard::from_bytes::<DestSummary>(&v).ok())
            .map(|s| s.messages)
            .unwrap_or(0))
    }

    /// Index keys of `loc` after `after`: the destination index of `domain`, or the due
    /// index (every message) when None; at most `limit`, with the ids.
    pub fn index_after(
        &self,
        loc: Location,
        domain: Option<&str>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, QueueId)>, StoreError> {
        let Some(b) = keys::location_byte(loc) else {
            return Ok(Vec::new());
        };
        let prefix = match domain {
            Some(d) => keys::dest_prefix(b, d),
            None => vec![keys::DUE, b],
        };
        let mut end = prefix.clone();
        *end.last_mut().expect("non-empty prefix") += 1;
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(a.to_vec()),
            None => std::ops::Bound::Included(prefix),
        };
        let mut out = Vec::new();
        for k in self
            .tree
            .range((start, std::ops::Bound::Excluded(end)))
            .keys()
            .take(limit)
        {
            let k = k.map_err(sled_err)?;
            let id = if domain.is_some() {
                keys::id_of_dest_key(&k)
            } else {
                keys::id_of_due_key(&k)
            };
            if let Some((_, id)) = id {
                out.push((k.to_vec(), id));
            }
        }
        Ok(out)
    }

    /// Messages in a location, from the count kept with every change.
    pub fn count_in(&self, loc: Location) -> u64 {
        keys::location_byte(loc)
            .map(|b| self.u64_at(&keys::loc_count(b)).unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn counts(&self) -> QueueCounts {
        let mut rows = Vec::new();
        for q in QueueName::ALL {
            let loc = Location::Queue(q);
            rows.push((
                loc.label().to_string(),
                q.as_str().to_string(),
                self.count_in(loc),
            ));
        }
        for loc in [
            Location::Held {
                from: QueueName::MailBox,
            },
            Location::Dead,
            Location::ConversionError,
        ] {
            rows.push((loc.label().to_string(), String::new(), self.count_in(loc)));
        }
        QueueCounts { rows }
    }

    /// Records parked in `loc` (Held, Dead, Conversion Error: indexed in arrival order),
    /// after `after` if given, at most `limit`: one page of a listing.
    pub fn parked_page(
        &self,
        loc: Location,
        after: Option<QueueId>,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let Some(b) = keys::location_byte(loc) else {
            return Ok(Vec::new());
        };
        let start = match after {
            Some(id) => std::ops::Bound::Excluded(keys::due(b, 0, id).to_vec()),
            None => std::ops::Bound::Included(vec![keys::DUE, b]),
        };
        let end = std::ops::Bound::Excluded(vec![keys::DUE, b + 1]);
        let mut out = Vec::new();
        for k in self.tree.range((start, end)).keys().take(limit) {
            let k = k.map_err(sled_err)?;
            if let Some((_, id)) = keys::id_of_due_key(&k) {
                match self.get(id) {
                    Ok(Some(r)) => out.push(r),
                    Ok(None) => {}
                    Err(e) => tracing::warn!("{e}"),
                }
            }
        }
        Ok(out)
    }

    /// One page of destination rows (location, domain), after `after`, at most `limit`.
    pub fn destinations(
        &self,
        after: Option<(Location, String)>,
        limit: usize,
    ) -> Result<Vec<DestinationRow>, StoreError> {
        let start = match &after {
            Some((loc, domain)) => {
                let mut k = keys::dest_summary(keys::location_byte(*loc).unwrap_or(0), domain);
                k.push(0); // just after it
                k
            }
            None => vec![keys::DEST_SUMMARY],
        };
        let mut out = Vec::new();
        for kv in self
            .tree
            .range(start..vec![keys::DEST_SUMMARY + 1])
            .take(limit)
        {
            let (k, v) = kv.map_err(sled_err)?;
            let Some((loc_byte, domain)) = keys::parse_dest_summary(&k) else {
                continue;
            };
            let Some(location) = keys::location_of_byte(loc_byte) else {
                continue;
            };
            let summary: DestSummary = postcard::from_bytes(&v).unwrap_or_default();
            let next_due = self
                .tree
                .scan_prefix(keys::dest_prefix(loc_byte, &domain))
                .keys()
                .next()
                .transpose()
                .map_err(sled_err)?
                .and_then(|k| keys::id_of_dest_key(&k))
                .map(|(due, _)| due)
                .unwrap_or(0);
            out.push(DestinationRow {
                location,
                domain,
                messages: summary.messages,
                next_due,
                last_error: summary.last_error,
            });
        }
        Ok(out)
    }

    /// Whether this store keeps spool marks (every start since the first one that did).
    pub fn spool_marks_kept(&self) -> Result<bool, StoreError> {
        Ok(self
            .tree
            .get(keys::SPOOL_MARKS_KEPT)
            .map_err(sled_err)?
            .is_some())
    }

    /// Where the frames of `segment` that no committed record has pointed at begin (0: none
    /// has).
    pub fn spool_mark(&self, segment: &str) -> Result<u64, StoreError> {
        let mut writer = self.writer.lock().expect("store writer");
        writer.number(&self.tree, &keys::spool_mark(segment))
    }

    /// Adds to `batch` the move of `segment`'s spool mark to `end`, if that is forward.
    /// Marks only move forward: a record of an older frame put again (a retry, a release)
    /// says nothing about the frames after it.
    fn stage_mark(
        &self,
        writer: &mut WriterCache,
        batch: &mut sled::Batch,
        numbers: &mut Vec<(Vec<u8>, u64)>,
        segment: &str,
        end: u64,
    ) -> Result<(), StoreError> {
        let key = keys::spool_mark(segment);
        if end > writer.number(&self.tree, &key)? {
            batch.insert(&key[..], &end.to_be_bytes()[..]);
            numbers.push((key, end));
        }
        Ok(())
    }

    /// Moves the marks of these segments forward to the given ends (never back) and notes
    /// that the store keeps marks from now on. Durable with the next flush.
    pub fn set_spool_marks(&self, marks: &[(String, u64)]) -> Result<(), StoreError> {
        let mut writer = self.writer.lock().expect("store writer");
        let mut batch = sled::Batch::default();
        let mut numbers = Vec::new();
        for (segment, end) in marks {
            self.stage_mark(&mut writer, &mut batch, &mut numbers, segment, *end)?;
        }
        batch.insert(keys::SPOOL_MARKS_KEPT, &[][..]);
        self.tree.apply_batch(batch).map_err(sled_err)?;
        writer.numbers.extend(numbers);
        Ok(())
    }

    /// Drops the marks of segments compaction deleted.
    pub fn forget_spool_marks(&self, segments: &[String]) -> Result<(), StoreError> {
        let mut writer = self.writer.lock().expect("store writer");
        let mut batch = sled::Batch::default();
        for segment in segments {
            let key = keys::spool_mark(segment);
            batch.remove(&key[..]);
            writer.numbers.remove(&key);
        }
        self.tree.apply_batch(batch).map_err(sled_err)?;
        Ok(())
    }

    /// Spool segments some record still points into (for compaction): read from the
    /// reference counts, not from the records.
    pub fn referenced_segments(&self) -> Result<HashSet<String>, StoreError> {
        let mut set = HashSet::new();
        for k in self.tree.scan_prefix([keys::SEGMENT_REFS]).keys() {
            let k = k.map_err(sled_err)?;
            set.insert(String::from_utf8_lossy(&k[1..]).into_owned());
        }
        Ok(set)
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
impl Engine {
    pub fn tree_for_test(&self) -> &sled::Tree {
        &self.tree
    }

    /// Overwrites a record's value with garbage (a damaged disk block).
    pub fn corrupt_for_test(&self, id: QueueId) {
        self.tree
            .insert(keys::record(id), &b"R\x01\xff\xff\xff\xff\xff\xff"[..])
            .unwrap();
    }

    /// Drops the layout marker and every derived key, as a pre-layout store has them.
    pub fn forget_layout_for_test(&self) {
        self.tree.remove(keys::LAYOUT_KEY).unwrap();
        for prefix in keys::DERIVED {
            for k in self.tree.scan_prefix([*prefix]).keys() {
                self.tree.remove(k.unwrap()).unwrap();
            }
        }
        self.db.flush().unwrap();
    }
}
