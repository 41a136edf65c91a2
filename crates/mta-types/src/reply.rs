//! The one SMTP reply type (RFC 5321 4.2) with its enhanced status code (RFC 2034, RFC
//! 3463): what the server sends, what the client reads, and what a record keeps of a
//! recipient's reply, our own verdicts (unknown user, expiry, DNS failure) included.
//!
//! Every reply the server sends has a named constructor here; call sites never spell out a
//! code or a text. `mta_smtp` re-exports the type (`mta_smtp::Reply`) and adds the reading
//! of a reply from a connection (`mta_smtp::read_reply`); `crate::outcome` keeps it in
//! delivery outcomes.
//!
//! Two printed forms: `Display` is the one-line form logs, the console and delivery reports
//! print (`550 5.1.1 User unknown`, `4.4.3 lookup failed`); [`Reply::wire`] and
//! [`Reply::to_bytes`] are what goes on the connection (every line with its code and CRLF).
//!
//! In records and frames a reply is `{ code, status, text }` (the lines joined with a
//! space), the shape record format 3 introduced: see [`Reply::recorded`].

use crate::outcome::Enhanced;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One SMTP reply, possibly multi-line; or our own verdict, which has no SMTP code.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "Recorded", into = "Recorded")]
pub struct Reply {
    /// The SMTP reply code, when a server gave it or we send it (`None`: our own verdict).
    pub code: Option<u16>,
    /// The RFC 3463 enhanced status code (5.1.1), when there is one; printed at the start
    /// of every line's text on the wire (RFC 2034 section 4).
    pub status: Option<Enhanced>,
    /// The text of each line, after the codes.
    pub lines: Vec<String>,
}

/// The serialized shape of a [`Reply`] (record format 3 and later, the IPC frames, the
/// JSON of `--json` and the spool envelope): kept field for field, so changing `Reply`
/// in memory is not a record format change.
#[derive(Clone, Serialize, Deserialize)]
struct Recorded {
    code: Option<u16>,
    status: Option<Enhanced>,
    text: String,
}

impl From<Recorded> for Reply {
    fn from(r: Recorded) -> Reply {
        Reply {
            code: r.code,
            status: r.status,
            lines: vec![r.text],
        }
    }
}

impl From<Reply> for Recorded {
    fn from(r: Reply) -> Recorded {
        Recorded {
            text: r.text(),
            code: r.code,
            status: r.status,
        }
    }
}

impl Reply {
    /// A one-line reply with this code.
    pub fn new(code: u16, status: Option<Enhanced>, text: impl Into<String>) -> Reply {
        Reply {
            code: Some(code),
            status,
            lines: vec![text.into()],
        }
    }

    /// A reply a server sent (one line, or its lines joined).
    pub fn remote(code: u16, status: Option<Enhanced>, text: impl Into<String>) -> Reply {
        Reply::new(code, status, text)
    }

    /// Our own verdict with its enhanced status (5.1.1, "user unknown").
    pub fn local(status: impl Into<Enhanced>, text: impl Into<String>) -> Reply {
        Reply {
            code: None,
            status: Some(status.into()),
            lines: vec![text.into()],
        }
    }

    fn enh(code: u16, class_subject_detail: (u8, u16, u16), text: impl Into<String>) -> Reply {
        Reply::new(code, Some(class_subject_detail.into()), text)
    }

    // ----- Connection -----

    /// `220 <host> ESMTP smtpmta ready` (no enhanced code in the banner).
    pub fn greeting(hostname: &str) -> Reply {
        Reply::new(220, None, format!("{hostname} ESMTP smtpmta ready"))
    }

    /// The EHLO reply: the first line greets, the rest are the extension keywords.
    pub fn ehlo(hostname: &str, client_domain: &str, extensions: &[String]) -> Reply {
        let mut lines = Vec::with_capacity(extensions.len() + 1);
        lines.push(format!("{hostname} Hello {client_domain}"));
        lines.extend(extensions.iter().cloned());
        Reply {
            code: Some(250),
            status: None,
            lines,
        }
    }

