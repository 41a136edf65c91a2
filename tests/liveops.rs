//! Live operations (issue 29): the local edges (sendmail's other modes, headers added to
//! submissions, refusals in the log, console errors in words), graceful shutdown and
//! restart of isesctl, through the real binaries and real clients.

use mta_testkit::{bin, wait_for, RawSmtp, Suite, SuiteOptions};
use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `program` (sendmail, or a link to it) with `-C config`, `args` and `input`.
fn run_with_input(program: &std::path::Path, config: &std::path::Path, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(program)
        .arg("-C")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn sendmail(suite: &Suite, args: &[&str], input: &str) -> Output {
    run_with_input(&bin("sendmail"), &suite.config, args, input)
}

fn mtacon_text(suite: &Suite, args: &[&str]) -> String {
    text(&suite.mtacon(args))
}

#[test]
fn sendmail_verifies_rebuilds_runs_and_prints_the_queue() {
    let suite = Suite::start(&SuiteOptions::default());

    // -bv: a verdict per address, nothing sent; exit 0 only if all are deliverable.
    let out = sendmail(&suite, &["-bv", "alice@localhost"], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("alice@localhost... deliverable"), "{}", text(&out));
    let out = sendmail(&suite, &["-bv", "alice@localhost", "nobody@localhost"], "");
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    assert!(text(&out).contains("nobody@localhost... undeliverable: 550"), "{}", text(&out));

    // -bi (newaliases) has nothing to build; --help and -h print the usage.
    let out = sendmail(&suite, &["-bi"], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for flag in ["--help", "-h"] {
        let out = sendmail(&suite, &[flag], "");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("usage: sendmail"), "{}", text(&out));
    }

    // A message to a remote destination stays queued (its DNS fails): mailq shows it,
    // -q asks for a retry now.
    let out = sendmail(&suite, &["someone@example.net"], "Subject: queued\n\nbody\n");
    assert!(out.status.success(), "{}", text(&out));
    let mailq = suite.dir.path().join("mailq");
    std::os::unix::fs::symlink(bin("sendmail"), &mailq).unwrap();
    wait_for("mailq lists the queued message", Duration::from_secs(20), || {
        let out = run_with_input(&mailq, &suite.config, &[], "");
        let t = text(&out);
        (out.status.success() && t.contains("example.net") && t.contains("RETRY")).then_some(()).ok_or(t)
    });
    let out = sendmail(&suite, &["-bp"], "");
    assert!(out.status.success() && text(&out).contains("example.net"), "{}", text(&out));
    let out = sendmail(&suite, &["-q"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 messages scheduled for delivery now"), "-q: {}", text(&out));

    // Nothing was ever delivered to alice: -bv sent nothing.
    assert!(mta_testkit::maildir_new(&suite.mailbox("alice")).is_empty());

    // A message without Date and Message-ID gets both, with our hostname.
    let out = sendmail(&suite, &["bob@localhost"], "Subject: bare\n\nbody\n");
    assert!(out.status.success(), "{}", text(&out));
    let files = suite.wait_for_mail("bob", 1);
    let msg = std::fs::read_to_string(&files[0]).unwrap();
    assert!(msg.contains("\nDate: "), "{msg}");
    let mid = msg
        .lines()
        .find(|l| l.starts_with("Message-ID: <"))
        .unwrap_or_else(|| panic!("no Message-ID: {msg}"));
    assert!(mid.ends_with("@mta.test>"), "{mid}");
    // One of each: a message that has them keeps its own.
    let out = sendmail(
        &suite,
        &["bob@localhost"],
        "Subject: dressed\nDate: Sun, 6 Dec 2026 10:00:00 +0000\nMessage-ID: <own@example.org>\n\nbody\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    let files = suite.wait_for_mail("bob", 2);
    let dressed = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .find(|m| m.contains("Subject: dressed"))
        .unwrap();
    assert_eq!(dressed.matches("Message-ID:").count(), 1, "{dressed}");
    assert_eq!(dressed.matches("\nDate:").count(), 1, "{dressed}");
    assert!(dressed.contains("<own@example.org>"), "{dressed}");
}

const ALICE_PASSWORD: &str = "correct horse battery staple";

fn hash_password(password: &str) -> String {
    let mut child = Command::new(bin("smtpmta"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("smtpmta");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

const SUBMIT: &str = r#"
import smtplib, ssl, sys
port, password = sys.argv[1:3]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", int(port), timeout=20)
s.starttls(context=ctx)
s.login("alice", password)
s.sendmail("alice@localhost", ["bob@localhost"], b"Subject: submitted bare\r\n\r\nbody\r\n")
s.quit()
"#;

#[test]
fn authenticated_submission_gets_date_and_message_id_and_keeps_its_user_in_history() {
    let directory = format!(
        "[[user]]\nname = \"postmaster\"\naddresses = [\"postmaster@localhost\"]\nmaildir = \"mail/postmaster\"\n\n\
         [[user]]\nname = \"alice\"\naddresses = [\"alice@localhost\"]\nmaildir = \"mail/alice\"\npassword = \"{}\"\n\n\
         [[user]]\nname = \"bob\"\naddresses = [\"bob@localhost\"]\nmaildir = \"mail/bob\"\n",
        hash_password(ALICE_PASSWORD)
    );
    let suite = Suite::start(&SuiteOptions {
        directory: Some(directory),
        ..SuiteOptions::default()
    });
    let out = Command::new("python3")
        .args(["-c", SUBMIT, &suite.submission_port.to_string(), ALICE_PASSWORD])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let files = suite.wait_for_mail("bob", 1);
    let msg = std::fs::read_to_string(&files[0]).unwrap();
    assert!(msg.contains("\nDate: "), "{msg}");
    let mid = msg
        .lines()
        .find(|l| l.starts_with("Message-ID: <"))
        .unwrap_or_else(|| panic!("no Message-ID: {msg}"));
    assert!(mid.ends_with("@mta.test>"), "{mid}");
    // The queue id is in the Received header: after delivery, `show message` reads the
    // tracking history, which keeps the authenticated user.
    let qid = msg
        .split(" id ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_alphanumeric()).next())
        .expect("queue id in Received")
        .to_string();
    wait_for("the history keeps Auth-User", Duration::from_secs(20), || {
        let t = mtacon_text(&suite, &["show", "message", &qid]);
        (t.contains("tracking history") && t.contains("Auth-User:    alice"))
            .then_some(())
            .ok_or(t)
    });
}

#[test]
fn refusals_are_logged_and_console_errors_are_words() {
    let suite = Suite::start(&SuiteOptions {
        sections: vec![("inbound", "max_message_size = 2000".into())],
        ..SuiteOptions::default()
    });
    let (mut c, _) = RawSmtp::connect(suite.smtp_port);
    assert!(c.cmd("EHLO big.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<big@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@localhost>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(format!("Subject: big\r\n\r\n{}\r\n.\r\n", "x".repeat(5000)).as_bytes());
    let reply = c.read_reply();
    assert!(reply.starts_with("552 5.3.4"), "{reply}");
    assert!(c.cmd("MAIL FROM:<big@example.org> SIZE=9999").starts_with("552"));
    c.cmd("QUIT");
    wait_for("both refusals logged", Duration::from_secs(10), || {
        let log = suite.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("reject: ")).collect();
        let data = lines
            .iter()
            .any(|l| l.contains("reject: DATA from [127.0.0.1]: 552 5.3.4") && l.contains("from=<big@example.org>") && l.contains("qid=") && !l.contains("NOQUEUE"));
        let mail = lines.iter().any(|l| l.contains("reject: MAIL from [127.0.0.1]: 552"));
        (data && mail).then_some(()).ok_or(lines.join("\n"))
    });

    // A command a task does not know is named as typed, never as Rust's Debug form.
    let t = mtacon_text(&suite, &["tell", "isesctl", "frobnicate", "now"]);
    assert!(t.contains("does not know `frobnicate now`"), "{t}");
    assert!(!t.contains("Other(") && !t.contains("[\""), "{t}");
}

/// A suite whose isesctl gives sessions 2 s after a stop.
fn graceful_suite() -> Suite {
    Suite::start(&SuiteOptions {
        sections: vec![("inbound", "shutdown_grace = \"2s\"".into())],
        ..SuiteOptions::default()
    })
}

/// A client in the middle of DATA.
fn client_in_data(suite: &Suite) -> RawSmtp {
    let (mut c, greeting) = RawSmtp::connect(suite.smtp_port);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(c.cmd("EHLO slow.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<slow@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@localhost>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: slow\r\n\r\nthe first line, and then nothing for a while\r\n");
    c
}

#[test]
fn quit_answers_421_to_a_client_in_the_middle_of_data_after_the_grace() {
    let mut suite = graceful_suite();
    let mut c = client_in_data(&suite);
    let asked = Instant::now();
    let t = mtacon_text(&suite, &["tell", "smtpmta", "quit"]);
    assert!(t.contains("shutting down"), "{t}");
    // New connections are refused at once, while the session goes on.
    wait_for("new connections refused", Duration::from_secs(5), || {
        match std::net::TcpStream::connect(("127.0.0.1", suite.smtp_port)) {
            Err(_) => Some(()),
            Ok(_) => None,
        }
        .ok_or("still accepted".to_string())
    });
    let reply = c.read_reply();
    let waited = asked.elapsed();
    assert!(reply.starts_with("421 4.3.2"), "{reply:?} after {waited:?}");
    assert!(waited >= Duration::from_millis(1500), "421 after {waited:?}, before the grace");
    assert!(waited < Duration::from_secs(15), "421 after {waited:?}");
    // Then the connection closes, and the suite stops.
    assert_eq!(c.read_reply(), "");
    assert_eq!(suite.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(suite.log().contains("answering 421 4.3.2"), "{}", suite.log());
}

#[test]
fn isesctl_restart_refuses_nothing_and_finishes_sessions_in_progress() {
    let suite = graceful_suite();
    let old = suite.task_pid("isesctl").expect("isesctl pid");
    let mut c = client_in_data(&suite);
    let t = mtacon_text(&suite, &["tell", "isesctl", "restart"]);
    assert!(t.contains("isesctl restarted"), "{t}");
    let new = suite.task_pid("isesctl").expect("isesctl pid");
    assert_ne!(old, new);
    // The new copy serves new connections while the old one still holds the session.
    let (mut d, greeting) = RawSmtp::connect(suite.smtp_port);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(d.cmd("EHLO fresh.test").starts_with("250"));
    assert!(d.cmd("MAIL FROM:<fresh@example.org>").starts_with("250"));
    assert!(d.cmd("RCPT TO:<bob@localhost>").starts_with("250"));
    assert!(d.cmd("DATA").starts_with("354"));
    d.send(b"Subject: fresh\r\n\r\nbody\r\n.\r\n");
    assert!(d.read_reply().starts_with("250"));
    // The old session finishes within the grace: its message is accepted.
    c.send(b"the end\r\n.\r\n");
    let reply = c.read_reply();
    assert!(reply.starts_with("250"), "{reply}");
    suite.wait_for_mail("alice", 1);
    suite.wait_for_mail("bob", 1);
    wait_for("the old isesctl exits", Duration::from_secs(20), || {
        (!mta_testkit::pid_alive(old)).then_some(()).ok_or("still alive".to_string())
    });
    // An unknown task command is refused in words.
    let t = mtacon_text(&suite, &["tell", "isesctl", "restart"]);
    assert!(t.contains("isesctl restarted"), "{t}");
}
