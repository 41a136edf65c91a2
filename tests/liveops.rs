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
fn run_with_input(
    program: &std::path::Path,
    config: &std::path::Path,
    args: &[&str],
    input: &str,
) -> Output {
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
    assert!(
        text(&out).contains("alice@localhost... deliverable"),
        "{}",
        text(&out)
    );
    let out = sendmail(&suite, &["-bv", "alice@localhost", "nobody@localhost"], "");
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    assert!(
        text(&out).contains("nobody@localhost... undeliverable: 550"),
        "{}",
        text(&out)
    );

    // -bi (newaliases) has nothing to build; --help and -h print the usage.
    let out = sendmail(&suite, &["-bi"], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for flag in ["--help", "-h"] {
        let out = sendmail(&suite, &[flag], "");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("usage: sendmail"),
            "{}",
            text(&out)
        );
    }

    // A message to a remote destination stays queued (its DNS fails): mailq shows it,
    // -q asks for a retry now.
    let out = sendmail(
        &suite,
        &["someone@example.net"],
        "Subject: queued\n\nbody\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    let mailq = suite.dir.path().join("mailq");
    std::os::unix::fs::symlink(bin("sendmail"), &mailq).unwrap();
    wait_for(
        "mailq lists the queued message",
        Duration::from_secs(20),
        || {
            let out = run_with_input(&mailq, &suite.config, &[], "");
            let t = text(&out);
            (out.status.success() && t.contains("example.net") && t.contains("RETRY"))
                .then_some(())
                .ok_or(t)
        },
    );
    let out = sendmail(&suite, &["-bp"], "");
    assert!(
        out.status.success() && text(&out).contains("example.net"),
        "{}",
        text(&out)
    );
    let out = sendmail(&suite, &["-q"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("1 messages scheduled for delivery now"),
        "-q: {}",
        text(&out)
    );

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
    let out = Command::new(mta_testkit::python3())
        .args([
            "-c",
            SUBMIT,
            &suite.submission_port.to_string(),
            ALICE_PASSWORD,
        ])
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
    wait_for(
        "the history keeps Auth-User",
        Duration::from_secs(20),
        || {
            let t = mtacon_text(&suite, &["show", "message", &qid]);
            (t.contains("tracking history") && t.contains("Auth-User:    alice"))
                .then_some(())
                .ok_or(t)
        },
    );
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
    assert!(c
        .cmd("MAIL FROM:<big@example.org> SIZE=9999")
        .starts_with("552"));
    c.cmd("QUIT");
    wait_for("both refusals logged", Duration::from_secs(10), || {
        let log = suite.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("reject: ")).collect();
        let data = lines.iter().any(|l| {
            l.contains("reject: DATA from [127.0.0.1]: 552 5.3.4")
                && l.contains("from=<big@example.org>")
                && l.contains("qid=")
                && !l.contains("NOQUEUE")
        });
        let mail = lines
            .iter()
            .any(|l| l.contains("reject: MAIL from [127.0.0.1]: 552"));
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
    assert!(
        waited >= Duration::from_millis(1500),
        "421 after {waited:?}, before the grace"
    );
    assert!(waited < Duration::from_secs(15), "421 after {waited:?}");
    // Then the connection closes, and the suite stops.
    assert_eq!(c.read_reply(), "");
    assert_eq!(suite.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(
        suite.log().contains("answering 421 4.3.2"),
        "{}",
        suite.log()
    );
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
        (!mta_testkit::pid_alive(old))
            .then_some(())
            .ok_or("still alive".to_string())
    });
    // An unknown task command is refused in words.
    let t = mtacon_text(&suite, &["tell", "isesctl", "restart"]);
    assert!(t.contains("isesctl restarted"), "{t}");
}

// ----- reload -----

/// A self-signed certificate for `cn` in `dir` (certificate, key).
fn certificate(dir: &std::path::Path, cn: &str) -> (String, String) {
    let (cert, key) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", text(&out));
    (cert.display().to_string(), key.display().to_string())
}

/// The subject of the certificate isesctl presents after STARTTLS on `port`.
fn served_subject(port: u16) -> String {
    let script = format!(
        "openssl s_client -starttls smtp -connect 127.0.0.1:{port} </dev/null 2>/dev/null | openssl x509 -noout -subject"
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The config file with `[inbound]` and `[tls]` lines replaced.
fn rewrite_config(suite: &Suite, inbound: &[String], tls: (&str, &str)) {
    let text = std::fs::read_to_string(&suite.config).unwrap();
    let mut out = String::new();
    let mut section = String::new();
    for line in text.lines() {
        if line.starts_with('[') {
            section = line.to_string();
            out.push_str(line);
            out.push('\n');
            if section == "[inbound]" {
                for l in inbound {
                    out.push_str(l);
                    out.push('\n');
                }
            }
            continue;
        }
        let replaced = (section == "[inbound]"
            && inbound
                .iter()
                .any(|l| line.split('=').next() == l.split('=').next()))
            || (section == "[tls]"
                && (line.starts_with("certificate") || line.starts_with("private_key")));
        if !replaced {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !out.contains("[tls]") {
        out.push_str("\n[tls]\n");
    }
    let out = out.replacen(
        "[tls]\n",
        &format!(
            "[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            tls.0, tls.1
        ),
        1,
    );
    std::fs::write(&suite.config, out).unwrap();
}

fn show_config(suite: &Suite, key: &str) -> String {
    let t = mtacon_text(suite, &["show", "config"]);
    t.lines()
        .find(|l| l.trim_start().starts_with(key))
        .unwrap_or("")
        .to_string()
}

#[test]
fn reload_under_load_changes_limits_listeners_and_certificate_without_a_refused_connection() {
    let certs = tempfile::tempdir().unwrap();
    let one = certificate(certs.path(), "reload-one.test");
    let two = certificate(certs.path(), "reload-two.test");
    let suite = Suite::start(&SuiteOptions {
        sections: vec![(
            "tls",
            format!("certificate = \"{}\"\nprivate_key = \"{}\"", one.0, one.1),
        )],
        ..SuiteOptions::default()
    });
    let port = suite.smtp_port;
    let second = mta_testkit::free_port();
    assert!(
        served_subject(port).contains("reload-one.test"),
        "{}",
        served_subject(port)
    );

    let load = std::thread::spawn(move || {
        mta_testkit::peers::smtp_load(port, 2000, 20, "alice@localhost", 10)
    });
    let listen = format!("listen = [\"127.0.0.1:{port}\", \"127.0.0.1:{second}\"]");
    let steps: [(Vec<String>, (&str, &str)); 3] = [
        (vec!["max_handlers = 40".into()], (&one.0, &one.1)),
        (
            vec!["max_handlers = 40".into(), listen.clone()],
            (&one.0, &one.1),
        ),
        (
            vec!["max_handlers = 30".into(), listen.clone()],
            (&two.0, &two.1),
        ),
    ];
    let mut replies = Vec::new();
    for (inbound, tls) in steps {
        std::thread::sleep(Duration::from_millis(700));
        rewrite_config(&suite, &inbound, tls);
        let out = suite.mtacon(&["tell", "smtpmta", "reload"]);
        assert!(out.status.success(), "{}", text(&out));
        replies.push(text(&out));
    }
    let result = load.join().unwrap();
    assert_eq!(
        result.errors,
        serde_json::json!([]),
        "clients saw errors; replies:\n{}",
        replies.join("\n")
    );
    assert_eq!(result.accepted.len(), 2000);
    eprintln!("reload replies:\n{}", replies.join("\n---\n"));
    assert!(
        replies[0].contains("inbound.max_handlers (100 -> 40)"),
        "{}",
        replies[0]
    );
    assert!(
        replies[0].contains("restarted gracefully: isesctl"),
        "{}",
        replies[0]
    );
    assert!(replies[1].contains("inbound.listen"), "{}", replies[1]);
    assert!(replies[2].contains("tls"), "{}", replies[2]);

    // Every message delivered once.
    let files = suite.wait_for_mail("alice", 2000);
    let ids = mta_testkit::message_ids(&files);
    assert_eq!(ids.len(), 2000);
    assert!(ids.values().all(|n| *n == 1), "duplicates");
    for id in &result.accepted {
        assert_eq!(ids.get(id), Some(&1), "{id}");
    }
    // The new values are in effect.
    assert!(
        show_config(&suite, "inbound.max_handlers").ends_with("30"),
        "{}",
        show_config(&suite, "inbound.max_handlers")
    );
    assert!(show_config(&suite, "inbound.listen").contains(&second.to_string()));
    let (_, greeting) = RawSmtp::connect(second);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(
        served_subject(port).contains("reload-two.test"),
        "{}",
        served_subject(port)
    );

    // A broken file changes nothing and says where.
    let good = std::fs::read_to_string(&suite.config).unwrap();
    std::fs::write(
        &suite.config,
        good.replace("max_handlers = 30", "max_handlers = \"ten\""),
    )
    .unwrap();
    let out = suite.mtacon(&["tell", "smtpmta", "reload"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("nothing changed")
            && t.contains("smtpmta.toml:")
            && t.contains("inbound.max_handlers"),
        "{t}"
    );
    assert!(show_config(&suite, "inbound.max_handlers").ends_with("30"));
    let check = Command::new(bin("smtpmta"))
        .args(["check-config", "--config"])
        .arg(&suite.config)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(
        text(&check).contains("inbound.max_handlers"),
        "{}",
        text(&check)
    );
    std::fs::write(&suite.config, good).unwrap();
    let check = Command::new(bin("smtpmta"))
        .args(["check-config", "--config"])
        .arg(&suite.config)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    // SIGHUP reloads as well (nothing changed now: nothing restarted).
    let isesctl = suite.task_pid("isesctl");
    suite.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(
        "the SIGHUP reload is logged",
        Duration::from_secs(10),
        || {
            let log = suite.log();
            (log.matches("reloaded ").count() >= 4)
                .then_some(())
                .ok_or(String::new())
        },
    );
    assert_eq!(suite.task_pid("isesctl"), isesctl);
}

// ----- status page charts -----

fn chromium(profile: &std::path::Path, extra: &[String], url: &str) -> Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .expect("chromium is installed (scripts/test installs it)")
}

#[test]
fn status_page_charts_show_the_traffic_in_headless_chromium() {
    let port = mta_testkit::free_port();
    let suite = Suite::start(&SuiteOptions {
        sections: vec![("metrics", format!("listen = \"127.0.0.1:{port}\""))],
        ..SuiteOptions::default()
    });
    // Traffic: 40 messages delivered to alice, 2 deferred (their DNS fails).
    let load = mta_testkit::peers::smtp_load(suite.smtp_port, 40, 4, "alice@localhost", 10);
    assert_eq!(load.accepted.len(), 40, "{:?}", load.errors);
    for _ in 0..2 {
        let out = sendmail(&suite, &["someone@example.net"], "Subject: later\n\nbody\n");
        assert!(out.status.success(), "{}", text(&out));
    }
    suite.wait_for_mail("alice", 40);
    let profile = suite.dir.path().join("chromium-profile");
    let url = format!("http://127.0.0.1:{port}/");
    let dom = wait_for(
        "the charts count the traffic",
        Duration::from_secs(60),
        || {
            let out = chromium(&profile, &["--dump-dom".into()], &url);
            let dom = String::from_utf8_lossy(&out.stdout).to_string();
            let hour = dom
                .split("<figure id=\"chart-hour\">")
                .nth(1)
                .unwrap_or("")
                .to_string();
            (hour.contains(">received 42<")
                && hour.contains(">delivered 40<")
                && hour.contains(">deferred 2<"))
            .then_some(dom.clone())
            .ok_or(hour)
        },
    );
    for id in ["hour-traffic", "hour-queue", "day-traffic", "day-queue"] {
        assert!(dom.contains(&format!("<svg id=\"{id}\"")), "no chart {id}");
    }
    assert!(!dom.contains("<script"), "the page has a script");
    // The day chart has a point a minute.
    let day = dom.split("<svg id=\"day-traffic\"").nth(1).unwrap();
    let points = day
        .split("points=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert_eq!(points.split(' ').count(), 1440);
    // A screenshot, as an operator sees it.
    let shot = std::env::var("SMTPMTA_STATUS_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| suite.dir.path().join("status-page.png"));
    let out = chromium(
        &profile,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1000,1500".into(),
        ],
        &url,
    );
    assert!(out.status.success(), "{}", text(&out));
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
}

// ----- binary upgrade in place -----

/// The order in which the supervisor brings the tasks back: downstream first.
const ONE_BY_ONE: [&str; 6] = ["drt", "osesctl", "omsgcnv", "router", "imsgcnv", "isesctl"];

/// After the re-exec, the supervisor's log shows each task started only once the one
/// before it was up (`task started` after the previous `task ready`), in order, each on a
/// new pid; `show tasks` has those pids.
fn tasks_came_back_one_by_one(suite: &Suite, log: &str, old_pids: &[u32]) {
    let after = log
        .find("starting again from its binary")
        .expect("the re-exec line");
    let lines: Vec<&str> = log[after..]
        .lines()
        .filter(|l| l.starts_with("smtpmta["))
        .collect();
    let at = |what: &str, task: &str| {
        lines
            .iter()
            .position(|l| l.contains(what) && l.contains(&format!("task={task} ")))
            .unwrap_or_else(|| panic!("no `{what}` for {task}:\n{}", lines.join("\n")))
    };
    for pair in ONE_BY_ONE.windows(2) {
        let (ready, next) = (at("task ready", pair[0]), at("task started", pair[1]));
        assert!(
            ready < next,
            "{} started before {} was up:\n{}",
            pair[1],
            pair[0],
            lines.join("\n")
        );
    }
    let up = lines
        .iter()
        .filter(|l| l.contains("task up on the new binary"))
        .count();
    assert_eq!(up, ONE_BY_ONE.len(), "{}", lines.join("\n"));
    assert!(log.contains("every task restarted, one by one"));
    for (task, old) in ONE_BY_ONE.iter().zip(old_pids) {
        let new = suite.task_pid(task).unwrap();
        assert_ne!(new, *old, "{task} runs on a new pid");
        assert!(
            at("task ready", task) < lines.len()
                && lines[at("task ready", task)].contains(&format!("pid={new}")),
            "{task}: pid {new} is the one that came up"
        );
    }
}

#[test]
fn smtpmta_restart_under_load_refuses_loses_and_doubles_nothing() {
    let suite = Suite::start(&SuiteOptions {
        sections: vec![("inbound", "shutdown_grace = \"10s\"".into())],
        ..SuiteOptions::default()
    });
    let supervisor = suite.pid();
    let old_isesctl = suite.task_pid("isesctl").unwrap();
    let old_pids: Vec<u32> = ONE_BY_ONE
        .iter()
        .map(|t| suite.task_pid(t).unwrap())
        .collect();
    let port = suite.smtp_port;
    let load = std::thread::spawn(move || {
        mta_testkit::peers::smtp_load(port, 1000, 20, "bob@localhost", 10)
    });
    std::thread::sleep(Duration::from_millis(800));
    let t = mtacon_text(&suite, &["tell", "smtpmta", "restart"]);
    assert!(t.contains("restarting from its binary"), "{t}");
    let result = load.join().unwrap();
    assert_eq!(result.errors, serde_json::json!([]), "clients saw errors");
    assert_eq!(result.accepted.len(), 1000);
    // The same supervisor process, new tasks.
    wait_for("every task runs again", Duration::from_secs(30), || {
        let tasks = suite.tasks().map_err(|e| e.to_string())?;
        let running = tasks
            .iter()
            .filter(|t| t["parent"].is_null() && t["state"] == "running")
            .count();
        (running == 7)
            .then_some(())
            .ok_or(format!("{running} running"))
    });
    assert_eq!(suite.pid(), supervisor);
    assert!(mta_testkit::pid_alive(supervisor));
    assert_ne!(suite.task_pid("isesctl"), Some(old_isesctl));
    let files = suite.wait_for_mail("bob", 1000);
    let ids = mta_testkit::message_ids(&files);
    assert_eq!(ids.len(), 1000);
    assert!(ids.values().all(|n| *n == 1), "duplicates");
    for id in &result.accepted {
        assert_eq!(ids.get(id), Some(&1), "{id}");
    }
    let log = suite.log();
    assert!(log.contains("starting again from its binary"));
    tasks_came_back_one_by_one(&suite, &log, &old_pids);
    // The load ran across the restart: both copies of isesctl accepted part of it.
    let new_isesctl = suite.task_pid("isesctl").unwrap();
    for pid in [old_isesctl, new_isesctl] {
        let accepted = log
            .lines()
            .filter(|l| l.starts_with(&format!("isesctl[{pid}]:")) && l.contains(" queued qid="))
            .count();
        assert!(accepted > 0, "isesctl {pid} accepted nothing");
    }
}
