//! oseshlrN — one outbound session handler's work on one Domain List.
//!
//! The list's way through one session, each step its own function:
//! resolve the next hop (`mta-dns`) → open a session to the first host that answers
//! (`connect.rs`: connect → EHLO → STARTTLS → EHLO) → for each message: RSET when needed,
//! prepare it (`message.rs`: content and capability checks), its transaction
//! (`session.rs`: MAIL/RCPT pipelined or not → DATA) → QUIT. Each message's outcomes go
//! to the collector (`outcomes.rs`) as soon as the message is done. Between messages the
//! handler stops when the transport is stopped, the task shuts down or the session has
//! carried `max_messages_per_session`; the messages it did not reach are reported as not
//! attempted and stay Pending Transmission.
//!
//! Traffic shaping (`shaping.rs`) has three doors on this way: after resolution the list
//! learns its site and rule and asks for a session (connection lease, connection rate);
//! before each message it asks again (message rate, deliveries per connection, a
//! suspension); after each message the replies go to the rule's `on_reply` reactions.
//! A "not now" that is short, while no other list waits for a handler, is waited out in
//! the session; otherwise the session ends and the rest of the list goes back to the
//! controller (`Parked`) with the time it may go on, and the handler is free for another
//! site. A suspended destination's messages are deferred until the suspension ends.
//!
//! TLS (`[outbound.tls]`, per destination domain): `may` uses STARTTLS when offered and
//! any certificate, and falls back to plaintext — on a new connection — only when the
//! handshake fails, before any mail was sent; `encrypt` and `verify` treat a host without
//! STARTTLS, or a failed handshake, like an unreachable one (next host, then deferred
//! with the reason); `verify` checks the chain and the host name. The TLS version and
//! cipher are logged with the list and the host.
//!
//! Debug knobs, read when the list starts: `SMTPClientDebug` 1 logs the list's messages
//! (their qids), its next hop and the session's connect and end; 2 and 3 are the client's
//! transcript (`mta_smtp::client`); `debug_tcp_resolver` logs the DNS queries and answers.
//! A message's lines carry its qid (a span per message).

use crate::connect::{self, Target};
use crate::domain_list::{DomainList, ListItem};
use crate::handler_table::Assigned;
use crate::message;
use crate::outcomes::{Event, RcptOutcome};
use crate::session::Session;
use crate::shaping::{after, Admission, Hop, Next, Shaping, Suspension, Throttle, Ticket};
use mta_config::OutboundConfig;
use mta_dns::{Host, NextHop};
use mta_types::Enhanced;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::Instrument as _;

/// One message's outcomes: (recipient index, outcome).
pub type Results = Vec<(usize, RcptOutcome)>;

/// The longest shaping wait a handler spends in its session (when no other list waits
/// for a handler); a longer one hands the rest of the list back to the controller.
const IN_SESSION_WAIT: Duration = Duration::from_secs(2);

/// What a handler needs, shared by all handlers.
pub struct Env {
    pub next_hop: NextHop,
    pub config: OutboundConfig,
    pub hostname: String,
    pub spool_dir: PathBuf,
    /// `[outbound.tls]`.
    pub tls: crate::tls_policy::TlsClients,
    pub events: mpsc::UnboundedSender<Event>,
    /// True while handlers may start another message.
    pub may_continue: Box<dyn Fn() -> bool + Send + Sync>,
    /// The debug knobs in effect now (`set config`).
    pub knobs: Box<dyn Fn() -> mta_config::DebugKnobs + Send + Sync>,
    /// `[[outbound.shaping]]`.
    pub shaping: Arc<Shaping>,
    /// True when another list waits for a handler and none is free: a handler must not
    /// wait out a throttle in its session then.
    pub pressure: Box<dyn Fn() -> bool + Send + Sync>,
}

impl Env {
    fn report(&self, item: &ListItem, results: Results, tag: Option<&Arc<str>>) {
        let _ = self.events.send(Event::Report {
            id: item.record.id,
            results,
            tag: tag.cloned(),
        });
    }

