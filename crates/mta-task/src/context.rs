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
    /// Where the debug lines are copied (`debug_outfile`).
    outfile: crate::DebugOutfile,
}

impl TaskContext {
    pub(crate) fn new(
        config: Arc<Config>,
        me: TaskName,
        outfile: crate::DebugOutfile,
    ) -> TaskContext {
        let store = StoreClient::new(&config.run_dir(), me);
        if let Err(e) = outfile.set(outfile_path(&config, &config.debug.debug_outfile).as_deref()) {
            tracing::warn!(
                "debug_outfile {}: {e}; debug lines go to the log only",
                config.debug.debug_outfile
            );
        }
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
                outfile,
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
    pub(crate) fn reload_directory(&self) -> Result<usize, mta_config::ConfigError> {
        let fresh = self.config().reload_directory()?;
        let users = fresh.users.len();
        *self.inner.directory.lock().expect("directory lock") = Arc::new(fresh);
        Ok(users)
    }

    /// Takes the knobs the supervisor sends (`set config`); the `debug_outfile` is opened
    /// first, and one that cannot be opened leaves every knob as it was.
    pub(crate) fn set_knobs(&self, fresh: DebugKnobs) -> Result<(), crate::KnobError> {
        let path = outfile_path(self.config(), &fresh.debug_outfile);
        self.inner
            .outfile
            .set(path.as_deref())
            .map_err(|source| crate::KnobError::Outfile {
                path: fresh.debug_outfile.clone(),
                source,
            })?;
        *self.inner.knobs.lock().expect("knob lock") = fresh;
        Ok(())
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

/// `debug_outfile` as a path: relative ones are taken from the data directory (as Domino
/// takes them from its data directory); empty means none.
fn outfile_path(config: &Config, value: &str) -> Option<std::path::PathBuf> {
    if value.is_empty() {
        return None;
    }
    let path = std::path::Path::new(value);
    Some(if path.is_absolute() {
        path.to_path_buf()
    } else {
        config.data_dir.join(path)
    })
}
