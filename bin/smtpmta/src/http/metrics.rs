//! `/metrics` in the Prometheus / OpenMetrics text format, built by `prometheus-client`.
//!
//! Every value is read when a scrape arrives, from what the supervisor already keeps: the
//! store's location counts and destination summaries, its statistics counters (the same
//! atomic batches as the changes they count), the children table, and each controller's
//! handler table (one status request to each task, as `show tasks` does), and isesctl's
//! accept-latency histogram (`TaskRequest::Histograms`; isesctl counts it in memory with a
//! few atomic adds per message, `mta_task::histogram`). A scrape costs the same whether a
//! hundred or a million messages are queued, and the hot path does not know scrapes exist.
//!
//! Two formats: OpenMetrics text for clients that ask for it (a Prometheus server does, in
//! its `Accept` header), and the classic Prometheus text format (0.0.4) for everyone else
//! (`curl`, `promtool check metrics`), whose counters' HELP and TYPE lines carry the
//! `_total` name of their sample ([`to_text_format`]).

use super::response;
use crate::Supervisor;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use mta_ipc::console::{RowState, TaskRow};
use mta_ipc::task::HistogramSnapshot;
use mta_ipc::TaskClient;
use mta_types::counters as names;
use mta_types::message::now_ms;
use mta_types::TaskName;
use mta_types::{Location, QueueName};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`, in OpenMetrics when the client asked for it.
pub async fn answer(sup: &Arc<Supervisor>, openmetrics: bool) -> Response<Full<Bytes>> {
    match scrape(sup).await {
        Ok(text) => {
            let (content_type, text) = if openmetrics {
                (OPENMETRICS, text)
            } else {
                (TEXT_FORMAT, to_text_format(&text))
            };
            Response::builder()
                .header("content-type", content_type)
                .body(Full::new(Bytes::from(text)))
                .expect("valid response")
        }
        Err(e) => {
            tracing::warn!("metrics: {e}");
            response::plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n"))
        }
    }
}

/// One scrape: the task rows (with handlers) over IPC, then the store's numbers read off the
/// async threads (sled reads are blocking).
async fn scrape(sup: &Arc<Supervisor>) -> Result<String, String> {
    let tasks = crate::tasks::show_tasks(sup).await;
    let histograms = task_histograms(sup, TaskName::Isesctl).await;
    let sup = sup.clone();
    tokio::task::spawn_blocking(move || render(&sup, &tasks, histograms))
        .await
        .map_err(|e| e.to_string())?
}

/// A task's latency histograms; none if it does not answer in time (it may be restarting).
async fn task_histograms(sup: &Supervisor, task: TaskName) -> Vec<HistogramSnapshot> {
    let ask = async {
        let mut c = TaskClient::connect(&sup.config().run_dir(), task, TaskName::Smtpmta)
            .await
            .ok()?;
        c.histograms().await.ok()
    };
    tokio::time::timeout(Duration::from_millis(1500), ask)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// A task's histogram snapshot in the exposition format (its buckets are already counted).
#[derive(Debug)]
struct Snapshot(HistogramSnapshot);

impl EncodeMetric for Snapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let mut buckets: Vec<(f64, u64)> = s
            .bounds
            .iter()
            .copied()
            .zip(s.counts.iter().copied())
            .collect();
        buckets.push((f64::MAX, s.counts.get(s.bounds.len()).copied().unwrap_or(0)));
        let count = s.counts.iter().sum();
        encoder.encode_histogram::<NoLabelSet>(s.sum_seconds, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// OpenMetrics text as the classic Prometheus text format: a counter family `x` has samples
/// `x_total`, and the older format wants its HELP and TYPE lines under that name; no `# EOF`.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + counters.len() * 12);
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A label value for a location: `pending`, `pending_transmission`, `held`, `dead`, …
fn state_label(loc: Location) -> String {
    loc.label().to_ascii_lowercase().replace(' ', "_")
}

