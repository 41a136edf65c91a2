//! The one certificate verifier of our own for outbound sessions. What it makes of the
//! server's certificate depends on the policy ([`Check`]); the handshake signatures are
//! checked the same way whatever the policy, with the ring provider's algorithms, so the
//! session key really is the peer's. (`verify` needs none of this: rustls' own webpki
//! verifier with our roots does it.)

use crate::{dane, provider, Observed};
use mta_dns::secure::Tlsa;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;

/// What the verifier asks of the server's certificate.
#[derive(Debug)]
pub(crate) enum Check {
    /// Opportunistic TLS (`may`, `encrypt`): any certificate is taken — MX hosts commonly
    /// present self-signed or mismatched ones, and refusing them would only push the mail
    /// to plaintext.
    Any,
    /// MTA-STS `testing`: any certificate is taken, and what the webpki verification
    /// would have said lands in `observed` (for TLS-RPT).
    Observe {
        webpki: Arc<WebPkiServerVerifier>,
        observed: Observed,
    },
    /// DANE: the host's usable TLSA records authenticate the server ([`dane::verify`]).
    Dane(Vec<Tlsa>),
}

#[derive(Debug)]
struct PolicyVerifier {
    check: Check,
    provider: Arc<CryptoProvider>,
}

/// A client config whose certificate verification is `check`.
pub(crate) fn client_config(check: Check) -> Arc<ClientConfig> {
    let verifier = PolicyVerifier {
        check,
        provider: provider(),
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Arc::new(config)
}

/// A handshake-signature check: the trait method and the rustls function that does it share
/// their name (TLS 1.2 and 1.3 alike).
macro_rules! signature_check {
    ($method:ident) => {
        fn $method(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algorithms = &self.provider.signature_verification_algorithms;
            rustls::crypto::$method(message, cert, dss, algorithms)
        }
    };
}

impl ServerCertVerifier for PolicyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.check {
            Check::Any => Ok(ServerCertVerified::assertion()),
            Check::Observe { webpki, observed } => {
                let verdict = webpki.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    now,
                );
                if let Err(e) = verdict {
                    *observed.lock().expect("observed") = Some(e.to_string());
                }
                Ok(ServerCertVerified::assertion())
            }
            Check::Dane(records) => {
                let chain = dane::Chain {
                    end_entity,
                    intermediates,
                    server_name,
                    now,
                };
                dane::verify(records, &self.provider, chain)
            }
        }
    }

    signature_check!(verify_tls12_signature);
    signature_check!(verify_tls13_signature);

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
