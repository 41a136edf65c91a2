//! Inbound conversion: received content -> `ParsedFields` + hop count + warnings.
//!
//! What is an error and what is a warning, precisely:
//!
//! - `ConversionError::Empty`: the content has no octets.
//! - `ConversionError::Binary`: the header section contains a NUL or another C0 control
//!   character other than HT, LF, CR and ESC (ESC is allowed: raw ISO-2022-JP headers use it).
//!   The header section is everything up to the first empty line; when the first line is not a
//!   header field (see below) there is none, and then the whole content must be text: without
//!   a header, binary is garbage, not a message. Octets >= 0x80 are text (RFC 6532).
//! - `ConversionError::MalformedHeader`: the header section is one `mailparse` rejects, i.e. a
//!   line in it starts with a lone CR.
//! - Everything else is `Ok`, with warnings where the content is not what it should be:
//!   * no header section: the first line is empty or is not `field-name:` (printable ASCII
//!     without `:`, optional WSP, then `:`), e.g. "Hello world". The whole content is taken as
//!     a body: fields empty, hop count 0. We never lose mail over a missing header.
//!   * a later line of the header section that is not a field (mailparse keeps it as a field
//!     with an empty value; we ignore it);
//!   * more than one From/To/Cc/Subject/Date/Message-ID field (the first one is used);
//!   * a top-level `multipart/*` without a boundary, whose boundary never appears, or that is
//!     not closed by `--boundary--`. Nested parts are not checked.
//!
//! A message with a header section and no body (no empty line at all) is fine: RFC 5322 makes
//! the body optional.

use mailparse::MailHeader;
use mta_types::message::ParsedFields;

/// What `imsgcnv` stores in the native document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Converted {
    pub fields: ParsedFields,
    /// Number of `Received:` fields (the loop check compares it to `max_hops`).
    pub hop_count: u32,
    /// Problems that did not stop the conversion, in the order found; for the log and the
    /// document's note.
    pub warnings: Vec<String>,
}

/// Content that cannot be a message at all. The message goes to Conversion Error, kept for
/// the operator; it is never dropped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    #[error("content is empty")]
    Empty,
    #[error("header section contains binary octet 0x{byte:02x} at offset {offset}")]
    Binary { offset: usize, byte: u8 },
    #[error("header section is malformed: {reason}")]
    MalformedHeader { reason: String },
}

/// At most this many "not a header field" warnings are listed one by one.
const MAX_FIELD_WARNINGS: usize = 5;

/// Reads the header section of `content` (the spool content, CRLF or LF line endings).
pub fn convert_inbound(content: &[u8]) -> Result<Converted, ConversionError> {
    let (headers, body_start) = match read_header_section(content)? {
        HeaderSection::Fields {
            headers,
            body_start,
        } => (headers, body_start),
        HeaderSection::None { warning } => {
            return Ok(Converted {
                warnings: vec![warning.to_string()],
                ..Converted::default()
            })
        }
    };
    let mut warnings = Vec::new();

    let bad_fields: Vec<&MailHeader> = headers
        .iter()
        .filter(|h| !is_field_name(h.get_key_raw()))
        .collect();
    for h in bad_fields.iter().take(MAX_FIELD_WARNINGS) {
        warnings.push(format!(
            "header line {:?} is not a header field; ignored",
            shorten(h.get_key_raw())
        ));
    }
    if bad_fields.len() > MAX_FIELD_WARNINGS {
        warnings.push(format!(
            "{} more header lines are not header fields",
            bad_fields.len() - MAX_FIELD_WARNINGS
        ));
    }

    let mut first = |name: &str| -> Option<String> {
        let mut matching = headers.iter().filter(|h| key_is(h, name));
        let value = matching.next().map(|h| h.get_value().trim().to_string());
        let extra = matching.count();
        if extra > 0 {
            warnings.push(format!("{} `{name}` fields; the first is used", extra + 1));
        }
        value
    };
    let fields = ParsedFields {
        from: first("From"),
        to: first("To"),
        cc: first("Cc"),
        subject: first("Subject"),
        date: first("Date"),
        message_id: first("Message-ID"),
        // Several are normal (one per hop that checked): no warning; ours is the first.
        authentication_results: headers
            .iter()
            .find(|h| key_is(h, "Authentication-Results"))
            .map(|h| {
                h.get_value()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            }),
    };
    let hop_count = headers.iter().filter(|h| key_is(h, "Received")).count();
    let hop_count = u32::try_from(hop_count).unwrap_or(u32::MAX);

    if let Some(ctype) = headers.iter().find(|h| key_is(h, "Content-Type")) {
        check_multipart(&ctype.get_value(), &content[body_start..], &mut warnings);
    }

    Ok(Converted {
        fields,
        hop_count,
        warnings,
    })
}