fn render(
    sup: &Supervisor,
    tasks: &[TaskRow],
    histograms: Vec<HistogramSnapshot>,
) -> Result<String, String> {
    let engine = sup.store.engine();
    let counters = engine.counters().map_err(|e| format!("queue store: {e}"))?;
    let get = |n: &str| counters.get(n).copied().unwrap_or(0);
    let mut r = Registry::with_prefix("smtpmta");
    register_build(&mut r, sup);
    register_queue(&mut r, sup);
    register_destinations(&mut r, sup)?;
    register_totals(&mut r, &get);
    register_delivery_time(&mut r, &get);
    register_sessions(&mut r, sup, tasks, &get);
    register_milters(&mut r, &counters);
    register_door(&mut r, &get);
    register_lmtp(&mut r, &get);
    register_tasks(&mut r, tasks);
    register_sizes(&mut r, sup);
    // Latency histograms the tasks keep (isesctl: end of DATA to 250).
    for h in histograms {
        let (name, help) = (h.name.clone(), h.help.clone());
        r.register(name, help, Snapshot(h));
    }
    let mut text = String::new();
    encode(&mut text, &r).map_err(|e| e.to_string())?;
    Ok(text)
}

fn register_build(r: &mut Registry, sup: &Supervisor) {
    // A gauge, not an OpenMetrics info: Prometheus' own text parser (promtool) knows no
    // `info` type.
    let build = Family::<Labels, Gauge>::default();
    build
        .get_or_create(&labels(&[("version", env!("CARGO_PKG_VERSION"))]))
        .set(1);
    r.register(
        "build_info",
        "The running smtpmta version (always 1)",
        build,
    );
    r.register(
        "start_time_seconds",
        "When the supervisor started, Unix time",
        ConstGauge::new(sup.started_ms as f64 / 1000.0),
    );
    if let Some(status) = &sup.fleet {
        r.register(
            "cluster_up",
            "1 while this node reaches the fleet's Redis (shared limits), 0 while it runs on local shares",
            ConstGauge::new(i64::from(status.fleet.is_up())),
        );
        r.register(
            "cluster_nodes_alive",
            "Nodes of the fleet whose heartbeat was fresh when last counted",
            ConstGauge::new(i64::from(status.fleet.alive_nodes())),
        );
    }
}

fn register_queue(r: &mut Registry, sup: &Supervisor) {
    let engine = sup.store.engine();
    // Queue depth: the store's per-location counts (kept with every change).
    let queue = Family::<Labels, Gauge>::default();
    let mut locations: Vec<(Location, &str)> = QueueName::ALL
        .iter()
        .map(|q| (Location::Queue(*q), q.as_str()))
        .collect();
    locations.extend([
        (
            Location::Held {
                from: QueueName::MailBox,
            },
            "none",
        ),
        (Location::Dead, "none"),
        (Location::ConversionError, "none"),
    ]);
    for (loc, q) in locations {
        queue
            .get_or_create(&labels(&[("queue", q), ("state", &state_label(loc))]))
            .set(engine.count_in(loc) as i64);
    }
    r.register(
        "queue_messages",
        "Messages in each queue and state (parked states have queue=\"none\")",
        queue,
    );
}

fn register_destinations(r: &mut Registry, sup: &Supervisor) -> Result<(), String> {
    // Destinations waiting for transmission: the top N by messages, and when each is tried
    // next (a destination whose next attempt is in the future is deferred).
    let rows = crate::stats::top_destinations(sup)?;
    let dest_messages = Family::<Labels, Gauge>::default();
    let dest_next = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let now = now_ms();
    for d in &rows {
        let l = labels(&[("destination", &d.domain)]);
        dest_messages.get_or_create(&l).set(d.messages as i64);
        dest_next
            .get_or_create(&l)
            .set(d.next_due.saturating_sub(now) as f64 / 1000.0);
    }
    r.register(
        "destination_messages",
        "Messages waiting in outbound-work per destination (the top_destinations with the most)",
        dest_messages,
    );
    r.register(
        "destination_next_attempt_seconds",
        "Seconds until the next attempt for a destination (0: due now; more: deferred)",
        dest_next,
    );

    Ok(())
}

fn register_totals(r: &mut Registry, get: &dyn Fn(&str) -> u64) {
    // Totals, from the statistics counters.
    for (name, help, counter) in [
        (
            "messages_received",
            "Messages accepted over SMTP (Mail.Received)",
            names::RECEIVED,
        ),
        (
            "recipients_delivered",
            "Recipients delivered to a local mailbox (Mail.Delivered)",
            names::DELIVERED,
        ),
        (
            "recipients_relayed",
            "Recipients relayed to another host (Mail.Transferred)",
            names::TRANSFERRED,
        ),
        (
            "recipients_bounced",
            "Recipients that failed for good: a report goes to the sender (Mail.TotalFailures)",
            names::TOTAL_FAILURES,
        ),
        (
            "recipients_deferred",
            "Delivery attempts that failed temporarily, per recipient (Mail.Deferred)",
            names::DEFERRED,
        ),
        (
            "messages_routed",
            "Messages routed out of mail.box (Mail.TotalRouted)",
            names::TOTAL_ROUTED,
        ),
        (
            "messages_dead",
            "Messages that went Dead (Mail.TotalDead)",
            names::TOTAL_DEAD,
        ),
        (
            "conversion_errors",
            "Messages imsgcnv could not convert (Mail.ConversionErrors)",
            names::CONVERSION_ERRORS,
        ),
        (
            "reports_sent",
            "Delivery status notifications written (Mail.DeliveryReportsSent)",
            names::REPORTS_SENT,
        ),
    ] {
        r.register(name, help, ConstCounter::new(get(counter)));
    }
}

