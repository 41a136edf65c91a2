//! The inbound session's milters (`[[milter]]`, protocol in `mta-milter`): one connection
//! per milter per SMTP session, taken at the first HELO/EHLO and used for every message of
//! the session. When the session ends cleanly (or the milter said ACCEPT for the whole
//! session) the connection goes back to its milter's pool with SMFIC_QUIT_NC and serves
//! the next session, which starts with its own connect event: a TCP connection and an
//! option negotiation are paid once per pooled connection, not once per SMTP session
//! (the milter's cost per message, docs/BENCHMARKS.md). A pooled connection the milter has
//! closed meanwhile is replaced by a fresh one at once, unseen by the client. Milters that
//! speak a version before 6 (no QUIT_NC) get SMFIC_QUIT and a connection per session.
//!
//! Each stage (connect + HELO, MAIL, RCPT, DATA, end of message) goes to the milters in
//! their configured order; the first that decides anything but "continue" answers the SMTP
//! command of that stage (reject 550, tempfail 451, its own reply code). A refusal at
//! connect answers every later command of the session, as in Postfix. ACCEPT at connect or
//! HELO leaves that milter out for the session; later, for the message. DISCARD answers 250
//! and queues nothing. At end of message each milter sees the message as the milters
//! before it left it; header and body changes are made to the content, recipient and sender
//! changes to the envelope, and QUARANTINE holds the message (Held, with the reason) —
//! all before the intake makes it durable, so the 250 still follows the fsync.
//!
//! A milter that cannot be reached, does not answer in time or speaks garbage gets its
//! `default_action` for the rest of the session: `tempfail` (451 at each stage), `reject`
//! (550) or `accept` (left out).
//!
//! Macros sent: connect `j` `_` `{daemon_name}` (the listener) `{client_addr}`
//! `{client_name}`; HELO `{tls_version}` `{cipher}` (under TLS); MAIL `i` `{auth_authen}`
//! `{mail_addr}`; RCPT `i` `{rcpt_addr}`; DATA `i`; end of message `i` (our queue ID).
//! No reverse DNS here: `{client_name}` is `unknown` and the connect name `[ip]`.
//! Config: `[[milter]]`, `hostname`. Logs: each refusal
//! (`qid=… milter-reject: STAGE from [ip]: reply; from=<…> milter=NAME`), discard,
//! quarantine and failure (naming the milter and its default action). Counts (store
//! counters, `smtpmta_milter_*` in /metrics): `Mail.Milter.Action.<action>.<name>`,
//! `Mail.Milter.Failure.<unreachable|timeout|broken>.<name>`.

mod eom;

use crate::intake::Intake;
use mta_config::{Config, MilterDefault};
use mta_milter::{Endpoint, Io, Milter, MilterError, Timeouts, Verdict};
use mta_smtp::{Reply, Transaction};
use mta_types::Address;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Conn = Milter<Box<dyn Io>>;

/// Most idle connections kept per milter (about the sessions that run at once).
const POOL_MAX: usize = 64;
/// An idle connection older than this is closed rather than reused: milters time out idle
/// clients (rspamd after its `timeout`, 120 s by default).
const POOL_IDLE: Duration = Duration::from_secs(30);

/// The configured milters, shared by every session.
pub struct Milters {
    entries: Vec<Arc<Entry>>,
    hostname: String,
}

struct Entry {
    name: String,
    endpoint: Endpoint,
    timeouts: Timeouts,
    default: MilterDefault,
    listeners: Vec<String>,
    /// Connections that served a session and wait for the next, newest last.
    idle: Mutex<Vec<(Instant, Box<Conn>)>>,
}

impl Entry {
    /// The newest idle connection young enough to reuse and not closed by the milter;
    /// the others are dropped (closed).
    fn take_idle(&self) -> Option<Box<Conn>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(since, _)| since.elapsed() < POOL_IDLE);
        while let Some((_, mut conn)) = idle.pop() {
            if conn.looks_alive() {
                return Some(conn);
            }
        }
        None
    }

    /// A connection whose session ended cleanly: QUIT_NC and into the pool, or QUIT when
    /// the milter cannot be reused or the pool is full.
    async fn give_back(&self, mut conn: Box<Conn>) {
        let full = self.idle.lock().unwrap_or_else(|p| p.into_inner()).len() >= POOL_MAX;
        if full || !conn.reusable() {
            conn.quit().await;
        } else if conn.quit_nc().await.is_ok() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.push((Instant::now(), conn));
        }
    }

    /// A connection that has seen this session's connect event, and the milter's verdict:
    /// a pooled one when there is one (replaced by a fresh one if it fails), else a new one.
    async fn connected(
        &self,
        name: &str,
        peer: std::net::SocketAddr,
        macros: &[(&str, &str)],
    ) -> (Option<Box<Conn>>, Result<Verdict, MilterError>) {
        if let Some(mut conn) = self.take_idle() {
            if let Ok(verdict) = conn.connect_event(name, peer, macros).await {
                return (Some(conn), Ok(verdict));
            }
        }
        let mut conn = match mta_milter::connect(&self.endpoint, self.timeouts).await {
            Ok(conn) => Box::new(conn),
            Err(e) => return (None, Err(e)),
        };
        let verdict = conn.connect_event(name, peer, macros).await;
        (Some(conn), verdict)
    }
}

