//! Real durability under sled.
//!
//! sled 0.34.7's flush on Linux ended in `sync_file_range` (our copy, `vendor/README.md`,
//! no longer calls it and syncs its log before reusing a segment), which writes no file metadata
//! and flushes no device write cache: after a power loss a flushed record can be gone.
//! So after every sled flush `StoreFiles::sync` makes it real:
//! - `fdatasync` of sled's log file (`db`): data, size, and the device cache flush;
//! - any new blob file (sled writes values over its blob threshold to `blobs/` without
//!   syncing them) and the `blobs/` directory;
//! - sled's own directory when its entries changed (snapshots are renamed into place
//!   without a directory sync).
//!
//! At open, sled's `conf` file and every directory from the store up to `data_dir` are
//! synced once, so a fresh store's names survive too.
//!
//! **Damage detection.** sled reads its log at open up to the first entry whose checksum
//! fails and takes that for the torn end of the last write: a damaged entry in the middle
//! silently drops every later one. So every flush also writes its number into the
//! database (`keys::FLUSH_SEQ_KEY`), and the `flushed` mark file beside it holds the
//! number of a flush known durable, rewritten (8 bytes, fdatasync) at most once a second
//! and at close. A database that opens with a lower number than its mark lost durable
//! writes: `Engine::open` says so, loudly, and leaves a `DAMAGED` report.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub struct StoreFiles {
    dir: PathBuf,
    db: File,
    blobs_dir: PathBuf,
    synced_blobs: HashSet<std::ffi::OsString>,
    /// (mtime, ctime) of `blobs/` when it was last read: unchanged means no new blob, so a
    /// flush costs one `stat` there instead of a directory listing.
    blobs_stamp: Option<(i64, i64, i64, i64)>,
    /// (mtime, ctime) of sled's directory when it was last synced.
    dir_stamp: (i64, i64, i64, i64),
    /// fsync/fdatasync calls made (for the benchmark's per-message figures).
    pub syncs: u64,
    /// The mark file (`flushed`): the number of a flush known durable.
    mark: File,
    /// What the mark said at open.
    pub mark_at_open: u64,
    marked: u64,
    marked_at: std::time::Instant,
}

/// The mark is rewritten at most this often (one fdatasync a second under load).
const MARK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
pub const MARK_FILE: &str = "flushed";
pub const DAMAGE_REPORT: &str = "DAMAGED";

fn stamp(dir: &Path) -> std::io::Result<(i64, i64, i64, i64)> {
    let m = std::fs::metadata(dir)?;
    Ok((m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()))
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl StoreFiles {
    /// Called right after sled opened `dir`. `up_to` is the highest directory whose
    /// entries must be synced (the data directory).
    pub fn open(dir: &Path, up_to: Option<&Path>) -> std::io::Result<StoreFiles> {
        let db = File::open(dir.join("db"))?;
        db.sync_all()?;
        if let Ok(conf) = File::open(dir.join("conf")) {
            conf.sync_all()?;
        }
        let blobs_dir = dir.join("blobs");
        let mark = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(MARK_FILE))?;
        let mut bytes = [0u8; 8];
        let mark_at_open = match std::os::unix::fs::FileExt::read_exact_at(&mark, &mut bytes, 0) {
            Ok(()) => u64::from_be_bytes(bytes),
            Err(_) => 0, // new (or shorter than 8 bytes: never written whole)
        };
        mark.sync_all()?;
        let mut files = StoreFiles {
            dir: dir.to_path_buf(),
            db,
            blobs_dir,
            synced_blobs: HashSet::new(),
            blobs_stamp: None,
            dir_stamp: (0, 0, 0, 0),
            syncs: 0,
            mark,
            mark_at_open,
            marked: mark_at_open,
            marked_at: std::time::Instant::now(),
        };
        files.sync_new_blobs()?;
        // The store's own directory and its parents (a fresh data_dir's names included).
        let mut d = Some(dir);
        while let Some(p) = d {
            sync_dir(p)?;
            if up_to.is_none_or(|top| p == top) {
                break;
            }
            d = p.parent();
        }
        if let Some(parent) = up_to.and_then(Path::parent) {
            let _ = sync_dir(parent);
        }
        files.dir_stamp = stamp(dir)?;
        Ok(files)
    }

    /// Makes everything sled has flushed durable. Call after every `flush`.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.db.sync_data()?;
        self.syncs += 1;
        self.sync_new_blobs()?;
        let now = stamp(&self.dir)?;
        if now != self.dir_stamp {
            sync_dir(&self.dir)?;
            self.syncs += 1;
            self.dir_stamp = now;
        }
        Ok(())
    }

    /// After flush number `seq` is durable: rewrites the mark when a second has passed
    /// since the last (or always, with `now`: at close).
    pub fn mark(&mut self, seq: u64, now: bool) -> std::io::Result<()> {
        if seq <= self.marked || (!now && self.marked_at.elapsed() < MARK_EVERY) {
            return Ok(());
        }
        std::os::unix::fs::FileExt::write_all_at(&self.mark, &seq.to_be_bytes(), 0)?;
        self.mark.sync_data()?;
        self.syncs += 1;
        self.marked = seq;
        self.marked_at = std::time::Instant::now();
        Ok(())
    }

    /// A database found behind its mark starts a new count from where it is.
    pub fn reset_mark(&mut self, seq: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.mark, &seq.to_be_bytes(), 0)?;
        self.mark.sync_data()?;
        self.marked = seq;
        Ok(())
    }

    fn sync_new_blobs(&mut self) -> std::io::Result<()> {
        let now = match stamp(&self.blobs_dir) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if self.blobs_stamp == Some(now) {
            return Ok(());
        }
        self.blobs_stamp = Some(now);
        let entries = match std::fs::read_dir(&self.blobs_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut present = HashSet::new();
        let mut new = false;
        for entry in entries {
            let name = entry?.file_name();
            if !self.synced_blobs.contains(&name) {
                // A blob removed meanwhile (sled's blob GC) needs no sync.
                if let Ok(f) = File::open(self.blobs_dir.join(&name)) {
                    f.sync_all()?;
                    self.syncs += 1;
                }
                new = true;
            }
            present.insert(name);
        }
        if new {
            sync_dir(&self.blobs_dir)?;
            self.syncs += 1;
        }
        self.synced_blobs = present;
        Ok(())
    }
}
