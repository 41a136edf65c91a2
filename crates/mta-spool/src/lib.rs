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
//!
//! **Frames.** In a segment (`….seg2`) each message is written as
//! - an envelope head (12 bytes: `SPE1`, the envelope's length and CRC-32),
//! - the envelope: the writer's own description of the message (isesctl writes the
//!   message's first queue record in the store's record codec, JSON before that; other
//!   writers write none; this crate does not look inside),
//! - a content frame (16 bytes: `SPC1`, the content's CRC-32 and length),
//! - the content, where the record's `ContentRef` points.
//!
//! `read` checks the frame, so a segment damaged on disk (a bad sector, a truncated file,
//! a stray write) is reported as `SpoolError::Corrupt` naming the segment and the offset,
//! and the message goes to Dead with that reason instead of being relayed with wrong
//! bytes. `scan_segment` walks the frames in order, so records lost from a damaged queue
//! store can be rebuilt from the envelopes. Segments written before frames existed
//! (`….seg`) are still read, unchecked.

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

/// The suffix of framed segments (written now) and of unframed ones (older versions).
pub const SEGMENT_SUFFIX: &str = ".seg2";
pub const UNFRAMED_SUFFIX: &str = ".seg";

/// The frame before each content: magic, CRC-32 of the content, content length.
const FRAME_MAGIC: &[u8; 4] = b"SPC1";
pub const FRAME_LEN: u64 = 16;
/// The head before each envelope: magic, envelope length, CRC-32 of the envelope.
const ENVELOPE_MAGIC: &[u8; 4] = b"SPE1";
pub const ENVELOPE_HEAD_LEN: u64 = 12;

fn envelope_head(envelope: &[u8]) -> [u8; ENVELOPE_HEAD_LEN as usize] {
    let mut h = [0u8; ENVELOPE_HEAD_LEN as usize];
    h[..4].copy_from_slice(ENVELOPE_MAGIC);
    h[4..8].copy_from_slice(&(envelope.len() as u32).to_be_bytes());
    h[8..].copy_from_slice(&crc32fast::hash(envelope).to_be_bytes());
    h
}

fn frame(crc: u32, len: u64) -> [u8; FRAME_LEN as usize] {
    let mut f = [0u8; FRAME_LEN as usize];
    f[..4].copy_from_slice(FRAME_MAGIC);
    f[4..8].copy_from_slice(&crc.to_be_bytes());
    f[8..].copy_from_slice(&len.to_be_bytes());
    f
}

/// Whether `name` is a segment of ours, framed or not.
pub fn is_segment_name(name: &str) -> bool {
    name.ends_with(SEGMENT_SUFFIX) || name.ends_with(UNFRAMED_SUFFIX)
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
    #[error("spool segment {segment} is damaged at offset {offset}: {why}")]
    Corrupt {
        segment: String,
        offset: u64,
        why: &'static str,
    },
}

