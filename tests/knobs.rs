//! The debug knobs graded as seed 003 describes them (issue 12, point 3; docs/CONFIG.md
//! defines each level): every test turns its knob on at runtime with `set config` through
//! the real console (`mtacon`), sends real mail, sees the knob's lines in the suite's log
//! (or in `debug_outfile`) with the queue ID, then turns it off and sees them stop.
//! Needs: python3 (tests/support/smtp_sink.py), dnsmasq (the DNS test).

use mta_testkit::peers::{tail, Dns, Sink};
use mta_testkit::{wait_for, RawSmtp, Suite, SuiteOptions, DEFAULT_DIRECTORY};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(20);

/// `set config <knob> <value>` through mtacon; every task must have taken it.
fn set(suite: &Suite, knob: &str, value: &str) {
    let out = suite.mtacon(&["set", "config", knob, value]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "set config {knob} {value}: {text}");
    assert!(text.contains("in every task"), "{text}");
}

/// One message from a trusted client, with `ehlo` as its EHLO name (a marker the
/// transcript shows); returns the queue ID from the 250 reply.
fn send(suite: &Suite, ehlo: &str, rcpt: &str, body: &[u8]) -> String {
    let (mut c, greeting) = RawSmtp::connect(suite.smtp_port);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(c.cmd(&format!("EHLO {ehlo}")).starts_with("250"));
    assert!(c.cmd("MAIL FROM:<bsmith@univac.test>").starts_with("250"));
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(format!("Subject: {ehlo}\r\nMessage-ID: <{ehlo}@univac.test>\r\n\r\n").as_bytes());
    c.send(body);
    c.send(b".\r\n");
    let reply = c.read_reply();
    assert!(reply.starts_with("250"), "{reply}");
    assert!(c.cmd("QUIT").starts_with("221"));
    reply.trim().rsplit(' ').next().unwrap().to_string()
}

/// The log lines containing every one of `parts`.
fn lines_with(text: &str, parts: &[&str]) -> Vec<String> {
    text.lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .map(str::to_string)
        .collect()
}

/// Waits until the log has a line with every one of `parts`; returns it.
fn wait_line(suite: &Suite, parts: &[&str]) -> String {
    wait_for(&format!("a log line with {parts:?}"), DEADLINE, || {
        let log = suite.log();
        lines_with(&log, parts)
            .into_iter()
            .next()
            .ok_or_else(|| tail(&log, 15))
    })
}

fn no_line(suite: &Suite, parts: &[&str]) {
    let log = suite.log();
    let found = lines_with(&log, parts);
    assert!(found.is_empty(), "unexpected {parts:?}: {found:?}");
}

