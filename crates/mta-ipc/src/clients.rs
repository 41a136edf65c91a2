//! `show clients`: isesctl's per-client counters (Postfix anvil's view), busiest first.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientReport {
    /// Clients counted now (listed or not).
    pub tracked: u64,
    /// `(key, value)` of each per-client limit in force.
    pub limits: Vec<(String, String)>,
    /// The busiest: most sessions open, then most activity.
    pub rows: Vec<ClientRow>,
}

/// One client: an IPv4 address or an IPv6 /64 (`2001:db8:1:2::/64`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRow {
    pub client: String,
    /// Sessions open now.
    pub open: u32,
    /// Sessions, messages and recipients admitted since the client was first counted.
    pub connections: u64,
    pub messages: u64,
    pub recipients: u64,
    /// Events refused for a limit (each a `421 4.7.0`).
    pub refused: u64,
    /// Unix ms.
    pub last_seen_ms: u64,
    /// Nothing open and every rate back to its initial state.
    pub idle: bool,
}
