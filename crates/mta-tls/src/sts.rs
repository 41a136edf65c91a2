//! MTA-STS (RFC 8461), the sending side's parts that need no state: the `_mta-sts` TXT
//! record, the policy file's grammar, MX pattern matching, and the HTTPS fetch of
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt`.
//!
//! The fetch uses hyper's HTTP/1.1 client connection over tokio-rustls (already in the
//! tree for the supervisor's HTTP side): one GET, no redirects (RFC 8461 3.3), status 200
//! only, `text/plain`, at most [`MAX_POLICY_BYTES`], within the caller's deadline. The
//! certificate is verified against the webpki roots plus `[outbound.tls] ca_file` and must
//! name `mta-sts.<domain>`. Caching, refresh and enforcement are the caller's (osesctl's
//! policy module).

use http_body_util::BodyExt as _;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// RFC 8461 3.3 lets the sender bound the size; 64 KiB is the RFC's example.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// RFC 8461 3.2: max_age is at most 31557600 s (one year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StsMode {
    Enforce,
    Testing,
    None,
}

impl StsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StsMode::Enforce => "enforce",
            StsMode::Testing => "testing",
            StsMode::None => "none",
        }
    }
}

/// A policy as fetched (RFC 8461 3.2), with the TXT id it was fetched for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StsPolicy {
    pub id: String,
    pub mode: StsMode,
    /// `mx` patterns, lower case: `mail.example.com` or `*.example.net`.
    pub mx: Vec<String>,
    pub max_age: u64,
    /// When it was fetched (seconds since the epoch).
    pub fetched: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StsError {
    #[error("policy file: {0}")]
    Syntax(String),
    #[error("policy fetch from {host}: {detail}")]
    Fetch { host: String, detail: String },
}

/// The `id` of the domain's `_mta-sts` TXT record: exactly one record starting with
/// `v=STSv1` (RFC 8461 3.1; none or several: no policy).
pub fn txt_id(records: &[String]) -> Option<String> {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| r.trim_start().starts_with("v=STSv1"))
        .collect();
    let [record] = sts.as_slice() else {
        return None;
    };
    record.split(';').find_map(|field| {
        let (k, v) = field.trim().split_once('=')?;
        let v = v.trim();
        let valid = !v.is_empty() && v.len() <= 32 && v.chars().all(|c| c.is_ascii_alphanumeric());
        (k.trim() == "id" && valid).then(|| v.to_string())
    })
}

impl StsPolicy {
    /// Parses the policy file (RFC 8461 3.2): `key: value` lines, CRLF or LF.
    pub fn parse(text: &str, id: &str, fetched: u64) -> Result<StsPolicy, StsError> {
        let mut version = None;
        let mut mode = None;
        let mut max_age = None;
        let mut mx = Vec::new();
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(StsError::Syntax(format!("line without `:`: {line:?}")));
            };
            let value = value.trim();
            match key.trim() {
                "version" => version = Some(value.to_string()),
                "mode" => {
                    mode = Some(match value {
                        "enforce" => StsMode::Enforce,
                        "testing" => StsMode::Testing,
                        "none" => StsMode::None,
                        other => return Err(StsError::Syntax(format!("mode {other:?}"))),
                    })
                }
                "max_age" => {
                    let n: u64 = value
                        .parse()
                        .map_err(|_| StsError::Syntax(format!("max_age {value:?}")))?;
                    max_age = Some(n.min(MAX_AGE_LIMIT));
                }
                "mx" => mx.push(value.to_ascii_lowercase().trim_end_matches('.').to_string()),
                // Unknown fields are ignored (RFC 8461 3.2).
                _ => {}
            }
        }
        if version.as_deref() != Some("STSv1") {
            return Err(StsError::Syntax("version is not STSv1".into()));
        }
        let mode = mode.ok_or_else(|| StsError::Syntax("no mode".into()))?;
        let max_age = max_age.ok_or_else(|| StsError::Syntax("no max_age".into()))?;
        if mode != StsMode::None && mx.is_empty() {
            return Err(StsError::Syntax("no mx".into()));
        }
        Ok(StsPolicy {
            id: id.to_string(),
            mode,
            mx,
            max_age,
            fetched,
        })
    }

    /// Whether `host` (an MX host name) matches one of the `mx` patterns (RFC 8461 4.1:
    /// a leading `*.` matches exactly one label).
    pub fn mx_matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(suffix) => host
                    .split_once('.')
                    .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
                None => *pattern == host,
            })
    }

    /// Still usable at `now` (seconds since the epoch).
    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.fetched.saturating_add(self.max_age)
    }
}

/// Fetches the policy text of `domain` from `addrs` (the addresses of
/// `mta-sts.<domain>`, tried in order) on `port` (443), verified by `tls`, within `deadline`.
pub async fn fetch(
    domain: &str,
    addrs: &[IpAddr],
    port: u16,
    tls: Arc<ClientConfig>,
    deadline: Duration,
) -> Result<String, StsError> {
    let host = format!("mta-sts.{}", domain.trim_end_matches('.'));
    let fail = |detail: String| StsError::Fetch {
        host: host.clone(),
        detail,
    };
    let mut last = String::from("no address");
    for ip in addrs {
        let addr = SocketAddr::new(*ip, port);
        match tokio::time::timeout(deadline, get(&host, addr, tls.clone())).await {
            Ok(Ok(text)) => return Ok(text),
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: no answer within {deadline:?}"),
        }
    }
    Err(fail(last))
}

/// Why one address gave no policy text (in [`StsError::Fetch`]'s detail).
#[derive(Debug, thiserror::Error)]
enum GetFault {
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("{0}")]
    Name(#[source] rustls::pki_types::InvalidDnsNameError),
    #[error("TLS: {0}")]
    Tls(#[source] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[source] hyper::Error),
    #[error("{0}")]
    Request(#[source] hyper::http::Error),
    /// Redirects are not followed (RFC 8461 3.3).
    #[error("HTTP status {0}")]
    Status(hyper::StatusCode),
    #[error("content type is not text/plain")]
    NotTextPlain,
    #[error("body: {0} (limit {MAX_POLICY_BYTES} bytes)")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("body is not UTF-8")]
    NotUtf8,
}

async fn get(host: &str, addr: SocketAddr, tls: Arc<ClientConfig>) -> Result<String, GetFault> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(GetFault::Connect)?;
    let name = ServerName::try_from(host.to_string()).map_err(GetFault::Name)?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(GetFault::Tls)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(GetFault::Http)?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get("/.well-known/mta-sts.txt")
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "smtpmta")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(GetFault::Request)?;
    let result = read_response(sender.send_request(request).await).await;
    driver.abort();
    result
}

async fn read_response(
    response: Result<hyper::Response<hyper::body::Incoming>, hyper::Error>,
) -> Result<String, GetFault> {
    let response = response.map_err(GetFault::Http)?;
    if response.status() != hyper::StatusCode::OK {
        // Redirects are not followed (RFC 8461 3.3).
        return Err(GetFault::Status(response.status()));
    }
    let text_plain = response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("text/plain"));
    if !text_plain {
        return Err(GetFault::NotTextPlain);
    }
    let limited = http_body_util::Limited::new(response.into_body(), MAX_POLICY_BYTES);
    let body = limited.collect().await.map_err(GetFault::Body)?.to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| GetFault::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_record() {
        let one = vec!["v=STSv1; id=20240101T0000;".to_string()];
        assert_eq!(txt_id(&one).as_deref(), Some("20240101T0000"));
        let two = vec![one[0].clone(), "v=STSv1; id=other".into()];
        assert_eq!(txt_id(&two), None, "two records: no policy");
        assert_eq!(txt_id(&["v=spf1 -all".into()]), None);
        assert_eq!(txt_id(&["v=STSv1; id=bad-id!".into()]), None);
    }

    #[test]
    fn policy_file() {
        let text = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET\r\nmax_age: 86400\r\nextra: ignored\r\n";
        let p = StsPolicy::parse(text, "abc", 1000).unwrap();
        assert_eq!(p.mode, StsMode::Enforce);
        assert_eq!(p.max_age, 86400);
        assert!(p.mx_matches("mail.example.com."));
        assert!(p.mx_matches("mx1.example.net"));
        assert!(!p.mx_matches("a.b.example.net"), "one label only");
        assert!(!p.mx_matches("example.net"));
        assert!(!p.mx_matches("evil.com"));
        assert!(p.is_fresh(1000 + 86399) && !p.is_fresh(1000 + 86400));
        assert!(StsPolicy::parse("version: STSv1\nmode: enforce\nmax_age: 1\n", "x", 0).is_err());
        assert!(StsPolicy::parse("version: STSv2\nmode: none\nmax_age: 1\n", "x", 0).is_err());
        let none = StsPolicy::parse("version: STSv1\nmode: none\nmax_age: 99999999999\n", "x", 0);
        assert_eq!(none.unwrap().max_age, MAX_AGE_LIMIT);
    }
}
