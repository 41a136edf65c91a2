//! TLS-RPT (RFC 8460): counts per policy domain and UTC day — successful sessions, and
//! failures by the RFC's result types — and the daily aggregate report.
//!
//! Counted: every connection made under a DANE or MTA-STS policy (`tls_policy`), and the
//! failures found before any connection (a bogus TLSA answer, a policy fetch error, an MX
//! host the MTA-STS policy does not list). Connections under the config's policy alone
//! are not reported (the receiving domain asked for nothing).
//!
//! The counts live in memory and in the store (`tlsrpt` record, JSON), written at most
//! every few seconds while they change, so a restart keeps the day's counts. Once a day
//! (after 00:00 UTC) and on `tell smtpmta send tls reports` (which includes today so far),
//! each domain's counts are sent to the `mailto:` addresses of its `_smtp._tls` TXT record
//! (`v=TLSRPTv1; rua=…`) as `multipart/report; report-type="tlsrpt"` with the JSON
//! report gzipped (`application/tlsrpt+gzip`), submitted over SMTP to our own first
//! `[inbound] listen` address, so it goes through our own queue like any message. A domain
//! without a `mailto:` rua has its counts dropped.

use mta_dns::secure::SecureResolver;
use mta_ipc::StoreClient;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Mutex;

/// RFC 8460 4.3 result types we detect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    TlsaInvalid,
    DnssecInvalid,
    StsFetch,
    /// The MX host is not in the MTA-STS policy (`validation-failure`, reason code
    /// `mx-mismatch`).
    MxMismatch,
}

impl Failure {
    pub fn result_type(self) -> &'static str {
        match self {
            Failure::StarttlsNotSupported => "starttls-not-supported",
            Failure::CertificateHostMismatch => "certificate-host-mismatch",
            Failure::CertificateExpired => "certificate-expired",
            Failure::CertificateNotTrusted => "certificate-not-trusted",
            Failure::ValidationFailure | Failure::MxMismatch => "validation-failure",
            Failure::TlsaInvalid => "tlsa-invalid",
            Failure::DnssecInvalid => "dnssec-invalid",
            Failure::StsFetch => "sts-policy-fetch-error",
        }
    }

    /// The result type of a failed handshake's error text (rustls' words).
    pub fn of_handshake(text: &str) -> Failure {
        let t = text.to_ascii_lowercase();
        if mta_tls::dane::is_tlsa_mismatch(text) {
            Failure::TlsaInvalid
        } else if t.contains("not valid for name") || t.contains("notvalidforname") {
            Failure::CertificateHostMismatch
        } else if t.contains("expired") {
            Failure::CertificateExpired
        } else if t.contains("unknown issuer") || t.contains("unknownissuer") {
            Failure::CertificateNotTrusted
        } else {
            Failure::ValidationFailure
        }
    }
}

/// Which policy a count belongs to (RFC 8460 4.4 `policy`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyKey {
    pub domain: String,
    /// `tlsa`, `sts` or `no-policy-found`.
    pub kind: String,
    pub strings: Vec<String>,
    pub mx_host: Vec<String>,
}

impl PolicyKey {
    pub fn tlsa(domain: &str) -> PolicyKey {
        PolicyKey {
            domain: domain.into(),
            kind: "tlsa".into(),
            strings: Vec::new(),
            mx_host: Vec::new(),
        }
    }

    pub fn sts(domain: &str, policy: &mta_tls::sts::StsPolicy) -> PolicyKey {
        let mut strings = vec![
            "version: STSv1".to_string(),
            format!("mode: {}", policy.mode.as_str()),
        ];
        strings.extend(policy.mx.iter().map(|m| format!("mx: {m}")));
        strings.push(format!("max_age: {}", policy.max_age));
        PolicyKey {
            domain: domain.into(),
            kind: "sts".into(),
            strings,
            mx_host: policy.mx.clone(),
        }
    }

