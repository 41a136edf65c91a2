//! STARTTLS (RFC 3207) and implicit TLS (RFC 8314): the session's stream, plain or TLS,
//! and the upgrade.
//!
//! Command injection (CVE-2011-0411 class): whatever the client pipelined after STARTTLS
//! is still plaintext sitting in our read buffer; it is DISCARDED before the handshake,
//! never read as if it had come over TLS. After the handshake the session starts over
//! (RFC 3207 4.2): the client must send EHLO again, and nothing it said before counts.

use super::{Flow, Session, SessionHooks, SessionState};
use crate::reply::Reply;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls;

/// What a TLS session negotiated, for the log and the Received header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3`, `TLSv1.2`.
    pub version: String,
    /// The IANA name, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

impl TlsInfo {
    /// Reads what a finished handshake negotiated (either side).
    pub fn of(conn: &rustls::CommonState) -> TlsInfo {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(other) => format!("{other:?}"),
            None => "unknown".to_string(),
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_else(|| "unknown".to_string());
        TlsInfo { version, cipher }
    }
}

impl std::fmt::Display for TlsInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} with cipher {}", self.version, self.cipher)
    }
}

/// The session's stream: plaintext until STARTTLS (or from the start on an implicit-TLS
/// listener), TLS after.
pub(crate) enum Conn<S> {
    Plain(S),
    Tls(Box<tokio_rustls::server::TlsStream<S>>),
    /// Only while a handshake owns the stream (or after one failed).
    Gone,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Runs the server handshake on the plain stream; on success the stream is TLS.
    pub(crate) async fn upgrade(
        &mut self,
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<TlsInfo> {
        let Conn::Plain(plain) = std::mem::replace(self, Conn::Gone) else {
            return Err(io::Error::other("the stream is not plaintext"));
        };
        let tls = tokio_rustls::TlsAcceptor::from(config)
            .accept(plain)
            .await?;
        let info = TlsInfo::of(tls.get_ref().1);
        *self = Conn::Tls(Box::new(tls));
        Ok(info)
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "TLS handshake failed")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Gone => Poll::Ready(Ok(())),
        }
    }
}

impl<S, H> Session<'_, S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: SessionHooks,
{
    /// Whether STARTTLS may be offered now.
    pub(super) fn starttls_offered(&self) -> bool {
        self.txn.tls.is_none() && self.hooks.tls_config().is_some()
    }

    pub(super) async fn starttls(&mut self) -> Flow {
        if self.txn.tls.is_some() {
            return self.error(Reply::tls_already_active());
        }
        let Some(config) = self.hooks.tls_config() else {
            return self.error(Reply::not_implemented());
        };
        if matches!(
            self.state,
            SessionState::MailFrom | SessionState::RcptTo | SessionState::Chunking(_)
        ) {
            return self.error(Reply::bad_sequence("MAIL transaction in progress"));
        }
        self.reply(Reply::ready_for_tls());
        if !self.flush().await {
            return Flow::Close(super::EndReason::ClientClosed);
        }
        self.handshake(config).await
    }

    /// Drops every byte the client sent before the handshake, upgrades the stream and
    /// starts the session over (a new EHLO is required).
    pub(super) async fn handshake(&mut self, config: Arc<rustls::ServerConfig>) -> Flow {
        let pipelined = self.io.buffer().len();
        if pipelined > 0 {
            self.hooks.injection_discarded(pipelined);
            self.io.consume(pipelined);
        }
        let when = (tokio::time::Instant::now() + self.cfg.command_timeout)
            .min(self.io.get_ref().deadline());
        let upgrade = self.io.get_mut().inner_mut().upgrade(config);
        match tokio::time::timeout_at(when, upgrade).await {
            Ok(Ok(info)) => {
                self.hooks.tls_started(&info);
                self.txn.tls = Some(info);
                self.state = SessionState::Fresh;
                self.esmtp = false;
                self.txn.envelope.helo.clear();
                self.reset_transaction();
                Flow::Continue
            }
            Ok(Err(e)) => {
                self.hooks.tls_failed(&e.to_string());
                Flow::Close(super::EndReason::TlsFailed)
            }
            Err(_) => {
                self.hooks.tls_failed("handshake timed out");
                Flow::Close(super::EndReason::TlsFailed)
            }
        }
    }
}