/// True if the header section of `content` has a field called `name` (case-insensitive).
/// Content that has no header section, or cannot be read, has no fields.
pub fn has_header(content: &[u8], name: &str) -> bool {
    match read_header_section(content) {
        Ok(HeaderSection::Fields { headers, .. }) => headers.iter().any(|h| key_is(h, name)),
        _ => false,
    }
}

/// The field names of the header section and the offset where the body starts; `None`
/// when the content has no header section (or cannot be read as one).
pub(crate) fn header_names(content: &[u8]) -> Option<(Vec<String>, usize)> {
    match read_header_section(content) {
        Ok(HeaderSection::Fields {
            headers,
            body_start,
        }) => Some((headers.iter().map(|h| h.get_key()).collect(), body_start)),
        _ => None,
    }
}

enum HeaderSection<'a> {
    Fields {
        headers: Vec<MailHeader<'a>>,
        /// Offset just past the empty line (or the content's length if there is none).
        body_start: usize,
    },
    /// No header section: the content is all body.
    None { warning: &'static str },
}

fn read_header_section(content: &[u8]) -> Result<HeaderSection<'_>, ConversionError> {
    if content.is_empty() {
        return Err(ConversionError::Empty);
    }
    let first_line_end = content
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(content.len());
    let first_line = &content[..first_line_end];
    let first_line = first_line.strip_suffix(b"\r").unwrap_or(first_line);
    if first_line.is_empty() || !starts_with_field_name(first_line) {
        check_text(content)?;
    }
    if first_line.is_empty() {
        return Ok(HeaderSection::None {
            warning: "empty header section; the whole content is taken as the body",
        });
    }
    if !starts_with_field_name(first_line) {
        return Ok(HeaderSection::None {
            warning: "no header section (the first line is not a header field); \
                      the whole content is taken as the body",
        });
    }
    let (headers, body_start) =
        mailparse::parse_headers(content).map_err(|e| ConversionError::MalformedHeader {
            reason: e.to_string(),
        })?;
    check_text(&content[..body_start])?;
    Ok(HeaderSection::Fields {
        headers,
        body_start,
    })
}

/// Rejects NUL and C0 controls other than HT, LF, CR and ESC.
fn check_text(section: &[u8]) -> Result<(), ConversionError> {
    match section
        .iter()
        .position(|&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x1b))
    {
        Some(offset) => Err(ConversionError::Binary {
            offset,
            byte: section[offset],
        }),
        None => Ok(()),
    }
}

/// RFC 5322 ftext: printable US-ASCII except `:`.
fn is_ftext(b: u8) -> bool {
    (33..=126).contains(&b) && b != b':'
}

/// `line` begins `field-name WSP* :` (the WSP is RFC 5322's obsolete syntax).
fn starts_with_field_name(line: &[u8]) -> bool {
    let name_len = line.iter().take_while(|&&b| is_ftext(b)).count();
    if name_len == 0 {
        return false;
    }
    let rest = &line[name_len..];
    let wsp = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    rest.get(wsp) == Some(&b':')
}

/// A key as mailparse split it is a field name (a line without a colon gives a key holding
/// the whole line, CR included).
fn is_field_name(key: &[u8]) -> bool {
    let key = trim_wsp_end(key);
    !key.is_empty() && key.iter().all(|&b| is_ftext(b))
}

fn trim_wsp_end(mut key: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = key {
        key = rest;
    }
    key
}

fn key_is(h: &MailHeader, name: &str) -> bool {
    trim_wsp_end(h.get_key_raw()).eq_ignore_ascii_case(name.as_bytes())
}

fn shorten(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let text = String::from_utf8_lossy(&raw[..raw.len().min(60)]);
    if raw.len() > 60 {
        format!("{text}…")
    } else {
        text.into_owned()
    }
}

