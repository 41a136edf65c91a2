//! Per-client limits, Postfix anvil style: simultaneous sessions, and the rates of new
//! sessions, messages and recipients, per client (an IPv4 address, or an IPv6 /64).
//! Clients in `trusted_networks` are never counted (the caller does not ask).
//!
//! The counting sits behind [`Limiter`]: one call per event, which may be async, so that
//! the fleet-wide implementation (`fleet_limits.rs`: Redis, one script call per event)
//! takes the place of the in-memory [`MemoryLimiter`] without touching the sessions. Rates
//! are GCRA (`mta_types::rate`) with a burst of the whole count: `60/min` lets 60 sessions
//! in at once, then one a second.
//!
//! Memory is bounded: a client with no session open whose rates are back to their initial
//! state is forgotten after [`KEEP`] (it is then as if never seen), and the table never
//! holds more than [`MAX_CLIENTS`]. No lock is held across an await.
//!
//! Config read: `[inbound] max_connections_per_client`, `max_connection_rate_per_client`,
//! `max_message_rate_per_client`, `max_recipient_rate_per_client`.

use mta_config::InboundConfig;
use mta_ipc::clients::{ClientReport, ClientRow};
use mta_types::rate::{Gcra, Rate};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most clients kept; past it the least recently seen idle ones go first.
pub const MAX_CLIENTS: usize = 20_000;
/// How long an idle client stays listed in `show clients`.
pub const KEEP: Duration = Duration::from_secs(600);
/// How often idle clients are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Who a limit counts: an IPv4 address, or an IPv6 /64 (one customer's network, which a
/// spammer can fill with as many addresses as it likes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClientKey {
    V4(Ipv4Addr),
    /// The upper 64 bits.
    V6(u64),
}

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(v4),
                None => ClientKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientKey::V4(v4) => write!(f, "{v4}"),
            ClientKey::V6(prefix) => {
                let net = std::net::Ipv6Addr::from(u128::from(*prefix) << 64);
                write!(f, "{net}/64")
            }
        }
    }
}

/// What happened, to be counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A session begins (counted against the simultaneous and the rate limit; when it
    /// is admitted, [`Limiter::disconnected`] must follow).
    Connect,
    /// A transaction reaches its first RCPT: the message and that recipient, counted
    /// together (one question to the fleet, not two).
    Message,
    /// Any later RCPT of the transaction.
    Recipient,
}

/// The limit a client went over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exceeded {
    Connections(u32),
    ConnectionRate(Rate),
    MessageRate(Rate),
    RecipientRate(Rate),
}

impl Exceeded {
    /// For the `421 4.7.0` reply and the log: what, from whom, and the limit.
    pub fn reason(&self, client: ClientKey) -> String {
        match self {
            Exceeded::Connections(n) => {
                format!("too many connections from [{client}] (limit {n})")
            }
            Exceeded::ConnectionRate(r) => {
                format!("too many connections from [{client}] (limit {r})")
            }
            Exceeded::MessageRate(r) => format!("too many messages from [{client}] (limit {r})"),
            Exceeded::RecipientRate(r) => {
                format!("too many recipients from [{client}] (limit {r})")
            }
        }
    }
}

/// The per-client limits, from `[inbound]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// 0: none.
    pub max_connections: u32,
    pub connection_rate: Option<Rate>,
    pub message_rate: Option<Rate>,
    pub recipient_rate: Option<Rate>,
    /// Which were written `local:` (per node even in a fleet).
    pub local: LocalFlags,
}

/// The limits written `local:`, in [`Limits`]' order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalFlags {
    pub connections: bool,
    pub connection_rate: bool,
    pub message_rate: bool,
    pub recipient_rate: bool,
}

impl Limits {
    pub fn from_config(inbound: &InboundConfig) -> Limits {
        Limits {
            max_connections: inbound.max_connections_per_client.limit,
            connection_rate: inbound.max_connection_rate_per_client.limit,
            message_rate: inbound.max_message_rate_per_client.limit,
            recipient_rate: inbound.max_recipient_rate_per_client.limit,
            local: LocalFlags {
                connections: inbound.max_connections_per_client.local,
                connection_rate: inbound.max_connection_rate_per_client.local,
                message_rate: inbound.max_message_rate_per_client.local,
                recipient_rate: inbound.max_recipient_rate_per_client.local,
            },
        }
    }

