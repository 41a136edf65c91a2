//! Delivery status notifications (RFC 3464, RFC 3461, RFC 3834 `Auto-Submitted`): the
//! content of the report `drt` sends to a message's sender.
//!
//! One report per message lists every recipient that needs one (`ReportLine`):
//! `multipart/report; report-type=delivery-status` with three parts —
//! 1. `text/plain`: what happened, quoting each remote server's reply;
//! 2. `message/delivery-status`: per-message fields (Reporting-MTA, Original-Envelope-Id,
//!    Arrival-Date) and per-recipient fields (Original-Recipient, Final-Recipient, Action,
//!    Status, Remote-MTA, Diagnostic-Code, Last-Attempt-Date, Will-Retry-Until);
//! 3. the original header section (`text/rfc822-headers`), or the whole message
//!    (`message/rfc822`) when the sender asked RET=FULL.
//!
//! Pure: no I/O; dates come formatted from the caller. Lines end in CRLF like spool content.

use mta_types::message::{ReportAction, Ret, UnixMillis};
use mta_types::{Enhanced, MessageRecord, RcptStatus, Recipient};
use std::fmt::Write as _;

/// One recipient to report, and how.
pub struct ReportLine<'a> {
    pub recipient: &'a Recipient,
    pub action: ReportAction,
}

/// What the report is made from.
pub struct DsnInput<'a> {
    /// This MTA's host name (Reporting-MTA, From).
    pub hostname: &'a str,
    /// The message reported on.
    pub original: &'a MessageRecord,
    pub lines: Vec<ReportLine<'a>>,
    /// The original content as spooled (None: unreadable, the third part says so).
    pub content: Option<&'a [u8]>,
    /// Formats a time as an RFC 5322 date.
    pub date: &'a dyn Fn(UnixMillis) -> String,
    pub now: UnixMillis,
    /// Unique per report (boundary and Message-ID are made from it).
    pub unique: &'a str,
    /// For a delay report: when the message will be given up (Will-Retry-Until).
    pub retry_until: Option<UnixMillis>,
}

/// The rendered report.
pub struct Dsn {
    pub content: Vec<u8>,
    pub subject: String,
    pub message_id: String,
    pub from: String,
}

/// The host part of an attempt's host (`mx.example[192.0.2.1]` → `mx.example`).
fn host_name(host: &str) -> &str {
    host.split('[').next().unwrap_or(host).trim()
}

/// Status, Remote-MTA, diagnostic reply, and last attempt time of one recipient.
struct Facts {
    status: Enhanced,
    remote: Option<String>,
    diagnostic: Option<String>,
    last_attempt: Option<UnixMillis>,
}

fn facts(r: &Recipient, action: ReportAction) -> Facts {
    let last = r.attempts.last();
    let remote = last
        .map(|a| host_name(&a.host).to_string())
        .filter(|h| !h.is_empty() && h != "local");
    let last_attempt = last.map(|a| a.at);
    let last_reply = last.and_then(|a| a.outcome.reply());
    match (&r.status, action) {
        (RcptStatus::Failed { at, status, reply }, _) => {
            let diagnostic = if reply.is_remote() {
                reply.to_string()
            } else if let Some(remote) = last_reply.filter(|t| t.is_remote()) {
                // expired: the verdict is ours, the last reply is the server's
                remote.to_string()
            } else {
                let code = if status.is_permanent() { 550 } else { 450 };
                format!("{code} {status} <{}>: {}", r.address, reply.text())
            };
            Facts {
                status: *status,
                remote,
                diagnostic: Some(diagnostic),
                last_attempt: last_attempt.or(Some(*at)),
            }
        }
        (RcptStatus::Relayed { at, host, reply }, _) => Facts {
            status: reply.status_or((2, 0, 0)),
            remote: Some(host_name(host).to_string()),
            diagnostic: Some(reply.to_string()),
            last_attempt: Some(*at),
        },
        (RcptStatus::Delivered { at, .. } | RcptStatus::Expanded { at, .. }, _) => Facts {
            status: (2, 0, 0).into(),
            remote: None,
            diagnostic: None,
            last_attempt: Some(*at),
        },
        (RcptStatus::Pending, _) => Facts {
            status: last_reply
                .and_then(|t| t.status)
                .filter(|s| s.is_transient())
                .unwrap_or(Enhanced::new(4, 0, 0)),
            remote,
            diagnostic: last_reply.map(ToString::to_string),
            last_attempt,
        },
    }
}

