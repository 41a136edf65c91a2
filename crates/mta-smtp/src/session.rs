//! The ESMTP server session (RFC 5321) as a state machine over any byte stream.
//!
//! [`run_session`] greets, reads commands, answers them and hands recipients and finished
//! messages to the caller's [`SessionHooks`]; it returns a [`SessionSummary`] when the client
//! quits, times out, makes too many errors or goes away. The verbs are handled in one file
//! per group: `ehlo.rs` (EHLO, HELO), `mail.rs` (MAIL, RSET), `rcpt.rs` (RCPT), `data.rs`
//! (DATA, BDAT and handing the message over).
//!
//! Pipelining (RFC 2920): replies are queued and written when no further complete command
//! is already buffered, so a pipelined group gets its replies in one write; the 354 reply
//! is always written at once.
//!
//! TLS and AUTH (`tls.rs`, `auth.rs`): STARTTLS is offered when the hooks give a TLS
//! config; AUTH PLAIN/LOGIN only once TLS is up. What a listener demands is its
//! [`ListenerMode`]: `Relay` (port 25: both optional), `Submission` (RFC 6409, port 587:
//! STARTTLS before AUTH, AUTH before MAIL) or `Submissions` (RFC 8314, port 465: TLS from
//! the first byte, AUTH before MAIL).
//!
//! Errors counted towards `max_errors` are command errors: unknown verbs, syntax and
//! parameter errors, and out-of-sequence commands. Recipients refused by the hooks are not.

mod auth;
mod data;
mod ehlo;
mod io;
mod mail;
mod rcpt;
mod tls;

pub use auth::{AuthVerdict, Credentials};
pub use io::Closing;
pub use tls::TlsInfo;

use crate::command::{Command, CommandError, MailParams, RcptParams, MAX_COMMAND_LINE};
use crate::reply::Reply;
use io::{has_buffered_line, read_command_line, CommandLine, Deadlined};
use mta_types::{Address, Envelope, QueueId};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::time::Instant;
use tokio_rustls::rustls;

/// What a listener demands of its clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ListenerMode {
    /// `[inbound] listen`: STARTTLS and AUTH optional.
    #[default]
    Relay,
    /// `submission_listen` (RFC 6409): STARTTLS before AUTH, AUTH before MAIL.
    Submission,
    /// `submissions_listen` (RFC 8314): implicit TLS, AUTH before MAIL.
    Submissions,
}

impl ListenerMode {
    /// Whether MAIL needs an authenticated client.
    pub fn requires_auth(self) -> bool {
        self != ListenerMode::Relay
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ListenerMode::Relay => "smtp",
            ListenerMode::Submission => "submission",
            ListenerMode::Submissions => "submissions",
        }
    }
}

/// Settings for one session; typically built from the `[smtp]` config section.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Our name in the greeting, EHLO reply and Received header.
    pub hostname: String,
    /// Largest message accepted (content octets, before our Received header); advertised
    /// in EHLO as `SIZE`.
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Longest content line accepted in DATA/BDAT, CRLF not counted.
    pub max_line_length: usize,
    /// Idle time allowed while waiting for a command (and for writing a reply).
    pub command_timeout: Duration,
    /// Idle time allowed while reading message content.
    pub data_timeout: Duration,
    /// Hard limit on the whole session.
    pub session_timeout: Duration,
    /// Command errors tolerated before `421 4.7.0` and disconnect.
    pub max_errors: u32,
    /// What a bare LF in message content does (`[inbound] bare_newline`).
    pub bare_newline: crate::data::BareNewline,
    /// What this listener demands (TLS, AUTH).
    pub mode: ListenerMode,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            hostname: "localhost".into(),
            max_message_size: 10_240_000,
            max_recipients: 1000,
            max_line_length: 65536,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            session_timeout: Duration::from_secs(3600),
            max_errors: 20,
            bare_newline: crate::data::BareNewline::default(),
            mode: ListenerMode::Relay,
        }
    }
}

