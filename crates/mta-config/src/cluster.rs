//! `[cluster]` — running as one node of a fleet: the Redis that holds what the nodes share
//! (limits, suspensions, status), this node's name, and the secret fleet peers authenticate
//! a hand-off with. Everything is checked at load; nothing here connects to Redis.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::{values, ValueError};

/// `[cluster]` as loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    /// `redis`: `"redis://[user:pass@]host:port[/db]"`, `"rediss://…"` (TLS) or
    /// `"redis+unix:///path"`; `None` (`""`): a single node, every limit in memory.
    pub redis: Option<RedisUrl>,
    /// `node`: this node's name in the fleet, unique among the nodes; `""` in the file
    /// means the system's host name (not the `hostname` key, which the nodes of a fleet
    /// often share).
    pub node: String,
    /// `peer_password_file`: the file holding the secret fleet peers authenticate a
    /// hand-off with (absolute; relative to the config file's folder in the file).
    pub peer_password_file: Option<PathBuf>,
    /// The secret read from `peer_password_file` at load (surrounding whitespace cut).
    pub peer_password: Option<PeerPassword>,
    /// `timeout`: the longest any one Redis call may take before the node goes on with
    /// local limits. Default 250ms.
    pub timeout: Duration,
    /// `heartbeat`: how often this node publishes its status; a node whose heartbeat is
    /// older than three of these is DOWN. Default 5s.
    pub heartbeat: Duration,
    /// `lease_ttl`: how long a fleet connection lease lives unless its holder renews it
    /// (every third of it): a dead node's connections are free again after this. Default 30s.
    pub lease_ttl: Duration,
    /// `peer_address`: `host:port` of the SMTP listener fleet peers hand mail to this
    /// node on (`tell smtpmta drain to <node>` on another node), published in the
    /// heartbeat. `None` (`""`): the first `[inbound] listen` address
    /// ([`crate::Config::peer_smtp_address`]).
    pub peer_address: Option<String>,
}

impl ClusterConfig {
    /// How long a heartbeat stays in Redis: three intervals, so one late beat is no DOWN.
    pub fn heartbeat_ttl(&self) -> Duration {
        self.heartbeat * 3
    }
}

/// A Redis URL, checked for its scheme and host at load; `Display` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL as written, password included: for the Redis client only.
    pub fn as_secret_str(&self) -> &str {
        &self.0
    }

    /// True for `rediss://` (TLS).
    pub fn is_tls(&self) -> bool {
        self.0.starts_with("rediss://")
    }

    fn parse(s: &str) -> Result<RedisUrl, ValueError> {
        let bad = |why| ValueError::RedisUrl {
            value: s.to_string(),
            why,
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
        match scheme {
            "redis" | "rediss" => {
                let authority = rest.split('/').next().unwrap_or("");
                let host = authority.rsplit('@').next().unwrap_or("");
                if host.is_empty() || host.starts_with(':') {
                    return Err(bad("no host"));
                }
                if let Some((_, port)) = host.rsplit_once(':').filter(|_| !host.ends_with(']')) {
                    port.parse::<u16>().map_err(|_| bad("bad port"))?;
                }
            }
            "redis+unix" | "unix" if rest.starts_with('/') => {}
            "redis+unix" | "unix" => return Err(bad("the socket path must be absolute")),
            _ => return Err(bad("unknown scheme")),
        }
        Ok(RedisUrl(s.to_string()))
    }
}

impl fmt::Display for RedisUrl {
    /// The URL with any password replaced by `***`, for logs and the console.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return f.write_str(&self.0);
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                write!(f, "{scheme}://{user}:***@{host}{path}")
            }
            None => f.write_str(&self.0),
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

/// The fleet peers' shared secret; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerPassword(String);

impl PeerPassword {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PeerPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerPassword(***)")
    }
}

/// The section as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawCluster {
    redis: String,
    node: String,
    peer_password_file: String,
    #[serde(deserialize_with = "values::duration")]
    timeout: Duration,
    #[serde(deserialize_with = "values::duration")]
    heartbeat: Duration,
    #[serde(deserialize_with = "values::duration")]
    lease_ttl: Duration,
    peer_address: String,
}

impl Default for RawCluster {
    fn default() -> Self {
        RawCluster {
            redis: String::new(),
            node: String::new(),
            peer_password_file: String::new(),
            timeout: Duration::from_millis(250),
            heartbeat: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(30),
            peer_address: String::new(),
        }
    }
}

impl RawCluster {
    /// Validates the section; `Err` is `(key, message)` for `cluster.key`.
    pub(crate) fn into_config(self, base: &Path) -> Result<ClusterConfig, (&'static str, String)> {
        let redis = match self.redis.trim() {
            "" => None,
            url => Some(RedisUrl::parse(url).map_err(|e| ("redis", e.to_string()))?),
        };
        let node = match self.node.trim() {
            "" => system_hostname(),
            name => name.to_string(),
        };
        if node.is_empty() || !node.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(("node", format!("`{node}` is not a node name (no spaces)")));
        }
        crate::values::not_zero(&[
            ("timeout", self.timeout),
            ("heartbeat", self.heartbeat),
            ("lease_ttl", self.lease_ttl),
        ])?;
        let (peer_password_file, peer_password) = match self.peer_password_file.trim() {
            "" => (None, None),
            file => {
                let path = crate::normalize(&base.join(file));
                let secret =
                    read_secret(&path).map_err(|e| ("peer_password_file", e.to_string()))?;
                (Some(path), Some(secret))
            }
        };
        let peer_address = match self.peer_address.trim() {
            "" => None,
            addr => Some(check_host_port(addr).map_err(|e| ("peer_address", e.to_string()))?),
        };
        Ok(ClusterConfig {
            peer_address,
            redis,
            node,
            peer_password_file,
            peer_password,
            timeout: self.timeout,
            heartbeat: self.heartbeat,
            lease_ttl: self.lease_ttl,
        })
    }
}

/// `host:port` (host a name, an IPv4 address or `[ipv6]`).
fn check_host_port(addr: &str) -> Result<String, ValueError> {
    let bad = || ValueError::HostPort(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let name_ok = !host.is_empty() && !host.contains(|c: char| c.is_whitespace() || c == '/');
    let v6_ok = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .is_none_or(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
    if !name_ok || !v6_ok || (host.contains(':') && !host.starts_with('[')) {
        return Err(bad());
    }
    Ok(addr.to_string())
}

fn read_secret(path: &Path) -> Result<PeerPassword, ValueError> {
    let text = std::fs::read_to_string(path).map_err(|source| ValueError::SecretUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(ValueError::SecretEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(PeerPassword(secret.to_string()))
}

/// The kernel's host name (what gethostname(2) returns), read from procfs: no libc call
/// and no extra nix feature for one string.
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_are_checked_and_shown_without_password() {
        for ok in [
            "redis://127.0.0.1:6379",
            "redis://127.0.0.1:6379/0",
            "rediss://u:secret@redis.example:6380/2",
            "redis://[::1]:6379",
            "redis+unix:///run/redis.sock",
        ] {
            RedisUrl::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "127.0.0.1:6379",
            "http://h:1",
            "redis://",
            "redis://h:port",
            "unix:relative",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
        let url = RedisUrl::parse("rediss://u:secret@redis.example:6380/2").unwrap();
        assert_eq!(url.to_string(), "rediss://u:***@redis.example:6380/2");
        assert!(!format!("{url:?}").contains("secret"));
        assert!(url.is_tls());
    }
}
