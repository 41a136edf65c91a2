//! `[outbound.tls]`: which TLS client config a session to a destination uses.
//!
//! The configs are built once at start (the webpki roots and `ca_file` are read then):
//! one that takes any certificate, for `may` and `encrypt`, and one that verifies, for
//! `verify`.

use mta_config::{OutboundTls, TlsPolicy};
use mta_smtp::tokio_rustls::rustls::ClientConfig;
use std::sync::Arc;

pub struct TlsClients {
    policy: OutboundTls,
    opportunistic: Arc<ClientConfig>,
    verify: Arc<ClientConfig>,
}

impl TlsClients {
    pub fn new(policy: &OutboundTls) -> Result<TlsClients, mta_tls::TlsError> {
        let opportunistic =
            mta_tls::client_config(TlsPolicy::May, None)?.expect("`may` has a client config");
        let verify = mta_tls::client_config(TlsPolicy::Verify, policy.ca_file.as_deref())?
            .expect("`verify` has a client config");
        Ok(TlsClients {
            policy: policy.clone(),
            opportunistic,
            verify,
        })
    }

    /// The policy for mail to `domain`.
    pub fn policy_for(&self, domain: &str) -> TlsPolicy {
        self.policy.policy_for(domain)
    }

    /// The client config for `policy` (`None` for `TlsPolicy::None`).
    pub fn config(&self, policy: TlsPolicy) -> Option<Arc<ClientConfig>> {
        match policy {
            TlsPolicy::None => None,
            TlsPolicy::May | TlsPolicy::Encrypt => Some(self.opportunistic.clone()),
            TlsPolicy::Verify => Some(self.verify.clone()),
        }
    }
}
