//! The door: what happens to a client between accept and the banner, and the per-client
//! checks its session asks for later (Postfix's postscreen and anvil, in-process).
//!
//! For a client in `trusted_networks` nothing is counted, asked or delayed. Any other:
//!
//! 1. Per-client limits (`client_limits.rs`): over `max_connections_per_client` or
//!    `max_connection_rate_per_client`, `421 4.7.0` before any banner, and close.
//! 2. On the `listen` (port 25) listener only: the DNS lists (`dnsbl.rs`) are asked at
//!    once, in the background; their verdict is awaited at the client's first command, so
//!    the lookups overlap the banner and the client's EHLO. A blocked client gets
//!    `554 5.7.1 Service unavailable; client [IP] blocked using ZONE` to that command and
//!    every later one (postscreen's `enforce`; QUIT still gets 221).
//! 3. On the `listen` listener with `greet_pause` set: no banner for that long; a client
//!    that sends anything meanwhile gets `554 5.5.1` and is dropped (pregreet test).
//! 4. In the session: the message rate at each transaction's first RCPT and the recipient
//!    rate at each RCPT (with `[cluster] redis`, counted by the fleet: `fleet_limits.rs`) (`421 4.7.0`, and the session ends); sending more after EHLO or
//!    HELO before its reply, or pipelining after HELO, with `forbid_unauth_pipelining`:
//!    `554 5.5.0`, and the session ends.
//!
//! Submission listeners get only the limits: their users are on dynamic addresses that
//! blocklists list, and their clients are not bots.
//!
//! Config read: `trusted_networks`, `hostname`, `[inbound]` dnsbl, dnswl, dnsbl_threshold,
//! greet_pause, forbid_unauth_pipelining and the per-client limits.
//! Logs (always): each refusal, Postfix style: `reject: CONNECT from [ip]: 421 4.7.0 …`,
//! `PREGREET N after T from [ip]: …`, `reject: improper command pipelining …` (a RCPT
//! refusal is the policy's `qid=… reject: RCPT from [ip]: …` line). Counters:
//! `Mail.Inbound.*` (see `mta_types::counters::DOOR`).

use crate::client_limits::{Admitted, ClientKey, Event, Limiter as _, Limits};
use crate::dnsbl::{DnsLists, Verdict};
use crate::fleet_limits::ClientLimiter;
use crate::intake::Intake;
use mta_config::Config;
use mta_ipc::clients::ClientReport;
use mta_smtp::{ListenerMode, Reply};
use mta_types::{counters, QueueId};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// How long a refusal before the banner may take to write (the client may not read).
const REFUSAL_WRITE: Duration = Duration::from_secs(5);
/// Most rows of `show clients`.
pub const SHOW_CLIENTS: usize = 50;

/// The door of one isesctl: shared by every session.
pub struct Door {
    limiter: Arc<ClientLimiter>,
    lists: Option<Arc<DnsLists>>,
    greet_pause: Duration,
    forbid_pipelining: bool,
    hostname: Arc<str>,
    intake: Intake,
}

/// What the door knows about one admitted client, for its session's hooks.
pub struct ClientPass {
    /// None: a trusted client (nothing counted or checked).
    untrusted: Option<Untrusted>,
}

struct Untrusted {
    key: ClientKey,
    ip: IpAddr,
    /// Holds the session open in the limiter until dropped.
    session: Admitted<ClientLimiter>,
    lists: Lists,
    strict_pipelining: bool,
    /// The transaction whose first RCPT counted as a message.
    counted: Option<QueueId>,
    hostname: Arc<str>,
    intake: Intake,
}

/// The DNS lists' answer for one client.
enum Lists {
    /// Not asked (a submission listener, or no lists configured).
    NotAsked,
    Pending(JoinHandle<Verdict>),
    Answered,
}

impl Door {
    /// `fleet`: the fleet's link when `[cluster] redis` is set (the shared per-client
    /// limits are counted there).
    pub fn new(
        config: &Config,
        intake: Intake,
        fleet: Option<Arc<mta_limit::fleet::Fleet>>,
    ) -> anyhow::Result<Door> {
        let limits = Limits::from_config(&config.inbound);
        Ok(Door {
            limiter: Arc::new(ClientLimiter::new(limits, fleet)),
            lists: DnsLists::new(config, intake.clone())?,
            greet_pause: config.inbound.greet_pause,
            forbid_pipelining: config.inbound.forbid_unauth_pipelining,
            hostname: config.hostname.as_str().into(),
            intake,
        })
    }

