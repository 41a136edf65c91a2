//! The tracking log: the final history of every message that left the store, appended to
//! segment files in `<store>/tracking/`, one segment an hour (or every `MAX_SEGMENT`
//! bytes), named by the Unix ms of their first write. Pruning deletes whole segments.
//!
//! Why not in sled: sled 0.34 keeps a page per 8–16 keys with a large in-memory cost each,
//! which its cache limit does not bound; a history and three index keys per message took
//! the supervisor from 213 to 827 MiB at 200,000 deferred messages, and to 6 GiB at a
//! million (docs/BENCHMARKS.md). Here the cost in memory is one open file, whatever the
//! volume; a query reads the segments it needs (`tracking.rs`).
//!
//! Frame: payload length (u32 LE), CRC-32 of the payload (u32 LE), payload
//! (`tracking::encode`). A reader stops at the first frame that is cut short or fails its
//! check (a write torn by a crash); the writer never appends to a segment it did not
//! create, so a torn tail stays the last thing in its segment.
//!
//! Durability: history, not mail. Appended after the batch that removed the record, synced
//! with the store's flushes at most once a second (and at close): a power loss can lose the
//! last second of histories, never a message.

use mta_types::tracking::TrackEntry;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A new segment at least this often, so pruning by age frees space in steps of an hour.
const ROTATE_MS: u64 = 3_600_000;
/// A new segment past this size, so one segment stays quick to read through.
const MAX_SEGMENT: u64 = 256 << 20;
/// Most often the log is synced by the store's flushes.
const SYNC_EVERY: Duration = Duration::from_secs(1);
const FRAME_HEADER: usize = 8;
/// Larger than any entry (`TrackEntry` cuts its texts and lists): a length beyond it is
/// damage, not an entry to allocate for.
const MAX_FRAME: usize = 1 << 20;
const SUFFIX: &str = ".trk";

pub struct TrackLog {
    dir: PathBuf,
    writer: Mutex<Writer>,
}

#[derive(Default)]
struct Writer {
    current: Option<Segment>,
    dirty: bool,
    last_sync: Option<Instant>,
}

struct Segment {
    start: u64,
    file: File,
    len: u64,
}

/// One entry read back, with the offset just after it (where a page would resume).
pub struct LogEntry {
    pub entry: TrackEntry,
    pub next: u64,
}

impl TrackLog {
    pub fn open(dir: &Path) -> std::io::Result<TrackLog> {
        std::fs::create_dir_all(dir)?;
        Ok(TrackLog {
            dir: dir.to_path_buf(),
            writer: Mutex::new(Writer::default()),
        })
    }

    fn path(&self, start: u64) -> PathBuf {
        self.dir.join(format!("{start:013}{SUFFIX}"))
    }

