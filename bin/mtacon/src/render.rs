//! Console replies as text for people and as JSON for scripts.

use crate::table::Table;
use mta_ipc::console::{ConsoleReply, QueueReport, ServerInfo, TaskRow, TaskTime};
use mta_types::message::now_ms;
use mta_types::{Location, MessageRecord, RcptStatus};
use serde_json::{json, Value};

use mta_types::message::age_label as age;

pub fn to_text(reply: &ConsoleReply) -> String {
    match reply {
        ConsoleReply::Tasks(rows) => tasks_text(rows),
        ConsoleReply::TaskTimes(rows) => task_times_text(rows),
        ConsoleReply::Queue(q) => queue_text(q),
        ConsoleReply::Server(s) => server_text(s),
        ConsoleReply::Stats(stats) => {
            let width = stats.iter().map(|s| s.name.len()).max().unwrap_or(0);
            stats
                .iter()
                .map(|s| {
                    let unit = if s.unit.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", s.unit)
                    };
                    match &s.text {
                        Some(t) => format!("{:<width$} = {t}", s.name),
                        None => format!("{:<width$} = {}{unit}", s.name, s.value),
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
        ConsoleReply::Message(r) => message_text(r),
        ConsoleReply::History(h) => history_text(h),
        ConsoleReply::Track(page) => track_text(page),
        ConsoleReply::Config(rows) => {
            let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            rows.iter()
                .map(|(k, v)| format!("{k:<width$} = {v}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        ConsoleReply::Router(r) => router_text(r),
        ConsoleReply::Clients(r) => crate::clients::text(r),
        ConsoleReply::Fleet(r) => crate::fleet::text(r),
        ConsoleReply::Text(t) => t.clone(),
        ConsoleReply::Error(e) => e.clone(),
    }
}

/// `show tasks`: a row per task, its handlers indented under it.
fn tasks_text(rows: &[TaskRow]) -> String {
    const COLS: &str = "{:<10} {:>8}  {:<11} {:<30} {:>7}  {}";
    let mut t = Table::new(COLS, "Task|Pid|State|Description|Since|Status");
    for r in rows {
        let name = if r.parent.is_some() {
            format!("  {}", r.name)
        } else {
            r.name.clone()
        };
        let pid = r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let since = age(r.since_ms);
        t.row(&[&name, &pid, &r.state, &r.description, &since, &r.detail]);
    }
    t.out.trim_end().to_string()
}

/// `show task time`: each process's start, uptime and CPU times.
fn task_times_text(rows: &[TaskTime]) -> String {
    const COLS: &str = "{:<10} {:>8}  {:<20} {:>10}  {:>10} {:>9} {:>9}";
    let mut t = Table::new(COLS, "Task|Pid|Started (UTC)|Uptime|CPU|User|System");
    let secs = |ms: Option<u64>| {
        ms.map(|m| format!("{}.{:02}s", m / 1000, m % 1000 / 10))
            .unwrap_or_else(|| "-".into())
    };
    for r in rows {
        let (name, cpu) = match &r.parent {
            Some(p) => (format!("  {}", r.name), format!("(in {p})")),
            None => (r.name.clone(), secs(r.cpu_ms)),
        };
        t.row(&[
            &name,
            &r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            &r.started_ms.map(utc).unwrap_or_else(|| "-".into()),
            &r.uptime_secs.map(uptime).unwrap_or_else(|| "-".into()),
            &cpu,
            &secs(r.user_ms),
            &secs(r.system_ms),
        ]);
    }
    t.out.trim_end().to_string()
}

/// `show queue`: the counts, then the first page of each parked state.
fn queue_text(q: &QueueReport) -> String {
    const COUNTS: &str = "{:<22} {:<14} {:>6}";
    const PARKED: &str = "{:<13}  {:<16} {:>8}  {:<30} {}";
    let mut t = Table::new(COUNTS, "State|Queue|Msgs");
    for (state, queue, n) in &q.counts {
        t.row(&[state, queue, n]);
    }
    let mut out = t.out;
    if !q.parked.is_empty() {
        let mut t = Table::new(PARKED, "Queue ID|State|Size|From|Reason");
        for m in &q.parked {
            t.row(&[&m.qid, &m.state, &m.size, &format!("<{}>", m.from), &m.note]);
        }
        out.push('\n');
        out.push_str(&t.out);
    }
    if q.parked_more > 0 {
        out.push_str(&format!(
            "… and {} more parked messages (see the counts above)\n",
            q.parked_more
        ));
    }
    out.trim_end().to_string()
}

/// `show server`.
fn server_text(s: &ServerInfo) -> String {
    let when = |ms: u64| {
        if ms == 0 {
            "-".to_string()
        } else {
            format!("{} ago", age(Some(ms)))
        }
    };
    format!(
        "Server name:      {}\nVersion:          smtpmta {}\nSupervisor pid:   {}\nConfiguration:    {}\nData directory:   {}\nSpool size:       {} bytes\nElapsed time:     {}\nPending mail:     {}\nDead mail:        {}\nHeld mail:        {}\nSessions:         {} (peak {}, {})\nTransactions:     last minute {}, last hour {}, peak {} in a minute ({})",
        s.hostname,
        s.version,
        s.pid,
        s.config,
        s.data_dir,
        s.spool_bytes,
        age(Some(s.started_ms)),
        s.pending_mail,
        s.dead_mail,
        s.held_mail,
        s.sessions,
        s.sessions_peak,
        when(s.sessions_peak_ms),
        s.transactions_minute,
        s.transactions_hour,
        s.transactions_peak,
        when(s.transactions_peak_ms),
    )
}

pub fn to_json(reply: &ConsoleReply) -> Value {
    match reply {
        ConsoleReply::Tasks(rows) => json!({ "tasks": rows }),
        ConsoleReply::TaskTimes(rows) => json!({ "task_times": rows }),
        ConsoleReply::Server(s) => json!({ "server": s }),
        ConsoleReply::Queue(q) => json!({
            "queue": q.counts.iter().map(|(state, queue, n)| json!({"state": state, "queue": queue, "messages": n})).collect::<Vec<_>>(),
            "parked": q.parked,
            "parked_more": q.parked_more,
        }),
        ConsoleReply::Config(rows) => {
            let map: serde_json::Map<String, Value> = rows
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            json!({ "config": map })
        }
        ConsoleReply::Stats(stats) => {
            let map: serde_json::Map<String, Value> = stats
                .iter()
                .map(|s| match &s.text {
                    Some(t) => (s.name.clone(), json!(t)),
                    None => (s.name.clone(), json!(s.value)),
                })
                .collect();
            json!({ "stats": map })
        }
        ConsoleReply::Message(r) => json!({ "message": r }),
        // `qid`: the queue id as printed everywhere (`id` is its number).
        ConsoleReply::History(h) => json!({ "history": h, "qid": h.id.to_string() }),
        ConsoleReply::Track(page) => json!({
            "track": page.rows.iter().map(|h| {
                let mut v = json!(h);
                v["qid"] = json!(h.id.to_string());
                v
            }).collect::<Vec<_>>(),
            "more_after": page.next.map(|id| id.to_string()),
        }),
        ConsoleReply::Router(r) => json!({ "router": r }),
        ConsoleReply::Clients(r) => json!({ "clients": r }),
        ConsoleReply::Fleet(r) => json!({ "fleet": r }),
        ConsoleReply::Text(t) => json!({ "text": t }),
        ConsoleReply::Error(e) => json!({ "error": e }),
    }
}

/// `tell router show`, laid out like Domino's: a row per destination, then the threads.
fn router_text(r: &mta_ipc::transfers::RouterReport) -> String {
    const COLS: &str = "{:<28} {:<9} {:>6}  {:<22} {:<12} {}";
    let now = now_ms();
    let mut t = Table::new(COLS, "Destination|State|Msgs|Via|Next retry|Last error");
    for d in &r.destinations {
        let next = match d.next_retry_ms {
            Some(ms) if ms > now => format!("in {}s", (ms - now).div_ceil(1000)),
            _ => "-".to_string(),
        };
        // Shaping says why a THROTTLED or SUSPENDED destination waits, before its last error.
        let last = match (d.shaping.as_str(), d.last_error.as_str()) {
            ("", e) => e.to_string(),
            (s, "") => format!("[{s}]"),
            (s, e) => format!("[{s}] {e}"),
        };
        let state = d.state.as_str();
        t.row(&[&d.destination, &state, &d.messages, &d.via, &next, &last]);
    }
    let mut out = t.out;
    if r.destinations.is_empty() {
        out.push_str("No destinations pending.\n");
    }
    if r.more_destinations > 0 {
        out.push_str(&format!(
            "… and {} more destinations not listed\n",
            r.more_destinations
        ));
    }
    if r.in_transit > 0 {
        out.push_str(&format!(
            "{} messages not at a destination yet (being converted, routed or reported)\n",
            r.in_transit
        ));
    }
    let t = &r.transfer;
    let transport = match r.transport_running {
        Some(true) => "",
        Some(false) => " (outbound transport stopped)",
        None => " (the outbound controller did not answer)",
    };
    out.push_str(&format!(
        "Transfer Threads: Max {} Total {} Busy {} Inactive {} Concurrent Highest {}{transport}\n",
        t.max,
        t.total,
        t.busy,
        t.total.saturating_sub(t.busy),
        t.highest
    ));
    out.push_str(&format!(
        "Delivery Threads: Max {} Total {} Busy {} Inactive {}",
        r.delivery_threads_max,
        r.delivery_threads_max,
        r.delivery_threads_busy,
        r.delivery_threads_max
            .saturating_sub(r.delivery_threads_busy)
    ));
    out
}

fn time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    format!("{} ago", age(Some(ms)))
}

/// The lines `show message` starts with, for a queued message and a tracked one alike.
struct Head<'a> {
    id: String,
    state: String,
    note: Option<&'a str>,
    received: String,
    auth: Option<&'a str>,
    /// Without the angle brackets; empty for `<>`.
    return_path: String,
    size: String,
}

impl Head<'_> {
    fn write(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(out, "Queue ID:     {}", self.id);
        let _ = writeln!(out, "State:        {}", self.state);
        if let Some(note) = self.note {
            let _ = writeln!(out, "Reason:       {note}");
        }
        let _ = writeln!(out, "Received:     {}", self.received);
        if let Some(user) = self.auth {
            let _ = writeln!(out, "Auth-User:    {user}");
        }
        let _ = writeln!(out, "Return-Path:  <{}>", self.return_path);
        let _ = writeln!(out, "Size:         {}", self.size);
    }
}

/// `show message`: envelope, parsed fields, state, and each recipient's history.
fn message_text(r: &MessageRecord) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let state = match r.location {
        Location::Queue(q) => format!("{} in {q}", r.location.label()),
        Location::Held { from } => format!("Held (from {from})"),
        other => other.label().to_string(),
    };
    let env = &r.envelope;
    Head {
        id: r.id.to_string(),
        state,
        note: r.note.as_deref(),
        received: format!(
            "{} from {} [{}] ({})",
            time(r.received_at),
            env.helo,
            env.client_ip,
            env.protocol
        ),
        auth: env.auth.as_deref(),
        return_path: env.return_path(),
        size: format!(
            "{} bytes (spool {} @{})",
            r.size, r.content.segment, r.content.offset
        ),
    }
    .write(&mut out);
    if let Some(ret) = r.envelope.ret {
        let _ = writeln!(out, "RET:          {ret:?}");
    }
    if let Some(envid) = &r.envelope.envid {
        let _ = writeln!(out, "ENVID:        {envid}");
    }
    if let Some(f) = &r.fields {
        field_lines(&mut out, f);
    }
    let route: Vec<String> = r
        .trace
        .route
        .iter()
        .map(|(stage, _)| stage.clone())
        .collect();
    let _ = writeln!(
        out,
        "Hops:         {} Received; route here: {}",
        r.trace.hop_count,
        route.join(" > ")
    );
    let _ = writeln!(out, "Recipients:");
    for rc in &r.recipients {
        let status = rcpt_status(rc);
        let orcpt = rc
            .orcpt
            .as_deref()
            .map(|o| format!(" (ORCPT {o})"))
            .unwrap_or_default();
        let _ = writeln!(out, "  <{}>{orcpt}: {status}", rc.address);
        attempt_lines(&mut out, &rc.attempts);
    }
    out.trim_end().to_string()
}

/// The header fields the conversion kept, in `show message`.
fn field_lines(out: &mut String, f: &mta_types::message::ParsedFields) {
    use std::fmt::Write as _;
    for (name, value) in [
        ("From", &f.from),
        ("To", &f.to),
        ("Cc", &f.cc),
        ("Subject", &f.subject),
        ("Date", &f.date),
        ("Message-ID", &f.message_id),
        ("Auth-Results", &f.authentication_results),
    ] {
        if let Some(v) = value {
            let _ = writeln!(out, "{:<13} {v}", format!("{name}:"));
        }
    }
}

/// A queued recipient's state in `show message`.
fn rcpt_status(rc: &mta_types::Recipient) -> String {
    match &rc.status {
        RcptStatus::Pending => match rc.next_retry {
            Some(t) if t > now_ms() => {
                format!("pending, next try in {}s", (t - now_ms()).div_ceil(1000))
            }
            _ => "pending".into(),
        },
        RcptStatus::Delivered { at, mailbox } => format!("delivered {} ({mailbox})", time(*at)),
        RcptStatus::Expanded { at, to } => {
            let to: Vec<String> = to.iter().map(ToString::to_string).collect();
            format!("alias expanded {} to {}", time(*at), to.join(", "))
        }
        RcptStatus::Relayed { at, host, reply } => {
            format!("relayed {} to {host}: {reply}", time(*at))
        }
        RcptStatus::Failed { at, status, reply } => {
            // Our own verdicts carry the same status: print it once.
            let said = if reply.code.is_none() && reply.status.as_ref() == Some(status) {
                reply.text()
            } else {
                reply.to_string()
            };
            format!("failed {} {status}: {said}", time(*at))
        }
    }
}

/// A recipient's attempts under it, in `show message` (queued or from the history).
fn attempt_lines(out: &mut String, attempts: &[mta_types::message::Attempt]) {
    use std::fmt::Write as _;
    for a in attempts {
        let _ = writeln!(
            out,
            "    attempt {}: {} {}: {}",
            time(a.at),
            a.host,
            a.outcome.label(),
            a.outcome
        );
    }
}

/// `show message` of a message that left the queue: its tracking history.
fn history_text(h: &mta_types::tracking::TrackEntry) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    Head {
        id: format!("{} (from the message tracking history)", h.id),
        state: h.state.clone(),
        note: h.note.as_deref(),
        received: format!("{} from [{}]", time(h.received_at), h.client_ip),
        auth: h.auth.as_deref(),
        return_path: h.from.clone(),
        size: format!("{} bytes", h.size),
    }
    .write(&mut out);
    if let Some(m) = &h.message_id {
        let _ = writeln!(out, "Message-ID:   <{m}>");
    }
    if let Some(s) = &h.subject {
        let _ = writeln!(out, "Subject:      {s}");
    }
    let _ = writeln!(out, "Recipients:");
    for r in &h.recipients {
        let when = r.at.map(|t| format!(" {}", time(t))).unwrap_or_default();
        let detail = if r.detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.detail)
        };
        let _ = writeln!(out, "  <{}>: {}{when}{detail}", r.address, r.outcome);
        let skipped = (r.attempts_total as usize).saturating_sub(r.attempts.len());
        if skipped > 0 {
            let _ = writeln!(out, "    ({skipped} earlier attempts not kept)");
        }
        attempt_lines(&mut out, &r.attempts);
    }
    if h.more_recipients > 0 {
        let _ = writeln!(out, "  … and {} more recipients", h.more_recipients);
    }
    out.trim_end().to_string()
}

