//! mta-spool — message content on disk.
//!
//! Content is appended to segment files (`<data_dir>/spool/<owner>-<pid>-<start>-<n>.seg`),
//! one open segment per writer process. Appends are not synced one by one: the writer
//! syncs once per batch of concurrent messages (group commit), and only then are their
//! records committed in the store and their 250 replies sent. A record points at its
//! content with a `ContentRef` (segment, offset, length). Segments are never rewritten;
//! the supervisor's compaction deletes a segment once no record points into it.
//!
//! This crate does no store work and links no database: tasks write and read content
//! here directly, so content never travels through a socket.

use mta_types::ContentRef;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Free space kept on the spool's and the store's file systems: below it, new mail is
/// refused with 452 4.3.1 (as Postfix's smtpd does below `queue_minfree`), so the mail
/// already queued still has room to move — the queue store cannot take a failed write
/// (sled stops writing for good after one), and deliveries and removals need a little
/// room too.
pub const RESERVE_BYTES: u64 = 8 * 1024 * 1024;

/// Bytes available to unprivileged writers on the file system holding `dir` (None when
/// it cannot be told).
pub fn free_space(dir: &Path) -> Option<u64> {
    let fs = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(fs.blocks_available() as u64 * fs.fragment_size() as u64)
}

/// A segment is closed and a new one started past this size.
pub const SEGMENT_LIMIT: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "spool segment {segment} is shorter than the record says (wanted {len} bytes at {offset})"
    )]
    ShortRead {
        segment: String,
        offset: u64,
        len: u64,
    },
    #[error("spool segment name `{0}` is not a plain file name")]
    BadName(String),
}

impl SpoolError {
    /// The content is not there (its segment is gone, shorter than the record says, or
    /// the name is not ours): damage that no retry mends, unlike a transient I/O error.
    pub fn is_missing(&self) -> bool {
        match self {
            SpoolError::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            SpoolError::ShortRead { .. } | SpoolError::BadName(_) => true,
        }
    }

    /// The disk is full (or over quota): the caller answers 452 4.3.1, not a crash.
    pub fn is_disk_full(&self) -> bool {
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        matches!(self, SpoolError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(ENOSPC) | Some(EDQUOT)))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The appending side, owned by one writer (e.g. isesctl's spool task).
pub struct SpoolWriter {
    dir: PathBuf,
    prefix: String,
    seq: u32,
    current: Segment,
    /// Segments closed since the last sync: they still need their data synced.
    unsynced_closed: Vec<File>,
}

struct Segment {
    name: String,
    file: File,
    len: u64,
    dirty: bool,
}

impl SpoolWriter {
    /// Opens a fresh segment for `owner` (a task name) in `dir`, creating the folder.
    pub fn open(dir: &Path, owner: &str) -> Result<SpoolWriter, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis();
        let prefix = format!("{owner}-{}-{start}", std::process::id());
        let current = Self::new_segment(dir, &prefix, 0)?;
        // The new file's directory entry must survive a crash too.
        sync_dir(dir)?;
        Ok(SpoolWriter {
            dir: dir.to_path_buf(),
            prefix,
            seq: 0,
            current,
            unsynced_closed: Vec::new(),
        })
    }

    fn new_segment(dir: &Path, prefix: &str, seq: u32) -> Result<Segment, SpoolError> {
        let name = format!("{prefix}-{seq}.seg");
        let path = dir.join(&name);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(Segment {
            name,
            file,
            len: 0,
            dirty: false,
        })
    }

    /// Appends `parts` (concatenated) as one message's content. Not durable until `sync`.
    /// The spool directory this writer appends in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn append(&mut self, parts: &[&[u8]]) -> Result<ContentRef, SpoolError> {
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if self.current.len > 0 && self.current.len + total > SEGMENT_LIMIT {
            self.rotate()?;
        }
        let offset = self.current.len;
        let path = self.dir.join(&self.current.name);
        for part in parts {
            if let Err(e) = self.current.file.write_all(part) {
                // Cut what was partly written so the next append starts at a known offset.
                let _ = self.current.file.set_len(offset);
                return Err(SpoolError::Io { path, source: e });
            }
        }
        self.current.len += total;
        self.current.dirty = true;
        Ok(ContentRef {
            segment: self.current.name.clone(),
            offset,
            len: total,
        })
    }

