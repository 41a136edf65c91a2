//! SMTP commands (RFC 5321 4.1) and their ESMTP parameters: SIZE (RFC 1870), BODY
//! (RFC 6152, RFC 3030), SMTPUTF8 (RFC 6531), RET/ENVID/NOTIFY/ORCPT (RFC 3461).
//!
//! The verbs sit in one table ([`VERBS`]) with their policy flags, like Postfix's
//! `smtpd_cmd_table`. [`Command::parse`] is pure (no I/O); [`crate::parse_command_line`]
//! is the fuzzing entry point.
//!
//! Paths: `<>` is accepted only for MAIL; `<postmaster>` (no domain) only for RCPT, returned
//! as [`ForwardPath::Postmaster`] so the session can complete it with its own host name;
//! source routes (`<@a,@b:user@c>`) are refused with 553 rather than stripped.
//!
//! Command line length: RFC 5321 4.5.3.1.4 allows 512 octets including CRLF and lets each
//! extension add room. Like Postfix (`line_length_limit = 2048`), we accept up to
//! [`MAX_COMMAND_LINE`] = 2048 octets including CRLF for every command.

use crate::reply::Reply;
use mta_types::{Address, AddressError};
use std::fmt;

/// The longest command line accepted, CRLF included (see the module header).
pub const MAX_COMMAND_LINE: usize = 2048;

/// RFC 3461 4.4: ENVID is at most 100 characters (encoded).
const MAX_ENVID: usize = 100;
/// RFC 3461 4.2: ORCPT is at most 500 characters (encoded).
const MAX_ORCPT: usize = 500;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    Starttls,
    Auth,
}

/// Whether a verb takes arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Args {
    None,
    Optional,
    Required,
}

/// One row of the verb table.
#[derive(Debug)]
pub struct VerbInfo {
    pub name: &'static str,
    pub verb: Verb,
    /// Allowed before HELO/EHLO.
    pub before_helo: bool,
    /// RFC 2920 3.1: the command must be the last of a pipelined group (its reply changes
    /// what the client sends next), so the client waits for its reply.
    pub ends_group: bool,
    pub args: Args,
    /// The 501 text for wrong arguments.
    pub usage: &'static str,
}

/// The verb table.
#[rustfmt::skip]
pub const VERBS: &[VerbInfo] = &[
    //  name        verb            before ends   args            501 text
    //                              helo   group
    row("EHLO",     Verb::Ehlo,     true,  true,  Args::Required, "Syntax: EHLO hostname"),
    row("HELO",     Verb::Helo,     true,  true,  Args::Required, "Syntax: HELO hostname"),
    row("MAIL",     Verb::Mail,     false, false, Args::Required, "Syntax: MAIL FROM:<address>"),
    row("RCPT",     Verb::Rcpt,     false, false, Args::Required, "Syntax: RCPT TO:<address>"),
    row("DATA",     Verb::Data,     false, true,  Args::None,     "Syntax: DATA"),
    row("BDAT",     Verb::Bdat,     false, false, Args::Required, "Syntax: BDAT size [LAST]"),
    row("RSET",     Verb::Rset,     true,  false, Args::None,     "Syntax: RSET"),
    row("NOOP",     Verb::Noop,     true,  true,  Args::Optional, "Syntax: NOOP"),
    row("QUIT",     Verb::Quit,     true,  true,  Args::None,     "Syntax: QUIT"),
    row("VRFY",     Verb::Vrfy,     true,  true,  Args::Required, "Syntax: VRFY address"),
    row("EXPN",     Verb::Expn,     true,  true,  Args::Optional, "Syntax: EXPN list"),
    row("HELP",     Verb::Help,     true,  true,  Args::Optional, "Syntax: HELP"),
    row("STARTTLS", Verb::Starttls, false, true,  Args::None,     "Syntax: STARTTLS"),
    row("AUTH",     Verb::Auth,     false, true,  Args::Required, "Syntax: AUTH mechanism [initial-response]"),
];

const fn row(
    name: &'static str,
    verb: Verb,
    before_helo: bool,
    ends_group: bool,
    args: Args,
    usage: &'static str,
) -> VerbInfo {
    VerbInfo {
        name,
        verb,
        before_helo,
        ends_group,
        args,
        usage,
    }
}

