//! The handler table: outbound session handlers `oseshlr0`, `oseshlr1`, … and what each
//! is doing (`show tasks`).
//!
//! A list goes to the lowest-numbered idle handler, or to a new one while fewer than
//! `max_handlers` exist; otherwise it waits in the controller. A handler is a slot here
//! plus the tokio task that runs the list's session; when the list is done the slot is
//! idle again and reused.
//!
//! `stop outbound transport` stops the handlers with their controller (seed 002, exercise
//! 1): idle ones leave the table at once, busy ones are marked `stopping` and leave when
//! their session ends. `start outbound transport` brings back none of them; new handlers
//! are created on demand, from the lowest free number.

use mta_ipc::console::RowState;
use mta_ipc::HandlerRow;
use mta_types::message::{now_ms, UnixMillis};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
struct Handler {
    /// `None` when idle; else what the handler is doing.
    doing: Option<String>,
    since: UnixMillis,
    /// Stopped with the controller while in session: it leaves when the session ends.
    stopping: bool,
}

#[derive(Debug)]
pub struct HandlerTable {
    max: usize,
    /// The most handlers busy at once so far.
    highest: std::sync::atomic::AtomicUsize,
    /// By number; `None` is a number free for a new handler.
    handlers: Mutex<Vec<Option<Handler>>>,
}

impl HandlerTable {
    pub fn new(max: usize) -> HandlerTable {
        HandlerTable {
            max: max.max(1),
            highest: Default::default(),
            handlers: Mutex::new(Vec::new()),
        }
    }

    /// Takes the lowest idle handler (creating one below the maximum), or `None` when all
    /// `max_handlers` are busy.
    pub fn assign(self: &Arc<Self>, doing: String) -> Option<Assigned> {
        let mut handlers = self.handlers.lock().expect("handler table lock");
        let busy = Handler {
            doing: Some(doing),
            since: now_ms(),
            stopping: false,
        };
        let idle = handlers
            .iter()
            .position(|h| h.as_ref().is_some_and(|h| h.doing.is_none()));
        let live = handlers.iter().filter(|h| h.is_some()).count();
        let index = match idle {
            Some(i) => i,
            None if live < self.max => match handlers.iter().position(Option::is_none) {
                Some(free) => free,
                None => {
                    handlers.push(None);
                    handlers.len() - 1
                }
            },
            None => return None,
        };
        handlers[index] = Some(busy);
        let busy_now = handlers
            .iter()
            .flatten()
            .filter(|h| h.doing.is_some())
            .count();
        self.highest
            .fetch_max(busy_now, std::sync::atomic::Ordering::Relaxed);
        Some(Assigned {
            table: self.clone(),
            index,
        })
    }

    /// Whether every handler the table may have is busy.
    pub fn is_full(&self) -> bool {
        self.busy() >= self.max
    }

    pub fn busy(&self) -> usize {
        let handlers = self.handlers.lock().expect("handler table lock");
        handlers
            .iter()
            .flatten()
            .filter(|h| h.doing.is_some())
            .count()
    }

