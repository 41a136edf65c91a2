//! Message content on the wire: the DATA reader (RFC 5321 4.1.1.4, 4.5.2), the BDAT chunk
//! reader (RFC 3030), and the outbound helpers [`dot_stuff`] and [`has_bare_line_ending`].
//!
//! This is the SMTP smuggling defence. The only end of DATA is `CRLF . CRLF`: a line that is
//! exactly `.`, ended by CRLF, whose previous line also ended by CRLF (the DATA command's
//! own CRLF counts for the first line). `<LF>.<LF>`, `<LF>.<CRLF>`, `<CR><LF>.<LF>`,
//! `<CR>.<CR>`, `<CR>.<CR><LF>` and the like never end the message; they contain a bare CR
//! or LF. One DATA therefore never yields two messages, and whatever follows the real end
//! is read as the next command.
//!
//! What happens to a bare LF is the policy [`BareNewline`] (`[inbound] bare_newline`):
//! `Reject` refuses the message ([`DataOutcome::BareLineEnding`]) once the real end has been
//! read; `Normalize` stores it as CRLF (and a dot after it is unstuffed like any line's),
//! but the line after it still never ends DATA — so a fake end becomes visible content of
//! the one message, never a second message. A bare CR is refused under both.
//!
//! Memory is bounded: content is kept only while it is within `max_size`; after a failure
//! the rest is scanned to its end without being stored. Line length is counted, not buffered.

pub use mta_types::BareNewline;
use std::io;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Limits applied to one message's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataLimits {
    /// Largest accepted content, in octets after dot-unstuffing, line endings included.
    pub max_size: u64,
    /// Longest accepted line, in octets, not counting its CRLF.
    pub max_line: usize,
    /// What a bare LF in the content does.
    pub bare_newline: BareNewline,
}

/// What a DATA (or a BDAT sequence) produced. Every variant but `Complete` means the content
/// was read to its end and discarded.
#[derive(Debug, PartialEq, Eq)]
pub enum DataOutcome {
    /// Dot-unstuffed content; every line ends in CRLF.
    Complete(Vec<u8>),
    TooBig,
    LineTooLong,
    BareLineEnding,
}

