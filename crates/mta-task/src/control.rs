//! The task's control socket: the skeleton answers it for every task.

use crate::{Task, TaskContext};
use mta_ipc::console::TellCommand;
use mta_ipc::hello::{Hello, Service};
use mta_ipc::paths::task_socket;
use mta_ipc::server::{bind as bind_socket, serve, Handler};
use mta_ipc::{TaskRequest, TaskResponse};
use std::path::PathBuf;
use std::sync::Arc;

pub(crate) struct ControlSocket {
    path: PathBuf,
    /// The socket file's inode as bound: a restarted copy of the task binds the same path
    /// while this one finishes, and this one must not remove the new copy's file.
    inode: Option<u64>,
    server: tokio::task::JoinHandle<()>,
}

impl ControlSocket {
    pub(crate) fn close(self) {
        use std::os::unix::fs::MetadataExt as _;
        self.server.abort();
        let current = std::fs::metadata(&self.path).ok().map(|m| m.ino());
        if current.is_some() && current == self.inode {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

struct Control<T> {
    task: Arc<T>,
    ctx: TaskContext,
}

impl<T> Clone for Control<T> {
    fn clone(&self) -> Self {
        Control {
            task: self.task.clone(),
            ctx: self.ctx.clone(),
        }
    }
}

impl<T: Task> Handler<TaskRequest, TaskResponse> for Control<T> {
    async fn handle(&self, _peer: &Hello, request: TaskRequest) -> TaskResponse {
        match request {
            TaskRequest::Kick { .. } => {
                self.ctx.kick();
                TaskResponse::Ack
            }
            TaskRequest::Status => TaskResponse::Status(self.task.status()),
            TaskRequest::Histograms => TaskResponse::Histograms(self.task.histograms()),
            TaskRequest::Tell(TellCommand::ShowStatus) => {
                let status = self.task.status();
                let mut text = format!(
                    "{} ({}): {}",
                    T::NAME,
                    T::NAME.description(),
                    status.detail()
                );
                for h in &status.handlers {
                    text.push_str(&format!("\n  {:<10} {:<5} {}", h.name, h.state, h.detail));
                }
                TaskResponse::Told(text)
            }
            TaskRequest::Tell(TellCommand::Quit) => TaskResponse::Error(format!(
                "{} is stopped with the suite: `tell smtpmta quit`",
                T::NAME
            )),
            TaskRequest::Tell(TellCommand::Other(words))
                if words.len() == 2
                    && words[0].eq_ignore_ascii_case("debug")
                    && words[1].eq_ignore_ascii_case("panic") =>
            {
                match crate::test_hooks::arm_panic() {
                    Ok(()) => TaskResponse::Told(format!("{}: panic armed", T::NAME)),
                    Err(e) => TaskResponse::Error(e.to_string()),
                }
            }
            TaskRequest::Transfers { after, limit } => match self.task.transfers(after, limit) {
                Some(page) => TaskResponse::Transfers(page),
                None => TaskResponse::Error(format!("{} transfers nothing", T::NAME)),
            },
            TaskRequest::Tell(command) => match self.task.report(&self.ctx, &command).await {
                Some(Ok(report)) => TaskResponse::Report(report),
                Some(Err(e)) => TaskResponse::Error(e.to_string()),
                None => match self.task.tell(&self.ctx, command).await {
                    Ok(text) => TaskResponse::Told(text),
                    Err(e) => TaskResponse::Error(e.to_string()),
                },
            },
            TaskRequest::SetKnobs(knobs) => match self.ctx.set_knobs(knobs) {
                Ok(()) => TaskResponse::Ack,
                Err(e) => TaskResponse::Error(e.to_string()),
            },
            TaskRequest::Refresh => match self.ctx.reload_directory() {
                Ok(users) => {
                    tracing::info!("directory re-read: {users} users");
                    match self.task.refresh(&self.ctx) {
                        Ok(()) => TaskResponse::Ack,
                        Err(e) => TaskResponse::Error(e.to_string()),
                    }
                }
                Err(e) => {
                    tracing::warn!("directory not re-read, keeping the old one: {e}");
                    TaskResponse::Error(e.to_string())
                }
            },
            TaskRequest::Shutdown => {
                self.ctx.request_shutdown();
                TaskResponse::Ack
            }
        }
    }
}

pub(crate) fn bind<T: Task>(ctx: &TaskContext, task: Arc<T>) -> std::io::Result<ControlSocket> {
    let run_dir = ctx.config().run_dir();
    let path = task_socket(&run_dir, T::NAME);
    let listener = bind_socket(&path)?;
    let handler = Control {
        task,
        ctx: ctx.clone(),
    };
    let server = tokio::spawn(serve::<TaskRequest, TaskResponse, _>(
        listener,
        Service::Control(T::NAME),
        handler,
    ));
    let inode = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&path).ok().map(|m| m.ino())
    };
    Ok(ControlSocket {
        path,
        inode,
        server,
    })
}