    /// Handlers in the table now (busy, idle or stopping).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let handlers = self.handlers.lock().expect("handler table lock");
        handlers.iter().flatten().count()
    }

    /// Domino's "Transfer Threads" figures: the maximum, how many exist, how many are
    /// busy, and the most busy at once so far.
    pub fn threads(&self) -> mta_ipc::transfers::TransferThreads {
        let handlers = self.handlers.lock().expect("handler table lock");
        let live = handlers.iter().flatten();
        mta_ipc::transfers::TransferThreads {
            max: self.max as u32,
            total: live.clone().count() as u32,
            busy: live.filter(|h| h.doing.is_some()).count() as u32,
            highest: self.highest.load(std::sync::atomic::Ordering::Relaxed) as u32,
        }
    }

    /// Stops the handlers with their controller: idle ones leave now, busy ones when their
    /// session ends. Returns how many are still finishing a session.
    pub fn stop_all(&self) -> usize {
        let mut handlers = self.handlers.lock().expect("handler table lock");
        let mut finishing = 0;
        for slot in handlers.iter_mut() {
            match slot {
                Some(h) if h.doing.is_some() => {
                    h.stopping = true;
                    finishing += 1;
                }
                _ => *slot = None,
            }
        }
        Self::trim(&mut handlers);
        finishing
    }

    fn trim(handlers: &mut Vec<Option<Handler>>) {
        while handlers.last().is_some_and(Option::is_none) {
            handlers.pop();
        }
    }

    pub fn rows(&self) -> Vec<HandlerRow> {
        let handlers = self.handlers.lock().expect("handler table lock");
        handlers
            .iter()
            .enumerate()
            .filter_map(|(i, h)| Some((i, h.as_ref()?)))
            .map(|(i, h)| HandlerRow {
                name: handler_name(i),
                state: match (&h.doing, h.stopping) {
                    (Some(_), true) => RowState::Stopping,
                    (Some(_), false) => RowState::Busy,
                    (None, _) => RowState::Idle,
                },
                detail: match (&h.doing, h.stopping) {
                    (Some(d), true) => format!("{d} (stopped: leaves when this session ends)"),
                    (Some(d), false) => d.clone(),
                    (None, _) => "idle".into(),
                },
                since_ms: h.since,
            })
            .collect()
    }

    fn set(&self, index: usize, doing: Option<String>) {
        let mut handlers = self.handlers.lock().expect("handler table lock");
        let Some(slot) = handlers.get_mut(index) else {
            return;
        };
        if doing.is_none() && slot.as_ref().is_some_and(|h| h.stopping) {
            *slot = None;
            Self::trim(&mut handlers);
            return;
        }
        if let Some(h) = slot {
            let idle_change = h.doing.is_none() != doing.is_none();
            h.doing = doing;
            if idle_change {
                h.since = now_ms();
            }
        }
    }
}

pub fn handler_name(index: usize) -> String {
    format!("oseshlr{index}")
}

/// A busy handler; dropping it makes the handler idle.
pub struct Assigned {
    table: Arc<HandlerTable>,
    index: usize,
}

impl Assigned {
    pub fn name(&self) -> String {
        handler_name(self.index)
    }

    /// Updates the `show tasks` detail ("delivering list 7 to mx.test[127.0.0.1]:25").
    pub fn set_detail(&self, doing: String) {
        self.table.set(self.index, Some(doing));
    }
}

impl Drop for Assigned {
    fn drop(&mut self) {
        self.table.set(self.index, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_on_demand_up_to_max_and_reused() {
        let t = Arc::new(HandlerTable::new(2));
        let a = t.assign("list 1".into()).unwrap();
        let b = t.assign("list 2".into()).unwrap();
        assert!(t.assign("list 3".into()).is_none());
        assert_eq!((a.name(), b.name()), ("oseshlr0".into(), "oseshlr1".into()));
        drop(a);
        let c = t.assign("list 3".into()).unwrap();
        assert_eq!(c.name(), "oseshlr0");
        assert_eq!(t.rows()[0].detail, "list 3");
        drop((b, c));
        assert_eq!(t.busy(), 0);
    }

    #[test]
    fn stop_removes_idle_handlers_now_and_busy_ones_when_their_session_ends() {
        let t = Arc::new(HandlerTable::new(3));
        let a = t.assign("list 1".into()).unwrap();
        let b = t.assign("list 2".into()).unwrap();
        drop(a);
        assert_eq!(t.len(), 2);
        assert_eq!(t.stop_all(), 1, "oseshlr1 is still in session");
        let rows = t.rows();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(
            (rows[0].name.as_str(), rows[0].state.as_str()),
            ("oseshlr1", "stopping")
        );
        // A new handler after start takes the lowest free number; the stopping one keeps its own.
        let c = t.assign("list 3".into()).unwrap();
        assert_eq!(c.name(), "oseshlr0");
        drop(b);
        assert_eq!(
            t.rows().iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
            vec!["oseshlr0"]
        );
        drop(c);
        assert_eq!(t.stop_all(), 0);
        assert!(t.rows().is_empty());
        assert_eq!(t.assign("list 4".into()).unwrap().name(), "oseshlr0");
    }
}
