//! The wire format: every packet is a 4-byte big-endian length, then a one-byte command
//! (or reply) code, then `length - 1` bytes of data; strings in the data end with a NUL.
//! Codes and flags as in Sendmail 8.14's libmilter (`mfdef.h`) and Postfix's `milter8.c`.

use crate::error::MilterError;

/// The protocol version we speak (Sendmail 8.14 / Postfix 2.6 and later).
pub const VERSION: u32 = 6;

/// Largest packet we read: libmilter's own bound is 64 KiB by default and 1 MiB at most
/// (`MILTER_MAX_DATA_SIZE`); anything larger is garbage, refused before allocating.
pub const MAX_PACKET: usize = 1 << 20;

/// Body chunks sent to the milter are at most this long (libmilter's default buffer).
pub const MAX_BODY_CHUNK: usize = 65535;

/// Commands, MTA to milter.
pub mod cmd {
    pub const ABORT: u8 = b'A';
    pub const BODY: u8 = b'B';
    pub const CONNECT: u8 = b'C';
    pub const MACRO: u8 = b'D';
    pub const BODYEOB: u8 = b'E';
    pub const HELO: u8 = b'H';
    pub const HEADER: u8 = b'L';
    pub const MAIL: u8 = b'M';
    pub const EOH: u8 = b'N';
    pub const OPTNEG: u8 = b'O';
    pub const QUIT: u8 = b'Q';
    /// SMFIC_QUIT_NC (v6): this client is done, another follows on the same connection.
    pub const QUIT_NC: u8 = b'K';
    pub const RCPT: u8 = b'R';
    pub const DATA: u8 = b'T';
}

/// Replies, milter to MTA.
pub mod reply {
    pub const ADDRCPT: u8 = b'+';
    pub const DELRCPT: u8 = b'-';
    pub const ADDRCPT_PAR: u8 = b'2';
    pub const SHUTDOWN: u8 = b'4';
    pub const ACCEPT: u8 = b'a';
    pub const REPLBODY: u8 = b'b';
    pub const CONTINUE: u8 = b'c';
    pub const DISCARD: u8 = b'd';
    pub const CHGFROM: u8 = b'e';
    pub const CONN_FAIL: u8 = b'f';
    pub const ADDHEADER: u8 = b'h';
    pub const INSHEADER: u8 = b'i';
    pub const SETSYMLIST: u8 = b'l';
    pub const CHGHEADER: u8 = b'm';
    pub const PROGRESS: u8 = b'p';
    pub const QUARANTINE: u8 = b'q';
    pub const REJECT: u8 = b'r';
    pub const SKIP: u8 = b's';
    pub const TEMPFAIL: u8 = b't';
    pub const REPLYCODE: u8 = b'y';
    pub const OPTNEG: u8 = b'O';
}

/// SMFIF_*: the modifications a milter may ask for at end of message.
pub mod action {
    pub const ADDHDRS: u32 = 1 << 0;
    pub const CHGBODY: u32 = 1 << 1;
    pub const ADDRCPT: u32 = 1 << 2;
    pub const DELRCPT: u32 = 1 << 3;
    pub const CHGHDRS: u32 = 1 << 4;
    pub const QUARANTINE: u32 = 1 << 5;
    pub const CHGFROM: u32 = 1 << 6;
    pub const ADDRCPT_PAR: u32 = 1 << 7;
    /// Everything we apply (not SETSYMLIST: we send our own macro set).
    pub const OFFERED: u32 =
        ADDHDRS | CHGBODY | ADDRCPT | DELRCPT | CHGHDRS | QUARANTINE | CHGFROM | ADDRCPT_PAR;
}