impl Milters {
    pub fn new(config: &Config) -> Milters {
        let entries = config
            .milter
            .iter()
            .map(|m| {
                Arc::new(Entry {
                    name: m.name.clone(),
                    endpoint: m.address.clone(),
                    timeouts: Timeouts {
                        connect: m.connect_timeout,
                        command: m.command_timeout,
                        content: m.content_timeout,
                    },
                    default: m.default_action,
                    listeners: m.listeners.clone(),
                    idle: Mutex::new(Vec::new()),
                })
            })
            .collect();
        Milters {
            entries,
            hostname: config.hostname.clone(),
        }
    }

    /// The milters a session on `listener` consults; `None` when there are none, so such a
    /// session pays nothing for milters.
    pub fn session(&self, listener: &str, intake: &Intake) -> Option<MilterSession> {
        let links: Vec<Link> = self
            .entries
            .iter()
            .filter(|e| e.listeners.iter().any(|l| l == listener))
            .map(|e| Link {
                entry: Arc::clone(e),
                state: LinkState::Unopened,
                message_accepted: false,
                in_message: false,
                spare: None,
            })
            .collect();
        if links.is_empty() {
            return None;
        }
        Some(MilterSession {
            links,
            hostname: self.hostname.clone(),
            listener: listener.to_string(),
            intake: intake.clone(),
            refused: None,
            discard: None,
            data_sent: false,
        })
    }
}

/// Where one milter stands in this session.
enum LinkState {
    /// Not connected yet (before the first HELO).
    Unopened,
    Open(Box<Conn>),
    /// Left out for the rest of the session: it said ACCEPT at connect or HELO, or it
    /// failed with `default_action = "accept"`.
    Bypassed,
    /// Failed with `default_action` tempfail or reject: every stage gets that answer.
    Failed,
}

struct Link {
    entry: Arc<Entry>,
    state: LinkState,
    /// It said ACCEPT for the message in progress.
    message_accepted: bool,
    /// A MAIL was sent and the message not finished (an ABORT is owed before the next).
    in_message: bool,
    /// The connection of a milter that said ACCEPT for the session, kept for the pool.
    spare: Option<Box<Conn>>,
}

/// One SMTP stage, with what the milter is told.
#[derive(Clone, Copy)]
enum Stage<'a> {
    Helo(&'a str),
    Mail,
    Rcpt(&'a Address),
    Data,
}

impl Stage<'_> {
    /// Postfix's word for the stage in its milter-reject lines.
    fn label(&self) -> &'static str {
        match self {
            Stage::Helo(_) => "HELO",
            Stage::Mail => "MAIL",
            Stage::Rcpt(_) => "RCPT",
            Stage::Data => "DATA",
        }
    }
}

/// What becomes of a message at end of DATA.
pub enum Outcome {
    /// The SMTP reply refusing it.
    Refuse(Reply),
    /// 250, nothing queued.
    Discard { by: String },
    /// Make it durable: the content (changed or not), the envelope if a milter changed it,
    /// and the quarantine reason if one held it.
    Deliver {
        content: Vec<u8>,
        env: Option<Box<Transaction>>,
        held: Option<String>,
    },
}

/// One session's milter connections.
pub struct MilterSession {
    links: Vec<Link>,
    hostname: String,
    listener: String,
    intake: Intake,
    /// A refusal at connect: the answer to every later command.
    refused: Option<Reply>,
    /// A milter said DISCARD for the message in progress.
    discard: Option<String>,
    /// The DATA event went out for the message in progress (not with BDAT).
    data_sent: bool,
}

impl MilterSession {
    /// HELO/EHLO: connects (and sends the connect event) the first time, then HELO.
    pub async fn helo(&mut self, env: &Transaction, helo: &str) -> Option<Reply> {
        if let Some(r) = &self.refused {
            return Some(r.clone());
        }
        for i in 0..self.links.len() {
            if matches!(self.links[i].state, LinkState::Unopened) {
                if let Some(reply) = self.open(i, env).await {
                    return Some(reply);
                }
            }
        }
        self.stage(Stage::Helo(helo), env).await
    }

