//! mta-store — the queues, in one sled database owned by the supervisor.
//!
//! sled allows one process per database, so the supervisor opens it and every task reaches
//! it through `mta_ipc::StoreClient`; no sled type leaves this crate.
//!
//! Schema (one sled tree, keys by prefix, values encoded by `mta_ipc::frame`):
//! - `m` + QueueId (8 bytes, big-endian)          → `MessageRecord` (carries `schema`)
//! - `l` + location byte + QueueId                → empty: the index of each queue / state,
//!   in arrival order (QueueIds sort by time)
//! - `s` + counter name                           → u64 big-endian (statistics, `stats.rs`)
//!
//! Every commit is one atomic sled batch; commits arriving together share one flush
//! (group commit) and are answered only after it. Claims are leases kept in memory: a
//! lease ends with the commit of its record, with an explicit release, when the owning
//! process exits (`release_owner`), or when it expires.

mod engine;
mod leases;
mod service;
pub mod stats;

pub use engine::{Engine, StoreError};
pub use service::{OperateError, StoreService};
