//! Where sled's recovery will stop reading its log: a read-only walk of sled 0.34's log
//! file (`db`) made before sled opens it.
//!
//! sled reads its log at open, in LSN order from its last snapshot, up to the first entry
//! it cannot read (a failed checksum, an impossible length, a damaged segment header, a
//! gap), takes that for the torn end of the last write, and starts writing there: the
//! evidence is overwritten by the open itself, and sled names no offset. So the walk runs
//! first and keeps where the log stops; when the flush mark then shows that durable writes
//! were lost (`durability.rs`), the report names that offset. On a sound log the stop is
//! simply the end of what was written.
//!
//! The walk reads what sled's recovery reads (the segments from the snapshot's LSN on),
//! no more. It follows sled 0.34.7's on-disk format (`pagecache/logger.rs`,
//! `serialization.rs`); a newer sled must be checked against it. It never fails the
//! open: an unreadable file is sled's to report.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

const SEG_HEADER_LEN: u64 = 20;
/// sled never starts an entry in a segment's last 32 bytes (its "red zone").
const MAX_MSG_HEADER_LEN: u64 = 32;
const DEFAULT_SEGMENT_SIZE: u64 = 512 * 1024;
const KIND_CORRUPTED: u8 = 0;
const KIND_CAP: u8 = 2;
const KIND_LAST: u8 = 11;

/// Where the log stops being readable, and what follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStop {
    /// Byte offset in `db` of the first entry (or segment) sled will not read.
    pub offset: u64,
    pub why: &'static str,
    /// In the newest segment: there, the end of the last write reads the same as damage.
    pub in_newest_segment: bool,
    /// Segments with a valid header and a later LSN that recovery will not reach.
    pub later_segments: usize,
    pub file_len: u64,
}

impl std::fmt::Display for LogStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sled's recovery stops reading its log at offset {} of {} bytes: {}",
            self.offset, self.file_len, self.why
        )?;
        if self.in_newest_segment {
            write!(
                f,
                ", in the newest segment (where the end of the last write reads the same)"
            )?;
        }
        if self.later_segments > 0 {
            write!(
                f,
                " ({} later segment(s) hold entries it does not reach)",
                self.later_segments
            )?;
        }
        Ok(())
    }
}

/// Walks the log of the sled database in `dir`. `None` when there is no log yet or it
/// cannot be read.
pub fn scan(dir: &Path) -> Option<LogStop> {
    let file = File::open(dir.join("db")).ok()?;
    let file_len = file.metadata().ok()?.len();
    let segment_size = segment_size(dir);
    let from_lsn = snapshot_lsn(dir) / segment_size * segment_size;
    let (by_lsn, damaged_headers) = segments(&file, file_len, segment_size, from_lsn)?;
    let Some((&first_lsn, _)) = by_lsn.first_key_value() else {
        return damaged_headers.first().map(|&offset| LogStop {
            offset,
            why: "no segment header is valid: the first one is damaged",
            in_newest_segment: false,
            later_segments: 0,
            file_len,
        });
    };
    let mut expected = first_lsn;
    let mut buf = vec![0u8; segment_size as usize];
    for (n, (&lsn, &lid)) in by_lsn.iter().enumerate() {
        let later_segments = by_lsn.len() - n - 1;
        if lsn != expected {
            // A segment is missing from the LSN sequence: recovery stops at the end of
            // the previous one. A damaged header is the likeliest missing one.
            let offset = damaged_headers.first().copied().unwrap_or(lid);
            return Some(LogStop {
                offset,
                why: "a segment is missing from the log's sequence (its header is damaged)",
                in_newest_segment: false,
                later_segments: later_segments + 1,
                file_len,
            });
        }
        expected = lsn + segment_size;
        let len = segment_size.min(file_len - lid) as usize;
        file.read_exact_at(&mut buf[..len], lid).ok()?;
        let segment_number = lsn / segment_size;
        match walk_segment(&buf[..len], segment_size, segment_number) {
            SegmentEnd::Cap => continue,
            SegmentEnd::Stop { at, why } => {
                // The newest segment's entries end where writing stopped; what follows
                // is left from the segment's earlier use and cannot be told from damage.
                if later_segments > 0 {
                    return Some(LogStop {
                        offset: lid + at,
                        why,
                        in_newest_segment: false,
                        later_segments,
                        file_len,
                    });
                }
                return Some(end_of_log(lid + at, why, &damaged_headers, file_len));
            }
        }
    }
    Some(end_of_log(
        file_len,
        END_OF_WRITES,
        &damaged_headers,
        file_len,
    ))
}

