//! Our trace header (RFC 5321 4.4, RFC 3848 `with` keywords) and RFC 5322 dates.

use crate::session::{unmapped, Transaction};
use mta_types::QueueId;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// The `Received:` header prepended to every accepted message, CRLF-terminated:
///
/// ```text
/// Received: from <helo> (unknown [<ip>])
///     by <hostname> (smtpmta) with ESMTP id <QID>
///     for <rcpt>; Tue, 1 Jul 2025 10:52:37 +0000
/// ```
///
/// (continuation lines start with a tab). The `for` clause appears only with exactly one
/// recipient (more would leak Bcc's); otherwise the date follows `id <QID>;` on its own
/// line. The client's name is `unknown` because the session does no reverse lookup.
pub fn received_header(
    hostname: &str,
    txn: &Transaction,
    qid: QueueId,
    date: SystemTime,
) -> String {
    let ip = match unmapped(txn.client.peer.ip()) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    let helo = if txn.envelope.helo.is_empty() {
        "unknown"
    } else {
        txn.envelope.helo.as_str()
    };
    let date = rfc5322_date(date);
    // Postfix's form for the TLS session: `(using TLSv1.3 with cipher …)` on its own line.
    let tls = match &txn.tls {
        Some(info) => format!("\r\n\t(using {info})"),
        None => String::new(),
    };
    let mut h = format!(
        "Received: from {helo} (unknown [{ip}]){tls}\r\n\tby {hostname} (smtpmta) with {} id {qid}",
        txn.envelope.protocol
    );
    match txn.rcpts.as_slice() {
        [(rcpt, _)] => h.push_str(&format!("\r\n\tfor <{rcpt}>; {date}\r\n")),
        _ => h.push_str(&format!(";\r\n\t{date}\r\n")),
    }
    h
}

/// `Tue, 1 Jul 2025 10:52:37 +0000` (RFC 5322 3.3), in UTC.
pub fn rfc5322_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31); Howard Hinnant's algorithm.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::ClientInfo;
    use mta_types::Envelope;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(at(0)), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(at(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(at(1_700_000_000)),
            "Tue, 14 Nov 2023 22:13:20 +0000"
        );
        assert_eq!(
            rfc5322_date(at(4_102_444_799)),
            "Thu, 31 Dec 2099 23:59:59 +0000"
        );
    }

    fn env(rcpts: &[&str]) -> Transaction {
        let client = ClientInfo {
            peer: "192.0.2.7:4000".parse().unwrap(),
            local: "192.0.2.1:25".parse().unwrap(),
        };
        Transaction {
            envelope: Envelope::new(None, "client.example", "192.0.2.7", "ESMTP"),
            mail_params: Default::default(),
            rcpts: rcpts
                .iter()
                .map(|r| (r.parse().unwrap(), Default::default()))
                .collect(),
            client,
            tls: None,
            qid: None,
        }
    }

    #[test]
    fn header_with_one_recipient() {
        let qid = QueueId::from_u64(42);
        let h = received_header("mx.example", &env(&["u@d.example"]), qid, at(0));
        assert_eq!(
            h,
            format!(
                "Received: from client.example (unknown [192.0.2.7])\r\n\tby mx.example (smtpmta) \
                 with ESMTP id {qid}\r\n\tfor <u@d.example>; Thu, 1 Jan 1970 00:00:00 +0000\r\n"
            )
        );
    }

    #[test]
    fn header_with_two_recipients_and_ipv6() {
        let mut e = env(&["a@d.example", "b@d.example"]);
        e.client.peer = "[2001:db8::1]:4000".parse().unwrap();
        let h = received_header("mx.example", &e, QueueId::from_u64(1), at(0));
        assert!(h.starts_with("Received: from client.example (unknown [IPv6:2001:db8::1])\r\n"));
        assert!(h.ends_with(";\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"));
        assert!(!h.contains("for <"));
    }
}