/// RFC 2046 section 5.1.1, top level only: a multipart needs a boundary, at least one
/// delimiter line `--boundary` and a closing `--boundary--`.
fn check_multipart(content_type: &str, body: &[u8], warnings: &mut Vec<String>) {
    let ctype = mailparse::parse_content_type(content_type);
    if !ctype.mimetype.starts_with("multipart/") {
        return;
    }
    let Some(boundary) = ctype.params.get("boundary") else {
        warnings.push(format!("{} has no boundary parameter", ctype.mimetype));
        return;
    };
    if boundary.is_empty() || boundary.len() > 70 {
        warnings.push(format!(
            "{} boundary is {} characters long (RFC 2046 allows 1 to 70)",
            ctype.mimetype,
            boundary.len()
        ));
        if boundary.is_empty() {
            return;
        }
    }
    let delimiter = format!("--{boundary}");
    let mut parts = 0usize;
    let mut closed = false;
    for line in body.split(|&b| b == b'\n') {
        let Some(rest) = line.strip_prefix(delimiter.as_bytes()) else {
            continue;
        };
        if rest.starts_with(b"--") {
            closed = true;
            break;
        }
        if rest.iter().all(|&b| matches!(b, b' ' | b'\t' | b'\r')) {
            parts += 1;
        }
    }
    match (parts, closed) {
        (0, false) => warnings.push(format!(
            "{} boundary {boundary:?} never appears in the body",
            ctype.mimetype
        )),
        (_, false) => warnings.push(format!(
            "{} is not terminated (no closing `{delimiter}--` line)",
            ctype.mimetype
        )),
        (0, true) => warnings.push(format!("{} has no body parts", ctype.mimetype)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crlf(text: &str) -> Vec<u8> {
        text.replace('\n', "\r\n").into_bytes()
    }

    /// The one warning the conversion gave.
    fn only_warning(c: &Converted) -> &str {
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        &c.warnings[0]
    }

    #[test]
    fn normal_message() {
        let msg = crlf(
            "Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\n\
             From: Alice <alice@example.org>\n\
             To: bob@localhost,\n carol@localhost\n\
             Cc: dave@localhost\n\
             Subject: Hello\n\
             Date: Mon, 1 Jan 2024 00:00:00 +0000\n\
             Message-ID: <1@example.org>\n\
             \n\
             Body line\n",
        );
        let c = convert_inbound(&msg).unwrap();
        assert_eq!(c.hop_count, 1);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.fields.from.as_deref(), Some("Alice <alice@example.org>"));
        assert_eq!(
            c.fields.to.as_deref(),
            Some("bob@localhost, carol@localhost")
        );
        assert_eq!(c.fields.cc.as_deref(), Some("dave@localhost"));
        assert_eq!(c.fields.subject.as_deref(), Some("Hello"));
        assert_eq!(
            c.fields.date.as_deref(),
            Some("Mon, 1 Jan 2024 00:00:00 +0000")
        );
        assert_eq!(c.fields.message_id.as_deref(), Some("<1@example.org>"));
    }

    #[test]
    fn encoded_words_are_decoded() {
        let msg = crlf(
            "From: =?UTF-8?B?SsO8cmdlbg==?= <j@example.org>\n\
             Subject: =?iso-8859-1?Q?=A1Hola,_se=F1or!?=\n\nx\n",
        );
        let c = convert_inbound(&msg).unwrap();
        assert_eq!(c.fields.subject.as_deref(), Some("\u{a1}Hola, se\u{f1}or!"));
        assert_eq!(
            c.fields.from.as_deref(),
            Some("J\u{fc}rgen <j@example.org>")
        );
    }

    #[test]
    fn counts_thirty_received_fields() {
        let mut msg = String::new();
        for i in 0..30 {
            msg.push_str(&format!(
                "Received: from h{i} by h{};\n\tMon, 1 Jan 2024\n",
                i + 1
            ));
        }
        msg.push_str("received : lower-case obsolete form\nSubject: loop\n\nbody\n");
        let c = convert_inbound(&crlf(&msg)).unwrap();
        assert_eq!(c.hop_count, 31);
        assert_eq!(c.fields.subject.as_deref(), Some("loop"));
    }

    #[test]
    fn bad_boundary_is_a_warning() {
        let msg = crlf(
            "Subject: x\nContent-Type: multipart/mixed; boundary=\"abc\"\n\n\
             --xyz\n\nhello\n--xyz--\n",
        );
        let c = convert_inbound(&msg).unwrap();
        assert!(only_warning(&c).contains("never appears"));
        assert_eq!(c.fields.subject.as_deref(), Some("x"));
    }

    #[test]
    fn unterminated_multipart_is_a_warning() {
        let msg = crlf(
            "Subject: x\nContent-Type: multipart/alternative; boundary=b1\n\n\
             preamble\n--b1\nContent-Type: text/plain\n\npart one\n--b1\n\npart two\n",
        );
        let c = convert_inbound(&msg).unwrap();
        assert!(only_warning(&c).contains("not terminated"));
    }

    #[test]
    fn multipart_without_boundary_is_a_warning() {
        let msg = crlf("Content-Type: multipart/mixed\n\nbody\n");
        let c = convert_inbound(&msg).unwrap();
        assert!(c.warnings[0].contains("no boundary"), "{:?}", c.warnings);
    }

    #[test]
    fn well_formed_multipart_has_no_warning() {
        let msg = crlf(
            "Content-Type: multipart/mixed;\n boundary=\"=_b\"\n\n\
             --=_b\nContent-Type: text/plain\n\none\n--=_b \n\ntwo\n--=_b--\nepilogue\n",
        );
        let c = convert_inbound(&msg).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn header_only_message_is_fine() {
        let c = convert_inbound(b"Subject: no body\r\nFrom: a@b\r\n").unwrap();
        assert_eq!(c.fields.subject.as_deref(), Some("no body"));
        assert_eq!(c.fields.from.as_deref(), Some("a@b"));
        assert!(c.warnings.is_empty());
        let c = convert_inbound(b"Subject: no body").unwrap();
        assert_eq!(c.fields.subject.as_deref(), Some("no body"));
    }

    #[test]
    fn body_only_message_is_kept_with_a_warning() {
        let c = convert_inbound(b"Hello world\r\nHow are you: fine\r\n").unwrap();
        assert_eq!(c.fields, ParsedFields::default());
        assert_eq!(c.hop_count, 0);
        assert!(only_warning(&c).contains("no header section"));
        let c = convert_inbound(b"\r\nbody after an empty header section\r\n").unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(!has_header(b"Hello world\r\n", "Hello world"));
    }

    #[test]
    fn stray_line_in_header_is_a_warning() {
        let msg = crlf("Subject: s\nthis is not a field\nFrom: f@x\n\nbody\n");
        let c = convert_inbound(&msg).unwrap();
        assert_eq!(c.fields.from.as_deref(), Some("f@x"));
        assert!(only_warning(&c).contains("this is not a field"));
    }

    #[test]
    fn duplicate_subject_is_a_warning() {
        let msg = crlf("Subject: one\nSubject: two\n\n");
        let c = convert_inbound(&msg).unwrap();
        assert_eq!(c.fields.subject.as_deref(), Some("one"));
        assert_eq!(c.warnings, vec!["2 `Subject` fields; the first is used"]);
    }

    #[test]
    fn empty_content_is_an_error() {
        assert_eq!(convert_inbound(b""), Err(ConversionError::Empty));
    }

    #[test]
    fn binary_garbage_is_an_error() {
        let garbage = [
            0x89u8, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0x0d,
        ];
        assert!(matches!(
            convert_inbound(&garbage),
            Err(ConversionError::Binary { .. })
        ));
        assert!(matches!(
            convert_inbound(b"\x00\x01\x02\x03"),
            Err(ConversionError::Binary { offset: 0, byte: 0 })
        ));
    }

    #[test]
    fn nul_in_header_section_is_an_error() {
        let msg = b"Subject: a\x00b\r\nFrom: x@y\r\n\r\nbody\r\n";
        assert_eq!(
            convert_inbound(msg),
            Err(ConversionError::Binary {
                offset: 10,
                byte: 0
            })
        );
        // NUL in the body is not our business.
        assert!(convert_inbound(b"Subject: a\r\n\r\nb\x00dy\r\n").is_ok());
        // ESC (ISO-2022-JP) and 8-bit octets are text.
        assert!(convert_inbound(b"Subject: \x1b$B$3\x1b(B \xc3\xa9\r\n\r\n").is_ok());
    }

    #[test]
    fn lone_cr_line_in_header_is_an_error() {
        assert!(matches!(
            convert_inbound(b"Subject: a\r\n\rX: y\r\n\r\n"),
            Err(ConversionError::MalformedHeader { .. })
        ));
    }

    #[test]
    fn has_header_is_case_insensitive() {
        let msg = crlf("Subject: s\nMESSAGE-ID: <x@y>\n\nDate: not a header\n");
        assert!(has_header(&msg, "message-id"));
        assert!(!has_header(&msg, "Date"));
        assert!(!has_header(b"", "Date"));
    }
}
