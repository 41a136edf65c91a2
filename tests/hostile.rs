//! Hostile input: smuggling, open-relay tricks (our own battery and nmap's script),
//! protocol abuse. Nothing may be relayed, nothing may crash, every reply code is right.

use mta_testkit::{maildir_new, wait_for, RawSmtp, Suite, SuiteOptions};
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

fn queued_total(suite: &Suite) -> u64 {
    let out = suite.mtacon(&["--json", "show", "queue"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["messages"].as_u64().unwrap())
        .sum()
}

fn untrusted_suite() -> Suite {
    // Only 10.0.0.0/8 may relay: every loopback client is an outsider.
    let mut suite = Suite::prepare(&SuiteOptions::default());
    let text = std::fs::read_to_string(&suite.config)
        .unwrap()
        .replace("127.0.0.0/8", "10.0.0.0/8");
    std::fs::write(&suite.config, text).unwrap();
    suite.launch();
    suite
}

fn assert_alive(suite: &Suite) {
    let (mut c, greeting) = RawSmtp::connect(suite.smtp_port);
    assert!(
        greeting.starts_with("220"),
        "not serving after abuse: {greeting}"
    );
    assert!(c.cmd("NOOP").starts_with("250"));
    let tasks = suite.tasks().unwrap();
    let isesctl = tasks.iter().find(|t| t["name"] == "isesctl").unwrap();
    assert_eq!(isesctl["restarts"], 0, "isesctl crashed: {isesctl}");
}

/// Every fake end of DATA under `[inbound] bare_newline = <policy>`: a bare CR is refused
/// under both; a bare LF is refused under `reject` and becomes content of the one message
/// under `normalize`. Nothing is ever a second message.
fn end_of_data_variants_under(policy: &str) {
    let suite = Suite::start(&SuiteOptions {
        sections: vec![("inbound", format!("bare_newline = \"{policy}\""))],
        ..Default::default()
    });
    let variants: [&[u8]; 8] = [
        b"\n.\n",
        b"\n.\r\n",
        b"\r\n.\r",
        b"\r.\r\n",
        b"\r\n.\n",
        b"\r.\r",
        b"\r\n.\0\r\n",
        b"\r\n\0.\r\n",
    ];
    let (mut c, _) = RawSmtp::connect(suite.smtp_port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let mut accepted = 0;
    for v in variants {
        assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@localhost>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        let mut data = b"Subject: smuggle\r\n\r\nbefore".to_vec();
        data.extend_from_slice(v);
        data.extend_from_slice(
            b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\nsmuggled\r\n.\r\n",
        );
        c.send(&data);
        let reply = c.read_reply();
        let bare_lf = (0..v.len()).any(|i| v[i] == b'\n' && (i == 0 || v[i - 1] != b'\r'));
        let bare_cr = (0..v.len()).any(|i| v[i] == b'\r' && v.get(i + 1) != Some(&b'\n'));
        if bare_cr || (bare_lf && policy == "reject") {
            assert!(
                reply.starts_with("554 5.6.0"),
                "variant {v:?} with a bare CR/LF was accepted: {reply}"
            );
        } else if bare_lf {
            assert!(
                reply.starts_with("250"),
                "variant {v:?} was not normalized: {reply}"
            );
            accepted += 1;
        } else if reply.starts_with("250") {
            accepted += 1;
        }
        // Exactly one reply: the next command gets its own.
        let noop = c.cmd("NOOP");
        assert!(noop.starts_with("250"), "out of sync after {v:?}: {noop}");
    }
    // Whatever was accepted went to alice as one message each; bob got nothing.
    if accepted > 0 {
        wait_for(
            "accepted variants delivered",
            Duration::from_secs(15),
            || {
                let n = maildir_new(&suite.data_dir().join("mail/alice")).len();
                if n == accepted {
                    Ok(())
                } else {
                    Err(format!("{n} of {accepted}"))
                }
            },
        );
    }
    // A smuggled message for bob would have taken the same queues as alice's.
    assert!(
        maildir_new(&suite.data_dir().join("mail/bob")).is_empty(),
        "a smuggled message was delivered"
    );
    assert_eq!(
        maildir_new(&suite.data_dir().join("mail/alice")).len(),
        accepted
    );
    if policy == "normalize" {
        // \n.\n, \n.\r\n and \r\n.\n, and the two NUL variants.
        assert_eq!(accepted, 5);
    }
}

#[test]
fn every_end_of_data_variant_is_smuggling_proof_under_reject() {
    end_of_data_variants_under("reject");
}

#[test]
fn every_end_of_data_variant_is_smuggling_proof_under_normalize() {
    end_of_data_variants_under("normalize");
}

#[test]
fn open_relay_battery_from_an_untrusted_client() {
    let suite = untrusted_suite();
    let (mut c, _) = RawSmtp::connect_from(Some(Ipv4Addr::new(127, 0, 0, 2)), suite.smtp_port);
    assert!(c.cmd("EHLO outside.test").starts_with("250"));
    let tricks = [
        "<user%remote.test@localhost>",
        "<@localhost:user@remote.test>",
        "<@localhost,@other.test:user@remote.test>",
        "<remote.test!user@localhost>",
        "<\"user@remote.test\"@localhost>",
        "<user@remote.test@localhost>",
        "<user@[127.0.0.9]>",
        "<user@[IPv6:::1]>",
        "<USER@REMOTE.TEST>",
        "<user@remote.test.>",
        "<user@Remote.Test>",
        "<user%remote.test@LOCALHOST.>",
        "user@remote.test",
    ];
    for rcpt in tricks {
        assert!(c.cmd("MAIL FROM:<s@outside.test>").starts_with("250"));
        let reply = c.cmd(&format!("RCPT TO:{rcpt}"));
        assert!(
            reply.starts_with('5'),
            "relay trick {rcpt} was not refused: {reply}"
        );
        assert!(c.cmd("RSET").starts_with("250"));
    }
    assert_eq!(queued_total(&suite), 0, "something entered the queue");
}

#[test]
fn nmap_smtp_open_relay_script_finds_no_open_relay() {
    if Command::new("nmap").arg("--version").output().is_err() {
        panic!("nmap is not installed (.ci/run installs it)");
    }
    let suite = untrusted_suite();
    let out = Command::new("timeout")
        .args([
            "120",
            "nmap",
            "-Pn",
            "-n",
            "--script",
            "+smtp-open-relay",
            "-p",
            &suite.smtp_port.to_string(),
            "127.0.0.1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("doesn't seem to be an open relay"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(queued_total(&suite), 0);
    assert_alive(&suite);
}

#[test]
fn protocol_abuse_gets_the_right_replies_and_crashes_nothing() {
    let suite = Suite::start(&SuiteOptions {
        sections: vec![
            ("inbound", "max_message_size = 5000".into()),
            ("inbound", "max_recipients = 50".into()),
        ],
        ..Default::default()
    });
    // Pipelined garbage: 500s, then disconnected after too many errors.
    let (mut c, _) = RawSmtp::connect(suite.smtp_port);
    let mut garbage = Vec::new();
    for i in 0..30 {
        garbage.extend_from_slice(format!("XYZZY {i}\r\n").as_bytes());
    }
    c.send(&garbage);
    let mut codes = Vec::new();
    loop {
        let r = c.read_reply();
        if r.is_empty() {
            break;
        }
        codes.push(r[..3].to_string());
    }
    assert!(
        codes.iter().filter(|c| *c == "500").count() >= 5,
        "{codes:?}"
    );
    assert_eq!(codes.last().map(String::as_str), Some("421"), "{codes:?}");

    // Many RCPTs: 452 past the limit, the session goes on.
    let (mut c, _) = RawSmtp::connect(suite.smtp_port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    let mut rcpts = Vec::new();
    for _ in 0..10_000 {
        rcpts.extend_from_slice(b"RCPT TO:<alice@localhost>\r\n");
    }
    let writer = {
        let mut w = c.try_clone_stream();
        std::thread::spawn(move || {
            use std::io::Write;
            w.write_all(&rcpts).unwrap();
        })
    };
    let mut ok = 0;
    let mut too_many = 0;
    for _ in 0..10_000 {
        let r = c.read_reply();
        if r.starts_with("250") {
            ok += 1;
        } else if r.starts_with("452 4.5.3") {
            too_many += 1;
        } else {
            panic!("unexpected reply to RCPT: {r}");
        }
    }
    writer.join().unwrap();
    assert_eq!((ok, too_many), (50, 9950));
    assert!(c.cmd("RSET").starts_with("250"));

    // A 1 MB command line: 500 5.5.2, nothing buffered, the session survives.
    let mut long = b"MAIL FROM:<".to_vec();
    long.extend(std::iter::repeat_n(b'a', 1 << 20));
    long.extend_from_slice(b"@example.org>\r\n");
    c.send(&long);
    let r = c.read_reply();
    assert!(r.starts_with("500 5.5.2"), "{r}");
    assert!(c.cmd("NOOP").starts_with("250"));

    // NUL bytes in a command.
    c.send(b"MAIL FROM:<a\0b@example.org>\r\n");
    assert!(c.read_reply().starts_with('5'));
    // Not UTF-8 in an SMTPUTF8 address.
    c.send(b"MAIL FROM:<\xff\xfe@example.org> SMTPUTF8\r\n");
    assert!(c.read_reply().starts_with('5'));
    assert!(c.cmd("RSET").starts_with("250"));

    // Exactly the maximum size is accepted, one byte more is not.
    for (extra, want) in [(0usize, "250"), (1, "552")] {
        assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<bob@localhost>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        let header = b"Subject: exact\r\n\r\n".to_vec();
        let mut content = header.clone();
        while content.len() + 80 <= 5000 {
            content.extend_from_slice(&[b'y'; 78]);
            content.extend_from_slice(b"\r\n");
        }
        let fill = 5000 - content.len() - 2 + extra;
        content.extend(std::iter::repeat_n(b'z', fill));
        content.extend_from_slice(b"\r\n");
        assert_eq!(content.len(), 5000 + extra);
        c.send(&content);
        c.send(b".\r\n");
        let r = c.read_reply();
        assert!(r.starts_with(want), "size {}: {r}", content.len());
    }

    // Header-only and body-only messages are delivered.
    for content in [
        &b"Subject: only headers\r\n"[..],
        &b"just a body line, no headers at all\r\n"[..],
    ] {
        assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<bob@localhost>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(content);
        c.send(b".\r\n");
        assert!(c.read_reply().starts_with("250"));
    }
    wait_for("bob's three messages", Duration::from_secs(15), || {
        let n = maildir_new(&suite.data_dir().join("mail/bob")).len();
        if n == 3 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    });

    // BDAT with a size that is not a number: the session cannot resync and is closed.
    let (mut c, _) = RawSmtp::connect(suite.smtp_port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<bob@localhost>").starts_with("250"));
    let r = c.cmd("BDAT lots");
    assert!(r.starts_with("501"), "{r}");
    // Commands after DATA without waiting for 354 become content, not commands.
    let (mut c, _) = RawSmtp::connect(suite.smtp_port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    c.send(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\nRCPT TO:<alice@localhost>\r\n.\r\n");
    let replies: Vec<String> = (0..4).map(|_| c.read_reply()).collect();
    assert!(replies[3].starts_with("250"), "{replies:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        maildir_new(&suite.data_dir().join("mail/alice")).is_empty(),
        "a command inside DATA was obeyed"
    );

    assert_alive(&suite);
}

#[test]
fn mime_bombs_are_delivered_without_crashing_or_exhausting_memory() {
    let suite = Suite::start(&SuiteOptions::default());
    // 10,000 parts.
    let mut wide = b"Subject: wide\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n".to_vec();
    for i in 0..10_000 {
        wide.extend_from_slice(
            format!("--b\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n").as_bytes(),
        );
    }
    wide.extend_from_slice(b"--b--\r\n");
    // 500 levels deep.
    let mut deep = b"Subject: deep\r\nMIME-Version: 1.0\r\n".to_vec();
    for i in 0..500 {
        deep.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=\"d{i}\"\r\n\r\n--d{i}\r\n")
                .as_bytes(),
        );
    }
    deep.extend_from_slice(b"Content-Type: text/plain\r\n\r\nbottom\r\n");
    for i in (0..500).rev() {
        deep.extend_from_slice(format!("--d{i}--\r\n").as_bytes());
    }
    for content in [&wide, &deep] {
        let (mut c, _) = RawSmtp::connect(suite.smtp_port);
        assert!(c.cmd("EHLO client.test").starts_with("250"));
        assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<bob@localhost>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(content);
        c.send(b".\r\n");
        let r = c.read_reply();
        assert!(r.starts_with("250"), "{r}");
    }
    wait_for("both delivered", Duration::from_secs(30), || {
        let n = maildir_new(&suite.data_dir().join("mail/bob")).len();
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    });
    for task in ["isesctl", "imsgcnv", "router"] {
        let row = suite
            .tasks()
            .unwrap()
            .into_iter()
            .find(|t| t["name"] == task)
            .unwrap();
        assert_eq!(row["restarts"], 0, "{row}");
    }
    // Memory stayed bounded: no task grew past 256 MiB resident.
    for row in suite.tasks().unwrap() {
        if let Some(pid) = row["pid"].as_u64() {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let rss_kb: u64 = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            assert!(rss_kb < 256 * 1024, "{} uses {rss_kb} KiB", row["name"]);
        }
    }
}