    fn rotate(&mut self) -> Result<(), SpoolError> {
        self.seq += 1;
        let next = Self::new_segment(&self.dir, &self.prefix, self.seq)?;
        sync_dir(&self.dir)?;
        let old = std::mem::replace(&mut self.current, next);
        if old.dirty {
            self.unsynced_closed.push(old.file);
        }
        Ok(())
    }

    /// Makes every append so far durable: one `fdatasync` per dirty segment.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        for file in self.unsynced_closed.drain(..) {
            file.sync_data().map_err(io_err(&self.dir))?;
        }
        if self.current.dirty {
            let path = self.dir.join(&self.current.name);
            self.current.file.sync_data().map_err(io_err(&path))?;
            self.current.dirty = false;
        }
        Ok(())
    }

    /// The segment being written (compaction must not delete it).
    pub fn current_segment(&self) -> &str {
        &self.current.name
    }
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn check_name(segment: &str) -> Result<(), SpoolError> {
    if segment.is_empty() || segment.contains('/') || segment.starts_with('.') {
        return Err(SpoolError::BadName(segment.to_string()));
    }
    Ok(())
}

/// Reads one message's content.
pub fn read(dir: &Path, content: &ContentRef) -> Result<Vec<u8>, SpoolError> {
    check_name(&content.segment)?;
    let path = dir.join(&content.segment);
    let file = File::open(&path).map_err(io_err(&path))?;
    let mut buf = vec![0u8; content.len as usize];
    file.read_exact_at(&mut buf, content.offset)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => SpoolError::ShortRead {
                segment: content.segment.clone(),
                offset: content.offset,
                len: content.len,
            },
            _ => SpoolError::Io {
                path: path.clone(),
                source: e,
            },
        })?;
    Ok(buf)
}

/// A segment on disk, for compaction.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub name: String,
    pub size: u64,
    pub modified: SystemTime,
}

pub fn list_segments(dir: &Path) -> Result<Vec<SegmentInfo>, SpoolError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(SpoolError::Io {
                path: dir.to_path_buf(),
                source: e,
            })
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".seg") {
            continue;
        }
        if let Ok(meta) = entry.metadata() {
            out.push(SegmentInfo {
                name,
                size: meta.len(),
                modified: meta.modified().unwrap_or(UNIX_EPOCH),
            });
        }
    }
    Ok(out)
}

pub fn remove_segment(dir: &Path, name: &str) -> Result<(), SpoolError> {
    check_name(name)?;
    let path = dir.join(name);
    std::fs::remove_file(&path).map_err(io_err(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_sync_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::open(dir.path(), "test").unwrap();
        let a = w.append(&[b"Received: x\r\n", b"hello\r\n"]).unwrap();
        let b = w.append(&[b"second"]).unwrap();
        w.sync().unwrap();
        assert_eq!(read(dir.path(), &a).unwrap(), b"Received: x\r\nhello\r\n");
        assert_eq!(read(dir.path(), &b).unwrap(), b"second");
        assert_eq!(b.offset, a.len);
        let segs = list_segments(dir.path()).unwrap();
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0].name, w.current_segment());
    }

    #[test]
    fn short_read_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::open(dir.path(), "test").unwrap();
        let mut r = w.append(&[b"abc"]).unwrap();
        r.len = 10;
        assert!(matches!(
            read(dir.path(), &r),
            Err(SpoolError::ShortRead { .. })
        ));
        r.segment = "../etc/passwd".into();
        assert!(matches!(read(dir.path(), &r), Err(SpoolError::BadName(_))));
    }
}
