//! Per-client limits across the fleet (`[cluster] redis`, issue 27): the limits of
//! `client_limits.rs`, counted for every node in Redis, so that "no client sends more
//! than 60 messages a minute" holds whichever node the client reaches.
//!
//! - One Redis round trip per event, all its limits in one script call
//!   (`mta_limit::fleet::Fleet::admit`): at connect the connection rate and the
//!   connection count (a lease with a TTL the holder renews; given back in the background
//!   when the session ends); at a transaction's first RCPT the message rate and the
//!   recipient rate together; at each later RCPT the recipient rate. Nothing after DATA:
//!   the 250 never waits on Redis.
//! - A limit written `local:` is counted by this node alone (in memory), in full.
//! - Redis away (or still connecting): every shared limit is counted here at its local
//!   share, the limit ÷ the nodes last seen alive (at least 1); the call that found Redis
//!   gone logs it once (`mta_limit::fleet`), and the limits are shared again once the
//!   background reconnect succeeds. A connection admitted meanwhile is counted in Redis
//!   from then on (its lease is renewed like the others).
//!
//! The local table ([`MemoryLimiter`]) counts every event either way, for `show clients`.

use crate::client_limits::{ClientKey, Event, Exceeded, Limiter, Limits, MemoryLimiter, Scope};
use mta_ipc::clients::ClientReport;
use mta_limit::fleet::{Admission, Fleet, RateCheck};
use mta_types::rate::Rate;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// The per-client limiter of one isesctl: in memory alone, or shared by the fleet.
pub enum ClientLimiter {
    Memory(MemoryLimiter),
    Fleet(FleetLimiter),
}

impl ClientLimiter {
    /// The fleet's when any limit is shared and `fleet` is set, else memory's.
    pub fn new(limits: Limits, fleet: Option<Arc<Fleet>>) -> ClientLimiter {
        match fleet {
            Some(fleet) if limits.any_shared() => ClientLimiter::Fleet(FleetLimiter {
                fleet,
                local: MemoryLimiter::new(limits),
                held: Mutex::default(),
            }),
            _ => ClientLimiter::Memory(MemoryLimiter::new(limits)),
        }
    }

    /// With the fleet's limits, the link's status counters: `redis_up` (1/0),
    /// `cluster_nodes_alive` (what the local shares divide by), `redis_calls`,
    /// `redis_limit_calls` (of those, for the limits); none alone.
    pub fn counters(&self) -> Vec<(String, u64)> {
        let ClientLimiter::Fleet(f) = self else {
            return Vec::new();
        };
        vec![
            ("redis_up".into(), u64::from(f.fleet.is_up())),
            (
                "cluster_nodes_alive".into(),
                u64::from(f.fleet.alive_nodes()),
            ),
            ("redis_calls".into(), f.fleet.round_trips()),
            ("redis_limit_calls".into(), f.fleet.limit_round_trips()),
        ]
    }
}

impl Limiter for ClientLimiter {
    fn check(
        &self,
        client: ClientKey,
        event: Event,
    ) -> impl Future<Output = Result<(), Exceeded>> + Send {
        async move {
            match self {
                ClientLimiter::Memory(m) => m.check(client, event).await,
                ClientLimiter::Fleet(f) => f.count(client, event).await,
            }
        }
    }

    fn disconnected(&self, client: ClientKey) {
        match self {
            ClientLimiter::Memory(m) => m.disconnected(client),
            ClientLimiter::Fleet(f) => f.disconnected(client),
        }
    }

    fn busiest(&self, n: usize) -> ClientReport {
        match self {
            ClientLimiter::Memory(m) => m.busiest(n),
            ClientLimiter::Fleet(f) => f.local.report(n, true),
        }
    }
}

pub struct FleetLimiter {
    fleet: Arc<Fleet>,
    /// Every event counted here too; limits `local:` in full, shared ones only while
    /// Redis is away (at their share).
    local: MemoryLimiter,
    /// The fleet leases of the sessions open, by client (given back as they end).
    held: Mutex<HashMap<ClientKey, Vec<String>>>,
}

