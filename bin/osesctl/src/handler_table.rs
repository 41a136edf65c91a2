//! The handler table: outbound session handlers `oseshlr0`, `oseshlr1`, … and what each
//! is doing (`show tasks`).
//!
//! A list goes to the lowest-numbered idle handler, or to a new one while fewer than
//! `max_handlers` exist; otherwise it waits in the controller. A handler is a slot here
//! plus the tokio task that runs the list's session; when the list is done the slot is
//! idle again and reused.

use mta_ipc::HandlerRow;
use mta_types::message::{now_ms, UnixMillis};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
struct Handler {
    /// `None` when idle; else what the handler is doing.
    doing: Option<String>,
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
            max: max.max(1),
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
        };
        let index = match handlers.iter().position(|h| h.doing.is_none()) {
            Some(i) => {
                handlers[i] = busy;
                i
            }
            None if handlers.len() < self.max => {
                handlers.push(busy);
                handlers.len() - 1
            }
            None => return None,
        };
        Some(Assigned {
            table: self.clone(),
            index,
        })
    }

    pub fn busy(&self) -> usize {
        let handlers = self.handlers.lock().expect("handler table lock");
        handlers.iter().filter(|h| h.doing.is_some()).count()
    }

    pub fn rows(&self) -> Vec<HandlerRow> {
        let handlers = self.handlers.lock().expect("handler table lock");
        handlers
            .iter()
            .enumerate()
            .map(|(i, h)| HandlerRow {
                name: handler_name(i),
                state: if h.doing.is_some() { "busy" } else { "idle" }.into(),
                detail: h.doing.clone().unwrap_or_else(|| "idle".into()),
                since_ms: h.since,
            })
            .collect()
    }

    fn set(&self, index: usize, doing: Option<String>) {
        let mut handlers = self.handlers.lock().expect("handler table lock");
        if let Some(h) = handlers.get_mut(index) {
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
}
