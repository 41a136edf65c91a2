//! `user =`: the suite runs as an unprivileged mail user (issue 11, section 5).
//!
//! These tests create a system account (`useradd --system`, once; they run as root in
//! CI), start the supervisor as root with `user = "smtpmta-mail"`, and check what an
//! administrator sees: every process runs as that user, Maildirs belong to it with modes
//! Dovecot accepts, Dovecot running as that user serves the delivered mail byte for byte,
//! ports below 1024 work (the supervisor binds them and passes them to isesctl) even
//! across `stop`/`start inbound transport` and an isesctl restart, the Unix sockets are
//! closed to other users, and an unknown user stops the start naming file, line and key.

use mta_testkit::peers::{system_user, tail, Dovecot};
use mta_testkit::{bin, maildir_new, wait_for, Suite, SuiteOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MAIL_USER: &str = "smtpmta-mail";

/// A suite started as root with `user = MAIL_USER`; its folder is made traversable for
/// that user (a tempdir is 0700 root), as any data_dir's parents must be, and its binaries
/// are copied there, as an install would: the build folder may sit in a clone only root may
/// enter.
fn suite_as_mail_user(mut opts: SuiteOptions) -> (Suite, u32, u32) {
    let (uid, gid) = system_user(MAIL_USER);
    opts.top.push_str(&format!("user = \"{MAIL_USER}\"\n"));
    let mut suite = Suite::prepare(&opts);
    suite.install_binaries();
    suite.launch();
    (suite, uid, gid)
}

/// Real, effective, saved and file-system ids of `pid`, and its supplementary groups.
fn ids(pid: u32) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or("")
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

fn swaks(port: u16, args: &[&str]) -> std::process::Output {
    Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{port}"), "--timeout", "20"])
        .args(args)
        .output()
        .expect("swaks is installed (scripts/test installs it)")
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every file and folder under `dir` (itself included).
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < all.len() {
        if all[i].is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&all[i])
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .collect();
            entries.sort();
            all.extend(entries);
        }
        i += 1;
    }
    all
}

/// The three messages sent through the suite: the bodies are awkward on purpose (a line
/// that starts with a dot, an empty line, trailing blanks, a tab, a 998-byte line, "From ").
fn messages() -> Vec<(String, Vec<u8>)> {
    let long = "x".repeat(998);
    let bodies = [
        "Hello Dovecot.\r\n".to_string(),
        format!(".a line that starts with a dot\r\n..and two\r\n\r\nFrom me, after an empty line  \r\n\tand a tab\r\n{long}\r\n"),
        "last one\r\nwith a few lines\r\n-- \r\nsig\r\n".to_string(),
    ];
    bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            let id = format!("<mail-user-{i}-{}@test>", std::process::id());
            let message = format!(
                "From: x@example.org\r\nTo: alice@localhost\r\nSubject: message {i}\r\nMessage-ID: {id}\r\n\r\n{body}"
            );
            (id, message.into_bytes())
        })
        .collect()
}

fn body_of(message: &[u8]) -> &[u8] {
    let at = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header/body separator");
    &message[at + 4..]
}