    pub fn helo(hostname: &str, client_domain: &str) -> Reply {
        Reply::new(250, None, format!("{hostname} Hello {client_domain}"))
    }

    /// `221 2.0.0 Bye`
    pub fn bye() -> Reply {
        Reply::enh(221, (2, 0, 0), "Bye")
    }

    /// `421 4.4.2 <host> Error: timeout exceeded`
    pub fn timeout(hostname: &str) -> Reply {
        Reply::enh(
            421,
            (4, 4, 2),
            format!("{hostname} Error: timeout exceeded"),
        )
    }

    /// `421 4.7.0 <host> Error: too many errors`
    pub fn too_many_errors(hostname: &str) -> Reply {
        Reply::enh(421, (4, 7, 0), format!("{hostname} Error: too many errors"))
    }

    /// `421 4.3.2 <host> Service shutting down, closing transmission channel`
    pub fn shutting_down(hostname: &str) -> Reply {
        Reply::enh(
            421,
            (4, 3, 2),
            format!("{hostname} Service shutting down, closing transmission channel"),
        )
    }

    /// `421 4.3.2 <host> Service not available: this node is being drained, try another`
    /// (the greeting of a node under `tell smtpmta drain`).
    pub fn draining(hostname: &str) -> Reply {
        Reply::enh(
            421,
            (4, 3, 2),
            format!("{hostname} Service not available: this node is being drained, try another"),
        )
    }

    /// `421 4.5.0`: the session cannot tell where the next command starts (a BDAT whose
    /// size could not be read), so it closes.
    pub fn lost_sync(hostname: &str) -> Reply {
        Reply::enh(
            421,
            (4, 5, 0),
            format!("{hostname} Error: lost synchronisation, closing connection"),
        )
    }

    // ----- Positive -----

    /// `250 2.0.0 Ok`
    pub fn ok() -> Reply {
        Reply::enh(250, (2, 0, 0), "Ok")
    }

    /// `250 2.1.0 Ok` (RFC 3463: 2.1.0 for the originator)
    pub fn sender_ok() -> Reply {
        Reply::enh(250, (2, 1, 0), "Ok")
    }

    /// `250 2.1.5 Ok`
    pub fn recipient_ok() -> Reply {
        Reply::enh(250, (2, 1, 5), "Ok")
    }

    /// `354 End data with <CR><LF>.<CR><LF>`
    pub fn start_data() -> Reply {
        Reply::new(354, None, "End data with <CR><LF>.<CR><LF>")
    }

    /// `250 2.0.0 Ok: <n> octets` for a BDAT chunk that is not the last.
    pub fn chunk_ok(octets: u64) -> Reply {
        Reply::enh(250, (2, 0, 0), format!("Ok: {octets} octets"))
    }

    /// `250 2.0.0 Ok: queued as <QID>`
    pub fn queued(qid: impl fmt::Display) -> Reply {
        Reply::enh(250, (2, 0, 0), format!("Ok: queued as {qid}"))
    }

