//! Talking to the tasks over their control sockets: TELL commands, refresh, the debug
//! knobs, and `show tasks` (each running task's own status). Used by the console, the
//! drain, a reload and the HTTP side; it uses none of them.

use crate::Supervisor;
use mta_ipc::console::{ConsoleReply, RowState, TaskRow, TellCommand};
use mta_ipc::task::TaskReport;
use mta_ipc::{TaskClient, TaskRequest, TaskResponse, TaskState};
use mta_types::TaskName;
use std::time::Duration;

/// How long `show tasks` waits for each task's own status.
const STATUS_TIMEOUT: Duration = Duration::from_millis(1500);

/// Tells a task to re-read the directory and its files (`refresh`), then gives it `knobs`.
pub async fn refresh_task(
    sup: &Supervisor,
    task: TaskName,
    knobs: &mta_config::DebugKnobs,
) -> Result<(), String> {
    let run_dir = sup.config().run_dir();
    let mut client = TaskClient::connect(&run_dir, task, TaskName::Smtpmta)
        .await
        .map_err(|e| e.to_string())?;
    match client
        .request(&TaskRequest::Refresh)
        .await
        .map_err(|e| e.to_string())?
    {
        TaskResponse::Ack => {}
        TaskResponse::Error(e) => return Err(e),
        _ => return Err("an answer that is not an acknowledgement".into()),
    }
    push_knobs(&run_dir, task, knobs).await
}

pub async fn tell_task(sup: &Supervisor, task: TaskName, command: TellCommand) -> ConsoleReply {
    if command == TellCommand::Restart {
        return match sup.children.restart(task).await {
            Ok(text) => ConsoleReply::Text(text),
            Err(text) => ConsoleReply::Error(text),
        };
    }
    let command_text = command.to_string();
    let request = async {
        let mut client =
            TaskClient::connect(&sup.config().run_dir(), task, TaskName::Smtpmta).await?;
        client.request(&TaskRequest::Tell(command)).await
    };
    match request.await {
        Ok(TaskResponse::Told(text)) => ConsoleReply::Text(text),
        Ok(TaskResponse::Report(TaskReport::Router(report))) => ConsoleReply::Router(report),
        Ok(TaskResponse::Report(TaskReport::Clients(report))) => ConsoleReply::Clients(report),
        Ok(TaskResponse::Error(text)) => ConsoleReply::Error(text),
        Ok(_) => ConsoleReply::Error(format!(
            "{task} answered `{command_text}` with something else than text (a mismatched binary?)"
        )),
        Err(e) => ConsoleReply::Error(format!("{task} is not answering ({e}); see `show tasks`")),
    }
}

/// `show tasks`: the supervisor, every task, and each controller's handlers (asking each
/// running task for its status at once). Also read by `/metrics`.
pub async fn show_tasks(sup: &Supervisor) -> Vec<TaskRow> {
    let run_dir = sup.config().run_dir();
    let mut rows = vec![TaskRow {
        name: "smtpmta".into(),
        pid: Some(std::process::id()),
        state: RowState::Running,
        description: TaskName::Smtpmta.description().into(),
        detail: format!("serving the queue store ({} leased)", sup.store.leased()),
        since_ms: Some(sup.started_ms),
        restarts: 0,
        parent: None,
        counters: vec![("leased".into(), sup.store.leased() as u64)],
    }];
    let tasks = sup.children.rows();
    let statuses = ask_statuses(&run_dir, &tasks).await;
    for ((_, mut row), status) in tasks.into_iter().zip(statuses) {
        let handlers = match status {
            Some(s) => {
                // A controller whose transport is stopped is, to the operator, a stopped
                // task (Domino's osesctl exits; ours stays to hear `start`): its state
                // says so, its detail says why.
                if row.state == RowState::Running && s.state == TaskState::Stopped {
                    row.state = RowState::Stopped;
                }
                if row.detail.is_empty() {
                    row.detail = s.detail();
                }
                row.counters = s.counters;
                s.handlers
            }
            None => Vec::new(),
        };
        let parent = row.name.clone();
        let pid = row.pid;
        rows.push(row);
        for h in handlers {
            rows.push(TaskRow {
                name: h.name,
                pid,
                state: h.state,
                description: if parent == "isesctl" {
                    "Inbound Session Handler"
                } else {
                    "Outbound Session Handler"
                }
                .into(),
                detail: h.detail,
                since_ms: Some(h.since_ms),
                restarts: 0,
                parent: Some(parent.clone()),
                counters: Vec::new(),
            });
        }
    }
    rows
}

/// Every running task's own status, asked at once (`None`: not running or not answering
/// within `STATUS_TIMEOUT`), in the order of `tasks`.
async fn ask_statuses(
    run_dir: &std::path::Path,
    tasks: &[(TaskName, TaskRow)],
) -> Vec<Option<mta_ipc::TaskStatus>> {
    let pending: Vec<_> = tasks
        .iter()
        .map(|(task, row)| {
            let run_dir = run_dir.to_path_buf();
            let task = *task;
            let alive = row.pid.is_some() && row.state == RowState::Running;
            let ask_one = async move {
                if !alive {
                    return None;
                }
                let ask = async {
                    let mut c = TaskClient::connect(&run_dir, task, TaskName::Smtpmta)
                        .await
                        .ok()?;
                    c.status().await.ok()
                };
                tokio::time::timeout(STATUS_TIMEOUT, ask)
                    .await
                    .ok()
                    .flatten()
            };
            tokio::spawn(ask_one)
        })
        .collect();
    let mut statuses = Vec::with_capacity(pending.len());
    for handle in pending {
        statuses.push(handle.await.ok().flatten());
    }
    statuses
}

/// Gives a task the debug knobs in effect (`set config`, and when it says it is ready).
pub async fn push_knobs(
    run_dir: &std::path::Path,
    task: TaskName,
    knobs: &mta_config::DebugKnobs,
) -> Result<(), String> {
    let mut client = TaskClient::connect(run_dir, task, TaskName::Smtpmta)
        .await
        .map_err(|e| e.to_string())?;
    match client
        .request(&TaskRequest::SetKnobs(knobs.clone()))
        .await
        .map_err(|e| e.to_string())?
    {
        TaskResponse::Ack => Ok(()),
        other => Err(format!("{other:?}")),
    }
}
