//! The door (issue 25): DNS blocklists and allowlists at connect, per-client limits, the
//! pregreet test and pipelining before EHLO's reply, through the real suite, a real DNS
//! server (dnsmasq with the test zone) and real clients (raw sockets bound to
//! 127.0.0.x, swaks, the console).
//!
//! Only 127.0.0.1 is trusted here: clients from 127.0.0.2 and up are strangers.

use mta_testkit::peers::Dns;
use mta_testkit::{wait_for, RawSmtp, Suite, SuiteOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// A suite where only 127.0.0.1 is trusted, with `[inbound]` lines, asking `dns` (so
/// that the SPF checks of strangers' mail get their NXDOMAIN at once).
fn suite(dns: &Dns, inbound: &[&str]) -> Suite {
    let mut sections: Vec<(&'static str, String)> =
        inbound.iter().map(|l| ("inbound", l.to_string())).collect();
    sections.push(("dns", format!("nameservers = [\"127.0.0.1:{}\"]", dns.port)));
    sections.push(("dns", "timeout = \"2s\"".to_string()));
    let mut suite = Suite::prepare(&SuiteOptions {
        sections,
        ..Default::default()
    });
    let text = std::fs::read_to_string(&suite.config)
        .unwrap()
        .replace("\"127.0.0.0/8\"", "\"127.0.0.1/32\"");
    std::fs::write(&suite.config, text).unwrap();
    suite.launch();
    suite
}

/// A TCP connection from `source` that has read nothing yet.
fn tcp_from(source: Ipv4Addr, port: u16) -> TcpStream {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    use std::os::fd::AsRawFd as _;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(std::net::SocketAddrV4::new(source, 0)),
    )
    .unwrap();
    let to = SockaddrIn::from(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    connect(fd.as_raw_fd(), &to).unwrap();
    let stream = TcpStream::from(fd);
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Everything the server sends until it closes the connection.
fn read_to_close(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    String::from_utf8_lossy(&all).to_string()
}

/// One message over a session that has said EHLO: the reply to its DATA's end.
fn send_message(c: &mut RawSmtp, to: &str) -> String {
    let mail = c.cmd("MAIL FROM:<stranger@outside.test>");
    assert!(mail.starts_with("250"), "{mail}");
    let rcpt = c.cmd(&format!("RCPT TO:<{to}>"));
    if !rcpt.starts_with("250") {
        return rcpt;
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.cmd("Subject: door\r\n\r\nhello\r\n.")
}

fn swaks_from(source: Ipv4Addr, port: u16, to: &str) -> std::process::Output {
    Command::new("swaks")
        .args([
            "--server",
            &format!("127.0.0.1:{port}"),
            "--local-interface",
            &source.to_string(),
            "--timeout",
            "20",
            "--hide-informational",
            "--from",
            "someone@outside.test",
            "--to",
            to,
        ])
        .output()
        .expect("swaks is installed (.ci/run installs it)")
}

fn stat(suite: &Suite, name: &str) -> u64 {
    let out = suite.mtacon(&["--json", "show", "stat", "mail"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["stats"][name].as_u64().unwrap_or(0)
}

#[test]
fn dns_blocklists_refuse_listed_clients_and_allowlists_bypass() {
    // 127.0.0.2 is listed; 127.0.0.4 is listed and allowlisted; 127.0.0.3 is in neither;
    // 127.0.0.1 (trusted) is listed but never looked up.
    let listed = |last: u8, zone: &str| format!("--host-record={last}.0.0.127.{zone},127.0.0.2");
    let dns = Dns::start_with(&[
        listed(2, "bl.test"),
        listed(4, "bl.test"),
        listed(4, "wl.test"),
        listed(1, "bl.test"),
    ]);
    let suite = suite(
        &dns,
        &[
            "dnsbl = [\"bl.test=127.0.0.[2..11]*2\", \"nothing.test\"]",
            "dnswl = [\"wl.test*-5\"]",
            "dnsbl_threshold = 2",
        ],
    );

    // Listed: served a banner, then 554 naming the zone to every command but QUIT.
    let (mut c, greeting) = RawSmtp::connect_from(Some(ip(2)), suite.smtp_port);
    assert!(greeting.starts_with("220"), "{greeting}");
    let ehlo = c.cmd("EHLO spammer.test");
    assert_eq!(
        ehlo,
        "554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test"
    );
    assert!(c.cmd("MAIL FROM:<s@spammer.test>").starts_with("554 5.7.1"));
    assert!(c.cmd("RCPT TO:<alice@localhost>").starts_with("554 5.7.1"));
    assert!(c.cmd("QUIT").starts_with("221"));

    // Not listed (swaks, a real client): delivered.
    let out = swaks_from(ip(3), suite.smtp_port, "alice@localhost");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Listed but allowlisted (-5): delivered.
    let out = swaks_from(ip(4), suite.smtp_port, "alice@localhost");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Trusted: never looked up, so served although its name is in the list.
    let (mut c, _) = RawSmtp::connect(suite.smtp_port);
    assert!(c.cmd("EHLO inside.test").starts_with("250"));
    assert!(send_message(&mut c, "alice@localhost").starts_with("250"));
    suite.wait_for_mail("alice", 3);

    let log = suite.log();
    assert!(
        log.contains("reject: CONNECT from [127.0.0.2]: 554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test"),
        "{log}"
    );
    assert!(!log.contains("[127.0.0.4]: 554"), "{log}");
    // The refusal is one log line (not the reply's wire form with its CRLF).
    let refusal = log
        .lines()
        .find(|l| l.contains("reject: CONNECT from [127.0.0.2]"));
    assert!(
        refusal.is_some_and(|l| !l.contains('\r') && l.contains("bl.test (score 2) ")),
        "{refusal:?}"
    );
    wait_for(
        "the blocked counter",
        Duration::from_secs(10),
        || match stat(&suite, "Mail.Inbound.DNSBL.Blocked") {
            1 => Ok(()),
            n => Err(format!("{n}")),
        },
    );
}

#[test]
fn a_dns_failure_counts_as_not_listed() {
    // The list's queries go to a server that never answers: the client is served once
    // the query times out, and the failure is logged and counted.
    let dns = Dns::start_with(&["--server=/dead-bl.test/127.0.0.1#1".to_string()]);
    let suite = suite(&dns, &["dnsbl = [\"dead-bl.test\"]"]);
    let (mut c, _) = RawSmtp::connect_from(Some(ip(2)), suite.smtp_port);
    let start = Instant::now();
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(send_message(&mut c, "alice@localhost").starts_with("250"));
    assert!(suite
        .log()
        .contains("DNS list zone dead-bl.test failed for [127.0.0.2]"));
    wait_for("the error counter", Duration::from_secs(10), || match stat(
        &suite,
        "Mail.Inbound.DNSBL.Errors",
    ) {
        0 => Err("0".into()),
        _ => Ok(()),
    });
}

#[test]
fn simultaneous_sessions_per_client_are_limited_and_trusted_clients_exempt() {
    let dns = Dns::start();
    let suite = suite(&dns, &["max_connections_per_client = 3"]);
    let mut open: Vec<RawSmtp> = (0..3)
        .map(|_| {
            let (c, greeting) = RawSmtp::connect_from(Some(ip(2)), suite.smtp_port);
            assert!(greeting.starts_with("220"), "{greeting}");
            c
        })
        .collect();
    // The fourth from the same client: 421 before any banner, then closed.
    let mut fourth = tcp_from(ip(2), suite.smtp_port);
    let said = read_to_close(&mut fourth);
    assert_eq!(
        said,
        "421 4.7.0 mta.test Error: too many connections from [127.0.0.2] (limit 3)\r\n"
    );
    // Another client is not affected, nor is the trusted one with more than three.
    let (_other, greeting) = RawSmtp::connect_from(Some(ip(3)), suite.smtp_port);
    assert!(greeting.starts_with("220"), "{greeting}");
    let trusted: Vec<(RawSmtp, String)> =
        (0..5).map(|_| RawSmtp::connect(suite.smtp_port)).collect();
    assert!(trusted.iter().all(|(_, g)| g.starts_with("220")));
    // One session ends: the client may open one again.
    let mut first = open.remove(0);
    assert!(first.cmd("QUIT").starts_with("221"));
    wait_for("a session slot free again", Duration::from_secs(10), || {
        let (mut c, greeting) = RawSmtp::connect_from(Some(ip(2)), suite.smtp_port);
        if greeting.starts_with("220") {
            open.push(c);
            Ok(())
        } else {
            let _ = c.cmd("QUIT");
            Err(greeting)
        }
    });
    assert!(suite
        .log()
        .contains("reject: CONNECT from [127.0.0.2]: 421 4.7.0"));
}

#[test]
fn the_connection_rate_per_client_is_limited() {
    let dns = Dns::start();
    let suite = suite(&dns, &["max_connection_rate_per_client = \"3/min\""]);
    for _ in 0..3 {
        let (mut c, greeting) = RawSmtp::connect_from(Some(ip(2)), suite.smtp_port);
        assert!(greeting.starts_with("220"), "{greeting}");
        assert!(c.cmd("QUIT").starts_with("221"));
    }
    let said = read_to_close(&mut tcp_from(ip(2), suite.smtp_port));
    assert_eq!(
        said,
        "421 4.7.0 mta.test Error: too many connections from [127.0.0.2] (limit 3/min)\r\n"
    );
    // Per client: another stranger, and the trusted client, are still served.
    let (_c, greeting) = RawSmtp::connect_from(Some(ip(3)), suite.smtp_port);
    assert!(greeting.starts_with("220"), "{greeting}");
    for _ in 0..5 {
        let (mut c, greeting) = RawSmtp::connect(suite.smtp_port);
        assert!(greeting.starts_with("220"), "{greeting}");
        assert!(c.cmd("QUIT").starts_with("221"));
    }
}

#[test]
fn the_message_rate_per_client_is_limited_and_show_clients_counts() {
    let dns = Dns::start();
    let suite = suite(&dns, &["max_message_rate_per_client = \"2/min\""]);
    let (mut c, _) = RawSmtp::connect_from(Some(ip(2)), suite.smtp_port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    for _ in 0..2 {
        assert!(send_message(&mut c, "alice@localhost").starts_with("250"));
    }
    let third = send_message(&mut c, "alice@localhost");
    assert_eq!(
        third,
        "421 4.7.0 mta.test Error: too many messages from [127.0.0.2] (limit 2/min)"
    );
    // The session is over.
    assert_eq!(c.read_reply(), "");
    // A new session from the same client is refused at its first RCPT too.
    let (mut c, _) = RawSmtp::connect_from(Some(ip(2)), suite.smtp_port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(send_message(&mut c, "alice@localhost").starts_with("421 4.7.0"));
    // The trusted client sends as much as it likes.
    let (mut t, _) = RawSmtp::connect(suite.smtp_port);
    assert!(t.cmd("EHLO inside.test").starts_with("250"));
    for _ in 0..4 {
        assert!(send_message(&mut t, "bob@localhost").starts_with("250"));
    }
    suite.wait_for_mail("alice", 2);
    suite.wait_for_mail("bob", 4);

    let out = suite.mtacon(&["show", "clients"]);
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("127.0.0.2 "))
        .unwrap_or_else(|| panic!("no row for 127.0.0.2:\n{text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    // Client, Open, Sessions, Messages, Recipients, Refused.
    assert_eq!(&cols[..6], ["127.0.0.2", "0", "2", "2", "2", "2"], "{text}");
    assert!(
        !text.contains("127.0.0.1 "),
        "trusted clients are not counted:\n{text}"
    );
    assert!(text.contains("max_message_rate_per_client 2/min"), "{text}");
    let out = suite.mtacon(&["--json", "show", "clients"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["clients"]["rows"][0]["client"], "127.0.0.2", "{v}");
    assert_eq!(v["clients"]["rows"][0]["messages"], 2, "{v}");
}

#[test]
fn the_recipient_rate_per_client_is_limited() {
    let dns = Dns::start();
    let suite = suite(&dns, &["max_recipient_rate_per_client = \"3/h\""]);
    let (mut c, _) = RawSmtp::connect_from(Some(ip(2)), suite.smtp_port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@outside.test>").starts_with("250"));
    for to in ["alice", "bob", "postmaster"] {
        assert!(c
            .cmd(&format!("RCPT TO:<{to}@localhost>"))
            .starts_with("250"));
    }
    let fourth = c.cmd("RCPT TO:<alice@localhost>");
    assert_eq!(
        fourth,
        "421 4.7.0 mta.test Error: too many recipients from [127.0.0.2] (limit 3/h)"
    );
    assert_eq!(c.read_reply(), "");
}

#[test]
fn early_talkers_are_dropped_and_patient_clients_served() {
    let dns = Dns::start();
    let suite = suite(&dns, &["greet_pause = \"1s\""]);
    // Talks at once: 554 5.5.1 and closed, no banner.
    let mut early = tcp_from(ip(2), suite.smtp_port);
    early.write_all(b"EHLO bot.test\r\n").unwrap();
    let said = read_to_close(&mut early);
    assert_eq!(
        said,
        "554 5.5.1 mta.test Error: protocol error: talked before the greeting\r\n"
    );
    assert!(suite.log().contains("PREGREET 15 after"), "{}", suite.log());
    // Waits for the banner: served after the pause.
    let start = Instant::now();
    let (mut c, greeting) = RawSmtp::connect_from(Some(ip(3)), suite.smtp_port);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    assert!(c.cmd("EHLO patient.test").starts_with("250"));
    assert!(send_message(&mut c, "alice@localhost").starts_with("250"));
    // The trusted client is not made to wait: it may even talk first.
    let mut trusted = tcp_from(ip(1), suite.smtp_port);
    trusted.write_all(b"NOOP\r\n").unwrap();
    let mut buf = [0u8; 512];
    let n = trusted.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"220"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[test]
fn commands_sent_before_the_ehlo_reply_are_refused() {
    let dns = Dns::start();
    let suite = suite(&dns, &[]);
    let (mut c, _) = RawSmtp::connect_from(Some(ip(2)), suite.smtp_port);
    c.send(b"EHLO bot.test\r\nMAIL FROM:<s@bot.test>\r\nRCPT TO:<alice@localhost>\r\n");
    assert!(c.read_reply().starts_with("250"));
    assert_eq!(
        c.read_reply(),
        "554 5.5.0 Error: SMTP protocol synchronization"
    );
    assert_eq!(c.read_reply(), "");
    assert!(suite
        .log()
        .contains("reject: improper command pipelining after EHLO from [127.0.0.2]"));
    // Pipelining after EHLO's reply is what PIPELINING offers: fine.
    let (mut c, _) = RawSmtp::connect_from(Some(ip(2)), suite.smtp_port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    c.send(b"MAIL FROM:<s@outside.test>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n");
    assert!(c.read_reply().starts_with("250"));
    assert!(c.read_reply().starts_with("250"));
    assert!(c.read_reply().starts_with("354"));
    // The trusted client (scripts, local apps) may pipeline as it likes.
    let (mut t, _) = RawSmtp::connect(suite.smtp_port);
    t.send(b"EHLO inside.test\r\nMAIL FROM:<s@inside.test>\r\n");
    assert!(t.read_reply().starts_with("250"));
    assert!(t.read_reply().starts_with("250"));
}
