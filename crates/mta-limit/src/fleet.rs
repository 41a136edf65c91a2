//! The fleet's shared state in Redis: one multiplexed connection per process, every call
//! bounded by `[cluster] timeout`, and the link's state (`Up`/`Down`) that decides whether
//! limits are shared or local.
//!
//! Redis is never in the path of durability: a call that fails or times out returns `None`
//! at once, marks the link `Down` (one log line) and drops the connection; from then on
//! callers use their local shares without asking Redis at all, until [`Fleet::maintain`]
//! (a background loop) reconnects (one log line: shared again). So a session waits at most
//! one `timeout` for Redis, once per outage.
//!
//! Keys (all under `smtpmta:`; every script reads the time from Redis, one clock for the
//! fleet):
//! - `rate:<key>` — a GCRA theoretical arrival time (µs), expiring when idle.
//! - `lease:<key>` — a sorted set of connection leases, member `node:pid:n`, score the
//!   lease's end (ms); each holder renews its own every `lease_ttl / 3`, expired members
//!   are removed by the next taker, so a dead node's leases lapse within `lease_ttl`.
//! - `suspended` — hash: target (domain or site) → `until_ms<TAB>by`.
//! - `nodes` — hash: node → its heartbeat summary (JSON written by the supervisor);
//!   `alive` — sorted set: node → its last heartbeat (ms).
//!
//! Logs the link's changes (target `smtpmta::cluster`); counts every round trip
//! ([`Fleet::round_trips`]) so the cost per message can be measured.

use crate::{burst, Rate, Verdict};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Script};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

/// The prefix of every key the fleet writes.
pub const PREFIX: &str = "smtpmta:";

/// What a process needs to know to join the fleet (from `[cluster]`).
#[derive(Clone, Debug)]
pub struct FleetSettings {
    /// The URL with its password, for the client only.
    pub url: String,
    /// The URL as logs may show it (password masked).
    pub shown_url: String,
    pub node: String,
    pub timeout: Duration,
    pub heartbeat: Duration,
    pub lease_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot use the Redis URL {url}: {source}")]
    Url {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    /// Pushing this process's leases ahead failed: the link is lost (local limits until
    /// the reconnect).
    #[error("lease renewal: {0}")]
    Renewal(#[source] redis::RedisError),
    #[error("lease renewal: no answer within {0:?}")]
    RenewalTimeout(Duration),
}

/// The link to Redis as this process sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Not connected yet (the first attempt is under way): local limits meanwhile.
    Connecting,
    Up,
    /// The last call failed: local limits, no calls until the reconnect succeeds.
    Down,
}

/// One node as the fleet's hash holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub node: String,
    /// Redis's clock at its last heartbeat, ms.
    pub last_ms: u64,
    /// The summary the node published (JSON).
    pub summary: String,
}

/// All nodes that ever published, and Redis's clock now.
#[derive(Clone, Debug, Default)]
pub struct NodesView {
    pub now_ms: u64,
    pub nodes: Vec<NodeEntry>,
}

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("gcra.lua")));
static LEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lease.lua")));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("renew.lua")));
static BEAT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("heartbeat.lua")));
static ALIVE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("alive.lua")));
static ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("admit.lua")));

/// One rate of a [`Fleet::admit`] call: GCRA under `rate` with a burst of `burst`; a key
/// not seen yet may spend its burst at once.
#[derive(Clone, Debug)]
pub struct RateCheck {
    pub key: String,
    pub rate: Rate,
    pub burst: u32,
}

/// The answer to a [`Fleet::admit`] call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Every limit allowed, and counted; the lease's id when one was asked for (give it
    /// back with [`Fleet::release_lease`]).
    Allowed { lease: Option<String> },
    /// The limit at `index` refused (`index` = the number of rates: the lease); nothing
    /// was counted. `wait`: until the rate allows (zero for the lease).
    Refused { index: usize, wait: Duration },
}

