//! One connection to one milter, MTA side: option negotiation, then the events of an SMTP
//! session in Postfix's order (connect, helo, then per message mail, rcpt..., data,
//! header..., eoh, body chunks, end of message), each answered by a [`Verdict`].
//!
//! The connection lives as long as the SMTP session and carries all its messages (libmilter
//! resets its message state after each end of message or ABORT). Packets the milter will
//! not answer (`SMFIP_NR_*`) are buffered and go out with the next packet that wants a
//! reply, so a milter that needs no headers costs no round trip per header.
//!
//! Timeouts: `connect` covers the connection and the negotiation; `command` each reply to
//! connect, helo, mail, rcpt and data; `content` each reply to the message content and end
//! of message. A PROGRESS reply restarts the wait.

use crate::error::MilterError;
use crate::message::Message;
use crate::proto::{self, action, cmd, protocol, Modification, Response};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Where a milter listens (`inet:host:port` or `unix:/path`): the shared endpoint type.
pub use mta_types::Endpoint;

/// How long to wait for each kind of answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
    pub content: Duration,
}

/// Any byte stream a milter can be reached over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A milter's decision on one event (modifications come apart, at end of message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go on (also what an event the milter does not want, or does not answer, gets).
    Continue,
    /// At connect or helo: no more events for this session; later: for this message.
    Accept,
    /// `550 5.7.1 Command rejected` unless the milter gave its own text.
    Reject,
    /// `451 4.7.1 Service unavailable - try again later`.
    Tempfail,
    /// Accept the message and drop it.
    Discard,
    /// `421`: end the session.
    Shutdown,
    /// The milter's own reply, e.g. `554 5.7.1 Gtube pattern`.
    ReplyCode(String),
}

impl Verdict {
    /// Whether the transaction (or session) goes on as far as this milter is concerned.
    pub fn is_continue(&self) -> bool {
        *self == Verdict::Continue
    }
}

/// The answer at end of message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndOfMessage {
    pub verdict: Verdict,
    /// In the order the milter sent them.
    pub modifications: Vec<Modification>,
    /// SMFIR_QUARANTINE's reason, sent at end of message (or any earlier stage).
    pub quarantine: Option<String>,
    /// End of message was sent and answered (the milter's message is over). False when it
    /// decided during the header or body: an ABORT is owed before the next message.
    pub finished: bool,
}

/// The client's end of one milter connection.
pub struct Milter<S> {
    io: BufReader<S>,
    /// Packets written but not yet sent (those the milter will not answer).
    out: Vec<u8>,
    timeouts: Timeouts,
    /// SMFIF_* the milter said it may use.
    pub actions: u32,
    /// SMFIP_* the milter asked for (events it skips, replies it will not send).
    pub protocol: u32,
    /// The protocol version the milter answered with.
    pub version: u32,
    quarantine: Option<String>,
}

/// Connects to `endpoint` and negotiates, all within `timeouts.connect`.
pub async fn connect(
    endpoint: &Endpoint,
    timeouts: Timeouts,
) -> Result<Milter<Box<dyn Io>>, MilterError> {
    let failed = |source| MilterError::Connect {
        endpoint: endpoint.to_string(),
        source,
    };
    let timed_out = || MilterError::Timeout {
        stage: "connect",
        after: timeouts.connect,
    };
    let stream: Box<dyn Io> = match endpoint {
        Endpoint::Inet { host, port } => {
            let connecting = tokio::net::TcpStream::connect((host.as_str(), *port));
            let stream = tokio::time::timeout(timeouts.connect, connecting)
                .await
                .map_err(|_| timed_out())?
                .map_err(failed)?;
            let _ = stream.set_nodelay(true);
            Box::new(stream)
        }
        Endpoint::Unix(path) => {
            let connecting = tokio::net::UnixStream::connect(path);
            Box::new(
                tokio::time::timeout(timeouts.connect, connecting)
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(failed)?,
            )
        }
    };
    Milter::negotiate(stream, timeouts).await
}

