//! A real Redis for fleet tests: Debian's `redis-server` on a free loopback port with its
//! own folder (no persistence, no other client), killed by pid when dropped. `kill9` and
//! `restart` let a test take it away mid-load and bring it back on the same port.

use crate::{free_port, wait_for};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const REDIS_SERVER: &str = "/usr/bin/redis-server";
pub const REDIS_CLI: &str = "/usr/bin/redis-cli";

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("smtpmta-redis-")
            .tempdir()
            .expect("tempdir");
        let mut redis = Redis {
            child: None,
            port: free_port(),
            dir,
        };
        redis.spawn();
        redis
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) {
        let log = self.dir.path().join("redis.log");
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {REDIS_SERVER} (scripts/test installs redis-server): {e}")
            });
        self.child = Some(child);
        wait_for(
            "redis-server to answer PING",
            Duration::from_secs(10),
            || match self.cli(&["PING"]) {
                Ok(out) if out.trim() == "PONG" => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }

    /// `redis-cli -p <port> ARGS…`: its standard output, or why it failed.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(REDIS_CLI)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && !text.starts_with("Could not connect") {
            Ok(text)
        } else {
            Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// `INFO commandstats` as `(command, calls)`, e.g. `("evalsha", 412)`.
    pub fn command_calls(&self) -> Vec<(String, u64)> {
        let text = self.cli(&["INFO", "commandstats"]).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
                Some((name.to_string(), calls.parse().ok()?))
            })
            .collect()
    }

    /// `kill -9`, as a crash; the port and folder stay for `restart`.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Starts again on the same port (empty: nothing was persisted).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn kill(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill9();
    }
}