impl DataOutcome {
    /// The reply for a refused message; `None` for `Complete`.
    pub fn rejection(&self) -> Option<crate::Reply> {
        use crate::Reply;
        match self {
            DataOutcome::Complete(_) => None,
            DataOutcome::TooBig => Some(Reply::message_too_big()),
            DataOutcome::LineTooLong => Some(Reply::line_too_long_in_data()),
            DataOutcome::BareLineEnding => Some(Reply::bare_lf_rejected()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    TooBig,
    LineTooLong,
    BareLineEnding,
}

/// The DATA state machine, fed with whatever bytes arrive. Pure, so it can be fuzzed.
#[derive(Debug)]
pub struct DataScanner {
    limits: DataLimits,
    out: Vec<u8>,
    /// The first problem seen; from then on nothing is stored.
    failure: Option<Failure>,
    /// The current line began right after a CRLF (or at the start of the content): only
    /// such a line can end DATA.
    line_after_crlf: bool,
    /// The current line began after a line ending (CRLF, or a normalized bare LF): a
    /// leading dot is unstuffed.
    line_start: bool,
    /// Bare LFs stored as CRLF (`BareNewline::Normalize`).
    normalized: usize,
    /// Octets of the current line so far (before unstuffing, without its line ending).
    line_len: usize,
    /// The current line began (after a CRLF) with a dot.
    first_dot: bool,
    /// The previous byte was a CR whose follower has not been seen yet.
    pending_cr: bool,
}

impl DataScanner {
    pub fn new(limits: DataLimits) -> DataScanner {
        DataScanner {
            limits,
            out: Vec::new(),
            failure: None,
            line_after_crlf: true,
            line_start: true,
            normalized: 0,
            line_len: 0,
            first_dot: false,
            pending_cr: false,
        }
    }

    /// Scans `buf`. Returns `Some(n)` when the end of data was found after `n` bytes of `buf`
    /// (the rest belongs to the next command), `None` when all of `buf` was content.
    pub fn feed(&mut self, buf: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < buf.len() {
            if self.pending_cr {
                self.pending_cr = false;
                if buf[i] == b'\n' {
                    i += 1;
                    if self.line_after_crlf && self.first_dot && self.line_len == 1 {
                        return Some(i);
                    }
                    self.emit(b"\r\n");
                    self.new_line(true);
                } else {
                    // A bare CR: never a line ending for termination, and the message is bad.
                    self.fail(Failure::BareLineEnding);
                    self.new_line(false);
                }
                continue;
            }
            match buf[i] {
                b'\r' => {
                    self.pending_cr = true;
                    i += 1;
                }
                b'\n' => {
                    match self.limits.bare_newline {
                        BareNewline::Reject => {
                            self.fail(Failure::BareLineEnding);
                            self.new_line(false);
                        }
                        BareNewline::Normalize => {
                            self.normalized += 1;
                            self.emit(b"\r\n");
                            // A line like any other for content, but never an end of DATA.
                            self.new_line(false);
                            self.line_start = true;
                        }
                    }
                    i += 1;
                }
                _ => {
                    let end = buf[i..]
                        .iter()
                        .position(|&b| b == b'\r' || b == b'\n')
                        .map_or(buf.len(), |p| i + p);
                    let mut run = &buf[i..end];
                    if self.line_len == 0 && self.line_start && run[0] == b'.' {
                        self.first_dot = true;
                        run = &run[1..];
                    }
                    self.line_len = self.line_len.saturating_add(end - i);
                    if self.line_len > self.limits.max_line {
                        self.fail(Failure::LineTooLong);
                    }
                    self.emit(run);
                    i = end;
                }
            }
        }
        None
    }

    /// Bare LFs stored as CRLF so far (always 0 under `BareNewline::Reject`).
    pub fn normalized(&self) -> usize {
        self.normalized
    }

    /// The outcome once [`DataScanner::feed`] has found the end.
    pub fn finish(self) -> DataOutcome {
        match self.failure {
            None => DataOutcome::Complete(self.out),
            Some(Failure::TooBig) => DataOutcome::TooBig,
            Some(Failure::LineTooLong) => DataOutcome::LineTooLong,
            Some(Failure::BareLineEnding) => DataOutcome::BareLineEnding,
        }
    }

    fn new_line(&mut self, after_crlf: bool) {
        self.line_after_crlf = after_crlf;
        self.line_start = after_crlf;
        self.line_len = 0;
        self.first_dot = false;
    }

    fn emit(&mut self, bytes: &[u8]) {
        if self.failure.is_some() || bytes.is_empty() {
            return;
        }
        if (self.out.len() + bytes.len()) as u64 > self.limits.max_size {
            self.fail(Failure::TooBig);
        } else {
            self.out.extend_from_slice(bytes);
        }
    }

    fn fail(&mut self, failure: Failure) {
        if self.failure.is_none() {
            self.failure = Some(failure);
            self.out = Vec::new();
        }
    }
}

/// Reads DATA content up to and including `CRLF . CRLF`, leaving what follows in `r`.
/// Returns the outcome and how many bare LFs were stored as CRLF (for the session's log).
/// An end of stream before the end of data is `UnexpectedEof`.
pub async fn read_data<R: AsyncBufRead + Unpin>(
    r: &mut R,
    limits: DataLimits,
) -> io::Result<(DataOutcome, usize)> {
    let mut scanner = DataScanner::new(limits);
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in DATA",
            ));
        }
        match scanner.feed(buf) {
            Some(n) => {
                r.consume(n);
                let normalized = scanner.normalized();
                return Ok((scanner.finish(), normalized));
            }
            None => {
                let n = buf.len();
                r.consume(n);
            }
        }
    }
}

/// A message arriving in BDAT chunks (RFC 3030). Content is kept only while the running total
/// is within `max_size`; the bare-line-ending and line-length checks run on the whole
/// message at [`ChunkAssembly::finish`], because a CRLF may be split across two chunks.
#[derive(Debug)]
pub struct ChunkAssembly {
    limits: DataLimits,
    content: Vec<u8>,
    total: u64,
    too_big: bool,
}

impl ChunkAssembly {
    pub fn new(limits: DataLimits) -> ChunkAssembly {
        ChunkAssembly {
            limits,
            content: Vec::new(),
            total: 0,
            too_big: false,
        }
    }

    /// Octets received so far, kept or not.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The size limit has been passed; later chunks are drained and dropped.
    pub fn is_too_big(&self) -> bool {
        self.too_big
    }

    fn mark_too_big(&mut self) {
        self.too_big = true;
        self.content = Vec::new();
    }