impl<S: Io> Milter<S> {
    /// SMFIC_OPTNEG: we offer version 6, every modification we apply and every protocol
    /// step we can skip; the milter answers with what it uses.
    pub async fn negotiate(stream: S, timeouts: Timeouts) -> Result<Milter<S>, MilterError> {
        let mut m = Milter {
            io: BufReader::new(stream),
            out: Vec::new(),
            timeouts,
            actions: 0,
            protocol: 0,
            version: 0,
            quarantine: None,
        };
        let offer = [
            proto::VERSION.to_be_bytes(),
            action::OFFERED.to_be_bytes(),
            protocol::OFFERED.to_be_bytes(),
        ]
        .concat();
        proto::encode(&mut m.out, cmd::OPTNEG, &[&offer]);
        let wait = timeouts.connect;
        match m.exchange("negotiation", wait).await? {
            Response::OptNeg {
                version,
                actions,
                protocol,
            } => {
                if !(2..=proto::VERSION).contains(&version) {
                    return Err(MilterError::Negotiation(format!(
                        "milter speaks version {version}, we speak 2 to {}",
                        proto::VERSION
                    )));
                }
                m.version = version;
                m.actions = actions & action::OFFERED;
                m.protocol = protocol & protocol::OFFERED;
                Ok(m)
            }
            other => Err(MilterError::Negotiation(format!(
                "expected the options, got {other:?}"
            ))),
        }
    }

