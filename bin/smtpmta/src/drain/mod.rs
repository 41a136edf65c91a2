//! `tell smtpmta drain …`: take this node out of service by handing its queue off to a
//! fleet peer (issue 27; docs/DRAIN.md).
//!
//! `drain to <node|host:port> [include held|dead]`: isesctl answers new connections with
//! `421 4.3.2` (sessions in progress finish), osesctl starts no new outbound session, and
//! a run (`run.rs`) pages through the queue and hands every message with a pending
//! recipient to the peer over SMTP (`peer.rs`: TLS, AUTH as the fleet peer, `XFLEET`),
//! forgetting each only after the peer's 250 (`outcome.rs`). Pending and deferred mail
//! always goes; held and dead mail only when included.
//! `drain status`: progress. `drain stop`: the run ends after the messages in hand, what
//! is left stays queued here, and inbound and outbound transport start again.
//!
//! The node's state (`NodeState::Draining` from `drain to` until `drain stop`) is what
//! the fleet heartbeat publishes. A run keeps watching once the queue is empty (a session
//! that was in progress, a delivery report of drt can still add a message).
//!
//! Config read: `[cluster] node`, `peer_password` (`peer_password_file`), `hostname`.

mod outcome;
mod peer;
mod run;

use crate::Supervisor;
use mta_ipc::console::{ConsoleReply, DrainCommand, DrainScope, TellCommand};
use mta_types::fleet::NodeState;
use mta_types::message::{age_label, now_ms};
use mta_types::{Location, QueueName, TaskName};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Sessions to the peer at once.
const SESSIONS: usize = 4;
/// How long `drain stop` waits for the messages in hand.
const STOP_WAIT: Duration = Duration::from_secs(60);

/// The drain of this node, if one was started.
#[derive(Default)]
pub struct Drain {
    current: Mutex<Option<Run>>,
}

struct Run {
    target: String,
    peer: SocketAddr,
    include: DrainScope,
    started_ms: u64,
    progress: Arc<Progress>,
    stop: watch::Sender<bool>,
    handle: Option<JoinHandle<()>>,
}

/// What a run has done so far (`drain status`).
#[derive(Default)]
pub struct Progress {
    /// Messages the peer took (each forgotten here after its 250).
    pub sent: AtomicU64,
    /// Attempts that failed for now (the message stays and is tried again).
    pub failed: AtomicU64,
    /// Messages the peer refused for good (held here, with the reply as the reason).
    pub refused: AtomicU64,
    /// Messages with no pending recipient (nothing to hand off; left where they are).
    pub skipped: AtomicU64,
    pub passes: AtomicU64,
    /// When a pass last found nothing left (0: not yet).
    pub empty_since_ms: AtomicU64,
    pub phase: Mutex<Phase>,
    pub last_error: Mutex<Option<String>>,
}

/// Where a run is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    #[default]
    Relaying,
    /// No progress in the last pass (the peer down, every message busy): the next pass
    /// starts at this time.
    Waiting { until_ms: u64 },
    /// The queue holds nothing more to hand off; the run keeps watching.
    Empty,
    /// `drain stop`.
    Stopped,
}

impl Progress {
    fn set_phase(&self, phase: Phase) {
        *self.phase.lock().expect("phase lock") = phase;
    }

    fn error(&self, text: String) {
        *self.last_error.lock().expect("error lock") = Some(text);
    }
}

impl Drain {
    /// `Draining` from `drain to` until `drain stop`; what the fleet heartbeat publishes.
    pub fn node_state(&self) -> NodeState {
        let current = self.current.lock().expect("drain lock");
        match current.as_ref() {
            Some(run) if !*run.stop.borrow() => NodeState::Draining,
            _ => NodeState::Up,
        }
    }
}

/// `tell smtpmta drain …`.
pub async fn command(sup: &Arc<Supervisor>, command: DrainCommand) -> ConsoleReply {
    match command {
        DrainCommand::To { target, include } => start(sup, &target, include).await,
        DrainCommand::Status => ConsoleReply::Text(status(sup)),
        DrainCommand::Stop => stop(sup).await,
    }
}

