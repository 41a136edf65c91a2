//! What the controller holds per destination, for `tell router show`: lists a handler is
//! delivering (Busy), lists waiting for a free handler (Wait), lists traffic shaping
//! holds back (Throttled) and suspended destinations (Suspended, with no list: their
//! messages wait in the store). Everything here is already in memory (at most a few
//! lists per handler), so a page costs no store read.

use crate::domain_list::DomainList;
use mta_ipc::transfers::{TransferPage, TransferRow, TransferState, TransferThreads};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// One list reduced to what the report shows: messages per recipient domain.
#[derive(Clone, Debug)]
pub struct ListSummary {
    via: String,
    domains: Vec<(String, u64)>,
}

impl ListSummary {
    /// A destination the controller holds no list for (a suspended one).
    pub fn domain(domain: &str, via: &str) -> ListSummary {
        ListSummary {
            via: via.to_string(),
            domains: vec![(domain.to_string(), 0)],
        }
    }

    /// A message with recipients in two of the list's domains counts in both.
    pub fn of(list: &DomainList, relay_host: Option<&str>) -> ListSummary {
        let mut domains: Vec<(String, u64)> = Vec::new();
        for item in &list.items {
            let mut seen: Vec<&str> = Vec::new();
            for &i in &item.rcpts {
                let domain = item.record.recipients[i].address.domain().as_str();
                if seen.contains(&domain) {
                    continue;
                }
                seen.push(domain);
                match domains.iter_mut().find(|(d, _)| d == domain) {
                    Some((_, n)) => *n += 1,
                    None => domains.push((domain.to_string(), 1)),
                }
            }
        }
        ListSummary {
            via: relay_host.map_or_else(|| "MX".to_string(), str::to_string),
            domains,
        }
    }
}

/// The lists handlers are delivering now, by list ID.
#[derive(Default)]
pub struct ActiveLists {
    lists: Mutex<HashMap<u64, ListSummary>>,
}

impl ActiveLists {
    pub fn start(&self, id: u64, summary: ListSummary) {
        self.lists.lock().expect("active lists").insert(id, summary);
    }

    pub fn end(&self, id: u64) {
        self.lists.lock().expect("active lists").remove(&id);
    }

    fn snapshot(&self) -> Vec<ListSummary> {
        self.lists
            .lock()
            .expect("active lists")
            .values()
            .cloned()
            .collect()
    }
}

/// Rows for domains after `after`, ordered by domain then state; a page ends at a domain
/// boundary once it has `limit` rows, so a domain's Busy and Wait rows stay together.
/// A list (or destination) the controller holds that no handler is delivering: waiting,
/// throttled or suspended, with the shaping detail for the last two.
pub struct Held {
    pub summary: ListSummary,
    pub state: TransferState,
    pub shaping: String,
}

pub fn page(
    active: &ActiveLists,
    held: &[Held],
    after: Option<&str>,
    limit: u32,
    threads: TransferThreads,
    transport_running: bool,
) -> TransferPage {
    let mut by_domain: BTreeMap<(String, TransferState), (u64, String, &str)> = BTreeMap::new();
    let busy = active.snapshot();
    let tagged = busy.iter().map(|s| (s, TransferState::Busy, "")).chain(
        held.iter()
            .map(|h| (&h.summary, h.state, h.shaping.as_str())),
    );
    for (summary, state, shaping) in tagged {
        for (domain, n) in &summary.domains {
            if after.is_some_and(|a| domain.as_str() <= a) {
                continue;
            }
            let entry = by_domain
                .entry((domain.clone(), state))
                .or_insert_with(|| (0, summary.via.clone(), shaping));
            entry.0 += n;
        }
    }
    let mut rows: Vec<TransferRow> = Vec::new();
    let mut more = false;
    for ((domain, state), (messages, via, shaping)) in by_domain {
        let full = rows.len() >= limit.max(1) as usize;
        if full && rows.last().is_some_and(|r| r.domain != domain) {
            more = true;
            break;
        }
        rows.push(TransferRow {
            domain,
            state,
            messages,
            via,
            shaping: shaping.to_string(),
        });
    }
    TransferPage {
        rows,
        more,
        threads,
        transport_running,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(domains: &[(&str, u64)]) -> ListSummary {
        ListSummary {
            via: "MX".into(),
            domains: domains.iter().map(|(d, n)| (d.to_string(), *n)).collect(),
        }
    }

    #[test]
    fn pages_follow_domain_order_and_keep_a_domains_busy_and_wait_rows_together() {
        let active = ActiveLists::default();
        active.start(1, summary(&[("b.test", 2)]));
        active.start(2, summary(&[("b.test", 1), ("a.test", 1)]));
        let wait = |s| Held {
            summary: s,
            state: TransferState::Wait,
            shaping: String::new(),
        };
        let waiting = [
            wait(summary(&[("b.test", 4)])),
            wait(summary(&[("c.test", 1)])),
        ];
        let threads = TransferThreads::default();
        let first = page(&active, &waiting, None, 2, threads, true);
        let rows: Vec<_> = first
            .rows
            .iter()
            .map(|r| (r.domain.as_str(), r.state, r.messages))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("a.test", TransferState::Busy, 1),
                ("b.test", TransferState::Busy, 3),
                ("b.test", TransferState::Wait, 4),
            ],
            "the page runs past its limit to finish b.test"
        );
        assert!(first.more);
        let second = page(&active, &waiting, Some("b.test"), 2, threads, true);
        assert_eq!(second.rows.len(), 1);
        assert_eq!(second.rows[0].domain, "c.test");
        assert!(!second.more);
        active.end(1);
        active.end(2);
        assert!(page(&active, &[], None, 10, threads, true).rows.is_empty());
    }
}
