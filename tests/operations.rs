//! Operations: what an operator's scripts and monitoring build on — the console in a pipe
//! and its `--json` form of every `show` command, and the Prometheus endpoint scraped by
//! real tools (`promtool`, a Prometheus server).

use mta_testkit::{bin, free_port, wait_for, RawSmtp, Suite, SuiteOptions};
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// `GET path` over HTTP/1.1 on loopback: (status line, content type, body).
fn http_get(port: u16, path: &str) -> Result<(String, String, String), String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or(format!("no body: {raw}"))?;
    let status = head.lines().next().unwrap_or("").to_string();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or("")
        .to_string();
    Ok((status, content_type, body.to_string()))
}

/// A process this test started; killed (by its pid) when the test ends, however it ends.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn metrics_suite(port: u16) -> Suite {
    Suite::start(&SuiteOptions {
        sections: vec![("metrics", format!("listen = \"127.0.0.1:{port}\""))],
        ..Default::default()
    })
}

#[test]
fn metrics_pass_promtool_and_a_prometheus_server_scrapes_the_queue() {
    let port = free_port();
    let suite = metrics_suite(port);
    // A message that stays queued for example.net (its DNS fails: deferred).
    send(&suite, "someone@example.net");
    // And one delivered locally: the time-to-delivery histogram counts it.
    send(&suite, "alice@localhost");
    let line = "smtpmta_queue_messages{queue=\"outbound-work\",state=\"pending_transmission\"} 1";
    let (status, content_type, body) = wait_for(
        "the deferred message in /metrics",
        Duration::from_secs(20),
        || {
            let got = http_get(port, "/metrics")?;
            if got.2.contains(line)
                && got
                    .2
                    .contains("smtpmta_destination_messages{destination=\"example.net\"} 1")
                && !got.2.contains("smtpmta_recipients_deferred_total 0\n")
                && got.2.contains("smtpmta_delivery_time_seconds_count 1\n")
            {
                Ok(got)
            } else {
                Err(got.2)
            }
        },
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    for expected in [
        "smtpmta_messages_received_total 2\n",
        "# TYPE smtpmta_delivery_time_seconds histogram\n",
        "smtpmta_delivery_time_seconds_bucket{le=\"+Inf\"} 1\n",
        "smtpmta_task_up{task=\"isesctl\"} 1\n",
        "smtpmta_task_restarts_total{task=\"router\"} 0\n",
        "smtpmta_sessions_total{direction=\"inbound\"} 2\n",
        "smtpmta_handlers_max{task=\"isesctl\"} 100\n",
        "# TYPE smtpmta_spool_bytes gauge\n",
        "# TYPE smtpmta_store_bytes gauge\n",
        "# TYPE smtpmta_accept_latency_seconds histogram\n",
        "smtpmta_accept_latency_seconds_count 2\n",
        "smtpmta_accept_latency_seconds_bucket{le=\"+Inf\"} 2\n",
    ] {
        assert!(body.contains(expected), "no {expected:?} in:\n{body}");
    }

    // The real linter of the Prometheus text format: no errors, no lint warnings.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/test installs the prometheus package)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );

    // A real Prometheus server scrapes the endpoint; its query API has the queue metric.
    let prom_port = free_port();
    let dir = suite.dir.path();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: smtpmta\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let _prometheus = Started(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus is installed (scripts/test installs the prometheus package)"),
    );
    let query = "/api/v1/query?query=smtpmta_queue_messages%7Bqueue%3D%22outbound-work%22%7D";
    let result = wait_for(
        "Prometheus to have scraped the queue metric",
        Duration::from_secs(60),
        || {
            let (_, _, body) = http_get(prom_port, query)?;
            let v: serde_json::Value =
                serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
            let first = &v["data"]["result"][0];
            if first["value"][1] == "1" {
                Ok(first.clone())
            } else {
                Err(format!(
                    "{body}\nprometheus log:\n{}",
                    std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
                ))
            }
        },
    );
    assert_eq!(
        result["metric"]["state"], "pending_transmission",
        "{result}"
    );
    assert_eq!(result["metric"]["job"], "smtpmta", "{result}");
    // It scraped in OpenMetrics (it asks for it), and the target is healthy.
    let (_, _, targets) = http_get(prom_port, "/api/v1/targets").unwrap();
    let t: serde_json::Value = serde_json::from_str(&targets).unwrap();
    assert_eq!(t["data"]["activeTargets"][0]["health"], "up", "{t}");
    assert_eq!(t["data"]["activeTargets"][0]["lastError"], "", "{t}");
}

#[test]
fn metrics_port_in_use_stops_the_supervisor_with_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut suite = Suite::prepare(&SuiteOptions {
        sections: vec![("metrics", format!("listen = \"127.0.0.1:{port}\""))],
        ..Default::default()
    });
    let err = suite
        .try_launch(Duration::from_secs(20))
        .expect_err("the supervisor started on a taken metrics port");
    assert!(
        err.contains(&format!(
            "cannot listen on 127.0.0.1:{port} ([metrics] listen)"
        )),
        "{err}"
    );
    // Unknown paths and methods get plain answers (a free port this time).
    let port = free_port();
    let suite = metrics_suite(port);
    let (status, _, _) = http_get(port, "/nothing-here").unwrap();
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    drop(suite);
}

