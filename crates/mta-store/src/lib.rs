//! mta-store — the queues, in one sled database owned by the supervisor.
//!
//! sled allows one process per database, so the supervisor opens it and every task reaches
//! it through `mta_ipc::StoreClient`; no sled type leaves this crate. What the tasks send
//! and receive (`StoreRequest`, `Change`, `StoreResponse`, the views' rows, `StoreError`)
//! is this crate's own vocabulary, in `mta-store-types` (`types`), which carries no sled,
//! so the tasks link it and not the engine; `mta-ipc` carries it on the wire.
//!
//! Schema: one sled tree, keys by prefix (`keys.rs`); records in the store's own
//! versioned format (`mta_store_types::record_codec`, shared with isesctl's spool
//! envelopes). Every index and count a view or a poll needs is kept
//! in the same atomic batch as the record change that causes it, so a poll reads only
//! what is due and a view reads counters, never the whole queue.
//!
//! Every commit is one atomic sled batch; commits arriving together share one flush
//! (group commit) and are answered only after it, and after the flush is made really
//! durable with fdatasync (`durability.rs`: sled's own flush made nothing durable). Claims are leases kept in memory: a
//! lease ends with the commit of its record, with an explicit release, when the owning
//! process exits (`release_owner`), or when it expires.

mod durability;
mod engine;
mod keys;
mod leases;
mod service;
mod sled_log;
pub mod stats;
pub mod tracking;
mod tracklog;

pub use engine::Engine;
pub use mta_store_types as types;
pub use mta_store_types::StoreError;
pub use service::{on_quiet, BulkError, CommitError, OperateError, StoreService};
