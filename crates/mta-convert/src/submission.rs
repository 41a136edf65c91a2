//! RFC 6409 §8.2 and §8.3: a message submitted by a local program (`sendmail`) or by an
//! authenticated client (submission) that lacks `Date:` or `Message-ID:` gets them here,
//! at the end of its header section, before anything else reads or signs the content.
//! Postfix's cleanup does the same; Gmail refuses mail without a Message-ID.

use crate::inbound::header_names;

/// The fields a submission must carry, made by the caller (the date in RFC 5322 form,
/// the Message-ID's `left@right` with our hostname on the right).
pub struct SubmissionFields<'a> {
    pub date: &'a str,
    pub message_id: &'a str,
}

/// `message` with the missing `Date:` and `Message-ID:` added at the end of its header
/// section, or `None` when it has both (or is not a message with a header section: such
/// content is left as it came, and imsgcnv says what is wrong with it).
pub fn complete_submission(message: &[u8], fields: &SubmissionFields<'_>) -> Option<Vec<u8>> {
    let (names, body_start) = header_names(message)?;
    let has = |name: &str| names.iter().any(|n| n.eq_ignore_ascii_case(name));
    let mut added = String::new();
    if !has("Date") {
        added.push_str(&format!("Date: {}\r\n", fields.date));
    }
    if !has("Message-ID") {
        added.push_str(&format!("Message-ID: <{}>\r\n", fields.message_id));
    }
    if added.is_empty() {
        return None;
    }
    // Before the empty line that ends the header section (or at the end of a message
    // that is all header).
    let at = if body_start >= 2 && message[..body_start].ends_with(b"\r\n\r\n") {
        body_start - 2
    } else if body_start >= 1 && message[..body_start].ends_with(b"\n\n") {
        body_start - 1
    } else {
        body_start
    };
    let mut out = Vec::with_capacity(message.len() + added.len() + 2);
    out.extend_from_slice(&message[..at]);
    if at > 0 && !message[..at].ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(added.as_bytes());
    out.extend_from_slice(&message[at..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: SubmissionFields<'static> = SubmissionFields {
        date: "Mon, 7 Dec 2026 01:00:00 +0000",
        message_id: "abc.1@mx.example",
    };

    #[test]
    fn adds_both_before_the_body() {
        let m = b"Received: from x\r\nFrom: a@b\r\nSubject: s\r\n\r\nbody\r\n";
        let out = complete_submission(m, &FIELDS).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Received: from x\r\nFrom: a@b\r\nSubject: s\r\n\
             Date: Mon, 7 Dec 2026 01:00:00 +0000\r\nMessage-ID: <abc.1@mx.example>\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn keeps_what_is_there() {
        let m =
            b"From: a@b\r\nDATE: Sun, 6 Dec 2026 01:00:00 +0000\r\nmessage-id: <x@y>\r\n\r\nb\r\n";
        assert!(complete_submission(m, &FIELDS).is_none());
        let m = b"From: a@b\r\nMessage-Id: <x@y>\r\n\r\nb\r\n";
        let out = String::from_utf8(complete_submission(m, &FIELDS).unwrap()).unwrap();
        assert!(out.contains("Date: Mon, 7 Dec"), "{out}");
        assert!(!out.contains("abc.1"), "{out}");
    }

    #[test]
    fn header_only_message() {
        let m = b"From: a@b\r\nSubject: s\r\n";
        let out = String::from_utf8(complete_submission(m, &FIELDS).unwrap()).unwrap();
        assert!(out.ends_with("Subject: s\r\nDate: Mon, 7 Dec 2026 01:00:00 +0000\r\nMessage-ID: <abc.1@mx.example>\r\n"), "{out}");
    }

    #[test]
    fn not_a_message_is_left_alone() {
        assert!(complete_submission(b"", &FIELDS).is_none());
        assert!(complete_submission(b"\x00\x01 binary\r\n", &FIELDS).is_none());
    }
}
