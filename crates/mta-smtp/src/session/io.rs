//! The session's stream plumbing: reads with an idle timeout and a hard session deadline,
//! and bounded command-line reading.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The server is shutting down and this session's grace is over (see
/// [`super::SessionHooks::closing`]): what a read fails with from then on.
#[derive(Debug, thiserror::Error)]
#[error("the server is shutting down")]
pub(crate) struct ShuttingDown;

/// Whether a read failed because the server is shutting down.
pub(crate) fn is_shutting_down(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<ShuttingDown>())
}

/// Resolves when the session must end (the server's shutdown grace is over).
pub type Closing = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A stream whose reads fail with `TimedOut` after `idle` without progress, or at the hard
/// `deadline`, whichever comes first, and with [`ShuttingDown`] once `closing` resolves
/// (checked before every read, so a client streaming content fast is stopped too).
/// Writes pass through (the session times them itself), so the last reply still goes out.
pub(crate) struct Deadlined<S> {
    inner: S,
    idle: Duration,
    deadline: Instant,
    sleep: Pin<Box<Sleep>>,
    armed: bool,
    closing: Option<Closing>,
    closed: bool,
}

impl<S> Deadlined<S> {
    pub(crate) fn new(inner: S, idle: Duration, deadline: Instant) -> Deadlined<S> {
        Deadlined {
            inner,
            idle,
            deadline,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            armed: false,
            closing: None,
            closed: false,
        }
    }

    /// Ends reads with [`ShuttingDown`] once `closing` resolves.
    pub(crate) fn close_when(&mut self, closing: Option<Closing>) {
        self.closing = closing;
    }

    /// Sets the idle time for the reads that start from now on.
    pub(crate) fn set_idle(&mut self, idle: Duration) {
        self.idle = idle;
        self.armed = false;
    }

    /// The stream itself (for the STARTTLS upgrade).
    pub(crate) fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadlined<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(closing) = &mut this.closing {
            if closing.as_mut().poll(cx).is_ready() {
                this.closing = None;
                this.closed = true;
            }
        }
        if this.closed {
            return Poll::Ready(Err(io::Error::other(ShuttingDown)));
        }
        if !this.armed {
            let when = (Instant::now() + this.idle).min(this.deadline);
            this.sleep.as_mut().reset(when);
            this.armed = true;
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.armed = false;
                Poll::Ready(result)
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.armed = false;
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "read timed out",
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadlined<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// One command line as read from the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CommandLine {
    /// The line with its LF (and CR, if sent).
    Line(Vec<u8>),
    /// Longer than the limit; the rest up to LF was read and dropped.
    TooLong,
    /// The client closed the connection (a partial last line is dropped).
    Eof,
}

/// Reads up to and including the next LF, keeping at most `max` octets.
pub(crate) async fn read_command_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> io::Result<CommandLine> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(CommandLine::Eof);
        }
        let (take, complete) = match buf.iter().position(|&b| b == b'\n') {
            Some(p) => (p + 1, true),
            None => (buf.len(), false),
        };
        if !too_long {
            if line.len() + take > max {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(&buf[..take]);
            }
        }
        r.consume(take);
        if complete {
            return Ok(if too_long {
                CommandLine::TooLong
            } else {
                CommandLine::Line(line)
            });
        }
    }
}

/// Whether `r`'s buffer already holds a complete line (so replies may wait: RFC 2920).
pub(crate) fn has_buffered_line<S: AsyncRead>(r: &tokio::io::BufReader<S>) -> bool {
    r.buffer().contains(&b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    #[tokio::test]
    async fn command_lines_are_bounded() {
        let mut input = b"NOOP\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 10_000));
        input.extend_from_slice(b"\r\nQUIT\r\npartial");
        let mut r = BufReader::with_capacity(16, input.as_slice());
        for expected in [
            CommandLine::Line(b"NOOP\r\n".to_vec()),
            CommandLine::TooLong,
            CommandLine::Line(b"QUIT\r\n".to_vec()),
            CommandLine::Eof,
        ] {
            assert_eq!(read_command_line(&mut r, 100).await.unwrap(), expected);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_hard_deadlines() {
        let (_client, server) = tokio::io::duplex(64);
        let start = Instant::now();
        let mut d = Deadlined::new(
            server,
            Duration::from_secs(10),
            start + Duration::from_secs(25),
        );
        let mut buf = [0u8; 8];
        let err = tokio::io::AsyncReadExt::read(&mut d, &mut buf)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
        d.set_idle(Duration::from_secs(100));
        let err = tokio::io::AsyncReadExt::read(&mut d, &mut buf)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(Instant::now() - start, Duration::from_secs(25));
    }
}
