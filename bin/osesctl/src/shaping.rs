//! Traffic shaping per destination site (`[[outbound.shaping]]`).
//!
//! A *site* is the set of MX hosts a destination resolves to, sorted and joined
//! (`mx1.a.test,mx2.a.test`; the relay host in relay mode; the domain itself for an
//! implicit MX): destinations with the same MX set are one site, and every limit is
//! counted per site, with or without a rule. The rule that applies to a list is the first
//! whose `match` fits its domain (`gmail.com`, `.example.com`) or all of its MX hosts
//! (`mx:*.google.com`); without one, the default rule (a rule with no `match`, or no
//! limits at all). Limits are counted under the site's name, so two destinations of one
//! site that fall under different rules share the counts and each list obeys its own
//! rule's numbers.
//!
//! The checks go through `mta_limit::Limiter` (in memory now; a fleet-wide one plugs in
//! behind the same trait): a connection lease per session (`connection_limit`, lowered by
//! an `on_reply` rule for a while), a GCRA check per new connection
//! (`max_connection_rate`) and per message (`max_message_rate`). A rule without limits
//! costs a list one map lookup and a message nothing.
//!
//! Suspensions (by an `on_reply` rule or by the operator, of a domain or a site) are kept
//! here with their end; a list for a suspended destination is deferred until the end
//! without an attempt being counted. The operator's survive a restart (the store keeps
//! them; `main.rs` loads them at start).
//!
//! In a fleet (`[cluster] redis`) the limiter is `mta_limit::FleetLimiter` (the counts are
//! the fleet's; a limit written `local:` keeps its key under `local:` and stays per node),
//! and every suspension is also written to the fleet's hash; [`Shaping::sync_fleet`] reads
//! that hash once a second, so a 421 that suspends a site on one node suspends it on all
//! within a second, at one round trip per second per node, none per message.

use crate::domain_list::DomainList;
use mta_config::{LocalLimits, ReplyAction, ShapingRule};
use mta_dns::Host;
use mta_limit::fleet::Fleet;
use mta_limit::{Lease, Limiter, Rate, Verdict};
use mta_types::message::{now_ms, UnixMillis};
use regex::Regex;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a list waiting for a connection slot looks again when no local session
/// ends (the slot may be another node's, with a fleet-wide limiter).
const LEASE_RECHECK: Duration = Duration::from_secs(1);
/// How often the fleet's suspensions are read.
const FLEET_SYNC: Duration = Duration::from_secs(1);
/// Domains remembered per site for the console.
const SITE_DOMAINS: usize = 50;

/// A rule as osesctl applies it: patterns split by kind, regexes compiled.
pub struct Rule {
    pub label: String,
    domains: Vec<String>,
    mx: Vec<String>,
    pub connection_limit: Option<u32>,
    pub max_deliveries_per_connection: Option<usize>,
    pub max_message_rate: Option<Rate>,
    pub max_connection_rate: Option<Rate>,
    on_reply: Vec<(Regex, ReplyAction, Duration)>,
    /// The limits that stay per node in a fleet.
    local: LocalLimits,
}

impl Rule {
    fn new(rule: &ShapingRule) -> Rule {
        let (mx, domains): (Vec<String>, Vec<String>) = rule
            .patterns
            .iter()
            .cloned()
            .partition(|p| p.starts_with("mx:"));
        Rule {
            label: rule.label(),
            domains,
            mx: mx.iter().map(|p| p["mx:".len()..].to_string()).collect(),
            connection_limit: rule.connection_limit,
            max_deliveries_per_connection: rule.max_deliveries_per_connection,
            max_message_rate: rule.max_message_rate,
            max_connection_rate: rule.max_connection_rate,
            on_reply: rule
                .on_reply
                .iter()
                .map(|r| {
                    let re = Regex::new(&r.pattern).expect("checked at config load");
                    (re, r.action, r.duration)
                })
                .collect(),
            local: rule.local,
        }
    }

