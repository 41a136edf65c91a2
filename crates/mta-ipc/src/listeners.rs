//! The SMTP listening sockets, bound by the supervisor and passed on to isesctl.
//!
//! Ports 25, 465 and 587 need root to bind, and with `user =` only the supervisor ever is
//! root (before it drops). So the supervisor binds every `[inbound]` address at start and
//! keeps the sockets for its lifetime; isesctl inherits them across `exec` (they are the
//! only descriptors it gets without `FD_CLOEXEC`), named in `SMTPMTA_LISTEN_FDS`:
//!
//! ```text
//! SMTPMTA_LISTEN_FDS=listen@127.0.0.1:25=7 submission_listen@127.0.0.1:587=8
//! ```
//!
//! `tell smtpmta stop inbound transport` must still refuse new connections, as it did
//! when isesctl closed its own sockets: [`stop_listening`] takes the socket out of the
//! listening state (`shutdown(SHUT_RD)`, which Linux turns into "not listening" while
//! the port stays bound to it), and [`relisten`] arms it again with `listen(2)`, which
//! needs no privilege. A restarted isesctl gets the same sockets again, so while it is
//! down connections wait in the queue instead of being refused.
//!
//! The same bind (`SO_REUSEADDR`, a backlog of at least `max_handlers` and 1024) serves
//! isesctl when it runs without a supervisor's sockets (started by hand).

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{shutdown, Backlog, Shutdown};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The environment variable through which the supervisor names the sockets it passes.
pub const LISTEN_FDS_ENV: &str = "SMTPMTA_LISTEN_FDS";

/// A listening socket passed by the supervisor: for which `[inbound]` key and address.
#[derive(Debug)]
pub struct Passed {
    /// `listen`, `submission_listen` or `submissions_listen`.
    pub key: String,
    pub addr: SocketAddr,
    pub fd: OwnedFd,
}

/// A `SMTPMTA_LISTEN_FDS` that does not describe open listening sockets.
#[derive(Debug, thiserror::Error)]
pub enum ListenFdsError {
    #[error("{LISTEN_FDS_ENV}: cannot parse `{entry}` (expected key@address=fd)")]
    Syntax { entry: String },
    #[error("{LISTEN_FDS_ENV}: descriptor {fd} for {key} {addr} is not a TCP socket bound to it: {reason}")]
    NotTheSocket {
        key: String,
        addr: SocketAddr,
        fd: RawFd,
        reason: String,
    },
}

/// The listen backlog: when every handler is busy, connections wait in the kernel's
/// queue for a banner (seed exercise 2), and a burst must not overflow it — a dropped
/// handshake leaves a client that believes it is connected but never hears from us. The
/// default of 128 lost handshakes under a burst of 1,000 connections. The kernel caps it
/// at `net.core.somaxconn`.
pub fn backlog(max_handlers: usize) -> i32 {
    max_handlers.max(1024).min(i32::MAX as usize) as i32
}

