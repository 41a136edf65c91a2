//! Local delivery over LMTP (issue 29, point 5), against Dovecot's real LMTP server run as
//! a mail user (`mta_testkit::peers::DovecotLmtp`: quotas, a passwd-file of users).
//!
//! What an operator sees: one message to three LMTP mailboxes gets three outcomes — the
//! mailbox that takes it has it (written by Dovecot), the one over quota (`452 4.2.2`) is
//! deferred alone, stays queued and is delivered by a later retry once the quota allows,
//! the one Dovecot does not know (`550 5.1.1`) fails, and the sender's report (sent when
//! the message's last recipient is final, as for relayed mail) names it alone;
//! connections are reused across messages (fewer connections than messages, by our
//! counter and by Dovecot's log); a server that is down defers with a log line and a
//! metric, and the mail goes through once it is up.

use mta_testkit::peers::{tail, DovecotLmtp};
use mta_testkit::{wait_for, Suite, SuiteOptions};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const MAIL_USER: &str = "smtpmta-mail";

/// carol sends and reads her reports from a Maildir (`lmtp = "none"`); alice and ghost
/// take `[lmtp] address` (the Unix socket); bob has his own server address (TCP).
fn directory(dovecot: &DovecotLmtp) -> String {
    format!(
        r#"
[[user]]
name = "postmaster"
addresses = ["postmaster@localhost"]
lmtp = "none"

[[user]]
name = "carol"
addresses = ["carol@localhost"]
maildir = "mail/carol"
lmtp = "none"

[[user]]
name = "alice"
addresses = ["alice@localhost"]

[[user]]
name = "bob"
addresses = ["bob@localhost"]
lmtp = "inet:127.0.0.1:{port}"

[[user]]
name = "ghost"
addresses = ["ghost@localhost"]
"#,
        port = dovecot.port
    )
}

fn suite(dovecot: &DovecotLmtp) -> Suite {
    Suite::start(&SuiteOptions {
        directory: Some(directory(dovecot)),
        sections: vec![
            (
                "lmtp",
                format!("address = \"unix:{}\"", dovecot.socket().display()),
            ),
            ("lmtp", "timeout = \"20s\"".into()),
            // Local retries come quickly (the router's poll is 5 s).
            ("outbound", "retry = [\"2s\"]".into()),
        ],
        ..SuiteOptions::default()
    })
}

