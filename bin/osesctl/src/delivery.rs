//! oseshlrN — one outbound session handler's work on one Domain List.
//!
//! Resolves the list's next hop (`mta-dns`), connects to the hosts in order (next host on
//! connection failure, or a greeting/EHLO that is not 2xx), then transfers the list's
//! messages one at a time over that one session: MAIL FROM (SIZE, BODY=8BITMIME,
//! SMTPUTF8 as needed), one RCPT per recipient (each reply kept), DATA with the spooled
//! bytes dot-stuffed, RSET between messages. Each message's outcomes go to the collector
//! as soon as the message is done. Between messages the handler stops when the transport
//! is stopped or the task shuts down; the messages it did not reach are reported as not
//! attempted and stay Pending Transmission.
//!
//! Capability checks (RFC 6152, 6531), decided here at send time: 8-bit content to a
//! server without 8BITMIME fails permanently (5.6.3; no 7-bit conversion, which would
//! break DKIM); SMTPUTF8 mail to a server without SMTPUTF8 fails permanently (5.6.7).
//! Content with a bare CR or LF is never sent (5.6.0).
//!
//! TLS (`[outbound.tls]`, per destination domain): `may` uses STARTTLS when offered and
//! any certificate, and falls back to plaintext — on a new connection — only when the
//! handshake fails, before any mail was sent; `encrypt` and `verify` treat a host without
//! STARTTLS, or a failed handshake, like an unreachable one (next host, then deferred
//! with the reason); `verify` checks the chain and the host name. The TLS version and
//! cipher are logged with the list and the host.
//!
//! Debug knobs, read when the list starts: `SMTPClientDebug` 1 logs the list's messages
//! (their qids), its next hop and the session's connect and end; 2 and 3 are the client's
//! transcript (`mta_smtp::client`); `debug_tcp_resolver` logs the DNS queries and answers.
//! A message's lines carry its qid (a span per message).

use crate::domain_list::{DomainList, ListItem};
use crate::handler_table::Assigned;
use crate::outcomes::{reply_status, reply_text, Event, RcptOutcome};
use mta_config::OutboundConfig;
use mta_dns::NextHop;
use mta_smtp::client::{SessionError, SmtpClient};
use mta_smtp::tokio_rustls::rustls::pki_types::ServerName;
use mta_types::outcome::Reply;
use mta_types::MessageRecord;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::Instrument as _;

/// What a handler needs, shared by all handlers.
pub struct Env {
    pub next_hop: NextHop,
    pub config: OutboundConfig,
    pub hostname: String,
    pub spool_dir: PathBuf,
    /// `[outbound.tls]`.
    pub tls: crate::tls_policy::TlsClients,
    pub events: mpsc::UnboundedSender<Event>,
    /// True while handlers may start another message.
    pub may_continue: Box<dyn Fn() -> bool + Send + Sync>,
    /// The debug knobs in effect now (`set config`).
    pub knobs: Box<dyn Fn() -> mta_config::DebugKnobs + Send + Sync>,
}

impl Env {
    fn report(&self, item: &ListItem, results: Vec<(usize, RcptOutcome)>) {
        let _ = self.events.send(Event::Report {
            id: item.record.id,
            results,
        });
    }

    fn report_all(&self, item: &ListItem, outcome: &RcptOutcome) {
        let results = item.rcpts.iter().map(|i| (*i, outcome.clone())).collect();
        self.report(item, results);
    }
}