/// The two ends of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// The SMTP transaction so far, as the hooks see it: the record's [`Envelope`] (sender,
/// DSN parameters, HELO, client, protocol, AUTH identity) as it will be stored, plus what
/// only the live session has (the parameters as given, the recipients with theirs, the
/// connection, TLS, the queue id).
#[derive(Clone, Debug)]
pub struct Transaction {
    /// What the record keeps: `mail_from` (`None`: the null reverse path `<>`), RET and
    /// ENVID, the HELO/EHLO argument, the client's address (an IPv4-mapped IPv6 address
    /// as IPv4), the Received header's `with` value (RFC 3848: `SMTP` (HELO), `ESMTP`
    /// (EHLO), `UTF8SMTP`, each with `S` under TLS and `A` once authenticated:
    /// `ESMTPSA`), SMTPUTF8, BODY=8BITMIME and the authenticated identity (the directory
    /// user, after AUTH).
    pub envelope: Envelope,
    pub mail_params: MailParams,
    /// Accepted recipients; `<postmaster>` appears as `postmaster@<hostname>`.
    pub rcpts: Vec<(Address, RcptParams)>,
    pub client: ClientInfo,
    /// The TLS session, once STARTTLS (or the implicit handshake) succeeded.
    pub tls: Option<TlsInfo>,
    /// The transaction's queue id, assigned when MAIL is accepted (as Postfix does), so
    /// that the debug transcript of the transaction carries it; the message gets it.
    pub qid: Option<QueueId>,
}

impl Transaction {
    fn new(client: ClientInfo) -> Transaction {
        let ip = unmapped(client.peer.ip()).to_string();
        Transaction {
            envelope: Envelope::new(None, String::new(), ip, "SMTP"),
            mail_params: MailParams::default(),
            rcpts: Vec::new(),
            client,
            tls: None,
            qid: None,
        }
    }

    /// The client authenticated as the fleet peer (`crate::handoff::PEER_USER`): it may
    /// use `XFLEET`.
    pub fn is_fleet_peer(&self) -> bool {
        self.envelope.auth.as_deref() == Some(crate::handoff::PEER_USER)
    }

