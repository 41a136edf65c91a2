//! The inbound transport: listening sockets, the accept loop, and one session per
//! accepted connection on a handler from the handler table.
//!
//! A handler permit (one of `max_handlers`) is taken BEFORE `accept()`: with every handler
//! busy the controller stops accepting, new connections wait in the kernel's backlog, and
//! accepting resumes when a session ends (Domino's behaviour, seed exercise 2).
//! `stop` closes every listening socket (new connections are refused; sessions in progress
//! finish); while the node is drained (`set_draining`) new connections get `421 4.3.2`; `start` binds them again. `shutdown` (the task stopping) only stops accepting:
//! sessions get `[inbound] shutdown_grace`, then `421 4.3.2`.
//!
//! Three kinds of listener share the handlers: `listen` (SMTP, STARTTLS optional),
//! `submission_listen` (RFC 6409: STARTTLS, then AUTH, before MAIL) and
//! `submissions_listen` (RFC 8314: implicit TLS, AUTH before MAIL).
//!
//! Config read: `[inbound]` (listen, submission_listen, submissions_listen, max_handlers,
//! limits and timeouts, max_auth_failures, auth_failure_window), `hostname`, `[tls]`.
//! Logs (SMTPDebug >= 1): one line at connect and one summary line at disconnect.
//! Logs (always): when every handler is busy and a connection arrives, one warning for the
//! burst, and one line when accepting resumes.

use crate::door::Door;
use crate::handler_table::{Assigned, HandlerTable};
use crate::intake::Intake;
use crate::mail_auth::InboundAuth;
use crate::milter::Milters;
use crate::policy::{Security, SessionPolicy};
use anyhow::Context as _;
use mta_ipc::listeners::{self, Passed};
use mta_ipc::{TaskState, TaskStatus};
use mta_smtp::{run_session, ClientInfo, ListenerMode, SessionConfig};
use mta_task::histogram::{Histogram, COMMIT_BOUNDS};
use mta_task::TaskContext;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// After the shutdown grace, how long sessions get to write their `421` and close.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// The inbound transport and its sessions.
pub struct Inbound {
    shared: Arc<Shared>,
    /// Present while listening; serialises start and stop.
    running: tokio::sync::Mutex<Option<Running>>,
    /// The addresses listened on now (empty: stopped), for `show tasks`.
    listening: Mutex<Vec<(SocketAddr, ListenerMode)>>,
    /// The listening sockets the supervisor bound and passed (`mta_ipc::listeners`); an
    /// address not among them is bound here.
    passed: Vec<Passed>,
}

/// What the accept loop and the sessions share.
struct Shared {
    ctx: TaskContext,
    intake: Intake,
    /// One per listener mode (relay, submission, submissions).
    sessions: [SessionConfig; 3],
    security: Security,
    table: Arc<HandlerTable>,
    /// One per handler: held by a session, or by the accept loop while it waits in accept.
    permits: Arc<Semaphore>,
    /// End of DATA to the 250 (the durable commit), per accepted message.
    accept_latency: Arc<Histogram>,
    /// SPF, DKIM and DMARC at the end of DATA.
    mail_auth: Arc<InboundAuth>,
    /// True once the shutdown grace is over: every session answers `421 4.3.2`.
    closing: watch::Sender<bool>,
    /// `[[milter]]`.
    milters: Milters,
    /// The node is being drained (`tell smtpmta drain`): every new connection gets
    /// `421 4.3.2` instead of a banner.
    draining: AtomicBool,
    /// Per-client limits, DNS lists and the pregreet test, before the banner.
    door: Door,
}

struct Running {
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
    /// Indexes into `Inbound::passed` of the supervisor's sockets listened on: stopping
    /// takes them out of the listening state (closing our copy would not).
    passed: Vec<usize>,
}

