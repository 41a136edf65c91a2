//! The sled engine: key layout, atomic batches, scans. Synchronous; `service` wraps it.

use crate::stats::Deltas;
use mta_ipc::store::{Change, QueueCounts};
use mta_types::message::RECORD_SCHEMA;
use mta_types::{Location, MessageRecord, QueueId, QueueName};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the queue store {path} is in use by another process (sled holds it locked): is another smtpmta running on this data_dir?")]
    Locked { path: PathBuf },
    #[error("cannot open the queue store {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("queue store i/o: {0}")]
    Sled(#[from] sled::Error),
    #[error("record {id} cannot be read: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("record {id} has schema {found}, this build reads schema {RECORD_SCHEMA}")]
    Schema { id: QueueId, found: u16 },
}

const RECORD: u8 = b'm';
const INDEX: u8 = b'l';
const COUNTER: u8 = b's';

fn counter_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    k.push(COUNTER);
    k.extend_from_slice(name.as_bytes());
    k
}

fn record_key(id: QueueId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = RECORD;
    k[1..].copy_from_slice(&id.to_bytes());
    k
}

/// One byte per location, so each queue or state is a contiguous key range.
fn location_byte(loc: Location) -> Option<u8> {
    Some(match loc {
        Location::Queue(QueueName::InboundWork) => b'i',
        Location::Queue(QueueName::MailBox) => b'm',
        Location::Queue(QueueName::SmtpBox) => b's',
        Location::Queue(QueueName::OutboundWork) => b'o',
        Location::Queue(QueueName::Reports) => b'r',
        Location::Held { .. } => b'H',
        Location::Dead => b'D',
        Location::ConversionError => b'E',
        Location::Done => return None,
    })
}

fn index_key(loc: Location, id: QueueId) -> Option<[u8; 10]> {
    let b = location_byte(loc)?;
    let mut k = [0u8; 10];
    k[0] = INDEX;
    k[1] = b;
    k[2..].copy_from_slice(&id.to_bytes());
    Some(k)
}

pub struct Engine {
    db: sled::Db,
    tree: sled::Tree,
}

impl Engine {
    pub fn open(dir: &Path) -> Result<Engine, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
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
                        source: e,
                    }
                }
            })?;
        let tree = db.open_tree("queue")?;
        Ok(Engine { db, tree })
    }

    fn decode(id_hint: &[u8], bytes: &[u8]) -> Result<MessageRecord, StoreError> {
        let rec: MessageRecord =
            mta_ipc::frame::decode(bytes).map_err(|e| StoreError::Corrupt {
                id: format!("{id_hint:?}"),
                reason: e.to_string(),
            })?;
        if rec.schema != RECORD_SCHEMA {
            return Err(StoreError::Schema {
                id: rec.id,
                found: rec.schema,
            });
        }
        Ok(rec)
    }

    pub fn get(&self, id: QueueId) -> Result<Option<MessageRecord>, StoreError> {
        match self.tree.get(record_key(id))? {
            Some(v) => Ok(Some(Self::decode(&id.to_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Applies the changes as one atomic batch (not yet durable: see `flush`), with the
    /// statistics counters they cause (`stats.rs`) in the same batch.
    /// Returns the ids whose records changed.
    pub fn apply(&self, changes: &[Change]) -> Result<Vec<QueueId>, StoreError> {
        let mut batch = sled::Batch::default();
        let mut touched = Vec::with_capacity(changes.len());
        let mut deltas = Deltas::default();
        // Within one batch a later change to the same id sees the earlier one's record.
        let mut staged: HashMap<QueueId, Option<MessageRecord>> = Default::default();
        for change in changes {
            let (id, record) = match change {
                Change::Put(r) => (r.id, Some(r)),
                Change::Remove(id) => (*id, None),
                Change::AddCounters(counters) => {
                    counters.iter().for_each(|(n, v)| deltas.add(n, *v));
                    continue;
                }
            };
            let old = match staged.remove(&id) {
                Some(old) => old,
                None => self.get(id)?,
            };
            let new_loc = record.map(|r| r.location).filter(|l| *l != Location::Done);
            if let Some(old) = &old {
                if Some(old.location) != new_loc {
                    if let Some(k) = index_key(old.location, id) {
                        batch.remove(&k[..]);
                    }
                }
            }
            if let Some(r) = record {
                deltas.record_change(old.as_ref(), r);
            }
            match (new_loc, record) {
                (Some(loc), Some(r)) => {
                    let mut r = r.clone();
                    r.schema = RECORD_SCHEMA;
                    let bytes =
                        mta_ipc::frame::encode_payload(&r).map_err(|e| StoreError::Corrupt {
                            id: id.to_string(),
                            reason: e.to_string(),
                        })?;
                    batch.insert(&record_key(id)[..], bytes);
                    if let Some(k) = index_key(loc, id) {
                        batch.insert(&k[..], &[][..]);
                    }
                    staged.insert(id, Some(r));
                }
                _ => {
                    batch.remove(&record_key(id)[..]);
                    staged.insert(id, None);
                }
            }
            touched.push(id);
        }
        // Only the committer applies batches, one at a time: read-add-write is safe.
        for (name, by) in &deltas.0 {
            let value = self.counter(name)?.saturating_add(*by);
            batch.insert(counter_key(name), &value.to_be_bytes()[..]);
        }
        self.tree.apply_batch(batch)?;
        Ok(touched)
    }

    /// One statistics counter (0 if never counted).
    pub fn counter(&self, name: &str) -> Result<u64, StoreError> {
        Ok(self
            .tree
            .get(counter_key(name))?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// Every statistics counter stored, by name.
    pub fn counters(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut out = BTreeMap::new();
        for kv in self.tree.scan_prefix([COUNTER]) {
            let (k, v) = kv?;
            if let Ok(bytes) = <[u8; 8]>::try_from(&v[..]) {
                out.insert(
                    String::from_utf8_lossy(&k[1..]).into_owned(),
                    u64::from_be_bytes(bytes),
                );
            }
        }
        Ok(out)
    }

    /// Makes everything applied so far durable (one fsync for any number of batches).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Ids in a location, oldest first.
    pub fn ids_in(&self, loc: Location) -> impl Iterator<Item = Result<QueueId, StoreError>> + '_ {
        let prefix = index_key(loc, QueueId::from_u64(0))
            .map(|k| k[..2].to_vec())
            .unwrap_or_default();
        self.tree.scan_prefix(prefix).keys().map(|k| {
            let k = k?;
            let mut b = [0u8; 8];
            b.copy_from_slice(&k[2..10]);
            Ok(QueueId::from_bytes(b))
        })
    }

    pub fn count_in(&self, loc: Location) -> u64 {
        self.ids_in(loc).count() as u64
    }

    /// Every record, oldest first.
    pub fn records(&self) -> impl Iterator<Item = Result<MessageRecord, StoreError>> + '_ {
        self.tree.scan_prefix([RECORD]).map(|kv| {
            let (k, v) = kv?;
            Self::decode(&k, &v)
        })
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

    /// Spool segments some record still points into (for compaction).
    pub fn referenced_segments(&self) -> Result<HashSet<String>, StoreError> {
        let mut set = HashSet::new();
        for r in self.records() {
            set.insert(r?.content.segment);
        }
        Ok(set)
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
