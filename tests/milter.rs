//! Milters end to end: a scripted milter (mta_testkit::milter, the milter side written
//! apart from our client) exercising every action and modification, a milter that hangs,
//! one that speaks garbage and one that is down; and Debian's rspamd as a real milter
//! (its proxy worker in milter mode, on its own ports and config folder): GTUBE refused
//! with rspamd's text, a clean message delivered with rspamd's headers, its logged queue
//! ID equal to ours, and rspamd stopped → 451 (tempfail) or delivered (accept).
//! Needs: rspamd (scripts/test installs it).

use mta_testkit::milter::{reply, Event, Mode, Rspamd, TestMilter};
use mta_testkit::{free_port, maildir_new, wait_for, RawSmtp, Suite, SuiteOptions};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn milter_entry(name: &str, address: &str, extra: &str) -> String {
    format!("[[milter]]\nname = \"{name}\"\naddress = \"{address}\"\n{extra}\n")
}

fn suite_with(milters: &str, metrics_port: Option<u16>) -> Suite {
    let mut sections = Vec::new();
    if let Some(port) = metrics_port {
        sections.push(("metrics", format!("listen = \"127.0.0.1:{port}\"")));
    }
    Suite::start(&SuiteOptions {
        top: milters.to_string(),
        sections,
        ..Default::default()
    })
}

/// One message on an open session: MAIL, RCPTs, DATA; every reply, the last the end of
/// DATA's (or the first refusal's).
fn transaction(c: &mut RawSmtp, from: &str, rcpts: &[&str], message: &str) -> Vec<String> {
    let mut replies = vec![c.cmd(&format!("MAIL FROM:<{from}>"))];
    if !replies[0].starts_with("250") {
        return replies;
    }
    for r in rcpts {
        replies.push(c.cmd(&format!("RCPT TO:<{r}>")));
    }
    if !replies.iter().any(|r| r.starts_with("250 2.1.5")) {
        c.cmd("RSET");
        return replies;
    }
    let data = c.cmd("DATA");
    if !data.starts_with("354") {
        replies.push(data);
        c.cmd("RSET");
        return replies;
    }
    c.send(format!("{message}\r\n.\r\n").as_bytes());
    replies.push(c.read_reply());
    replies
}

