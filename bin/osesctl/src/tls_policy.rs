//! What a connection to a next hop must prove: the outbound TLS policy module.
//!
//! Precedence as in RFC 8461 section 2: **DANE** (RFC 7672) over **MTA-STS** (RFC 8461)
//! over `[outbound.tls] policy` / `[outbound.tls.domains]`.
//!
//! - [`TlsClients::plan`] (once per Domain List): is the domain's MX RRset DNSSEC-validated
//!   (the resolver's AD bit, `mta_dns::secure`), and which MTA-STS policy applies (the
//!   `_mta-sts` TXT id, the policy cached in the store under `sts:<domain>`, fetched again
//!   when the id changes or the policy expired; a cached policy is kept while a refresh
//!   fails).
//! - [`TlsClients::for_host`] (per MX host): with a validated MX, the host's
//!   `_<port>._tcp.<host>` TLSA records. Usable ones: TLS is mandatory and the server is
//!   authenticated by them (`mta_tls::dane`). A failed TLSA lookup (SERVFAIL: bogus) skips
//!   the host (and so defers when no host is left). Otherwise MTA-STS `enforce`: only MX
//!   hosts matching the policy's `mx` patterns, TLS required, the certificate verified
//!   (webpki roots + `ca_file`) naming the MX host. `testing`: the config's policy, with
//!   the verification's result recorded. Else the config's policy.
//!
//! Every result under a DANE or MTA-STS policy is counted for TLS-RPT (`tls_report`).
//! With `[outbound] relay_host`, only the config's policy applies (the relay is ours).

use crate::tls_report::{Failure, ReportBook};
use mta_config::{Config, OutboundTls, TlsPolicy};
use mta_dns::secure::{SecureResolver, Tlsa};
use mta_ipc::StoreClient;
use mta_smtp::tokio_rustls::rustls::ClientConfig;
use mta_tls::sts::{StsMode, StsPolicy};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a domain's `_mta-sts` TXT answer is trusted before it is asked again.
const TXT_RECHECK: Duration = Duration::from_secs(60);
/// The policy fetch's bound (RFC 8461 3.3 suggests a minute at most).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

pub struct TlsClients {
    policy: OutboundTls,
    opportunistic: Arc<ClientConfig>,
    verify: Arc<ClientConfig>,
    observer: mta_tls::Observer,
    secure: Option<SecureResolver>,
    store: Option<StoreClient>,
    /// MTA-STS state per domain, in memory (the store holds the policies across restarts).
    sts: Mutex<HashMap<String, StsState>>,
    pub reports: Arc<ReportBook>,
    /// Where TLS-RPT reports are submitted: our own first `[inbound] listen` address
    /// (loopback when it listens on every address).
    pub report_submit: Option<std::net::SocketAddr>,
}

#[derive(Clone)]
struct StsState {
    found: StsFound,
    checked: Instant,
}

/// The MTA-STS answer for a domain.
#[derive(Clone, Debug)]
pub enum StsFound {
    None,
    Policy {
        policy: StsPolicy,
        /// Why a cached policy is in use, if it is (`refresh failed: …`).
        note: Option<String>,
    },
    /// The TXT record announces a policy, but none could be fetched and none is cached.
    FetchFailed(String),
}

/// The destination's policy, found once per list.
#[derive(Clone, Debug)]
pub struct Plan {
    pub domain: String,
    pub mx_secure: bool,
    pub sts: StsFound,
    pub config: TlsPolicy,
    /// A relay host is configured: only `config` applies.
    pub relay: bool,
}

/// Which policy a connection was made under (named in logs, `show message`, TLS-RPT).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyUsed {
    Dane {
        records: usize,
    },
    /// TLSA records exist but none is usable: TLS required, no authentication.
    DaneUnusable,
    Sts(StsMode),
    Config(TlsPolicy),
}

impl std::fmt::Display for PolicyUsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyUsed::Dane { records } => write!(f, "dane ({records} TLSA)"),
            PolicyUsed::DaneUnusable => f.write_str("dane (no usable TLSA: encrypt)"),
            PolicyUsed::Sts(mode) => write!(f, "mta-sts {}", mode.as_str()),
            PolicyUsed::Config(p) => write!(f, "{}", p.as_str()),
        }
    }
}

