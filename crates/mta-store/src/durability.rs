//! Real durability under sled.
//!
//! sled 0.34.7's flush on Linux ends in `sync_file_range`, which writes no file metadata
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
}

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
        let mut files = StoreFiles {
            dir: dir.to_path_buf(),
            db,
            blobs_dir,
            synced_blobs: HashSet::new(),
            blobs_stamp: None,
            dir_stamp: (0, 0, 0, 0),
            syncs: 0,
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
