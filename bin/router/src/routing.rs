//! The routing decisions for one message, without I/O: which recipients are delivered to which
//! local mailbox, which fail, which wait, and which queue the message goes to next.
//!
//! Per recipient that is `Pending` and due (`next_retry` passed or unset):
//!
//! - **Non-local domain**: left `Pending` for the outbound tasks (`smtp.box`).
//! - **Local alias** (the first time the recipient is routed, i.e. it has no attempts yet): the
//!   alias is expanded (`Directory::expand`: recursive, de-duplicated, loop-guarded) and every
//!   target that is not already a recipient of the message is **added as a new recipient**,
//!   inheriting NOTIFY and ORCPT (ORCPT defaults to the alias, so logs and delivery reports name
//!   what the sender wrote). The alias itself becomes final (`Delivered`, "alias expanded to
//!   …", the DSN "expanded" action). Materialising the targets gives each its own state:
//!   a partial failure retries only the mailbox that failed (no duplicate in the others), a
//!   remote target stays `Pending` for `smtp.box`, and an unknown target fails alone. When the
//!   expansion contains the alias itself (a loop kept by the loop guard) the alias is also
//!   delivered as an address. Added recipients are never expanded again.
//! - **Local address**: the directory's user for it; recipients sharing a user's Maildir are
//!   grouped so the message is written **once per mailbox**. No user: `Failed` 5.1.1 "user
//!   unknown". A user delivered by LMTP (their `lmtp` key, or `[lmtp] address`) is one
//!   mailbox too: one RCPT for the user, whatever address of theirs the sender wrote.
//!
//! After the deliveries (`record_delivery`), `finish` moves the message on: every recipient
//! final → `MessageRecord::finished_location` (`Done`; `reports` when a DSN is due; `Dead` for
//! a delivery report that failed); a local recipient waiting for a retry → stays in `mail.box` with
//! `not_before` = its earliest retry (non-local recipients wait with it, so the message is
//! never in two queues); otherwise → `smtp.box` for the non-local recipients.

use mta_config::Directory;
use mta_types::message::{Attempt, UnixMillis};
use mta_types::outcome::Reply;
use mta_types::DeliveryOutcome;
use mta_types::{
    Address, Domain, Endpoint, Location, MessageRecord, QueueName, RcptStatus, Recipient,
};
use std::path::PathBuf;
use std::time::Duration;

/// Used when `[outbound] retry` is empty.
const DEFAULT_RETRY: Duration = Duration::from_secs(60);

/// What routing needs from the configuration.
pub struct Routing<'a> {
    pub directory: &'a Directory,
    pub local_domains: &'a [Domain],
    /// `[outbound] retry`: waits between attempts, the last one repeating.
    pub retry: &'a [Duration],
    /// `[lmtp] address`: where users without an `lmtp` key of their own are delivered.
    pub lmtp_default: Option<&'a Endpoint>,
}

/// One mailbox to write, and the recipients (indexes into `record.recipients`) it satisfies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxDelivery {
    /// The directory user's name (for logs and the recipient's `Delivered` status).
    pub user: String,
    pub maildir: PathBuf,
    /// The LMTP server that holds this mailbox; `None`: the Maildir above.
    pub lmtp: Option<Endpoint>,
    /// The `Delivered-To:` address: the first recipient for this mailbox.
    pub delivered_to: Address,
    /// The user's first address: the `RCPT TO` of an LMTP delivery.
    pub mailbox_address: Address,
    pub recipients: Vec<usize>,
}

impl MailboxDelivery {
    /// `relay=` in the log and the host of a deferred attempt: `local`, or
    /// `lmtp[unix:/run/dovecot/lmtp]`.
    pub fn relay(&self) -> String {
        match &self.lmtp {
            None => "local".into(),
            Some(e) => format!("lmtp[{e}]"),
        }
    }
}

/// What became of one mailbox's delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MailboxOutcome {
    /// Written (Maildir) or accepted (an LMTP 2xx); the text is for the log.
    Delivered(String),
    /// Retried on the schedule (a local failure, an LMTP 4xx, an LMTP server down).
    Deferred(Reply),
    /// Failed for good (an LMTP 5xx): a delivery report goes to the sender.
    Failed(Reply),
}

