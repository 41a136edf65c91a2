//! mta-dns — the next hop for a destination: MX, then A/AAAA, or the relay host.
//!
//! `NextHop::resolve(domain)` answers the list of hosts to try, in order, each with its
//! addresses and port:
//!
//! - with `[outbound] relay_host` set, that one host (a name is looked up as A/AAAA; a
//!   lookup failure is always temporary: the relay host is ours, not the recipient's);
//! - otherwise the domain's MX records by preference, randomised among equal preference
//!   (RFC 5321 5.1), each exchange's A/AAAA addresses, on `[outbound] port`;
//! - no MX records: the domain itself (implicit MX, RFC 5321 5.1);
//! - null MX (`MX 0 .`, RFC 7505): permanent failure 5.1.10;
//! - NXDOMAIN, or no MX and no address: permanent failure 5.1.2;
//! - SERVFAIL, REFUSED, timeouts: temporary failure 4.4.3 (retried);
//! - an address literal (`user@[192.0.2.1]`): that address.
//!
//! The resolver is `[dns] nameservers` when set (else /etc/resolv.conf), with
//! `[dns] timeout` per query; /etc/hosts is never consulted, so tests see only their DNS.
//! DNS list (DNSBL/DNSWL) queries for isesctl: [`dnslist`].
//! No queues, IPC or logging of its own. RFCs: 5321 section 5, 7505, 1035.

pub mod dnslist;
pub mod secure;

pub use hickory_resolver::TokioResolver;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData};
use mta_config::{DnsConfig, IpPreference, OutboundConfig};
use mta_types::Domain;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

/// One host to try: its name (for logs and `relay=`), its addresses in order, its port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub addrs: Vec<IpAddr>,
    pub port: u16,
    /// MX preference (0 for the relay host and implicit MX).
    pub preference: u16,
}

impl Host {
    /// `name[ip]:port`, as the logs write a relay.
    pub fn label(&self, ip: IpAddr) -> String {
        format!("{}[{}]:{}", self.name, ip, self.port)
    }

    pub fn socket_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.addrs.iter().map(|ip| SocketAddr::new(*ip, self.port))
    }
}

/// Why there is no host to try.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("{domain} does not accept mail (null MX)")]
    NullMx { domain: String },
    #[error("{domain}: no such domain")]
    NoSuchDomain { domain: String },
    #[error("{domain}: no MX and no address records")]
    NoAddress { domain: String },
    #[error("{name}: DNS lookup failed temporarily: {detail}")]
    Temporary { name: String, detail: String },
    #[error("bad destination {0}")]
    BadName(String),
}

impl DnsError {
    /// Retry later (true) or fail the recipients now (false).
    pub fn is_transient(&self) -> bool {
        matches!(self, DnsError::Temporary { .. })
    }

    /// The enhanced status code for the recipients' outcome (RFC 3463, 7505).
    pub fn status(&self) -> mta_types::Enhanced {
        use mta_types::Enhanced;
        match self {
            DnsError::NullMx { .. } => Enhanced::new(5, 1, 10),
            DnsError::NoSuchDomain { .. } | DnsError::NoAddress { .. } => Enhanced::new(5, 1, 2),
            DnsError::Temporary { .. } => Enhanced::new(4, 4, 3),
            DnsError::BadName(_) => Enhanced::new(5, 1, 2),
        }
    }
}

/// The next-hop resolver, built once per process from `[outbound]` and `[dns]`.
#[derive(Clone)]
pub struct NextHop {
    resolver: TokioResolver,
    relay: Option<(String, u16)>,
    port: u16,
    ip_preference: IpPreference,
}

impl fmt::Debug for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NextHop")
            .field("relay", &self.relay)
            .field("port", &self.port)
            .finish()
    }
}