    /// `252 2.1.5`: VRFY is answered without disclosing anything.
    pub fn vrfy_cannot() -> Reply {
        Reply::enh(
            252,
            (2, 1, 5),
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }

    /// `214 2.0.0` with the list of commands.
    pub fn help() -> Reply {
        Reply::enh(
            214,
            (2, 0, 0),
            "Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT",
        )
    }

    // ----- Syntax and sequence -----

    /// `500 5.5.2 Error: command not recognized`
    pub fn syntax_error() -> Reply {
        Reply::enh(500, (5, 5, 2), "Error: command not recognized")
    }

    /// `500 5.5.2 Error: bad syntax` for a known verb whose line is malformed (NUL, CR, …).
    pub fn bad_syntax() -> Reply {
        Reply::enh(500, (5, 5, 2), "Error: bad syntax")
    }

    /// `500 5.5.2 Line too long`
    pub fn line_too_long() -> Reply {
        Reply::enh(500, (5, 5, 2), "Line too long")
    }

    /// `503 5.5.1 Error: <what>` for a command given out of order.
    pub fn bad_sequence(what: &str) -> Reply {
        Reply::enh(503, (5, 5, 1), format!("Error: {what}"))
    }

    /// `501 5.5.4 <detail>` for wrong arguments or parameter values.
    pub fn param_error(detail: &str) -> Reply {
        Reply::enh(501, (5, 5, 4), detail.to_string())
    }

    /// `501 5.5.4 Duplicate parameter <NAME>`
    pub fn duplicate_parameter(name: &str) -> Reply {
        Reply::enh(501, (5, 5, 4), format!("Duplicate parameter {name}"))
    }

    /// `501 5.5.4 Bad parameter value: <NAME>`
    pub fn bad_parameter_value(name: &str) -> Reply {
        Reply::enh(501, (5, 5, 4), format!("Bad parameter value: {name}"))
    }

    /// `555 5.5.4 ESMTP parameters need EHLO` (the client said HELO).
    pub fn esmtp_needs_ehlo() -> Reply {
        Reply::enh(555, (5, 5, 4), "ESMTP parameters need EHLO")
    }

    /// `555 5.5.4 Unsupported option: <NAME>` (RFC 5321 4.1.1.11)
    pub fn unknown_parameter(name: &str) -> Reply {
        Reply::enh(555, (5, 5, 4), format!("Unsupported option: {name}"))
    }

    /// `555 5.7.1 XFLEET is for authenticated fleet peers only` (a client that is not the
    /// fleet peer used the hand-off parameter `keyword`, `mta_smtp::handoff`).
    pub fn handoff_peers_only(keyword: &str) -> Reply {
        Reply::enh(
            555,
            (5, 7, 1),
            format!("{keyword} is for authenticated fleet peers only"),
        )
    }

    /// `502 5.5.1 Error: command not implemented`
    pub fn not_implemented() -> Reply {
        Reply::enh(502, (5, 5, 1), "Error: command not implemented")
    }

    /// `554 5.5.1 Error: no valid recipients`
    pub fn no_valid_recipients() -> Reply {
        Reply::enh(554, (5, 5, 1), "Error: no valid recipients")
    }

    // ----- Addresses -----

    /// `501 5.1.7 Bad sender address syntax`
    pub fn bad_sender_address() -> Reply {
        Reply::enh(501, (5, 1, 7), "Bad sender address syntax")
    }

    /// `501 5.1.3 Bad recipient address syntax`
    pub fn bad_address() -> Reply {
        Reply::enh(501, (5, 1, 3), "Bad recipient address syntax")
    }

    /// `553 5.1.0 Source routes are not accepted` (`<@a,@b:user@c>`).
    pub fn source_route_rejected() -> Reply {
        Reply::enh(553, (5, 1, 0), "Source routes are not accepted")
    }

    /// `553 5.6.7 SMTPUTF8 is required for a non-ASCII address` (RFC 6531 3.5).
    pub fn need_utf8() -> Reply {
        Reply::enh(
            553,
            (5, 6, 7),
            "SMTPUTF8 is required for a non-ASCII address",
        )
    }

    /// `550 5.1.1 <rcpt>: Recipient address rejected: User unknown`
    pub fn mailbox_unknown(rcpt: impl fmt::Display) -> Reply {
        Reply::enh(
            550,
            (5, 1, 1),
            format!("<{rcpt}>: Recipient address rejected: User unknown"),
        )
    }

    /// `554 5.7.1 <rcpt>: Relay access denied`
    pub fn relay_denied(rcpt: impl fmt::Display) -> Reply {
        Reply::enh(554, (5, 7, 1), format!("<{rcpt}>: Relay access denied"))
    }

    /// `550 5.7.1 …`: the From domain's DMARC policy is reject and the message failed it
    /// (RFC 7489 section 6.6.3; `[inbound] dmarc_reject`). Given at the end of DATA.
    pub fn dmarc_rejected(domain: impl fmt::Display) -> Reply {
        Reply::enh(
            550,
            (5, 7, 1),
            format!("Email rejected per DMARC policy for {domain}"),
        )
    }

    /// `452 4.5.3 Error: too many recipients`
    pub fn too_many_recipients() -> Reply {
        Reply::enh(452, (4, 5, 3), "Error: too many recipients")
    }

    // ----- Content -----

    /// `552 5.3.4 Message size exceeds fixed limit`
    pub fn message_too_big() -> Reply {
        Reply::enh(552, (5, 3, 4), "Message size exceeds fixed limit")
    }

    /// `552 5.3.4 Message line too long`
    pub fn line_too_long_in_data() -> Reply {
        Reply::enh(552, (5, 3, 4), "Message line too long")
    }

    /// `554 5.6.0` for a bare CR or LF in DATA (the SMTP smuggling defence).
    pub fn bare_lf_rejected() -> Reply {
        Reply::enh(
            554,
            (5, 6, 0),
            "Message contains bare CR or LF characters (not allowed, see RFC 5321 2.3.8)",
        )
    }

    /// `555 5.5.4 BODY=BINARYMIME is not supported`
    pub fn body_type_unsupported() -> Reply {
        Reply::enh(555, (5, 5, 4), "BODY=BINARYMIME is not supported")
    }

    /// `554 5.4.6 Too many hops` (a mail loop).
    pub fn too_many_hops() -> Reply {
        Reply::enh(554, (5, 4, 6), "Too many hops")
    }

    // ----- TLS and AUTH (RFC 3207, RFC 4954; the texts Postfix uses) -----

    /// `220 2.0.0 Ready to start TLS`
    pub fn ready_for_tls() -> Reply {
        Reply::enh(220, (2, 0, 0), "Ready to start TLS")
    }

    /// `503 5.5.1 Error: TLS already active`
    pub fn tls_already_active() -> Reply {
        Reply::enh(503, (5, 5, 1), "Error: TLS already active")
    }

    /// `530 5.7.0 Must issue a STARTTLS command first` (submission before STARTTLS).
    pub fn starttls_first() -> Reply {
        Reply::enh(530, (5, 7, 0), "Must issue a STARTTLS command first")
    }

    /// `538 5.7.11 Encryption required for requested authentication mechanism`
    pub fn encryption_required() -> Reply {
        Reply::enh(
            538,
            (5, 7, 11),
            "Encryption required for requested authentication mechanism",
        )
    }

    /// `530 5.7.0 Authentication required` (MAIL on a submission listener without AUTH).
    pub fn auth_required() -> Reply {
        Reply::enh(530, (5, 7, 0), "Authentication required")
    }

    /// `503 5.5.1 Error: authentication not enabled` (AUTH where it is not offered).
    pub fn auth_not_enabled() -> Reply {
        Reply::enh(503, (5, 5, 1), "Error: authentication not enabled")
    }

    /// `503 5.5.1 Error: already authenticated`
    pub fn already_authenticated() -> Reply {
        Reply::enh(503, (5, 5, 1), "Error: already authenticated")
    }

    /// `503 5.5.1 Error: MAIL transaction in progress` (AUTH inside a transaction).
    pub fn auth_in_transaction() -> Reply {
        Reply::enh(503, (5, 5, 1), "Error: MAIL transaction in progress")
    }

    /// `504 5.5.4 Unsupported authentication mechanism`
    pub fn auth_mechanism_unsupported() -> Reply {
        Reply::enh(504, (5, 5, 4), "Unsupported authentication mechanism")
    }

    /// `334 <base64 challenge>` (no enhanced code: RFC 4954 4).
    pub fn auth_challenge(challenge: &str) -> Reply {
        Reply::new(334, None, challenge.to_string())
    }

    /// `501 5.7.0 Authentication aborted` (the client sent `*`).
    pub fn auth_aborted() -> Reply {
        Reply::enh(501, (5, 7, 0), "Authentication aborted")
    }

    /// `501 5.5.2 Cannot decode response` (bad base64 or SASL message).
    pub fn auth_cannot_decode() -> Reply {
        Reply::enh(501, (5, 5, 2), "Cannot decode response")
    }

    /// `235 2.7.0 Authentication successful`
    pub fn auth_ok() -> Reply {
        Reply::enh(235, (2, 7, 0), "Authentication successful")
    }

    /// `535 5.7.8 Error: authentication failed` — the same for an unknown user and a wrong
    /// password, so the reply tells an attacker nothing.
    pub fn auth_failed() -> Reply {
        Reply::enh(535, (5, 7, 8), "Error: authentication failed")
    }

    /// `454 4.7.0 Too many authentication failures; try again later`
    pub fn auth_locked() -> Reply {
        Reply::enh(
            454,
            (4, 7, 0),
            "Too many authentication failures; try again later",
        )
    }

    /// `553 5.7.1 <addr>: Sender address rejected: not owned by user <user>`
    pub fn sender_not_owned(sender: impl fmt::Display, user: &str) -> Reply {
        Reply::enh(
            553,
            (5, 7, 1),
            format!("<{sender}>: Sender address rejected: not owned by user {user}"),
        )
    }

    // ----- At the door (isesctl's per-client checks) -----

    /// `554 5.7.1 Service unavailable; client [ip] blocked using <zone>` (Postfix's
    /// wording): a DNS blocklist lists the client. The reply to every command.
    pub fn dnsbl_blocked(ip: std::net::IpAddr, zone: &str) -> Reply {
        Reply::enh(
            554,
            (5, 7, 1),
            format!("Service unavailable; client [{ip}] blocked using {zone}"),
        )
    }

    /// `421 4.7.0 <host> Error: <reason>`: a per-client limit (`too many connections
    /// from [ip] (limit 10)`); the session ends.
    pub fn client_limit(hostname: &str, reason: &str) -> Reply {
        Reply::enh(421, (4, 7, 0), format!("{hostname} Error: {reason}"))
    }

    /// `554 5.5.1 <host> Error: talked before the greeting` (the pregreet test); the
    /// connection is dropped.
    pub fn pregreet(hostname: &str) -> Reply {
        Reply::enh(
            554,
            (5, 5, 1),
            format!("{hostname} Error: protocol error: talked before the greeting"),
        )
    }

    /// `554 5.5.0 Error: SMTP protocol synchronization` (Postfix's wording): commands sent
    /// before the reply they had to wait for; the session ends.
    pub fn pipelining_refused() -> Reply {
        Reply::enh(554, (5, 5, 0), "Error: SMTP protocol synchronization")
    }

    // ----- Local trouble -----

    /// `550 5.7.1 Command rejected`: a milter's REJECT (Postfix's text).
    pub fn milter_rejected() -> Reply {
        Reply::enh(550, (5, 7, 1), "Command rejected")
    }

    /// `451 4.7.1 Service unavailable - try again later`: a milter's TEMPFAIL, or a
    /// milter that cannot be used with `default_action = "tempfail"` (Postfix's text).
    pub fn milter_tempfail() -> Reply {
        Reply::enh(451, (4, 7, 1), "Service unavailable - try again later")
    }

    /// `421 4.7.0 <host> Service unavailable - closing connection`: a milter's SHUTDOWN.
    pub fn milter_shutdown(hostname: &str) -> Reply {
        Reply::enh(
            421,
            (4, 7, 0),
            format!("{hostname} Service unavailable - closing connection"),
        )
    }

    /// A milter's own reply (SMFIR_REPLYCODE), e.g. `554 5.7.1 Gtube pattern`, possibly
    /// several lines: `None` unless it is a well-formed 4xx or 5xx reply.
    pub fn from_milter(text: &str) -> Option<Reply> {
        let mut bytes = text.trim_end().as_bytes().to_vec();
        bytes.extend_from_slice(b"\r\n");
        let reply = Reply::parse_lines(&bytes).ok()?;
        (reply.is_transient() || reply.is_permanent()).then_some(reply)
    }

    /// `452 4.3.1 Insufficient system storage`
    pub fn storage_full() -> Reply {
        Reply::enh(452, (4, 3, 1), "Insufficient system storage")
    }

    /// `451 4.3.0 Error: local error in processing`
    pub fn local_error() -> Reply {
        Reply::enh(451, (4, 3, 0), "Error: local error in processing")
    }

    // ----- Classification -----

    /// The reply's class: the code's first digit, or our own verdict's status class.
    fn class(&self) -> u16 {
        match (self.code, self.status) {
            (Some(code), _) => code / 100,
            (None, Some(status)) => u16::from(status.class),
            (None, None) => 0,
        }
    }

    /// 2xx: the command was done (RFC 5321 4.2.1 "positive completion").
    pub fn is_completion(&self) -> bool {
        self.class() == 2
    }

    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        matches!(self.class(), 2 | 3)
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        self.class() == 4
    }