fn relay_suite(sink: &Sink, extra: &[(&'static str, String)]) -> Suite {
    let mut sections: Vec<(&'static str, String)> = vec![
        (
            "outbound",
            format!("relay_host = \"127.0.0.1:{}\"", sink.port),
        ),
        ("outbound", "connect_timeout = \"2s\"".into()),
        ("outbound", "retry = [\"1s\"]".into()),
    ];
    sections.extend(extra.iter().cloned());
    Suite::start(&SuiteOptions {
        sections,
        ..SuiteOptions::default()
    })
}

#[test]
fn smtp_debug_1_2_3_grade_the_inbound_transcript_and_0_stops_it() {
    let suite = Suite::start(&SuiteOptions::default());
    set(&suite, "SMTPDebug", "1");
    let q1 = send(&suite, "level-one.test", "alice@localhost", b"one\r\n");
    wait_line(&suite, &["isesctl[", "disconnect from [127.0.0.1]"]);
    wait_line(&suite, &["isesctl[", "connect from [127.0.0.1]"]);
    no_line(&suite, &["< EHLO level-one.test"]);

    set(&suite, "smtpdebug", "2");
    let q2 = send(&suite, "level-two.test", "alice@localhost", b"two\r\n");
    wait_line(&suite, &["isesctl[", "< EHLO level-two.test"]);
    // From the reply to MAIL on, the transcript carries the transaction's queue ID.
    wait_line(
        &suite,
        &["< RCPT TO:<alice@localhost>", &format!("qid={q2}")],
    );
    wait_line(
        &suite,
        &["> 250", &format!("queued as {q2}"), &format!("qid={q2}")],
    );
    no_line(&suite, &["bytes ([127.0.0.1])"]);

    set(&suite, "SMTPDebug", "3");
    let q3 = send(&suite, "level-three.test", "alice@localhost", b"three\r\n");
    wait_line(&suite, &["< EHLO level-three.test"]);
    wait_line(&suite, &["received 23 bytes ([127.0.0.1])"]); // "EHLO level-three.test\r\n"
    wait_line(
        &suite,
        &["sent ", " bytes ([127.0.0.1])", &format!("qid={q3}")],
    );
    wait_line(&suite, &["bytes of message data", &format!("qid={q3}")]);
    // Message data itself is SMTPDebugIO 3's, not SMTPDebug's.
    no_line(&suite, &["< data:"]);

    set(&suite, "SMTPDebug", "0");
    let disconnects =
        || lines_with(&suite.log(), &["isesctl[", "disconnect from [127.0.0.1]"]).len();
    let before = disconnects();
    let q4 = send(&suite, "level-off.test", "alice@localhost", b"off\r\n");
    suite.wait_for_mail("alice", 4);
    // The session's knobs are read when it starts: this one has none, so nothing at all.
    no_line(&suite, &["< EHLO level-off.test"]);
    no_line(&suite, &[&format!("qid={q4}"), "bytes"]);
    // Nor a disconnect line (which names no EHLO): a session at level 1 after it logs
    // its own, and by then the level-0 session's would have been logged before it.
    set(&suite, "SMTPDebug", "1");
    send(
        &suite,
        "level-one-again.test",
        "alice@localhost",
        b"again\r\n",
    );
    wait_for("the next session's disconnect line", DEADLINE, || {
        let n = disconnects();
        (n > before)
            .then_some(n)
            .ok_or(format!("{n} disconnect lines"))
    });
    assert_eq!(disconnects(), before + 1, "{}", tail(&suite.log(), 30));
    let _ = q1;
}

#[test]
fn smtp_debug_io_1_counts_bytes_and_3_logs_message_data_capped() {
    let suite = Suite::start(&SuiteOptions::default());
    set(&suite, "SMTPDebugIO", "1");
    let q1 = send(&suite, "io-one.test", "alice@localhost", b"small\r\n");
    wait_line(&suite, &["received 18 bytes ([127.0.0.1])"]); // "EHLO io-one.test\r\n"
    wait_line(&suite, &["bytes of message data", &format!("qid={q1}")]);
    no_line(&suite, &["< EHLO io-one.test"]);

    set(&suite, "SMTPDebugIO", "3");
    // 8 KB of data: the first 4096 bytes are logged, the rest is counted.
    let mut body = b"HEAD-MARKER first line\r\n".to_vec();
    body.extend(
        "y".repeat(78)
            .repeat(100)
            .as_bytes()
            .chunks(78)
            .flat_map(|c| {
                let mut l = c.to_vec();
                l.extend_from_slice(b"\r\n");
                l
            }),
    );
    body.extend_from_slice(b"TAIL-MARKER last line\r\n");
    let q3 = send(&suite, "io-three.test", "alice@localhost", &body);
    wait_line(&suite, &["< EHLO io-three.test"]);
    wait_line(
        &suite,
        &["< data: HEAD-MARKER first line", &format!("qid={q3}")],
    );
    wait_line(&suite, &["more bytes not logged", &format!("qid={q3}")]);
    no_line(&suite, &["TAIL-MARKER"]);

    set(&suite, "SMTPDebugIO", "0");
    send(&suite, "io-off.test", "alice@localhost", b"OFF-MARKER\r\n");
    suite.wait_for_mail("alice", 3);
    no_line(&suite, &["< EHLO io-off.test"]);
    no_line(&suite, &["OFF-MARKER"]);
}

#[test]
fn smtp_client_debug_1_2_3_grade_the_outbound_transcript_and_0_stops_it() {
    let sink = Sink::start(&[]);
    let suite = relay_suite(&sink, &[]);
    let ip = format!("[127.0.0.1]:{}", sink.port);

    set(&suite, "SMTPClientDebug", "1");
    let q1 = send(&suite, "client-one.test", "far@internet.test", b"one\r\n");
    sink.wait_count(&suite, 1, DEADLINE);
    wait_line(
        &suite,
        &["osesctl[", "SMTPClientDebug: list ", &format!("qid={q1}")],
    );
    wait_line(
        &suite,
        &[
            "SMTPClientDebug: list ",
            "next hop for internet.test: 127.0.0.1",
        ],
    );
    wait_line(&suite, &["SMTPClientDebug: connected to ", &ip]);
    wait_line(&suite, &["SMTPClientDebug: disconnected from ", &ip]);
    no_line(&suite, &["SMTPClientDebug: >"]);

    set(&suite, "SMTPClientDebug", "2");
    let q2 = send(&suite, "client-two.test", "far@internet.test", b"two\r\n");
    sink.wait_count(&suite, 2, DEADLINE);
    wait_line(&suite, &["SMTPClientDebug: > EHLO mta.test"]);
    wait_line(&suite, &["SMTPClientDebug: < 220"]);
    // A message's commands and replies carry its queue ID.
    wait_line(
        &suite,
        &["SMTPClientDebug: > MAIL FROM:<bsmith@univac.test>", &q2],
    );
    wait_line(&suite, &["SMTPClientDebug: < 250", &q2]);
    wait_line(&suite, &["SMTPClientDebug: > QUIT"]);
    no_line(&suite, &["SMTPClientDebug: sent"]);

    set(&suite, "SMTPClientDebug", "3");
    let q3 = send(
        &suite,
        "client-three.test",
        "far@internet.test",
        b"three\r\n",
    );
    sink.wait_count(&suite, 3, DEADLINE);
    wait_line(
        &suite,
        &["SMTPClientDebug: sent ", " bytes of message data", &q3],
    );
    wait_line(
        &suite,
        &["SMTPClientDebug: received ", " bytes from [127.0.0.1]", &q3],
    );
    // The data itself is never in the client's transcript.
    no_line(&suite, &["SMTPClientDebug: > Subject"]);

    set(&suite, "SMTPClientDebug", "0");
    let before = lines_with(&suite.log(), &["SMTPClientDebug:"]).len();
    let q4 = send(&suite, "client-off.test", "far@internet.test", b"off\r\n");
    sink.wait_count(&suite, 4, DEADLINE);
    wait_line(&suite, &[&q4, "status=sent"]);
    assert_eq!(
        lines_with(&suite.log(), &["SMTPClientDebug:"]).len(),
        before,
        "{}",
        tail(&suite.log(), 20)
    );
}

#[test]
fn log_mail_routing_10_20_30_40_add_up_and_0_stops_them() {
    let suite = Suite::start(&SuiteOptions::default());
    // team@localhost is an alias of alice and bob.
    let deliver = |n: usize| {
        let qid = send(
            &suite,
            &format!("routing-{n}.test"),
            "team@localhost",
            b"hi\r\n",
        );
        suite.wait_for_mail("bob", n);
        // `removed` is the router's last line about a message.
        wait_line(&suite, &[&format!("qid={qid} removed")]);
        qid
    };
    set(&suite, "Log_MailRouting", "10");
    let q = deliver(1);
    wait_line(
        &suite,
        &["router[", "Router: 1 message(s) taken from mail.box", &q],
    );
    no_line(&suite, &["Router: qid=", "expanded"]);

    set(&suite, "Log_MailRouting", "20");
    let q = deliver(2);
    wait_line(
        &suite,
        &[&format!("Router: qid={q} alias <team@localhost> expanded")],
    );
    no_line(&suite, &["Router: qid=", "mailbox of"]);

    set(&suite, "Log_MailRouting", "30");
    let q = deliver(3);
    wait_line(&suite, &[&format!("Router: qid={q} mailbox of alice is")]);
    no_line(&suite, &["Router: Message qid="]);

    set(&suite, "Log_MailRouting", "40");
    let q = deliver(4);
    wait_line(
        &suite,
        &[
            &format!("Router: Message qid={q} has 1 recipient(s) from <bsmith@univac.test>"),
            "message-id=<routing-4.test@univac.test>",
        ],
    );
    wait_line(
        &suite,
        &[&format!("Router: qid={q} Recipient 0 <team@localhost>")],
    );
    wait_line(
        &suite,
        &[
            &format!(
                "Router: Message qid={q} delivered to bob@localhost from <bsmith@univac.test>"
            ),
            "Hop Count",
        ],
    );
    // 40 is cumulative.
    wait_line(
        &suite,
        &[&format!("Router: qid={q} alias <team@localhost> expanded")],
    );

    set(&suite, "Log_MailRouting", "0");
    let q = deliver(5);
    no_line(&suite, &["Router:", &q]);
}

#[test]
fn debug_router_lookup_shows_the_directory_lookups_and_0_stops_them() {
    let directory = format!("{DEFAULT_DIRECTORY}\"ghosts@localhost\" = [\"nobody@localhost\"]\n");
    let suite = Suite::start(&SuiteOptions {
        directory: Some(directory),
        ..SuiteOptions::default()
    });
    set(&suite, "DebugRouterLookup", "1");
    let q = send(&suite, "lookup-one.test", "team@localhost", b"hi\r\n");
    wait_line(
        &suite,
        &[
            "router[",
            &format!(
                "DebugRLookup: qid={q} Lookup result for <team@localhost>: alias with 2 member(s)"
            ),
        ],
    );
    wait_line(
        &suite,
        &[&format!(
            "DebugRLookup: qid={q} Lookup result for <alice@localhost>: user alice, mailbox "
        )],
    );
    no_line(&suite, &["DebugRLookup:", "Lookup beginning"]);

    set(&suite, "DebugRouterLookup", "3");
    let q = send(&suite, "lookup-three.test", "ghosts@localhost", b"hi\r\n");
    wait_line(
        &suite,
        &[&format!(
            "DebugRLookup: qid={q} Lookup beginning for <ghosts@localhost>"
        )],
    );
    wait_line(
        &suite,
        &[&format!(
            "DebugRLookup: qid={q} Lookup alias member 1 <nobody@localhost>"
        )],
    );
    wait_line(
        &suite,
        &[&format!(
        "DebugRLookup: qid={q} Lookup error for <nobody@localhost>: not listed in the directory"
    )],
    );

    set(&suite, "DebugRouterLookup", "0");
    let q = send(&suite, "lookup-off.test", "team@localhost", b"hi\r\n");
    suite.wait_for_mail("bob", 2);
    wait_line(&suite, &[&format!("qid={q} removed")]);
    no_line(&suite, &["DebugRLookup:", &q]);
}

#[test]
fn debug_tcp_resolver_logs_each_query_and_answer_with_ttls_and_0_stops_it() {
    let dns = Dns::start();
    let sink = Sink::start(&[]);
    let suite = Suite::start(&SuiteOptions {
        sections: vec![
            ("outbound", format!("port = {}", sink.port)),
            ("outbound", "connect_timeout = \"2s\"".into()),
            ("outbound", "retry = [\"1s\"]".into()),
            ("dns", format!("nameservers = [\"127.0.0.1:{}\"]", dns.port)),
        ],
        ..SuiteOptions::default()
    });
    set(&suite, "debug_tcp_resolver", "1");
    // a-only.test: no MX, an A record (the implicit MX).
    let q = send(&suite, "dns-one.test", "far@a-only.test", b"hi\r\n");
    sink.wait_count(&suite, 1, DEADLINE);
    wait_line(
        &suite,
        &["osesctl[", "debug_tcp_resolver: query MX a-only.test.", &q],
    );
    wait_line(&suite, &["debug_tcp_resolver: answer MX a-only.test", &q]);
    let answer = wait_line(
        &suite,
        &[
            "debug_tcp_resolver: answer a-only.test. ttl=",
            " A 127.0.0.1",
        ],
    );
    assert!(answer.contains(&q), "{answer}");

    set(&suite, "debug_tcp_resolver", "0");
    let before = lines_with(&suite.log(), &["debug_tcp_resolver:"]).len();
    let q = send(&suite, "dns-off.test", "other@a-only.test", b"hi\r\n");
    sink.wait_count(&suite, 2, DEADLINE);
    wait_line(&suite, &[&q, "status=sent"]);
    assert_eq!(
        lines_with(&suite.log(), &["debug_tcp_resolver:"]).len(),
        before
    );
}

#[test]
fn debug_outfile_gets_every_debug_line_and_only_those() {
    let suite = Suite::start(&SuiteOptions::default());
    let outfile = suite.dir.path().join("debug.txt");
    let read = || std::fs::read_to_string(&outfile).unwrap_or_default();
    // A directory that does not exist: every task refuses it and keeps none.
    let out = suite.mtacon(&[
        "set",
        "config",
        "debug_outfile",
        "/nonexistent/dir/debug.txt",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("not reached") && text.contains("/nonexistent/dir"),
        "{text}"
    );

    set(&suite, "debug_outfile", outfile.to_str().unwrap());
    set(&suite, "SMTPDebug", "2");
    set(&suite, "Log_MailRouting", "30");
    let q = send(&suite, "outfile-on.test", "alice@localhost", b"hi\r\n");
    suite.wait_for_mail("alice", 1);
    wait_for("the debug lines in debug_outfile", DEADLINE, || {
        let t = read();
        let inbound = lines_with(&t, &["isesctl[", "< EHLO outfile-on.test"]);
        let routed = lines_with(
            &t,
            &["router[", &format!("Router: qid={q} mailbox of alice is")],
        );
        if !inbound.is_empty() && !routed.is_empty() {
            Ok(())
        } else {
            Err(tail(&t, 10))
        }
    });
    // Only debug lines: the Postfix-style delivery line stays in the log alone.
    let t = read();
    assert!(lines_with(&t, &["status=sent"]).is_empty(), "{t}");
    assert!(!lines_with(&suite.log(), &[&q, "status=sent"]).is_empty());

    set(&suite, "debug_outfile", "-");
    send(&suite, "outfile-off.test", "alice@localhost", b"hi\r\n");
    suite.wait_for_mail("alice", 2);
    // Still in the log (SMTPDebug is still 2), no longer in the file.
    wait_line(&suite, &["< EHLO outfile-off.test"]);
    assert!(!read().contains("outfile-off.test"), "{}", read());
}
