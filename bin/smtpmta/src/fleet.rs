//! This node in its fleet (`[cluster] redis`): the heartbeat (every `[cluster] heartbeat`,
//! with the node's summary: version, state, tasks up, queue counts, sessions), `show fleet`
//! and the cluster's line in `/metrics` and on the status page.
//!
//! A node is UP or DRAINING as its own heartbeat says (the state drain keeps,
//! `Drain::node_state`), DOWN when its heartbeat is older than three
//! intervals. While Redis is away `show fleet` says so and lists the nodes as last seen,
//! and the count of nodes alive is kept in `<data_dir>/cluster/alive` for the tasks' local
//! shares (`mta_task::fleet`).

use crate::Supervisor;
use mta_ipc::fleet::{FleetReport, FleetSuspension, NodeRow, NodeStatus, NodeSummary};
use mta_limit::fleet::Fleet;
use mta_types::fleet::NodeState;
use mta_types::{Location, QueueName, TaskName};
use std::sync::{Arc, Mutex};

/// The supervisor's link to the fleet and what it last saw of it.
pub struct FleetStatus {
    pub fleet: Arc<Fleet>,
    last: Mutex<Vec<NodeRow>>,
}

impl FleetStatus {
    pub fn new(fleet: Arc<Fleet>) -> FleetStatus {
        FleetStatus {
            fleet,
            last: Mutex::default(),
        }
    }
}

/// Publishes the heartbeat every interval, forever.
pub async fn heartbeat(sup: Arc<Supervisor>) {
    let Some(status) = &sup.fleet else {
        return;
    };
    let mut alive_kept = 0;
    loop {
        let summary = summary(&sup).await;
        let json = serde_json::to_string(&summary).expect("serialisable");
        if status.fleet.heartbeat(json).await {
            // What `show fleet` shows while Redis is away: the fleet as last seen.
            refresh(status).await;
        }
        let alive = status.fleet.alive_nodes();
        if alive != alive_kept {
            keep_alive_count(&sup, alive);
            alive_kept = alive;
        }
        tokio::time::sleep(status.fleet.settings().heartbeat).await;
    }
}

fn keep_alive_count(sup: &Supervisor, alive: u32) {
    let file = mta_task::fleet::alive_file(&sup.config().data_dir);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(file.parent().expect("a folder"))?;
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, format!("{alive}\n"))?;
        std::fs::rename(&tmp, &file)
    };
    if let Err(e) = write() {
        tracing::warn!(
            "cluster: cannot keep the count of nodes alive in {}: {e}",
            file.display()
        );
    }
}

/// This node now, as its heartbeat tells the fleet.
async fn summary(sup: &Supervisor) -> NodeSummary {
    let engine = sup.store.engine();
    let rows = sup.children.rows();
    let tasks_up = rows
        .iter()
        .filter(|(_, r)| r.state == mta_ipc::console::RowState::Running)
        .count() as u32;
    let state = sup.drain.node_state();
    NodeSummary {
        version: env!("CARGO_PKG_VERSION").into(),
        state,
        tasks_up: tasks_up + 1,
        tasks: rows.len() as u32 + 1,
        pending: QueueName::ALL
            .iter()
            .map(|q| engine.count_in(Location::Queue(*q)))
            .sum(),
        held: engine.count_in(Location::Held {
            from: QueueName::MailBox,
        }),
        dead: engine.count_in(Location::Dead),
        sessions_in: crate::rates::busy_handlers(sup, TaskName::Isesctl).await,
        sessions_out: crate::rates::busy_handlers(sup, TaskName::Osesctl).await,
        started_ms: sup.started_ms,
        smtp: sup.config().peer_smtp_address(),
    }
}

/// `show fleet`: every node that ever published, from Redis; what was last seen when
/// Redis is away.
pub async fn report(sup: &Supervisor) -> FleetReport {
    let config = sup.config();
    let Some(status) = &sup.fleet else {
        return FleetReport {
            node: config.cluster.node.clone(),
            ..FleetReport::default()
        };
    };
    let fresh = refresh(status).await;
    let now = mta_types::message::now_ms();
    let mut suspended: Vec<FleetSuspension> = match fresh {
        true => status.fleet.suspensions().await.unwrap_or_default(),
        false => Vec::new(),
    }
    .into_iter()
    .filter(|(_, until_ms, _)| *until_ms > now)
    .map(|(target, until_ms, by)| FleetSuspension {
        target,
        until_ms,
        by,
    })
    .collect();
    suspended.sort_by(|a, b| a.target.cmp(&b.target));
    FleetReport {
        suspended,
        node: config.cluster.node.clone(),
        redis: config
            .cluster
            .redis
            .as_ref()
            .map(|r| r.to_string())
            .unwrap_or_default(),
        cluster_up: status.fleet.is_up(),
        fresh,
        nodes: status.last.lock().expect("fleet lock").clone(),
    }
}

/// Where fleet node `name` takes hand-offs, from its heartbeat: `Ok(None)` when this
/// node is not in a fleet or knows no node by that name; `Err` when the node cannot take
/// them (DOWN, DRAINING, this node, or no address published).
pub async fn peer_address(sup: &Supervisor, name: &str) -> Result<Option<String>, String> {
    let Some(status) = &sup.fleet else {
        return Ok(None);
    };
    let fresh = refresh(status).await;
    let rows = status.last.lock().expect("fleet lock").clone();
    let Some(row) = rows.iter().find(|r| r.node == name) else {
        return Ok(None);
    };
    let stale = if fresh {
        ""
    } else {
        " (as last seen: Redis is unreachable)"
    };
    if name == sup.config().cluster.node {
        return Err(format!("drain: {name} is this node"));
    }
    match row.status {
        NodeStatus::Down => Err(format!(
            "drain: node {name} is DOWN{stale}: its last heartbeat is {}s old",
            row.last_seen_ms / 1000
        )),
        NodeStatus::Draining => Err(format!("drain: node {name} is DRAINING itself{stale}")),
        NodeStatus::Up if row.summary.smtp.is_empty() => Err(format!(
            "drain: node {name} publishes no SMTP address (an older version); name it host:port"
        )),
        NodeStatus::Up => Ok(Some(row.summary.smtp.clone())),
    }
}

/// Reads every node's heartbeat from Redis into `status.last`; false when Redis is away.
async fn refresh(status: &FleetStatus) -> bool {
    let down_after = (status.fleet.settings().heartbeat * 3).as_millis() as u64;
    let Some(view) = status.fleet.nodes().await else {
        return false;
    };
    let mut rows: Vec<NodeRow> = view
        .nodes
        .into_iter()
        .map(|n| {
            let summary: NodeSummary = serde_json::from_str(&n.summary).unwrap_or_default();
            let age = view.now_ms.saturating_sub(n.last_ms);
            let status = match (age > down_after, summary.state) {
                (true, _) => NodeStatus::Down,
                (false, NodeState::Draining) => NodeStatus::Draining,
                (false, NodeState::Up) => NodeStatus::Up,
            };
            NodeRow {
                node: n.node,
                status,
                last_seen_ms: age,
                summary,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.node.cmp(&b.node));
    *status.last.lock().expect("fleet lock") = rows;
    true
}