    /// The `with` keyword for the state of the session (RFC 3848).
    fn with_keyword(&self, esmtp: bool) -> &'static str {
        let tls = self.tls.is_some();
        let auth = self.envelope.auth.is_some();
        match (self.envelope.utf8, esmtp, tls, auth) {
            (true, _, false, false) => "UTF8SMTP",
            (true, _, true, false) => "UTF8SMTPS",
            (true, _, false, true) => "UTF8SMTPA",
            (true, _, true, true) => "UTF8SMTPSA",
            (false, false, _, _) => "SMTP",
            (false, true, false, false) => "ESMTP",
            (false, true, true, false) => "ESMTPS",
            (false, true, false, true) => "ESMTPA",
            (false, true, true, true) => "ESMTPSA",
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.7`, a dual-stack listener's view of an
/// IPv4 client) as the IPv4 address it is.
pub fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The hooks' answer to one RCPT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptVerdict {
    Accept,
    Reject(Reply),
}

/// Which way a transcript line went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to server.
    In,
    /// Server to client.
    Out,
}

/// A message whose content had bare line endings, for the owner's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareLineEvent {
    /// `BareNewline::Normalize`: `lines` bare LFs were stored as CRLF in message `qid`
    /// (called before `deliver`).
    Normalized { qid: QueueId, lines: usize },
    /// Refused with `554 5.6.0`: a bare LF under `BareNewline::Reject`, or a bare CR.
    Refused,
}

/// What the session asks of its owner: recipient policy and durable delivery.
pub trait SessionHooks: Send {
    /// Called for each RCPT after syntax checks; the hook decides local/relay policy.
    fn check_rcpt(
        &mut self,
        txn: &Transaction,
        rcpt: &Address,
    ) -> impl Future<Output = RcptVerdict> + Send;

    /// Called at HELO/EHLO before it is taken (`txn.envelope.helo` is still the previous name):
    /// `Some(reply)` refuses it and the session stays where it was. Default: take it.
    fn check_helo(
        &mut self,
        _txn: &Transaction,
        _helo: &str,
    ) -> impl Future<Output = Option<Reply>> + Send {
        async { None }
    }

    /// Called at MAIL once the session's own checks passed; `txn` carries the new sender,
    /// its parameters and the transaction's queue id. `Some(reply)` refuses the sender and
    /// the transaction is forgotten. Default: accept.
    fn check_mail(&mut self, _txn: &Transaction) -> impl Future<Output = Option<Reply>> + Send {
        async { None }
    }

    /// Called at DATA before the 354: `Some(reply)` refuses it (the transaction stays).
    /// Not called for BDAT. Default: accept.
    fn check_data(&mut self, _txn: &Transaction) -> impl Future<Output = Option<Reply>> + Send {
        async { None }
    }

    /// Called at the end of DATA / BDAT LAST with the complete content (our Received header
    /// already prepended). Returns the reply to send: `Reply::queued(qid)` on success,
    /// `storage_full` / `local_error` otherwise. The content must be durable BEFORE this
    /// returns a positive reply.
    fn deliver(
        &mut self,
        qid: QueueId,
        txn: &Transaction,
        content: Vec<u8>,
    ) -> impl Future<Output = Reply> + Send;

    /// The content of the current transaction's message had bare line endings (see
    /// [`BareLineEvent`]). Default: nothing.
    fn bare_line_ending(&mut self, _txn: &Transaction, _event: BareLineEvent) {}

    /// The TLS config to offer STARTTLS (or run the implicit handshake) with; `None`: no
    /// TLS (STARTTLS answered 502). Default: none.
    fn tls_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        None
    }

    /// Whether AUTH can be offered (once TLS is up). Default: no.
    fn auth_available(&self) -> bool {
        false
    }

    /// Checks credentials. Called for AUTH PLAIN and LOGIN over TLS only. Default: fail.
    fn authenticate(
        &mut self,
        _txn: &Transaction,
        _mechanism: &str,
        _credentials: Credentials,
    ) -> impl Future<Output = AuthVerdict> + Send {
        async { AuthVerdict::Failed }
    }

    /// Called at MAIL from an authenticated client (`txn.envelope.auth` is set): `Some(reply)`
    /// refuses the sender (someone else's address: `553 5.7.1`). Default: accept.
    fn check_sender(&mut self, _txn: &Transaction, _from: Option<&Address>) -> Option<Reply> {
        None
    }

    /// A TLS handshake succeeded. Default: nothing.
    fn tls_started(&mut self, _info: &TlsInfo) {}

    /// A TLS handshake failed (the session ends). Default: nothing.
    fn tls_failed(&mut self, _reason: &str) {}

    /// `octets` pipelined after STARTTLS were discarded (a command injection attempt, or a
    /// broken client). Default: nothing.
    fn injection_discarded(&mut self, _octets: usize) {}

    /// Protocol transcript for debug logging (SMTPDebug, SMTPDebugIO): each command line as
    /// received and each reply as sent (not message content), with the transaction's queue
    /// id once MAIL is accepted. Default: nothing.
    fn transcript(&mut self, _qid: Option<QueueId>, _dir: Direction, _line: &[u8]) {}

    /// The message content as the client sent it (dot-unstuffed, before our Received
    /// header), for SMTPDebugIO 3; called before `deliver`. Default: nothing.
    fn message_data(&mut self, _qid: QueueId, _content: &[u8]) {}

    /// A transaction was refused at MAIL or at the end of its content (`stage`: `MAIL`,
    /// `DATA` or `BDAT`), with `reply`; for the owner's log (RCPT refusals come from
    /// `check_rcpt`, which the owner sees already). Default: nothing.
    fn refused(&mut self, _txn: &Transaction, _stage: &'static str, _reply: &Reply) {}

    /// Resolves when the server shuts down and this session must end: the session then
    /// answers `421 4.3.2` instead of reading on (also in the middle of DATA; never while
    /// `deliver` runs) and closes. Asked once, at the start. Default: never.
    fn closing(&self) -> Option<Closing> {
        None
    }

    /// Called once, when the client's first command has been read (a DNS blocklist's
    /// verdict, looked up meanwhile): `Some(reply)` answers that command and every later
    /// one (QUIT still gets 221; they count as errors towards `max_errors`). Default:
    /// none.
    fn first_command(&mut self) -> impl Future<Output = Option<Reply>> + Send {
        async { None }
    }

    /// The client sent `octets` more after `command` (EHLO or HELO; after HELO, any
    /// command but DATA/BDAT) before its reply: pipelining where it was not offered (RFC
    /// 2920 section 3.1). `Some(reply)` refuses it and ends the session. Default:
    /// tolerated.
    fn early_pipelining(&mut self, _command: &str, _octets: usize) -> Option<Reply> {
        None
    }
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    Quit,
    Timeout,
    TooManyErrors,
    /// The client closed the connection or it failed.
    ClientClosed,
    /// A malformed BDAT left the chunk length unknown (see [`CommandError::loses_sync`]).
    LostSync,
    /// The TLS handshake failed (or an implicit-TLS listener has no certificate).
    TlsFailed,
    /// The server shut down (`421 4.3.2`).
    ShuttingDown,
    /// The hooks refused the client and ended the session: a `421` to a RCPT (a
    /// per-client limit), or pipelining where it was not offered.
    Refused,
}

/// Counts for the session's summary log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionSummary {
    pub accepted: u32,
    pub rejected: u32,
    pub errors: u32,
    pub end: EndReason,
}

/// Where the session is in RFC 5321's order of commands.
#[derive(Debug)]
pub enum SessionState {
    /// Greeting sent, no HELO/EHLO yet.
    Fresh,
    /// HELO/EHLO done, no transaction.
    Greeted,
    /// MAIL accepted, no recipient yet.
    MailFrom,
    /// At least one recipient accepted.
    RcptTo,
    /// BDAT chunks (not yet LAST) are being collected.
    Chunking(crate::data::ChunkAssembly),
}

/// Whether the client may be served, as [`SessionHooks::first_command`] said.
#[derive(Debug)]
enum Admission {
    /// No command yet.
    Unasked,
    Admitted,
    /// Every command gets this reply.
    Refused(Reply),
}

/// What the loop does after a command.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Close(EndReason),
}

/// Runs one SMTP session to its end. Never fails: every problem becomes a reply, and the
/// way it ended is in the summary.
pub async fn run_session<S, H>(
    stream: S,
    client: ClientInfo,
    cfg: &SessionConfig,
    hooks: &mut H,
) -> SessionSummary
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: SessionHooks,
{
    let deadline = Instant::now() + cfg.session_timeout;
    let mut stream = Deadlined::new(tls::Conn::Plain(stream), cfg.command_timeout, deadline);
    stream.close_when(hooks.closing());
    let io = BufReader::new(stream);
    let postmaster = cfg
        .hostname
        .parse()
        .ok()
        .and_then(|domain| Address::new("postmaster", domain).ok());
    let mut session = Session {
        io,
        out: Vec::new(),
        cfg,
        hooks,
        state: SessionState::Fresh,
        txn: Transaction::new(client),
        esmtp: false,
        admission: Admission::Unasked,
        postmaster,
        errors: 0,
        accepted: 0,
        rejected: 0,
    };
    let end = session.run().await;
    SessionSummary {
        accepted: session.accepted,
        rejected: session.rejected,
        errors: session.errors,
        end,
    }
}

pub(crate) struct Session<'a, S, H> {
    io: BufReader<Deadlined<tls::Conn<S>>>,
    /// Replies not yet written.
    out: Vec<u8>,
    cfg: &'a SessionConfig,
    hooks: &'a mut H,
    state: SessionState,
    txn: Transaction,
    /// EHLO (not HELO) was used: ESMTP parameters are allowed.
    esmtp: bool,
    admission: Admission,
    /// `postmaster@<hostname>`, for `RCPT TO:<postmaster>`.
    postmaster: Option<Address>,
    errors: u32,
    accepted: u32,
    rejected: u32,
}

impl<S, H> Session<'_, S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: SessionHooks,
{
    async fn run(&mut self) -> EndReason {
        if self.cfg.mode == ListenerMode::Submissions {
            // RFC 8314: TLS from the first byte; the greeting comes over TLS.
            let Some(config) = self.hooks.tls_config() else {
                self.hooks
                    .tls_failed("no TLS certificate for an implicit-TLS listener");
                return EndReason::TlsFailed;
            };
            if let Flow::Close(reason) = self.handshake(config).await {
                return reason;
            }
        }
        self.reply(Reply::greeting(&self.cfg.hostname));
        let end = loop {
            if !has_buffered_line(&self.io) && !self.flush().await {
                break EndReason::ClientClosed;
            }
            self.io.get_mut().set_idle(self.cfg.command_timeout);
            let line = match read_command_line(&mut self.io, MAX_COMMAND_LINE).await {
                Ok(CommandLine::Line(line)) => line,
                Ok(CommandLine::TooLong) => match self.error(Reply::line_too_long()) {
                    Flow::Continue => continue,
                    Flow::Close(reason) => break reason,
                },
                Ok(CommandLine::Eof) => break EndReason::ClientClosed,
                Err(e) => match self.io_failed(e) {
                    Flow::Close(reason) => break reason,
                    Flow::Continue => continue,
                },
            };
            match auth::redact(&line) {
                Some(redacted) => self
                    .hooks
                    .transcript(self.txn.qid, Direction::In, &redacted),
                None => self.hooks.transcript(self.txn.qid, Direction::In, &line),
            }
            if let Flow::Close(reason) = self.command(&line).await {
                break reason;
            }
        };
        self.close().await;
        end
    }

    /// One command line: refused for the whole session, or parsed and answered, then
    /// checked for pipelining where it was not offered.
    async fn command(&mut self, line: &[u8]) -> Flow {
        if let Some(reply) = self.refusal().await {
            return match Command::parse(line, self.txn.envelope.utf8) {
                Ok(Command::Quit) => {
                    self.reply(Reply::bye());
                    Flow::Close(EndReason::Quit)
                }
                _ => self.error(reply),
            };
        }
        let command = match Command::parse(line, self.txn.envelope.utf8) {
            Ok(command) => command,
            Err(e) => return self.command_error(e),
        };
        // The replies a client must wait for before it sends more (RFC 2920 3.1): EHLO's
        // and HELO's; without PIPELINING (after HELO) every one but the end of content.
        let name = match &command {
            Command::Ehlo(_) => Some("EHLO"),
            Command::Helo(_) => Some("HELO"),
            Command::Data | Command::Bdat { .. } | Command::Quit => None,
            _ if !self.esmtp => Some("a command"),
            _ => None,
        };
        let flow = self.dispatch(command).await;
        match name {
            Some(name) if flow == Flow::Continue && !self.io.buffer().is_empty() => {
                match self.hooks.early_pipelining(name, self.io.buffer().len()) {
                    Some(reply) => {
                        self.reply(reply);
                        Flow::Close(EndReason::Refused)
                    }
                    None => flow,
                }
            }
            _ => flow,
        }
    }

    /// The refusal in force for the session, asking the hooks at the first command.
    async fn refusal(&mut self) -> Option<Reply> {
        match &self.admission {
            Admission::Admitted => None,
            Admission::Refused(reply) => Some(reply.clone()),
            Admission::Unasked => {
                let verdict = self.hooks.first_command().await;
                self.admission = match &verdict {
                    Some(reply) => Admission::Refused(reply.clone()),
                    None => Admission::Admitted,
                };
                verdict
            }
        }
    }

    async fn dispatch(&mut self, command: Command) -> Flow {
        if let Some(verb) = command.verb() {
            // BDAT checks its own order, after it has read the chunk it announced.
            if matches!(self.state, SessionState::Fresh)
                && !verb.info().before_helo
                && verb != crate::command::Verb::Bdat
            {
                return self.error(Reply::bad_sequence("send HELO/EHLO first"));
            }
        }
        match command {
            Command::Ehlo(host) => self.ehlo(host).await,
            Command::Helo(host) => self.helo(host).await,
            Command::Mail { from, params } => self.mail(from, params).await,
            Command::Rcpt { to, params } => self.rcpt(to, params).await,
            Command::Data => self.data().await,
            Command::Bdat { size, last } => self.bdat(size, last).await,
            Command::Rset => self.rset(),
            Command::Noop => self.reply(Reply::ok()),
            Command::Quit => {
                self.reply(Reply::bye());
                Flow::Close(EndReason::Quit)
            }
            Command::Vrfy(_) => self.reply(Reply::vrfy_cannot()),
            Command::Starttls => self.starttls().await,
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial).await,
            Command::Expn => self.error(Reply::not_implemented()),
            Command::Help => self.reply(Reply::help()),
            Command::Unknown(_) => self.error(Reply::syntax_error()),
        }
    }

    fn command_error(&mut self, e: CommandError) -> Flow {
        if e.loses_sync() {
            self.errors += 1;
            self.reply(e.to_reply());
            self.reply(Reply::lost_sync(&self.cfg.hostname));
            return Flow::Close(EndReason::LostSync);
        }
        self.error(e.to_reply())
    }

    /// Queues a reply; the session goes on.
    fn reply(&mut self, reply: Reply) -> Flow {
        let bytes = reply.to_bytes();
        self.hooks.transcript(self.txn.qid, Direction::Out, &bytes);
        self.out.extend_from_slice(&bytes);
        Flow::Continue
    }

    /// Queues an error reply and counts it; too many end the session.
    fn error(&mut self, reply: Reply) -> Flow {
        self.reply(reply);
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            self.reply(Reply::too_many_errors(&self.cfg.hostname));
            return Flow::Close(EndReason::TooManyErrors);
        }
        Flow::Continue
    }

    /// A read failed: a timeout gets its 421, anything else means the client is gone.
    fn io_failed(&mut self, e: std::io::Error) -> Flow {
        if io::is_shutting_down(&e) {
            self.reply(Reply::shutting_down(&self.cfg.hostname));
            return Flow::Close(EndReason::ShuttingDown);
        }
        if e.kind() == std::io::ErrorKind::TimedOut {
            self.reply(Reply::timeout(&self.cfg.hostname));
            Flow::Close(EndReason::Timeout)
        } else {
            Flow::Close(EndReason::ClientClosed)
        }
    }

    /// Writes the queued replies; false when the client is gone or does not read.
    async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let out = std::mem::take(&mut self.out);
        let when = (Instant::now() + self.cfg.command_timeout).min(self.io.get_ref().deadline());
        let write = async {
            self.io.write_all(&out).await?;
            self.io.flush().await
        };
        matches!(tokio::time::timeout_at(when, write).await, Ok(Ok(())))
    }

    /// Writes what is left (a 221 or 421, say) with a short grace period, then shuts down.
    async fn close(&mut self) {
        let out = std::mem::take(&mut self.out);
        let grace = self.cfg.command_timeout.min(Duration::from_secs(10));
        let _ = tokio::time::timeout(grace, async {
            self.io.write_all(&out).await?;
            self.io.flush().await?;
            self.io.shutdown().await
        })
        .await;
    }

    /// Forgets the transaction (RSET, a new EHLO, or after a message).
    fn reset_transaction(&mut self) {
        self.txn.envelope.mail_from = None;
        self.txn.envelope.ret = None;
        self.txn.envelope.envid = None;
        self.txn.qid = None;
        self.txn.mail_params = MailParams::default();
        self.txn.rcpts.clear();
        self.txn.envelope.utf8 = false;
        self.txn.envelope.eight_bit = false;
        self.txn.envelope.protocol = self.txn.with_keyword(self.esmtp).into();
        if !matches!(self.state, SessionState::Fresh) {
            self.state = SessionState::Greeted;
        }
    }
}

#[cfg(test)]
mod tests;