    /// Before the banner. `None`: the client was refused (the reply written) and its
    /// connection is to be closed.
    pub async fn admit(
        &self,
        config: &Config,
        stream: &mut TcpStream,
        peer: SocketAddr,
        mode: ListenerMode,
    ) -> Option<ClientPass> {
        let ip = peer.ip();
        if config.is_trusted(ip) {
            return Some(ClientPass::trusted());
        }
        let key = ClientKey::of(ip);
        let session = match Admitted::connect(&self.limiter, key).await {
            Ok(session) => session,
            Err(exceeded) => {
                let reply = Reply::client_limit(&self.hostname, &exceeded.reason(key));
                tracing::info!(client = %peer, "reject: CONNECT from [{ip}]: {}", reply);
                self.intake.count(counters::INBOUND_LIMIT_REFUSED);
                refuse(stream, &reply).await;
                return None;
            }
        };
        let port25 = mode == ListenerMode::Relay;
        let lists = match &self.lists {
            Some(lists) if port25 => {
                let lists = lists.clone();
                Lists::Pending(tokio::spawn(async move { lists.check(ip).await }))
            }
            _ => Lists::NotAsked,
        };
        if port25 && !self.greet_pause.is_zero() && !self.pregreet_test(stream, peer).await {
            if let Lists::Pending(handle) = lists {
                handle.abort();
            }
            return None;
        }
        Some(ClientPass {
            untrusted: Some(Untrusted {
                key,
                ip,
                session,
                lists,
                strict_pipelining: port25 && self.forbid_pipelining,
                counted: None,
                hostname: self.hostname.clone(),
                intake: self.intake.clone(),
            }),
        })
    }

    /// Waits `greet_pause` for silence. False: the client talked (refused with
    /// `554 5.5.1`) or left.
    async fn pregreet_test(&self, stream: &mut TcpStream, peer: SocketAddr) -> bool {
        let start = Instant::now();
        let mut peek = [0u8; 100];
        let n = match tokio::time::timeout(self.greet_pause, stream.peek(&mut peek)).await {
            Err(_silent) => return true,
            Ok(Ok(0)) | Ok(Err(_)) => return false,
            Ok(Ok(n)) => n,
        };
        let said = String::from_utf8_lossy(&peek[..n])
            .escape_debug()
            .to_string();
        tracing::info!(
            client = %peer,
            "PREGREET {n} after {:.3}s from [{}]: {said}",
            start.elapsed().as_secs_f64(),
            peer.ip()
        );
        self.intake.count(counters::INBOUND_PREGREET);
        refuse(stream, &Reply::pregreet(&self.hostname)).await;
        false
    }

    /// `show clients`.
    pub fn clients(&self) -> ClientReport {
        self.limiter.busiest(SHOW_CLIENTS)
    }

    /// The fleet link's status counters when the limits are the fleet's.
    pub fn counters(&self) -> Vec<(String, u64)> {
        self.limiter.counters()
    }
}

/// Writes a refusal before the banner and shuts the connection down.
async fn refuse(stream: &mut TcpStream, reply: &Reply) {
    let _ = tokio::time::timeout(REFUSAL_WRITE, async {
        stream.write_all(&reply.to_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

impl ClientPass {
    /// A trusted client's: nothing is counted or checked.
    pub fn trusted() -> ClientPass {
        ClientPass { untrusted: None }
    }

    /// At the client's first command: the DNS lists' verdict (awaited if still pending;
    /// bounded by `[dns] timeout`). `Some`: the reply to every command of the session.
    pub async fn first_command(&mut self) -> Option<Reply> {
        let u = self.untrusted.as_mut()?;
        let Lists::Pending(handle) = std::mem::replace(&mut u.lists, Lists::Answered) else {
            return None;
        };
        match handle.await {
            Ok(Verdict::Blocked { score, zone }) => {
                let reply = Reply::dnsbl_blocked(u.ip, &zone);
                tracing::info!(client = %u.ip, "reject: CONNECT from [{}]: {} (score {score})", u.ip, reply);
                u.intake.count(counters::INBOUND_DNSBL_BLOCKED);
                Some(reply)
            }
            Ok(Verdict::Pass { .. }) | Err(_) => None,
        }
    }

    /// At each RCPT of transaction `qid`: the message rate (at the transaction's first
    /// RCPT) and the recipient rate. `Some`: the `421 4.7.0` that ends the session.
    pub async fn rcpt(&mut self, qid: Option<QueueId>) -> Option<Reply> {
        let u = self.untrusted.as_mut()?;
        let limiter = u.session.limiter().clone();
        // The first RCPT counts the message and itself in one question.
        let event = if u.counted != qid {
            u.counted = qid;
            Event::Message
        } else {
            Event::Recipient
        };
        let exceeded = limiter.check(u.key, event).await.err()?;
        // Logged by the caller with the transaction (qid, sender, recipient).
        let reply = Reply::client_limit(&u.hostname, &exceeded.reason(u.key));
        u.intake.count(counters::INBOUND_LIMIT_REFUSED);
        Some(reply)
    }

    /// The client sent `octets` more after EHLO/HELO before their reply (or pipelined
    /// after HELO). `Some`: refused, the session ends.
    pub fn early_pipelining(&mut self, command: &str, octets: usize) -> Option<Reply> {
        let u = self.untrusted.as_mut()?;
        if !u.strict_pipelining {
            return None;
        }
        let reply = Reply::pipelining_refused();
        tracing::info!(
            client = %u.ip,
            "reject: improper command pipelining after {command} from [{}]: {octets} octet(s) sent before the reply: {}",
            u.ip,
            reply
        );
        u.intake.count(counters::INBOUND_PIPELINING_REFUSED);
        Some(reply)
    }
}
