//! End of message: the content to each milter in turn, its changes applied before the next
//! one sees it; the envelope changes and a quarantine come back to the intake.

use super::{LinkState, MilterSession, Outcome, Stage};
use mta_milter::{Message, Modification, Verdict};
use mta_smtp::{RcptParams, Reply, Transaction};
use mta_types::{Address, QueueId};

/// What one milter did to the message.
#[derive(Default)]
struct Changes {
    envelope: Vec<Modification>,
    quarantine: Option<String>,
}

impl MilterSession {
    /// `content` is the whole message; its first `ours` header fields are our own (hidden
    /// from milters).
    pub async fn end_of_message(
        &mut self,
        qid: QueueId,
        env: &Transaction,
        content: Vec<u8>,
        ours: usize,
    ) -> Outcome {
        if let Some(by) = self.discard.take() {
            return Outcome::Discard { by };
        }
        let mut message: Option<Message> = None;
        let mut edited = false;
        let mut envelope = Vec::new();
        let mut held = None;
        for i in 0..self.links.len() {
            match self.one(i, qid, env, &content, ours, &mut message).await {
                Ok(None) => {}
                Ok(Some((changes, touched))) => {
                    edited |= touched;
                    envelope.extend(changes.envelope);
                    if let Some(reason) = changes.quarantine {
                        let name = &self.links[i].entry.name;
                        tracing::info!("qid={qid} quarantined by milter {name}: {reason}");
                        self.count(i, "quarantine");
                        held = Some(format!("quarantined by milter {name}: {reason}"));
                    }
                }
                Err(outcome) => return outcome,
            }
        }
        let content = match message {
            Some(m) if edited => m.to_bytes(),
            _ => content,
        };
        if envelope.is_empty() {
            return Outcome::Deliver {
                content,
                env: None,
                held,
            };
        }
        let changed = changed_envelope(qid, env, &envelope);
        if changed.rcpts.is_empty() {
            return Outcome::Discard {
                by: "milters (every recipient removed)".into(),
            };
        }
        Outcome::Deliver {
            content,
            env: Some(Box::new(changed)),
            held,
        }
    }

    /// Milter `i`'s end of message. `Ok(None)`: it had nothing to say (left out, or failed
    /// with `accept`); `Ok(Some((changes, touched)))`: it accepted, `touched` when it
    /// changed the header or body; `Err`: the message's outcome is decided.
    async fn one(
        &mut self,
        i: usize,
        qid: QueueId,
        env: &Transaction,
        content: &[u8],
        ours: usize,
        message: &mut Option<Message>,
    ) -> Result<Option<(Changes, bool)>, Outcome> {
        let refuse = |reply: Option<Reply>| match reply {
            Some(r) => Err(Outcome::Refuse(r)),
            None => Ok(None),
        };
        match self.links[i].state {
            LinkState::Open(_) if !self.links[i].message_accepted => {}
            LinkState::Failed => return refuse(self.default_reply(i)),
            _ => return Ok(None),
        }
        if !self.data_sent {
            // BDAT: the DATA event goes out now, just before the content.
            if let Some(reply) = self.stage_one(i, Stage::Data, env).await {
                return Err(Outcome::Refuse(reply));
            }
            if !matches!(self.links[i].state, LinkState::Open(_)) {
                return Ok(None);
            }
        }
        let LinkState::Open(conn) = &mut self.links[i].state else {
            return Ok(None);
        };
        let msg = message.get_or_insert_with(|| Message::parse(content, ours));
        let id = qid.to_string();
        let result = conn.message(msg, &[("i", id.as_str())]).await;
        let lead_space = conn.protocol & mta_milter::proto::protocol::HDR_LEADSPC != 0;
        let eom = match result {
            Ok(eom) => eom,
            Err(e) => return refuse(self.failed(i, e, "END-OF-MESSAGE", env)),
        };
        self.links[i].in_message = !eom.finished;
        match eom.verdict {
            Verdict::Continue | Verdict::Accept => {}
            Verdict::Discard => {
                self.count(i, "discard");
                let by = self.links[i].entry.name.clone();
                return Err(Outcome::Discard { by });
            }
            other => return refuse(self.decided(i, other, "END-OF-MESSAGE", env)),
        }
        self.count(i, "accept");
        let n = eom.modifications.len();
        let envelope = msg.apply(&eom.modifications, lead_space);
        if n > 0 {
            let name = &self.links[i].entry.name;
            tracing::debug!("qid={qid} milter {name}: {n} modification(s)");
        }
        let touched = n > envelope.len();
        let changes = Changes {
            envelope,
            quarantine: eom.quarantine,
        };
        Ok(Some((changes, touched)))
    }
}

/// The envelope with the milters' recipient and sender changes, in their order. An address
/// that does not parse is logged and left out.
fn changed_envelope(qid: QueueId, env: &Transaction, changes: &[Modification]) -> Transaction {
    let mut env = env.clone();
    let parse = |path: &str| -> Option<Option<Address>> {
        let bare = path.trim().trim_start_matches('<').trim_end_matches('>');
        if bare.is_empty() {
            return Some(None);
        }
        match bare.parse::<Address>() {
            Ok(a) => Some(Some(a)),
            Err(_) => {
                tracing::warn!("qid={qid} milter gave an address that does not parse: {path}");
                None
            }
        }
    };
    for change in changes {
        match change {
            Modification::AddRcpt { rcpt, .. } => {
                if let Some(Some(addr)) = parse(rcpt) {
                    if !env.rcpts.iter().any(|(a, _)| *a == addr) {
                        tracing::info!("qid={qid} milter added recipient <{addr}>");
                        env.rcpts.push((addr, RcptParams::default()));
                    }
                }
            }
            Modification::DelRcpt(rcpt) => {
                let bare = rcpt.trim().trim_start_matches('<').trim_end_matches('>');
                env.rcpts
                    .retain(|(a, _)| !a.to_string().eq_ignore_ascii_case(bare));
                tracing::info!("qid={qid} milter removed recipient <{bare}>");
            }
            Modification::ChangeFrom { from, .. } => {
                if let Some(new) = parse(from) {
                    let shown = new.as_ref().map(ToString::to_string).unwrap_or_default();
                    tracing::info!("qid={qid} milter changed the sender to <{shown}>");
                    env.envelope.mail_from = new;
                }
            }
            _ => {}
        }
    }
    env
}
