//! AUTH for the session handlers: checks a client's credentials against the directory's
//! argon2id password hashes, and locks out addresses that keep failing.
//!
//! Lockout (like Postfix's anvil with `smtpd_client_auth_rate_limit`): the failures of each
//! client IP address within `[inbound] auth_failure_window` are counted across all
//! sessions; once there are `max_auth_failures`, every further AUTH from that address is
//! answered `454 4.7.0` without looking at the password, until old failures leave the
//! window. The lockout is logged once when it begins.
//!
//! The fleet peer (`mta_smtp::handoff::PEER_USER`) is checked against `[cluster]
//! peer_password_file` instead of the directory (no peer secret: it cannot log in); its
//! failures count towards the lockout like anyone's.
//!
//! Unknown users and wrong passwords get the same reply after the same work (a dummy hash
//! is checked for unknown users: `mta_tls::password::verify`).

use mta_config::Directory;
use mta_smtp::handoff::PEER_USER;
use mta_smtp::{AuthVerdict, Credentials};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failure counts per client address, shared by every session of the controller.
pub struct AuthGuard {
    max_failures: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl AuthGuard {
    pub fn new(max_failures: u32, window: Duration) -> AuthGuard {
        AuthGuard {
            max_failures,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Failures of `ip` still inside the window.
    fn recent(&self, ip: IpAddr, now: Instant) -> u32 {
        let mut map = self.failures.lock().expect("auth guard lock");
        let Some(list) = map.get_mut(&ip) else {
            return 0;
        };
        while list
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            list.pop_front();
        }
        let n = list.len() as u32;
        if n == 0 {
            map.remove(&ip);
        }
        // Keep the map bounded: an address list of a botnet must not grow it forever.
        if map.len() > 100_000 {
            map.retain(|_, l| {
                l.back()
                    .is_some_and(|t| now.duration_since(*t) <= self.window)
            });
        }
        n
    }

    fn failed(&self, ip: IpAddr, now: Instant) -> u32 {
        let mut map = self.failures.lock().expect("auth guard lock");
        let list = map.entry(ip).or_default();
        list.push_back(now);
        list.len() as u32
    }

    /// Checks `creds` from `ip`: the verdict, and what to log.
    pub async fn authenticate(
        self: &Arc<Self>,
        directory: Arc<Directory>,
        ip: IpAddr,
        creds: Credentials,
        peer_secret: Option<String>,
    ) -> AuthVerdict {
        if self.recent(ip, Instant::now()) >= self.max_failures {
            return AuthVerdict::Locked;
        }
        let user = creds.user.clone();
        let check = tokio::task::spawn_blocking(move || {
            // The fleet peer is never looked up in the directory, so no directory user
            // can borrow its right to use XFLEET.
            if creds.user == PEER_USER {
                let ok = (creds.authzid.is_empty() || creds.authzid == PEER_USER)
                    && peer_secret.is_some_and(|s| same_secret(&s, &creds.password));
                return ok.then(|| PEER_USER.to_string());
            }
            let found = directory.user_named(&creds.user);
            // PLAIN's authzid may only name the user itself (no proxy authorisation).
            let authz_ok = creds.authzid.is_empty()
                || found.is_some_and(|u| {
                    directory.user_named(&creds.authzid).map(|a| &a.name) == Some(&u.name)
                });
            let phc = found.and_then(|u| u.password.as_deref());
            let ok = mta_tls::password::verify(phc, &creds.password);
            (ok && authz_ok)
                .then(|| found.map(|u| u.name.clone()))
                .flatten()
        })
        .await
        .unwrap_or(None);
        match check {
            Some(name) => AuthVerdict::Ok(name),
            None => {
                let n = self.failed(ip, Instant::now());
                if n == self.max_failures {
                    tracing::warn!(
                        client = %ip,
                        "AUTH lockout: {n} failures within {:?}; further AUTH answered 454 until they age out",
                        self.window
                    );
                }
                tracing::info!(client = %ip, sasl_username = %user, "AUTH failed");
                AuthVerdict::Failed
            }
        }
    }
}

/// Compares the peer secret without stopping at the first difference (its length is
/// not a secret worth hiding).
fn same_secret(expected: &str, given: &str) -> bool {
    expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_age_out_of_the_window() {
        let g = AuthGuard::new(2, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        g.failed(ip, t0);
        g.failed(ip, t0);
        assert_eq!(g.recent(ip, t0 + Duration::from_secs(30)), 2);
        assert_eq!(g.recent(ip, t0 + Duration::from_secs(61)), 0);
        assert_eq!(g.recent("192.0.2.2".parse().unwrap(), t0), 0);
    }
}
