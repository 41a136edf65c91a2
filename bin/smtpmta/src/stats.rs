//! `show stat mail`: the store's cumulative counters (kept in the same atomic batches as
//! the changes that caused them, so they survive restarts) plus live values counted from
//! the queue indexes now, and the spool size.

use crate::Supervisor;
use mta_ipc::console::Statistic;
use mta_types::counters as names;
use mta_types::{Location, QueueName};

pub fn show_stat_mail(sup: &Supervisor) -> Result<Vec<Statistic>, String> {
    let engine = sup.store.engine();
    let counters = engine.counters().map_err(|e| e.to_string())?;
    let get = |n: &str| counters.get(n).copied().unwrap_or(0);
    let waiting: u64 = QueueName::ALL
        .iter()
        .map(|q| engine.count_in(Location::Queue(*q)))
        .sum();
    let held = engine.count_in(Location::Held {
        from: QueueName::MailBox,
    });
    let average = |sum: u64, n: u64| sum.checked_div(n).unwrap_or(0);
    let spool_bytes = crate::compaction::spool_bytes(&sup.config.spool_dir());
    let stat = |name: &str, value: u64, unit: &str| Statistic {
        name: name.to_string(),
        value,
        unit: unit.to_string(),
    };
    Ok(vec![
        stat(names::RECEIVED, get(names::RECEIVED), ""),
        stat(names::DELIVERED, get(names::DELIVERED), ""),
        stat(names::TRANSFERRED, get(names::TRANSFERRED), ""),
        stat(names::TOTAL_ROUTED, get(names::TOTAL_ROUTED), ""),
        stat(names::WAITING, waiting, ""),
        stat(
            names::WAITING_FOR_DELIVERY_THREADS,
            engine.count_in(Location::Queue(QueueName::OutboundWork)),
            "",
        ),
        stat(names::DEAD, engine.count_in(Location::Dead), ""),
        stat(names::TOTAL_DEAD, get(names::TOTAL_DEAD), ""),
        stat(names::HOLD, held, ""),
        stat(names::CONVERSION_ERRORS, get(names::CONVERSION_ERRORS), ""),
        stat(names::TOTAL_FAILURES, get(names::TOTAL_FAILURES), ""),
        stat(names::DEFERRED, get(names::DEFERRED), ""),
        stat(names::REPORTS_SENT, get(names::REPORTS_SENT), ""),
        stat(names::INBOUND_SESSIONS, get(names::INBOUND_SESSIONS), ""),
        stat(names::OUTBOUND_SESSIONS, get(names::OUTBOUND_SESSIONS), ""),
        stat(
            names::AVERAGE_DELIVER_TIME,
            average(
                get(names::DELIVER_TIME_SUM_MS),
                get(names::DELIVER_TIME_COUNT),
            ),
            "ms",
        ),
        stat(
            names::AVERAGE_SIZE_DELIVERED,
            average(
                get(names::SIZE_DELIVERED_SUM),
                get(names::DELIVER_TIME_COUNT),
            ),
            "bytes",
        ),
        stat(names::SPOOL_SIZE, spool_bytes, "bytes"),
        stat(names::STORE_SIZE, engine.size_on_disk(), "bytes"),
    ])
}
