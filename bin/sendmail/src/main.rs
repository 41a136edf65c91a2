//! sendmail — the sendmail-compatible command: submits one message from stdin to the
//! running suite, as cron, scripts and PHP's `mail()` expect.
//!
//! `sendmail [-t] [-i | -oi] [-f sender] [-F "Full Name"] [-C config] [recipient …]`
//! (other sendmail options such as `-odi`, `-oem`, `-bm` are accepted and ignored).
//!
//! Modes besides sending (as Postfix's sendmail):
//! - `-bv addr…`: verify only. Each address is offered to the suite (MAIL, RCPT, RSET;
//!   no message is sent) and one line per address says `deliverable` or why not. Exit 0
//!   when all are deliverable, 69 (EX_UNAVAILABLE) when one is refused for good, 75 when
//!   one is refused for now.
//! - `-bi` (what `newaliases` runs, also as `newaliases`): succeeds; the directory is read
//!   live (`tell smtpmta refresh` re-reads it), there is no alias database to build.
//! - `-q`: asks the suite to retry everything now (`route` and `route localdelivery`,
//!   through `mtacon` beside this binary).
//! - `-bp`, or called as `mailq`: prints the queue (`mtacon show queue`: the counts and
//!   the parked messages, then `tell router show`: each pending destination, its
//!   messages and last error).
//! - `-h`, `--help`: usage.
//!
//! A message without `Date:` or `Message-ID:` gets them here (RFC 6409 §8.2, §8.3),
//! with `hostname` on the right of the Message-ID, as Postfix does.
//!
//! The message goes over SMTP to the suite's first `[inbound] listen` address (loopback:
//! a trusted client, so it may relay) with `mta_smtp::client`; the exit status is 0 only
//! after the 250 to DATA, which smtpmta sends once the message is durable on disk.
//!
//! When the suite is down the message is REFUSED, not spooled: one line on stderr says so
//! and the exit status is 75 (EX_TEMPFAIL), so cron mails the output and a script can
//! retry. Nothing is silently lost, and there is no second queue (Postfix's maildrop)
//! to watch. A refused recipient or message: exit 69 (EX_UNAVAILABLE, 5xx) or 75 (4xx).
//!
//! Config read: `hostname`, `[inbound] listen` (from `-C`, else `$SMTPMTA_CONFIG`, else
//! `etc/smtpmta.toml`). Input: lines may end in LF or CRLF (sent as CRLF); without `-i`
//! a line holding only `.` ends the message, as in sendmail. `-t` takes the recipients
//! from To, Cc and Bcc and removes Bcc. A message without From gets one (`-F` name, the
//! sender address).

use mta_smtp::client::SmtpClient;
use mta_types::Address;
use std::io::Read as _;
use std::process::ExitCode;
use std::time::Duration;

const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_UNAVAILABLE: u8 = 69;
const EX_TEMPFAIL: u8 = 75;
const EX_CONFIG: u8 = 78;

const USAGE: &str = "\
usage: sendmail [options] [recipient ...] < message
  -t              take the recipients from To, Cc and Bcc (Bcc is removed)
  -i, -oi         a line with only `.` does not end the message
  -f sender       envelope sender (also -r); default LOGNAME@hostname
  -F name         full name for the From header added when there is none
  -C config       the suite's configuration (else $SMTPMTA_CONFIG, else etc/smtpmta.toml)
  -bv address...  verify the addresses without sending anything
  -bi             nothing to do: the directory is read live (newaliases)
  -bp             print the queue (as `mailq`)
  -q              ask the suite to retry every queued message now
  -h, --help      this text
Exit status: 0 sent (or verified); 64 usage; 65 bad address; 69 refused; 75 try again
(the suite is down or refused for now: the message was NOT sent); 78 configuration.
";

/// What the command was asked to do.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Mode {
    #[default]
    Send,
    /// `-bv`
    Verify,
    /// `-bi`, `newaliases`
    Rebuild,
    /// `-bp`, `mailq`
    PrintQueue,
    /// `-q`
    RunQueue,
    /// `-h`, `--help`
    Help,
}