/// Works one list to the end; every item is reported exactly once.
pub async fn deliver_list(list: DomainList, env: Arc<Env>, handler: Assigned) {
    let DomainList {
        id,
        key,
        domain,
        items,
    } = list;
    let knobs = (env.knobs)();
    let debug = knobs.smtp_client_debug;
    let qids: Vec<String> = items.iter().map(|i| i.record.id.to_string()).collect();
    let qids = qids.join(",");
    if debug >= 1 {
        tracing::info!(
            target: mta_types::DEBUG_TARGET,
            "SMTPClientDebug: list {id} for {key}: {} message(s), qid={qids}",
            items.len(),
        );
    }
    let mut items = items.into_iter();
    handler.set_detail(format!("resolving list {id} for {key}"));
    // The DNS lines are the whole list's: they name its messages.
    let resolved = env
        .next_hop
        .resolve_traced(&domain, knobs.debug_tcp_resolver > 0)
        .instrument(tracing::info_span!("resolve", qid = %qids))
        .await;
    if debug >= 1 {
        let hop = match &resolved {
            Ok(hosts) => hosts
                .iter()
                .flat_map(|h| {
                    h.socket_addrs()
                        .map(move |a| format!("{}:{}", h.label(a.ip()), a.port()))
                })
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => format!("none ({e})"),
        };
        tracing::info!(target: mta_types::DEBUG_TARGET, "SMTPClientDebug: list {id}: next hop for {domain}: {hop}");
    }
    let hosts = match resolved {
        Ok(h) => h,
        Err(e) => {
            let outcome = if e.is_transient() {
                RcptOutcome::Deferred {
                    host: key.clone(),
                    reply: Reply::local(e.status(), e.to_string()),
                }
            } else {
                RcptOutcome::Bounced {
                    host: key.clone(),
                    status: e.status().into(),
                    reply: Reply::local(e.status(), e.to_string()),
                }
            };
            for item in items {
                env.report_all(&item, &outcome);
            }
            return;
        }
    };

    // Connect: hosts in order, each address in order, each as the TLS policy says
    // (`tls_policy`: DANE, MTA-STS, or the config's).
    let plan = env
        .tls
        .plan(domain.as_str(), env.next_hop.relay_host().is_some())
        .await;
    let mut last_error = String::from("no host to try");
    let mut session = None;
    'hosts: for host in &hosts {
        let host_tls = match env.tls.for_host(&plan, &host.name, host.port).await {
            Ok(t) => t,
            Err(e) => {
                tracing::info!("list {id}: {}: {e}", host.name);
                last_error = format!("{}: {e}", host.name);
                continue;
            }
        };
        for addr in host.socket_addrs() {
            let label = host.label(addr.ip());
            handler.set_detail(format!("connecting list {id} to {label}"));
            match open(
                &env,
                debug,
                addr,
                &host.name,
                &host_tls,
                &format!("list {id}: {label}"),
            )
            .await
            {
                Ok(client) => {
                    // DANE and MTA-STS are named with the relay (`show message`, logs).
                    let label = match &host_tls.report {
                        Some(_) => format!("{label} (tls policy {})", host_tls.used),
                        None => label,
                    };
                    session = Some((client, label));
                    break 'hosts;
                }
                Err(e) => {
                    tracing::info!("list {id}: {label}: {e}");
                    last_error = format!("{label}: {e}");
                }
            }
        }
    }
    let Some((mut client, label)) = session else {
        let outcome = RcptOutcome::Deferred {
            host: key.clone(),
            reply: Reply::local("4.4.1", last_error),
        };
        for item in items {
            env.report_all(&item, &outcome);
        }
        return;
    };
    handler.set_detail(format!("delivering list {id} to {label}"));
    let _ = env.events.send(Event::SessionOpened);

    let mut sent_in_session = 0usize;
    let mut first = true;
    let mut broken = false;
    for item in items.by_ref() {
        if !(env.may_continue)() || sent_in_session >= env.config.max_messages_per_session {
            env.report(&item, Vec::new());
            break;
        }
        // With PIPELINING the RSET goes out with the next message's commands.
        let reset = !first && client.ext.pipelining;
        if !first && !reset {
            match client.command("RSET").await {
                Ok(r) if r.is_positive() => {}
                _ => {
                    env.report(&item, Vec::new());
                    broken = true;
                    break;
                }
            }
        }
        first = false;
        sent_in_session += 1;
        // From here the message is the handler's current one: a `stop outbound transport`
        // now lets it finish (the check above is the last one before it).
        handler.set_detail(format!(
            "delivering list {id} to {label}: qid {} ({sent_in_session} in this session)",
            item.record.id
        ));
        let span = tracing::info_span!("msg", qid = %item.record.id);
        match transfer(&env, &mut client, &label, &item, reset)
            .instrument(span)
            .await
        {
            Ok(results) => env.report(&item, results),
            Err((results, e)) => {
                tracing::info!("qid={} list {id}: {label}: {e}", item.record.id);
                env.report(&item, results);
                broken = true;
                break;
            }
        }
    }
    // Whatever was not reached stays queued (reported as not attempted).
    for item in items {
        env.report(&item, Vec::new());
    }
    if !broken {
        client.quit().await;
    }
}

