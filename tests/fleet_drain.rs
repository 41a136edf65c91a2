//! Draining a node (issue 27, point 5): `tell smtpmta drain to node-b` on node A while
//! clients keep sending to B and C — three suites on loopback relaying to one sink, in a
//! fleet on a real Redis (the hand-off is SMTP between peers; Redis only tells A where
//! node-b's SMTP listener is, from B's heartbeat).
//!
//! What a user sees: A answers new connections with 421; every message A accepted
//! arrives at the sink (by Message-ID); A's queue ends empty; `show message` on A names
//! B's queue ID, and B's record keeps A's arrival time; a DSN written by B after a
//! permanent failure carries the ENVID and ORCPT the client gave A; a client that is not
//! a fleet peer cannot use the hand-off parameter; `drain stop` opens A again; a node that
//! is unknown or DOWN is refused by name.

use mta_testkit::peers::{smtp_load, tail, Sink};
use mta_testkit::redis::Redis;
use mta_testkit::{wait_for, RawSmtp, Suite, SuiteOptions};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const SECRET: &str = "fleet-drain-test-secret";

fn node(name: &str, sink: &Sink, secret: &Path, redis: &Redis) -> Suite {
    Suite::start(&SuiteOptions {
        sections: vec![
            ("cluster", format!("redis = \"{}\"", redis.url())),
            ("cluster", "heartbeat = \"1s\"".into()),
            (
                "outbound",
                format!("relay_host = \"127.0.0.1:{}\"", sink.port),
            ),
            ("outbound", "connect_timeout = \"2s\"".into()),
            ("cluster", format!("node = \"{name}\"")),
            (
                "cluster",
                format!("peer_password_file = \"{}\"", secret.display()),
            ),
        ],
        ..SuiteOptions::default()
    })
}

