//! Inbound mail authentication, at the end of DATA before the 250: SPF (HELO and MAIL
//! FROM), DKIM and DMARC through `mta-auth`, an `Authentication-Results:` header naming our
//! hostname prepended above our Received header, forged results removed, and the DMARC
//! `p=reject` refusal when `[inbound] dmarc_reject` is on.
//!
//! Mail from `trusted_networks` is not checked unless `[inbound] verify_trusted` (it is our
//! own users' submissions); forged results are removed from every message.
//! Config: `hostname`, `[inbound] dmarc_reject`, `verify_trusted`, `[dns]`.
//! Logs: `qid=… auth: spf=… dkim=… dmarc=…`, and `qid=… reject: DATA: DMARC …` per refusal.
//! Counts: Mail.DKIM.Verified.{Pass,Fail,None}, Mail.DMARC.Rejected.

use crate::intake::Intake;
use anyhow::Context as _;
use mta_auth::{counters, strip_forged_results, DkimCount, Verifier, VerifyInput};
use mta_config::Config;
use mta_smtp::{Reply, Transaction};
use mta_types::QueueId;
use std::net::IpAddr;

pub struct InboundAuth {
    verifier: Verifier,
    hostname: String,
    dmarc_reject: bool,
    verify_trusted: bool,
}

impl InboundAuth {
    pub fn new(config: &Config) -> anyhow::Result<InboundAuth> {
        Ok(InboundAuth {
            verifier: Verifier::new(&config.dns, &config.hostname)
                .context("mail authentication ([dns])")?,
            hostname: config.hostname.clone(),
            dmarc_reject: config.inbound.dmarc_reject,
            verify_trusted: config.inbound.verify_trusted,
        })
    }

    /// `message` is our Received header followed by the content as received. Answers the
    /// message to make durable with the number of header fields at its top that are ours
    /// (Received, and Authentication-Results when added), or the refusal for the end of
    /// DATA.
    pub async fn check(
        &self,
        config: &Config,
        intake: &Intake,
        qid: QueueId,
        env: &Transaction,
        message: Vec<u8>,
    ) -> Result<(Vec<u8>, usize), Reply> {
        let received = first_field_len(&message);
        let (ours, content) = message.split_at(received);
        let stripped = strip_forged_results(content, &self.hostname);
        if stripped.is_some() {
            tracing::info!(
                "qid={qid} removed Authentication-Results claiming {} from outside",
                self.hostname
            );
        }
        let content = stripped.as_deref().unwrap_or(content);
        let ip = client_ip(env);
        // Internal hosts and authenticated submitters (issue 11) are not checked, as
        // OpenDKIM/OpenDMARC leave them alone: their mail is ours to sign, not to judge.
        if (config.is_trusted(ip) && !self.verify_trusted) || env.envelope.auth.is_some() {
            return Ok((
                match stripped {
                    Some(s) => [ours, &s].concat(),
                    None => message,
                },
                1,
            ));
        }
        let mail_from = env.envelope.mail_from.as_ref().map(ToString::to_string);
        let outcome = self
            .verifier
            .verify(VerifyInput {
                client_ip: ip,
                helo: &env.envelope.helo,
                mail_from: mail_from.as_deref(),
                content,
            })
            .await;
        intake.count(match outcome.summary.dkim_count {
            DkimCount::Pass => counters::VERIFIED_PASS,
            DkimCount::Fail => counters::VERIFIED_FAIL,
            DkimCount::None => counters::VERIFIED_NONE,
        });
        tracing::info!("qid={qid} auth: {}", outcome.summary.line());
        if let Some(domain) = &outcome.dmarc_reject {
            if self.dmarc_reject {
                intake.count(counters::DMARC_REJECTED);
                tracing::info!(
                    "qid={qid} reject: DATA: DMARC policy reject for header.from={domain} from=<{}> client=[{ip}] (550 5.7.1, dmarc_reject = true)",
                    mail_from.as_deref().unwrap_or("")
                );
                return Err(Reply::dmarc_rejected(domain));
            }
        }
        let mut out = Vec::with_capacity(outcome.header.len() + ours.len() + content.len());
        out.extend_from_slice(outcome.header.as_bytes());
        out.extend_from_slice(ours);
        out.extend_from_slice(content);
        Ok((out, 2))
    }
}

fn client_ip(env: &Transaction) -> IpAddr {
    match env.client.peer.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The length of the first header field (our Received header, folded lines included).
fn first_field_len(m: &[u8]) -> usize {
    let mut pos = 0;
    while let Some(i) = m[pos..].iter().position(|&b| b == b'\n') {
        pos += i + 1;
        if pos >= m.len() || !matches!(m[pos], b' ' | b'\t') {
            return pos;
        }
    }
    m.len()
}

#[cfg(test)]
mod tests {
    #[test]
    fn first_field_is_the_folded_received_header() {
        let m = b"Received: from a\r\n\tby b; date\r\nFrom: x\r\n\r\nbody";
        assert_eq!(
            &m[..super::first_field_len(m)],
            b"Received: from a\r\n\tby b; date\r\n"
        );
    }
}
