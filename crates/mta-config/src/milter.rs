//! `[[milter]]` — the mail filters (milter protocol) the inbound session consults, in order.
//!
//! Each entry names a milter, where it listens, what happens when it cannot be used
//! (`default_action`), its three timeouts and the listeners whose sessions consult it.
//! Loading checks the syntax only; whether the milter answers is found out per session.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::{values, ValueError};

/// `address`: where a milter listens (`"inet:host:port"` or `"unix:/path"`, relative to
/// the config file's folder if relative): the one endpoint type LMTP uses too.
pub type MilterAddress = mta_types::Endpoint;

/// `default_action`: what a message gets when its milter is down, too slow or speaks
/// garbage (Postfix's `milter_default_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MilterDefault {
    /// `451 4.7.1` at the stage where it failed: the client retries later.
    Tempfail,
    /// Go on as if the milter were not configured (for the rest of the session).
    Accept,
    /// `550 5.7.1` at the stage where it failed.
    Reject,
}

impl MilterDefault {
    pub fn as_str(self) -> &'static str {
        match self {
            MilterDefault::Tempfail => "tempfail",
            MilterDefault::Accept => "accept",
            MilterDefault::Reject => "reject",
        }
    }
}

/// The listener names `listeners` may hold (as `show tasks` prints them).
pub const LISTENER_NAMES: &[&str] = &["smtp", "submission", "submissions"];

/// One `[[milter]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MilterConfig {
    /// `name`: how logs, metrics and errors call it. Unique.
    pub name: String,
    /// `address`: `"inet:host:port"` or `"unix:/path"`.
    pub address: MilterAddress,
    /// `default_action`: `"tempfail"`, `"accept"` or `"reject"`. Default `"tempfail"`.
    pub default_action: MilterDefault,
    /// `connect_timeout`: connecting and negotiating. Default 5s.
    pub connect_timeout: Duration,
    /// `command_timeout`: each answer to connect, HELO, MAIL, RCPT and DATA. Default 30s.
    pub command_timeout: Duration,
    /// `content_timeout`: each answer to the header, body and end of message. Default 120s.
    pub content_timeout: Duration,
    /// `listeners`: which listeners' sessions consult it, of `"smtp"`, `"submission"` and
    /// `"submissions"`. Default all three.
    pub listeners: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMilter {
    name: String,
    address: String,
    #[serde(default = "tempfail")]
    default_action: MilterDefault,
    #[serde(default = "five_seconds", deserialize_with = "values::duration")]
    connect_timeout: Duration,
    #[serde(default = "thirty_seconds", deserialize_with = "values::duration")]
    command_timeout: Duration,
    #[serde(default = "two_minutes", deserialize_with = "values::duration")]
    content_timeout: Duration,
    #[serde(default)]
    listeners: Option<Vec<String>>,
}

fn tempfail() -> MilterDefault {
    MilterDefault::Tempfail
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
fn two_minutes() -> Duration {
    Duration::from_secs(120)
}

impl crate::ArrayEntry for RawMilter {
    type Config = MilterConfig;
    const SECTION: &'static str = "milter";

    /// Names are unique (logs and the console name a milter by it).
    fn clash(earlier: &MilterConfig, this: &MilterConfig) -> Option<(&'static str, String)> {
        (earlier.name == this.name)
            .then(|| ("name", format!("a second milter called `{}`", this.name)))
    }

    fn into_config(
        self,
        resolve: impl Fn(&str) -> PathBuf,
    ) -> Result<MilterConfig, (&'static str, String)> {
        let name = self.name.trim().to_string();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(("name", format!("`{}` is not a name (no spaces)", self.name)));
        }
        let address =
            parse_address(&self.address, resolve).map_err(|e| ("address", e.to_string()))?;
        crate::values::not_zero(&[
            ("connect_timeout", self.connect_timeout),
            ("command_timeout", self.command_timeout),
            ("content_timeout", self.content_timeout),
        ])?;
        let listeners = match self.listeners {
            None => LISTENER_NAMES.iter().map(|l| l.to_string()).collect(),
            Some(list) => {
                if let Some(bad) = list.iter().find(|l| !LISTENER_NAMES.contains(&l.as_str())) {
                    return Err((
                        "listeners",
                        format!(
                            "`{bad}` is not a listener (\"smtp\", \"submission\", \"submissions\")"
                        ),
                    ));
                }
                list
            }
        };
        Ok(MilterConfig {
            name,
            address,
            default_action: self.default_action,
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            content_timeout: self.content_timeout,
            listeners,
        })
    }
}

/// `inet:host:port` or `unix:/path` (Postfix's `smtpd_milters` syntax).
fn parse_address(s: &str, resolve: impl Fn(&str) -> PathBuf) -> Result<MilterAddress, ValueError> {
    MilterAddress::parse(s, resolve).map_err(|_| ValueError::MilterAddress(s.to_string()))
}
