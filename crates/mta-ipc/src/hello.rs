//! The first frame of every connection.

use mta_types::TaskName;
use serde::{Deserialize, Serialize};

/// Bumped whenever any message in this crate changes shape.
pub const PROTOCOL_VERSION: u32 = 3;

/// The service a socket offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Service {
    /// The supervisor's socket: store, console, registration.
    Supervisor,
    /// A task's control socket.
    Control(TaskName),
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Service::Supervisor => f.write_str("smtpmta supervisor"),
            Service::Control(t) => write!(f, "{t} control"),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub service: Service,
    /// Who is calling, for the server's log.
    pub client: TaskName,
    pub pid: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum HelloReply {
    Accepted { version: u32 },
    Refused { reason: String },
}
