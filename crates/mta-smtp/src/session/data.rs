//! DATA (RFC 5321 4.1.1.4) and BDAT (RFC 3030): read the content, check it, add our
//! Received header and hand the message to the hooks.

use super::{BareLineEvent, Flow, Session, SessionHooks, SessionState};
use crate::data::{read_chunk, read_data, ChunkAssembly, DataLimits, DataOutcome};
use crate::received::received_header;
use crate::reply::Reply;
use mta_types::QueueId;
use std::time::SystemTime;
use tokio::io::{AsyncRead, AsyncWrite};

impl<S, H> Session<'_, S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: SessionHooks,
{
    fn limits(&self) -> DataLimits {
        DataLimits {
            max_size: self.cfg.max_message_size,
            max_line: self.cfg.max_line_length,
            bare_newline: self.cfg.bare_newline,
        }
    }

    pub(super) async fn data(&mut self) -> Flow {
        match self.state {
            SessionState::RcptTo => {}
            SessionState::MailFrom => return self.error(Reply::no_valid_recipients()),
            SessionState::Chunking(_) => return self.error(Reply::bad_sequence("DATA after BDAT")),
            SessionState::Fresh | SessionState::Greeted => {
                return self.error(Reply::bad_sequence("need RCPT command"));
            }
        }
        if let Some(refusal) = self.hooks.check_data(&self.txn).await {
            return self.reply(refusal);
        }
        self.reply(Reply::start_data());
        if !self.flush().await {
            return Flow::Close(super::EndReason::ClientClosed);
        }
        self.io.get_mut().set_idle(self.cfg.data_timeout);
        let limits = self.limits();
        match read_data(&mut self.io, limits).await {
            Ok((outcome, normalized)) => self.message_read(outcome, normalized).await,
            Err(e) => self.io_failed(e),
        }
    }

    /// A BDAT chunk is always read in full before any reply, whatever the state, so the
    /// next command is found where the client put it.
    pub(super) async fn bdat(&mut self, size: u64, last: bool) -> Flow {
        let state = std::mem::replace(&mut self.state, SessionState::Greeted);
        let (mut assembly, refusal) = match state {
            SessionState::Chunking(assembly) => (assembly, None),
            SessionState::RcptTo => (ChunkAssembly::new(self.limits()), None),
            other => {
                let refusal = match other {
                    SessionState::Fresh => Reply::bad_sequence("send HELO/EHLO first"),
                    SessionState::MailFrom => Reply::no_valid_recipients(),
                    _ => Reply::bad_sequence("need MAIL command"),
                };
                self.state = other;
                // Read and drop: a zero limit keeps nothing.
                (
                    ChunkAssembly::new(DataLimits {
                        max_size: 0,
                        max_line: 0,
                        bare_newline: self.cfg.bare_newline,
                    }),
                    Some(refusal),
                )
            }
        };
        self.io.get_mut().set_idle(self.cfg.data_timeout);
        if let Err(e) = read_chunk(&mut self.io, size, &mut assembly).await {
            return self.io_failed(e);
        }
        if let Some(refusal) = refusal {
            return self.error(refusal);
        }
        if last {
            let (outcome, normalized) = assembly.finish();
            return self.message_read(outcome, normalized).await;
        }
        let too_big = assembly.is_too_big();
        self.state = SessionState::Chunking(assembly);
        if too_big {
            // Later chunks are still drained; the transaction ends at LAST or RSET.
            return self.reply(Reply::message_too_big());
        }
        self.reply(Reply::chunk_ok(size))
    }

    /// The content is complete (or refused): deliver it or say why not; either way the
    /// transaction is over. `normalized`: bare LFs the reader stored as CRLF.
    async fn message_read(&mut self, outcome: DataOutcome, normalized: usize) -> Flow {
        let reply = match outcome {
            DataOutcome::Complete(content) => {
                let qid = self.txn.qid.unwrap_or_else(QueueId::generate);
                self.hooks.message_data(qid, &content);
                if normalized > 0 {
                    let event = BareLineEvent::Normalized {
                        qid,
                        lines: normalized,
                    };
                    self.hooks.bare_line_ending(&self.txn, event);
                }
                let header = received_header(&self.cfg.hostname, &self.txn, qid, SystemTime::now());
                let mut message = Vec::with_capacity(header.len() + content.len());
                message.extend_from_slice(header.as_bytes());
                message.extend_from_slice(&content);
                drop(content);
                let reply = self.hooks.deliver(qid, &self.txn, message).await;
                if reply.is_positive() {
                    self.accepted += 1;
                } else {
                    self.rejected += 1;
                }
                reply
            }
            refused => {
                if refused == DataOutcome::BareLineEnding {
                    self.hooks
                        .bare_line_ending(&self.txn, BareLineEvent::Refused);
                }
                self.rejected += 1;
                refused.rejection().unwrap_or_else(Reply::local_error)
            }
        };
        if !reply.is_positive() {
            let stage = if matches!(self.state, SessionState::Chunking(_)) {
                "BDAT"
            } else {
                "DATA"
            };
            self.hooks.refused(&self.txn, stage, &reply);
        }
        // The reply first, so that its transcript line still carries the queue id.
        let flow = self.reply(reply);
        self.reset_transaction();
        flow
    }
}
