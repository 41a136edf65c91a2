//! Inbound checks: SPF for HELO and MAIL FROM, every DKIM signature, DMARC for the From
//! domain, and the Authentication-Results header that records them under our hostname.

use crate::keys::MIN_RSA_BITS;
use crate::AuthError;
use mail_auth::common::crypto::{Algorithm, CryptoError};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcResult,
    MessageAuthenticator, SpfResult,
};
use mta_config::DnsConfig;
use std::net::IpAddr;

/// What the checks see of one message.
#[derive(Clone, Copy, Debug)]
pub struct VerifyInput<'a> {
    pub client_ip: IpAddr,
    /// The EHLO/HELO argument.
    pub helo: &'a str,
    /// The MAIL FROM address; `None` for the null reverse-path `<>`.
    pub mail_from: Option<&'a str>,
    /// The message as received (without our Received header).
    pub content: &'a [u8],
}

/// The DKIM verdict of a message, for the counters: a passing signature, signatures of
/// which none passed, or no signature at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DkimCount {
    Pass,
    Fail,
    None,
}

/// The results in words, as the logs and the console show them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSummary {
    /// `spf` for MAIL FROM: `pass`, `fail`, `softfail`, `neutral`, `none`, `temperror`,
    /// `permerror`.
    pub spf: String,
    /// `spf` for HELO.
    pub spf_helo: String,
    /// One `result (d=…, s=…)` per signature; empty without signatures.
    pub dkim: Vec<String>,
    pub dkim_count: DkimCount,
    /// `dmarc`: `pass`, `fail`, `none`, `temperror`, `permerror`.
    pub dmarc: String,
    /// The From domain's policy (`none`, `quarantine`, `reject`), when it has a record.
    pub dmarc_policy: String,
    /// The RFC 5322 From domain DMARC evaluated (empty if none).
    pub from_domain: String,
}

impl AuthSummary {
    /// One line: `spf=pass spf.helo=none dkim=pass dmarc=pass (p=reject) header.from=x`.
    pub fn line(&self) -> String {
        let dkim = if self.dkim.is_empty() {
            "none".to_string()
        } else {
            self.dkim.join(", ")
        };
        format!(
            "spf={} spf.helo={} dkim={} dmarc={} (p={}) header.from={}",
            self.spf,
            self.spf_helo,
            dkim,
            self.dmarc,
            self.dmarc_policy,
            if self.from_domain.is_empty() {
                "-"
            } else {
                &self.from_domain
            }
        )
    }
}

/// What the checks found.
#[derive(Clone, Debug)]
pub struct AuthOutcome {
    /// `Authentication-Results: <hostname>; …` ending in CRLF, to prepend.
    pub header: String,
    pub summary: AuthSummary,
    /// DMARC failed for a `p=reject` domain (with the domain). Whether that refuses the
    /// message is `[inbound] dmarc_reject`'s business (the caller's).
    pub dmarc_reject: Option<String>,
}

/// Runs the checks; one per process, shared by every session.
#[derive(Clone)]
pub struct Verifier {
    auth: MessageAuthenticator,
    hostname: String,
}

impl Verifier {
    /// A verifier asking `[dns] nameservers` (else /etc/resolv.conf) with `[dns] timeout`
    /// per query, never /etc/hosts, writing results under `hostname`.
    pub fn new(dns: &DnsConfig, hostname: &str) -> Result<Verifier, AuthError> {
        let (config, opts) =
            mta_dns::resolver_config(dns).map_err(|e| AuthError::Resolver(e.to_string()))?;
        let auth = MessageAuthenticator::new(config, opts)
            .map_err(|e| AuthError::Resolver(e.to_string()))?;
        Ok(Verifier {
            auth,
            hostname: hostname.to_string(),
        })
    }