impl Verb {
    /// Case-insensitive lookup in [`VERBS`].
    pub fn lookup(name: &str) -> Option<&'static VerbInfo> {
        VERBS.iter().find(|v| v.name.eq_ignore_ascii_case(name))
    }

    pub fn info(self) -> &'static VerbInfo {
        VERBS
            .iter()
            .find(|v| v.verb == self)
            .expect("every verb is in VERBS")
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.info().name)
    }
}

/// MAIL FROM's path: the null reverse path `<>` (bounces) or a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReversePath {
    Null,
    Mailbox(Address),
}

impl ReversePath {
    pub fn address(&self) -> Option<&Address> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(a) => Some(a),
        }
    }
}

/// RCPT TO's path: a mailbox, or the domain-less `<postmaster>` every server must accept
/// (RFC 5321 4.5.1); the session turns the latter into `postmaster@<its hostname>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardPath {
    Postmaster,
    Mailbox(Address),
}

/// BODY= (RFC 6152, RFC 3030).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// RET= (RFC 3461 4.3) and NOTIFY= (RFC 3461 4.1): the records' types, so the parameters
/// go from the command to the record unchanged.
pub use mta_types::message::{Notify, Ret};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Option<Body>,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// xtext-decoded.
    pub envid: Option<String>,
    /// `XFLEET` (fleet peers only, `crate::handoff`): the message's origin.
    pub handoff: Option<crate::handoff::HandoffMessage>,
}

