//! One message made ready for a session: its content read from the spool, the checks
//! against what the next hop offers, and its MAIL FROM line.
//!
//! Capability checks (RFC 6152, 6531), decided here at send time: 8-bit content to a
//! server without 8BITMIME fails permanently (5.6.3; no 7-bit conversion, which would
//! break DKIM); SMTPUTF8 mail to a server without SMTPUTF8 fails permanently (5.6.7);
//! a message over the server's SIZE fails (5.3.4). Content with a bare CR or LF is never
//! sent (5.6.0). Content gone from the spool sends the message to Dead; a spool read
//! that fails otherwise defers it (4.3.0).

use crate::delivery::{Env, Results};
use crate::domain_list::ListItem;
use crate::outcomes::RcptOutcome;
use mta_smtp::client::Extensions;
use mta_types::Enhanced;

/// What a session sends for one message.
pub struct Prepared {
    pub content: Vec<u8>,
    pub mail: String,
}

/// Reads and checks the message; `Err` carries every recipient's outcome when it will
/// not be sent over this session.
pub async fn prepare(
    env: &Env,
    ext: &Extensions,
    label: &str,
    item: &ListItem,
) -> Result<Prepared, Results> {
    let all = |outcome: RcptOutcome| -> Results {
        item.rcpts.iter().map(|i| (*i, outcome.clone())).collect()
    };
    let spool_dir = env.spool_dir.clone();
    let content_ref = item.record.content.clone();
    let read = mta_task::read_work(content_ref.len, move || {
        mta_spool::read(&spool_dir, &content_ref)
    })
    .await;
    let content = match read {
        Ok(Ok(c)) => c,
        Ok(Err(e)) if e.is_missing() => {
            let reason = e.to_string();
            return Err(all(RcptOutcome::ContentMissing { reason }));
        }
        Ok(Err(e)) => return Err(all(cannot_read(label, e))),
        Err(e) => return Err(all(cannot_read(label, e))),
    };
    let (utf8, eight_bit) = match check(ext, label, item, &content) {
        Ok(flags) => flags,
        Err((status, text)) => return Err(all(RcptOutcome::local(label, status, text))),
    };
    let record = &item.record;
    let from = record.envelope.mail_from.as_ref();
    let mut mail = format!(
        "MAIL FROM:<{}>",
        from.map(|a| a.to_string()).unwrap_or_default()
    );
    if ext.size.is_some() {
        mail.push_str(&format!(" SIZE={}", content.len()));
    }
    if eight_bit {
        mail.push_str(" BODY=8BITMIME");
    }
    if utf8 {
        mail.push_str(" SMTPUTF8");
    }
    Ok(Prepared { content, mail })
}

fn cannot_read(label: &str, e: impl std::fmt::Display) -> RcptOutcome {
    RcptOutcome::local(
        label,
        Enhanced::new(4, 3, 0),
        format!("cannot read the queued content: {e}"),
    )
}

/// The checks against the next hop's extensions: `(needs SMTPUTF8, 8-bit)`, or the
/// status and text of the permanent failure.
fn check(
    ext: &Extensions,
    label: &str,
    item: &ListItem,
    content: &[u8],
) -> Result<(bool, bool), (Enhanced, String)> {
    if mta_smtp::has_bare_line_ending(content) {
        let text = "content has a bare CR or LF; not sent (SMTP smuggling risk)";
        return Err((Enhanced::new(5, 6, 0), text.into()));
    }
    let record = &item.record;
    let needs_utf8 = record.needs_utf8(&item.rcpts);
    if needs_utf8 && !ext.smtputf8 {
        let text = format!("{label} does not support SMTPUTF8, which this message needs");
        return Err((Enhanced::new(5, 6, 7), text));
    }
    let eight_bit = record.is_8bit(content);
    if eight_bit && !ext.eight_bit_mime {
        let text = format!(
            "{label} does not support 8BITMIME and the message has 8-bit content \
             (not converted, to keep signatures valid)"
        );
        return Err((Enhanced::new(5, 6, 3), text));
    }
    if let Some(limit) = ext.size {
        if content.len() as u64 > limit {
            let text = format!(
                "message size {} exceeds {label}'s limit {limit}",
                content.len()
            );
            return Err((Enhanced::new(5, 3, 4), text));
        }
    }
    Ok((needs_utf8, eight_bit))
}