    /// Each limit as `keep(is_local)` says: the count or rate itself, divided by
    /// `share`, or none.
    pub fn scoped(&self, keep: impl Fn(bool) -> Scope, share: impl Fn(u32) -> u32) -> Limits {
        let rate = |r: Option<Rate>, local: bool| match (r, keep(local)) {
            (Some(r), Scope::Full) => Some(r),
            (Some(r), Scope::Share) => Some(Rate {
                count: share(r.count),
                period: r.period,
            }),
            _ => None,
        };
        let connections = match keep(self.local.connections) {
            Scope::Full => self.max_connections,
            Scope::Share if self.max_connections > 0 => share(self.max_connections),
            _ => 0,
        };
        Limits {
            max_connections: connections,
            connection_rate: rate(self.connection_rate, self.local.connection_rate),
            message_rate: rate(self.message_rate, self.local.message_rate),
            recipient_rate: rate(self.recipient_rate, self.local.recipient_rate),
            local: self.local,
        }
    }

    /// Whether any limit in force is shared by the fleet (not `local:`).
    pub fn any_shared(&self) -> bool {
        let l = self.local;
        (self.max_connections > 0 && !l.connections)
            || (self.connection_rate.is_some() && !l.connection_rate)
            || (self.message_rate.is_some() && !l.message_rate)
            || (self.recipient_rate.is_some() && !l.recipient_rate)
    }

    /// `(name, value)` of each limit in force, for `show clients`; in a fleet, each says
    /// whether it is counted by the fleet or by this node.
    pub fn described(&self, fleet: bool) -> Vec<(String, String)> {
        let scope = |local: bool| match (fleet, local) {
            (false, _) => "",
            (true, false) => " (fleet-wide)",
            (true, true) => " (local: this node)",
        };
        let mut out = Vec::new();
        if self.max_connections > 0 {
            out.push((
                "max_connections_per_client".into(),
                format!("{}{}", self.max_connections, scope(self.local.connections)),
            ));
        }
        for (name, rate, local) in [
            (
                "max_connection_rate_per_client",
                self.connection_rate,
                self.local.connection_rate,
            ),
            (
                "max_message_rate_per_client",
                self.message_rate,
                self.local.message_rate,
            ),
            (
                "max_recipient_rate_per_client",
                self.recipient_rate,
                self.local.recipient_rate,
            ),
        ] {
            if let Some(rate) = rate {
                out.push((name.into(), format!("{rate}{}", scope(local))));
            }
        }
        out
    }
}

/// How [`Limits::scoped`] keeps one limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Full,
    /// Divided (a fleet limit's local share while Redis is away).
    Share,
    /// Not counted here (the fleet counts it).
    None,
}

/// The counting behind the limits: one call per event.
pub trait Limiter: Send + Sync + 'static {
    /// Counts `event` for `client`, or refuses it (nothing counted) with the limit it
    /// would break.
    fn check(
        &self,
        client: ClientKey,
        event: Event,
    ) -> impl Future<Output = Result<(), Exceeded>> + Send;

    /// A session admitted by `check(client, Event::Connect)` ended.
    fn disconnected(&self, client: ClientKey);

    /// The `n` busiest clients (most sessions open, then most activity), for
    /// `show clients`.
    fn busiest(&self, n: usize) -> ClientReport;
}

/// One client's counters.
#[derive(Clone, Debug, Default)]
struct Entry {
    open: u32,
    /// GCRA theoretical arrival times, µs on the limiter's clock (0: never).
    connection_tat: u64,
    message_tat: u64,
    recipient_tat: u64,
    connections: u64,
    messages: u64,
    recipients: u64,
    refused: u64,
    /// µs on the limiter's clock.
    last_seen: u64,
}

impl Entry {
    /// Nothing open and every rate back to its initial state: forgetting it changes no
    /// later answer.
    fn is_idle(&self, now: u64) -> bool {
        self.open == 0
            && [self.connection_tat, self.message_tat, self.recipient_tat]
                .iter()
                .all(|tat| Gcra::is_idle(*tat, now))
    }

    fn activity(&self) -> u64 {
        self.connections + self.messages + self.recipients
    }
}

struct Table {
    clients: HashMap<ClientKey, Entry>,
    last_sweep: u64,
}

/// The limiter of one isesctl process (and the local side of the fleet's).
pub struct MemoryLimiter {
    limits: Limits,
    /// The clock's zero (µs are counted from here).
    epoch: Instant,
    /// The same instant as Unix ms, for `show clients`' "last seen".
    epoch_unix_ms: u64,
    table: Mutex<Table>,
}

impl MemoryLimiter {
    pub fn new(limits: Limits) -> MemoryLimiter {
        MemoryLimiter {
            limits,
            epoch: Instant::now(),
            epoch_unix_ms: mta_types::message::now_ms(),
            table: Mutex::new(Table {
                clients: HashMap::new(),
                last_sweep: 0,
            }),
        }
    }

