//! Outbound: router → smtp.box → omsgcnv → Outbound Work Queue → osesctl/oseshlrN → a real
//! SMTP sink on loopback, with a real DNS server (dnsmasq) for MX, implicit MX, null MX,
//! NXDOMAIN and a SERVFAIL/timeout domain.
//!
//! Every host is on 127.0.0.x and shares `[outbound] port` (the sink's port): a "dead" MX
//! points at 127.0.0.3, where nothing listens. Recipient outcomes are asserted through the
//! Postfix-style log lines (`to=<…> relay=… dsn=… status=sent|deferred|bounced|expired`),
//! because a record whose recipients are all final leaves the queue.
//! Needs: python3 (tests/support/smtp_sink.py, smtp_load.py) and /usr/sbin/dnsmasq.

use mta_testkit::peers::{tail, Dns, Sink};
use mta_testkit::{wait_for, RawSmtp, Suite, SuiteOptions};
use std::time::{Duration, Instant};

/// A suite whose outbound side talks to `sink` (relay host, or MX through `dns`).
fn suite_for(sink: &Sink, dns: Option<&Dns>, relay: bool, extra: &[&str]) -> Suite {
    let mut sections: Vec<(&'static str, String)> = vec![
        ("outbound", format!("port = {}", sink.port)),
        ("outbound", "connect_timeout = \"2s\"".into()),
        ("outbound", "command_timeout = \"20s\"".into()),
        ("dns", "timeout = \"1s\"".into()),
    ];
    if relay {
        sections.push((
            "outbound",
            format!("relay_host = \"127.0.0.1:{}\"", sink.port),
        ));
    }
    if let Some(dns) = dns {
        sections.push(("dns", format!("nameservers = [\"127.0.0.1:{}\"]", dns.port)));
    }
    let has_retry = extra.iter().any(|l| l.starts_with("retry"));
    if !has_retry {
        sections.push(("outbound", "retry = [\"1s\"]".into()));
    }
    for line in extra {
        sections.push(("outbound", line.to_string()));
    }
    Suite::start(&SuiteOptions {
        sections,
        ..SuiteOptions::default()
    })
}

