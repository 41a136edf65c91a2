//! A task's control socket: kicks, TELL commands, status, shutdown.

use crate::client::{Connection, IpcError};
use crate::console::TellCommand;
use crate::hello::Service;
use crate::paths::task_socket;
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
    /// New values of the runtime debug knobs (`set config`), by notes.ini name, as text
    /// (`debug_outfile` is a path).
    SetKnobs(Vec<(String, String)>),
    /// Re-read the directory file (`tell smtpmta refresh`): the task swaps it in if it is
    /// valid (`Ack`), else keeps the one it has and says why (`Error`).
    Refresh,
    /// Stop cleanly: finish what is in hand, release the rest, exit 0.
    Shutdown,
    /// The task's latency histograms, for the supervisor's `/metrics`.
    Histograms,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TaskResponse {
    Ack,
    Status(TaskStatus),
    Told(String),
    Error(String),
    Histograms(Vec<HistogramSnapshot>),
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

/// What a task says about itself for `show tasks`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// The task's state in its own words, e.g. "listening on 127.0.0.1:2525" or "idle".
    pub detail: String,
    /// Session handlers (`iseshlrN`, `oseshlrN`) of a controller.
    pub handlers: Vec<HandlerRow>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerRow {
    pub name: String,
    /// `idle`, or `busy`.
    pub state: String,
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

    pub async fn status(&mut self) -> Result<TaskStatus, IpcError> {
        match self.request(&TaskRequest::Status).await? {
            TaskResponse::Status(s) => Ok(s),
            other => Err(IpcError::Unexpected(format!("{other:?}"))),
        }
    }
}
