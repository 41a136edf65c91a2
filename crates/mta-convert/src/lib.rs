//! mta-convert — RFC 5322/MIME <-> the native document.
//!
//! The one place that reads message content as mail rather than as bytes:
//!
//! - `convert_inbound` (used by `imsgcnv`) reads the header section of a received message and
//!   fills the native document's `ParsedFields` and hop count. It reads headers only; the body
//!   is scanned just enough to notice a broken top-level multipart, which is a warning, never
//!   an error: malformed MIME is not a reason to lose mail. Only content that cannot be a
//!   message at all is a `ConversionError` (the message is then parked in Conversion Error for
//!   the operator, not dropped).
//! - `trace_headers_for_delivery` (used by `router`) renders the `Return-Path:` and
//!   `Delivered-To:` fields prepended to a message written to a local Maildir.
//!
//! - `complete_submission` (used by `isesctl` for authenticated submissions and by
//!   `sendmail`) adds a missing `Date:` and `Message-ID:` (RFC 6409 §8).
//! - `render_dsn` (used by `drt`) writes an RFC 3464 delivery status notification.
//!
//! A relayed message's content is never rewritten here: only trace headers are prepended, so
//! DKIM signatures and the sender's MIME survive.
//!
//! No I/O, no logging: callers log the warnings with the message's `qid`.
//!
//! RFCs: 3464 and 3461 (delivery status notifications), 3834 (Auto-Submitted), 5322 (header section, `Received:`, `Return-Path:`), 2045/2046 (multipart structure),
//! 2047 (encoded words in Subject and From), 6532 (UTF-8 header values).

mod dsn;
mod inbound;
mod submission;
mod trace;

pub use dsn::{render_dsn, Dsn, DsnInput, ReportLine};
pub use inbound::{convert_inbound, has_header, ConversionError, Converted};
pub use submission::{complete_submission, SubmissionFields};
pub use trace::trace_headers_for_delivery;
