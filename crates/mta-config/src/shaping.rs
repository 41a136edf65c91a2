//! `[[outbound.shaping]]` — traffic shaping per destination site, and the
//! `[[outbound.shaping.on_reply]]` rules that react to what the receiver says. osesctl
//! applies them (`bin/osesctl/src/shaping.rs`); the values are checked here, at load, so
//! a bad rate or regex names its file, line and key.

use mta_types::rate::Rate;
use serde::{de, Deserialize, Deserializer};
use std::time::Duration;

/// One rule; the first whose `match` fits a destination applies, a rule without `match`
/// is the default (for every destination no earlier rule matched).
///
/// With `[cluster] redis` set, `connection_limit`, `max_message_rate` and
/// `max_connection_rate` are counted across the fleet; written as `"local:4"`,
/// `"local:300/min"`, a limit stays per node (its flag in [`LocalLimits`]).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "RawRule")]
pub struct ShapingRule {
    /// `name`: how logs and the console name the rule. Default: its first `match`
    /// pattern, or `default`.
    pub name: String,
    /// `match`: recipient domains (`gmail.com`), a domain and its subdomains
    /// (`.example.com`), or every domain whose MX hosts all match a glob
    /// (`mx:*.google.com`). Empty: the default rule.
    pub patterns: Vec<String>,
    /// `connection_limit`: most concurrent connections to the site. Default: none.
    pub connection_limit: Option<u32>,
    /// `max_deliveries_per_connection`: messages per connection before a new one.
    /// Default: none (`[outbound] max_messages_per_session` still applies).
    pub max_deliveries_per_connection: Option<usize>,
    /// `max_message_rate`: messages started per period, `"300/min"` (GCRA; a quiet site
    /// may burst a tenth of a period's worth). Default: none.
    pub max_message_rate: Option<Rate>,
    /// `max_connection_rate`: connections opened per period. Default: none.
    pub max_connection_rate: Option<Rate>,
    /// `[[outbound.shaping.on_reply]]`: reactions to the receiver's replies.
    pub on_reply: Vec<OnReply>,
    /// Which of the limits were written `local:` (per node even in a fleet).
    pub local: LocalLimits,
}

/// The limits of a rule that stay per node in a fleet (`"local:…"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalLimits {
    pub connection_limit: bool,
    pub max_message_rate: bool,
    pub max_connection_rate: bool,
}

/// The rule as written: the limits may carry `local:`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRule {
    name: String,
    #[serde(rename = "match", deserialize_with = "patterns")]
    patterns: Vec<String>,
    #[serde(deserialize_with = "scoped_count")]
    connection_limit: Option<(u32, bool)>,
    max_deliveries_per_connection: Option<usize>,
    #[serde(deserialize_with = "scoped_rate")]
    max_message_rate: Option<(Rate, bool)>,
    #[serde(deserialize_with = "scoped_rate")]
    max_connection_rate: Option<(Rate, bool)>,
    on_reply: Vec<OnReply>,
}

impl From<RawRule> for ShapingRule {
    fn from(raw: RawRule) -> ShapingRule {
        ShapingRule {
            name: raw.name,
            patterns: raw.patterns,
            connection_limit: raw.connection_limit.map(|(n, _)| n),
            max_deliveries_per_connection: raw.max_deliveries_per_connection,
            max_message_rate: raw.max_message_rate.map(|(r, _)| r),
            max_connection_rate: raw.max_connection_rate.map(|(r, _)| r),
            on_reply: raw.on_reply,
            local: LocalLimits {
                connection_limit: is_local(raw.connection_limit),
                max_message_rate: is_local(raw.max_message_rate),
                max_connection_rate: is_local(raw.max_connection_rate),
            },
        }
    }
}

fn is_local<T>(limit: Option<(T, bool)>) -> bool {
    limit.is_some_and(|(_, local)| local)
}

/// A limit that a fleet shares with `[cluster] redis`, unless written `"local:…"` (then
/// each node counts it alone): the per-client limits of `[inbound]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scoped<T> {
    pub limit: T,
    /// Written `local:`: per node even in a fleet.
    pub local: bool,
}

impl<T> Scoped<T> {
    pub const fn shared(limit: T) -> Scoped<T> {
        Scoped {
            limit,
            local: false,
        }
    }
}

/// `"local:X"` → (`X`, true); anything else → (itself, false).
fn split_local(s: &str) -> (&str, bool) {
    match s.trim().strip_prefix("local:") {
        Some(rest) => (rest.trim(), true),
        None => (s.trim(), false),
    }
}

