//! mta-auth — mail authentication: DKIM signing of outgoing mail (RFC 6376, RFC 8463), and
//! SPF (RFC 7208), DKIM and DMARC (RFC 7489) results on incoming mail, written as an
//! `Authentication-Results:` header (RFC 8601).
//!
//! The protocols come from the `mail-auth` crate; this crate holds our policy around them:
//! - [`SigningKeys`]: the `[[dkim]]` keys, loaded once at startup (a missing, unreadable or
//!   unusable key is an error naming its entry), and [`SigningKeys::sign`], which returns
//!   the `DKIM-Signature:` header to prepend (the content itself is never changed);
//! - [`Verifier`]: runs SPF for HELO and MAIL FROM, verifies every DKIM signature, evaluates
//!   DMARC for the From domain and builds the Authentication-Results header naming our
//!   hostname; DNS errors give `temperror`, never a rejection;
//! - [`strip_forged_results`]: removes Authentication-Results headers that claim our
//!   hostname but arrived from outside (RFC 8601 section 5);
//! - [`keygen`]: `smtpmta dkim-keygen`.
//!
//! DNS goes through hickory-resolver, configured from `[dns]` like `mta-dns`. No queues, no
//! IPC; logs nothing itself (callers log with the queue ID).

mod headers;
mod keys;
mod verify;

pub use headers::{header_domain, strip_forged_results};
pub use keys::{keygen, GeneratedKey, SigningKeys, MIN_RSA_BITS};
pub use verify::{AuthOutcome, AuthSummary, DkimCount, Verifier, VerifyInput};

/// Why a key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A `[[dkim]]` entry's key is unusable (the error names file, line and key).
    #[error(transparent)]
    Config(#[from] mta_config::ConfigError),
    /// Key generation or encoding failed.
    #[error("{0}")]
    Crypto(String),
    /// The resolver could not be built.
    #[error("DNS resolver: {0}")]
    Resolver(String),
}

/// The statistics counters (`show stat mail`), kept by the store.
pub mod counters {
    /// Messages omsgcnv signed with a `[[dkim]]` key.
    pub const SIGNED: &str = "Mail.DKIM.Signed";
    /// Inbound messages with a DKIM signature that verified.
    pub const VERIFIED_PASS: &str = "Mail.DKIM.Verified.Pass";
    /// Inbound messages with DKIM signatures of which none verified.
    pub const VERIFIED_FAIL: &str = "Mail.DKIM.Verified.Fail";
    /// Inbound messages without a DKIM signature.
    pub const VERIFIED_NONE: &str = "Mail.DKIM.Verified.None";
    /// Inbound messages refused because DMARC failed with `p=reject` (`dmarc_reject`).
    pub const DMARC_REJECTED: &str = "Mail.DMARC.Rejected";
    /// Every counter above, in the order `show stat mail` lists them.
    pub const ALL: &[&str] = &[SIGNED, VERIFIED_PASS, VERIFIED_FAIL, VERIFIED_NONE, DMARC_REJECTED];
}