impl Inbound {
    pub fn new(
        ctx: &TaskContext,
        intake: Intake,
        mail_auth: InboundAuth,
        security: Security,
        passed: Vec<Passed>,
        door: Door,
    ) -> Inbound {
        let config = ctx.config();
        let inbound = &config.inbound;
        let session = SessionConfig {
            hostname: config.hostname.clone(),
            max_message_size: inbound.max_message_size,
            max_recipients: inbound.max_recipients,
            max_line_length: inbound.max_line_length,
            command_timeout: inbound.command_timeout,
            data_timeout: inbound.data_timeout,
            session_timeout: inbound.session_timeout,
            max_errors: inbound.max_errors,
            bare_newline: inbound.bare_newline,
            mode: ListenerMode::Relay,
        };
        let with_mode = |mode| SessionConfig {
            mode,
            ..session.clone()
        };
        let sessions = [
            with_mode(ListenerMode::Relay),
            with_mode(ListenerMode::Submission),
            with_mode(ListenerMode::Submissions),
        ];
        let max = inbound.max_handlers.max(1);
        Inbound {
            shared: Arc::new(Shared {
                ctx: ctx.clone(),
                intake,
                sessions,
                security,
                table: Arc::new(HandlerTable::new(max)),
                permits: Arc::new(Semaphore::new(max)),
                accept_latency: Arc::new(Histogram::new(
                    "accept_latency_seconds",
                    "Time from the end of a message's DATA to its 250 (content and record durable)",
                    COMMIT_BOUNDS,
                )),
                mail_auth: Arc::new(mail_auth),
                closing: watch::channel(false).0,
                milters: Milters::new(config),
                door,
                draining: AtomicBool::new(false),
            }),
            running: tokio::sync::Mutex::new(None),
            listening: Mutex::new(Vec::new()),
            passed,
        }
    }