/// Sends one message from a trusted client; every RCPT must be accepted.
fn send(suite: &Suite, rcpts: &[&str], content: &[u8]) {
    let (mut c, greeting) = RawSmtp::connect(suite.smtp_port);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<sender@client.test>").starts_with("250"));
    for r in rcpts {
        let reply = c.cmd(&format!("RCPT TO:<{r}>"));
        assert!(reply.starts_with("250"), "RCPT {r}: {reply}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(&dot_stuffed(content));
    c.send(b".\r\n");
    let reply = c.read_reply();
    assert!(reply.starts_with("250"), "{reply}");
    c.cmd("QUIT");
}

fn dot_stuffed(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in content.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out
}

fn message(id: &str) -> Vec<u8> {
    format!(
        "DKIM-Signature: v=1; a=rsa-sha256; d=client.test; s=sel; bh=abc=;\r\n\
         \tb=Zm9vYmFy\r\n\
         From: Sender <sender@client.test>\r\n\
         To: someone@remote.test\r\n\
         Subject: outbound {id}\r\n\
         Message-ID: <{id}@client.test>\r\n\
         Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\
         \r\n\
         Hello.\r\n\
         .a line that starts with a dot\r\n\
         ..and one with two\r\n\
         trailing spaces   \r\n\
         \r\n"
    )
    .into_bytes()
}

/// Waits for a log line mentioning every one of `parts`.
fn wait_log(suite: &Suite, parts: &[&str], deadline: Duration) -> String {
    wait_for(&format!("a log line with {parts:?}"), deadline, || {
        let log = suite.log();
        log.lines()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_string)
            .ok_or_else(|| tail(&log, 25))
    })
}

fn log_count(suite: &Suite, parts: &[&str]) -> usize {
    suite
        .log()
        .lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count()
}

fn queue_count(suite: &Suite, queue: &str) -> u64 {
    let out = suite.mtacon(&["--json", "show", "queue"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["queue"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|r| r["queue"] == queue)
                .map(|r| r["messages"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

fn osesctl_row(suite: &Suite) -> serde_json::Value {
    suite
        .tasks()
        .unwrap()
        .into_iter()
        .find(|t| t["name"] == "osesctl" && t["parent"].is_null())
        .unwrap()
}

#[test]
fn relay_host_gets_every_message_byte_identical() {
    let sink = Sink::start(&[]);
    let suite = suite_for(&sink, None, true, &[]);
    let content = message("relay-1");
    send(&suite, &["one@far.test", "two@elsewhere.test"], &content);
    sink.wait_count(&suite, 1, Duration::from_secs(20));
    let (env, got) = &sink.messages()[0];
    // Both domains go to the relay host: one list, one transaction with both recipients.
    let mut rcpts: Vec<&str> = env["rcpts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    rcpts.sort();
    assert_eq!(rcpts, ["one@far.test", "two@elsewhere.test"]);
    assert_eq!(env["mail_from"], "sender@client.test");
    // Byte-identical: only our Received header in front of the original content.
    assert!(
        got.starts_with(b"Received: "),
        "{}",
        String::from_utf8_lossy(got)
    );
    assert!(
        got.ends_with(&content),
        "content changed in transit:\n{}",
        String::from_utf8_lossy(got)
    );
    let line = wait_log(
        &suite,
        &["to=<one@far.test>", "status=sent", "dsn=2.0.0"],
        Duration::from_secs(5),
    );
    assert!(
        line.contains(&format!("relay=127.0.0.1[127.0.0.1]:{}", sink.port)),
        "{line}"
    );
    // show tasks lists the handler that did it.
    let tasks = suite.tasks().unwrap();
    let handler = tasks
        .iter()
        .find(|t| t["name"] == "oseshlr0")
        .unwrap_or_else(|| panic!("no oseshlr0 in {tasks:?}"));
    assert_eq!(handler["parent"], "osesctl");
    assert!(osesctl_row(&suite)["detail"]
        .as_str()
        .unwrap()
        .contains("outbound transport running"));
}

#[test]
fn mx_preference_fallback_implicit_mx_null_mx_nxdomain_and_servfail() {
    let dns = Dns::start();
    let sink = Sink::start(&[]);
    let suite = suite_for(&sink, Some(&dns), false, &[]);
    send(&suite, &["u@two-mx.test"], &message("mx-1"));
    send(&suite, &["u@a-only.test"], &message("mx-2"));
    send(&suite, &["u@null-mx.test"], &message("mx-3"));
    send(&suite, &["u@nope.test"], &message("mx-4"));
    send(&suite, &["u@servfail.test"], &message("mx-5"));
    sink.wait_count(&suite, 2, Duration::from_secs(30));
    // Preference 10 (127.0.0.3, nothing listening) failed over to preference 20.
    wait_log(
        &suite,
        &[
            "to=<u@two-mx.test>",
            "relay=mx2.two-mx.test[127.0.0.1]",
            "status=sent",
        ],
        Duration::from_secs(5),
    );
    wait_log(
        &suite,
        &[
            "to=<u@a-only.test>",
            "relay=a-only.test[127.0.0.1]",
            "status=sent",
        ],
        Duration::from_secs(5),
    );
    wait_log(
        &suite,
        &["to=<u@null-mx.test>", "dsn=5.1.10", "status=bounced"],
        Duration::from_secs(10),
    );
    wait_log(
        &suite,
        &["to=<u@nope.test>", "dsn=5.1.2", "status=bounced"],
        Duration::from_secs(10),
    );
    wait_log(
        &suite,
        &["to=<u@servfail.test>", "dsn=4.4.3", "status=deferred"],
        Duration::from_secs(15),
    );
    // SERVFAIL is retried (retry = 1s): a second deferral follows.
    wait_for("a second SERVFAIL attempt", Duration::from_secs(15), || {
        let n = log_count(&suite, &["to=<u@servfail.test>", "status=deferred"]);
        if n >= 2 {
            Ok(())
        } else {
            Err(format!("{n} attempts"))
        }
    });
    assert_eq!(
        log_count(&suite, &["to=<u@null-mx.test>", "status=sent"]),
        0
    );
    let ids = sink.message_ids();
    assert_eq!(ids.len(), 2, "{ids:?}");
}

#[test]
fn temporary_failures_are_retried_until_accepted() {
    let sink = Sink::start(&["--tempfail-first", "2"]);
    let suite = suite_for(&sink, None, true, &[]);
    let started = Instant::now();
    send(&suite, &["later@far.test"], &message("retry-1"));
    sink.wait_count(&suite, 1, Duration::from_secs(30));
    let deferred = log_count(&suite, &["to=<later@far.test>", "status=deferred"]);
    assert_eq!(deferred, 2, "{}", tail(&suite.log(), 20));
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "retries respect the 1s schedule"
    );
    wait_log(
        &suite,
        &["to=<later@far.test>", "status=sent"],
        Duration::from_secs(5),
    );
    assert_eq!(sink.count(), 1);
}

#[test]
fn queue_lifetime_expiry_fails_the_recipient() {
    let sink = Sink::start(&[]);
    let suite = suite_for(&sink, None, true, &["queue_lifetime = \"3s\""]);
    send(&suite, &["defer-me@far.test"], &message("expire-1"));
    let line = wait_log(
        &suite,
        &["to=<defer-me@far.test>", "dsn=4.4.7", "status=expired"],
        Duration::from_secs(20),
    );
    assert!(line.contains("last error: 451"), "{line}");
    assert!(log_count(&suite, &["to=<defer-me@far.test>", "status=deferred"]) >= 2);
    wait_for(
        "message leaves the queue",
        Duration::from_secs(10),
        || match queue_count(&suite, "outbound-work") {
            0 => Ok(()),
            n => Err(format!("{n} queued")),
        },
    );
    // The original never reached the sink; the only thing it receives is the expiry
    // report to the (remote) sender, from <>, through the same relay host.
    sink.wait_count(&suite, 1, Duration::from_secs(20));
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    let (envelope, content) = &messages[0];
    let text = String::from_utf8_lossy(content);
    assert!(text.contains("report-type=delivery-status"), "{text}");
    assert!(
        text.contains("Action: failed") && text.contains("Status: 4.4.7"),
        "{text}"
    );
    assert_eq!(envelope["mail_from"], "", "not from <>: {envelope}");
}

#[test]
fn mixed_recipients_are_tracked_separately() {
    let dns = Dns::start();
    let sink = Sink::start(&[]);
    let suite = suite_for(&sink, Some(&dns), false, &["retry = [\"30s\"]"]);
    send(
        &suite,
        &[
            "ok@a-only.test",
            "reject-me@a-only.test",
            "defer-me@a-only.test",
            "u@null-mx.test",
            "v@two-mx.test",
        ],
        &message("mixed-1"),
    );
    sink.wait_count(&suite, 2, Duration::from_secs(30));
    wait_log(
        &suite,
        &["to=<ok@a-only.test>", "status=sent"],
        Duration::from_secs(5),
    );
    wait_log(
        &suite,
        &["to=<v@two-mx.test>", "status=sent"],
        Duration::from_secs(5),
    );
    wait_log(
        &suite,
        &["to=<reject-me@a-only.test>", "dsn=5.1.1", "status=bounced"],
        Duration::from_secs(5),
    );
    wait_log(
        &suite,
        &["to=<u@null-mx.test>", "dsn=5.1.10", "status=bounced"],
        Duration::from_secs(5),
    );
    wait_log(
        &suite,
        &["to=<defer-me@a-only.test>", "dsn=4.2.1", "status=deferred"],
        Duration::from_secs(5),
    );
    // Each outcome once; the deferred recipient keeps the message queued.
    for r in [
        "ok@a-only.test",
        "v@two-mx.test",
        "reject-me@a-only.test",
        "u@null-mx.test",
    ] {
        assert_eq!(
            log_count(&suite, &[&format!("to=<{r}>"), "status="]),
            1,
            "{r}:\n{}",
            suite.log()
        );
    }
    wait_for(
        "message still queued for the deferred recipient",
        Duration::from_secs(10),
        || match queue_count(&suite, "outbound-work") {
            1 => Ok(()),
            n => Err(format!("{n} queued")),
        },
    );
    let msgs = sink.messages();
    let mut all_rcpts: Vec<String> = msgs
        .iter()
        .flat_map(|(env, _)| env["rcpts"].as_array().unwrap().clone())
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    all_rcpts.sort();
    assert_eq!(all_rcpts, ["ok@a-only.test", "v@two-mx.test"]);
    // route <domain> tries the deferred recipient now despite the 30s retry.
    let before = log_count(&suite, &["to=<defer-me@a-only.test>", "status=deferred"]);
    let out = suite.mtacon(&["tell", "osesctl", "route", "a-only.test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "route retried the recipient",
        Duration::from_secs(10),
        || {
            let n = log_count(&suite, &["to=<defer-me@a-only.test>", "status=deferred"]);
            if n > before {
                Ok(())
            } else {
                Err(format!("{n} attempts"))
            }
        },
    );
}

fn load(port: u16, count: usize, sessions: usize, rcpt: &str, per_conn: usize) -> Vec<String> {
    mta_testkit::peers::smtp_load(port, count, sessions, rcpt, per_conn).accepted
}

#[test]
fn stop_outbound_transport_holds_mail_and_start_drains_it() {
    let sink = Sink::start(&[]);
    let suite = suite_for(&sink, None, true, &[]);
    let out = suite.mtacon(&["tell", "smtpmta", "stop", "outbound", "transport"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(osesctl_row(&suite)["detail"]
        .as_str()
        .unwrap()
        .contains("outbound transport stopped"));
    let accepted = load(suite.smtp_port, 200, 10, "held@far.test", 20);
    assert_eq!(accepted.len(), 200);
    wait_for(
        "200 messages Pending Transmission",
        Duration::from_secs(30),
        || match queue_count(&suite, "outbound-work") {
            200 => Ok(()),
            n => Err(format!("{n} in the outbound work queue")),
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        sink.count(),
        0,
        "nothing is sent while the transport is stopped"
    );
    // The router's view, as on a Domino console: one row for the destination.
    let out = suite.mtacon(&["tell", "router", "show", "queue"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.contains("far.test"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        row.trim_start().starts_with("200") && row.contains("Pending Transmission"),
        "{text}"
    );
    assert!(
        row.contains(&format!("127.0.0.1:{}", sink.port)),
        "Via is the relay host: {text}"
    );
    let out = suite.mtacon(&["tell", "smtpmta", "start", "outbound", "transport"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sink.wait_count(&suite, 200, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let ids = sink.message_ids();
    for m in &accepted {
        assert_eq!(ids.get(m), Some(&1), "{m} arrived {:?} times", ids.get(m));
    }
    assert_eq!(sink.count(), 200);
}

#[test]
fn kill_9_osesctl_and_omsgcnv_during_a_1000_message_relay_loses_nothing() {
    let sink = Sink::start(&[]);
    let mut suite = suite_for(&sink, None, true, &[]);
    let port = suite.smtp_port;
    let started = Instant::now();
    let loader = std::thread::spawn(move || load(port, 1000, 20, "load@far.test", 50));
    for round in 0..3u64 {
        for task in ["osesctl", "omsgcnv"] {
            let pid = wait_for(&format!("{task} running"), Duration::from_secs(30), || {
                suite.task_pid(task).ok_or("restarting".to_string())
            });
            suite.remember_pids();
            std::thread::sleep(Duration::from_millis(200 + 150 * round));
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let accepted = loader.join().unwrap();
    assert!(
        accepted.len() >= 950,
        "too few accepted: {}",
        accepted.len()
    );
    let ids = wait_for(
        "every accepted message at the sink",
        Duration::from_secs(120),
        || {
            let ids = sink.message_ids();
            let missing = accepted.iter().filter(|m| !ids.contains_key(*m)).count();
            if missing == 0 {
                Ok(ids)
            } else {
                Err(format!(
                    "{missing} of {} missing; log tail:\n{}",
                    accepted.len(),
                    tail(&suite.log(), 10)
                ))
            }
        },
    );
    let elapsed = started.elapsed();
    let duplicates: usize = ids.values().map(|n| n - 1).sum();
    eprintln!(
        "outbound relay with kill -9: {} accepted, all {} arrived in {:.1}s ({:.0} msg/s end to end), {} duplicates, lost 0",
        accepted.len(),
        ids.len(),
        elapsed.as_secs_f64(),
        accepted.len() as f64 / elapsed.as_secs_f64(),
        duplicates
    );
    suite.remember_pids();
}

#[test]
fn a_connection_dropped_in_the_middle_of_data_is_a_temporary_failure() {
    let sink = Sink::start(&[]);
    let suite = suite_for(&sink, None, true, &["retry = [\"30s\"]"]);
    send(&suite, &["drop-me@far.test"], &message("dropped-1"));
    let line = wait_log(
        &suite,
        &["to=<drop-me@far.test>", "status=deferred"],
        Duration::from_secs(20),
    );
    assert!(line.contains("dsn=4."), "{line}");
    // Nothing half-sent was saved, the message waits for its retry, and the next message
    // (a new session) goes through.
    assert_eq!(sink.count(), 0);
    assert_eq!(queue_count(&suite, "outbound-work"), 1);
    send(&suite, &["ok@far.test"], &message("after-drop"));
    sink.wait_count(&suite, 1, Duration::from_secs(20));
    assert!(
        sink.message_ids().contains_key("<after-drop@client.test>"),
        "{:?}",
        sink.message_ids()
    );
}
