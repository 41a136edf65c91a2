//! The LMTP client (RFC 2033): how the router hands local mail to Dovecot and its like.
//!
//! LMTP is SMTP with `LHLO` for `EHLO` and, after the content, one reply per accepted
//! recipient instead of one for the message, so a mailbox over quota (`452`) or unknown
//! (`550`) fails alone. It rides on [`SmtpClient`] (the same stream over TCP or a Unix
//! socket, reply reader, timeouts, dot-stuffing and `SMTPClientDebug` lines); only the
//! greeting, the transaction and the per-recipient replies are LMTP's own.
//!
//! A connection carries one message after another (the caller keeps it in a pool); a
//! transaction that did not end with the content is reset (`RSET`) before the connection
//! is offered again.

use crate::client::{Extensions, SessionError, SmtpClient};
use crate::Reply;
use mta_types::Endpoint;
use std::time::Duration;

/// One message for one LMTP server.
pub struct LmtpMessage<'a> {
    /// The return path, without brackets (`""`: the null sender).
    pub mail_from: &'a str,
    /// The mailboxes, as `RCPT TO` addresses without brackets.
    pub recipients: &'a [String],
    /// The message as spooled (CRLF line ends); dot-stuffed here.
    pub content: &'a [u8],
    /// The content has 8-bit bytes (`BODY=8BITMIME` when offered).
    pub eight_bit: bool,
    /// The envelope needs SMTPUTF8 (asked for when offered).
    pub utf8: bool,
}

/// What became of a transaction.
#[derive(Debug)]
pub struct Transfer {
    /// One per recipient, in order: its final reply (a refused RCPT's, the one after the
    /// content for an accepted one, or MAIL's or DATA's when those were refused), or `None`
    /// when the connection failed before it came (its outcome is unknown: retry it).
    pub replies: Vec<Option<Reply>>,
    /// Why the session cannot go on, if it cannot.
    pub error: Option<SessionError>,
    /// The content went out: past this point a lost connection may have delivered some
    /// recipients (a retry may duplicate them; never a loss).
    pub content_sent: bool,
    /// The connection may carry the next message.
    pub reusable: bool,
}

impl Transfer {
    fn failed(n: usize, error: SessionError, content_sent: bool) -> Transfer {
        Transfer {
            replies: vec![None; n],
            error: Some(error),
            content_sent,
            reusable: false,
        }
    }
}

/// One LMTP connection, greeted (`LHLO`) and ready for transactions.
pub struct LmtpClient {
    smtp: SmtpClient,
}

impl LmtpClient {
    /// Connects, reads the greeting and says `LHLO hostname`. A greeting or LHLO reply
    /// that is not 2xx is [`SessionError::Refused`].
    pub async fn connect(
        endpoint: &Endpoint,
        connect_timeout: Duration,
        timeout: Duration,
        hostname: &str,
        debug: u8,
    ) -> Result<LmtpClient, SessionError> {
        let (mut smtp, greeting) =
            SmtpClient::connect_endpoint(endpoint, connect_timeout, timeout, debug).await?;
        let refused = |command: &str, reply: Reply| SessionError::Refused {
            command: command.into(),
            reply: reply.wire().trim_end().to_string(),
        };
        if !greeting.is_completion() {
            return Err(refused("connect", greeting));
        }
        let lhlo = smtp.command(&format!("LHLO {hostname}")).await?;
        if !lhlo.is_completion() {
            return Err(refused("LHLO", lhlo));
        }
        smtp.ext = Extensions::from_ehlo(&lhlo);
        Ok(LmtpClient { smtp })
    }

