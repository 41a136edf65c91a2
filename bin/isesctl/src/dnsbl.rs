//! DNS blocklists and allowlists at connect (Postfix postscreen's `postscreen_dnsbl_sites`):
//! every zone of `[inbound] dnsbl` and `dnswl` is asked about the client at once; each
//! site that lists it adds its weight; at or over `dnsbl_threshold` the client is blocked,
//! naming the listing zone with the largest weight.
//!
//! Each query is bounded by `[dns] timeout` (the resolver's, plus a margin here), and
//! answers are cached by the resolver for their TTL (`mta_dns::dnslist`). A zone that
//! fails (timeout, SERVFAIL) counts as not listing the client: a log line and the
//! `Mail.Inbound.DNSBL.Errors` counter.
//!
//! Config read: `[inbound] dnsbl`, `dnswl`, `dnsbl_threshold`; `[dns]`.
//! Logs: each failed query (`DNS list zone … failed for [ip]: …`).

use crate::intake::Intake;
use mta_config::{Config, DnsListSite};
use mta_dns::TokioResolver;
use mta_types::counters;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

/// The lists and their resolver (one per isesctl).
pub struct DnsLists {
    resolver: TokioResolver,
    /// `dnsbl` then `dnswl`.
    sites: Vec<DnsListSite>,
    /// Each zone once (two sites may filter one zone's answers differently).
    zones: Vec<String>,
    threshold: i32,
    /// A query's bound: the resolver's own timeout, plus a margin for the socket work.
    timeout: Duration,
    intake: Intake,
}

/// What the lists say about a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass { score: i32 },
    Blocked { score: i32, zone: String },
}

impl DnsLists {
    /// None when no list is configured.
    pub fn new(config: &Config, intake: Intake) -> anyhow::Result<Option<Arc<DnsLists>>> {
        let inbound = &config.inbound;
        if inbound.dnsbl.is_empty() && inbound.dnswl.is_empty() {
            return Ok(None);
        }
        let resolver = mta_dns::resolver(&config.dns)?;
        let sites: Vec<DnsListSite> = inbound
            .dnsbl
            .iter()
            .chain(&inbound.dnswl)
            .cloned()
            .collect();
        let mut zones: Vec<String> = sites.iter().map(|s| s.zone.clone()).collect();
        zones.sort();
        zones.dedup();
        Ok(Some(Arc::new(DnsLists {
            resolver,
            sites,
            zones,
            threshold: inbound.dnsbl_threshold,
            timeout: config.dns.timeout + Duration::from_millis(500),
            intake,
        })))
    }

    /// Asks every zone about `ip` at once.
    pub async fn check(self: &Arc<Self>, ip: IpAddr) -> Verdict {
        let mut queries = tokio::task::JoinSet::new();
        for (i, zone) in self.zones.iter().enumerate() {
            let lists = self.clone();
            let zone = zone.clone();
            queries.spawn(async move {
                let answer = tokio::time::timeout(
                    lists.timeout,
                    mta_dns::dnslist::query(&lists.resolver, ip, &zone),
                )
                .await;
                (i, lists.answer(ip, &zone, answer))
            });
        }
        let mut answers: Vec<Vec<Ipv4Addr>> = vec![Vec::new(); self.zones.len()];
        while let Some(done) = queries.join_next().await {
            if let Ok((i, answer)) = done {
                answers[i] = answer;
            }
        }
        self.score(|zone| {
            let i = self.zones.binary_search_by(|z| z.as_str().cmp(zone));
            i.map(|i| answers[i].as_slice()).unwrap_or(&[])
        })
    }

    /// A zone's answer; a failure is logged, counted, and taken as "not listed".
    fn answer(
        &self,
        ip: IpAddr,
        zone: &str,
        answer: Result<Result<Vec<Ipv4Addr>, mta_dns::DnsError>, tokio::time::error::Elapsed>,
    ) -> Vec<Ipv4Addr> {
        let error = match answer {
            Ok(Ok(addrs)) => return addrs,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        tracing::warn!(client = %ip, "DNS list zone {zone} failed for [{ip}]: {error}; taken as not listed");
        self.intake.count(counters::INBOUND_DNSBL_ERRORS);
        Vec::new()
    }

    /// Sums the weights of the sites whose zone's answer lists the client.
    fn score<'a>(&self, answer: impl Fn(&str) -> &'a [Ipv4Addr]) -> Verdict {
        score(&self.sites, self.threshold, answer)
    }
}

fn score<'a>(
    sites: &[DnsListSite],
    threshold: i32,
    answer: impl Fn(&str) -> &'a [Ipv4Addr],
) -> Verdict {
    let mut total = 0i32;
    let mut worst: Option<&DnsListSite> = None;
    for site in sites.iter().filter(|s| s.lists(answer(&s.zone))) {
        total = total.saturating_add(site.weight);
        if site.weight > 0 && worst.is_none_or(|w| site.weight > w.weight) {
            worst = Some(site);
        }
    }
    match worst {
        Some(site) if total >= threshold => Verdict::Blocked {
            score: total,
            zone: site.zone.clone(),
        },
        _ => Verdict::Pass { score: total },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sites(list: &[&str]) -> Vec<DnsListSite> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn weights_add_up_and_allowlists_subtract() {
        let sites = sites(&[
            "zen.example*2",
            "bl.example=127.0.0.[2..11]*1",
            "list.dnswl.example*-5",
        ]);
        let listed: Vec<Ipv4Addr> = vec!["127.0.0.2".parse().unwrap()];
        let none: &[Ipv4Addr] = &[];
        let only = |zones: &'static [&'static str]| {
            let listed = listed.clone();
            move |zone: &str| -> Vec<Ipv4Addr> {
                if zones.contains(&zone) {
                    listed.clone()
                } else {
                    Vec::new()
                }
            }
        };
        let run = |threshold, zones: &'static [&'static str]| {
            let f = only(zones);
            let answers: Vec<(String, Vec<Ipv4Addr>)> =
                sites.iter().map(|s| (s.zone.clone(), f(&s.zone))).collect();
            score(&sites, threshold, |zone| {
                answers
                    .iter()
                    .find(|(z, _)| z == zone)
                    .map(|(_, a)| a.as_slice())
                    .unwrap_or(none)
            })
        };
        assert_eq!(run(1, &[]), Verdict::Pass { score: 0 });
        assert_eq!(
            run(1, &["bl.example"]),
            Verdict::Blocked {
                score: 1,
                zone: "bl.example".into()
            }
        );
        assert_eq!(
            run(3, &["bl.example", "zen.example"]),
            Verdict::Blocked {
                score: 3,
                zone: "zen.example".into()
            }
        );
        assert_eq!(
            run(4, &["bl.example", "zen.example"]),
            Verdict::Pass { score: 3 }
        );
        assert_eq!(
            run(1, &["bl.example", "zen.example", "list.dnswl.example"]),
            Verdict::Pass { score: -2 }
        );
    }
}
