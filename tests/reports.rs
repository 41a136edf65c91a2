//! Delivery reports and the operator console: drt's RFC 3464 reports for local-path
//! failures, the statistics of `show stat mail` (and their survival of a restart), message
//! tracking, hold/release/delete, `release dead`, `trace`, `tell smtpmta refresh`,
//! `tell smtpmta compact`, and the SMTPDebugIO transcript — through the real binaries.
//!
//! Needs: python3 (the reports are parsed back with its `email` package).

use mta_testkit::{maildir_new, wait_for, RawSmtp, Suite, SuiteOptions, DEFAULT_DIRECTORY};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The default directory plus aliases whose targets do not exist.
fn directory() -> String {
    DEFAULT_DIRECTORY.replace(
        "[aliases]\n",
        "[aliases]\n\"ghost@localhost\" = [\"nobody@localhost\"]\n\"mixed@localhost\" = [\"nobody@localhost\", \"bob@localhost\"]\n",
    )
}

fn suite() -> Suite {
    Suite::start(&SuiteOptions {
        directory: Some(directory()),
        sections: vec![("outbound", "retry = [\"1s\"]".into())],
        ..Default::default()
    })
}

/// One SMTP transaction; `rcpts` may carry parameters (`bob@localhost> NOTIFY=NEVER`
/// is written as `("bob@localhost", "NOTIFY=NEVER")`). Returns the queue id.
fn send(suite: &Suite, from: &str, rcpts: &[(&str, &str)], subject: &str) -> String {
    let (mut c, greeting) = RawSmtp::connect(suite.smtp_port);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let r = c.cmd(&format!("MAIL FROM:<{from}>"));
    assert!(r.starts_with("250"), "MAIL: {r}");
    for (rcpt, params) in rcpts {
        let line = format!("RCPT TO:<{rcpt}> {params}");
        let r = c.cmd(line.trim_end());
        assert!(r.starts_with("250"), "{line}: {r}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    let r = c.cmd(&format!(
        "From: <{from}>\r\nTo: <{}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@client.test>\r\n\r\nbody of {subject}\r\n.",
        rcpts[0].0
    ));
    assert!(r.starts_with("250"), "DATA: {r}");
    c.cmd("QUIT");
    r.rsplit(' ').next().unwrap().trim().to_string()
}

