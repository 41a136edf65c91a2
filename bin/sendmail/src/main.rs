//! sendmail — the sendmail-compatible command: submits one message from stdin to the
//! running suite, as cron, scripts and PHP's `mail()` expect.
//!
//! `sendmail [-t] [-i | -oi] [-f sender] [-F "Full Name"] [-C config] [recipient …]`
//! (other sendmail options such as `-odi`, `-oem`, `-bm` are accepted and ignored).
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

#[derive(Debug, Default)]
struct Options {
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
                if s == "-bp" || s == "-bs" || s == "-bd" {
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => return fail(EX_USAGE, e),
    };
    let path = opts
        .config
        .clone()
        .or_else(|| std::env::var("SMTPMTA_CONFIG").ok())
        .unwrap_or_else(|| "etc/smtpmta.toml".into());
    let config = match mta_config::Config::load(std::path::Path::new(&path)) {
        Ok(c) => c,
        Err(e) => return fail(EX_CONFIG, format!("configuration error: {e}")),
    };
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        return fail(
            EX_TEMPFAIL,
            format!("cannot read the message from stdin: {e}"),
        );
    }
    let mut message = read_message(&input, opts.ignore_dots);

    let login = std::env::var("LOGNAME")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "root".into());
    let sender = opts
        .sender
        .clone()
        .unwrap_or_else(|| format!("{login}@{}", config.hostname));
    if !sender.is_empty() && sender.parse::<Address>().is_err() {
        return fail(EX_USAGE, format!("bad sender address `{sender}`"));
    }

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

    let Some(mut addr) = config.inbound.listen.first().copied() else {
        return fail(EX_CONFIG, "[inbound] listen is empty: nowhere to submit to");
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(EX_TEMPFAIL, format!("cannot start: {e}")),
    };
    runtime.block_on(submit(
        addr,
        &config.hostname,
        &sender,
        &recipients,
        &message,
    ))
}

async fn submit(
    addr: std::net::SocketAddr,
    hostname: &str,
    sender: &str,
    recipients: &[String],
    message: &[u8],
) -> ExitCode {
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
            format!("{what}: {} {}; the message was NOT sent", r.code, r.text()),
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
