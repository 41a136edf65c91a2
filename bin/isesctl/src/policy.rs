//! The inbound session's policy: which recipients are taken (local users, aliases and
//! postmaster; relaying only for trusted clients), where accepted messages go (the
//! intake), and the SMTPDebugIO transcript.
//!
//! TLS and AUTH: the certificate in effect (`mta_tls::ServerTls`), credentials checked by
//! [`crate::auth::AuthGuard`]; an authenticated client may relay anywhere but send only
//! from its own addresses (or aliases that reach it): otherwise `553 5.7.1`.
//!
//! Config read: `local_domains`, `trusted_networks`, the directory, `[inbound] bare_newline`.
//! Logs (always): each message with bare line endings, normalized (`qid=…`) or refused;
//! TLS handshakes (version, cipher) and failures; AUTH successes and failures; pipelined
//! bytes discarded at STARTTLS.

use crate::auth::AuthGuard;
use crate::door::ClientPass;
use crate::intake::Intake;
use crate::mail_auth::InboundAuth;
use crate::milter::{MilterSession, Outcome};
use mta_config::{Config, Directory};
use mta_smtp::tokio_rustls::rustls;
use mta_smtp::{
    AuthVerdict, BareLineEvent, Credentials, Direction, RcptVerdict, Reply, SessionHooks, TlsInfo,
    Transaction,
};
use mta_task::histogram::Histogram;
use mta_task::TaskContext;
use mta_tls::ServerTls;
use mta_types::{Address, QueueId};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// One session's hooks.
pub struct SessionPolicy {
    ctx: TaskContext,
    intake: Intake,
    peer: SocketAddr,
    /// The session handler (`iseshlrN`) serving this session.
    handler: String,
    /// Where each accepted message's end-of-DATA-to-250 time goes.
    accept_latency: Arc<Histogram>,
    /// SMTPDebugIO, read at session start.
    debug_io: u8,
    /// `SMTPDebug` at the session's start.
    debug: u8,
    /// SPF, DKIM and DMARC at the end of DATA.
    mail_auth: Arc<InboundAuth>,
    /// The certificate in effect (None: no TLS).
    tls: Option<Arc<ServerTls>>,
    auth: Arc<AuthGuard>,
    /// True once the controller's shutdown grace is over: the session ends with 421.
    closing: Option<tokio::sync::watch::Receiver<bool>>,
    /// The milters this listener consults (`None`: none, and no cost).
    milters: Option<MilterSession>,
    /// What the door knows of this client: the DNS lists' verdict, its limits.
    door: ClientPass,
}

/// What the sessions share for TLS and AUTH.
#[derive(Clone)]
pub struct Security {
    pub tls: Option<Arc<ServerTls>>,
    pub auth: Arc<AuthGuard>,
}

impl SessionPolicy {
    pub fn new(
        ctx: TaskContext,
        intake: Intake,
        peer: SocketAddr,
        handler: String,
        accept_latency: Arc<Histogram>,
        mail_auth: Arc<InboundAuth>,
        security: Security,
    ) -> SessionPolicy {
        let knobs = ctx.knobs();
        let debug_io = knobs.smtp_debug_io;
        let debug = knobs.smtp_debug;
        SessionPolicy {
            milters: None,
            ctx,
            intake,
            peer,
            handler,
            accept_latency,
            debug_io,
            debug,
            mail_auth,
            tls: security.tls,
            auth: security.auth,
            closing: None,
            door: ClientPass::trusted(),
        }
    }

    /// The session ends with `421 4.3.2` once `closing` turns true (the shutdown grace
    /// is over).
    pub fn with_closing(mut self, closing: tokio::sync::watch::Receiver<bool>) -> SessionPolicy {
        self.closing = Some(closing);
        self
    }

    /// What the door learnt about the client (default: trusted, nothing to check).
    pub fn with_door(self, door: ClientPass) -> SessionPolicy {
        SessionPolicy { door, ..self }
    }