/// The resolver every part of the suite uses: `[dns] nameservers` when set (UDP, then TCP,
/// each on its port), else /etc/resolv.conf; `[dns] timeout` per query, one attempt, never
/// /etc/hosts, names taken as absolute (ndots 0). For the next hop here and for
/// SPF/DKIM/DMARC lookups (`mta-auth`), so both ask the same servers the same way.
pub fn resolver_config(dns: &DnsConfig) -> Result<(ResolverConfig, ResolverOpts), DnsError> {
    let (config, mut opts) = if dns.nameservers.is_empty() {
        hickory_resolver::system_conf::read_system_conf().map_err(|e| DnsError::Temporary {
            name: "/etc/resolv.conf".into(),
            detail: e.to_string(),
        })?
    } else {
        let servers = dns
            .nameservers
            .iter()
            .map(|sa| {
                let mut udp = ConnectionConfig::udp();
                udp.port = sa.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = sa.port();
                NameServerConfig::new(sa.ip(), true, vec![udp, tcp])
            })
            .collect();
        (
            ResolverConfig::from_name_servers(servers),
            ResolverOpts::default(),
        )
    };
    opts.timeout = dns.timeout;
    opts.attempts = 1;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.ndots = 0;
    Ok((config, opts))
}

/// A resolver built from [`resolver_config`] (with hickory's answer cache).
pub fn resolver(dns: &DnsConfig) -> Result<TokioResolver, DnsError> {
    let (config, opts) = resolver_config(dns)?;
    build_resolver(config, opts)
}

fn build_resolver(config: ResolverConfig, opts: ResolverOpts) -> Result<TokioResolver, DnsError> {
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    *builder.options_mut() = opts;
    builder.build().map_err(|e| DnsError::Temporary {
        name: "resolver".into(),
        detail: e.to_string(),
    })
}

impl NextHop {
    pub fn new(outbound: &OutboundConfig, dns: &DnsConfig) -> Result<NextHop, DnsError> {
        let (config, mut opts) = resolver_config(dns)?;
        // Both families, ordered afterwards by `ip_preference` (hickory's default asks
        // AAAA only when there is no A).
        opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
        let resolver = build_resolver(config, opts)?;
        Ok(NextHop {
            resolver,
            relay: outbound.relay_host.as_deref().map(split_host_port),
            port: outbound.port,
            ip_preference: outbound.ip_preference,
        })
    }

    /// The relay host as configured (`host:port`), when set.
    pub fn relay_host(&self) -> Option<String> {
        self.relay.as_ref().map(|(h, p)| format!("{h}:{p}"))
    }

    /// The hosts to try for `domain`, best first.
    pub async fn resolve(&self, domain: &Domain) -> Result<Vec<Host>, DnsError> {
        self.resolve_traced(domain, false).await
    }

