//! `tell router show`: what is happening to each destination now.
//!
//! The outbound controller answers for the destinations it holds in memory (a list being
//! delivered: Busy; a list waiting for a free handler: Wait) with [`TransferPage`]; the
//! router adds what the store knows (messages, the next retry, the last error) and answers
//! the console with a [`RouterReport`]. Both are pages: the controller holds at most a
//! few lists per handler, and the report lists a bounded number of destinations.

use serde::{Deserialize, Serialize};

/// What the outbound controller is doing for one recipient domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TransferState {
    /// A handler is in session for it.
    Busy,
    /// Its list waits in the controller for a free handler.
    Wait,
    /// Traffic shaping holds its list back: waiting for a rate or a connection slot.
    Throttled,
    /// Suspended (by an `on_reply` rule or the operator): not attempted until then.
    Suspended,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRow {
    pub domain: String,
    pub state: TransferState,
    pub messages: u64,
    /// The next hop as the controller groups it: the relay host, or the domain's MX.
    pub via: String,
    /// Throttled or suspended: why, until when, the site's limit and use.
    pub shaping: String,
}

/// Handler counts, as Domino's "Transfer Threads" line prints them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferThreads {
    /// `[outbound] max_handlers`.
    pub max: u32,
    /// Handlers that exist now (busy or idle).
    pub total: u32,
    pub busy: u32,
    /// The most busy at once since the controller started.
    pub highest: u32,
}

/// One page of the controller's destinations, ordered by domain then state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferPage {
    pub rows: Vec<TransferRow>,
    /// More rows after the last one here.
    pub more: bool,
    pub threads: TransferThreads,
    /// False after `tell smtpmta stop outbound transport`.
    pub transport_running: bool,
}

/// A destination's state in `tell router show` (Domino's words).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DestinationState {
    /// Being delivered now.
    Busy,
    /// Due, but waiting for a free thread (or a stopped transport).
    Wait,
    /// Not due yet: its messages wait for their next retry.
    Retry,
    /// Due and not yet picked up.
    Ready,
    /// Traffic shaping holds it back (a rate or a connection slot of its site).
    Throttled,
    /// Suspended until a time, by a shaping rule or the operator.
    Suspended,
}

impl DestinationState {
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationState::Busy => "BUSY",
            DestinationState::Wait => "WAIT",
            DestinationState::Retry => "RETRY",
            DestinationState::Ready => "READY",
            DestinationState::Throttled => "THROTTLED",
            DestinationState::Suspended => "SUSPENDED",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterDestination {
    /// `LocalDelivery`, or a recipient domain.
    pub destination: String,
    pub state: DestinationState,
    pub messages: u64,
    pub via: String,
    /// When the first of its messages is due (ms since the epoch), if later than now.
    pub next_retry_ms: Option<u64>,
    pub last_error: String,
    /// THROTTLED or SUSPENDED: why, until when, the site's limit and use.
    pub shaping: String,
}

/// `tell router show`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterReport {
    pub destinations: Vec<RouterDestination>,
    /// Destinations past the listed ones (the report lists a bounded number).
    pub more_destinations: u64,
    /// Messages not at a destination yet: being converted (inbound-work, smtp.box),
    /// routed (mail.box, for a domain that is not local) or reported (reports).
    pub in_transit: u64,
    pub transfer: TransferThreads,
    /// The router's local delivery worker.
    pub delivery_threads_max: u32,
    pub delivery_threads_busy: u32,
    /// `None`: the outbound controller did not answer (its rows are then missing).
    pub transport_running: Option<bool>,
}
