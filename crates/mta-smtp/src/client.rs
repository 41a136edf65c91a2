//! The SMTP client side of one outbound session: greeting, EHLO (HELO fallback),
//! STARTTLS (RFC 3207), MAIL, RCPT, DATA, RSET, QUIT — one command, one reply (or one
//! pipelined group, RFC 2920), so every recipient's reply is seen. Used by `oseshlrN`;
//! it lives here, beside the server session, so one crate owns the SMTP grammar for both
//! directions (as KumoMTA's `rfc5321` crate does).
//!
//! Why not lettre's `AsyncSmtpConnection` (DESIGN.md lists it): its `message()` dot-stuffs
//! and always appends `CRLF . CRLF`, so content already ending in CRLF gains a line, and
//! its stuffing only sees line starts after CRLF. A relay must be byte-exact and must
//! never let a bare LF end the transfer, so this client writes [`crate::dot_stuff`] of
//! the spooled bytes itself and reads replies with [`crate::read_reply`].
//!
//! STARTTLS: after the 220, anything the server sent beyond it is discarded before the
//! handshake (the client-side twin of the injection defence), and the caller says EHLO
//! again over TLS.
//!
//! `SMTPClientDebug` (the level given to [`SmtpClient::connect_with_debug`]): 1 logs the
//! connection and its end, 2 also every command sent and every reply line received, 3 also
//! the byte counts of each (message data is counted, never logged). The lines have target
//! [`mta_types::DEBUG_TARGET`] and carry the caller's span (list, qid).

use crate::session::TlsInfo;
use crate::{dot_stuff, read_reply, Reply, ReplyError};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// Why the session cannot go on (every unfinished recipient is retried).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {addr} timed out after {after:?}")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    /// Connecting to an `inet:`/`unix:` endpoint (LMTP) failed.
    #[error("connect to {endpoint} failed: {source}")]
    EndpointConnect {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("connect to {endpoint} timed out after {after:?}")]
    EndpointTimeout { endpoint: String, after: Duration },
    #[error("timeout after {after:?} waiting for the reply to {command}")]
    Timeout { command: String, after: Duration },
    #[error("lost connection after {command}: {source}")]
    Lost { command: String, source: ReplyError },
    #[error("{command} refused: {reply}")]
    Refused { command: String, reply: String },
    #[error("write failed during {command}: {source}")]
    Write {
        command: String,
        source: std::io::Error,
    },
    /// The TLS handshake after STARTTLS failed (the certificate, the protocol, a reset).
    #[error("TLS handshake failed: {reason}")]
    Handshake { reason: String },
}

impl SessionError {
    /// Whether the failure is the TLS handshake (under `may`, a reason to retry in
    /// plaintext on a new connection).
    pub fn is_handshake(&self) -> bool {
        matches!(self, SessionError::Handshake { .. })
    }
}

/// What the server offered in its EHLO reply.
#[derive(Clone, Debug, Default)]
pub struct Extensions {
    /// RFC 2920: RSET, MAIL, the RCPTs and DATA go out in one write.
    pub pipelining: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub size: Option<u64>,
    /// RFC 3207.
    pub starttls: bool,
}

impl Extensions {
    pub(crate) fn from_ehlo(reply: &Reply) -> Extensions {
        let mut ext = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let keyword = words.next().unwrap_or("").to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => ext.pipelining = true,
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "STARTTLS" => ext.starttls = true,
                "SIZE" => ext.size = words.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0),
                _ => {}
            }
        }
        ext
    }
}

/// The client's stream: plaintext, TLS after STARTTLS, or a Unix socket (LMTP).
enum Conn {
    Plain(TcpStream),
    Unix(tokio::net::UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Gone,
}

fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "TLS handshake failed")
}