    /// Binds every `[inbound] listen` address and starts accepting. Says whether it was
    /// stopped before, and where it listens now.
    pub async fn listen(&self) -> anyhow::Result<(bool, String)> {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Ok((false, self.listening_text()));
        }
        let mut listeners = Vec::new();
        let mut bound = Vec::new();
        let inbound = &self.shared.ctx.config().inbound;
        let kinds = [
            (&inbound.listen, ListenerMode::Relay, "listen"),
            (
                &inbound.submission_listen,
                ListenerMode::Submission,
                "submission_listen",
            ),
            (
                &inbound.submissions_listen,
                ListenerMode::Submissions,
                "submissions_listen",
            ),
        ];
        let mut passed_used = Vec::new();
        for (addrs, mode, key) in kinds {
            for addr in addrs {
                let cannot = || format!("cannot listen on {addr} ([inbound] {key})");
                let passed = self
                    .passed
                    .iter()
                    .position(|p| p.key == key && p.addr == *addr);
                let listener = match passed {
                    Some(i) => {
                        let listener = listeners::relisten(&self.passed[i], inbound.max_handlers)
                            .with_context(cannot)?;
                        passed_used.push(i);
                        listener
                    }
                    None => listeners::bind(*addr, inbound.max_handlers).with_context(cannot)?,
                };
                bound.push((listener.local_addr().unwrap_or(*addr), mode));
                listeners.push((listener, mode));
            }
        }
        let (stop, stopped) = watch::channel(false);
        let listeners = listeners
            .into_iter()
            .map(|(listener, mode)| watched(listener).map(|fd| (fd, mode)))
            .collect::<io::Result<Vec<_>>>()
            .context("cannot watch the listening sockets")?;
        let accept = tokio::spawn(accept_loop(self.shared.clone(), listeners, stopped));
        *running = Some(Running {
            stop,
            accept,
            passed: passed_used,
        });
        *self.listening.lock().expect("listening lock") = bound;
        let text = self.listening_text();
        tracing::info!("inbound transport started: {text}");
        Ok((true, text))
    }

    /// Closes every listening socket; sessions in progress go on.
    pub async fn stop(&self) -> bool {
        let Some(passed) = self.stop_accepting().await else {
            return false;
        };
        // The supervisor's sockets are still open: they stop listening, so connections
        // are refused.
        for i in passed {
            if let Err(e) = listeners::stop_listening(&self.passed[i]) {
                tracing::warn!(addr = %self.passed[i].addr, error = %e, "cannot stop listening");
            }
        }
        tracing::info!("inbound transport stopped");
        true
    }

    /// Ends the accept loop (which owns and closes our own sockets); returns the indexes
    /// of the supervisor's sockets it listened on, or `None` if it was not running.
    async fn stop_accepting(&self) -> Option<Vec<usize>> {
        let Running {
            stop,
            accept,
            passed,
        } = self.running.lock().await.take()?;
        let _ = stop.send(true);
        let _ = accept.await;
        self.listening.lock().expect("listening lock").clear();
        Some(passed)
    }

    /// Stops accepting, gives sessions in progress up to `grace` to finish, answers
    /// `421 4.3.2` to those left, then lets the intake make durable what it holds.
    ///
    /// The supervisor's sockets are left listening: while a new isesctl starts (a
    /// restart, a reload) connections wait in their queue instead of being refused; when
    /// the whole suite stops, the supervisor takes them out of the listening state first.
    pub async fn shutdown(&self, grace: Duration) {
        self.stop_accepting().await;
        let max = self.shared.table.max() as u32;
        let busy = self.shared.table.busy();
        if busy > 0 {
            tracing::info!(
                "shutting down: waiting up to {grace:?} for {busy} session(s) to finish"
            );
        }
        let all_idle = self.shared.permits.acquire_many(max);
        tokio::pin!(all_idle);
        if tokio::time::timeout(grace, &mut all_idle).await.is_err() {
            tracing::warn!(
                "{} session(s) still open after {grace:?}: answering 421 4.3.2 and closing them",
                self.shared.table.busy()
            );
            self.shared.closing.send_replace(true);
            // Each writes its 421 and closes; a session inside a delivery finishes it
            // first. A client that does not read is not waited for long.
            if tokio::time::timeout(CLOSE_WAIT, &mut all_idle)
                .await
                .is_err()
            {
                tracing::warn!(
                    "{} session(s) did not close in time: dropping them",
                    self.shared.table.busy()
                );
            }
        }
        self.shared.intake.close().await;
    }

    pub fn status(&self) -> TaskStatus {
        let max = self.shared.table.max();
        let listening = !self.listening.lock().expect("listening lock").is_empty();
        let (state, current) = if !listening {
            (TaskState::Stopped, "inbound transport stopped".to_string())
        } else if self.shared.draining.load(Ordering::Relaxed) {
            (
                TaskState::Running,
                format!(
                    "draining: 421 to new connections on {}",
                    self.listening_text()
                ),
            )
        } else if self.shared.table.busy() >= max {
            (
                TaskState::Saturated,
                format!("all {max} handlers busy: not accepting"),
            )
        } else {
            (TaskState::Running, self.listening_text())
        };
        // With shared per-client limits: the fleet's link and its cost.
        let counters = self.shared.door.counters();
        TaskStatus {
            state,
            current,
            counters,
            handlers: self.shared.table.rows(),
        }
    }

    /// `tell smtpmta drain`: new connections get `421 4.3.2` (true) or a banner again
    /// (false); sessions in progress finish either way. Says whether it changed.
    pub fn set_draining(&self, on: bool) -> bool {
        let was = self.shared.draining.swap(on, Ordering::Relaxed);
        if was != on {
            tracing::info!(
                "inbound transport {}",
                if on {
                    "draining: new connections get 421 4.3.2"
                } else {
                    "no longer draining: new connections get the banner"
                }
            );
        }
        was != on
    }

    /// `show clients`: the per-client counters, busiest first.
    pub fn clients(&self) -> mta_ipc::clients::ClientReport {
        self.shared.door.clients()
    }

    /// For `/metrics`: the accept latency so far.
    pub fn histograms(&self) -> Vec<mta_ipc::task::HistogramSnapshot> {
        vec![self.shared.accept_latency.snapshot()]
    }

    fn listening_text(&self) -> String {
        let addrs = self.listening.lock().expect("listening lock");
        let list: Vec<String> = addrs
            .iter()
            .map(|(a, mode)| match mode {
                ListenerMode::Relay => a.to_string(),
                other => format!("{a} ({})", other.as_str()),
            })
            .collect();
        format!("listening on {}", list.join(", "))
    }
}

/// A listening socket, registered with the reactor once: accepting and watching for
/// waiting connections (without accepting them) use the same registration.
pub(crate) type Listener = AsyncFd<std::net::TcpListener>;