    /// [`NextHop::resolve`]; with `trace` (the `debug_tcp_resolver` knob) every DNS query
    /// and its answer — each record with its TTL, or the error — is logged (target
    /// [`mta_types::DEBUG_TARGET`], in the caller's span). TTLs of answers from the
    /// resolver's cache are what is left of them.
    pub async fn resolve_traced(
        &self,
        domain: &Domain,
        trace: bool,
    ) -> Result<Vec<Host>, DnsError> {
        if let Some((host, port)) = &self.relay {
            let addrs = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => self.addresses(host, trace).await.map_err(|e| match e {
                    t @ DnsError::Temporary { .. } => t,
                    other => DnsError::Temporary {
                        name: host.clone(),
                        detail: format!("relay host: {other}"),
                    },
                })?,
            };
            return Ok(vec![Host {
                name: host.clone(),
                addrs,
                port: *port,
                preference: 0,
            }]);
        }
        if domain.is_address_literal() {
            let inner = domain
                .as_str()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let inner = inner
                .strip_prefix("IPv6:")
                .or_else(|| inner.strip_prefix("ipv6:"))
                .unwrap_or(inner);
            let ip: IpAddr = inner
                .parse()
                .map_err(|_| DnsError::BadName(domain.to_string()))?;
            return Ok(vec![Host {
                name: domain.to_string(),
                addrs: vec![ip],
                port: self.port,
                preference: 0,
            }]);
        }
        self.mx_hosts(domain.as_str(), trace).await
    }

    async fn mx_hosts(&self, domain: &str, trace: bool) -> Result<Vec<Host>, DnsError> {
        let name = fqdn(domain)?;
        let lookup = self.resolver.mx_lookup(name.clone());
        let answer = traced(domain, "MX", &name, trace, lookup, |l| l.answers()).await;
        let mut exchanges: Vec<(u16, String)> = match answer {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                    _ => None,
                })
                .collect(),
            Err(e) if e.is_nx_domain() => {
                return Err(DnsError::NoSuchDomain {
                    domain: domain.into(),
                })
            }
            Err(e) if e.is_no_records_found() => Vec::new(),
            Err(e) => return Err(temporary(domain, &e)),
        };
        if exchanges.is_empty() {
            // Implicit MX: the domain itself.
            let addrs = self.addresses(domain, trace).await.map_err(|e| match e {
                DnsError::NoAddress { .. } => DnsError::NoAddress {
                    domain: domain.into(),
                },
                other => other,
            })?;
            return Ok(vec![Host {
                name: domain.into(),
                addrs,
                port: self.port,
                preference: 0,
            }]);
        }
        if exchanges.iter().any(|(_, ex)| ex == "." || ex.is_empty()) {
            return Err(DnsError::NullMx {
                domain: domain.into(),
            });
        }
        order_by_preference(&mut exchanges, random_seed());
        let mut hosts = Vec::new();
        let mut last_err = None;
        for (preference, exchange) in exchanges {
            let name = exchange.trim_end_matches('.').to_string();
            match self.addresses(&name, trace).await {
                Ok(addrs) => hosts.push(Host {
                    name,
                    addrs,
                    port: self.port,
                    preference,
                }),
                Err(e) => last_err = Some(e),
            }
        }
        if hosts.is_empty() {
            // No MX host has an address: retry later rather than bounce (the domain's
            // administrators may be mid-change).
            let detail = last_err.map(|e| e.to_string()).unwrap_or_default();
            return Err(DnsError::Temporary {
                name: domain.into(),
                detail: format!("no MX host has an address ({detail})"),
            });
        }
        Ok(hosts)
    }

    /// A and AAAA addresses of `host`, ordered (and filtered) by `[outbound] ip_preference`.
    async fn addresses(&self, host: &str, trace: bool) -> Result<Vec<IpAddr>, DnsError> {
        let name = fqdn(host)?;
        let lookup = self.resolver.lookup_ip(name.clone());
        let answer = traced(host, "A/AAAA", &name, trace, lookup, |l| {
            l.as_lookup().answers()
        })
        .await;
        match answer {
            Ok(lookup) => {
                let mut addrs: Vec<IpAddr> = lookup.iter().collect();
                order_addresses(&mut addrs, self.ip_preference);
                if addrs.is_empty() {
                    Err(DnsError::NoAddress {
                        domain: host.into(),
                    })
                } else {
                    Ok(addrs)
                }
            }
            Err(e) if e.is_nx_domain() => Err(DnsError::NoSuchDomain {
                domain: host.into(),
            }),
            Err(e) if e.is_no_records_found() => Err(DnsError::NoAddress {
                domain: host.into(),
            }),
            Err(e) => Err(temporary(host, &e)),
        }
    }
}

/// Sorts (stable: the resolver's order within a family) and filters by preference.
fn order_addresses(addrs: &mut Vec<IpAddr>, preference: IpPreference) {
    match preference {
        IpPreference::Ipv6 => addrs.sort_by_key(|ip| ip.is_ipv4()),
        IpPreference::Ipv4 => addrs.sort_by_key(|ip| ip.is_ipv6()),
        IpPreference::Ipv4Only => addrs.retain(|ip| ip.is_ipv4()),
        IpPreference::Ipv6Only => addrs.retain(|ip| ip.is_ipv6()),
    }
    let mut seen = std::collections::HashSet::new();
    addrs.retain(|ip| seen.insert(*ip));
}

/// Awaits `lookup`, the `kind` query for `name` (`host` as the caller wrote it); with
/// `trace` (`debug_tcp_resolver`), logs the query before it and the answer after it
/// (`records` picks the answer's records).
async fn traced<T>(
    host: &str,
    kind: &str,
    name: &Name,
    trace: bool,
    lookup: impl std::future::Future<Output = Result<T, NetError>>,
    records: impl Fn(&T) -> &[hickory_resolver::proto::rr::Record],
) -> Result<T, NetError> {
    if trace {
        query_line(kind, name);
    }
    let answer = lookup.await;
    if trace {
        let shown = answer.as_ref().map(&records);
        answer_lines(host, kind, shown.map_err(|e| e as &dyn fmt::Display));
    }
    answer
}

