//! Faults: kill -9 of every process under load (the supervisor too), slow-loris clients,
//! restart storms. A 250 means the message is delivered, whatever happens to a process.

use mta_testkit::peers::{tail, Sink};
use mta_testkit::{maildir_new, pid_alive, wait_for, RawSmtp, Suite, SuiteOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn kill9(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[test]
fn kill_9_every_task_and_the_supervisor_under_load_loses_nothing() {
    const COUNT: usize = 10_000;
    let sink = Sink::start(&[]);
    let mut suite = Suite::start(&SuiteOptions {
        sections: vec![
            (
                "outbound",
                format!("relay_host = \"127.0.0.1:{}\"", sink.port),
            ),
            ("outbound", "retry = [\"1s\"]".into()),
            ("outbound", "connect_timeout = \"2s\"".into()),
        ],
        ..Default::default()
    });
    let port = suite.smtp_port;
    let started = Instant::now();
    let load = std::thread::spawn(move || {
        mta_testkit::peers::smtp_load(port, COUNT, 20, "alice@localhost,far@remote.test", 100)
    });
    // Each task in turn, at a pseudo-random moment (fixed seed: the run is repeatable).
    let mut seed: u64 = 0x5eed;
    for task in ["isesctl", "imsgcnv", "router", "omsgcnv", "osesctl", "drt"] {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(300 + (seed >> 33) % 700));
        let pid = wait_for(&format!("{task} running"), Duration::from_secs(30), || {
            suite.task_pid(task).ok_or_else(|| "restarting".to_string())
        });
        suite.remember_pids();
        kill9(pid);
    }
    let result = load.join().unwrap();
    let accepted = result.accepted;
    let accept_secs = started.elapsed().as_secs_f64();
    assert!(
        accepted.len() >= COUNT / 2,
        "too few accepted: {} ({:?})",
        accepted.len(),
        result.errors
    );

    // Then the supervisor itself, while the backlog may still be draining; start it again.
    suite.remember_pids();
    let supervisor = suite.pid();
    kill9(supervisor);
    assert!(suite.wait_exit(Duration::from_secs(10)).is_none() || !pid_alive(supervisor));
    wait_for("every old task gone", Duration::from_secs(15), || {
        let alive: Vec<u32> = suite
            .seen_pids()
            .iter()
            .copied()
            .filter(|p| pid_alive(*p))
            .collect();
        if alive.is_empty() {
            Ok(())
        } else {
            Err(format!("{alive:?}"))
        }
    });
    suite.launch();

    let maildir = suite.data_dir().join("mail/alice");
    let (local, remote) = wait_for(
        "every accepted message in the Maildir and at the sink",
        Duration::from_secs(180),
        || {
            let local = mta_testkit::message_ids(&maildir_new(&maildir));
            let remote =
                mta_testkit::message_ids(&mta_testkit::files_with_suffix(sink.dir.path(), ".eml"));
            let missing_local = accepted.iter().filter(|m| !local.contains_key(*m)).count();
            let missing_remote = accepted.iter().filter(|m| !remote.contains_key(*m)).count();
            if missing_local == 0 && missing_remote == 0 {
                Ok((local, remote))
            } else {
                Err(format!(
                    "missing {missing_local} local, {missing_remote} remote of {}",
                    accepted.len()
                ))
            }
        },
    );
    // Compaction leaves no orphan: every spool segment left belongs to a live writer (a dead
    // writer's segments go once unreferenced and a minute old; poll compact until then).
    let spool = suite.data_dir().join("spool");
    let orphans = || -> Vec<String> {
        mta_testkit::files_with_suffix(&spool, ".seg2")
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter(|name| {
                let pid = name
                    .trim_end_matches(".seg2")
                    .rsplit('-')
                    .nth(2)
                    .and_then(|p| p.parse::<u32>().ok());
                pid.is_some_and(|p| !pid_alive(p))
            })
            .collect()
    };
    assert!(
        !orphans().is_empty(),
        "the killed writers left segments (else this check proves nothing)"
    );
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let out = suite.mtacon(&["tell", "smtpmta", "compact"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let left = orphans();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orphan spool segments after compaction: {left:?}"
        );
        std::thread::sleep(Duration::from_secs(3));
    }
    let dup_local: usize = local.values().map(|n| n - 1).sum();
    let dup_remote: usize = remote.values().map(|n| n - 1).sum();
    eprintln!(
        "kill -9 of every task and the supervisor: sent {COUNT}, accepted {} in {accept_secs:.1}s, \
         delivered {} local + {} relayed unique, lost 0, duplicates {dup_local} local + {dup_remote} relayed, total {:.1}s",
        accepted.len(),
        local.len(),
        remote.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn slowloris_clients_are_timed_out_and_a_normal_client_is_served() {
    const CLIENTS: usize = 1000;
    let suite = Suite::start(&SuiteOptions {
        sections: vec![
            ("inbound", "max_handlers = 1100".into()),
            ("inbound", "command_timeout = \"3s\"".into()),
            ("inbound", "session_timeout = \"4s\"".into()),
        ],
        ..Default::default()
    });
    let mut slow: Vec<std::net::TcpStream> = (0..CLIENTS)
        .map(|_| {
            let s = std::net::TcpStream::connect(("127.0.0.1", suite.smtp_port)).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    // A normal client is served at once, while the thousand trickle.
    let t = Instant::now();
    let (mut c, greeting) = RawSmtp::connect(suite.smtp_port);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(c.cmd("EHLO normal.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<n@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<bob@localhost>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: normal\r\n\r\nserved\r\n.\r\n");
    assert!(c.read_reply().starts_with("250"));
    let served_in = t.elapsed();
    assert!(
        served_in < Duration::from_secs(5),
        "normal client took {served_in:?}"
    );

    // Trickle one byte a second; every slow session must be closed by the server.
    let start = Instant::now();
    let mut closed = vec![false; CLIENTS];
    while closed.iter().any(|c| !c) && start.elapsed() < Duration::from_secs(20) {
        for (i, s) in slow.iter_mut().enumerate() {
            if closed[i] {
                continue;
            }
            let mut buf = [0u8; 512];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        closed[i] = true;
                        break;
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed[i] = true;
                        break;
                    }
                }
            }
            if !closed[i] && s.write(b"N").is_err() {
                closed[i] = true;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(
        open,
        0,
        "{open} slow sessions still open after {:?}",
        start.elapsed()
    );
    wait_for(
        "the normal message delivered",
        Duration::from_secs(10),
        || {
            if maildir_new(&suite.data_dir().join("mail/bob")).len() == 1 {
                Ok(())
            } else {
                Err("not yet".into())
            }
        },
    );
    let tasks = suite.tasks().unwrap();
    assert_eq!(
        tasks.iter().find(|t| t["name"] == "isesctl").unwrap()["restarts"],
        0
    );
}

#[test]
fn a_task_in_a_restart_storm_backs_off_while_the_rest_serves() {
    let mut suite = Suite::start(&SuiteOptions::default());
    // Kill the router as soon as it comes back, five times.
    let mut last = 0;
    for _ in 0..5 {
        let pid = wait_for("router back", Duration::from_secs(40), || {
            match suite.task_pid("router") {
                Some(p) if p != last => Ok(p),
                other => Err(format!("{other:?}")),
            }
        });
        suite.remember_pids();
        kill9(pid);
        last = pid;
    }
    // While it backs off, inbound still accepts mail and the console still answers.
    let (mut c, greeting) = RawSmtp::connect(suite.smtp_port);
    assert!(greeting.starts_with("220"));
    assert!(c.cmd("EHLO storm.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@localhost>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: storm\r\n\r\nduring the storm\r\n.\r\n");
    assert!(c.read_reply().starts_with("250"));
    let row = suite
        .tasks()
        .unwrap()
        .into_iter()
        .find(|t| t["name"] == "router")
        .unwrap();
    assert_eq!(row["restarts"], 5, "{row}");
    // Once it is back, the message is delivered.
    wait_for("delivered after the storm", Duration::from_secs(60), || {
        if maildir_new(&suite.data_dir().join("mail/alice")).len() == 1 {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    assert!(pid_alive(suite.pid()));
}

/// A tmpfs of `size` mounted on `dir` (tests run as root, as CI does); unmounted on drop.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
    }
}

#[test]
fn a_full_disk_gets_452_and_the_suite_resumes_when_space_returns() {
    let mut suite = Suite::prepare(&SuiteOptions::default());
    let disk = SmallDisk::mount(&suite.data_dir(), "48m");
    suite.launch();
    let send = |n: usize| -> String {
        let (mut c, _) = RawSmtp::connect(suite.smtp_port);
        assert!(c.cmd("EHLO disk.test").starts_with("250"));
        assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@localhost>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(format!("Subject: disk {n}\r\nMessage-ID: <disk-{n}@test>\r\n\r\n").as_bytes());
        for _ in 0..100 {
            c.send(&[b'd'; 998]);
            c.send(b"\r\n");
        }
        c.send(b".\r\n");
        c.read_reply()
    };
    let first = send(0);
    assert!(first.starts_with("250"), "{first}");
    // Fill the disk, leaving almost nothing.
    let filler = suite.data_dir().join("filler");
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", filler.display()))
        .args(["bs=1M", "count=100"])
        .output();
    let mut full = None;
    let mut accepted = vec![0];
    for n in 1..20 {
        let reply = send(n);
        assert!(
            reply.starts_with("250") || reply.starts_with("452") || reply.starts_with("451"),
            "{reply}"
        );
        if reply.starts_with("250") {
            accepted.push(n);
        } else {
            full = Some(reply);
            break;
        }
    }
    let full = full.expect("the full disk was never noticed");
    assert!(full.starts_with("452 4.3.1"), "{full}");
    // Space comes back: the suite accepts and delivers again on its own.
    std::fs::remove_file(&filler).unwrap();
    let again = wait_for("accepting again", Duration::from_secs(30), || {
        let r = send(100);
        if r.starts_with("250") {
            Ok(r)
        } else {
            Err(r)
        }
    });
    assert!(again.starts_with("250"));
    // Every message acknowledged with 250, those taken while the disk filled included, is
    // delivered, and whole.
    accepted.push(100);
    let mailbox = suite.data_dir().join("mail/alice");
    wait_for(
        "every accepted message delivered",
        Duration::from_secs(60),
        || {
            let ids = mta_testkit::message_ids(&maildir_new(&mailbox));
            let missing: Vec<_> = accepted
                .iter()
                .filter(|n| !ids.contains_key(&format!("<disk-{n}@test>")))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("missing {missing:?} of {accepted:?}"))
            }
        },
    );
    for file in maildir_new(&mailbox) {
        let body = std::fs::read(&file).unwrap();
        let lines = body
            .windows(998)
            .filter(|w| w.iter().all(|b| *b == b'd'))
            .count();
        assert!(lines >= 100, "{} is half-written", file.display());
    }
    let supervisor_alive = pid_alive(suite.pid());
    suite.stop();
    drop(disk);
    drop(suite);
    assert!(supervisor_alive, "the supervisor died on a full disk");
}

/// The spool has room but the queue store's disk is full when the group commit flushes:
/// every message of that commit gets 452 4.3.1 (a temporary failure the client retries),
/// nothing is half-written, and once space returns the suite accepts and delivers again.
#[test]
fn a_full_disk_under_the_queue_store_gets_452_and_nothing_is_half_written() {
    let mut suite = Suite::prepare(&SuiteOptions::default());
    let store_dir = suite.data_dir().join("store");
    let disk = SmallDisk::mount(&store_dir, "24m");
    suite.launch();
    let send = |n: usize| -> String {
        let (mut c, _) = RawSmtp::connect(suite.smtp_port);
        assert!(c.cmd("EHLO disk.test").starts_with("250"));
        assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@localhost>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(format!("Subject: store {n}\r\nMessage-ID: <store-{n}@test>\r\n\r\n").as_bytes());
        for _ in 0..40 {
            c.send(&[b's'; 1022]);
            c.send(b"\r\n");
        }
        c.send(b".\r\n");
        c.read_reply()
    };
    let first = send(0);
    assert!(first.starts_with("250"), "{first}");
    // Fill the store's file system to a little below the store's reserve: the next group
    // commit that adds mail finds it full.
    let filler = store_dir.join("filler");
    let free = nix::sys::statvfs::statvfs(&store_dir).unwrap();
    let free_mib = (free.blocks_available() as u64 * free.fragment_size() as u64) >> 20;
    let out = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", filler.display()))
        .args(["bs=1M", &format!("count={}", free_mib.saturating_sub(2))])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut refused = Vec::new();
    let mut accepted = vec![0];
    for n in 1..40 {
        let reply = send(n);
        if reply.starts_with("250") {
            accepted.push(n);
        } else {
            assert!(reply.starts_with("452 4.3.1"), "message {n}: {reply}");
            refused.push(n);
            if refused.len() >= 3 {
                break;
            }
        }
    }
    assert!(!refused.is_empty(), "the full store disk was never noticed");
    // Space comes back: the suite accepts and delivers again on its own.
    std::fs::remove_file(&filler).unwrap();
    let again = wait_for("accepting again", Duration::from_secs(60), || {
        let r = send(100);
        if r.starts_with("250") {
            Ok(r)
        } else {
            Err(r)
        }
    });
    assert!(again.starts_with("250"));
    accepted.push(100);
    let mailbox = suite.data_dir().join("mail/alice");
    wait_for(
        "every accepted message delivered",
        Duration::from_secs(60),
        || {
            let ids = mta_testkit::message_ids(&maildir_new(&mailbox));
            let missing: Vec<_> = accepted
                .iter()
                .filter(|n| !ids.contains_key(&format!("<store-{n}@test>")))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("missing {missing:?}"))
            }
        },
    );
    // A refused message may still arrive later (its record was applied in memory before the
    // flush failed, and the client retries it anyway): a duplicate at worst, and whole.
    for file in maildir_new(&mailbox) {
        let body = std::fs::read(&file).unwrap();
        let lines = body
            .windows(1022)
            .filter(|w| w.iter().all(|b| *b == b's'))
            .count();
        assert!(lines >= 40, "{} is half-written", file.display());
    }
    let supervisor_alive = pid_alive(suite.pid());
    suite.stop();
    drop(disk);
    drop(suite);
    assert!(supervisor_alive, "the supervisor died on a full store disk");
}

#[test]
fn a_silent_outbound_peer_times_out_and_other_destinations_are_unaffected() {
    use mta_testkit::peers::Dns;
    let dns = Dns::start();
    let sink = Sink::start(&[]);
    // silent.test resolves to 127.0.0.5: accept on the same port and never say a word.
    let silent = std::net::TcpListener::bind(("127.0.0.5", sink.port)).unwrap();
    silent.set_nonblocking(true).unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acceptor = {
        let (held, stop) = (held.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((s, _)) = silent.accept() {
                    held.lock().unwrap().push(s);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let suite = Suite::start(&SuiteOptions {
        sections: vec![
            ("outbound", format!("port = {}", sink.port)),
            ("outbound", "command_timeout = \"2s\"".into()),
            ("outbound", "connect_timeout = \"2s\"".into()),
            ("outbound", "retry = [\"1s\"]".into()),
            ("dns", format!("nameservers = [\"127.0.0.1:{}\"]", dns.port)),
        ],
        ..Default::default()
    });
    let send = |rcpt: &str, id: &str| {
        let (mut c, _) = RawSmtp::connect(suite.smtp_port);
        assert!(c.cmd("EHLO client.test").starts_with("250"));
        assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
        assert!(c.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(format!("Subject: {id}\r\nMessage-ID: <{id}@test>\r\n\r\nbody\r\n.\r\n").as_bytes());
        assert!(c.read_reply().starts_with("250"));
    };
    send("quiet@silent.test", "to-silent");
    send("ok@a-only.test", "to-live");
    // The live destination is served while the silent one hangs.
    sink.wait_count(&suite, 1, Duration::from_secs(10));
    assert!(sink.message_ids().contains_key("<to-live@test>"));
    // The silent peer: timed out, deferred, tried again.
    wait_for("two timed-out attempts", Duration::from_secs(30), || {
        let log = suite.log();
        let n = log
            .lines()
            .filter(|l| l.contains("to=<quiet@silent.test>") && l.contains("status=deferred"))
            .count();
        if n >= 2 {
            Ok(())
        } else {
            Err(format!("{n} deferrals"))
        }
    });
    assert!(
        !held.lock().unwrap().is_empty(),
        "the silent peer was never contacted"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    acceptor.join().unwrap();
}

/// A task whose internal actor panics does not stay half alive: isesctl's intake actor
/// (the one that makes messages durable) panics through the test-only hook while a
/// message is in flight; the process ends, the supervisor starts a new isesctl, the
/// client's unacknowledged message is sent again, and every message that got a 250 is
/// delivered. (Before: tokio caught the actor's panic, isesctl kept listening with no
/// intake behind it, and every later message got 451.)
#[test]
fn a_panicking_actor_ends_its_task_which_the_supervisor_restarts_losing_nothing() {
    let suite = Suite::start(&SuiteOptions {
        test_hooks: true,
        ..Default::default()
    });
    let before = suite.task_pid("isesctl").expect("isesctl pid");
    let out = suite.mtacon(&["tell", "isesctl", "debug", "panic"]);
    assert!(
        out.status.success(),
        "arming the hook: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The first message reaches the intake actor, which panics with it in hand.
    let load = mta_testkit::peers::smtp_load(suite.smtp_port, 40, 4, "alice@localhost", 5);
    let after = wait_for("a new isesctl", Duration::from_secs(20), || {
        match suite.task_pid("isesctl") {
            Some(p) if p != before => Ok(p),
            other => Err(format!("isesctl pid {other:?}")),
        }
    });
    assert!(
        !pid_alive(before),
        "the panicked isesctl {before} is still alive"
    );
    assert!(
        suite.log().contains("test hook: isesctl intake panics"),
        "the panic is in the log"
    );
    assert_eq!(
        load.accepted.len(),
        40,
        "every message accepted in the end: {:?}",
        load.errors
    );
    let maildir = suite.mailbox("alice");
    wait_for(
        "every accepted message delivered",
        Duration::from_secs(30),
        || {
            let got = mta_testkit::message_ids(&maildir_new(&maildir));
            let missing = load
                .accepted
                .iter()
                .filter(|m| !got.contains_key(*m))
                .count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} of {} missing", load.accepted.len()))
            }
        },
    );
    eprintln!("isesctl {before} panicked and was replaced by {after}; 40 accepted, 40 delivered");
}

/// A 250 waits for one device flush, the spool's: the message's record is written beside
/// its content in the same synced spool frame, and reaches the store's disk with the
/// store's next flush. A power cut before that flush (held off here by a test hook, so the
/// cut certainly comes first; `data_dir` is on lazyfs, which drops every write not synced)
/// loses no acknowledged message: the next start puts the records back from the spool,
/// says so, and every message is delivered. (A kill -9 alone cannot show it: sled's writes
/// since its last flush stay in the page cache.)
#[test]
fn acknowledged_messages_whose_records_missed_the_store_flush_come_back_from_the_spool() {
    const COUNT: usize = 12;
    let mut suite = Suite::prepare(&SuiteOptions {
        test_hooks: true,
        env: vec![("SMTPMTA_TEST_STORE_FLUSH_MS", "600000".into())],
        ..Default::default()
    });
    if let Err(e) = suite.mount_lazyfs() {
        panic!("this test needs root, /dev/fuse and fuse3 (scripts/test installs it): {e}");
    }
    suite.launch();
    let load = mta_testkit::peers::smtp_load(suite.smtp_port, COUNT, 3, "alice@localhost", 4);
    assert_eq!(load.accepted.len(), COUNT, "{:?}", load.errors);
    let cut = suite.power_loss().expect("power cut");
    assert!(cut.dropped_bytes > 0, "the cut dropped nothing: {cut}");
    suite.launch();
    let log = suite.log();
    let put_back = log
        .matches("record not yet on disk at the crash: put back from the spool")
        .count();
    assert!(
        put_back > 0 && put_back <= COUNT,
        "the start put back {put_back} records: {}",
        tail(&log, 40)
    );
    let maildir = suite.mailbox("alice");
    wait_for(
        "every accepted message delivered after the power cut",
        Duration::from_secs(30),
        || {
            let got = mta_testkit::message_ids(&maildir_new(&maildir));
            let missing: Vec<&String> = load
                .accepted
                .iter()
                .filter(|m| !got.contains_key(*m))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("{} of {COUNT} missing: {missing:?}", missing.len()))
            }
        },
    );
    eprintln!("{COUNT} accepted; power cut ({cut}); {put_back} records put back from the spool");
}

/// A queued message whose spool content is gone (a lost or damaged segment) goes to Dead
/// with the reason, once, instead of being retried forever or crashing a task; the rest of
/// the queue flows.
#[test]
fn a_record_whose_content_is_missing_goes_to_dead_with_the_reason() {
    content_damage_goes_to_dead(
        |spool| {
            for seg in mta_testkit::files_with_suffix(spool, ".seg2") {
                std::fs::remove_file(&seg).unwrap();
            }
        },
        "content missing: spool",
        "",
    );
}

/// The same when the segment is there but a byte of the message's content changed on disk
/// (a bad sector, a stray write): the frame's checksum catches it, and the reason names the
/// segment and the frame's offset.
#[test]
fn a_record_whose_content_is_damaged_goes_to_dead_naming_segment_and_offset() {
    content_damage_goes_to_dead(
        |spool| {
            for seg in mta_testkit::files_with_suffix(spool, ".seg2") {
                let mut bytes = std::fs::read(&seg).unwrap();
                if let Some(at) = bytes.windows(4).position(|w| w == b"body") {
                    bytes[at] ^= 0x01;
                    std::fs::write(&seg, &bytes).unwrap();
                }
            }
        },
        "content missing: spool segment isesctl-",
        "is damaged at offset",
    );
}

fn content_damage_goes_to_dead(
    damage: impl Fn(&std::path::Path),
    note_prefix: &str,
    note_has: &str,
) {
    let sink = Sink::start(&[]);
    let mut suite = Suite::start(&SuiteOptions {
        sections: vec![(
            "outbound",
            format!("relay_host = \"127.0.0.1:{}\"", sink.port),
        )],
        ..Default::default()
    });
    let stopped = suite.mtacon(&["tell", "smtpmta", "stop", "outbound", "transport"]);
    assert!(stopped.status.success(), "{stopped:?}");
    let port = suite.smtp_port;
    let send = |to: &str, id: &str| {
        let (mut c, _) = RawSmtp::connect(port);
        assert!(c.cmd("EHLO gone.test").starts_with("250"));
        assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
        assert!(c.cmd(&format!("RCPT TO:<{to}>")).starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(format!("Subject: gone\r\nMessage-ID: <{id}>\r\n\r\nbody\r\n.\r\n").as_bytes());
        let reply = c.read_reply();
        assert!(reply.starts_with("250"), "{reply}");
    };
    send("rcpt@remote.test", "gone@test");
    let deferred = |suite: &Suite| {
        let out = suite.mtacon(&["--json", "show", "queue"]);
        let q: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let n = q["queue"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["queue"] == "outbound-work")
            .and_then(|r| r["messages"].as_u64())
            .unwrap_or(0);
        (n, q)
    };
    wait_for(
        "the message queued for transmission",
        Duration::from_secs(30),
        || match deferred(&suite) {
            (1, _) => Ok(()),
            (_, q) => Err(format!("{q}")),
        },
    );
    // The spool content disappears while the suite is down (a damaged disk, a careless
    // clean-up); the suite comes back on what is left.
    suite.stop();
    damage(&suite.data_dir().join("spool"));
    // The outbound transport runs again after the restart: osesctl meets the message.
    suite.launch();
    let dead = wait_for("the message in Dead", Duration::from_secs(30), || {
        let (_, q) = deferred(&suite);
        let parked: Vec<serde_json::Value> = q["parked"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["state"] == "Dead")
            .cloned()
            .collect();
        match parked.as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(format!("{q}")),
        }
    });
    let note = dead["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with(note_prefix) && note.contains(note_has),
        "{dead}"
    );
    assert_eq!(deferred(&suite).0, 0, "nothing left to retry");
    // The queue goes on: a new local message is delivered.
    send("alice@localhost", "after@test");
    suite.wait_for_mail("alice", 1);
    let pids_alive = pid_alive(suite.pid());
    assert!(suite.log().contains("moved to Dead: content missing"));
    assert_eq!(sink.count(), 0, "nothing was sent without its content");
    suite.stop();
    assert!(pids_alive);
}

/// The queue store's database file is damaged while the suite is down: truncated, with
/// bytes overwritten in the middle, or at its head. The suite comes back (no crash loop)
/// and accepts and delivers new mail. sled 0.34 takes the first damaged log entry for the
/// torn end of its log and drops every later one without a word; the store's flush mark
/// (`mta-store/src/durability.rs`) tells, so the damage is named in the log and in a
/// DAMAGED report, and compaction keeps the spool (the lost messages' content) meanwhile.
#[test]
fn a_damaged_store_file_at_startup_is_named_and_does_not_stop_the_suite() {
    for damage in ["truncate", "overwrite", "head"] {
        let mut suite = Suite::start(&SuiteOptions::default());
        let stopped = suite.mtacon(&["tell", "smtpmta", "stop", "outbound", "transport"]);
        assert!(stopped.status.success(), "{stopped:?}");
        let port = suite.smtp_port;
        let send = |to: &str, id: &str| -> String {
            let (mut c, _) = RawSmtp::connect(port);
            assert!(c.cmd("EHLO damage.test").starts_with("250"));
            assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
            assert!(c.cmd(&format!("RCPT TO:<{to}>")).starts_with("250"));
            assert!(c.cmd("DATA").starts_with("354"));
            c.send(format!("Subject: d\r\nMessage-ID: <{id}>\r\n\r\nbody\r\n.\r\n").as_bytes());
            c.read_reply()
        };
        for n in 0..50 {
            let r = send("rcpt@remote.test", &format!("d{n}@test"));
            assert!(r.starts_with("250"), "{r}");
        }
        suite.stop();
        let db = suite.data_dir().join("store/db");
        let len = std::fs::metadata(&db).unwrap().len();
        match damage {
            "truncate" => {
                let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
                f.set_len(len * 2 / 3).unwrap();
            }
            "overwrite" => {
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
                f.write_all_at(&vec![0x5a; 4096], len / 3).unwrap();
            }
            _ => {
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
                f.write_all_at(&[0x5a; 64], 0).unwrap();
            }
        }
        eprintln!("{damage}: db was {len} bytes");
        suite.launch();
        let r = wait_for(
            "accepting after the damage",
            Duration::from_secs(30),
            || {
                let r = send("alice@localhost", &format!("after-{damage}@test"));
                if r.starts_with("250") {
                    Ok(r)
                } else {
                    Err(r)
                }
            },
        );
        assert!(r.starts_with("250"));
        suite.wait_for_mail("alice", 1);
        let q = suite.mtacon(&["--json", "show", "queue"]);
        let q: serde_json::Value = serde_json::from_slice(&q.stdout).unwrap_or_default();
        // Everything in a queue (not parked): outbound-work, or still on its way there.
        let in_queues = |q: &serde_json::Value| -> u64 {
            q["queue"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["queue"] != "")
                .filter_map(|r| r["messages"].as_u64())
                .sum()
        };
        let survived = in_queues(&q);
        eprintln!("{damage}: {survived} of 50 queued messages came back");
        let report = suite.data_dir().join("store/DAMAGED");
        if survived < 50 {
            let log = suite.log();
            assert!(
                log.contains("is damaged: it opened at flush"),
                "{damage}: {survived} of 50 came back and the damage was not named"
            );
            // Named with the offset in store/db where sled's recovery stopped.
            let named = log
                .lines()
                .find(|l| l.contains("stops reading its log at offset"))
                .unwrap_or_else(|| panic!("{damage}: no offset named\n{}", tail(&log, 30)));
            eprintln!("{damage}: {named}");
            assert!(report.exists(), "{damage}: no DAMAGED report");
            // The spool keeps the content of the lost messages.
            let segments = mta_testkit::files_with_suffix(&suite.data_dir().join("spool"), ".seg2");
            let compact = suite.mtacon(&["tell", "smtpmta", "compact"]);
            let said = String::from_utf8_lossy(&compact.stdout).to_string()
                + &String::from_utf8_lossy(&compact.stderr);
            assert!(
                said.contains("held off"),
                "{damage}: compaction said {said}"
            );
            for seg in &segments {
                assert!(seg.exists(), "{damage}: {} removed", seg.display());
            }
            // Every lost record was rebuilt into Dead from its spool envelope: with the
            // ones that came back, all 50 acknowledged messages are accounted for.
            let rebuilt: Vec<String> = q["parked"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| {
                    m["state"] == "Dead"
                        && m["note"]
                            .as_str()
                            .is_some_and(|n| n.starts_with("rebuilt from spool segment"))
                })
                .filter_map(|m| m["qid"].as_str().map(String::from))
                .collect();
            eprintln!("{damage}: {} rebuilt into Dead", rebuilt.len());
            assert_eq!(
                survived + rebuilt.len() as u64,
                50,
                "{damage}: {q}\n{}",
                tail(&suite.log(), 30)
            );
            assert!(suite.data_dir().join("store/REBUILT").exists());
            // A rebuilt message goes through conversion and routing again when released.
            let released = suite.mtacon(&["release", "dead", &rebuilt[0]]);
            let said = String::from_utf8_lossy(&released.stdout).to_string();
            assert!(said.contains("released to inbound-work"), "{said}");
            wait_for(
                "the released message back in outbound-work",
                Duration::from_secs(30),
                || {
                    let q = suite.mtacon(&["--json", "show", "queue"]);
                    let q: serde_json::Value =
                        serde_json::from_slice(&q.stdout).unwrap_or_default();
                    let n = q["queue"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|r| r["queue"] == "outbound-work")
                        .and_then(|r| r["messages"].as_u64())
                        .unwrap_or(0);
                    if n == survived + 1 {
                        Ok(())
                    } else {
                        Err(format!("{n} in outbound-work: {q}"))
                    }
                },
            );
        }
        let supervisor_alive = pid_alive(suite.pid());
        suite.stop();
        assert!(supervisor_alive, "{damage}: the supervisor did not stay up");
    }
}