#[test]
fn status_page_in_headless_chromium_has_a_row_for_every_task() {
    let port = free_port();
    let suite = metrics_suite(port);
    send(&suite, "someone@example.net");
    send(&suite, "alice@localhost");
    suite.wait_for_mail("alice", 1);
    let tasks = suite.tasks().unwrap();
    let profile = suite.dir.path().join("chromium-profile");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("http://127.0.0.1:{port}/"))
        .stderr(Stdio::null())
        .output()
        .expect("chromium is installed (scripts/test installs it)");
    assert!(out.status.success(), "chromium failed");
    let dom = String::from_utf8_lossy(&out.stdout);
    // Every row of `show tasks` (tasks and handlers) has its row in the rendered DOM.
    for t in &tasks {
        let name = t["name"].as_str().unwrap();
        let class = if t["parent"].is_null() {
            "task"
        } else {
            "handler"
        };
        let row = format!("<tr class=\"{class}\" data-task=\"{name}\"><td>{name}</td>");
        assert!(dom.contains(&row), "no row {row} in the DOM:\n{dom}");
    }
    assert!(tasks.len() >= 7, "{tasks:?}");
    assert!(
        dom.contains("<meta http-equiv=\"refresh\" content=\"5\">"),
        "{dom}"
    );
    assert!(dom.contains("<table id=\"queue\">"), "{dom}");
    assert!(dom.contains("<td>Mail.Delivered</td>"), "{dom}");
    assert!(dom.contains("<table id=\"destinations\">"), "{dom}");
    // The last deliveries: alice's, with its outcome.
    assert!(dom.contains("<table id=\"deliveries\">"), "{dom}");
    let delivered = dom.split("<tr class=\"delivered\">").skip(1).any(|row| {
        row.split("</tr>")
            .next()
            .unwrap_or("")
            .contains("<td>alice@localhost</td>")
    });
    assert!(delivered, "no delivered row for alice in:\n{dom}");
}

/// True when `line` has an RFC 3339 date such as `2026-12-01T19:37:46`.
fn has_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    b.windows(11).any(|w| {
        w.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            _ => c.is_ascii_digit(),
        })
    })
}

