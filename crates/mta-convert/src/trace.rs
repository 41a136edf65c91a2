//! Trace header fields added on final delivery (RFC 5322 section 3.6.7, `Delivered-To:` as
//! Postfix and qmail write it).

use mta_types::Address;

/// The fields prepended to a message written to a local Maildir:
/// `Return-Path: <sender>` (`<>` for the null reverse-path of a delivery report) and
/// `Delivered-To: recipient`, each ending in CRLF like the spool content they precede.
pub fn trace_headers_for_delivery(return_path: Option<&Address>, delivered_to: &Address) -> String {
    let sender = return_path.map(Address::to_string).unwrap_or_default();
    format!("Return-Path: <{sender}>\r\nDelivered-To: {delivered_to}\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sender_and_recipient() {
        let from: Address = "alice@example.org".parse().unwrap();
        let to: Address = "Bob@Localhost".parse().unwrap();
        assert_eq!(
            trace_headers_for_delivery(Some(&from), &to),
            "Return-Path: <alice@example.org>\r\nDelivered-To: Bob@localhost\r\n"
        );
    }

    #[test]
    fn null_sender_is_empty_brackets() {
        let to: Address = "postmaster@localhost".parse().unwrap();
        assert_eq!(
            trace_headers_for_delivery(None, &to),
            "Return-Path: <>\r\nDelivered-To: postmaster@localhost\r\n"
        );
    }
}