    /// RFC 6409 §8.2, §8.3: an authenticated submission without `Date:` or `Message-ID:`
    /// gets them, with our hostname (sendmail adds its own before it submits).
    fn complete_submission(&self, qid: QueueId, env: &Transaction, content: Vec<u8>) -> Vec<u8> {
        if env.envelope.auth.is_none() {
            return content;
        }
        let hostname = &self.ctx.config().hostname;
        let date = mta_smtp::rfc5322_date(std::time::SystemTime::now());
        let message_id = format!("{qid}@{hostname}");
        let fields = mta_convert::SubmissionFields {
            date: &date,
            message_id: &message_id,
        };
        match mta_convert::complete_submission(&content, &fields) {
            Some(completed) => {
                tracing::info!(%qid, "qid={qid} submission without Date or Message-ID: added");
                completed
            }
            None => content,
        }
    }
}

/// One line per refused command of a transaction, at the default level (Postfix's
/// `NOQUEUE: reject: RCPT from …` line): the client, the reply, the queue id if the
/// transaction has one, the sender and the recipient if there is one.
fn log_refusal(
    peer: SocketAddr,
    env: &Transaction,
    stage: &str,
    reply: &Reply,
    rcpt: Option<&Address>,
) {
    let qid = env
        .qid
        .map(|q| q.to_string())
        .unwrap_or_else(|| "NOQUEUE".into());
    let reply = reply.wire().trim_end().replace("\r\n", " ");
    let from = env.envelope.return_path();
    let to = rcpt.map(|r| format!(" to=<{r}>")).unwrap_or_default();
    let user = env
        .envelope
        .auth
        .as_deref()
        .map(|u| format!(" sasl_username={u}"))
        .unwrap_or_default();
    tracing::info!(
        client = %peer,
        "qid={qid} reject: {stage} from [{}]: {reply}; from=<{from}>{to} helo=<{}>{user}",
        peer.ip(),
        env.envelope.helo
    );
}

impl SessionPolicy {
    /// Consult these milters (`crate::milter`) at each stage.
    pub fn with_milters(mut self, milters: Option<MilterSession>) -> SessionPolicy {
        self.milters = milters;
        self
    }

    /// The session is over: QUIT to the milters.
    pub async fn finish(self) {
        if let Some(m) = self.milters {
            m.finish().await;
        }
    }

    /// The milters' end of message: `Ok((content, changed envelope, quarantine))` to make
    /// durable, or the reply (a refusal, or the 250 of a discarded message).
    async fn filter(
        &mut self,
        qid: QueueId,
        env: &Transaction,
        content: Vec<u8>,
        ours: usize,
    ) -> Result<(Vec<u8>, Option<Box<Transaction>>, Option<String>), Reply> {
        let Some(milters) = &mut self.milters else {
            return Ok((content, None, None));
        };
        match milters.end_of_message(qid, env, content, ours).await {
            Outcome::Deliver { content, env, held } => Ok((content, env, held)),
            Outcome::Refuse(reply) => Err(reply),
            Outcome::Discard { by } => {
                let from = env.envelope.mail_from.as_ref().map(ToString::to_string);
                tracing::info!(
                    "qid={qid} discarded by {by}: from=<{}> nrcpt={} client=[{}]",
                    from.unwrap_or_default(),
                    env.rcpts.len(),
                    self.peer.ip()
                );
                Err(Reply::queued(qid))
            }
        }
    }
}

impl SessionHooks for SessionPolicy {
    async fn check_helo(&mut self, env: &Transaction, helo: &str) -> Option<Reply> {
        self.milters.as_mut()?.helo(env, helo).await
    }

    async fn check_mail(&mut self, env: &Transaction) -> Option<Reply> {
        self.milters.as_mut()?.mail(env).await
    }

