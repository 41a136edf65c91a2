//! An open SMTP session's mail transactions, one message at a time:
//! (RSET →) MAIL FROM → RCPT TO… → DATA → content → the next message or QUIT.
//!
//! With PIPELINING (RFC 2920) `[RSET,] MAIL, RCPT…, DATA` go out in one write and their
//! replies are read in order: two round trips per message instead of four or more.
//! Without it the commands go one by one, and DATA only when a recipient was accepted.
//! Either way the replies end up in one `EnvelopeReplies` (mta-smtp's, shared with the
//! fleet drain), and `RcptOutcome::of_reply` turns each into recipient outcomes. A 354 that nobody wants (no recipient accepted) is answered
//! with an empty message so the session can go on.

use crate::delivery::Results;
use crate::domain_list::ListItem;
use crate::message::Prepared;
use crate::outcomes::{reply_text, RcptOutcome};
use mta_smtp::client::{EnvelopeReplies, Extensions, SessionError, SmtpClient};
use mta_smtp::Reply;
use mta_types::outcome::Reply as Recorded;
use mta_types::Enhanced;

/// Where the session is between messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// After EHLO: the next MAIL FROM needs no RSET.
    Fresh,
    /// A transaction happened: RSET before the next one.
    Used,
}

/// The session broke in the middle of a message: the outcomes decided so far, and every
/// other recipient of the message deferred with the reason (4.4.2).
pub struct Broken {
    pub results: Results,
    pub error: SessionError,
}

pub struct Session {
    client: SmtpClient,
    /// `host[ip]:port`, as outcomes and logs name the next hop.
    pub label: String,
    state: State,
}

impl Session {
    pub fn new(client: SmtpClient, label: String) -> Session {
        Session {
            client,
            label,
            state: State::Fresh,
        }
    }

    pub fn ext(&self) -> &Extensions {
        &self.client.ext
    }

    /// Before a message: RSET when needed and not pipelined with the message. `false`
    /// when the server refused it or the session broke (the session is unusable).
    pub async fn ready_for_next(&mut self) -> bool {
        if self.state == State::Fresh || self.client.ext.pipelining {
            return true;
        }
        matches!(self.client.command("RSET").await, Ok(r) if r.is_positive())
    }

    /// One message's transaction.
    pub async fn send(&mut self, item: &ListItem, msg: &Prepared) -> Result<Results, Broken> {
        let reset = std::mem::replace(&mut self.state, State::Used) == State::Used;
        let replies = if self.client.ext.pipelining {
            self.envelope_pipelined(item, msg, reset)
                .await
                .map_err(|e| (None, e))
        } else {
            self.envelope_stepwise(item, msg).await
        };
        let replies = match replies {
            Ok(r) => r,
            Err((partial, e)) => {
                let decided =
                    partial.map_or_else(Results::new, |r| self.envelope_outcomes(item, &r).0);
                return Err(self.broken(item, decided, e));
            }
        };
        let (mut results, accepted) = self.envelope_outcomes(item, &replies);
        let Some(data) = replies.data else {
            return Ok(results);
        };
        if data.code != Some(354) {
            let outcome = RcptOutcome::of_reply(&self.label, &data);
            results.extend(accepted.iter().map(|i| (*i, outcome.clone())));
            return Ok(results);
        }
        if accepted.is_empty() {
            return match self.client.abandon_data().await {
                Ok(()) => Ok(results),
                Err(e) => Err(self.broken(item, results, e)),
            };
        }
        let reply = match self.client.content(&msg.content).await {
            Ok(r) => r,
            Err(e) => return Err(self.broken(item, results, e)),
        };
        let outcome = RcptOutcome::of_reply(&self.label, &reply);
        results.extend(accepted.iter().map(|i| (*i, outcome.clone())));
        Ok(results)
    }

    /// `[RSET,] MAIL, RCPT…, DATA` in one write.
    async fn envelope_pipelined(
        &mut self,
        item: &ListItem,
        msg: &Prepared,
        reset: bool,
    ) -> Result<EnvelopeReplies, SessionError> {
        let record = &item.record;
        let mut lines = Vec::with_capacity(item.rcpts.len() + 3);
        if reset {
            lines.push("RSET".to_string());
        }
        lines.push(msg.mail.clone());
        for i in &item.rcpts {
            lines.push(format!("RCPT TO:<{}>", record.recipients[*i].address));
        }
        lines.push("DATA".to_string());
        let mut replies = self.client.pipeline(&lines).await?.into_iter();
        if reset {
            let r = replies.next().expect("one reply per command");
            if !r.is_positive() {
                let reply = reply_text(&r);
                return Err(SessionError::Refused {
                    command: "RSET".into(),
                    reply,
                });
            }
        }
        let mail = replies.next().expect("one reply per command");
        let rcpts: Vec<Reply> = replies.by_ref().take(item.rcpts.len()).collect();
        let data = replies.next().expect("one reply per command");
        let rcpts = if mail.is_positive() {
            rcpts
        } else {
            Vec::new()
        };
        Ok(EnvelopeReplies {
            mail,
            rcpts,
            data: Some(data),
        })
    }

    /// MAIL, each RCPT, then DATA when a recipient was accepted, one command at a time.
    async fn envelope_stepwise(
        &mut self,
        item: &ListItem,
        msg: &Prepared,
    ) -> Result<EnvelopeReplies, (Option<EnvelopeReplies>, SessionError)> {
        let recipients = &item.record.recipients;
        let rcpt_lines: Vec<String> = (item.rcpts.iter())
            .map(|i| format!("RCPT TO:<{}>", recipients[*i].address))
            .collect();
        let mut replies = self.client.mail_and_rcpts(&msg.mail, &rcpt_lines).await?;
        if replies.any_rcpt_accepted() {
            match self.client.command("DATA").await {
                Ok(r) => replies.data = Some(r),
                Err(e) => return Err((Some(replies), e)),
            }
        }
        Ok(replies)
    }

    /// The outcomes of refused recipients (all of them when MAIL was refused) and the
    /// accepted ones, which wait for the content's reply.
    fn envelope_outcomes(
        &self,
        item: &ListItem,
        replies: &EnvelopeReplies,
    ) -> (Results, Vec<usize>) {
        if !replies.mail.is_positive() {
            let outcome = RcptOutcome::of_reply(&self.label, &replies.mail);
            let all = item.rcpts.iter().map(|i| (*i, outcome.clone())).collect();
            return (all, Vec::new());
        }
        let mut results = Results::new();
        let mut accepted = Vec::new();
        for (i, reply) in item.rcpts.iter().zip(&replies.rcpts) {
            if reply.is_positive() {
                accepted.push(*i);
            } else {
                results.push((*i, RcptOutcome::of_reply(&self.label, reply)));
            }
        }
        (results, accepted)
    }

    /// The results so far plus every undecided recipient deferred with the reason.
    fn broken(&self, item: &ListItem, mut results: Results, error: SessionError) -> Broken {
        let reply = Recorded::local(Enhanced::new(4, 4, 2), error.to_string());
        let undecided: Vec<usize> = item
            .rcpts
            .iter()
            .filter(|i| !results.iter().any(|(d, _)| d == *i))
            .copied()
            .collect();
        for i in undecided {
            let outcome = RcptOutcome::Deferred {
                host: self.label.clone(),
                reply: reply.clone(),
            };
            results.push((i, outcome));
        }
        Broken { results, error }
    }

    /// QUIT, best effort.
    pub async fn quit(self) {
        self.client.quit().await;
    }
}
