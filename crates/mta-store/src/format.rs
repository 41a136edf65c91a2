//! The store's on-disk record format: its own versioned type, independent of the IPC wire
//! frame (bincode, in `mta-ipc`), so that a change of the wire format is not a disk
//! migration.
//!
//! A stored value is `b'R'`, a format version byte, then the record in postcard (a compact,
//! maintained serde format). Version 1 holds `MessageRecord` as this build defines it; a
//! change to that type bumps `VERSION` and adds a decoder for the old version here.
//!
//! Values written by the first store (before this format) carry no tag: they are the wire
//! codec's bytes. `decode` still reads them, so an old queue comes up; `Engine::open`
//! rewrites them in this format once (see `Engine::rebuild`).

use mta_types::MessageRecord;

const TAG: u8 = b'R';
pub const VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("empty value")]
    Empty,
    #[error("record format version {0} is newer than this build reads ({VERSION})")]
    Newer(u8),
    #[error("undecodable record (format {version}): {reason}")]
    Undecodable { version: u8, reason: String },
}

pub fn encode(record: &MessageRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.push(TAG);
    out.push(VERSION);
    // Writing into a Vec cannot fail, and every field of MessageRecord is serializable.
    postcard::to_io(record, &mut out).expect("postcard encodes a MessageRecord into a Vec");
    out
}

pub fn decode(bytes: &[u8]) -> Result<MessageRecord, FormatError> {
    match bytes {
        [] => Err(FormatError::Empty),
        [TAG, VERSION, body @ ..] => {
            postcard::from_bytes(body).map_err(|e| FormatError::Undecodable {
                version: VERSION,
                reason: e.to_string(),
            })
        }
        [TAG, v, ..] if *v > VERSION => Err(FormatError::Newer(*v)),
        legacy => {
            let record: MessageRecord =
                mta_ipc::frame::decode(legacy).map_err(|e| FormatError::Undecodable {
                    version: 0,
                    reason: e.to_string(),
                })?;
            Ok(record)
        }
    }
}

/// Whether `bytes` is in the current format (else `Engine::rebuild` rewrites it).
pub fn is_current(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == TAG && bytes[1] == VERSION
}
