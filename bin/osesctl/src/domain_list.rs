//! Domain List Processing: claimed messages sorted into lists by next hop.
//!
//! The next-hop key is the relay host when `[outbound] relay_host` is set, else the
//! recipient's domain. Each list gets a reference ID and at most `max_messages_per_list`
//! messages; a list is never re-sorted once made (new messages for a hop being served
//! join a new list).
//!
//! A message with recipients in two domains appears in two lists, each list carrying only
//! that domain's recipients (by index). Every recipient is in exactly one list, so each
//! outcome is recorded exactly once; the outcome collector (`outcomes.rs`) merges the
//! lists' reports into the one record and commits it when its last list is done.
//!
//! Only recipients that are `Pending` and due (`next_retry` absent or past) are listed: a
//! message claimed because one recipient is due leaves the others alone.

use mta_types::message::UnixMillis;
use mta_types::{Domain, MessageRecord, RcptStatus};
use std::sync::Arc;

/// One message's part of a list: the record as claimed (envelope, content reference)
/// and the indexes of the recipients this list carries.
#[derive(Clone, Debug)]
pub struct ListItem {
    pub record: Arc<MessageRecord>,
    pub rcpts: Vec<usize>,
}

/// A Domain List: messages for one next hop, with its reference ID.
#[derive(Debug)]
pub struct DomainList {
    pub id: u64,
    /// The next hop as grouped: a domain, or the relay host.
    pub key: String,
    /// The domain to resolve (any of the list's recipient domains in relay-host mode).
    pub domain: Domain,
    pub items: Vec<ListItem>,
    /// Its next hop, site and rule once resolved (a list handed back to the controller by
    /// traffic shaping keeps them).
    pub hop: Option<Arc<crate::shaping::Hop>>,
}

impl DomainList {
    /// Moves messages of `other`, a list for the same next hop, into this one until it
    /// holds `max`: lists held back by a site's connection limit are one or two messages
    /// each (each was claimed while the site was full), and one connection should carry
    /// as many as a list may (one lease, one TCP and TLS handshake, for all of them).
    pub fn fill_from(&mut self, other: &mut DomainList, max: usize) {
        debug_assert_eq!(self.key, other.key);
        let room = max.max(1).saturating_sub(self.items.len());
        let mut moved = 0;
        other.items.retain(|item| {
            let here = self.items.iter().any(|i| i.record.id == item.record.id);
            if moved < room && !here {
                moved += 1;
                self.items.push(item.clone());
                false
            } else {
                true
            }
        });
    }
}

/// Sorts `records` into lists. Returns the lists and, for each record (same order), the
/// number of lists it appears in (0: nothing due, give it back).
pub fn build_lists(
    records: &[Arc<MessageRecord>],
    relay_host: Option<&str>,
    max_per_list: usize,
    now: UnixMillis,
    next_id: &mut dyn FnMut() -> u64,
) -> (Vec<DomainList>, Vec<usize>) {
    let max_per_list = max_per_list.max(1);
    // (key, domain, items) in order of first appearance.
    let mut groups: Vec<(String, Domain, Vec<ListItem>)> = Vec::new();
    for record in records {
        let mut by_key: Vec<(String, Domain, Vec<usize>)> = Vec::new();
        for (i, r) in record.recipients.iter().enumerate() {
            if r.status != RcptStatus::Pending || r.next_retry.is_some_and(|t| t > now) {
                continue;
            }
            let domain = r.address.domain().clone();
            let key = relay_host.map_or_else(|| domain.to_string(), str::to_string);
            match by_key.iter_mut().find(|(k, _, _)| *k == key) {
                Some((_, _, idx)) => idx.push(i),
                None => by_key.push((key, domain, vec![i])),
            }
        }
        for (key, domain, rcpts) in by_key {
            let item = ListItem {
                record: record.clone(),
                rcpts,
            };
            match groups.iter_mut().find(|(k, _, _)| *k == key) {
                Some((_, _, items)) => items.push(item),
                None => groups.push((key, domain, vec![item])),
            }
        }
    }
    let mut lists = Vec::new();
    for (key, domain, items) in groups {
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let chunk: Vec<ListItem> = items.by_ref().take(max_per_list).collect();
            lists.push(DomainList {
                id: next_id(),
                key: key.clone(),
                domain: domain.clone(),
                items: chunk,
                hop: None,
            });
        }
    }
    let counts = records
        .iter()
        .map(|r| {
            lists
                .iter()
                .filter(|l| l.items.iter().any(|it| it.record.id == r.id))
                .count()
        })
        .collect();
    (lists, counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mta_types::message::{ContentRef, Envelope, Recipient};
    use mta_types::{Location, QueueId, QueueName};

    fn record(rcpts: &[&str]) -> Arc<MessageRecord> {
        let rcpts = rcpts.iter().map(|a| Recipient::new(a.parse().unwrap()));
        Arc::new(MessageRecord::new(
            QueueId::generate(),
            Location::Queue(QueueName::OutboundWork),
            0,
            Envelope::new(None, "h", "127.0.0.1", "ESMTP"),
            rcpts.collect(),
            ContentRef {
                segment: "s".into(),
                offset: 0,
                len: 10,
            },
        ))
    }

    #[test]
    fn two_domains_two_lists_each_recipient_once() {
        let a = record(&["x@ibm.test", "y@lotus.test", "z@ibm.test"]);
        let b = record(&["w@lotus.test"]);
        let mut n = 0;
        let (lists, counts) = build_lists(&[a.clone(), b.clone()], None, 100, 0, &mut || {
            n += 1;
            n
        });
        assert_eq!(lists.len(), 2);
        assert_eq!(lists[0].key, "ibm.test");
        assert_eq!(lists[0].items[0].rcpts, vec![0, 2]);
        assert_eq!(lists[1].key, "lotus.test");
        assert_eq!(lists[1].items.len(), 2);
        assert_eq!(counts, vec![2, 1]);
    }

    #[test]
    fn relay_host_one_list_capped() {
        let recs: Vec<_> = (0..5).map(|_| record(&["a@x.test", "b@y.test"])).collect();
        let mut n = 0;
        let (lists, counts) = build_lists(&recs, Some("relay:25"), 2, 0, &mut || {
            n += 1;
            n
        });
        assert_eq!(
            lists.iter().map(|l| l.items.len()).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
        assert_eq!(lists[0].items[0].rcpts, vec![0, 1]);
        assert!(counts.iter().all(|c| *c == 1));
    }

    #[test]
    fn not_yet_due_recipients_are_left_alone() {
        let mut r = (*record(&["a@x.test", "b@x.test"])).clone();
        r.recipients[1].next_retry = Some(5_000);
        let (lists, _) = build_lists(&[Arc::new(r)], None, 10, 1_000, &mut || 1);
        assert_eq!(lists[0].items[0].rcpts, vec![0]);
    }
    #[test]
    fn fill_from_moves_messages_up_to_the_cap_and_never_one_twice() {
        let (a, b, c) = (
            record(&["a@x.test"]),
            record(&["b@x.test"]),
            record(&["c@x.test"]),
        );
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        let (mut first, _) = build_lists(&[a.clone()], None, 10, 0, &mut next);
        let (mut second, _) = build_lists(&[a, b, c], None, 10, 0, &mut next);
        let (first, second) = (&mut first[0], &mut second[0]);
        first.fill_from(second, 2);
        assert_eq!(first.items.len(), 2);
        assert_eq!(second.items.len(), 2, "the duplicate stays, one moved");
        assert_ne!(first.items[0].record.id, first.items[1].record.id);
    }
}
