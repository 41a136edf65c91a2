//! The supervisor's socket: registration of tasks, the store service, the console.

use crate::client::{Connection, IpcError};
use crate::console::{ConsoleCommand, ConsoleReply};
use crate::hello::Service;
use crate::paths::supervisor_socket;
use crate::store::{StoreRequest, StoreResponse};
use mta_types::TaskName;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SupervisorRequest {
    /// A task's control socket is up. The connection then stays open as the task's
    /// lifeline: when it closes, the task knows the supervisor is gone and stops.
    Ready {
        task: TaskName,
    },
    Store(StoreRequest),
    Console(ConsoleCommand),
}

// Sent over IPC and moved once; boxing the big variant would add an allocation per
// message for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SupervisorResponse {
    Ack,
    Store(StoreResponse),
    Console(ConsoleReply),
    Error(String),
}

/// A connection to the supervisor.
pub struct SupervisorClient {
    conn: Connection,
}

impl SupervisorClient {
    pub async fn connect(run_dir: &Path, me: TaskName) -> Result<SupervisorClient, IpcError> {
        let conn =
            Connection::connect(&supervisor_socket(run_dir), Service::Supervisor, me).await?;
        Ok(SupervisorClient { conn })
    }

    pub async fn call(
        &mut self,
        request: &SupervisorRequest,
        timeout: Duration,
    ) -> Result<SupervisorResponse, IpcError> {
        self.conn.call(request, timeout).await
    }

    /// Announces the task, then waits until the supervisor goes away.
    pub async fn ready_and_wait(mut self, task: TaskName) -> Result<(), IpcError> {
        match self
            .conn
            .call(&SupervisorRequest::Ready { task }, Duration::from_secs(10))
            .await?
        {
            SupervisorResponse::Ack => {}
            other => return Err(IpcError::Unexpected(format!("{other:?}"))),
        }
        loop {
            if self.conn.recv::<SupervisorResponse>().await?.is_none() {
                return Ok(());
            }
        }
    }

    pub async fn console(
        &mut self,
        command: ConsoleCommand,
        timeout: Duration,
    ) -> Result<ConsoleReply, IpcError> {
        match self
            .conn
            .call(&SupervisorRequest::Console(command), timeout)
            .await?
        {
            SupervisorResponse::Console(reply) => Ok(reply),
            SupervisorResponse::Error(e) => Ok(ConsoleReply::Error(e)),
            other => Err(IpcError::Unexpected(format!("{other:?}"))),
        }
    }
}