    /// 5xx: do not retry.
    pub fn is_permanent(&self) -> bool {
        self.class() == 5
    }

    /// Whether this reply closes the connection (421, 221).
    pub fn closes_connection(&self) -> bool {
        matches!(self.code, Some(421 | 221))
    }

    /// True when a server said it (RFC 3464 Diagnostic-Code `smtp;` quotes these as is).
    pub fn is_remote(&self) -> bool {
        self.code.is_some()
    }

    /// The enhanced status, or `X.0.0` from the code's class, or `default`.
    pub fn status_or(&self, default: impl Into<Enhanced>) -> Enhanced {
        match (self.status, self.code) {
            (Some(s), _) => s,
            (None, Some(c)) => Enhanced::of_code(c),
            (None, None) => default.into(),
        }
    }

    /// All lines' text joined with a space (without codes), for logs and records.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// The reply as records keep it: one line, the lines' text joined with a space (what
    /// a record read back gives, so a stored outcome compares equal to its reading).
    pub fn recorded(&self) -> Reply {
        Reply {
            code: self.code,
            status: self.status,
            lines: vec![self.text()],
        }
    }

    /// `550 text`: the code and the text without the enhanced status, as an error message
    /// quotes a server's reply (one of our own verdicts without a code: the text alone).
    pub fn code_text(&self) -> String {
        match self.code {
            Some(code) => format!("{code} {}", self.text()),
            None => self.text(),
        }
    }