    /// Whether the rule has `on_reply` reactions (replies are looked at only then).
    pub fn reacts(&self) -> bool {
        !self.on_reply.is_empty()
    }

    fn is_default(&self) -> bool {
        self.domains.is_empty() && self.mx.is_empty()
    }

    fn matches(&self, domain: &str, hosts: &[Host]) -> bool {
        let domain = domain.to_ascii_lowercase();
        let by_domain = self.domains.iter().any(|p| match p.strip_prefix('.') {
            Some(base) => domain == base || domain.ends_with(&format!(".{base}")),
            None => domain == *p,
        });
        let by_mx = !hosts.is_empty()
            && self.mx.iter().any(|glob| {
                hosts
                    .iter()
                    .all(|h| glob_match(glob, &h.name.to_ascii_lowercase()))
            });
        by_domain || by_mx
    }

    /// The limits in one line, for the console.
    pub fn limits(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.connection_limit {
            parts.push(format!("connections {n}"));
        }
        if let Some(r) = self.max_message_rate {
            parts.push(format!("messages {r}"));
        }
        if let Some(r) = self.max_connection_rate {
            parts.push(format!("connects {r}"));
        }
        if let Some(n) = self.max_deliveries_per_connection {
            parts.push(format!("{n}/connection"));
        }
        if parts.is_empty() {
            "no limits".into()
        } else {
            parts.join(", ")
        }
    }
}

