//! mta-task — the skeleton every task executable runs on (Postfix's `single_server`).
//!
//! `run::<T>()` does everything that is not the task's own job: reads `--config`, loads
//! the configuration (a bad one is one clear line and exit 2, before anything is
//! touched), connects to the supervisor, opens the task's control socket
//! (`<data_dir>/run/<task>.sock`), answers `Status`, TELL commands, kicks and
//! `Shutdown`, and stops cleanly on SIGTERM/SIGINT or when the supervisor goes away —
//! a task never outlives its supervisor (its lifeline connection closes, and the kernel
//! sends SIGTERM through `PR_SET_PDEATHSIG` as a backstop).
//!
//! With `user` set it first becomes that user (`privileges.rs`), before any file is opened.
//!
//! The task itself implements `Task`: `start` (set up), `run` (the job, returning once
//! `ctx.shutting_down()`), `status` (for `show tasks`) and optionally `tell`.

mod context;
mod control;
pub mod error;
pub mod fleet;
pub mod histogram;
mod logging;
pub mod outcome_log;
pub mod privileges;
pub mod queue_worker;
pub mod test_hooks;

pub use context::TaskContext;
pub use error::{KnobError, TellError, WorkError};
pub use logging::{init_logging, DebugOutfile, LOG_FORMAT_ENV};
pub use outcome_log::{log_outcome, Outcome, OutcomeLine};
pub use queue_worker::{Drain, QueueWorker, WorkResult};

/// Below this many bytes of message content, reading and parsing it is done on the task's
/// own thread: a hand-off to the blocking pool and back (two thread wake-ups) costs more
/// than the work. Larger batches go to the blocking pool, so the control socket stays
/// responsive.
pub const INLINE_WORK_BYTES: u64 = 1 << 20;

/// Runs `work` (file reads, parsing: no fsync) inline when `bytes` is small, else on the
/// blocking pool.
pub async fn read_work<R: Send + 'static>(
    bytes: u64,
    work: impl FnOnce() -> R + Send + 'static,
) -> Result<R, WorkError> {
    if bytes < INLINE_WORK_BYTES {
        Ok(work())
    } else {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| WorkError::panicked("worker thread", e))
    }
}

use anyhow::Context as _;
use clap::Parser;
use mta_config::Config;
use mta_ipc::console::TellCommand;
use mta_ipc::{SupervisorClient, TaskStatus};
use mta_types::TaskName;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Environment variable through which the supervisor tells a task its pid.
pub const SUPERVISOR_PID_ENV: &str = "SMTPMTA_SUPERVISOR_PID";

/// A task's job. The skeleton owns everything else.
pub trait Task: Sized + Send + Sync + 'static {
    const NAME: TaskName;

    /// Prepares the task (binds ports, opens files). An error here is a broken
    /// environment: the task exits with one clear line.
    fn start(ctx: &TaskContext) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// The job. Returns after `ctx.shutting_down()` becomes true, having finished or
    /// released what it held.
    fn run(self: Arc<Self>, ctx: TaskContext) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// What `show tasks` says about this task and its handlers.
    fn status(&self) -> TaskStatus;

    /// The task's latency histograms (`histogram::Histogram::snapshot`), read by the
    /// supervisor's `/metrics`. Default: none.
    fn histograms(&self) -> Vec<mta_ipc::task::HistogramSnapshot> {
        Vec::new()
    }

    /// `tell smtpmta refresh` reached this task and the directory was re-read: reload
    /// whatever else the task keeps from files (isesctl: the TLS certificate). An error
    /// is reported to the console; the task keeps what it had. Default: nothing.
    fn refresh(&self, _ctx: &TaskContext) -> Result<(), TellError> {
        Ok(())
    }

    /// A TELL command with a typed answer (`tell router show`): `None` for the commands
    /// that `tell` answers with text. Default: none.
    fn report(
        &self,
        _ctx: &TaskContext,
        _command: &TellCommand,
    ) -> impl Future<Output = Option<Result<mta_ipc::task::TaskReport, TellError>>> + Send {
        async { None }
    }

    /// The destinations this task is transferring to or holding for a handler (the
    /// outbound controller), for `tell router show`. Default: this task has none.
    fn transfers(
        &self,
        _after: Option<String>,
        _limit: u32,
    ) -> Option<mta_ipc::transfers::TransferPage> {
        None
    }

    /// A TELL command other than `show status`.
    fn tell(
        &self,
        _ctx: &TaskContext,
        command: TellCommand,
    ) -> impl Future<Output = Result<String, TellError>> + Send {
        async move { Err(Self::unknown(command, "")) }
    }

    /// The answer to a TELL command this task does not know; `hint` says what it does know.
    fn unknown(command: TellCommand, hint: &'static str) -> TellError {
        TellError::unknown(Self::NAME, command, hint)
    }
}