    /// The wire form: each line `code`, `-` or space, optional enhanced code, text, CRLF.
    /// (Our own verdicts are never sent; theirs would carry their class's `X00`.)
    pub fn wire(&self) -> String {
        let code = self.code.unwrap_or(self.class() * 100);
        let empty = [String::new()];
        let lines: &[String] = if self.lines.is_empty() {
            &empty
        } else {
            &self.lines
        };
        let mut out = String::new();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.push_str(&code.to_string());
            out.push(sep);
            if let Some(e) = self.status {
                out.push_str(&format!("{e} "));
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out
    }

    /// [`Reply::wire`] as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.wire().into_bytes()
    }

    /// Parses a complete reply (one or more CRLF- or LF-terminated lines), client direction.
    /// The enhanced code is recognised when the first line's text starts with one whose class
    /// matches the reply code's first digit; it is then stripped from every line that has it.
    pub fn parse_lines(bytes: &[u8]) -> Result<Reply, BadReply> {
        let text = std::str::from_utf8(bytes).map_err(|_| BadReply::Malformed)?;
        let mut code = None;
        let mut raw_lines = Vec::new();
        let mut finished = false;
        let body = text.strip_suffix('\n').ok_or(BadReply::Malformed)?;
        for line in body.split('\n') {
            if finished {
                return Err(BadReply::Malformed);
            }
            let line = line.strip_suffix('\r').unwrap_or(line);
            let (c, more, rest) = parse_reply_line(line)?;
            if *code.get_or_insert(c) != c {
                return Err(BadReply::Malformed);
            }
            raw_lines.push(rest);
            finished = !more;
        }
        if !finished {
            return Err(BadReply::Incomplete);
        }
        let code = code.ok_or(BadReply::Malformed)?;
        let status = raw_lines
            .first()
            .and_then(|l| split_enhanced(code, l))
            .map(|(e, _)| e);
        let lines = raw_lines
            .into_iter()
            .map(|l| match (status, split_enhanced(code, l)) {
                (Some(e), Some((e2, rest))) if e == e2 => rest.to_string(),
                _ => l.to_string(),
            })
            .collect();
        Ok(Reply {
            code: Some(code),
            status,
            lines,
        })
    }