fn console(suite: &Suite, args: &[&str]) -> (bool, String) {
    let out = suite.mtacon(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn ok(suite: &Suite, args: &[&str]) -> String {
    let (ok, text) = console(suite, args);
    assert!(ok, "mtacon {args:?}: {text}");
    text
}

fn json(suite: &Suite, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(suite, &all)).unwrap()
}

/// One message over SMTP with the given MAIL and RCPT parameters; its queue ID.
fn send(port: u16, mail_params: &str, rcpt: &str, rcpt_params: &str, tag: &str) -> String {
    let (mut c, greeting) = RawSmtp::connect(port);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let r = c.cmd(&format!("MAIL FROM:<sender@client.test> {mail_params}"));
    assert!(r.starts_with("250"), "MAIL: {r}");
    let r = c.cmd(&format!("RCPT TO:<{rcpt}> {rcpt_params}"));
    assert!(r.starts_with("250"), "RCPT: {r}");
    assert!(c.cmd("DATA").starts_with("354"));
    let r = c.cmd(&format!(
        "From: sender@client.test\r\nTo: {rcpt}\r\nSubject: {tag}\r\nMessage-ID: <{tag}@client.test>\r\n\r\n{tag}\r\n."
    ));
    assert!(r.starts_with("250"), "DATA: {r}");
    c.cmd("QUIT");
    r.rsplit(' ').next().unwrap().trim().to_string()
}

fn queued(suite: &Suite) -> u64 {
    json(suite, &["show", "queue"])["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["messages"].as_u64().unwrap())
        .sum()
}

#[test]
fn drain_hands_the_queue_to_a_peer_under_load() {
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("peer.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let sink = Sink::start(&[]);
    let redis = Redis::start();
    let a = node("node-a", &sink, &secret, &redis);
    let b = node("node-b", &sink, &secret, &redis);
    let mut c = node("node-c", &sink, &secret, &redis);

    // A keeps what it accepts: its outbound transport is stopped.
    ok(&a, &["tell", "smtpmta", "stop", "outbound", "transport"]);
    let on_a = smtp_load(a.smtp_port, 150, 4, "user@far.test", 25);
    assert_eq!(on_a.accepted.len(), 150, "{:?}", on_a.errors);
    let dsn_qid = send(
        a.smtp_port,
        "RET=HDRS ENVID=drain-env-1",
        "reject-drain@far.test",
        "NOTIFY=FAILURE ORCPT=rfc822;Original-Drain@far.test",
        "drain-dsn",
    );
    let tracked: Vec<String> = (0..3)
        .map(|i| {
            // The first asks for a success report: B writes it, A must not.
            let notify = if i == 0 { "NOTIFY=SUCCESS,FAILURE" } else { "" };
            send(
                a.smtp_port,
                "",
                "user@far.test",
                notify,
                &format!("drain-tracked-{i}"),
            )
        })
        .collect();
    wait_for(
        "A's queue holds 154 messages",
        Duration::from_secs(60),
        || match queued(&a) {
            154 => Ok(()),
            n => Err(format!("{n}")),
        },
    );

    // Clients go on sending to B and C while A drains to B.
    let (b_port, c_port) = (b.smtp_port, c.smtp_port);
    let on_b = std::thread::spawn(move || smtp_load(b_port, 100, 2, "user@far.test", 20));
    let on_c = std::thread::spawn(move || smtp_load(c_port, 100, 2, "user@far.test", 20));
    // By name: A finds node-b's SMTP listener in its heartbeat.
    wait_for(
        "node-b UP in A's show fleet",
        Duration::from_secs(20),
        || {
            let f = ok(&a, &["show", "fleet"]);
            match f
                .lines()
                .any(|l| l.starts_with("node-b") && l.contains(" UP "))
            {
                true => Ok(()),
                false => Err(f),
            }
        },
    );
    let unknown = console(&a, &["tell", "smtpmta", "drain", "to", "node-x"]);
    assert!(
        !unknown.0 && unknown.1.contains("no node of the fleet"),
        "{}",
        unknown.1
    );
    let started = ok(&a, &["tell", "smtpmta", "drain", "to", "node-b"]);
    assert!(
        started.contains(&format!("draining to node-b (127.0.0.1:{})", b.smtp_port)),
        "{started}"
    );
    let (_, greeting) = RawSmtp::connect(a.smtp_port);
    assert!(
        greeting.starts_with("421 4.3.2"),
        "A's greeting while draining: {greeting}"
    );
    let again = console(&a, &["tell", "smtpmta", "drain", "to", "127.0.0.1:9"]);
    assert!(!again.0 && again.1.contains("is on"), "{}", again.1);

    let status = wait_for("the drain finished", Duration::from_secs(120), || {
        let s = ok(&a, &["tell", "smtpmta", "drain", "status"]);
        if s.contains("finished") && s.contains("left: 0") {
            Ok(s)
        } else {
            Err(format!("{s}\nA's log:\n{}", tail(&a.log(), 15)))
        }
    });
    eprintln!("drain status after a finished drain:\n{status}");
    assert!(status.contains("sent: 154"), "{status}");
    assert!(status.contains("node state: DRAINING"), "{status}");
    let on_b = on_b.join().unwrap();
    let on_c = on_c.join().unwrap();
    assert_eq!(on_b.accepted.len(), 100, "{:?}", on_b.errors);
    assert_eq!(on_c.accepted.len(), 100, "{:?}", on_c.errors);

    // Everything arrives once at the sink: A's 153 (one was refused there) and B's and
    // C's own, plus two reports from B: the failure of A's refused recipient, and the
    // success report (relayed) one of A's messages asked for.
    sink.wait_count(&b, 150 + 3 + 200 + 2, Duration::from_secs(120));
    let ids = sink.message_ids();
    for id in on_a
        .accepted
        .iter()
        .chain(&on_b.accepted)
        .chain(&on_c.accepted)
    {
        assert_eq!(ids.get(id), Some(&1), "{id} at the sink");
    }
    wait_for(
        "A's queue is empty",
        Duration::from_secs(30),
        || match queued(&a) {
            0 => Ok(()),
            n => Err(format!("{n} left")),
        },
    );

    // Tracking: A names B's queue ID; B's record kept A's arrival time.
    for qid in &tracked {
        let on_a = json(&a, &["show", "message", qid]);
        let note = on_a["history"]["note"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let b_qid = note
            .strip_prefix("handed off to node-b as ")
            .unwrap_or_else(|| panic!("show message {qid} on A: {on_a}"));
        let on_b = wait_for(
            "B's history of the hand-off",
            Duration::from_secs(30),
            || {
                let v = json(&b, &["show", "message", b_qid]);
                let done = v["history"]["state"] == "Done";
                if done {
                    Ok(v)
                } else {
                    Err(v.to_string())
                }
            },
        );
        assert_eq!(
            on_b["history"]["received_at"], on_a["history"]["received_at"],
            "arrival time on B ({b_qid}) and A ({qid})"
        );
        let text = ok(&a, &["show", "message", qid]);
        assert!(text.contains(&format!("as {b_qid}")), "{text}");
    }
    // The report B wrote carries what the client told A.
    let reports: Vec<String> = sink
        .messages()
        .into_iter()
        .filter(|(env, _)| env["mail_from"] == "")
        .map(|(_, content)| String::from_utf8_lossy(&content).into_owned())
        .collect();
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert!(
        reports.iter().any(|r| r.contains("Action: relayed")),
        "{reports:?}"
    );
    let report = reports
        .iter()
        .find(|r| r.contains("Action: failed"))
        .expect("a failure report");
    assert!(
        report.contains("Original-Envelope-Id: drain-env-1"),
        "{report}"
    );
    assert!(
        report.contains("Original-Recipient: rfc822; Original-Drain@far.test"),
        "{report}"
    );
    let on_a = json(&a, &["show", "message", &dsn_qid]);
    assert!(
        on_a["history"]["note"]
            .as_str()
            .is_some_and(|n| n.starts_with("handed off to")),
        "{on_a}"
    );

    // The hand-off parameter is for authenticated fleet peers only.
    let (mut client, _) = RawSmtp::connect(c.smtp_port);
    assert!(client.cmd("EHLO intruder.test").starts_with("250"));
    let r = client.cmd("MAIL FROM:<x@client.test> XFLEET=1,node-a,0ABC,1");
    assert!(r.starts_with("555 5.7.1"), "{r}");
    client.cmd("QUIT");

    let stopped = ok(&a, &["tell", "smtpmta", "drain", "stop"]);
    assert!(stopped.contains("stopped"), "{stopped}");
    println!("{}", ok(&a, &["show", "message", &tracked[0]]));
    let (_, greeting) = RawSmtp::connect(a.smtp_port);
    assert!(
        greeting.starts_with("220"),
        "A after drain stop: {greeting}"
    );

    // A node that died shows DOWN, and cannot be drained to by name.
    c.kill9_all();
    let shown = wait_for("node-c DOWN in show fleet", Duration::from_secs(20), || {
        let t = ok(&a, &["show", "fleet"]);
        match t
            .lines()
            .any(|l| l.starts_with("node-c") && l.contains("DOWN"))
        {
            true => Ok(t),
            false => Err(t),
        }
    });
    eprintln!("show fleet with node-c killed:\n{shown}");
    let down = console(&a, &["tell", "smtpmta", "drain", "to", "node-c"]);
    assert!(
        !down.0 && down.1.contains("node node-c is DOWN"),
        "{}",
        down.1
    );
}