impl MailParams {
    pub fn is_empty(&self) -> bool {
        *self == MailParams::default()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptParams {
    pub notify: Option<Notify>,
    /// `(addr-type, xtext-decoded address)`, e.g. `("rfc822", "user@example.com")`.
    pub orcpt: Option<(String, String)>,
    /// `XFLEET` (fleet peers only, `crate::handoff`): the recipient's history.
    pub handoff: Option<crate::handoff::HandoffRcpt>,
}

impl RcptParams {
    pub fn is_empty(&self) -> bool {
        *self == RcptParams::default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt {
        to: ForwardPath,
        params: RcptParams,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy(String),
    Expn,
    Help,
    Starttls,
    /// AUTH (RFC 4954): the mechanism, upper-cased, and the initial response as sent
    /// (base64, or `=` for an empty one).
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    /// A verb not in the table (as sent, at most 64 characters).
    Unknown(String),
}

impl Command {
    pub fn verb(&self) -> Option<Verb> {
        Some(match self {
            Command::Ehlo(_) => Verb::Ehlo,
            Command::Helo(_) => Verb::Helo,
            Command::Mail { .. } => Verb::Mail,
            Command::Rcpt { .. } => Verb::Rcpt,
            Command::Data => Verb::Data,
            Command::Bdat { .. } => Verb::Bdat,
            Command::Rset => Verb::Rset,
            Command::Noop => Verb::Noop,
            Command::Quit => Verb::Quit,
            Command::Vrfy(_) => Verb::Vrfy,
            Command::Expn => Verb::Expn,
            Command::Help => Verb::Help,
            Command::Starttls => Verb::Starttls,
            Command::Auth { .. } => Verb::Auth,
            Command::Unknown(_) => return None,
        })
    }

    /// Parses one command line (with or without its trailing CRLF or LF).
    ///
    /// `utf8_allowed` says whether the current transaction was opened with SMTPUTF8; it
    /// decides whether a RCPT address may be non-ASCII. For MAIL the SMTPUTF8 parameter on
    /// the same line decides.
    pub fn parse(line: &[u8], utf8_allowed: bool) -> Result<Command, CommandError> {
        if line.len() > MAX_COMMAND_LINE {
            return Err(CommandError::LineTooLong);
        }
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.contains(&0) {
            return Err(CommandError::NulByte);
        }
        if line.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Err(CommandError::BareLineEnding);
        }
        let line = std::str::from_utf8(line).map_err(|_| CommandError::NotUtf8)?;
        let line = line.trim_end_matches(' ');
        let (name, args) = match line.split_once(' ') {
            Some((n, a)) => (n, a.trim_start_matches(' ')),
            None => (line, ""),
        };
        let Some(info) = Verb::lookup(name) else {
            let shown: String = name.chars().take(64).collect();
            return Ok(Command::Unknown(shown));
        };
        let bad_args = || CommandError::BadArguments { verb: info.verb };
        match info.args {
            Args::None if !args.is_empty() => return Err(bad_args()),
            Args::Required if args.is_empty() => return Err(bad_args()),
            _ => {}
        }
        Ok(match info.verb {
            Verb::Ehlo | Verb::Helo => {
                let host = parse_helo_arg(args).ok_or_else(bad_args)?;
                if info.verb == Verb::Ehlo {
                    Command::Ehlo(host)
                } else {
                    Command::Helo(host)
                }
            }
            Verb::Mail => parse_mail(args, utf8_allowed)?,
            Verb::Rcpt => parse_rcpt(args, utf8_allowed)?,
            Verb::Data => Command::Data,
            Verb::Bdat => parse_bdat(args)?,
            Verb::Rset => Command::Rset,
            Verb::Noop => Command::Noop,
            Verb::Quit => Command::Quit,
            Verb::Vrfy => Command::Vrfy(args.to_string()),
            Verb::Expn => Command::Expn,
            Verb::Help => Command::Help,
            Verb::Starttls => Command::Starttls,
            Verb::Auth => {
                let mut words = args.split(' ').filter(|w| !w.is_empty());
                let mechanism = words.next().ok_or_else(bad_args)?.to_ascii_uppercase();
                let initial = words.next().map(str::to_string);
                if words.next().is_some() {
                    return Err(bad_args());
                }
                Command::Auth { mechanism, initial }
            }
        })
    }
}

/// Why a command line was refused; [`CommandError::to_reply`] gives the reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command line longer than {MAX_COMMAND_LINE} octets")]
    LineTooLong,
    #[error("NUL character in command line")]
    NulByte,
    #[error("bare CR or LF inside a command line")]
    BareLineEnding,
    #[error("command line is not valid UTF-8")]
    NotUtf8,
    #[error("wrong arguments for {verb}")]
    BadArguments { verb: Verb },
    #[error("bad sender address `{path}`: {reason}")]
    BadSender { path: String, reason: String },
    #[error("bad recipient address `{path}`: {reason}")]
    BadRecipient { path: String, reason: String },
    #[error("source route in `{0}`")]
    SourceRoute(String),
    #[error("non-ASCII `{0}` without SMTPUTF8")]
    NeedUtf8(String),
    #[error("unknown parameter {0}")]
    UnknownParameter(String),
    #[error("duplicate parameter {0}")]
    DuplicateParameter(String),
    #[error("bad value for parameter {0}")]
    BadParameterValue(String),
    #[error("BDAT chunk size `{0}` is not a number")]
    BadChunkSize(String),
}

impl CommandError {
    pub fn to_reply(&self) -> Reply {
        match self {
            CommandError::LineTooLong => Reply::line_too_long(),
            CommandError::NulByte | CommandError::BareLineEnding | CommandError::NotUtf8 => {
                Reply::bad_syntax()
            }
            CommandError::BadArguments { verb } => Reply::param_error(verb.info().usage),
            CommandError::BadSender { .. } => Reply::bad_sender_address(),
            CommandError::BadRecipient { .. } => Reply::bad_address(),
            CommandError::SourceRoute(_) => Reply::source_route_rejected(),
            CommandError::NeedUtf8(_) => Reply::need_utf8(),
            CommandError::UnknownParameter(p) => Reply::unknown_parameter(p),
            CommandError::DuplicateParameter(p) => Reply::duplicate_parameter(p),
            CommandError::BadParameterValue(p) => Reply::bad_parameter_value(p),
            CommandError::BadChunkSize(_) => Reply::param_error(Verb::Bdat.info().usage),
        }
    }

    /// The session cannot continue after this error: a BDAT whose size is unreadable leaves
    /// the chunk's length unknown, so the next command cannot be found.
    /// Any malformed BDAT counts, even with a readable size: a client that garbles BDAT
    /// cannot be trusted to send the chunk it announced, and 421 is safer than guessing.
    pub fn loses_sync(&self) -> bool {
        matches!(
            self,
            CommandError::BadChunkSize(_) | CommandError::BadArguments { verb: Verb::Bdat }
        )
    }
}

/// The HELO/EHLO argument: one word of printable ASCII (a domain or an address literal).
/// Lenient about its form, as real clients send all kinds of names; strict about junk.
fn parse_helo_arg(args: &str) -> Option<String> {
    let host = args.split(' ').next().unwrap_or("");
    let printable = host.bytes().all(|b| b.is_ascii_graphic());
    (!host.is_empty() && printable && host.len() <= 255).then(|| host.to_string())
}

/// Strips `keyword:` (case-insensitive) and the optional spaces after the colon.
fn strip_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| args[keyword.len()..].trim_start_matches(' '))
}

