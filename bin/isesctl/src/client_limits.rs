//! Per-client limits, Postfix anvil style: simultaneous sessions, and the rates of new
//! sessions, messages and recipients, per client (an IPv4 address, or an IPv6 /64).
//! Clients in `trusted_networks` are never counted (the caller does not ask).
//!
//! The counting sits behind [`Limiter`]: one call per event, which may be async, so that a
//! fleet-wide implementation (Redis, one script call per check, issue "fleet") can take
//! the place of the in-memory [`MemoryLimiter`] without touching the sessions. Rates are
//! GCRA (`mta_types::rate`) with a burst of the whole count: `60/min` lets 60 sessions in
//! at once, then one a second.
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
    /// A transaction reaches its first RCPT.
    Message,
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
}

impl Limits {
    pub fn from_config(inbound: &InboundConfig) -> Limits {
        Limits {
            max_connections: inbound.max_connections_per_client,
            connection_rate: inbound.max_connection_rate_per_client,
            message_rate: inbound.max_message_rate_per_client,
            recipient_rate: inbound.max_recipient_rate_per_client,
        }
    }

    /// `(name, value)` of each limit in force, for `show clients`.
    fn described(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.max_connections > 0 {
            out.push((
                "max_connections_per_client".into(),
                self.max_connections.to_string(),
            ));
        }
        for (name, rate) in [
            ("max_connection_rate_per_client", self.connection_rate),
            ("max_message_rate_per_client", self.message_rate),
            ("max_recipient_rate_per_client", self.recipient_rate),
        ] {
            if let Some(rate) = rate {
                out.push((name.into(), rate.to_string()));
            }
        }
        out
    }
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

/// The limiter of one isesctl process.
pub struct MemoryLimiter {
    limits: Limits,
    connection_gcra: Option<Gcra>,
    message_gcra: Option<Gcra>,
    recipient_gcra: Option<Gcra>,
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
            connection_gcra: limits.connection_rate.map(Gcra::full_burst),
            message_gcra: limits.message_rate.map(Gcra::full_burst),
            recipient_gcra: limits.recipient_rate.map(Gcra::full_burst),
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

    /// The check itself, under the lock (no await).
    fn count(&self, client: ClientKey, event: Event, now: u64) -> Result<(), Exceeded> {
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
            Event::Connect => self.connect(entry, now),
            Event::Message => rate(self.message_gcra, &mut entry.message_tat, now)
                .map_err(|()| Exceeded::MessageRate(self.limits.message_rate.expect("set")))
                .map(|()| entry.messages += 1),
            Event::Recipient => rate(self.recipient_gcra, &mut entry.recipient_tat, now)
                .map_err(|()| Exceeded::RecipientRate(self.limits.recipient_rate.expect("set")))
                .map(|()| entry.recipients += 1),
        };
        if verdict.is_err() {
            entry.refused += 1;
        }
        verdict
    }

    fn connect(&self, entry: &mut Entry, now: u64) -> Result<(), Exceeded> {
        let max = self.limits.max_connections;
        if max > 0 && entry.open >= max {
            return Err(Exceeded::Connections(max));
        }
        rate(self.connection_gcra, &mut entry.connection_tat, now)
            .map_err(|()| Exceeded::ConnectionRate(self.limits.connection_rate.expect("set")))?;
        entry.open += 1;
        entry.connections += 1;
        Ok(())
    }
}

/// One event against an optional rate.
fn rate(gcra: Option<Gcra>, tat: &mut u64, now: u64) -> Result<(), ()> {
    match gcra {
        Some(g) => g.check(tat, now).map_err(|_wait| ()),
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
        let verdict = self.count(client, event, self.now_us());
        std::future::ready(verdict)
    }

    fn disconnected(&self, client: ClientKey) {
        if let Some(entry) = self.lock().clients.get_mut(&client) {
            entry.open = entry.open.saturating_sub(1);
        }
    }

    fn busiest(&self, n: usize) -> ClientReport {
        let now = self.now_us();
        let table = self.lock();
        let mut rows: Vec<(&ClientKey, &Entry)> = table.clients.iter().collect();
        rows.sort_unstable_by(|a, b| {
            (b.1.open, b.1.activity(), a.0).cmp(&(a.1.open, a.1.activity(), b.0))
        });
        let to_ms = |us: u64| self.epoch_unix_ms + us.saturating_sub(1_000_000) / 1000;
        ClientReport {
            tracked: table.clients.len() as u64,
            limits: self.limits.described(),
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
        for _ in 0..3 {
            assert_eq!(l.check(c, Event::Recipient).await, Ok(()));
        }
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
            assert_eq!(l.count(client, Event::Connect, now), Ok(()));
            l.disconnected(client);
        }
        assert!(l.lock().clients.len() <= MAX_CLIENTS);
        // Idle and old: swept.
        let later = now + 2 * 3_600_000_000;
        sweep(&mut l.lock().clients, later, false);
        assert_eq!(l.lock().clients.len(), 0);
    }
}
