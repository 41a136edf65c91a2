//! DNS list queries (DNSBL, DNSWL; RFC 5782): the A records of a client's reversed address
//! under a list's zone. `192.0.2.1` under `bl.example` is `1.2.0.192.bl.example`; an IPv6
//! address is its 32 nibbles, least significant first. The resolver's own cache keeps
//! each answer for its TTL (and NXDOMAIN for the zone's negative TTL), bounded by its
//! cache size, so repeated clients cost no query.

use crate::{fqdn, temporary, DnsError};
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

/// The name to query for `ip` under `zone` (an IPv4-mapped IPv6 address as its IPv4).
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let mut name = String::with_capacity(80);
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            let _ = write!(name, "{d}.{c}.{b}.{a}.");
        }
        IpAddr::V6(v6) => {
            for byte in v6.octets().iter().rev() {
                let _ = write!(name, "{:x}.{:x}.", byte & 0xf, byte >> 4);
            }
        }
    }
    name.push_str(zone.trim_end_matches('.'));
    name
}

/// The list's answer for `ip`: its A records; empty when the name does not exist or has
/// no A record (not listed). Any other failure (timeout, SERVFAIL) is an error.
pub async fn query(
    resolver: &TokioResolver,
    ip: IpAddr,
    zone: &str,
) -> Result<Vec<Ipv4Addr>, DnsError> {
    let name = query_name(ip, zone);
    match resolver.ipv4_lookup(fqdn(&name)?).await {
        Ok(lookup) => Ok(lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()),
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(temporary(&name, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversed_names() {
        let v4: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(query_name(v4, "bl.test"), "2.0.0.127.bl.test");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(query_name(mapped, "bl.test."), "1.2.0.192.bl.test");
        // RFC 5782 section 2.4's example.
        let v6: IpAddr = "2001:db8:1:2:3:4:567:89ab".parse().unwrap();
        assert_eq!(
            query_name(v6, "bl.example"),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.example"
        );
    }
}