#[test]
fn systemd_unit_verifies_and_ready_comes_once_smtp_is_served() {
    // The shipped unit passes `systemd-analyze verify` (pointed at the built binaries: it
    // checks that ExecStart exists).
    let suite = Suite::prepare(&SuiteOptions::default());
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/smtpmta.service"),
    )
    .unwrap();
    assert!(shipped.contains("\nType=notify\n"), "{shipped}");
    let unit = suite.dir.path().join("smtpmta.service");
    std::fs::write(
        &unit,
        shipped.replace(
            "/usr/local/lib/smtpmta",
            &mta_testkit::bin_dir().display().to_string(),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (package systemd)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");

    // Type=notify: the supervisor sends READY=1 on $NOTIFY_SOCKET, and by then SMTP is
    // served. Its stderr stands in for the journal's stream ($JOURNAL_STREAM names it), so
    // the lines carry no timestamp of their own.
    let notify_path = suite.dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let log_path = suite.dir.path().join("journal.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let stream = {
        use std::os::unix::fs::MetadataExt;
        let m = log.metadata().unwrap();
        format!("{}:{}", m.dev(), m.ino())
    };
    let mut supervisor = Started(
        Command::new(bin("smtpmta"))
            .arg("--config")
            .arg(&suite.config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("JOURNAL_STREAM", stream)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("READY=1 within 30 s");
    let message = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(message.lines().any(|l| l == "READY=1"), "{message:?}");
    // Right now, not eventually: the listener answers and every task runs.
    let (mut c, greeting) = RawSmtp::connect(suite.smtp_port);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(c.cmd("QUIT").starts_with("221"));
    let tasks = suite.tasks().unwrap();
    let running = tasks
        .iter()
        .filter(|t| t["parent"].is_null() && t["state"] == "running")
        .count();
    assert_eq!(running, 7, "{tasks:?}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let n = notify.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim_end(), "STOPPING=1");
    let status = wait_for("the supervisor to exit", Duration::from_secs(30), || {
        supervisor
            .0
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "still running".to_string())
    });
    assert!(status.success(), "{status}");
    let journal = std::fs::read_to_string(&log_path).unwrap();
    assert!(journal.contains("smtpmta supervisor started"), "{journal}");
    assert!(
        journal.contains("isesctl["),
        "the tasks log too:\n{journal}"
    );
    assert!(
        !journal.lines().any(has_timestamp),
        "a line carries its own timestamp:\n{journal}"
    );
    // Outside the journal the timestamp is there (so the check above can see one).
    assert!(has_timestamp(
        "smtpmta[1]: 2026-12-01T19:37:46.758915Z  INFO x"
    ));
}

#[test]
fn log_format_json_is_one_object_per_line_from_every_task() {
    let suite = Suite::prepare(&SuiteOptions::default());
    let log_path = suite.dir.path().join("json.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut supervisor = Started(
        Command::new(bin("smtpmta"))
            .arg("--config")
            .arg(&suite.config)
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_for("every task running", Duration::from_secs(20), || {
        let tasks = suite.tasks()?;
        let running = tasks
            .iter()
            .filter(|t| t["parent"].is_null() && t["state"] == "running")
            .count();
        if running == 7 {
            Ok(())
        } else {
            Err(format!("{tasks:?}"))
        }
    });
    let qid = send(&suite, "alice@localhost");
    wait_for("the delivery", Duration::from_secs(20), || {
        let files = mta_testkit::maildir_new(&suite.mailbox("alice"));
        if files.is_empty() {
            Err("no mail yet".into())
        } else {
            Ok(())
        }
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_for("the supervisor to exit", Duration::from_secs(30), || {
        supervisor
            .0
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "still running".to_string())
    });
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for l in &lines {
        for key in ["task", "task_pid", "timestamp", "level", "message"] {
            assert!(!l[key].is_null(), "no {key} in {l}");
        }
    }
    let tasks: std::collections::BTreeSet<&str> =
        lines.iter().filter_map(|l| l["task"].as_str()).collect();
    for t in [
        "smtpmta", "isesctl", "imsgcnv", "router", "omsgcnv", "osesctl", "drt",
    ] {
        assert!(tasks.contains(t), "no line from {t}:\n{text}");
    }
    assert!(
        lines.iter().any(|l| l["task"] == "isesctl"
            && l["message"] == "queued"
            && l["qid"] == qid.as_str()),
        "no queued line with qid={qid}:\n{text}"
    );
}