    async fn check_data(&mut self, env: &Transaction) -> Option<Reply> {
        self.milters.as_mut()?.data(env).await
    }

    async fn check_rcpt(&mut self, env: &Transaction, rcpt: &Address) -> RcptVerdict {
        if let Some(limit) = self.door.rcpt(env.qid).await {
            log_refusal(self.peer, env, "RCPT", &limit, Some(rcpt));
            return RcptVerdict::Reject(limit);
        }
        let verdict =
            if env.envelope.auth.is_some() && !self.ctx.config().is_local_domain(rcpt.domain()) {
                // RFC 6409: an authenticated submitter may relay anywhere.
                RcptVerdict::Accept
            } else {
                rcpt_verdict(
                    self.ctx.config(),
                    &self.ctx.directory(),
                    self.peer.ip(),
                    rcpt,
                )
            };
        if let RcptVerdict::Reject(reply) = &verdict {
            log_refusal(self.peer, env, "RCPT", reply, Some(rcpt));
            return verdict;
        }
        match self.milters.as_mut() {
            Some(m) => match m.rcpt(env, rcpt).await {
                Some(reply) => RcptVerdict::Reject(reply),
                None => verdict,
            },
            None => verdict,
        }
    }

    async fn deliver(&mut self, qid: QueueId, env: &Transaction, content: Vec<u8>) -> Reply {
        let start = std::time::Instant::now();
        let content = self.complete_submission(qid, env, content);
        let (content, ours) = match self
            .mail_auth
            .check(self.ctx.config(), &self.intake, qid, env, content)
            .await
        {
            Ok(checked) => checked,
            Err(refusal) => return refusal,
        };
        let (content, changed, held) = match self.filter(qid, env, content, ours).await {
            Ok(filtered) => filtered,
            Err(reply) => return reply,
        };
        let env = changed.as_deref().unwrap_or(env);
        let reply = self.intake.deliver(qid, env, content, held).await;
        if reply.is_positive() {
            self.accept_latency.observe(start.elapsed());
        }
        reply
    }

    async fn first_command(&mut self) -> Option<Reply> {
        self.door.first_command().await
    }

    fn early_pipelining(&mut self, command: &str, octets: usize) -> Option<Reply> {
        self.door.early_pipelining(command, octets)
    }

