//! `ConfigError` and the code that turns a byte offset in a TOML file into a line number and a
//! dotted key path (`inbound.max_handlers`, `user[0].addresses`), so every error names the file,
//! the line and the key.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Why a configuration or directory file was refused, or a debug knob could not be set.
///
/// `Display` names the file, the line and the key:
/// ``/abs/etc/smtpmta.toml:7: key `inbound.max_handlers`: invalid type: string "ten", expected an integer``.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but a value in it is wrong (syntax, type, range, unknown key, …).
    #[error("{}", Located { file, line: *line, key: key.as_deref(), message })]
    Invalid {
        file: PathBuf,
        line: Option<usize>,
        key: Option<String>,
        message: String,
    },
    /// `DebugKnobs::set` refused a name or a value (at runtime, so there is no file).
    #[error("debug knob `{name}`: {message}")]
    Knob { name: String, message: String },
}

impl ConfigError {
    /// The file the error is about; empty for a `Knob` error (runtime `set config`).
    pub fn file(&self) -> &Path {
        match self {
            ConfigError::Read { file, .. } | ConfigError::Invalid { file, .. } => file,
            ConfigError::Knob { .. } => Path::new(""),
        }
    }

    /// The 1-based line in `file()`, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => *line,
            _ => None,
        }
    }

    /// The dotted key path (`inbound.max_handlers`, `user[0].addresses`), or the knob name.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => key.as_deref(),
            ConfigError::Knob { name, .. } => Some(name),
            ConfigError::Read { .. } => None,
        }
    }
}

