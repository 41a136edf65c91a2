//! DANE for SMTP (RFC 7672, RFC 6698, RFC 7218): a rustls certificate verifier that
//! authenticates the server by its host's TLSA records instead of the webpki roots.
//!
//! - **DANE-EE (3)**: the server's own certificate (selector 0: the whole certificate;
//!   1: its SubjectPublicKeyInfo) matches the record (matching 0: exact; 1: SHA-256;
//!   2: SHA-512). No name check and no expiry check (RFC 7672 3.1.1): the key is pinned
//!   by the DNSSEC-signed record.
//! - **DANE-TA (2)**: a certificate the server sent in its chain matches the record; it
//!   becomes the only trust anchor and the chain must validate up to it, naming the MX
//!   host (RFC 7672 3.1.2: TLSA base domain as reference identifier).
//!
//! PKIX-TA (0) and PKIX-EE (1) are not usable for SMTP (RFC 7672 3.1.3) and are left out
//! by [`usable`]; so are unknown selectors and matching types. The handshake signatures
//! are always checked with the provider's algorithms.

use crate::verifier::{self, Check};
use mta_dns::secure::Tlsa;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use std::sync::Arc;

/// The records DANE can use for SMTP: usage 2 or 3, selector 0 or 1, matching 0, 1 or 2.
pub fn usable(records: &[Tlsa]) -> Vec<Tlsa> {
    records
        .iter()
        .filter(|t| matches!(t.usage, 2 | 3) && t.selector <= 1 && t.matching <= 2)
        .filter(|t| match t.matching {
            1 => t.data.len() == 32,
            2 => t.data.len() == 64,
            _ => !t.data.is_empty(),
        })
        .cloned()
        .collect()
}

/// The client config that authenticates the server by `records` (already [`usable`]).
pub fn client_config(records: Vec<Tlsa>) -> Arc<ClientConfig> {
    verifier::client_config(Check::Dane(records))
}

/// The association data of `cert` for `selector` and `matching`; `None` when the
/// certificate cannot be parsed or the types are unknown.
pub fn association(cert: &CertificateDer<'_>, selector: u8, matching: u8) -> Option<Vec<u8>> {
    let spki;
    let selected: &[u8] = match selector {
        0 => cert.as_ref(),
        1 => {
            let anchor = webpki::anchor_from_trusted_cert(cert).ok()?;
            spki = webpki::spki_for_anchor(&anchor);
            spki.as_ref()
        }
        _ => return None,
    };
    Some(match matching {
        0 => selected.to_vec(),
        1 => ring::digest::digest(&ring::digest::SHA256, selected)
            .as_ref()
            .to_vec(),
        2 => ring::digest::digest(&ring::digest::SHA512, selected)
            .as_ref()
            .to_vec(),
        _ => return None,
    })
}

fn matches(record: &Tlsa, cert: &CertificateDer<'_>) -> bool {
    association(cert, record.selector, record.matching).is_some_and(|a| a == record.data)
}

/// The error a TLSA mismatch gives; [`is_tlsa_mismatch`] recognises it in a handshake
/// error's text (TLS-RPT result `tlsa-invalid`).
const MISMATCH: &str = "no TLSA record matches the server's certificate chain";

pub fn is_tlsa_mismatch(error_text: &str) -> bool {
    error_text.contains(MISMATCH)
}

/// The server's certificate chain as rustls hands it to a verifier.
pub(crate) struct Chain<'a> {
    pub end_entity: &'a CertificateDer<'a>,
    pub intermediates: &'a [CertificateDer<'a>],
    pub server_name: &'a ServerName<'a>,
    pub now: UnixTime,
}

/// DANE-EE: the end-entity certificate matches a usage-3 record; else DANE-TA.
pub(crate) fn verify(
    records: &[Tlsa],
    provider: &Arc<CryptoProvider>,
    chain: Chain<'_>,
) -> Result<ServerCertVerified, rustls::Error> {
    if (records.iter()).any(|r| r.usage == 3 && matches(r, chain.end_entity)) {
        return Ok(ServerCertVerified::assertion());
    }
    match verify_ta(records, provider, &chain) {
        Some(result) => result,
        None => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(Mismatch)),
        ))),
    }
}