fn queued_id(reply: &str) -> String {
    reply
        .rsplit(' ')
        .next()
        .expect("queue id")
        .trim()
        .to_string()
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The script: per message, what the test's Subject asks for.
fn scripted() -> (TestMilter, Arc<Mutex<String>>) {
    let subject = Arc::new(Mutex::new(String::new()));
    let seen = Arc::clone(&subject);
    let script = move |e: &Event| -> Vec<(u8, Vec<u8>)> {
        let arg = e.args.first().map(String::as_str).unwrap_or("");
        match e.code {
            'M' if arg == "<tempfail@localhost>" => vec![reply::TEMPFAIL],
            'M' if arg == "<blocked@localhost>" => {
                vec![reply::reply_code(
                    "553 5.7.1 sender blocked by the test milter",
                )]
            }
            'R' if arg == "<abuse@localhost>" => vec![reply::REJECT],
            'L' if arg.eq_ignore_ascii_case("subject") => {
                *seen.lock().unwrap() = e.args[1].clone();
                vec![]
            }
            'E' => eom(&seen.lock().unwrap()),
            _ => vec![],
        }
    };
    (TestMilter::start(Mode::Script(Arc::new(script))), subject)
}

fn eom(subject: &str) -> Vec<(u8, Vec<u8>)> {
    match subject {
        "modify" => vec![
            reply::add_header("X-Added", "yes"),
            reply::PROGRESS,
            reply::insert_header(0, "X-Top", "first"),
            reply::change_header(1, "Subject", "modified"),
            reply::change_header(1, "X-Remove-Me", ""),
            reply::replace_body(b"new body\r\nline two\r\n"),
            reply::add_rcpt("<bob@localhost>"),
            reply::del_rcpt("<alice@localhost>"),
            reply::change_from("<changed@localhost>"),
            reply::ACCEPT,
        ],
        "reject" => vec![reply::reply_code("554 5.7.1 rejected by the test milter")],
        "tempfail" => vec![reply::TEMPFAIL],
        "discard" => vec![reply::DISCARD],
        "quarantine" => vec![reply::quarantine("suspicious attachment"), reply::ACCEPT],
        _ => vec![reply::CONTINUE],
    }
}

fn msg(subject: &str) -> String {
    format!("Subject: {subject}\r\nX-Remove-Me: please\r\nFrom: <sender@localhost>\r\n\r\nold body")
}

#[test]
fn every_action_and_modification_of_a_scripted_milter() {
    let (milter, _) = scripted();
    let metrics = free_port();
    let entry = milter_entry("script", &milter.address(), "");
    let suite = suite_with(&entry, Some(metrics));
    let (mut c, _) = RawSmtp::connect(suite.smtp_port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));

    // MAIL: tempfail and the milter's own reply code.
    let r = transaction(&mut c, "tempfail@localhost", &[], "");
    assert_eq!(r[0], "451 4.7.1 Service unavailable - try again later");
    let r = transaction(&mut c, "blocked@localhost", &[], "");
    assert_eq!(r[0], "553 5.7.1 sender blocked by the test milter");

    // RCPT: a reject for one recipient; the other goes on. End of message: every change.
    let r = transaction(
        &mut c,
        "sender@localhost",
        &["abuse@localhost", "alice@localhost"],
        &msg("modify"),
    );
    assert_eq!(r[1], "550 5.7.1 Command rejected");
    assert!(r[3].starts_with("250 2.0.0"), "{r:?}");
    let modified = queued_id(&r[3]);

    let r = transaction(
        &mut c,
        "sender@localhost",
        &["alice@localhost"],
        &msg("reject"),
    );
    assert_eq!(r.last().unwrap(), "554 5.7.1 rejected by the test milter");
    let r = transaction(
        &mut c,
        "sender@localhost",
        &["alice@localhost"],
        &msg("tempfail"),
    );
    assert_eq!(
        r.last().unwrap(),
        "451 4.7.1 Service unavailable - try again later"
    );
    let r = transaction(
        &mut c,
        "sender@localhost",
        &["alice@localhost"],
        &msg("discard"),
    );
    assert!(r.last().unwrap().starts_with("250 2.0.0"), "{r:?}");
    let discarded = queued_id(r.last().unwrap());
    let r = transaction(
        &mut c,
        "sender@localhost",
        &["alice@localhost"],
        &msg("quarantine"),
    );
    assert!(r.last().unwrap().starts_with("250 2.0.0"), "{r:?}");
    let held = queued_id(r.last().unwrap());
    assert!(c.cmd("QUIT").starts_with("221"));

    // The modified message reached bob (added), not alice (removed), changed as asked.
    let files = suite.wait_for_mail("bob", 1);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    eprintln!("{text}");
    assert!(text.contains("Return-Path: <changed@localhost>"), "{text}");
    let top = text.find("X-Top: first").expect("inserted header");
    assert!(top < text.find("Received:").unwrap(), "{text}");
    // (Maildir files have LF line endings.)
    assert!(
        text.contains("Subject: modified\n") && !text.contains("X-Remove-Me"),
        "{text}"
    );
    assert!(text.contains("X-Added: yes\n"), "{text}");
    assert!(text.ends_with("\n\nnew body\nline two\n"), "{text}");

    // The quarantined message waits in Held with the milter's reason.
    let queue = suite.mtacon(&["show", "queue"]);
    let queue = String::from_utf8_lossy(&queue.stdout).to_string();
    eprintln!("show queue:\n{queue}");
    assert!(queue.contains(&held) && queue.contains("Held"), "{queue}");
    assert!(
        queue.contains("quarantined by milter script: suspicious attachment"),
        "{queue}"
    );
    let shown = suite.mtacon(&["show", "message", &held]);
    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
    eprintln!("show message:\n{shown}");
    assert!(shown.contains("quarantined by milter script"), "{shown}");
    assert!(maildir_new(&suite.mailbox("alice")).is_empty());
    let released = suite.mtacon(&["release", &held]);
    assert!(released.status.success(), "{released:?}");
    let files = suite.wait_for_mail("alice", 1);
    assert!(std::fs::read_to_string(&files[0])
        .unwrap()
        .contains("Subject: quarantine"));

    // Discarded: logged, never delivered (alice has only the released one).
    let log = suite.log();
    assert!(
        log.contains(&format!("qid={discarded} discarded by script")),
        "{log}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(maildir_new(&suite.mailbox("alice")).len(), 1);

    // What the milter saw: one connection for the whole session, the macros.
    let events = milter.events();
    assert_eq!(
        events.iter().filter(|e| e.code == 'C').count(),
        1,
        "{events:?}"
    );
    let connect = events.iter().find(|e| e.code == 'C').unwrap();
    assert_eq!(connect.args[0], "[127.0.0.1]");
    assert_eq!(connect.macros["j"], "mta.test");
    assert_eq!(connect.macros["{daemon_name}"], "smtp");
    assert_eq!(connect.macros["{client_addr}"], "127.0.0.1");
    let helo = events.iter().find(|e| e.code == 'H').unwrap();
    assert_eq!(helo.args[0], "client.test");
    let eoms: Vec<&Event> = events.iter().filter(|e| e.code == 'E').collect();
    assert_eq!(eoms[0].macros["i"], modified, "the queue ID macro is ours");
    let rcpt = events
        .iter()
        .find(|e| e.code == 'R' && e.args[0] == "<alice@localhost>")
        .unwrap();
    assert_eq!(rcpt.macros["{rcpt_addr}"], "alice@localhost");
    assert_eq!(rcpt.macros["{mail_addr}"], "sender@localhost");
    assert!(
        events.iter().any(|e| e.code == 'A'),
        "an ABORT after the refused transactions"
    );

    // The metric counts the milter's decisions.
    let body = wait_for("milter metrics", Duration::from_secs(10), || {
        let body = http_get(metrics, "/metrics");
        let line = "smtpmta_milter_actions_total{milter=\"script\",action=\"quarantine\"} 1";
        if body.contains(line) {
            Ok(body)
        } else {
            Err(body)
        }
    });
    assert!(
        body.contains("smtpmta_milter_actions_total{milter=\"script\",action=\"discard\"} 1"),
        "{body}"
    );
}

#[test]
fn hanging_garbage_and_absent_milters_get_their_default_action() {
    let hang = TestMilter::start(Mode::Hang);
    let garbage = TestMilter::start(Mode::Garbage);
    let absent = format!("inet:127.0.0.1:{}", free_port());
    let metrics = free_port();
    // In order: garbage (accept: left out), then the hanging one (tempfail).
    let config = [
        milter_entry("garbage", &garbage.address(), "default_action = \"accept\""),
        milter_entry(
            "hang",
            &hang.address(),
            "command_timeout = \"1s\"\nlisteners = [\"smtp\"]",
        ),
    ]
    .concat();
    let suite = suite_with(&config, Some(metrics));
    let (mut c, _) = RawSmtp::connect(suite.smtp_port);
    let started = std::time::Instant::now();
    let ehlo = c.cmd("EHLO client.test");
    assert_eq!(ehlo, "451 4.7.1 Service unavailable - try again later");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no hung session"
    );
    // Each later command too; nothing is queued.
    let r = transaction(&mut c, "sender@localhost", &["alice@localhost"], &msg("x"));
    assert!(
        r[0].starts_with("451 4.7.1") || r[0].starts_with("503"),
        "{r:?}"
    );
    assert!(c.cmd("QUIT").starts_with("221"));
    let log = suite.log();
    assert!(log.contains("milter garbage (inet:127.0.0.1:"), "{log}");
    assert!(log.contains("default_action = accept"), "{log}");
    assert!(
        log.contains("milter hang (inet:127.0.0.1:")
            && log.contains("no reply to connect within 1s"),
        "{log}"
    );
    assert!(!log.contains("queued"), "{log}");
    let body = http_get(metrics, "/metrics");
    wait_for("failure metrics", Duration::from_secs(10), || {
        let body = http_get(metrics, "/metrics");
        if body.contains("smtpmta_milter_failures_total{milter=\"hang\",reason=\"timeout\"} 1")
            && body
                .contains("smtpmta_milter_failures_total{milter=\"garbage\",reason=\"broken\"} 1")
        {
            Ok(())
        } else {
            Err(body)
        }
    });
    drop(body);
    drop(suite);

    // A milter that is down, with reject: 550 and no mail; accept: delivered.
    let config = [milter_entry("down", &absent, "default_action = \"reject\"")].concat();
    let suite = suite_with(&config, None);
    let (mut c, _) = RawSmtp::connect(suite.smtp_port);
    assert_eq!(c.cmd("EHLO client.test"), "550 5.7.1 Command rejected");
    drop(suite);
    let suite = suite_with(
        &milter_entry("down", &absent, "default_action = \"accept\""),
        None,
    );
    let (mut c, _) = RawSmtp::connect(suite.smtp_port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let r = transaction(
        &mut c,
        "sender@localhost",
        &["alice@localhost"],
        &msg("plain"),
    );
    assert!(r.last().unwrap().starts_with("250 2.0.0"), "{r:?}");
    suite.wait_for_mail("alice", 1);
    assert!(suite.log().contains("milter down (inet:127.0.0.1:"));
}

const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

#[test]
fn rspamd_as_a_milter() {
    let mut rspamd = Rspamd::start();
    let entry = milter_entry("rspamd", &rspamd.address(), "default_action = \"tempfail\"");
    let suite = suite_with(&entry, None);
    let (mut c, greeting) = RawSmtp::connect(suite.smtp_port);
    let mut transcript = vec![format!("S: {greeting}")];
    let ehlo = c.cmd("EHLO client.test");
    assert!(ehlo.starts_with("250"), "{ehlo}");
    let gtube = format!("From: <sender@localhost>\r\nTo: <alice@localhost>\r\nSubject: gtube\r\nMessage-ID: <gtube@client.test>\r\n\r\n{GTUBE}\r\n");
    let r = transaction(&mut c, "sender@localhost", &["alice@localhost"], &gtube);
    for (cmd, reply) in [
        "MAIL FROM:<sender@localhost>",
        "RCPT TO:<alice@localhost>",
        "DATA + GTUBE body",
    ]
    .iter()
    .zip(&r)
    {
        transcript.push(format!("C: {cmd}\nS: {reply}"));
    }
    eprintln!("GTUBE transcript:\n{}", transcript.join("\n"));
    let refusal = r.last().unwrap();
    assert!(refusal.starts_with("554 5.7.1 Gtube pattern"), "{r:?}");

    let clean = "From: <sender@localhost>\r\nTo: <alice@localhost>\r\nSubject: hello\r\nMessage-ID: <clean@client.test>\r\nDate: Mon, 7 Dec 2026 01:00:00 +0000\r\n\r\nJust a plain note.\r\n";
    let r = transaction(&mut c, "sender@localhost", &["alice@localhost"], clean);
    assert!(r.last().unwrap().starts_with("250 2.0.0"), "{r:?}");
    let qid = queued_id(r.last().unwrap());
    c.cmd("QUIT");
    let files = suite.wait_for_mail("alice", 1);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    eprintln!("{text}");
    assert!(
        text.contains("X-Spamd-Result:") || text.contains("X-Spam-"),
        "{text}"
    );
    assert!(
        text.contains(&format!("X-Rspamd-Queue-Id: {qid}")),
        "{text}"
    );
    // A second session, on the connection the first gave back (QUIT_NC): rspamd scans it.
    let (mut c2, _) = RawSmtp::connect(suite.smtp_port);
    assert!(c2.cmd("EHLO client.test").starts_with("250"));
    let again = clean.replace("<clean@", "<clean2@");
    let r = transaction(&mut c2, "sender@localhost", &["alice@localhost"], &again);
    assert!(r.last().unwrap().starts_with("250 2.0.0"), "{r:?}");
    let qid2 = queued_id(r.last().unwrap());
    c2.cmd("QUIT");
    let files = suite.wait_for_mail("alice", 2);
    let all: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(all.contains(&format!("X-Rspamd-Queue-Id: {qid2}")), "{all}");
    // rspamd logs the queue ID we sent (macro i): ours.
    let logged = wait_for("rspamd's log line", Duration::from_secs(10), || {
        let log = rspamd.log();
        if log.contains(&format!("qid: <{qid}>")) {
            Ok(log)
        } else {
            Err(log)
        }
    });
    assert!(!logged.is_empty());

    // rspamd stopped: tempfail, nothing queued.
    rspamd.stop();
    let (mut c, _) = RawSmtp::connect(suite.smtp_port);
    let ehlo = c.cmd("EHLO client.test");
    assert_eq!(ehlo, "451 4.7.1 Service unavailable - try again later");
    c.cmd("QUIT");
    let log = suite.log();
    assert!(
        log.contains("milter rspamd (inet:127.0.0.1:") && log.contains("default_action = tempfail"),
        "{log}"
    );
    assert_eq!(log.matches(" queued").count(), 2, "{log}");
    drop(suite);

    // The same with default_action = accept: delivered without rspamd.
    let entry = milter_entry("rspamd", &rspamd.address(), "default_action = \"accept\"");
    let suite = suite_with(&entry, None);
    let (mut c, _) = RawSmtp::connect(suite.smtp_port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let r = transaction(&mut c, "sender@localhost", &["alice@localhost"], clean);
    assert!(r.last().unwrap().starts_with("250 2.0.0"), "{r:?}");
    suite.wait_for_mail("alice", 1);
}

/// A connection serves one session after another (SMFIC_QUIT_NC): four sessions in turn,
/// to a milter that follows every message to its end and to one that accepts at connect,
/// cost each milter fewer TCP connections than sessions, and every session still sends its
/// own connect event with its own macros.
#[test]
fn milter_connections_serve_session_after_session() {
    let follow = TestMilter::start(Mode::Script(Arc::new(|e: &Event| match e.code {
        'E' => vec![reply::ACCEPT],
        _ => vec![],
    })));
    let at_connect = TestMilter::start(Mode::Script(Arc::new(|e: &Event| match e.code {
        'C' => vec![reply::ACCEPT],
        _ => vec![],
    })));
    let entries = milter_entry("follow", &follow.address(), "")
        + &milter_entry("early", &at_connect.address(), "");
    let suite = suite_with(&entries, None);
    const SESSIONS: usize = 4;
    let mut qids = Vec::new();
    for n in 0..SESSIONS {
        let (mut c, _) = RawSmtp::connect(suite.smtp_port);
        assert!(c.cmd("EHLO client.test").starts_with("250"));
        let r = transaction(
            &mut c,
            "sender@localhost",
            &["alice@localhost"],
            &msg(&format!("session {n}")),
        );
        assert!(r.last().unwrap().starts_with("250 2.0.0"), "{r:?}");
        qids.push(queued_id(r.last().unwrap()));
        c.cmd("QUIT");
    }
    suite.wait_for_mail("alice", SESSIONS);
    let events = follow.events();
    let connects: Vec<&Event> = events.iter().filter(|e| e.code == 'C').collect();
    assert_eq!(connects.len(), SESSIONS, "{events:?}");
    assert!(connects
        .iter()
        .all(|e| e.macros.get("{client_addr}").map(String::as_str) == Some("127.0.0.1")));
    // Each end of message carried its own queue ID (macros are per session, not left over).
    let eom_qids: Vec<String> = events
        .iter()
        .filter(|e| e.code == 'E')
        .filter_map(|e| e.macros.get("i").cloned())
        .collect();
    assert_eq!(eom_qids, qids, "{events:?}");
    assert_eq!(
        at_connect.events().iter().filter(|e| e.code == 'C').count(),
        SESSIONS
    );
    // Without reuse each milter would have seen one connection per session.
    for (name, milter) in [("follow", &follow), ("early", &at_connect)] {
        assert!(
            milter.connections() < SESSIONS,
            "{name}: {} connections for {SESSIONS} sessions",
            milter.connections()
        );
    }
}

/// A rough figure, not asserted (`cargo nextest run --release --test milter --run-ignored
/// only`): smtp_load.py's small messages over 20 sessions of 10, to a local mailbox, without milters, with
/// a milter that answers "continue" to everything and "accept" at end of message (the
/// client's own cost), and with rspamd.
#[test]
#[ignore]
fn rough_cost_of_the_milter_client() {
    const N: usize = 1000;
    let rate = |milters: &str| {
        let suite = suite_with(milters, None);
        let started = std::time::Instant::now();
        let load = mta_testkit::peers::smtp_load(suite.smtp_port, N, 20, "alice@localhost", 10);
        let took = started.elapsed();
        assert_eq!(load.accepted.len(), N, "{}", load.errors);
        suite.wait_for_mail("alice", N);
        N as f64 / took.as_secs_f64()
    };
    let none = rate("");
    let accept_all = TestMilter::start(Mode::Script(Arc::new(|e: &Event| match e.code {
        'E' => vec![reply::ACCEPT],
        _ => vec![],
    })));
    let with_test = rate(&milter_entry("accept", &accept_all.address(), ""));
    let rspamd = Rspamd::start();
    let with_rspamd = rate(&milter_entry("rspamd", &rspamd.address(), ""));
    eprintln!(
        "msg/s accepted: no milter {none:.0}; accept-all milter {with_test:.0} ({:.0} %); rspamd {with_rspamd:.0} ({:.0} %)",
        100.0 * with_test / none,
        100.0 * with_rspamd / none
    );
}
