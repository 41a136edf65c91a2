//! Console replies as text for people and as JSON for scripts.

use mta_ipc::console::ConsoleReply;
use mta_types::message::now_ms;
use serde_json::{json, Value};

fn age(since_ms: Option<u64>) -> String {
    let Some(since) = since_ms else {
        return String::new();
    };
    let secs = now_ms().saturating_sub(since) / 1000;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub fn to_text(reply: &ConsoleReply) -> String {
    match reply {
        ConsoleReply::Tasks(rows) => {
            let mut out = format!("{:<10} {:>8}  {:<11} {:<30} {:>7}  {}\n", "Task", "Pid", "State", "Description", "Since", "Status");
            for r in rows {
                let name = if r.parent.is_some() { format!("  {}", r.name) } else { r.name.clone() };
                let pid = r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
                out.push_str(&format!(
                    "{:<10} {:>8}  {:<11} {:<30} {:>7}  {}\n",
                    name,
                    pid,
                    r.state,
                    r.description,
                    age(r.since_ms),
                    r.detail
                ));
            }
            out.trim_end().to_string()
        }
        ConsoleReply::Queue(q) => {
            let mut out = format!("{:<22} {:<14} {:>6}\n", "State", "Queue", "Msgs");
            for (state, queue, n) in &q.counts {
                out.push_str(&format!("{state:<22} {queue:<14} {n:>6}\n"));
            }
            if !q.parked.is_empty() {
                out.push_str(&format!("\n{:<13}  {:<16} {:>8}  {:<30} {}\n", "Queue ID", "State", "Size", "From", "Reason"));
                for m in &q.parked {
                    out.push_str(&format!(
                        "{:<13}  {:<16} {:>8}  {:<30} {}\n",
                        m.qid,
                        m.state,
                        m.size,
                        format!("<{}>", m.from),
                        m.note
                    ));
                }
            }
            out.trim_end().to_string()
        }
        ConsoleReply::Server(s) => format!(
            "Server name:      {}\nVersion:          smtpmta {}\nSupervisor pid:   {}\nConfiguration:    {}\nData directory:   {}\nElapsed time:     {}",
            s.hostname,
            s.version,
            s.pid,
            s.config,
            s.data_dir,
            age(Some(s.started_ms)),
        ),
        ConsoleReply::Config(rows) => {
            let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            rows.iter().map(|(k, v)| format!("{k:<width$} = {v}")).collect::<Vec<_>>().join("\n")
        }
        ConsoleReply::Text(t) => t.clone(),
        ConsoleReply::Error(e) => e.clone(),
    }
}

pub fn to_json(reply: &ConsoleReply) -> Value {
    match reply {
        ConsoleReply::Tasks(rows) => json!({ "tasks": rows }),
        ConsoleReply::Server(s) => json!({ "server": s }),
        ConsoleReply::Queue(q) => json!({
            "queue": q.counts.iter().map(|(state, queue, n)| json!({"state": state, "queue": queue, "messages": n})).collect::<Vec<_>>(),
            "parked": q.parked,
        }),
        ConsoleReply::Config(rows) => {
            let map: serde_json::Map<String, Value> = rows
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            json!({ "config": map })
        }
        ConsoleReply::Text(t) => json!({ "text": t }),
        ConsoleReply::Error(e) => json!({ "error": e }),
    }
}
