//! What `show stat mail` and `show server` need over time, sampled by the supervisor every
//! `SAMPLE` from state it has anyway: the store's cumulative counters (for the Current*Rate
//! statistics, over the last minute, and transactions per minute and hour), the busy
//! outbound handlers (the highest seen: `Mail.TransferThreads.Concurrent.Highest`) and the
//! sessions in progress (their peak). A sample costs one counter read and one status
//! request to each controller; the history holds an hour of samples at most.

use crate::Supervisor;
use mta_ipc::TaskClient;
use mta_types::counters as names;
use mta_types::message::now_ms;
use mta_types::TaskName;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SAMPLE: Duration = Duration::from_secs(2);
const HOUR_MS: u64 = 3_600_000;

/// Cumulative counts at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub at_ms: u64,
    pub delivered: u64,
    pub transferred: u64,
    pub bytes_delivered: u64,
    pub bytes_transferred: u64,
    /// Messages received plus recipients delivered, relayed or failed: Domino's
    /// "transactions" (each is one commit of the queue).
    pub transactions: u64,
}

#[derive(Default)]
pub struct Rates {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    history: VecDeque<Sample>,
    transfer_highest: u64,
    sessions_peak: u64,
    sessions_peak_at_ms: u64,
    per_minute_peak: u64,
    per_minute_peak_at_ms: u64,
}

/// Per-minute figures over the window ending now.
#[derive(Clone, Copy, Debug, Default)]
pub struct Current {
    pub messages_delivered: u64,
    pub messages_transferred: u64,
    pub bytes_delivered: u64,
    pub bytes_transferred: u64,
}

impl Rates {
    fn record(&self, sample: Sample, busy_out: u64, sessions: u64) {
        let mut inner = self.inner.lock().expect("rates lock");
        inner.transfer_highest = inner.transfer_highest.max(busy_out);
        if sessions > inner.sessions_peak {
            inner.sessions_peak = sessions;
            inner.sessions_peak_at_ms = sample.at_ms;
        }
        inner.history.push_back(sample);
        while inner
            .history
            .front()
            .is_some_and(|s| sample.at_ms.saturating_sub(s.at_ms) > HOUR_MS + 60_000)
        {
            inner.history.pop_front();
        }
        let minute = per_window(&inner.history, &sample, 60_000).transactions;
        if minute > inner.per_minute_peak {
            inner.per_minute_peak = minute;
            inner.per_minute_peak_at_ms = sample.at_ms;
        }
    }

    /// Highest busy outbound handlers seen, and the session peak with when.
    pub fn peaks(&self) -> (u64, u64, u64) {
        let inner = self.inner.lock().expect("rates lock");
        (
            inner.transfer_highest,
            inner.sessions_peak,
            inner.sessions_peak_at_ms,
        )
    }

    /// Transactions in the last minute and the last hour, and the per-minute peak with when.
    pub fn transactions(&self, now: &Sample) -> (u64, u64, u64, u64) {
        let inner = self.inner.lock().expect("rates lock");
        (
            per_window(&inner.history, now, 60_000).transactions,
            per_window(&inner.history, now, HOUR_MS).transactions,
            inner.per_minute_peak,
            inner.per_minute_peak_at_ms,
        )
    }

    /// The rates over the last minute, per minute, ending at `now`.
    pub fn current(&self, now: &Sample) -> Current {
        let inner = self.inner.lock().expect("rates lock");
        let d = per_window(&inner.history, now, 60_000);
        Current {
            messages_delivered: d.delivered,
            messages_transferred: d.transferred,
            bytes_delivered: d.bytes_delivered,
            bytes_transferred: d.bytes_transferred,
        }
    }
}