    /// MAIL: a new message for every milter (an ABORT first if one was left unfinished).
    pub async fn mail(&mut self, env: &Transaction) -> Option<Reply> {
        self.discard = None;
        self.data_sent = false;
        for link in &mut self.links {
            link.message_accepted = false;
        }
        self.stage(Stage::Mail, env).await
    }

    pub async fn rcpt(&mut self, env: &Transaction, rcpt: &Address) -> Option<Reply> {
        self.stage(Stage::Rcpt(rcpt), env).await
    }

    pub async fn data(&mut self, env: &Transaction) -> Option<Reply> {
        self.data_sent = true;
        self.stage(Stage::Data, env).await
    }

    /// The session is over: each connection back to its milter's pool (QUIT_NC), or QUIT
    /// when a message was left unfinished.
    pub async fn finish(self) {
        for link in self.links {
            if let Some(conn) = link.spare {
                link.entry.give_back(conn).await;
            }
            if let LinkState::Open(conn) = link.state {
                if link.in_message {
                    conn.quit().await;
                } else {
                    link.entry.give_back(conn).await;
                }
            }
        }
    }

    /// Connects milter `i` and sends the connect event; a refusal holds for the session.
    async fn open(&mut self, i: usize, env: &Transaction) -> Option<Reply> {
        let entry = Arc::clone(&self.links[i].entry);
        let ip = client_ip(env);
        let name = format!("[{ip}]");
        let underscore = format!("unknown [{ip}]");
        let macros = [
            ("j", self.hostname.as_str()),
            ("_", underscore.as_str()),
            ("{daemon_name}", self.listener.as_str()),
            ("{client_addr}", ip.as_str()),
            ("{client_name}", "unknown"),
        ];
        let (conn, verdict) = entry.connected(&name, env.client.peer, &macros).await;
        if let Some(conn) = conn {
            self.links[i].state = LinkState::Open(conn);
        }
        match verdict {
            Ok(v) => self.decided(i, v, "CONNECT", env),
            Err(e) => self.failed(i, e, "CONNECT", env),
        }
    }

    /// Sends one stage to each milter in turn; the first refusal is the answer.
    async fn stage(&mut self, stage: Stage<'_>, env: &Transaction) -> Option<Reply> {
        if let Some(r) = &self.refused {
            return Some(r.clone());
        }
        for i in 0..self.links.len() {
            if let Some(reply) = self.stage_one(i, stage, env).await {
                return Some(reply);
            }
        }
        None
    }

    /// One stage to milter `i`: `Some(reply)` when it refuses (or failed and refuses).
    async fn stage_one(&mut self, i: usize, stage: Stage<'_>, env: &Transaction) -> Option<Reply> {
        let link = &mut self.links[i];
        let conn = match &mut link.state {
            LinkState::Open(conn) => conn,
            LinkState::Failed => return self.default_reply(i),
            LinkState::Unopened | LinkState::Bypassed => return None,
        };
        if link.message_accepted && !matches!(stage, Stage::Helo(_)) {
            return None;
        }
        match send_stage(conn, stage, env, &mut link.in_message).await {
            Ok(v) => self.decided(i, v, stage.label(), env),
            Err(e) => self.failed(i, e, stage.label(), env),
        }
    }

    /// A milter's verdict at `stage`: `Some(reply)` when it refuses.
    fn decided(&mut self, i: usize, v: Verdict, stage: &str, env: &Transaction) -> Option<Reply> {
        let connection = matches!(stage, "CONNECT" | "HELO");
        let reply = match v {
            Verdict::Continue => return None,
            Verdict::Accept => {
                self.count(i, "accept");
                if connection {
                    let link = &mut self.links[i];
                    if let LinkState::Open(conn) =
                        std::mem::replace(&mut link.state, LinkState::Bypassed)
                    {
                        link.spare = Some(conn);
                    }
                } else {
                    self.links[i].message_accepted = true;
                }
                return None;
            }
            Verdict::Discard if connection => {
                let e = protocol_error("DISCARD is not allowed at connect or HELO");
                return self.failed(i, e, stage, env);
            }
            Verdict::Discard => {
                self.count(i, "discard");
                self.discard = Some(self.links[i].entry.name.clone());
                return None;
            }
            Verdict::Reject => Reply::milter_rejected(),
            Verdict::Tempfail => Reply::milter_tempfail(),
            Verdict::Shutdown => Reply::milter_shutdown(&self.hostname),
            Verdict::ReplyCode(text) => match Reply::from_milter(&text) {
                Some(reply) => reply,
                None => {
                    let e = protocol_error(&format!("malformed reply code `{text}`"));
                    return self.failed(i, e, stage, env);
                }
            },
        };
        self.count(
            i,
            if reply.is_transient() {
                "tempfail"
            } else {
                "reject"
            },
        );
        self.log_refusal(i, &reply, stage, env);
        if stage == "CONNECT" {
            self.refused = Some(reply.clone());
        }
        Some(reply)
    }

