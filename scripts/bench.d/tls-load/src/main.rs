//! tls-load — the TLS SMTP load client of scripts/bench (smtp-source has no TLS).
//!
//! Every session is one TCP connection: 220, EHLO, STARTTLS, a full TLS handshake, EHLO
//! again, then the work of the mode, then QUIT. No session resumption: the one client
//! config has resumption disabled, so every connection pays a full handshake, as a new
//! client does. The certificate is not checked (the bench's MTAs present a self-signed one;
//! the figures are about the server's cost, not about trust), but the handshake signature
//! is (the verifier of smtpmta's own `[outbound.tls] policy = "may"`, from mta-tls). No SNI,
//! as the Python client it replaced sent none.
//!
//! Modes (one JSON object on stdout at the end):
//!   send       --count N messages of --size bytes over --sessions concurrent workers, one
//!              message per session (as `smtp-source -s 20` without -d);
//!              {"t0", "t1", "sent", "errors", "tls": {version/cipher: n}, "client_cpu_pct"}
//!   handshake  --count N sessions that do STARTTLS and QUIT, no mail (handshake cost);
//!              --plain: the same sessions without STARTTLS (the baseline to subtract);
//!              the same keys with "sessions_done" for "sent"
//!   idle       --count N sessions left open after the handshake (with EHLO done), at most
//!              --sessions opening at once; prints {"ready": n, "errors"} once all are up,
//!              then holds them until stdin closes, then {"held": n}
//!
//! `tls` counts the sessions by the names Python's ssl module gives (`TLSv1.3
//! TLS_AES_256_GCM_SHA384`, `TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384`), or `plaintext`;
//! `errors` holds the first 10 failed attempts. A session is retried up to 20 times, 50 ms
//! apart (idle: 100 ms); a send or handshake session that fails 20 times ends the run with
//! exit status 1. `client_cpu_pct` is this process's user + system CPU over the run
//! (getrusage), in % of one core.
//!
//! One thread (a current-thread tokio runtime): the client shares the bench machine's cores
//! with the MTA it measures, so it must be cheap rather than fast. Its own cost, measured on
//! the 2-core bench machine while it was loaded (docs/BENCHMARKS.md, "TLS (issue 11)"):
//! 380–470 µs of CPU per STARTTLS session with one 1 KiB message against smtpmta (29 % of a
//! core at 759 msg/s), 690–770 µs against Postfix; the Python client it replaced took
//! 1.6–2.4 ms in the same runs. `client_cpu_pct` near 100 would still mean the figure is the
//! client's, not the MTA's.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use mta_tls::rustls;
use mta_tls::tokio_rustls::TlsConnector;
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader,
};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const EHLO: &[u8] = b"EHLO tls-load.localhost\r\n";
/// Connect, the handshake, and each reply (the Python client had none on replies; a hung
/// server now fails the attempt instead of the bench's 900 s timeout).
const TIMEOUT: Duration = Duration::from_secs(60);
const ATTEMPTS: usize = 20;
const MAX_ERRORS: usize = 10;
/// Replies are short; the TLS layer has its own buffers.
const READ_BUF: usize = 2048;

#[derive(Parser)]
#[command(
    name = "tls-load",
    about = "TLS SMTP load client for scripts/bench (smtp-source has no TLS)"
)]
struct Args {
    mode: Mode,
    host: String,
    port: u16,
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// concurrent sessions
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    #[arg(long, default_value_t = 1024)]
    size: usize,
    #[arg(long, default_value = "bench@sender.example")]
    sender: String,
    #[arg(long, default_value = "rcpt@remote.example")]
    rcpt: String,
    /// no STARTTLS (the baseline)
    #[arg(long)]
    plain: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Send,
    Handshake,
    Idle,
}