fn mtacon_json(suite: &Suite, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = suite.mtacon(&all);
    assert!(
        out.status.success(),
        "mtacon {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn mtacon_text(suite: &Suite, args: &[&str]) -> (bool, String) {
    let out = suite.mtacon(args);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn stats(suite: &Suite) -> Value {
    mtacon_json(suite, &["show", "stat", "mail"])["stats"].clone()
}

fn stat(suite: &Suite, name: &str) -> u64 {
    stats(suite)[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name}"))
}

fn queued(suite: &Suite) -> u64 {
    mtacon_json(suite, &["show", "queue"])["queue"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["state"] != "Dead" && r["state"] != "Held" && r["state"] != "Conversion Error"
        })
        .map(|r| r["messages"].as_u64().unwrap())
        .sum()
}

fn wait_drained(suite: &Suite) {
    wait_for("queues drained", Duration::from_secs(20), || {
        match queued(suite) {
            0 => Ok(()),
            n => Err(format!(
                "{n} queued; log:\n{}",
                mta_testkit::peers::tail(&suite.log(), 20)
            )),
        }
    });
}

/// Parses a delivered report with Python's `email` package: top-level headers, the
/// content type of each part, and the delivery-status groups (per-message, then one per
/// recipient).
const PARSE_DSN: &str = r#"
import email, json, sys
from email import policy
msg = email.message_from_bytes(open(sys.argv[1], "rb").read(), policy=policy.compat32)
out = {"headers": {k: str(v) for k, v in msg.items()},
       "content_type": msg.get_content_type(),
       "report_type": msg.get_param("report-type"),
       "parts": [], "groups": [], "text": ""}
for part in msg.get_payload():
    out["parts"].append(part.get_content_type())
    if part.get_content_type() == "message/delivery-status":
        out["groups"] = [{k: str(v) for k, v in g.items()} for g in part.get_payload()]
    elif part.get_content_type() == "text/plain":
        out["text"] = part.get_payload()
print(json.dumps(out))
"#;

fn parse_dsn(path: &PathBuf) -> Value {
    let out = Command::new(mta_testkit::python3())
        .arg("-c")
        .arg(PARSE_DSN)
        .arg(path)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn failure_report_for_an_alias_to_an_unknown_user_reaches_the_local_sender() {
    let suite = suite();
    let qid = send(
        &suite,
        "alice@localhost",
        &[
            (
                "ghost@localhost",
                "NOTIFY=FAILURE ORCPT=rfc822;Ghost@localhost",
            ),
            ("mixed@localhost", ""),
        ],
        "bounce-me",
    );
    // bob gets his copy through `mixed`; alice gets ONE report listing the one failure
    // (nobody@localhost reached through both aliases is a single recipient).
    suite.wait_for_mail("bob", 1);
    let files = suite.wait_for_mail("alice", 1);
    wait_drained(&suite);
    assert_eq!(maildir_new(&suite.mailbox("alice")).len(), 1);
    let raw = std::fs::read_to_string(&files[0]).unwrap();
    assert!(raw.starts_with("Return-Path: <>\n"), "{raw}");

    let dsn = parse_dsn(&files[0]);
    assert_eq!(dsn["content_type"], "multipart/report", "{dsn}");
    assert_eq!(dsn["report_type"], "delivery-status");
    assert_eq!(
        dsn["parts"],
        serde_json::json!([
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ])
    );
    assert_eq!(dsn["headers"]["Auto-Submitted"], "auto-replied");
    assert!(dsn["headers"]["From"]
        .as_str()
        .unwrap()
        .contains("MAILER-DAEMON@mta.test"));
    let groups = dsn["groups"].as_array().unwrap();
    assert_eq!(
        groups.len(),
        2,
        "one per-message group and one recipient: {dsn}"
    );
    assert_eq!(groups[0]["Reporting-MTA"], "dns; mta.test");
    assert!(groups[0]["Arrival-Date"].as_str().is_some());
    assert!(groups[0]["X-Queue-ID"].as_str().unwrap() == qid);
    let r = &groups[1];
    assert_eq!(r["Final-Recipient"], "rfc822; nobody@localhost");
    assert_eq!(r["Original-Recipient"], "rfc822; Ghost@localhost", "{r}");
    assert_eq!(r["Action"], "failed");
    assert_eq!(r["Status"], "5.1.1");
    let diag = r["Diagnostic-Code"].as_str().unwrap();
    assert!(
        diag.starts_with("smtp; 550 5.1.1") && diag.contains("user unknown"),
        "{diag}"
    );
    assert!(r["Last-Attempt-Date"].as_str().is_some());
    assert!(dsn["text"].as_str().unwrap().contains("user unknown"));
    assert!(
        raw.contains("Subject: bounce-me"),
        "original headers attached: {raw}"
    );
    assert!(
        !raw.contains("body of bounce-me"),
        "RET=HDRS by default: {raw}"
    );

    let s = stats(&suite);
    assert_eq!(s["Mail.DeliveryReportsSent"], 1, "{s}");
    assert_eq!(s["Mail.TotalFailures"], 1, "{s}");
    // bob's copy and the report to alice
    assert_eq!(s["Mail.Delivered"], 2, "{s}");
    assert!(suite.log().contains(&format!("qid={qid} report=")));
}

#[test]
fn notify_never_and_the_null_sender_get_no_report() {
    let suite = suite();
    send(
        &suite,
        "alice@localhost",
        &[("ghost@localhost", "NOTIFY=NEVER")],
        "never",
    );
    send(&suite, "", &[("ghost@localhost", "")], "null-sender");
    send(
        &suite,
        "alice@localhost",
        &[("bob@localhost", "")],
        "control",
    );
    suite.wait_for_mail("bob", 1);
    wait_for(
        "both failures counted",
        Duration::from_secs(20),
        || match stat(&suite, "Mail.TotalFailures") {
            2 => Ok(()),
            n => Err(format!("{n} failures")),
        },
    );
    wait_drained(&suite);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(maildir_new(&suite.mailbox("alice")).len(), 0);
    let s = stats(&suite);
    assert_eq!(s["Mail.DeliveryReportsSent"], 0, "{s}");
    // The null-sender message that failed is itself a report-like message: Dead, kept.
    assert_eq!(s["Mail.Dead"], 1, "{s}");
}

#[test]
fn report_to_an_unknown_sender_goes_dead_then_refresh_and_release_dead_deliver_it() {
    let suite = suite();
    send(
        &suite,
        "nobody@localhost",
        &[("ghost@localhost", "")],
        "to-nowhere",
    );
    let dead = wait_for("a dead report", Duration::from_secs(20), || {
        let q = mtacon_json(&suite, &["show", "queue"]);
        let parked: Vec<Value> = q["parked"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["state"] == "Dead")
            .cloned()
            .collect();
        match parked.as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(format!(
                "{q}\n{}",
                mta_testkit::peers::tail(&suite.log(), 20)
            )),
        }
    });
    assert_eq!(dead["from"], "", "a report is from <>: {dead}");
    assert!(dead["note"].as_str().unwrap().contains("5.1.1"), "{dead}");
    let qid = dead["qid"].as_str().unwrap().to_string();
    let s = stats(&suite);
    assert_eq!(s["Mail.Dead"], 1, "{s}");
    assert_eq!(s["Mail.DeliveryReportsSent"], 1, "{s}");
    assert_eq!(s["Mail.TotalFailures"], 2, "{s}");

    // Message tracking.
    let m = mtacon_json(&suite, &["show", "message", &qid])["message"].clone();
    assert_eq!(m["location"], "Dead", "{m}");
    assert_eq!(m["recipients"][0]["address"]["local"], "nobody");
    let (ok, text) = mtacon_text(&suite, &["show", "message", &qid]);
    assert!(
        ok && text.contains("State:        Dead") && text.contains("<nobody@localhost>: failed"),
        "{text}"
    );

    // Still no such user: released, it fails again and comes back Dead.
    let (ok, text) = mtacon_text(&suite, &["release", "dead", &qid]);
    assert!(ok, "{text}");
    wait_for("dead again", Duration::from_secs(20), || {
        match stat(&suite, "Mail.TotalDead") {
            2 => Ok(()),
            n => Err(format!("TotalDead {n}")),
        }
    });

    // A bad directory is refused and changes nothing.
    let dir_file = suite.dir.path().join("directory.toml");
    std::fs::write(&dir_file, "[[user]]\nname = 1\n").unwrap();
    let (ok, text) = mtacon_text(&suite, &["tell", "smtpmta", "refresh"]);
    assert!(
        !ok && text.contains("refresh refused") && text.contains("directory.toml"),
        "{text}"
    );
    let (_, t) = mtacon_text(&suite, &["trace", "alice@localhost"]);
    assert!(t.contains("local user alice"), "{t}");

    // The operator adds the user, refreshes and re-routes: the report is delivered.
    let fixed = format!(
        "{}\n[[user]]\nname = \"nobody\"\naddresses = [\"nobody@localhost\"]\nmaildir = \"mail/nobody\"\n",
        directory()
    );
    std::fs::write(&dir_file, fixed).unwrap();
    let (ok, text) = mtacon_text(&suite, &["tell", "smtpmta", "refresh"]);
    assert!(ok && text.contains("4 users"), "{text}");
    let (ok, text) = mtacon_text(&suite, &["trace", "nobody@localhost"]);
    assert!(ok && text.contains("local user nobody"), "{text}");
    wait_for("released", Duration::from_secs(10), || {
        let (ok, text) = mtacon_text(&suite, &["release", "dead", &qid]);
        if ok {
            Ok(())
        } else {
            Err(text)
        }
    });
    let files = suite.wait_for_mail("nobody", 1);
    let dsn = parse_dsn(&files[0]);
    assert_eq!(
        dsn["groups"][1]["Final-Recipient"],
        "rfc822; nobody@localhost"
    );
    wait_drained(&suite);
    assert_eq!(stat(&suite, "Mail.Dead"), 0);
}

#[test]
fn counters_match_the_events_and_survive_a_restart() {
    let mut suite = suite();
    for i in 0..3 {
        send(
            &suite,
            "postmaster@localhost",
            &[("alice@localhost", "")],
            &format!("ok{i}"),
        );
    }
    for i in 0..2 {
        send(
            &suite,
            "postmaster@localhost",
            &[("ghost@localhost", "")],
            &format!("fail{i}"),
        );
    }
    suite.wait_for_mail("alice", 3);
    suite.wait_for_mail("postmaster", 2);
    wait_drained(&suite);
    let expect = |s: &Value| {
        // 3 to alice + 2 reports to postmaster
        assert_eq!(s["Mail.Delivered"], 5, "{s}");
        assert_eq!(s["Mail.TotalFailures"], 2, "{s}");
        assert_eq!(s["Mail.DeliveryReportsSent"], 2, "{s}");
        // 5 messages and 2 reports left mail.box
        assert_eq!(s["Mail.TotalRouted"], 7, "{s}");
        assert_eq!(s["Mail.Transferred"], 0, "{s}");
        assert_eq!(s["Mail.Waiting"], 0, "{s}");
        assert_eq!(s["Mail.Dead"], 0, "{s}");
        assert_eq!(s["Mail.Hold"], 0, "{s}");
        assert_eq!(s["Mail.ConversionErrors"], 0, "{s}");
        assert!(
            s["Mail.AverageSizeDelivered"].as_u64().unwrap() > 100,
            "{s}"
        );
        assert!(s["Mail.Spool.Size"].as_u64().unwrap() > 0, "{s}");
    };
    expect(&stats(&suite));
    let (ok, text) = mtacon_text(&suite, &["show", "stat", "mail"]);
    assert!(
        ok && text.contains("Mail.Delivered") && text.contains("= 5"),
        "{text}"
    );

    let (ok, text) = mtacon_text(&suite, &["tell", "smtpmta", "quit"]);
    assert!(ok, "{text}");
    assert_eq!(suite.wait_exit(Duration::from_secs(30)), Some(0));
    suite.launch();
    expect(&stats(&suite));
}

/// Makes a user's Maildir unwritable (a file where its folder should be), so mail to it
/// waits in mail.box for a retry.
fn block_mailbox(suite: &Suite, user: &str) {
    let path = suite.mailbox(user);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"not a folder").unwrap();
}

