//! Kicks: "there is work in your queue". Best effort and collapsed — a thousand kicks
//! while one is in flight become one more kick — because every consumer also polls.

use crate::task::{TaskClient, TaskRequest};
use mta_types::{QueueName, TaskName};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Kicks the consumer of one queue. Cheap to clone; `kick()` never blocks.
#[derive(Clone)]
pub struct Kicker {
    shared: Arc<Shared>,
}

struct Shared {
    pending: AtomicBool,
    notify: Notify,
}

impl Kicker {
    /// Starts the background sender on the current tokio runtime.
    pub fn spawn(run_dir: &Path, queue: QueueName, me: TaskName) -> Kicker {
        let shared = Arc::new(Shared {
            pending: AtomicBool::new(false),
            notify: Notify::new(),
        });
        let run_dir: PathBuf = run_dir.to_path_buf();
        let sender = shared.clone();
        tokio::spawn(async move {
            let target = queue.consumer();
            let mut client: Option<TaskClient> = None;
            loop {
                sender.notify.notified().await;
                while sender.pending.swap(false, Ordering::AcqRel) {
                    if client.is_none() {
                        client = TaskClient::connect(&run_dir, target, me).await.ok();
                    }
                    if let Some(c) = client.as_mut() {
                        if c.request(&TaskRequest::Kick { queue }).await.is_err() {
                            // The consumer is restarting; its poll will find the work.
                            client = None;
                        }
                    }
                }
            }
        });
        Kicker { shared }
    }

    pub fn kick(&self) {
        if !self.shared.pending.swap(true, Ordering::AcqRel) {
            self.shared.notify.notify_one();
        }
    }
}