/// SMFIP_*: events the milter does not want, and events it will not answer.
pub mod protocol {
    pub const NOCONNECT: u32 = 1 << 0;
    pub const NOHELO: u32 = 1 << 1;
    pub const NOMAIL: u32 = 1 << 2;
    pub const NORCPT: u32 = 1 << 3;
    pub const NOBODY: u32 = 1 << 4;
    pub const NOHDRS: u32 = 1 << 5;
    pub const NOEOH: u32 = 1 << 6;
    pub const NR_HDR: u32 = 1 << 7;
    pub const NOUNKNOWN: u32 = 1 << 8;
    pub const NODATA: u32 = 1 << 9;
    pub const SKIP: u32 = 1 << 10;
    pub const RCPT_REJ: u32 = 1 << 11;
    pub const NR_CONN: u32 = 1 << 12;
    pub const NR_HELO: u32 = 1 << 13;
    pub const NR_MAIL: u32 = 1 << 14;
    pub const NR_RCPT: u32 = 1 << 15;
    pub const NR_DATA: u32 = 1 << 16;
    pub const NR_UNKN: u32 = 1 << 17;
    pub const NR_EOH: u32 = 1 << 18;
    pub const NR_BODY: u32 = 1 << 19;
    pub const HDR_LEADSPC: u32 = 1 << 20;
    /// What we can do for a milter: skip any event, not wait for any reply, honour SKIP,
    /// send header values with their leading space. Not RCPT_REJ (we do not send
    /// recipients we refused).
    pub const OFFERED: u32 = NOCONNECT
        | NOHELO
        | NOMAIL
        | NORCPT
        | NOBODY
        | NOHDRS
        | NOEOH
        | NR_HDR
        | NOUNKNOWN
        | NODATA
        | SKIP
        | NR_CONN
        | NR_HELO
        | NR_MAIL
        | NR_RCPT
        | NR_DATA
        | NR_UNKN
        | NR_EOH
        | NR_BODY
        | HDR_LEADSPC;
}

/// Appends one packet: `code` and the concatenation of `parts` (each part as given: the
/// caller adds NULs where the protocol wants them).
pub fn encode(out: &mut Vec<u8>, code: u8, parts: &[&[u8]]) {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(code);
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// Appends a SMFIC_MACRO packet for `stage` (a command code), if there are macros.
pub fn encode_macros(out: &mut Vec<u8>, stage: u8, macros: &[(&str, &str)]) {
    if macros.is_empty() {
        return;
    }
    let mut data = vec![stage];
    for (name, value) in macros {
        push_str(&mut data, name.as_bytes());
        push_str(&mut data, value.as_bytes());
    }
    encode(out, cmd::MACRO, &[&data]);
}

/// `s` and its NUL. A NUL inside `s` would end the string early on the other side: it is
/// dropped.
pub fn push_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend(s.iter().copied().filter(|&b| b != 0));
    out.push(0);
}

/// One reply from the milter, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    OptNeg {
        version: u32,
        actions: u32,
        protocol: u32,
    },
    Accept,
    Continue,
    Reject,
    Tempfail,
    Discard,
    Skip,
    Progress,
    /// `421`: close the SMTP session.
    Shutdown,
    /// The whole reply text, e.g. `550 5.7.1 spam`, possibly several CRLF-separated lines.
    ReplyCode(String),
    Quarantine(String),
    Modify(Modification),
}

/// A change asked for at end of message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Modification {
    AddHeader {
        name: String,
        value: String,
    },
    /// `index` 0 is the top of the header (ours included, as in Postfix).
    InsertHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// The `index`-th field called `name` (1-based, 0 taken as 1); an empty value deletes it.
    ChangeHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// One piece of the new body; the pieces of one end of message are concatenated.
    ReplaceBody(Vec<u8>),
    /// `<address>` with its angle brackets as the milter sent it, and any ESMTP arguments.
    AddRcpt {
        rcpt: String,
        args: Option<String>,
    },
    DelRcpt(String),
    ChangeFrom {
        from: String,
        args: Option<String>,
    },
}

impl Response {
    /// Decodes a packet's code and data (the length already stripped).
    pub fn decode(code: u8, data: &[u8], stage: &'static str) -> Result<Response, MilterError> {
        let bad = |detail: String| MilterError::Protocol { stage, detail };
        let no_data = |r: Response| {
            if data.is_empty() {
                Ok(r)
            } else {
                Err(bad(format!(
                    "reply '{}' with {} unexpected bytes",
                    code as char,
                    data.len()
                )))
            }
        };
        let mut fields = Fields { data, stage };
        Ok(match code {
            reply::ACCEPT => no_data(Response::Accept)?,
            reply::CONTINUE => no_data(Response::Continue)?,
            reply::REJECT => no_data(Response::Reject)?,
            reply::TEMPFAIL => no_data(Response::Tempfail)?,
            reply::DISCARD => no_data(Response::Discard)?,
            reply::SKIP => no_data(Response::Skip)?,
            reply::PROGRESS => no_data(Response::Progress)?,
            reply::SHUTDOWN => no_data(Response::Shutdown)?,
            // Postfix and Sendmail treat a connection failure as a shutdown of this session.
            reply::CONN_FAIL => no_data(Response::Shutdown)?,
            reply::OPTNEG => Response::OptNeg {
                version: fields.u32()?,
                actions: fields.u32()?,
                protocol: fields.u32()?,
                // Any SETSYMLIST list that follows is not used: we send our own macros.
            },
            reply::REPLYCODE => Response::ReplyCode(fields.string()?),
            reply::QUARANTINE => Response::Quarantine(fields.string()?),
            reply::ADDHEADER => Response::Modify(Modification::AddHeader {
                name: fields.string()?,
                value: fields.string()?,
            }),
            reply::INSHEADER => Response::Modify(Modification::InsertHeader {
                index: fields.u32()?,
                name: fields.string()?,
                value: fields.string()?,
            }),
            reply::CHGHEADER => Response::Modify(Modification::ChangeHeader {
                index: fields.u32()?,
                name: fields.string()?,
                value: fields.string()?,
            }),
            reply::REPLBODY => Response::Modify(Modification::ReplaceBody(data.to_vec())),
            reply::ADDRCPT => Response::Modify(Modification::AddRcpt {
                rcpt: fields.string()?,
                args: None,
            }),
            reply::ADDRCPT_PAR => Response::Modify(Modification::AddRcpt {
                rcpt: fields.string()?,
                args: fields.optional_string()?,
            }),
            reply::DELRCPT => Response::Modify(Modification::DelRcpt(fields.string()?)),
            reply::CHGFROM => Response::Modify(Modification::ChangeFrom {
                from: fields.string()?,
                args: fields.optional_string()?,
            }),
            other => return Err(bad(format!("unknown reply code 0x{other:02x}"))),
        })
    }
}

