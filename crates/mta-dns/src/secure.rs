//! DNSSEC-aware lookups for outbound TLS policy (DANE, RFC 7672; MTA-STS and TLS-RPT
//! discovery, RFC 8461 / 8460).
//!
//! We do not validate signatures here. Like Postfix with `smtp_dns_support_level = dnssec`,
//! we trust the AD ("authentic data") bit of the answers of the configured resolvers
//! (`[dns] nameservers`, else /etc/resolv.conf), which must be a validating resolver the
//! host trusts and reaches over a trusted path (normally unbound or systemd-resolved on
//! loopback). Why this choice: a validating resolver is what every DANE deployment runs
//! already (Postfix, Exim); it keeps root key rollovers (RFC 5011) and negative-answer
//! proofs out of our code; and it is testable with real parts (unbound validating a Knot
//! zone). See docs/CONFIG.md (`[dns]`) and docs/OPERATIONS.md.
//!
//! Each query is one UDP datagram with RD and AD set (RFC 6840 5.7: a resolver answers with
//! the AD bit only when the query asks for it) and EDNS0 (payload 1232), retried over TCP
//! when truncated. The outcome is [`Secure`]: the records and whether the resolver vouched
//! for them; SERVFAIL from a validating resolver is how a bogus answer looks, and is
//! reported as [`SecureError::Failed`] (the caller defers).

use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use mta_config::DnsConfig;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// An answer and whether the resolver validated it (the AD bit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secure<T> {
    pub value: T,
    /// The resolver set AD: every RRset of the answer (or the proof of non-existence)
    /// was validated.
    pub authenticated: bool,
}

/// Why a policy lookup has no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecureError {
    /// SERVFAIL (a bogus signature looks like this from a validating resolver), a
    /// timeout, or no resolver reachable: the policy is unknown, so the caller defers.
    #[error("{name} {kind}: lookup failed: {detail}")]
    Failed {
        name: String,
        kind: &'static str,
        detail: String,
    },
    #[error("bad name {0}")]
    BadName(String),
}