    fn report_all(&self, item: &ListItem, outcome: &RcptOutcome, tag: Option<&Arc<str>>) {
        let results = item.rcpts.iter().map(|i| (*i, outcome.clone())).collect();
        self.report(item, results, tag);
    }

    fn suspend_all<'a>(
        &self,
        items: impl IntoIterator<Item = &'a ListItem>,
        key: &str,
        s: &Suspension,
        tag: Option<&Arc<str>>,
    ) {
        let outcome = RcptOutcome::Suspended {
            host: key.to_string(),
            until: s.until,
            by: s.by.clone(),
        };
        for item in items {
            self.report_all(item, &outcome, tag);
        }
    }
}

/// The rest of a list handed back to the controller by traffic shaping: it goes on at
/// `until` (or when one of the site's connections ends, for `Throttle::Connections`).
pub struct Parked {
    pub list: DomainList,
    pub until: Instant,
    /// `None`: the session carried its rule's `max_deliveries_per_connection`.
    pub why: Option<Throttle>,
}

/// Works one list until it is done (every item reported exactly once) or shaping hands
/// the rest back.
pub async fn deliver_list(
    mut list: DomainList,
    env: Arc<Env>,
    handler: Assigned,
) -> Option<Parked> {
    let knobs = (env.knobs)();
    let debug = knobs.smtp_client_debug;
    let (id, key) = (list.id, list.key.clone());
    if debug >= 1 {
        let qids: Vec<String> = list.items.iter().map(|i| i.record.id.to_string()).collect();
        tracing::info!(
            target: mta_types::DEBUG_TARGET,
            "SMTPClientDebug: list {id} for {key}: {} message(s), qid={}",
            list.items.len(),
            qids.join(","),
        );
    }
    if let Some(s) = env.shaping.suspension(list.domain.as_str(), None) {
        env.suspend_all(&list.items, &key, &s, None);
        return None;
    }
    let hop = match list.hop.clone() {
        Some(hop) => hop,
        None => {
            handler.set_detail(format!("resolving list {id} for {key}"));
            let trace = knobs.debug_tcp_resolver > 0;
            let hosts = match resolve(&env, &list, trace, debug).await {
                Ok(hosts) => hosts,
                Err(outcome) => {
                    list.items
                        .iter()
                        .for_each(|i| env.report_all(i, &outcome, None));
                    return None;
                }
            };
            let relay = env.next_hop.relay_host();
            Arc::new(env.shaping.hop(&list, relay.as_deref(), hosts))
        }
    };
    list.hop = Some(hop.clone());
    let tag: Arc<str> = hop.tag().into();
    let ticket = match env.shaping.admit(&hop, list.domain.as_str()).await {
        Admission::Go(ticket) => ticket,
        Admission::Suspended(s) => {
            env.suspend_all(&list.items, &key, &s, Some(&tag));
            return None;
        }
        Admission::Throttled(why) => {
            let until = after(why.wait());
            return Some(Parked {
                list,
                until,
                why: Some(why),
            });
        }
    };
    let session = match open_any(&env, &list, &hop, &ticket, debug, &handler).await {
        Ok(session) => session,
        Err(outcome) => {
            list.items
                .iter()
                .for_each(|i| env.report_all(i, &outcome, Some(&tag)));
            return None;
        }
    };
    handler.set_detail(format!("delivering list {id} to {}", session.label));
    let _ = env.events.send(Event::SessionOpened);
    let run = Run {
        env: &env,
        handler: &handler,
        ticket: &ticket,
        tag,
    };
    run.send_all(session, list).await
}