/// Registers a bound, non-blocking listener for `accept_loop`.
fn watched(std_listener: std::net::TcpListener) -> io::Result<Listener> {
    std_listener.set_nonblocking(true)?;
    // SAFETY: the std listener owns its descriptor, which stays open and the same for as
    // long as the AsyncFd holds it.
    unsafe { AsyncFd::register_with_interest(std_listener, Interest::READABLE) }
        .map_err(|e| io::Error::other(e.to_string()))
}

/// Takes a handler permit, then accepts one connection from any listener and gives it to
/// the handler; until told to stop. Returning drops (closes) the listeners.
async fn accept_loop(
    shared: Arc<Shared>,
    listeners: Vec<(Listener, ListenerMode)>,
    mut stop: watch::Receiver<bool>,
) {
    // A burst: from the first connection that found every handler busy until the listen
    // queue is empty again. The console hears of it once at each end.
    let mut burst = false;
    loop {
        let permit = match shared.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => match wait_while_all_busy(&shared, &listeners, &mut stop, burst).await {
                Some((permit, told)) => {
                    burst |= told;
                    permit
                }
                None => break,
            },
        };
        if burst {
            // Still someone waiting? Take them now; else the burst is over.
            match accept_now(&listeners) {
                Some(accepted) => {
                    take(&shared, accepted, permit).await;
                    continue;
                }
                None => {
                    burst = false;
                    tracing::info!("inbound session handlers free again; accepting connections");
                }
            }
        }
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = accept_any(&listeners) => accepted,
        };
        take(&shared, accepted, permit).await;
    }
}

/// Gives an accepted connection to a handler.
async fn take(
    shared: &Arc<Shared>,
    accepted: io::Result<(std::net::TcpStream, SocketAddr, ListenerMode)>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let accepted = accepted.and_then(|(stream, peer, mode)| {
        // accept(2) does not pass O_NONBLOCK on to the new socket.
        stream.set_nonblocking(true)?;
        Ok((TcpStream::from_std(stream)?, peer, mode))
    });
    match accepted {
        Ok((stream, peer, mode)) => {
            let handler = shared.table.assign(peer, permit);
            tokio::spawn(serve(shared.clone(), stream, peer, mode, handler));
        }
        // The supervisor took the socket out of the listening state (the suite stops).
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(e) => {
            // Out of descriptors and the like: do not spin.
            tracing::warn!(error = %e, "accept failed");
            if !matches!(
                e.kind(),
                io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
            ) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Every handler is busy: waits for one to be free, watching the listening sockets without
/// accepting (the connections stay in the kernel's queue, without a banner). When a
/// connection arrives meanwhile and no burst is under way (`in_burst`), says so on the
/// console (seed 002, exercise 2: "what type of message appears on the server console?").
/// Returns the permit and whether it said so; `None`: told to stop.
async fn wait_while_all_busy(
    shared: &Arc<Shared>,
    listeners: &[(Listener, ListenerMode)],
    stop: &mut watch::Receiver<bool>,
    in_burst: bool,
) -> Option<(tokio::sync::OwnedSemaphorePermit, bool)> {
    let max = shared.table.max();
    let mut told = in_burst;
    loop {
        let arrived = async {
            if told {
                return std::future::pending().await;
            }
            poll_fn(|cx| {
                for (fd, _) in listeners {
                    // The reactor's readiness may be left over from the last accept: ask
                    // the kernel, and wait for the next edge if nobody is there.
                    while let Poll::Ready(Ok(mut guard)) = fd.poll_read_ready(cx) {
                        if connection_waiting(fd) {
                            return Poll::Ready(());
                        }
                        guard.clear_ready();
                    }
                }
                Poll::Pending
            })
            .await
        };
        tokio::select! {
            biased;
            _ = stop.changed() => return None,
            permit = shared.permits.clone().acquire_owned() => {
                let permit = permit.expect("the handler permits are never closed");
                return Some((permit, told && !in_burst));
            }
            () = arrived => {
                told = true;
                tracing::warn!(
                    "all {max} inbound session handlers busy; not accepting connections until one is free (they wait in the listen queue)"
                );
            }
        }
    }
}

/// Whether a connection waits in the listener's accept queue (poll(2), not accept).
fn connection_waiting(fd: &Listener) -> bool {
    use std::os::fd::AsRawFd as _;
    let mut pollfd = libc::pollfd {
        fd: fd.get_ref().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; timeout 0 never blocks.
    let n = unsafe { libc::poll(&mut pollfd, 1, 0) };
    n > 0 && pollfd.revents & libc::POLLIN != 0
}

/// A connection waiting in any listener's queue now, without waiting for one.
#[allow(clippy::type_complexity)]
fn accept_now(
    listeners: &[(Listener, ListenerMode)],
) -> Option<io::Result<(std::net::TcpStream, SocketAddr, ListenerMode)>> {
    for (fd, mode) in listeners {
        match fd.get_ref().accept() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return Some(other.map(|(s, p)| (s, p, *mode))),
        }
    }
    None
}

async fn accept_any(
    listeners: &[(Listener, ListenerMode)],
) -> io::Result<(std::net::TcpStream, SocketAddr, ListenerMode)> {
    poll_fn(|cx| {
        for (fd, mode) in listeners {
            // A stale readiness gives WouldBlock, which clears it; poll again to wait.
            while let Poll::Ready(ready) = fd.poll_read_ready(cx) {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => return Poll::Ready(Err(e)),
                };
                match guard.try_io(|inner| inner.get_ref().accept()) {
                    Ok(accepted) => return Poll::Ready(accepted.map(|(s, p)| (s, p, *mode))),
                    Err(_would_block) => continue,
                }
            }
        }
        Poll::Pending
    })
    .await
}

/// A node being drained answers `421 4.3.2` and closes (a client tries another MX).
/// Implicit TLS (`submissions`) has no plaintext reply: the connection is just closed.
async fn refuse_draining(mut stream: TcpStream, hostname: &str, mode: ListenerMode) {
    use tokio::io::AsyncWriteExt as _;
    if mode != ListenerMode::Submissions {
        let reply = mta_smtp::Reply::draining(hostname).wire();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), stream.write_all(reply.as_bytes())).await;
    }
    let _ = stream.shutdown().await;
}

