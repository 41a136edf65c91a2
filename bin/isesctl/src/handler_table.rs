//! The handler table: inbound session handlers `iseshlr0`, `iseshlr1`, … and what each is
//! doing.
//!
//! A handler is a slot in the table; an accepted connection goes to the lowest-numbered
//! idle handler, or to a new one while fewer than `max_handlers` exist. The session runs
//! as a tokio task under the handler's name; when it ends, the handler becomes idle and is
//! reused. Every assignment carries one of the controller's `max_handlers` permits, taken
//! before `accept()`, so there is always a handler for a connection that was accepted.

use mta_ipc::HandlerRow;
use mta_types::message::{now_ms, UnixMillis};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedSemaphorePermit;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HandlerState {
    Idle,
    InSession { peer: SocketAddr },
}

#[derive(Debug)]
struct Handler {
    state: HandlerState,
    since: UnixMillis,
}

#[derive(Debug)]
pub struct HandlerTable {
    max: usize,
    handlers: Mutex<Vec<Handler>>,
}

impl HandlerTable {
    pub fn new(max: usize) -> HandlerTable {
        HandlerTable {
            max,
            handlers: Mutex::new(Vec::new()),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Gives the connection from `peer` to the lowest idle handler, creating one if none is
    /// idle. The handler is busy until the returned guard is dropped.
    pub fn assign(self: &Arc<Self>, peer: SocketAddr, permit: OwnedSemaphorePermit) -> Assigned {
        let mut handlers = self.handlers.lock().expect("handler table lock");
        let busy = Handler {
            state: HandlerState::InSession { peer },
            since: now_ms(),
        };
        let index = match handlers.iter().position(|h| h.state == HandlerState::Idle) {
            Some(i) => {
                handlers[i] = busy;
                i
            }
            None => {
                // The permits keep this at or under `max`.
                handlers.push(busy);
                handlers.len() - 1
            }
        };
        Assigned {
            table: self.clone(),
            index,
            _permit: permit,
        }
    }

    /// Handlers in session now.
    pub fn busy(&self) -> usize {
        let handlers = self.handlers.lock().expect("handler table lock");
        handlers
            .iter()
            .filter(|h| h.state != HandlerState::Idle)
            .count()
    }

    /// One row per handler for `show tasks`.
    pub fn rows(&self) -> Vec<HandlerRow> {
        let handlers = self.handlers.lock().expect("handler table lock");
        handlers
            .iter()
            .enumerate()
            .map(|(i, h)| match h.state {
                HandlerState::Idle => HandlerRow {
                    name: handler_name(i),
                    state: mta_ipc::console::RowState::Idle,
                    detail: "idle".into(),
                    since_ms: h.since,
                },
                HandlerState::InSession { peer } => HandlerRow {
                    name: handler_name(i),
                    state: mta_ipc::console::RowState::Busy,
                    detail: format!("in session with {peer}"),
                    since_ms: h.since,
                },
            })
            .collect()
    }

    fn release(&self, index: usize) {
        let mut handlers = self.handlers.lock().expect("handler table lock");
        if let Some(h) = handlers.get_mut(index) {
            h.state = HandlerState::Idle;
            h.since = now_ms();
        }
    }
}

pub fn handler_name(index: usize) -> String {
    format!("iseshlr{index}")
}

/// A handler in session. Dropping it makes the handler idle, then returns its permit (in
/// that order, so the next accepted connection finds the handler free).
pub struct Assigned {
    table: Arc<HandlerTable>,
    index: usize,
    _permit: OwnedSemaphorePermit,
}

impl Assigned {
    pub fn name(&self) -> String {
        handler_name(self.index)
    }
}

impl Drop for Assigned {
    fn drop(&mut self) {
        self.table.release(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    #[test]
    fn lowest_idle_handler_is_reused() {
        let table = Arc::new(HandlerTable::new(3));
        let permits = Arc::new(Semaphore::new(3));
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let take = || permits.clone().try_acquire_owned().unwrap();
        let a = table.assign(peer, take());
        let b = table.assign(peer, take());
        let c = table.assign(peer, take());
        assert_eq!(
            (a.name(), b.name(), c.name()),
            ("iseshlr0".into(), "iseshlr1".into(), "iseshlr2".into())
        );
        assert!(permits.clone().try_acquire_owned().is_err());
        assert_eq!(table.busy(), 3);
        drop(b);
        assert_eq!(table.busy(), 2);
        let d = table.assign(peer, take());
        assert_eq!(d.name(), "iseshlr1");
        let rows = table.rows();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].detail, "in session with 127.0.0.1:4000");
        drop((a, c, d));
        assert!(table
            .rows()
            .iter()
            .all(|r| r.state == mta_ipc::console::RowState::Idle));
        assert_eq!(permits.available_permits(), 3);
    }
}