/// DANE-TA: the first certificate of the chain that matches a usage-2 record anchors a
/// webpki validation of the end-entity certificate for `server_name`.
fn verify_ta(
    records: &[Tlsa],
    provider: &Arc<CryptoProvider>,
    chain: &Chain<'_>,
) -> Option<Result<ServerCertVerified, rustls::Error>> {
    let anchor = (chain.intermediates.iter())
        .find(|c| records.iter().any(|r| r.usage == 2 && matches(r, c)))?;
    let mut roots = RootCertStore::empty();
    roots.add(anchor.clone().into_owned()).ok()?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .ok()?;
    let Chain {
        end_entity,
        intermediates,
        server_name,
        now,
    } = *chain;
    Some(verifier.verify_server_cert(end_entity, intermediates, server_name, &[], now))
}

/// rustls shows an `OtherError` by its `Debug`: it says what happened in words.
struct Mismatch;

impl std::fmt::Debug for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MISMATCH)
    }
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MISMATCH)
    }
}

impl std::error::Error for Mismatch {}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn verify(records: Vec<Tlsa>, ee: &CertificateDer<'_>, chain: &[CertificateDer<'_>]) -> bool {
        let name = ServerName::try_from("mx.sec.test").unwrap();
        let chain = Chain {
            end_entity: ee,
            intermediates: chain,
            server_name: &name,
            now: UnixTime::now(),
        };
        super::verify(&usable(&records), &crate::provider(), chain).is_ok()
    }

    #[test]
    fn dane_ee_matches_by_key_or_certificate_whatever_the_name() {
        let cert = self_signed("some-other-name.example");
        for (selector, matching) in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)] {
            let data = association(&cert, selector, matching).unwrap();
            let rec = Tlsa {
                usage: 3,
                selector,
                matching,
                data,
            };
            assert!(verify(vec![rec], &cert, &[]), "3 {selector} {matching}");
        }
        let other = self_signed("mx.sec.test");
        let rec = Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: association(&other, 1, 1).unwrap(),
        };
        assert!(!verify(vec![rec], &cert, &[]), "another key does not match");
    }

    #[test]
    fn dane_ta_anchors_the_chain_and_checks_the_name() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let ee = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
            params.signed_by(&key, &issuer).unwrap().der().clone()
        };
        let rec = Tlsa {
            usage: 2,
            selector: 1,
            matching: 1,
            data: association(ca.der(), 1, 1).unwrap(),
        };
        let chain = [ca.der().clone()];
        assert!(verify(vec![rec.clone()], &ee("mx.sec.test"), &chain));
        assert!(
            !verify(vec![rec.clone()], &ee("wrong.sec.test"), &chain),
            "name checked"
        );
        assert!(
            !verify(vec![rec], &ee("mx.sec.test"), &[]),
            "TA must be in the chain"
        );
    }

    #[test]
    fn unusable_records_are_dropped() {
        let mk = |usage, selector, matching, len| Tlsa {
            usage,
            selector,
            matching,
            data: vec![1; len],
        };
        let all = vec![
            mk(0, 0, 1, 32),
            mk(1, 1, 1, 32),
            mk(3, 2, 1, 32),
            mk(3, 1, 3, 32),
            mk(3, 1, 1, 31),
            mk(3, 1, 1, 32),
            mk(2, 0, 2, 64),
        ];
        let kept = usable(&all);
        assert_eq!(kept, vec![mk(3, 1, 1, 32), mk(2, 0, 2, 64)]);
        let shown = rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
            Arc::new(Mismatch),
        )))
        .to_string();
        assert!(is_tlsa_mismatch(&shown), "{shown}");
    }
}
