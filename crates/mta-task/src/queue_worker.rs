//! The loop every queue-draining task runs (imsgcnv, router, omsgcnv, drt): wait for a kick
//! or the poll interval, claim a batch, do the task's work, commit the batch in one store
//! round trip, and go on while full batches come back. A batch whose work or commit fails
//! is released at once, so the next pass retries it (if the release fails too, the leases
//! expire): at-least-once, never lost.

use crate::{TaskContext, WorkError};
use mta_ipc::store::{Change, Claim, Durability};
use mta_ipc::{TaskState, TaskStatus};
use mta_types::{MessageRecord, QueueName};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a claim is ours before the store gives it to someone else.
pub const LEASE: Duration = Duration::from_secs(120);
/// Poll interval when no kick comes: new work always comes with a kick (every stage kicks
/// the next after its commit), so the poll only finds what no kick announces — a batch
/// released after a failure, a retry whose time has come, a kick lost while this task was
/// restarting. Each poll wakes the task and the supervisor (a claim round trip, about four
/// scheduler slices); at 1 s the four queue tasks' polls were most of an idle suite's
/// wake-ups.
pub const POLL: Duration = Duration::from_secs(5);

/// A task's work on one claimed batch.
pub trait QueueWorker: Send + Sync + 'static {
    /// The queue this task drains.
    const QUEUE: QueueName;
    /// Most messages claimed at once.
    const BATCH: u32 = 256;
    /// What `committed` needs to know once the batch is durable (e.g. which queues to kick).
    type Done: Send;

    /// Does the work; returns the changes to commit, or why the batch must be retried.
    fn work(
        &self,
        ctx: &TaskContext,
        records: Vec<MessageRecord>,
    ) -> impl Future<Output = WorkResult<Self::Done>> + Send;

    /// Called after the batch's commit succeeded.
    fn committed(&self, ctx: &TaskContext, done: Self::Done);
}

/// What `QueueWorker::work` returns: the changes to commit and what `committed` needs, or
/// why the batch must be retried.
pub type WorkResult<D> = Result<(Vec<Change>, D), WorkError>;

/// A queue task's share of the loop: whether a batch is being worked, for `show tasks`.
#[derive(Debug, Default)]
pub struct Drain {
    busy: AtomicBool,
}

impl Drain {
    /// Drains `W::QUEUE` until shutdown: the whole of a queue task's `Task::run`.
    pub async fn run<W: QueueWorker>(&self, worker: &W, ctx: &TaskContext) -> anyhow::Result<()> {
        drain(worker, ctx, &self.busy).await;
        Ok(())
    }

    /// True while a batch is being worked.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }

    /// What `show tasks` says of a queue task: `Busy` doing `doing` ("converting",
    /// "routing") while a batch is being worked, else `Idle`; and its own counters.
    pub fn status(&self, doing: &str, counters: Vec<(String, u64)>) -> TaskStatus {
        let (state, current) = if self.is_busy() {
            (TaskState::Busy, doing)
        } else {
            (TaskState::Idle, "idle")
        };
        TaskStatus {
            state,
            current: current.into(),
            counters,
            handlers: Vec::new(),
        }
    }
}

/// Declares a task's counters for `show tasks`: a struct of `AtomicU64` fields (public,
/// `Default`) and its `counters()`, which lists them under their labels in the order
/// declared — each counter named once.
///
/// ```ignore
/// mta_task::task_counters! {
///     /// Counters for `show tasks`.
///     pub struct Stats {
///         converted: "converted",
///         failed: "failed",
///     }
/// }
/// ```
#[macro_export]
macro_rules! task_counters {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$field_meta:meta])* $field:ident: $label:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Default)]
        $vis struct $name {
            $($(#[$field_meta])* pub $field: std::sync::atomic::AtomicU64,)*
        }

        impl $name {
            /// `(label, value)` of each counter, as `show tasks` lists them.
            pub fn counters(&self) -> Vec<(String, u64)> {
                use std::sync::atomic::Ordering::Relaxed;
                vec![$(($label.to_string(), self.$field.load(Relaxed)),)*]
            }
        }
    };
}

/// The content of `record` is gone from the spool (`reason`): the record goes to Dead, and
/// the log says so (the one line every stage writes for it).
pub fn content_missing(record: &mut MessageRecord, reason: impl std::fmt::Display) {
    record.content_missing(reason);
    let note = record.note.as_deref().unwrap_or("");
    tracing::error!("qid={} moved to Dead: {note}", record.id);
}

/// Drains `W::QUEUE` until shutdown; `busy` is true while a batch is being worked (for
/// `show tasks`). Each batch's commit claims the next batch in the same round trip, so a
/// busy queue costs one store round trip per batch.
async fn drain<W: QueueWorker>(worker: &W, ctx: &TaskContext, busy: &AtomicBool) {
    // The first claim is at once: a task that starts (or restarts after a crash) takes
    // what is waiting for it without waiting for a kick or the poll.
    while !ctx.shutting_down() {
        match ctx
            .store()
            .claim(Claim::new(W::QUEUE, W::BATCH, LEASE))
            .await
        {
            Ok(mut records) => {
                while !records.is_empty() && !ctx.shutting_down() {
                    records = one_batch(worker, ctx, busy, records).await;
                }
            }
            Err(e) => tracing::warn!("cannot claim from {}: {e}", W::QUEUE),
        }
        if !ctx.next_work(POLL).await {
            break;
        }
    }
}

/// Works and commits one claimed batch; returns the next batch (empty when the queue has
/// nothing due, or after a failure).
async fn one_batch<W: QueueWorker>(
    worker: &W,
    ctx: &TaskContext,
    busy: &AtomicBool,
    records: Vec<MessageRecord>,
) -> Vec<MessageRecord> {
    let claimed = records.len();
    let ids: Vec<_> = records.iter().map(|r| r.id).collect();
    busy.store(true, Ordering::Relaxed);
    let outcome = match worker.work(ctx, records).await {
        // A stage's move is replayable: if a power loss undoes it, the record is back in
        // this queue and the work is done again (W::work makes its own output durable).
        Ok((changes, done)) => ctx
            .store()
            .commit_and_claim(
                changes,
                Durability::Replayable,
                Claim::new(W::QUEUE, W::BATCH, LEASE),
            )
            .await
            .map(|next| (next, done))
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    busy.store(false, Ordering::Relaxed);
    match outcome {
        Ok((next, done)) => {
            worker.committed(ctx, done);
            next
        }
        Err(e) => {
            tracing::warn!(
                "batch of {claimed} from {} not committed: {e}; released for a retry",
                W::QUEUE
            );
            let _ = ctx.store().release(ids).await;
            Vec::new()
        }
    }
}
