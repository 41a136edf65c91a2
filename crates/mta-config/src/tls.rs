//! `[tls]` (the server certificate) and `[outbound.tls]` (the client's policy), kept in
//! their own module.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// `[tls]` — the certificate the inbound listeners present (STARTTLS on `listen` and
/// `submission_listen`, implicit TLS on `submissions_listen`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlsConfig {
    /// `certificate` and `private_key`: PEM files, relative to the config file's folder.
    /// Both or neither; each must be readable at load. Neither: a self-signed certificate
    /// for `hostname` is made on first start under `data_dir/tls/` (see
    /// [`TlsConfig::selfsigned`]). Default: neither.
    pub files: Option<TlsFiles>,
}

/// The configured certificate chain and key.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

/// The file as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTls {
    pub certificate: String,
    pub private_key: String,
}

/// How the client protects a session to the next hop (Postfix's `smtp_tls_security_level`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// Never STARTTLS.
    None,
    /// STARTTLS when the next hop offers it, any certificate; plaintext when it does not,
    /// or when the handshake fails before any mail was sent (then on a new connection).
    #[default]
    May,
    /// STARTTLS required (any certificate); otherwise the attempt is deferred.
    Encrypt,
    /// STARTTLS required and the certificate must be valid for the MX (or relay) host name,
    /// checked against the webpki roots plus `ca_file`.
    Verify,
}

impl TlsPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsPolicy::None => "none",
            TlsPolicy::May => "may",
            TlsPolicy::Encrypt => "encrypt",
            TlsPolicy::Verify => "verify",
        }
    }
}

/// `[outbound.tls]` — STARTTLS to the next hop.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundTls {
    /// `policy`: the default for every destination. Default `"may"`.
    pub policy: TlsPolicy,
    /// `ca_file`: extra PEM CA certificates trusted under `verify` (a private CA), relative
    /// to the config file. Default `""` (the webpki roots only).
    #[serde(deserialize_with = "optional_path")]
    pub ca_file: Option<PathBuf>,
    /// `[outbound.tls.domains]`: `"example.com" = "verify"` overrides `policy` for mail to
    /// that domain (keyed by the lower-case recipient domain). Default empty.
    pub domains: BTreeMap<String, TlsPolicy>,
    /// `dane`: authenticate MX hosts by their DNSSEC-validated TLSA records (RFC 7672),
    /// trusting the AD bit of `[dns] nameservers` (a validating resolver). Over `mta_sts`
    /// and `policy`. Default true (with a resolver that does not validate, no answer is
    /// authenticated and nothing changes).
    pub dane: bool,
    /// `mta_sts`: apply the destination's MTA-STS policy (RFC 8461) where no DANE record
    /// applies. Default true.
    pub mta_sts: bool,
    /// `tls_reports`: send the daily TLS-RPT reports (RFC 8460) to domains that ask for
    /// them in `_smtp._tls` TXT (`mailto:` only). Default true.
    pub tls_reports: bool,
}

impl Default for OutboundTls {
    fn default() -> Self {
        OutboundTls {
            policy: TlsPolicy::default(),
            ca_file: None,
            domains: BTreeMap::new(),
            dane: true,
            mta_sts: true,
            tls_reports: true,
        }
    }
}

impl OutboundTls {
    /// The policy for mail to `domain`.
    pub fn policy_for(&self, domain: &str) -> TlsPolicy {
        self.domains
            .get(&domain.to_ascii_lowercase())
            .copied()
            .unwrap_or(self.policy)
    }
}

fn optional_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    crate::values::parse_str(d, |s| {
        Ok::<_, std::convert::Infallible>((!s.trim().is_empty()).then(|| PathBuf::from(s)))
    })
}

impl TlsConfig {
    /// Where the self-signed certificate and its key live when `[tls]` names none.
    pub fn selfsigned(data_dir: &std::path::Path) -> TlsFiles {
        let dir = data_dir.join("tls");
        TlsFiles {
            certificate: dir.join("selfsigned-cert.pem"),
            private_key: dir.join("selfsigned-key.pem"),
        }
    }
}