    pub fn no_policy(domain: &str) -> PolicyKey {
        PolicyKey {
            domain: domain.into(),
            kind: "no-policy-found".into(),
            strings: Vec::new(),
            mx_host: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Counts {
    policy: Option<PolicyKey>,
    success: u64,
    /// `result-type|receiving-mx-hostname|receiving-ip|reason-code` → sessions.
    failures: BTreeMap<String, u64>,
}

/// `day|domain|policy type` → counts.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Book {
    version: u8,
    entries: BTreeMap<String, Counts>,
}

pub struct ReportBook {
    book: Mutex<Book>,
    dirty: std::sync::atomic::AtomicBool,
    store: Option<StoreClient>,
}

const STORE_KEY: &str = "tlsrpt";

impl ReportBook {
    pub fn new(store: Option<StoreClient>) -> ReportBook {
        ReportBook {
            book: Mutex::new(Book {
                version: 1,
                ..Book::default()
            }),
            dirty: Default::default(),
            store,
        }
    }

    fn entry<R>(&self, key: &PolicyKey, f: impl FnOnce(&mut Counts) -> R) -> R {
        let day = day_string(crate::tls_policy::now_secs());
        let mut book = self.book.lock().expect("book");
        let counts = book
            .entries
            .entry(format!("{day}|{}|{}", key.domain, key.kind))
            .or_default();
        if counts.policy.as_ref() != Some(key) {
            counts.policy = Some(key.clone());
        }
        self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
        f(counts)
    }

    pub fn success(&self, key: &PolicyKey) {
        self.entry(key, |c| c.success += 1);
    }

    pub fn failure(&self, key: &PolicyKey, mx: &str, ip: Option<IpAddr>, failure: Failure) {
        let reason = if failure == Failure::MxMismatch {
            "mx-mismatch"
        } else {
            ""
        };
        let ip = ip.map(|i| i.to_string()).unwrap_or_default();
        let detail = format!("{}|{mx}|{ip}|{reason}", failure.result_type());
        self.entry(key, |c| *c.failures.entry(detail).or_default() += 1);
    }

    /// DANE's policy strings are the TLSA records (RFC 8460 4.4).
    pub fn describe_tlsa(&self, key: &PolicyKey, records: &[mta_dns::secure::Tlsa]) {
        let strings: Vec<String> = records.iter().map(|t| t.to_string()).collect();
        let mut key = key.clone();
        key.strings = strings;
        let day = day_string(crate::tls_policy::now_secs());
        let mut book = self.book.lock().expect("book");
        if let Some(c) = book.entries.get_mut(&format!("{day}|{}|tlsa", key.domain)) {
            c.policy = Some(key);
        }
    }

    /// Reads the counts kept in the store (at start).
    pub async fn load(&self) {
        let Some(store) = &self.store else { return };
        if let Ok(Some(bytes)) = store.policy_get(STORE_KEY).await {
            match serde_json::from_slice::<Book>(&bytes) {
                Ok(saved) => {
                    let mut book = self.book.lock().expect("book");
                    for (k, v) in saved.entries {
                        book.entries.entry(k).or_insert(v);
                    }
                }
                Err(e) => {
                    tracing::warn!("TLS-RPT counts in the store unreadable ({e}); starting afresh")
                }
            }
        }
    }

    /// Writes the counts to the store if they changed.
    pub async fn save(&self) {
        if !self.dirty.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let Some(store) = &self.store else { return };
        let bytes = serde_json::to_vec(&*self.book.lock().expect("book")).unwrap_or_default();
        if let Err(e) = store.policy_put(STORE_KEY, Some(bytes)).await {
            self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::warn!("TLS-RPT counts not saved: {e}");
        }
    }

    /// The days' counts to report: every day before today (with `now_too`, today as well);
    /// taken out of the book.
    fn take_due(&self, now_too: bool) -> Vec<(String, Counts)> {
        let today = day_string(crate::tls_policy::now_secs());
        let mut book = self.book.lock().expect("book");
        let due: Vec<String> = book
            .entries
            .keys()
            .filter(|k| now_too || k.split('|').next().is_some_and(|d| d < today.as_str()))
            .cloned()
            .collect();
        if !due.is_empty() {
            self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        due.into_iter()
            .filter_map(|k| book.entries.remove(&k).map(|c| (k, c)))
            .collect()
    }

    /// A plain summary for the console: one line per day, domain and policy.
    pub fn summary(&self) -> String {
        let book = self.book.lock().expect("book");
        let mut out = String::new();
        for (k, c) in &book.entries {
            let failed: u64 = c.failures.values().sum();
            out.push_str(&format!("{k}: {} successful, {failed} failed\n", c.success));
            for (d, n) in &c.failures {
                out.push_str(&format!("    {n} {d}\n"));
            }
        }
        out
    }

    /// Sends the reports that are due; returns one line per report sent or dropped.
    pub async fn send(&self, now_too: bool, sender: &ReportSender<'_>) -> Vec<String> {
        let mut lines = Vec::new();
        // One report per (day, domain): the domain's policies together.
        let mut grouped: BTreeMap<(String, String), Vec<Counts>> = BTreeMap::new();
        for (key, counts) in self.take_due(now_too) {
            let mut parts = key.split('|');
            let day = parts.next().unwrap_or_default().to_string();
            let domain = parts.next().unwrap_or_default().to_string();
            grouped.entry((day, domain)).or_default().push(counts);
        }
        for ((day, domain), counts) in grouped {
            lines.push(sender.send(&day, &domain, &counts).await);
        }
        self.save().await;
        lines
    }
}

/// `tell smtpmta send tls reports`: every count, today's included.
pub async fn send_now(env: &crate::delivery::Env) -> Vec<String> {
    send(env, true).await
}

async fn send(env: &crate::delivery::Env, now_too: bool) -> Vec<String> {
    let sender = ReportSender {
        hostname: &env.hostname,
        secure: env.tls.secure(),
        submit_to: env.tls.report_submit,
    };
    env.tls.reports.send(now_too, &sender).await
}

/// The book's life in osesctl: loaded at start, saved every few seconds while it changes,
/// and the past days' reports sent (checked every five minutes, so shortly after 00:00
/// UTC) when `[outbound.tls] tls_reports` is on.
pub async fn run(env: std::sync::Arc<crate::delivery::Env>, send_daily: bool) {
    env.tls.reports.load().await;
    let mut ticks = 0u64;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        env.tls.reports.save().await;
        ticks += 1;
        if send_daily && ticks.is_multiple_of(60) {
            send(&env, false).await;
        }
    }
}

/// What sending a report needs.
pub struct ReportSender<'a> {
    pub hostname: &'a str,
    pub secure: Option<&'a SecureResolver>,
    pub submit_to: Option<std::net::SocketAddr>,
}

impl ReportSender<'_> {
    async fn send(&self, day: &str, domain: &str, counts: &[Counts]) -> String {
        let rua = match self.rua(domain).await {
            Some(r) if !r.is_empty() => r,
            _ => {
                return format!(
                    "{day} {domain}: no mailto: rua in _smtp._tls.{domain}; counts dropped"
                )
            }
        };
        let Some(addr) = self.submit_to else {
            return format!("{day} {domain}: no [inbound] listen address to submit to");
        };
        let id = format!(
            "{day}.{domain}.{}@{}",
            crate::tls_policy::now_secs(),
            self.hostname
        );
        let json = report_json(day, domain, counts, self.hostname, &id);
        let message = match report_message(&json, day, domain, self.hostname, &id, &rua) {
            Ok(m) => m,
            Err(e) => return format!("{day} {domain}: cannot build the report: {e}"),
        };
        let from = format!("postmaster@{}", self.hostname);
        match submit(addr, self.hostname, &from, &rua, &message).await {
            Ok(()) => {
                tracing::info!(
                    "TLS-RPT report for {domain} ({day}) submitted to {}",
                    rua.join(", ")
                );
                format!("{day} {domain}: report sent to {}", rua.join(", "))
            }
            Err(e) => {
                tracing::warn!("TLS-RPT report for {domain} ({day}) not submitted: {e}");
                format!("{day} {domain}: not submitted: {e}")
            }
        }
    }