/// `track`: one line per message, then one per recipient.
fn track_text(page: &mta_ipc::tracking::TrackPage) -> String {
    use std::fmt::Write as _;
    if page.rows.is_empty() {
        return "no message found".into();
    }
    let mut out = String::new();
    for h in &page.rows {
        let _ = writeln!(
            out,
            "{}  {}  from=<{}> size={} message-id=<{}> state={}",
            h.id,
            time(h.received_at),
            h.from,
            h.size,
            h.message_id.as_deref().unwrap_or(""),
            h.state
        );
        for r in &h.recipients {
            let detail = if r.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.detail)
            };
            let _ = writeln!(
                out,
                "    to=<{}> {} attempts={}{detail}",
                r.address, r.outcome, r.attempts_total
            );
        }
    }
    let _ = writeln!(out, "{} message(s)", page.rows.len());
    if let Some(next) = page.next {
        let _ = writeln!(out, "more: add after={next} to see the next ones");
    }
    out.trim_end().to_string()
}

/// Unix ms as `YYYY-MM-DD HH:MM:SS` (UTC).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Seconds as `1d 02:03:04` or `02:03:04`.
fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d {h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn utc_and_uptime() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(1_796_178_096_000), "2026-12-02 02:21:36");
        assert_eq!(super::uptime(3_723), "01:02:03");
        assert_eq!(super::uptime(90_061), "1d 01:01:01");
    }
}
