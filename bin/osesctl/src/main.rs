//! osesctl — Outbound Session Controller, with its outbound session handlers `oseshlrN`.
//!
//! Domain List Processing: claims pending, due messages from the Outbound Work Queue (the
//! claim's lease is "Locked for Transmission"; a record's `not_before` is its next retry),
//! sorts their recipients into lists by next hop (`domain_list.rs`), gives each list a
//! reference ID and hands it to an idle handler (`handler_table.rs`; created on demand up
//! to `[outbound] max_handlers`; lists wait in the controller otherwise). A handler
//! (`delivery.rs`) resolves the next hop (`mta-dns`), opens one SMTP session
//! (`connect.rs`: connect → EHLO → STARTTLS → EHLO) and transfers the list's messages one
//! by one (`message.rs` prepares each, `session.rs` runs its transaction); the collector
//! (`outcomes.rs`) merges the outcomes into the records and commits them in groups.
//! Traffic shaping per destination site (`shaping.rs`, `[[outbound.shaping]]`): a list a
//! limit holds back is parked here until it may go on, never in a handler.
//!
//! Reads/writes: the Outbound Work Queue (records stay there until every recipient is
//! final, then `Done`). Woken by kicks (from omsgcnv) and a 1 s poll.
//! TELL: `stop outbound transport` (no new sessions; sessions finish their current
//! message; unsent messages stay Pending Transmission), `start outbound transport` (drains
//! at once), `route <domain>` (that destination's messages now, ignoring retry times),
//! `suspend <domain|site> [for D]`, `resume <domain|site>`, `show shaping` (`console.rs`;
//! the console sends `tell router suspend|resume` and `show shaping` here).
//! Status: transport state, lists waiting, counters; one row per handler
//! ("delivering list N to host[ip]:port" / idle).
//! Config: `hostname`, `[outbound]` (all keys), `[dns]`.
//! Logs: `qid=… to=<…> relay=host[ip]:port delay=… dsn=… status=sent|deferred|bounced (…)
//! [retry_in=…] site=… rule=…`.
//! RFCs: 5321 (client side), 1870, 6152, 6531, 7505 (null MX), 3463.
//!
//! The SMTP client is our own small one over `mta-smtp`'s reply parser rather than
//! lettre's `AsyncSmtpConnection`: see `mta_smtp::client` for why (byte-exact relay).
//! STARTTLS to the next hop as `[outbound.tls]` says (`tls_policy.rs`, `delivery.rs`).

mod connect;
mod console;
mod delivery;
mod domain_list;
mod handler_table;
mod message;
mod outcomes;
mod session;
mod shaping;
mod tls_policy;
mod tls_report;
mod transfers;

use anyhow::Context as _;
use delivery::{Env, Parked};
use domain_list::{build_lists, DomainList};
use handler_table::HandlerTable;
use mta_dns::NextHop;
use mta_ipc::console::TellCommand;
use mta_ipc::store::{BulkOp, Claim};
use mta_ipc::transfers::{TransferPage, TransferState};
use mta_ipc::{TaskState, TaskStatus};
use mta_task::{Task, TaskContext, TellError};
use mta_types::message::now_ms;
use mta_types::{Domain, MessageRecord, QueueName, TaskName};
use outcomes::{Event, Stats};
use shaping::{Shaping, Throttle};
use std::collections::{HashMap, HashSet, VecDeque};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tracing::Instrument as _;

/// Most messages claimed at once.
const BATCH: u32 = 1000;
/// Claims are ours this long (they also end when this process exits).
const LEASE: Duration = Duration::from_secs(3600);
/// Poll interval when no kick comes.
const POLL: Duration = Duration::from_secs(1);
/// How long sessions in progress may go on after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

struct Osesctl {
    table: Arc<HandlerTable>,
    running: Arc<AtomicBool>,
    waiting: Mutex<VecDeque<DomainList>>,
    /// Lists traffic shaping handed back, until they may go on.
    parked: Arc<Mutex<Vec<Parked>>>,
    /// The lists handlers are delivering, for `tell router show`.
    active: Arc<transfers::ActiveLists>,
    waiting_count: Arc<AtomicUsize>,
    next_list: AtomicU64,
    stats: Arc<Stats>,
    env: Arc<Env>,
    wake: Arc<Notify>,
    collector: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    /// `[metrics] top_destinations`: the most sites whose counters `status` reports.
    top_sites: usize,
}

impl Task for Osesctl {
    const NAME: TaskName = TaskName::Osesctl;

