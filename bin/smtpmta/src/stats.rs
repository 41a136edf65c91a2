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
    let (waiting, held) = queued_and_held(engine);
    let spool_bytes = crate::compaction::spool_bytes(&sup.config().spool_dir());
    // A sum over the deliveries counted, as an average per delivery.
    let per_delivery = |name: &str, sum: &str, unit: &str| {
        let n = get(names::DELIVER_TIME_COUNT);
        stat(name, get(sum).checked_div(n).unwrap_or(0), unit)
    };
    let mut stats = vec![
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
        per_delivery(
            names::AVERAGE_DELIVER_TIME,
            names::DELIVER_TIME_SUM_MS,
            "ms",
        ),
        per_delivery(
            names::AVERAGE_SIZE_DELIVERED,
            names::SIZE_DELIVERED_SUM,
            "bytes",
        ),
        stat(names::SPOOL_SIZE, spool_bytes, "bytes"),
        stat(names::STORE_SIZE, engine.size_on_disk(), "bytes"),
    ];
    // DKIM signing and inbound verification (issue 15).
    stats.extend(mta_auth::counters::ALL.iter().map(|n| stat(n, get(n), "")));
    // Refusals at the door: DNS lists, per-client limits, pregreet, pipelining (issue 25).
    stats.extend(names::DOOR.iter().map(|n| stat(n, get(n), "")));
    // Local delivery over LMTP (issue 29): connections opened, transactions deferred.
    stats.extend(names::LMTP.iter().map(|n| stat(n, get(n), "")));
    Ok(stats)
}

/// `show stat mail` with the rest of 003's names (figure 12) that apply here, then only
/// the statistics `pattern` selects (`mail`: all; `mail.dead`: that one, or a group such as
/// `mail.transferthreads`; `mail.*threads*`: a glob), case-insensitive as on Domino.
pub async fn show_stat(sup: &Supervisor, pattern: &str) -> Result<Vec<Statistic>, String> {
    let mut stats = show_stat_mail(sup)?;
    let (queued, held) = queued_and_held(sup.store.engine());
    let waiting_recipients = waiting_recipients(sup)?;
    let osesctl = outbound_handlers(sup).await;
    let resolving = osesctl
        .iter()
        .filter(|h| h.detail.starts_with("resolving"))
        .count() as u64;
    let now = crate::rates::sample_now(sup);
    let current = sup.rates.current(&now);
    let (highest, _, _) = sup.rates.peaks();
    let busy_now = osesctl
        .iter()
        .filter(|h| h.state != mta_ipc::console::RowState::Idle)
        .count() as u64;
    let max_out = sup.config().outbound.max_handlers as u64;
    let domain = sup
        .config()
        .local_domains
        .first()
        .map(|d| d.to_string())
        .unwrap_or_else(|| sup.config().hostname.clone());
    stats.extend([
        stat(names::TOTAL_PENDING, queued + held, ""),
        stat(names::WAITING_RECIPIENTS, waiting_recipients, ""),
        stat(names::WAITING_FOR_DNS, resolving, ""),
        stat(names::WAITING_FOR_DIR, 0, ""),
        stat(
            names::CURRENT_MESSAGE_DELIVERY_RATE,
            current.messages_delivered,
            "/min",
        ),
        stat(
            names::CURRENT_MESSAGE_TRANSFER_RATE,
            current.messages_transferred,
            "/min",
        ),
        stat(
            names::CURRENT_BYTE_DELIVERY_RATE,
            current.bytes_delivered,
            "bytes/min",
        ),
        stat(
            names::CURRENT_BYTE_TRANSFER_RATE,
            current.bytes_transferred,
            "bytes/min",
        ),
        stat(names::TRANSFER_THREADS_TOTAL, osesctl.len() as u64, ""),
        stat(names::TRANSFER_THREADS_MAX, max_out, ""),
        stat(names::TRANSFER_THREADS_CONCURRENT_MAX, max_out, ""),
        stat(
            names::TRANSFER_THREADS_CONCURRENT_HIGHEST,
            highest.max(busy_now),
            "",
        ),
        // Local delivery is the router's one worker.
        stat(names::DELIVERY_THREADS_TOTAL, 1, ""),
        stat(names::DELIVERY_THREADS_MAX, 1, ""),
        Statistic {
            name: names::DOMAIN.to_string(),
            value: 0,
            unit: String::new(),
            text: Some(domain),
        },
    ]);
    select(stats, pattern)
}

/// The statistics `pattern` selects, by name (case-insensitive); none is an error.
fn select(mut stats: Vec<Statistic>, pattern: &str) -> Result<Vec<Statistic>, String> {
    stats.sort_by(|a, b| {
        a.name
            .to_ascii_lowercase()
            .cmp(&b.name.to_ascii_lowercase())
    });
    let selected: Vec<Statistic> = stats
        .into_iter()
        .filter(|s| selects(pattern, &s.name))
        .collect();
    if selected.is_empty() {
        return Err(format!(
            "no statistics match `{pattern}` (try `show stat mail`)"
        ));
    }
    Ok(selected)
}