    /// Reads a reply kept as text by a store written before record format 3 ("550 5.1.1
    /// User unknown", "4.4.3 lookup failed", "user unknown"). Only the format decoder calls
    /// this: records of this build keep replies typed.
    pub fn from_legacy_text(text: &str) -> Reply {
        let text = text.trim();
        let mut rest = text;
        let mut code = None;
        let first = rest.split_whitespace().next().unwrap_or("");
        if first.len() == 3
            && first.bytes().all(|b| b.is_ascii_digit())
            && matches!(first.as_bytes()[0], b'2'..=b'5')
        {
            code = first.parse().ok();
            rest = rest[first.len()..].trim_start();
        }
        let word = rest.split_whitespace().next().unwrap_or("");
        let status = word.parse::<Enhanced>().ok();
        if status.is_some() {
            rest = rest[word.len()..].trim_start();
        }
        Reply {
            code,
            status,
            lines: vec![rest.to_string()],
        }
    }
}

/// `550 5.1.1 User unknown`, `4.4.3 lookup failed`: the form logs and the console print
/// (the lines joined with a space; the wire form is [`Reply::wire`]).
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(c) = self.code {
            write!(f, "{c}")?;
            sep = " ";
        }
        if let Some(s) = &self.status {
            write!(f, "{sep}{s}")?;
            sep = " ";
        }
        let text = self.text();
        if !text.is_empty() {
            write!(f, "{sep}{text}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reply({:?})", self.wire().trim_end())
    }
}