    async fn start(ctx: &TaskContext) -> anyhow::Result<Self> {
        let config = ctx.config();
        let next_hop = NextHop::new(&config.outbound, &config.dns)
            .context("cannot set up the DNS resolver")?;
        let running = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::unbounded_channel();
        let (r, c) = (running.clone(), ctx.clone());
        let table = Arc::new(HandlerTable::new(config.outbound.max_handlers));
        let waiting_count = Arc::new(AtomicUsize::new(0));
        let (t, w) = (table.clone(), waiting_count.clone());
        let (limiter, fleet) = mta_task::fleet::limiter(config).await?;
        let shaping = Arc::new(Shaping::new(&config.outbound.shaping, limiter, fleet));
        console::load(&shaping, &config.data_dir);
        tokio::spawn(shaping.clone().sync_fleet());
        let env = Arc::new(Env {
            next_hop,
            config: config.outbound.clone(),
            hostname: config.hostname.clone(),
            spool_dir: config.spool_dir(),
            tls: tls_policy::TlsClients::new(config, Some(ctx.store().clone()))
                .map_err(|e| anyhow::anyhow!("[outbound.tls]: {e}"))?,
            events: tx,
            may_continue: Box::new(move || r.load(Ordering::SeqCst) && !c.shutting_down()),
            knobs: Box::new({
                let c = ctx.clone();
                move || c.knobs()
            }),
            shaping,
            pressure: Box::new(move || t.is_full() && w.load(Ordering::SeqCst) > 0),
        });
        Ok(Osesctl {
            table,
            running,
            waiting: Mutex::new(VecDeque::new()),
            parked: Arc::default(),
            active: Arc::default(),
            waiting_count,
            next_list: AtomicU64::new(1),
            stats: Arc::new(Stats::default()),
            env,
            wake: Arc::new(Notify::new()),
            collector: Mutex::new(Some(rx)),
            top_sites: config.metrics.top_destinations,
        })
    }

