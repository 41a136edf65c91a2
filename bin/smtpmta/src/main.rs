//! smtpmta — the supervisor (Domino's SMTPMTA add-in task).
//!
//! Reads the configuration, takes the data_dir's pid-file lock (one supervisor per
//! data_dir), binds every listener, becomes `user` if one is configured (`mail_user.rs`:
//! the supervisor keeps no root after that), opens the queue store (sled: this is the only process that may), serves it
//! and the console on `<data_dir>/run/smtpmta.sock`, launches the six task executables and
//! restarts one that exits unexpectedly, with back-off. `tell smtpmta quit`, SIGTERM or
//! SIGINT stop every task in order (inbound first), then remove the sockets and the pid
//! file and exit 0. Compacts the queue's spool every 10 minutes and on
//! `tell smtpmta compact` (`compaction.rs`).
//!
//! Serves `/metrics` (Prometheus) and a status page with charts on `[metrics] listen`
//! (`http/`), the charts from a minute-by-minute history of the last day (`history.rs`).
//! Under systemd (`etc/smtpmta.service`, Type=notify) it sends READY=1 once every task
//! runs, and STOPPING=1 when it starts to stop them.
//!
//! Answers: `SupervisorRequest::{Ready, Store, Console}`. Config: everything (it passes
//! its `--config` path on to every task).

mod children;
mod compaction;
mod console;
mod dkim_keygen;
mod drain;
mod fleet;
mod history;
mod http;
mod instance;
mod mail_user;
mod memory;
mod operations;
mod rates;
mod reload;
mod service;
mod spool_recovery;
mod stats;
mod task_time;
mod tasks;
mod trace;
mod tracking;

use anyhow::Context;
use clap::Parser;
use mta_config::{Config, DebugKnobs, Directory};
use mta_ipc::hello::Service;
use mta_ipc::paths::{pid_file, supervisor_socket};
use mta_ipc::{SupervisorRequest, SupervisorResponse};
use mta_store::StoreService;
use mta_types::message::now_ms;
use mta_types::TaskName;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "smtpmta supervisor: starts and watches the MTA's tasks"
)]
struct Args {
    /// The configuration file.
    #[arg(long, global = true, default_value = "etc/smtpmta.toml")]
    config: PathBuf,
    /// `text` (one line per event, for people) or `json` (one object per line, for log
    /// shippers); every task logs the same way.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Writes a new DKIM key pair (the private key as PEM, mode 0600) and prints the TXT
    /// record to publish and the `[[dkim]]` entry to add. Starts nothing.
    DkimKeygen(dkim_keygen::Args),
    /// Reads one password from stdin and prints its argon2id PHC string, for a
    /// directory user's `password` key.
    HashPassword,
    /// Checks the configuration (the file, the directory, the DKIM keys and a named TLS
    /// certificate) as a reload would, changes nothing: exit 0 if it is good, else 1 with
    /// the file, line and key. For scripts and the unit's `ExecReload` (`postfix check`).
    CheckConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// What the supervisor's request handlers share.
pub struct Supervisor {
    /// The configuration in effect (`tell smtpmta reload` swaps it).
    config: Mutex<Arc<Config>>,
    /// One reload at a time.
    pub reloading: tokio::sync::Mutex<()>,
    pub store: StoreService,
    pub children: children::Children,
    pub started_ms: u64,
    /// The debug knobs in effect (`set config`), pushed to every task.
    pub knobs: Mutex<DebugKnobs>,
    /// The directory in effect (`tell smtpmta refresh` swaps it).
    pub directory: Mutex<Arc<Directory>>,
    /// Counters, handler and session peaks over time (`show stat mail`, `show server`).
    pub rates: rates::Rates,
    /// The last day minute by minute (the status page's charts).
    pub history: history::History,
    /// `tell smtpmta drain`: the hand-off of this node's queue to a fleet peer, and the
    /// node's state (`drain.node_state()`, what the fleet heartbeat publishes).
    pub drain: drain::Drain,
    quit: Notify,
    /// `tell smtpmta restart`: after the stop, run the binary on disk again (exec) with the
    /// listening sockets.
    restart: std::sync::atomic::AtomicBool,
    /// `[cluster] redis`: the link to the fleet (heartbeat, `show fleet`); none alone.
    pub fleet: Option<fleet::FleetStatus>,
}

impl Supervisor {
    pub fn config(&self) -> Arc<Config> {
        self.config.lock().expect("config lock").clone()
    }