/// A TLSA record's fields (RFC 6698 2.1).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl std::fmt::Display for Tlsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {} ", self.usage, self.selector, self.matching)?;
        for b in &self.data {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Which address records [`SecureResolver::addresses`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressKind {
    V4,
    V6,
}

/// Asks the configured resolvers and reports the AD bit.
#[derive(Clone, Debug)]
pub struct SecureResolver {
    servers: Vec<SocketAddr>,
    timeout: Duration,
}

impl SecureResolver {
    pub fn new(dns: &DnsConfig) -> Result<SecureResolver, crate::DnsError> {
        let servers = if dns.nameservers.is_empty() {
            let (config, _) = crate::resolver_config(dns)?;
            config
                .name_servers()
                .iter()
                .map(|ns| {
                    let port = ns.connections.first().map(|c| c.port).unwrap_or(53);
                    SocketAddr::new(ns.ip, port)
                })
                .collect()
        } else {
            dns.nameservers.clone()
        };
        Ok(SecureResolver {
            servers,
            timeout: dns.timeout,
        })
    }

    /// MX exchanges (preference, host without the final dot). `NoData`/`NXDOMAIN` give an
    /// empty list; a null MX gives `[(0, ".")]`.
    pub async fn mx(&self, domain: &str) -> Result<Secure<Vec<(u16, String)>>, SecureError> {
        let answer = self.query(domain, RecordType::MX).await?;
        let value = answer
            .value
            .into_iter()
            .filter_map(|r| match r {
                RData::MX(mx) => {
                    let ex = mx.exchange.to_ascii();
                    let ex = if ex == "." {
                        ex
                    } else {
                        ex.trim_end_matches('.').to_string()
                    };
                    Some((mx.preference, ex))
                }
                _ => None,
            })
            .collect();
        Ok(Secure {
            value,
            authenticated: answer.authenticated,
        })
    }

    /// `_<port>._tcp.<host>` TLSA records.
    pub async fn tlsa(&self, host: &str, port: u16) -> Result<Secure<Vec<Tlsa>>, SecureError> {
        let name = format!("_{port}._tcp.{}", host.trim_end_matches('.'));
        let answer = self.query(&name, RecordType::TLSA).await?;
        let value = answer
            .value
            .into_iter()
            .filter_map(|r| match r {
                RData::TLSA(t) => Some(Tlsa {
                    usage: t.cert_usage.into(),
                    selector: t.selector.into(),
                    matching: t.matching.into(),
                    data: t.cert_data,
                }),
                _ => None,
            })
            .collect();
        Ok(Secure {
            value,
            authenticated: answer.authenticated,
        })
    }

    /// A or AAAA addresses of `host` (for `mta-sts.<domain>`).
    pub async fn addresses(
        &self,
        host: &str,
        kind: AddressKind,
    ) -> Result<Secure<Vec<std::net::IpAddr>>, SecureError> {
        let record_type = match kind {
            AddressKind::V4 => RecordType::A,
            AddressKind::V6 => RecordType::AAAA,
        };
        let answer = self.query(host, record_type).await?;
        let value = answer
            .value
            .into_iter()
            .filter_map(|r| match r {
                RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(std::net::IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        Ok(Secure {
            value,
            authenticated: answer.authenticated,
        })
    }

    /// TXT records, each one string (its character-strings joined, RFC 7208 3.3).
    pub async fn txt(&self, name: &str) -> Result<Secure<Vec<String>>, SecureError> {
        let answer = self.query(name, RecordType::TXT).await?;
        let value = answer
            .value
            .into_iter()
            .filter_map(|r| match r {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect();
        Ok(Secure {
            value,
            authenticated: answer.authenticated,
        })
    }

    /// The answer's records of `kind` at `name` (after CNAMEs), with the AD bit. NXDOMAIN and
    /// NODATA are an empty answer (authenticated when the denial was).
    pub async fn query(
        &self,
        name: &str,
        kind: RecordType,
    ) -> Result<Secure<Vec<RData>>, SecureError> {
        let fqdn = Name::from_utf8(format!("{}.", name.trim_end_matches('.')))
            .map_err(|_| SecureError::BadName(name.into()))?;
        let failed = |detail: String| SecureError::Failed {
            name: name.into(),
            kind: kind_name(kind),
            detail,
        };
        let request = request(&fqdn, kind).map_err(|e| failed(e.to_string()))?;
        let mut last = String::from("no nameserver configured");
        for server in &self.servers {
            match tokio::time::timeout(self.timeout, exchange(*server, &request)).await {
                Ok(Ok(response)) => {
                    return interpret(response, kind).map_err(|e| failed(e.to_string()))
                }
                Ok(Err(e)) => last = format!("{server}: {e}"),
                Err(_) => last = format!("{server}: timed out after {:?}", self.timeout),
            }
        }
        Err(failed(last))
    }
}

fn kind_name(kind: RecordType) -> &'static str {
    match kind {
        RecordType::MX => "MX",
        RecordType::TLSA => "TLSA",
        RecordType::TXT => "TXT",
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        _ => "query",
    }
}

fn request(name: &Name, kind: RecordType) -> Result<Vec<u8>, hickory_resolver::proto::ProtoError> {
    let mut message = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.metadata.authentic_data = true;
    message.add_query(Query::query(name.clone(), kind));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    message.set_edns(edns);
    message.to_vec()
}

fn rand_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (nanos >> 16) ^ std::process::id()) as u16
}

/// One question to one server: UDP, then TCP when the answer was truncated.
async fn exchange(server: SocketAddr, request: &[u8]) -> std::io::Result<Message> {
    let bind: SocketAddr = if server.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    sock.send(request).await?;
    let id = u16::from_be_bytes([request[0], request[1]]);
    let mut buf = vec![0u8; 4096];
    let response = loop {
        let n = sock.recv(&mut buf).await?;
        match Message::from_vec(&buf[..n]) {
            // A stray or late datagram with another id is not our answer.
            Ok(m) if m.metadata.id == id && m.metadata.message_type == MessageType::Response => {
                break m
            }
            _ => continue,
        }
    };
    if !response.metadata.truncation {
        return Ok(response);
    }
    let mut tcp = tokio::net::TcpStream::connect(server).await?;
    let mut framed = (request.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(request);
    tcp.write_all(&framed).await?;
    let len = tcp.read_u16().await? as usize;
    let mut body = vec![0u8; len];
    tcp.read_exact(&mut body).await?;
    Message::from_vec(&body)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

/// A server's answer that is no answer (in [`SecureError::Failed`]'s detail).
#[derive(Debug, thiserror::Error)]
enum Unanswered {
    #[error("SERVFAIL (a validating resolver answers so for bogus data)")]
    ServFail,
    #[error("{0}")]
    Code(ResponseCode),
}

fn interpret(response: Message, kind: RecordType) -> Result<Secure<Vec<RData>>, Unanswered> {
    let authenticated = response.metadata.authentic_data;
    match response.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => {
            return Ok(Secure {
                value: Vec::new(),
                authenticated,
            })
        }
        ResponseCode::ServFail => return Err(Unanswered::ServFail),
        other => return Err(Unanswered::Code(other)),
    }
    let value = response
        .answers
        .into_iter()
        .filter(|r| r.record_type() == kind)
        .map(|r| r.data)
        .collect();
    Ok(Secure {
        value,
        authenticated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::rdata::{tlsa, TLSA};
    use hickory_resolver::proto::rr::Record;

    /// A one-shot UDP server answering with `make(query)`.
    async fn server(make: impl Fn(&Message) -> Message + Send + 'static) -> SocketAddr {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let (n, from) = sock.recv_from(&mut buf).await.unwrap();
            let q = Message::from_vec(&buf[..n]).unwrap();
            let r = make(&q).to_vec().unwrap();
            sock.send_to(&r, from).await.unwrap();
        });
        addr
    }

    fn resolver(addr: SocketAddr) -> SecureResolver {
        SecureResolver {
            servers: vec![addr],
            timeout: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn the_ad_bit_is_asked_for_and_reported() {
        let addr = server(|q| {
            assert!(q.metadata.authentic_data, "the query asks for AD");
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.metadata.authentic_data = true;
            r.add_query(q.queries[0].clone());
            r.add_answer(Record::from_rdata(
                q.queries[0].name().clone(),
                300,
                RData::TLSA(TLSA::new(
                    tlsa::CertUsage::DaneEe,
                    tlsa::Selector::Spki,
                    tlsa::Matching::Sha256,
                    vec![0xab; 32],
                )),
            ));
            r
        })
        .await;
        let answer = resolver(addr).tlsa("mx.sec.test", 25).await.unwrap();
        assert!(answer.authenticated);
        assert_eq!(answer.value.len(), 1);
        assert_eq!((answer.value[0].usage, answer.value[0].selector), (3, 1));
        assert!(answer.value[0].to_string().starts_with("3 1 1 abab"));
    }

    #[tokio::test]
    async fn servfail_is_a_failure_and_nxdomain_is_empty() {
        let addr =
            server(|q| Message::error_msg(q.metadata.id, OpCode::Query, ResponseCode::ServFail))
                .await;
        let e = resolver(addr).tlsa("mx.bogus.test", 25).await.unwrap_err();
        assert!(e.to_string().contains("SERVFAIL"), "{e}");
        let addr =
            server(|q| Message::error_msg(q.metadata.id, OpCode::Query, ResponseCode::NXDomain))
                .await;
        let answer = resolver(addr).mx("none.test").await.unwrap();
        assert!(answer.value.is_empty() && !answer.authenticated);
    }
}