    /// SPF (HELO, then MAIL FROM), DKIM, DMARC. Never fails: unparseable input and DNS
    /// trouble become `permerror`/`none` and `temperror` results.
    pub async fn verify(&self, input: VerifyInput<'_>) -> AuthOutcome {
        let host = self.hostname.as_str();
        let helo = input.helo.trim();
        // An address literal or a bare word is no domain to look up (RFC 7208 2.3).
        let helo_is_domain = !helo.starts_with('[') && helo.contains('.');
        let spf_helo = if helo_is_domain {
            Some(
                self.auth
                    .verify_spf(SpfParameters::verify_ehlo(input.client_ip, helo, host))
                    .await,
            )
        } else {
            None
        };
        let sender = input.mail_from.unwrap_or("");
        let spf = self
            .auth
            .verify_spf(SpfParameters::verify_mail_from(
                input.client_ip,
                helo,
                host,
                sender,
            ))
            .await;
        let mail_from_domain = sender.rsplit_once('@').map_or(helo, |(_, d)| d);

        // A message mail-auth cannot parse has no From to align and no signature to check.
        let empty: &[u8] = b"\r\n";
        let parsed = AuthenticatedMessage::parse(input.content);
        let message = match &parsed {
            Some(m) => m,
            None => &AuthenticatedMessage::parse(empty).expect("an empty message parses"),
        };
        let dkim: Vec<DkimOutput> = self
            .auth
            .verify_dkim(message)
            .await
            .into_iter()
            .map(|output| refuse_short_rsa_keys(message, output))
            .collect();
        let dmarc = self
            .auth
            .verify_dmarc(DmarcParameters::new(message, &dkim, mail_from_domain, &spf))
            .await;

        let mut results = AuthenticationResults::new(host).with_dkim_results(&dkim, message.from());
        if let Some(h) = &spf_helo {
            results = results.with_spf_ehlo_result(h, input.client_ip, helo);
        }
        results = results
            .with_spf_mailfrom_result(&spf, input.client_ip, sender, helo)
            .with_dmarc_result(&dmarc);
        let mut header = results.to_header();
        // mail-auth leaves out signatures it cannot parse: a DKIM-Signature field that gave
        // no result is malformed, a permanent error (RFC 6376 6.1.1), not "none".
        let malformed = crate::headers::count(input.content, "dkim-signature") > dkim.len();
        if dkim.is_empty() {
            // RFC 8601 2.7.1: say `dkim=none` rather than nothing (mail-auth writes nothing).
            let word = if malformed {
                "dkim=permerror (malformed DKIM-Signature)"
            } else {
                "dkim=none"
            };
            let start = format!("Authentication-Results: {host}");
            header = header.replacen(&start, &format!("{start};\r\n\t{word}"), 1);
        }
        if !header.ends_with("\r\n") {
            header.push_str("\r\n");
        }

        let (dkim_words, dkim_count) = dkim_summary(&dkim, malformed);
        let (mut dmarc_word, mut failed) = dmarc_verdict(dmarc.spf_result(), dmarc.dkim_result());
        // A published record and neither identifier aligned and passing: that is a failure
        // (mail-auth reports both results as `none` then).
        if dmarc_word == "none" && dmarc.dmarc_record().is_some() {
            (dmarc_word, failed) = ("fail", true);
            header = header.replacen("dmarc=none", "dmarc=fail", 1);
        }
        let policy = match dmarc.policy() {
            Policy::Reject => "reject",
            Policy::Quarantine => "quarantine",
            Policy::None | Policy::Unspecified => "none",
        };
        let dmarc_reject =
            (failed && dmarc.policy() == Policy::Reject).then(|| dmarc.domain().to_string());
        AuthOutcome {
            header,
            summary: AuthSummary {
                spf: spf_word(spf.result()).into(),
                spf_helo: spf_helo
                    .as_ref()
                    .map(|h| spf_word(h.result()))
                    .unwrap_or("none")
                    .into(),
                dkim: dkim_words,
                dkim_count,
                dmarc: dmarc_word.into(),
                dmarc_policy: policy.into(),
                from_domain: dmarc.domain().to_string(),
            },
            dmarc_reject,
        }
    }
}

/// Each DKIM result as a word with its domain and selector (plus one for a malformed
/// signature mail-auth left out), and the message's DKIM verdict.
fn dkim_summary(dkim: &[DkimOutput], malformed: bool) -> (Vec<String>, DkimCount) {
    let mut words: Vec<String> = dkim
        .iter()
        .map(|d| {
            let (dom, sel) = d
                .signature()
                .map(|s| (s.d.as_str(), s.s.as_str()))
                .unwrap_or(("?", "?"));
            format!("{} (d={dom} s={sel})", dkim_word(d.result()))
        })
        .collect();
    if malformed {
        words.push("permerror (malformed DKIM-Signature)".into());
    }
    let count = if dkim.iter().any(|d| d.result() == &DkimResult::Pass) {
        DkimCount::Pass
    } else if dkim.is_empty() && !malformed {
        DkimCount::None
    } else {
        DkimCount::Fail
    };
    (words, count)
}

fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// RFC 8301 3.2: verifiers MUST NOT consider signatures made with RSA keys shorter than
/// 1024 bits valid. mail-auth's rust-crypto backend verifies any length, so a `pass` from a
/// short key becomes a `fail` here, before DMARC sees it. A PKCS#1 v1.5 signature is exactly
/// as long as the key's modulus, so its length gives the key's size.
fn refuse_short_rsa_keys<'x>(
    message: &'x AuthenticatedMessage<'_>,
    output: DkimOutput<'x>,
) -> DkimOutput<'x> {
    // The output borrows its signature from `message`; find it there to keep that lifetime.
    let Some(signature) = output.signature().and_then(|checked| {
        message
            .dkim_headers
            .iter()
            .map(|h| &h.header)
            .find(|s| std::ptr::eq(*s, checked))
    }) else {
        return output;
    };
    let rsa = matches!(signature.a, Algorithm::RsaSha256 | Algorithm::RsaSha1);
    if output.result() == &DkimResult::Pass && rsa && signature.b.len() * 8 < MIN_RSA_BITS {
        let why = format!(
            "RSA key of {} bits, shorter than {MIN_RSA_BITS} (RFC 8301)",
            signature.b.len() * 8
        );
        return DkimOutput::fail(mail_auth::Error::Crypto(CryptoError::Library(why)))
            .with_signature(signature);
    }
    output
}

fn dkim_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

/// The DMARC word (as the header writes it) and whether it is a definite failure: neither
/// identifier aligned and passed, and no DNS trouble that might have hidden a pass — a
/// temporary error is never a rejection.
fn dmarc_verdict(spf: &DmarcResult, dkim: &DmarcResult) -> (&'static str, bool) {
    let word = |r: &DmarcResult| match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    };
    if spf == &DmarcResult::Pass || dkim == &DmarcResult::Pass {
        return ("pass", false);
    }
    let temp = |r: &DmarcResult| matches!(r, DmarcResult::TempError(_));
    if temp(spf) || temp(dkim) {
        return ("temperror", false);
    }
    let chosen = if spf != &DmarcResult::None { spf } else { dkim };
    (word(chosen), matches!(chosen, DmarcResult::Fail(_)))
}