fn unblock_mailbox(suite: &Suite, user: &str) {
    std::fs::remove_file(suite.mailbox(user)).unwrap();
}

fn wait_console_ok(suite: &Suite, args: &[&str]) -> String {
    wait_for(&format!("{args:?}"), Duration::from_secs(10), || {
        let (ok, text) = mtacon_text(suite, args);
        if ok {
            Ok(text)
        } else {
            Err(text)
        }
    })
}

#[test]
fn hold_release_and_delete_change_what_is_delivered() {
    let suite = suite();
    block_mailbox(&suite, "bob");
    let held = send(&suite, "alice@localhost", &[("bob@localhost", "")], "held");
    let deleted = send(
        &suite,
        "alice@localhost",
        &[("bob@localhost", "")],
        "deleted",
    );
    wait_for("both deferred", Duration::from_secs(20), || {
        let n = suite.log().matches("status=deferred").count();
        if n >= 2 {
            Ok(())
        } else {
            Err(format!("{n} deferrals"))
        }
    });
    let text = wait_console_ok(&suite, &["hold", &held]);
    assert!(text.contains("held"), "{text}");
    let (ok, text) = mtacon_text(&suite, &["hold", &held]);
    assert!(!ok && text.contains("only queued messages"), "{text}");

    // delete: one-shot needs --yes
    let out = suite.mtacon(&["delete", &deleted]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    wait_console_ok(&suite, &["--yes", "delete", &deleted]);
    // Gone from the queue; message tracking still shows how it ended.
    let (ok, text) = mtacon_text(&suite, &["show", "message", &deleted]);
    assert!(
        ok && text.contains("tracking history") && text.contains("State:        Deleted"),
        "{text}"
    );
    let (ok, text) = mtacon_text(&suite, &["release", "NOTAQID"]);
    assert!(!ok && text.contains("not a queue id"), "{text}");

    let s = stats(&suite);
    assert_eq!(s["Mail.Hold"], 1, "{s}");
    unblock_mailbox(&suite, "bob");
    // Held: not delivered even though the mailbox works again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(maildir_new(&suite.mailbox("bob")).len(), 0);

    wait_console_ok(&suite, &["release", &held]);
    let files = suite.wait_for_mail("bob", 1);
    wait_drained(&suite);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        maildir_new(&suite.mailbox("bob")).len(),
        1,
        "only the released one"
    );
    assert!(std::fs::read_to_string(&files[0])
        .unwrap()
        .contains("Subject: held"));
    assert_eq!(stat(&suite, "Mail.Hold"), 0);
}

