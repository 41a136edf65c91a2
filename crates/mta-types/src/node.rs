//! A node's state in a fleet, as its supervisor sets it and the fleet heartbeat
//! publishes it (`show fleet`). DOWN is not here: a node never says it is down, the
//! others conclude it from a missed heartbeat.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeState {
    /// Accepting and delivering mail.
    #[default]
    Up,
    /// `tell smtpmta drain to …`: inbound refused with 421, the queue handed off to a peer.
    Draining,
}

impl NodeState {
    /// As `show fleet` prints it.
    pub fn label(self) -> &'static str {
        match self {
            NodeState::Up => "UP",
            NodeState::Draining => "DRAINING",
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}
