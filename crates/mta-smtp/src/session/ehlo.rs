//! EHLO and HELO (RFC 5321 4.1.1.1): start (or restart) the session.

use super::{Flow, Session, SessionHooks, SessionState};
use crate::reply::Reply;
use tokio::io::{AsyncRead, AsyncWrite};

impl<S, H> Session<'_, S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: SessionHooks,
{
    /// The extensions advertised in the EHLO reply.
    fn extensions(&self) -> Vec<String> {
        let mut ext = vec![
            "PIPELINING".into(),
            format!("SIZE {}", self.cfg.max_message_size),
        ];
        if self.starttls_offered() {
            ext.push("STARTTLS".into());
        }
        if self.auth_offered() {
            ext.push(super::auth::MECHANISMS.into());
        }
        ext.extend([
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "SMTPUTF8".into(),
            "DSN".into(),
            "CHUNKING".into(),
        ]);
        ext
    }

    pub(super) async fn ehlo(&mut self, host: String) -> Flow {
        if let Some(refusal) = self.hooks.check_helo(&self.txn, &host).await {
            return self.reply(refusal);
        }
        self.greeted(host, true);
        let reply = Reply::ehlo(
            &self.cfg.hostname,
            &self.txn.envelope.helo,
            &self.extensions(),
        );
        self.reply(reply)
    }

    pub(super) async fn helo(&mut self, host: String) -> Flow {
        if let Some(refusal) = self.hooks.check_helo(&self.txn, &host).await {
            return self.reply(refusal);
        }
        self.greeted(host, false);
        let reply = Reply::helo(&self.cfg.hostname, &self.txn.envelope.helo);
        self.reply(reply)
    }

    /// A HELO/EHLO in any state abandons the transaction (RFC 5321 4.1.4).
    fn greeted(&mut self, host: String, esmtp: bool) {
        self.esmtp = esmtp;
        self.state = SessionState::Greeted;
        self.reset_transaction();
        self.txn.envelope.helo = host;
    }
}