/// Splits `<...> params` into the text inside the brackets and the parameter text.
/// Quoted local parts may contain `>`.
fn split_path(s: &str) -> Option<(&str, &str)> {
    let inner_start = s.strip_prefix('<')?;
    let bytes = inner_start.as_bytes();
    let mut i = 0;
    let mut quoted = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => {
                let rest = &inner_start[i + 1..];
                if !rest.is_empty() && !rest.starts_with(' ') {
                    return None;
                }
                return Some((&inner_start[..i], rest.trim_start_matches(' ')));
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// A mailbox inside `<...>`: source routes refused, non-ASCII only with SMTPUTF8.
fn parse_mailbox(inner: &str, utf8: bool) -> Result<Address, PathProblem> {
    if inner.starts_with('@') {
        return Err(PathProblem::SourceRoute);
    }
    if !inner.is_ascii() && !utf8 {
        return Err(PathProblem::NeedUtf8);
    }
    if inner.bytes().any(|b| b.is_ascii_control()) {
        return Err(PathProblem::Bad("control character".into()));
    }
    inner.parse::<Address>().map_err(|e| match e {
        AddressError::SourceRoute(_) => PathProblem::SourceRoute,
        other => PathProblem::Bad(other.to_string()),
    })
}

enum PathProblem {
    SourceRoute,
    NeedUtf8,
    Bad(String),
}

/// Parameters as `(KEYWORD upper-cased, value)` pairs, keywords checked against RFC 5321
/// `esmtp-keyword`, values against `esmtp-value` (non-ASCII only with SMTPUTF8, RFC 6531).
fn split_params(text: &str, utf8: bool) -> Result<Vec<(String, Option<&str>)>, CommandError> {
    let mut seen: Vec<(String, Option<&str>)> = Vec::new();
    for token in text.split(' ').filter(|t| !t.is_empty()) {
        let (key, value) = match token.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (token, None),
        };
        let key_ok = key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !key_ok {
            return Err(CommandError::BadParameterValue(
                key.chars().take(32).collect(),
            ));
        }
        let key = key.to_ascii_uppercase();
        if let Some(v) = value {
            let value_ok = !v.is_empty()
                && v.chars().all(|c| {
                    (c.is_ascii_graphic() && c != '=') || (!c.is_ascii() && utf8 && !c.is_control())
                });
            if !value_ok {
                return Err(CommandError::BadParameterValue(key));
            }
        }
        if seen.iter().any(|(k, _)| *k == key) {
            return Err(CommandError::DuplicateParameter(key));
        }
        seen.push((key, value));
    }
    Ok(seen)
}

fn parse_mail(args: &str, utf8_allowed: bool) -> Result<Command, CommandError> {
    let bad_args = CommandError::BadArguments { verb: Verb::Mail };
    let rest = strip_keyword(args, "FROM:").ok_or(bad_args)?;
    let (inner, param_text) = split_path(rest).ok_or_else(|| CommandError::BadSender {
        path: rest.chars().take(64).collect(),
        reason: "not a <path>".into(),
    })?;
    let smtputf8_given = param_text
        .split(' ')
        .any(|t| t.eq_ignore_ascii_case("SMTPUTF8"));
    let utf8 = utf8_allowed || smtputf8_given;
    let mut params = MailParams::default();
    for (key, value) in split_params(param_text, utf8)? {
        let bad = || CommandError::BadParameterValue(key.clone());
        match key.as_str() {
            "SIZE" => {
                let v = value.ok_or_else(bad)?;
                if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                // An absurd size is simply too big, which the session answers with 552.
                params.size = Some(v.parse().unwrap_or(u64::MAX));
            }
            "BODY" => {
                let v = value.ok_or_else(bad)?;
                params.body = Some(match v.to_ascii_uppercase().as_str() {
                    "7BIT" => Body::SevenBit,
                    "8BITMIME" => Body::EightBitMime,
                    "BINARYMIME" => Body::BinaryMime,
                    _ => return Err(bad()),
                });
            }
            "SMTPUTF8" => {
                if value.is_some() {
                    return Err(bad());
                }
                params.smtputf8 = true;
            }
            "RET" => {
                let v = value.ok_or_else(bad)?;
                params.ret = Some(match v.to_ascii_uppercase().as_str() {
                    "FULL" => Ret::Full,
                    "HDRS" => Ret::Hdrs,
                    _ => return Err(bad()),
                });
            }
            "ENVID" => {
                let v = value.ok_or_else(bad)?;
                if v.len() > MAX_ENVID {
                    return Err(bad());
                }
                params.envid = Some(xtext_decode(v).ok_or_else(bad)?);
            }
            crate::handoff::KEYWORD => {
                let v = value.ok_or_else(bad)?;
                params.handoff = Some(crate::handoff::HandoffMessage::decode(v).ok_or_else(bad)?);
            }
            _ => return Err(CommandError::UnknownParameter(key)),
        }
    }
    let from = if inner.is_empty() {
        ReversePath::Null
    } else {
        ReversePath::Mailbox(parse_mailbox(inner, utf8).map_err(|p| match p {
            PathProblem::SourceRoute => CommandError::SourceRoute(inner.to_string()),
            PathProblem::NeedUtf8 => CommandError::NeedUtf8(inner.to_string()),
            PathProblem::Bad(reason) => CommandError::BadSender {
                path: inner.to_string(),
                reason,
            },
        })?)
    };
    Ok(Command::Mail { from, params })
}

fn parse_rcpt(args: &str, utf8: bool) -> Result<Command, CommandError> {
    let bad_args = CommandError::BadArguments { verb: Verb::Rcpt };
    let rest = strip_keyword(args, "TO:").ok_or(bad_args)?;
    let bad_path = |path: &str, reason: &str| CommandError::BadRecipient {
        path: path.chars().take(64).collect(),
        reason: reason.into(),
    };
    let (inner, param_text) = split_path(rest).ok_or_else(|| bad_path(rest, "not a <path>"))?;
    let mut params = RcptParams::default();
    for (key, value) in split_params(param_text, utf8)? {
        let bad = || CommandError::BadParameterValue(key.clone());
        match key.as_str() {
            "NOTIFY" => params.notify = Some(parse_notify(value.ok_or_else(bad)?).ok_or_else(bad)?),
            "ORCPT" => {
                let v = value.ok_or_else(bad)?;
                if v.len() > MAX_ORCPT {
                    return Err(bad());
                }
                let (kind, addr) = v.split_once(';').ok_or_else(bad)?;
                let kind_ok = !kind.is_empty()
                    && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if !kind_ok {
                    return Err(bad());
                }
                let addr = xtext_decode(addr)
                    .filter(|a| !a.is_empty())
                    .ok_or_else(bad)?;
                params.orcpt = Some((kind.to_ascii_lowercase(), addr));
            }
            crate::handoff::KEYWORD => {
                let v = value.ok_or_else(bad)?;
                params.handoff = Some(crate::handoff::HandoffRcpt::decode(v).ok_or_else(bad)?);
            }
            _ => return Err(CommandError::UnknownParameter(key)),
        }
    }
    if inner.is_empty() {
        return Err(bad_path(inner, "the null path is only for MAIL FROM"));
    }
    let to = if inner.eq_ignore_ascii_case("postmaster") {
        ForwardPath::Postmaster
    } else {
        ForwardPath::Mailbox(parse_mailbox(inner, utf8).map_err(|p| match p {
            PathProblem::SourceRoute => CommandError::SourceRoute(inner.to_string()),
            PathProblem::NeedUtf8 => CommandError::NeedUtf8(inner.to_string()),
            PathProblem::Bad(reason) => bad_path(inner, &reason),
        })?)
    };
    Ok(Command::Rcpt { to, params })
}

fn parse_notify(v: &str) -> Option<Notify> {
    if v.eq_ignore_ascii_case("NEVER") {
        return Some(Notify::NEVER);
    }
    let (mut success, mut failure, mut delay) = (false, false, false);
    for item in v.split(',') {
        let flag = match item.to_ascii_uppercase().as_str() {
            "SUCCESS" => &mut success,
            "FAILURE" => &mut failure,
            "DELAY" => &mut delay,
            _ => return None, // includes NEVER mixed with others, and empty items
        };
        if *flag {
            return None;
        }
        *flag = true;
    }
    Some(Notify::on(success, failure, delay))
}

fn parse_bdat(args: &str) -> Result<Command, CommandError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let size_text = words.next().unwrap_or("");
    let size_ok = !size_text.is_empty()
        && size_text.len() <= 20
        && size_text.bytes().all(|b| b.is_ascii_digit());
    let size: u64 = match size_ok.then(|| size_text.parse().ok()).flatten() {
        Some(n) => n,
        None => {
            return Err(CommandError::BadChunkSize(
                size_text.chars().take(32).collect(),
            ))
        }
    };
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::BadArguments { verb: Verb::Bdat }),
    };
    if words.next().is_some() {
        return Err(CommandError::BadArguments { verb: Verb::Bdat });
    }
    Ok(Command::Bdat { size, last })
}

