//! `tell router show` and `tell router show queue`.
//!
//! Both read the store's per-destination summaries page by page (never the records), and
//! ask the outbound controller which destinations it is delivering to (Busy) or holding
//! for a free handler (Wait): it keeps those in memory, at most a few lists per handler.
//! The router itself is the one local delivery worker, so LocalDelivery is Busy while it
//! delivers a batch.

use mta_ipc::store::DestinationRow;
use mta_ipc::transfers::{
    DestinationState, RouterDestination, RouterReport, TransferRow, TransferState, TransferThreads,
};
use mta_ipc::TaskClient;
use mta_task::TaskContext;
use mta_types::message::now_ms;
use mta_types::{Location, QueueName, TaskName};
use std::collections::HashMap;
use std::fmt::Write as _;

/// Most destination rows either command prints; the totals cover the rest.
const SHOW_ROWS: usize = 1000;
/// Summaries read per store request.
const STORE_PAGE: u32 = 500;
/// Rows asked of the controller per request, and the most pages read (a guard: it holds
/// far fewer).
const TRANSFER_PAGE: u32 = 500;
const TRANSFER_PAGES: usize = 64;

/// What the outbound controller says it is doing, by recipient domain.
#[derive(Default)]
struct Transfers {
    busy: HashMap<String, TransferRow>,
    waiting: HashMap<String, TransferRow>,
    /// Held back by traffic shaping (a rate, a connection slot, a suspension).
    shaped: HashMap<String, TransferRow>,
    threads: TransferThreads,
    /// `None`: the controller did not answer.
    running: Option<bool>,
}

impl Transfers {
    async fn ask(ctx: &TaskContext) -> Transfers {
        let mut out = Transfers::default();
        let run_dir = ctx.config().run_dir();
        let Ok(mut client) =
            TaskClient::connect(&run_dir, TaskName::Osesctl, TaskName::Router).await
        else {
            return out;
        };
        let mut after = None;
        for _ in 0..TRANSFER_PAGES {
            let page = match client.transfers(after.clone(), TRANSFER_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!("the outbound controller did not say what it transfers: {e}");
                    return Transfers::default();
                }
            };
            out.threads = page.threads;
            out.running = Some(page.transport_running);
            for row in page.rows {
                after = Some(row.domain.clone());
                let map = match row.state {
                    TransferState::Busy => &mut out.busy,
                    TransferState::Wait => &mut out.waiting,
                    TransferState::Throttled | TransferState::Suspended => {
                        // Suspended wins over throttled for the same domain.
                        if out
                            .shaped
                            .get(&row.domain)
                            .is_some_and(|r| r.state == TransferState::Suspended)
                        {
                            continue;
                        }
                        &mut out.shaped
                    }
                };
                map.insert(row.domain.clone(), row);
            }
            if !page.more {
                break;
            }
        }
        out
    }

    /// Suspended, Throttled, Busy or Wait, if the controller holds the domain.
    fn state_of(&self, domain: &str) -> Option<(DestinationState, &TransferRow)> {
        if let Some(row) = self.shaped.get(domain) {
            let state = match row.state {
                TransferState::Suspended => DestinationState::Suspended,
                _ => DestinationState::Throttled,
            };
            return Some((state, row));
        }
        if let Some(row) = self.busy.get(domain) {
            return Some((DestinationState::Busy, row));
        }
        self.waiting
            .get(domain)
            .map(|row| (DestinationState::Wait, row))
    }
}

/// Walks every destination summary, a page at a time.
async fn each_destination(
    ctx: &TaskContext,
    mut visit: impl FnMut(DestinationRow),
) -> Result<(), String> {
    let mut after = None;
    loop {
        let page = ctx
            .store()
            .destinations(after.clone(), STORE_PAGE)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some((last.location, last.domain.clone()));
        page.into_iter().for_each(&mut visit);
    }
}

/// What "Via" says for a remote destination: the relay host, or the domain's MX.
fn next_hop(ctx: &TaskContext) -> String {
    ctx.config()
        .outbound
        .relay_host
        .clone()
        .unwrap_or_else(|| "MX".to_string())
}

fn is_local(ctx: &TaskContext, domain: &str) -> bool {
    domain
        .parse::<mta_types::Domain>()
        .is_ok_and(|d| ctx.config().is_local_domain(&d))
}

/// `tell router show`: LocalDelivery, then every destination of the Outbound Work Queue,
/// each BUSY, WAIT, RETRY or READY; messages elsewhere in the pipeline are a count.
/// The LocalDelivery row before the summaries are read.
fn local_row() -> RouterDestination {
    RouterDestination {
        destination: "LocalDelivery".into(),
        state: DestinationState::Retry,
        messages: 0,
        via: "local".into(),
        next_retry_ms: None,
        last_error: String::new(),
        shaping: String::new(),
    }
}

