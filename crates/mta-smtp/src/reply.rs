//! SMTP replies (RFC 5321 4.2) with enhanced status codes (RFC 2034, RFC 3463).
//!
//! The reply type and its named constructors (every reply the server sends: call sites
//! never spell out a code or a text) are `mta_types::reply::Reply`, the one type a reply
//! has from the wire to a record; it is re-exported here. This module adds the client
//! direction's reading of a reply from a connection ([`read_reply`]).

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// An enhanced status code `class.subject.detail` (RFC 3463).
pub use mta_types::outcome::Enhanced;
/// One SMTP reply, possibly multi-line (`mta_types::reply`).
pub use mta_types::reply::{BadReply, Reply};

#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("malformed SMTP reply")]
    Malformed,
    #[error("SMTP reply ended before its last line")]
    Incomplete,
    #[error("SMTP reply longer than {0} octets")]
    TooLong(usize),
    #[error("I/O error reading SMTP reply: {0}")]
    Io(#[from] std::io::Error),
}

impl From<BadReply> for ReplyError {
    fn from(e: BadReply) -> ReplyError {
        match e {
            BadReply::Malformed => ReplyError::Malformed,
            BadReply::Incomplete => ReplyError::Incomplete,
        }
    }
}

/// The longest reply [`read_reply`] accepts, all lines together.
pub const MAX_REPLY_OCTETS: usize = 64 * 1024;

/// Reads one complete (possibly multi-line) reply, client direction; bounded by
/// [`MAX_REPLY_OCTETS`].
pub async fn read_reply<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Reply, ReplyError> {
    let mut buf = Vec::new();
    loop {
        let start = buf.len();
        let n = (&mut *r)
            .take((MAX_REPLY_OCTETS + 1 - start) as u64)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            return Err(ReplyError::Incomplete);
        }
        if buf.len() > MAX_REPLY_OCTETS {
            return Err(ReplyError::TooLong(MAX_REPLY_OCTETS));
        }
        if buf.last() != Some(&b'\n') {
            return Err(ReplyError::Incomplete);
        }
        let line = &buf[start..];
        if line.len() < 4 || line[3] != b'-' {
            return Ok(Reply::parse_lines(&buf)?);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_reply_reads_one_reply_at_a_time() {
        let mut input: &[u8] = b"250-mx\r\n250 SIZE 5\r\n354 go\r\n";
        let a = read_reply(&mut input).await.unwrap();
        assert_eq!(a.lines, vec!["mx", "SIZE 5"]);
        let b = read_reply(&mut input).await.unwrap();
        assert_eq!(b.code, Some(354));
        assert!(matches!(
            read_reply(&mut input).await,
            Err(ReplyError::Incomplete)
        ));
    }
}
