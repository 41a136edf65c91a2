//! mta-smtp — SMTP grammar for both directions.
//!
//! The one place where smtpmta speaks SMTP: the command parser with its verb table
//! ([`command`]), replies and enhanced status codes ([`reply`]), the DATA/BDAT readers and
//! dot-stuffing ([`data`]), the ESMTP server session as a state machine over any byte
//! stream ([`session`]), and the Received trace header ([`received`]). No task builds an
//! SMTP reply or parses a command by itself.
//!
//! Used by: `isesctl`/`iseshlrN` (the server session), `osesctl`/`oseshlrN` (the client,
//! [`client`], with STARTTLS), `router` (the LMTP client, [`lmtp`], on the same client).
//! No queues, IPC or config of its own: the
//! caller passes a [`SessionConfig`] and [`SessionHooks`]. Logs nothing itself; the
//! hooks' `transcript` carries the protocol trace (SMTPDebugIO).
//!
//! RFCs implemented: 5321 (SMTP), 1870 (SIZE), 6152 (8BITMIME), 2920 (PIPELINING),
//! 2034 and 3463 (ENHANCEDSTATUSCODES), 6531 (SMTPUTF8), 3461 (DSN parameters),
//! 3030 (CHUNKING), 3848 (`with` keywords in Received), 5322 (date format).
//! 3207 (STARTTLS), 8314 (implicit TLS), 4954/4616 (AUTH PLAIN; and LOGIN), 6409
//! (submission), 2033 (LMTP, client side). The fleet hand-off parameter `XFLEET` ([`handoff`],
//! peers only). Not here: BINARYMIME (refused with 555).
//!
//! Security: the DATA reader ends a message only at `CRLF . CRLF` and refuses content with
//! a bare CR or LF after reading to that real end (SMTP smuggling); every buffer is bounded.

pub mod client;
pub mod command;
pub mod data;
pub mod handoff;
pub mod lmtp;
pub mod received;
pub mod reply;
pub mod session;

pub use command::{
    xtext_decode, xtext_encode, Body, Command, CommandError, ForwardPath, MailParams, Notify,
    RcptParams, Ret, ReversePath, Verb, MAX_COMMAND_LINE,
};
pub use data::{
    dot_stuff, has_bare_line_ending, read_chunk, read_data, BareNewline, ChunkAssembly, DataLimits,
    DataOutcome, DataScanner,
};
pub use received::{received_header, rfc5322_date};
pub use reply::{read_reply, Reply, ReplyError};
pub use session::{
    run_session, AuthVerdict, BareLineEvent, ClientInfo, Closing, Credentials, Direction,
    EndReason, ListenerMode, RcptVerdict, SessionConfig, SessionHooks, SessionState,
    SessionSummary, TlsInfo, Transaction,
};
pub use tokio_rustls;

/// Parses one command line with no transaction context (SMTPUTF8 not in effect). Pure, no
/// I/O: the entry point for `cargo fuzz`.
pub fn parse_command_line(bytes: &[u8]) -> Result<Command, CommandError> {
    Command::parse(bytes, false)
}
