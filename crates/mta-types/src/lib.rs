//! mta-types — the vocabulary every smtpmta crate and task shares.
//!
//! No I/O lives here: identifiers (`QueueId`), mail addresses (`Address`, `Domain`),
//! the names of the tasks (`TaskName`) and of the queues (`QueueName`), the SMTP `Reply`
//! (with its named constructors) and the records' types. Everything is
//! serialisable so it can cross process boundaries inside `mta-ipc` frames.

pub mod address;
pub mod counters;
pub mod endpoint;
pub mod fleet;
pub mod message;
pub mod outcome;
pub mod queue_id;
pub mod rate;
pub mod reply;
pub mod task;
pub mod tracking;

pub use address::{Address, AddressError, Domain};
pub use endpoint::{BadEndpoint, Endpoint};
pub use message::{ContentRef, Envelope, Location, MessageRecord, RcptStatus, Recipient};
pub use outcome::{DeliveryOutcome, Enhanced};
pub use queue_id::QueueId;
pub use reply::Reply;
pub use task::{BareNewline, QueueName, TaskName};

/// The `tracing` target of every line a debug knob (`SMTPDebug`, `SMTPClientDebug`,
/// `Log_MailRouting`, …) turns on: the task skeleton copies exactly these lines to
/// `debug_outfile`. Use it as `tracing::info!(target: mta_types::DEBUG_TARGET, …)`.
pub const DEBUG_TARGET: &str = "smtpmta_debug";