#[derive(Debug, Default)]
struct Options {
    mode: Mode,
    from_headers: bool,
    ignore_dots: bool,
    sender: Option<String>,
    full_name: Option<String>,
    config: Option<String>,
    recipients: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        // `-f addr` or `-faddr`, likewise -F and -C.
        let mut value = |flag: &str| -> Result<String, String> {
            if a.len() > 2 {
                Ok(a[2..].to_string())
            } else {
                i += 1;
                args.get(i).cloned().ok_or(format!("{flag} needs a value"))
            }
        };
        match a.as_str() {
            "-h" | "--help" => o.mode = Mode::Help,
            "-bv" => o.mode = Mode::Verify,
            "-bi" => o.mode = Mode::Rebuild,
            "-bp" => o.mode = Mode::PrintQueue,
            // `-q` alone, or with an interval (`-q1h`, as a daemon would): once, now.
            s if s.starts_with("-q") => o.mode = Mode::RunQueue,
            "-t" => o.from_headers = true,
            "-i" | "-oi" => o.ignore_dots = true,
            "--" => {
                o.recipients.extend(args[i + 1..].iter().cloned());
                break;
            }
            s if s.starts_with("-f") || s.starts_with("-r") => o.sender = Some(value("-f")?),
            s if s.starts_with("-F") => o.full_name = Some(value("-F")?),
            s if s.starts_with("-C") => o.config = Some(value("-C")?),
            // Delivery mode, error mode, verbosity, queue-run flags: no meaning here.
            s if s.starts_with("-o") || s.starts_with("-b") || s == "-v" || s == "-U" => {
                if s == "-bs" || s == "-bd" {
                    return Err(format!("{s} is not supported (use mtacon)"));
                }
            }
            s if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown option {s}")),
            _ => o.recipients.push(a.clone()),
        }
        i += 1;
    }
    Ok(o)
}

