//! Queue identifiers: short, time-ordered, printed the same everywhere (`qid=…`).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A message's identity from acceptance to removal.
///
/// 64 bits: 40 bits of milliseconds since 2020-01-01 (good for ~34 years), 10 bits of a
/// per-process source number (the low bits of the pid), 14 bits of a per-process counter.
/// Sorting by the number sorts by arrival time, which the queues rely on for FIFO order.
/// Printed as 13 upper-case Crockford base-32 characters, like Postfix's long queue ids.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueueId(u64);

const EPOCH_2020_MS: u64 = 1_577_836_800_000;
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl QueueId {
    /// A new id for a message arriving now in this process.
    pub fn generate() -> QueueId {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            .saturating_sub(EPOCH_2020_MS)
            & ((1 << 40) - 1);
        let source = (std::process::id() as u64) & 0x3ff;
        let count = (COUNTER.fetch_add(1, Ordering::Relaxed) as u64) & 0x3fff;
        QueueId((ms << 24) | (source << 14) | count)
    }

    pub fn from_u64(raw: u64) -> QueueId {
        QueueId(raw)
    }

    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// Big-endian bytes: store keys sort in arrival order.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    pub fn from_bytes(bytes: [u8; 8]) -> QueueId {
        QueueId(u64::from_be_bytes(bytes))
    }

    /// Milliseconds since the Unix epoch at which the id was generated.
    pub fn timestamp_ms(self) -> u64 {
        (self.0 >> 24) + EPOCH_2020_MS
    }

    /// The smallest id generated at or after `ms` (Unix milliseconds): where a range of
    /// ids by arrival time starts.
    pub fn first_at(ms: u64) -> QueueId {
        QueueId((ms.saturating_sub(EPOCH_2020_MS) & ((1 << 40) - 1)) << 24)
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 13];
        let mut v = self.0;
        for slot in out.iter_mut().rev() {
            *slot = ALPHABET[(v & 31) as usize];
            v >>= 5;
        }
        f.write_str(std::str::from_utf8(&out).expect("alphabet is ASCII"))
    }
}

impl fmt::Debug for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QueueId({self})")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a queue id (13 characters of 0-9, A-Z without I, L, O, U)")]
pub struct BadQueueId(String);

impl FromStr for QueueId {
    type Err = BadQueueId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 13 {
            return Err(BadQueueId(s.to_string()));
        }
        let mut v: u64 = 0;
        for c in s.bytes() {
            let c = c.to_ascii_uppercase();
            let digit = ALPHABET
                .iter()
                .position(|&a| a == c)
                .ok_or_else(|| BadQueueId(s.to_string()))?;
            v = v.checked_shl(5).ok_or_else(|| BadQueueId(s.to_string()))? | digit as u64;
        }
        Ok(QueueId(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        let id = QueueId::generate();
        let text = id.to_string();
        assert_eq!(text.len(), 13);
        assert_eq!(text.parse::<QueueId>().unwrap(), id);
    }

    #[test]
    fn later_ids_sort_later() {
        let a = QueueId::generate();
        let b = QueueId::generate();
        assert!(b > a);
        assert!(b.to_bytes() > a.to_bytes());
    }

    #[test]
    fn rejects_garbage() {
        assert!("hello".parse::<QueueId>().is_err());
        assert!("0000000000I00".parse::<QueueId>().is_err());
    }
}