/// Bytes that are not a complete SMTP reply ([`Reply::parse_lines`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadReply {
    #[error("malformed SMTP reply")]
    Malformed,
    #[error("SMTP reply ended before its last line")]
    Incomplete,
}

/// `"250-text"` → `(250, true, "text")`. A bare `"250"` is a final line with empty text.
fn parse_reply_line(line: &str) -> Result<(u16, bool, &str), BadReply> {
    let b = line.as_bytes();
    if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&b[0]) {
        return Err(BadReply::Malformed);
    }
    let code: u16 = line[..3].parse().map_err(|_| BadReply::Malformed)?;
    match b.get(3) {
        None => Ok((code, false, "")),
        Some(b' ') => Ok((code, false, &line[4..])),
        Some(b'-') => Ok((code, true, &line[4..])),
        Some(_) => Err(BadReply::Malformed),
    }
}

/// `"5.1.1 User unknown"` with code 550 → `(5.1.1, "User unknown")`: an enhanced code
/// whose class is the reply code's.
fn split_enhanced(code: u16, text: &str) -> Option<(Enhanced, &str)> {
    let (token, rest) = match text.split_once(' ') {
        Some((t, r)) => (t, r),
        None => (text, ""),
    };
    let e: Enhanced = token.parse().ok()?;
    (u16::from(e.class) == code / 100).then_some((e, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_with_enhanced_code() {
        assert_eq!(Reply::ok().wire(), "250 2.0.0 Ok\r\n");
        assert_eq!(
            Reply::queued("0ABC").wire(),
            "250 2.0.0 Ok: queued as 0ABC\r\n"
        );
        assert_eq!(
            Reply::mailbox_unknown("a@b").wire(),
            "550 5.1.1 <a@b>: Recipient address rejected: User unknown\r\n"
        );
    }

    #[test]
    fn greeting_has_no_enhanced_code() {
        assert_eq!(
            Reply::greeting("mx.example").wire(),
            "220 mx.example ESMTP smtpmta ready\r\n"
        );
    }

    #[test]
    fn multi_line_ehlo() {
        let r = Reply::ehlo("mx", "client", &["PIPELINING".into(), "SIZE 10".into()]);
        assert_eq!(
            r.to_bytes(),
            b"250-mx Hello client\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
    }

    #[test]
    fn multi_line_enhanced_on_every_line() {
        let r = Reply {
            code: Some(550),
            status: Some((5, 7, 1).into()),
            lines: vec!["a".into(), "b".into()],
        };
        assert_eq!(r.wire(), "550-5.7.1 a\r\n550 5.7.1 b\r\n");
        assert_eq!(r.to_string(), "550 5.7.1 a b");
    }

    #[test]
    fn classification() {
        assert!(Reply::ok().is_positive());
        assert!(Reply::start_data().is_positive());
        assert!(Reply::storage_full().is_transient());
        assert!(Reply::message_too_big().is_permanent());
        assert!(Reply::timeout("h").closes_connection());
    }

    #[test]
    fn parse_round_trips() {
        for r in [
            Reply::ok(),
            Reply::bare_lf_rejected(),
            Reply::greeting("h"),
            Reply::ehlo("mx", "c", &["8BITMIME".into(), "DSN".into()]),
            Reply {
                code: Some(550),
                status: Some((5, 7, 1).into()),
                lines: vec!["a".into(), "b".into()],
            },
        ] {
            assert_eq!(Reply::parse_lines(&r.to_bytes()).unwrap(), r);
        }
    }

    #[test]
    fn parse_rejects_malformed() {
        assert!(Reply::parse_lines(b"250-a\r\n").is_err());
        assert!(Reply::parse_lines(b"250-a\r\n251 b\r\n").is_err());
        assert!(Reply::parse_lines(b"25 a\r\n").is_err());
        assert!(Reply::parse_lines(b"250xa\r\n").is_err());
        assert!(Reply::parse_lines(b"250 a\r\n250 b\r\n").is_err());
        assert!(Reply::parse_lines(b"650 a\r\n").is_err());
        assert!(Reply::parse_lines(b"250 a").is_err());
    }

    #[test]
    fn parse_enhanced_class_must_match() {
        let r = Reply::parse_lines(b"250 5.0.0 odd\r\n").unwrap();
        assert_eq!(r.status, None);
        assert_eq!(r.lines, vec!["5.0.0 odd"]);
        let r = Reply::parse_lines(b"250\r\n").unwrap();
        assert_eq!(r.lines, vec![""]);
    }

    #[test]
    fn a_reply_is_kept_in_the_shape_records_have_had_since_format_3() {
        // The derived form of record format 3's `Reply`, field for field.
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Format3 {
            code: Option<u16>,
            status: Option<Enhanced>,
            text: String,
        }
        let multi = Reply {
            code: Some(550),
            status: Some((5, 7, 1).into()),
            lines: vec!["a".into(), "b".into()],
        };
        for (reply, old) in [
            (
                multi.clone(),
                Format3 {
                    code: Some(550),
                    status: Some((5, 7, 1).into()),
                    text: "a b".into(),
                },
            ),
            (
                Reply::local((5, 1, 1), "user unknown"),
                Format3 {
                    code: None,
                    status: Some((5, 1, 1).into()),
                    text: "user unknown".into(),
                },
            ),
        ] {
            let json = serde_json::to_string(&reply).unwrap();
            assert_eq!(json, serde_json::to_string(&old).unwrap());
            let back: Reply = serde_json::from_str(&json).unwrap();
            assert_eq!(back, reply.recorded());
            assert_eq!(serde_json::from_str::<Format3>(&json).unwrap(), old);
        }
        assert_eq!(multi.recorded().to_string(), multi.to_string());
    }

    #[test]
    fn our_own_verdicts_classify_by_their_status() {
        assert!(Reply::local((5, 1, 1), "user unknown").is_permanent());
        assert!(Reply::local((4, 4, 3), "lookup failed").is_transient());
        assert!(!Reply::local((4, 4, 3), "x").closes_connection());
        assert_eq!(Reply::local((4, 4, 3), "x").to_string(), "4.4.3 x");
    }
}
