//! mta-milter — the milter protocol, MTA side (Sendmail 8.14 / Postfix "milter8", version 6).
//!
//! A protocol crate like `mta-smtp`: no config, no logging, no queues. [`connect`] opens
//! and negotiates one connection ([`Milter`]); its methods send one SMTP stage each and
//! answer the milter's [`Verdict`]; [`Milter::message`] sends the header, body and end of
//! message and answers the [`EndOfMessage`] with its modifications, which
//! [`Message::apply`] makes to the content (the envelope changes are left to the caller).
//! Every failure is a [`MilterError`]: the caller applies the milter's default action.
//!
//! Used by: `isesctl` (the inbound session's milter stages, `bin/isesctl/src/milter.rs`).
//! Wire format and semantics checked against Postfix's `src/milter/milter8.c` and
//! libmilter's `mfdef.h`.

mod client;
mod error;
mod message;
pub mod proto;

pub use client::{connect, EndOfMessage, Endpoint, Io, Milter, Timeouts, Verdict};
pub use error::MilterError;
pub use message::Message;
pub use proto::Modification;

#[cfg(test)]
mod tests;
