//! Issue 12, points 7–9 through the real binaries and the real console (mtacon): Hold
//! Undeliverable Mail (`hold_undeliverable`, `release`, `bounce`, Mail.Hold), message
//! tracking after delivery (`show message`, `track`, across a restart), and retrying a
//! Conversion Error with `release`.
//!
//! Needs: python3 (the SMTP sink answering 550 to `reject*` recipients).

use mta_testkit::peers::Sink;
use mta_testkit::{wait_for, RawSmtp, Suite, SuiteOptions, DEFAULT_DIRECTORY};
use serde_json::Value;
use std::time::Duration;

/// The default directory plus an alias whose target does not exist: accepted at RCPT,
/// unknown when the router expands it (a local "user unknown after acceptance").
fn directory() -> String {
    DEFAULT_DIRECTORY.replace(
        "[aliases]\n",
        "[aliases]\n\"ghost@localhost\" = [\"nobody@localhost\"]\n",
    )
}

fn suite_with_sink(sink: &Sink, top: &str) -> Suite {
    Suite::start(&SuiteOptions {
        top: top.to_string(),
        directory: Some(directory()),
        sections: vec![
            (
                "outbound",
                format!("relay_host = \"127.0.0.1:{}\"", sink.port),
            ),
            ("outbound", "connect_timeout = \"2s\"".into()),
            ("outbound", "retry = [\"1s\"]".into()),
        ],
        ..Default::default()
    })
}

