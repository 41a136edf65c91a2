//! One SMTP session to the fleet peer a drain hands off to: connect → EHLO → STARTTLS
//! (required: the fleet secret never travels in the clear; the peer's certificate is
//! not checked, the secret proves the client, the operator names the server) → EHLO →
//! AUTH PLAIN as `mta_smtp::handoff::PEER_USER` → one transaction per message, one
//! command at a time (every recipient's reply is seen): RSET between messages, MAIL and
//! RCPT with the DSN parameters and `XFLEET`, DATA with the content byte for byte.

use super::run::Plan;
use anyhow::{bail, Context as _};
use mta_smtp::client::{EnvelopeReplies, SessionError, SmtpClient};
use mta_smtp::handoff::{self, HandoffMessage, HandoffRcpt};
use mta_smtp::tokio_rustls::rustls::pki_types::ServerName;
use mta_smtp::Reply;
use mta_types::{MessageRecord, Recipient};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Per command; the reply to the end of DATA waits for the peer's durable commit.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

pub struct PeerSession {
    client: SmtpClient,
    /// A transaction happened: RSET before the next.
    used: bool,
}

impl PeerSession {
    pub async fn open(plan: &Plan) -> anyhow::Result<PeerSession> {
        let (mut client, greeting) =
            SmtpClient::connect(plan.peer, CONNECT_TIMEOUT, COMMAND_TIMEOUT).await?;
        if greeting.code != Some(220) {
            bail!("greeting: {}", greeting.text());
        }
        expect_ok(client.hello(&plan.hostname).await?, "EHLO")?;
        if !client.ext.starttls {
            bail!("the peer offers no STARTTLS (the fleet secret is never sent in the clear)");
        }
        let config = mta_tls::client_config(mta_config::TlsPolicy::Encrypt, None)
            .context("TLS client")?
            .context("TLS client: no config")?;
        let name = ServerName::IpAddress(plan.peer.ip().into());
        if let Err(reply) = client.starttls(config, name).await? {
            bail!("STARTTLS refused: {}", reply.text());
        }
        expect_ok(client.hello(&plan.hostname).await?, "EHLO")?;
        let auth = client.auth_plain(handoff::PEER_USER, &plan.secret).await?;
        if auth.code != Some(235) {
            bail!(
                "the peer refused the fleet credentials ({}): is the same secret in both nodes' [cluster] peer_password_file?",
                auth.code_text()
            );
        }
        Ok(PeerSession {
            client,
            used: false,
        })
    }

    /// One message's transaction for the recipients `rcpts` (indexes into the record's).
    /// `Err`: the session broke; nothing is known about the message (it is sent again).
    pub async fn send(
        &mut self,
        plan: &Plan,
        record: &MessageRecord,
        rcpts: &[usize],
        content: &[u8],
    ) -> Result<EnvelopeReplies, SessionError> {
        if std::mem::replace(&mut self.used, true) {
            let reset = self.client.command("RSET").await?;
            if !reset.is_positive() {
                return Err(SessionError::Refused {
                    command: "RSET".into(),
                    reply: reset.wire(),
                });
            }
        }
        let origin = HandoffMessage {
            node: plan.node.clone(),
            qid: record.id.to_string(),
            arrival_ms: record.received_at,
        };
        let utf8 = record.needs_utf8(rcpts);
        let eight_bit = record.is_8bit(content);
        let line = handoff::mail_command(record, content.len(), eight_bit, utf8, &origin);
        let rcpt_lines: Vec<String> = rcpts
            .iter()
            .map(|i| &record.recipients[*i])
            .map(|r| handoff::rcpt_command(r, &history(r)))
            .collect();
        let sent = self.client.mail_and_rcpts(&line, &rcpt_lines).await;
        let mut sent = sent.map_err(|(_, e)| e)?;
        if sent.any_rcpt_accepted() {
            sent.data = Some(self.client.data(content).await?);
        }
        Ok(sent)
    }

    pub async fn quit(self) {
        self.client.quit().await;
    }
}

fn expect_ok(reply: Reply, command: &str) -> anyhow::Result<()> {
    if !reply.is_positive() {
        bail!("{command}: {}", reply.code_text());
    }
    Ok(())
}

/// What RCPT's `XFLEET` says of a recipient: its attempts, its last error.
fn history(rcpt: &Recipient) -> HandoffRcpt {
    let last = rcpt.attempts.last();
    HandoffRcpt {
        attempts: rcpt.attempts.len() as u32,
        delay_reported: rcpt.delay_reported,
        last_at: last.map(|a| a.at).unwrap_or(0),
        last_error: last.map(|a| a.outcome.to_string()).unwrap_or_default(),
    }
}
