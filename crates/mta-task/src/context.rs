//! What a task's job gets from the skeleton: the configuration, the store, kicks, the
//! runtime debug knobs, and the shutdown signal.

use mta_config::{Config, DebugKnobs, Directory};
use mta_ipc::{Kicker, StoreClient};
use mta_types::{QueueName, TaskName};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

#[derive(Clone)]
pub struct TaskContext {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    me: TaskName,
    store: StoreClient,
    kicked: Notify,
    shutdown: watch::Sender<bool>,
    knobs: Mutex<DebugKnobs>,
    /// The directory in effect: the config's, until `tell smtpmta refresh` swaps it.
    directory: Mutex<Arc<Directory>>,
    kickers: Mutex<Vec<(QueueName, Kicker)>>,
}

impl TaskContext {
    pub(crate) fn new(config: Arc<Config>, me: TaskName) -> TaskContext {
        let store = StoreClient::new(&config.run_dir(), me);
        let knobs = Mutex::new(config.debug.clone());
        let directory = Mutex::new(Arc::new(config.directory.clone()));
        TaskContext {
            inner: Arc::new(Inner {
                config,
                me,
                store,
                kicked: Notify::new(),
                shutdown: watch::channel(false).0,
                knobs,
                directory,
                kickers: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn me(&self) -> TaskName {
        self.inner.me
    }

    pub fn store(&self) -> &StoreClient {
        &self.inner.store
    }

    /// The kicker for the consumer of `queue` (one per queue per process, so kicks from
    /// all of this task's workers are collapsed together).
    pub fn kicker(&self, queue: QueueName) -> Kicker {
        let mut kickers = self.inner.kickers.lock().expect("kicker lock");
        if let Some((_, k)) = kickers.iter().find(|(q, _)| *q == queue) {
            return k.clone();
        }
        let k = Kicker::spawn(&self.inner.config.run_dir(), queue, self.inner.me);
        kickers.push((queue, k.clone()));
        k
    }

    /// The debug knobs in effect now (`set config` changes them at runtime).
    pub fn knobs(&self) -> DebugKnobs {
        self.inner.knobs.lock().expect("knob lock").clone()
    }

    /// The directory of users and aliases in effect now (a snapshot: `tell smtpmta
    /// refresh` swaps in a new one; use this rather than `config().directory`).
    pub fn directory(&self) -> Arc<Directory> {
        self.inner.directory.lock().expect("directory lock").clone()
    }

    /// Re-reads the directory file; a bad one keeps the current directory.
    pub(crate) fn reload_directory(&self) -> Result<usize, String> {
        let fresh = self
            .config()
            .reload_directory()
            .map_err(|e| e.to_string())?;
        let users = fresh.users.len();
        *self.inner.directory.lock().expect("directory lock") = Arc::new(fresh);
        Ok(users)
    }

    pub(crate) fn set_knob(&self, name: &str, value: u8) -> Result<(), String> {
        let mut knobs = self.inner.knobs.lock().expect("knob lock");
        knobs
            .set(name, &value.to_string())
            .map_err(|e| e.to_string())
    }

    pub(crate) fn kick(&self) {
        self.inner.kicked.notify_one();
    }

    /// Waits until kicked or until `poll` has passed (a lost kick delays work by at most
    /// one poll interval). Returns false once shutdown is requested.
    pub async fn next_work(&self, poll: Duration) -> bool {
        let mut shutdown = self.inner.shutdown.subscribe();
        if *shutdown.borrow() {
            return false;
        }
        tokio::select! {
            _ = self.inner.kicked.notified() => {}
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.changed() => {}
        }
        !self.shutting_down()
    }

    pub fn shutting_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// Resolves once shutdown is requested.
    pub async fn shutdown_requested(&self) {
        let mut rx = self.inner.shutdown.subscribe();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    pub fn request_shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }
}
