//! The message as milters see and change it: header fields one by one, then the body.
//!
//! Our own leading fields (the Received header we prepend, and our Authentication-Results)
//! are `hidden`: not sent to milters, not counted by a CHGHEADER index, as Postfix hides its
//! own Received header ("relative to the message as received"). INSHEADER counts every
//! field, ours included (index 0 is the very top), as Postfix does ("relative to the message
//! as delivered"). Header values go to milters with folded lines joined by a bare LF and,
//! unless the milter asked for SMFIP_HDR_LEADSPC, without the one space after the colon:
//! what Sendmail sends and libmilter-based milters expect.

use crate::proto::Modification;

/// One header field as it appears in the content, folding and CRLF included.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Field {
    raw: Vec<u8>,
    /// Length of the name (up to, not including, the colon and any space before it).
    name_len: usize,
    /// Offset just after the colon.
    colon_end: usize,
    /// One of the fields we added (hidden from milters).
    ours: bool,
}

impl Field {
    fn name(&self) -> &[u8] {
        &self.raw[..self.name_len]
    }

    fn build(name: &str, value: &str, lead_space: bool) -> Field {
        let mut raw = Vec::with_capacity(name.len() + value.len() + 4);
        raw.extend_from_slice(name.as_bytes());
        raw.push(b':');
        let colon_end = raw.len();
        if !lead_space {
            raw.push(b' ');
        }
        raw.extend_from_slice(&crlf(value.as_bytes()));
        if !raw.ends_with(b"\r\n") {
            raw.extend_from_slice(b"\r\n");
        }
        Field {
            name_len: name.len(),
            colon_end,
            raw,
            ours: false,
        }
    }
}

/// A message split into header fields and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    fields: Vec<Field>,
    /// The empty line between header and body was there.
    separator: bool,
    /// Everything after the empty line, as sent in BODY chunks.
    pub body: Vec<u8>,
}

impl Message {
    /// Splits `content`; its first `hidden` fields are ours.
    pub fn parse(content: &[u8], hidden: usize) -> Message {
        let mut fields: Vec<Field> = Vec::new();
        let mut pos = 0;
        let mut separator = false;
        while pos < content.len() {
            let end = content[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(content.len(), |i| pos + i + 1);
            let line = &content[pos..end];
            if line == b"\r\n" || line == b"\n" {
                separator = true;
                pos = end;
                break;
            }
            let folded = matches!(line[0], b' ' | b'\t');
            match fields.last_mut() {
                Some(last) if folded => last.raw.extend_from_slice(line),
                _ => match header_name(line) {
                    Some((name_len, colon_end)) => fields.push(Field {
                        raw: line.to_vec(),
                        name_len,
                        colon_end,
                        ours: fields.len() < hidden,
                    }),
                    // Not a header field: the body starts here (no empty line).
                    None => break,
                },
            }
            pos = end;
        }
        Message {
            fields,
            separator,
            body: content[pos..].to_vec(),
        }
    }

    /// The fields a milter sees, as (name, value) with the value as SMFIC_HEADER carries it.
    pub fn visible_fields(&self, lead_space: bool) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
        self.fields.iter().filter(|f| !f.ours).map(move |f| {
            let name = String::from_utf8_lossy(f.name()).into_owned();
            let mut value = &f.raw[f.colon_end..];
            if !lead_space && value.first() == Some(&b' ') {
                value = &value[1..];
            }
            let value = value
                .strip_suffix(b"\r\n")
                .or(value.strip_suffix(b"\n"))
                .unwrap_or(value);
            let mut out = Vec::with_capacity(value.len());
            let mut i = 0;
            while i < value.len() {
                if value[i] == b'\r' && value.get(i + 1) == Some(&b'\n') {
                    i += 1;
                    continue;
                }
                out.push(value[i]);
                i += 1;
            }
            (name, out)
        })
    }

    /// Applies the header and body changes of one milter's end of message, in order;
    /// returns the envelope changes (recipients, sender) for the caller.
    pub fn apply(&mut self, modifications: &[Modification], lead_space: bool) -> Vec<Modification> {
        let mut envelope = Vec::new();
        let mut new_body: Option<Vec<u8>> = None;
        for m in modifications {
            match m {
                Modification::AddHeader { name, value } => {
                    self.fields.push(Field::build(name, value, lead_space));
                }
                Modification::InsertHeader { index, name, value } => {
                    let at = (*index as usize).min(self.fields.len());
                    self.fields
                        .insert(at, Field::build(name, value, lead_space));
                }
                Modification::ChangeHeader { index, name, value } => {
                    self.change(*index, name, value, lead_space);
                }
                Modification::ReplaceBody(piece) => {
                    new_body
                        .get_or_insert_with(Vec::new)
                        .extend_from_slice(piece);
                }
                other => envelope.push(other.clone()),
            }
        }
        if let Some(body) = new_body {
            let mut body = crlf(&body);
            if !body.is_empty() && !body.ends_with(b"\r\n") {
                body.extend_from_slice(b"\r\n");
            }
            self.body = body;
            self.separator = true;
        }
        envelope
    }

