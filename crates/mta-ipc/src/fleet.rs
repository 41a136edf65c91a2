//! `show fleet`: every node of the fleet as the shared status in Redis says, and the
//! summary each node publishes in its heartbeat (JSON in Redis, so another version of a
//! node can still be read: unknown fields are ignored, missing ones default).

use mta_types::fleet::NodeState;
use serde::{Deserialize, Serialize};

/// What a node publishes about itself in each heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeSummary {
    pub version: String,
    pub state: NodeState,
    /// Tasks running, of the tasks the supervisor runs (itself included).
    pub tasks_up: u32,
    pub tasks: u32,
    /// Messages by state: `pending` (in a queue), `held`, `dead`.
    pub pending: u64,
    pub held: u64,
    pub dead: u64,
    /// Sessions in progress, inbound and outbound.
    pub sessions_in: u64,
    pub sessions_out: u64,
    /// When its supervisor started (Unix ms).
    pub started_ms: u64,
    /// `host:port` of its SMTP listener for fleet peers (`[cluster] peer_address`):
    /// where `tell smtpmta drain to <node>` hands its mail. Empty from a node that does
    /// not say.
    pub smtp: String,
}

/// A node's state as `show fleet` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    Up,
    Draining,
    /// Its heartbeat is older than three intervals.
    Down,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Up => "UP",
            NodeStatus::Draining => "DRAINING",
            NodeStatus::Down => "DOWN",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    pub node: String,
    pub status: NodeStatus,
    /// How long ago its last heartbeat arrived, ms (Redis's clock).
    pub last_seen_ms: u64,
    pub summary: NodeSummary,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetReport {
    /// This node's name.
    pub node: String,
    /// The Redis URL, password masked; empty for a single node.
    pub redis: String,
    /// Whether this node reaches Redis now (`smtpmta_cluster_up`).
    pub cluster_up: bool,
    /// False: Redis is away and `nodes` is what was last seen.
    pub fresh: bool,
    pub nodes: Vec<NodeRow>,
    /// The fleet's suspensions in force (by an operator or an `on_reply` rule on any
    /// node); empty while Redis is away.
    pub suspended: Vec<FleetSuspension>,
}

/// A destination (a domain or a site) no node delivers to until `until_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetSuspension {
    pub target: String,
    pub until_ms: u64,
    pub by: String,
}