    fn tls_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.as_ref().map(|t| t.current())
    }

    fn auth_available(&self) -> bool {
        true
    }

    async fn authenticate(
        &mut self,
        _env: &Transaction,
        mechanism: &str,
        credentials: Credentials,
    ) -> AuthVerdict {
        let user = credentials.user.clone();
        let verdict = self
            .auth
            .authenticate(
                self.ctx.directory(),
                self.peer.ip(),
                credentials,
                self.ctx
                    .config()
                    .cluster
                    .peer_password
                    .as_ref()
                    .map(|p| p.expose().to_string()),
            )
            .await;
        match &verdict {
            AuthVerdict::Ok(name) => tracing::info!(
                handler = %self.handler,
                client = %self.peer,
                sasl_method = mechanism,
                sasl_username = %name,
                "AUTH ok"
            ),
            AuthVerdict::Locked => tracing::warn!(
                handler = %self.handler,
                client = %self.peer,
                sasl_username = %user,
                "reject: AUTH: 454 4.7.0 too many authentication failures from [{}]",
                self.peer.ip()
            ),
            AuthVerdict::Failed => {}
        }
        verdict
    }

    fn check_sender(&mut self, env: &Transaction, from: Option<&Address>) -> Option<Reply> {
        let (Some(name), Some(from)) = (env.envelope.auth.as_deref(), from) else {
            return None; // `<>` (a report) is anyone's to send
        };
        if env.is_fleet_peer() {
            return None; // a hand-off: the sender was checked where it arrived first
        }
        let directory = self.ctx.directory();
        let owned = directory
            .users
            .iter()
            .find(|u| u.name == name)
            .is_some_and(|u| directory.owns(u, from));
        if owned {
            return None;
        }
        // Logged by `refused`, like every refused MAIL.
        Some(Reply::sender_not_owned(from, name))
    }

    fn refused(&mut self, env: &Transaction, stage: &'static str, reply: &Reply) {
        log_refusal(self.peer, env, stage, reply, None);
    }

    fn closing(&self) -> Option<mta_smtp::Closing> {
        let mut closing = self.closing.clone()?;
        Some(Box::pin(async move {
            // A dropped sender (the controller gone) ends the session as well.
            let _ = closing.wait_for(|closing| *closing).await;
        }))
    }

    fn tls_started(&mut self, info: &TlsInfo) {
        tracing::info!(handler = %self.handler, client = %self.peer, "TLS established: {info}");
    }

    fn tls_failed(&mut self, reason: &str) {
        tracing::info!(handler = %self.handler, client = %self.peer, "TLS handshake failed: {reason}");
    }

    fn injection_discarded(&mut self, octets: usize) {
        tracing::warn!(
            handler = %self.handler,
            client = %self.peer,
            "discarded {octets} octet(s) pipelined after STARTTLS (command injection attempt?)"
        );
    }

    /// Logged whatever the debug knobs: a sender whose software writes bare LFs, or someone
    /// probing for SMTP smuggling, is something the postmaster wants to see.
    fn bare_line_ending(&mut self, env: &Transaction, event: BareLineEvent) {
        let from = env.envelope.return_path();
        match event {
            BareLineEvent::Normalized { qid, lines } => tracing::info!(
                handler = %self.handler,
                client = %self.peer,
                %qid,
                from = %format_args!("<{from}>"),
                "bare LF normalized to CRLF in {lines} line(s) (bare_newline = normalize)"
            ),
            BareLineEvent::Refused => tracing::info!(
                handler = %self.handler,
                client = %self.peer,
                from = %format_args!("<{from}>"),
                "reject: DATA: bare CR or LF in content (554 5.6.0, bare_newline = {})",
                self.ctx.config().inbound.bare_newline.as_str()
            ),
        }
    }

    /// `SMTPDebug` 2 or `SMTPDebugIO` 2: each command and reply line; `SMTPDebug` 3 or
    /// `SMTPDebugIO` 1: the byte count of each. Lines carry the qid once MAIL is accepted.
    fn transcript(&mut self, qid: Option<QueueId>, dir: Direction, line: &[u8]) {
        let text = self.debug >= 2 || self.debug_io >= 2;
        let counts = self.debug >= 3 || self.debug_io >= 1;
        if !text && !counts {
            return;
        }
        // `None` records no field: lines before MAIL carry no qid.
        let qid = qid.map(tracing::field::display);
        let (arrow, way) = match dir {
            Direction::In => ("<", "received"),
            Direction::Out => (">", "sent"),
        };
        if text {
            // A multi-line reply comes as one piece: one log line per SMTP line.
            let text = String::from_utf8_lossy(line);
            for text in text
                .split_terminator("\r\n")
                .map(|t| t.trim_end_matches(['\r', '\n']))
            {
                tracing::info!(target: mta_types::DEBUG_TARGET, handler = %self.handler, client = %self.peer, qid, "{arrow} {text}");
            }
        }
        if counts {
            let n = line.len();
            let ip = self.peer.ip();
            tracing::info!(target: mta_types::DEBUG_TARGET, handler = %self.handler, client = %self.peer, qid, "{way} {n} bytes ([{ip}])");
        }
    }

    /// `SMTPDebug` 3 or `SMTPDebugIO` 1: the size of the message data; `SMTPDebugIO` 3:
    /// its first [`DEBUG_DATA_CAP`] bytes too, line by line (003: "logs all data received",
    /// capped so one large message cannot flood the log).
    fn message_data(&mut self, qid: QueueId, content: &[u8]) {
        if self.debug >= 3 || self.debug_io >= 1 {
            tracing::info!(target: mta_types::DEBUG_TARGET, handler = %self.handler, client = %self.peer, %qid, "received {} bytes of message data ([{}])", content.len(), self.peer.ip());
        }
        if self.debug_io < 3 {
            return;
        }
        let shown = &content[..content.len().min(DEBUG_DATA_CAP)];
        let text = String::from_utf8_lossy(shown);
        for line in text.split_terminator("\r\n") {
            tracing::info!(target: mta_types::DEBUG_TARGET, handler = %self.handler, client = %self.peer, %qid, "< data: {line}");
        }
        if content.len() > shown.len() {
            tracing::info!(
                target: mta_types::DEBUG_TARGET,
                handler = %self.handler,
                client = %self.peer,
                %qid,
                "< data: ({} more bytes not logged: SMTPDebugIO logs the first {DEBUG_DATA_CAP})",
                content.len() - shown.len()
            );
        }
    }
}