pub struct Fleet {
    settings: FleetSettings,
    client: redis::Client,
    conn: Mutex<Option<MultiplexedConnection>>,
    link: AtomicU8,
    /// Nodes whose heartbeat was fresh at the last look (at least 1: this one).
    alive: AtomicU32,
    round_trips: AtomicU64,
    /// Of those, the limits' own: rate checks, lease takes and releases.
    limit_round_trips: AtomicU64,
    /// The fleet leases this process holds: id → lease key, renewed by `maintain`.
    leases: Mutex<HashMap<String, String>>,
    next_lease: AtomicU64,
}

impl Fleet {
    pub fn new(settings: FleetSettings) -> Result<Arc<Fleet>, FleetError> {
        let client =
            redis::Client::open(settings.url.as_str()).map_err(|source| FleetError::Url {
                url: settings.shown_url.clone(),
                source,
            })?;
        Ok(Arc::new(Fleet {
            settings,
            client,
            conn: Mutex::new(None),
            link: AtomicU8::new(0),
            alive: AtomicU32::new(1),
            round_trips: AtomicU64::new(0),
            limit_round_trips: AtomicU64::new(0),
            leases: Mutex::default(),
            next_lease: AtomicU64::new(0),
        }))
    }

    pub fn settings(&self) -> &FleetSettings {
        &self.settings
    }

    pub fn link(&self) -> Link {
        match self.link.load(Ordering::SeqCst) {
            0 => Link::Connecting,
            1 => Link::Up,
            _ => Link::Down,
        }
    }

    pub fn is_up(&self) -> bool {
        self.link() == Link::Up
    }

    /// Calls made to Redis by this process.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Calls made for the limits themselves (rate checks, lease takes and releases): the
    /// cost per message, without the background's (heartbeat, renewals, suspension sync).
    pub fn limit_round_trips(&self) -> u64 {
        self.limit_round_trips.load(Ordering::Relaxed)
    }

    /// Nodes last seen alive (at least 1).
    pub fn alive_nodes(&self) -> u32 {
        self.alive.load(Ordering::Relaxed).max(1)
    }

    /// Sets the nodes last seen alive (a count kept from an earlier run, before Redis
    /// is reached: the local shares are right from the start).
    pub fn assume_alive(&self, n: u32) {
        self.alive.store(n.max(1), Ordering::Relaxed);
    }

    /// A fleet limit's local share while Redis is away: the limit divided by the nodes
    /// last seen alive, at least 1 (so a fleet of nodes never exceeds the limit).
    pub fn share(&self, limit: u32) -> u32 {
        (limit / self.alive_nodes()).max(1)
    }

    fn set_link(&self, new: Link, why: &str) {
        let code = match new {
            Link::Connecting => 0,
            Link::Up => 1,
            Link::Down => 2,
        };
        let old = self.link.swap(code, Ordering::SeqCst);
        if old == code {
            return;
        }
        let url = &self.settings.shown_url;
        match new {
            Link::Up => tracing::info!(
                target: "smtpmta::cluster",
                "cluster: Redis at {url} is up; limits, suspensions and status are shared by the fleet"
            ),
            Link::Down => tracing::warn!(
                target: "smtpmta::cluster",
                "cluster: Redis at {url} unreachable ({why}); local limits now (each fleet limit ÷ {} nodes last seen alive)",
                self.alive_nodes()
            ),
            Link::Connecting => {}
        }
    }

    /// Connects if not connected (bounded by four `timeout`s). True when up.
    pub async fn connect(&self) -> bool {
        if self.is_up() {
            return true;
        }
        let t = self.settings.timeout;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(t * 4))
            .set_response_timeout(Some(t));
        let attempt = tokio::time::timeout(
            t * 4,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        match attempt {
            Ok(Ok(conn)) => {
                // The leases held now (taken from Redis before an outage, or local shares
                // during it) go into Redis before anyone may take a fleet lease again, so
                // the connections open now are counted from the first moment.
                if let Err(why) = self.renew_on(conn.clone()).await {
                    self.set_link(Link::Down, &why.to_string());
                    return false;
                }
                *self.conn.lock().expect("fleet lock") = Some(conn);
                self.set_link(Link::Up, "");
                true
            }
            Ok(Err(e)) => {
                self.set_link(Link::Down, &e.to_string());
                false
            }
            Err(_) => {
                self.set_link(Link::Down, &format!("no connection within {:?}", t * 4));
                false
            }
        }
    }

