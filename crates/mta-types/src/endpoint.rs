//! Where a local service listens: `inet:host:port` or `unix:/path` (Postfix's and
//! Sendmail's syntax for milters and LMTP). One type for every such peer (a milter, an
//! LMTP server), so the config parses it once and the clients connect to it one way.

use std::fmt;
use std::path::PathBuf;

/// `inet:host:port` (host a name, an IPv4 address or `[ipv6]`) or `unix:/path`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    Inet { host: String, port: u16 },
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Inet { host, port } if host.contains(':') => {
                write!(f, "inet:[{host}]:{port}")
            }
            Endpoint::Inet { host, port } => write!(f, "inet:{host}:{port}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Why a text is not an [`Endpoint`]: the text, as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an address (\"inet:host:port\" or \"unix:/path\")")]
pub struct BadEndpoint(pub String);

impl Endpoint {
    /// Parses `inet:host:port` or `unix:/path`; a relative path goes through `resolve`
    /// (the config makes it relative to its file's folder).
    pub fn parse(s: &str, resolve: impl Fn(&str) -> PathBuf) -> Result<Endpoint, BadEndpoint> {
        let bad = || BadEndpoint(s.to_string());
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(Endpoint::Unix(resolve(path)));
        }
        let rest = s.strip_prefix("inet:").ok_or_else(bad)?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(Endpoint::Inet {
            host: host.to_string(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Endpoint, BadEndpoint> {
        Endpoint::parse(s, |p| PathBuf::from("/etc").join(p))
    }

    #[test]
    fn both_forms_round_trip() {
        for s in [
            "inet:127.0.0.1:24",
            "inet:[::1]:24",
            "unix:/run/dovecot/lmtp",
        ] {
            assert_eq!(parse(s).unwrap().to_string(), s);
        }
        assert_eq!(
            parse("unix:lmtp").unwrap(),
            Endpoint::Unix("/etc/lmtp".into())
        );
    }

    #[test]
    fn bad_forms_are_refused() {
        for s in [
            "",
            "unix:",
            "inet:host",
            "inet::24",
            "inet:h:0",
            "tcp:h:24",
            "h:24",
        ] {
            assert!(parse(s).is_err(), "{s}");
        }
    }
}