/// One SMTP session on `handler` (iseshlrN); the handler is idle again when this returns.
async fn serve(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    mode: ListenerMode,
    handler: Assigned,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    let debug = shared.ctx.knobs().smtp_debug >= 1;
    let name = handler.name();
    if debug {
        tracing::info!(target: mta_types::DEBUG_TARGET, handler = %name, client = %peer, listener = mode.as_str(), "connect from [{}]", peer.ip());
    }
    shared.intake.count_session();
    let config = shared.ctx.config();
    if shared.draining.load(Ordering::Relaxed) {
        refuse_draining(stream, &config.hostname, mode).await;
        return;
    }
    let Some(door) = shared.door.admit(config, &mut stream, peer, mode).await else {
        return; // refused before the banner (logged); the handler is idle again
    };
    let milters = shared.milters.session(mode.as_str(), &shared.intake);
    let mut hooks = SessionPolicy::new(
        shared.ctx.clone(),
        shared.intake.clone(),
        peer,
        name.clone(),
        shared.accept_latency.clone(),
        shared.mail_auth.clone(),
        shared.security.clone(),
    )
    .with_closing(shared.closing.subscribe())
    .with_milters(milters)
    .with_door(door);
    let session = match mode {
        ListenerMode::Relay => &shared.sessions[0],
        ListenerMode::Submission => &shared.sessions[1],
        ListenerMode::Submissions => &shared.sessions[2],
    };
    let summary = run_session(stream, ClientInfo { peer, local }, session, &mut hooks).await;
    hooks.finish().await;
    if debug {
        tracing::info!(
            target: mta_types::DEBUG_TARGET,
            handler = %name,
            client = %peer,
            accepted = summary.accepted,
            rejected = summary.rejected,
            errors = summary.errors,
            end = ?summary.end,
            "disconnect from [{}]",
            peer.ip()
        );
    }
    drop(handler);
}