#[test]
fn trace_shows_local_users_aliases_and_unknown_addresses() {
    let suite = suite();
    let (ok, text) = mtacon_text(&suite, &["trace", "alice@localhost"]);
    assert!(
        ok && text.contains("alice@localhost: local user alice, mailbox "),
        "{text}"
    );
    assert!(text.contains("mail/alice"), "{text}");
    let (ok, text) = mtacon_text(&suite, &["trace", "<Team@localhost>"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("alias, expands to <alice@localhost>, <bob@localhost>"),
        "{text}"
    );
    assert!(text.contains("  bob@localhost: local user bob"), "{text}");
    let (ok, text) = mtacon_text(&suite, &["trace", "ghost@localhost"]);
    assert!(
        ok && text.contains("nobody@localhost: no such local user") && text.contains("5.1.1"),
        "{text}"
    );
    let (ok, text) = mtacon_text(&suite, &["trace", "not an address"]);
    assert!(!ok, "{text}");
}

#[test]
fn smtp_debug_io_turns_the_transcript_on_and_off() {
    let suite = suite();
    let noop = |marker: &str| {
        let (mut c, _) = RawSmtp::connect(suite.smtp_port);
        c.cmd("EHLO client.test");
        c.cmd(&format!("NOOP {marker}"));
        c.cmd("QUIT");
    };
    let (ok, text) = mtacon_text(&suite, &["set", "config", "SMTPDebugIO", "3"]);
    assert!(ok, "{text}");
    noop("marker-when-on");
    wait_for("the transcript", Duration::from_secs(10), || {
        if suite.log().contains("NOOP marker-when-on") {
            Ok(())
        } else {
            Err(mta_testkit::peers::tail(&suite.log(), 10))
        }
    });
    let (ok, text) = mtacon_text(&suite, &["set", "config", "SMTPDebugIO", "0"]);
    assert!(ok, "{text}");
    noop("marker-when-off");
    // a later session's own log line shows the earlier one is finished and logged
    send(&suite, "alice@localhost", &[("bob@localhost", "")], "after");
    suite.wait_for_mail("bob", 1);
    assert!(
        !suite.log().contains("marker-when-off"),
        "{}",
        mta_testkit::peers::tail(&suite.log(), 30)
    );
}

#[test]
fn compaction_reclaims_orphaned_segments_but_not_live_ones() {
    let suite = suite();
    send(
        &suite,
        "alice@localhost",
        &[("bob@localhost", "")],
        "content",
    );
    suite.wait_for_mail("bob", 1);
    wait_drained(&suite);
    let spool = suite.data_dir().join("spool");
    // A crash leftover: a writer pid that cannot exist, written long ago.
    let orphan = spool.join("isesctl-4194304-1-0.seg");
    std::fs::write(&orphan, b"left behind").unwrap();
    let old = Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(&orphan)
        .status()
        .unwrap();
    assert!(old.success());
    let before: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let (ok, text) = mtacon_text(&suite, &["tell", "smtpmta", "compact"]);
    assert!(ok && text.contains("removed"), "{text}");
    assert!(!orphan.exists(), "orphan reclaimed: {text}");
    // The live writers' current segments stay (isesctl's holds no referenced message now).
    let after: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(after.len(), before.len() - 1, "{before:?} -> {after:?}");
    // and mail still flows into them
    send(
        &suite,
        "alice@localhost",
        &[("bob@localhost", "")],
        "after-compaction",
    );
    suite.wait_for_mail("bob", 2);
    let (ok, text) = mtacon_text(&suite, &["show", "server"]);
    assert!(ok && text.contains("Spool size:"), "{text}");
}

#[test]
fn help_lists_every_console_command() {
    let suite = suite();
    let (ok, text) = mtacon_text(&suite, &["help"]);
    assert!(ok);
    for cmd in [
        "show stat mail",
        "show message <queue-id>",
        "hold <queue-id>",
        "release <queue-id>",
        "release dead <queue-id>",
        "delete <queue-id>",
        "trace <address>",
        "tell smtpmta refresh",
        "tell smtpmta compact",
        "show version",
    ] {
        assert!(text.contains(cmd), "{cmd} missing from\n{text}");
    }
    let (ok, text) = mtacon_text(&suite, &["show", "version"]);
    assert!(ok && text.starts_with("smtpmta "), "{text}");
}

// ---- Reports and console operations on the outbound path: a real SMTP sink (relay host or
// ---- MX through a real DNS server on loopback).

use mta_testkit::peers::{Dns, Sink};

fn suite_with_sink(sink: &Sink, dns: Option<&Dns>, extra: &[(&'static str, &str)]) -> Suite {
    let mut sections: Vec<(&'static str, String)> = vec![
        ("outbound", format!("port = {}", sink.port)),
        ("outbound", "connect_timeout = \"2s\"".into()),
    ];
    match dns {
        Some(dns) => sections.push(("dns", format!("nameservers = [\"127.0.0.1:{}\"]", dns.port))),
        None => sections.push((
            "outbound",
            format!("relay_host = \"127.0.0.1:{}\"", sink.port),
        )),
    }
    if !extra
        .iter()
        .any(|(s, l)| *s == "outbound" && l.starts_with("retry"))
    {
        sections.push(("outbound", "retry = [\"1s\"]".into()));
    }
    sections.extend(extra.iter().map(|(s, l)| (*s, l.to_string())));
    Suite::start(&SuiteOptions {
        directory: Some(directory()),
        sections,
        ..Default::default()
    })
}

#[test]
fn a_5xx_from_the_remote_server_is_reported_to_the_local_sender_with_its_reply() {
    let sink = Sink::start(&[]);
    let suite = suite_with_sink(&sink, None, &[]);
    send(
        &suite,
        "alice@localhost",
        &[("reject-me@far.test", "ORCPT=rfc822;reject-me@far.test")],
        "remote-5xx",
    );
    let files = suite.wait_for_mail("alice", 1);
    wait_drained(&suite);
    let dsn = parse_dsn(&files[0]);
    assert_eq!(dsn["report_type"], "delivery-status", "{dsn}");
    let rcpt = &dsn["groups"][1];
    assert_eq!(rcpt["Action"], "failed", "{dsn}");
    assert_eq!(rcpt["Status"], "5.1.1", "{dsn}");
    assert_eq!(
        rcpt["Final-Recipient"], "rfc822; reject-me@far.test",
        "{dsn}"
    );
    assert!(
        rcpt["Remote-MTA"]
            .as_str()
            .unwrap_or_default()
            .contains("127.0.0.1"),
        "{dsn}"
    );
    let diag = rcpt["Diagnostic-Code"].as_str().unwrap_or_default();
    assert!(
        diag.starts_with("smtp;") && diag.contains("550"),
        "the sink's reply is quoted: {dsn}"
    );
    assert!(
        dsn["text"].as_str().unwrap().contains("550"),
        "human-readable part quotes the reply: {dsn}"
    );
    assert_eq!(sink.count(), 0);
    assert_eq!(stat(&suite, "Mail.TotalFailures"), 1);
    assert_eq!(stat(&suite, "Mail.DeliveryReportsSent"), 1);
}

#[test]
fn one_delay_report_while_retrying_then_an_expiry_report() {
    let sink = Sink::start(&[]);
    let suite = suite_with_sink(
        &sink,
        None,
        &[
            ("outbound", "delay_warning = \"2s\""),
            ("outbound", "queue_lifetime = \"7s\""),
        ],
    );
    send(
        &suite,
        "alice@localhost",
        &[("defer-me@far.test", "NOTIFY=DELAY,FAILURE")],
        "slow-one",
    );
    let files = wait_for("delay then failure report", Duration::from_secs(30), || {
        let files = maildir_new(&suite.mailbox("alice"));
        if files.len() >= 2 {
            Ok(files)
        } else {
            Err(format!(
                "{} reports; log:\n{}",
                files.len(),
                mta_testkit::peers::tail(&suite.log(), 10)
            ))
        }
    });
    wait_drained(&suite);
    let reports: Vec<Value> = files.iter().map(parse_dsn).collect();
    let actions: Vec<String> = reports
        .iter()
        .map(|r| {
            r["groups"][1]["Action"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        actions.iter().filter(|a| *a == "delayed").count(),
        1,
        "exactly one delay report: {actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| *a == "failed").count(),
        1,
        "{actions:?}"
    );
    let failed = reports
        .iter()
        .find(|r| r["groups"][1]["Action"] == "failed")
        .unwrap();
    assert_eq!(failed["groups"][1]["Status"], "4.4.7", "expired: {failed}");
    assert_eq!(
        maildir_new(&suite.mailbox("alice")).len(),
        2,
        "no further reports"
    );
}

#[test]
fn notify_success_to_a_server_without_dsn_is_reported_as_relayed_and_never_means_none() {
    let sink = Sink::start(&[]);
    let suite = suite_with_sink(&sink, None, &[]);
    send(
        &suite,
        "alice@localhost",
        &[("ok@far.test", "NOTIFY=SUCCESS")],
        "notify-success",
    );
    let files = suite.wait_for_mail("alice", 1);
    let dsn = parse_dsn(&files[0]);
    assert_eq!(dsn["groups"][1]["Action"], "relayed", "{dsn}");
    assert!(
        dsn["groups"][1]["Status"]
            .as_str()
            .unwrap()
            .starts_with('2'),
        "{dsn}"
    );
    // NOTIFY=NEVER on a failure: no report at all.
    send(
        &suite,
        "bob@localhost",
        &[("reject-me@far.test", "NOTIFY=NEVER")],
        "notify-never",
    );
    wait_for(
        "the failure recorded",
        Duration::from_secs(20),
        || match stat(&suite, "Mail.TotalFailures") {
            1 => Ok(()),
            n => Err(format!("{n}")),
        },
    );
    wait_drained(&suite);
    assert!(
        maildir_new(&suite.mailbox("bob")).is_empty(),
        "NOTIFY=NEVER produced a report"
    );
    assert_eq!(sink.count(), 1);
}

#[test]
fn counters_match_local_relayed_and_failed_messages_and_survive_a_restart() {
    let sink = Sink::start(&[]);
    let mut suite = suite_with_sink(&sink, None, &[]);
    for i in 0..3 {
        send(
            &suite,
            "s@example.org",
            &[("bob@localhost", "")],
            &format!("local-{i}"),
        );
    }
    for i in 0..2 {
        send(
            &suite,
            "s@example.org",
            &[("ok@far.test", "")],
            &format!("relayed-{i}"),
        );
    }
    send(
        &suite,
        "s@example.org",
        &[("reject-me@far.test", "NOTIFY=NEVER")],
        "failed-0",
    );
    sink.wait_count(&suite, 2, Duration::from_secs(20));
    suite.wait_for_mail("bob", 3);
    wait_drained(&suite);
    let check = |s: &Value| {
        assert_eq!(s["Mail.Delivered"], 3, "{s}");
        assert_eq!(s["Mail.Transferred"], 2, "{s}");
        assert_eq!(s["Mail.TotalFailures"], 1, "{s}");
        assert_eq!(s["Mail.DeliveryReportsSent"], 0, "{s}");
        assert_eq!(s["Mail.Inbound.Sessions"], 6, "{s}");
        assert!(s["Mail.Outbound.Sessions"].as_u64().unwrap() >= 1, "{s}");
    };
    // The session counter is committed with the next batch or within two seconds.
    wait_for(
        "inbound sessions counted",
        Duration::from_secs(10),
        || match stat(&suite, "Mail.Inbound.Sessions") {
            6 => Ok(()),
            n => Err(format!("{n}")),
        },
    );
    check(&stats(&suite));
    suite.stop();
    suite.launch();
    check(&stats(&suite));
}

#[test]
fn hold_release_delete_and_route_change_what_the_sink_receives() {
    let sink = Sink::start(&["--tempfail-first", "1"]);
    let suite = suite_with_sink(&sink, None, &[("outbound", "retry = [\"60s\"]")]);
    // route: the first attempt gets 451; the retry is a minute away — `route` sends it now.
    send(
        &suite,
        "s@example.org",
        &[("first@far.test", "")],
        "route-me",
    );
    wait_for("deferred", Duration::from_secs(15), || {
        if suite.log().contains("status=deferred") {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    let (ok, text) = mtacon_text(&suite, &["route", "far.test"]);
    assert!(ok, "{text}");
    sink.wait_count(&suite, 1, Duration::from_secs(10));

    // hold/delete/release with the outbound transport stopped.
    let (ok, text) = mtacon_text(
        &suite,
        &["tell", "smtpmta", "stop", "outbound", "transport"],
    );
    assert!(ok, "{text}");
    let held = send(
        &suite,
        "s@example.org",
        &[("held@far.test", "")],
        "held-one",
    );
    let deleted = send(
        &suite,
        "s@example.org",
        &[("deleted@far.test", "")],
        "deleted-one",
    );
    send(
        &suite,
        "s@example.org",
        &[("plain@far.test", "")],
        "plain-one",
    );
    wait_for(
        "three pending transmission",
        Duration::from_secs(15),
        || match queued(&suite) {
            3 => Ok(()),
            n => Err(format!("{n}")),
        },
    );
    wait_console_ok(&suite, &["hold", &held]);
    wait_console_ok(&suite, &["--yes", "delete", &deleted]);
    let (ok, text) = mtacon_text(
        &suite,
        &["tell", "smtpmta", "start", "outbound", "transport"],
    );
    assert!(ok, "{text}");
    sink.wait_count(&suite, 2, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.count(), 2, "only the plain one went out");
    wait_console_ok(&suite, &["release", &held]);
    sink.wait_count(&suite, 3, Duration::from_secs(15));
    let ids = sink.message_ids();
    assert!(
        ids.contains_key("<held-one@client.test>")
            && !ids.contains_key("<deleted-one@client.test>"),
        "{ids:?}"
    );
}

#[test]
fn trace_shows_mx_hosts_implicit_mx_and_null_mx_from_the_dns_zone() {
    let dns = Dns::start();
    let sink = Sink::start(&[]);
    let suite = suite_with_sink(&sink, Some(&dns), &[]);
    let (ok, text) = mtacon_text(&suite, &["trace", "u@two-mx.test"]);
    assert!(ok, "{text}");
    let mx1 = text
        .find("mx1.two-mx.test")
        .unwrap_or_else(|| panic!("{text}"));
    let mx2 = text
        .find("mx2.two-mx.test")
        .unwrap_or_else(|| panic!("{text}"));
    assert!(mx1 < mx2, "by preference: {text}");
    assert!(
        text.contains("10")
            && text.contains("20")
            && text.contains("127.0.0.3")
            && text.contains("127.0.0.1"),
        "{text}"
    );
    let (_, text) = mtacon_text(&suite, &["trace", "u@a-only.test"]);
    assert!(text.contains("127.0.0.1"), "implicit MX: {text}");
    let (_, text) = mtacon_text(&suite, &["trace", "u@null-mx.test"]);
    assert!(
        text.to_lowercase().contains("null mx") || text.contains("5.1.10"),
        "{text}"
    );
    let (_, text) = mtacon_text(&suite, &["trace", "team@localhost"]);
    assert!(
        text.contains("alice@localhost") && text.contains("bob@localhost"),
        "alias expansion: {text}"
    );
    assert_eq!(sink.count(), 0, "trace sends nothing");
}