/// What one connection must do.
pub struct HostTls {
    pub used: PolicyUsed,
    /// `None`: no STARTTLS (`policy = "none"`).
    pub config: Option<Arc<ClientConfig>>,
    /// A host without STARTTLS, or a failed handshake, means "next host".
    pub required: bool,
    /// MTA-STS testing: the verification's outcome, recorded for TLS-RPT.
    pub testing: Option<mta_tls::Observed>,
    /// The TLS-RPT policy domain and type, when the policy is DANE or MTA-STS.
    pub report: Option<crate::tls_report::PolicyKey>,
}

impl TlsClients {
    pub fn new(
        config: &Config,
        store: Option<StoreClient>,
    ) -> Result<TlsClients, mta_tls::TlsError> {
        let policy = &config.outbound.tls;
        let opportunistic =
            mta_tls::client_config(TlsPolicy::May, None)?.expect("`may` has a client config");
        let verify = mta_tls::client_config(TlsPolicy::Verify, policy.ca_file.as_deref())?
            .expect("`verify` has a client config");
        let secure = (policy.dane || policy.mta_sts || policy.tls_reports)
            .then(|| SecureResolver::new(&config.dns).ok())
            .flatten();
        Ok(TlsClients {
            policy: policy.clone(),
            opportunistic,
            verify,
            observer: mta_tls::Observer::new(policy.ca_file.as_deref())?,
            secure,
            store: store.clone(),
            sts: Mutex::new(HashMap::new()),
            reports: Arc::new(ReportBook::new(store)),
            report_submit: config.inbound.listen.first().map(|a| {
                let mut a = *a;
                if a.ip().is_unspecified() {
                    a.set_ip(if a.is_ipv4() {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                a
            }),
        })
    }

    /// The config policy for mail to `domain`.
    pub fn policy_for(&self, domain: &str) -> TlsPolicy {
        self.policy.policy_for(domain)
    }

    /// The client config for a config `policy` (`None` for `TlsPolicy::None`).
    pub fn config(&self, policy: TlsPolicy) -> Option<Arc<ClientConfig>> {
        match policy {
            TlsPolicy::None => None,
            TlsPolicy::May | TlsPolicy::Encrypt => Some(self.opportunistic.clone()),
            TlsPolicy::Verify => Some(self.verify.clone()),
        }
    }

    pub fn secure(&self) -> Option<&SecureResolver> {
        self.secure.as_ref()
    }

    /// The destination's policy: DNSSEC status of its MX and its MTA-STS policy.
    pub async fn plan(&self, domain: &str, relay: bool) -> Plan {
        let config = self.policy_for(domain);
        let mut plan = Plan {
            domain: domain.to_ascii_lowercase(),
            mx_secure: false,
            sts: StsFound::None,
            config,
            relay,
        };
        let Some(secure) = &self.secure else {
            return plan;
        };
        if relay || domain.starts_with('[') {
            return plan;
        }
        if self.policy.dane {
            // A failed lookup here is not DANE's verdict: the next hop's own MX lookup
            // decides whether the list goes on; DANE then applies to no host.
            plan.mx_secure = secure
                .mx(domain)
                .await
                .map(|a| a.authenticated)
                .unwrap_or(false);
        }
        if self.policy.mta_sts {
            plan.sts = self.sts_policy(secure, &plan.domain).await;
        }
        plan
    }

    /// What a connection to `host` (an MX host of the plan's domain, on `port`) must
    /// prove; `Err` says why the host must not be used (the list tries the next one).
    pub async fn for_host(&self, plan: &Plan, host: &str, port: u16) -> Result<HostTls, String> {
        if plan.relay {
            return Ok(self.config_host(plan.config, None));
        }
        if let (true, Some(secure)) = (plan.mx_secure && self.policy.dane, &self.secure) {
            match secure.tlsa(host, port).await {
                Err(e) => {
                    let key = crate::tls_report::PolicyKey::tlsa(&plan.domain);
                    self.reports
                        .failure(&key, host, None, Failure::DnssecInvalid);
                    return Err(format!("DANE: {e} (dnssec-invalid); host not used"));
                }
                Ok(answer) if answer.authenticated && !answer.value.is_empty() => {
                    return Ok(self.dane_host(plan, answer.value));
                }
                Ok(_) => {}
            }
        }
        match &plan.sts {
            StsFound::Policy { policy, .. } if policy.mode != StsMode::None => {
                self.sts_host(plan, policy, host)
            }
            _ => Ok(self.config_host(plan.config, None)),
        }
    }

    fn dane_host(&self, plan: &Plan, records: Vec<Tlsa>) -> HostTls {
        let usable = mta_tls::dane::usable(&records);
        let report = Some(crate::tls_report::PolicyKey::tlsa(&plan.domain));
        self.reports
            .describe_tlsa(report.as_ref().expect("set"), &records);
        if usable.is_empty() {
            return HostTls {
                used: PolicyUsed::DaneUnusable,
                config: Some(self.opportunistic.clone()),
                required: true,
                testing: None,
                report,
            };
        }
        HostTls {
            used: PolicyUsed::Dane {
                records: usable.len(),
            },
            config: Some(mta_tls::dane::client_config(usable)),
            required: true,
            testing: None,
            report,
        }
    }

    fn sts_host(&self, plan: &Plan, policy: &StsPolicy, host: &str) -> Result<HostTls, String> {
        let key = crate::tls_report::PolicyKey::sts(&plan.domain, policy);
        if !policy.mx_matches(host) {
            self.reports.failure(&key, host, None, Failure::MxMismatch);
            if policy.mode == StsMode::Enforce {
                return Err(format!(
                    "MTA-STS policy of {} (enforce) does not list this MX host (mx: {})",
                    plan.domain,
                    policy.mx.join(", ")
                ));
            }
            return Ok(self.config_host(plan.config, Some(key)));
        }
        if policy.mode == StsMode::Enforce {
            return Ok(HostTls {
                used: PolicyUsed::Sts(StsMode::Enforce),
                config: Some(self.verify.clone()),
                required: true,
                testing: None,
                report: Some(key),
            });
        }
        // Testing: deliver as the config says, but see what verification would say.
        let (config, observed) = self.observer.config();
        let mut host_tls = self.config_host(plan.config, Some(key));
        host_tls.used = PolicyUsed::Sts(StsMode::Testing);
        if host_tls.config.is_some() {
            host_tls.config = Some(config);
            host_tls.testing = Some(observed);
        }
        Ok(host_tls)
    }

    fn config_host(
        &self,
        policy: TlsPolicy,
        report: Option<crate::tls_report::PolicyKey>,
    ) -> HostTls {
        HostTls {
            used: PolicyUsed::Config(policy),
            config: self.config(policy),
            required: !matches!(policy, TlsPolicy::May | TlsPolicy::None),
            testing: None,
            report,
        }
    }

    /// The MTA-STS policy of `domain`: memory, then the TXT id, the store, a fetch.
    async fn sts_policy(&self, secure: &SecureResolver, domain: &str) -> StsFound {
        let remembered = self.sts.lock().expect("sts lock").get(domain).cloned();
        if let Some(state) = &remembered {
            if state.checked.elapsed() < TXT_RECHECK {
                return state.found.clone();
            }
        }
        let found = self.sts_refresh(secure, domain).await;
        self.sts.lock().expect("sts lock").insert(
            domain.to_string(),
            StsState {
                found: found.clone(),
                checked: Instant::now(),
            },
        );
        found
    }

    async fn sts_refresh(&self, secure: &SecureResolver, domain: &str) -> StsFound {
        let now = now_secs();
        let cached = self.cached_policy(domain).await.filter(|p| p.is_fresh(now));
        let txt = secure.txt(&format!("_mta-sts.{domain}")).await;
        let id = match &txt {
            Ok(answer) => mta_tls::sts::txt_id(&answer.value),
            Err(_) => None,
        };
        let Some(id) = id else {
            // No (or no readable) TXT record: a cached policy stays in force until it
            // expires (RFC 8461 5.1).
            return cached.map_or(StsFound::None, |policy| StsFound::Policy {
                policy,
                note: None,
            });
        };
        if let Some(policy) = cached.as_ref().filter(|p| p.id == id) {
            return StsFound::Policy {
                policy: policy.clone(),
                note: None,
            };
        }
        match self.fetch(secure, domain, &id, now).await {
            Ok(policy) => {
                tracing::info!(
                    "MTA-STS policy of {domain}: id {id}, mode {}, max_age {}, mx {}",
                    policy.mode.as_str(),
                    policy.max_age,
                    policy.mx.join(",")
                );
                self.store_policy(domain, &policy).await;
                StsFound::Policy { policy, note: None }
            }
            Err(e) => {
                tracing::warn!("MTA-STS policy of {domain}: {e}");
                match cached {
                    Some(policy) => StsFound::Policy {
                        note: Some(format!("refresh failed ({e}); cached policy in use")),
                        policy,
                    },
                    None => {
                        let key = crate::tls_report::PolicyKey::no_policy(domain);
                        self.reports.failure(&key, "", None, Failure::StsFetch);
                        StsFound::FetchFailed(e.to_string())
                    }
                }
            }
        }
    }

    async fn fetch(
        &self,
        secure: &SecureResolver,
        domain: &str,
        id: &str,
        now: u64,
    ) -> Result<StsPolicy, mta_tls::sts::StsError> {
        let host = format!("mta-sts.{domain}");
        let mut addrs = Vec::new();
        for kind in [
            mta_dns::secure::AddressKind::V6,
            mta_dns::secure::AddressKind::V4,
        ] {
            if let Ok(found) = secure.addresses(&host, kind).await {
                addrs.extend(found.value);
            }
        }
        let text =
            mta_tls::sts::fetch(domain, &addrs, 443, self.verify.clone(), FETCH_TIMEOUT).await?;
        StsPolicy::parse(&text, id, now)
    }

    async fn cached_policy(&self, domain: &str) -> Option<StsPolicy> {
        let store = self.store.as_ref()?;
        let bytes = store.policy_get(&format!("sts:{domain}")).await.ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    async fn store_policy(&self, domain: &str, policy: &StsPolicy) {
        let Some(store) = &self.store else { return };
        let Ok(bytes) = serde_json::to_vec(policy) else {
            return;
        };
        if let Err(e) = store
            .policy_put(&format!("sts:{domain}"), Some(bytes))
            .await
        {
            tracing::warn!("MTA-STS policy of {domain}: not cached in the store: {e}");
        }
    }

    /// Counts a connection's TLS result for TLS-RPT (DANE and MTA-STS policies only).
    /// Under MTA-STS `testing` a handshake that went through may still have failed
    /// verification: that is the result counted, and logged.
    pub fn outcome(
        &self,
        tls: &HostTls,
        host: &str,
        ip: std::net::IpAddr,
        result: Result<(), Failure>,
    ) {
        let Some(key) = &tls.report else { return };
        let observed = tls
            .testing
            .as_ref()
            .and_then(|o| o.lock().expect("observed").take());
        let result = match (result, observed) {
            (Ok(()), Some(error)) => {
                tracing::info!(
                    "{host}[{ip}]: MTA-STS testing policy of {}: verification failed ({error}); delivered anyway",
                    key.domain
                );
                Err(Failure::of_handshake(&error))
            }
            (r, _) => r,
        };
        match result {
            Ok(()) => self.reports.success(key),
            Err(f) => self.reports.failure(key, host, Some(ip), f),
        }
    }

    /// `show tls policy <domain>`: which policy applies and why, looked up now.
    pub async fn describe(&self, domain: &str, port: u16, hosts: &[String]) -> String {
        let plan = self.plan(domain, false).await;
        let mut out = format!("TLS policy for {}\n", plan.domain);
        out.push_str(&format!(
            "  MX RRset: {}\n",
            if plan.mx_secure {
                "DNSSEC-validated (AD)"
            } else {
                "not validated: DANE does not apply"
            }
        ));
        out.push_str(&match &plan.sts {
            StsFound::None => "  MTA-STS: no policy\n".to_string(),
            StsFound::FetchFailed(e) => format!("  MTA-STS: announced, but fetch failed: {e}\n"),
            StsFound::Policy { policy, note } => format!(
                "  MTA-STS: id {} mode {} max_age {} mx {}{}\n",
                policy.id,
                policy.mode.as_str(),
                policy.max_age,
                policy.mx.join(","),
                note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
            ),
        });
        out.push_str(&format!("  config: {}\n", plan.config.as_str()));
        for host in hosts {
            let line = match self.for_host(&plan, host, port).await {
                Ok(t) => format!("  {host}: {}\n", t.used),
                Err(e) => format!("  {host}: not used: {e}\n"),
            };
            out.push_str(&line);
            if let (true, Some(secure)) = (plan.mx_secure, &self.secure) {
                if let Ok(a) = secure.tlsa(host, port).await {
                    for t in a.value {
                        out.push_str(&format!(
                            "    TLSA {t}{}\n",
                            if a.authenticated {
                                ""
                            } else {
                                " (not validated)"
                            }
                        ));
                    }
                }
            }
        }
        out
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