    /// The `mailto:` addresses of `_smtp._tls.<domain>` (RFC 8460 3).
    async fn rua(&self, domain: &str) -> Option<Vec<String>> {
        let answer = self
            .secure?
            .txt(&format!("_smtp._tls.{domain}"))
            .await
            .ok()?;
        let record = answer
            .value
            .into_iter()
            .find(|r| r.trim_start().starts_with("v=TLSRPTv1"))?;
        let rua = record.split(';').find_map(|f| {
            let (k, v) = f.trim().split_once('=')?;
            (k.trim() == "rua").then(|| v.to_string())
        })?;
        Some(
            rua.split(',')
                .filter_map(|u| u.trim().strip_prefix("mailto:"))
                .map(|a| a.split('!').next().unwrap_or(a).to_string())
                .collect(),
        )
    }
}

/// The RFC 8460 4.4 JSON report.
fn report_json(
    day: &str,
    domain: &str,
    counts: &[Counts],
    hostname: &str,
    id: &str,
) -> serde_json::Value {
    let policies: Vec<serde_json::Value> = counts
        .iter()
        .map(|c| {
            let key = c
                .policy
                .clone()
                .unwrap_or_else(|| PolicyKey::no_policy(domain));
            let failed: u64 = c.failures.values().sum();
            let details: Vec<serde_json::Value> = c
                .failures
                .iter()
                .map(|(d, n)| {
                    let mut p = d.split('|');
                    let (result, mx, ip, reason) = (p.next(), p.next(), p.next(), p.next());
                    let mut v = serde_json::json!({
                        "result-type": result.unwrap_or_default(),
                        "failed-session-count": n,
                    });
                    let opt = [
                        ("receiving-mx-hostname", mx),
                        ("receiving-ip", ip),
                        ("failure-reason-code", reason),
                    ];
                    for (name, value) in opt {
                        if let Some(value) = value.filter(|s| !s.is_empty()) {
                            v[name] = value.into();
                        }
                    }
                    v
                })
                .collect();
            serde_json::json!({
                "policy": {
                    "policy-type": key.kind,
                    "policy-string": key.strings,
                    "policy-domain": domain,
                    "mx-host": key.mx_host,
                },
                "summary": {
                    "total-successful-session-count": c.success,
                    "total-failure-session-count": failed,
                },
                "failure-details": details,
            })
        })
        .collect();
    serde_json::json!({
        "organization-name": hostname,
        "date-range": {
            "start-datetime": format!("{day}T00:00:00Z"),
            "end-datetime": format!("{day}T23:59:59Z"),
        },
        "contact-info": format!("postmaster@{hostname}"),
        "report-id": id,
        "policies": policies,
    })
}

