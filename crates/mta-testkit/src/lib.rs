//! mta-testkit — what the end-to-end tests share.
//!
//! `Suite::start` writes a configuration into a fresh temporary folder (data under it,
//! SMTP on a free loopback port), starts the real `smtpmta` binary from the build folder
//! and waits until every task is running. Dropping the `Suite` stops it: SIGTERM to the
//! supervisor's pid, then SIGKILL to it and to every task pid it reported if they outlive
//! a deadline. `wait_for` polls a condition until a deadline and fails with what it saw
//! last, so no test sleeps for a fixed time.
//!
//! `Suite::mount_lazyfs` puts the data folder on a power-loss file system (`lazyfs`), and
//! `Suite::power_loss` kills every process of the suite with SIGKILL and drops whatever was
//! not fsynced.

pub mod dnssec;
pub mod lazyfs;
pub mod milter;
pub mod peers;
pub mod redis;

use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The folder holding the suite's binaries: next to the test executable's `deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test exe folder");
    let dir = if deps.ends_with("deps") {
        deps.parent().expect("profile folder")
    } else {
        deps
    };
    dir.to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built; run scripts/test (it builds the binaries first)",
        path.display()
    );
    path
}

/// The python3 the tests run (smtplib clients, the sink, dkimpy): `SMTPMTA_TEST_PYTHON`
/// when set, else Debian's `/usr/bin/python3` when it is there (scripts/test installs
/// python3-dkim, python3-dnspython and python3-nacl for it, so no module comes from PyPI),
/// else the first `python3` on PATH. A python3 of one's own first on PATH (pyenv, a
/// virtualenv) lacks Debian's modules.
pub fn python3() -> PathBuf {
    if let Some(p) = std::env::var_os("SMTPMTA_TEST_PYTHON") {
        return p.into();
    }
    let debian = Path::new("/usr/bin/python3");
    if debian.exists() {
        debian.to_path_buf()
    } else {
        PathBuf::from("python3")
    }
}

/// The binaries a running suite starts: the supervisor, its tasks and the console.
pub const SUITE_BINARIES: [&str; 8] = [
    "smtpmta", "isesctl", "imsgcnv", "router", "omsgcnv", "osesctl", "drt", "mtacon",
];

/// A loopback port nobody listens on right now.
/// A loopback port nothing listens on, for a server the test starts. Taken below the
/// kernel's ephemeral range (32768 and up by default): a port handed out by binding port 0
/// comes from that range, which is also where every outgoing connection of the tests
/// running in parallel takes its source port, so between this call and the server's bind
/// one of those connections could take it ("Address already in use"). Each test process
/// starts at its own place in the range (from its pid) and walks on from there.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    for _ in 0..SPAN {
        let port = (LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The most intervals (open, close) in effect at once: connections open together, from a
/// sink's connection log. A close and an open at the same instant: the close first.
pub fn most_at_once(intervals: impl IntoIterator<Item = (f64, f64)>) -> usize {
    let mut edges: Vec<(f64, i32)> = Vec::new();
    for (open, close) in intervals {
        edges.push((open, 1));
        edges.push((close, -1));
    }
    edges.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

/// Polls `probe` every 50 ms until it returns `Ok`, or panics after `deadline` with the
/// last `Err` it returned.
pub fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) => {
                if start.elapsed() > deadline {
                    panic!("timed out after {deadline:?} waiting for {what}; last seen: {last}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The supervisor's own check (a zombie is not alive), for the tests.
pub use mta_task::pid_alive;

pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Options for the generated configuration.
#[derive(Clone, Debug, Default)]
pub struct SuiteOptions {
    /// Extra lines appended to the top level (before any table).
    pub top: String,
    /// Extra keys per section, e.g. `("inbound", "max_handlers = 3")`.
    pub sections: Vec<(&'static str, String)>,
    /// The directory file's content; `None` = postmaster plus a few test users.
    pub directory: Option<String>,
    /// Runs the suite with its test-only fault hooks on (`tell <task> debug panic`).
    pub test_hooks: bool,
    /// Extra environment for the supervisor (and so its tasks), e.g. a test hook's setting.
    pub env: Vec<(&'static str, String)>,
}

pub const DEFAULT_DIRECTORY: &str = r#"
[[user]]
name = "postmaster"
addresses = ["postmaster@localhost", "root@localhost"]
maildir = "mail/postmaster"

[[user]]
name = "alice"
addresses = ["alice@localhost"]
maildir = "mail/alice"

[[user]]
name = "bob"
addresses = ["bob@localhost"]
maildir = "mail/bob"

[aliases]
"abuse@localhost" = ["postmaster@localhost"]
"team@localhost" = ["alice@localhost", "bob@localhost"]
"#;

/// A running suite in its own temporary folder.
pub struct Suite {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub smtp_port: u16,
    /// `[inbound] submission_listen` (STARTTLS + AUTH), on a free loopback port.
    pub submission_port: u16,
    /// `[inbound] submissions_listen` (implicit TLS + AUTH), on a free loopback port.
    pub submissions_port: u16,
    child: Option<Child>,
    test_hooks: bool,
    env: Vec<(&'static str, String)>,
    /// Every task pid seen, so none can outlive the test.
    seen_pids: Vec<u32>,
    /// The power-loss file system under `data_dir`, when mounted.
    lazyfs: Option<lazyfs::LazyFs>,
    /// Where the suite's binaries are started from: the build folder, or the copy
    /// [`Suite::install_binaries`] made.
    bins: PathBuf,
}

impl Suite {
    /// Writes the configuration only (for tests of bad configs or second instances).
    pub fn prepare(opts: &SuiteOptions) -> Suite {
        let dir = tempfile::Builder::new()
            .prefix("smtpmta-test-")
            .tempdir()
            .expect("tempdir");
        let smtp_port = free_port();
        let (submission_port, submissions_port) = (free_port(), free_port());
        // Suites run in parallel: the submission listeners' embedded defaults (2587, 2465)
        // would collide, so each suite gets free ports unless the test sets them.
        let given = |key: &str| {
            opts.sections
                .iter()
                .any(|(n, l)| *n == "inbound" && l.trim_start().starts_with(key))
        };
        // A test that sets `listen` itself (ports below 1024, tests/mail_user.rs) talks to
        // its own addresses; `smtp_port` is then unused.
        let mut inbound = Vec::new();
        if !given("listen") {
            inbound.push(format!("listen = [\"127.0.0.1:{smtp_port}\"]"));
        }
        if !given("submission_listen") {
            inbound.push(format!(
                "submission_listen = [\"127.0.0.1:{submission_port}\"]"
            ));
        }
        if !given("submissions_listen") {
            inbound.push(format!(
                "submissions_listen = [\"127.0.0.1:{submissions_port}\"]"
            ));
        }
        let mut sections: Vec<(&str, Vec<String>)> = vec![
            ("inbound", inbound),
            ("outbound", vec![]),
            ("dns", vec![]),
            ("debug", vec![]),
        ];
        // Suites run in parallel: no fixed metrics port unless a test asks for one.
        if !opts
            .sections
            .iter()
            .any(|(n, l)| *n == "metrics" && l.trim_start().starts_with("listen"))
        {
            sections.push(("metrics", vec!["listen = \"\"".into()]));
        }
        // Tests never query the Internet's DNS: unless a test runs its own server, queries
        // go to a closed loopback port and fail as temporary errors at once.
        if !opts
            .sections
            .iter()
            .any(|(n, l)| *n == "dns" && l.trim_start().starts_with("nameservers"))
        {
            sections
                .iter_mut()
                .find(|(n, _)| *n == "dns")
                .expect("dns section")
                .1
                .push("nameservers = [\"127.0.0.1:9\"]".into());
        }
        for (name, line) in &opts.sections {
            match sections.iter_mut().find(|(n, _)| n == name) {
                Some((_, lines)) => lines.push(line.clone()),
                None => sections.push((name, vec![line.clone()])),
            }
        }
        let mut text = format!(
            "hostname = \"mta.test\"\ndata_dir = \"var\"\nlocal_domains = [\"localhost\"]\ntrusted_networks = [\"127.0.0.0/8\"]\ndirectory = \"directory.toml\"\n{}\n",
            opts.top
        );
        for (name, lines) in sections {
            text.push_str(&format!("\n[{name}]\n{}\n", lines.join("\n")));
        }
        let config = dir.path().join("smtpmta.toml");
        std::fs::write(&config, text).expect("write config");
        std::fs::write(
            dir.path().join("directory.toml"),
            opts.directory.as_deref().unwrap_or(DEFAULT_DIRECTORY),
        )
        .expect("write directory");
        Suite {
            dir,
            config,
            smtp_port,
            submission_port,
            submissions_port,
            child: None,
            test_hooks: opts.test_hooks,
            env: opts.env.clone(),
            seen_pids: Vec::new(),
            lazyfs: None,
            bins: bin_dir(),
        }
    }

    /// Copies the suite's binaries into `<dir>/bin` (a hard link when the build folder is
    /// on the same file system) and starts them from there, as an install would: a process
    /// that drops to another user runs its tasks from a folder that user can reach, while the
    /// build folder may sit in a clone only root may enter. Makes the suite's folder
    /// traversable (0755) so the copy is reachable. Before `launch`.
    pub fn install_binaries(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let to = self.dir.path().join("bin");
        std::fs::create_dir_all(&to).expect("bin folder");
        for name in SUITE_BINARIES {
            let from = bin(name);
            let dest = to.join(name);
            if std::fs::hard_link(&from, &dest).is_err() {
                std::fs::copy(&from, &dest).unwrap_or_else(|e| {
                    panic!("copy {} to {}: {e}", from.display(), dest.display())
                });
            }
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        for dir in [self.dir.path(), to.as_path()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        self.bins = to;
    }

    /// The suite's binary `name`, from where this suite starts its binaries.
    pub fn bin(&self, name: &str) -> PathBuf {
        let path = self.bins.join(name);
        assert!(path.exists(), "{} is missing", path.display());
        path
    }

    pub fn start(opts: &SuiteOptions) -> Suite {
        let mut suite = Suite::prepare(opts);
        suite.launch();
        suite
    }

    /// Starts the supervisor and waits until all six tasks run.
    pub fn launch(&mut self) {
        if let Err(e) = self.try_launch(Duration::from_secs(20)) {
            panic!("{e}");
        }
    }

    /// Starts the supervisor and waits until all tasks run, or says why not (the
    /// supervisor exited, or the deadline passed) with the log's tail.
    pub fn try_launch(&mut self, deadline: Duration) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut command = Command::new(self.bin("smtpmta"));
        if self.test_hooks {
            command.env("SMTPMTA_TEST_HOOKS", "1");
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = command
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start smtpmta");
        self.child = Some(child);
        let pid = self.pid();
        let start = Instant::now();
        loop {
            if !pid_alive(pid) {
                if let Some(mut child) = self.child.take() {
                    let _ = child.wait();
                }
                return Err(format!(
                    "smtpmta exited while starting; log tail:\n{}",
                    peers::tail(&self.log(), 30)
                ));
            }
            let last = match self.tasks() {
                Ok(tasks) => {
                    let running = tasks
                        .iter()
                        .filter(|t| t["parent"].is_null() && t["state"] == "running")
                        .count();
                    if running == 7 {
                        break;
                    }
                    format!("{running} of 7 running: {tasks:?}")
                }
                Err(e) => e,
            };
            if start.elapsed() > deadline {
                return Err(format!(
                    "timed out after {deadline:?} waiting for all tasks running; last seen: {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.remember_pids();
        Ok(())
    }

    /// Mounts the power-loss file system at `data_dir` (before `launch`).
    pub fn mount_lazyfs(&mut self) -> Result<(), String> {
        self.lazyfs = Some(lazyfs::LazyFs::mount(&self.data_dir())?);
        Ok(())
    }

    /// The power-loss file system, if mounted.
    pub fn lazyfs(&self) -> Option<&lazyfs::LazyFs> {
        self.lazyfs.as_ref()
    }

    /// The supervisor and every process descending from it (found through /proc parent
    /// pids), plus any task seen earlier that is still alive (an orphan of a killed
    /// supervisor).
    fn process_tree(&self, root: u32) -> Vec<u32> {
        let mut parents: Vec<(u32, u32)> = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                    if let Some(pp) = parent_pid(pid) {
                        parents.push((pid, pp));
                    }
                }
            }
        }
        let mut tree = vec![root];
        let mut grew = true;
        while grew {
            grew = false;
            for (pid, pp) in &parents {
                if tree.contains(pp) && !tree.contains(pid) {
                    tree.push(*pid);
                    grew = true;
                }
            }
        }
        for pid in &self.seen_pids {
            if !tree.contains(pid) && pid_alive(*pid) {
                tree.push(*pid);
            }
        }
        tree
    }

    /// kill -9 of the supervisor and every process of the suite, all in the same instant
    /// (each is stopped first, so none can start another or write after its neighbours
    /// died); returns once all are dead and the supervisor is reaped.
    pub fn kill9_all(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let Some(root) = self.child.as_ref().map(|c| c.id()) else {
            return;
        };
        // Freeze the whole tree (again until no new process shows up), then kill it.
        let mut frozen: Vec<u32> = Vec::new();
        loop {
            let tree = self.process_tree(root);
            let new: Vec<u32> = tree.into_iter().filter(|p| !frozen.contains(p)).collect();
            if new.is_empty() {
                break;
            }
            for pid in new {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGSTOP);
                frozen.push(pid);
            }
        }
        for pid in &frozen {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        wait_for(
            "every process of the suite gone",
            Duration::from_secs(15),
            || {
                let alive: Vec<u32> = frozen.iter().copied().filter(|p| pid_alive(*p)).collect();
                if alive.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{alive:?}"))
                }
            },
        );
        for pid in frozen {
            if !self.seen_pids.contains(&pid) {
                self.seen_pids.push(pid);
            }
        }
    }

    /// Power loss: kill -9 of every process of the suite, then the file system under
    /// `data_dir` drops everything not fsynced. Call `launch` to restart on what survived.
    pub fn power_loss(&mut self) -> Result<lazyfs::PowerLoss, String> {
        self.remember_pids();
        self.kill9_all();
        self.lazyfs
            .as_mut()
            .ok_or("power_loss needs mount_lazyfs first")?
            .power_loss()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("suite launched").id()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("var")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.data_dir().join("run")
    }

    /// A directory user's Maildir (`<data_dir>/mail/<user>`).
    pub fn mailbox(&self, user: &str) -> PathBuf {
        self.data_dir().join("mail").join(user)
    }

    /// Waits until `user`'s Maildir has at least `n` messages in `new/`; returns them.
    pub fn wait_for_mail(&self, user: &str, n: usize) -> Vec<PathBuf> {
        wait_for(
            &format!("{n} message(s) for {user}"),
            Duration::from_secs(20),
            || {
                let files = maildir_new(&self.mailbox(user));
                if files.len() >= n {
                    Ok(files)
                } else {
                    Err(format!(
                        "{} files; log tail:\n{}",
                        files.len(),
                        peers::tail(&self.log(), 20)
                    ))
                }
            },
        )
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("smtpmta.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs `mtacon --config … <args>`.
    pub fn mtacon(&self, args: &[&str]) -> Output {
        Command::new(self.bin("mtacon"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run mtacon")
    }

    /// `show tasks --json` rows, or why not.
    pub fn tasks(&self) -> Result<Vec<Value>, String> {
        let out = self.mtacon(&["--json", "show", "tasks"]);
        if !out.status.success() {
            return Err(format!(
                "mtacon failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        v["tasks"]
            .as_array()
            .cloned()
            .ok_or_else(|| format!("no tasks in {v}"))
    }

    /// The pid of a task as `show tasks` reports it (None while restarting).
    pub fn task_pid(&self, name: &str) -> Option<u32> {
        let tasks = self.tasks().ok()?;
        tasks
            .iter()
            .find(|t| t["name"] == name && t["parent"].is_null())?["pid"]
            .as_u64()
            .map(|p| p as u32)
    }

    pub fn remember_pids(&mut self) {
        // Also called from Drop while a test unwinds: a missing mtacon (binaries not
        // built) must not panic again there, which would abort the test binary and leave
        // its Redis, DNS server and sink running.
        if !self.bins.join("mtacon").exists() {
            return;
        }
        if let Ok(tasks) = self.tasks() {
            for t in tasks {
                if let Some(p) = t["pid"].as_u64() {
                    if !self.seen_pids.contains(&(p as u32)) {
                        self.seen_pids.push(p as u32);
                    }
                }
            }
        }
    }

    /// Every task pid seen so far.
    pub fn seen_pids(&self) -> &[u32] {
        &self.seen_pids
    }

    /// Waits for the supervisor to exit and returns its exit code.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if start.elapsed() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig);
    }

    /// Stops the suite now (SIGTERM, then SIGKILL to whatever outlives the deadline);
    /// dropping the `Suite` does the same.
    pub fn stop(&mut self) {
        self.remember_pids();
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in &self.seen_pids {
            if pid_alive(*pid) && parent_pid(*pid).is_some_and(|pp| pp == 1 || !pid_alive(pp)) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Drop for Suite {
    fn drop(&mut self) {
        self.stop();
        // Unmount before the temporary folder goes (nothing of the suite runs now).
        drop(self.lazyfs.take());
        if std::thread::panicking() {
            eprintln!(
                "---- smtpmta log ({}) ----\n{}",
                self.log_path().display(),
                self.log()
            );
        }
    }
}

/// Everything under `dir` (recursively) whose name ends with `suffix`.
pub fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_with_suffix(&p, suffix));
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out
}

/// A raw SMTP client for protocol tests: exact bytes out, replies in.
pub struct RawSmtp {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
}

impl RawSmtp {
    /// Connects and reads the greeting.
    pub fn connect(port: u16) -> (RawSmtp, String) {
        Self::connect_from(None, port)
    }

    /// Connects from a given loopback source address (e.g. 127.0.0.2 for an untrusted client).
    pub fn connect_from(source: Option<std::net::Ipv4Addr>, port: u16) -> (RawSmtp, String) {
        let stream = match source {
            None => std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"),
            Some(ip) => {
                let socket = nix::sys::socket::socket(
                    nix::sys::socket::AddressFamily::Inet,
                    nix::sys::socket::SockType::Stream,
                    nix::sys::socket::SockFlag::empty(),
                    None,
                )
                .expect("socket");
                let local = nix::sys::socket::SockaddrIn::from(std::net::SocketAddrV4::new(ip, 0));
                nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&socket), &local)
                    .expect("bind source");
                let remote = nix::sys::socket::SockaddrIn::from(std::net::SocketAddrV4::new(
                    std::net::Ipv4Addr::LOCALHOST,
                    port,
                ));
                nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&socket), &remote)
                    .expect("connect");
                std::net::TcpStream::from(socket)
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut c = RawSmtp {
            stream,
            buf: Vec::new(),
        };
        let greeting = c.read_reply();
        (c, greeting)
    }

    /// A second handle on the connection, e.g. to write from another thread while this one
    /// reads the replies (a client that pipelines more than the socket buffers hold).
    pub fn try_clone_stream(&self) -> std::net::TcpStream {
        self.stream.try_clone().expect("clone stream")
    }

    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends one command line (CRLF added) and returns the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    /// Reads one (possibly multi-line) reply; "" if the server closed the connection.
    pub fn read_reply(&mut self) -> String {
        use std::io::Read;
        let mut reply = String::new();
        loop {
            while let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let line = String::from_utf8_lossy(&line[..line.len() - 2]).to_string();
                let last = line.len() < 4 || line.as_bytes()[3] == b' ';
                reply.push_str(&line);
                if last {
                    return reply;
                }
                reply.push('\n');
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return reply,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Files in a Maildir's `new/`.
pub fn maildir_new(maildir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(maildir.join("new"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Message-ID → copies, over the given message files.
pub fn message_ids(files: &[PathBuf]) -> std::collections::HashMap<String, usize> {
    let mut ids = std::collections::HashMap::new();
    for f in files {
        let text = std::fs::read(f).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        if let Some(line) = text
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
        {
            *ids.entry(line[11..].trim().to_string()).or_insert(0) += 1;
        }
    }
    ids
}