    /// Milter `i` failed: log, count, and from now on its default action.
    fn failed(
        &mut self,
        i: usize,
        e: MilterError,
        stage: &str,
        env: &Transaction,
    ) -> Option<Reply> {
        let entry = Arc::clone(&self.links[i].entry);
        let qid = env.qid.map(tracing::field::display);
        tracing::warn!(
            qid,
            milter = %entry.name,
            client = %env.client.peer,
            "milter {} ({}) failed at {stage}: {e}; default_action = {}",
            entry.name,
            entry.endpoint,
            entry.default.as_str()
        );
        self.intake
            .count_named(format!("Mail.Milter.Failure.{}.{}", e.kind(), entry.name));
        self.links[i].state = match entry.default {
            MilterDefault::Accept => LinkState::Bypassed,
            _ => LinkState::Failed,
        };
        self.default_reply(i)
    }

    fn default_reply(&self, i: usize) -> Option<Reply> {
        match self.links[i].entry.default {
            MilterDefault::Tempfail => Some(Reply::milter_tempfail()),
            MilterDefault::Reject => Some(Reply::milter_rejected()),
            MilterDefault::Accept => None,
        }
    }

    fn count(&self, i: usize, action: &str) {
        let name = &self.links[i].entry.name;
        self.intake
            .count_named(format!("Mail.Milter.Action.{action}.{name}"));
    }

    fn log_refusal(&self, i: usize, reply: &Reply, stage: &str, env: &Transaction) {
        let from = env.envelope.mail_from.as_ref().map(ToString::to_string);
        let qid = env.qid.map(tracing::field::display);
        tracing::info!(
            qid,
            "milter-reject: {stage} from [{}]: {}; from=<{}> milter={}",
            client_ip(env),
            reply.wire().trim_end().replace("\r\n", " "),
            from.unwrap_or_default(),
            self.links[i].entry.name
        );
    }
}

/// Sends one stage's event with its macros (an ABORT first before a new MAIL).
async fn send_stage(
    conn: &mut Conn,
    stage: Stage<'_>,
    env: &Transaction,
    in_message: &mut bool,
) -> Result<Verdict, MilterError> {
    let qid = env.qid.map(|q| q.to_string()).unwrap_or_default();
    match stage {
        Stage::Helo(helo) => {
            let tls = env.tls.as_ref();
            let macros: Vec<(&str, &str)> = match tls {
                Some(t) => vec![("{tls_version}", &t.version), ("{cipher}", &t.cipher)],
                None => Vec::new(),
            };
            conn.helo(helo, &macros).await
        }
        Stage::Mail => {
            if *in_message {
                conn.abort().await?;
            }
            *in_message = true;
            let from = env.envelope.return_path();
            let mut macros = vec![("i", qid.as_str()), ("{mail_addr}", from.as_str())];
            if let Some(user) = &env.envelope.auth {
                macros.push(("{auth_authen}", user));
            }
            let args = mail_args(env, &from);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            conn.mail(&args, &macros).await
        }
        Stage::Rcpt(rcpt) => {
            let addr = rcpt.to_string();
            let path = format!("<{addr}>");
            let macros = [("i", qid.as_str()), ("{rcpt_addr}", addr.as_str())];
            conn.rcpt(&[&path], &macros).await
        }
        Stage::Data => conn.data(&[("i", qid.as_str())]).await,
    }
}

/// `<sender>` and the ESMTP parameters of MAIL, as the milter gets them.
fn mail_args(env: &Transaction, from: &str) -> Vec<String> {
    let p = &env.mail_params;
    let mut args = vec![format!("<{from}>")];
    if let Some(size) = p.size {
        args.push(format!("SIZE={size}"));
    }
    if env.envelope.eight_bit {
        args.push("BODY=8BITMIME".into());
    }
    if p.smtputf8 {
        args.push("SMTPUTF8".into());
    }
    args
}

fn client_ip(env: &Transaction) -> String {
    let ip = env.client.peer.ip();
    match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or_else(|| v6.to_string(), |v4| v4.to_string()),
        v4 => v4.to_string(),
    }
}

fn protocol_error(detail: &str) -> MilterError {
    MilterError::Protocol {
        stage: "reply",
        detail: detail.to_string(),
    }
}