/// `*` matches any run of characters (dots included); everything else literally.
fn glob_match(glob: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.');
    let parts: Vec<&str> = glob.split('*').collect();
    if parts.len() == 1 {
        return glob == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || !name[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Why a destination is not served now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suspension {
    pub until: UnixMillis,
    /// `operator`, or `rule <name>` with the reply that triggered it.
    pub by: String,
}

/// One site's live state (the counts are the limiter's; these are for the console).
pub struct Site {
    pub name: String,
    /// The rule last applied to one of its lists.
    pub rule: Mutex<Arc<Rule>>,
    pub connections: AtomicU32,
    pub throttled: AtomicU64,
    pub suspended: AtomicU64,
    pub sent: AtomicU64,
    /// An `on_reply` rule's lowered connection limit and its end.
    lowered: Mutex<Option<(u32, UnixMillis)>>,
    /// Until when the fleet's connection slots are taken as far as this node knows (a
    /// lease refused then): lists of the site wait without asking Redis again, until
    /// then or until one of this node's own sessions to the site ends.
    full_until: AtomicU64,
    /// Until when the site's message rate refused (Unix ms): no session asks before.
    rate_until: AtomicU64,
    rate_gate: tokio::sync::Mutex<()>,
    pub domains: Mutex<BTreeSet<String>>,
}

impl Site {
    /// The connection limit now: the rule's, or lower while an `on_reply` rule says so.
    pub fn connection_limit(&self, rule: &Rule) -> Option<u32> {
        let mut lowered = self.lowered.lock().expect("site lock");
        if lowered.is_some_and(|(_, until)| until <= now_ms()) {
            *lowered = None;
        }
        match (rule.connection_limit, *lowered) {
            (Some(a), Some((b, _))) => Some(a.min(b)),
            (a, b) => a.or(b.map(|(n, _)| n)),
        }
    }
}

/// What a list learns at the door.
pub enum Admission {
    Go(Ticket),
    Suspended(Suspension),
    /// Not now: back to the controller until then.
    Throttled(Throttle),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Throttle {
    /// Every connection slot is in use: wait for one to end.
    Connections,
    /// Connection rate: a new connection may open after this.
    ConnectionRate(Duration),
    /// Message rate: the next message may start after this.
    MessageRate(Duration),
}

impl Throttle {
    pub fn wait(self) -> Duration {
        match self {
            Throttle::Connections => LEASE_RECHECK,
            Throttle::ConnectionRate(d) | Throttle::MessageRate(d) => d,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Throttle::Connections => "connection limit",
            Throttle::ConnectionRate(_) => "connection rate",
            Throttle::MessageRate(_) => "message rate",
        }
    }
}

/// A session's right to run: the connection lease, and what each message must ask.
pub struct Ticket {
    pub site: Arc<Site>,
    pub rule: Arc<Rule>,
    _lease: Option<Lease>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.site.connections.fetch_sub(1, Ordering::Relaxed);
        self.site.full_until.store(0, Ordering::Relaxed);
    }
}

/// Before each message of a session.
pub enum Next {
    Send,
    /// The rule's `max_deliveries_per_connection` is reached: the rest on a new session.
    NewConnection,
    Throttled(Throttle),
    Suspended(Suspension),
}

/// Where a list's destination stands: its site and rule, resolved once.
pub struct Hop {
    pub hosts: Vec<Host>,
    pub site: Arc<Site>,
    pub rule: Arc<Rule>,
}

impl std::fmt::Debug for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hop({} by {})", self.site.name, self.rule.label)
    }
}

impl Hop {
    /// `site=… rule=…`, for every outcome line of the list.
    pub fn tag(&self) -> String {
        format!("site={} rule={}", self.site.name, self.rule.label)
    }
}

pub struct Shaping {
    rules: Vec<Arc<Rule>>,
    default: Arc<Rule>,
    limiter: Arc<dyn Limiter>,
    sites: Mutex<HashMap<String, Arc<Site>>>,
    /// Suspensions by domain or site name.
    holds: Mutex<HashMap<String, Suspension>>,
    /// The fleet's suspensions as last read from Redis (none without a fleet).
    fleet_holds: Mutex<HashMap<String, Suspension>>,
    fleet: Option<Arc<Fleet>>,
}

/// The limiter's key for a limit of `site`: under `local:` when the rule keeps it per node.
fn limit_key(local: bool, kind: &str, site: &str) -> String {
    let prefix = if local { mta_limit::LOCAL } else { "" };
    format!("{prefix}{kind}{site}")
}

impl Shaping {
    pub fn new(
        rules: &[ShapingRule],
        limiter: Arc<dyn Limiter>,
        fleet: Option<Arc<Fleet>>,
    ) -> Shaping {
        let rules: Vec<Arc<Rule>> = rules.iter().map(|r| Arc::new(Rule::new(r))).collect();
        let default = rules
            .iter()
            .find(|r| r.is_default())
            .cloned()
            .unwrap_or_else(|| Arc::new(Rule::new(&ShapingRule::default())));
        Shaping {
            rules,
            default,
            limiter,
            sites: Mutex::default(),
            holds: Mutex::default(),
            fleet_holds: Mutex::default(),
            fleet,
        }
    }

    /// The site of a resolved list and the rule that applies to it.
    pub fn hop(&self, list: &DomainList, relay: Option<&str>, hosts: Vec<Host>) -> Hop {
        let name = match relay {
            Some(relay) => relay.to_ascii_lowercase(),
            None => site_name(&hosts),
        };
        let rule = self
            .rules
            .iter()
            .find(|r| !r.is_default() && r.matches(list.domain.as_str(), &hosts))
            .unwrap_or(&self.default)
            .clone();
        let site = {
            let mut sites = self.sites.lock().expect("sites lock");
            sites
                .entry(name.clone())
                .or_insert_with(|| {
                    Arc::new(Site {
                        name,
                        rule: Mutex::new(rule.clone()),
                        connections: AtomicU32::new(0),
                        throttled: AtomicU64::new(0),
                        suspended: AtomicU64::new(0),
                        sent: AtomicU64::new(0),
                        lowered: Mutex::new(None),
                        full_until: AtomicU64::new(0),
                        rate_until: AtomicU64::new(0),
                        rate_gate: tokio::sync::Mutex::new(()),
                        domains: Mutex::default(),
                    })
                })
                .clone()
        };
        *site.rule.lock().expect("site lock") = rule.clone();
        let mut domains = site.domains.lock().expect("site lock");
        if domains.len() < SITE_DOMAINS {
            domains.insert(list.domain.as_str().to_string());
        }
        drop(domains);
        Hop { hosts, site, rule }
    }

    /// A suspension of the domain or the site in force now.
    pub fn suspension(&self, domain: &str, site: Option<&str>) -> Option<Suspension> {
        let domain = domain.to_ascii_lowercase();
        [&self.holds, &self.fleet_holds]
            .into_iter()
            .find_map(|map| {
                let mut holds = map.lock().expect("holds lock");
                if holds.is_empty() {
                    return None;
                }
                let now = now_ms();
                holds.retain(|_, s| s.until > now);
                holds
                    .get(&domain)
                    .or_else(|| site.and_then(|s| holds.get(s)))
                    .cloned()
            })
    }

    /// May a new session to the hop's site start now?
    pub async fn admit(&self, hop: &Hop, domain: &str) -> Admission {
        if let Some(s) = self.suspension(domain, Some(&hop.site.name)) {
            hop.site.suspended.fetch_add(1, Ordering::Relaxed);
            return Admission::Suspended(s);
        }
        let lease = match hop.site.connection_limit(&hop.rule) {
            None => None,
            Some(max) => {
                let shared = self.shares_connections(&hop.rule);
                if shared && hop.site.full_until.load(Ordering::Relaxed) > now_ms() {
                    return self.throttled(hop, Throttle::Connections);
                }
                let key = limit_key(hop.rule.local.connection_limit, "", &hop.site.name);
                match self.limiter.lease(&key, max).await {
                    Some(lease) => Some(lease),
                    None => {
                        if shared {
                            let until = now_ms() + LEASE_RECHECK.as_millis() as u64;
                            hop.site.full_until.store(until, Ordering::Relaxed);
                        }
                        return self.throttled(hop, Throttle::Connections);
                    }
                }
            }
        };
        if let Some(rate) = hop.rule.max_connection_rate {
            let key = limit_key(
                hop.rule.local.max_connection_rate,
                "connect ",
                &hop.site.name,
            );
            if let Verdict::RetryAfter(d) = self.limiter.check(&key, rate).await {
                return self.throttled(hop, Throttle::ConnectionRate(d));
            }
        }
        hop.site.connections.fetch_add(1, Ordering::Relaxed);
        Admission::Go(Ticket {
            site: hop.site.clone(),
            rule: hop.rule.clone(),
            _lease: lease,
        })
    }

    fn throttled(&self, hop: &Hop, why: Throttle) -> Admission {
        hop.site.throttled.fetch_add(1, Ordering::Relaxed);
        Admission::Throttled(why)
    }

    /// Before each message of a session: `sent` messages went over it already.
    pub async fn next(&self, ticket: &Ticket, domain: &str, sent: usize) -> Next {
        let rule = &ticket.rule;
        if let Some(s) = self.suspension(domain, Some(&ticket.site.name)) {
            ticket.site.suspended.fetch_add(1, Ordering::Relaxed);
            return Next::Suspended(s);
        }
        if rule
            .max_deliveries_per_connection
            .is_some_and(|n| sent >= n)
        {
            return Next::NewConnection;
        }
        if let Some(rate) = rule.max_message_rate {
            // One check of the site's rate at a time on this node, and every session
            // waits out a refusal one of them already got instead of asking again: with
            // a fleet, one round trip per refusal, not one per session.
            let site = &ticket.site;
            let _one_at_a_time = site.rate_gate.lock().await;
            let wait = site
                .rate_until
                .load(Ordering::Relaxed)
                .saturating_sub(now_ms());
            if wait > 0 {
                site.throttled.fetch_add(1, Ordering::Relaxed);
                return Next::Throttled(Throttle::MessageRate(Duration::from_millis(wait)));
            }
            let key = limit_key(rule.local.max_message_rate, "message ", &site.name);
            if let Verdict::RetryAfter(d) = self.limiter.check(&key, rate).await {
                site.rate_until
                    .store(now_ms() + d.as_millis() as u64, Ordering::Relaxed);
                site.throttled.fetch_add(1, Ordering::Relaxed);
                return Next::Throttled(Throttle::MessageRate(d));
            }
        }
        ticket.site.sent.fetch_add(1, Ordering::Relaxed);
        Next::Send
    }

    /// Whether a connection slot of the site is free as far as this process knows. A
    /// limit the fleet shares is never known free here (the slot may be another node's):
    /// its lists wait for their recheck time.
    pub fn has_free_connection(&self, site: &Site) -> bool {
        let rule = site.rule.lock().expect("site lock").clone();
        if self.shares_connections(&rule) {
            return false;
        }
        site.connection_limit(&rule)
            .is_none_or(|max| site.connections.load(Ordering::Relaxed) < max)
    }

    /// Whether the rule's connection limit is counted by the fleet (in Redis).
    pub fn shares_connections(&self, rule: &Rule) -> bool {
        self.fleet.is_some() && rule.connection_limit.is_some() && !rule.local.connection_limit
    }

    /// The receiver said `reply` (a full reply, `421 4.7.0 …`): the rule's `on_reply`
    /// reactions. Returns the suspension when one starts.
    pub fn on_reply(&self, site: &Site, rule: &Rule, reply: &str) -> Option<Suspension> {
        let (re, action, duration) = rule.on_reply.iter().find(|(re, _, _)| re.is_match(reply))?;
        let until = now_ms() + duration.as_millis() as u64;
        match *action {
            ReplyAction::Suspend => {
                let s = Suspension {
                    until,
                    by: format!("rule {} ({reply})", rule.label),
                };
                tracing::warn!(
                    "site {} suspended for {}s by rule {} (on_reply `{}` matched: {reply})",
                    site.name,
                    duration.as_secs(),
                    rule.label,
                    re.as_str()
                );
                let mut holds = self.holds.lock().expect("holds lock");
                holds.insert(site.name.clone(), s.clone());
                drop(holds);
                self.publish(&site.name, Some(&s));
                Some(s)
            }
            ReplyAction::ConnectionLimit(n) => {
                tracing::warn!(
                    "site {}: connection limit {n} for {}s by rule {} (on_reply `{}` matched: {reply})",
                    site.name,
                    duration.as_secs(),
                    rule.label,
                    re.as_str()
                );
                *site.lowered.lock().expect("site lock") = Some((n, until));
                None
            }
        }
    }

    /// The operator's `suspend` (of a domain or site, lower case); `resume` is `None`.
    pub fn set_hold(&self, target: &str, hold: Option<Suspension>) -> bool {
        let mut holds = self.holds.lock().expect("holds lock");
        match hold {
            Some(s) => holds.insert(target.to_string(), s).is_some(),
            None => holds.remove(target).is_some(),
        }
    }

    /// `(calls to Redis, of which for the limits)` by this process; none alone.
    pub fn redis_calls(&self) -> Option<(u64, u64)> {
        let f = self.fleet.as_ref()?;
        Some((f.round_trips(), f.limit_round_trips()))
    }

    /// Every suspension in force, by target: this node's, then the fleet's others.
    pub fn holds(&self) -> Vec<(String, Suspension)> {
        let now = now_ms();
        let mut merged: HashMap<String, Suspension> = HashMap::new();
        for map in [&self.fleet_holds, &self.holds] {
            let holds = map.lock().expect("holds lock");
            for (t, s) in holds.iter().filter(|(_, s)| s.until > now) {
                merged.insert(t.clone(), s.clone());
            }
        }
        let mut out: Vec<_> = merged.into_iter().collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Writes a suspension (or its end, `None`) to the fleet, in the background: a
    /// suspension is this node's at once, the fleet's within a round trip.
    pub fn publish(&self, target: &str, hold: Option<&Suspension>) {
        let Some(fleet) = self.fleet.clone() else {
            return;
        };
        if hold.is_none() {
            self.fleet_holds.lock().expect("holds lock").remove(target);
        }
        let (target, hold) = (target.to_string(), hold.cloned());
        tokio::spawn(async move {
            match hold {
                Some(s) => fleet.suspend(&target, s.until, &s.by).await,
                None => fleet.resume(&target).await,
            };
        });
    }

    /// Reads the fleet's suspensions every second (while Redis answers; meanwhile the
    /// last ones read stay, each until its own end). Runs forever.
    pub async fn sync_fleet(self: Arc<Self>) {
        let Some(fleet) = self.fleet.clone() else {
            return;
        };
        loop {
            if let Some(list) = fleet.suspensions().await {
                let now = now_ms();
                let fresh: HashMap<String, Suspension> = list
                    .into_iter()
                    .filter(|(_, until, _)| *until > now)
                    .map(|(target, until, by)| (target, Suspension { until, by }))
                    .collect();
                *self.fleet_holds.lock().expect("holds lock") = fresh;
            }
            tokio::time::sleep(FLEET_SYNC).await;
        }
    }

    /// The domains a target (a domain, or a site's name) stands for.
    pub fn domains_of(&self, target: &str) -> Vec<String> {
        let sites = self.sites.lock().expect("sites lock");
        match sites.get(target) {
            Some(site) => site
                .domains
                .lock()
                .expect("site lock")
                .iter()
                .cloned()
                .collect(),
            None => vec![target.to_string()],
        }
    }

    pub fn is_site(&self, target: &str) -> bool {
        self.sites.lock().expect("sites lock").contains_key(target)
    }

    pub fn sites(&self) -> Vec<Arc<Site>> {
        let sites = self.sites.lock().expect("sites lock");
        let mut out: Vec<_> = sites.values().cloned().collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// The site name of a resolved next hop: its host names, sorted, de-duplicated, joined.
pub fn site_name(hosts: &[Host]) -> String {
    let names: BTreeSet<String> = hosts
        .iter()
        .map(|h| h.name.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    names.into_iter().collect::<Vec<_>>().join(",")
}

/// `Instant` for a throttle's end (lists parked in the controller).
pub fn after(d: Duration) -> Instant {
    Instant::now() + d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> Host {
        Host {
            name: name.into(),
            addrs: vec![],
            port: 25,
            preference: 10,
        }
    }

    fn rule(patterns: &[&str]) -> Rule {
        Rule::new(&ShapingRule {
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            ..ShapingRule::default()
        })
    }

    #[test]
    fn rules_match_domains_subdomains_and_mx_globs() {
        let r = rule(&["gmail.com", ".example.com", "mx:*.google.com"]);
        assert!(r.matches("gmail.com", &[]));
        assert!(r.matches("Example.COM", &[]));
        assert!(r.matches("a.b.example.com", &[]));
        assert!(!r.matches("badexample.com", &[]));
        let google = [host("aspmx.l.google.com."), host("alt1.aspmx.l.google.com")];
        assert!(r.matches("googlemail.com", &google));
        let mixed = [host("aspmx.l.google.com"), host("backup.other.test")];
        assert!(!r.matches("mixed.test", &mixed), "every MX host must match");
        assert!(glob_match("mx*.a.test", "mx1.a.test"));
        assert!(!glob_match("mx*.a.test", "mx1.b.test"));
    }

    #[test]
    fn a_site_is_its_sorted_mx_set() {
        let a = [host("mx2.s.test."), host("MX1.s.test"), host("mx2.s.test")];
        assert_eq!(site_name(&a), "mx1.s.test,mx2.s.test");
    }
}
