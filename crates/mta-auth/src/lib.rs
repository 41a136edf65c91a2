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
//! DNS goes through hickory-resolver, configured from `[dns]` by `mta_dns::resolver_config`
//! (the next hop's resolver too). No queues, no IPC; logs nothing itself (callers log with
//! the queue ID).

mod headers;
mod keys;
mod verify;

pub use headers::{header_domain, strip_forged_results};
pub use keys::{keygen, GeneratedKey, SigningKeys, MIN_RSA_BITS};
pub use verify::{AuthOutcome, AuthSummary, DkimCount, Verifier, VerifyInput};

/// Why a key could not be loaded or made, or a message could not be signed.
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
    /// Signing a message failed (mail-auth's words; the message goes unsigned).
    #[error("{0}")]
    Sign(#[source] mail_auth::Error),
}

/// The statistics counters (`show stat mail`), kept by the store; named in
/// `mta_types::counters` with every other statistic.
pub mod counters {
    pub use mta_types::counters::{
        DKIM_SIGNED as SIGNED, DKIM_VERIFIED_FAIL as VERIFIED_FAIL,
        DKIM_VERIFIED_NONE as VERIFIED_NONE, DKIM_VERIFIED_PASS as VERIFIED_PASS, DMARC_REJECTED,
        MAIL_AUTH as ALL,
    };
}