/// The list's next hop; the outcome for all its recipients when there is none.
async fn resolve(
    env: &Env,
    list: &DomainList,
    trace: bool,
    debug: u8,
) -> Result<Vec<Host>, RcptOutcome> {
    let (id, domain) = (list.id, &list.domain);
    let qids: Vec<String> = list.items.iter().map(|i| i.record.id.to_string()).collect();
    // The DNS lines are the whole list's: they name its messages.
    let resolved = env
        .next_hop
        .resolve_traced(domain, trace)
        .instrument(tracing::info_span!("resolve", qid = %qids.join(",")))
        .await;
    if debug >= 1 {
        let hop = match &resolved {
            Ok(hosts) => hosts
                .iter()
                .flat_map(|h| {
                    h.socket_addrs()
                        .map(move |a| format!("{}:{}", h.label(a.ip()), a.port()))
                })
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => format!("none ({e})"),
        };
        tracing::info!(target: mta_types::DEBUG_TARGET, "SMTPClientDebug: list {id}: next hop for {domain}: {hop}");
    }
    // A temporary DNS failure (4.4.3) defers; a permanent one (5.1.x) bounces.
    resolved.map_err(|e| RcptOutcome::local(&list.key, e.status(), e.to_string()))
}

/// Opens a session to the hosts in order, each address in order; the outcome for all the
/// list's recipients when none answers. A refusing reply goes to the `on_reply` rules.
async fn open_any(
    env: &Env,
    list: &DomainList,
    hop: &Hop,
    ticket: &Ticket,
    debug: u8,
    handler: &Assigned,
) -> Result<Session, RcptOutcome> {
    // The TLS policy (`tls_policy`: DANE, MTA-STS, or the config's) once per list, then
    // what it asks of each host; a host the policy rules out is skipped like a dead one.
    let relay = env.next_hop.relay_host().is_some();
    let plan = env.tls.plan(list.domain.as_str(), relay).await;
    let mut last_error = String::from("no host to try");
    for host in &hop.hosts {
        let tls = match env.tls.for_host(&plan, &host.name, host.port).await {
            Ok(tls) => tls,
            Err(e) => {
                tracing::info!("list {}: {}: {e}", list.id, host.name);
                last_error = format!("{}: {e}", host.name);
                continue;
            }
        };
        for addr in host.socket_addrs() {
            let label = host.label(addr.ip());
            handler.set_detail(format!("connecting list {} to {label}", list.id));
            let what = format!("list {}: {label}", list.id);
            let target = Target {
                addr,
                host_name: &host.name,
                tls: &tls,
                what: &what,
                debug,
            };
            match connect::open(env, &target).await {
                Ok(client) => {
                    // DANE and MTA-STS are named with the relay (`show message`, logs).
                    let label = match &tls.report {
                        Some(_) => format!("{label} (tls policy {})", tls.used),
                        None => label,
                    };
                    return Ok(Session::new(client, label));
                }
                Err(e) => {
                    tracing::info!("{what}: {e}");
                    if let Some(reply) = &e.reply {
                        let s = env.shaping.on_reply(&ticket.site, &ticket.rule, reply);
                        if let Some(s) = s {
                            let by = s.by;
                            return Err(RcptOutcome::Suspended {
                                host: label,
                                until: s.until,
                                by,
                            });
                        }
                    }
                    last_error = format!("{label}: {e}");
                }
            }
        }
    }
    Err(RcptOutcome::local(
        &list.key,
        Enhanced::new(4, 4, 1),
        last_error,
    ))
}

/// One session's run through its list.
struct Run<'a> {
    env: &'a Env,
    handler: &'a Assigned,
    ticket: &'a Ticket,
    tag: Arc<str>,
}

/// How the message loop ended.
enum End {
    /// Done, or stopped: what is left is reported as not attempted.
    Finished,
    Broken,
    Parked(Throttle, Duration),
    NewConnection,
    Suspended(Suspension),
}

