//! A scripted milter for end-to-end tests: the milter side of the protocol, written here
//! (blocking sockets, a thread per connection) so it shares no code with `mta-milter`.
//!
//! `TestMilter::start(mode)` listens on a free loopback port. In `Mode::Script`, each
//! command from the MTA (after option negotiation, which grants every action and asks
//! for every event) is handed with the macros received so far to the script, whose
//! replies are written back. `Mode::Hang` negotiates and then never answers;
//! `Mode::Garbage` answers the first event with bytes that are no milter packet. Every
//! event is recorded (`events()`). The listener thread stops when dropped.

use crate::free_port;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One event the MTA sent: its command code, its NUL-separated strings (for BODY: the raw
/// chunk as one string), and every macro defined so far in the connection.
#[derive(Clone, Debug)]
pub struct Event {
    pub code: char,
    pub args: Vec<String>,
    pub macros: BTreeMap<String, String>,
}

/// A reply packet: code and data.
pub type Packet = (u8, Vec<u8>);

pub type Script = Arc<dyn Fn(&Event) -> Vec<Packet> + Send + Sync>;

#[derive(Clone)]
pub enum Mode {
    Script(Script),
    Hang,
    Garbage,
}

pub struct TestMilter {
    pub port: u16,
    events: Arc<Mutex<Vec<Event>>>,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
}

/// Reply builders (SMFIR_*).
pub mod reply {
    use super::Packet;

    fn strings(code: u8, parts: &[&str]) -> Packet {
        let mut data = Vec::new();
        for p in parts {
            data.extend_from_slice(p.as_bytes());
            data.push(0);
        }
        (code, data)
    }
    fn indexed(code: u8, index: u32, name: &str, value: &str) -> Packet {
        let mut p = strings(code, &[name, value]);
        p.1.splice(0..0, index.to_be_bytes());
        p
    }
    /// The replies without data (a `const` of a `Vec` is a fresh one at each use).
    pub const CONTINUE: Packet = (b'c', Vec::new());
    pub const ACCEPT: Packet = (b'a', Vec::new());
    pub const REJECT: Packet = (b'r', Vec::new());
    pub const TEMPFAIL: Packet = (b't', Vec::new());
    pub const DISCARD: Packet = (b'd', Vec::new());
    pub const PROGRESS: Packet = (b'p', Vec::new());
    pub fn reply_code(text: &str) -> Packet {
        strings(b'y', &[text])
    }
    pub fn quarantine(reason: &str) -> Packet {
        strings(b'q', &[reason])
    }
    pub fn add_header(name: &str, value: &str) -> Packet {
        strings(b'h', &[name, value])
    }
    pub fn insert_header(index: u32, name: &str, value: &str) -> Packet {
        indexed(b'i', index, name, value)
    }
    /// An empty value deletes the field.
    pub fn change_header(index: u32, name: &str, value: &str) -> Packet {
        indexed(b'm', index, name, value)
    }
    pub fn replace_body(body: &[u8]) -> Packet {
        (b'b', body.to_vec())
    }
    pub fn add_rcpt(rcpt: &str) -> Packet {
        strings(b'+', &[rcpt])
    }
    pub fn del_rcpt(rcpt: &str) -> Packet {
        strings(b'-', &[rcpt])
    }
    pub fn change_from(from: &str) -> Packet {
        strings(b'e', &[from])
    }
}

impl TestMilter {
    pub fn start(mode: Mode) -> TestMilter {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the test milter");
        listener.set_nonblocking(true).expect("nonblocking");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let (ev, st, n) = (
            Arc::clone(&events),
            Arc::clone(&stop),
            Arc::clone(&connections),
        );
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        n.fetch_add(1, Ordering::Relaxed);
                        let (mode, ev, st) = (mode.clone(), Arc::clone(&ev), Arc::clone(&st));
                        std::thread::spawn(move || serve(stream, mode, ev, st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TestMilter {
            port,
            events,
            stop,
            connections,
        }
    }

    /// TCP connections the MTA has opened to this milter so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// `inet:127.0.0.1:<port>`
    pub fn address(&self) -> String {
        format!("inet:127.0.0.1:{}", self.port)
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("events").clone()
    }
}

impl Drop for TestMilter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_packet(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut p = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut p).ok()?;
    let code = *p.first()?;
    Some((code, p[1..].to_vec()))
}

fn write_packet(s: &mut TcpStream, (code, data): &Packet) -> bool {
    let mut out = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(*code);
    out.extend_from_slice(data);
    s.write_all(&out).is_ok()
}

fn split(data: &[u8]) -> Vec<String> {
    let mut parts: Vec<String> = data
        .split(|&b| b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    if data.last() == Some(&0) {
        parts.pop();
    }
    parts
}

fn serve(mut s: TcpStream, mode: Mode, events: Arc<Mutex<Vec<Event>>>, stop: Arc<AtomicBool>) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut macros = BTreeMap::new();
    loop {
        let Some((code, data)) = read_packet(&mut s) else {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            // A read timeout with no packet: keep waiting; a closed socket: done.
            let mut probe = [0u8; 1];
            match s.peek(&mut probe) {
                Ok(0) => return,
                _ => continue,
            }
        };
        match code {
            b'O' => {
                let offer = [
                    6u32.to_be_bytes(),
                    0x1ffu32.to_be_bytes(),
                    0u32.to_be_bytes(),
                ];
                if !write_packet(&mut s, &(b'O', offer.concat())) {
                    return;
                }
                continue;
            }
            b'D' => {
                let strings = split(&data[1..]);
                for pair in strings.chunks(2) {
                    if let [name, value] = pair {
                        macros.insert(name.clone(), value.clone());
                    }
                }
                continue;
            }
            b'Q' => return,
            // QUIT_NC: this client is done, the next starts with its connect event.
            b'K' => {
                macros.clear();
                continue;
            }
            _ => {}
        }
        let args = if code == b'B' {
            vec![String::from_utf8_lossy(&data).into_owned()]
        } else {
            split(&data)
        };
        let event = Event {
            code: code as char,
            args,
            macros: macros.clone(),
        };
        events.lock().expect("events").push(event.clone());
        if code == b'A' {
            continue; // ABORT has no reply
        }
        let replies = match &mode {
            // Nothing said: continue.
            Mode::Script(script) => match script(&event) {
                r if r.is_empty() => vec![reply::CONTINUE],
                r => r,
            },
            Mode::Hang => {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return;
            }
            Mode::Garbage => {
                let _ = s.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n");
                return;
            }
        };
        for r in &replies {
            if !write_packet(&mut s, r) {
                return;
            }
        }
    }
}

/// rspamd (Debian's package) with its own configuration folder and ports: the proxy worker
/// in milter mode, scanning by itself (`self_scan`), on `port`; modules that need the
/// network or redis off, DNS pointed at a closed loopback port, a tiny TLD list (the full
/// one takes most of a minute to compile on a busy machine). The system's rspamd service is
/// not touched. Stopped with its process group (SIGTERM, then SIGKILL) when dropped.
pub struct Rspamd {
    child: Option<std::process::Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

/// Modules off: network lookups (DNS lists, SPF/DKIM/DMARC, fuzzy hashes, maps fetched
/// over HTTP) and redis-backed state.
const RSPAMD_OFF: &[&str] = &[
    "rbl",
    "fuzzy_check",
    "asn",
    "dkim_signing",
    "arc",
    "spf",
    "dkim",
    "dmarc",
    "phishing",
    "surbl",
    "url_redirector",
    "multimap",
    "neural",
    "reputation",
    "replies",
    "ratelimit",
    "greylist",
    "history_redis",
    "dcc",
    "maillist",
    "mx_check",
    "rspamd_update",
];

impl Rspamd {
    pub fn start() -> Rspamd {
        let dir = tempfile::Builder::new()
            .prefix("rspamd-test-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        for sub in ["override.d", "local.d", "db", "run", "log"] {
            std::fs::create_dir_all(d.join(sub)).expect("rspamd folders");
        }
        let (port, normal, controller) = (free_port(), free_port(), free_port());
        let write = |name: &str, text: String| std::fs::write(d.join(name), text).expect(name);
        write(
            "override.d/worker-normal.inc",
            format!("bind_socket = \"127.0.0.1:{normal}\";\ncount = 1;\n"),
        );
        write(
            "override.d/worker-controller.inc",
            format!("bind_socket = \"127.0.0.1:{controller}\";\ncount = 1;\n"),
        );
        write(
            "override.d/worker-proxy.inc",
            format!(
                "bind_socket = \"127.0.0.1:{port}\";\nmilter = yes;\ntimeout = 120s;\nself_scan = yes;\ncount = 1;\nspam_header = \"X-Spam\";\nupstream \"local\" {{\n  default = yes;\n  self_scan = yes;\n}}\n"
            ),
        );
        write(
            "override.d/logging.inc",
            format!(
                "type = \"file\";\nfilename = \"{}\";\nlevel = \"info\";\n",
                d.join("log/rspamd.log").display()
            ),
        );
        write(
            "tld.dat",
            "com\norg\nnet\ntest\nexample\nlocalhost\n".into(),
        );
        write(
            "local.d/options.inc",
            format!(
                "dns {{\n  nameserver = [\"127.0.0.1:9\"];\n  timeout = 1s;\n  retransmits = 1;\n}}\nurl_tld = \"{}\";\n",
                d.join("tld.dat").display()
            ),
        );
        // Our messages come from 127.0.0.1: rspamd must still add its headers.
        write(
            "local.d/milter_headers.conf",
            "extended_spam_headers = true;\nskip_local = false;\nskip_authenticated = false;\n"
                .into(),
        );
        for module in RSPAMD_OFF {
            write(
                &format!("local.d/{module}.conf"),
                "enabled = false;\n".into(),
            );
        }
        let mut rspamd = Rspamd {
            child: None,
            port,
            dir,
        };
        rspamd.launch();
        rspamd
    }

    fn launch(&mut self) {
        use std::os::unix::process::CommandExt as _;
        let d = self.dir.path();
        let var = |name: &str, sub: &str| format!("--var={name}={}", d.join(sub).display());
        let user = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map_or_else(|| "root".to_string(), |u| u.name);
        let group = nix::unistd::Group::from_gid(nix::unistd::getgid())
            .ok()
            .flatten()
            .map_or_else(|| "root".to_string(), |g| g.name);
        let child = std::process::Command::new("rspamd")
            .args([
                "-f",
                "-i",
                "-u",
                &user,
                "-g",
                &group,
                "-c",
                "/etc/rspamd/rspamd.conf",
            ])
            .arg(format!("--var=LOCAL_CONFDIR={}", d.display()))
            .args([
                var("DBDIR", "db"),
                var("RUNDIR", "run"),
                var("LOGDIR", "log"),
            ])
            .stdout(std::fs::File::create(d.join("stdout.txt")).expect("stdout"))
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("rspamd is installed (scripts/test installs the Debian package)");
        self.child = Some(child);
        let port = self.port;
        crate::wait_for("rspamd's milter port", Duration::from_secs(60), || {
            TcpStream::connect(("127.0.0.1", port))
                .map(drop)
                .map_err(|e| format!("{e}; log:\n{}", crate::peers::tail(&self.log(), 10)))
        });
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log/rspamd.log")).unwrap_or_default()
    }

    /// `inet:127.0.0.1:<port>`
    pub fn address(&self) -> String {
        format!("inet:127.0.0.1:{}", self.port)
    }

    /// Stops rspamd (its whole process group) and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
    }
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        self.stop();
    }
}