    /// Makes `fresh` the configuration in effect, with what the supervisor keeps from it
    /// (a reload; the caller tells the tasks).
    pub fn apply_config(&self, fresh: Arc<Config>) {
        let engine = self.store.engine();
        engine.set_hold_undeliverable(fresh.hold_undeliverable);
        engine.set_tracking_days(fresh.tracking_days);
        *self.directory.lock().expect("directory lock") = Arc::new(fresh.directory.clone());
        *self.knobs.lock().expect("knob lock") = fresh.debug.clone();
        self.children
            .set_inbound_grace(fresh.inbound.shutdown_grace);
        *self.config.lock().expect("config lock") = fresh;
    }

    /// `tell smtpmta restart`: stop as for quit, keeping the listening sockets listening,
    /// then exec the supervisor's binary from disk (`reexec`).
    pub fn request_restart(&self) {
        self.restart
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.quit.notify_one();
    }

    pub fn request_quit(&self) {
        self.quit.notify_one();
    }

    pub fn knobs(&self) -> DebugKnobs {
        self.knobs.lock().expect("knob lock").clone()
    }

    pub fn directory(&self) -> Arc<Directory> {
        self.directory.lock().expect("directory lock").clone()
    }
}

fn main() -> ExitCode {
    memory::configure_allocator();
    let args = Args::parse();
    match &args.command {
        Some(Command::DkimKeygen(keygen)) => return dkim_keygen::run(keygen),
        Some(Command::HashPassword) => return hash_password(),
        Some(Command::CheckConfig) => return check_config(&args.config),
        None => {}
    }
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("smtpmta: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    // omsgcnv signs with these keys: a key it could not use is found here, before any task
    // starts, rather than as a task that keeps failing.
    if let Err(e) = mta_auth::SigningKeys::load(&config) {
        eprintln!("smtpmta: configuration error: {e}");
        return ExitCode::from(2);
    }
    // The tasks inherit the environment: one setting for every process. Set before any
    // thread exists.
    let format = match args.log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    std::env::set_var(mta_task::LOG_FORMAT_ENV, format);
    mta_task::init_logging(TaskName::Smtpmta);
    // A panicked actor (the store's committer, a child watcher) must not leave the
    // supervisor half alive: it exits, and the init system restarts it.
    mta_task::test_hooks::abort_on_panic();
    // One runtime thread, the main thread: it lives as long as the supervisor, so the
    // children it spawns keep their parent thread (PR_SET_PDEATHSIG follows the thread
    // that forked). Store requests are short; the group committer and sled's writers have
    // threads of their own; wake-ups between runtime workers would cost more than they
    // bring on a small machine.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("smtpmta: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(supervise(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smtpmta: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `smtpmta check-config`: the checks of a reload, nothing applied.
fn check_config(path: &std::path::Path) -> ExitCode {
    match reload::check(path) {
        Ok(config) => {
            println!(
                "{}: good ({} users, {} aliases)",
                config.path.display(),
                config.directory.users.len(),
                config.directory.aliases.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smtpmta check-config: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `smtpmta hash-password`: one line from stdin (without its line end) to a PHC string.
fn hash_password() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("smtpmta hash-password: cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        eprintln!("smtpmta hash-password: no password on stdin");
        return ExitCode::FAILURE;
    }
    match mta_tls::password::hash(password) {
        Ok(phc) => {
            println!("{phc}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smtpmta hash-password: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the supervisor holds from its start to its stop: the data_dir lock and the sockets
/// bound before privileges were dropped.
struct Held {
    instance: instance::Instance,
    smtp_listeners: Vec<children::PassedListener>,
    metrics_listener: Option<std::net::TcpListener>,
}

/// While still root (with `user =`): takes the data_dir, binds every listener while ports
/// below 1024 may still be bound (mail_user.rs), then becomes the mail user.
fn take_place(config: &Config) -> anyhow::Result<Held> {
    // data_dir and run/ belong to the mail user.
    mail_user::prepare(config)?;
    let instance = instance::Instance::acquire(&pid_file(&config.run_dir()), &config.data_dir)?;
    // The SMTP sockets stay here for our lifetime and are passed to each isesctl we start.
    let smtp_listeners = bind_smtp(config)?;
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(http::bind(addr)?),
        None => None,
    };
    if let Some(run_as) = &config.run_as {
        let dropped = mta_task::privileges::drop_to(run_as)?;
        tracing::info!(
            user = %run_as.user,
            group = %run_as.group,
            uid = run_as.uid,
            gid = run_as.gid,
            ?dropped,
            "running as {}",
            run_as.user
        );
        mail_user::check_reach(config, run_as)?;
    }
    Ok(Held {
        instance,
        smtp_listeners,
        metrics_listener,
    })
}

/// Opens the store (and what must be ready before it: the certificate, the spool folder,
/// the allocator), with the settings the console may later change.
fn open_store(config: &Config) -> anyhow::Result<StoreService> {
    // Before any task starts: make the self-signed certificate if [tls] names none, and
    // load the certificate once so a bad one stops the start here, with the key and file.
    let tls = mta_tls::ensure_certificate(config).context("TLS certificate")?;
    tracing::info!("TLS certificate: {}", tls.certificate.display());
    std::fs::create_dir_all(config.spool_dir())
        .with_context(|| format!("cannot create {}", config.spool_dir().display()))?;
    memory::install();
    let store = StoreService::open(&config.store_dir(), Some(&config.data_dir))?;
    store
        .engine()
        .set_hold_undeliverable(config.hold_undeliverable);
    store.engine().set_tracking_days(config.tracking_days);
    // A rebuild that fails is said and the suite starts anyway (never a crash loop): the
    // spool keeps the content while the DAMAGED report holds compaction off.
    if let Err(e) = spool_recovery::run_if_damaged(&store, &config.store_dir(), &config.spool_dir())
    {
        tracing::error!("rebuilding lost records from the spool failed: {e:#}");
    }
    if let Err(e) = spool_recovery::replay_unsaved(&store, &config.spool_dir()) {
        tracing::error!(
            "putting back the records of spooled messages failed (the next start tries again): {e:#}"
        );
    }
    Ok(store)
}

async fn supervise(config: Config) -> anyhow::Result<()> {
    let run_dir = config.run_dir();
    let held = take_place(&config)?;
    let store = open_store(&config)?;
    let exe_dir = std::env::current_exe()
        .context("cannot find my own executable")?
        .parent()
        .map(PathBuf::from)
        .context("executable has no folder")?;
    // Started again by `tell smtpmta restart` (set by `reexec`; the tasks do not see it).
    let restarted = std::env::var_os(RESTARTED_ENV).is_some();
    std::env::remove_var(RESTARTED_ENV);
    let children = children::Children::new(
        exe_dir,
        config.path.clone(),
        run_dir.clone(),
        store.clone(),
        Arc::new(held.smtp_listeners),
        config.inbound.shutdown_grace,
    );
    let fleet = mta_task::fleet::join(&config)
        .await?
        .map(fleet::FleetStatus::new);
    let sup = Arc::new(Supervisor {
        fleet,
        knobs: Mutex::new(config.debug.clone()),
        directory: Mutex::new(Arc::new(config.directory.clone())),
        config: Mutex::new(Arc::new(config)),
        reloading: tokio::sync::Mutex::new(()),
        store,
        children: children.clone(),
        started_ms: now_ms(),
        rates: rates::Rates::default(),
        history: history::History::default(),
        drain: drain::Drain::default(),
        quit: Notify::new(),
        restart: std::sync::atomic::AtomicBool::new(false),
    });

    let socket_path = supervisor_socket(&run_dir);
    let server = serve_socket(&sup, &socket_path)?;
    let metrics = serve_http(&sup, held.metrics_listener)?;
    tracing::info!(
        pid = std::process::id(),
        data_dir = %sup.config().data_dir.display(),
        listen = ?sup.config().inbound.listen,
        "smtpmta supervisor started"
    );
    if restarted {
        // After `tell smtpmta restart`: the tasks come back one by one on the new binaries.
        let children = children.clone();
        tokio::spawn(async move { children.launch_one_by_one().await });
    } else {
        children.launch_all();
    }
    tokio::spawn(fleet::heartbeat(sup.clone()));
    let notify_ready = tokio::spawn(notify_ready(children.clone()));
    let background = [
        tokio::spawn(compaction::schedule(sup.clone())),
        tokio::spawn(rates::run(sup.clone())),
        tokio::spawn(tracking::prune_schedule(sup.clone())),
    ];
    wait_for_stop(&sup).await?;
    notify_ready.abort();
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let restart = sup.restart.load(std::sync::atomic::Ordering::SeqCst);
    children.stop_all(!restart).await;
    if let Some(m) = metrics {
        m.abort();
    }
    for task in background {
        task.abort();
    }
    server.abort();
    let _ = std::fs::remove_file(&socket_path);
    // Make sure the last commits are on disk before the database closes, and the store's
    // flush mark with them (the tasks are gone: nothing commits any more).
    sup.store.flush().await?;
    sup.store.engine().flush_at_close()?;
    drop(held.instance);
    if restart {
        return Err(reexec(&children));
    }
    tracing::info!("smtpmta supervisor stopped");
    Ok(())
}

/// The supervisor socket: task registration, the store service, the console.
fn serve_socket(
    sup: &Arc<Supervisor>,
    socket_path: &std::path::Path,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = mta_ipc::server::bind(socket_path).with_context(|| {
        format!(
            "cannot open the supervisor socket {}",
            socket_path.display()
        )
    })?;
    Ok(tokio::spawn(mta_ipc::server::serve::<
        SupervisorRequest,
        SupervisorResponse,
        _,
    >(
        listener,
        Service::Supervisor,
        service::SupervisorService(sup.clone()),
    )))
}

/// `/metrics` and the status page, where `[metrics] listen` is set.
fn serve_http(
    sup: &Arc<Supervisor>,
    listener: Option<std::net::TcpListener>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(listener) = listener else {
        return Ok(None);
    };
    let addr = listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tracing::info!("metrics: serving http://{addr}/metrics");
    Ok(Some(tokio::spawn(http::serve(sup.clone(), listener))))
}

/// systemd (Type=notify): ready once every task runs, listeners included. Without
/// NOTIFY_SOCKET (not under systemd) this does nothing.
async fn notify_ready(children: children::Children) {
    children.all_running().await;
    tracing::info!("all tasks running");
    if let Err(e) = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("all tasks running"),
        ],
    ) {
        tracing::warn!("cannot tell systemd we are ready: {e}");
    }
}

/// Until a quit: from the console, SIGTERM or SIGINT. SIGHUP reloads the configuration
/// meanwhile (a reload logs its own reply).
async fn wait_for_stop(sup: &Arc<Supervisor>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = sup.quit.notified() => tracing::info!("quit requested from the console"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading the configuration");
                let sup = sup.clone();
                tokio::spawn(async move { crate::reload::reload(&sup).await });
                continue;
            }
        }
        return Ok(());
    }
}

/// The end of `tell smtpmta restart`: every task has stopped, the store is flushed and
/// closed, the pid-file lock given up. Runs this binary from disk again with the same
/// arguments (same pid: systemd and scripts see no exit), passing the listening sockets
/// as isesctl gets them (`SMTPMTA_LISTEN_FDS`, close-on-exec cleared): connections that
/// arrive meanwhile wait in their queues and are served by the new isesctl. Returns only
/// if the exec failed.
fn reexec(children: &children::Children) -> anyhow::Error {
    use std::os::unix::process::CommandExt as _;
    let passed = children.passed();
    for l in children.listeners().iter() {
        if let Err(e) = mta_ipc::listeners::inheritable(&l.listener) {
            return anyhow::anyhow!("restart: cannot pass a listening socket on: {e}");
        }
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return anyhow::anyhow!("restart: cannot find my own executable: {e}"),
    };
    tracing::info!(exe = %exe.display(), "smtpmta supervisor stopped; starting again from its binary");
    let e = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(RESTARTED_ENV, "1")
        .env(
            mta_ipc::listeners::LISTEN_FDS_ENV,
            mta_ipc::listeners::encode(passed.iter().map(|(k, a, fd)| (*k, *a, *fd))),
        )
        .exec();
    anyhow::anyhow!("restart: cannot run {}: {e}", exe.display())
}

/// Set by `reexec` for the next run: the tasks start one by one (`launch_one_by_one`).
const RESTARTED_ENV: &str = "SMTPMTA_RESTARTED";

/// The `[inbound]` listening keys and their addresses.
pub fn listener_keys(config: &Config) -> [(&'static str, &Vec<std::net::SocketAddr>); 3] {
    let inbound = &config.inbound;
    [
        ("listen", &inbound.listen),
        ("submission_listen", &inbound.submission_listen),
        ("submissions_listen", &inbound.submissions_listen),
    ]
}

/// Binds every `[inbound]` address (`listen`, `submission_listen`, `submissions_listen`):
/// a port in use is a clear start-up error naming the key.
fn bind_smtp(config: &Config) -> anyhow::Result<Vec<children::PassedListener>> {
    let inbound = &config.inbound;
    let mut bound = Vec::new();
    // After `tell smtpmta restart`, the sockets the previous run passed on (still
    // listening, with their waiting connections); an address no longer configured closes.
    let mut passed = mta_ipc::listeners::take_passed().context("restart")?;
    std::env::remove_var(mta_ipc::listeners::LISTEN_FDS_ENV);
    for (key, addrs) in listener_keys(config) {
        for addr in addrs {
            let kept = passed
                .iter()
                .position(|p| p.key == key && p.addr == *addr)
                .map(|i| std::net::TcpListener::from(passed.swap_remove(i).fd));
            let listener = match kept {
                Some(listener) => listener,
                None => mta_ipc::listeners::bind(*addr, inbound.max_handlers)
                    .with_context(|| format!("cannot listen on {addr} ([inbound] {key})"))?,
            };
            bound.push(children::PassedListener {
                key,
                addr: *addr,
                listener,
            });
        }
    }
    Ok(bound)
}