/// What is wrong with one value, whatever key it was written under: the loader adds where
/// (file, line and key) when it makes a [`ConfigError`], and toml does for a value that fails
/// while it is deserialized. `Display` is the operator's message.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("`{0}` is not {help}", help = crate::values::DURATION_HELP)]
    Duration(String),
    #[error("`{0}` is not a size: bytes as an integer, or a string such as \"10K\", \"25M\", \"25MiB\", \"1G\"")]
    Size(String),
    #[error("`{value}` is not a mail address: {source}")]
    Address {
        value: String,
        source: mta_types::AddressError,
    },
    #[error("`{value}` is not a domain name: {source}")]
    Domain {
        value: String,
        source: mta_types::AddressError,
    },
    /// A CIDR network, or a bare address for one host.
    #[error("`{0}` is not a CIDR network")]
    Cidr(String),
    #[error("`{0}` is not a socket address (ip:port, or [ipv6]:port)")]
    Socket(String),
    /// A socket address that may be `""` (off).
    #[error("`{0}` is not a socket address (ip:port, [ipv6]:port, or \"\" for off)")]
    SocketOrOff(String),
    #[error("`{0}` is not a name server address (ip, ip:port, or [ipv6]:port)")]
    Nameserver(String),
    /// `outbound.relay_host`.
    #[error("`{0}` is not host:port (e.g. \"smtp.example.com:25\", \"192.0.2.1:587\", \"[2001:db8::1]:25\")")]
    RelayHost(String),
    #[error("`{0}` is not an LMTP address (\"unix:/path\" or \"inet:host:port\")")]
    LmtpAddress(String),
    /// A directory user's `lmtp`, which may also be `"none"`.
    #[error("`{0}` is not an LMTP address (\"unix:/path\" or \"inet:host:port\"), or \"none\" for Maildir")]
    UserLmtp(String),
    #[error("`{0}` is not a milter address (\"inet:host:port\" or \"unix:/path\")")]
    MilterAddress(String),
    #[error("`{value}` is not a Redis URL ({why}): \"redis://host:port\", \"rediss://host:port\" or \"redis+unix:///path\"")]
    RedisUrl { value: String, why: &'static str },
    #[error("`{0}` is not host:port (e.g. \"mx2.example:25\", \"[2001:db8::2]:25\")")]
    HostPort(String),
    /// A file holding a secret (`cluster.peer_password_file`).
    #[error("cannot read `{}`: {source}", path.display())]
    SecretUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{}` is empty", path.display())]
    SecretEmpty { path: PathBuf },
    /// A user without `maildir` gets `mail/<name>`, which this name cannot be.
    #[error("needed: the name `{0}` cannot be a folder's name")]
    FolderName(String),
    #[error("`{0}` is not one of 0, 10, 20, 30, 40")]
    RoutingLevel(i64),
    #[error("`{0}` is out of range (0 to 3)")]
    DebugLevel(i64),
    #[error("`{value}` is not a DNS list site (zone[=filter][*weight], e.g. \"zen.example*2\" or \"bl.example=127.0.0.[2..11]\"): {why}")]
    DnsListSite {
        value: String,
        why: crate::dnslist::SiteFault,
    },
}

struct Located<'a> {
    file: &'a Path,
    line: Option<usize>,
    key: Option<&'a str>,
    message: &'a str,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// One step of a path into a TOML document, used to find where a value was written.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// A file's text, kept to place errors found after deserialization.
pub(crate) struct Source {
    pub file: PathBuf,
    pub text: String,
}

/// A found path step: a key, or an index that is shown only for arrays of tables (`user[0]`).
enum Step {
    Key(String),
    Index { index: usize, shown: bool },
}

impl Source {
    pub fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text.as_bytes()[..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    pub fn invalid(
        &self,
        line: Option<usize>,
        key: Option<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            line,
            key,
            message: message.into(),
        }
    }

    /// An error about the value at `path` (which may not be in the file: then no line).
    pub fn error_at(&self, path: &[Seg<'_>], message: impl ToString) -> ConfigError {
        let (key, span) = self.locate(path);
        self.invalid(
            span.map(|s| self.line_of(s.start)),
            Some(key),
            message.to_string(),
        )
    }

    /// Turns a toml parse or deserialize error into a `ConfigError` with line and key.
    pub fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let message = friendly_message(err.message());
        let Some(span) = err.span() else {
            return self.invalid(None, None, message);
        };
        let line = Some(self.line_of(span.start));
        let key = match DeTable::parse(&self.text) {
            Ok(doc) => {
                let mut steps = Vec::new();
                if find_in_table(doc.get_ref(), span.start, &mut steps) {
                    Some(render(&steps))
                } else {
                    None
                }
            }
            Err(_) => guess_key(&self.text, span.start),
        };
        self.invalid(line, key, message)
    }

    /// The rendered key path of `path` and the span of its value, if the file has it.
    fn locate(&self, path: &[Seg<'_>]) -> (String, Option<Range<usize>>) {
        let doc = DeTable::parse(&self.text).ok();
        let mut steps = Vec::new();
        let mut span = None;
        let mut here: Option<&Spanned<DeValue<'_>>> = None;
        let mut table: Option<&DeTable<'_>> = doc.as_ref().map(|d| d.get_ref());
        for seg in path {
            match *seg {
                Seg::Key(k) => {
                    steps.push(Step::Key(k.to_string()));
                    here = table.and_then(|t| {
                        t.iter()
                            .find(|(name, _)| name.get_ref() == k)
                            .map(|(_, v)| v)
                    });
                }
                Seg::Index(i) => {
                    let item = match here.map(|v| v.get_ref()) {
                        Some(DeValue::Array(a)) => a.get(i),
                        _ => None,
                    };
                    let shown = matches!(item.map(|v| v.get_ref()), Some(DeValue::Table(_)));
                    steps.push(Step::Index { index: i, shown });
                    here = item;
                }
            }
            table = match here.map(|v| v.get_ref()) {
                Some(DeValue::Table(t)) => Some(t),
                _ => None,
            };
            span = here.map(|v| v.span());
        }
        (render(&steps), span)
    }
}

fn contains(span: &Range<usize>, pos: usize) -> bool {
    span.start <= pos && pos < span.end.max(span.start + 1)
}

/// Depth-first search for the deepest key or value whose span holds `pos`.
fn find_in_table(table: &DeTable<'_>, pos: usize, steps: &mut Vec<Step>) -> bool {
    for (k, v) in table.iter() {
        steps.push(Step::Key(k.get_ref().to_string()));
        if contains(&k.span(), pos) || find_in_value(v, pos, steps) {
            return true;
        }
        steps.pop();
    }
    false
}

fn find_in_value(v: &Spanned<DeValue<'_>>, pos: usize, steps: &mut Vec<Step>) -> bool {
    match v.get_ref() {
        DeValue::Table(t) if find_in_table(t, pos, steps) => return true,
        DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let shown = matches!(item.get_ref(), DeValue::Table(_));
                steps.push(Step::Index { index, shown });
                if find_in_value(item, pos, steps) {
                    return true;
                }
                steps.pop();
            }
        }
        _ => {}
    }
    contains(&v.span(), pos)
}

fn render(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                if !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
            Step::Index { index, shown: true } => out.push_str(&format!("[{index}]")),
            Step::Index { shown: false, .. } => {}
        }
    }
    out
}

/// For a syntax error (no tree to search): the `key =` on the error's line, under the nearest
/// `[table]` / `[[array]]` header above it.
fn guess_key(text: &str, pos: usize) -> Option<String> {
    let pos = pos.min(text.len());
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split_once('=').map(|(k, _)| k.trim()).filter(|k| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.\"'@ ".contains(c))
    })?;
    let mut header: Option<String> = None;
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    for l in text[..line_start].lines() {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            header = Some(format!("{name}[{n}]"));
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            header = Some(name.trim().to_string());
        }
    }
    Some(match header {
        Some(h) => format!("{h}.{key}"),
        None => key.to_string(),
    })
}

/// Serde's wording, in the words of a config file: fields are keys, `u32` is an integer.
fn friendly_message(message: &str) -> String {
    let message = message.trim().replace('\n', "; ");
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let expected = rest.split_once(", expected ").map(|(_, e)| e).unwrap_or("");
        let names: Vec<&str> = expected
            .trim_start_matches("one of ")
            .split(", ")
            .map(|n| n.trim_matches('`'))
            .filter(|n| !n.is_empty())
            .collect();
        return if names.is_empty() || expected.starts_with("there are no fields") {
            "unknown key (no keys are allowed here)".to_string()
        } else {
            format!("unknown key (expected one of: {})", names.join(", "))
        };
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        return format!("missing key {rest}");
    }
    let mut out = message
        .replace("expected a sequence", "expected an array")
        .replace("expected a map", "expected a table");
    if let Some(at) = out.find("expected struct ") {
        out.truncate(at);
        out.push_str("expected a table");
    }
    for int in ["usize", "u64", "u32", "u16", "u8", "i64"] {
        let from = format!("expected {int}");
        if out.ends_with(&from) {
            out.truncate(out.len() - from.len());
            out.push_str("expected an integer");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts operators have been reading since these errors were strings: unchanged.
    #[test]
    fn value_errors_read_as_they_did_when_they_were_strings() {
        let address = "x@".parse::<mta_types::Address>().unwrap_err();
        let cases = [
            (
                ValueError::Duration("5x".into()),
                "`5x` is not a duration: seconds as an integer, or a string such as \"500ms\", \"30s\", \"5m\", \"1h\", \"2d\" or \"1h30m\"".to_string(),
            ),
            (
                ValueError::Size("25Q".into()),
                "`25Q` is not a size: bytes as an integer, or a string such as \"10K\", \"25M\", \"25MiB\", \"1G\"".into(),
            ),
            (
                ValueError::Address { value: "x@".into(), source: address.clone() },
                format!("`x@` is not a mail address: {address}"),
            ),
            (
                ValueError::UserLmtp("tcp:h:24".into()),
                "`tcp:h:24` is not an LMTP address (\"unix:/path\" or \"inet:host:port\"), or \"none\" for Maildir".into(),
            ),
            (
                ValueError::MilterAddress("h:24".into()),
                "`h:24` is not a milter address (\"inet:host:port\" or \"unix:/path\")".into(),
            ),
            (
                ValueError::RedisUrl { value: "http://h:1".into(), why: "unknown scheme" },
                "`http://h:1` is not a Redis URL (unknown scheme): \"redis://host:port\", \"rediss://host:port\" or \"redis+unix:///path\"".into(),
            ),
            (
                ValueError::HostPort("mx2".into()),
                "`mx2` is not host:port (e.g. \"mx2.example:25\", \"[2001:db8::2]:25\")".into(),
            ),
            (
                ValueError::SecretEmpty { path: "/etc/peer".into() },
                "`/etc/peer` is empty".into(),
            ),
            (
                ValueError::FolderName("a/b".into()),
                "needed: the name `a/b` cannot be a folder's name".into(),
            ),
            (
                ValueError::RoutingLevel(5),
                "`5` is not one of 0, 10, 20, 30, 40".into(),
            ),
            (ValueError::DebugLevel(4), "`4` is out of range (0 to 3)".into()),
            (ValueError::Cidr("10/x".into()), "`10/x` is not a CIDR network".into()),
            (
                ValueError::Socket("h:1".into()),
                "`h:1` is not a socket address (ip:port, or [ipv6]:port)".into(),
            ),
            (
                ValueError::SocketOrOff("h:1".into()),
                "`h:1` is not a socket address (ip:port, [ipv6]:port, or \"\" for off)".into(),
            ),
            (
                ValueError::Nameserver("ns".into()),
                "`ns` is not a name server address (ip, ip:port, or [ipv6]:port)".into(),
            ),
            (
                ValueError::RelayHost("smtp".into()),
                "`smtp` is not host:port (e.g. \"smtp.example.com:25\", \"192.0.2.1:587\", \"[2001:db8::1]:25\")".into(),
            ),
            (
                ValueError::DnsListSite {
                    value: "zen.example=127.0.0.[11..2]".into(),
                    why: crate::dnslist::SiteFault::EmptyRange("11..2".into()),
                },
                "`zen.example=127.0.0.[11..2]` is not a DNS list site (zone[=filter][*weight], e.g. \"zen.example*2\" or \"bl.example=127.0.0.[2..11]\"): the range `11..2` is empty".into(),
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }
}
