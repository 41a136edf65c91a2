//! `[[dkim]]` — the keys omsgcnv signs outgoing mail with (RFC 6376, RFC 8463).
//!
//! Each entry names a `domain`, a `selector`, a `private_key` file (PEM) and an `algorithm`.
//! Loading checks what needs no cryptography: the file must be readable, and no two entries
//! may sign for the same domain. `mta-auth` parses the key itself at startup and reports a
//! bad key through [`crate::Config::dkim_error`], so that error names the entry's line too.

use std::path::PathBuf;

use mta_types::Domain;
use serde::Deserialize;

use crate::values::DomainValue;

/// `algorithm`: the signature algorithm of a `[[dkim]]` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum DkimAlgorithm {
    /// `"rsa-sha256"` (RFC 6376); the key must have at least 1024 bits (RFC 8301).
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    /// `"ed25519-sha256"` (RFC 8463).
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

impl DkimAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}

/// The header fields signed when an entry has no `headers` (the RFC 6376 section 5.4.1
/// list, without the trace and resent fields a later hop may add).
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Sender",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// One `[[dkim]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkimKeyConfig {
    /// `domain`: the signing domain (`d=`), matched against the From domain, else the
    /// envelope sender's domain.
    pub domain: Domain,
    /// `selector`: `s=`; the public key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// `private_key`: the PEM file (PKCS#1 or PKCS#8 for RSA, PKCS#8 for Ed25519).
    /// Relative to the config file's folder.
    pub private_key: PathBuf,
    /// `algorithm`: `"rsa-sha256"` or `"ed25519-sha256"`.
    pub algorithm: DkimAlgorithm,
    /// `headers`: header fields to sign (`h=`). Default [`DEFAULT_SIGNED_HEADERS`].
    /// `From` is always signed (RFC 6376 section 5.4).
    pub headers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDkim {
    domain: DomainValue,
    selector: String,
    private_key: String,
    algorithm: DkimAlgorithm,
    #[serde(default)]
    headers: Option<Vec<String>>,
}

impl crate::ArrayEntry for RawDkim {
    type Config = DkimKeyConfig;
    const SECTION: &'static str = "dkim";

    /// One signing key per domain.
    fn clash(earlier: &DkimKeyConfig, this: &DkimKeyConfig) -> Option<(&'static str, String)> {
        (earlier.domain == this.domain).then(|| {
            let why = format!(
                "a second key for `{}` (one signing key per domain)",
                this.domain
            );
            ("domain", why)
        })
    }

    fn into_config(
        self,
        resolve: impl Fn(&str) -> PathBuf,
    ) -> Result<DkimKeyConfig, (&'static str, String)> {
        let selector = self.selector.trim().to_ascii_lowercase();
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if selector.is_empty() || !selector.split('.').all(valid_label) {
            return Err((
                "selector",
                format!(
                    "`{}` is not a DKIM selector (dot-separated DNS labels)",
                    self.selector
                ),
            ));
        }
        if self.private_key.trim().is_empty() {
            return Err(("private_key", "must not be empty".into()));
        }
        let private_key = resolve(&self.private_key);
        if let Err(e) = std::fs::read(&private_key) {
            return Err((
                "private_key",
                format!("cannot read `{}`: {e}", private_key.display()),
            ));
        }
        let mut headers: Vec<String> = match self.headers {
            Some(list) => {
                if let Some(bad) = list
                    .iter()
                    .find(|h| h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':'))
                {
                    return Err(("headers", format!("`{bad}` is not a header field name")));
                }
                list
            }
            None => DEFAULT_SIGNED_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect(),
        };
        if !headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
            headers.insert(0, "From".into());
        }
        Ok(DkimKeyConfig {
            domain: self.domain.0,
            selector,
            private_key,
            algorithm: self.algorithm,
            headers,
        })
    }
}