pub async fn show(ctx: &TaskContext, router_busy: bool) -> Result<RouterReport, String> {
    let transfers = Transfers::ask(ctx).await;
    let via = next_hop(ctx);
    let now = now_ms();
    let mut report = RouterReport {
        transfer: transfers.threads,
        delivery_threads_max: 1,
        delivery_threads_busy: u32::from(router_busy),
        transport_running: transfers.running,
        ..RouterReport::default()
    };
    let mut local = local_row();
    let mut local_due = false;
    each_destination(ctx, |row| match row.location {
        Location::Queue(QueueName::MailBox) if is_local(ctx, &row.domain) => {
            local.messages += row.messages;
            if row.next_due <= now {
                local_due = true;
            } else {
                local.next_retry_ms = Some(
                    local
                        .next_retry_ms
                        .map_or(row.next_due, |t| t.min(row.next_due)),
                );
            }
            if local.last_error.is_empty() {
                local.last_error = row.last_error;
            }
        }
        Location::Queue(QueueName::OutboundWork) if !row.domain.is_empty() => {
            if report.destinations.len() >= SHOW_ROWS {
                report.more_destinations += 1;
                return;
            }
            let held = transfers.state_of(&row.domain);
            let shaping = held.map(|(_, t)| t.shaping.clone()).unwrap_or_default();
            let (state, via) = match held {
                Some((state, t)) => (state, t.via.clone()),
                None if row.next_due > now => (DestinationState::Retry, via.clone()),
                // Due, but nothing will take it while the transport is stopped.
                None if transfers.running == Some(false) => (DestinationState::Wait, via.clone()),
                None => (DestinationState::Ready, via.clone()),
            };
            report.destinations.push(RouterDestination {
                destination: row.domain,
                state,
                messages: row.messages,
                via,
                next_retry_ms: (row.next_due > now).then_some(row.next_due),
                last_error: row.last_error,
                shaping,
            });
        }
        Location::Queue(_) => report.in_transit += row.messages,
        // Held, dead and conversion-error mail is at no destination: `show queue` lists it.
        _ => {}
    })
    .await?;
    if router_busy || local.messages > 0 {
        local.state = if router_busy {
            DestinationState::Busy
        } else if local_due {
            DestinationState::Ready
        } else {
            DestinationState::Retry
        };
        if local_due {
            local.next_retry_ms = None;
        }
        report.destinations.insert(0, local);
    }
    Ok(report)
}

/// `tell router show queue`, as Domino prints it: one row per destination and state —
/// Msgs, State, Via (next hop), Destination, Next retry, Last error.
pub async fn show_queue(ctx: &TaskContext, router_busy: bool) -> Result<String, String> {
    let transfers = Transfers::ask(ctx).await;
    let via = next_hop(ctx);
    let now = now_ms();
    let mut out = format!(
        "{:>5}  {:<20} {:<22} {:<24} {:<10} {}\n",
        "Msgs", "State", "Via", "Destination", "Next retry", "Last error"
    );
    let (mut rows, mut more_rows, mut total) = (0usize, 0u64, 0u64);
    each_destination(ctx, |row| {
        total += row.messages;
        if rows >= SHOW_ROWS {
            more_rows += 1;
            return;
        }
        rows += 1;
        let queued = matches!(row.location, Location::Queue(_));
        let waiting = queued && row.next_due > now;
        let local = !row.domain.is_empty() && is_local(ctx, &row.domain);
        let held = (row.location == Location::Queue(QueueName::OutboundWork))
            .then(|| transfers.state_of(&row.domain))
            .flatten();
        let state = match held {
            Some((DestinationState::Busy, _)) => "Busy",
            Some((DestinationState::Throttled, _)) => "Throttled",
            Some((DestinationState::Suspended, _)) => "Suspended",
            Some(_) => "Wait",
            None if local && router_busy && row.location == Location::Queue(QueueName::MailBox) => {
                "Busy"
            }
            None if waiting => "Retry",
            None => row.location.label(),
        };
        let (via, dest) = if row.domain.is_empty() {
            ("-".to_string(), "-".to_string())
        } else if local {
            ("local".to_string(), "LocalDelivery".to_string())
        } else {
            (via.clone(), row.domain.clone())
        };
        let next = if waiting {
            format!("in {}s", row.next_due.saturating_sub(now) / 1000)
        } else {
            "-".to_string()
        };
        let _ = writeln!(
            out,
            "{:>5}  {state:<20} {via:<22} {dest:<24} {next:<10} {}",
            row.messages, row.last_error
        );
    })
    .await?;
    if rows == 0 {
        return Ok("No messages in any queue.".into());
    }
    if more_rows > 0 {
        let _ = writeln!(out, "  …  {more_rows} more destinations not listed");
    }
    let counts = ctx.store().counts().await.map_err(|e| e.to_string())?;
    let messages: u64 = counts.rows.iter().map(|(_, _, n)| n).sum();
    let _ = write!(
        out,
        "{messages:>5}  messages in all ({total} per destination)"
    );
    Ok(out)
}
