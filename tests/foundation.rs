//! Foundation: the suite boots, restarts crashed tasks with back-off, refuses a second
//! supervisor, stops cleanly, rejects bad configurations, and survives bad IPC.
//! Every test boots the real binaries in a temporary folder.

use mta_ipc::frame::{decode, encode};
use mta_ipc::hello::{Hello, HelloReply, Service};
use mta_testkit::{bin, parent_pid, pid_alive, wait_for, Suite, SuiteOptions};
use mta_types::TaskName;
use nix::sys::signal::Signal;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

const TASKS: [&str; 7] = [
    "smtpmta", "isesctl", "imsgcnv", "router", "omsgcnv", "osesctl", "drt",
];

#[test]
fn boot_shows_seven_running_tasks_that_are_real_children() {
    let suite = Suite::start(&SuiteOptions::default());
    let tasks = suite.tasks().unwrap();
    let mut pids = Vec::new();
    for name in TASKS {
        let row = tasks
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {tasks:?}"));
        assert_eq!(row["state"], "running", "{row}");
        let pid = row["pid"].as_u64().unwrap() as u32;
        assert!(pid_alive(pid), "{name} pid {pid} is not a live process");
        if name != "smtpmta" {
            assert_eq!(
                parent_pid(pid),
                Some(suite.pid()),
                "{name} is not a child of the supervisor"
            );
        }
        pids.push(pid);
    }
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 7, "pids are not distinct");

    // The text form shows the Domino descriptions.
    let text = String::from_utf8(suite.mtacon(&["show", "tasks"]).stdout).unwrap();
    assert!(text.contains("Inbound Session Controller"), "{text}");
    assert!(text.contains("Delivery Report Task"), "{text}");
}

#[test]
fn killed_task_is_restarted_and_repeated_crashes_back_off() {
    let mut suite = Suite::start(&SuiteOptions::default());
    let first = suite.task_pid("router").unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
    let second = wait_for("router restarted", Duration::from_secs(5), || {
        let tasks = suite.tasks()?;
        let row = tasks
            .iter()
            .find(|t| t["name"] == "router")
            .ok_or("no router row")?;
        match (row["state"].as_str(), row["pid"].as_u64()) {
            (Some("running"), Some(p)) if p as u32 != first => Ok(p as u32),
            _ => Err(row.to_string()),
        }
    });
    suite.remember_pids();

    // Crash it three more times in a row: the restart delay grows and is shown.
    let mut pid = second;
    let mut delays = Vec::new();
    for _ in 0..3 {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        let detail = wait_for("router restarting", Duration::from_secs(5), || {
            let tasks = suite.tasks()?;
            let row = tasks
                .iter()
                .find(|t| t["name"] == "router")
                .ok_or("no router row")?
                .clone();
            if row["state"] == "restarting" {
                Ok(row["detail"].as_str().unwrap_or_default().to_string())
            } else {
                Err(row.to_string())
            }
        });
        assert!(detail.contains("signal: 9"), "{detail}");
        // "restart #N in X.Ys": take X.Y
        let secs: f64 = detail
            .split(" in ")
            .nth(1)
            .and_then(|s| s.split('s').next())
            .and_then(|s| s.parse().ok())
            .unwrap();
        delays.push(secs);
        pid = wait_for("router back", Duration::from_secs(30), || {
            let p = suite.task_pid("router").ok_or("no pid")?;
            let tasks = suite.tasks()?;
            let running = tasks
                .iter()
                .any(|t| t["name"] == "router" && t["state"] == "running");
            if p != pid && running {
                Ok(p)
            } else {
                Err(format!("pid {p}"))
            }
        });
        suite.remember_pids();
    }
    assert!(delays[2] > delays[0], "back-off did not grow: {delays:?}");
    assert!(pid_alive(suite.pid()), "the supervisor died");
    let tasks = suite.tasks().unwrap();
    let row = tasks.iter().find(|t| t["name"] == "router").unwrap();
    assert_eq!(row["restarts"], 4, "{row}");
    assert!(suite.log().contains("task exited unexpectedly"));
}