/// Messages in the queues (waiting for a task), and held ones.
fn queued_and_held(engine: &mta_store::Engine) -> (u64, u64) {
    let queued = QueueName::ALL
        .iter()
        .map(|q| engine.count_in(Location::Queue(*q)))
        .sum();
    let held = engine.count_in(Location::Held {
        from: QueueName::MailBox,
    });
    (queued, held)
}

/// A statistic that is a number (`unit` may be empty).
fn stat(name: &str, value: u64, unit: &str) -> Statistic {
    Statistic {
        name: name.to_string(),
        value,
        unit: unit.to_string(),
        text: None,
    }
}

/// Recipients waiting: read from the per-destination summaries (bounded pages), which
/// count messages per destination — a message with two recipients at one domain counts
/// once there; the same walk `tell router show queue` does.
fn waiting_recipients(sup: &Supervisor) -> Result<u64, String> {
    let mut waiting = 0;
    let mut after = None;
    for _ in 0..20 {
        let rows = sup
            .store
            .destinations(after.clone(), 500)
            .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            break;
        }
        after = rows.last().map(|r| (r.location, r.domain.clone()));
        waiting += rows
            .iter()
            .filter(|r| matches!(r.location, Location::Queue(_)) && !r.domain.is_empty())
            .map(|r| r.messages)
            .sum::<u64>();
    }
    Ok(waiting)
}

async fn outbound_handlers(sup: &Supervisor) -> Vec<mta_ipc::HandlerRow> {
    let ask = async {
        let mut c = mta_ipc::TaskClient::connect(
            &sup.config().run_dir(),
            mta_types::TaskName::Osesctl,
            mta_types::TaskName::Smtpmta,
        )
        .await
        .ok()?;
        c.status().await.ok()
    };
    match tokio::time::timeout(std::time::Duration::from_millis(1500), ask).await {
        Ok(Some(s)) => s.handlers,
        _ => Vec::new(),
    }
}

/// Domino's statistic selection: a name or a group (`mail.transferthreads` selects
/// `Mail.TransferThreads.Total`, …), or a glob with `*`; case-insensitive.
pub fn selects(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
    if !p.contains('*') {
        return n == p || n.starts_with(&format!("{p}."));
    }
    glob(p.as_bytes(), n.as_bytes())
}

fn glob(p: &[u8], n: &[u8]) -> bool {
    match p.split_first() {
        None => n.is_empty(),
        Some((b'*', rest)) => (0..=n.len()).any(|i| glob(rest, &n[i..])),
        Some((c, rest)) => n.first() == Some(c) && glob(rest, &n[1..]),
    }
}

/// Destination summaries read at most for `top_destinations` (one row per destination,
/// not per message); the top N are taken from these.
const MAX_DESTINATION_ROWS: usize = 10_000;

/// The `[metrics] top_destinations` destinations with the most messages waiting in
/// outbound-work, most first, read from the store's destination summaries (one row per
/// destination, at most `MAX_DESTINATION_ROWS` read).
pub fn top_destinations(sup: &Supervisor) -> Result<Vec<mta_ipc::store::DestinationRow>, String> {
    let mut rows = Vec::new();
    let mut after = None;
    let mut read = 0;
    while read < MAX_DESTINATION_ROWS {
        let page = sup
            .store
            .destinations(after.clone(), 1000)
            .map_err(|e| format!("queue store: {e}"))?;
        let Some(last) = page.last() else { break };
        after = Some((last.location, last.domain.clone()));
        read += page.len();
        let full = page.len() == 1000;
        rows.extend(page.into_iter().filter(|d| {
            d.location == mta_types::Location::Queue(mta_types::QueueName::OutboundWork)
        }));
        if !full {
            break;
        }
    }
    rows.sort_by(|a, b| b.messages.cmp(&a.messages).then(a.domain.cmp(&b.domain)));
    rows.truncate(sup.config().metrics.top_destinations);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::selects;

    #[test]
    fn names_groups_and_globs_select_like_domino() {
        assert!(selects("mail", "Mail.Dead"));
        assert!(selects("MAIL.DEAD", "Mail.Dead"));
        assert!(!selects("mail.dead", "Mail.DeadX"));
        assert!(selects(
            "mail.transferthreads",
            "Mail.TransferThreads.Concurrent.Max"
        ));
        assert!(selects("mail.*threads*", "Mail.DeliveryThreads.Max"));
        assert!(selects("mail.*threads*", "Mail.TransferThreads.Total"));
        assert!(!selects("mail.*threads*", "Mail.Dead"));
        assert!(selects("*", "Mail.Dead"));
    }
}
