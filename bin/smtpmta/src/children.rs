//! The task table: launch the six task executables, watch them, restart one that exits
//! unexpectedly (with back-off), and stop them in order.

use mta_ipc::console::{RowState, TaskRow};
use mta_ipc::{TaskClient, TaskRequest};
use mta_store::StoreService;
use mta_types::message::now_ms;
use mta_types::TaskName;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// First restart delay; doubled for each consecutive crash, up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A task that ran this long before exiting starts its back-off afresh.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How long a task may take to stop cleanly before it is killed (isesctl: its
/// `shutdown_grace` more, see `Children::stop_grace`).
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a restart waits for a task to come up before it starts the next one.
const UP_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq)]
enum ChildState {
    Starting,
    Running,
    Restarting { at_ms: u64 },
    Stopping,
    Stopped,
}

struct Entry {
    state: ChildState,
    pid: Option<u32>,
    since_ms: u64,
    /// Unexpected exits since the supervisor started.
    restarts: u32,
    last_exit: Option<String>,
    /// Current pid, watched by `stop_all`.
    pid_tx: watch::Sender<Option<u32>>,
    /// `tell <task> restart` (or a reload): start a new copy, retire the running one.
    restart: Arc<tokio::sync::Notify>,
}

/// An `[inbound]` listening socket the supervisor bound, passed to every isesctl it starts.
pub struct PassedListener {
    pub key: &'static str,
    pub addr: std::net::SocketAddr,
    pub listener: std::net::TcpListener,
}

