//! `[inbound] dnsbl` and `dnswl`: DNS list sites in Postfix's `postscreen_dnsbl_sites`
//! syntax, `zone[=filter][*weight]`:
//!
//! - `zone`: the list's domain; the client `192.0.2.1` is looked up as
//!   `1.2.0.192.<zone>` (IPv6: 32 reversed nibbles), A record.
//! - `=filter` (optional): only answers that match count, `d.d.d.d` where each `d` is a
//!   number or a pattern in `[]` of `;`-separated numbers and `n..m` ranges
//!   (`127.0.0.[2..11]`, `127.0.[0;1].[2..3;9]`). Without a filter any answer in
//!   127.0.0.0/8 counts, except 127.255.255.0/24 (what Spamhaus answers for a refused
//!   query: an error, not a listing).
//! - `*weight` (optional, default 1): added to the client's score when the site lists it;
//!   negative for an allowlist.

use crate::values::parse_str;
use crate::ValueError;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::Ipv4Addr;

/// One entry of `dnsbl` or `dnswl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsListSite {
    /// The list's domain, lower case, no trailing dot.
    pub zone: String,
    /// Answers that count (None: any listing answer).
    pub filter: Option<AddrFilter>,
    pub weight: i32,
    /// As written, for `show config` and logs.
    pub text: String,
}

/// `d.d.d.d` with a set of allowed values per octet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrFilter {
    /// Per octet: inclusive ranges.
    octets: [Vec<(u8, u8)>; 4],
}

impl AddrFilter {
    pub fn matches(&self, ip: Ipv4Addr) -> bool {
        ip.octets()
            .iter()
            .zip(&self.octets)
            .all(|(o, ranges)| ranges.iter().any(|(lo, hi)| (lo..=hi).contains(&o)))
    }
}

impl DnsListSite {
    /// Whether the list's answer for a client (its A records; empty: not listed) counts.
    pub fn lists(&self, answer: &[Ipv4Addr]) -> bool {
        answer.iter().any(|ip| match &self.filter {
            Some(filter) => filter.matches(*ip),
            None => ip.octets()[0] == 127 && ip.octets()[..3] != [127, 255, 255],
        })
    }
}

impl fmt::Display for DnsListSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Which part of a DNS list site is wrong (in [`ValueError::DnsListSite`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiteFault {
    #[error("the weight is not an integer")]
    Weight,
    #[error("the zone is not a domain name")]
    Zone,
    #[error("the filter needs four octets")]
    FilterOctets,
    #[error("`{0}` is not a number from 0 to 255")]
    Octet(String),
    #[error("the range `{0}` is empty")]
    EmptyRange(String),
}

impl std::str::FromStr for DnsListSite {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<DnsListSite, ValueError> {
        let text = s.trim();
        let bad = |why| ValueError::DnsListSite {
            value: s.to_string(),
            why,
        };
        let (rest, weight) = match text.rsplit_once('*') {
            Some((rest, w)) => (
                rest,
                w.trim()
                    .parse::<i32>()
                    .map_err(|_| bad(SiteFault::Weight))?,
            ),
            None => (text, 1),
        };
        let (zone, filter) = match rest.split_once('=') {
            Some((zone, filter)) => (zone, Some(parse_filter(filter.trim()).map_err(bad)?)),
            None => (rest, None),
        };
        let zone = zone.trim().trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if zone.is_empty() || zone.len() > 180 || !zone.split('.').all(label_ok) {
            return Err(bad(SiteFault::Zone));
        }
        Ok(DnsListSite {
            zone,
            filter,
            weight,
            text: text.to_string(),
        })
    }
}

/// `d.d.d.d`, each `d` a number or `[n;n..m;…]`.
fn parse_filter(s: &str) -> Result<AddrFilter, SiteFault> {
    let mut parts = Vec::with_capacity(4);
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            '.' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    if parts.len() != 4 {
        return Err(SiteFault::FilterOctets);
    }
    let mut octets: [Vec<(u8, u8)>; 4] = Default::default();
    for (slot, part) in octets.iter_mut().zip(parts) {
        *slot = parse_octet(part.trim())?;
    }
    Ok(AddrFilter { octets })
}

fn parse_octet(s: &str) -> Result<Vec<(u8, u8)>, SiteFault> {
    let number = |n: &str| {
        n.trim()
            .parse::<u8>()
            .map_err(|_| SiteFault::Octet(n.to_string()))
    };
    let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) else {
        let n = number(s)?;
        return Ok(vec![(n, n)]);
    };
    inner
        .split(';')
        .map(|item| match item.split_once("..") {
            Some((lo, hi)) => {
                let (lo, hi) = (number(lo)?, number(hi)?);
                if lo > hi {
                    return Err(SiteFault::EmptyRange(item.to_string()));
                }
                Ok((lo, hi))
            }
            None => number(item).map(|n| (n, n)),
        })
        .collect()
}

/// A list of sites, each error pointing at its own element.
pub fn site_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<DnsListSite>, D::Error> {
    struct Site(DnsListSite);
    impl<'de> Deserialize<'de> for Site {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            parse_str(d, |s| s.parse().map(Site))
        }
    }
    Ok(Vec::<Site>::deserialize(d)?
        .into_iter()
        .map(|s| s.0)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(s: &str) -> DnsListSite {
        s.parse().unwrap()
    }

    #[test]
    fn postscreen_syntax() {
        let s = site("zen.example*2");
        assert_eq!(
            (s.zone.as_str(), s.weight, s.filter.is_none()),
            ("zen.example", 2, true)
        );
        let s = site("BL.Example.=127.0.0.[2..11]*1");
        assert_eq!(s.zone, "bl.example");
        assert!(s.lists(&["127.0.0.2".parse().unwrap()]));
        assert!(s.lists(&["127.0.0.11".parse().unwrap()]));
        assert!(!s.lists(&["127.0.0.12".parse().unwrap()]));
        assert!(!s.lists(&[]));
        let s = site("list.dnswl.example=127.0.[0;2..15].[2..3;9]*-5");
        assert_eq!(s.weight, -5);
        assert!(s.lists(&["127.0.0.9".parse().unwrap()]));
        assert!(s.lists(&["127.0.15.2".parse().unwrap()]));
        assert!(!s.lists(&["127.0.1.2".parse().unwrap()]));
        assert_eq!(site("plain.example").weight, 1);
    }

    #[test]
    fn without_a_filter_error_codes_do_not_list() {
        let s = site("zen.example");
        assert!(s.lists(&["127.0.0.4".parse().unwrap()]));
        assert!(!s.lists(&["127.255.255.254".parse().unwrap()]));
        assert!(!s.lists(&["10.0.0.1".parse().unwrap()]));
    }

    #[test]
    fn bad_sites_say_why() {
        for bad in [
            "",
            "*2",
            "zen.example*x",
            "zen.example=127.0.0*1",
            "zen.example=127.0.0.[11..2]",
            "zen.example=127.0.0.256",
            "zen example",
            "zen.example=127.0.0.[2..x]",
        ] {
            let e = bad.parse::<DnsListSite>().unwrap_err();
            assert!(e.to_string().contains("not a DNS list site"), "{bad}: {e}");
        }
    }
}