/// The header section of `content` (up to and including the empty line's first CRLF).
fn header_section(content: &[u8]) -> &[u8] {
    for (i, w) in content.windows(4).enumerate() {
        if w == b"\r\n\r\n" {
            return &content[..i + 2];
        }
    }
    for (i, w) in content.windows(2).enumerate() {
        if w == b"\n\n" {
            return &content[..i + 1];
        }
    }
    content
}

/// The report's subject and the first words of its human-readable part, by the gravest
/// action it reports (a failure, then a delay, then a success).
fn subject_and_intro(lines: &[ReportLine<'_>]) -> (&'static str, &'static str) {
    let any = |a: ReportAction| lines.iter().any(|l| l.action == a);
    if any(ReportAction::Failed) {
        (
            "Undelivered Mail Returned to Sender",
            "I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients. It's attached below.",
        )
    } else if any(ReportAction::Delayed) {
        (
            "Delayed Mail (still being retried)",
            "Your message could not be delivered yet to one or more recipients.\r\nThe mail system will keep trying; you do not need to send it again.",
        )
    } else {
        (
            "Successful Mail Delivery Report",
            "Your message was successfully delivered to the destination(s)\r\nlisted below, as you asked with NOTIFY=SUCCESS.",
        )
    }
}

/// One line of the human-readable part per recipient: what happened, in words.
fn write_summary(out: &mut String, lines: &[ReportLine<'_>], facts: &[Facts]) {
    for (line, f) in lines.iter().zip(facts) {
        let r = line.recipient;
        let what = match (line.action, &f.remote, &f.diagnostic) {
            (ReportAction::Failed | ReportAction::Delayed, Some(h), Some(d)) => {
                format!("host {h} said: {d}")
            }
            (ReportAction::Failed | ReportAction::Delayed, None, Some(d)) => d.clone(),
            (ReportAction::Relayed, Some(h), Some(d)) => format!("relayed to {h}: {d}"),
            (ReportAction::Expanded, _, _) => "delivered to the members of the alias".into(),
            (ReportAction::Delivered, _, _) => "delivered to the mailbox".into(),
            (a, _, _) => a.as_str().to_string(),
        };
        let _ = write!(out, "<{}>: {what}\r\n", r.address);
    }
}

/// The per-message fields of the message/delivery-status part (RFC 3464 2.2).
fn write_message_fields(out: &mut String, input: &DsnInput<'_>, sender: &str) {
    let rec = input.original;
    let _ = write!(
        out,
        "Reporting-MTA: dns; {}\r\nX-Queue-ID: {}\r\n",
        input.hostname, rec.id
    );
    if let Some(envid) = &rec.envelope.envid {
        let _ = write!(out, "Original-Envelope-Id: {envid}\r\n");
    }
    if !sender.is_empty() {
        let _ = write!(out, "X-Original-Sender: rfc822; {sender}\r\n");
    }
    let _ = write!(out, "Arrival-Date: {}\r\n", (input.date)(rec.received_at));
}

/// The per-recipient fields of the message/delivery-status part (RFC 3464 2.3).
fn write_recipient_fields(out: &mut String, input: &DsnInput<'_>, facts: &[Facts]) {
    for (line, f) in input.lines.iter().zip(facts) {
        let r = line.recipient;
        out.push_str("\r\n");
        if let Some(orcpt) = &r.orcpt {
            let (kind, addr) = orcpt.split_once(';').unwrap_or(("rfc822", orcpt));
            let _ = write!(
                out,
                "Original-Recipient: {}; {}\r\n",
                kind.trim(),
                addr.trim()
            );
        }
        let _ = write!(
            out,
            "Final-Recipient: rfc822; {}\r\nAction: {}\r\nStatus: {}\r\n",
            r.address,
            line.action.as_str(),
            f.status
        );
        if let Some(h) = &f.remote {
            let _ = write!(out, "Remote-MTA: dns; {h}\r\n");
        }
        if let Some(d) = &f.diagnostic {
            let _ = write!(out, "Diagnostic-Code: smtp; {d}\r\n");
        }
        if let Some(t) = f.last_attempt {
            let _ = write!(out, "Last-Attempt-Date: {}\r\n", (input.date)(t));
        }
        if let (ReportAction::Delayed, Some(until)) = (line.action, input.retry_until) {
            let _ = write!(out, "Will-Retry-Until: {}\r\n", (input.date)(until));
        }
    }
}

/// The third part: the original message (RET=FULL) or its header (otherwise, RFC 3461
/// 4.3), or a note that its content could not be read; then the closing boundary.
fn append_original(bytes: &mut Vec<u8>, input: &DsnInput<'_>, boundary: &str) {
    let full = input.original.envelope.ret == Some(Ret::Full);
    match input.content {
        Some(content) => {
            let (ctype, desc, body) = if full {
                ("message/rfc822", "Undelivered Message", content)
            } else {
                (
                    "text/rfc822-headers",
                    "Undelivered Message Headers",
                    header_section(content),
                )
            };
            bytes.extend_from_slice(
                format!(
                    "\r\n--{boundary}\r\nContent-Description: {desc}\r\nContent-Type: {ctype}\r\n\r\n"
                )
                .as_bytes(),
            );
            bytes.extend_from_slice(body);
            if !body.ends_with(b"\n") {
                bytes.extend_from_slice(b"\r\n");
            }
        }
        None => bytes.extend_from_slice(
            format!(
                "\r\n--{boundary}\r\nContent-Type: text/plain\r\n\r\n(the original message could not be read)\r\n"
            )
            .as_bytes(),
        ),
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
}

/// Renders the report: a multipart/report (RFC 6522) of a human-readable part, the
/// message/delivery-status part (RFC 3464) and the original message or its header.
pub fn render_dsn(input: &DsnInput<'_>) -> Dsn {
    let rec = input.original;
    let host = input.hostname;
    let sender = rec.envelope.return_path();
    let (subject, intro) = subject_and_intro(&input.lines);
    let boundary = format!("{}/{host}", input.unique);
    let message_id = format!("<{}@{host}>", input.unique);
    let from = format!("MAILER-DAEMON@{host}");

    let mut out = String::new();
    let _ = write!(
        out,
        "From: Mail Delivery System <{from}>\r\n\
         To: <{sender}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: {message_id}\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail system at host {host}.\r\n\
         \r\n\
         {intro}\r\n\
         \r\n",
        date = (input.date)(input.now),
    );
    let facts: Vec<Facts> = input
        .lines
        .iter()
        .map(|l| facts(l.recipient, l.action))
        .collect();
    write_summary(&mut out, &input.lines, &facts);
    let _ = write!(
        out,
        "\r\n--{boundary}\r\n\
         Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n"
    );
    write_message_fields(&mut out, input, &sender);
    write_recipient_fields(&mut out, input, &facts);
    let mut bytes = out.into_bytes();
    append_original(&mut bytes, input, &boundary);
    Dsn {
        content: bytes,
        subject: subject.to_string(),
        message_id,
        from,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mta_types::message::{Attempt, ContentRef, Envelope, HopTrace, RECORD_SCHEMA};
    use mta_types::outcome::Reply;
    use mta_types::{Location, QueueId, QueueName};

    fn record() -> MessageRecord {
        let unknown = Reply::remote(
            550,
            Some((5, 1, 1).into()),
            "<bob@example.net>: User unknown",
        );
        let mut bad = Recipient::new("bob@example.net".parse().unwrap());
        bad.orcpt = Some("rfc822;Bob@example.net".into());
        bad.attempts.push(Attempt {
            at: 2000,
            host: "mx.example.net[192.0.2.1]".into(),
            outcome: mta_types::DeliveryOutcome::Failed {
                status: (5, 1, 1).into(),
                reply: unknown.clone(),
            },
        });
        bad.status = RcptStatus::Failed {
            at: 2000,
            status: (5, 1, 1).into(),
            reply: unknown,
        };
        let mut local = Recipient::new("ghost@localhost".parse().unwrap());
        local.status = RcptStatus::Failed {
            at: 1500,
            status: (5, 1, 1).into(),
            reply: Reply::local((5, 1, 1), "user unknown"),
        };
        MessageRecord {
            schema: RECORD_SCHEMA,
            id: QueueId::from_u64(42),
            location: Location::Queue(QueueName::Reports),
            received_at: 1000,
            size: 40,
            envelope: Envelope {
                envid: Some("E1".into()),
                ..Envelope::new(
                    Some("alice@localhost".parse().unwrap()),
                    "h",
                    "127.0.0.1",
                    "ESMTP",
                )
            },
            recipients: vec![bad, local],
            content: ContentRef {
                segment: "s".into(),
                offset: 0,
                len: 40,
            },
            fields: None,
            trace: HopTrace::default(),
            not_before: 0,
            note: None,
        }
    }

    #[test]
    fn one_report_lists_every_failed_recipient() {
        let rec = record();
        let content = b"Subject: hi\r\nFrom: alice@localhost\r\n\r\nsecret body\r\n";
        let dsn = render_dsn(&DsnInput {
            hostname: "mta.test",
            original: &rec,
            lines: rec
                .recipients
                .iter()
                .map(|r| ReportLine {
                    recipient: r,
                    action: ReportAction::Failed,
                })
                .collect(),
            content: Some(content),
            date: &|t| format!("T{t}"),
            now: 3000,
            unique: "U1",
            retry_until: None,
        });
        let text = String::from_utf8(dsn.content).unwrap();
        for want in [
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Reporting-MTA: dns; mta.test\r\n",
            "Original-Envelope-Id: E1\r\n",
            "Arrival-Date: T1000\r\n",
            "Original-Recipient: rfc822; Bob@example.net\r\nFinal-Recipient: rfc822; bob@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.example.net\r\nDiagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: User unknown\r\nLast-Attempt-Date: T2000\r\n",
            "Final-Recipient: rfc822; ghost@localhost\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <ghost@localhost>: user unknown\r\n",
            "<bob@example.net>: host mx.example.net said: 550 5.1.1",
            "Content-Type: text/rfc822-headers\r\n\r\nSubject: hi\r\nFrom: alice@localhost\r\n\r\n--U1/mta.test--\r\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("secret body"));
        assert_eq!(dsn.subject, "Undelivered Mail Returned to Sender");
    }

    #[test]
    fn ret_full_attaches_the_message() {
        let mut rec = record();
        rec.envelope.ret = Some(Ret::Full);
        let content = b"Subject: hi\r\n\r\nsecret body\r\n";
        let dsn = render_dsn(&DsnInput {
            hostname: "mta.test",
            original: &rec,
            lines: vec![ReportLine {
                recipient: &rec.recipients[0],
                action: ReportAction::Failed,
            }],
            content: Some(content),
            date: &|t| t.to_string(),
            now: 3000,
            unique: "U2",
            retry_until: None,
        });
        let text = String::from_utf8(dsn.content).unwrap();
        assert!(
            text.contains("Content-Type: message/rfc822\r\n\r\nSubject: hi\r\n\r\nsecret body\r\n")
        );
    }
}
