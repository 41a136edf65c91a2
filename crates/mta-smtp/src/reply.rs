//! SMTP replies (RFC 5321 4.2) with enhanced status codes (RFC 2034, RFC 3463).
//!
//! Every reply the server sends has a named constructor here; call sites never spell out a
//! code or a text. The client direction uses [`Reply::parse_lines`] and [`read_reply`].

use std::fmt;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// An enhanced status code `class.subject.detail` (RFC 3463): the records' type, so a reply
/// goes from the wire to a record without a change of form.
pub use mta_types::outcome::Enhanced;

/// One SMTP reply, possibly multi-line.
#[derive(Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Printed at the start of every line's text (RFC 2034 section 4) when present.
    pub enhanced: Option<Enhanced>,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, enhanced: Option<Enhanced>, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced,
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
            code: 250,
            enhanced: None,
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
    /// fleet peer used the hand-off parameter, `crate::handoff`).
    pub fn handoff_peers_only() -> Reply {
        Reply::enh(
            555,
            (5, 7, 1),
            format!(
                "{} is for authenticated fleet peers only",
                crate::handoff::KEYWORD
            ),
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

    /// `452 4.3.1 Insufficient system storage`
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
        (400..600).contains(&reply.code).then_some(reply)
    }

    pub fn storage_full() -> Reply {
        Reply::enh(452, (4, 3, 1), "Insufficient system storage")
    }

    /// `451 4.3.0 Error: local error in processing`
    pub fn local_error() -> Reply {
        Reply::enh(451, (4, 3, 0), "Error: local error in processing")
    }

    // ----- Classification -----

    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: do not retry.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// Whether this reply closes the connection (421, 221).
    pub fn closes_connection(&self) -> bool {
        self.code == 421 || self.code == 221
    }

    /// The enhanced status (`5.1.1`), or `X.0.0` from the code when the reply has none:
    /// what a recipient's outcome records.
    pub fn status(&self) -> Enhanced {
        self.enhanced.unwrap_or(Enhanced::of_code(self.code))
    }

    /// All lines' text joined with a space (without codes), for logs.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// The reply as records keep it (typed: code, enhanced status, text).
    pub fn recorded(&self) -> mta_types::outcome::Reply {
        mta_types::outcome::Reply::remote(self.code, self.enhanced, self.text())
    }

    /// The wire form: each line `code`, `-` or space, optional enhanced code, text, CRLF.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// Parses a complete reply (one or more CRLF- or LF-terminated lines), client direction.
    /// The enhanced code is recognised when the first line's text starts with one whose class
    /// matches the reply code's first digit; it is then stripped from every line that has it.
    pub fn parse_lines(bytes: &[u8]) -> Result<Reply, ReplyError> {
        let text = std::str::from_utf8(bytes).map_err(|_| ReplyError::Malformed)?;
        let mut code = None;
        let mut raw_lines = Vec::new();
        let mut finished = false;
        let body = text.strip_suffix('\n').ok_or(ReplyError::Malformed)?;
        for line in body.split('\n') {
            if finished {
                return Err(ReplyError::Malformed);
            }
            let line = line.strip_suffix('\r').unwrap_or(line);
            let (c, more, rest) = parse_reply_line(line)?;
            if *code.get_or_insert(c) != c {
                return Err(ReplyError::Malformed);
            }
            raw_lines.push(rest);
            finished = !more;
        }
        if !finished {
            return Err(ReplyError::Incomplete);
        }
        let code = code.ok_or(ReplyError::Malformed)?;
        let enhanced = raw_lines
            .first()
            .and_then(|l| split_enhanced(code, l))
            .map(|(e, _)| e);
        let lines = raw_lines
            .into_iter()
            .map(|l| match (enhanced, split_enhanced(code, l)) {
                (Some(e), Some((e2, rest))) if e == e2 => rest.to_string(),
                _ => l.to_string(),
            })
            .collect();
        Ok(Reply {
            code,
            enhanced,
            lines,
        })
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let empty = [String::new()];
        let lines: &[String] = if self.lines.is_empty() {
            &empty
        } else {
            &self.lines
        };
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            write!(f, "{}{}", self.code, sep)?;
            if let Some(e) = self.enhanced {
                write!(f, "{e} ")?;
            }
            write!(f, "{line}\r\n")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reply({:?})", self.to_string().trim_end())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("malformed SMTP reply")]
    Malformed,
    #[error("SMTP reply ended before its last line")]
    Incomplete,
    #[error("SMTP reply longer than {0} octets")]
    TooLong(usize),
    #[error("I/O error reading SMTP reply: {0}")]
    Io(#[from] std::io::Error),
}

/// `"250-text"` → `(250, true, "text")`. A bare `"250"` is a final line with empty text.
fn parse_reply_line(line: &str) -> Result<(u16, bool, &str), ReplyError> {
    let b = line.as_bytes();
    if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&b[0]) {
        return Err(ReplyError::Malformed);
    }
    let code: u16 = line[..3].parse().map_err(|_| ReplyError::Malformed)?;
    match b.get(3) {
        None => Ok((code, false, "")),
        Some(b' ') => Ok((code, false, &line[4..])),
        Some(b'-') => Ok((code, true, &line[4..])),
        Some(_) => Err(ReplyError::Malformed),
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

/// The longest reply [`read_reply`] accepts, all lines together.
pub const MAX_REPLY_OCTETS: usize = 64 * 1024;

/// Reads one complete (possibly multi-line) reply, client direction; bounded by
/// [`MAX_REPLY_OCTETS`].
pub async fn read_reply<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Reply, ReplyError> {
    let mut buf = Vec::new();
    loop {
        let start = buf.len();
        let n = (&mut *r)
            .take((MAX_REPLY_OCTETS + 1 - start) as u64)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            return Err(ReplyError::Incomplete);
        }
        if buf.len() > MAX_REPLY_OCTETS {
            return Err(ReplyError::TooLong(MAX_REPLY_OCTETS));
        }
        if buf.last() != Some(&b'\n') {
            return Err(ReplyError::Incomplete);
        }
        let line = &buf[start..];
        if line.len() < 4 || line[3] != b'-' {
            return Reply::parse_lines(&buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_with_enhanced_code() {
        assert_eq!(Reply::ok().to_string(), "250 2.0.0 Ok\r\n");
        assert_eq!(
            Reply::queued("0ABC").to_string(),
            "250 2.0.0 Ok: queued as 0ABC\r\n"
        );
        assert_eq!(
            Reply::mailbox_unknown("a@b").to_string(),
            "550 5.1.1 <a@b>: Recipient address rejected: User unknown\r\n"
        );
    }

    #[test]
    fn greeting_has_no_enhanced_code() {
        assert_eq!(
            Reply::greeting("mx.example").to_string(),
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
            code: 550,
            enhanced: Some((5, 7, 1).into()),
            lines: vec!["a".into(), "b".into()],
        };
        assert_eq!(r.to_string(), "550-5.7.1 a\r\n550 5.7.1 b\r\n");
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
                code: 550,
                enhanced: Some((5, 7, 1).into()),
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
        assert_eq!(r.enhanced, None);
        assert_eq!(r.lines, vec!["5.0.0 odd"]);
        let r = Reply::parse_lines(b"250\r\n").unwrap();
        assert_eq!(r.lines, vec![""]);
    }

    #[tokio::test]
    async fn read_reply_reads_one_reply_at_a_time() {
        let mut input: &[u8] = b"250-mx\r\n250 SIZE 5\r\n354 go\r\n";
        let a = read_reply(&mut input).await.unwrap();
        assert_eq!(a.lines, vec!["mx", "SIZE 5"]);
        let b = read_reply(&mut input).await.unwrap();
        assert_eq!(b.code, 354);
        assert!(matches!(
            read_reply(&mut input).await,
            Err(ReplyError::Incomplete)
        ));
    }
}