impl SpoolError {
    /// The content is not there (its segment is gone, shorter than the record says, or
    /// the name is not ours): damage that no retry mends, unlike a transient I/O error.
    pub fn is_missing(&self) -> bool {
        match self {
            SpoolError::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            SpoolError::ShortRead { .. } | SpoolError::BadName(_) | SpoolError::Corrupt { .. } => {
                true
            }
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
        let name = format!("{prefix}-{seq}{SEGMENT_SUFFIX}");
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
        self.append_with_envelope(&[], parts)
    }

    /// Appends `parts` (concatenated) as one message's content, after `envelope` (what
    /// `scan_segment` gives back for this message). Not durable until `sync`.
    pub fn append_with_envelope(
        &mut self,
        envelope: &[u8],
        parts: &[&[u8]],
    ) -> Result<ContentRef, SpoolError> {
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let heads = ENVELOPE_HEAD_LEN + envelope.len() as u64 + FRAME_LEN;
        if self.current.len > 0 && self.current.len + heads + total > SEGMENT_LIMIT {
            self.rotate()?;
        }
        let start = self.current.len;
        let path = self.dir.join(&self.current.name);
        let mut crc = crc32fast::Hasher::new();
        for part in parts {
            crc.update(part);
        }
        let env_head = envelope_head(envelope);
        let head = frame(crc.finalize(), total);
        let framing: [&[u8]; 3] = [&env_head, envelope, &head];
        for part in framing.into_iter().chain(parts.iter().copied()) {
            if let Err(e) = self.current.file.write_all(part) {
                // Cut what was partly written so the next append starts at a known offset.
                let _ = self.current.file.set_len(start);
                return Err(SpoolError::Io { path, source: e });
            }
        }
        let offset = start + heads;
        self.current.len = offset + total;
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

/// Reads one message's content; in a framed segment, checks it against its frame.
pub fn read(dir: &Path, content: &ContentRef) -> Result<Vec<u8>, SpoolError> {
    check_name(&content.segment)?;
    let path = dir.join(&content.segment);
    let file = File::open(&path).map_err(io_err(&path))?;
    let framed = content.segment.ends_with(SEGMENT_SUFFIX);
    let corrupt = |why| SpoolError::Corrupt {
        segment: content.segment.clone(),
        offset: content.offset.saturating_sub(FRAME_LEN),
        why,
    };
    if framed && content.offset < FRAME_LEN {
        return Err(corrupt("the record points before the first frame"));
    }
    // One read for frame and content.
    let skip = if framed { FRAME_LEN as usize } else { 0 };
    let mut buf = vec![0u8; skip + content.len as usize];
    file.read_exact_at(&mut buf, content.offset - skip as u64)
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
    if framed {
        let (head, body) = buf.split_at(skip);
        if &head[..4] != FRAME_MAGIC {
            return Err(corrupt("no frame before the content"));
        }
        if u64::from_be_bytes(head[8..16].try_into().expect("8 bytes")) != content.len {
            return Err(corrupt("the frame's length differs from the record's"));
        }
        if u32::from_be_bytes(head[4..8].try_into().expect("4 bytes")) != crc32fast::hash(body) {
            return Err(corrupt("the content's checksum does not match"));
        }
        buf.drain(..skip);
    }
    Ok(buf)
}

/// One message found by `scan_segment`.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Where its content is (as a record would point at it).
    pub content: ContentRef,
    /// What its writer put in the envelope (empty for writers that put none).
    pub envelope: Vec<u8>,
}

/// Walks the frames of the framed segment `name` in order, handing each to `each`, reading
/// envelopes and skipping contents (bounded memory, whatever the segment's size). Stops at
/// the end, or at the first damaged or torn frame with `SpoolError::Corrupt` naming its
/// offset, after handing over every frame before it. A torn frame at the end of the newest
/// segment is normal after a crash (its message was never acknowledged).
pub fn scan_segment(dir: &Path, name: &str, each: impl FnMut(Frame)) -> Result<(), SpoolError> {
    scan_segment_from(dir, name, 0, each)
}

/// `scan_segment` starting at `from`, which must be where a frame starts (0, or the end of
/// a message's content as `ContentRef::offset + len` gives it): the supervisor reads only
/// the frames appended after the store's mark (`spool_recovery`).
pub fn scan_segment_from(
    dir: &Path,
    name: &str,
    from: u64,
    mut each: impl FnMut(Frame),
) -> Result<(), SpoolError> {
    use std::io::{BufReader, Read, Seek, SeekFrom};
    check_name(name)?;
    let path = dir.join(name);
    if !name.ends_with(SEGMENT_SUFFIX) {
        return Ok(());
    }
    let mut file = File::open(&path).map_err(io_err(&path))?;
    let size = file.metadata().map_err(io_err(&path))?.len();
    if from >= size {
        return Ok(());
    }
    file.seek(SeekFrom::Start(from)).map_err(io_err(&path))?;
    let mut r = BufReader::with_capacity(64 * 1024, file);
    let mut at = from;
    let corrupt = |offset, why| SpoolError::Corrupt {
        segment: name.to_string(),
        offset,
        why,
    };
    while at < size {
        if size - at < ENVELOPE_HEAD_LEN + FRAME_LEN {
            return Err(corrupt(at, "the segment ends inside a frame"));
        }
        let mut head = [0u8; ENVELOPE_HEAD_LEN as usize];
        r.read_exact(&mut head).map_err(io_err(&path))?;
        if &head[..4] != ENVELOPE_MAGIC {
            return Err(corrupt(at, "no envelope head where a frame should start"));
        }
        let env_len = u32::from_be_bytes(head[4..8].try_into().expect("4 bytes")) as u64;
        if size - at < ENVELOPE_HEAD_LEN + env_len + FRAME_LEN {
            return Err(corrupt(at, "the segment ends inside a frame"));
        }
        let mut envelope = vec![0u8; env_len as usize];
        r.read_exact(&mut envelope).map_err(io_err(&path))?;
        if u32::from_be_bytes(head[8..12].try_into().expect("4 bytes"))
            != crc32fast::hash(&envelope)
        {
            return Err(corrupt(at, "the envelope's checksum does not match"));
        }
        let mut content_head = [0u8; FRAME_LEN as usize];
        r.read_exact(&mut content_head).map_err(io_err(&path))?;
        if &content_head[..4] != FRAME_MAGIC {
            return Err(corrupt(at, "no content frame after the envelope"));
        }
        let len = u64::from_be_bytes(content_head[8..16].try_into().expect("8 bytes"));
        let offset = at + ENVELOPE_HEAD_LEN + env_len + FRAME_LEN;
        if size - offset < len {
            return Err(corrupt(at, "the segment ends inside a message's content"));
        }
        r.seek(SeekFrom::Current(len as i64))
            .map_err(io_err(&path))?;
        each(Frame {
            content: ContentRef {
                segment: name.to_string(),
                offset,
                len,
            },
            envelope,
        });
        at = offset + len;
    }
    Ok(())
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
        if !is_segment_name(&name) {
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
        assert_eq!(b.offset, a.offset + a.len + ENVELOPE_HEAD_LEN + FRAME_LEN);
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

    #[test]
    fn damaged_content_is_named_with_segment_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::open(dir.path(), "test").unwrap();
        let a = w.append(&[b"first message\r\n"]).unwrap();
        let b = w.append(&[b"second message\r\n"]).unwrap();
        w.sync().unwrap();
        let path = dir.path().join(&b.segment);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[b.offset as usize + 3] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(dir.path(), &a).unwrap(), b"first message\r\n");
        let e = read(dir.path(), &b).unwrap_err();
        assert!(e.is_missing(), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&b.segment)
                && text.contains(&format!("offset {}", b.offset - FRAME_LEN))
                && text.contains("checksum"),
            "{text}"
        );
        // A record pointing into the middle of a message finds no frame.
        let mut wrong = a.clone();
        wrong.offset += 2;
        wrong.len -= 2;
        assert!(read(dir.path(), &wrong)
            .unwrap_err()
            .to_string()
            .contains("frame"));
    }

