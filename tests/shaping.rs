//! Traffic shaping per destination site (`[[outbound.shaping]]`), end to end: the suite
//! delivers through real DNS (dnsmasq) to the Python sink, which records every connection
//! (open and close times, the address it came to) and refuses with `421 4.7.0` above a
//! concurrency it is given, so a broken limit shows as a refusal as well as in the times.
//!
//! Two "sites" share the sink's port on two loopback addresses: MX hosts on 127.0.0.1 and
//! 127.0.0.2. The rate test runs at "120/10s" rather than the issue's "120/min": the same
//! limit per period (120, burst 12) over a period six times shorter, so 400 messages take
//! ~33 s instead of ~200 s of CI time, and the assertion is the rule's own promise: no sliding 10-second
//! window holds more than 120 deliveries plus the burst (12) at the sink.
//! Needs: python3 (tests/support/smtp_sink.py, smtp_load.py) and /usr/sbin/dnsmasq.

use mta_testkit::peers::{smtp_load, tail, Dns, Sink};
use mta_testkit::{wait_for, Suite, SuiteOptions};
use std::time::{Duration, Instant};

/// One connection as the sink logged it.
#[derive(Debug)]
struct Conn {
    local: String,
    open: f64,
    close: f64,
    refused: bool,
}

fn conns(path: &std::path::Path) -> Vec<Conn> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Conn {
                local: v["local"].as_str().unwrap().to_string(),
                open: v["open"].as_f64().unwrap(),
                close: v["close"].as_f64().unwrap(),
                refused: v["refused"].as_bool().unwrap(),
            }
        })
        .collect()
}

/// The most connections to `local` open at once.
fn max_concurrent(conns: &[Conn], local: &str) -> usize {
    mta_testkit::most_at_once(
        conns
            .iter()
            .filter(|c| c.local == local && !c.refused)
            .map(|c| (c.open, c.close)),
    )
}

/// When the transactions of messages to recipients containing `needle` started (their
/// MAIL FROM at the sink): the rate limits messages started, and a start is not moved by
/// another connection's slower DATA.
fn arrivals(sink: &Sink, needle: &str) -> Vec<f64> {
    let mut at: Vec<f64> = sink
        .messages()
        .iter()
        .filter(|(env, _)| env["rcpts"].to_string().contains(needle))
        .map(|(env, _)| env["mail_at"].as_f64().unwrap())
        .collect();
    at.sort_by(|a, b| a.partial_cmp(b).unwrap());
    at
}

fn suite_with(dns: &Dns, sink: &Sink, extra: &[&str]) -> Suite {
    let mut sections: Vec<(&'static str, String)> = vec![
        ("outbound", format!("port = {}", sink.port)),
        ("outbound", "connect_timeout = \"2s\"".into()),
        ("outbound", "command_timeout = \"20s\"".into()),
        ("dns", "timeout = \"1s\"".into()),
        ("dns", format!("nameservers = [\"127.0.0.1:{}\"]", dns.port)),
    ];
    for line in extra {
        sections.push(("outbound", line.to_string()));
    }
    Suite::start(&SuiteOptions {
        sections,
        ..SuiteOptions::default()
    })
}

fn dns_for(records: &[&str]) -> Dns {
    Dns::start_with(&records.iter().map(|r| r.to_string()).collect::<Vec<_>>())
}