/// Sends one message with swaks; returns its queue id.
fn send(suite: &Suite, to: &[&str], subject: &str, body: &str) -> String {
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", suite.smtp_port)])
        .args(["--timeout", "20", "--from", "carol@localhost"])
        .args(["--to", &to.join(",")])
        .args(["--header", &format!("Subject: {subject}")])
        .args(["--body", body])
        .output()
        .expect("swaks is installed (scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    text.split("queued as ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no queue id in {text}"))
        .to_string()
}

fn stats(suite: &Suite) -> Value {
    let out = suite.mtacon(&["--json", "show", "stat", "mail"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["stats"].clone()
}

fn stat(suite: &Suite, name: &str) -> u64 {
    stats(suite)[name].as_u64().unwrap_or(0)
}

/// Messages in `mail.box` (local delivery waiting for a retry), from `show queue`.
fn in_mail_box(suite: &Suite) -> (u64, Value) {
    let out = suite.mtacon(&["--json", "show", "queue"]);
    let q: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let n = q["queue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["queue"] == "mail.box")
        .filter_map(|r| r["messages"].as_u64())
        .sum();
    (n, q)
}

fn wait_messages(dovecot: &DovecotLmtp, suite: &Suite, user: &str, n: usize) -> Vec<String> {
    wait_for(
        &format!("{n} message(s) in {user}'s Dovecot mailbox"),
        Duration::from_secs(30),
        || {
            let files = dovecot.messages(user);
            if files.len() == n {
                Ok(())
            } else {
                Err(format!(
                    "{} file(s)\nsuite log:\n{}\ndovecot log:\n{}",
                    files.len(),
                    tail(&suite.log(), 20),
                    tail(&dovecot.log(), 10)
                ))
            }
        },
    );
    dovecot
        .messages(user)
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect()
}

/// After the first attempt: alice sent over the Unix socket, bob deferred for his quota
/// over TCP (the message waits in mail.box), ghost failed 5.1.1 — in the log and in
/// `show queue` / `show message`.
fn first_attempt_outcomes(suite: &Suite, dovecot: &DovecotLmtp, qid: &str) {
    // Dovecot writes alice's file before it answers: the router's outcome lines may follow
    // the file by a moment.
    let log = wait_for(
        "the first attempt's three outcome lines",
        Duration::from_secs(30),
        || {
            let log = suite.log();
            let lines = log
                .lines()
                .filter(|l| l.contains(&format!("qid={qid}")) && l.contains(" to=<"))
                .filter(|l| l.contains("status="))
                .count();
            if lines >= 3 {
                Ok(log)
            } else {
                Err(format!("{lines} of 3:\n{}", tail(&log, 20)))
            }
        },
    );
    let line = |to: &str| {
        log.lines()
            .find(|l| l.contains(&format!("qid={qid}")) && l.contains(&format!("to=<{to}>")))
            .unwrap_or_else(|| panic!("no line for {to}:\n{}", tail(&log, 30)))
            .to_string()
    };
    let unix = format!("relay=lmtp[unix:{}]", dovecot.socket().display());
    let (a, b, g) = (
        line("alice@localhost"),
        line("bob@localhost"),
        line("ghost@localhost"),
    );
    assert!(a.contains("status=sent") && a.contains(&unix), "{a}");
    assert!(
        b.contains("status=deferred") && b.contains("dsn=4.2.2") && b.contains("Quota"),
        "{b}"
    );
    assert!(
        b.contains(&format!("relay=lmtp[inet:127.0.0.1:{}]", dovecot.port)),
        "{b}"
    );
    // ghost: 550 5.1.1 from Dovecot, failed for good.
    assert!(
        g.contains("status=bounced") && g.contains("dsn=5.1.1"),
        "{g}"
    );
    let (n, q) = in_mail_box(suite);
    assert_eq!(n, 1, "the message waits for bob's retry: {q}");
    let shown = suite.mtacon(&["show", "message", qid]);
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown.contains("<bob@localhost>") && shown.contains("4.2.2"),
        "{shown}"
    );
    assert!(shown.contains("<ghost@localhost>: failed"), "{shown}");
}

#[test]
fn each_lmtp_recipient_gets_its_own_outcome_sent_deferred_for_quota_or_bounced() {
    let mut dovecot =
        DovecotLmtp::prepare(MAIL_USER, &[("alice", None), ("bob", Some("*:storage=1K"))]);
    dovecot.start();
    let suite = suite(&dovecot);

    // Over bob's 1 KiB quota; alice has none; ghost is unknown to Dovecot.
    let body = format!("LMTP test body\n{}\n", "0123456789abcdef".repeat(128));
    let qid = send(
        &suite,
        &["alice@localhost", "bob@localhost", "ghost@localhost"],
        "three outcomes",
        &body,
    );

    // alice: written by Dovecot into her mailbox (its own Return-Path and Delivered-To).
    let alice = wait_messages(&dovecot, &suite, "alice", 1);
    assert!(alice[0].contains("Subject: three outcomes"), "{}", alice[0]);
    assert!(alice[0].contains("0123456789abcdef"), "{}", alice[0]);
    assert!(
        alice[0].contains("Return-Path: <carol@localhost>"),
        "{}",
        alice[0]
    );
    assert!(dovecot.messages("bob").is_empty(), "bob is over quota");

    first_attempt_outcomes(&suite, &dovecot, &qid);

    // A retry (every 2 s here) meets the quota again: still deferred, nothing written.
    wait_for("a second attempt for bob", Duration::from_secs(30), || {
        let attempts = suite
            .log()
            .lines()
            .filter(|l| l.contains(&format!("qid={qid}")) && l.contains("to=<bob@localhost>"))
            .count();
        if attempts >= 2 {
            Ok(())
        } else {
            Err(format!("{attempts} attempt(s)"))
        }
    });
    assert!(dovecot.messages("bob").is_empty());

    // The quota is raised: the next retry delivers, once, and the message is done.
    dovecot.set_users(&[("alice", None), ("bob", Some("*:storage=10M"))]);
    let bob = wait_messages(&dovecot, &suite, "bob", 1);
    assert!(bob[0].contains("Subject: three outcomes"), "{}", bob[0]);
    wait_for(
        "the message done",
        Duration::from_secs(30),
        || match in_mail_box(&suite) {
            (0, _) => Ok(()),
            (_, q) => Err(format!("{q}")),
        },
    );
    assert_eq!(dovecot.messages("alice").len(), 1, "alice got it once");

    // The message is final: one report to carol (her Maildir), for ghost alone.
    let reports = suite.wait_for_mail("carol", 1);
    let report = std::fs::read_to_string(&reports[0]).unwrap();
    assert!(
        report.contains("Final-Recipient: rfc822; ghost@localhost") && report.contains("5.1.1"),
        "{report}"
    );
    for other in ["alice@localhost", "bob@localhost"] {
        assert!(!report.contains(&format!("rfc822; {other}")), "{report}");
    }
    assert!(stat(&suite, "Mail.LMTP.Connections") >= 1);
}

#[test]
fn lmtp_connections_are_reused_across_messages() {
    let mut dovecot = DovecotLmtp::prepare(MAIL_USER, &[("alice", None), ("bob", None)]);
    dovecot.start();
    let suite = suite(&dovecot);

    // (Starting, the helper itself connected once to see the greeting.)
    let probes = dovecot.log().matches("Connect from local").count() as u64;
    const N: usize = 8;
    for i in 0..N {
        send(&suite, &["alice@localhost"], &format!("reuse {i}"), "hello");
    }
    wait_messages(&dovecot, &suite, "alice", N);

    // Our counter (show stat mail) and Dovecot's own log agree: fewer connections than
    // messages, as each message went over a connection kept from the one before.
    let opened = stat(&suite, "Mail.LMTP.Connections");
    let connects = dovecot.log().matches("Connect from local").count() as u64 - probes;
    assert!(
        opened >= 1 && opened < N as u64,
        "{opened} connections for {N} messages"
    );
    assert_eq!(connects, opened, "dovecot log:\n{}", dovecot.log());
    assert_eq!(stat(&suite, "Mail.LMTP.Failures"), 0);
}

#[test]
fn an_lmtp_server_that_is_down_defers_with_a_log_line_and_a_metric_then_delivers() {
    // Prepared, not started: the socket's path is known, nothing listens there yet.
    let mut dovecot = DovecotLmtp::prepare(MAIL_USER, &[("alice", None), ("bob", None)]);
    let suite = suite(&dovecot);

    let qid = send(&suite, &["alice@localhost"], "while down", "hello");
    wait_for("the deferral logged", Duration::from_secs(30), || {
        let log = suite.log();
        let unreachable = log
            .lines()
            .any(|l| l.contains(&format!("qid={qid}")) && l.contains("unreachable"));
        let deferred = log.lines().any(|l| {
            l.contains(&format!("qid={qid}"))
                && l.contains("to=<alice@localhost>")
                && l.contains("status=deferred")
        });
        if unreachable && deferred {
            Ok(())
        } else {
            Err(tail(&log, 20))
        }
    });
    assert!(stat(&suite, "Mail.LMTP.Failures") >= 1);
    assert_eq!(in_mail_box(&suite).0, 1, "the message is kept");
    let pid = suite.task_pid("router").expect("router runs");

    // Dovecot comes up: a later retry delivers; the router never went down.
    dovecot.start();
    let alice = wait_messages(&dovecot, &suite, "alice", 1);
    assert!(alice[0].contains("Subject: while down"), "{}", alice[0]);
    assert_eq!(suite.task_pid("router"), Some(pid));
    wait_for(
        "the message done",
        Duration::from_secs(30),
        || match in_mail_box(&suite) {
            (0, _) => Ok(()),
            (_, q) => Err(format!("{q}")),
        },
    );
}