#[derive(Clone)]
pub struct Children {
    table: Arc<Mutex<BTreeMap<TaskName, Entry>>>,
    exe_dir: PathBuf,
    config_path: PathBuf,
    run_dir: PathBuf,
    store: StoreService,
    /// The SMTP sockets (`mta_ipc::listeners`): open for the supervisor's lifetime, or
    /// until a reload removes one; each isesctl started gets those in effect.
    listeners: Arc<Mutex<Arc<Vec<PassedListener>>>>,
    stopping: watch::Sender<bool>,
    /// Woken whenever a task says it is ready (for `all_running`).
    ready: Arc<tokio::sync::Notify>,
    /// isesctl's `[inbound] shutdown_grace` in milliseconds (a reload may change it).
    inbound_grace_ms: Arc<AtomicU64>,
    /// Old copies of restarted tasks finishing their work; `stop_all` waits for them.
    retiring: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

/// How a task's run ended, as the supervise loop sees it.
enum RunEnd {
    Exited(String),
    /// A restart was asked: the old copy is retiring, a new one starts now.
    Replaced,
}

impl Children {
    pub fn new(
        exe_dir: PathBuf,
        config_path: PathBuf,
        run_dir: PathBuf,
        store: StoreService,
        listeners: Arc<Vec<PassedListener>>,
        inbound_grace: Duration,
    ) -> Children {
        let mut table = BTreeMap::new();
        for task in TaskName::CHILDREN {
            table.insert(
                task,
                Entry {
                    state: ChildState::Stopped,
                    pid: None,
                    since_ms: now_ms(),
                    restarts: 0,
                    last_exit: None,
                    pid_tx: watch::channel(None).0,
                    restart: Arc::new(tokio::sync::Notify::new()),
                },
            );
        }
        Children {
            table: Arc::new(Mutex::new(table)),
            exe_dir,
            config_path,
            run_dir,
            store,
            listeners: Arc::new(Mutex::new(listeners)),
            stopping: watch::channel(false).0,
            ready: Arc::new(tokio::sync::Notify::new()),
            inbound_grace_ms: Arc::new(AtomicU64::new(inbound_grace.as_millis() as u64)),
            retiring: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The SMTP sockets as passed on: key, address, descriptor.
    pub fn passed(&self) -> Vec<(&'static str, std::net::SocketAddr, std::os::fd::RawFd)> {
        use std::os::fd::AsRawFd as _;
        self.listeners()
            .iter()
            .map(|l| (l.key, l.addr, l.listener.as_raw_fd()))
            .collect()
    }

    pub fn listeners(&self) -> Arc<Vec<PassedListener>> {
        self.listeners.lock().expect("listeners lock").clone()
    }

    /// A reload: the `[inbound]` addresses of `config` become the sockets passed to the
    /// next isesctl. Kept sockets stay the same (their queues with them), new ones are
    /// bound now (an address that cannot be bound fails the reload before anything
    /// changed), removed ones are closed here (the old isesctl's copy closes when it
    /// stops). Returns whether the set changed.
    pub fn rebind(&self, config: &mta_config::Config) -> anyhow::Result<bool> {
        use anyhow::Context as _;
        let current = self.listeners();
        let mut next = Vec::new();
        for (key, addrs) in crate::listener_keys(config) {
            for addr in addrs {
                let kept = current.iter().find(|l| l.key == key && l.addr == *addr);
                let listener = match kept {
                    Some(l) => l.listener.try_clone()?,
                    None => mta_ipc::listeners::bind(*addr, config.inbound.max_handlers)
                        .with_context(|| format!("cannot listen on {addr} ([inbound] {key})"))?,
                };
                next.push(PassedListener {
                    key,
                    addr: *addr,
                    listener,
                });
            }
        }
        let same = next.len() == current.len()
            && next
                .iter()
                .zip(current.iter())
                .all(|(a, b)| a.key == b.key && a.addr == b.addr);
        if !same {
            *self.listeners.lock().expect("listeners lock") = Arc::new(next);
        }
        Ok(!same)
    }

    /// A new `[inbound] shutdown_grace` (from a reload).
    pub fn set_inbound_grace(&self, grace: Duration) {
        self.inbound_grace_ms
            .store(grace.as_millis() as u64, Ordering::Relaxed);
    }

    /// How long `task` may take to stop before it is killed: isesctl lets its sessions
    /// run `shutdown_grace`, then gives them time to write their 421.
    fn stop_grace(&self, task: TaskName) -> Duration {
        if task == TaskName::Isesctl {
            let grace = Duration::from_millis(self.inbound_grace_ms.load(Ordering::Relaxed));
            grace + STOP_GRACE + Duration::from_secs(5)
        } else {
            STOP_GRACE
        }
    }

    /// `tell <task> restart`: a new copy of the task starts at once and the running one
    /// stops gracefully beside it (isesctl: the listening sockets stay open in the
    /// supervisor, so no connection is refused; the old copy accepts no more and finishes
    /// its sessions). Returns what happened, for the console.
    pub async fn restart(&self, task: TaskName) -> Result<String, String> {
        let (notify, mut pid_rx, old) = {
            let table = self.table.lock().expect("task table lock");
            let e = table.get(&task).ok_or(format!("{task} is not a task"))?;
            if !matches!(e.state, ChildState::Running | ChildState::Starting) || e.pid.is_none() {
                return Err(format!("{task} is not running (see `show tasks`)"));
            }
            (e.restart.clone(), e.pid_tx.subscribe(), e.pid)
        };
        notify.notify_one();
        let changed = pid_rx.wait_for(|p| p.is_some() && *p != old);
        let new = match tokio::time::timeout(Duration::from_secs(10), changed).await {
            Ok(Ok(pid)) => *pid,
            _ => None,
        };
        let (old, new) = (old.unwrap_or(0), new.unwrap_or(0));
        Ok(match task {
            TaskName::Isesctl => format!(
                "isesctl restarted: pid {new} accepts connections; pid {old} accepts no more and finishes its sessions (up to {}s, then 421)",
                Duration::from_millis(self.inbound_grace_ms.load(Ordering::Relaxed)).as_secs()
            ),
            _ => format!("{task} restarted: pid {new} runs; pid {old} finishes its work and stops"),
        })
    }

    /// The running copy of `task` (pid) was replaced: asks it to stop (before the new copy
    /// opens its control socket, so the request reaches the old one), then watches it in
    /// the background: killed after its stop grace, its claims returned when it exits.
    async fn retire(&self, task: TaskName, mut child: tokio::process::Child, pid: Option<u32>) {
        let asked = tokio::time::timeout(Duration::from_secs(2), self.ask_to_stop(task)).await;
        if !matches!(asked, Ok(Ok(()))) {
            if let Some(pid) = pid {
                signal(pid, nix::sys::signal::Signal::SIGTERM);
            }
        }
        tracing::info!(%task, pid = pid.unwrap_or(0), "retiring the old copy of the task");
        let grace = self.stop_grace(task);
        let store = self.store.clone();
        let handle = tokio::spawn(async move {
            let exit = match tokio::time::timeout(grace, child.wait()).await {
                Ok(status) => status.map(|s| s.to_string()),
                Err(_) => {
                    tracing::warn!(%task, pid = pid.unwrap_or(0), "old copy did not stop in time; killing it");
                    let _ = child.start_kill();
                    child.wait().await.map(|s| s.to_string())
                }
            };
            let exit = exit.unwrap_or_else(|e| format!("wait failed: {e}"));
            if let Some(pid) = pid {
                let released = store.release_owner(pid);
                tracing::info!(%task, pid, %exit, released, "old copy stopped");
            }
        });
        let mut retiring = self.retiring.lock().expect("retiring lock");
        retiring.retain(|h| !h.is_finished());
        retiring.push(handle);
    }

    async fn ask_to_stop(&self, task: TaskName) -> Result<(), mta_ipc::IpcError> {
        let mut c = TaskClient::connect(&self.run_dir, task, TaskName::Smtpmta).await?;
        c.request(&TaskRequest::Shutdown).await.map(|_| ())
    }

    /// Launches every task, downstream first so each queue's consumer is up before its
    /// producer.
    pub fn launch_all(&self) {
        for task in TaskName::CHILDREN.iter().rev() {
            let this = self.clone();
            let task = *task;
            tokio::spawn(async move { this.supervise(task).await });
        }
    }

    /// Launches the tasks one by one, downstream first, each only once the one before it
    /// is up (registered ready): how the supervisor brings the suite back after `tell
    /// smtpmta restart`, so each new binary is seen to start before the next runs, and
    /// isesctl, started last, finds every queue's consumer up. A task not up within
    /// `UP_WAIT` is left to its back-off, and the next one starts.
    pub async fn launch_one_by_one(&self) {
        let stopping = self.stopping.subscribe();
        let of = TaskName::CHILDREN.len();
        for (k, task) in TaskName::CHILDREN.iter().rev().enumerate() {
            if *stopping.borrow() {
                return;
            }
            let (task, this) = (*task, self.clone());
            tokio::spawn(async move { this.supervise(task).await });
            match tokio::time::timeout(UP_WAIT, self.running(task)).await {
                Ok(pid) => {
                    tracing::info!(%task, pid, step = k + 1, of, "task up on the new binary")
                }
                Err(_) => {
                    tracing::warn!(%task, step = k + 1, of, wait_s = UP_WAIT.as_secs(), "task not up in time; starting the next")
                }
            }
        }
        tracing::info!("every task restarted, one by one");
    }

    /// Returns `task`'s pid once it runs (has registered ready).
    async fn running(&self, task: TaskName) -> u32 {
        loop {
            // Registered before the check, so a task ready in between is not missed.
            let changed = self.ready.notified();
            let pid = {
                let table = self.table.lock().expect("task table lock");
                table
                    .get(&task)
                    .filter(|e| e.state == ChildState::Running)
                    .and_then(|e| e.pid)
            };
            if let Some(pid) = pid {
                return pid;
            }
            changed.await;
        }
    }

    fn update(&self, task: TaskName, f: impl FnOnce(&mut Entry)) {
        let mut table = self.table.lock().expect("task table lock");
        if let Some(e) = table.get_mut(&task) {
            f(e);
        }
    }

    /// Runs one task for the supervisor's lifetime: start, wait, restart.
    async fn supervise(&self, task: TaskName) {
        let mut consecutive = 0u32;
        let mut stopping = self.stopping.subscribe();
        loop {
            if *stopping.borrow() {
                break;
            }
            let exe = self.exe_dir.join(task.as_str());
            let mut command = tokio::process::Command::new(&exe);
            command
                .arg("--config")
                .arg(&self.config_path)
                .env(mta_task::SUPERVISOR_PID_ENV, std::process::id().to_string())
                .stdin(std::process::Stdio::null())
                .kill_on_drop(false);
            if task == TaskName::Isesctl {
                self.pass_listeners(&mut command);
            }
            let mut child = match command.spawn() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(%task, error = %e, exe = %exe.display(), "cannot start task");
                    consecutive += 1;
                    if !self
                        .back_off(
                            task,
                            consecutive,
                            format!("cannot start: {e}"),
                            &mut stopping,
                        )
                        .await
                    {
                        break;
                    }
                    continue;
                }
            };
            let pid = child.id();
            let started = Instant::now();
            self.update(task, |e| {
                e.state = ChildState::Starting;
                e.pid = pid;
                e.since_ms = now_ms();
                e.pid_tx.send_replace(pid);
            });
            tracing::info!(%task, pid = pid.unwrap_or(0), "task started");
            let exit = match self.run_until_end(task, &mut child).await {
                RunEnd::Exited(exit) => exit,
                RunEnd::Replaced => {
                    self.retire(task, child, pid).await;
                    consecutive = 0;
                    continue;
                }
            };
            if let Some(pid) = pid {
                let released = self.store.release_owner(pid);
                if released > 0 {
                    tracing::info!(%task, pid, released, "claims of the exited task returned to their queues");
                }
            }
            self.update(task, |e| {
                e.pid = None;
                e.pid_tx.send_replace(None);
            });
            if *stopping.borrow() {
                self.update(task, |e| {
                    e.state = ChildState::Stopped;
                    e.since_ms = now_ms();
                    e.last_exit = Some(exit.clone());
                });
                tracing::info!(%task, %exit, "task stopped");
                break;
            }
            if started.elapsed() >= STABLE_AFTER {
                consecutive = 0;
            }
            consecutive += 1;
            tracing::warn!(%task, pid = pid.unwrap_or(0), %exit, "task exited unexpectedly");
            self.update(task, |e| e.restarts += 1);
            if !self.back_off(task, consecutive, exit, &mut stopping).await {
                break;
            }
        }
        self.update(task, |e| {
            e.state = ChildState::Stopped;
            e.pid_tx.send_replace(None);
        });
    }