fn router_show(suite: &Suite) -> String {
    let out = suite.mtacon(&["tell", "router", "show"]);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn connection_limit_and_message_rate_hold_and_another_site_is_not_slowed() {
    let dns = dns_for(&[
        "--mx-host=slow.test,mx.slow.test,10",
        "--host-record=mx.slow.test,127.0.0.1",
        "--mx-host=fast.test,mx.fast.test,10",
        "--host-record=mx.fast.test,127.0.0.2",
    ]);
    let log_dir = tempfile::tempdir().unwrap();
    let conn_log = log_dir.path().join("conns.jsonl");
    let conn_log_arg = conn_log.to_str().unwrap();
    let sink = Sink::start(&[
        "--also-bind",
        "127.0.0.2",
        "--max-concurrent",
        "3",
        "--conn-log",
        conn_log_arg,
    ]);
    let suite = suite_with(
        &dns,
        &sink,
        &[
            "max_messages_per_list = 20",
            r#"shaping = [{ match = ["slow.test"], connection_limit = 3, max_message_rate = "120/10s" }]"#,
        ],
    );
    let sent = Instant::now();
    let slow = smtp_load(suite.smtp_port, 400, 4, "user@slow.test", 50);
    assert_eq!(slow.accepted.len(), 400, "{:?}", slow.errors);
    let fast = smtp_load(suite.smtp_port, 60, 2, "user@fast.test", 30);
    assert_eq!(fast.accepted.len(), 60, "{:?}", fast.errors);
    // While slow.test is held to its rate, the console says so.
    let shown = wait_for(
        "slow.test THROTTLED in tell router show",
        Duration::from_secs(30),
        || {
            let text = router_show(&suite);
            if text
                .lines()
                .any(|l| l.starts_with("slow.test") && l.contains("THROTTLED"))
            {
                Ok(text)
            } else {
                Err(text)
            }
        },
    );
    eprintln!("tell router show while throttled:\n{shown}");
    assert!(shown.contains("mx.slow.test"), "{shown}");
    wait_for(
        "400 + 60 messages at the sink",
        Duration::from_secs(120),
        || {
            let (slow, fast) = (
                arrivals(&sink, "slow.test").len(),
                arrivals(&sink, "fast.test").len(),
            );
            if slow >= 400 && fast >= 60 {
                Ok(())
            } else {
                Err(format!("{slow} + {fast}; {}", tail(&suite.log(), 10)))
            }
        },
    );
    let took = sent.elapsed();
    // Each message once: a record claimed twice (a store lease ended by a commit's late
    // flush) showed up here as duplicates.
    let twice: Vec<_> = sink
        .message_ids()
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    let slow_at = arrivals(&sink, "slow.test");
    let fast_at = arrivals(&sink, "fast.test");
    let n = slow_at.len();
    // The rate: no 10-second window (the rule's period) over 120 plus the burst (12). A GCRA
    // admits at most that in any period; with a steady backlog the sends keep to 120, but
    // the sink sees arrival times, which move with each delivery's own latency: on a busy
    // machine a delayed delivery and the next ones arrive together (123 seen in CI-like
    // runs). A site without the limit would take all 400 in a second or two.
    let most = slow_at
        .iter()
        .enumerate()
        .map(|(i, t)| slow_at[i..].iter().take_while(|u| **u < t + 10.0).count())
        .max()
        .unwrap();
    assert!(
        most <= 120 + 12,
        "{most} deliveries to slow.test within 10 s"
    );
    let span = slow_at[n - 1] - slow_at[0];
    assert!(
        span >= 30.0,
        "{n} messages at 120/10s took only {span:.1}s: not shaped"
    );
    // The connection limit: never more than 3 at once, and the sink never had to refuse.
    let conns = conns(&conn_log);
    assert!(max_concurrent(&conns, "127.0.0.1") <= 3, "{conns:?}");
    assert!(
        !conns.iter().any(|c| c.refused),
        "the sink refused a connection over 3"
    );
    // The other site is not slowed: all of it is in long before slow.test finishes.
    let fast_done = fast_at[fast_at.len() - 1];
    assert!(
        fast_done + 10.0 < slow_at[n - 1],
        "fast.test finished at {fast_done} and slow.test at {}",
        slow_at[n - 1]
    );
    // Every attempt's line names the site and the rule.
    let log = suite.log();
    let line = log
        .lines()
        .find(|l| l.contains("to=<user@slow.test>") && l.contains("status=sent"))
        .unwrap_or_else(|| panic!("{}", tail(&log, 30)));
    assert!(line.contains("site=mx.slow.test rule=slow.test"), "{line}");
    let line = log
        .lines()
        .find(|l| l.contains("to=<user@fast.test>") && l.contains("status=sent"))
        .unwrap();
    assert!(line.contains("site=mx.fast.test rule=default"), "{line}");
    eprintln!(
        "{} messages in {took:?}; slow.test: {n} over {span:.1}s, most in 10 s: {most}",
        n + fast_at.len()
    );
}

#[test]
fn mx_rules_and_implicit_sites_share_one_limit() {
    let dns = dns_for(&[
        "--mx-host=a1.test,mx.shared.test,10",
        "--mx-host=a2.test,mx.shared.test,10",
        "--host-record=mx.shared.test,127.0.0.1",
        "--mx-host=b1.test,mx.other.test,10",
        "--mx-host=b2.test,mx.other.test,10",
        "--host-record=mx.other.test,127.0.0.2",
    ]);
    let log_dir = tempfile::tempdir().unwrap();
    let conn_log = log_dir.path().join("conns.jsonl");
    let sink = Sink::start(&[
        "--also-bind",
        "127.0.0.2",
        "--conn-log",
        conn_log.to_str().unwrap(),
    ]);
    // mx.shared.test by an mx: rule (1 connection); mx.other.test by the default rule
    // (2), which no rule names: its two domains are one site all the same.
    let suite = suite_with(
        &dns,
        &sink,
        &[
            "max_messages_per_list = 3",
            r#"shaping = [{ match = ["mx:*.shared.test"], connection_limit = 1, name = "shared" }, { connection_limit = 2 }]"#,
        ],
    );
    for (rcpt, n) in [
        ("u@a1.test", 15),
        ("u@a2.test", 15),
        ("u@b1.test", 15),
        ("u@b2.test", 15),
    ] {
        let r = smtp_load(suite.smtp_port, n, 2, rcpt, 15);
        assert_eq!(r.accepted.len(), n, "{:?}", r.errors);
    }
    sink.wait_count(&suite, 60, Duration::from_secs(60));
    let conns = conns(&conn_log);
    assert_eq!(max_concurrent(&conns, "127.0.0.1"), 1, "{conns:?}");
    assert!(max_concurrent(&conns, "127.0.0.2") <= 2, "{conns:?}");
    let log = suite.log();
    for (rcpt, tag) in [
        ("u@a1.test", "site=mx.shared.test rule=shared"),
        ("u@a2.test", "site=mx.shared.test rule=shared"),
        ("u@b1.test", "site=mx.other.test rule=default"),
        ("u@b2.test", "site=mx.other.test rule=default"),
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("to=<{rcpt}>")) && l.contains("status=sent"))
            .unwrap_or_else(|| panic!("no sent line for {rcpt}"));
        assert!(line.contains(tag), "{line}");
    }
    let shaping = String::from_utf8_lossy(&suite.mtacon(&["show", "shaping"]).stdout).into_owned();
    assert!(
        shaping.contains("mx.shared.test") && shaping.contains("shared"),
        "{shaping}"
    );
}