    /// Checks the assembled message (bare LFs normalized first if the policy says so).
    /// Content that does not end in CRLF gets one. Returns the outcome and how many bare
    /// LFs became CRLF.
    pub fn finish(mut self) -> (DataOutcome, usize) {
        if self.too_big {
            return (DataOutcome::TooBig, 0);
        }
        let mut normalized = 0;
        if self.limits.bare_newline == BareNewline::Normalize {
            (self.content, normalized) = normalize_bare_lf(std::mem::take(&mut self.content));
        }
        (self.check(), normalized)
    }

    fn check(mut self) -> DataOutcome {
        if has_bare_line_ending(&self.content) {
            return DataOutcome::BareLineEnding;
        }
        let longest = self
            .content
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
            .max()
            .unwrap_or(0);
        if longest > self.limits.max_line {
            return DataOutcome::LineTooLong;
        }
        if !self.content.is_empty() && !self.content.ends_with(b"\r\n") {
            self.content.extend_from_slice(b"\r\n");
        }
        DataOutcome::Complete(self.content)
    }
}

/// Reads exactly `size` octets of one BDAT chunk into `assembly` (no dot handling). Octets
/// past the size limit are read and dropped, never buffered.
pub async fn read_chunk<R: AsyncBufRead + Unpin>(
    r: &mut R,
    size: u64,
    assembly: &mut ChunkAssembly,
) -> io::Result<()> {
    assembly.total = assembly.total.saturating_add(size);
    if assembly.total > assembly.limits.max_size {
        assembly.mark_too_big();
    } else {
        assembly.content.reserve(size as usize);
    }
    let mut remaining = size;
    while remaining > 0 {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in BDAT",
            ));
        }
        let n = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        if !assembly.too_big {
            assembly.content.extend_from_slice(&buf[..n]);
        }
        r.consume(n);
        remaining -= n as u64;
    }
    Ok(())
}

