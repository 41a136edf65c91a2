//! `show fleet` as text: one row per node (UP, DOWN or DRAINING) with its heartbeat's
//! figures, under a line that says whether this node reaches Redis.

use mta_ipc::fleet::FleetReport;
use mta_types::message::now_ms;

pub fn text(r: &FleetReport) -> String {
    if r.redis.is_empty() {
        return format!("Node {}: a single node (no [cluster] redis)", r.node);
    }
    let link = if r.cluster_up { "up" } else { "DOWN" };
    let mut out = format!(
        "Fleet via {} (cluster {link}), this node: {}\n",
        r.redis, r.node
    );
    if !r.fresh {
        out.push_str("Redis is unreachable: limits are local shares; the nodes as last seen:\n");
    }
    out.push_str(&format!(
        "{:<16} {:<9} {:>9} {:>7} {:>8} {:>5} {:>5} {:>9}  {:<8} {}\n",
        "Node",
        "State",
        "Last seen",
        "Tasks",
        "Pending",
        "Held",
        "Dead",
        "Sessions",
        "Version",
        "SMTP"
    ));
    for n in &r.nodes {
        let s = &n.summary;
        out.push_str(&format!(
            "{:<16} {:<9} {:>8}s {:>7} {:>8} {:>5} {:>5} {:>9}  {:<8} {}\n",
            n.node,
            n.status.as_str(),
            n.last_seen_ms / 1000,
            format!("{}/{}", s.tasks_up, s.tasks),
            s.pending,
            s.held,
            s.dead,
            format!("{}/{}", s.sessions_in, s.sessions_out),
            s.version,
            if s.smtp.is_empty() { "-" } else { &s.smtp }
        ));
    }
    if r.nodes.is_empty() {
        out.push_str("No heartbeat seen yet.\n");
    }
    for s in &r.suspended {
        out.push_str(&format!(
            "{} SUSPENDED across the fleet for {}s more, by {}\n",
            s.target,
            s.until_ms.saturating_sub(now_ms()).div_ceil(1000),
            s.by
        ));
    }
    out.trim_end().to_string()
}