/// Binds and listens on `addr` (`SO_REUSEADDR`, close-on-exec, non-blocking).
pub fn bind(addr: SocketAddr, max_handlers: usize) -> io::Result<TcpListener> {
    // std's bind sets SO_REUSEADDR and close-on-exec and listens with its own backlog;
    // listening again sets ours.
    let listener = TcpListener::bind(addr)?;
    listen(&listener, max_handlers)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The value of `SMTPMTA_LISTEN_FDS` for these sockets.
pub fn encode<'a>(sockets: impl IntoIterator<Item = (&'a str, SocketAddr, RawFd)>) -> String {
    sockets
        .into_iter()
        .map(|(key, addr, fd)| format!("{key}@{addr}={fd}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The sockets the supervisor passed (none without `SMTPMTA_LISTEN_FDS`). Each is checked
/// to be a TCP socket bound to its address, and marked close-on-exec again.
pub fn take_passed() -> Result<Vec<Passed>, ListenFdsError> {
    let Ok(value) = std::env::var(LISTEN_FDS_ENV) else {
        return Ok(Vec::new());
    };
    let mut passed = Vec::new();
    for entry in value.split_whitespace() {
        let syntax = || ListenFdsError::Syntax {
            entry: entry.to_string(),
        };
        let (key, rest) = entry.split_once('@').ok_or_else(syntax)?;
        let (addr, fd) = rest.rsplit_once('=').ok_or_else(syntax)?;
        let addr: SocketAddr = addr.parse().map_err(|_| syntax())?;
        let fd: RawFd = fd.parse().map_err(|_| syntax())?;
        let not = |reason: String| ListenFdsError::NotTheSocket {
            key: key.to_string(),
            addr,
            fd,
            reason,
        };
        // An fd that is not open is never taken (its /proc entry is how Linux says it is).
        if fd < 3 || std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).is_err() {
            return Err(not("not an open descriptor".into()));
        }
        // SAFETY: the supervisor passed this descriptor for us to own (it is open, above);
        // nothing else in this process refers to it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| not(e.to_string()))?;
        let listener = TcpListener::from(fd);
        match listener.local_addr() {
            Ok(bound) if bound == addr || addr.port() == 0 => {}
            Ok(bound) => return Err(not(format!("it is bound to {bound}"))),
            Err(e) => return Err(not(e.to_string())),
        }
        passed.push(Passed {
            key: key.to_string(),
            addr,
            fd: OwnedFd::from(listener),
        });
    }
    Ok(passed)
}

/// A new descriptor for a passed socket, listening again (after a [`stop_listening`]),
/// non-blocking. Closing it leaves the socket open in the supervisor.
pub fn relisten(passed: &Passed, max_handlers: usize) -> io::Result<TcpListener> {
    let fd = passed.fd.try_clone()?;
    listen(&fd, max_handlers)?;
    let listener = TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Takes a passed socket out of the listening state: new connections are refused (and
/// those waiting in its queue reset), for every process that holds it; the port stays
/// bound to it, so [`relisten`] needs no privilege.
pub fn stop_listening(passed: &Passed) -> io::Result<()> {
    match shutdown(passed.fd.as_raw_fd(), Shutdown::Read) {
        // Not listening already (stopped twice, or never started): nothing to do.
        Ok(()) | Err(Errno::ENOTCONN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Makes `fd` inheritable across `exec` (for the supervisor's `pre_exec`, in the forked
/// child: one fcntl, async-signal-safe).
pub fn inheritable(fd: impl AsFd) -> io::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
    Ok(())
}

fn listen(fd: &impl AsFd, max_handlers: usize) -> io::Result<()> {
    nix::sys::socket::listen(fd, Backlog::new(backlog(max_handlers))?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn a_stopped_socket_refuses_and_listens_again_on_the_same_port() {
        // An explicit port, as in a configuration: only then does the kernel keep it bound
        // to the socket while it is not listening (a port-0 socket gets a new port).
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let listener = bind(addr, 1).unwrap();
        let passed = Passed {
            key: "listen".into(),
            addr,
            fd: OwnedFd::from(listener),
        };
        assert!(TcpStream::connect(addr).is_ok());
        stop_listening(&passed).unwrap();
        stop_listening(&passed).expect("a second stop is no error");
        let refused = TcpStream::connect(addr).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        let again = relisten(&passed, 1).unwrap();
        assert_eq!(again.local_addr().unwrap(), addr);
        let _client = TcpStream::connect(addr).unwrap();
        again.set_nonblocking(false).unwrap();
        assert!(again.accept().is_ok());
    }

    #[test]
    fn encode_lists_key_address_and_descriptor() {
        let a: SocketAddr = "127.0.0.1:25".parse().unwrap();
        let b: SocketAddr = "[::1]:587".parse().unwrap();
        assert_eq!(
            encode([("listen", a, 7), ("submission_listen", b, 8)]),
            "listen@127.0.0.1:25=7 submission_listen@[::1]:587=8"
        );
    }
}
