//! The fleet hand-off extension `XFLEET` (docs/DRAIN.md, "The wire format"):
//! how a node being drained tells its peer what the envelope alone cannot carry.
//!
//! Only a client authenticated as the fleet peer ([`PEER_USER`], with the secret of
//! `[cluster] peer_password_file`) may use it; anyone else gets
//! [`crate::Reply::handoff_peers_only`] (`555 5.7.1`) and nothing changes.
//!
//! Wire format (version 1), one parameter on MAIL and one on each RCPT:
//!
//! ```text
//! MAIL FROM:<a@x> RET=HDRS ENVID=e1 XFLEET=1,<node>,<qid>,<arrival ms>
//! RCPT TO:<b@y> NOTIFY=FAILURE ORCPT=rfc822;b@y XFLEET=1,<attempts>,<delay reported 0|1>,<last attempt ms>,<last error>
//! ```
//!
//! Fields are separated by `,`; each field is RFC 3461 `xtext` with `,` also escaped
//! (`+2C`), so any text survives; a last error of `-` means none. Times are milliseconds since the Unix epoch. A value
//! whose version is not `1`, or with the wrong number of fields, is a syntax error
//! (`501 5.5.4`). The last error is cut to [`MAX_ERROR_TEXT`] characters so the command
//! line stays far below [`crate::MAX_COMMAND_LINE`].

use crate::command::{xtext_decode, xtext_encode};
use mta_types::message::Ret;
use mta_types::{MessageRecord, Recipient};

/// The ESMTP parameter keyword (on MAIL and RCPT).
pub const KEYWORD: &str = "XFLEET";

/// The SASL user name a fleet peer authenticates as (AUTH PLAIN, over TLS). Not a
/// directory user: the peer's secret is checked instead of the directory's passwords.
pub const PEER_USER: &str = "smtpmta-fleet-peer";

/// The longest last-error text carried (characters).
pub const MAX_ERROR_TEXT: usize = 300;

const VERSION: &str = "1";

/// What MAIL's `XFLEET` carries: where the message comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandoffMessage {
    /// The node that accepted the message first (its `[cluster] node`).
    pub node: String,
    /// Its queue ID there, for tracking across nodes.
    pub qid: String,
    /// When that node accepted it: the queue lifetime counts from here.
    pub arrival_ms: u64,
}

/// What RCPT's `XFLEET` carries: the recipient's delivery history so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandoffRcpt {
    /// Delivery attempts made so far (they drive the retry schedule).
    pub attempts: u32,
    /// A delay report was already sent for this recipient.
    pub delay_reported: bool,
    /// When the last attempt was made (0: none).
    pub last_at: u64,
    /// The last attempt's error, as the console shows it ("" when none).
    pub last_error: String,
}

fn field(text: &str) -> String {
    xtext_encode(text).replace(',', "+2C")
}

/// Splits a value into its decoded fields after checking the version and the count.
fn fields(value: &str, count: usize) -> Option<Vec<String>> {
    let parts: Vec<&str> = value.split(',').collect();
    if parts.len() != count || parts[0] != VERSION {
        return None;
    }
    parts[1..].iter().map(|p| xtext_decode(p)).collect()
}