/// Decodes RFC 3461 4 `xtext` (`+XX` hex escapes; other characters `!`..`~` except `+`
/// and `=`; UTF-8 characters as themselves under SMTPUTF8). Refuses control characters in
/// the result so a decoded value can never inject a header line later.
pub fn xtext_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = s.get(i + 1..i + 3)?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'=' => return None,
            b if b.is_ascii_control() || b == b' ' => return None,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    let text = String::from_utf8(out).ok()?;
    (!text.chars().any(char::is_control)).then_some(text)
}

/// Encodes text as RFC 3461 `xtext` (client direction).
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Result<Command, CommandError> {
        Command::parse(line.as_bytes(), false)
    }

    fn addr(s: &str) -> Address {
        s.parse().unwrap()
    }

    /// `command` followed by each of `params` is refused with 501.
    fn refused_501(command: &str, params: &[&str]) {
        for bad in params {
            let e = p(&format!("{command} {bad}")).unwrap_err();
            assert_eq!(e.to_reply().code, Some(501), "{bad}: {e:?}");
        }
    }

    #[test]
    fn simple_verbs_case_insensitive() {
        assert_eq!(p("DATA\r\n"), Ok(Command::Data));
        assert_eq!(p("data"), Ok(Command::Data));
        assert_eq!(p("rSeT\r\n"), Ok(Command::Rset));
        assert_eq!(p("NOOP"), Ok(Command::Noop));
        assert_eq!(p("NOOP anything"), Ok(Command::Noop));
        assert_eq!(p("QUIT\r\n"), Ok(Command::Quit));
        assert_eq!(p("QUIT \r\n"), Ok(Command::Quit));
        assert_eq!(p("HELP"), Ok(Command::Help));
        assert_eq!(p("EXPN list"), Ok(Command::Expn));
        assert_eq!(p("STARTTLS"), Ok(Command::Starttls));
        assert_eq!(p("VRFY joe"), Ok(Command::Vrfy("joe".into())));
        assert_eq!(
            p("EHLO client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(p("helo [1.2.3.4]"), Ok(Command::Helo("[1.2.3.4]".into())));
        assert_eq!(p("XYZZY foo"), Ok(Command::Unknown("XYZZY".into())));
        assert_eq!(p(""), Ok(Command::Unknown("".into())));
    }

    #[test]
    fn argument_policy() {
        for (line, verb) in [
            ("DATA now", Verb::Data),
            ("QUIT now", Verb::Quit),
            ("EHLO", Verb::Ehlo),
            ("VRFY", Verb::Vrfy),
            ("MAIL", Verb::Mail),
            ("RCPT", Verb::Rcpt),
            ("MAIL TO:<a@b>", Verb::Mail),
        ] {
            assert_eq!(p(line), Err(CommandError::BadArguments { verb }), "{line}");
        }
        assert_eq!(p("DATA now").unwrap_err().to_reply().code, Some(501));
    }

    #[test]
    fn mail_from_forms() {
        let expect = Command::Mail {
            from: ReversePath::Mailbox(addr("a@b.c")),
            params: MailParams::default(),
        };
        assert_eq!(p("MAIL FROM:<a@b.c>\r\n"), Ok(expect.clone()));
        assert_eq!(p("mail from: <a@b.c>"), Ok(expect.clone()));
        assert_eq!(p("MAIL FROM:<a@B.C>  "), Ok(expect));
        assert_eq!(
            p("MAIL FROM:<>"),
            Ok(Command::Mail {
                from: ReversePath::Null,
                params: MailParams::default()
            })
        );
        let quoted = p("MAIL FROM:<\"a>b\"@c.d>").unwrap();
        let Command::Mail {
            from: ReversePath::Mailbox(a),
            ..
        } = quoted
        else {
            panic!()
        };
        assert_eq!(a.local_part_unquoted(), "a>b");
    }

    #[test]
    fn mail_bad_paths() {
        for line in [
            "MAIL FROM:a@b.c",
            "MAIL FROM:<a@b.c",
            "MAIL FROM:<a@b.c>x",
            "MAIL FROM:<a>",
            "MAIL FROM:<a@@b>",
        ] {
            assert!(
                matches!(p(line), Err(CommandError::BadSender { .. })),
                "{line}"
            );
        }
        assert_eq!(p("MAIL FROM:<a>").unwrap_err().to_reply().code, Some(501));
    }

    #[test]
    fn source_routes_are_refused_not_stripped() {
        let e = p("MAIL FROM:<@a,@b:u@c>").unwrap_err();
        assert!(matches!(e, CommandError::SourceRoute(_)));
        assert_eq!(e.to_reply().code, Some(553));
        let e = p("RCPT TO:<@relay.example:user@victim.example>").unwrap_err();
        assert!(matches!(e, CommandError::SourceRoute(_)));
    }

    #[test]
    fn mail_params() {
        let c = p("MAIL FROM:<a@b.c> SIZE=1000 BODY=8bitmime RET=HDRS ENVID=QQ+2B+3Dx SMTPUTF8")
            .unwrap();
        let Command::Mail { params, .. } = c else {
            panic!()
        };
        assert_eq!(
            params,
            MailParams {
                size: Some(1000),
                body: Some(Body::EightBitMime),
                smtputf8: true,
                ret: Some(Ret::Hdrs),
                envid: Some("QQ+=x".into()),
                handoff: None,
            }
        );
        let Command::Mail { params, .. } = p("MAIL FROM:<> BODY=7BIT RET=full").unwrap() else {
            panic!()
        };
        assert_eq!(params.body, Some(Body::SevenBit));
        assert_eq!(params.ret, Some(Ret::Full));
        let Command::Mail { params, .. } = p("MAIL FROM:<> BODY=BINARYMIME").unwrap() else {
            panic!()
        };
        assert_eq!(params.body, Some(Body::BinaryMime));
        let Command::Mail { params, .. } = p("MAIL FROM:<> SIZE=99999999999999999999").unwrap()
        else {
            panic!()
        };
        assert_eq!(params.size, Some(u64::MAX));
    }

    #[test]
    fn mail_param_errors() {
        let e = p("MAIL FROM:<a@b.c> AUTH=<>").unwrap_err();
        assert_eq!(e, CommandError::UnknownParameter("AUTH".into()));
        assert_eq!(e.to_reply().code, Some(555));
        assert_eq!(e.to_reply().status, Some(mta_types::Enhanced::new(5, 5, 4)));
        let e = p("MAIL FROM:<a@b.c> SIZE=1 size=2").unwrap_err();
        assert_eq!(e, CommandError::DuplicateParameter("SIZE".into()));
        assert_eq!(e.to_reply().code, Some(501));
        refused_501(
            "MAIL FROM:<a@b.c>",
            &[
                "SIZE=",
                "SIZE=abc",
                "SIZE=-1",
                "SIZE",
                "BODY=9BIT",
                "RET=ALL",
                "SMTPUTF8=yes",
                "ENVID=a+2",
                "ENVID=a+0D+0Ab",
                "ENVID=a+ZZ",
                "=x",
                "SIZE==1",
            ],
        );
        let long = format!("MAIL FROM:<a@b.c> ENVID={}", "x".repeat(101));
        assert!(matches!(p(&long), Err(CommandError::BadParameterValue(_))));
    }

    #[test]
    fn utf8_addresses_need_smtputf8() {
        let e = p("MAIL FROM:<用户@example.com>").unwrap_err();
        assert!(matches!(e, CommandError::NeedUtf8(_)));
        assert_eq!(
            e.to_reply().wire(),
            "553 5.6.7 SMTPUTF8 is required for a non-ASCII address\r\n"
        );
        let c = p("MAIL FROM:<用户@example.com> SMTPUTF8").unwrap();
        assert!(matches!(
            c,
            Command::Mail {
                params: MailParams { smtputf8: true, .. },
                ..
            }
        ));
        assert!(matches!(
            p("RCPT TO:<用户@example.com>"),
            Err(CommandError::NeedUtf8(_))
        ));
        let c = Command::parse("RCPT TO:<用户@example.com>".as_bytes(), true).unwrap();
        assert!(matches!(c, Command::Rcpt { to: ForwardPath::Mailbox(a), .. } if a.is_utf8()));
    }

    #[test]
    fn rcpt_forms_and_params() {
        assert_eq!(
            p("RCPT TO:<u@d.e>"),
            Ok(Command::Rcpt {
                to: ForwardPath::Mailbox(addr("u@d.e")),
                params: RcptParams::default()
            })
        );
        assert_eq!(
            p("rcpt to: <Postmaster>"),
            Ok(Command::Rcpt {
                to: ForwardPath::Postmaster,
                params: RcptParams::default()
            })
        );
        for line in ["RCPT TO:<>", "RCPT TO:<user>"] {
            assert!(
                matches!(p(line), Err(CommandError::BadRecipient { .. })),
                "{line}"
            );
        }
        assert_eq!(
            p("RCPT TO:<user>").unwrap_err().to_reply().status,
            Some(mta_types::Enhanced::new(5, 1, 3))
        );
        let c = p("RCPT TO:<u@d.e> NOTIFY=SUCCESS,delay ORCPT=rfc822;u+2Bx@d.e").unwrap();
        let Command::Rcpt { params, .. } = c else {
            panic!()
        };
        assert_eq!(params.notify, Some(Notify::on(true, false, true)));
        assert_eq!(params.orcpt, Some(("rfc822".into(), "u+x@d.e".into())));
        let Command::Rcpt { params, .. } = p("RCPT TO:<u@d.e> NOTIFY=NEVER").unwrap() else {
            panic!()
        };
        assert_eq!(params.notify, Some(Notify::NEVER));
        refused_501(
            "RCPT TO:<u@d.e>",
            &[
                "NOTIFY=NEVER,SUCCESS",
                "NOTIFY=",
                "NOTIFY=SUCCESS,SUCCESS",
                "NOTIFY=SOMETIMES",
                "ORCPT=u@d.e",
                "ORCPT=;u@d.e",
                "ORCPT=rfc822;",
            ],
        );
        assert_eq!(
            p("RCPT TO:<u@d.e> SIZE=1"),
            Err(CommandError::UnknownParameter("SIZE".into()))
        );
        assert_eq!(
            p("RCPT TO:<u@d.e> NOTIFY=NEVER NOTIFY=NEVER"),
            Err(CommandError::DuplicateParameter("NOTIFY".into()))
        );
    }

    #[test]
    fn bdat_forms() {
        assert_eq!(
            p("BDAT 100"),
            Ok(Command::Bdat {
                size: 100,
                last: false
            })
        );
        assert_eq!(
            p("bdat 0 last"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        let e = p("BDAT lots").unwrap_err();
        assert!(e.loses_sync());
        assert_eq!(e.to_reply().code, Some(501));
        assert!(p("BDAT -1").unwrap_err().loses_sync());
        assert!(p("BDAT 99999999999999999999999").unwrap_err().loses_sync());
        assert!(p("BDAT 10 FIRST").unwrap_err().loses_sync());
        assert!(p("BDAT 10 LAST more").unwrap_err().loses_sync());
        assert!(p("BDAT").unwrap_err().loses_sync());
        assert!(!p("DATA x").unwrap_err().loses_sync());
    }

    #[test]
    fn junk_lines() {
        assert_eq!(p("NOOP\0\r\n"), Err(CommandError::NulByte));
        assert_eq!(p("MAIL FROM:<a\0@b>"), Err(CommandError::NulByte));
        assert_eq!(p("NOOP\rQUIT\r\n"), Err(CommandError::BareLineEnding));
        assert_eq!(
            Command::parse(b"NOOP \xff\xfe", false),
            Err(CommandError::NotUtf8)
        );
        let long = format!("NOOP {}\r\n", "x".repeat(MAX_COMMAND_LINE));
        assert_eq!(p(&long), Err(CommandError::LineTooLong));
        assert_eq!(p(&long).unwrap_err().to_reply(), Reply::line_too_long());
        let ok_long = format!("MAIL FROM:<a@b.c> ENVID={}\r\n", "x".repeat(100));
        assert!(p(&ok_long).is_ok());
    }

    #[test]
    fn verb_table_is_complete() {
        for v in VERBS {
            assert_eq!(Verb::lookup(&v.name.to_lowercase()).unwrap().verb, v.verb);
            assert_eq!(v.verb.info().name, v.name);
        }
        assert!(Verb::Data.info().ends_group);
        assert!(!Verb::Rcpt.info().ends_group);
        assert!(!Verb::Mail.info().before_helo);
    }

    #[test]
    fn xtext_round_trip() {
        for s in ["plain", "a+b=c d", "ü@example"] {
            assert_eq!(xtext_decode(&xtext_encode(s)).as_deref(), Some(s));
        }
        assert_eq!(xtext_decode("+41+42"), Some("AB".into()));
        assert_eq!(xtext_decode("a=b"), None);
        assert_eq!(xtext_decode("+0A"), None);
    }
}