async fn start(sup: &Arc<Supervisor>, target: &str, include: DrainScope) -> ConsoleReply {
    if let Some(run) = sup.drain.current.lock().expect("drain lock").as_ref() {
        if !*run.stop.borrow() {
            return ConsoleReply::Error(format!(
                "a drain to {} is on; `tell smtpmta drain stop` first",
                run.target
            ));
        }
    }
    let config = sup.config();
    let Some(secret) = config.cluster.peer_password.as_ref() else {
        return ConsoleReply::Error(
            "drain needs [cluster] peer_password_file: the secret the peer checks before it takes a hand-off".into(),
        );
    };
    let (label, peer) = match resolve(sup, target).await {
        Ok(p) => p,
        Err(e) => return ConsoleReply::Error(e),
    };
    let plan = run::Plan {
        label,
        peer,
        include,
        node: config.cluster.node.clone(),
        secret: secret.expose().to_string(),
        hostname: config.hostname.clone(),
        spool_dir: config.spool_dir(),
        sessions: SESSIONS,
    };
    let progress = Arc::new(Progress::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let handle = tokio::spawn(run::run(sup.clone(), plan, progress.clone(), stop_rx));
    *sup.drain.current.lock().expect("drain lock") = Some(Run {
        target: target.to_string(),
        peer,
        include,
        started_ms: now_ms(),
        progress,
        stop: stop_tx,
        handle: Some(handle),
    });
    tracing::info!(
        "drain to {target} ({peer}) started: inbound refused with 421, the queue goes to the peer"
    );
    let transports = set_transports(sup, true).await;
    ConsoleReply::Text(format!(
        "draining to {target} ({peer}): new connections get 421 4.3.2, outbound transport stopped, {} being handed off{transports}; see `tell smtpmta drain status`",
        scope_words(include)
    ))
}

async fn stop(sup: &Arc<Supervisor>) -> ConsoleReply {
    let (handle, target) = {
        let mut current = sup.drain.current.lock().expect("drain lock");
        let Some(run) = current.as_mut().filter(|r| !*r.stop.borrow()) else {
            return ConsoleReply::Error("no drain is on".into());
        };
        run.stop.send_replace(true);
        (run.handle.take(), run.target.clone())
    };
    if let Some(h) = handle {
        if tokio::time::timeout(STOP_WAIT, h).await.is_err() {
            tracing::warn!("drain to {target}: the run did not end within {STOP_WAIT:?}");
        }
    }
    let transports = set_transports(sup, false).await;
    tracing::info!("drain to {target} stopped: inbound and outbound transport start again");
    ConsoleReply::Text(format!(
        "drain to {target} stopped{transports}\n{}",
        status(sup)
    ))
}

/// isesctl draining (421) and osesctl stopped, or both back; "" when both said yes,
/// else what did not work (a task not running is told again by the run's next pass).
async fn set_transports(sup: &Supervisor, draining: bool) -> String {
    let outbound = if draining {
        TellCommand::StopOutboundTransport
    } else {
        TellCommand::StartOutboundTransport
    };
    let mut problems = Vec::new();
    for (task, command) in [
        (TaskName::Isesctl, TellCommand::InboundDraining(draining)),
        (TaskName::Osesctl, outbound),
    ] {
        if let ConsoleReply::Error(e) = crate::tasks::tell_task(sup, task, command).await {
            problems.push(format!("{task}: {e}"));
        }
    }
    if problems.is_empty() {
        String::new()
    } else {
        format!(" (not told: {})", problems.join("; "))
    }
}

/// The peer and how the records name it: a fleet node by its name (at the SMTP address
/// its heartbeat publishes; the label is the name), else `host:port` (or `[v6]:port`),
/// resolved now.
async fn resolve(sup: &Supervisor, target: &str) -> Result<(String, SocketAddr), String> {
    if let Ok(addr) = target.parse::<SocketAddr>() {
        return Ok((format!("[{}]:{}", addr.ip(), addr.port()), addr));
    }
    if let Some(smtp) = crate::fleet::peer_address(sup, target).await? {
        let (_, found) = lookup(&smtp).await?;
        return Ok((target.to_string(), found));
    }
    if !target.contains(':') {
        let why = match sup.fleet {
            Some(_) => "no node of the fleet (`show fleet`) has that name",
            None => "this node is in no fleet ([cluster] redis), so it knows no node by name",
        };
        return Err(format!(
            "drain: `{target}` is not host:port, and {why}; name a node or host:port (its SMTP listener)"
        ));
    }
    lookup(target).await
}

/// `host:port` resolved now: `host[ip]:port` and the address.
async fn lookup(target: &str) -> Result<(String, SocketAddr), String> {
    let (host, port) = target.rsplit_once(':').unwrap_or((target, ""));
    let found = tokio::net::lookup_host(target)
        .await
        .map_err(|e| format!("drain: cannot resolve {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("drain: {host} has no address"))?;
    Ok((format!("{host}[{}]:{port}", found.ip()), found))
}

/// The locations a drain walks (Held shares one index whatever its queue).
pub fn locations(include: DrainScope) -> Vec<Location> {
    let mut locs: Vec<Location> = [
        QueueName::InboundWork,
        QueueName::MailBox,
        QueueName::SmtpBox,
        QueueName::OutboundWork,
    ]
    .into_iter()
    .map(Location::Queue)
    .collect();
    if include.held {
        locs.push(Location::Held {
            from: QueueName::MailBox,
        });
    }
    if include.dead {
        locs.push(Location::Dead);
    }
    locs
}

/// Whether a drain with `include` walks `loc`.
pub fn in_scope(loc: Location, include: DrainScope) -> bool {
    match loc {
        Location::Held { .. } => include.held,
        Location::Dead => include.dead,
        other => locations(include).contains(&other),
    }
}

fn scope_words(include: DrainScope) -> &'static str {
    match (include.held, include.dead) {
        (false, false) => "pending and deferred mail",
        (true, false) => "pending, deferred and held mail",
        (false, true) => "pending, deferred and dead mail",
        (true, true) => "pending, deferred, held and dead mail",
    }
}

/// `drain status`.
fn status(sup: &Supervisor) -> String {
    let current = sup.drain.current.lock().expect("drain lock");
    let Some(run) = current.as_ref() else {
        return "no drain since the supervisor started; node state UP".into();
    };
    let p = &run.progress;
    let engine = sup.store.engine();
    let left: u64 = locations(run.include)
        .into_iter()
        .map(|l| engine.count_in(l))
        .sum();
    let phase = p.phase.lock().expect("phase lock").clone();
    let state = match phase {
        Phase::Relaying => "relaying".to_string(),
        Phase::Waiting { until_ms } => format!(
            "waiting: no progress in the last pass, next in {}s",
            until_ms.saturating_sub(now_ms()).div_ceil(1000)
        ),
        Phase::Empty => format!(
            "finished: nothing left to hand off (for {}); still draining, watching for late arrivals",
            age_label(Some(p.empty_since_ms.load(Ordering::Relaxed)))
        ),
        Phase::Stopped => "stopped".to_string(),
    };
    let last_error = p.last_error.lock().expect("error lock").clone();
    format!(
        "drain to {} ({}) — {}\nnode state: {}\nstarted: {} ago, {} pass(es)\nstate: {state}\nsent: {}  left: {left}  failed: {}  refused (held here): {}  skipped (nothing pending): {}\nlast error: {}",
        run.target,
        run.peer,
        scope_words(run.include),
        if *run.stop.borrow() {
            NodeState::Up
        } else {
            NodeState::Draining
        },
        age_label(Some(run.started_ms)),
        p.passes.load(Ordering::Relaxed),
        p.sent.load(Ordering::Relaxed),
        p.failed.load(Ordering::Relaxed),
        p.refused.load(Ordering::Relaxed),
        p.skipped.load(Ordering::Relaxed),
        last_error.as_deref().unwrap_or("none"),
    )
}