/// One SMTP transaction; returns the queue id from the 250 reply.
fn send_raw(suite: &Suite, from: &str, to: &[&str], content: &str) -> String {
    let (mut c, greeting) = RawSmtp::connect(suite.smtp_port);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let r = c.cmd(&format!("MAIL FROM:<{from}>"));
    assert!(r.starts_with("250"), "MAIL: {r}");
    for rcpt in to {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert!(r.starts_with("250"), "RCPT {rcpt}: {r}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    let r = c.cmd(&format!("{content}\r\n."));
    assert!(r.starts_with("250"), "DATA: {r}");
    c.cmd("QUIT");
    r.rsplit(' ').next().unwrap().trim().to_string()
}

fn send(suite: &Suite, from: &str, to: &[&str], tag: &str) -> String {
    send_raw(
        suite,
        from,
        to,
        &format!(
            "From: <{from}>\r\nTo: <{}>\r\nSubject: {tag}\r\nMessage-ID: <{tag}@client.test>\r\n\r\nbody of {tag}\r\n",
            to[0]
        ),
    )
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

fn ok_text(suite: &Suite, args: &[&str]) -> String {
    let (ok, text) = mtacon_text(suite, args);
    assert!(ok, "mtacon {args:?}: {text}");
    text
}

fn stat(suite: &Suite, name: &str) -> u64 {
    mtacon_json(suite, &["show", "stat", "mail"])["stats"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name}"))
}

/// The parked messages `show queue` lists, as (qid, state, note).
fn parked(suite: &Suite) -> Vec<(String, String, String)> {
    mtacon_json(suite, &["show", "queue"])["parked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["qid"].as_str().unwrap().to_string(),
                p["state"].as_str().unwrap().to_string(),
                p["note"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn wait_parked(suite: &Suite, qid: &str, state: &str) -> String {
    let mut note = String::new();
    wait_for(
        &format!("{qid} {state} in show queue"),
        Duration::from_secs(20),
        || match parked(suite).into_iter().find(|(q, _, _)| q == qid) {
            Some((_, s, n)) if s == state => {
                note = n;
                Ok(())
            }
            other => Err(format!(
                "{other:?}; log:\n{}",
                mta_testkit::peers::tail(&suite.log(), 15)
            )),
        },
    );
    note
}

/// Mail.Hold and Held/reason in `show queue`, `show message`; `release` retries (the
/// sink says 550 again: held again with a second attempt); `bounce` sends the report to
/// the sender and removes the message; a local user unknown after acceptance is held
/// too; with the setting off again (`set config`), failures bounce at once.
#[test]
fn hold_undeliverable_holds_permanent_failures_until_release_or_bounce() {
    let sink = Sink::start(&[]);
    let suite = suite_with_sink(&sink, "");
    ok_text(&suite, &["set", "config", "hold_undeliverable", "1"]);
    let config = mtacon_json(&suite, &["show", "config"]);
    assert_eq!(config["config"]["hold_undeliverable"], "1", "{config}");

    let remote = send(
        &suite,
        "alice@localhost",
        &["reject-me@far.test"],
        "remote-5xx",
    );
    let note = wait_parked(&suite, &remote, "Held");
    assert!(
        note.contains("undeliverable")
            && note.contains("550")
            && note.contains("reject-me@far.test"),
        "{note}"
    );
    let local = send(
        &suite,
        "alice@localhost",
        &["ghost@localhost"],
        "local-unknown",
    );
    let note = wait_parked(&suite, &local, "Held");
    assert!(note.contains("5.1.1"), "{note}");
    assert_eq!(stat(&suite, "Mail.Hold"), 2);
    // Nothing was bounced: alice has no report.
    assert!(mta_testkit::maildir_new(&suite.mailbox("alice")).is_empty());

    let shown = ok_text(&suite, &["show", "message", &remote]);
    assert!(
        shown.contains("Held") && shown.contains("undeliverable") && shown.contains("550"),
        "{shown}"
    );

    // release: delivery is tried again; the sink refuses again, so it is held again,
    // now with two attempts.
    let released = ok_text(&suite, &["release", &remote]);
    assert!(
        released.contains("retried") && released.contains("Held"),
        "{released}"
    );
    let msg = mtacon_json(&suite, &["show", "message", &remote]);
    let attempts = msg["message"]["recipients"][0]["attempts"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(attempts, 2, "{msg}");

    // bounce: the report goes to alice now, the message is gone from the queue.
    let bounced = ok_text(&suite, &["bounce", &remote]);
    assert!(bounced.contains("removed"), "{bounced}");
    let reports = suite.wait_for_mail("alice", 1);
    let report = std::fs::read_to_string(&reports[0]).unwrap();
    assert!(
        report.contains("reject-me@far.test") && report.contains("delivery-status"),
        "{report}"
    );
    assert_eq!(stat(&suite, "Mail.Hold"), 1);
    // bounce refuses what is not held as undeliverable.
    let (ok, text) = mtacon_text(&suite, &["bounce", &remote]);
    assert!(!ok, "{text}");

    // Off again: the next failure is bounced at once, the held one stays held.
    ok_text(&suite, &["set", "config", "hold_undeliverable", "0"]);
    send(
        &suite,
        "alice@localhost",
        &["reject-too@far.test"],
        "remote-again",
    );
    suite.wait_for_mail("alice", 2);
    assert_eq!(stat(&suite, "Mail.Hold"), 1);
    let (ok, text) = mtacon_text(&suite, &["set", "config", "hold_undeliverable", "maybe"]);
    assert!(!ok && text.contains("not 0 or 1"), "{text}");
}

/// A message delivered locally and one relayed: `show message` and `track` by each
/// field find them after delivery, as text and JSON; and again after a restart.
#[test]
fn tracking_finds_delivered_and_relayed_messages_and_survives_a_restart() {
    let sink = Sink::start(&[]);
    let mut suite = suite_with_sink(&sink, "");
    let local = send(
        &suite,
        "carol@example.org",
        &["bob@localhost"],
        "tracked-local",
    );
    let relayed = send(
        &suite,
        "dave@example.org",
        &["erin@far.test"],
        "tracked-relayed",
    );
    suite.wait_for_mail("bob", 1);
    sink.wait_count(&suite, 1, Duration::from_secs(20));
    wait_for("both gone from the queue", Duration::from_secs(20), || {
        for qid in [&local, &relayed] {
            let shown = mtacon_json(&suite, &["show", "message", qid]);
            if shown.get("history").is_none() {
                return Err(format!("{qid} still queued: {shown}"));
            }
        }
        Ok(())
    });
    check_text_ids(&suite, &local, &relayed);
    suite.stop();
    suite.launch();
    check_text_ids(&suite, &local, &relayed);
}

/// `track` as text, by each field: the right queue id is listed.
fn check_text_ids(suite: &Suite, local: &str, relayed: &str) {
    let shown = ok_text(suite, &["show", "message", local]);
    assert!(
        shown.contains("tracking history")
            && shown.contains("<bob@localhost>: delivered")
            && shown.contains("carol@example.org")
            && shown.contains("tracked-local@client.test"),
        "{shown}"
    );
    let shown = ok_text(suite, &["show", "message", relayed]);
    assert!(
        shown.contains("<erin@far.test>: relayed") && shown.contains("250"),
        "{shown}"
    );
    for (query, want, not) in [
        ("from=carol@example.org", local, relayed),
        ("from=<DAVE@example.org>", relayed, local),
        ("to=bob@localhost", local, relayed),
        ("to=erin@far.test", relayed, local),
        ("id=<tracked-relayed@client.test>", relayed, local),
        ("id=tracked-local@client.test", local, relayed),
    ] {
        let text = ok_text(suite, &["track", query]);
        assert!(
            text.contains(want) && !text.contains(not) && text.contains("1 message(s)"),
            "track {query}:\n{text}"
        );
    }
    let text = ok_text(
        suite,
        &[
            "track",
            "since=1h",
            "from=dave@example.org",
            "to=erin@far.test",
        ],
    );
    assert!(
        text.contains(relayed) && text.contains("to=<erin@far.test> relayed"),
        "{text}"
    );
    let text = ok_text(suite, &["track", "since=1h"]);
    assert!(text.contains(local) && text.contains(relayed), "{text}");
    let text = ok_text(suite, &["track", "from=nobody@example.org"]);
    assert!(text.contains("no message found"), "{text}");
    let json = mtacon_json(suite, &["track", "to=erin@far.test"]);
    let rows = json["track"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{json}");
    assert_eq!(rows[0]["qid"], relayed, "{json}");
    assert_eq!(rows[0]["recipients"][0]["outcome"], "relayed", "{json}");
    assert_eq!(rows[0]["from"], "dave@example.org", "{json}");
    let (ok, text) = mtacon_text(suite, &["track", "since=yesterday"]);
    assert!(!ok && text.contains("not a time"), "{text}");
}

/// `release` of a message in Conversion Error converts it again and says how it went:
/// one whose spool content was unreadable (moved away while imsgcnv read it) converts
/// once the content is back and is delivered; one that is not a message at all (a control
/// octet in its header) stays in Conversion Error, with the reason.
#[test]
fn release_retries_a_conversion_error_and_shows_the_result() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let sink = Sink::start(&[]);
    let suite = suite_with_sink(&sink, "");

    let bad = send_raw(
        &suite,
        "carol@example.org",
        &["bob@localhost"],
        "Subject: a\u{1}b\r\n\r\nnot a header section\r\n",
    );
    let note = wait_parked(&suite, &bad, "Conversion Error");
    assert!(note.contains("binary octet"), "{note}");
    let text = ok_text(&suite, &["release", &bad]);
    assert!(
        text.contains("conversion retried")
            && text.contains("Conversion Error")
            && text.contains("binary octet"),
        "{text}"
    );

    // imsgcnv paused: the next message waits in the Inbound Work Queue while its spool
    // segment is moved away and a directory put in its place, so the conversion cannot
    // read it (EISDIR: an I/O error, not missing content, which would go to Dead).
    let imsgcnv = suite.task_pid("imsgcnv").expect("imsgcnv runs");
    kill(Pid::from_raw(imsgcnv as i32), Signal::SIGSTOP).unwrap();
    let id = send(
        &suite,
        "carol@example.org",
        &["bob@localhost"],
        "convert-later",
    );
    let record = mtacon_json(&suite, &["show", "message", &id]);
    let segment = record["message"]["content"]["segment"]
        .as_str()
        .unwrap()
        .to_string();
    let spooled = suite.data_dir().join("spool").join(&segment);
    let aside = suite.dir.path().join("segment-aside");
    std::fs::rename(&spooled, &aside).unwrap();
    std::fs::create_dir(&spooled).unwrap();
    kill(Pid::from_raw(imsgcnv as i32), Signal::SIGCONT).unwrap();
    let note = wait_parked(&suite, &id, "Conversion Error");
    assert!(note.contains("cannot read the content"), "{note}");

    std::fs::remove_dir(&spooled).unwrap();
    std::fs::rename(&aside, &spooled).unwrap();
    let text = ok_text(&suite, &["release", &id]);
    // Converted: seen in mail.box, or already delivered (the router is quick).
    assert!(
        text.contains("conversion retried")
            && (text.contains("now Pending in mail.box")
                || text.contains("removed from the queue (bob@localhost delivered)")),
        "{text}"
    );
    let mail = suite.wait_for_mail("bob", 1);
    let delivered = std::fs::read_to_string(&mail[0]).unwrap();
    assert!(
        delivered.contains("convert-later@client.test"),
        "{delivered}"
    );
}

/// `hold_undeliverable = true` in the file: a null MX (RFC 7505) is a permanent failure,
/// held with its reason from the start.
#[test]
fn hold_undeliverable_from_the_file_holds_a_null_mx_failure() {
    let dns = mta_testkit::peers::Dns::start();
    let suite = Suite::start(&SuiteOptions {
        top: "hold_undeliverable = true".into(),
        directory: Some(directory()),
        sections: vec![
            ("dns", format!("nameservers = [\"127.0.0.1:{}\"]", dns.port)),
            ("outbound", "connect_timeout = \"2s\"".into()),
        ],
        ..Default::default()
    });
    let config = mtacon_json(&suite, &["show", "config"]);
    assert_eq!(config["config"]["hold_undeliverable"], "1", "{config}");
    let id = send(&suite, "alice@localhost", &["u@null-mx.test"], "null-mx");
    let note = wait_parked(&suite, &id, "Held");
    assert!(
        note.contains("undeliverable") && note.contains("5."),
        "{note}"
    );
    assert_eq!(stat(&suite, "Mail.Hold"), 1);
    assert!(mta_testkit::maildir_new(&suite.mailbox("alice")).is_empty());
}
