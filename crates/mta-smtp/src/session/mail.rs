//! MAIL (RFC 5321 4.1.1.2, RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8, RFC 3461
//! RET/ENVID) and RSET.

use super::{Flow, Session, SessionHooks, SessionState};
use crate::command::{Body, MailParams, ReversePath};
use crate::reply::Reply;
use tokio::io::{AsyncRead, AsyncWrite};

impl<S, H> Session<'_, S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: SessionHooks,
{
    pub(super) async fn mail(&mut self, from: ReversePath, params: MailParams) -> Flow {
        if !matches!(self.state, SessionState::Greeted) {
            return self.error(Reply::bad_sequence("nested MAIL command"));
        }
        if self.cfg.mode == super::ListenerMode::Submission && self.txn.tls.is_none() {
            return self.refuse_mail(Reply::starttls_first(), true);
        }
        if self.cfg.mode.requires_auth() && self.txn.envelope.auth.is_none() {
            return self.refuse_mail(Reply::auth_required(), true);
        }
        if self.txn.envelope.auth.is_some() {
            if let Some(refusal) = self.hooks.check_sender(&self.txn, from.address()) {
                return self.refuse_mail(refusal, true);
            }
        }
        if !self.esmtp && !params.is_empty() {
            return self.error(Reply::esmtp_needs_ehlo());
        }
        if params.handoff.is_some() && !self.txn.is_fleet_peer() {
            return self.refuse_mail(Reply::handoff_peers_only(crate::handoff::KEYWORD), true);
        }
        if params.body == Some(Body::BinaryMime) {
            return self.error(Reply::body_type_unsupported());
        }
        if params
            .size
            .is_some_and(|size| size > self.cfg.max_message_size)
        {
            return self.refuse_mail(Reply::message_too_big(), false);
        }
        self.txn.envelope.mail_from = from.address().cloned();
        self.txn.envelope.utf8 = params.smtputf8;
        self.txn.envelope.eight_bit = params.body == Some(Body::EightBitMime);
        self.txn.envelope.ret = params.ret;
        self.txn.envelope.envid = params.envid.clone();
        self.txn.envelope.protocol = self.txn.with_keyword(self.esmtp).into();
        self.txn.mail_params = params;
        self.state = SessionState::MailFrom;
        self.txn.qid = Some(mta_types::QueueId::generate());
        if let Some(refusal) = self.hooks.check_mail(&self.txn).await {
            self.reset_transaction();
            return self.reply(refusal);
        }
        self.reply(Reply::sender_ok())
    }

    /// A refused MAIL: told to the hooks (for the log); `counted`: a command error too.
    fn refuse_mail(&mut self, reply: Reply, counted: bool) -> Flow {
        self.hooks.refused(&self.txn, "MAIL", &reply);
        if counted {
            self.error(reply)
        } else {
            self.reply(reply)
        }
    }

    pub(super) fn rset(&mut self) -> Flow {
        self.reset_transaction();
        self.reply(Reply::ok())
    }
}
