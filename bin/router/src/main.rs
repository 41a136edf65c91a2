//! router — Router.
//!
//! The job is filled in by a later issue; for now the task runs on the shared skeleton,
//! answers the console and waits for work.

#[allow(dead_code)] // used by the delivery loop once it lands
mod maildir;

use mta_ipc::TaskStatus;
use mta_task::{Task, TaskContext};
use mta_types::TaskName;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

struct Router;

impl Task for Router {
    const NAME: TaskName = TaskName::Router;

    async fn start(_ctx: &TaskContext) -> anyhow::Result<Self> {
        Ok(Router)
    }

    async fn run(self: Arc<Self>, ctx: TaskContext) -> anyhow::Result<()> {
        while ctx.next_work(Duration::from_secs(1)).await {}
        Ok(())
    }

    fn status(&self) -> TaskStatus {
        TaskStatus {
            detail: "idle".into(),
            handlers: Vec::new(),
        }
    }
}

fn main() -> ExitCode {
    mta_task::run::<Router>()
}