fn register_delivery_time(r: &mut Registry, get: &dyn Fn(&str) -> u64) {
    // Time to delivery, per delivered or relayed recipient: bucket counters the store
    // keeps with each outcome (so the histogram survives restarts).
    let counts: Vec<u64> = names::deliver_time_buckets()
        .iter()
        .map(|b| get(b))
        .collect();
    r.register(
        "delivery_time_seconds",
        "Arrival to delivered (local mailbox) or relayed (remote 250), per recipient",
        Snapshot(HistogramSnapshot {
            name: "delivery_time_seconds".into(),
            help: String::new(),
            bounds: names::DELIVER_TIME_BOUNDS_MS
                .iter()
                .map(|b| *b as f64 / 1000.0)
                .collect(),
            counts,
            sum_seconds: get(names::DELIVER_TIME_SUM_MS) as f64 / 1000.0,
        }),
    );
}

/// Clients refused at the door (isesctl), by reason; DNS list queries that failed.
fn register_door(r: &mut Registry, get: &dyn Fn(&str) -> u64) {
    let refused = Family::<Labels, Counter>::default();
    for (reason, counter) in [
        ("dnsbl", names::INBOUND_DNSBL_BLOCKED),
        ("client_limit", names::INBOUND_LIMIT_REFUSED),
        ("pregreet", names::INBOUND_PREGREET),
        ("pipelining", names::INBOUND_PIPELINING_REFUSED),
    ] {
        refused
            .get_or_create(&labels(&[("reason", reason)]))
            .inc_by(get(counter));
    }
    r.register(
        "inbound_refused",
        "Inbound clients, messages or recipients refused at the door, by reason",
        refused,
    );
    r.register(
        "dnsbl_lookup_errors",
        "DNS list queries that failed (the client was taken as not listed)",
        ConstCounter::new(get(names::INBOUND_DNSBL_ERRORS)),
    );
}

/// Local delivery over LMTP (the router, `[lmtp]`).
fn register_lmtp(r: &mut Registry, get: &dyn Fn(&str) -> u64) {
    r.register(
        "lmtp_connections",
        "Connections the router opened to LMTP servers (reused across messages)",
        ConstCounter::new(get(names::LMTP_CONNECTIONS)),
    );
    r.register(
        "lmtp_failures",
        "LMTP transactions deferred because the server failed (unreachable, timeout, lost)",
        ConstCounter::new(get(names::LMTP_FAILURES)),
    );
}