/// `4` or `"local:4"`, any count (0 included).
fn any_scoped_count<'de, D: Deserializer<'de>>(d: D) -> Result<(u32, bool), D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Count {
        N(u32),
        S(String),
    }
    match Count::deserialize(d)? {
        Count::N(n) => Ok((n, false)),
        Count::S(s) => {
            let bad = || de::Error::custom(format!("`{s}` is not a count (`4` or `\"local:4\"`)"));
            let (body, local) = split_local(&s);
            if !local {
                return Err(bad());
            }
            Ok((body.parse::<u32>().map_err(|_| bad())?, true))
        }
    }
}

/// `4` or `"local:4"` (at least 1).
fn scoped_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<(u32, bool)>, D::Error> {
    let (n, local) = any_scoped_count(d)?;
    if n == 0 {
        return Err(de::Error::custom("must be at least 1"));
    }
    Ok(Some((n, local)))
}

/// `"300/min"` or `"local:300/min"`.
fn scoped_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<(Rate, bool)>, D::Error> {
    crate::values::parse_str(d, |s| {
        let (body, local) = split_local(s);
        body.parse::<Rate>().map(|r| Some((r, local)))
    })
}

/// A per-client count: `50`, `"local:50"`; 0: no limit.
pub(crate) fn client_count<'de, D: Deserializer<'de>>(d: D) -> Result<Scoped<u32>, D::Error> {
    let (limit, local) = any_scoped_count(d)?;
    Ok(Scoped { limit, local })
}

/// A per-client rate: `"60/min"`, `"local:60/min"`, or `""` for none.
pub(crate) fn client_rate<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Scoped<Option<Rate>>, D::Error> {
    crate::values::parse_str(d, |s| {
        let (body, local) = split_local(s);
        if body.is_empty() {
            return Ok(Scoped::default());
        }
        body.parse::<Rate>()
            .map(|r| Scoped {
                limit: Some(r),
                local,
            })
            .map_err(|e| format!("{e}, or \"\" for no limit"))
    })
}

impl ShapingRule {
    /// The rule's name in logs: `name`, else its first pattern, else `default`.
    pub fn label(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        self.patterns
            .first()
            .cloned()
            .unwrap_or_else(|| "default".into())
    }
}

/// What an `on_reply` rule does to the site when a reply matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyAction {
    /// `action = "suspend"`: no delivery to the site for `for`.
    Suspend,
    /// `action = "connection_limit"`, `value = N`: the site's connection limit is N for `for`.
    ConnectionLimit(u32),
}

/// `[[outbound.shaping.on_reply]]`: `match` a regex on the full reply (`421 4.7.0 …`).
#[derive(Clone, Debug, PartialEq)]
pub struct OnReply {
    pub pattern: String,
    pub action: ReplyAction,
    pub duration: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOnReply {
    #[serde(rename = "match")]
    pattern: String,
    action: String,
    #[serde(rename = "for", deserialize_with = "crate::values::duration")]
    duration: Duration,
    value: Option<u32>,
}

impl<'de> Deserialize<'de> for OnReply {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OnReply, D::Error> {
        let raw = RawOnReply::deserialize(d)?;
        if let Err(e) = regex::Regex::new(&raw.pattern) {
            return Err(de::Error::custom(format!("`match`: bad regex: {e}")));
        }
        let action = match (raw.action.as_str(), raw.value) {
            ("suspend", None) => ReplyAction::Suspend,
            ("suspend", Some(_)) => {
                return Err(de::Error::custom(
                    "`value` goes with action \"connection_limit\"",
                ))
            }
            ("connection_limit", Some(n)) if n > 0 => ReplyAction::ConnectionLimit(n),
            ("connection_limit", _) => {
                return Err(de::Error::custom(
                    "action \"connection_limit\" needs `value` (at least 1)",
                ))
            }
            (other, _) => {
                return Err(de::Error::custom(format!(
                    "`action`: `{other}` is not one of \"suspend\", \"connection_limit\""
                )))
            }
        };
        Ok(OnReply {
            pattern: raw.pattern,
            action,
            duration: raw.duration,
        })
    }
}

fn patterns<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list: Vec<String> = Vec::deserialize(d)?;
    let mut out = Vec::with_capacity(list.len());
    for p in list {
        let p = p.trim().to_ascii_lowercase();
        let body = p.strip_prefix("mx:").unwrap_or(&p);
        let body = body.strip_prefix('.').unwrap_or(body);
        let glob_ok = p.starts_with("mx:") || !body.contains('*');
        if body.is_empty() || body.contains(char::is_whitespace) || !glob_ok {
            return Err(de::Error::custom(format!(
                "`{p}` is not a domain, .domain or mx:glob pattern"
            )));
        }
        out.push(p);
    }
    Ok(out)
}
