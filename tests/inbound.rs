//! Inbound: SMTP clients → isesctl/iseshlrN → Inbound Work Queue → imsgcnv → mail.box →
//! router → Maildir, through the real binaries and real clients (swaks, Python smtplib).

use mta_testkit::{maildir_new, wait_for, RawSmtp, Suite, SuiteOptions, DEFAULT_DIRECTORY};
use std::process::Command;
use std::time::Duration;

fn swaks(port: u16, args: &[&str]) -> std::process::Output {
    Command::new("swaks")
        .args([
            "--server",
            &format!("127.0.0.1:{port}"),
            "--timeout",
            "20",
            "--hide-informational",
        ])
        .args(args)
        .output()
        .expect("swaks is installed (.ci/run installs it)")
}

fn python(script: &str, args: &[&str]) -> std::process::Output {
    Command::new(mta_testkit::python3())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3")
}

fn queue_json(suite: &Suite) -> serde_json::Value {
    let out = suite.mtacon(&["--json", "show", "queue"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn queue_count(suite: &Suite, queue: &str) -> u64 {
    let v = queue_json(suite);
    v["queue"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["queue"] == queue)
        .map(|r| r["messages"].as_u64().unwrap())
        .sum()
}

fn parked(suite: &Suite, state: &str) -> Vec<serde_json::Value> {
    queue_json(suite)["parked"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == state)
        .cloned()
        .collect()
}

#[test]
fn swaks_delivers_to_the_maildir_with_trace_headers() {
    let suite = Suite::start(&SuiteOptions::default());
    let out = swaks(
        suite.smtp_port,
        &[
            "--to",
            "postmaster@localhost",
            "--from",
            "sender@example.org",
            "--body",
            "Hello World\nsecond line",
        ],
    );
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{transcript}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let qid_line = transcript
        .lines()
        .find(|l| l.starts_with("<-") && l.contains(" 250 ") && l.contains("queued as"))
        .expect("250 queued as");
    let qid = qid_line.rsplit(' ').next().unwrap().trim().to_string();

    let files = suite.wait_for_mail("postmaster", 1);
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        text.starts_with("Return-Path: <sender@example.org>\n"),
        "{text}"
    );
    assert!(
        text.contains("Delivered-To: postmaster@localhost\n"),
        "{text}"
    );
    assert!(
        text.contains("Received: from ") && text.contains(&format!("id {qid}")),
        "{text}"
    );
    assert!(text.contains("\nHello World\nsecond line\n"), "{text}");
    // tmp/ is empty: the delivery completed with a rename.
    assert_eq!(
        std::fs::read_dir(suite.mailbox("postmaster").join("tmp"))
            .unwrap()
            .count(),
        0
    );
    // The queue is empty afterwards.
    wait_for("queue drained", Duration::from_secs(10), || {
        let total: u64 = queue_json(&suite)["queue"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["messages"].as_u64().unwrap())
            .sum();
        if total == 0 {
            Ok(())
        } else {
            Err(format!("{total} queued"))
        }
    });
}

const SMTPLIB_EXTENSIONS: &str = r#"
import smtplib, sys, socket
port = int(sys.argv[1])
s = smtplib.SMTP("127.0.0.1", port, timeout=20)
s.ehlo("client.test")
for ext in ["pipelining", "8bitmime", "smtputf8", "chunking", "size", "dsn", "enhancedstatuscodes"]:
    assert s.has_extn(ext), ext
# 8BITMIME + SMTPUTF8 with a UTF-8 local part
msg = "From: sender@example.org\r\nTo: 用户@localhost\r\nSubject: Grüße\r\n\r\nKäse und Brot\r\n".encode()
s.sendmail("sender@example.org", ["用户@localhost"], msg, mail_options=["BODY=8BITMIME", "SMTPUTF8"])
# PIPELINING: everything up to DATA in one write
raw = s.sock
raw.sendall(b"MAIL FROM:<p@example.org>\r\nRCPT TO:<alice@localhost>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
f = raw.makefile("rb")
replies = [f.readline() for _ in range(4)]
assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"354"], replies
raw.sendall(b"Subject: pipelined\r\n\r\npipelined body\r\n.\r\n")
r = f.readline(); assert r.startswith(b"250"), r
# BDAT (CHUNKING) in two chunks
raw.sendall(b"MAIL FROM:<c@example.org>\r\n"); assert f.readline().startswith(b"250")
raw.sendall(b"RCPT TO:<alice@localhost>\r\n"); assert f.readline().startswith(b"250")
c1 = b"Subject: chunked\r\n\r\nfirst "; c2 = b"second\r\n"
raw.sendall(b"BDAT %d\r\n" % len(c1) + c1); r = f.readline(); assert r.startswith(b"250"), r
raw.sendall(b"BDAT %d LAST\r\n" % len(c2) + c2); r = f.readline(); assert r.startswith(b"250"), r
raw.sendall(b"QUIT\r\n"); f.readline()
print("ok")
"#;

#[test]
fn smtplib_pipelining_8bitmime_smtputf8_and_bdat() {
    let directory = format!("{DEFAULT_DIRECTORY}\n[[user]]\nname = \"yonghu\"\naddresses = [\"用户@localhost\"]\nmaildir = \"mail/yonghu\"\n");
    let suite = Suite::start(&SuiteOptions {
        directory: Some(directory),
        ..Default::default()
    });
    let out = python(SMTPLIB_EXTENSIONS, &[&suite.smtp_port.to_string()]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let utf8 = suite.wait_for_mail("yonghu", 1);
    let text = std::fs::read_to_string(&utf8[0]).unwrap();
    assert!(text.contains("Delivered-To: 用户@localhost"), "{text}");
    assert!(text.contains("Käse und Brot"), "{text}");
    assert!(text.contains("with UTF8SMTP"), "{text}");

    let alice = suite.wait_for_mail("alice", 2);
    let bob = suite.wait_for_mail("bob", 1);
    let alice_text: String = alice
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(
        alice_text.contains("pipelined body") && alice_text.contains("first second"),
        "{alice_text}"
    );
    assert!(std::fs::read_to_string(&bob[0])
        .unwrap()
        .contains("pipelined body"));
}

#[test]
fn seed_exercise_2_fourth_session_waits_for_a_free_handler() {
    let suite = Suite::start(&SuiteOptions {
        sections: vec![("inbound", "max_handlers = 3".into())],
        ..Default::default()
    });
    let mut held: Vec<RawSmtp> = (0..3)
        .map(|_| {
            let (c, greeting) = RawSmtp::connect(suite.smtp_port);
            assert!(greeting.starts_with("220"), "{greeting}");
            c
        })
        .collect();
    let handlers = wait_for("three busy handlers", Duration::from_secs(5), || {
        let rows: Vec<_> = suite
            .tasks()?
            .into_iter()
            .filter(|t| t["parent"] == "isesctl")
            .collect();
        let busy: Vec<String> = rows
            .iter()
            .filter(|t| t["state"] == "busy")
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        if busy.len() == 3 {
            Ok(busy)
        } else {
            Err(format!("{rows:?}"))
        }
    });
    assert_eq!(handlers, vec!["iseshlr0", "iseshlr1", "iseshlr2"]);

    // The fourth connection is accepted by the kernel backlog but gets no banner.
    let mut fourth = std::net::TcpStream::connect(("127.0.0.1", suite.smtp_port)).unwrap();
    fourth
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 512];
    use std::io::Read;
    let early = fourth.read(&mut buf);
    assert!(
        early.is_err(),
        "the 4th session was greeted while 3 handlers were busy: {early:?}"
    );

    // One quits: the fourth is served by a reused handler.
    let quit = held[0].cmd("QUIT");
    assert!(quit.starts_with("221"), "{quit}");
    held.remove(0);
    fourth
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = fourth.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("220"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let rows: Vec<_> = suite
        .tasks()
        .unwrap()
        .into_iter()
        .filter(|t| t["parent"] == "isesctl")
        .collect();
    assert_eq!(rows.len(), 3, "no new handler beyond the maximum: {rows:?}");
}

#[test]
fn recipient_policy_unknown_user_and_relay() {
    let suite = Suite::start(&SuiteOptions::default());
    let (mut c, _) = RawSmtp::connect(suite.smtp_port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    let unknown = c.cmd("RCPT TO:<nobody@localhost>");
    assert!(unknown.starts_with("550 5.1.1"), "{unknown}");
    // Trusted client (127.0.0.1 is in 127.0.0.0/8): relaying is allowed, the message goes to smtp.box.
    let relay = c.cmd("RCPT TO:<someone@example.com>");
    assert!(relay.starts_with("250"), "{relay}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: relay\r\n\r\nto the world\r\n.\r\n");
    assert!(c.read_reply().starts_with("250"));
    wait_for(
        "relayed message in smtp.box",
        Duration::from_secs(15),
        || {
            let n = queue_count(&suite, "smtp.box") + queue_count(&suite, "outbound-work");
            if n == 1 {
                Ok(())
            } else {
                Err(format!("{:?}", queue_json(&suite)))
            }
        },
    );
}

#[test]
fn untrusted_client_cannot_relay() {
    // Only 127.0.0.1 is trusted; the client connects from 127.0.0.2.
    let mut suite = Suite::prepare(&SuiteOptions::default());
    let text = std::fs::read_to_string(&suite.config)
        .unwrap()
        .replace("127.0.0.0/8", "127.0.0.1/32");
    std::fs::write(&suite.config, text).unwrap();
    suite.launch();
    let (mut c, greeting) =
        RawSmtp::connect_from(Some(std::net::Ipv4Addr::new(127, 0, 0, 2)), suite.smtp_port);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(c.cmd("EHLO outside.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@outside.test>").starts_with("250"));
    let denied = c.cmd("RCPT TO:<victim@example.com>");
    assert!(denied.starts_with("554 5.7.1"), "{denied}");
    let hack = c.cmd("RCPT TO:<victim%example.com@localhost>");
    assert!(hack.starts_with("5"), "percent hack accepted: {hack}");
    // Local delivery is still fine from outside.
    assert!(c.cmd("RCPT TO:<postmaster@localhost>").starts_with("250"));
}

/// A fake end of DATA with a bare LF inside, under `[inbound] bare_newline = <policy>`:
/// `reject` refuses the one message; `normalize` accepts it as one message that carries the
/// would-be smuggled commands as content. Either way bob (the smuggled recipient) gets
/// nothing and the session stays in sync.
fn smuggling_under(policy: &str) {
    let suite = Suite::start(&SuiteOptions {
        sections: vec![("inbound", format!("bare_newline = \"{policy}\""))],
        ..Default::default()
    });
    let normalize = policy == "normalize";
    let (mut c, _) = RawSmtp::connect(suite.smtp_port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let mut accepted = 0;
    for smuggle in [&b"\n.\n"[..], &b"\r\n.\n"[..], &b"\n.\r\n"[..]] {
        assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@localhost>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        let mut data = b"Subject: smuggle\r\n\r\nbefore".to_vec();
        data.extend_from_slice(smuggle);
        data.extend_from_slice(
            b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\nsmuggled\r\n.\r\n",
        );
        c.send(&data);
        // Exactly one reply for the whole thing: about the one message.
        let reply = c.read_reply();
        if normalize {
            assert!(reply.starts_with("250"), "{smuggle:?}: {reply}");
            accepted += 1;
        } else {
            assert!(reply.starts_with("554 5.6.0"), "{smuggle:?}: {reply}");
        }
        let next = c.cmd("NOOP");
        assert!(
            next.starts_with("250"),
            "the session is out of sync: {next}"
        );
    }
    // A normal message after that is delivered once, to alice only.
    assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@localhost>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: fine\r\n\r\nfine\r\n.\r\n");
    assert!(c.read_reply().starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    let files = suite.wait_for_mail("alice", accepted + 1);
    assert_eq!(files.len(), accepted + 1);
    for f in &files {
        let text = std::fs::read(f).unwrap();
        // What reached the mailbox has one kind of line ending (Maildir stores LF).
        assert!(!text.contains(&b'\r'), "{}", String::from_utf8_lossy(&text));
        if normalize && text.windows(8).any(|w| w == b"smuggled") {
            assert!(text.windows(10).any(|w| w == b"MAIL FROM:"));
        }
    }
    // bob's mail would come through the same queue as alice's: by now it would be there.
    assert!(
        maildir_new(&suite.mailbox("bob")).is_empty(),
        "a smuggled message reached bob"
    );
    let log = suite.log();
    let logged = if normalize {
        "bare LF normalized to CRLF"
    } else {
        "reject: DATA: bare CR or LF in content (554 5.6.0, bare_newline = reject)"
    };
    assert_eq!(
        log.matches(logged).count(),
        3,
        "each case is logged once:\n{log}"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains(logged))
            .all(|l| l.contains("client=127.0.0.1:") && l.contains("handler=iseshlr")),
        "the log names the session:\n{log}"
    );
}

#[test]
fn smuggled_end_of_data_is_refused_under_bare_newline_reject() {
    smuggling_under("reject");
}

#[test]
fn smuggled_end_of_data_stays_content_under_bare_newline_normalize() {
    smuggling_under("normalize");
}

/// A script that writes bare LF line endings, as many do (raw socket: smtplib would fix the
/// line endings itself). Under the default policy its message is accepted and delivered;
/// the log names the queue id.
#[test]
fn bare_lf_message_from_a_script_is_normalized_by_default() {
    let suite = Suite::start(&SuiteOptions::default());
    let script = r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)
f = s.makefile("rb")
def reply():
    while True:
        line = f.readline().decode()
        if line[3:4] != "-":
            return line.strip()
print(reply())
for cmd in ["EHLO script.test", "MAIL FROM:<script@example.org>", "RCPT TO:<alice@localhost>", "DATA"]:
    s.sendall(cmd.encode() + b"\r\n")
    print(reply())
s.sendall(b"Subject: bare\nFrom: script@example.org\n\nline one\n..dotted\nline two\r\n.\r\n")
print(reply())
s.sendall(b"QUIT\r\n")
print(reply())
"#;
    let out = python(script, &[&suite.smtp_port.to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replies: Vec<&str> = stdout.lines().collect();
    assert!(replies[5].starts_with("250 2.0.0"), "{stdout}");
    let qid = replies[5].rsplit(' ').next().unwrap();
    let files = suite.wait_for_mail("alice", 1);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        text.contains("Subject: bare\n") && text.contains("\nline one\n.dotted\nline two\n"),
        "{text}"
    );
    let log = suite.log();
    assert!(
        log.lines()
            .any(|l| l.contains("bare LF normalized to CRLF in 5 line(s)")
                && l.contains(&format!("qid={qid}"))),
        "{log}"
    );
}

#[test]
fn size_limit_at_mail_and_in_data() {
    let suite = Suite::start(&SuiteOptions {
        sections: vec![("inbound", "max_message_size = 10000".into())],
        ..Default::default()
    });
    let (mut c, _) = RawSmtp::connect(suite.smtp_port);
    let ehlo = c.cmd("EHLO client.test");
    assert!(ehlo.contains("SIZE 10000"), "{ehlo}");
    let big = c.cmd("MAIL FROM:<s@example.org> SIZE=20000");
    assert!(big.starts_with("552 5.3.4"), "{big}");
    assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@localhost>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let mut data = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..300 {
        data.extend_from_slice(&[b'x'; 78]);
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(b".\r\n");
    c.send(&data);
    let reply = c.read_reply();
    assert!(reply.starts_with("552"), "{reply}");
    // Nothing stored: no queue entry, no mail.
    assert!(c.cmd("QUIT").starts_with("221"));
    let total: u64 = queue_json(&suite)["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["messages"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 0);
    assert!(maildir_new(&suite.mailbox("alice")).is_empty());
}

fn send_raw_message(port: u16, rcpt: &str, content: &[u8]) -> String {
    let (mut c, _) = RawSmtp::connect(port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(content);
    c.send(b".\r\n");
    let reply = c.read_reply();
    assert!(reply.starts_with("250"), "{reply}");
    c.cmd("QUIT");
    reply.rsplit(' ').next().unwrap().to_string()
}

#[test]
fn hop_limit_malformed_mime_and_conversion_errors() {
    let suite = Suite::start(&SuiteOptions::default());
    // 30 Received headers (plus ours): Dead, "too many hops".
    let mut looping = Vec::new();
    for i in 0..30 {
        looping.extend_from_slice(
            format!(
                "Received: from hop{i}.test by hop{}.test; Mon, 23 Nov 2026 10:00:00 +0000\r\n",
                i + 1
            )
            .as_bytes(),
        );
    }
    looping.extend_from_slice(b"Subject: loop\r\n\r\nround and round\r\n");
    let dead_qid = send_raw_message(suite.smtp_port, "alice@localhost", &looping);

    // Malformed MIME (a multipart whose boundary never appears) is still delivered.
    let malformed = b"Subject: broken mime\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"nope\"\r\n\r\nno parts here\r\n";
    send_raw_message(suite.smtp_port, "bob@localhost", malformed);

    // Binary garbage in the header section cannot be converted: Conversion Error, kept.
    let garbage = b"\x01\x02\x03\x04: \x00\x00\x00\r\n\r\nbody\r\n";
    let bad_qid = send_raw_message(suite.smtp_port, "alice@localhost", garbage);

    let bob = suite.wait_for_mail("bob", 1);
    assert!(std::fs::read_to_string(&bob[0])
        .unwrap()
        .contains("no parts here"));
    let dead = wait_for("dead message listed", Duration::from_secs(15), || {
        let d = parked(&suite, "Dead");
        if d.len() == 1 {
            Ok(d)
        } else {
            Err(format!("{:?}", queue_json(&suite)))
        }
    });
    assert_eq!(dead[0]["qid"], dead_qid.as_str());
    assert!(
        dead[0]["note"].as_str().unwrap().contains("too many hops"),
        "{dead:?}"
    );
    let errors = wait_for("conversion error listed", Duration::from_secs(15), || {
        let e = parked(&suite, "Conversion Error");
        if e.len() == 1 {
            Ok(e)
        } else {
            Err(format!("{:?}", queue_json(&suite)))
        }
    });
    assert_eq!(errors[0]["qid"], bad_qid.as_str());
    assert!(
        maildir_new(&suite.mailbox("alice")).is_empty(),
        "neither alice message may be delivered"
    );
    let text = String::from_utf8(suite.mtacon(&["show", "queue"]).stdout).unwrap();
    assert!(
        text.contains(&dead_qid) && text.contains(&bad_qid),
        "{text}"
    );
}

#[test]
fn stop_and_start_inbound_transport() {
    let suite = Suite::start(&SuiteOptions::default());
    let out = suite.mtacon(&["tell", "smtpmta", "stop", "inbound", "transport"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "connections refused",
        Duration::from_secs(5),
        || match std::net::TcpStream::connect(("127.0.0.1", suite.smtp_port)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let status = suite
        .tasks()
        .unwrap()
        .into_iter()
        .find(|t| t["name"] == "isesctl")
        .unwrap();
    assert!(
        status["detail"].as_str().unwrap().contains("stopped"),
        "{status}"
    );
    let out = suite.mtacon(&["tell", "smtpmta", "start", "inbound", "transport"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_c, greeting) = RawSmtp::connect(suite.smtp_port);
    assert!(greeting.starts_with("220"), "{greeting}");
}

#[test]
fn kill_9_imsgcnv_and_router_under_load_loses_nothing() {
    let mut suite = Suite::start(&SuiteOptions::default());
    let port = suite.smtp_port;
    let started = std::time::Instant::now();
    let load = std::thread::spawn(move || {
        mta_testkit::peers::smtp_load(port, 500, 10, "alice@localhost", 10)
    });
    // Kill the two middle tasks a few times each while the load runs.
    for round in 0..3 {
        for task in ["imsgcnv", "router"] {
            let pid = wait_for(&format!("{task} running"), Duration::from_secs(30), || {
                suite.task_pid(task).ok_or("restarting".to_string())
            });
            suite.remember_pids();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            std::thread::sleep(Duration::from_millis(150 + 100 * round));
        }
    }
    let result = load.join().unwrap();
    let elapsed = started.elapsed();
    let accepted = result.accepted;
    assert!(
        accepted.len() >= 450,
        "too few accepted: {} ({:?})",
        accepted.len(),
        result.errors
    );
    let maildir = suite.mailbox("alice");
    let ids = wait_for(
        "every accepted message delivered",
        Duration::from_secs(60),
        || {
            let ids = mta_testkit::message_ids(&maildir_new(&maildir));
            let missing = accepted.iter().filter(|m| !ids.contains_key(*m)).count();
            if missing == 0 {
                Ok(ids)
            } else {
                Err(format!("{missing} of {} missing", accepted.len()))
            }
        },
    );
    let duplicates: usize = ids.values().map(|n| n - 1).sum();
    eprintln!(
        "kill -9 under load: accepted {} in {:.1}s ({:.0} msg/s), delivered {} unique, {} duplicates, lost 0",
        accepted.len(),
        elapsed.as_secs_f64(),
        accepted.len() as f64 / elapsed.as_secs_f64(),
        ids.len(),
        duplicates
    );
    let log = suite.log();
    assert!(log.contains("task exited unexpectedly"));
    // How the killed tasks' claims came back: at their exit, or (a claim answered after
    // its task died) when the answer could not be delivered.
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    eprintln!(
        "claims returned: {} times at a task's exit, {} times as undeliverable answers",
        count("claims of the exited task returned"),
        count("claims answered after their task had gone")
    );
}