/// The report as a message (RFC 8460 5.3): multipart/report with the gzipped JSON.
fn report_message(
    json: &serde_json::Value,
    day: &str,
    domain: &str,
    hostname: &str,
    id: &str,
    rua: &[String],
) -> std::io::Result<Vec<u8>> {
    use base64::Engine as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(json.to_string().as_bytes())?;
    let gz = gz.finish()?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz);
    let boundary = format!("tlsrpt-{}", crate::tls_policy::now_secs());
    let mut m = String::new();
    m.push_str(&format!("From: TLS reporting <postmaster@{hostname}>\r\n"));
    m.push_str(&format!("To: {}\r\n", rua.join(", ")));
    m.push_str(&format!(
        "Subject: Report Domain: {domain} Submitter: {hostname} Report-ID: <{id}>\r\n"
    ));
    m.push_str(&format!(
        "Date: {}\r\n",
        mta_smtp::received::rfc5322_date(std::time::SystemTime::now())
    ));
    m.push_str(&format!("Message-ID: <{id}>\r\n"));
    m.push_str(&format!(
        "TLS-Report-Domain: {domain}\r\nTLS-Report-Submitter: {hostname}\r\n"
    ));
    m.push_str("Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"{boundary}\"\r\n\r\n"
    ));
    m.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nTLS report from {hostname} for {domain}, {day} (UTC).\r\n\r\n"
    ));
    m.push_str(&format!(
        "--{boundary}\r\nContent-Type: application/tlsrpt+gzip\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"{hostname}!{domain}!{day}!{id}.json.gz\"\r\n\r\n"
    ));
    for chunk in b64.as_bytes().chunks(76) {
        m.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        m.push_str("\r\n");
    }
    m.push_str(&format!("\r\n--{boundary}--\r\n"));
    Ok(m.into_bytes())
}