/// Reads the message: LF or CRLF lines to CRLF; without `-i`, a lone `.` line ends it.
fn read_message(input: &[u8], ignore_dots: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 32);
    for line in input.split_inclusive(|&b| b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if !ignore_dots && body == b"." {
            break;
        }
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The header section's fields as (name, unfolded value, raw bytes of the field).
fn header_fields(message: &[u8]) -> (Vec<(String, String, Vec<u8>)>, usize) {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(message.len());
    let mut fields: Vec<(String, String, Vec<u8>)> = Vec::new();
    for line in message[..end].split_inclusive(|&b| b == b'\n') {
        let text = String::from_utf8_lossy(line);
        if (line.starts_with(b" ") || line.starts_with(b"\t")) && !fields.is_empty() {
            let last = fields.last_mut().expect("not empty");
            last.1.push(' ');
            last.1.push_str(text.trim());
            last.2.extend_from_slice(line);
        } else if let Some((name, value)) = text.split_once(':') {
            fields.push((
                name.trim().to_string(),
                value.trim().to_string(),
                line.to_vec(),
            ));
        }
    }
    (fields, end)
}

/// Addresses in a To/Cc/Bcc value: `Name <a@b>, c@d` (groups and comments, simply).
fn addresses_in(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter_map(|part| {
            let part = part.trim();
            let addr = match (part.rfind('<'), part.rfind('>')) {
                (Some(l), Some(r)) if l < r => &part[l + 1..r],
                _ => part.split_whitespace().next().unwrap_or(""),
            };
            (!addr.is_empty() && addr.contains('@')).then(|| addr.to_string())
        })
        .collect()
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("sendmail: {msg}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().collect();
    let called = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("sendmail")
        .to_string();
    args.remove(0);
    let mut opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => return fail(EX_USAGE, format!("{e}\n{USAGE}")),
    };
    match called.as_str() {
        "mailq" => opts.mode = Mode::PrintQueue,
        "newaliases" => opts.mode = Mode::Rebuild,
        _ => {}
    }
    match opts.mode {
        Mode::Help => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        // Nothing to build: the directory file is read live.
        Mode::Rebuild => return ExitCode::SUCCESS,
        Mode::PrintQueue => {
            return console(&opts, &[&["show", "queue"], &["tell", "router", "show"]])
        }
        Mode::RunQueue => return console(&opts, &[&["route"], &["route", "localdelivery"]]),
        Mode::Send | Mode::Verify => {}
    }
    let path = config_path(&opts);
    let config = match mta_config::Config::load(std::path::Path::new(&path)) {
        Ok(c) => c,
        Err(e) => return fail(EX_CONFIG, format!("configuration error: {e}")),
    };
    let sender = match sender(&opts, &config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let (recipients, message) = if opts.mode == Mode::Verify {
        (opts.recipients.clone(), Vec::new())
    } else {
        match compose(&opts, &config, &sender) {
            Ok(composed) => composed,
            Err(code) => return code,
        }
    };
    for r in &recipients {
        if r.parse::<Address>().is_err() {
            return fail(EX_DATAERR, format!("bad recipient address `{r}`"));
        }
    }
    if recipients.is_empty() {
        return fail(
            EX_USAGE,
            "no recipients (give them as arguments, or use -t)",
        );
    }
    let Some(addr) = submission_address(&config) else {
        return fail(EX_CONFIG, "[inbound] listen is empty: nowhere to submit to");
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(EX_TEMPFAIL, format!("cannot start: {e}")),
    };
    let submission = Submission {
        addr,
        hostname: &config.hostname,
        sender: &sender,
        recipients: &recipients,
    };
    if opts.mode == Mode::Verify {
        runtime.block_on(verify(submission))
    } else {
        runtime.block_on(submit(submission, &message))
    }
}

fn config_path(opts: &Options) -> String {
    opts.config
        .clone()
        .or_else(|| std::env::var("SMTPMTA_CONFIG").ok())
        .unwrap_or_else(|| "etc/smtpmta.toml".into())
}

/// The envelope sender: `-f`, else LOGNAME@hostname.
fn sender(opts: &Options, config: &mta_config::Config) -> Result<String, ExitCode> {
    let login = std::env::var("LOGNAME")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "root".into());
    let sender = opts
        .sender
        .clone()
        .unwrap_or_else(|| format!("{login}@{}", config.hostname));
    if !sender.is_empty() && sender.parse::<Address>().is_err() {
        return Err(fail(EX_USAGE, format!("bad sender address `{sender}`")));
    }
    Ok(sender)
}

/// Reads the message from stdin and makes it ready to send: the recipients (with `-t`,
/// from its header, Bcc removed) and the content, with From, Date and Message-ID added
/// when missing.
fn compose(
    opts: &Options,
    config: &mta_config::Config,
    sender: &str,
) -> Result<(Vec<String>, Vec<u8>), ExitCode> {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        return Err(fail(
            EX_TEMPFAIL,
            format!("cannot read the message from stdin: {e}"),
        ));
    }
    let mut message = read_message(&input, opts.ignore_dots);
    let mut recipients = opts.recipients.clone();
    let (fields, header_end) = header_fields(&message);
    if opts.from_headers {
        for (name, value, _) in &fields {
            if ["to", "cc", "bcc"].contains(&name.to_ascii_lowercase().as_str()) {
                recipients.extend(addresses_in(value));
            }
        }
        // Bcc must not reach the recipients.
        let mut head = Vec::new();
        for (name, _, raw) in &fields {
            if !name.eq_ignore_ascii_case("bcc") {
                head.extend_from_slice(raw);
            }
        }
        let mut rebuilt = head;
        rebuilt.extend_from_slice(&message[header_end..]);
        message = rebuilt;
    }
    if !fields
        .iter()
        .any(|(n, _, _)| n.eq_ignore_ascii_case("from"))
    {
        let from = match &opts.full_name {
            Some(name) => format!("From: \"{}\" <{sender}>\r\n", name.replace('"', "'")),
            None => format!("From: <{sender}>\r\n"),
        };
        let mut with_from = from.into_bytes();
        with_from.extend_from_slice(&message);
        message = with_from;
    }
    Ok((recipients, with_date_and_id(message, &config.hostname)))
}