    fn now_us(&self) -> u64 {
        // Starts at 1 s so that a TAT of 0 always means "never seen".
        1_000_000 + u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Counts `event` under `limits` (the fleet's limiter passes the part it counts
    /// here); `Err` counts a refusal.
    pub fn count_under(
        &self,
        limits: &Limits,
        client: ClientKey,
        event: Event,
    ) -> Result<(), Exceeded> {
        self.count(limits, client, event, self.now_us())
    }

    /// A refusal decided elsewhere (by the fleet), for `show clients`.
    pub fn note_refused(&self, client: ClientKey) {
        let now = self.now_us();
        let mut table = self.lock();
        if table.clients.contains_key(&client) || table.clients.len() < MAX_CLIENTS {
            let entry = table.clients.entry(client).or_default();
            entry.refused += 1;
            entry.last_seen = now;
        }
    }

    /// The check itself, under the lock (no await).
    fn count(
        &self,
        limits: &Limits,
        client: ClientKey,
        event: Event,
        now: u64,
    ) -> Result<(), Exceeded> {
        let mut table = self.lock();
        if now.saturating_sub(table.last_sweep) >= SWEEP_EVERY.as_micros() as u64 {
            sweep(&mut table.clients, now, false);
            table.last_sweep = now;
        }
        if !table.clients.contains_key(&client) && table.clients.len() >= MAX_CLIENTS {
            make_room(&mut table.clients, now);
        }
        let entry = table.clients.entry(client).or_default();
        entry.last_seen = now;
        let verdict = match event {
            Event::Connect => connect(limits, entry, now),
            Event::Message => rate(limits.message_rate, &mut entry.message_tat, now)
                .map_err(Exceeded::MessageRate)
                .map(|()| entry.messages += 1)
                .and_then(|()| recipient(limits, entry, now)),
            Event::Recipient => recipient(limits, entry, now),
        };
        if verdict.is_err() {
            entry.refused += 1;
        }
        verdict
    }
}

fn connect(limits: &Limits, entry: &mut Entry, now: u64) -> Result<(), Exceeded> {
    let max = limits.max_connections;
    if max > 0 && entry.open >= max {
        return Err(Exceeded::Connections(max));
    }
    rate(limits.connection_rate, &mut entry.connection_tat, now)
        .map_err(Exceeded::ConnectionRate)?;
    entry.open += 1;
    entry.connections += 1;
    Ok(())
}

fn recipient(limits: &Limits, entry: &mut Entry, now: u64) -> Result<(), Exceeded> {
    rate(limits.recipient_rate, &mut entry.recipient_tat, now)
        .map_err(Exceeded::RecipientRate)
        .map(|()| entry.recipients += 1)
}

/// One event against an optional rate; `Err` names the rate.
fn rate(limit: Option<Rate>, tat: &mut u64, now: u64) -> Result<(), Rate> {
    match limit {
        Some(r) => Gcra::full_burst(r).check(tat, now).map_err(|_wait| r),
        None => Ok(()),
    }
}

/// Forgets idle clients not seen for `KEEP` (all idle ones with `all_idle`).
fn sweep(clients: &mut HashMap<ClientKey, Entry>, now: u64, all_idle: bool) {
    let keep = KEEP.as_micros() as u64;
    clients
        .retain(|_, e| !(e.is_idle(now) && (all_idle || now.saturating_sub(e.last_seen) >= keep)));
}

/// The table is full: forget idle clients; if none is idle (a flood from more clients
/// than the table holds, within one rate period), the least recently seen without a
/// session open (its rates start afresh: the limit errs on the lenient side).
fn make_room(clients: &mut HashMap<ClientKey, Entry>, now: u64) {
    sweep(clients, now, true);
    if clients.len() < MAX_CLIENTS {
        return;
    }
    let mut closed: Vec<(u64, ClientKey)> = clients
        .iter()
        .filter(|(_, e)| e.open == 0)
        .map(|(k, e)| (e.last_seen, *k))
        .collect();
    closed.sort_unstable();
    let excess = clients.len() + 1 - MAX_CLIENTS;
    // A tenth at once, so that a flood does not sort on every new client.
    for (_, key) in closed.iter().take(excess.max(MAX_CLIENTS / 10)) {
        clients.remove(key);
    }
}

impl Limiter for MemoryLimiter {
    fn check(
        &self,
        client: ClientKey,
        event: Event,
    ) -> impl Future<Output = Result<(), Exceeded>> + Send {
        let verdict = self.count(&self.limits, client, event, self.now_us());
        std::future::ready(verdict)
    }

    fn disconnected(&self, client: ClientKey) {
        if let Some(entry) = self.lock().clients.get_mut(&client) {
            entry.open = entry.open.saturating_sub(1);
        }
    }

    fn busiest(&self, n: usize) -> ClientReport {
        self.report(n, false)
    }
}

impl MemoryLimiter {
    /// `show clients`; `fleet`: the limits say how they are counted.
    pub fn report(&self, n: usize, fleet: bool) -> ClientReport {
        let now = self.now_us();
        let table = self.lock();
        let mut rows: Vec<(&ClientKey, &Entry)> = table.clients.iter().collect();
        rows.sort_unstable_by(|a, b| {
            (b.1.open, b.1.activity(), a.0).cmp(&(a.1.open, a.1.activity(), b.0))
        });
        let to_ms = |us: u64| self.epoch_unix_ms + us.saturating_sub(1_000_000) / 1000;
        ClientReport {
            tracked: table.clients.len() as u64,
            limits: self.limits.described(fleet),
            rows: rows
                .into_iter()
                .take(n)
                .map(|(key, e)| ClientRow {
                    client: key.to_string(),
                    open: e.open,
                    connections: e.connections,
                    messages: e.messages,
                    recipients: e.recipients,
                    refused: e.refused,
                    last_seen_ms: to_ms(e.last_seen),
                    idle: e.is_idle(now),
                })
                .collect(),
        }
    }
}

/// A session admitted by the limiter; tells it when the session ends (dropped).
pub struct Admitted<L: Limiter> {
    limiter: Arc<L>,
    client: ClientKey,
}

impl<L: Limiter> Admitted<L> {
    pub fn limiter(&self) -> &Arc<L> {
        &self.limiter
    }

    /// Counts a new session from `client`: `Ok` holds it open until dropped.
    pub async fn connect(limiter: &Arc<L>, client: ClientKey) -> Result<Admitted<L>, Exceeded> {
        limiter.check(client, Event::Connect).await?;
        Ok(Admitted {
            limiter: limiter.clone(),
            client,
        })
    }
}

impl<L: Limiter> Drop for Admitted<L> {
    fn drop(&mut self) {
        self.limiter.disconnected(self.client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(limits: Limits) -> Arc<MemoryLimiter> {
        Arc::new(MemoryLimiter::new(limits))
    }

    fn key(ip: &str) -> ClientKey {
        ClientKey::of(ip.parse().unwrap())
    }

    #[test]
    fn ipv6_clients_count_by_64() {
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
    }

    #[tokio::test]
    async fn simultaneous_sessions_are_limited_and_released() {
        let l = limiter(Limits {
            max_connections: 2,
            ..Limits::default()
        });
        let c = key("192.0.2.1");
        let a = Admitted::connect(&l, c).await.unwrap();
        let _b = Admitted::connect(&l, c).await.unwrap();
        assert_eq!(
            Admitted::connect(&l, c).await.err(),
            Some(Exceeded::Connections(2))
        );
        // Another client is not affected.
        let _other = Admitted::connect(&l, key("192.0.2.2")).await.unwrap();
        drop(a);
        let _c = Admitted::connect(&l, c).await.unwrap();
        let report = l.busiest(10);
        assert_eq!(report.rows[0].client, "192.0.2.1");
        assert_eq!(
            (
                report.rows[0].open,
                report.rows[0].connections,
                report.rows[0].refused
            ),
            (2, 3, 1)
        );
    }

    #[tokio::test]
    async fn rates_refuse_past_the_burst() {
        let l = limiter(Limits {
            message_rate: Some("2/min".parse().unwrap()),
            recipient_rate: Some("3/h".parse().unwrap()),
            ..Limits::default()
        });
        let c = key("192.0.2.1");
        for _ in 0..2 {
            assert_eq!(l.check(c, Event::Message).await, Ok(()));
        }
        assert!(matches!(
            l.check(c, Event::Message).await,
            Err(Exceeded::MessageRate(_))
        ));
        // Each message counted its first recipient too (the refused third did not).
        assert_eq!(l.check(c, Event::Recipient).await, Ok(()));
        let e = l.check(c, Event::Recipient).await.unwrap_err();
        assert_eq!(
            e.reason(c),
            "too many recipients from [192.0.2.1] (limit 3/h)"
        );
    }

    #[test]
    fn the_table_stays_bounded() {
        let l = MemoryLimiter::new(Limits {
            connection_rate: Some("1/h".parse().unwrap()),
            ..Limits::default()
        });
        let now = l.now_us();
        for i in 0..(MAX_CLIENTS as u32 + 500) {
            let client = ClientKey::V4(Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(l.count(&l.limits, client, Event::Connect, now), Ok(()));
            l.disconnected(client);
        }
        assert!(l.lock().clients.len() <= MAX_CLIENTS);
        // Idle and old: swept.
        let later = now + 2 * 3_600_000_000;
        sweep(&mut l.lock().clients, later, false);
        assert_eq!(l.lock().clients.len(), 0);
    }
}
