//! The SMTP client side of one outbound session: greeting, EHLO (HELO fallback), MAIL,
//! RCPT, DATA, RSET, QUIT — one command, one reply, so every recipient's reply is seen.
//!
//! Why not lettre's `AsyncSmtpConnection` (DESIGN.md lists it): its `message()` dot-stuffs
//! and always appends `CRLF . CRLF`, so content already ending in CRLF gains a line, and
//! its stuffing only sees line starts after CRLF. A relay must be byte-exact and must
//! never let a bare LF end the transfer, so this client writes `mta_smtp::dot_stuff` of
//! the spooled bytes itself and reads replies with `mta_smtp::read_reply`: the grammar
//! stays in mta-smtp, this file is only the socket.

use mta_smtp::{dot_stuff, read_reply, Reply, ReplyError};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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
}

/// What the server offered in its EHLO reply.
#[derive(Clone, Debug, Default)]
pub struct Extensions {
    /// RFC 2920: RSET, MAIL, the RCPTs and DATA go out in one write.
    pub pipelining: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub size: Option<u64>,
}

impl Extensions {
    fn from_ehlo(reply: &Reply) -> Extensions {
        let mut ext = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let keyword = words.next().unwrap_or("").to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => ext.pipelining = true,
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "SIZE" => ext.size = words.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0),
                _ => {}
            }
        }
        ext
    }
}

pub struct SmtpClient {
    stream: BufReader<TcpStream>,
    timeout: Duration,
    pub ext: Extensions,
}

impl SmtpClient {
    /// Connects and reads the greeting (returned as is: the caller decides about 4xx/5xx).
    pub async fn connect(
        addr: SocketAddr,
        connect_timeout: Duration,
        command_timeout: Duration,
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
        let mut client = SmtpClient {
            stream: BufReader::new(stream),
            timeout: command_timeout,
            ext: Extensions::default(),
        };
        let greeting = client.reply("connect").await?;
        Ok((client, greeting))
    }

    async fn reply(&mut self, command: &str) -> Result<Reply, SessionError> {
        match tokio::time::timeout(self.timeout, read_reply(&mut self.stream)).await {
            Err(_) => Err(SessionError::Timeout {
                command: command.into(),
                after: self.timeout,
            }),
            Ok(Err(source)) => Err(SessionError::Lost {
                command: command.into(),
                source,
            }),
            Ok(Ok(r)) => Ok(r),
        }
    }

    async fn write(&mut self, command: &str, bytes: &[u8]) -> Result<(), SessionError> {
        let w = async {
            self.stream.get_mut().write_all(bytes).await?;
            self.stream.get_mut().flush().await
        };
        match tokio::time::timeout(self.timeout, w).await {
            Err(_) => Err(SessionError::Timeout {
                command: command.into(),
                after: self.timeout,
            }),
            Ok(Err(source)) => Err(SessionError::Write {
                command: command.into(),
                source,
            }),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Sends one command line (CRLF added) and returns its reply.
    pub async fn command(&mut self, line: &str) -> Result<Reply, SessionError> {
        let verb = line.split_whitespace().next().unwrap_or("").to_string();
        self.write(&verb, format!("{line}\r\n").as_bytes()).await?;
        self.reply(&verb).await
    }

    /// Sends several commands in one write (RFC 2920; only when the server offers
    /// PIPELINING) and reads their replies, in order.
    pub async fn pipeline(&mut self, lines: &[String]) -> Result<Vec<Reply>, SessionError> {
        let mut wire = String::with_capacity(lines.iter().map(|l| l.len() + 2).sum());
        for line in lines {
            wire.push_str(line);
            wire.push_str("\r\n");
        }
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
        let wire = dot_stuff(content);
        self.write("DATA", &wire).await?;
        self.reply("end of DATA").await
    }

    /// After a 354 that is not wanted (no recipient was accepted): an empty message, so
    /// the session can go on (RFC 2920 section 3.1); its reply is of no interest.
    pub async fn abandon_data(&mut self) -> Result<(), SessionError> {
        self.write("DATA", b".\r\n").await?;
        self.reply("end of DATA").await.map(|_| ())
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

    /// DATA, then the dot-stuffed content and the terminator; returns the final reply, or
    /// the reply to DATA when it was not 354.
    pub async fn data(&mut self, content: &[u8]) -> Result<Reply, SessionError> {
        let go = self.command("DATA").await?;
        if go.code != 354 {
            return Ok(go);
        }
        self.content(content).await
    }

    /// QUIT, best effort.
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            if self.write("QUIT", b"QUIT\r\n").await.is_ok() {
                let _ = self.reply("QUIT").await;
            }
        })
        .await;
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