/// Most bytes of one message's data `SMTPDebugIO 3` logs.
pub const DEBUG_DATA_CAP: usize = 4096;

/// RCPT policy (RFC 5321 3.6.2: no open relay).
///
/// - A local domain's address is taken if it is a directory user or alias, or postmaster
///   (always, RFC 5321 4.5.1); else `550 5.1.1`. A `%`/`!`/quoted-`@` local part at a
///   local domain is a relay attempt: `554 5.7.1` unless the client is trusted.
/// - Any other domain (address literals included) only from a trusted client; else
///   `554 5.7.1`.
pub fn rcpt_verdict(
    config: &Config,
    directory: &Directory,
    client: IpAddr,
    rcpt: &Address,
) -> RcptVerdict {
    let trusted = config.is_trusted(client);
    if !config.is_local_domain(rcpt.domain()) {
        return if trusted {
            RcptVerdict::Accept
        } else {
            RcptVerdict::Reject(Reply::relay_denied(rcpt))
        };
    }
    if rcpt.is_routing_hack() && !trusted {
        return RcptVerdict::Reject(Reply::relay_denied(rcpt));
    }
    if rcpt
        .local_part_unquoted()
        .eq_ignore_ascii_case("postmaster")
        || directory.user_for(rcpt).is_some()
        || directory.aliases_of(rcpt).is_some()
    {
        RcptVerdict::Accept
    } else {
        RcptVerdict::Reject(Reply::mailbox_unknown(rcpt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn shipped() -> Config {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../etc/smtpmta.toml");
        Config::load(&path).expect("the shipped configuration loads")
    }

    fn code(config: &Config, ip: &str, rcpt: &str) -> u16 {
        let addr: Address = rcpt.parse().expect("address");
        match rcpt_verdict(config, &config.directory, ip.parse().unwrap(), &addr) {
            RcptVerdict::Accept => 250,
            RcptVerdict::Reject(reply) => reply.code.expect("a reply we send has its code"),
        }
    }

    #[test]
    fn local_recipients() {
        let c = shipped();
        for rcpt in ["postmaster@localhost", "ROOT@localhost", "abuse@localhost"] {
            assert_eq!(code(&c, "192.0.2.1", rcpt), 250, "{rcpt}");
        }
        assert_eq!(code(&c, "192.0.2.1", "nobody@localhost"), 550);
    }

    #[test]
    fn relaying_only_for_trusted_clients() {
        let c = shipped();
        assert_eq!(code(&c, "127.0.0.1", "user@example.com"), 250);
        // A remote recipient, or a routing hack that would relay, from an untrusted client.
        for rcpt in [
            "user@example.com",
            "user@[127.0.0.9]",
            "user%example.com@localhost",
            "example.com!user@localhost",
            "\"user@example.com\"@localhost",
        ] {
            assert_eq!(code(&c, "192.0.2.1", rcpt), 554, "{rcpt}");
        }
    }
}