#[test]
fn dovecot_as_the_mail_user_reads_over_imap_what_the_router_delivered() {
    let (suite, uid, gid) = suite_as_mail_user(SuiteOptions::default());

    // Every process of the suite runs as the mail user, with its group only.
    let pids: Vec<u32> = suite
        .tasks()
        .unwrap()
        .iter()
        .filter(|t| t["parent"].is_null())
        .filter_map(|t| t["pid"].as_u64().map(|p| p as u32))
        .collect();
    assert_eq!(pids.len(), 7, "the supervisor and six tasks: {pids:?}");
    assert!(pids.contains(&suite.pid()));
    for pid in &pids {
        let (uids, gids, groups) = ids(*pid);
        assert_eq!(uids, vec![uid; 4], "pid {pid}: uids");
        assert_eq!(gids, vec![gid; 4], "pid {pid}: gids");
        assert_eq!(groups, vec![gid], "pid {pid}: supplementary groups");
    }
    assert!(suite.log().contains(&format!("running as {MAIL_USER}")));

    let sent = messages();
    for (i, (_, message)) in sent.iter().enumerate() {
        // swaks ends the data with CRLF . CRLF after the file's last byte (and dot-stuffs):
        // the file is the message without its last line end.
        let file = suite.dir.path().join(format!("message-{i}.eml"));
        std::fs::write(&file, message.strip_suffix(b"\r\n").unwrap()).unwrap();
        let out = swaks(
            suite.smtp_port,
            &[
                "--to",
                "alice@localhost",
                "--from",
                "x@example.org",
                "--data",
                &format!("@{}", file.display()),
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    suite.wait_for_mail("alice", sent.len());

    // The Maildir as Dovecot wants it: the mail user's, folders 0700, files 0600.
    let maildir = suite.mailbox("alice");
    for path in tree(&suite.data_dir().join("mail")) {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (uid, gid),
            "{} is not the mail user's",
            path.display()
        );
        let mode = meta.permissions().mode() & 0o777;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{}: mode {mode:o}", path.display());
    }
    assert_eq!(maildir_new(&maildir).len(), sent.len());

    // Dovecot, as the mail user, reads them; each body is what was sent, byte for byte.
    let dovecot = Dovecot::start(MAIL_USER, &suite.data_dir().join("mail"));
    let (duids, _, _) = ids(dovecot.pid());
    assert_eq!(duids, vec![uid; 4], "dovecot runs as the mail user");
    let fetched = dovecot.fetch("alice");
    assert_eq!(
        fetched.len(),
        sent.len(),
        "messages over IMAP; dovecot log:\n{}",
        dovecot.log()
    );
    for (id, message) in &sent {
        let (_, body) = fetched
            .iter()
            .find(|(mid, _)| mid == id)
            .unwrap_or_else(|| panic!("{id} not served over IMAP: {fetched:?}"));
        assert_eq!(
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(body_of(message)),
            "{id}: the body over IMAP differs from the body sent"
        );
    }
    assert!(
        !dovecot.log().contains("Permission denied"),
        "{}",
        dovecot.log()
    );
}

/// Loopback ports below 1024 that nobody listens on now (only this test uses them).
fn free_low_ports(n: usize) -> Vec<u16> {
    let seed = std::process::id() as u16;
    let mut ports = Vec::new();
    for i in 0..400u16 {
        let port = 600 + (seed.wrapping_add(i.wrapping_mul(7))) % 400;
        if ports.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
            if ports.len() == n {
                return ports;
            }
        }
    }
    panic!("no {n} free loopback ports below 1024");
}

/// The server's greeting on `port` (over implicit TLS when `tls`), or why there is none.
fn greeting(port: u16, tls: bool) -> Result<String, String> {
    if tls {
        let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10))
print(s.recv(512).decode(), end="")
"#;
        let out = Command::new(mta_testkit::python3())
            .args(["-c", script, &port.to_string()])
            .output()
            .unwrap();
        return if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        };
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).map_err(|e| e.to_string())?;
    let _ = s.write_all(b"QUIT\r\n");
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn refused(port: u16) -> bool {
    matches!(
        std::net::TcpStream::connect(("127.0.0.1", port)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

fn mtacon_ok(suite: &Suite, args: &[&str]) -> String {
    let out = suite.mtacon(args);
    assert!(out.status.success(), "mtacon {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ports_below_1024_work_as_the_mail_user_across_stop_start_and_an_isesctl_restart() {
    let ports = free_low_ports(3);
    let (relay, submission, submissions) = (ports[0], ports[1], ports[2]);
    let opts = SuiteOptions {
        sections: vec![
            ("inbound", format!("listen = [\"127.0.0.1:{relay}\"]")),
            (
                "inbound",
                format!("submission_listen = [\"127.0.0.1:{submission}\"]"),
            ),
            (
                "inbound",
                format!("submissions_listen = [\"127.0.0.1:{submissions}\"]"),
            ),
        ],
        ..SuiteOptions::default()
    };
    let (suite, uid, _) = suite_as_mail_user(opts);
    let isesctl = suite.task_pid("isesctl").expect("isesctl pid");
    assert_eq!(
        ids(isesctl).0,
        vec![uid; 4],
        "isesctl runs as the mail user"
    );

    let serving = |what: &str| {
        wait_for(what, Duration::from_secs(20), || {
            for (port, tls) in [(relay, false), (submission, false), (submissions, true)] {
                let g = greeting(port, tls)?;
                if !g.starts_with("220 ") {
                    return Err(format!("port {port}: {g}"));
                }
            }
            Ok(())
        })
    };
    serving("greetings on the three ports");
    let out = swaks(relay, &["--to", "bob@localhost", "--from", "x@example.org"]);
    assert!(out.status.success(), "{}", text(&out));
    suite.wait_for_mail("bob", 1);

    // Stopped: refused, as when isesctl closed its own sockets. Started again: served,
    // though isesctl, as the mail user, could not bind these ports itself.
    let said = mtacon_ok(&suite, &["tell", "smtpmta", "stop", "inbound", "transport"]);
    assert!(said.contains("stopped"), "{said}");
    for port in [relay, submission, submissions] {
        assert!(refused(port), "port {port} still accepts after stop");
    }
    let said = mtacon_ok(
        &suite,
        &["tell", "smtpmta", "start", "inbound", "transport"],
    );
    assert!(said.contains("started"), "{said}");
    serving("greetings after start inbound transport");

    // A crashed isesctl comes back on the same sockets.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(isesctl as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(
        "a new isesctl running",
        Duration::from_secs(20),
        || match suite.tasks()?.iter().find(|t| t["name"] == "isesctl") {
            Some(t) if t["state"] == "running" && t["pid"].as_u64() != Some(isesctl as u64) => {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        },
    );
    serving("greetings after an isesctl restart");
    let out = swaks(relay, &["--to", "bob@localhost", "--from", "x@example.org"]);
    assert!(out.status.success(), "{}", text(&out));
    suite.wait_for_mail("bob", 2);
    assert!(
        !suite.log().contains("cannot listen"),
        "{}",
        tail(&suite.log(), 30)
    );
}

#[test]
fn the_sockets_are_closed_to_other_users() {
    let (suite, uid, gid) = suite_as_mail_user(SuiteOptions::default());
    let run = suite.run_dir();
    let meta = std::fs::metadata(&run).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (uid, gid), "run/ owner");
    assert_eq!(meta.permissions().mode() & 0o777, 0o700, "run/ mode");
    let sockets: Vec<PathBuf> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sock"))
        .collect();
    assert_eq!(
        sockets.len(),
        7,
        "the supervisor's and six tasks': {sockets:?}"
    );
    for s in &sockets {
        let meta = std::fs::symlink_metadata(s).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{}", s.display());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", s.display());
    }
    // Connecting for real: `nobody` is refused, the mail user gets through (so the
    // refusal is the permissions', not a dead socket's).
    let connect_as = |who: u32| {
        use std::os::unix::process::CommandExt as _;
        let script = "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1]); print('connected')\nexcept OSError as e:\n    print(type(e).__name__)\n";
        let out = Command::new(mta_testkit::python3())
            .args(["-c", script])
            .arg(run.join("smtpmta.sock"))
            .uid(who)
            .gid(if who == uid { gid } else { 65534 })
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(connect_as(65534), "PermissionError");
    assert_eq!(connect_as(uid), "connected");
    // root (the operator's mtacon) still reaches the console.
    let tasks = suite.tasks().unwrap();
    assert_eq!(
        tasks.iter().filter(|t| t["parent"].is_null()).count(),
        7,
        "{tasks:?}"
    );
}

#[test]
fn an_unknown_user_stops_the_start_naming_file_line_and_key() {
    let opts = SuiteOptions {
        top: "user = \"no-such-smtpmta-user\"\n".into(),
        ..SuiteOptions::default()
    };
    let suite = Suite::prepare(&opts);
    let out = Command::new(bin("smtpmta"))
        .arg("--config")
        .arg(&suite.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = std::fs::read_to_string(&suite.config)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("user ="))
        .unwrap()
        + 1;
    let file = std::fs::canonicalize(&suite.config).unwrap();
    assert!(
        err.contains(&format!(
            "{}:{line}: key `user`: no such user `no-such-smtpmta-user`",
            file.display()
        )),
        "{err}"
    );
    assert!(!suite.data_dir().exists(), "nothing touched on disk");
}

#[test]
fn a_data_dir_written_as_root_is_handed_to_the_mail_user() {
    // First a run as root, as before `user =`: root's Maildir file.
    let mut suite = Suite::prepare(&SuiteOptions::default());
    suite.install_binaries();
    suite.launch();
    let out = swaks(
        suite.smtp_port,
        &["--to", "alice@localhost", "--from", "x@example.org"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let first = suite.wait_for_mail("alice", 1);
    assert_eq!(std::fs::metadata(&first[0]).unwrap().uid(), 0);
    suite.stop();

    // Then with `user =`: the old files become the mail user's, and new ones are too.
    let (uid, gid) = system_user(MAIL_USER);
    let config = std::fs::read_to_string(&suite.config).unwrap();
    std::fs::write(&suite.config, format!("user = \"{MAIL_USER}\"\n{config}")).unwrap();
    suite.launch();
    let out = swaks(
        suite.smtp_port,
        &["--to", "alice@localhost", "--from", "x@example.org"],
    );
    assert!(out.status.success(), "{}", text(&out));
    suite.wait_for_mail("alice", 2);
    for path in tree(&suite.data_dir()) {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if path.parent() == Some(suite.run_dir().as_path())
            && path.file_name().is_some_and(|n| n == "smtpmta.pid")
        {
            continue; // made by root before the drop, removed at stop
        }
        assert_eq!(
            (meta.uid(), meta.gid()),
            (uid, gid),
            "{} is not the mail user's",
            path.display()
        );
    }
    let dovecot = Dovecot::start(MAIL_USER, &suite.data_dir().join("mail"));
    assert_eq!(dovecot.fetch("alice").len(), 2, "{}", dovecot.log());
}
