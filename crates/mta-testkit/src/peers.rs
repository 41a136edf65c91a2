//! Real peers for end-to-end tests: a DNS server with the test zone (dnsmasq) and an SMTP
//! sink (tests/support/smtp_sink.py), each on loopback and killed by pid when dropped.
//!
//! The zone: `two-mx.test` (MX 10 mx1 → 127.0.0.3 where nothing listens, MX 20 mx2 →
//! 127.0.0.1), `a-only.test` (A 127.0.0.1, no MX), `null-mx.test` (MX 0 .), anything else
//! `silent.test` (A 127.0.0.5, for a peer that never answers), anything else
//! under `.test` NXDOMAIN, `servfail.test` forwarded to a dead server (times out).

use crate::{free_port, wait_for, Suite};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn support(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/support")
        .join(name)
}

fn kill(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
}

/// dnsmasq on 127.0.0.1:<port> with the test zone; killed on drop.
pub struct Dns {
    child: Child,
    pub port: u16,
}

impl Dns {
    pub fn start() -> Dns {
        Dns::start_with(&[])
    }

    /// The test zone plus `extra` dnsmasq options (e.g. `--txt-record=name,text`, each
    /// text one character-string of at most 255 bytes).
    pub fn start_with(extra: &[String]) -> Dns {
        let port = free_port();
        let child = Command::new("/usr/sbin/dnsmasq")
            .args([
                "--no-daemon",
                &format!("--port={port}"),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                "--local=/test/",
                "--mx-host=two-mx.test,mx1.two-mx.test,10",
                "--mx-host=two-mx.test,mx2.two-mx.test,20",
                "--host-record=mx1.two-mx.test,127.0.0.3",
                "--host-record=mx2.two-mx.test,127.0.0.1",
                "--host-record=a-only.test,127.0.0.1",
                "--host-record=silent.test,127.0.0.5",
                "--mx-host=null-mx.test,.,0",
                "--server=/servfail.test/127.0.0.1#1",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq is installed (.ci/run installs dnsmasq-base)");
        let dns = Dns { child, port };
        wait_for("dnsmasq answering", Duration::from_secs(10), || {
            if dns_answers(port, "a-only.test", 1, Duration::from_millis(200)) {
                Ok(())
            } else {
                Err("no answer".into())
            }
        });
        dns
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// Sends a `qtype` query (1: A, 6: SOA) for `name` to the DNS server on `port` and reports
/// whether any answer came back within `wait`: the server is up.
pub(crate) fn dns_answers(port: u16, name: &str, qtype: u8, wait: Duration) -> bool {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, qtype, 0, 1]);
    if sock.send_to(&q, ("127.0.0.1", port)).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    sock.recv(&mut buf).is_ok()
}

/// The Python sink on 127.0.0.1:<port>, saving messages into its own folder.
pub struct Sink {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Sink {
    /// Flags as in tests/support/smtp_sink.py (`--tempfail-first N`, `--no-8bitmime`, …).
    pub fn start(extra: &[&str]) -> Sink {
        Sink::start_on("127.0.0.1", free_port(), extra)
    }

    /// On another loopback address (`127.0.0.21`, `::1`) and a given port: several sinks
    /// on one port, as MX hosts of one suite (whose `[outbound] port` is that port).
    pub fn start_on(host: &str, port: u16, extra: &[&str]) -> Sink {
        let dir = tempfile::Builder::new().prefix("sink-").tempdir().unwrap();
        let mut child = Command::new(crate::python3())
            .arg(support("smtp_sink.py"))
            .args([host, &port.to_string()])
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        wait_ready(&mut child, "sink");
        Sink { child, port, dir }
    }

    /// `(envelope, content)` of every message received, in order.
    pub fn messages(&self) -> Vec<(serde_json::Value, Vec<u8>)> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|p| {
                let env = std::fs::read(p.with_extension("env")).unwrap();
                (
                    serde_json::from_slice(&env).unwrap(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect()
    }

    pub fn count(&self) -> usize {
        std::fs::read_dir(self.dir.path())
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                    .count()
            })
            .unwrap_or(0)
    }

    pub fn wait_count(&self, suite: &Suite, n: usize, deadline: Duration) {
        wait_for(&format!("{n} messages at the sink"), deadline, || {
            let c = self.count();
            if c >= n {
                Ok(())
            } else {
                Err(format!("{c} so far; log tail:\n{}", tail(&suite.log(), 20)))
            }
        });
    }

    /// Message-ID → times received.
    pub fn message_ids(&self) -> HashMap<String, usize> {
        let mut ids = HashMap::new();
        for (_, content) in self.messages() {
            let text = String::from_utf8_lossy(&content);
            if let Some(line) = text
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
            {
                *ids.entry(line[11..].trim().to_string()).or_insert(0) += 1;
            }
        }
        ids
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// Reads the helper's first line, which must be `ready`.
fn wait_ready(child: &mut Child, what: &str) {
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "{what} did not start");
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What tests/support/smtp_load.py reports.
#[derive(Debug)]
pub struct LoadResult {
    /// Message-IDs of the messages that got a 250.
    pub accepted: Vec<String>,
    /// The first errors the clients saw (refused or dropped sessions, retried).
    pub errors: serde_json::Value,
}

/// Sends `count` messages over `sessions` concurrent smtplib connections to `rcpts`
/// (comma-separated), `per_conn` messages per connection; a message whose session fails is
/// retried on a new one, like a client retrying later.
pub fn smtp_load(
    port: u16,
    count: usize,
    sessions: usize,
    rcpts: &str,
    per_conn: usize,
) -> LoadResult {
    smtp_load_patient(port, count, sessions, rcpts, per_conn, 100)
}

/// `smtp_load` with each client giving up after `tries` failed sessions (0.1 s apart when
/// refused) instead of 100: enough to ride out restarts of the whole suite.
pub fn smtp_load_patient(
    port: u16,
    count: usize,
    sessions: usize,
    rcpts: &str,
    per_conn: usize,
    tries: usize,
) -> LoadResult {
    let out = Command::new(crate::python3())
        .arg(support("smtp_load.py"))
        .args([
            "127.0.0.1",
            &port.to_string(),
            &count.to_string(),
            &sessions.to_string(),
            rcpts,
            &per_conn.to_string(),
            &tries.to_string(),
        ])
        .output()
        .expect("python3");
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let accepted = result["accepted"]
        .as_array()
        .expect("accepted list")
        .iter()
        .map(|v| v.as_str().expect("message-id").to_string())
        .collect();
    LoadResult {
        accepted,
        errors: result["errors"].clone(),
    }
}

/// The system account `name` (created with `useradd --system` if missing; tests run as
/// root in CI): its uid and gid. Safe to call from tests running at the same time: a
/// concurrent creation ("already exists", or the passwd file locked) is waited out.
pub fn system_user(name: &str) -> (u32, u32) {
    let lookup = || nix::unistd::User::from_name(name).ok().flatten();
    let start = std::time::Instant::now();
    loop {
        if let Some(user) = lookup() {
            return (user.uid.as_raw(), user.gid.as_raw());
        }
        let out = Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .output()
            .expect("useradd (package passwd)");
        // 9: the name was taken meanwhile (by a test running in parallel); 10: the passwd
        // file is locked by that other useradd.
        let code = out.status.code();
        if !(out.status.success() || code == Some(9) || code == Some(10)) {
            panic!(
                "useradd {name} failed ({:?}): {} (the mail-user tests need root)",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "user {name} never appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Dovecot's own folder (`prefix…` in the temp dir) for its config, logs and runtime
/// files, owned by the mail user it runs as.
fn dovecot_dir(prefix: &str, uid: u32, gid: u32) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
    dir
}

/// Writes `conf` as `dir`'s `dovecot.conf`, owned by the mail user.
fn write_dovecot_conf(dir: &Path, conf: &str, uid: u32, gid: u32) {
    let path = dir.join("dovecot.conf");
    std::fs::write(&path, conf).unwrap();
    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
}

/// Dovecot's IMAP server on 127.0.0.1:<port>, with a config file of its own, run wholly
/// as `user` (Dovecot's rootless mode: every service as that user, no chroot), serving
/// `maildir:<maildirs>/<login>` to any login with the password `secret`. Killed by pid on
/// drop.
pub struct Dovecot {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Dovecot {
    pub fn start(user: &str, maildirs: &Path) -> Dovecot {
        let (uid, gid) = system_user(user);
        let (dir, port) = (dovecot_dir("dovecot-", uid, gid), free_port());
        let conf = format!(
            r#"# Written by mta-testkit: Dovecot as the mail user, for the suite's Maildirs.
{prelude}protocols = imap
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:{maildirs}/%n
passdb {{
  driver = static
  args = password=secret
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={maildirs}/%n
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
"#,
            prelude = rootless_prelude(dir.path(), user, uid, gid),
            maildirs = maildirs.display()
        );
        write_dovecot_conf(dir.path(), &conf, uid, gid);
        let child = spawn_dovecot(dir.path(), uid, gid);
        let dovecot = Dovecot { child, port, dir };
        wait_for("dovecot's IMAP greeting", Duration::from_secs(15), || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
                .map_err(|e| format!("{e}; log: {}", dovecot.log()))?;
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 64];
            let n = std::io::Read::read(&mut s, &mut buf).map_err(|e| e.to_string())?;
            if buf[..n].starts_with(b"* OK") {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&buf[..n]).into_owned())
            }
        });
        dovecot
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// Every message in `login`'s INBOX, read over IMAP with Python's imaplib: its
    /// Message-ID header and its body (`BODY[TEXT]`), in IMAP order.
    pub fn fetch(&self, login: &str) -> Vec<(String, Vec<u8>)> {
        let script = r#"
import imaplib, json, sys
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
m.login(sys.argv[2], "secret")
m.select("INBOX", readonly=True)
out = []
for n in m.search(None, "ALL")[1][0].split():
    typ, data = m.fetch(n, "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)] BODY.PEEK[TEXT])")
    parts = [p for p in data if isinstance(p, tuple)]
    header = next(p[1] for p in parts if b"HEADER" in p[0])
    body = next(p[1] for p in parts if b"TEXT" in p[0])
    mid = header.decode().split(":", 1)[1].strip() if b":" in header else ""
    out.append({"message_id": mid, "body": body.hex()})
m.logout()
print(json.dumps(out))
"#;
        let out = Command::new(crate::python3())
            .arg("-c")
            .arg(script)
            .arg(self.port.to_string())
            .arg(login)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "imaplib failed: {}\ndovecot log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        list.iter()
            .map(|m| {
                let body = m["body"].as_str().unwrap();
                (
                    m["message_id"].as_str().unwrap().to_string(),
                    (0..body.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&body[i..i + 2], 16).expect("hex"))
                        .collect(),
                )
            })
            .collect()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        stop_dovecot(&mut self.child);
    }
}

/// The settings every test Dovecot shares: its folders under `dir`, its log, and every
/// service as `user` (rootless: no chroot, no privileged listener).
fn rootless_prelude(dir: &Path, user: &str, uid: u32, gid: u32) -> String {
    let d = dir.display();
    format!(
        "base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
listen = 127.0.0.1
ssl = no
default_internal_user = {user}
default_internal_group = {user}
default_login_user = {user}
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}
"
    )
}

/// Starts `dir/dovecot.conf` in the foreground as `uid`/`gid`.
fn spawn_dovecot(dir: &Path, uid: u32, gid: u32) -> Child {
    use std::os::unix::process::CommandExt as _;
    Command::new("/usr/sbin/dovecot")
        .arg("-F")
        .arg("-c")
        .arg(dir.join("dovecot.conf"))
        .uid(uid)
        .gid(gid)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dovecot is installed (scripts/test installs dovecot-imapd and dovecot-lmtpd)")
}

/// SIGTERM (the master stops its services itself), then SIGKILL after 10 s.
fn stop_dovecot(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(child);
}

/// Dovecot's LMTP server, run wholly as `user` (rootless, as [`Dovecot`]), listening on a
/// Unix socket ([`DovecotLmtp::socket`], mode 0666) and on 127.0.0.1:<port>. It knows the
/// users of its `users` file (passwd-file; [`DovecotLmtp::set_users`] rewrites it, and
/// Dovecot reads it again at the next lookup) and delivers to `maildir:<dir>/mail/<user>`
/// with the quota plugin: a user's `quota` is a quota rule (`"*:storage=1K"`), and a
/// message over it gets `452 4.2.2` (`quota_full_tempfail = yes`). User names are the
/// local parts of the RCPT addresses (`auth_username_format = %Ln`); anyone else gets
/// `550 5.1.1`. Prepared first (the socket's path is known before it listens), then
/// started; killed by pid on drop.
pub struct DovecotLmtp {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    uid: u32,
    gid: u32,
    user: String,
}

impl DovecotLmtp {
    /// Writes the config and the users (`(name, quota rule)`), starts nothing.
    pub fn prepare(user: &str, users: &[(&str, Option<&str>)]) -> DovecotLmtp {
        let (uid, gid) = system_user(user);
        let (dir, port) = (dovecot_dir("dovecot-lmtp-", uid, gid), free_port());
        let d = dir.path().display();
        let conf = format!(
            r#"# Written by mta-testkit: Dovecot LMTP as the mail user, with quotas.
{prelude}protocols = lmtp
auth_username_format = %Ln
mail_location = maildir:{d}/mail/%n
mail_plugins = quota
quota_full_tempfail = yes
lmtp_rcpt_check_quota = no
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = passwd-file
  args = {d}/users
  default_fields = uid={uid} gid={gid} home={d}/mail/%n
}}
plugin {{
  quota = maildir:User quota
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
}}
service anvil {{
  chroot =
}}
"#,
            prelude = rootless_prelude(dir.path(), user, uid, gid),
        );
        write_dovecot_conf(dir.path(), &conf, uid, gid);
        let lmtp = DovecotLmtp {
            child: None,
            port,
            dir,
            uid,
            gid,
            user: user.to_string(),
        };
        lmtp.set_users(users);
        lmtp
    }

    /// Rewrites the users file: `(name, quota rule)`; no rule: no quota.
    pub fn set_users(&self, users: &[(&str, Option<&str>)]) {
        let text: String = users
            .iter()
            .map(|(name, quota)| match quota {
                // user:password:uid:gid:gecos:home:shell:extra fields
                Some(rule) => format!("{name}:::::::userdb_quota_rule={rule}\n"),
                None => format!("{name}:::::::\n"),
            })
            .collect();
        let path = self.dir.path().join("users");
        std::fs::write(&path, text).unwrap();
        std::os::unix::fs::chown(&path, Some(self.uid), Some(self.gid)).unwrap();
    }

    /// The LMTP Unix socket (it exists once Dovecot listens).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/lmtp")
    }

    /// Starts Dovecot and waits for its Unix socket and its port to answer `220`.
    pub fn start(&mut self) {
        self.child = Some(spawn_dovecot(self.dir.path(), self.uid, self.gid));
        let greeting = |mut s: Box<dyn std::io::Read>| -> Result<(), String> {
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if buf[..n].starts_with(b"220") {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&buf[..n]).into_owned())
            }
        };
        wait_for("dovecot's LMTP greeting", Duration::from_secs(15), || {
            let tcp = std::net::TcpStream::connect(("127.0.0.1", self.port))
                .map_err(|e| format!("{e}; log: {}", self.log()))?;
            tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            greeting(Box::new(tcp))?;
            let unix = std::os::unix::net::UnixStream::connect(self.socket())
                .map_err(|e| format!("{e}; log: {}", self.log()))?;
            unix.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            greeting(Box::new(unix))
        });
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `user`'s Maildir as Dovecot writes it.
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir.path().join("mail").join(user)
    }

    /// Every message file in `user`'s INBOX (`new/` and `cur/`).
    pub fn messages(&self, user: &str) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.maildir(user).join(sub)) {
                files.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        }
        files.sort();
        files
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// The account Dovecot runs as.
    pub fn user(&self) -> &str {
        &self.user
    }
}

impl Drop for DovecotLmtp {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            stop_dovecot(child);
        }
    }
}

/// An MTA-STS policy server (tests/support/sts_server.py): HTTPS on `host:443` with the
/// given certificate, serving `policy_dir/<Host>.txt` (re-read at each request; absent:
/// 404). Killed on drop.
pub struct StsServer {
    child: Child,
    pub policy_dir: PathBuf,
}

impl StsServer {
    pub fn start(host: &str, cert: &Path, key: &Path, policy_dir: &Path) -> StsServer {
        let mut child = Command::new(crate::python3())
            .arg(support("sts_server.py"))
            .args([host, "443"])
            .arg(cert)
            .arg(key)
            .arg(policy_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        wait_ready(&mut child, &format!("MTA-STS policy server on {host}:443"));
        StsServer {
            child,
            policy_dir: policy_dir.to_path_buf(),
        }
    }

    /// How many policy fetches for `host` it has answered (or refused).
    pub fn hits(&self, host: &str) -> usize {
        std::fs::read_to_string(self.policy_dir.join("hits"))
            .map(|t| {
                t.lines()
                    .filter(|l| l.starts_with(&format!("{host} ")))
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for StsServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
