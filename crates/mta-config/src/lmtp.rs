//! `[lmtp]` — local delivery over LMTP (RFC 2033) instead of Maildir, for Dovecot (mdbox,
//! Sieve, quotas) and its like. The directory's `lmtp` key chooses per user; this section
//! gives the default and the client's timeouts and pool size.
//!
//! ```toml
//! [lmtp]
//! address = "unix:/run/dovecot/lmtp"   # or "inet:127.0.0.1:24"; "" = Maildir
//! ```

use std::path::PathBuf;
use std::time::Duration;

use mta_types::Endpoint;
use serde::Deserialize;

use crate::{values, ValueError};

/// `[lmtp]`, as loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LmtpConfig {
    /// `address`: the LMTP server every directory user is delivered to unless their own
    /// `lmtp` key says otherwise; `""`: Maildir. Default `""`.
    pub address: Option<Endpoint>,
    /// `connect_timeout`: connecting and the greeting. Default 10s.
    pub connect_timeout: Duration,
    /// `timeout`: each reply (LHLO, MAIL, RCPT, DATA and each recipient's reply after the
    /// content). The router's claim on a batch lasts 120 s, so keep it well under that.
    /// Default 60s.
    pub timeout: Duration,
    /// `max_connections`: most connections open to one LMTP server (messages of a batch go
    /// in parallel up to this; idle ones are kept for the next messages). Default 4.
    pub max_connections: usize,
}

impl Default for LmtpConfig {
    fn default() -> Self {
        LmtpConfig {
            address: None,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            max_connections: 4,
        }
    }
}

/// `[lmtp]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLmtp {
    address: String,
    #[serde(deserialize_with = "values::duration")]
    connect_timeout: Duration,
    #[serde(deserialize_with = "values::duration")]
    timeout: Duration,
    #[serde(deserialize_with = "values::at_least_one")]
    max_connections: usize,
}

impl Default for RawLmtp {
    fn default() -> Self {
        let d = LmtpConfig::default();
        RawLmtp {
            address: String::new(),
            connect_timeout: d.connect_timeout,
            timeout: d.timeout,
            max_connections: d.max_connections,
        }
    }
}

impl RawLmtp {
    /// Validates the section; `Err` is `(key, message)` for `lmtp.key`.
    pub(crate) fn into_config(
        self,
        resolve: impl Fn(&str) -> PathBuf,
    ) -> Result<LmtpConfig, (&'static str, String)> {
        let address = match self.address.trim() {
            "" => None,
            s => Some(parse(s, resolve).map_err(|e| ("address", e.to_string()))?),
        };
        crate::values::not_zero(&[
            ("connect_timeout", self.connect_timeout),
            ("timeout", self.timeout),
        ])?;
        Ok(LmtpConfig {
            address,
            connect_timeout: self.connect_timeout,
            timeout: self.timeout,
            max_connections: self.max_connections,
        })
    }
}

/// An LMTP server's address: `inet:host:port` or `unix:/path`.
pub(crate) fn parse(s: &str, resolve: impl Fn(&str) -> PathBuf) -> Result<Endpoint, ValueError> {
    Endpoint::parse(s, resolve).map_err(|_| ValueError::LmtpAddress(s.to_string()))
}

/// A directory user's `lmtp` key: how their mail is delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum UserLmtp {
    /// No key: `[lmtp] address` if set, else Maildir.
    #[default]
    Default,
    /// `lmtp = "none"`: Maildir, whatever `[lmtp] address` says.
    Maildir,
    /// `lmtp = "unix:/path"` or `"inet:host:port"`.
    Server(Endpoint),
}