/// The walk reached the newest segment's end. A damaged segment header that left no gap
/// in the sequence (the oldest segment's, or one sled would have reused) is still damage.
fn end_of_log(offset: u64, why: &'static str, damaged_headers: &[u64], file_len: u64) -> LogStop {
    match damaged_headers.first() {
        Some(&lid) => LogStop {
            offset: lid,
            why: "a segment header fails its checksum",
            in_newest_segment: false,
            later_segments: 0,
            file_len,
        },
        None => LogStop {
            offset,
            why,
            in_newest_segment: true,
            later_segments: 0,
            file_len,
        },
    }
}

/// Segments with a valid header and an LSN from `from_lsn` on, by LSN as sled's recovery
/// orders them (LSN → offset), and the offsets of headers that fail their checksum and
/// are not zero (a free segment's are).
fn segments(
    file: &File,
    file_len: u64,
    segment_size: u64,
    from_lsn: u64,
) -> Option<(BTreeMap<u64, u64>, Vec<u64>)> {
    let count = file_len / segment_size + u64::from(file_len % segment_size >= SEG_HEADER_LEN);
    let mut by_lsn = BTreeMap::new();
    let mut damaged_headers = Vec::new();
    for index in 0..count {
        let lid = index * segment_size;
        let mut header = [0u8; SEG_HEADER_LEN as usize];
        file.read_exact_at(&mut header, lid).ok()?;
        match segment_header(&header) {
            Some(lsn) if lsn >= from_lsn => {
                by_lsn.insert(lsn, lid);
            }
            Some(_) => {}
            None if header.iter().any(|&b| b != 0) => damaged_headers.push(lid),
            None => {}
        }
    }
    Some((by_lsn, damaged_headers))
}

const END_OF_WRITES: &str = "the end of what was written";

enum SegmentEnd {
    /// The segment was sealed; recovery goes on with the next one.
    Cap,
    /// Recovery stops at this offset within the segment.
    Stop { at: u64, why: &'static str },
}

fn walk_segment(seg: &[u8], segment_size: u64, segment_number: u64) -> SegmentEnd {
    let mut at = SEG_HEADER_LEN;
    loop {
        if at + MAX_MSG_HEADER_LEN > segment_size {
            // The red zone: sled moves on to the next segment.
            return SegmentEnd::Cap;
        }
        let Some(rest) = seg.get(at as usize..).filter(|r| r.len() >= 5) else {
            return SegmentEnd::Stop {
                at,
                why: "the file ends inside a segment (truncated, or the end of what was written)",
            };
        };
        let mut cursor = rest;
        let Some(header) = message_header(&mut cursor) else {
            return SegmentEnd::Stop {
                at,
                why: "an entry's header cannot be read",
            };
        };
        let header_len = (rest.len() - cursor.len()) as u64;
        if header.kind == KIND_CORRUPTED {
            let why = if rest[..header_len as usize].iter().all(|&b| b == 0) {
                END_OF_WRITES
            } else {
                "an entry is marked corrupted"
            };
            return SegmentEnd::Stop { at, why };
        }
        if header.kind > KIND_LAST {
            return SegmentEnd::Stop {
                at,
                why: "an entry's kind is unknown (damaged bytes)",
            };
        }
        let room = segment_size - at - header_len;
        if header.len > room {
            return SegmentEnd::Stop {
                at,
                why: "an entry's length runs past its segment (damaged bytes)",
            };
        }
        let Some(body) = cursor.get(..header.len as usize) else {
            return SegmentEnd::Stop {
                at,
                why: "the file ends inside an entry (truncated)",
            };
        };
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(body);
        hasher.update(&rest[4..header_len as usize]);
        if hasher.finalize() ^ 0xFFFF_FFFF != header.crc32 {
            return SegmentEnd::Stop {
                at,
                why: "an entry fails its checksum",
            };
        }
        if header.segment_number != segment_number {
            // Left from the segment's earlier use: the end of this use's writes.
            return SegmentEnd::Stop {
                at,
                why: END_OF_WRITES,
            };
        }
        if header.kind == KIND_CAP {
            return SegmentEnd::Cap;
        }
        at += header_len + header.len;
    }
}

struct MessageHeader {
    crc32: u32,
    kind: u8,
    len: u64,
    segment_number: u64,
}

fn message_header(buf: &mut &[u8]) -> Option<MessageHeader> {
    let crc32 = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?);
    *buf = &buf[4..];
    let kind = *buf.first()?;
    *buf = &buf[1..];
    let len = varint(buf)?;
    let segment_number = varint(buf)?;
    let _pid = varint(buf)?;
    Some(MessageHeader {
        crc32,
        kind,
        len,
        segment_number,
    })
}