#[test]
fn a_rate_limit_reply_suspends_the_site_which_resumes_by_itself() {
    let dns = dns_for(&[
        "--mx-host=sus.test,mx.sus.test,10",
        "--host-record=mx.sus.test,127.0.0.1",
    ]);
    let sink = Sink::start(&["--greet-421-first", "1"]);
    // A deferral would wait an hour: delivery within seconds means the suspension's end
    // made the messages due, and no attempt was counted against them.
    let suite = suite_with(
        &dns,
        &sink,
        &[
            r#"retry = ["1h"]"#,
            r#"shaping = [{ match = ["sus.test"], on_reply = [{ match = "^4[25]1 4\\.7\\.", action = "suspend", for = "6s" }] }]"#,
        ],
    );
    let r = smtp_load(suite.smtp_port, 3, 1, "user@sus.test", 3);
    assert_eq!(r.accepted.len(), 3, "{:?}", r.errors);
    let shown = wait_for(
        "sus.test SUSPENDED in tell router show",
        Duration::from_secs(20),
        || {
            let text = router_show(&suite);
            if text
                .lines()
                .any(|l| l.starts_with("sus.test") && l.contains("SUSPENDED"))
            {
                Ok(text)
            } else {
                Err(text)
            }
        },
    );
    eprintln!("tell router show while suspended:\n{shown}");
    assert!(shown.contains("by rule sus.test"), "{shown}");
    let suspended_at = Instant::now();
    assert_eq!(sink.count(), 0);
    sink.wait_count(&suite, 3, Duration::from_secs(30));
    assert!(
        suspended_at.elapsed() >= Duration::from_secs(2),
        "delivered before the suspension ended"
    );
    let log = suite.log();
    assert!(
        log.contains("site mx.sus.test suspended for 6s by rule sus.test"),
        "{}",
        tail(&log, 30)
    );
    assert!(!log.contains("status=bounced"), "{}", tail(&log, 30));
}

#[test]
fn operator_suspend_and_resume_survive_a_restart() {
    let dns = dns_for(&[
        "--mx-host=op.test,mx.op.test,10",
        "--host-record=mx.op.test,127.0.0.1",
    ]);
    let sink = Sink::start(&[]);
    let mut suite = suite_with(&dns, &sink, &[]);
    let out = suite.mtacon(&["tell", "router", "suspend", "op.test", "for", "1h"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("op.test suspended"),
        "{out:?}"
    );
    let r = smtp_load(suite.smtp_port, 2, 1, "user@op.test", 2);
    assert_eq!(r.accepted.len(), 2, "{:?}", r.errors);
    wait_for("the suspended deferral", Duration::from_secs(20), || {
        let log = suite.log();
        if log.contains("to=<user@op.test>") && log.contains("by operator; not attempted") {
            Ok(())
        } else {
            Err(tail(&log, 20))
        }
    });
    suite.stop();
    suite.launch();
    let shown = wait_for(
        "op.test still SUSPENDED after the restart",
        Duration::from_secs(20),
        || {
            let text = router_show(&suite);
            if text.lines().any(|l| {
                l.starts_with("op.test") && l.contains("SUSPENDED") && l.contains("by operator")
            }) {
                Ok(text)
            } else {
                Err(text)
            }
        },
    );
    eprintln!("{shown}");
    assert_eq!(sink.count(), 0);
    let out = suite.mtacon(&["tell", "router", "resume", "op.test"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("op.test resumed"),
        "{out:?}"
    );
    sink.wait_count(&suite, 2, Duration::from_secs(20));
}