/// Why one attempt at a session failed (recorded in `errors`, then retried).
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("ConnectionError: connection closed")]
    Closed,
    #[error("RuntimeError: expected {expected}, got {got:?}")]
    Reply { expected: &'static str, got: String },
    #[error("RuntimeError: {0}")]
    Protocol(&'static str),
    #[error("TimeoutError: {0} after {TIMEOUT:?}")]
    Timeout(&'static str),
    #[error("OSError: {0}")]
    Io(#[from] std::io::Error),
}

/// What every session needs: where to go and how to do TLS.
struct Target {
    addr: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open session after its (second) EHLO.
struct Session {
    io: BufReader<Box<dyn Io>>,
    line: Vec<u8>,
    /// The name `tls` counts it under.
    tls: String,
}

async fn reply<S: AsyncBufRead + Unpin>(
    io: &mut S,
    line: &mut Vec<u8>,
    expect: &'static str,
) -> Result<(), AttemptError> {
    loop {
        line.clear();
        let n = tokio::time::timeout(TIMEOUT, io.read_until(b'\n', line))
            .await
            .map_err(|_| AttemptError::Timeout("reply"))??;
        if n == 0 {
            return Err(AttemptError::Closed);
        }
        if line.get(3) != Some(&b'-') {
            if !line.starts_with(expect.as_bytes()) {
                let got = String::from_utf8_lossy(line).trim_end().to_string();
                return Err(AttemptError::Reply {
                    expected: expect,
                    got,
                });
            }
            return Ok(());
        }
    }
}

async fn cmd<S: AsyncBufRead + AsyncWrite + Unpin>(
    io: &mut S,
    line: &mut Vec<u8>,
    data: &[u8],
    expect: &'static str,
) -> Result<(), AttemptError> {
    io.write_all(data).await?;
    // tokio-rustls may keep a record it could not write yet; flush sends it.
    io.flush().await?;
    reply(io, line, expect).await
}

async fn open_session(target: &Target) -> Result<Session, AttemptError> {
    let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(target.addr))
        .await
        .map_err(|_| AttemptError::Timeout("connect"))??;
    // Lockstep commands: without it Nagle holds the EHLO written right after the handshake's
    // Finished until the server's delayed ACK (asyncio, which the Python client used, sets it).
    tcp.set_nodelay(true)?;
    let mut line = Vec::with_capacity(256);
    let mut plain = BufReader::with_capacity(READ_BUF, tcp);
    reply(&mut plain, &mut line, "220").await?;
    cmd(&mut plain, &mut line, EHLO, "250").await?;
    let Some((connector, name)) = &target.tls else {
        if !plain.buffer().is_empty() {
            return Err(AttemptError::Protocol("bytes after the EHLO reply"));
        }
        let io: Box<dyn Io> = Box::new(plain.into_inner());
        return Ok(Session {
            io: BufReader::with_capacity(READ_BUF, io),
            line,
            tls: "plaintext".into(),
        });
    };
    cmd(&mut plain, &mut line, b"STARTTLS\r\n", "220").await?;
    // Anything the server sent after its 220 would be lost by into_inner, and is a protocol
    // error anyway: the handshake must come next.
    if !plain.buffer().is_empty() {
        return Err(AttemptError::Protocol("bytes after the STARTTLS reply"));
    }
    let tls = tokio::time::timeout(TIMEOUT, connector.connect(name.clone(), plain.into_inner()))
        .await
        .map_err(|_| AttemptError::Timeout("TLS handshake"))??;
    let name = tls_name(tls.get_ref().1);
    let io: Box<dyn Io> = Box::new(tls);
    let mut s = Session {
        io: BufReader::with_capacity(READ_BUF, io),
        line,
        tls: name,
    };
    cmd(&mut s.io, &mut s.line, EHLO, "250").await?;
    Ok(s)
}

/// Python's ssl names (`SSLSocket.version()`, `cipher()[0]`), so that figures and logs read
/// the same as with the client this one replaced: TLS 1.3 suites by their IANA name, TLS 1.2
/// ones by OpenSSL's.
fn tls_name(conn: &rustls::CommonState) -> String {
    // What smtpmta's own sessions log and put in Received: fields, with the cipher renamed.
    let info = mta_smtp::TlsInfo::of(conn);
    format!("{} {}", info.version, cipher_name(&info.cipher))
}

/// rustls's name of a cipher suite (its `Debug`) as Python's ssl gives it.
fn cipher_name(rustls_name: &str) -> String {
    match rustls_name {
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => "ECDHE-ECDSA-AES256-GCM-SHA384".to_string(),
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => "ECDHE-ECDSA-AES128-GCM-SHA256".to_string(),
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            "ECDHE-ECDSA-CHACHA20-POLY1305".to_string()
        }
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => "ECDHE-RSA-AES256-GCM-SHA384".to_string(),
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => "ECDHE-RSA-AES128-GCM-SHA256".to_string(),
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => "ECDHE-RSA-CHACHA20-POLY1305".to_string(),
        // rustls says TLS13_AES_256_GCM_SHA384; IANA (and OpenSSL) TLS_AES_256_GCM_SHA384.
        other => match other.strip_prefix("TLS13_") {
            Some(rest) => format!("TLS_{rest}"),
            None => other.to_string(),
        },
    }
}

/// QUIT, then close_notify (TLS) and FIN; the session is over either way, so failures here
/// are not the run's business (as in the Python client).
async fn quit(mut s: Session) {
    let _ = cmd(&mut s.io, &mut s.line, b"QUIT\r\n", "221").await;
    let _ = tokio::time::timeout(TIMEOUT, s.io.shutdown()).await;
}

/// The message of session `i`: the same bytes the Python client's `message()` made
/// (headers, then 76 × `x` lines cut at a line end so the total is about `size`).
fn message(i: usize, size: usize, sender: &str, rcpt: &str, now: u64) -> Vec<u8> {
    let head = format!(
        "From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: tls load {i}\r\nMessage-ID: <tls{i}.{now}@tls-load.localhost>\r\n\r\n"
    );
    let line = [&[b'x'; 76][..], b"\r\n"].concat();
    let want = size.saturating_sub(head.len()).max(2);
    let mut body = line.repeat(size / line.len() + 1);
    body.truncate(want);
    match body.windows(2).rposition(|w| w == b"\r\n") {
        Some(at) => body.truncate(at + 2),
        None => body.extend_from_slice(b"\r\n"),
    }
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    out
}

/// The middle of a `send` session: one transaction, no pipelining (as smtp-source without -P).
async fn transaction(s: &mut Session, i: usize, a: &Args) -> Result<(), AttemptError> {
    let mail = format!("MAIL FROM:<{}>\r\n", a.sender);
    cmd(&mut s.io, &mut s.line, mail.as_bytes(), "250").await?;
    let rcpt = format!("RCPT TO:<{}>\r\n", a.rcpt);
    cmd(&mut s.io, &mut s.line, rcpt.as_bytes(), "250").await?;
    cmd(&mut s.io, &mut s.line, b"DATA\r\n", "354").await?;
    // Content and terminator in one write: one TLS record and one syscall where the size
    // allows (the server reads the same bytes either way).
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut data = message(i, a.size, &a.sender, &a.rcpt, now);
    data.extend_from_slice(b".\r\n");
    cmd(&mut s.io, &mut s.line, &data, "250").await
}

#[derive(Default)]
struct Tally {
    errors: Vec<String>,
    tls: BTreeMap<String, u64>,
}

impl Tally {
    fn error(&mut self, e: &AttemptError) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e.to_string());
        }
    }
}