    #[test]
    fn scan_from_a_messages_end_gives_only_the_frames_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::open(dir.path(), "test").unwrap();
        let a = w.append_with_envelope(b"env a", &[b"content a"]).unwrap();
        let b = w.append_with_envelope(b"env b", &[b"content b"]).unwrap();
        w.sync().unwrap();
        let name = w.current_segment().to_string();
        let mut seen = Vec::new();
        scan_segment_from(dir.path(), &name, a.offset + a.len, |f| seen.push(f)).unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            (&seen[0].envelope[..], &seen[0].content),
            (&b"env b"[..], &b)
        );
        let mut seen = Vec::new();
        scan_segment_from(dir.path(), &name, b.offset + b.len, |f| seen.push(f)).unwrap();
        assert!(seen.is_empty());
    }

    #[test]
    fn scan_gives_back_every_envelope_and_stops_at_damage() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::open(dir.path(), "test").unwrap();
        let a = w.append_with_envelope(b"env a", &[b"content a"]).unwrap();
        let b = w.append(&[b"content b, no envelope"]).unwrap();
        let c = w
            .append_with_envelope(b"env c", &[b"content ", b"c"])
            .unwrap();
        w.sync().unwrap();
        let name = w.current_segment().to_string();
        let mut seen = Vec::new();
        scan_segment(dir.path(), &name, |f| seen.push(f)).unwrap();
        let got: Vec<(&[u8], &ContentRef)> =
            seen.iter().map(|f| (&f.envelope[..], &f.content)).collect();
        assert_eq!(
            got,
            vec![(&b"env a"[..], &a), (&b""[..], &b), (&b"env c"[..], &c)]
        );
        assert_eq!(read(dir.path(), &c).unwrap(), b"content c");
        // Damage in b's envelope head: a is handed over, then the damage is named.
        let path = dir.path().join(&name);
        let mut bytes = std::fs::read(&path).unwrap();
        let b_start = (b.offset - FRAME_LEN - ENVELOPE_HEAD_LEN) as usize;
        bytes[b_start] = b'X';
        std::fs::write(&path, &bytes).unwrap();
        let mut seen = Vec::new();
        let e = scan_segment(dir.path(), &name, |f| seen.push(f)).unwrap_err();
        assert_eq!(seen.len(), 1);
        assert!(e.to_string().contains(&format!("offset {b_start}")), "{e}");
        // A torn tail: cut inside c's content.
        bytes[b_start] = b'S';
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let mut seen = Vec::new();
        let e = scan_segment(dir.path(), &name, |f| seen.push(f)).unwrap_err();
        assert_eq!(seen.len(), 2);
        assert!(e.to_string().contains("ends inside"), "{e}");
    }

    #[test]
    fn unframed_segments_of_older_versions_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("isesctl-1-2-0.seg"), b"old content").unwrap();
        let r = ContentRef {
            segment: "isesctl-1-2-0.seg".into(),
            offset: 4,
            len: 7,
        };
        assert_eq!(read(dir.path(), &r).unwrap(), b"content");
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
    }
}