/// What happened between the oldest sample inside the window and `now` (the suite's
/// first minute counts from its first sample).
fn per_window(history: &VecDeque<Sample>, now: &Sample, window_ms: u64) -> Sample {
    let Some(base) = history
        .iter()
        .find(|s| now.at_ms.saturating_sub(s.at_ms) <= window_ms)
    else {
        return Sample::default();
    };
    Sample {
        at_ms: now.at_ms,
        delivered: now.delivered.saturating_sub(base.delivered),
        transferred: now.transferred.saturating_sub(base.transferred),
        bytes_delivered: now.bytes_delivered.saturating_sub(base.bytes_delivered),
        bytes_transferred: now.bytes_transferred.saturating_sub(base.bytes_transferred),
        transactions: now.transactions.saturating_sub(base.transactions),
    }
}

/// The cumulative counts now.
pub fn sample_now(sup: &Supervisor) -> Sample {
    let counters = sup.store.engine().counters().unwrap_or_default();
    let get = |n: &str| counters.get(n).copied().unwrap_or(0);
    Sample {
        at_ms: now_ms(),
        delivered: get(names::DELIVERED),
        transferred: get(names::TRANSFERRED),
        bytes_delivered: get(names::BYTES_DELIVERED),
        bytes_transferred: get(names::BYTES_TRANSFERRED),
        transactions: get(names::RECEIVED)
            + get(names::DELIVERED)
            + get(names::TRANSFERRED)
            + get(names::TOTAL_FAILURES),
    }
}

/// What the charts count, now: the store's counters and the messages in its queues.
pub fn totals_now(sup: &Supervisor) -> Result<crate::history::Totals, String> {
    use mta_types::{Location, QueueName};
    let engine = sup.store.engine();
    let counters = engine.counters().map_err(|e| format!("queue store: {e}"))?;
    let queued = QueueName::ALL
        .iter()
        .map(|q| engine.count_in(Location::Queue(*q)))
        .sum();
    Ok(crate::history::Totals::from_counters(&counters, queued))
}

/// Busy handlers of a controller now (0 when it does not answer), on a connection of its
/// own.
pub async fn busy_handlers(sup: &Supervisor, task: TaskName) -> u64 {
    Controller::new(task).busy_handlers(sup).await
}

/// The sampler's control connection to one controller, kept from one sample to the next:
/// a new connection every 2 s (connect, hello, status, close) was most of an idle
/// controller's wake-ups. Dropped after any failure or timeout (the task may have
/// restarted) and opened again at the next sample.
struct Controller {
    task: TaskName,
    client: Option<TaskClient>,
}

impl Controller {
    fn new(task: TaskName) -> Controller {
        Controller { task, client: None }
    }

    async fn busy_handlers(&mut self, sup: &Supervisor) -> u64 {
        let run_dir = sup.config().run_dir();
        let task = self.task;
        let client = &mut self.client;
        let ask = async {
            if client.is_none() {
                *client = TaskClient::connect(&run_dir, task, TaskName::Smtpmta)
                    .await
                    .ok();
            }
            client.as_mut()?.status().await.ok()
        };
        match tokio::time::timeout(Duration::from_secs(1), ask).await {
            Ok(Some(status)) => status
                .handlers
                .iter()
                .filter(|h| h.state != mta_ipc::console::RowState::Idle)
                .count() as u64,
            _ => {
                self.client = None;
                0
            }
        }
    }
}

/// Samples until the supervisor stops.
pub async fn run(sup: Arc<Supervisor>) {
    let mut tick = tokio::time::interval(SAMPLE);
    let mut outbound = Controller::new(TaskName::Osesctl);
    let mut inbound = Controller::new(TaskName::Isesctl);
    loop {
        tick.tick().await;
        let out = outbound.busy_handlers(&sup).await;
        let sessions = inbound.busy_handlers(&sup).await + out;
        sup.rates.record(sample_now(&sup), out, sessions);
        match totals_now(&sup) {
            Ok(totals) => sup.history.record(now_ms(), totals),
            Err(e) => tracing::warn!("charts: cannot read the counters: {e}"),
        }
    }
}
