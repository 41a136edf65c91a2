//! RCPT (RFC 5321 4.1.1.3, RFC 3461 NOTIFY/ORCPT): syntax and limits here, policy in the
//! hooks.

use super::{Flow, Session, SessionHooks, SessionState};
use crate::command::{ForwardPath, RcptParams};
use crate::reply::Reply;
use crate::session::RcptVerdict;
use tokio::io::{AsyncRead, AsyncWrite};

impl<S, H> Session<'_, S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: SessionHooks,
{
    pub(super) async fn rcpt(&mut self, to: ForwardPath, params: RcptParams) -> Flow {
        match self.state {
            SessionState::MailFrom | SessionState::RcptTo => {}
            SessionState::Chunking(_) => {
                return self.error(Reply::bad_sequence("RCPT during BDAT"));
            }
            SessionState::Fresh | SessionState::Greeted => {
                return self.error(Reply::bad_sequence("need MAIL command"));
            }
        }
        if !self.esmtp && !params.is_empty() {
            return self.error(Reply::esmtp_needs_ehlo());
        }
        if params.handoff.is_some() && !self.txn.is_fleet_peer() {
            self.hooks.refused(
                &self.txn,
                "RCPT",
                &Reply::handoff_peers_only(crate::handoff::KEYWORD),
            );
            return self.error(Reply::handoff_peers_only(crate::handoff::KEYWORD));
        }
        if self.txn.rcpts.len() >= self.cfg.max_recipients {
            return self.reply(Reply::too_many_recipients());
        }
        let rcpt = match to {
            ForwardPath::Mailbox(address) => address,
            ForwardPath::Postmaster => match &self.postmaster {
                Some(address) => address.clone(),
                // Our hostname is not a domain: a configuration problem, not the client's.
                None => return self.reply(Reply::local_error()),
            },
        };
        match self.hooks.check_rcpt(&self.txn, &rcpt).await {
            RcptVerdict::Accept => {
                self.txn.rcpts.push((rcpt, params));
                self.state = SessionState::RcptTo;
                self.reply(Reply::recipient_ok())
            }
            // A 421 (a per-client limit) closes the session (RFC 5321 3.8).
            RcptVerdict::Reject(reply) if reply.closes_connection() => {
                self.reply(reply);
                Flow::Close(super::EndReason::Refused)
            }
            RcptVerdict::Reject(reply) => self.reply(reply),
        }
    }
}