    /// SMFIC_CONNECT: the client's name (`[ip]` when it has none) and address.
    pub async fn connect_event(
        &mut self,
        client_name: &str,
        client: SocketAddr,
        macros: &[(&str, &str)],
    ) -> Result<Verdict, MilterError> {
        let (family, ip) = match client.ip() {
            std::net::IpAddr::V4(v4) => (b'4', v4.to_string()),
            std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => (b'4', v4.to_string()),
                None => (b'6', v6.to_string()),
            },
        };
        let mut data = Vec::new();
        proto::push_str(&mut data, client_name.as_bytes());
        data.push(family);
        data.extend_from_slice(&client.port().to_be_bytes());
        proto::push_str(&mut data, ip.as_bytes());
        let step = Step::new(
            "connect",
            cmd::CONNECT,
            protocol::NOCONNECT,
            protocol::NR_CONN,
        );
        self.event(step, &data, macros).await
    }

    /// SMFIC_HELO: the HELO/EHLO argument.
    pub async fn helo(
        &mut self,
        helo: &str,
        macros: &[(&str, &str)],
    ) -> Result<Verdict, MilterError> {
        let step = Step::new("helo", cmd::HELO, protocol::NOHELO, protocol::NR_HELO);
        self.event(step, &nul_strings(&[helo]), macros).await
    }

    /// SMFIC_MAIL: `<sender>` then its ESMTP parameters, one string each.
    pub async fn mail(
        &mut self,
        args: &[&str],
        macros: &[(&str, &str)],
    ) -> Result<Verdict, MilterError> {
        self.quarantine = None;
        let step = Step::new("mail", cmd::MAIL, protocol::NOMAIL, protocol::NR_MAIL);
        self.event(step, &nul_strings(args), macros).await
    }

    /// SMFIC_RCPT: `<recipient>` then its ESMTP parameters.
    pub async fn rcpt(
        &mut self,
        args: &[&str],
        macros: &[(&str, &str)],
    ) -> Result<Verdict, MilterError> {
        let step = Step::new("rcpt", cmd::RCPT, protocol::NORCPT, protocol::NR_RCPT);
        self.event(step, &nul_strings(args), macros).await
    }

    /// SMFIC_DATA: the client sent DATA (or its first BDAT).
    pub async fn data(&mut self, macros: &[(&str, &str)]) -> Result<Verdict, MilterError> {
        let step = Step::new("data", cmd::DATA, protocol::NODATA, protocol::NR_DATA);
        self.event(step, &[], macros).await
    }

    /// The message: each header field, end of header, the body in chunks, end of message
    /// (with `eom_macros`, where the queue ID goes). Stops early when the milter decides.
    pub async fn message(
        &mut self,
        message: &Message,
        eom_macros: &[(&str, &str)],
    ) -> Result<EndOfMessage, MilterError> {
        let lead_space = self.protocol & protocol::HDR_LEADSPC != 0;
        for (name, value) in message.visible_fields(lead_space) {
            let step = Step::content("header", cmd::HEADER, protocol::NOHDRS, protocol::NR_HDR);
            let data = [name.as_bytes(), b"\0", &value, b"\0"].concat();
            let verdict = self.event(step, &data, &[]).await?;
            if !verdict.is_continue() {
                return Ok(self.early(verdict));
            }
        }
        let step = Step::content("eoh", cmd::EOH, protocol::NOEOH, protocol::NR_EOH);
        let verdict = self.event(step, &[], &[]).await?;
        if !verdict.is_continue() {
            return Ok(self.early(verdict));
        }
        for chunk in message.body.chunks(proto::MAX_BODY_CHUNK) {
            let step = Step::content("body", cmd::BODY, protocol::NOBODY, protocol::NR_BODY);
            match self.event_raw(step, chunk, &[]).await? {
                Some(Response::Skip) => break,
                Some(r) => {
                    let verdict = self.verdict(r, "body").await?;
                    if !verdict.is_continue() {
                        return Ok(self.early(verdict));
                    }
                }
                None => {}
            }
        }
        proto::encode_macros(&mut self.out, cmd::BODYEOB, eom_macros);
        proto::encode(&mut self.out, cmd::BODYEOB, &[]);
        self.end_of_message().await
    }

    /// SMFIC_ABORT: forget the message in progress (RSET, or a transaction we ended).
    /// No reply.
    pub async fn abort(&mut self) -> Result<(), MilterError> {
        self.quarantine = None;
        proto::encode(&mut self.out, cmd::ABORT, &[]);
        self.send("abort", self.timeouts.command).await
    }

    /// Whether the connection may serve another SMTP client after [`Milter::quit_nc`]:
    /// SMFIC_QUIT_NC is a version 6 command.
    pub fn reusable(&self) -> bool {
        self.version >= 6
    }

    /// Whether an idle connection still looks usable: nothing to read (a closed one reads
    /// as end of file, a reset one as an error; an idle milter sends nothing). Checked
    /// before a pooled connection is reused, without waiting.
    pub fn looks_alive(&mut self) -> bool {
        use tokio::io::AsyncBufRead as _;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        std::pin::Pin::new(&mut self.io)
            .poll_fill_buf(&mut cx)
            .is_pending()
    }

    /// SMFIC_QUIT_NC: this SMTP client is done and the connection stays open for the next
    /// one, which starts with its connect event (the options negotiated hold). No reply.
    pub async fn quit_nc(&mut self) -> Result<(), MilterError> {
        self.quarantine = None;
        proto::encode(&mut self.out, cmd::QUIT_NC, &[]);
        self.send("quit", self.timeouts.command).await
    }

    /// SMFIC_QUIT, then the connection closes.
    pub async fn quit(mut self) {
        proto::encode(&mut self.out, cmd::QUIT, &[]);
        let _ = self.send("quit", self.timeouts.command).await;
        let _ = self.io.get_mut().shutdown().await;
    }

    fn early(&mut self, verdict: Verdict) -> EndOfMessage {
        EndOfMessage {
            verdict,
            modifications: Vec::new(),
            quarantine: self.quarantine.take(),
            finished: false,
        }
    }

    /// Reads the answers to end of message: modifications, then one decision.
    async fn end_of_message(&mut self) -> Result<EndOfMessage, MilterError> {
        let wait = self.timeouts.content;
        let mut modifications = Vec::new();
        let mut response = self.exchange("end of message", wait).await?;
        loop {
            match response {
                Response::Modify(m) => modifications.push(m),
                Response::Progress => {}
                Response::Quarantine(reason) => self.quarantine = Some(reason),
                other => {
                    let verdict = self.decision(other, "end of message")?;
                    return Ok(EndOfMessage {
                        verdict,
                        modifications,
                        quarantine: self.quarantine.take(),
                        finished: true,
                    });
                }
            }
            response = self.read("end of message", wait).await?;
        }
    }

    /// Sends one event (unless the milter does not want it) and reads its verdict (unless
    /// the milter does not answer it).
    async fn event(
        &mut self,
        step: Step,
        data: &[u8],
        macros: &[(&str, &str)],
    ) -> Result<Verdict, MilterError> {
        match self.event_raw(step, data, macros).await? {
            None => Ok(Verdict::Continue),
            Some(r) => self.verdict(r, step.name).await,
        }
    }

    /// `None`: not sent, or sent without waiting for a reply.
    async fn event_raw(
        &mut self,
        step: Step,
        data: &[u8],
        macros: &[(&str, &str)],
    ) -> Result<Option<Response>, MilterError> {
        if self.protocol & step.unwanted != 0 {
            return Ok(None);
        }
        proto::encode_macros(&mut self.out, step.code, macros);
        proto::encode(&mut self.out, step.code, &[data]);
        if self.protocol & step.unanswered != 0 {
            // Sent with the next packet that is answered (or at end of message).
            return Ok(None);
        }
        let wait = self.wait(step);
        self.exchange(step.name, wait).await.map(Some)
    }

    fn wait(&self, step: Step) -> Duration {
        if step.content {
            self.timeouts.content
        } else {
            self.timeouts.command
        }
    }

    /// Follows PROGRESS and QUARANTINE to the decision.
    async fn verdict(
        &mut self,
        mut r: Response,
        stage: &'static str,
    ) -> Result<Verdict, MilterError> {
        let wait = self.timeouts.command.max(self.timeouts.content);
        loop {
            match r {
                Response::Progress => {}
                Response::Quarantine(reason) => self.quarantine = Some(reason),
                other => return self.decision(other, stage),
            }
            r = self.read(stage, wait).await?;
        }
    }

    fn decision(&self, r: Response, stage: &'static str) -> Result<Verdict, MilterError> {
        Ok(match r {
            Response::Continue | Response::Skip => Verdict::Continue,
            Response::Accept => Verdict::Accept,
            Response::Reject => Verdict::Reject,
            Response::Tempfail => Verdict::Tempfail,
            Response::Discard => Verdict::Discard,
            Response::Shutdown => Verdict::Shutdown,
            Response::ReplyCode(text) => Verdict::ReplyCode(text),
            other => {
                return Err(MilterError::Protocol {
                    stage,
                    detail: format!("unexpected reply {other:?}"),
                })
            }
        })
    }

    /// Sends what is buffered, then reads one reply.
    async fn exchange(
        &mut self,
        stage: &'static str,
        wait: Duration,
    ) -> Result<Response, MilterError> {
        self.send(stage, wait).await?;
        self.read(stage, wait).await
    }

    async fn send(&mut self, stage: &'static str, wait: Duration) -> Result<(), MilterError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let io = self.io.get_mut();
        let write = async {
            io.write_all(&out).await?;
            io.flush().await
        };
        match tokio::time::timeout(wait, write).await {
            Err(_) => Err(MilterError::Timeout { stage, after: wait }),
            Ok(Err(source)) => Err(MilterError::Io { stage, source }),
            Ok(Ok(())) => Ok(()),
        }
    }

    async fn read(&mut self, stage: &'static str, wait: Duration) -> Result<Response, MilterError> {
        match tokio::time::timeout(wait, read_packet(&mut self.io, stage)).await {
            Err(_) => Err(MilterError::Timeout { stage, after: wait }),
            Ok(r) => r,
        }
    }
}