    /// CHGHEADER: the `index`-th visible field called `name` (0 taken as 1); an empty value
    /// deletes it; a field that is not there is added (libmilter's smfi_chgheader).
    fn change(&mut self, index: u32, name: &str, value: &str, lead_space: bool) {
        let nth = index.max(1) as usize;
        let found = (0..self.fields.len())
            .filter(|&i| {
                let f = &self.fields[i];
                !f.ours && f.name().eq_ignore_ascii_case(name.as_bytes())
            })
            .nth(nth - 1);
        match (found, value.is_empty()) {
            (Some(i), true) => {
                self.fields.remove(i);
            }
            (Some(i), false) => self.fields[i] = Field::build(name, value, lead_space),
            (None, true) => {}
            (None, false) => self.fields.push(Field::build(name, value, lead_space)),
        }
    }

    /// The content again.
    pub fn to_bytes(&self) -> Vec<u8> {
        let size = self.fields.iter().map(|f| f.raw.len()).sum::<usize>() + 2 + self.body.len();
        let mut out = Vec::with_capacity(size);
        for f in &self.fields {
            out.extend_from_slice(&f.raw);
        }
        if self.separator || !self.body.is_empty() {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&self.body);
        out
    }
}

/// `(name length, offset after the colon)` when `line` starts a header field.
fn header_name(line: &[u8]) -> Option<(usize, usize)> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = &line[..colon];
    let trimmed = name.len()
        - name
            .iter()
            .rev()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
    let name = &name[..trimmed];
    if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
        return None;
    }
    Some((trimmed, colon + 1))
}

/// Every bare LF (and a lone CR) as CRLF.
fn crlf(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + s.len() / 32);
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\r' if s.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Received: from x\r\n\tby y; now\r\nSubject: hi\r\nX-A: 1\r\nTo: a@b,\r\n c@d\r\nX-A: 2\r\n\r\nbody\r\n";

    fn add(name: &str, value: &str) -> Modification {
        Modification::AddHeader {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn milters_see_fields_without_ours_and_with_lf_folding() {
        let m = Message::parse(MSG, 1);
        let seen: Vec<(String, Vec<u8>)> = m.visible_fields(false).collect();
        assert_eq!(seen[0], ("Subject".into(), b"hi".to_vec()));
        assert_eq!(seen[2], ("To".into(), b"a@b,\n c@d".to_vec()));
        assert_eq!(seen.len(), 4);
        assert_eq!(m.body, b"body\r\n");
        assert_eq!(m.to_bytes(), MSG);
        let lead: Vec<_> = m.visible_fields(true).collect();
        assert_eq!(lead[0].1, b" hi");
    }

    #[test]
    fn header_changes() {
        let mut m = Message::parse(MSG, 1);
        let env = m.apply(
            &[
                add("X-Spam", "yes"),
                Modification::InsertHeader {
                    index: 0,
                    name: "DKIM-Signature".into(),
                    value: "v=1;\n\tb=x".into(),
                },
                Modification::ChangeHeader {
                    index: 2,
                    name: "x-a".into(),
                    value: "two".into(),
                },
                Modification::ChangeHeader {
                    index: 1,
                    name: "Subject".into(),
                    value: String::new(),
                },
                Modification::DelRcpt("<a@b>".into()),
            ],
            false,
        );
        assert_eq!(env, vec![Modification::DelRcpt("<a@b>".into())]);
        let out = String::from_utf8(m.to_bytes()).unwrap();
        assert_eq!(
            out,
            "DKIM-Signature: v=1;\r\n\tb=x\r\nReceived: from x\r\n\tby y; now\r\nX-A: 1\r\nTo: a@b,\r\n c@d\r\nx-a: two\r\nX-Spam: yes\r\n\r\nbody\r\n"
        );
        // The inserted field sits above ours: ours stay hidden, it is seen.
        assert_eq!(m.visible_fields(false).next().unwrap().0, "DKIM-Signature");
    }

    #[test]
    fn our_received_header_is_not_counted_by_change() {
        let mut m = Message::parse(b"Received: ours\r\nReceived: theirs\r\n\r\nb\r\n", 1);
        m.apply(
            &[Modification::ChangeHeader {
                index: 1,
                name: "Received".into(),
                value: String::new(),
            }],
            false,
        );
        assert_eq!(m.to_bytes(), b"Received: ours\r\n\r\nb\r\n");
    }

    #[test]
    fn body_replaced_from_pieces_with_crlf() {
        let mut m = Message::parse(MSG, 1);
        m.apply(
            &[
                Modification::ReplaceBody(b"new\nbo".to_vec()),
                Modification::ReplaceBody(b"dy".to_vec()),
            ],
            false,
        );
        assert!(m.to_bytes().ends_with(b"X-A: 2\r\n\r\nnew\r\nbody\r\n"));
    }

    #[test]
    fn content_without_header_or_separator() {
        let m = Message::parse(b"just text\r\n", 0);
        assert_eq!(m.visible_fields(false).count(), 0);
        assert_eq!(m.body, b"just text\r\n");
        assert_eq!(m.to_bytes(), b"\r\njust text\r\n");
        let h = Message::parse(b"Subject: x\r\n", 0);
        assert_eq!(h.to_bytes(), b"Subject: x\r\n");
    }
}
