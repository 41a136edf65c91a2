//! Console views from seed 003's key commands (issue 12, point 10): `show task time`,
//! through the real console (`mtacon`) against a booted suite.

use mta_testkit::{wait_for, RawSmtp, Suite, SuiteOptions};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn mtacon(suite: &Suite, args: &[&str]) -> String {
    let out = suite.mtacon(args);
    assert!(
        out.status.success(),
        "mtacon {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn show_task_time_has_start_uptime_and_cpu_of_every_task_and_its_handlers() {
    // /proc's start time is in clock ticks from a boot time given in whole seconds.
    let before = now_ms() - 2_000;
    let suite = Suite::start(&SuiteOptions::default());
    // A session, so that isesctl has a handler row.
    let (mut c, greeting) = RawSmtp::connect(suite.smtp_port);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    wait_for("iseshlr0 in show tasks", Duration::from_secs(10), || {
        let tasks = suite.tasks()?;
        if tasks.iter().any(|t| t["name"] == "iseshlr0") {
            Ok(())
        } else {
            Err(format!("{tasks:?}"))
        }
    });

    // The supervisor's CPU time as /proc counts it, before and after the command.
    let sup_cpu_ms = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", suite.pid())).unwrap();
        let fields: Vec<u64> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .skip(11) // state … cmajflt; then utime and stime
            .take(2)
            .map(|f| f.parse().unwrap())
            .collect();
        (fields[0] + fields[1]) * 10 // clock ticks of 10 ms (CLK_TCK 100 on Linux)
    };
    let sup_before = sup_cpu_ms();
    let v: Value =
        serde_json::from_str(&mtacon(&suite, &["show", "task", "time", "--json"])).unwrap();
    let sup_after = sup_cpu_ms();
    let rows = v["task_times"].as_array().expect("task_times").clone();
    let after = now_ms() + 2_000;
    for name in [
        "smtpmta", "isesctl", "imsgcnv", "router", "omsgcnv", "osesctl", "drt",
    ] {
        let r = rows
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {rows:?}"));
        let pid = r["pid"].as_u64().unwrap_or_else(|| panic!("{r}"));
        assert_eq!(
            Some(pid as u32),
            suite
                .task_pid(name)
                .or((name == "smtpmta").then(|| suite.pid())),
            "{r}"
        );
        let started = r["started_ms"].as_u64().unwrap_or_else(|| panic!("{r}"));
        assert!(
            (before..=after).contains(&started),
            "{name} started at {started}, test ran {before}..{after}"
        );
        assert!(
            r["uptime_secs"].as_u64().unwrap() <= (after - before) / 1000 + 1,
            "{r}"
        );
        let (cpu, user, system) = (
            r["cpu_ms"].as_u64().unwrap(),
            r["user_ms"].as_u64().unwrap(),
            r["system_ms"].as_u64().unwrap(),
        );
        assert_eq!(cpu, user + system, "{r}");
    }
    // The supervisor's CPU time is what /proc says (it may be 0 ms on a fast machine: a
    // tick is 10 ms).
    let sup = rows.iter().find(|r| r["name"] == "smtpmta").unwrap();
    let cpu = sup["cpu_ms"].as_u64().unwrap();
    assert!(
        (sup_before..=sup_after).contains(&cpu),
        "{sup}: /proc said {sup_before} ms before and {sup_after} ms after"
    );
    // A handler is listed under its controller, with no CPU time of its own.
    let h = rows
        .iter()
        .find(|r| r["name"] == "iseshlr0")
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(h["parent"], "isesctl", "{h}");
    assert!(h["cpu_ms"].is_null(), "{h}");
    assert!(h["started_ms"].as_u64().is_some(), "{h}");

    let text = mtacon(&suite, &["show", "task", "time"]);
    let header = text.lines().next().unwrap();
    for column in [
        "Task",
        "Pid",
        "Started (UTC)",
        "Uptime",
        "CPU",
        "User",
        "System",
    ] {
        assert!(header.contains(column), "{text}");
    }
    let isesctl = text
        .lines()
        .find(|l| l.starts_with("isesctl "))
        .unwrap_or_else(|| panic!("{text}"));
    // e.g. `isesctl      1234  2026-12-02 02:21:36    00:00:01       0.02s     0.01s     0.01s`
    assert!(
        isesctl.contains(&suite.task_pid("isesctl").unwrap().to_string()),
        "{isesctl}"
    );
    assert!(isesctl.contains(" 00:00:"), "{isesctl}");
    assert!(isesctl.trim_end().ends_with('s'), "{isesctl}");
    let handler = text
        .lines()
        .find(|l| l.starts_with("  iseshlr0"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(handler.contains("(in isesctl)"), "{handler}");
    c.cmd("QUIT");
}