async fn submit(
    addr: std::net::SocketAddr,
    hostname: &str,
    from: &str,
    rua: &[String],
    message: &[u8],
) -> Result<(), String> {
    use mta_smtp::client::SmtpClient;
    let timeout = std::time::Duration::from_secs(60);
    let (mut client, greeting) =
        SmtpClient::connect(addr, std::time::Duration::from_secs(10), timeout)
            .await
            .map_err(|e| e.to_string())?;
    let steps = async {
        let check = |what: &str, r: mta_smtp::Reply| {
            if r.is_positive() {
                Ok(())
            } else {
                Err(format!("{what}: {}", r.code_text()))
            }
        };
        check("greeting", greeting)?;
        check(
            "EHLO",
            client.hello(hostname).await.map_err(|e| e.to_string())?,
        )?;
        let mail = client.command(&format!("MAIL FROM:<{from}>")).await;
        check("MAIL FROM", mail.map_err(|e| e.to_string())?)?;
        for rcpt in rua {
            let r = client.command(&format!("RCPT TO:<{rcpt}>")).await;
            check("RCPT TO", r.map_err(|e| e.to_string())?)?;
        }
        check(
            "DATA",
            client.data(message).await.map_err(|e| e.to_string())?,
        )
    };
    let result = steps.await;
    client.quit().await;
    result
}

/// `YYYY-MM-DD` (UTC) of `secs` since the epoch.
pub fn day_string(secs: u64) -> String {
    let (y, m, d) = mta_smtp::received::civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_errors_map_to_result_types() {
        let dane = format!(
            "invalid peer certificate: {}",
            "no TLSA record matches the server's certificate chain"
        );
        assert_eq!(Failure::of_handshake(&dane), Failure::TlsaInvalid);
        assert_eq!(
            Failure::of_handshake("invalid peer certificate: certificate not valid for name \"x\""),
            Failure::CertificateHostMismatch
        );
        assert_eq!(
            Failure::of_handshake("invalid peer certificate: UnknownIssuer"),
            Failure::CertificateNotTrusted
        );
        assert_eq!(day_string(0), "1970-01-01");
        assert_eq!(day_string(1_700_000_000), "2023-11-14");
    }

    #[test]
    fn the_report_has_the_rfc_fields() {
        let book = ReportBook::new(None);
        let key = PolicyKey::tlsa("sec.test");
        book.success(&key);
        book.failure(
            &key,
            "mx.sec.test",
            "127.0.0.1".parse().ok(),
            Failure::TlsaInvalid,
        );
        let due = book.take_due(true);
        let counts: Vec<Counts> = due.into_iter().map(|(_, c)| c).collect();
        let json = report_json("2026-01-01", "sec.test", &counts, "mta.test", "id1");
        let p = &json["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "tlsa");
        assert_eq!(p["summary"]["total-successful-session-count"], 1);
        assert_eq!(p["summary"]["total-failure-session-count"], 1);
        assert_eq!(p["failure-details"][0]["result-type"], "tlsa-invalid");
        assert_eq!(p["failure-details"][0]["receiving-ip"], "127.0.0.1");
        let msg = report_message(
            &json,
            "2026-01-01",
            "sec.test",
            "mta.test",
            "id1",
            &["r@x.test".into()],
        )
        .unwrap();
        let text = String::from_utf8(msg).unwrap();
        assert!(
            text.contains("report-type=\"tlsrpt\"") && text.contains("application/tlsrpt+gzip")
        );
        assert!(book.take_due(true).is_empty(), "taken once");
    }
}