fn number(text: &str) -> Option<u64> {
    (!text.is_empty() && text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

impl HandoffMessage {
    /// The parameter's value (without `XFLEET=`).
    pub fn encode(&self) -> String {
        format!(
            "{VERSION},{},{},{}",
            field(&self.node),
            field(&self.qid),
            self.arrival_ms
        )
    }

    pub fn decode(value: &str) -> Option<HandoffMessage> {
        let f = fields(value, 4)?;
        let qid_ok = !f[1].is_empty() && f[1].len() <= 64;
        (!f[0].is_empty() && f[0].len() <= 255 && qid_ok).then_some(())?;
        Some(HandoffMessage {
            node: f[0].clone(),
            qid: f[1].clone(),
            arrival_ms: number(&f[2])?,
        })
    }
}

impl HandoffRcpt {
    /// The parameter's value (without `XFLEET=`); the error is cut to `MAX_ERROR_TEXT`.
    pub fn encode(&self) -> String {
        let error: String = self.last_error.chars().take(MAX_ERROR_TEXT).collect();
        format!(
            "{VERSION},{},{},{},{}",
            self.attempts,
            u8::from(self.delay_reported),
            self.last_at,
            match error.as_str() {
                "" => "-".to_string(),
                "-" => "+2D".to_string(),
                e => field(e),
            }
        )
    }

    pub fn decode(value: &str) -> Option<HandoffRcpt> {
        let parts: Vec<&str> = value.split(',').collect();
        if parts.len() != 5 || parts[0] != VERSION {
            return None;
        }
        let last_error = match parts[4] {
            "-" => String::new(),
            p => xtext_decode(p)?,
        };
        let delay_reported = match parts[2] {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        Some(HandoffRcpt {
            attempts: u32::try_from(number(parts[1])?).ok()?,
            delay_reported,
            last_at: number(parts[3])?,
            last_error,
        })
    }
}

/// The MAIL command that hands `record` off: the sender with SIZE, BODY, SMTPUTF8, the
/// DSN parameters it arrived with (RET, ENVID) and `XFLEET` (`origin`).
pub fn mail_command(
    record: &MessageRecord,
    size: usize,
    eight_bit: bool,
    utf8: bool,
    origin: &HandoffMessage,
) -> String {
    let env = &record.envelope;
    let from = env.mail_from.as_ref().map(ToString::to_string);
    let mut line = format!("MAIL FROM:<{}> SIZE={size}", from.unwrap_or_default());
    if eight_bit {
        line.push_str(" BODY=8BITMIME");
    }
    if utf8 {
        line.push_str(" SMTPUTF8");
    }
    match env.ret {
        Some(Ret::Full) => line.push_str(" RET=FULL"),
        Some(Ret::Hdrs) => line.push_str(" RET=HDRS"),
        None => {}
    }
    if let Some(envid) = &env.envid {
        line.push_str(&format!(" ENVID={}", xtext_encode(envid)));
    }
    line.push_str(&format!(" {KEYWORD}={}", origin.encode()));
    line
}

/// The RCPT command for one recipient: NOTIFY and ORCPT as it arrived, and `XFLEET` with
/// its history.
pub fn rcpt_command(rcpt: &Recipient, history: &HandoffRcpt) -> String {
    let mut line = format!("RCPT TO:<{}>", rcpt.address);
    if let Some(n) = rcpt.notify {
        let words: Vec<&str> = [
            (n.success, "SUCCESS"),
            (n.failure, "FAILURE"),
            (n.delay, "DELAY"),
        ]
        .iter()
        .filter_map(|(on, w)| on.then_some(*w))
        .collect();
        if n.never || words.is_empty() {
            line.push_str(" NOTIFY=NEVER");
        } else {
            line.push_str(&format!(" NOTIFY={}", words.join(",")));
        }
    }
    if let Some((kind, addr)) = rcpt.orcpt.as_deref().and_then(|o| o.split_once(';')) {
        line.push_str(&format!(" ORCPT={kind};{}", xtext_encode(addr)));
    }
    line.push_str(&format!(" {KEYWORD}={}", history.encode()));
    line
}

/// The queue ID in a peer's `250 2.0.0 Ok: queued as <QID>` (ours, `Reply::queued`).
pub fn queued_id(reply: &crate::Reply) -> Option<String> {
    let text = reply.text();
    let (_, rest) = text.rsplit_once("queued as ")?;
    let id: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trip() {
        let m = HandoffMessage {
            node: "mx,1 é".into(),
            qid: "0ABCDEF".into(),
            arrival_ms: 1_765_000_000_123,
        };
        let v = m.encode();
        assert!(!v.contains(' ') && v.split(',').count() == 4, "{v}");
        assert_eq!(HandoffMessage::decode(&v), Some(m));
        assert_eq!(
            HandoffMessage::decode("1,mx1,Q1,5"),
            Some(HandoffMessage {
                node: "mx1".into(),
                qid: "Q1".into(),
                arrival_ms: 5
            })
        );
        for bad in [
            "2,mx1,Q1,5",
            "1,mx1,Q1",
            "1,,Q1,5",
            "1,mx1,Q1,x",
            "1,mx1,Q1,5,6",
        ] {
            assert_eq!(HandoffMessage::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn commands_carry_dsn_parameters() {
        let mut r = mta_types::Recipient::new("b@y.example".parse().unwrap());
        r.notify = Some(mta_types::message::Notify {
            failure: true,
            delay: true,
            ..Default::default()
        });
        r.orcpt = Some("rfc822;B+x@y.example".into());
        let line = rcpt_command(&r, &HandoffRcpt::default());
        assert_eq!(
            line,
            "RCPT TO:<b@y.example> NOTIFY=FAILURE,DELAY ORCPT=rfc822;B+2Bx@y.example XFLEET=1,0,0,0,-"
        );
        let crate::Command::Rcpt { params, .. } =
            crate::parse_command_line(line.as_bytes()).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            params.orcpt,
            Some(("rfc822".into(), "B+x@y.example".into()))
        );
        assert_eq!(params.handoff, Some(HandoffRcpt::default()));
        let reply = crate::Reply::queued("0AB12CD");
        assert_eq!(queued_id(&reply).as_deref(), Some("0AB12CD"));
    }

    #[test]
    fn recipient_round_trip() {
        let r = HandoffRcpt {
            attempts: 3,
            delay_reported: true,
            last_at: 42,
            last_error: "451 4.3.0 try, later = soon".into(),
        };
        let v = r.encode();
        assert!(!v.contains(' ') && !v.contains("= "), "{v}");
        assert_eq!(HandoffRcpt::decode(&v), Some(r));
        let none = HandoffRcpt::default();
        assert_eq!(none.encode(), "1,0,0,0,-");
        assert_eq!(HandoffRcpt::decode("1,0,0,0,-"), Some(none));
        let long = HandoffRcpt {
            last_error: "x".repeat(2000),
            ..HandoffRcpt::default()
        };
        let decoded = HandoffRcpt::decode(&long.encode()).unwrap();
        assert_eq!(decoded.last_error.len(), MAX_ERROR_TEXT);
        let dash = HandoffRcpt {
            last_error: "-".into(),
            ..HandoffRcpt::default()
        };
        assert_eq!(HandoffRcpt::decode(&dash.encode()), Some(dash));
        for bad in ["1,0,2,0,-", "1,0,0,0", "1,a,0,0,-", "1,0,0,0,a=b"] {
            assert_eq!(HandoffRcpt::decode(bad), None, "{bad}");
        }
    }
}
