//! A node's state in a fleet. The supervisor holds it (the drain commands set it), the
//! heartbeat publishes it, and `show fleet` adds `DOWN` for a node whose heartbeat is gone
//! (an observer's verdict, never a state a node reports about itself).

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a live node says about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Accepting and delivering.
    #[default]
    Up,
    /// Refusing inbound and handing its queue off to a peer.
    Draining,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "UP",
            NodeState::Draining => "DRAINING",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
