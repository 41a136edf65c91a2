//! `track`: the query an operator types and one page of its answer. A page is one IPC
//! frame of at most `PAGE_ROWS` histories; the console asks for the next page (`after`)
//! until the answer ends or it has shown `MAX_ROWS`.
//!
//! An answer lists the messages still in the store first (oldest first), then the
//! finished ones from the tracking log (in the order they finished): a `TrackCursor`
//! says which part a page ended in and where.

pub use mta_store_types::{BadCursor, TrackCursor, TrackQuery};
use mta_types::tracking::TrackEntry;
use serde::{Deserialize, Serialize};

/// Most histories in one reply frame.
pub const PAGE_ROWS: usize = 50;
/// Most histories the console shows for one `track` (it says when there are more).
pub const MAX_ROWS: usize = 500;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackPage {
    pub rows: Vec<TrackEntry>,
    /// Where the next page starts; None: this was the last.
    pub next: Option<TrackCursor>,
}

const USAGE: &str = "usage: track [from=<addr>] [to=<addr>] [since=<time>] [id=<message-id>]";

/// Why a `track` query was refused; `Display` is what the console shows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrackQueryError {
    #[error("`{0}` is not key=value; {USAGE}")]
    NotKeyValue(String),
    #[error("unknown key `{0}`; {USAGE}")]
    UnknownKey(String),
    #[error("`{0}` is not a time: a duration ago (30m, 2h, 7d), a UTC date (2026-12-02, 2026-12-02T14:30) or Unix seconds")]
    BadTime(String),
    #[error(transparent)]
    BadCursor(#[from] BadCursor),
}

/// `from=<addr> to=<addr> since=<time> id=<message-id>`, each optional, any order.
/// `since` is a duration ago (`30m`, `2h`, `7d`), a UTC date or time
/// (`2026-12-02`, `2026-12-02T14:30`, `2026-12-02T14:30:05`), or Unix seconds.
pub fn parse_query(words: &[&str]) -> Result<TrackQuery, TrackQueryError> {
    let mut q = TrackQuery::default();
    for w in words {
        let Some((key, value)) = w.split_once('=') else {
            return Err(TrackQueryError::NotKeyValue(w.to_string()));
        };
        let addr = || value.trim_matches(|c| c == '<' || c == '>').to_string();
        match key.to_ascii_lowercase().as_str() {
            "from" => q.from = Some(addr()),
            "to" => q.to = Some(addr()),
            "id" | "message-id" | "messageid" => q.message_id = Some(value.to_string()),
            "since" => q.since_ms = Some(parse_since(value, mta_types::message::now_ms())?),
            "after" => q.after = Some(value.parse()?),
            other => return Err(TrackQueryError::UnknownKey(other.to_string())),
        }
    }
    Ok(q)
}

/// See [`parse_query`].
pub fn parse_since(value: &str, now_ms: u64) -> Result<u64, TrackQueryError> {
    let bad = || TrackQueryError::BadTime(value.to_string());
    let v = value.trim();
    if let Some(unit) = v.chars().last().filter(|c| c.is_ascii_alphabetic()) {
        let n: u64 = v[..v.len() - 1].parse().map_err(|_| bad())?;
        let secs = match unit {
            's' => n,
            'm' => n * 60,
            'h' => n * 3600,
            'd' => n * 86400,
            _ => return Err(bad()),
        };
        return Ok(now_ms.saturating_sub(secs * 1000));
    }
    if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() {
        return v.parse::<u64>().map(|s| s * 1000).map_err(|_| bad());
    }
    let (date, time) = v.split_once(['T', ' ']).unwrap_or((v, "00:00:00"));
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let t: Vec<i64> = time
        .trim_end_matches('Z')
        .split(':')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let (&[y, mo, da], [h, mi, rest @ ..]) = (d.as_slice(), t.as_slice()) else {
        return Err(bad());
    };
    let s = rest.first().copied().unwrap_or(0);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || *h > 23 || *mi > 59 || s > 60 {
        return Err(bad());
    }
    let secs = days_from_civil(y, mo, da) * 86400 + h * 3600 + mi * 60 + s;
    u64::try_from(secs).map(|s| s * 1000).map_err(|_| bad())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_query_and_times() {
        let q = parse_query(&["from=<a@x.test>", "TO=b@y.test", "id=<m@x>"]).unwrap();
        assert_eq!(q.from.as_deref(), Some("a@x.test"));
        assert_eq!(q.to.as_deref(), Some("b@y.test"));
        assert_eq!(q.message_id.as_deref(), Some("<m@x>"));
        assert_eq!(
            parse_since("2h", 10_000_000).unwrap(),
            10_000_000 - 7_200_000
        );
        assert_eq!(parse_since("1970-01-02", 0).unwrap(), 86_400_000);
        assert_eq!(
            parse_since("2026-12-02T01:30", 0).unwrap(),
            1_796_175_000_000
        );
        assert_eq!(parse_since("1796175000", 0).unwrap(), 1_796_175_000_000);
        assert_eq!(
            parse_since("yesterday", 0).unwrap_err().to_string(),
            "`yesterday` is not a time: a duration ago (30m, 2h, 7d), a UTC date (2026-12-02, 2026-12-02T14:30) or Unix seconds"
        );
        assert_eq!(
            parse_query(&["who=me"]).unwrap_err().to_string(),
            "unknown key `who`; usage: track [from=<addr>] [to=<addr>] [since=<time>] [id=<message-id>]"
        );
        assert_eq!(
            parse_query(&["me"]).unwrap_err().to_string(),
            "`me` is not key=value; usage: track [from=<addr>] [to=<addr>] [since=<time>] [id=<message-id>]"
        );
        for c in [
            TrackCursor::Log {
                segment: 1_796_175_000_000,
                offset: 4096,
            },
            TrackCursor::Queued(mta_types::QueueId::from_u64(77)),
        ] {
            let q = parse_query(&[&format!("after={c}")]).unwrap();
            assert_eq!(q.after, Some(c));
        }
        assert_eq!(
            parse_query(&["after=log-1"]).unwrap_err().to_string(),
            "`log-1` is not a queue id or a `log-<segment>-<offset>` position"
        );
    }
}