/// What `plan` decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub deliveries: Vec<MailboxDelivery>,
    /// Aliases expanded, with their targets (for `Log_MailRouting` 20 and up).
    pub expansions: Vec<(Address, Vec<Address>)>,
    /// Recipients that failed for good while planning (unknown users).
    pub bounced: Vec<usize>,
    /// The directory lookups made, in order (for `DebugRouterLookup`).
    pub lookups: Vec<Lookup>,
}

/// One directory lookup of a local address and what it found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    pub address: Address,
    pub found: Found,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// An alias, with its expansion (recursive, de-duplicated).
    Alias(Vec<Address>),
    User {
        name: String,
        maildir: PathBuf,
        /// The LMTP server instead of the Maildir.
        lmtp: Option<Endpoint>,
    },
    /// Neither a user nor an alias: the recipient fails 5.1.1.
    NotListed,
}

impl Routing<'_> {
    pub fn is_local(&self, domain: &Domain) -> bool {
        self.local_domains.contains(domain)
    }

    /// True for a recipient this pass should route locally.
    fn due_local(&self, r: &Recipient, now: UnixMillis) -> bool {
        r.status == RcptStatus::Pending
            && r.next_retry.is_none_or(|t| t <= now)
            && self.is_local(r.address.domain())
    }

    /// Expands aliases (adding recipients), fails unknown users and groups the rest by mailbox.
    pub fn plan(&self, record: &mut MessageRecord, now: UnixMillis) -> Plan {
        let mut plan = Plan::default();
        let first_added = record.recipients.len();
        let mut i = 0;
        while i < record.recipients.len() {
            if !self.due_local(&record.recipients[i], now) {
                i += 1;
                continue;
            }
            let may_expand = i < first_added && record.recipients[i].attempts.is_empty();
            if may_expand && !self.expand(record, i, now, &mut plan) {
                i += 1;
                continue;
            }
            let address = &record.recipients[i].address;
            let user = self.directory.user_for(address);
            plan.lookups.push(Lookup {
                address: address.clone(),
                found: match user {
                    Some(u) => Found::User {
                        name: u.name.clone(),
                        maildir: u.maildir.clone(),
                        lmtp: u.lmtp_server(self.lmtp_default).cloned(),
                    },
                    None => Found::NotListed,
                },
            });
            match user {
                Some(user) => match plan
                    .deliveries
                    .iter_mut()
                    .find(|d| d.maildir == user.maildir)
                {
                    Some(d) => d.recipients.push(i),
                    None => plan.deliveries.push(MailboxDelivery {
                        user: user.name.clone(),
                        maildir: user.maildir.clone(),
                        lmtp: user.lmtp_server(self.lmtp_default).cloned(),
                        delivered_to: address.clone(),
                        mailbox_address: user.addresses[0].clone(),
                        recipients: vec![i],
                    }),
                },
                None => {
                    record.recipients[i].status = RcptStatus::Failed {
                        at: now,
                        status: (5, 1, 1).into(),
                        reply: Reply::local((5, 1, 1), "user unknown"),
                    };
                    record.recipients[i].next_retry = None;
                    plan.bounced.push(i);
                }
            }
            i += 1;
        }
        plan
    }

    /// Expands recipient `i` if it is an alias. Returns true when `i` itself is still to be
    /// delivered as an address (not an alias, or an alias that includes itself).
    fn expand(
        &self,
        record: &mut MessageRecord,
        i: usize,
        now: UnixMillis,
        plan: &mut Plan,
    ) -> bool {
        let alias = record.recipients[i].address.clone();
        let key = alias.lookup_key();
        let targets = self.directory.expand(&alias);
        if targets.len() == 1 && targets[0].lookup_key() == key {
            return true; // not an alias
        }
        let orcpt = record.recipients[i]
            .orcpt
            .clone()
            .unwrap_or_else(|| format!("rfc822;{alias}"));
        let notify = record.recipients[i].notify;
        let mut includes_itself = false;
        for t in &targets {
            let t_key = t.lookup_key();
            if t_key == key {
                includes_itself = true;
            } else if !record
                .recipients
                .iter()
                .any(|r| r.address.lookup_key() == t_key)
            {
                let mut added = Recipient::new(t.clone());
                added.orcpt = Some(orcpt.clone());
                added.notify = notify;
                record.recipients.push(added);
            }
        }
        plan.lookups.push(Lookup {
            address: alias.clone(),
            found: Found::Alias(targets.clone()),
        });
        plan.expansions.push((alias, targets.clone()));
        if includes_itself {
            return true;
        }
        let r = &mut record.recipients[i];
        r.next_retry = None;
        if targets.is_empty() {
            r.status = RcptStatus::Failed {
                at: now,
                status: (5, 1, 1).into(),
                reply: Reply::local((5, 1, 1), "alias has no members"),
            };
            plan.bounced.push(i);
        } else {
            r.status = RcptStatus::Expanded {
                at: now,
                to: targets,
            };
        }
        false
    }

    /// Records the outcome of `delivery`'s mailbox for each of its recipients.
    pub fn record_delivery(
        &self,
        record: &mut MessageRecord,
        delivery: &MailboxDelivery,
        outcome: &MailboxOutcome,
        now: UnixMillis,
    ) {
        for &i in &delivery.recipients {
            let r = &mut record.recipients[i];
            match outcome {
                MailboxOutcome::Delivered(_) => {
                    r.status = RcptStatus::Delivered {
                        at: now,
                        mailbox: delivery.user.clone(),
                    };
                    r.next_retry = None;
                }
                MailboxOutcome::Failed(reply) => {
                    r.status = RcptStatus::Failed {
                        at: now,
                        status: reply.status_or((5, 0, 0)),
                        reply: reply.clone(),
                    };
                    r.next_retry = None;
                }
                MailboxOutcome::Deferred(reply) => {
                    let next = now + self.retry_after(r.attempts.len() + 1).as_millis() as u64;
                    r.attempts.push(Attempt {
                        at: now,
                        host: delivery.relay(),
                        outcome: DeliveryOutcome::Deferred {
                            reply: reply.clone(),
                            next,
                        },
                    });
                    r.next_retry = Some(next);
                    record.note = Some(format!(
                        "local delivery to {} deferred: {}",
                        delivery.user,
                        reply.text()
                    ));
                }
            }
        }
    }

    /// The wait after the `attempts`-th failed attempt (1-based; the last wait repeats).
    pub fn retry_after(&self, attempts: usize) -> Duration {
        let n = attempts
            .saturating_sub(1)
            .min(self.retry.len().saturating_sub(1));
        self.retry.get(n).copied().unwrap_or(DEFAULT_RETRY)
    }

    /// Sets where the message goes next (and `not_before` when it waits for a local retry).
    pub fn finish(&self, record: &mut MessageRecord, now: UnixMillis) -> Location {
        record.trace.route.push(("router".to_string(), now));
        let location = if record.all_final() {
            record.finish()
        } else if let Some(retry) = record
            .recipients
            .iter()
            .filter(|r| r.status == RcptStatus::Pending && self.is_local(r.address.domain()))
            .map(|r| r.next_retry.unwrap_or(now))
            .min()
        {
            record.not_before = retry;
            Location::Queue(QueueName::MailBox)
        } else {
            record.not_before = now;
            Location::Queue(QueueName::SmtpBox)
        };
        record.location = location;
        location
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mta_config::User;
    use mta_types::message::{ContentRef, Envelope};
    use mta_types::QueueId;
    use std::collections::BTreeMap;

    fn a(s: &str) -> Address {
        s.parse().unwrap()
    }

    fn directory() -> Directory {
        let user = |name: &str, addrs: &[&str]| User {
            name: name.into(),
            addresses: addrs.iter().map(|s| a(s)).collect(),
            maildir: PathBuf::from(format!("/var/mail/{name}")),
            password: None,
            lmtp: mta_config::UserLmtp::Default,
        };
        let mut aliases = BTreeMap::new();
        let mut alias = |k: &str, v: &[&str]| {
            aliases.insert(a(k).lookup_key(), v.iter().map(|s| a(s)).collect());
        };
        alias("abuse@localhost", &["postmaster@localhost"]);
        alias("staff@localhost", &["alice@localhost", "bob@localhost"]);
        alias("team@localhost", &["staff@localhost", "root@localhost"]);
        alias("fwd@localhost", &["someone@example.org", "alice@localhost"]);
        alias("typo@localhost", &["nobody@localhost", "alice@localhost"]);
        alias("loop@localhost", &["loop@localhost", "bob@localhost"]);
        Directory {
            users: vec![
                user("postmaster", &["postmaster@localhost", "root@localhost"]),
                user("alice", &["alice@localhost"]),
                user("bob", &["bob@localhost", "loop@localhost"]),
            ],
            aliases,
        }
    }

    fn record(rcpts: &[&str]) -> MessageRecord {
        let sender = a("sender@example.org");
        MessageRecord::new(
            QueueId::generate(),
            Location::Queue(QueueName::MailBox),
            0,
            Envelope::new(Some(sender), "client", "127.0.0.1", "ESMTP"),
            rcpts.iter().map(|s| Recipient::new(a(s))).collect(),
            ContentRef {
                segment: "s".into(),
                offset: 0,
                len: 10,
            },
        )
    }

    const RETRY: [Duration; 2] = [Duration::from_secs(60), Duration::from_secs(300)];
    const NOW: UnixMillis = 1_000_000;

    /// Plans, applies `fail` (users whose mailbox write fails), finishes.
    fn route(
        dir: &Directory,
        rec: &mut MessageRecord,
        fail: &[&str],
        now: UnixMillis,
    ) -> (Plan, Location) {
        let domains: [Domain; 1] = ["localhost".parse().unwrap()];
        let routing = Routing {
            directory: dir,
            local_domains: &domains,
            retry: &RETRY,
            lmtp_default: None,
        };
        let plan = routing.plan(rec, now);
        for d in &plan.deliveries {
            let outcome = if fail.contains(&d.user.as_str()) {
                MailboxOutcome::Deferred(Reply::local((4, 3, 0), "disk on fire"))
            } else {
                MailboxOutcome::Delivered("delivered to maildir".into())
            };
            routing.record_delivery(rec, d, &outcome, now);
        }
        let loc = routing.finish(rec, now);
        (plan, loc)
    }

    /// A new message to `rcpts`, routed at `NOW` with every mailbox write succeeding.
    fn route_new(rcpts: &[&str]) -> (Plan, Location, MessageRecord) {
        let mut rec = record(rcpts);
        let (plan, loc) = route(&directory(), &mut rec, &[], NOW);
        (plan, loc, rec)
    }

    fn status_of<'r>(rec: &'r MessageRecord, addr: &str) -> &'r RcptStatus {
        &rec.recipients
            .iter()
            .find(|r| r.address == a(addr))
            .unwrap_or_else(|| panic!("no recipient {addr}"))
            .status
    }

    fn is_delivered(rec: &MessageRecord, addr: &str) -> bool {
        matches!(status_of(rec, addr), RcptStatus::Delivered { .. })
    }

    fn is_failed(rec: &MessageRecord, addr: &str) -> bool {
        matches!(status_of(rec, addr), RcptStatus::Failed { .. })
    }

    #[test]
    fn local_user_is_delivered_and_the_message_is_done() {
        let (plan, loc, rec) = route_new(&["postmaster@localhost"]);
        assert_eq!(plan.deliveries.len(), 1);
        assert_eq!(plan.deliveries[0].delivered_to, a("postmaster@localhost"));
        assert_eq!(loc, Location::Done);
        assert_eq!(
            status_of(&rec, "postmaster@localhost"),
            &RcptStatus::Delivered {
                at: NOW,
                mailbox: "postmaster".into()
            }
        );
    }

    #[test]
    fn two_addresses_of_one_user_are_written_once() {
        let (plan, loc, rec) =
            route_new(&["postmaster@localhost", "ROOT@localhost", "abuse@localhost"]);
        assert_eq!(plan.deliveries.len(), 1, "{plan:?}");
        assert_eq!(plan.deliveries[0].recipients, vec![0, 1]);
        assert_eq!(loc, Location::Done);
        // abuse expanded to postmaster, who was already a recipient: nothing added
        assert_eq!(rec.recipients.len(), 3);
    }

    #[test]
    fn unknown_local_user_fails_5_1_1() {
        let (plan, loc, rec) = route_new(&["nobody@localhost", "alice@localhost"]);
        assert_eq!(plan.bounced, vec![0]);
        assert!(matches!(status_of(&rec, "nobody@localhost"),
            RcptStatus::Failed { status, reply, .. } if status.to_string() == "5.1.1" && reply.text() == "user unknown"));
        // A failure is reported to the sender: drt takes it from `reports`.
        assert_eq!(loc, Location::Queue(QueueName::Reports));
    }

    #[test]
    fn failures_of_a_delivery_report_make_it_dead_and_never_notify_never_reports() {
        let dir = directory();
        let mut rec = record(&["nobody@localhost"]);
        rec.envelope.mail_from = None;
        let (_, loc) = route(&dir, &mut rec, &[], NOW);
        assert_eq!(loc, Location::Dead);
        assert!(
            rec.note.as_deref().unwrap().contains("5.1.1"),
            "{:?}",
            rec.note
        );

        let mut rec = record(&["nobody@localhost"]);
        rec.recipients[0].notify = Some(mta_types::message::Notify {
            never: true,
            ..Default::default()
        });
        let (_, loc) = route(&dir, &mut rec, &[], NOW);
        assert_eq!(loc, Location::Done);
    }

    #[test]
    fn nested_aliases_expand_to_each_mailbox_once() {
        let (plan, loc, rec) = route_new(&["team@localhost", "staff@localhost"]);
        let users: Vec<&str> = plan.deliveries.iter().map(|d| d.user.as_str()).collect();
        assert_eq!(users, ["alice", "bob", "postmaster"]);
        assert_eq!(loc, Location::Done);
        assert!(matches!(
            status_of(&rec, "team@localhost"),
            RcptStatus::Expanded { .. }
        ));
        let added = rec
            .recipients
            .iter()
            .find(|r| r.address == a("alice@localhost"))
            .unwrap();
        assert_eq!(added.orcpt.as_deref(), Some("rfc822;team@localhost"));
    }

    #[test]
    fn alias_to_a_remote_address_goes_to_smtp_box() {
        let (_, loc, rec) = route_new(&["fwd@localhost"]);
        assert_eq!(status_of(&rec, "someone@example.org"), &RcptStatus::Pending);
        assert!(is_delivered(&rec, "alice@localhost"));
        assert_eq!(loc, Location::Queue(QueueName::SmtpBox));
    }

    #[test]
    fn unknown_alias_target_fails_alone() {
        let (_, loc, rec) = route_new(&["typo@localhost"]);
        assert!(is_failed(&rec, "nobody@localhost"));
        assert!(is_delivered(&rec, "alice@localhost"));
        assert_eq!(loc, Location::Queue(QueueName::Reports));
    }

    #[test]
    fn alias_loop_delivers_the_looping_address_itself() {
        let (plan, loc, _) = route_new(&["loop@localhost"]);
        // loop@ belongs to bob, and the alias also names bob: one mailbox, one write.
        assert_eq!(plan.deliveries.len(), 1);
        assert_eq!(plan.deliveries[0].user, "bob");
        assert_eq!(loc, Location::Done);
    }

    #[test]
    fn remote_recipient_goes_to_smtp_box() {
        let (_, loc, rec) = route_new(&["x@example.com", "alice@localhost"]);
        assert_eq!(loc, Location::Queue(QueueName::SmtpBox));
        assert_eq!(rec.not_before, NOW);
    }

    #[test]
    fn failed_write_is_retried_and_holds_remote_recipients_in_mail_box() {
        let dir = directory();
        let mut rec = record(&["x@example.com", "alice@localhost", "bob@localhost"]);
        let (_, loc) = route(&dir, &mut rec, &["alice"], NOW);
        assert_eq!(loc, Location::Queue(QueueName::MailBox));
        assert_eq!(rec.not_before, NOW + 60_000);
        let alice = &rec.recipients[1];
        assert_eq!(alice.status, RcptStatus::Pending);
        assert_eq!(alice.attempts.len(), 1);
        assert_eq!(alice.attempts[0].host, "local");
        assert!(matches!(
            rec.recipients[2].status,
            RcptStatus::Delivered { .. }
        ));

        // Not due yet: nothing happens to alice.
        let (plan, _) = route(&dir, &mut rec, &["alice"], NOW + 1);
        assert!(plan.deliveries.is_empty());

        // Second failure waits the second interval; the last interval repeats after that.
        let t = NOW + 60_000;
        route(&dir, &mut rec, &["alice"], t);
        assert_eq!(rec.recipients[1].next_retry, Some(t + 300_000));
        let t2 = t + 300_000;
        route(&dir, &mut rec, &["alice"], t2);
        assert_eq!(rec.recipients[1].next_retry, Some(t2 + 300_000));

        // Then it works: only alice's mailbox is written, and the message moves on.
        let t3 = t2 + 300_000;
        let (plan, loc) = route(&dir, &mut rec, &[], t3);
        assert_eq!(plan.deliveries.len(), 1);
        assert_eq!(plan.deliveries[0].user, "alice");
        assert_eq!(loc, Location::Queue(QueueName::SmtpBox));
    }

    #[test]
    fn partial_failure_of_an_alias_retries_only_the_failed_mailbox() {
        let dir = directory();
        let mut rec = record(&["staff@localhost"]);
        let (_, loc) = route(&dir, &mut rec, &["bob"], NOW);
        assert_eq!(loc, Location::Queue(QueueName::MailBox));
        let (plan, loc) = route(&dir, &mut rec, &[], NOW + 60_000);
        let users: Vec<&str> = plan.deliveries.iter().map(|d| d.user.as_str()).collect();
        assert_eq!(users, ["bob"]);
        assert!(
            plan.expansions.is_empty(),
            "the alias is not expanded twice"
        );
        assert_eq!(loc, Location::Done);
    }

    #[test]
    fn lmtp_users_get_one_rcpt_each_and_their_own_outcomes() {
        let dir = directory();
        let domains: [Domain; 1] = ["localhost".parse().unwrap()];
        let server = Endpoint::Unix("/run/dovecot/lmtp".into());
        let routing = Routing {
            directory: &dir,
            local_domains: &domains,
            retry: &RETRY,
            lmtp_default: Some(&server),
        };
        let mut rec = record(&["root@localhost", "alice@localhost", "bob@localhost"]);
        let plan = routing.plan(&mut rec, NOW);
        assert_eq!(plan.deliveries.len(), 3);
        assert!(plan
            .deliveries
            .iter()
            .all(|d| d.lmtp.as_ref() == Some(&server)));
        // root@ is an address of postmaster: the server is asked for the user's first.
        assert_eq!(
            plan.deliveries[0].mailbox_address,
            a("postmaster@localhost")
        );
        assert_eq!(plan.deliveries[0].relay(), "lmtp[unix:/run/dovecot/lmtp]");
        let outcomes = [
            MailboxOutcome::Delivered("250 2.0.0 Saved".into()),
            MailboxOutcome::Deferred(Reply::remote(452, Some((4, 2, 2).into()), "Quota exceeded")),
            MailboxOutcome::Failed(Reply::remote(
                550,
                Some((5, 1, 1).into()),
                "User doesn't exist",
            )),
        ];
        for (d, o) in plan.deliveries.iter().zip(&outcomes) {
            routing.record_delivery(&mut rec, d, o, NOW);
        }
        assert!(matches!(
            rec.recipients[0].status,
            RcptStatus::Delivered { .. }
        ));
        assert_eq!(rec.recipients[1].next_retry, Some(NOW + 60_000));
        assert_eq!(
            rec.recipients[1].attempts[0].host,
            "lmtp[unix:/run/dovecot/lmtp]"
        );
        assert!(matches!(&rec.recipients[2].status,
            RcptStatus::Failed { status, .. } if status.to_string() == "5.1.1"));
        // alice waits for her retry in mail.box; bob's report goes when she is final.
        assert_eq!(
            routing.finish(&mut rec, NOW),
            Location::Queue(QueueName::MailBox)
        );
    }

    #[test]
    fn finished_recipients_are_left_alone() {
        let dir = directory();
        let mut rec = record(&["alice@localhost"]);
        rec.recipients[0].status = RcptStatus::Failed {
            at: 1,
            status: (5, 0, 0).into(),
            reply: Reply::local((5, 0, 0), "x"),
        };
        let (plan, loc) = route(&dir, &mut rec, &[], NOW);
        assert!(plan.deliveries.is_empty());
        assert_eq!(loc, Location::Queue(QueueName::Reports));
    }
}