/// What one event asks of the fleet: its shared rates (each with the refusal it means)
/// and the connection lease.
struct Ask {
    rates: Vec<(RateCheck, Exceeded)>,
    /// `(key, slots)`.
    lease: Option<(String, u32)>,
}

impl FleetLimiter {
    async fn count(&self, client: ClientKey, event: Event) -> Result<(), Exceeded> {
        let limits = *self.local.limits();
        let local_only =
            limits.scoped(|local| if local { Scope::Full } else { Scope::None }, |n| n);
        let ask = shared_part(&limits, client, event);
        if ask.rates.is_empty() && ask.lease.is_none() {
            return self.local.count_under(&local_only, client, event);
        }
        let checks: Vec<RateCheck> = ask.rates.iter().map(|(c, _)| c.clone()).collect();
        let lease = ask.lease.as_ref().map(|(k, n)| (k.as_str(), *n));
        match self.fleet.admit(&checks, lease).await {
            Some(Admission::Refused { index, .. }) => {
                self.local.note_refused(client);
                Err(ask.rates.get(index).map_or(
                    Exceeded::Connections(limits.max_connections),
                    |(_, refusal)| *refusal,
                ))
            }
            Some(Admission::Allowed { lease }) => {
                let verdict = self.local.count_under(&local_only, client, event);
                match (verdict, lease) {
                    (Ok(()), Some(id)) => self.hold(client, id),
                    (Err(_), Some(id)) => self.fleet.release_lease(id),
                    _ => {}
                }
                verdict
            }
            None => {
                // Redis away: the local shares, and a lease Redis learns of when back.
                let share = |local| if local { Scope::Full } else { Scope::Share };
                let shares = limits.scoped(share, |n| self.fleet.share(n));
                let verdict = self.local.count_under(&shares, client, event);
                if let (Ok(()), Some((key, _))) = (verdict, &ask.lease) {
                    self.hold(client, self.fleet.adopt_lease(key));
                }
                verdict
            }
        }
    }

    fn hold(&self, client: ClientKey, id: String) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.entry(client).or_default().push(id);
    }

    fn disconnected(&self, client: ClientKey) {
        self.local.disconnected(client);
        let id = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            let ids = held.get_mut(&client);
            let id = ids.and_then(Vec::pop);
            if held.get(&client).is_some_and(Vec::is_empty) {
                held.remove(&client);
            }
            id
        };
        if let Some(id) = id {
            self.fleet.release_lease(id);
        }
    }
}

/// The limits of `event` the fleet counts (not `local:`), as Redis keys.
fn shared_part(limits: &Limits, client: ClientKey, event: Event) -> Ask {
    let shared = limits.scoped(|local| if local { Scope::None } else { Scope::Full }, |n| n);
    let rate = |what: &str, r: Rate, refusal| {
        let check = RateCheck {
            key: format!("client:{client}:{what}"),
            rate: r,
            // As in memory: the whole count at once, then one per period/count.
            burst: r.count,
        };
        (check, refusal)
    };
    let mut rates = Vec::new();
    let mut lease = None;
    match event {
        Event::Connect => {
            if let Some(r) = shared.connection_rate {
                rates.push(rate("connections", r, Exceeded::ConnectionRate(r)));
            }
            if shared.max_connections > 0 {
                lease = Some((format!("client:{client}"), shared.max_connections));
            }
        }
        Event::Message => {
            if let Some(r) = shared.message_rate {
                rates.push(rate("messages", r, Exceeded::MessageRate(r)));
            }
            if let Some(r) = shared.recipient_rate {
                rates.push(rate("recipients", r, Exceeded::RecipientRate(r)));
            }
        }
        Event::Recipient => {
            if let Some(r) = shared.recipient_rate {
                rates.push(rate("recipients", r, Exceeded::RecipientRate(r)));
            }
        }
    }
    Ask { rates, lease }
}
