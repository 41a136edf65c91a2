//! `trace <address>`: the route mail to that address would take, without sending anything —
//! a local user and its mailbox, an alias and what it expands to (each target traced in
//! turn), or the next hop of a remote domain (relay host, or MX list with preferences and
//! addresses, from `mta-dns` with the suite's own `[dns]` settings) — and the `[[dkim]]` key
//! that signs mail sent from that address's domain, if any.

use crate::Supervisor;
use mta_config::Directory;
use mta_types::Address;
use std::fmt::Write as _;

pub async fn trace(sup: &Supervisor, address: &str) -> Result<String, String> {
    let addr: Address = address
        .parse()
        .map_err(|e| format!("`{address}` is not a mail address: {e}"))?;
    let directory = sup.directory();
    let mut out = String::new();
    let mut remote_domains = Vec::new();
    describe(sup, &directory, &addr, 0, &mut out, &mut remote_domains);
    for domain in remote_domains {
        let _ = writeln!(out, "next hop for {domain}:");
        out.push_str(&next_hop(sup, &domain).await);
    }
    let domain = addr.domain();
    match sup.config().dkim_key_for(domain) {
        Some((_, key)) => {
            let _ = writeln!(
                out,
                "DKIM: mail from {domain} leaving for another host is signed with d={} s={} a={} (key {}); publish it at {}._domainkey.{}",
                key.domain,
                key.selector,
                key.algorithm.as_str(),
                key.private_key.display(),
                key.selector,
                key.domain
            );
        }
        None => {
            let _ = writeln!(
                out,
                "DKIM: no [[dkim]] key for {domain}: mail from it leaves unsigned"
            );
        }
    }
    Ok(out.trim_end().to_string())
}

fn describe(
    sup: &Supervisor,
    directory: &Directory,
    addr: &Address,
    depth: usize,
    out: &mut String,
    remote: &mut Vec<mta_types::Domain>,
) {
    let pad = "  ".repeat(depth);
    if !sup.config().is_local_domain(addr.domain()) {
        let _ = writeln!(out, "{pad}{addr}: remote ({}), via smtp.box", addr.domain());
        if !remote.contains(addr.domain()) {
            remote.push(addr.domain().clone());
        }
        return;
    }
    let targets = directory.expand(addr);
    let is_alias = !(targets.len() == 1 && targets[0].lookup_key() == addr.lookup_key());
    if is_alias && depth == 0 {
        let list: Vec<String> = targets.iter().map(|t| format!("<{t}>")).collect();
        let _ = writeln!(out, "{pad}{addr}: alias, expands to {}", list.join(", "));
        for t in &targets {
            if t.lookup_key() == addr.lookup_key() {
                let _ = writeln!(
                    out,
                    "{pad}  {t}: itself (alias loop), delivered as an address"
                );
                continue;
            }
            describe(sup, directory, t, depth + 1, out, remote);
        }
        return;
    }
    match directory.user_for(addr) {
        Some(user) => {
            let _ = writeln!(
                out,
                "{pad}{addr}: local user {}, mailbox {}",
                user.name,
                user.maildir.display()
            );
        }
        None => {
            let _ = writeln!(
                out,
                "{pad}{addr}: no such local user or alias: mail to it fails 5.1.1 (user unknown)"
            );
        }
    }
}

async fn next_hop(sup: &Supervisor, domain: &mta_types::Domain) -> String {
    let resolver = match mta_dns::NextHop::new(&sup.config().outbound, &sup.config().dns) {
        Ok(r) => r,
        Err(e) => return format!("  cannot build the resolver: {e}\n"),
    };
    if let Some(relay) = resolver.relay_host() {
        let mut out = format!("  relay host {relay} (relay_host is set: no MX lookup)\n");
        if let Ok(hosts) = resolver.resolve(domain).await {
            for h in hosts {
                let addrs: Vec<String> = h.addrs.iter().map(ToString::to_string).collect();
                let _ = writeln!(out, "    {} [{}]", h.name, addrs.join(", "));
            }
        }
        return out;
    }
    match resolver.resolve(domain).await {
        Ok(hosts) => {
            let mut out = String::new();
            for h in hosts {
                let addrs: Vec<String> = h.addrs.iter().map(ToString::to_string).collect();
                let _ = writeln!(
                    out,
                    "  MX {:>3} {} [{}] port {}",
                    h.preference,
                    h.name,
                    addrs.join(", "),
                    h.port
                );
            }
            out
        }
        Err(e) => format!(
            "  {e} ({} {})\n",
            if e.is_transient() {
                "temporary: would be retried,"
            } else {
                "permanent: mail fails with"
            },
            e.status()
        ),
    }
}