    /// Appends the entries (one write). Called with the store's writer lock held, so
    /// entries are in the order their batches were applied.
    pub fn append(&self, entries: &[TrackEntry], now_ms: u64) -> std::io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut frames = Vec::with_capacity(entries.len() * 256);
        for e in entries {
            let payload = crate::tracking::encode(e);
            frames.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            frames.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            frames.extend_from_slice(&payload);
        }
        let mut w = self.writer.lock().expect("tracking log writer");
        let rotate = match &w.current {
            None => true,
            Some(s) => now_ms / ROTATE_MS != s.start / ROTATE_MS || s.len >= MAX_SEGMENT,
        };
        if rotate {
            self.rotate(&mut w, now_ms)?;
        }
        let seg = w.current.as_mut().expect("a segment after rotate");
        seg.file.write_all(&frames)?;
        seg.len += frames.len() as u64;
        w.dirty = true;
        Ok(())
    }

    /// Starts a new segment: the old one is synced and closed (a reader sees its length
    /// from the file), the new name is made durable with its directory.
    fn rotate(&self, w: &mut Writer, now_ms: u64) -> std::io::Result<()> {
        if let Some(old) = w.current.take() {
            if w.dirty {
                old.file.sync_data()?;
                w.dirty = false;
            }
        }
        // Names must increase: a clock step back, or a restart within the same ms, must
        // not reuse (or sort before) an existing segment.
        let last = self.segments()?.last().copied().unwrap_or(0);
        let start = now_ms.max(last + 1);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(self.path(start))?;
        crate::durability::sync_dir(&self.dir)?;
        w.current = Some(Segment {
            start,
            file,
            len: 0,
        });
        Ok(())
    }

    /// Syncs what was appended, if the last sync is `SYNC_EVERY` old (or `now`).
    pub fn sync(&self, now: bool) -> std::io::Result<()> {
        let mut w = self.writer.lock().expect("tracking log writer");
        let due = now || w.last_sync.is_none_or(|t| t.elapsed() >= SYNC_EVERY);
        if w.dirty && due {
            if let Some(s) = &w.current {
                s.file.sync_data()?;
            }
            w.dirty = false;
            w.last_sync = Some(Instant::now());
        }
        Ok(())
    }

    /// The segments' starts, oldest first.
    pub fn segments(&self) -> std::io::Result<Vec<u64>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if let Some(start) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| n.parse().ok())
            {
                out.push(start);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// How much of a segment a reader may read: all of a closed one; of the open one,
    /// what was written (a reader never sees half an append).
    fn readable_len(&self, start: u64) -> std::io::Result<u64> {
        let w = self.writer.lock().expect("tracking log writer");
        match &w.current {
            Some(s) if s.start == start => Ok(s.len),
            _ => Ok(std::fs::metadata(self.path(start))?.len()),
        }
    }

    /// Reads entries of segment `start` from `offset`, calling `each` until it returns
    /// false or the segment ends. A segment pruned meanwhile reads as empty.
    pub fn read(
        &self,
        start: u64,
        offset: u64,
        mut each: impl FnMut(LogEntry) -> bool,
    ) -> std::io::Result<()> {
        let end = match self.readable_len(start) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut file = match File::open(self.path(start)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(offset))?;
        let mut r = BufReader::with_capacity(128 * 1024, file);
        let mut at = offset;
        let mut payload = Vec::new();
        while at + FRAME_HEADER as u64 <= end {
            let mut header = [0u8; FRAME_HEADER];
            r.read_exact(&mut header)?;
            let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
            let next = at + (FRAME_HEADER + len) as u64;
            if len > MAX_FRAME || next > end {
                self.torn(start, at);
                return Ok(());
            }
            payload.resize(len, 0);
            r.read_exact(&mut payload)?;
            let entry = (crc32fast::hash(&payload) == crc)
                .then(|| crate::tracking::decode(&payload))
                .flatten();
            let Some(entry) = entry else {
                self.torn(start, at);
                return Ok(());
            };
            at = next;
            if !each(LogEntry { entry, next }) {
                return Ok(());
            }
        }
        Ok(())
    }

    fn torn(&self, start: u64, at: u64) {
        tracing::warn!(
            "tracking log {}: the entry at offset {at} is cut short or damaged (a crash while it was written?); the segment is read up to it",
            self.path(start).display()
        );
    }

    /// Deletes the segments whose every entry was written before `cutoff_ms` (the next
    /// segment started before it); never the one being written. Returns how many.
    pub fn prune(&self, cutoff_ms: u64) -> std::io::Result<usize> {
        let segments = self.segments()?;
        let current = self
            .writer
            .lock()
            .expect("tracking log writer")
            .current
            .as_ref()
            .map(|s| s.start);
        let mut n = 0;
        for pair in segments.windows(2) {
            let (start, next) = (pair[0], pair[1]);
            if next > cutoff_ms {
                break;
            }
            if Some(start) != current {
                std::fs::remove_file(self.path(start))?;
                n += 1;
            }
        }
        if n > 0 {
            crate::durability::sync_dir(&self.dir)?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mta_types::QueueId;

    fn entry(id: u64) -> TrackEntry {
        TrackEntry {
            id: QueueId::from_u64(id),
            received_at: 1,
            from: "a@x.test".into(),
            size: 1,
            message_id: None,
            subject: None,
            client_ip: "127.0.0.1".into(),
            state: "Done".into(),
            note: None,
            recipients: Vec::new(),
            more_recipients: 0,
            updated_at: 1,
            auth: None,
        }
    }

    fn ids(log: &TrackLog, start: u64) -> Vec<u64> {
        let mut out = Vec::new();
        log.read(start, 0, |r| {
            out.push(r.entry.id.as_u64());
            true
        })
        .unwrap();
        out
    }

    /// A segment an hour; pruning deletes only segments whose successor started before
    /// the cutoff; a restart writes a new segment after the old ones.
    #[test]
    fn segments_rotate_hourly_and_are_pruned_whole() {
        let dir = tempfile::tempdir().unwrap();
        let log = TrackLog::open(dir.path()).unwrap();
        let t0 = 1_000 * ROTATE_MS;
        log.append(&[entry(1), entry(2)], t0).unwrap();
        log.append(&[entry(3)], t0 + 10).unwrap();
        log.append(&[entry(4)], t0 + ROTATE_MS).unwrap();
        log.sync(true).unwrap();
        let segs = log.segments().unwrap();
        assert_eq!(segs, vec![t0, t0 + ROTATE_MS]);
        assert_eq!(ids(&log, t0), vec![1, 2, 3]);
        assert_eq!(ids(&log, t0 + ROTATE_MS), vec![4]);

        assert_eq!(log.prune(t0 + ROTATE_MS - 1).unwrap(), 0);
        assert_eq!(log.prune(t0 + ROTATE_MS).unwrap(), 1);
        assert_eq!(log.segments().unwrap(), vec![t0 + ROTATE_MS]);
        // The segment being written is never pruned.
        assert_eq!(log.prune(u64::MAX).unwrap(), 0);

        drop(log);
        let log = TrackLog::open(dir.path()).unwrap();
        log.append(&[entry(5)], t0 + ROTATE_MS).unwrap();
        assert_eq!(
            log.segments().unwrap(),
            vec![t0 + ROTATE_MS, t0 + ROTATE_MS + 1]
        );
        assert_eq!(ids(&log, t0 + ROTATE_MS + 1), vec![5]);
    }

    /// A write torn by a crash (half a frame, or a frame that fails its check) ends its
    /// segment's reading; what came before reads, and a page can resume at an offset.
    #[test]
    fn a_torn_tail_is_read_up_to_and_offsets_resume() {
        let dir = tempfile::tempdir().unwrap();
        let log = TrackLog::open(dir.path()).unwrap();
        log.append(&[entry(1), entry(2), entry(3)], 5).unwrap();
        drop(log);
        let path = dir.path().join(format!("{:013}{SUFFIX}", 5));
        let whole = std::fs::read(&path).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&whole[..FRAME_HEADER + 3]).unwrap();
        drop(f);
        let log = TrackLog::open(dir.path()).unwrap();
        assert_eq!(ids(&log, 5), vec![1, 2, 3]);

        let mut second = 0;
        log.read(5, 0, |r| {
            second = r.next;
            r.entry.id.as_u64() < 1
        })
        .unwrap();
        let mut rest = Vec::new();
        log.read(5, second, |r| {
            rest.push(r.entry.id.as_u64());
            true
        })
        .unwrap();
        assert_eq!(rest, vec![2, 3]);

        // A flipped byte inside the second frame: only the first reads.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[second as usize + FRAME_HEADER + 2] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(ids(&log, 5), vec![1]);
    }
}