/// Connects, says hello and starts TLS as `tls` says; an error means "next host". Each
/// outcome under a DANE or MTA-STS policy is counted for TLS-RPT.
async fn open(
    env: &Env,
    debug: u8,
    addr: std::net::SocketAddr,
    host_name: &str,
    tls: &crate::tls_policy::HostTls,
    what: &str,
) -> Result<SmtpClient, String> {
    let mut client = hello(env, debug, addr).await?;
    let Some(config) = tls.config.clone() else {
        return Ok(client);
    };
    let required = tls.required;
    let policy = &tls.used;
    if !client.ext.starttls {
        env.tls.outcome(
            tls,
            host_name,
            addr.ip(),
            Err(crate::tls_report::Failure::StarttlsNotSupported),
        );
        if required {
            client.quit().await;
            return Err(format!(
                "TLS is required (policy {policy}), but was not offered by the host \
                 (starttls-not-supported); not sent in plaintext"
            ));
        }
        return Ok(client);
    }
    let name = ServerName::try_from(host_name.to_string())
        .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
    let handshake = client.starttls(config, name).await;
    if let Err(e) = &handshake {
        if e.is_handshake() {
            let failure = crate::tls_report::Failure::of_handshake(&e.to_string());
            env.tls.outcome(tls, host_name, addr.ip(), Err(failure));
        }
    }
    match handshake {
        Ok(Ok(info)) => {
            env.tls.outcome(tls, host_name, addr.ip(), Ok(()));
            tracing::info!("{what}: TLS established: {info} (policy {policy})");
            let again = client
                .hello(&env.hostname)
                .await
                .map_err(|e| e.to_string())?;
            if again.code / 100 != 2 {
                client.quit().await;
                return Err(format!("EHLO after STARTTLS: {}", reply_text(&again)));
            }
            Ok(client)
        }
        Ok(Err(refused)) if !required => {
            tracing::info!(
                "{what}: STARTTLS refused ({}): going on in plaintext (policy {policy})",
                reply_text(&refused)
            );
            Ok(client)
        }
        Ok(Err(refused)) => {
            client.quit().await;
            Err(format!("STARTTLS refused: {}", reply_text(&refused)))
        }
        // Nothing was sent yet: under `may`, a new connection in plaintext.
        Err(e) if !required && e.is_handshake() => {
            tracing::info!("{what}: {e}: retrying in plaintext (policy {policy})");
            hello(env, debug, addr).await
        }
        Err(e) if e.is_handshake() => {
            let failure = crate::tls_report::Failure::of_handshake(&e.to_string());
            Err(format!(
                "{e} (policy {policy}) ({}); not sent in plaintext",
                failure.result_type()
            ))
        }
        Err(e) => Err(format!("{e} (policy {policy})")),
    }
}

/// Connects and says hello; a greeting or hello that is not 2xx means "next host".
async fn hello(env: &Env, debug: u8, addr: std::net::SocketAddr) -> Result<SmtpClient, String> {
    let (mut client, greeting) = SmtpClient::connect_with_debug(
        addr,
        env.config.connect_timeout,
        env.config.command_timeout,
        debug,
    )
    .await
    .map_err(|e| e.to_string())?;
    if greeting.code / 100 != 2 {
        client.quit().await;
        return Err(format!("greeting: {}", reply_text(&greeting)));
    }
    let hello = client
        .hello(&env.hostname)
        .await
        .map_err(|e| e.to_string())?;
    if hello.code / 100 != 2 {
        client.quit().await;
        return Err(format!("EHLO/HELO: {}", reply_text(&hello)));
    }
    Ok(client)
}

type Results = Vec<(usize, RcptOutcome)>;