    /// One round trip, bounded by `timeout`; `None` when Redis is down or the call fails
    /// (the link is then `Down`, and the connection dropped for `maintain` to redo).
    pub async fn call<T, F, Fut>(&self, what: &str, f: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_up() {
            return None;
        }
        let conn = self.conn.lock().expect("fleet lock").clone()?;
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.settings.timeout, f(conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.lost(&format!("{what}: {e}"));
                None
            }
            Err(_) => {
                self.lost(&format!(
                    "{what}: no answer within {:?}",
                    self.settings.timeout
                ));
                None
            }
        }
    }

    /// [`Fleet::call`] of one command.
    async fn query<T: redis::FromRedisValue>(&self, what: &str, cmd: redis::Cmd) -> Option<T> {
        self.call(what, |mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// [`Fleet::call`], counted as a limit's round trip.
    async fn limit_call<T, F, Fut>(&self, what: &str, f: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if self.is_up() {
            self.limit_round_trips.fetch_add(1, Ordering::Relaxed);
        }
        self.call(what, f).await
    }

    fn lost(&self, why: &str) {
        *self.conn.lock().expect("fleet lock") = None;
        self.set_link(Link::Down, why);
    }

    /// Keeps the link: reconnects when down (every second), renews this process's leases
    /// every `lease_ttl / 3` and counts the nodes alive every `heartbeat`. Runs forever.
    pub async fn maintain(self: Arc<Self>) {
        let tick = Duration::from_secs(1)
            .min(self.settings.heartbeat)
            .min(self.settings.lease_ttl / 3);
        let mut since_renew = Duration::ZERO;
        let mut since_count = self.settings.heartbeat;
        loop {
            if !self.is_up() && self.connect().await {
                since_renew = self.settings.lease_ttl; // re-add our leases at once
                since_count = self.settings.heartbeat;
            }
            if self.is_up() && since_renew >= self.settings.lease_ttl / 3 {
                self.renew().await;
                since_renew = Duration::ZERO;
            }
            if self.is_up() && since_count >= self.settings.heartbeat {
                self.count_alive().await;
                since_count = Duration::ZERO;
            }
            tokio::time::sleep(tick).await;
            since_renew += tick;
            since_count += tick;
        }
    }

    /// A GCRA step for `key` under `rate` (burst [`burst`], no first burst), counted in
    /// Redis; `None` when Redis cannot answer.
    pub async fn gcra(&self, key: &str, rate: Rate) -> Option<Verdict> {
        let period_us = u64::try_from(rate.period.as_micros()).unwrap_or(u64::MAX);
        let interval = (period_us / u64::from(rate.count.max(1))).max(1);
        let tolerance = interval * u64::from(burst(rate) - 1);
        let key = format!("{PREFIX}rate:{key}");
        let wait_us: u64 = self
            .limit_call("rate check", |mut c| async move {
                GCRA.key(key)
                    .arg(interval)
                    .arg(tolerance)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Some(match wait_us {
            0 => Verdict::Allowed,
            us => Verdict::RetryAfter(Duration::from_micros(us)),
        })
    }

    /// One of `max` fleet-wide slots of `key`: `Some(Some(id))` taken, `Some(None)` all
    /// taken, `None` Redis cannot answer.
    pub async fn take_lease(&self, key: &str, max: u32) -> Option<Option<String>> {
        let n = self.next_lease.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}:{}:{n}", self.settings.node, std::process::id());
        let zset = format!("{PREFIX}lease:{key}");
        let ttl = self.settings.lease_ttl.as_millis() as u64;
        let (z, member) = (zset.clone(), id.clone());
        let taken: i64 = self
            .limit_call("lease", |mut c| async move {
                LEASE
                    .key(z)
                    .arg(max)
                    .arg(ttl)
                    .arg(member)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if taken == 0 {
            return Some(None);
        }
        self.leases
            .lock()
            .expect("fleet lock")
            .insert(id.clone(), zset);
        Some(Some(id))
    }

    /// Several limits in one round trip, all or nothing: every rate of `rates` and, with
    /// `lease` = `(key, slots)`, one of `slots` fleet-wide leases of `key` (renewed like
    /// [`Fleet::take_lease`]'s). `None` when Redis cannot answer.
    pub async fn admit(
        &self,
        rates: &[RateCheck],
        lease: Option<(&str, u32)>,
    ) -> Option<Admission> {
        let n = self.next_lease.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}:{}:{n}", self.settings.node, std::process::id());
        let zset = lease.map(|(key, _)| format!("{PREFIX}lease:{key}"));
        let mut inv = ADMIT.prepare_invoke();
        inv.arg(rates.len())
            .arg(lease.map_or(0, |(_, slots)| slots.max(1)))
            .arg(self.settings.lease_ttl.as_millis() as u64)
            .arg(&id);
        for check in rates {
            let period_us = u64::try_from(check.rate.period.as_micros()).unwrap_or(u64::MAX);
            let interval = (period_us / u64::from(check.rate.count.max(1))).max(1);
            inv.key(format!("{PREFIX}rate:{}", check.key))
                .arg(interval)
                .arg(interval.saturating_mul(u64::from(check.burst.max(1) - 1)));
        }
        if let Some(z) = &zset {
            inv.key(z);
        }
        let (refused, wait_us): (usize, u64) = self
            .limit_call(
                "limits",
                |mut c| async move { inv.invoke_async(&mut c).await },
            )
            .await?;
        if refused > 0 {
            let wait = Duration::from_micros(wait_us);
            return Some(Admission::Refused {
                index: refused - 1,
                wait,
            });
        }
        let lease = zset.map(|z| {
            self.leases
                .lock()
                .expect("fleet lock")
                .insert(id.clone(), z);
            id
        });
        Some(Admission::Allowed { lease })
    }

    /// Gives a lease back (in the background; if Redis is away it lapses by its TTL).
    pub fn release_lease(self: &Arc<Self>, id: String) {
        let Some(zset) = self.leases.lock().expect("fleet lock").remove(&id) else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let fleet = self.clone();
        rt.spawn(async move {
            fleet
                .limit_call("lease release", |mut c| async move {
                    redis::cmd("ZREM")
                        .arg(zset)
                        .arg(id)
                        .query_async::<i64>(&mut c)
                        .await
                })
                .await;
        });
    }

    /// Counts a local lease (taken while Redis was away) as one of the fleet's: it is
    /// renewed, so added to Redis, as soon as the link is back; returns its id for
    /// [`Fleet::release_lease`].
    pub fn adopt_lease(&self, key: &str) -> String {
        let n = self.next_lease.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}:{}:{n}", self.settings.node, std::process::id());
        let zset = format!("{PREFIX}lease:{key}");
        self.leases
            .lock()
            .expect("fleet lock")
            .insert(id.clone(), zset);
        id
    }

    /// Pushes the end of every lease this process holds `lease_ttl` ahead (re-adding any
    /// that Redis lost): one round trip for all of them.
    async fn renew(&self) {
        let Some(conn) = self.conn.lock().expect("fleet lock").clone() else {
            return;
        };
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        if let Err(why) = self.renew_on(conn).await {
            self.lost(&why.to_string());
        }
    }

    async fn renew_on(&self, mut conn: MultiplexedConnection) -> Result<(), FleetError> {
        let held: Vec<(String, String)> = {
            let leases = self.leases.lock().expect("fleet lock");
            leases
                .iter()
                .map(|(id, z)| (z.clone(), id.clone()))
                .collect()
        };
        if held.is_empty() {
            return Ok(());
        }
        let ttl = self.settings.lease_ttl.as_millis() as u64;
        let mut inv = RENEW.prepare_invoke();
        inv.arg(ttl);
        for (zset, id) in &held {
            inv.key(zset).arg(id);
        }
        match tokio::time::timeout(self.settings.timeout, inv.invoke_async::<i64>(&mut conn)).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(FleetError::Renewal(e)),
            Err(_) => Err(FleetError::RenewalTimeout(self.settings.timeout)),
        }
    }

    async fn count_alive(&self) {
        let window = (self.settings.heartbeat * 3).as_millis() as u64;
        let alive: Option<u32> = self
            .call("count nodes", |mut c| async move {
                ALIVE
                    .key(format!("{PREFIX}alive"))
                    .arg(window)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
        if let Some(n) = alive.filter(|n| *n > 0) {
            self.alive.store(n, Ordering::Relaxed);
        }
    }

    /// Publishes this node's heartbeat (its summary, JSON) with Redis's clock.
    pub async fn heartbeat(&self, summary: String) -> bool {
        let node = self.settings.node.clone();
        self.call("heartbeat", |mut c| async move {
            BEAT.key(format!("{PREFIX}nodes"))
                .key(format!("{PREFIX}alive"))
                .arg(node)
                .arg(summary)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await
        .is_some()
    }

    /// Every node that ever published, with its last heartbeat.
    pub async fn nodes(&self) -> Option<NodesView> {
        type Reply = (Vec<u64>, Vec<(String, u64)>, HashMap<String, String>);
        let (time, alive, summaries): Reply = self
            .call("show fleet", |mut c| async move {
                redis::pipe()
                    .cmd("TIME")
                    .cmd("ZRANGE")
                    .arg(format!("{PREFIX}alive"))
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .cmd("HGETALL")
                    .arg(format!("{PREFIX}nodes"))
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let now_ms =
            time.first().copied().unwrap_or(0) * 1000 + time.get(1).copied().unwrap_or(0) / 1000;
        let nodes = alive
            .into_iter()
            .map(|(node, last_ms)| NodeEntry {
                summary: summaries.get(&node).cloned().unwrap_or_default(),
                node,
                last_ms,
            })
            .collect();
        Some(NodesView { now_ms, nodes })
    }

    /// Suspends `target` (a domain or a site) for the fleet until `until_ms`.
    pub async fn suspend(&self, target: &str, until_ms: u64, by: &str) -> bool {
        let mut hset = redis::cmd("HSET");
        hset.arg(format!("{PREFIX}suspended"))
            .arg(target)
            .arg(format!("{until_ms}\t{by}"));
        self.query::<i64>("suspend", hset).await.is_some()
    }

    /// Ends a fleet suspension of `target`.
    pub async fn resume(&self, target: &str) -> bool {
        let mut hdel = redis::cmd("HDEL");
        hdel.arg(format!("{PREFIX}suspended")).arg(target);
        self.query::<i64>("resume", hdel).await.is_some()
    }

    /// The fleet's suspensions: `(target, until_ms, by)`; ended ones included (the
    /// reader compares with its clock).
    pub async fn suspensions(&self) -> Option<Vec<(String, u64, String)>> {
        let mut hgetall = redis::cmd("HGETALL");
        hgetall.arg(format!("{PREFIX}suspended"));
        let all: HashMap<String, String> = self.query("suspensions", hgetall).await?;
        Some(
            all.into_iter()
                .filter_map(|(target, v)| {
                    let (until, by) = v.split_once('\t')?;
                    Some((target, until.parse().ok()?, by.to_string()))
                })
                .collect(),
        )
    }
}