/// `content` with every LF not preceded by CR made CRLF, and how many there were. A bare
/// CR stays (and is refused by the caller). Allocates only when there is one.
fn normalize_bare_lf(content: Vec<u8>) -> (Vec<u8>, usize) {
    let bare = content
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' && (i == 0 || content[i - 1] != b'\r'))
        .count();
    if bare == 0 {
        return (content, 0);
    }
    let mut out = Vec::with_capacity(content.len() + bare);
    for (i, &b) in content.iter().enumerate() {
        if b == b'\n' && (i == 0 || content[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    (out, bare)
}

/// True when `content` has an LF not preceded by CR, or a CR not followed by LF.
pub fn has_bare_line_ending(content: &[u8]) -> bool {
    let mut i = 0;
    while let Some(p) = content[i..].iter().position(|&b| b == b'\r' || b == b'\n') {
        let at = i + p;
        if content[at] == b'\n' {
            return true; // an LF reached here was not consumed as part of a CRLF
        }
        if content.get(at + 1) != Some(&b'\n') {
            return true;
        }
        i = at + 2;
    }
    false
}

/// The DATA wire form of `content` (client direction): every line that starts with `.` gets
/// another, a final CRLF is added if missing, then the `.` CRLF terminator. A line start is
/// recognised after any CR or LF, so even content with a bare line ending cannot end the
/// transfer early; callers should still refuse such content (see [`has_bare_line_ending`]).
pub fn dot_stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 64 + 5);
    let mut line_start = true;
    for &b in content {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n' || b == b'\r';
    }
    if !content.is_empty() && !content.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, BufReader};

    const LIMITS: DataLimits = DataLimits {
        max_size: 10_000,
        max_line: 998,
        bare_newline: BareNewline::Reject,
    };

    /// Reads one DATA from `input` and returns the outcome and the bytes left after it.
    async fn data(input: &[u8], limits: DataLimits) -> (DataOutcome, Vec<u8>) {
        let mut r = input;
        let (outcome, _) = read_data(&mut r, limits).await.unwrap();
        (outcome, r.to_vec())
    }

    /// The same, through a reader that hands over one byte at a time.
    async fn data_bytewise(input: &[u8], limits: DataLimits) -> (DataOutcome, Vec<u8>) {
        let mut r = BufReader::with_capacity(1, input);
        let (outcome, _) = read_data(&mut r, limits).await.unwrap();
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        (outcome, rest)
    }

    /// `input` read whole and byte by byte: each test checks that both read the same.
    async fn both_ways(input: &[u8], limits: DataLimits) -> [(DataOutcome, Vec<u8>); 2] {
        [
            data(input, limits).await,
            data_bytewise(input, limits).await,
        ]
    }

    /// `input` reads (both ways) as one message of `content`, followed by `QUIT`.
    async fn one_message_then_quit(input: &[u8], limits: DataLimits, content: &[u8]) {
        for (outcome, rest) in both_ways(input, limits).await {
            assert_eq!(outcome, DataOutcome::Complete(content.to_vec()));
            assert_eq!(rest, b"QUIT\r\n");
        }
    }

    /// A message whose body ends with `fake` (something like the end of data), then
    /// commands smuggled in after it, then the real end and `QUIT`.
    fn smuggling_attempt(fake: &[u8]) -> Vec<u8> {
        let smuggled: &[u8] =
            b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@y.example>\r\nDATA\r\nforged\r\n";
        [
            b"Subject: one\r\n\r\nbody",
            fake,
            smuggled,
            b".\r\nQUIT\r\n",
        ]
        .concat()
    }

    #[tokio::test]
    async fn simple_message_and_what_follows() {
        let input = b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n";
        one_message_then_quit(input, LIMITS, b"Subject: hi\r\n\r\nbody\r\n").await;
    }

    #[tokio::test]
    async fn empty_message() {
        let (outcome, rest) = data(b".\r\nNOOP\r\n", LIMITS).await;
        assert_eq!(outcome, DataOutcome::Complete(Vec::new()));
        assert_eq!(rest, b"NOOP\r\n");
    }

    #[tokio::test]
    async fn dot_unstuffing() {
        let input = b"..leading\r\n.\x20x\r\n...\r\nmid.dle\r\n..\r\n.\r\n";
        let (outcome, _) = data_bytewise(input, LIMITS).await;
        assert_eq!(
            outcome,
            DataOutcome::Complete(b".leading\r\n x\r\n..\r\nmid.dle\r\n.\r\n".to_vec())
        );
    }

    #[tokio::test]
    async fn smuggling_variants_never_terminate_and_are_rejected() {
        let fake_ends: [&[u8]; 9] = [
            b"\n.\n",
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r.\r",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\n.\r",
            b"\r\n.\0\r\n",
            b"\r\n\0.\r\n",
        ];
        for fake in fake_ends {
            for (outcome, rest) in both_ways(&smuggling_attempt(fake), LIMITS).await {
                // Whatever the fake end, the smuggled commands stay inside the one message
                // and the bytes after the real end are the next command.
                assert_eq!(rest, b"QUIT\r\n", "fake end {fake:?}");
                if has_bare_line_ending(fake) {
                    assert_eq!(outcome, DataOutcome::BareLineEnding, "fake end {fake:?}");
                } else {
                    // NUL variants with proper CRLFs are content: one message, never an end.
                    let DataOutcome::Complete(c) = outcome else {
                        panic!("fake end {fake:?}")
                    };
                    assert!(c.windows(9).any(|w| w == b"MAIL FROM"));
                }
            }
        }
    }

    const NORMALIZE: DataLimits = DataLimits {
        bare_newline: BareNewline::Normalize,
        ..LIMITS
    };

    #[tokio::test]
    async fn normalize_turns_bare_lf_into_crlf_and_only_crlf_dot_crlf_ends() {
        let input = b"Subject: lf\n\nline one\n..dotted\r\nend\n.\nstill content\r\n.\r\nQUIT\r\n";
        let content = b"Subject: lf\r\n\r\nline one\r\n.dotted\r\nend\r\n\r\nstill content\r\n";
        one_message_then_quit(input, NORMALIZE, content).await;
        let mut r: &[u8] = b"a\nb\n\r\n.\r\n";
        let (outcome, normalized) = read_data(&mut r, NORMALIZE).await.unwrap();
        assert_eq!(outcome, DataOutcome::Complete(b"a\r\nb\r\n\r\n".to_vec()));
        assert_eq!(normalized, 2);
        // Plain CRLF content: nothing to normalize.
        let mut r: &[u8] = b"a\r\n.\r\n";
        assert_eq!(read_data(&mut r, NORMALIZE).await.unwrap().1, 0);
    }

    #[tokio::test]
    async fn smuggling_under_normalize_stays_inside_the_one_message() {
        let fake_ends: [&[u8]; 7] = [
            b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r", b"\n.\r",
        ];
        for fake in fake_ends {
            for (outcome, rest) in both_ways(&smuggling_attempt(fake), NORMALIZE).await {
                assert_eq!(rest, b"QUIT\r\n", "fake end {fake:?}");
                if has_bare_line_ending(&normalize_bare_lf(fake.to_vec()).0) {
                    // A bare CR is refused under both policies.
                    assert_eq!(outcome, DataOutcome::BareLineEnding, "fake end {fake:?}");
                } else {
                    let DataOutcome::Complete(c) = outcome else {
                        panic!("fake end {fake:?}: {outcome:?}")
                    };
                    assert!(c.windows(9).any(|w| w == b"MAIL FROM"), "fake end {fake:?}");
                    assert!(!has_bare_line_ending(&c), "fake end {fake:?}: {c:?}");
                }
            }
        }
    }

    #[tokio::test]
    async fn bdat_under_normalize() {
        let mut asm = ChunkAssembly::new(NORMALIZE);
        let mut input: &[u8] = b"a\nb\r\nc\n";
        read_chunk(&mut input, 7, &mut asm).await.unwrap();
        assert_eq!(
            asm.finish(),
            (DataOutcome::Complete(b"a\r\nb\r\nc\r\n".to_vec()), 2)
        );
        let mut asm = ChunkAssembly::new(NORMALIZE);
        let mut input: &[u8] = b"a\rb";
        read_chunk(&mut input, 3, &mut asm).await.unwrap();
        assert_eq!(asm.finish().0, DataOutcome::BareLineEnding);
    }

    #[test]
    fn scanner_result_does_not_depend_on_where_reads_split() {
        let inputs: [&[u8]; 4] = [
            b"a\r\n..b\r\n.\r\nNEXT",
            b"a\n.\nMAIL\r\n.\r\nNEXT",
            b"a\r.\r\nx\r\n.\r\nNEXT",
            b".\r\nNEXT",
        ];
        for (input, limits) in inputs.iter().flat_map(|i| [(*i, LIMITS), (*i, NORMALIZE)]) {
            let whole = {
                let mut s = DataScanner::new(limits);
                let n = s.feed(input).unwrap();
                (n, s.finish())
            };
            for cut in 0..=input.len() {
                let mut s = DataScanner::new(limits);
                let n = match s.feed(&input[..cut]) {
                    Some(n) => n,
                    None => cut + s.feed(&input[cut..]).unwrap(),
                };
                assert_eq!((n, s.finish()), whole, "input {input:?} cut at {cut}");
            }
            assert_eq!(&input[whole.0..], b"NEXT");
        }
    }

    #[tokio::test]
    async fn bare_lf_at_start() {
        let (outcome, rest) = data(b"\n.\nMAIL FROM:<a@b>\r\n.\r\nRSET\r\n", LIMITS).await;
        assert_eq!(outcome, DataOutcome::BareLineEnding);
        assert_eq!(rest, b"RSET\r\n");
    }

    #[tokio::test]
    async fn size_limit_counts_unstuffed_octets_and_drains() {
        let limits = DataLimits {
            max_size: 10,
            max_line: 998,
            bare_newline: BareNewline::Reject,
        };
        let (outcome, rest) = data(b"12345678\r\n.\r\nNOOP\r\n", limits).await;
        assert_eq!(outcome, DataOutcome::Complete(b"12345678\r\n".to_vec()));
        assert_eq!(rest, b"NOOP\r\n");
        let (outcome, rest) = data(b"123456789\r\nmore\r\n.\r\nNOOP\r\n", limits).await;
        assert_eq!(outcome, DataOutcome::TooBig);
        assert_eq!(rest, b"NOOP\r\n");
        let (outcome, _) = data(b"..2345678\r\n.\r\n", limits).await;
        assert_eq!(outcome, DataOutcome::Complete(b".2345678\r\n".to_vec()));
    }

    #[tokio::test]
    async fn long_lines_are_counted_not_stored() {
        let limits = DataLimits {
            max_size: 1 << 20,
            max_line: 10,
            bare_newline: BareNewline::Reject,
        };
        let (outcome, _) = data(b"0123456789\r\n.\r\n", limits).await;
        assert!(matches!(outcome, DataOutcome::Complete(_)));
        let mut input = vec![b'x'; 100_000];
        input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
        let (outcome, rest) = data_bytewise(&input, limits).await;
        assert_eq!(outcome, DataOutcome::LineTooLong);
        assert_eq!(rest, b"QUIT\r\n");
    }

    #[test]
    fn scanner_memory_stays_bounded_after_failure() {
        let mut s = DataScanner::new(DataLimits {
            max_size: 100,
            max_line: 50,
            bare_newline: BareNewline::Reject,
        });
        for _ in 0..1000 {
            assert_eq!(s.feed(&[b'y'; 1000]), None);
        }
        assert!(s.out.capacity() <= 100);
        assert_eq!(s.feed(b"\r\n.\r\nNEXT"), Some(5));
        assert_eq!(s.finish(), DataOutcome::LineTooLong);
    }

    #[tokio::test]
    async fn eof_inside_data_is_an_error() {
        let mut r: &[u8] = b"partial\r\n";
        let err = read_data(&mut r, LIMITS).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn bdat_chunks_split_crlf() {
        let mut input: &[u8] = b"line one\rXX\nline two\r\nextra";
        let mut asm = ChunkAssembly::new(LIMITS);
        read_chunk(&mut input, 9, &mut asm).await.unwrap(); // ends with the CR
        assert_eq!(input, b"XX\nline two\r\nextra");
        let mut rest: &[u8] = b"\nline two\r\n";
        read_chunk(&mut rest, 11, &mut asm).await.unwrap();
        assert_eq!(asm.total(), 20);
        assert_eq!(
            asm.finish().0,
            DataOutcome::Complete(b"line one\r\nline two\r\n".to_vec())
        );
    }

    #[tokio::test]
    async fn bdat_bare_lf_and_missing_final_crlf() {
        let mut asm = ChunkAssembly::new(LIMITS);
        let mut input: &[u8] = b"a\nb";
        read_chunk(&mut input, 3, &mut asm).await.unwrap();
        assert_eq!(asm.finish().0, DataOutcome::BareLineEnding);
        let mut asm = ChunkAssembly::new(LIMITS);
        let mut input: &[u8] = b"a\r\n.\r\nb";
        read_chunk(&mut input, 7, &mut asm).await.unwrap();
        assert_eq!(
            asm.finish().0,
            DataOutcome::Complete(b"a\r\n.\r\nb\r\n".to_vec())
        );
    }

    #[tokio::test]
    async fn bdat_size_limit_drains_without_storing() {
        let limits = DataLimits {
            max_size: 8,
            max_line: 998,
            bare_newline: BareNewline::Reject,
        };
        let mut asm = ChunkAssembly::new(limits);
        let mut input: &[u8] = b"12345678abcdefNEXT";
        read_chunk(&mut input, 5, &mut asm).await.unwrap();
        assert!(!asm.is_too_big());
        read_chunk(&mut input, 9, &mut asm).await.unwrap();
        assert!(asm.is_too_big());
        assert!(asm.content.is_empty());
        assert_eq!(input, b"NEXT");
        assert_eq!(asm.finish().0, DataOutcome::TooBig);
    }

    #[tokio::test]
    async fn bdat_eof_is_an_error() {
        let mut asm = ChunkAssembly::new(LIMITS);
        let mut input: &[u8] = b"abc";
        assert!(read_chunk(&mut input, 10, &mut asm).await.is_err());
    }

    #[test]
    fn bare_line_endings() {
        assert!(!has_bare_line_ending(b""));
        assert!(!has_bare_line_ending(b"a\r\nb\r\n"));
        assert!(has_bare_line_ending(b"a\nb"));
        assert!(has_bare_line_ending(b"\n"));
        assert!(has_bare_line_ending(b"a\rb"));
        assert!(has_bare_line_ending(b"a\r"));
        assert!(has_bare_line_ending(b"a\r\r\n"));
        assert!(has_bare_line_ending(b"a\r\n\n"));
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b"a\r\n"), b"a\r\n.\r\n");
        assert_eq!(dot_stuff(b"a"), b"a\r\n.\r\n");
        assert_eq!(
            dot_stuff(b".a\r\n.\r\nb.c\r\n"),
            b"..a\r\n..\r\nb.c\r\n.\r\n"
        );
        assert_eq!(dot_stuff(b"x\n.\n"), b"x\n..\n\r\n.\r\n");
    }

    #[tokio::test]
    async fn dot_stuff_round_trips_through_read_data() {
        let content = b"..\r\n.\r\n. x\r\nplain\r\n".to_vec();
        let (outcome, rest) = data(&dot_stuff(&content), LIMITS).await;
        assert_eq!(outcome, DataOutcome::Complete(content));
        assert!(rest.is_empty());
    }
}