impl Run<'_> {
    /// The list's messages over the open session, then QUIT (unless it broke); the rest
    /// of the list when shaping hands it back.
    async fn send_all(&self, mut session: Session, mut list: DomainList) -> Option<Parked> {
        let mut items: VecDeque<ListItem> = std::mem::take(&mut list.items).into();
        let end = self.messages(&mut session, &list, &mut items).await;
        if !matches!(end, End::Broken) {
            session.quit().await;
        }
        let tag = Some(&self.tag);
        let (why, wait) = match end {
            End::Finished | End::Broken => {
                // Whatever was not reached stays queued (reported as not attempted).
                items
                    .iter()
                    .for_each(|i| self.env.report(i, Vec::new(), tag));
                return None;
            }
            End::Suspended(s) => {
                self.env.suspend_all(&items, &list.key, &s, tag);
                return None;
            }
            End::Parked(why, wait) => (Some(why), wait),
            End::NewConnection => (None, Duration::ZERO),
        };
        if items.is_empty() {
            return None;
        }
        let rest = DomainList {
            items: items.into(),
            ..list_shell(&list)
        };
        Some(Parked {
            list: rest,
            until: after(wait),
            why,
        })
    }

    async fn messages(
        &self,
        session: &mut Session,
        list: &DomainList,
        items: &mut VecDeque<ListItem>,
    ) -> End {
        let (env, id, domain) = (self.env, list.id, list.domain.as_str());
        let tag = Some(&self.tag);
        let mut sent = 0usize;
        while !items.is_empty() {
            if !(env.may_continue)() || sent >= env.config.max_messages_per_session {
                return End::Finished;
            }
            match env.shaping.next(self.ticket, domain, sent).await {
                Next::Send => {}
                Next::NewConnection => return End::NewConnection,
                Next::Suspended(s) => return End::Suspended(s),
                Next::Throttled(why) => {
                    let wait = why.wait();
                    if wait > IN_SESSION_WAIT || (env.pressure)() {
                        return End::Parked(why, wait);
                    }
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            let item = items.pop_front().expect("front exists");
            if !session.ready_for_next().await {
                env.report(&item, Vec::new(), tag);
                return End::Broken;
            }
            sent += 1;
            // From here the message is the handler's current one: a `stop outbound
            // transport` now lets it finish (the check above is the last one before it).
            self.handler.set_detail(format!(
                "delivering list {id} to {}: qid {} ({sent} in this session)",
                session.label, item.record.id
            ));
            let span = tracing::info_span!("msg", qid = %item.record.id);
            let (results, broke) = match send_one(env, session, &item).instrument(span).await {
                Ok(results) => (results, None),
                Err(b) => (b.results, Some(b.error)),
            };
            let suspension = self.watch(&results);
            env.report(&item, results, tag);
            if let Some(e) = broke {
                let (qid, label) = (item.record.id, &session.label);
                tracing::info!("qid={qid} list {id}: {label}: {e}");
                return End::Broken;
            }
            if let Some(s) = suspension {
                return End::Suspended(s);
            }
        }
        End::Finished
    }

    /// The rule's `on_reply` reactions to a message's refusals.
    fn watch(&self, results: &Results) -> Option<Suspension> {
        let rule = &self.ticket.rule;
        if !rule.reacts() {
            return None;
        }
        let replies = results.iter().filter_map(|(_, o)| match o {
            RcptOutcome::Deferred { reply, .. } | RcptOutcome::Bounced { reply, .. } => {
                reply.code.map(|_| reply.to_string())
            }
            _ => None,
        });
        let mut found = None;
        for reply in replies {
            if let Some(s) = self.env.shaping.on_reply(&self.ticket.site, rule, &reply) {
                found = Some(s);
                break;
            }
        }
        found
    }
}

/// A list's identity and hop without its items.
fn list_shell(list: &DomainList) -> DomainList {
    DomainList {
        id: list.id,
        key: list.key.clone(),
        domain: list.domain.clone(),
        items: Vec::new(),
        hop: list.hop.clone(),
    }
}

/// One message: prepared, then its transaction.
async fn send_one(
    env: &Env,
    session: &mut Session,
    item: &ListItem,
) -> Result<Results, crate::session::Broken> {
    match message::prepare(env, session.ext(), &session.label, item).await {
        Ok(msg) => session.send(item, &msg).await,
        Err(results) => Ok(results),
    }
}