/// RFC 6409 §8.2, §8.3: Date and Message-ID when the message has none.
fn with_date_and_id(message: Vec<u8>, hostname: &str) -> Vec<u8> {
    let date = mta_smtp::rfc5322_date(std::time::SystemTime::now());
    let message_id = format!(
        "{}.{}@{hostname}",
        mta_types::QueueId::generate(),
        std::process::id()
    );
    let fields = mta_convert::SubmissionFields {
        date: &date,
        message_id: &message_id,
    };
    mta_convert::complete_submission(&message, &fields).unwrap_or(message)
}

/// The suite's first `[inbound] listen` address (a wildcard one as loopback).
fn submission_address(config: &mta_config::Config) -> Option<std::net::SocketAddr> {
    let mut addr = config.inbound.listen.first().copied()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Some(addr)
}

/// `-bp` and `-q`: console commands, run by `mtacon` from this binary's folder (the
/// console's renderer is there; this command stays a small SMTP client).
fn console(opts: &Options, commands: &[&[&str]]) -> ExitCode {
    let mtacon = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("mtacon")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "mtacon".into());
    let config = config_path(opts);
    for words in commands {
        let status = std::process::Command::new(&mtacon)
            .arg("--config")
            .arg(&config)
            .args(words.iter())
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => return ExitCode::from(s.code().map_or(EX_TEMPFAIL, |c| c as u8)),
            Err(e) => {
                return fail(
                    EX_UNAVAILABLE,
                    format!("cannot run {}: {e}", mtacon.display()),
                )
            }
        }
    }
    ExitCode::SUCCESS
}

/// Where and as whom a message (or a verification) goes.
struct Submission<'a> {
    addr: std::net::SocketAddr,
    hostname: &'a str,
    sender: &'a str,
    recipients: &'a [String],
}

/// `-bv`: MAIL and one RCPT per address, then RSET: nothing is sent. One line per
/// address on stdout; the exit status is the worst verdict's.
async fn verify(s: Submission<'_>) -> ExitCode {
    let timeout = Duration::from_secs(60);
    let (mut client, greeting) =
        match SmtpClient::connect(s.addr, Duration::from_secs(10), timeout).await {
            Ok(c) => c,
            Err(e) => {
                return fail(
                    EX_TEMPFAIL,
                    format!("the mail suite is not running ({e}); nothing verified"),
                )
            }
        };
    if !greeting.is_positive() {
        return fail(EX_TEMPFAIL, format!("greeting: {}", greeting.text()));
    }
    let steps = async {
        let mut verdicts = Vec::new();
        let r = client.hello(s.hostname).await?;
        let r = if r.is_positive() {
            client.command(&format!("MAIL FROM:<{}>", s.sender)).await?
        } else {
            r
        };
        for rcpt in s.recipients {
            let verdict = if r.is_positive() {
                client.command(&format!("RCPT TO:<{rcpt}>")).await?
            } else {
                r.clone()
            };
            verdicts.push((rcpt.clone(), verdict));
        }
        let _ = client.command("RSET").await;
        Ok::<_, mta_smtp::client::SessionError>(verdicts)
    };
    let verdicts = match steps.await {
        Ok(v) => v,
        Err(e) => return fail(EX_TEMPFAIL, format!("{e}; nothing verified")),
    };
    client.quit().await;
    let mut code = 0;
    for (rcpt, reply) in verdicts {
        if reply.is_positive() {
            println!("{rcpt}... deliverable");
        } else {
            println!("{rcpt}... undeliverable: {}", reply.code_text());
            let this = if reply.is_transient() {
                EX_TEMPFAIL
            } else {
                EX_UNAVAILABLE
            };
            // A refusal for good outranks one for now.
            code = if code == EX_UNAVAILABLE { code } else { this };
        }
    }
    ExitCode::from(code)
}