struct Run {
    args: Args,
    target: Target,
    next: AtomicUsize,
    tally: Mutex<Tally>,
}

/// One worker of `send` / `handshake`: takes the next session number until all are done.
async fn worker(run: Arc<Run>) -> anyhow::Result<()> {
    loop {
        let i = run.next.fetch_add(1, Ordering::Relaxed);
        if i >= run.args.count {
            return Ok(());
        }
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let attempt = async {
                let mut s = open_session(&run.target).await?;
                if run.args.mode == Mode::Send {
                    transaction(&mut s, i, &run.args).await?;
                }
                let name = std::mem::take(&mut s.tls);
                quit(s).await;
                Ok::<_, AttemptError>(name)
            };
            match attempt.await {
                Ok(name) => {
                    *run.tally
                        .lock()
                        .expect("tally")
                        .tls
                        .entry(name)
                        .or_default() += 1;
                    last = None;
                    break;
                }
                Err(e) => {
                    run.tally.lock().expect("tally").error(&e);
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        if let Some(e) = last {
            anyhow::bail!("session {i} failed {ATTEMPTS} times: {e}");
        }
    }
}

/// This process's user + system CPU so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF and a valid pointer: the call cannot fail.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

async fn run_sessions(run: Arc<Run>) -> anyhow::Result<serde_json::Value> {
    let c0 = cpu_time();
    let t0 = unix_now();
    let mut workers = JoinSet::new();
    for _ in 0..run.args.sessions.max(1) {
        workers.spawn(worker(run.clone()));
    }
    while let Some(done) = workers.join_next().await {
        // The first session that failed 20 times ends the run (dropping the set aborts
        // the other workers), as the Python client's exception did.
        done.context("worker panicked")??;
    }
    let t1 = unix_now();
    let cpu = (cpu_time() - c0).as_secs_f64();
    let tally = std::mem::take(&mut *run.tally.lock().expect("tally"));
    let done: u64 = tally.tls.values().sum();
    let key = if run.args.mode == Mode::Send {
        "sent"
    } else {
        "sessions_done"
    };
    Ok(json!({
        "t0": t0, "t1": t1, key: done, "errors": tally.errors, "tls": tally.tls,
        "client_cpu_pct": 100.0 * cpu / (t1 - t0).max(1e-9),
    }))
}

/// `idle`: open `count` sessions (at most `sessions` at a time), report, hold until stdin
/// closes.
async fn idle(run: Arc<Run>) -> anyhow::Result<serde_json::Value> {
    raise_nofile_limit();
    let gate = Arc::new(tokio::sync::Semaphore::new(run.args.sessions.max(1)));
    let mut opening = JoinSet::new();
    for _ in 0..run.args.count {
        let (run, gate) = (run.clone(), gate.clone());
        opening.spawn(async move {
            let _permit = gate.acquire().await.expect("semaphore never closed");
            for _ in 0..ATTEMPTS {
                match open_session(&run.target).await {
                    Ok(s) => return Some(s),
                    Err(e) => {
                        run.tally.lock().expect("tally").error(&e);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            None
        });
    }
    let mut held = Vec::with_capacity(run.args.count);
    while let Some(done) = opening.join_next().await {
        if let Some(s) = done.context("opening task panicked")? {
            held.push(s);
        }
    }
    let errors = std::mem::take(&mut run.tally.lock().expect("tally").errors);
    println!("{}", json!({"ready": held.len(), "errors": errors}));
    // Blocking stdin on its own thread (the workspace's tokio has no io-std): the sessions
    // stay open, unread, until the bench closes our stdin.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = tx.send(());
    });
    let _ = rx.await;
    let n = held.len();
    drop(held);
    Ok(json!({"held": n}))
}

/// 1,000 sessions need more descriptors than the usual soft limit of 1,024.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let hard = if lim.rlim_max == libc::RLIM_INFINITY {
            65536
        } else {
            lim.rlim_max.min(65536)
        };
        lim.rlim_cur = lim.rlim_cur.max(hard);
        lim.rlim_max = lim.rlim_max.max(lim.rlim_cur);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

fn target(a: &Args) -> anyhow::Result<Target> {
    let addr = (a.host.as_str(), a.port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}:{}", a.host, a.port))?
        .next()
        .with_context(|| format!("{}:{} has no address", a.host, a.port))?;
    if a.plain {
        return Ok(Target { addr, tls: None });
    }
    let config = mta_tls::client_config(mta_config::TlsPolicy::May, None)
        .context("building the TLS client config")?
        .context("policy `may` has a TLS client config")?;
    let mut config = Arc::unwrap_or_clone(config);
    // Every session a full handshake: no tickets or session ids kept between connections.
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_sni = false;
    let name = ServerName::IpAddress(addr.ip().into());
    Ok(Target {
        addr,
        tls: Some((TlsConnector::from(Arc::new(config)), name)),
    })
}

fn main() -> std::process::ExitCode {
    // One line, not anyhow's report: bench.py shows the last 800 characters of our output,
    // which a backtrace (RUST_BACKTRACE set in the environment) would fill.
    match run_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tls-load: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let target = target(&args)?;
    let run = Arc::new(Run {
        args,
        target,
        next: AtomicUsize::new(0),
        tally: Mutex::default(),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let out = rt.block_on(async {
        match run.args.mode {
            Mode::Idle => idle(run.clone()).await,
            Mode::Send | Mode::Handshake => run_sessions(run.clone()).await,
        }
    })?;
    println!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_names_are_pythons() {
        let names = [
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ]
        .map(|s| cipher_name(&format!("{s:?}")));
        assert_eq!(
            names,
            [
                "TLS_AES_256_GCM_SHA384",
                "TLS_CHACHA20_POLY1305_SHA256",
                "ECDHE-ECDSA-AES256-GCM-SHA384"
            ]
        );
    }

    /// Lengths and ends of what tls_load.py's `message(7, size, …)` made at time 1764680000.
    #[test]
    fn message_is_the_python_clients() {
        let (s, r) = ("bench@sender.example", "rcpt@remote.example");
        let small = message(7, 0, s, r, 1764680000);
        assert_eq!(
            small,
            b"From: <bench@sender.example>\r\nTo: <rcpt@remote.example>\r\nSubject: tls load 7\r\n\
              Message-ID: <tls7.1764680000@tls-load.localhost>\r\n\r\nxx\r\n"
        );
        for (size, len) in [
            (0, 134),
            (10, 134),
            (100, 134),
            (1024, 988),
            (102400, 102388),
        ] {
            let m = message(7, size, s, r, 1764680000);
            assert_eq!(m.len(), len, "size {size}");
            assert!(m.ends_with(b"\r\n"));
            assert!(
                !m.windows(3).any(|w| w == b"\n.\r"),
                "no line needs dot-stuffing"
            );
        }
    }
}