fn register_milters(r: &mut Registry, counters: &std::collections::BTreeMap<String, u64>) {
    // Milters (isesctl, `[[milter]]`): verdicts and failures per milter, from the
    // `Mail.Milter.{Action,Failure}.<what>.<name>` counters.
    let milter_actions = Family::<Labels, Counter>::default();
    let milter_failures = Family::<Labels, Counter>::default();
    for (name, n) in counters.range("Mail.Milter.".to_string()..) {
        let Some(rest) = name.strip_prefix("Mail.Milter.") else {
            break;
        };
        let mut parts = rest.splitn(3, '.');
        let (Some(kind), Some(what), Some(milter)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (family, label) = match kind {
            "Action" => (&milter_actions, "action"),
            "Failure" => (&milter_failures, "reason"),
            _ => continue,
        };
        family
            .get_or_create(&labels(&[("milter", milter), (label, what)]))
            .inc_by(*n);
    }
    r.register(
        "milter_actions",
        "Milter decisions by milter and action (accept, reject, tempfail, discard, quarantine)",
        milter_actions,
    );
    r.register(
        "milter_failures",
        "Milters that could not be used (unreachable, timeout, broken): default_action applied",
        milter_failures,
    );
}

fn register_sessions(
    r: &mut Registry,
    sup: &Supervisor,
    tasks: &[TaskRow],
    get: &dyn Fn(&str) -> u64,
) {
    // Sessions and handlers: cumulative counts from the store, current use from the
    // controllers' handler tables.
    let sessions = Family::<Labels, Counter>::default();
    sessions
        .get_or_create(&labels(&[("direction", "inbound")]))
        .inc_by(get(names::INBOUND_SESSIONS));
    sessions
        .get_or_create(&labels(&[("direction", "outbound")]))
        .inc_by(get(names::OUTBOUND_SESSIONS));
    r.register(
        "sessions",
        "SMTP sessions since the store was created",
        sessions,
    );
    let handlers = Family::<Labels, Gauge>::default();
    let handlers_max = Family::<Labels, Gauge>::default();
    for (task, max) in [
        ("isesctl", sup.config().inbound.max_handlers),
        ("osesctl", sup.config().outbound.max_handlers),
    ] {
        handlers_max
            .get_or_create(&labels(&[("task", task)]))
            .set(max as i64);
        for state in [RowState::Busy, RowState::Idle] {
            let n = tasks
                .iter()
                .filter(|t| t.parent.as_deref() == Some(task) && t.state == state)
                .count();
            handlers
                .get_or_create(&labels(&[("task", task), ("state", state.as_str())]))
                .set(n as i64);
        }
    }
    r.register(
        "handlers",
        "Session handlers in each controller's table by state (busy = a session now)",
        handlers,
    );
    r.register(
        "handlers_max",
        "Most session handlers a controller may run (max_handlers)",
        handlers_max,
    );
}

fn register_tasks(r: &mut Registry, tasks: &[TaskRow]) {
    // Tasks: up and restarts, from the children table.
    let up = Family::<Labels, Gauge>::default();
    let restarts = Family::<Labels, Counter>::default();
    for t in tasks.iter().filter(|t| t.parent.is_none()) {
        let l = labels(&[("task", &t.name)]);
        // A controller with its transport stopped shows `stopped` but its process runs.
        let runs =
            t.state == RowState::Running || (t.state == RowState::Stopped && t.pid.is_some());
        up.get_or_create(&l).set(i64::from(runs));
        restarts.get_or_create(&l).inc_by(u64::from(t.restarts));
    }
    r.register("task_up", "1 while the task runs, else 0", up);
    r.register(
        "task_restarts",
        "Unexpected exits of the task since the supervisor started",
        restarts,
    );
    register_sites(r, tasks);
}

/// Traffic shaping per site, from osesctl's status (its `site:<name>:<what>` counters,
/// already bounded to the `top_destinations` busiest sites).
fn register_sites(r: &mut Registry, tasks: &[TaskRow]) {
    let site_connections = Family::<Labels, Gauge>::default();
    let site_throttled = Family::<Labels, Counter>::default();
    let site_suspended = Family::<Labels, Counter>::default();
    let osesctl = tasks
        .iter()
        .find(|t| t.name == "osesctl" && t.parent.is_none());
    for (name, n) in osesctl.map(|t| t.counters.as_slice()).unwrap_or_default() {
        let Some((site, what)) = name.strip_prefix("site:").and_then(|r| r.rsplit_once(':')) else {
            continue;
        };
        let l = labels(&[("site", site)]);
        match what {
            "connections" => {
                site_connections.get_or_create(&l).set(*n as i64);
            }
            "throttled" => {
                site_throttled.get_or_create(&l).inc_by(*n);
            }
            "suspended" => {
                site_suspended.get_or_create(&l).inc_by(*n);
            }
            _ => {}
        }
    }
    r.register(
        "site_connections",
        "Outbound connections open per destination site (traffic shaping)",
        site_connections,
    );
    r.register(
        "site_throttled",
        "Times a site's list or message was held back by a shaping limit",
        site_throttled,
    );
    r.register(
        "site_suspended",
        "Lists or messages deferred because their site or domain was suspended",
        site_suspended,
    );
}

fn register_sizes(r: &mut Registry, sup: &Supervisor) {
    let engine = sup.store.engine();
    r.register(
        "store_bytes",
        "Size of the queue store (sled) on disk",
        ConstGauge::new(engine.size_on_disk() as i64),
    );
    r.register(
        "spool_bytes",
        "Size of the spool segments holding message content",
        ConstGauge::new(crate::compaction::spool_bytes(&sup.config().spool_dir()) as i64),
    );
}

#[cfg(test)]
mod tests {
    use super::to_text_format;

    #[test]
    fn counters_take_their_total_name_in_the_text_format() {
        let om = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total{x=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total{x=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }
}