fn query_line(kind: &str, name: &Name) {
    tracing::info!(target: mta_types::DEBUG_TARGET, "debug_tcp_resolver: query {kind} {name}");
}

/// One line per answer record (name, TTL, type, data), or one for the error.
fn answer_lines(
    name: &str,
    kind: &str,
    answer: Result<&[hickory_resolver::proto::rr::Record], &dyn fmt::Display>,
) {
    match answer {
        Ok([]) => {
            tracing::info!(target: mta_types::DEBUG_TARGET, "debug_tcp_resolver: answer {kind} {name}: no records")
        }
        Ok(records) => {
            for r in records {
                tracing::info!(
                    target: mta_types::DEBUG_TARGET,
                    "debug_tcp_resolver: answer {} ttl={} {} {}",
                    r.name,
                    r.ttl,
                    r.record_type(),
                    r.data
                );
            }
        }
        Err(e) => {
            tracing::info!(target: mta_types::DEBUG_TARGET, "debug_tcp_resolver: answer {kind} {name}: {e}")
        }
    }
}

fn temporary(name: &str, e: &NetError) -> DnsError {
    DnsError::Temporary {
        name: name.into(),
        detail: e.to_string(),
    }
}

fn fqdn(name: &str) -> Result<Name, DnsError> {
    Name::from_utf8(format!("{}.", name.trim_end_matches('.')))
        .map_err(|_| DnsError::BadName(name.into()))
}

/// `host:port` or `[v6]:port` (validated by mta-config) → (host, port).
fn split_host_port(s: &str) -> (String, u16) {
    let (host, port) = s.rsplit_once(':').unwrap_or((s, "25"));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host.to_string(), port.parse().unwrap_or(25))
}

fn random_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // splitmix64 of the clock: enough to spread equal-preference MX hosts.
    let mut z = nanos.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Sorts by preference, shuffling hosts of equal preference (RFC 5321 5.1).
fn order_by_preference(exchanges: &mut [(u16, String)], seed: u64) {
    let mut state = seed | 1;
    let mut keyed: Vec<(u16, u64, String)> = exchanges
        .iter()
        .map(|(p, n)| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (*p, state, n.clone())
        })
        .collect();
    keyed.sort();
    for (slot, (p, _, n)) in exchanges.iter_mut().zip(keyed) {
        *slot = (p, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_order_with_shuffled_ties() {
        let mut seen_first = std::collections::HashSet::new();
        for seed in 0..64u64 {
            let mut ex = vec![
                (20, "c".to_string()),
                (10, "a".to_string()),
                (10, "b".to_string()),
            ];
            order_by_preference(&mut ex, seed.wrapping_mul(0x9e37_79b9));
            assert_eq!(ex[2], (20, "c".to_string()));
            seen_first.insert(ex[0].1.clone());
        }
        assert_eq!(seen_first.len(), 2, "equal preferences are randomised");
    }

    #[test]
    fn address_order_follows_the_preference() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let run = |p| {
            let mut a = vec![v4, v6, v4];
            order_addresses(&mut a, p);
            a
        };
        assert_eq!(run(IpPreference::Ipv6), vec![v6, v4]);
        assert_eq!(run(IpPreference::Ipv4), vec![v4, v6]);
        assert_eq!(run(IpPreference::Ipv4Only), vec![v4]);
        assert_eq!(run(IpPreference::Ipv6Only), vec![v6]);
    }

    #[test]
    fn relay_host_forms() {
        assert_eq!(
            split_host_port("relay.example:587"),
            ("relay.example".into(), 587)
        );
        assert_eq!(
            split_host_port("[2001:db8::1]:25"),
            ("2001:db8::1".into(), 25)
        );
        assert_eq!(
            split_host_port("192.0.2.1:2525"),
            ("192.0.2.1".into(), 2525)
        );
    }

    #[test]
    fn classification() {
        let d = || "x.test".to_string();
        assert_eq!(
            DnsError::NullMx { domain: d() }.status().to_string(),
            "5.1.10"
        );
        assert!(!DnsError::NoSuchDomain { domain: d() }.is_transient());
        assert!(DnsError::Temporary {
            name: d(),
            detail: String::new()
        }
        .is_transient());
    }
}
