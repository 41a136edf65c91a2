//! The read-only status page at `/`: charts of the last hour and day (`charts.rs`), the
//! tasks as `show tasks` lists them, the queue by state and by destination, `show stat
//! mail`, and the last 50 recipient outcomes. It reloads itself every `REFRESH_SECS`, has
//! no forms, scripts or links that act, and answers only GET and HEAD, so looking at it
//! changes nothing. It is served wherever `[metrics] listen` binds: loopback by default.
//!
//! The numbers come from the same places as the console's and the metrics' (counters and
//! summaries, never a walk over the queue; the charts from the supervisor's minute
//! history), so a reload costs the same at any queue size.

use super::{charts, response};
use crate::Supervisor;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use mta_ipc::console::TaskRow;
use mta_ipc::fleet::FleetReport;
use mta_ipc::store::DestinationRow;
use mta_types::message::now_ms;
use std::fmt::Write as _;
use std::sync::Arc;

/// Seconds between reloads.
const REFRESH_SECS: u32 = 5;

pub async fn page(sup: &Arc<Supervisor>) -> Response<Full<Bytes>> {
    let tasks = crate::tasks::show_tasks(sup).await;
    let fleet = match &sup.fleet {
        Some(_) => Some(crate::fleet::report(sup).await),
        None => None,
    };
    let s = sup.clone();
    match tokio::task::spawn_blocking(move || render(&s, &tasks, fleet.as_ref())).await {
        Ok(Ok(html)) => response::with_type("text/html; charset=utf-8", html),
        Ok(Err(e)) => response::plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
        Err(e) => response::plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}

/// Text as HTML: everything shown comes from the mail (domains, errors) or the tasks.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

use mta_types::message::age_label as age;

fn render(
    sup: &Supervisor,
    tasks: &[TaskRow],
    fleet: Option<&FleetReport>,
) -> Result<String, String> {
    let counts = sup.store.engine().counts().rows;
    let destinations = crate::stats::top_destinations(sup)?;
    let stats = crate::stats::show_stat_mail(sup)?;
    let mut h = String::new();
    head(&mut h, sup);
    charts_section(&mut h, sup)?;
    tasks_table(&mut h, tasks);
    if let Some(fleet) = fleet {
        fleet_table(&mut h, fleet);
    }
    queue_table(&mut h, &counts);
    destinations_table(&mut h, &destinations);
    stats_table(&mut h, &stats);
    deliveries_table(&mut h, sup);
    h.push_str("</body></html>\n");
    Ok(h)
}

/// The last hour and the last day, minute by minute.
fn charts_section(h: &mut String, sup: &Supervisor) -> Result<(), String> {
    let now = now_ms();
    let live = crate::rates::totals_now(sup)?;
    let hour = sup.history.last(60, now, live);
    let day = sup.history.last(crate::history::DAY_MINUTES, now, live);
    h.push_str("<h2>Traffic</h2>");
    h.push_str(&charts::span("hour", "Last hour", &hour));
    h.push_str(&charts::span("day", "Last day", &day));
    Ok(())
}

fn head(h: &mut String, sup: &Supervisor) {
    let _ = write!(
        *h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>smtpmta on {host}</title>\
         <style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;margin-bottom:1.5em}}\
         th,td{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}th{{background:#eee}}\
         td.n{{text-align:right}}tr.handler td:first-child{{padding-left:1.6em}}\
         .running,.idle,.delivered,.relayed{{color:#070}}.deferred{{color:#a60}}.failed{{color:#b00}}.busy{{color:#05a}}.restarting,.stopped{{color:#b00}}figure{{margin:0 0 1em 0}}figcaption{{font-size:.9em;color:#444}}</style></head><body>\
         <h1>smtpmta on {host}</h1><p>Version {version}, supervisor pid {pid}, up {up}. \
         This page reloads every {REFRESH_SECS} s and changes nothing.</p>",
        host = esc(&sup.config().hostname),
        version = env!("CARGO_PKG_VERSION"),
        pid = std::process::id(),
        up = age(Some(sup.started_ms)),
    );
}

fn tasks_table(h: &mut String, tasks: &[TaskRow]) {
    h.push_str(
        "<h2>Tasks</h2><table id=\"tasks\"><tr><th>Task</th><th>Pid</th><th>State</th>\
         <th>Description</th><th>Since</th><th>Restarts</th><th>Status</th></tr>",
    );
    for t in tasks {
        let class = if t.parent.is_some() {
            "handler"
        } else {
            "task"
        };
        let _ = write!(
            *h,
            "<tr class=\"{class}\" data-task=\"{name}\"><td>{name}</td><td class=\"n\">{pid}</td>\
             <td class=\"{state}\">{state}</td><td>{description}</td><td class=\"n\">{since}</td>\
             <td class=\"n\">{restarts}</td><td>{detail}</td></tr>",
            name = esc(&t.name),
            pid = t.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            state = esc(t.state.as_str()),
            description = esc(&t.description),
            since = age(t.since_ms),
            restarts = if t.parent.is_some() {
                String::new()
            } else {
                t.restarts.to_string()
            },
            detail = esc(&t.detail),
        );
    }
    h.push_str("</table>");
}

/// `show fleet`: every node, UP, DOWN or DRAINING, with its heartbeat's figures.
fn fleet_table(h: &mut String, f: &FleetReport) {
    let link = if f.cluster_up {
        "up"
    } else {
        "DOWN: local limits"
    };
    let _ = write!(
        *h,
        "<h2>Fleet (cluster {link})</h2><table id=\"fleet\"><tr><th>Node</th><th>State</th>\
         <th>Last seen</th><th>Tasks</th><th>Pending</th><th>Held</th><th>Dead</th>\
         <th>Sessions in/out</th><th>Version</th></tr>"
    );
    for n in &f.nodes {
        let s = &n.summary;
        let _ = write!(
            *h,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}s</td><td>{}/{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td>{}/{}</td><td>{}</td></tr>",
            esc(&n.node),
            n.status.as_str(),
            n.last_seen_ms / 1000,
            s.tasks_up,
            s.tasks,
            s.pending,
            s.held,
            s.dead,
            s.sessions_in,
            s.sessions_out,
            esc(&s.version)
        );
    }
    h.push_str("</table>");
}

fn queue_table(h: &mut String, counts: &[(String, String, u64)]) {
    h.push_str(
        "<h2>Queue by state</h2><table id=\"queue\"><tr><th>State</th><th>Queue</th>\
         <th>Messages</th></tr>",
    );
    for (state, queue, n) in counts {
        let _ = write!(
            *h,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{n}</td></tr>",
            esc(state),
            esc(queue)
        );
    }
    h.push_str("</table>");
}

fn destinations_table(h: &mut String, destinations: &[DestinationRow]) {
    h.push_str(
        "<h2>Queue by destination</h2><table id=\"destinations\"><tr><th>Destination</th>\
         <th>Messages</th><th>Next attempt</th><th>Last error</th></tr>",
    );
    if destinations.is_empty() {
        h.push_str("<tr><td colspan=\"4\">nothing waiting for transmission</td></tr>");
    }
    let now = now_ms();
    for d in destinations {
        let next = if d.next_due <= now {
            "now".to_string()
        } else {
            format!("in {}s", (d.next_due - now).div_ceil(1000))
        };
        let _ = write!(
            *h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td>{next}</td><td>{}</td></tr>",
            esc(&d.domain),
            d.messages,
            esc(&d.last_error)
        );
    }
    h.push_str("</table>");
}

fn stats_table(h: &mut String, stats: &[mta_ipc::console::Statistic]) {
    h.push_str(
        "<h2>show stat mail</h2><table id=\"stats\"><tr><th>Statistic</th><th>Value</th></tr>",
    );
    for s in stats {
        let unit = if s.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", esc(&s.unit))
        };
        let _ = write!(
            *h,
            "<tr><td>{}</td><td class=\"n\">{}{unit}</td></tr>",
            esc(&s.name),
            s.value
        );
    }
    h.push_str("</table>");
}

fn deliveries_table(h: &mut String, sup: &Supervisor) {
    let recent = sup.store.engine().recent_outcomes();
    let _ = write!(
        *h,
        "<h2>Last {} deliveries</h2><table id=\"deliveries\"><tr><th>When</th><th>Queue ID</th>\
         <th>Recipient</th><th>Outcome</th><th>Detail</th></tr>",
        mta_store::stats::RECENT_OUTCOMES
    );
    if recent.is_empty() {
        h.push_str("<tr><td colspan=\"5\">no delivery since the supervisor started</td></tr>");
    }
    for o in &recent {
        let _ = write!(
            *h,
            "<tr class=\"{outcome}\"><td>{} ago</td><td>{}</td><td>{}</td><td>{outcome}</td><td>{}</td></tr>",
            age(Some(o.at)),
            o.id,
            esc(&o.recipient),
            esc(&o.detail()),
            outcome = o.outcome.label(),
        );
    }
    h.push_str("</table>");
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_what_the_mail_brings() {
        assert_eq!(
            super::esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