async fn read_packet<R: AsyncRead + Unpin>(
    io: &mut R,
    stage: &'static str,
) -> Result<Response, MilterError> {
    let lost = |source| MilterError::Io { stage, source };
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await.map_err(lost)?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > proto::MAX_PACKET {
        return Err(MilterError::Protocol {
            stage,
            detail: format!("packet length {len}"),
        });
    }
    let mut packet = vec![0u8; len];
    io.read_exact(&mut packet).await.map_err(lost)?;
    Response::decode(packet[0], &packet[1..], stage)
}

/// One event: its command code, the SMFIP_ flags saying the milter does not want it or
/// will not answer it, and which timeout applies.
#[derive(Clone, Copy)]
struct Step {
    name: &'static str,
    code: u8,
    unwanted: u32,
    unanswered: u32,
    content: bool,
}

impl Step {
    fn new(name: &'static str, code: u8, unwanted: u32, unanswered: u32) -> Step {
        Step {
            name,
            code,
            unwanted,
            unanswered,
            content: false,
        }
    }

    fn content(name: &'static str, code: u8, unwanted: u32, unanswered: u32) -> Step {
        Step {
            content: true,
            ..Step::new(name, code, unwanted, unanswered)
        }
    }
}

fn nul_strings(args: &[&str]) -> Vec<u8> {
    let mut data = Vec::new();
    for a in args {
        proto::push_str(&mut data, a.as_bytes());
    }
    data
}