    /// Delivers one message: MAIL, the RCPTs and DATA (in one write when the server
    /// pipelines), the content, then one reply per accepted recipient.
    pub async fn deliver(&mut self, tx: &LmtpMessage<'_>) -> Transfer {
        let n = tx.recipients.len();
        let envelope = match self.envelope(tx).await {
            Ok(e) => e,
            Err(e) => return Transfer::failed(n, e, false),
        };
        let (mut replies, accepted, go) = envelope;
        if accepted.is_empty() || go.code != Some(354) {
            for &i in &accepted {
                replies[i] = Some(go.clone());
            }
            // 354 with nobody accepted: the server is out of step; start afresh.
            let reusable = go.code != Some(354) && !go.closes_connection() && self.reset().await;
            return Transfer {
                replies,
                error: None,
                content_sent: false,
                reusable,
            };
        }
        if let Err(e) = self.smtp.send_content(tx.content).await {
            return Transfer::failed(n, e, true);
        }
        let mut error = None;
        for &i in &accepted {
            match self.smtp.reply("end of DATA").await {
                Ok(r) => replies[i] = Some(r),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        Transfer {
            replies,
            reusable: error.is_none(),
            error,
            content_sent: true,
        }
    }

    /// MAIL, RCPTs and DATA: each recipient's reply so far (refusals, or MAIL's refusal
    /// for all), the accepted ones, and the reply to DATA (MAIL's when it was refused).
    async fn envelope(
        &mut self,
        tx: &LmtpMessage<'_>,
    ) -> Result<(Vec<Option<Reply>>, Vec<usize>, Reply), SessionError> {
        let mut lines = vec![self.mail_command(tx)];
        lines.extend(tx.recipients.iter().map(|r| format!("RCPT TO:<{r}>")));
        lines.push("DATA".into());
        let mut replies = vec![None; tx.recipients.len()];
        let answers = if self.smtp.ext.pipelining {
            self.smtp.pipeline(&lines).await?
        } else {
            let mail = self.smtp.command(&lines[0]).await?;
            if !mail.is_positive() {
                replies.fill(Some(mail.clone()));
                return Ok((replies, Vec::new(), mail));
            }
            let mut answers = vec![mail];
            for line in &lines[1..lines.len() - 1] {
                answers.push(self.smtp.command(line).await?);
            }
            if answers[1..].iter().any(Reply::is_positive) {
                answers.push(self.smtp.command("DATA").await?);
            } else {
                answers.push(answers[answers.len() - 1].clone());
            }
            answers
        };
        let mail = &answers[0];
        if !mail.is_positive() {
            replies.fill(Some(mail.clone()));
            return Ok((replies, Vec::new(), mail.clone()));
        }
        let mut accepted = Vec::new();
        for (i, r) in answers[1..=tx.recipients.len()].iter().enumerate() {
            if r.is_positive() {
                accepted.push(i);
            } else {
                replies[i] = Some(r.clone());
            }
        }
        let data = answers[answers.len() - 1].clone();
        Ok((replies, accepted, data))
    }

    fn mail_command(&self, tx: &LmtpMessage<'_>) -> String {
        let mut line = format!("MAIL FROM:<{}>", tx.mail_from);
        if tx.eight_bit && self.smtp.ext.eight_bit_mime {
            line.push_str(" BODY=8BITMIME");
        }
        if tx.utf8 && self.smtp.ext.smtputf8 {
            line.push_str(" SMTPUTF8");
        }
        line
    }

    /// RSET after a transaction that did not finish; false when the connection is unusable.
    async fn reset(&mut self) -> bool {
        matches!(self.smtp.command("RSET").await, Ok(r) if r.is_completion())
    }

    /// QUIT, best effort.
    pub async fn quit(self) {
        self.smtp.quit().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// A scripted LMTP server on a Unix socket: answers each line it reads with the next
    /// scripted reply whose trigger it starts with; `"."` answers the end of the content.
    async fn server(listener: tokio::net::UnixListener, script: Vec<(&'static str, String)>) {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"220 lmtp ready\r\n").await.unwrap();
        let mut script = script.into_iter();
        let mut in_data = false;
        while let Ok(Some(line)) = lines.next_line().await {
            if in_data && line != "." {
                continue;
            }
            let Some((trigger, reply)) = script.next() else {
                break;
            };
            assert!(line.starts_with(trigger), "{line:?} (wanted {trigger})");
            w.write_all(reply.as_bytes()).await.unwrap();
            in_data = reply.starts_with("354");
        }
    }

    /// A client connected to a scripted server (keep the folder: it holds the socket).
    async fn scripted(script: Vec<(&'static str, String)>) -> (LmtpClient, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lmtp");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(server(listener, script));
        let t = Duration::from_secs(5);
        let c = LmtpClient::connect(&Endpoint::Unix(path), t, t, "mta.test", 0)
            .await
            .unwrap();
        (c, dir)
    }

    #[tokio::test]
    async fn each_recipient_gets_its_own_reply_after_the_content() {
        let script = vec![
            (
                "LHLO",
                "250-lmtp\r\n250 ENHANCEDSTATUSCODES\r\n".to_string(),
            ),
            ("MAIL FROM:<s@x>", "250 2.1.0 ok\r\n".into()),
            ("RCPT TO:<a@l>", "250 2.1.5 ok\r\n".into()),
            (
                "RCPT TO:<u@l>",
                "550 5.1.1 <u@l> User doesn't exist\r\n".into(),
            ),
            ("RCPT TO:<q@l>", "250 2.1.5 ok\r\n".into()),
            ("DATA", "354 go\r\n".into()),
            (
                ".",
                "250 2.0.0 <a@l> Saved\r\n452 4.2.2 <q@l> Quota exceeded\r\n".into(),
            ),
            ("MAIL FROM:<>", "250 2.1.0 ok\r\n".into()),
            ("RCPT TO:<u@l>", "550 5.1.1 no\r\n".into()),
            // No PIPELINING offered: no DATA without a recipient, only a RSET.
            ("RSET", "250 2.0.0 ok\r\n".into()),
        ];
        let (mut c, _dir) = scripted(script).await;
        let rcpts = ["a@l", "u@l", "q@l"].map(String::from);
        let tx = LmtpMessage {
            mail_from: "s@x",
            recipients: &rcpts,
            content: b"Subject: x\r\n\r\n.dot\r\n",
            eight_bit: false,
            utf8: false,
        };
        let out = c.deliver(&tx).await;
        assert!(
            out.error.is_none() && out.reusable && out.content_sent,
            "{out:?}"
        );
        let codes: Vec<u16> = out
            .replies
            .iter()
            .map(|r| r.as_ref().unwrap().code.unwrap())
            .collect();
        assert_eq!(codes, [250, 550, 452]);

        // The same connection again: nobody accepted, so no content, and a RSET.
        let one = ["u@l".to_string()];
        let tx = LmtpMessage {
            mail_from: "",
            recipients: &one,
            ..tx
        };
        let out = c.deliver(&tx).await;
        assert!(!out.content_sent && out.reusable, "{out:?}");
        assert_eq!(out.replies[0].as_ref().unwrap().code, Some(550));
    }

    #[tokio::test]
    async fn a_connection_lost_after_the_content_leaves_the_rest_unknown() {
        let script = vec![
            ("LHLO", "250 lmtp\r\n".to_string()),
            ("MAIL", "250 ok\r\n".into()),
            ("RCPT", "250 ok\r\n".into()),
            ("RCPT", "250 ok\r\n".into()),
            ("DATA", "354 go\r\n".into()),
            (".", "250 2.0.0 saved\r\n".into()),
        ];
        let (mut c, _dir) = scripted(script).await;
        let rcpts = ["a@l", "b@l"].map(String::from);
        let out = c
            .deliver(&LmtpMessage {
                mail_from: "s@x",
                recipients: &rcpts,
                content: b"x\r\n",
                eight_bit: false,
                utf8: false,
            })
            .await;
        assert!(out.error.is_some() && !out.reusable && out.content_sent);
        assert_eq!(out.replies[0].as_ref().unwrap().code, Some(250));
        assert!(out.replies[1].is_none(), "{out:?}");
    }
}