#[test]
fn second_supervisor_on_same_data_dir_is_refused() {
    let suite = Suite::start(&SuiteOptions::default());
    let before = suite.tasks().unwrap();
    let out = Command::new(bin("smtpmta"))
        .arg("--config")
        .arg(&suite.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    assert!(
        err.contains(&suite.pid().to_string()),
        "message should name the running pid: {err}"
    );
    // The first one is undisturbed: same tasks, same pids, socket still answers.
    let after = suite.tasks().unwrap();
    let pids =
        |rows: &[serde_json::Value]| rows.iter().map(|r| r["pid"].clone()).collect::<Vec<_>>();
    assert_eq!(pids(&before), pids(&after));
}

fn assert_clean_exit(mut suite: Suite, stop: impl FnOnce(&Suite)) {
    let pids: Vec<u32> = suite.seen_pids().to_vec();
    assert_eq!(pids.len(), 7);
    stop(&suite);
    let code = suite.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "supervisor exit code; log:\n{}", suite.log());
    wait_for("every task gone", Duration::from_secs(5), || {
        let alive: Vec<_> = pids.iter().filter(|p| pid_alive(**p)).collect();
        if alive.is_empty() {
            Ok(())
        } else {
            Err(format!("{alive:?}"))
        }
    });
    let left: Vec<_> = std::fs::read_dir(suite.run_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in run/: {left:?}");
}

#[test]
fn tell_smtpmta_quit_stops_everything_cleanly() {
    let suite = Suite::start(&SuiteOptions::default());
    assert_clean_exit(suite, |s| {
        let out = s.mtacon(&["tell", "smtpmta", "quit"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

#[test]
fn sigterm_and_sigint_stop_everything_cleanly() {
    let suite = Suite::start(&SuiteOptions::default());
    assert_clean_exit(suite, |s| s.signal(Signal::SIGTERM));
    let suite = Suite::start(&SuiteOptions::default());
    assert_clean_exit(suite, |s| s.signal(Signal::SIGINT));
}

#[test]
fn console_reports_when_the_suite_is_not_running() {
    let suite = Suite::prepare(&SuiteOptions::default());
    let out = suite.mtacon(&["show", "tasks"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not running"), "{err}");
}

fn start_with_config(text: &str) -> (Suite, std::process::Output) {
    let suite = Suite::prepare(&SuiteOptions::default());
    std::fs::write(&suite.config, text).unwrap();
    let out = Command::new(bin("smtpmta"))
        .arg("--config")
        .arg(&suite.config)
        .output()
        .unwrap();
    // Nothing was touched: no data folder created.
    assert!(
        !suite.data_dir().exists(),
        "a bad config must not create {}",
        suite.data_dir().display()
    );
    (suite, out)
}

#[test]
fn bad_configurations_name_file_line_and_key() {
    let base = "hostname = \"mta.test\"\ndata_dir = \"var\"\n";
    let cases = [
        (format!("{base}bogus_key = 1\n"), 3, "bogus_key"),
        (
            format!("{base}[inbound]\nmax_handlers = \"ten\"\n"),
            4,
            "inbound.max_handlers",
        ),
        (
            format!("{base}trusted_networks = [\"10.0.0.0/33\"]\n"),
            3,
            "trusted_networks",
        ),
        (
            format!("{base}[outbound]\nretry = [\"5 fortnights\"]\n"),
            4,
            "outbound.retry",
        ),
    ];
    for (text, line, key) in cases {
        let (suite, out) = start_with_config(&text);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        let file = &suite.config;
        assert!(
            err.contains(&format!("{}:{line}", file.display())),
            "no file:line in: {err}"
        );
        assert!(err.contains(key), "no key `{key}` in: {err}");
    }
    let out = Command::new(bin("smtpmta"))
        .arg("--config")
        .arg("/nonexistent/smtpmta.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/smtpmta.toml") && err.contains("No such file"),
        "{err}"
    );
}

fn raw_hello(path: &std::path::Path, hello: &Hello) -> HelloReply {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&encode(hello).unwrap()).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut payload).unwrap();
    decode(&payload).unwrap()
}

#[test]
fn ipc_refuses_wrong_versions_and_survives_garbage() {
    let suite = Suite::start(&SuiteOptions::default());
    let mut sockets = vec![(suite.run_dir().join("smtpmta.sock"), Service::Supervisor)];
    for task in TaskName::CHILDREN {
        sockets.push((
            suite.run_dir().join(format!("{task}.sock")),
            Service::Control(task),
        ));
    }
    for (path, service) in &sockets {
        let wrong = Hello {
            version: 999,
            service: *service,
            client: TaskName::Mtacon,
            pid: std::process::id(),
        };
        match raw_hello(path, &wrong) {
            HelloReply::Refused { reason } => {
                assert!(reason.contains("protocol version"), "{reason}")
            }
            other => panic!("wrong version accepted: {other:?}"),
        }
        let wrong_service = Hello {
            version: mta_ipc::PROTOCOL_VERSION,
            service: if *service == Service::Control(TaskName::Drt) {
                Service::Control(TaskName::Router)
            } else {
                Service::Control(TaskName::Drt)
            },
            client: TaskName::Mtacon,
            pid: std::process::id(),
        };
        assert!(matches!(
            raw_hello(path, &wrong_service),
            HelloReply::Refused { .. }
        ));

        // Truncated frame, oversized frame, garbage payload: the server just drops them.
        let mut s = UnixStream::connect(path).unwrap();
        s.write_all(&100u32.to_be_bytes()).unwrap();
        s.write_all(b"abc").unwrap();
        drop(s);
        let mut s = UnixStream::connect(path).unwrap();
        s.write_all(&u32::MAX.to_be_bytes()).unwrap();
        drop(s);
        let mut s = UnixStream::connect(path).unwrap();
        s.write_all(&8u32.to_be_bytes()).unwrap();
        s.write_all(&[0xff; 8]).unwrap();
        drop(s);
    }
    // Every socket still serves, nobody restarted.
    for row in suite.tasks().unwrap() {
        assert_eq!(row["restarts"], 0, "{row}");
    }
    let router = suite.task_pid("router").unwrap();
    let out = suite.mtacon(&["tell", "router", "show", "status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(suite.task_pid("router"), Some(router));
    // Sockets are private to the owner.
    use std::os::unix::fs::PermissionsExt;
    for (path, _) in &sockets {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", path.display());
    }
}