    async fn run(self: Arc<Self>, ctx: TaskContext) -> anyhow::Result<()> {
        let rx = self
            .collector
            .lock()
            .expect("lock")
            .take()
            .expect("run once");
        let collector = tokio::spawn(outcomes::run_collector(
            rx,
            ctx.store().clone(),
            ctx.config().outbound.clone(),
            self.stats.clone(),
            self.wake.clone(),
            ctx.kicker(QueueName::Reports),
        ));
        let reports = tokio::spawn(tls_report::run(
            self.env.clone(),
            ctx.config().outbound.tls.tls_reports,
        ));
        let mut handlers = JoinSet::new();
        loop {
            if ctx.shutting_down() {
                break;
            }
            while handlers.try_join_next().is_some() {}
            let mut again = false;
            let next_unpark = self.unpark();
            if self.running.load(Ordering::SeqCst) {
                if self.waiting_count.load(Ordering::SeqCst) < self.table_max() {
                    again = self.claim_lists(&ctx).await >= BATCH as usize;
                }
                self.dispatch(&mut handlers);
                again &= self.waiting_count.load(Ordering::SeqCst) < self.table_max();
            } else {
                self.abandon_waiting();
            }
            if again {
                continue;
            }
            let unpark_at = next_unpark.map_or_else(
                || tokio::time::Instant::now() + POLL,
                tokio::time::Instant::from_std,
            );
            tokio::select! {
                _ = ctx.next_work(POLL) => {}
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(unpark_at) => {}
            }
        }
        // Shutdown: waiting lists stay queued; sessions finish their current message.
        self.abandon_waiting();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while handlers.join_next().await.is_some() {}
        })
        .await;
        handlers.abort_all();
        let _ = self.env.events.send(Event::Shutdown);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, collector).await;
        reports.abort();
        self.env.tls.reports.save().await;
        Ok(())
    }

    fn status(&self) -> TaskStatus {
        let state = if self.running.load(Ordering::SeqCst) {
            TaskState::Running
        } else {
            TaskState::Stopped
        };
        let s = &self.stats;
        TaskStatus {
            state,
            current: format!(
                "outbound transport {}; {} lists waiting",
                state.as_str(),
                self.waiting_count.load(Ordering::SeqCst),
            ),
            counters: [
                ("sent".into(), s.sent.load(Ordering::Relaxed)),
                ("deferred".into(), s.deferred.load(Ordering::Relaxed)),
                ("bounced".into(), s.bounced.load(Ordering::Relaxed)),
            ]
            .into_iter()
            .chain(
                self.env
                    .shaping
                    .redis_calls()
                    .into_iter()
                    .flat_map(|(all, limits)| {
                        [
                            ("redis_calls".into(), all),
                            ("redis_limit_calls".into(), limits),
                        ]
                    }),
            )
            .chain(console::site_counters(&self.env.shaping, self.top_sites))
            .collect(),
            handlers: self.table.rows(),
        }
    }

    fn transfers(&self, after: Option<String>, limit: u32) -> Option<TransferPage> {
        let relay = self.env.next_hop.relay_host();
        let mut held: Vec<transfers::Held> = self
            .waiting
            .lock()
            .expect("waiting lock")
            .iter()
            .map(|list| transfers::Held {
                summary: transfers::ListSummary::of(list, relay.as_deref()),
                state: TransferState::Wait,
                shaping: String::new(),
            })
            .collect();
        held.extend(console::shaped(
            &self.env.shaping,
            &self.parked.lock().expect("parked lock"),
            relay.as_deref(),
        ));
        Some(transfers::page(
            &self.active,
            &held,
            after.as_deref(),
            limit,
            self.table.threads(),
            self.running.load(Ordering::SeqCst),
        ))
    }

    async fn tell(&self, ctx: &TaskContext, command: TellCommand) -> Result<String, TellError> {
        match command {
            TellCommand::StopOutboundTransport => {
                let was = self.running.swap(false, Ordering::SeqCst);
                self.wake.notify_one();
                // The handlers stop with their controller (seed 002, exercise 1): idle ones
                // now, busy ones when their session ends.
                let finishing = self.table.stop_all();
                tracing::info!(
                    "outbound transport stopped; session handlers stopped ({finishing} finishing their current message)"
                );
                Ok(if was {
                    format!(
                        "outbound transport stopped; session handlers stopped ({finishing} finishing their current message)"
                    )
                } else {
                    "outbound transport already stopped".into()
                })
            }
            TellCommand::StartOutboundTransport => {
                let was = self.running.swap(true, Ordering::SeqCst);
                self.wake.notify_one();
                if !was {
                    tracing::info!("outbound transport started; session handlers start on demand");
                }
                Ok(if was {
                    "outbound transport already running".into()
                } else {
                    "outbound transport started; session handlers start on demand".into()
                })
            }
            TellCommand::Other(words)
                if words.len() == 2 && words[0].eq_ignore_ascii_case("route") =>
            {
                self.route(ctx, Some(&words[1]))
                    .await
                    .map_err(TellError::Failed)
            }
            TellCommand::Other(words)
                if words.len() == 1 && words[0].eq_ignore_ascii_case("route") =>
            {
                self.route(ctx, None).await.map_err(TellError::Failed)
            }
            TellCommand::Other(words) if is_words(&words, &["send", "tls", "reports"]) => {
                let lines = tls_report::send_now(&self.env).await;
                Ok(if lines.is_empty() {
                    "no TLS-RPT counts to report".into()
                } else {
                    lines.join("\n")
                })
            }
            TellCommand::Other(words) if is_words(&words, &["show", "tls", "reports"]) => {
                let summary = self.env.tls.reports.summary();
                Ok(if summary.is_empty() {
                    "no TLS-RPT counts yet".into()
                } else {
                    summary
                })
            }
            TellCommand::Other(words)
                if words.len() == 4 && is_words(&words[..3], &["show", "tls", "policy"]) =>
            {
                Ok(self.show_tls_policy(&words[3]).await)
            }
            TellCommand::Other(words) if console::is_shaping_command(&words) => {
                console::command(&self.env.shaping, ctx, &words, &self.wake)
                    .await
                    .map_err(TellError::Failed)
            }
            other => Err(Self::unknown(
                other,
                "try stop/start outbound transport, route <domain>",
            )),
        }
    }
}

impl Osesctl {
    fn table_max(&self) -> usize {
        self.env.config.max_handlers
    }