async fn submit(s: Submission<'_>, message: &[u8]) -> ExitCode {
    let Submission {
        addr,
        hostname,
        sender,
        recipients,
    } = s;
    let timeout = Duration::from_secs(60);
    let (mut client, greeting) =
        match SmtpClient::connect(addr, Duration::from_secs(10), timeout).await {
            Ok(c) => c,
            Err(e) => {
                return fail(
                    EX_TEMPFAIL,
                    format!("the mail suite is not running ({e}); the message was NOT sent"),
                )
            }
        };
    let refused = |what: &str, r: &mta_smtp::Reply| {
        let code = if r.is_transient() {
            EX_TEMPFAIL
        } else {
            EX_UNAVAILABLE
        };
        fail(
            code,
            format!("{what}: {}; the message was NOT sent", r.code_text()),
        )
    };
    if !greeting.is_positive() {
        return refused("greeting", &greeting);
    }
    let steps = async {
        let r = client.hello(hostname).await?;
        if !r.is_positive() {
            return Ok(Err(("EHLO".to_string(), r)));
        }
        let r = client.command(&format!("MAIL FROM:<{sender}>")).await?;
        if !r.is_positive() {
            return Ok(Err(("MAIL FROM".to_string(), r)));
        }
        for rcpt in recipients {
            let r = client.command(&format!("RCPT TO:<{rcpt}>")).await?;
            if !r.is_positive() {
                return Ok(Err((format!("recipient <{rcpt}>"), r)));
            }
        }
        let r = client.data(message).await?;
        if !r.is_positive() {
            return Ok(Err(("DATA".to_string(), r)));
        }
        Ok::<_, mta_smtp::client::SessionError>(Ok(r))
    };
    match steps.await {
        Ok(Ok(_)) => {
            client.quit().await;
            ExitCode::SUCCESS
        }
        Ok(Err((what, reply))) => {
            client.quit().await;
            refused(&what, &reply)
        }
        Err(e) => fail(EX_TEMPFAIL, format!("{e}; the message was NOT sent")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        let a = |s: &[&str]| parse_args(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        let o = a(&["-t", "-oi", "-fme@x.test", "-F", "Me", "you@y.test"]).unwrap();
        assert!(o.from_headers && o.ignore_dots);
        assert_eq!(o.sender.as_deref(), Some("me@x.test"));
        assert_eq!(o.full_name.as_deref(), Some("Me"));
        assert_eq!(o.recipients, vec!["you@y.test"]);
        assert!(a(&["-odi", "-oem", "x@y.test"]).is_ok());
        assert!(a(&["-Q"]).is_err());
        assert_eq!(a(&["-bv", "x@y.test"]).unwrap().mode, Mode::Verify);
        assert_eq!(a(&["-bi"]).unwrap().mode, Mode::Rebuild);
        assert_eq!(a(&["-bp"]).unwrap().mode, Mode::PrintQueue);
        assert_eq!(a(&["-q"]).unwrap().mode, Mode::RunQueue);
        assert_eq!(a(&["-q30m"]).unwrap().mode, Mode::RunQueue);
        assert_eq!(a(&["--help"]).unwrap().mode, Mode::Help);
        assert_eq!(a(&["-h"]).unwrap().mode, Mode::Help);
    }

    #[test]
    fn dots_and_line_ends() {
        assert_eq!(read_message(b"a\nb\r\n.\nc\n", false), b"a\r\nb\r\n");
        assert_eq!(read_message(b"a\n.\nc", true), b"a\r\n.\r\nc\r\n");
    }

    #[test]
    fn header_addresses() {
        assert_eq!(
            addresses_in("Alice <alice@x.test>, bob@y.test, \"C, D\" <cd@z.test>"),
            vec!["alice@x.test", "bob@y.test", "cd@z.test"]
        );
    }
}