/// One message over the open session. `Err` when the session broke: the results so far,
/// with every recipient of this message not yet decided deferred.
async fn transfer(
    env: &Env,
    client: &mut SmtpClient,
    label: &str,
    item: &ListItem,
    reset: bool,
) -> Result<Results, (Results, SessionError)> {
    let record: &MessageRecord = &item.record;
    let bounce_all = |status: &str, reply: Reply| -> Results {
        item.rcpts
            .iter()
            .map(|i| {
                (
                    *i,
                    RcptOutcome::Bounced {
                        host: label.to_string(),
                        status: status.into(),
                        reply: reply.clone(),
                    },
                )
            })
            .collect()
    };
    let defer_all = |reply: Reply| -> Results {
        item.rcpts
            .iter()
            .map(|i| {
                (
                    *i,
                    RcptOutcome::Deferred {
                        host: label.to_string(),
                        reply: reply.clone(),
                    },
                )
            })
            .collect()
    };

    let spool_dir = env.spool_dir.clone();
    let content_ref = record.content.clone();
    let content = match mta_task::read_work(content_ref.len, move || {
        mta_spool::read(&spool_dir, &content_ref)
    })
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) if e.is_missing() => {
            let outcome = RcptOutcome::ContentMissing {
                reason: e.to_string(),
            };
            return Ok(item.rcpts.iter().map(|i| (*i, outcome.clone())).collect());
        }
        Ok(Err(e)) => {
            return Ok(defer_all(Reply::local(
                "4.3.0",
                format!("cannot read the queued content: {e}"),
            )))
        }
        Err(e) => {
            return Ok(defer_all(Reply::local(
                "4.3.0",
                format!("cannot read the queued content: {e}"),
            )))
        }
    };
    if mta_smtp::has_bare_line_ending(&content) {
        return Ok(bounce_all(
            "5.6.0",
            Reply::local(
                "5.6.0",
                "content has a bare CR or LF; not sent (SMTP smuggling risk)",
            ),
        ));
    }
    let needs_utf8 = record.envelope.utf8
        || record
            .envelope
            .mail_from
            .as_ref()
            .is_some_and(|a| a.is_utf8())
        || item
            .rcpts
            .iter()
            .any(|i| record.recipients[*i].address.is_utf8());
    if needs_utf8 && !client.ext.smtputf8 {
        return Ok(bounce_all(
            "5.6.7",
            Reply::local(
                "5.6.7",
                format!("{label} does not support SMTPUTF8, which this message needs"),
            ),
        ));
    }
    let eight_bit = record.envelope.eight_bit || content.iter().any(|b| *b >= 0x80);
    if eight_bit && !client.ext.eight_bit_mime {
        return Ok(bounce_all(
            "5.6.3",
            Reply::local(
                "5.6.3",
                format!(
                    "{label} does not support 8BITMIME and the message has 8-bit content \
                     (not converted, to keep signatures valid)"
                ),
            ),
        ));
    }
    if let Some(limit) = client.ext.size {
        if content.len() as u64 > limit {
            return Ok(bounce_all(
                "5.3.4",
                Reply::local(
                    "5.3.4",
                    format!(
                        "message size {} exceeds {label}'s limit {limit}",
                        content.len()
                    ),
                ),
            ));
        }
    }

    let mut mail = format!(
        "MAIL FROM:<{}>",
        record
            .envelope
            .mail_from
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    if client.ext.size.is_some() {
        mail.push_str(&format!(" SIZE={}", content.len()));
    }
    if eight_bit {
        mail.push_str(" BODY=8BITMIME");
    }
    if needs_utf8 {
        mail.push_str(" SMTPUTF8");
    }
    let broke = |results: Results, e: SessionError| {
        let decided: Vec<usize> = results.iter().map(|(i, _)| *i).collect();
        let mut results = results;
        for i in &item.rcpts {
            if !decided.contains(i) {
                results.push((
                    *i,
                    RcptOutcome::Deferred {
                        host: label.to_string(),
                        reply: Reply::local("4.4.2", e.to_string()),
                    },
                ));
            }
        }
        (results, e)
    };
    if client.ext.pipelining {
        return pipelined(client, label, item, reset, mail, &content, broke).await;
    }
    let reply = client
        .command(&mail)
        .await
        .map_err(|e| broke(Vec::new(), e))?;
    if !reply.is_positive() {
        let text = reply.recorded();
        return Ok(if reply.is_permanent() {
            bounce_all(&reply_status(&reply), text)
        } else {
            defer_all(text)
        });
    }

    let mut results: Results = Vec::new();
    let mut accepted = Vec::new();
    for i in &item.rcpts {
        let rcpt = &record.recipients[*i];
        let reply = match client.command(&format!("RCPT TO:<{}>", rcpt.address)).await {
            Ok(r) => r,
            Err(e) => return Err(broke(results, e)),
        };
        let text = reply.recorded();
        if reply.is_positive() {
            accepted.push(*i);
        } else if reply.is_permanent() {
            results.push((
                *i,
                RcptOutcome::Bounced {
                    host: label.to_string(),
                    status: reply_status(&reply),
                    reply: text,
                },
            ));
        } else {
            results.push((
                *i,
                RcptOutcome::Deferred {
                    host: label.to_string(),
                    reply: text,
                },
            ));
        }
    }
    if accepted.is_empty() {
        return Ok(results);
    }
    let reply = match client.data(&content).await {
        Ok(r) => r,
        Err(e) => return Err(broke(results, e)),
    };
    let text = reply.recorded();
    for i in accepted {
        let outcome = if reply.code / 100 == 2 {
            RcptOutcome::Sent {
                host: label.to_string(),
                reply: text.clone(),
            }
        } else if reply.is_permanent() {
            RcptOutcome::Bounced {
                host: label.to_string(),
                status: reply_status(&reply),
                reply: text.clone(),
            }
        } else {
            RcptOutcome::Deferred {
                host: label.to_string(),
                reply: text.clone(),
            }
        };
        results.push((i, outcome));
    }
    Ok(results)
}