/// What the three kinds of stream have in common.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Conn {
    /// The stream the I/O goes to; `None` once a failed handshake has taken it.
    fn stream(self: Pin<&mut Self>) -> Option<Pin<&mut dyn Stream>> {
        match self.get_mut() {
            Conn::Plain(s) => Some(Pin::new(s)),
            Conn::Unix(s) => Some(Pin::new(s)),
            Conn::Tls(s) => Some(Pin::new(s.as_mut())),
            Conn::Gone => None,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Some(s) => s.poll_read(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.stream() {
            Some(s) => s.poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Some(s) => s.poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Some(s) => s.poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// Who the client talks to, for the debug lines.
enum Peer {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

impl Peer {
    /// `[ip]`, or `unix:/path`.
    fn host(&self) -> String {
        match self {
            Peer::Tcp(a) => format!("[{}]", a.ip()),
            Peer::Unix(p) => format!("unix:{}", p.display()),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "[{}]:{}", a.ip(), a.port()),
            Peer::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The replies to one message's envelope, however it was sent.
#[derive(Clone, Debug)]
pub struct EnvelopeReplies {
    pub mail: Reply,
    /// One per recipient sent (all of them once MAIL was accepted, in order); empty when
    /// MAIL was refused.
    pub rcpts: Vec<Reply>,
    /// The reply to DATA (or to the content after it); `None` when it was not sent.
    pub data: Option<Reply>,
}

impl EnvelopeReplies {
    /// Whether any recipient was accepted, so the content is worth sending.
    pub fn any_rcpt_accepted(&self) -> bool {
        self.rcpts.iter().any(Reply::is_positive)
    }
}

pub struct SmtpClient {
    stream: BufReader<Conn>,
    timeout: Duration,
    pub ext: Extensions,
    /// The TLS session, after a successful STARTTLS.
    pub tls: Option<TlsInfo>,
    /// `SMTPClientDebug` for this session.
    debug: u8,
    peer: Peer,
}

impl Drop for SmtpClient {
    fn drop(&mut self) {
        if self.debug >= 1 {
            tracing::info!(target: mta_types::DEBUG_TARGET, "SMTPClientDebug: disconnected from {}", self.peer);
        }
    }
}

impl SmtpClient {
    /// Connects and reads the greeting (returned as is: the caller decides about 4xx/5xx).
    pub async fn connect(
        addr: SocketAddr,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<(SmtpClient, Reply), SessionError> {
        Self::connect_with_debug(addr, connect_timeout, command_timeout, 0).await
    }

    /// [`SmtpClient::connect`] with the session's `SMTPClientDebug` level.
    pub async fn connect_with_debug(
        addr: SocketAddr,
        connect_timeout: Duration,
        command_timeout: Duration,
        debug: u8,
    ) -> Result<(SmtpClient, Reply), SessionError> {
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(SessionError::ConnectTimeout {
                    addr,
                    after: connect_timeout,
                })
            }
            Ok(Err(source)) => return Err(SessionError::Connect { addr, source }),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        Self::greeted(Conn::Plain(stream), Peer::Tcp(addr), command_timeout, debug).await
    }

    /// Connects to an `inet:host:port` or `unix:/path` endpoint (LMTP) and reads the
    /// greeting, as [`SmtpClient::connect`].
    pub async fn connect_endpoint(
        endpoint: &mta_types::Endpoint,
        connect_timeout: Duration,
        command_timeout: Duration,
        debug: u8,
    ) -> Result<(SmtpClient, Reply), SessionError> {
        use mta_types::Endpoint;
        let failed = |source| SessionError::EndpointConnect {
            endpoint: endpoint.to_string(),
            source,
        };
        let connecting = async {
            match endpoint {
                Endpoint::Inet { host, port } => {
                    let s = TcpStream::connect((host.as_str(), *port)).await?;
                    let _ = s.set_nodelay(true);
                    let peer = Peer::Tcp(s.peer_addr()?);
                    Ok((Conn::Plain(s), peer))
                }
                Endpoint::Unix(path) => {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok((Conn::Unix(s), Peer::Unix(path.clone())))
                }
            }
        };
        let (conn, peer) = tokio::time::timeout(connect_timeout, connecting)
            .await
            .map_err(|_| SessionError::EndpointTimeout {
                endpoint: endpoint.to_string(),
                after: connect_timeout,
            })?
            .map_err(failed)?;
        Self::greeted(conn, peer, command_timeout, debug).await
    }

    /// The client over a connected stream, and the server's greeting.
    async fn greeted(
        conn: Conn,
        peer: Peer,
        command_timeout: Duration,
        debug: u8,
    ) -> Result<(SmtpClient, Reply), SessionError> {
        let mut client = SmtpClient {
            stream: BufReader::new(conn),
            timeout: command_timeout,
            ext: Extensions::default(),
            tls: None,
            debug,
            peer,
        };
        if debug >= 1 {
            tracing::info!(target: mta_types::DEBUG_TARGET, "SMTPClientDebug: connected to {}", client.peer);
        }
        let greeting = client.reply("connect").await?;
        Ok((client, greeting))
    }

    pub(crate) async fn reply(&mut self, command: &str) -> Result<Reply, SessionError> {
        let read = read_reply(&mut self.stream);
        let r = within(self.timeout, command, read, |command, source| {
            SessionError::Lost { command, source }
        })
        .await?;
        self.trace_reply(&r);
        Ok(r)
    }

    /// Levels 2 and 3: the command lines that go out (`bytes` is protocol, not content).
    fn trace_commands(&self, bytes: &[u8]) {
        if self.debug >= 2 {
            let text = String::from_utf8_lossy(bytes);
            for line in text.split_terminator("\r\n") {
                tracing::info!(target: mta_types::DEBUG_TARGET, "SMTPClientDebug: > {line}");
            }
        }
        if self.debug >= 3 {
            tracing::info!(target: mta_types::DEBUG_TARGET, "SMTPClientDebug: sent {} bytes to {}", bytes.len(), self.peer.host());
        }
    }

    fn trace_reply(&self, reply: &Reply) {
        if self.debug < 2 {
            return;
        }
        let wire = reply.wire();
        for line in wire.split_terminator("\r\n") {
            tracing::info!(target: mta_types::DEBUG_TARGET, "SMTPClientDebug: < {line}");
        }
        if self.debug >= 3 {
            tracing::info!(target: mta_types::DEBUG_TARGET, "SMTPClientDebug: received {} bytes from {}", wire.len(), self.peer.host());
        }
    }

    pub(crate) async fn write(&mut self, command: &str, bytes: &[u8]) -> Result<(), SessionError> {
        let w = async {
            self.stream.get_mut().write_all(bytes).await?;
            self.stream.get_mut().flush().await
        };
        within(self.timeout, command, w, |command, source| {
            SessionError::Write { command, source }
        })
        .await
    }

    /// Sends one command line (CRLF added) and returns its reply.
    pub async fn command(&mut self, line: &str) -> Result<Reply, SessionError> {
        let verb = line.split_whitespace().next().unwrap_or("").to_string();
        let wire = format!("{line}\r\n");
        self.trace_commands(wire.as_bytes());
        self.write(&verb, wire.as_bytes()).await?;
        self.reply(&verb).await
    }

    /// MAIL, then each RCPT once MAIL is accepted, one command at a time (no PIPELINING, or
    /// a peer that must see each recipient's history first). A connection that breaks
    /// half-way gives back the replies it had, so refused recipients keep their own outcome.
    pub async fn mail_and_rcpts(
        &mut self,
        mail: &str,
        rcpts: &[String],
    ) -> Result<EnvelopeReplies, (Option<EnvelopeReplies>, SessionError)> {
        let mail = self.command(mail).await.map_err(|e| (None, e))?;
        let mut replies = EnvelopeReplies {
            mail,
            rcpts: Vec::new(),
            data: None,
        };
        if !replies.mail.is_positive() {
            return Ok(replies);
        }
        for line in rcpts {
            match self.command(line).await {
                Ok(r) => replies.rcpts.push(r),
                Err(e) => return Err((Some(replies), e)),
            }
        }
        Ok(replies)
    }

    /// Sends several commands in one write (RFC 2920; only when the server offers
    /// PIPELINING) and reads their replies, in order.
    pub async fn pipeline(&mut self, lines: &[String]) -> Result<Vec<Reply>, SessionError> {
        let mut wire = String::with_capacity(lines.iter().map(|l| l.len() + 2).sum());
        for line in lines {
            wire.push_str(line);
            wire.push_str("\r\n");
        }
        self.trace_commands(wire.as_bytes());
        self.write("pipelined commands", wire.as_bytes()).await?;
        let mut replies = Vec::with_capacity(lines.len());
        for line in lines {
            let verb = line.split_whitespace().next().unwrap_or("");
            replies.push(self.reply(verb).await?);
        }
        Ok(replies)
    }

    /// After a 354: the dot-stuffed content and the terminator; returns the final reply.
    pub async fn content(&mut self, content: &[u8]) -> Result<Reply, SessionError> {
        self.send_content(content).await?;
        self.reply("end of DATA").await
    }

    /// The dot-stuffed content and the terminator, without reading a reply (LMTP reads
    /// one per recipient).
    pub(crate) async fn send_content(&mut self, content: &[u8]) -> Result<(), SessionError> {
        let wire = dot_stuff(content);
        if self.debug >= 3 {
            tracing::info!(target: mta_types::DEBUG_TARGET, "SMTPClientDebug: sent {} bytes of message data to {}", wire.len(), self.peer.host());
        }
        self.write("DATA", &wire).await
    }

    /// After a 354 that is not wanted (no recipient was accepted): an empty message, so
    /// the session can go on (RFC 2920 section 3.1); its reply is of no interest.
    pub async fn abandon_data(&mut self) -> Result<(), SessionError> {
        self.write("DATA", b".\r\n").await?;
        self.reply("end of DATA").await.map(|_| ())
    }

    /// STARTTLS and the handshake, checking the certificate against `server_name` as
    /// `config` says. `Ok(Err(reply))`: the server refused STARTTLS (the session goes on in
    /// plaintext, if the caller allows). After `Ok(Ok(_))` the caller must say EHLO again.
    pub async fn starttls(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> Result<Result<TlsInfo, Reply>, SessionError> {
        let reply = self.command("STARTTLS").await?;
        if reply.code != Some(220) {
            return Ok(Err(reply));
        }
        let buffered = self.stream.buffer().len();
        self.stream.consume(buffered);
        let Conn::Plain(plain) = std::mem::replace(self.stream.get_mut(), Conn::Gone) else {
            return Err(SessionError::Handshake {
                reason: "STARTTLS on a TLS session".into(),
            });
        };
        let connect = tokio_rustls::TlsConnector::from(config).connect(server_name, plain);
        let tls = match tokio::time::timeout(self.timeout, connect).await {
            Err(_) => {
                return Err(SessionError::Handshake {
                    reason: format!("timed out after {:?}", self.timeout),
                })
            }
            Ok(Err(e)) => {
                return Err(SessionError::Handshake {
                    reason: e.to_string(),
                })
            }
            Ok(Ok(tls)) => tls,
        };
        let info = TlsInfo::of(tls.get_ref().1);
        *self.stream.get_mut() = Conn::Tls(Box::new(tls));
        self.ext = Extensions::default();
        self.tls = Some(info.clone());
        Ok(Ok(info))
    }

    /// EHLO, or HELO when EHLO is refused. Records the offered extensions.
    pub async fn hello(&mut self, name: &str) -> Result<Reply, SessionError> {
        let reply = self.command(&format!("EHLO {name}")).await?;
        if reply.is_positive() {
            self.ext = Extensions::from_ehlo(&reply);
            return Ok(reply);
        }
        if reply.closes_connection() {
            return Ok(reply);
        }
        self.ext = Extensions::default();
        self.command(&format!("HELO {name}")).await
    }

    /// AUTH PLAIN (RFC 4954, 4616) with an initial response; returns the server's reply
    /// (235 on success). Only over TLS: the caller checks [`SmtpClient::is_tls`]. The
    /// credentials never reach the SMTPClientDebug trace.
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> Result<Reply, SessionError> {
        use base64::Engine as _;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.trace_commands(b"AUTH PLAIN ***\r\n");
        self.write("AUTH", format!("AUTH PLAIN {token}\r\n").as_bytes())
            .await?;
        self.reply("AUTH").await
    }

    /// Whether STARTTLS has succeeded on this session.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// DATA, then the dot-stuffed content and the terminator; returns the final reply, or
    /// the reply to DATA when it was not 354.
    pub async fn data(&mut self, content: &[u8]) -> Result<Reply, SessionError> {
        let go = self.command("DATA").await?;
        if go.code != Some(354) {
            return Ok(go);
        }
        self.content(content).await
    }

    /// QUIT, best effort.
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            self.trace_commands(b"QUIT\r\n");
            if self.write("QUIT", b"QUIT\r\n").await.is_ok() {
                let _ = self.reply("QUIT").await;
            }
        })
        .await;
    }
}

/// `io`, the exchange of `command`, given `after` to finish: past it, `Timeout`; its
/// error, `failed(command, error)`.
async fn within<T, E>(
    after: Duration,
    command: &str,
    io: impl std::future::Future<Output = Result<T, E>>,
    failed: impl FnOnce(String, E) -> SessionError,
) -> Result<T, SessionError> {
    match tokio::time::timeout(after, io).await {
        Err(_) => Err(SessionError::Timeout {
            command: command.into(),
            after,
        }),
        Ok(result) => result.map_err(|e| failed(command.into(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ehlo_keywords() {
        let r = Reply::parse_lines(
            b"250-mx.test hello\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
        )
        .unwrap();
        let e = Extensions::from_ehlo(&r);
        assert!(e.eight_bit_mime && e.smtputf8);
        assert_eq!(e.size, Some(1000));
    }
}