    /// Waits for the task to exit, or for a restart to be asked.
    async fn run_until_end(&self, task: TaskName, child: &mut tokio::process::Child) -> RunEnd {
        let restart = {
            let table = self.table.lock().expect("task table lock");
            table.get(&task).map(|e| e.restart.clone())
        };
        let Some(restart) = restart else {
            return RunEnd::Exited("not in the task table".into());
        };
        tokio::select! {
            status = child.wait() => RunEnd::Exited(match status {
                Ok(s) => s.to_string(),
                Err(e) => format!("wait failed: {e}"),
            }),
            () = restart.notified() => RunEnd::Replaced,
        }
    }

    /// isesctl inherits the SMTP sockets: named in `SMTPMTA_LISTEN_FDS`, and made
    /// inheritable in the forked child only (the supervisor's copies stay close-on-exec,
    /// so no other task gets them).
    fn pass_listeners(&self, command: &mut tokio::process::Command) {
        let passed = self.passed();
        command.env(
            mta_ipc::listeners::LISTEN_FDS_ENV,
            mta_ipc::listeners::encode(passed.iter().copied()),
        );
        let listeners = self.listeners();
        // SAFETY: runs between fork and exec; it only calls fcntl(2) (async-signal-safe)
        // on descriptors the supervisor keeps open, and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                for l in listeners.iter() {
                    mta_ipc::listeners::inheritable(&l.listener)?;
                }
                Ok(())
            });
        }
    }

    /// Waits out the back-off; false if the suite is stopping meanwhile.
    async fn back_off(
        &self,
        task: TaskName,
        consecutive: u32,
        exit: String,
        stopping: &mut watch::Receiver<bool>,
    ) -> bool {
        let delay = FIRST_BACKOFF
            .saturating_mul(1 << consecutive.saturating_sub(1).min(10))
            .min(MAX_BACKOFF);
        tracing::warn!(%task, attempt = consecutive, delay_ms = delay.as_millis() as u64, "restarting task after back-off");
        self.update(task, |e| {
            e.state = ChildState::Restarting {
                at_ms: now_ms() + delay.as_millis() as u64,
            };
            e.since_ms = now_ms();
            e.last_exit = Some(exit);
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => !*stopping.borrow(),
            _ = stopping.changed() => false,
        }
    }

    /// A task said it is ready (its control socket is up).
    pub fn mark_ready(&self, task: TaskName, pid: u32) {
        self.update(task, |e| {
            if e.pid == Some(pid) {
                e.state = ChildState::Running;
                e.since_ms = now_ms();
            }
        });
        self.ready.notify_waiters();
    }

    /// Returns once every task runs. A task says it is ready only after its `start` (isesctl
    /// binds its listeners there), so this is when the MTA serves: systemd's READY=1.
    pub async fn all_running(&self) {
        loop {
            // Registered before the check, so a task ready in between is not missed.
            let changed = self.ready.notified();
            let all = {
                let table = self.table.lock().expect("task table lock");
                table.values().all(|e| e.state == ChildState::Running)
            };
            if all {
                return;
            }
            changed.await;
        }
    }

    pub fn pid_of(&self, task: TaskName) -> Option<u32> {
        self.table
            .lock()
            .expect("task table lock")
            .get(&task)
            .and_then(|e| e.pid)
    }

    pub fn is_child(&self, pid: u32) -> bool {
        self.table
            .lock()
            .expect("task table lock")
            .values()
            .any(|e| e.pid == Some(pid))
    }

    /// Stops every task in order, inbound first; each gets `STOP_GRACE` to finish, then
    /// SIGKILL.
    /// `refuse_new`: take the SMTP sockets out of the listening state first (a quit); a
    /// restart of the supervisor keeps them listening, so connections wait for the next
    /// isesctl.
    pub async fn stop_all(&self, refuse_new: bool) {
        self.stopping.send_replace(true);
        // New connections are refused from now on; isesctl finishes the sessions it has.
        if refuse_new {
            self.stop_listening();
        }
        for task in TaskName::CHILDREN {
            let mut pid_rx = {
                let mut table = self.table.lock().expect("task table lock");
                let Some(e) = table.get_mut(&task) else {
                    continue;
                };
                if e.pid.is_some() {
                    e.state = ChildState::Stopping;
                }
                e.pid_tx.subscribe()
            };
            let Some(pid) = *pid_rx.borrow() else {
                continue;
            };
            tracing::info!(%task, pid, "stopping task");
            let asked = async {
                let mut c = TaskClient::connect(&self.run_dir, task, TaskName::Smtpmta).await?;
                c.request(&TaskRequest::Shutdown).await
            };
            if tokio::time::timeout(Duration::from_secs(2), asked)
                .await
                .map(|r| r.is_err())
                .unwrap_or(true)
            {
                signal(pid, nix::sys::signal::Signal::SIGTERM);
            }
            let exited =
                tokio::time::timeout(self.stop_grace(task), pid_rx.wait_for(|p| p.is_none()))
                    .await
                    .is_ok();
            if !exited {
                tracing::warn!(%task, pid, "task did not stop in time; killing it");
                signal(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = tokio::time::timeout(STOP_GRACE, pid_rx.wait_for(|p| p.is_none())).await;
            }
        }
        let retiring = std::mem::take(&mut *self.retiring.lock().expect("retiring lock"));
        for handle in retiring {
            let _ = handle.await;
        }
    }

    /// Takes the SMTP sockets out of the listening state (the suite is stopping).
    fn stop_listening(&self) {
        use std::os::fd::AsRawFd as _;
        for l in self.listeners().iter() {
            let fd = l.listener.as_raw_fd();
            match nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Read) {
                Ok(()) | Err(nix::errno::Errno::ENOTCONN) => {}
                Err(e) => tracing::warn!(addr = %l.addr, error = %e, "cannot stop listening"),
            }
        }
    }

    /// The task table as `show tasks` shows it (handlers are added by the caller).
    pub fn rows(&self) -> Vec<(TaskName, TaskRow)> {
        let table = self.table.lock().expect("task table lock");
        TaskName::CHILDREN
            .iter()
            .filter_map(|t| table.get(t).map(|e| (*t, e)))
            .map(|(task, e)| {
                let (state, detail) = match &e.state {
                    ChildState::Starting => (RowState::Starting, String::new()),
                    ChildState::Running => (RowState::Running, String::new()),
                    ChildState::Restarting { at_ms } => (
                        RowState::Restarting,
                        format!(
                            "restart #{} in {:.1}s (last exit: {})",
                            e.restarts,
                            at_ms.saturating_sub(now_ms()) as f64 / 1000.0,
                            e.last_exit.as_deref().unwrap_or("?")
                        ),
                    ),
                    ChildState::Stopping => (RowState::Stopping, String::new()),
                    ChildState::Stopped => {
                        (RowState::Stopped, e.last_exit.clone().unwrap_or_default())
                    }
                };
                (
                    task,
                    TaskRow {
                        name: task.as_str().to_string(),
                        pid: e.pid,
                        state,
                        description: task.description().to_string(),
                        detail,
                        since_ms: Some(e.since_ms),
                        restarts: e.restarts,
                        counters: Vec::new(),
                        parent: None,
                    },
                )
            })
            .collect()
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}