/// `transfer` over a server that offers PIPELINING (RFC 2920): [RSET,] MAIL, every RCPT and
/// DATA in one write, their replies read in order, then the content: two round trips per
/// message instead of four or more. A refused MAIL makes every recipient's outcome its
/// reply; a 354 that nobody wants (no recipient accepted) is answered with an empty
/// message so the session can go on.
async fn pipelined(
    client: &mut SmtpClient,
    label: &str,
    item: &ListItem,
    reset: bool,
    mail: String,
    content: &[u8],
    broke: impl Fn(Results, SessionError) -> (Results, SessionError),
) -> Result<Results, (Results, SessionError)> {
    let record = &item.record;
    let mut lines = Vec::with_capacity(item.rcpts.len() + 3);
    if reset {
        lines.push("RSET".to_string());
    }
    lines.push(mail);
    for i in &item.rcpts {
        lines.push(format!("RCPT TO:<{}>", record.recipients[*i].address));
    }
    lines.push("DATA".to_string());
    let replies = client
        .pipeline(&lines)
        .await
        .map_err(|e| broke(Vec::new(), e))?;
    let mut replies = replies.into_iter();
    if reset {
        let r = replies.next().expect("one reply per command");
        if !r.is_positive() {
            let e = SessionError::Refused {
                command: "RSET".into(),
                reply: reply_text(&r),
            };
            return Err(broke(Vec::new(), e));
        }
    }
    let mail_reply = replies.next().expect("one reply per command");
    let rcpt_replies: Vec<_> = replies.by_ref().take(item.rcpts.len()).collect();
    let data_reply = replies.next().expect("one reply per command");
    let outcome_of = |reply: &mta_smtp::Reply| {
        let text = reply.recorded();
        if reply.code / 100 == 2 {
            RcptOutcome::Sent {
                host: label.to_string(),
                reply: text,
            }
        } else if reply.is_permanent() {
            RcptOutcome::Bounced {
                host: label.to_string(),
                status: reply_status(reply),
                reply: text,
            }
        } else {
            RcptOutcome::Deferred {
                host: label.to_string(),
                reply: text,
            }
        }
    };
    let mut results: Results = Vec::new();
    let mut accepted = Vec::new();
    if !mail_reply.is_positive() {
        results.extend(item.rcpts.iter().map(|i| (*i, outcome_of(&mail_reply))));
    } else {
        for (i, reply) in item.rcpts.iter().zip(&rcpt_replies) {
            if reply.is_positive() {
                accepted.push(*i);
            } else {
                results.push((*i, outcome_of(reply)));
            }
        }
    }
    if data_reply.code != 354 {
        results.extend(accepted.iter().map(|i| (*i, outcome_of(&data_reply))));
        return Ok(results);
    }
    if accepted.is_empty() {
        client
            .abandon_data()
            .await
            .map_err(|e| broke(results.clone(), e))?;
        return Ok(results);
    }
    let reply = match client.content(content).await {
        Ok(r) => r,
        Err(e) => return Err(broke(results, e)),
    };
    results.extend(accepted.iter().map(|i| (*i, outcome_of(&reply))));
    Ok(results)
}
