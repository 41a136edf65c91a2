//! Operations: what an operator's scripts and monitoring build on — the console in a pipe
//! and its `--json` form of every `show` command, and the Prometheus endpoint scraped by
//! real tools (`promtool`, a Prometheus server).

use mta_testkit::{bin, RawSmtp, Suite, SuiteOptions};
use std::process::{Command, Stdio};

/// Sends one message to `rcpt` over SMTP and returns its queue id from the 250 reply.
fn send(suite: &Suite, rcpt: &str) -> String {
    let (mut c, _) = RawSmtp::connect(suite.smtp_port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<ops@example.org>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: ops\r\n\r\nhello\r\n.\r\n");
    let reply = c.read_reply();
    assert!(reply.starts_with("250"), "{reply}");
    assert!(c.cmd("QUIT").starts_with("221"));
    reply
        .rsplit(' ')
        .next()
        .expect("queue id in the reply")
        .to_string()
}

#[test]
fn mtacon_ends_quietly_when_its_reader_goes_away() {
    let suite = Suite::start(&SuiteOptions::default());
    // A pipe whose reading end is already closed: mtacon's first write fails with EPIPE,
    // every time (no race with a reader that might still be reading).
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    for args in [
        &["show", "tasks"][..],
        &["--json", "show", "tasks"][..],
        &["help"][..],
    ] {
        let out = Command::new(bin("mtacon"))
            .arg("--config")
            .arg(&suite.config)
            .args(args)
            .stdout(Stdio::from(writer.try_clone().expect("dup")))
            .stderr(Stdio::piped())
            .output()
            .expect("run mtacon");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "mtacon {args:?}: {stderr}");
        assert!(stderr.is_empty(), "mtacon {args:?} said: {stderr}");
    }
    // The same through a shell pipeline, as an operator types it.
    let script = format!(
        "set -o pipefail; {} --config {} show tasks | head -1",
        bin("mtacon").display(),
        suite.config.display()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("Task"), "{stdout}");
}

#[test]
fn every_show_command_has_a_json_form() {
    let suite = Suite::start(&SuiteOptions::default());
    // A message that stays queued (its destination's DNS fails): something to show.
    let qid = send(&suite, "someone@example.net");
    let message = format!("show message {qid}");
    let cases: [(&str, &str); 7] = [
        ("show tasks", "tasks"),
        ("show server", "server"),
        ("show config", "config"),
        ("show version", "text"),
        ("show queue", "queue"),
        ("show stat mail", "stats"),
        (&message, "message"),
    ];
    for (command, key) in cases {
        let words: Vec<&str> = command.split(' ').collect();
        // `--json` before the command, and at its end (as typed at the prompt).
        let mut before = vec!["--json"];
        before.extend(&words);
        let mut after = words.clone();
        after.push("--json");
        for args in [before, after] {
            let out = suite.mtacon(&args);
            assert!(
                out.status.success(),
                "mtacon {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("mtacon {args:?} is not JSON ({e}): {:?}", out.stdout));
            assert!(!v[key].is_null(), "mtacon {args:?}: no `{key}` in {v}");
        }
    }
    let tasks = suite.tasks().unwrap();
    assert!(tasks.iter().any(|t| t["name"] == "isesctl"), "{tasks:?}");
    let m = &suite.mtacon(&["show", "message", &qid, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&m.stdout).unwrap();
    assert_eq!(
        v["message"]["recipients"][0]["address"]["local"], "someone",
        "{v}"
    );
    let version = suite.mtacon(&["show", "version", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&version.stdout).unwrap();
    assert!(
        v["text"].as_str().unwrap_or("").starts_with("smtpmta "),
        "{v}"
    );
}
