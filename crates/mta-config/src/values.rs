//! Value syntaxes shared by several keys: durations, sizes, CIDR networks, socket addresses,
//! domains, mail addresses and `host:port`. Each fails inside `Deserialize`, so toml reports the
//! value's own position.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use mta_types::{Address, Domain};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::ValueError;

pub(crate) const DURATION_HELP: &str =
    "a duration: seconds as an integer, or a string such as \"500ms\", \"30s\", \"5m\", \"1h\", \"2d\" or \"1h30m\"";

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"2d"`, `"1h30m"`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    let bad = || ValueError::Duration(s.to_string());
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<u64>().map(Duration::from_secs).map_err(|_| bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
            "d" => Duration::from_secs(n.checked_mul(86400).ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Parses a size: an integer number of bytes, or a string with a binary unit:
/// `"512"`, `"512B"`, `"10K"`/`"10KB"`/`"10KiB"` (×1024), `"25M"`/`"25MB"`/`"25MiB"` (×1024²),
/// `"1G"`/`"1GB"`/`"1GiB"` (×1024³). Units are case-insensitive.
pub fn parse_size(s: &str) -> Result<u64, ValueError> {
    let bad = || ValueError::Size(s.to_string());
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let factor: u64 = match t[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

/// Deserializes a string and parses it inside the visitor, so that toml gives a parse error the
/// position of this very value (an element of an array, not the whole array). `parse`'s
/// error is the message (a [`ValueError`], or text for a check of one key's own).
pub fn parse_str<'de, D, T, E>(
    d: D,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    E: fmt::Display,
{
    struct StrVisitor<F>(F);
    impl<T, E: fmt::Display, F: FnOnce(&str) -> Result<T, E>> Visitor<'_> for StrVisitor<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<DeErr: de::Error>(self, v: &str) -> Result<T, DeErr> {
            (self.0)(v).map_err(DeErr::custom)
        }
    }
    d.deserialize_str(StrVisitor(parse))
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(DURATION_HELP)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(Duration::from_secs)
            .map_err(|_| E::custom(format!("`{v}` is negative; {DURATION_HELP}")))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }
}

/// A `Duration` as written in the file (see `parse_duration`).
pub struct DurationValue(pub Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor).map(DurationValue)
    }
}

pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

/// A non-empty list of durations (`outbound.retry`).
pub fn duration_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let list: Vec<DurationValue> = Vec::deserialize(d)?;
    if list.is_empty() {
        return Err(de::Error::custom("must list at least one interval"));
    }
    Ok(list.into_iter().map(|v| v.0).collect())
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size: bytes as an integer, or a string such as \"10K\", \"25M\", \"1G\"")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("`{v}` is negative")))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse_size(v).map_err(E::custom)
    }
}

/// The keys of `durations` must not be zero (a zero timeout or interval would fire at once,
/// or spin): the first that is, as a `(key, message)` error.
pub(crate) fn not_zero(
    durations: &[(&'static str, Duration)],
) -> Result<(), (&'static str, String)> {
    match durations.iter().find(|(_, d)| d.is_zero()) {
        Some((key, _)) => Err((key, "must be more than 0".into())),
        None => Ok(()),
    }
}

pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(SizeVisitor)
}

/// A count that must be at least 1 (`max_handlers`).
pub fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if n == 0 {
        return Err(de::Error::custom("must be at least 1"));
    }
    Ok(n)
}

/// `s` (trimmed) as a `T`, or as a bare IP address that `from_ip` makes into one.
fn or_bare_ip<T: std::str::FromStr>(s: &str, from_ip: impl FnOnce(IpAddr) -> T) -> Option<T> {
    let t = s.trim();
    t.parse().ok().or_else(|| t.parse().ok().map(from_ip))
}

/// A CIDR network (`10.0.0.0/8`, `::1/128`); a bare address means that one host.
pub struct Cidr(pub IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, |s| {
            or_bare_ip(s, IpNet::from)
                .map(Cidr)
                .ok_or_else(|| ValueError::Cidr(s.to_string()))
        })
    }
}

/// `ip:port` or `[ipv6]:port`.
pub struct SocketValue(pub SocketAddr);

impl<'de> Deserialize<'de> for SocketValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, |s| {
            s.trim()
                .parse::<SocketAddr>()
                .map(SocketValue)
                .map_err(|_| ValueError::Socket(s.to_string()))
        })
    }
}

/// A name server: `ip:port`, `[ipv6]:port`, or a bare IP address meaning port 53.
pub struct NameserverValue(pub SocketAddr);

impl<'de> Deserialize<'de> for NameserverValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, |s| {
            or_bare_ip(s, |ip| SocketAddr::new(ip, 53))
                .map(NameserverValue)
                .ok_or_else(|| ValueError::Nameserver(s.to_string()))
        })
    }
}

/// `ip:port`, `[ipv6]:port`, or `""` (off).
pub fn optional_socket<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    parse_str(d, |s| {
        let t = s.trim();
        if t.is_empty() {
            return Ok(None);
        }
        t.parse::<SocketAddr>()
            .map(Some)
            .map_err(|_| ValueError::SocketOrOff(s.to_string()))
    })
}

pub fn socket_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    Ok(Vec::<SocketValue>::deserialize(d)?
        .into_iter()
        .map(|v| v.0)
        .collect())
}

pub fn nameserver_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    Ok(Vec::<NameserverValue>::deserialize(d)?
        .into_iter()
        .map(|v| v.0)
        .collect())
}

/// A domain name, parsed by `mta_types::Domain` (lower-cased, no trailing dot).
pub struct DomainValue(pub Domain);

impl<'de> Deserialize<'de> for DomainValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, |s| {
            s.parse::<Domain>()
                .map(DomainValue)
                .map_err(|source| ValueError::Domain {
                    value: s.to_string(),
                    source,
                })
        })
    }
}

/// A mail address, parsed by `mta_types::Address`.
pub struct AddressValue(pub Address);

pub fn parse_address(s: &str) -> Result<Address, ValueError> {
    s.parse::<Address>().map_err(|source| ValueError::Address {
        value: s.to_string(),
        source,
    })
}

impl<'de> Deserialize<'de> for AddressValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, |s| parse_address(s).map(AddressValue))
    }
}

/// `outbound.relay_host`: `host:port`, where host is a domain name, an IPv4 address, or
/// `[ipv6]`. An empty string means "none" (MX lookup).
pub fn relay_host<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    parse_str(d, |s| {
        let t = s.trim();
        if t.is_empty() {
            Ok(None)
        } else if valid_host_port(t) {
            Ok(Some(t.to_string()))
        } else {
            Err(ValueError::RelayHost(s.to_string()))
        }
    })
}

fn valid_host_port(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) || host.starts_with('[') {
        return false;
    }
    !host.contains(':')
        && host
            .parse::<Domain>()
            .is_ok_and(|d| !d.is_address_literal())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        for bad in ["", "5x", "m", "1.5h", "-3s", "5 m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("25M").unwrap(), 26_214_400);
        assert_eq!(parse_size("25MiB").unwrap(), 26_214_400);
        assert_eq!(parse_size("10kb").unwrap(), 10_240);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert!(parse_size("25X").is_err());
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn host_port() {
        for ok in [
            "smtp.example.com:25",
            "192.0.2.1:587",
            "[2001:db8::1]:25",
            "relay:2525",
        ] {
            assert!(valid_host_port(ok), "{ok}");
        }
        for bad in [
            "smtp.example.com",
            "smtp.example.com:",
            "host:0",
            "host:99999",
            "2001:db8::1:25",
            "[x]:25",
            "a b:25",
        ] {
            assert!(!valid_host_port(bad), "{bad}");
        }
    }
}