    /// Claims due messages, sorts them into lists and queues the lists; returns how many
    /// messages were claimed.
    async fn claim_lists(&self, ctx: &TaskContext) -> usize {
        let records = match ctx
            .store()
            .claim(Claim::new(QueueName::OutboundWork, BATCH, LEASE))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot claim from {}: {e}", QueueName::OutboundWork);
                return 0;
            }
        };
        if records.is_empty() {
            return 0;
        }
        let claimed = records.len();
        let shared: Vec<Arc<MessageRecord>> = records.iter().cloned().map(Arc::new).collect();
        let relay = self.env.next_hop.relay_host();
        let (lists, counts) = build_lists(
            &shared,
            relay.as_deref(),
            self.env.config.max_messages_per_list,
            now_ms(),
            &mut || self.next_list.fetch_add(1, Ordering::SeqCst),
        );
        // Register before any list is handed out, so every report finds its record.
        for (record, lists) in records.into_iter().zip(counts) {
            let _ = self.env.events.send(Event::Register { record, lists });
        }
        let mut waiting = self.waiting.lock().expect("waiting lock");
        for list in lists {
            tracing::debug!(
                "list {} for {}: {} messages",
                list.id,
                list.key,
                list.items.len()
            );
            waiting.push_back(list);
        }
        self.waiting_count.store(waiting.len(), Ordering::SeqCst);
        claimed
    }

    /// Hands waiting lists to idle (or new) handlers.
    fn dispatch(&self, handlers: &mut JoinSet<()>) {
        let mut waiting = self.waiting.lock().expect("waiting lock");
        while let Some(list) = waiting.front() {
            let Some(handler) = self
                .table
                .assign(format!("list {} for {}", list.id, list.key))
            else {
                break;
            };
            let list = waiting.pop_front().expect("front exists");
            let env = self.env.clone();
            let wake = self.wake.clone();
            let (active, list_id) = (self.active.clone(), list.id);
            active.start(
                list_id,
                transfers::ListSummary::of(&list, self.env.next_hop.relay_host().as_deref()),
            );
            let span = tracing::info_span!("handler", name = %handler.name(), list = list.id);
            let parked = self.parked.clone();
            handlers.spawn(
                async move {
                    let rest = delivery::deliver_list(list, env, handler).await;
                    active.end(list_id);
                    if let Some(rest) = rest {
                        parked.lock().expect("parked lock").push(rest);
                    }
                    wake.notify_one();
                }
                .instrument(span),
            );
        }
        self.waiting_count.store(waiting.len(), Ordering::SeqCst);
    }

    /// Gives back lists not yet handed out (waiting or parked by traffic shaping): their
    /// messages stay Pending Transmission.
    fn abandon_waiting(&self) {
        let parked: Vec<Parked> = std::mem::take(&mut *self.parked.lock().expect("parked lock"));
        let mut waiting = self.waiting.lock().expect("waiting lock");
        let lists = waiting.drain(..).chain(parked.into_iter().map(|p| p.list));
        for list in lists {
            for item in list.items {
                let _ = self.env.events.send(Event::Report {
                    id: item.record.id,
                    results: Vec::new(),
                    tag: None,
                });
            }
        }
        self.waiting_count.store(0, Ordering::SeqCst);
    }

    /// Moves parked lists whose time has come (or whose site has a free connection again)
    /// to the front of the waiting lists; returns when the next parked one is due.
    fn unpark(&self) -> Option<std::time::Instant> {
        let mut parked = self.parked.lock().expect("parked lock");
        if parked.is_empty() {
            return None;
        }
        let now = std::time::Instant::now();
        let shaping = &self.env.shaping;
        let due = |p: &Parked| {
            p.until <= now
                || (p.why == Some(Throttle::Connections)
                    && p.list
                        .hop
                        .as_ref()
                        .is_some_and(|h| shaping.has_free_connection(&h.site)))
        };
        let (ready, mut later): (Vec<Parked>, Vec<Parked>) = parked.drain(..).partition(due);
        // A site whose connections the fleet counts: one of its waiting lists asks Redis
        // per recheck, the others wait one more (a full site costs one call a second,
        // not one per list).
        let mut asking = HashSet::new();
        let mut ready: Vec<Parked> = ready
            .into_iter()
            .filter_map(|mut p| {
                let hop = p
                    .list
                    .hop
                    .as_ref()
                    .filter(|_| p.why == Some(Throttle::Connections));
                match hop {
                    Some(h)
                        if shaping.shares_connections(&h.rule)
                            && !asking.insert(h.site.name.clone()) =>
                    {
                        p.until = now + Throttle::Connections.wait();
                        later.push(p);
                        None
                    }
                    _ => Some(p),
                }
            })
            .collect();
        self.fill_ready_lists(&mut ready, &mut later);
        *parked = later;
        let next = parked.iter().map(|p| p.until).min();
        drop(parked);
        if !ready.is_empty() {
            let mut waiting = self.waiting.lock().expect("waiting lock");
            for p in ready.into_iter().rev() {
                waiting.push_front(p.list);
            }
            self.waiting_count.store(waiting.len(), Ordering::SeqCst);
        }
        next
    }

    /// Each list about to go on takes the messages of lists parked for the same next hop
    /// (waiting for one of its connections, or for its rates), up to
    /// `max_messages_per_list`: one session carries them all instead of one each (one
    /// TCP and TLS handshake; with a fleet, two Redis calls a session instead of two a
    /// message). The site's limits still hold: the session asks the message rate before
    /// each message and hands back what it may not send yet. Lists left empty are
    /// dropped; every message stays in exactly one list.
    fn fill_ready_lists(&self, ready: &mut [Parked], later: &mut Vec<Parked>) {
        let max = self.env.config.max_messages_per_list;
        // One pass over the parked lists (however many a big site has), not one per
        // list going on.
        let going: HashSet<String> = ready.iter().map(|p| p.list.key.clone()).collect();
        let mut same_hop: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, q) in later.iter().enumerate() {
            if going.contains(&q.list.key) {
                same_hop.entry(q.list.key.clone()).or_default().push(i);
            }
        }
        for p in ready.iter_mut() {
            for &i in same_hop.get(&p.list.key).into_iter().flatten() {
                if p.list.items.len() >= max {
                    break;
                }
                p.list.fill_from(&mut later[i].list, max);
            }
        }
        later.retain(|q| !q.list.items.is_empty());
    }

    /// `route <domain>`: that destination's pending recipients lose their retry time, so
    /// the next claim takes them; `route <relay host>` (as `relay_host` says it, port and
    /// all) routes everything queued. The store walks the destination index in bounded
    /// chunks, on a store connection of its own so that claims and commits go on
    /// meanwhile and the first routed messages leave while the walk continues. The reply
    /// waits `ROUTE_REPLY_WAIT` at most; a longer walk finishes in the background (a
    /// million messages take a while) and logs its count.
    async fn route(&self, ctx: &TaskContext, target: Option<&str>) -> Result<String, String> {
        const ROUTE_REPLY_WAIT: Duration = Duration::from_secs(3);
        let relay = self.env.next_hop.relay_host();
        // `route` alone (Domino: "sends mail to all pending destinations").
        let all = target.is_none();
        let target = target.unwrap_or("all pending destinations");
        let everything = all
            || relay.as_deref().is_some_and(|h| {
                h.eq_ignore_ascii_case(target)
                    || h.rsplit_once(':')
                        .is_some_and(|(host, _)| host.eq_ignore_ascii_case(target))
            });
        let domain = if everything {
            None
        } else {
            let d: Domain = target
                .parse()
                .map_err(|e| format!("route: bad domain {target}: {e}"))?;
            Some(d.as_str().to_string())
        };
        let store = mta_ipc::StoreClient::new(&ctx.config().run_dir(), Self::NAME);
        let wake = self.wake.clone();
        let label = target.to_string();
        let walk = tokio::spawn(async move {
            let result = store.bulk(BulkOp::RouteNow, domain).await;
            wake.notify_one();
            match &result {
                Ok(r) => tracing::info!(
                    "route {label}: {} messages scheduled for delivery now",
                    r.changed
                ),
                Err(e) => tracing::warn!("route {label}: {e}"),
            }
            result
        });
        // Routed chunks are claimable as soon as they are committed.
        self.wake.notify_one();
        match tokio::time::timeout(ROUTE_REPLY_WAIT, walk).await {
            Ok(Ok(Ok(r))) => Ok(format!(
                "route {target}: {} messages scheduled for delivery now",
                r.changed
            )),
            Ok(Ok(Err(e))) => Err(format!("route {target}: {e}")),
            Ok(Err(e)) => Err(format!("route {target}: {e}")),
            Err(_) => Ok(format!(
                "route {target}: scheduling for delivery now; a large queue, it goes on in the background (the log gives the count) while the first messages leave"
            )),
        }
    }
}

fn main() -> ExitCode {
    mta_task::run::<Osesctl>()
}

/// Whether `words` are `expected`, ignoring case.
fn is_words(words: &[String], expected: &[&str]) -> bool {
    words.len() == expected.len()
        && words
            .iter()
            .zip(expected)
            .all(|(w, e)| w.eq_ignore_ascii_case(e))
}

impl Osesctl {
    /// `show tls policy <domain>`: the next hop's hosts and the policy module's view.
    async fn show_tls_policy(&self, domain: &str) -> String {
        let hosts = match domain.parse::<Domain>() {
            Ok(d) => match self.env.next_hop.resolve(&d).await {
                Ok(hosts) => hosts.into_iter().map(|h| (h.name, h.port)).collect(),
                Err(e) => return format!("{domain}: no next hop: {e}"),
            },
            Err(e) => return format!("{domain}: {e}"),
        };
        let hosts: Vec<(String, u16)> = hosts;
        let port = hosts.first().map(|h| h.1).unwrap_or(self.env.config.port);
        let names: Vec<String> = hosts.into_iter().map(|h| h.0).collect();
        self.env.tls.describe(domain, port, &names).await
    }
}
