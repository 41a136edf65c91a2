//! AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms, offered only over TLS.
//!
//! The session decodes the SASL exchange; the hooks check the credentials
//! ([`SessionHooks::authenticate`]) and keep the failure counts. Credentials never reach
//! the transcript: the AUTH line is logged without its initial response and every
//! continuation line as `***`.

use super::io::{read_command_line, CommandLine};
use super::{Direction, Flow, Session, SessionHooks, SessionState};
use crate::command::MAX_COMMAND_LINE;
use crate::reply::Reply;
use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncWrite};

/// The hooks' answer to one AUTH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthVerdict {
    /// Authenticated as this identity (the directory user name).
    Ok(String),
    /// Unknown user or wrong password: `535 5.7.8`.
    Failed,
    /// Too many failures from this client lately: `454 4.7.0`.
    Locked,
}

/// The credentials a client presented.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// PLAIN's authorization identity (empty: the same as `user`).
    pub authzid: String,
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("authzid", &self.authzid)
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// The mechanisms, as advertised in EHLO.
pub(super) const MECHANISMS: &str = "AUTH PLAIN LOGIN";

enum Step {
    Got(Vec<u8>),
    /// The client answered `*` (RFC 4954 4).
    Aborted,
    /// Not base64.
    Undecodable,
    Closed(Flow),
}

impl<S, H> Session<'_, S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: SessionHooks,
{
    /// AUTH is offered once TLS is up, if the owner has a user database.
    pub(super) fn auth_offered(&self) -> bool {
        self.txn.tls.is_some() && self.hooks.auth_available()
    }

    pub(super) async fn auth(&mut self, mechanism: String, initial: Option<String>) -> Flow {
        if self.txn.envelope.auth.is_some() {
            return self.error(Reply::already_authenticated());
        }
        if !matches!(self.state, SessionState::Greeted) {
            return self.error(Reply::auth_in_transaction());
        }
        if !self.auth_offered() {
            // On a submission listener the client has to start TLS first; elsewhere AUTH
            // is simply not offered (a plain port-25 session).
            return if self.txn.tls.is_none() && self.cfg.mode.requires_auth() {
                self.error(Reply::encryption_required())
            } else {
                self.error(Reply::auth_not_enabled())
            };
        }
        let creds = match mechanism.as_str() {
            "PLAIN" => {
                let response = match initial {
                    Some(i) => decode(&i),
                    None => match self.challenge("").await {
                        Step::Got(r) => Ok(r),
                        other => return self.step_failed(other),
                    },
                };
                let Ok(response) = response else {
                    return self.error(Reply::auth_cannot_decode());
                };
                match parse_plain(&response) {
                    Some(c) => c,
                    None => return self.error(Reply::auth_cannot_decode()),
                }
            }
            "LOGIN" => {
                let user = match initial {
                    Some(i) => match decode(&i) {
                        Ok(u) => u,
                        Err(()) => return self.error(Reply::auth_cannot_decode()),
                    },
                    None => match self.challenge("VXNlcm5hbWU6").await {
                        Step::Got(u) => u,
                        other => return self.step_failed(other),
                    },
                };
                let password = match self.challenge("UGFzc3dvcmQ6").await {
                    Step::Got(p) => p,
                    other => return self.step_failed(other),
                };
                match (String::from_utf8(user), String::from_utf8(password)) {
                    (Ok(user), Ok(password)) => Credentials {
                        authzid: String::new(),
                        user,
                        password,
                    },
                    _ => return self.error(Reply::auth_cannot_decode()),
                }
            }
            _ => return self.error(Reply::auth_mechanism_unsupported()),
        };
        match self.hooks.authenticate(&self.txn, &mechanism, creds).await {
            AuthVerdict::Ok(identity) => {
                self.txn.envelope.auth = Some(identity);
                self.reset_transaction();
                self.reply(Reply::auth_ok())
            }
            AuthVerdict::Failed => self.error(Reply::auth_failed()),
            AuthVerdict::Locked => self.error(Reply::auth_locked()),
        }
    }

    /// Sends `334 <challenge>` and reads the client's base64 answer.
    async fn challenge(&mut self, challenge: &str) -> Step {
        self.reply(Reply::auth_challenge(challenge));
        if !self.flush().await {
            return Step::Closed(Flow::Close(super::EndReason::ClientClosed));
        }
        self.io.get_mut().set_idle(self.cfg.command_timeout);
        let line = match read_command_line(&mut self.io, MAX_COMMAND_LINE).await {
            Ok(CommandLine::Line(line)) => line,
            Ok(CommandLine::TooLong) => return Step::Undecodable,
            Ok(CommandLine::Eof) => {
                return Step::Closed(Flow::Close(super::EndReason::ClientClosed))
            }
            Err(e) => return Step::Closed(self.io_failed(e)),
        };
        self.hooks
            .transcript(self.txn.qid, Direction::In, b"***\r\n");
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text == "*" {
            return Step::Aborted;
        }
        match decode(text) {
            Ok(bytes) => Step::Got(bytes),
            Err(()) => Step::Undecodable,
        }
    }

    fn step_failed(&mut self, step: Step) -> Flow {
        match step {
            Step::Aborted => self.error(Reply::auth_aborted()),
            Step::Undecodable => self.error(Reply::auth_cannot_decode()),
            Step::Closed(flow) => flow,
            Step::Got(_) => unreachable!("a successful step is not a failure"),
        }
    }
}

/// Base64 as RFC 4954 uses it; `=` alone is the empty response.
fn decode(text: &str) -> Result<Vec<u8>, ()> {
    if text == "=" {
        return Ok(Vec::new());
    }
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| ())
}

/// PLAIN: `authzid NUL authcid NUL passwd` (RFC 4616 2).
fn parse_plain(bytes: &[u8]) -> Option<Credentials> {
    let mut parts = bytes.split(|&b| b == 0);
    let authzid = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let user = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let password = std::str::from_utf8(parts.next()?).ok()?.to_string();
    if parts.next().is_some() || user.is_empty() {
        return None;
    }
    Some(Credentials {
        authzid,
        user,
        password,
    })
}

/// Redacts an AUTH command line for the transcript: the mechanism stays, the initial
/// response does not.
pub(super) fn redact(line: &[u8]) -> Option<Vec<u8>> {
    let head = line.get(..5)?;
    if !head.eq_ignore_ascii_case(b"AUTH ") {
        return None;
    }
    let text = String::from_utf8_lossy(line);
    let mut words = text.split_whitespace();
    let verb = words.next().unwrap_or("AUTH");
    let mechanism = words.next().unwrap_or("");
    let rest = if words.next().is_some() { " ***" } else { "" };
    Some(format!("{verb} {mechanism}{rest}\r\n").into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages() {
        let c = parse_plain(b"\0alice\0secret").unwrap();
        assert_eq!(
            (c.authzid.as_str(), c.user.as_str(), c.password.as_str()),
            ("", "alice", "secret")
        );
        assert!(parse_plain(b"alice\0secret").is_none());
        assert!(parse_plain(b"\0\0secret").is_none());
        assert!(parse_plain(b"a\0b\0c\0d").is_none());
        assert_eq!(decode("=").unwrap(), b"");
        assert!(decode("!!").is_err());
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n").unwrap(),
            b"AUTH PLAIN ***\r\n"
        );
        assert_eq!(redact(b"auth login\r\n").unwrap(), b"auth login\r\n");
        assert!(redact(b"MAIL FROM:<a@b>\r\n").is_none());
    }
}