/// Reads the fields of one packet's data in order.
struct Fields<'a> {
    data: &'a [u8],
    stage: &'static str,
}

impl Fields<'_> {
    fn bad(&self, detail: &str) -> MilterError {
        MilterError::Protocol {
            stage: self.stage,
            detail: detail.to_string(),
        }
    }

    fn u32(&mut self) -> Result<u32, MilterError> {
        let Some((head, rest)) = self.data.split_first_chunk::<4>() else {
            return Err(self.bad("packet too short for a 32-bit field"));
        };
        self.data = rest;
        Ok(u32::from_be_bytes(*head))
    }

    fn string(&mut self) -> Result<String, MilterError> {
        let Some(end) = self.data.iter().position(|&b| b == 0) else {
            return Err(self.bad("string without its terminating NUL"));
        };
        let s = String::from_utf8_lossy(&self.data[..end]).into_owned();
        self.data = &self.data[end + 1..];
        Ok(s)
    }

    fn optional_string(&mut self) -> Result<Option<String>, MilterError> {
        if self.data.is_empty() {
            return Ok(None);
        }
        self.string().map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_length_code_data() {
        let mut out = Vec::new();
        encode(&mut out, cmd::HELO, &[b"mx.example\0"]);
        assert_eq!(out, b"\0\0\0\x0cHmx.example\0");
    }

    #[test]
    fn macros_are_name_value_pairs_after_the_stage() {
        let mut out = Vec::new();
        encode_macros(&mut out, cmd::MAIL, &[("i", "Q1"), ("{mail_addr}", "a@b")]);
        assert_eq!(&out[4..], b"DMi\0Q1\0{mail_addr}\0a@b\0");
        let mut none = Vec::new();
        encode_macros(&mut none, cmd::MAIL, &[]);
        assert!(none.is_empty());
    }

    #[test]
    fn replies_decode() {
        let r = |code, data: &[u8]| Response::decode(code, data, "test");
        assert_eq!(r(b'c', b"").unwrap(), Response::Continue);
        assert_eq!(
            r(b'y', b"550 5.7.1 no\0").unwrap(),
            Response::ReplyCode("550 5.7.1 no".into())
        );
        assert_eq!(
            r(b'i', b"\0\0\0\x02X-A\0v\0").unwrap(),
            Response::Modify(Modification::InsertHeader {
                index: 2,
                name: "X-A".into(),
                value: "v".into()
            })
        );
        assert_eq!(
            r(b'e', b"<a@b>\0").unwrap(),
            Response::Modify(Modification::ChangeFrom {
                from: "<a@b>".into(),
                args: None
            })
        );
        assert_eq!(
            r(b'2', b"<a@b>\0NOTIFY=NEVER\0").unwrap(),
            Response::Modify(Modification::AddRcpt {
                rcpt: "<a@b>".into(),
                args: Some("NOTIFY=NEVER".into())
            })
        );
    }

    #[test]
    fn garbage_is_an_error() {
        let r = |code, data: &[u8]| Response::decode(code, data, "test");
        assert!(r(b'z', b"").is_err());
        assert!(r(b'c', b"x").is_err());
        assert!(r(b'y', b"550 no NUL").is_err());
        assert!(r(b'm', b"\0\0").is_err());
        assert!(r(b'O', b"\0\0\0\x06").is_err());
    }
}
