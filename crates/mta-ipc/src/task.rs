//! A task's control socket: kicks, TELL commands, status, shutdown.

use crate::client::{Connection, IpcError};
use crate::console::TellCommand;
use crate::hello::Service;
use crate::paths::task_socket;
use crate::transfers::{RouterReport, TransferPage};
use mta_config::DebugKnobs;
use mta_types::{QueueName, TaskName};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TaskRequest {
    /// "There is work in this queue": best effort, collapsed by the sender.
    Kick {
        queue: QueueName,
    },
    Status,
    Tell(TellCommand),
    /// The runtime debug knobs now in effect (`set config`), all of them: the task swaps
    /// them in (`Ack`), or keeps its own if it cannot open the new `debug_outfile` (`Error`).
    SetKnobs(DebugKnobs),
    /// Re-read the directory file (`tell smtpmta refresh`): the task swaps it in if it is
    /// valid (`Ack`), else keeps the one it has and says why (`Error`).
    Refresh,
    /// Stop cleanly: finish what is in hand, release the rest, exit 0.
    Shutdown,
    /// The task's latency histograms, for the supervisor's `/metrics`.
    Histograms,
    /// The outbound controller's destinations in memory (Busy, Wait) after `after`, at
    /// most `limit` rows, for `tell router show`.
    Transfers {
        after: Option<String>,
        limit: u32,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TaskResponse {
    Ack,
    Status(TaskStatus),
    Told(String),
    Error(String),
    Histograms(Vec<HistogramSnapshot>),
    Transfers(TransferPage),
    /// A TELL command answered with a typed report (the console renders it, `--json`
    /// prints it as it is).
    Report(TaskReport),
}

/// The typed answers of TELL commands.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TaskReport {
    /// `tell router show`.
    Router(RouterReport),
    /// `show clients` (`tell isesctl show clients`).
    Clients(crate::clients::ClientReport),
}

/// A latency histogram as a task has counted it so far (since it started).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    /// The metric's name without prefix, e.g. `accept_latency_seconds`.
    pub name: String,
    pub help: String,
    /// Upper bounds of the buckets, in seconds, ascending; a last bucket (+Inf) follows.
    pub bounds: Vec<f64>,
    /// Observations per bucket (not cumulative): `bounds.len() + 1` of them.
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
}

/// What a task says about itself for `show tasks` (and `--json`, the status page).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: TaskState,
    /// What it is doing now in its own words, e.g. "listening on 127.0.0.1:2525" or
    /// "outbound transport running; 2 lists waiting".
    pub current: String,
    /// Its own counters since it started, by name, in the order it lists them
    /// (e.g. `("sent", 12)`); the lasting statistics are the store's (`show stat mail`).
    pub counters: Vec<(String, u64)>,
    /// Session handlers (`iseshlrN`, `oseshlrN`) of a controller.
    pub handlers: Vec<HandlerRow>,
}

/// A running task's state, as it reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// Waiting for work.
    #[default]
    Idle,
    /// Working on a batch (converting, routing, reporting).
    Busy,
    /// A controller whose transport is up (listening, or delivering).
    Running,
    /// A controller at its maximum of session handlers: not accepting until one frees up.
    Saturated,
    /// A controller whose transport the operator stopped (`tell smtpmta stop … transport`):
    /// the process stays to hear `start`, but to the operator the task is stopped.
    Stopped,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Idle => "idle",
            TaskState::Busy => "busy",
            TaskState::Running => "running",
            TaskState::Saturated => "saturated",
            TaskState::Stopped => "stopped",
        }
    }
}

impl TaskStatus {
    /// The one line `show tasks` prints: the current work, then the counters
    /// ("idle; converted 3, failed 0").
    pub fn detail(&self) -> String {
        let counters: Vec<String> = self
            .counters
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        match (self.current.is_empty(), counters.is_empty()) {
            (_, true) => self.current.clone(),
            (true, false) => counters.join(", "),
            (false, false) => format!("{}; {}", self.current, counters.join(", ")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerRow {
    pub name: String,
    /// `Idle`, `Busy`, or (outbound, stopped with its transport) `Stopping`.
    pub state: crate::console::RowState,
    /// e.g. "in session with 127.0.0.1:40312" or "delivering list 7 to mx.example[10.0.0.1]".
    pub detail: String,
    pub since_ms: u64,
}

/// A client of one task's control socket.
pub struct TaskClient {
    conn: Connection,
}

impl TaskClient {
    pub const TIMEOUT: Duration = Duration::from_secs(5);

    pub async fn connect(
        run_dir: &Path,
        task: TaskName,
        me: TaskName,
    ) -> Result<TaskClient, IpcError> {
        let conn =
            Connection::connect(&task_socket(run_dir, task), Service::Control(task), me).await?;
        Ok(TaskClient { conn })
    }

    pub async fn request(&mut self, request: &TaskRequest) -> Result<TaskResponse, IpcError> {
        self.conn.call(request, Self::TIMEOUT).await
    }

    pub async fn histograms(&mut self) -> Result<Vec<HistogramSnapshot>, IpcError> {
        match self.request(&TaskRequest::Histograms).await? {
            TaskResponse::Histograms(h) => Ok(h),
            other => Err(IpcError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn transfers(
        &mut self,
        after: Option<String>,
        limit: u32,
    ) -> Result<TransferPage, IpcError> {
        match self
            .request(&TaskRequest::Transfers { after, limit })
            .await?
        {
            TaskResponse::Transfers(page) => Ok(page),
            other => Err(IpcError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn status(&mut self) -> Result<TaskStatus, IpcError> {
        match self.request(&TaskRequest::Status).await? {
            TaskResponse::Status(s) => Ok(s),
            other => Err(IpcError::Unexpected(format!("{other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The knobs cross the control socket as the typed set the supervisor holds (TOML
    /// reads their levels as integers, the frame as bytes).
    #[test]
    fn set_knobs_crosses_a_frame_typed() {
        let knobs = DebugKnobs {
            smtp_debug_io: 3,
            log_mail_routing: 40,
            debug_outfile: "debug.txt".into(),
            ..DebugKnobs::default()
        };
        let payload = crate::frame::encode_payload(&TaskRequest::SetKnobs(knobs.clone())).unwrap();
        match crate::frame::decode::<TaskRequest>(&payload).unwrap() {
            TaskRequest::SetKnobs(got) => assert_eq!(got, knobs),
            other => panic!("decoded {other:?}"),
        }
    }
}