#[derive(Parser, Debug)]
struct Args {
    /// The configuration file (the supervisor passes its own).
    #[arg(long, default_value = "etc/smtpmta.toml")]
    config: PathBuf,
}

/// The `main` of every task executable.
pub fn run<T: Task>() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: configuration error: {e}", T::NAME);
            return ExitCode::from(2);
        }
    };
    // Before anything else runs or opens a file: as `user` (the supervisor's children are
    // that user already; this also covers a task started by hand as root). And before
    // PR_SET_PDEATHSIG, which the kernel clears when the credentials change.
    if let Some(run_as) = &config.run_as {
        if let Err(e) = privileges::drop_to(run_as) {
            eprintln!("{}: {e}", T::NAME);
            return ExitCode::FAILURE;
        }
    }
    let outfile = init_logging(T::NAME);
    test_hooks::abort_on_panic();
    die_with_supervisor();
    // One thread per task: the tasks are I/O-bound, and on a small machine the wake-ups
    // between worker threads of a multi-threaded runtime cost more than they bring.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: cannot start the async runtime: {e}", T::NAME);
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve::<T>(config, outfile)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(task = %T::NAME, "{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve<T: Task>(config: Config, outfile: DebugOutfile) -> anyhow::Result<()> {
    let run_dir = config.run_dir();
    let supervisor = SupervisorClient::connect(&run_dir, T::NAME)
        .await
        .with_context(|| {
            format!(
                "cannot reach the supervisor in {} (is smtpmta running?)",
                run_dir.display()
            )
        })?;
    let ctx = TaskContext::new(Arc::new(config), T::NAME, outfile);
    let task = Arc::new(T::start(&ctx).await.context("start-up failed")?);
    let control =
        control::bind::<T>(&ctx, task.clone()).context("cannot open the control socket")?;

    // The lifeline: announce readiness, then stop when the supervisor goes away.
    let lifeline_ctx = ctx.clone();
    tokio::spawn(async move {
        match supervisor.ready_and_wait(T::NAME).await {
            Ok(()) => tracing::info!("supervisor went away; shutting down"),
            Err(e) => tracing::warn!(error = %e, "lost the supervisor; shutting down"),
        }
        lifeline_ctx.request_shutdown();
    });
    let signal_ctx = ctx.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        signal_ctx.request_shutdown();
    });

    tracing::info!(
        pid = std::process::id(),
        "{} started",
        T::NAME.description()
    );
    let result = task.run(ctx.clone()).await;
    control.close();
    tracing::info!("{} stopped", T::NAME.description());
    result
}

/// Whether process `pid` is alive: it exists and is not a zombie (a zombie keeps its pid,
/// and answers signal 0, until it is reaped). Reads `/proc/<pid>/stat`.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// Asks the kernel to SIGTERM this process when the supervisor dies, and exits at once
/// if it already has.
fn die_with_supervisor() {
    let Some(expected) = std::env::var(SUPERVISOR_PID_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return;
    };
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
    if nix::unistd::getppid().as_raw() != expected {
        eprintln!("supervisor {expected} is gone; exiting");
        std::process::exit(0);
    }
}
