//! mta-ipc — every message that crosses a process boundary in smtpmta, and the one way
//! to send it.
//!
//! Sockets (all Unix-domain, mode 0600, in `<data_dir>/run/`):
//! - `smtpmta.sock`: the supervisor — store service, console, task registration;
//! - `<task>.sock`: each task's control socket — kicks, TELL commands, status.
//!
//! Frames are a 4-byte big-endian length followed by a bincode payload (see `frame`).
//! Every connection starts with a `Hello` carrying `PROTOCOL_VERSION` and the service
//! the client means to reach, so a client of another version or on the wrong socket
//! fails at once with a clear error. Tasks call the typed stubs (`SupervisorClient`,
//! `TaskClient`, `StoreClient`, `Kicker`); nobody builds frames by hand.

pub mod client;
pub mod clients;
pub mod console;
pub mod fleet;
pub mod frame;
pub mod hello;
pub mod kick;
pub mod listeners;
pub mod paths;
pub mod server;
pub mod store;
pub mod supervisor;
pub mod task;
pub mod tracking;
pub mod transfers;

pub use client::{Connection, IpcError};
pub use hello::{Hello, HelloReply, Service, PROTOCOL_VERSION};
pub use kick::Kicker;
pub use store::{StoreClient, StoreRequest, StoreResponse};
pub use supervisor::{SupervisorClient, SupervisorRequest, SupervisorResponse};
pub use task::{HandlerRow, TaskClient, TaskRequest, TaskResponse, TaskState, TaskStatus};
