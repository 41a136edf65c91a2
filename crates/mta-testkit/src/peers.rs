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
            if dns_answers(port) {
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

/// Sends an A query for a-only.test and reports whether any answer came back.
fn dns_answers(port: u16) -> bool {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["a-only", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    if sock.send_to(&q, ("127.0.0.1", port)).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
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
        let port = free_port();
        let dir = tempfile::Builder::new().prefix("sink-").tempdir().unwrap();
        let mut child = Command::new("python3")
            .arg(support("smtp_sink.py"))
            .args(["127.0.0.1", &port.to_string()])
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "sink did not start");
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
    let out = Command::new("python3")
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