/// sled 0.34's variable-length u64 (`serialization.rs`).
fn varint(buf: &mut &[u8]) -> Option<u64> {
    let first = *buf.first()?;
    let (value, used) = match first {
        0..=240 => (u64::from(first), 1),
        241..=248 => {
            let second = u64::from(*buf.get(1)?);
            (240 + 256 * (u64::from(first) - 241) + second, 2)
        }
        249 => {
            let b1 = u64::from(*buf.get(1)?);
            let b2 = u64::from(*buf.get(2)?);
            (2288 + 256 * b1 + b2, 3)
        }
        _ => {
            let n = usize::from(first - 247);
            let bytes = buf.get(1..=n)?;
            let mut le = [0u8; 8];
            le[..n].copy_from_slice(bytes);
            (u64::from_le_bytes(le), n + 1)
        }
    };
    *buf = &buf[used..];
    Some(value)
}

/// The LSN of a segment header whose checksum holds.
fn segment_header(buf: &[u8; SEG_HEADER_LEN as usize]) -> Option<u64> {
    let stored = u32::from_le_bytes(buf[0..4].try_into().ok()?) ^ 0xFFFF_FFFF;
    if crc32fast::hash(&buf[4..20]) != stored {
        return None;
    }
    let lsn = u64::from_le_bytes(buf[4..12].try_into().ok()?) ^ 0x7FFF_FFFF_FFFF_FFFF;
    i64::try_from(lsn).ok().map(|l| l as u64)
}

fn segment_size(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("conf"))
        .ok()
        .and_then(|conf| {
            conf.lines()
                .find_map(|l| l.strip_prefix("segment_size: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(DEFAULT_SEGMENT_SIZE)
}

/// The stable LSN of the newest snapshot (`snap.<16 hex digits>`): recovery reads the
/// log from there.
fn snapshot_lsn(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let hex = name.strip_prefix("snap.")?;
            (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sled database with enough writes for more than one segment, closed.
    fn written_db(dir: &Path) {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
            .open()
            .unwrap();
        let tree = db.open_tree("queue").unwrap();
        for n in 0..3_000u32 {
            tree.insert(n.to_be_bytes(), vec![(n % 251) as u8; 300])
                .unwrap();
            if n % 100 == 0 {
                db.flush().unwrap();
            }
        }
        db.flush().unwrap();
    }

    #[test]
    fn a_sound_log_stops_at_the_end_of_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        written_db(dir.path());
        let stop = scan(dir.path()).expect("a log");
        assert!(stop.in_newest_segment, "{stop}");
        assert_eq!(stop.later_segments, 0, "{stop}");
        let f = File::open(dir.path().join("db")).unwrap();
        let len = f.metadata().unwrap().len();
        let (by_lsn, damaged) = segments(&f, len, DEFAULT_SEGMENT_SIZE, 0).unwrap();
        assert!(
            by_lsn.len() >= 2 && damaged.is_empty(),
            "{by_lsn:?} {damaged:?}"
        );
        let (_, &newest) = by_lsn.last_key_value().unwrap();
        assert!(
            (newest..=newest + DEFAULT_SEGMENT_SIZE).contains(&stop.offset),
            "{stop}: the newest segment is at {newest}"
        );
    }

    #[test]
    fn damaged_bytes_in_the_log_are_named_by_the_offset_of_their_entry() {
        let dir = tempfile::tempdir().unwrap();
        written_db(dir.path());
        let db = dir.path().join("db");
        // Inside the oldest segment: full of entries, and followed by newer ones.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&db)
            .unwrap();
        let len = f.metadata().unwrap().len();
        let (by_lsn, _) = segments(&f, len, DEFAULT_SEGMENT_SIZE, 0).unwrap();
        assert!(by_lsn.len() >= 2, "{by_lsn:?}");
        let (_, oldest) = by_lsn.first_key_value().unwrap();
        let damaged_at = oldest + 100_000;
        f.write_all_at(&[0x5a; 64], damaged_at).unwrap();
        let stop = scan(dir.path()).expect("a log");
        assert_ne!(stop.why, END_OF_WRITES, "{stop}");
        assert!(!stop.in_newest_segment, "{stop}");
        assert!(
            stop.offset <= damaged_at && damaged_at - stop.offset < 64 * 1024,
            "{stop}: the damage is at {damaged_at}"
        );
        assert!(stop.later_segments >= 1, "{stop}");
        assert!(stop
            .to_string()
            .contains(&format!("offset {}", stop.offset)));
    }

    #[test]
    fn a_damaged_first_segment_header_is_named_at_offset_zero() {
        let dir = tempfile::tempdir().unwrap();
        written_db(dir.path());
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("db"))
            .unwrap();
        f.write_all_at(&[0x5a; 16], 0).unwrap();
        let stop = scan(dir.path()).expect("a log");
        assert_eq!(stop.offset, 0, "{stop}");
    }
}
