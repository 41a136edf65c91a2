//! The console as the seeds' operator knows it (issue 12): seed 002's three hands-on
//! exercises run end to end as written, through the real console (`mtacon`), a real SMTP
//! sink as the next hop and raw SMTP clients.
//! Needs: python3 (tests/support/smtp_sink.py).

use mta_testkit::peers::{tail, Sink};
use mta_testkit::{wait_for, RawSmtp, Suite, SuiteOptions};
use serde_json::Value;
use std::time::Duration;

/// A suite whose outbound mail goes to `sink` as the relay host.
fn relay_suite(sink: &Sink, extra: &[(&'static str, String)]) -> Suite {
    let mut sections: Vec<(&'static str, String)> = vec![
        ("outbound", format!("port = {}", sink.port)),
        (
            "outbound",
            format!("relay_host = \"127.0.0.1:{}\"", sink.port),
        ),
        ("outbound", "connect_timeout = \"2s\"".into()),
        ("outbound", "command_timeout = \"30s\"".into()),
        ("outbound", "retry = [\"1s\"]".into()),
    ];
    sections.extend(extra.iter().cloned());
    Suite::start(&SuiteOptions {
        sections,
        ..SuiteOptions::default()
    })
}

/// Sends one message from a trusted client and returns its queue id.
fn send(suite: &Suite, rcpt: &str, subject: &str, body: &[u8]) -> String {
    let (mut c, greeting) = RawSmtp::connect(suite.smtp_port);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<bsmith@univac.test>").starts_with("250"));
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(format!("Subject: {subject}\r\nMessage-ID: <{subject}@univac.test>\r\n\r\n").as_bytes());
    c.send(body);
    c.send(b".\r\n");
    let reply = c.read_reply();
    assert!(reply.starts_with("250"), "{reply}");
    c.cmd("QUIT");
    reply.rsplit(' ').next().unwrap().to_string()
}

fn mtacon_text(suite: &Suite, args: &[&str]) -> (Option<i32>, String, String) {
    let out = suite.mtacon(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn row<'a>(tasks: &'a [Value], name: &str) -> Option<&'a Value> {
    tasks.iter().find(|t| t["name"] == name)
}

fn handlers_of(suite: &Suite, controller: &str) -> Vec<Value> {
    suite
        .tasks()
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t["parent"] == controller)
        .collect()
}

fn log_lines(suite: &Suite, part: &str) -> usize {
    suite.log().lines().filter(|l| l.contains(part)).count()
}

#[test]
fn seed_exercise_1_stop_outbound_transport_stops_its_handlers_and_start_does_not_bring_them_back() {
    let sink = Sink::start(&[]);
    let suite = relay_suite(&sink, &[]);
    // "Notice that the Inbound and Outbound Session Handlers do not appear."
    let tasks = suite.tasks().unwrap();
    assert!(
        tasks.iter().all(|t| t["parent"].is_null()),
        "no handler before any mail: {tasks:?}"
    );
    // A test message to someone on the Internet spawns oseshlr0.
    send(
        &suite,
        "jdoe@internet.test",
        "ex1-first",
        b"Hello World\r\n",
    );
    sink.wait_count(&suite, 1, Duration::from_secs(20));
    let rows = wait_for("oseshlr0 listed", Duration::from_secs(10), || {
        let rows = handlers_of(&suite, "osesctl");
        if rows.len() == 1 && rows[0]["name"] == "oseshlr0" {
            Ok(rows)
        } else {
            Err(format!("{rows:?}"))
        }
    });
    let first_since = rows[0]["since_ms"].as_u64().unwrap();
    let (_, text, _) = mtacon_text(&suite, &["show", "tasks"]);
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("oseshlr0")),
        "{text}"
    );
    // "this newly listed task (oseshlr0) can't be stopped using a TELL command (try it)".
    for words in [
        &["tell", "oseshlr0", "quit"][..],
        &["tell", "oseshlr0", "stop"][..],
    ] {
        let (code, out, err) = mtacon_text(&suite, words);
        assert_eq!(code, Some(2), "{words:?}: {out}{err}");
        assert!(
            err.contains("oseshlr0 is a session handler of osesctl")
                && err.contains("tell smtpmta stop outbound transport"),
            "{err}"
        );
    }
    assert_eq!(handlers_of(&suite, "osesctl").len(), 1, "still there");

    // "TELL SMTPMTA STOP OUTBOUND TRANSPORT" stops the controller and its idle handler.
    let (code, out, err) = mtacon_text(
        &suite,
        &["tell", "smtpmta", "stop", "outbound", "transport"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("outbound transport stopped"), "{out}");
    let tasks = suite.tasks().unwrap();
    let osesctl = row(&tasks, "osesctl").unwrap();
    assert_eq!(osesctl["state"], "stopped", "{osesctl}");
    assert!(
        osesctl["detail"]
            .as_str()
            .unwrap()
            .contains("outbound transport stopped"),
        "{osesctl}"
    );
    assert!(
        handlers_of(&suite, "osesctl").is_empty(),
        "the idle handler stopped with its controller: {tasks:?}"
    );
    let (_, text, _) = mtacon_text(&suite, &["show", "tasks"]);
    assert!(!text.contains("oseshlr"), "{text}");
    let osesctl_line = text.lines().find(|l| l.starts_with("osesctl")).unwrap();
    assert!(osesctl_line.contains("stopped"), "{text}");

    // "TELL SMTPMTA START OUTBOUND TRANSPORT": the controller comes back, the handler does not.
    let (code, out, err) = mtacon_text(
        &suite,
        &["tell", "smtpmta", "start", "outbound", "transport"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("outbound transport started"), "{out}");
    let tasks = suite.tasks().unwrap();
    assert_eq!(row(&tasks, "osesctl").unwrap()["state"], "running");
    assert!(
        handlers_of(&suite, "osesctl").is_empty(),
        "the stopped handler does not come back: {tasks:?}"
    );
    // New mail spawns a new handler on demand.
    send(
        &suite,
        "jdoe@internet.test",
        "ex1-second",
        b"Hello again\r\n",
    );
    sink.wait_count(&suite, 2, Duration::from_secs(20));
    let rows = wait_for("a new oseshlr0", Duration::from_secs(10), || {
        let rows = handlers_of(&suite, "osesctl");
        if rows.len() == 1 {
            Ok(rows)
        } else {
            Err(format!("{rows:?}"))
        }
    });
    assert_eq!(rows[0]["name"], "oseshlr0");
    assert!(
        rows[0]["since_ms"].as_u64().unwrap() > first_since,
        "a new handler, not the old one: {rows:?}"
    );
}

#[test]
fn stop_outbound_transport_lets_a_busy_handler_finish_its_session_then_it_leaves() {
    // A slow next hop: a 600 KB message takes about three seconds to transfer.
    let sink = Sink::start(&["--throttle", "200000"]);
    let suite = relay_suite(&sink, &[]);
    let body = "x".repeat(998) + "\r\n";
    send(
        &suite,
        "big@internet.test",
        "slow",
        body.repeat(600).as_bytes(),
    );
    // Busy with the message itself, not still connecting: a handler stopped before its
    // first message gives its list back untouched (the message stays queued), which is what
    // made this test flaky when it stopped the handler as soon as it showed `busy`.
    wait_for(
        "oseshlr0 transferring the message",
        Duration::from_secs(20),
        || {
            let rows = handlers_of(&suite, "osesctl");
            match rows.first() {
                Some(r)
                    if r["state"] == "busy"
                        && r["detail"].as_str().is_some_and(|d| d.contains("qid ")) =>
                {
                    Ok(())
                }
                _ => Err(format!("{rows:?}")),
            }
        },
    );
    let (code, out, err) = mtacon_text(
        &suite,
        &["tell", "smtpmta", "stop", "outbound", "transport"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("1 finishing"), "{out}");
    let rows = handlers_of(&suite, "osesctl");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["state"], "stopping", "{rows:?}");
    // Its message goes through, then it leaves the table.
    sink.wait_count(&suite, 1, Duration::from_secs(30));
    wait_for("the stopped handler gone", Duration::from_secs(10), || {
        let rows = handlers_of(&suite, "osesctl");
        if rows.is_empty() {
            Ok(())
        } else {
            Err(format!("{rows:?}"))
        }
    });
}

#[test]
fn seed_exercise_2_one_console_line_per_burst_when_every_inbound_handler_is_busy() {
    let suite = Suite::start(&SuiteOptions {
        sections: vec![("inbound", "max_handlers = 3".into())],
        ..Default::default()
    });
    // The telnet session of the exercise, as written.
    let (mut c, greeting) = RawSmtp::connect(suite.smtp_port);
    assert!(greeting.starts_with("220"), "{greeting}");
    let rows = handlers_of(&suite, "isesctl");
    assert_eq!(rows.len(), 1, "iseshlr0 spawned: {rows:?}");
    assert_eq!(rows[0]["name"], "iseshlr0");
    assert!(c.cmd("HELO univac.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<bsmith@univac.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@localhost>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"\r\nHello World\r\n.\r\n");
    assert!(c.read_reply().starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    suite.wait_for_mail("alice", 1);

    // Several sessions left open: the fourth and fifth find every handler busy.
    const BUSY: &str = "all 3 inbound session handlers busy";
    let held: Vec<RawSmtp> = (0..3)
        .map(|_| {
            let (c, greeting) = RawSmtp::connect(suite.smtp_port);
            assert!(greeting.starts_with("220"), "{greeting}");
            c
        })
        .collect();
    assert_eq!(log_lines(&suite, BUSY), 0, "nobody waits yet");
    let mut waiting: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", suite.smtp_port)).unwrap())
        .collect();
    let line = wait_for(
        "the busy line on the console",
        Duration::from_secs(10),
        || {
            suite
                .log()
                .lines()
                .find(|l| l.contains(BUSY))
                .map(str::to_string)
                .ok_or_else(|| tail(&suite.log(), 10))
        },
    );
    assert!(line.starts_with("isesctl["), "{line}");
    assert!(line.contains("not accepting connections"), "{line}");
    // The fourth session gets no banner (it waits in the kernel's queue).
    use std::io::Read;
    waiting[0]
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(waiting[0].read(&mut buf).is_err(), "greeted while all busy");
    // More connections in the same burst: still one line.
    waiting.push(std::net::TcpStream::connect(("127.0.0.1", suite.smtp_port)).unwrap());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        log_lines(&suite, BUSY),
        1,
        "one line per burst:\n{}",
        suite.log()
    );
    let (_, text, _) = mtacon_text(&suite, &["show", "tasks"]);
    assert!(
        text.contains("all 3 handlers busy: not accepting"),
        "{text}"
    );

    // The held sessions end: the waiting ones are served, and the console says so once.
    drop(held);
    for w in &mut waiting {
        w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let n = w.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("220"));
        use std::io::Write;
        w.write_all(b"QUIT\r\n").unwrap();
    }
    wait_for(
        "the resume line",
        Duration::from_secs(10),
        || match log_lines(
            &suite,
            "inbound session handlers free again; accepting connections",
        ) {
            0 => Err(tail(&suite.log(), 10)),
            n => Ok(n),
        },
    );
    // A second burst later gets its own line.
    drop(waiting);
    wait_for("every handler idle", Duration::from_secs(10), || {
        let rows = handlers_of(&suite, "isesctl");
        if rows.iter().all(|r| r["state"] == "idle") {
            Ok(())
        } else {
            Err(format!("{rows:?}"))
        }
    });
    let held: Vec<RawSmtp> = (0..3)
        .map(|_| RawSmtp::connect(suite.smtp_port).0)
        .collect();
    let extra = std::net::TcpStream::connect(("127.0.0.1", suite.smtp_port)).unwrap();
    wait_for(
        "a second busy line",
        Duration::from_secs(10),
        || match log_lines(&suite, BUSY) {
            2 => Ok(()),
            n => Err(format!("{n} lines")),
        },
    );
    drop((held, extra));
}

#[test]
fn seed_exercise_3_a_small_message_overtakes_a_large_one_on_a_second_handler() {
    // A slow next hop: the 1 MB message takes about five seconds to transfer.
    let sink = Sink::start(&["--throttle", "200000"]);
    let suite = relay_suite(&sink, &[]);
    let line = "y".repeat(998) + "\r\n";
    send(
        &suite,
        "jdoe@lotus.test",
        "large",
        line.repeat(1100).as_bytes(),
    );
    // "Once the Outbound Session Controller spawns a new handler and a connection is made
    // with the destination host, send the second message."
    wait_for("oseshlr0 delivering", Duration::from_secs(20), || {
        let rows = handlers_of(&suite, "osesctl");
        match rows.first() {
            Some(r)
                if r["state"] == "busy"
                    && r["detail"].as_str().unwrap_or("").contains("127.0.0.1") =>
            {
                Ok(())
            }
            _ => Err(format!("{rows:?}")),
        }
    });
    send(&suite, "jdoe@lotus.test", "Hello", b"Hello\r\n");
    // The controller spawns another handler for the same destination.
    let rows = wait_for("oseshlr1 spawned", Duration::from_secs(10), || {
        let rows = handlers_of(&suite, "osesctl");
        if rows.len() == 2 {
            Ok(rows)
        } else {
            Err(format!("{rows:?}"))
        }
    });
    assert_eq!(rows[1]["name"], "oseshlr1", "{rows:?}");
    sink.wait_count(&suite, 2, Duration::from_secs(40));
    let messages = sink.messages();
    let subjects: Vec<String> = messages
        .iter()
        .map(|(_, c)| {
            String::from_utf8_lossy(c)
                .lines()
                .find(|l| l.starts_with("Subject:"))
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(
        subjects,
        vec!["Subject: Hello".to_string(), "Subject: large".to_string()],
        "the small message arrived first"
    );
}

#[test]
fn route_alone_sends_every_pending_destination_and_route_localdelivery_retries_local_mail() {
    // Every remote destination's first attempt is deferred, with an hour to the retry.
    let sink = Sink::start(&["--tempfail-first", "2"]);
    let suite = Suite::start(&SuiteOptions {
        sections: vec![
            ("outbound", format!("port = {}", sink.port)),
            (
                "outbound",
                format!("relay_host = \"127.0.0.1:{}\"", sink.port),
            ),
            ("outbound", "retry = [\"1h\"]".into()),
        ],
        ..SuiteOptions::default()
    });
    // A mailbox that cannot be written: the local recipient waits in mail.box.
    let bob = suite.mailbox("bob");
    std::fs::create_dir_all(bob.parent().unwrap()).unwrap();
    std::fs::write(&bob, b"not a folder").unwrap();
    send(&suite, "one@lotus.test", "route-one", b"one\r\n");
    send(&suite, "two@iris.test", "route-two", b"two\r\n");
    send(&suite, "bob@localhost", "route-local", b"local\r\n");
    wait_for(
        "two deferred, one local retry",
        Duration::from_secs(20),
        || {
            let log = suite.log();
            let deferred = log
                .lines()
                .filter(|l| l.contains("status=deferred"))
                .count();
            if deferred >= 3 {
                Ok(())
            } else {
                Err(tail(&log, 10))
            }
        },
    );
    assert_eq!(sink.count(), 0);
    let (code, out, err) = mtacon_text(&suite, &["route"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("route all pending destinations: 2 messages"),
        "{out}"
    );
    sink.wait_count(&suite, 2, Duration::from_secs(20));

    std::fs::remove_file(&bob).unwrap();
    let (code, out, err) = mtacon_text(&suite, &["Route", "LocalDelivery"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("route LocalDelivery: 1 message(s)"), "{out}");
    suite.wait_for_mail("bob", 1);
    let (code, _, err) = mtacon_text(&suite, &["route", "a", "b"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("usage: route"), "{err}");
}

#[test]
fn show_stat_mail_has_the_seed_names_computed_from_state_and_filters_like_domino() {
    let sink = Sink::start(&["--throttle", "200000"]);
    let suite = relay_suite(&sink, &[("outbound", "max_handlers = 4".into())]);
    let line = "z".repeat(998) + "\r\n";
    send(
        &suite,
        "far@lotus.test",
        "stat-big",
        line.repeat(600).as_bytes(),
    );
    send(&suite, "alice@localhost", "stat-local", b"local\r\n");
    sink.wait_count(&suite, 1, Duration::from_secs(30));
    suite.wait_for_mail("alice", 1);
    let (code, text, err) = mtacon_text(&suite, &["show", "stat", "mail"]);
    assert_eq!(code, Some(0), "{err}");
    for name in [
        "Mail.TotalPending",
        "Mail.Waiting",
        "Mail.WaitingRecipients",
        "Mail.WaitingForDNS",
        "Mail.WaitingForDIR",
        "Mail.CurrentMessageDeliveryRate",
        "Mail.CurrentMessageTransferRate",
        "Mail.CurrentByteDeliveryRate",
        "Mail.CurrentByteTransferRate",
        "Mail.TransferThreads.Total",
        "Mail.TransferThreads.Max",
        "Mail.TransferThreads.Concurrent.Max",
        "Mail.TransferThreads.Concurrent.Highest",
        "Mail.DeliveryThreads.Total",
        "Mail.DeliveryThreads.Max",
        "Mail.Domain",
        "Mail.Hold",
        "Mail.Dead",
    ] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "{name} missing:\n{text}"
        );
    }
    let v: Value =
        serde_json::from_slice(&suite.mtacon(&["--json", "show", "stat", "mail"]).stdout).unwrap();
    let s = &v["stats"];
    assert_eq!(s["Mail.Domain"], "localhost", "{s}");
    assert!(
        s["Mail.CurrentMessageTransferRate"].as_u64().unwrap() >= 1,
        "{s}"
    );
    assert!(
        s["Mail.CurrentMessageDeliveryRate"].as_u64().unwrap() >= 1,
        "{s}"
    );
    assert!(
        s["Mail.CurrentByteTransferRate"].as_u64().unwrap() >= 600_000,
        "{s}"
    );
    assert_eq!(s["Mail.TransferThreads.Max"], 4, "{s}");
    assert_eq!(s["Mail.TransferThreads.Total"], 1, "oseshlr0: {s}");
    assert_eq!(s["Mail.TransferThreads.Concurrent.Highest"], 1, "{s}");
    assert_eq!(s["Mail.TotalPending"], 0, "{s}");

    let (code, text, _) = mtacon_text(&suite, &["show", "stat", "mail.dead"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        text.split_whitespace().collect::<Vec<_>>(),
        ["Mail.Dead", "=", "0"],
        "{text}"
    );
    let (code, text, _) = mtacon_text(&suite, &["sh", "stat", "Mail.*Threads*"]);
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = text.lines().collect();
    // The six thread statistics, and Mail.WaitingForDeliveryThreads.
    assert_eq!(lines.len(), 7, "{text}");
    assert!(lines.iter().all(|l| l.contains("Threads")), "{text}");
    let v: Value = serde_json::from_slice(
        &suite
            .mtacon(&["show", "stat", "mail.transferthreads", "--json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(v["stats"].as_object().unwrap().len(), 4, "{v}");
    let (code, _, err) = mtacon_text(&suite, &["show", "stat", "mail.nothing"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no statistics match"), "{err}");

    // show server: figure 10's mail, sessions and transactions.
    let v: Value =
        serde_json::from_slice(&suite.mtacon(&["--json", "show", "server"]).stdout).unwrap();
    let s = &v["server"];
    assert_eq!(s["pending_mail"], 0, "{s}");
    assert_eq!(s["dead_mail"], 0, "{s}");
    assert_eq!(s["held_mail"], 0, "{s}");
    assert!(s["sessions_peak"].as_u64().unwrap() >= 1, "{s}");
    // 2 received, 1 delivered, 1 relayed.
    assert!(s["transactions_minute"].as_u64().unwrap() >= 4, "{s}");
    assert!(s["transactions_hour"].as_u64().unwrap() >= 4, "{s}");
    let (code, text, _) = mtacon_text(&suite, &["show", "server"]);
    assert_eq!(code, Some(0));
    for label in [
        "Pending mail:",
        "Dead mail:",
        "Held mail:",
        "Sessions:",
        "Transactions:",
    ] {
        assert!(text.contains(label), "{text}");
    }
}

/// `tell router show` as step 6 of 003's troubleshooting reads it: every pending
/// destination with its state, then the threads. One handler: while it is in session with
/// a slow next hop for lotus.test (BUSY), a message for iris.test waits for it (WAIT); a
/// message deferred for an hour is RETRY with its last error, and so is local mail whose
/// mailbox cannot be written.
#[test]
fn tell_router_show_names_each_destination_busy_wait_or_retry_and_the_threads() {
    // The first RCPT the sink sees gets 451; content is read at 100 kB/s.
    let sink = Sink::start(&["--tempfail-first", "1", "--throttle", "100000"]);
    let suite = Suite::start(&SuiteOptions {
        sections: vec![
            ("outbound", format!("port = {}", sink.port)),
            (
                "outbound",
                format!("relay_host = \"127.0.0.1:{}\"", sink.port),
            ),
            ("outbound", "command_timeout = \"60s\"".into()),
            ("outbound", "retry = [\"1h\"]".into()),
            ("outbound", "max_handlers = 1".into()),
        ],
        ..SuiteOptions::default()
    });
    let bob = suite.mailbox("bob");
    std::fs::create_dir_all(bob.parent().unwrap()).unwrap();
    std::fs::write(&bob, b"not a folder").unwrap();
    send(&suite, "later@retry.test", "show-retry", b"retry\r\n");
    send(&suite, "bob@localhost", "show-local", b"local\r\n");
    wait_for("both deferred", Duration::from_secs(20), || {
        let log = suite.log();
        match log
            .lines()
            .filter(|l| l.contains("status=deferred"))
            .count()
        {
            n if n >= 2 => Ok(()),
            _ => Err(tail(&log, 10)),
        }
    });
    let line = "b".repeat(998) + "\r\n";
    send(
        &suite,
        "far@lotus.test",
        "show-big",
        line.repeat(1500).as_bytes(),
    );
    wait_for(
        "oseshlr0 in session",
        Duration::from_secs(20),
        || match handlers_of(&suite, "osesctl").first() {
            Some(r) if r["state"] == "busy" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    send(&suite, "near@iris.test", "show-wait", b"small\r\n");

    let report = wait_for(
        "iris.test waits for the handler",
        Duration::from_secs(10),
        || {
            let out = suite.mtacon(&["--json", "tell", "router", "show"]);
            let v: Value = serde_json::from_slice(&out.stdout)
                .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))?;
            let r = v["router"].clone();
            let state = |d: &str| {
                r["destinations"]
                    .as_array()
                    .and_then(|rows| rows.iter().find(|row| row["destination"] == d))
                    .map(|row| row["state"].as_str().unwrap_or("").to_string())
            };
            if state("iris.test").as_deref() == Some("Wait")
                && state("lotus.test").as_deref() == Some("Busy")
            {
                Ok(r)
            } else {
                Err(format!("{r}"))
            }
        },
    );
    let find = |d: &str| {
        report["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["destination"] == d)
            .cloned()
            .unwrap_or_else(|| panic!("{d} missing: {report}"))
    };
    let retry = find("retry.test");
    assert_eq!(retry["state"], "Retry", "{report}");
    assert!(retry["next_retry_ms"].as_u64().is_some(), "{report}");
    assert!(
        retry["last_error"].as_str().unwrap().contains("451"),
        "{report}"
    );
    let local = find("LocalDelivery");
    assert_eq!(local["state"], "Retry", "{report}");
    assert_eq!(
        find("lotus.test")["via"],
        format!("127.0.0.1:{}", sink.port)
    );
    assert_eq!(report["transfer"]["max"], 1, "{report}");
    assert_eq!(report["transfer"]["busy"], 1, "{report}");
    assert_eq!(report["transport_running"], true, "{report}");

    // The operator's text: Domino's words and the threads line.
    let (code, text, err) = mtacon_text(&suite, &["tell", "router", "show"]);
    assert_eq!(code, Some(0), "{err}");
    for (dest, state) in [
        ("LocalDelivery", "RETRY"),
        ("lotus.test", "BUSY"),
        ("retry.test", "RETRY"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(dest) && l.contains(state)),
            "{dest} {state}:\n{text}"
        );
    }
    assert!(
        text.contains("Transfer Threads: Max 1 Total 1 Busy 1"),
        "{text}"
    );
    assert!(text.contains("Delivery Threads: Max 1"), "{text}");
    eprintln!("tell router show:\n{text}");
    // `tell router show queue` has the controller's states too.
    let (_, queue, _) = mtacon_text(&suite, &["tell", "router", "show", "queue"]);
    assert!(
        queue
            .lines()
            .any(|l| l.contains("Busy") && l.contains("lotus.test")),
        "{queue}"
    );

    // Transport stopped: due destinations WAIT, and the report says why.
    let (code, _, err) = mtacon_text(
        &suite,
        &["tell", "smtpmta", "stop", "outbound", "transport"],
    );
    assert_eq!(code, Some(0), "{err}");
    let (_, text, _) = mtacon_text(&suite, &["tell", "router", "show"]);
    assert!(text.contains("(outbound transport stopped)"), "{text}");
}
