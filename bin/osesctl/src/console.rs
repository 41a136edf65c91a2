//! Traffic shaping at the console: what `tell router show` and `show shaping` say about
//! throttled and suspended destinations, and the operator's `suspend` and `resume`.
//!
//! `tell router suspend <domain|site> [for D]` (default 1h) and `tell router resume
//! <domain|site>` reach here through the router. The operator's suspensions are written
//! to `<data_dir>/shaping/suspended` (one line each: target, end in ms, who), replaced
//! atomically (write, fsync, rename) on every change and read at start, so they survive
//! a restart; a suspension by an `on_reply` rule is the receiver's mood of the moment and
//! is not kept. `resume` also makes the destination's deferred messages due now (as
//! `route` does).

use crate::delivery::Parked;
use crate::shaping::{Shaping, Suspension};
use crate::transfers::{Held, ListSummary};
use mta_ipc::store::BulkOp;
use mta_ipc::transfers::TransferState;
use mta_task::TaskContext;
use mta_types::message::{now_ms, UnixMillis};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::Notify;

/// A suspension without `for`.
const DEFAULT_SUSPEND: Duration = Duration::from_secs(3600);

pub fn is_shaping_command(words: &[String]) -> bool {
    let w: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    matches!(
        w.iter().map(String::as_str).collect::<Vec<_>>().as_slice(),
        ["suspend", _] | ["suspend", _, "for", _] | ["resume", _] | ["show", "shaping"]
    )
}

/// `suspend`, `resume` or `show shaping`.
pub async fn command(
    shaping: &Shaping,
    ctx: &TaskContext,
    words: &[String],
    wake: &Notify,
) -> Result<String, String> {
    let verb = words[0].to_ascii_lowercase();
    if verb == "show" {
        return Ok(show(shaping));
    }
    let target = words[1].trim_end_matches('.').to_ascii_lowercase();
    let file = suspensions_file(&ctx.config().data_dir);
    if verb == "suspend" {
        let wait = match words.get(3) {
            Some(d) => mta_config::parse_duration(d).map_err(|e| format!("suspend: `{d}`: {e}"))?,
            None => DEFAULT_SUSPEND,
        };
        let s = Suspension {
            until: now_ms() + wait.as_millis() as u64,
            by: "operator".into(),
        };
        shaping.set_hold(&target, Some(s.clone()));
        shaping.publish(&target, Some(&s));
        save(shaping, &file)?;
        tracing::info!("{target} suspended by the operator for {}s", wait.as_secs());
        return Ok(format!(
            "{target} suspended for {}s (until {})",
            wait.as_secs(),
            clock(now_ms() + wait.as_millis() as u64)
        ));
    }
    let was = shaping.set_hold(&target, None) | shaping.holds().iter().any(|(t, _)| *t == target);
    shaping.publish(&target, None);
    save(shaping, &file)?;
    tracing::info!("{target} resumed by the operator");
    let domains = shaping.domains_of(&target);
    for domain in &domains {
        if let Err(e) = ctx
            .store()
            .bulk(BulkOp::RouteNow, Some(domain.clone()))
            .await
        {
            tracing::warn!("resume {target}: cannot make {domain}'s messages due now: {e}");
        }
    }
    wake.notify_one();
    Ok(if was {
        format!(
            "{target} resumed; messages for {} due now",
            domains.join(", ")
        )
    } else {
        format!("{target} was not suspended")
    })
}

pub fn suspensions_file(data_dir: &Path) -> PathBuf {
    data_dir.join("shaping").join("suspended")
}

/// Writes the operator's suspensions in force (atomically: a crash leaves the old file).
fn save(shaping: &Shaping, file: &Path) -> Result<(), String> {
    let mut text = String::new();
    for (target, s) in shaping.holds() {
        if s.by == "operator" {
            let _ = writeln!(text, "{target}\t{}\t{}", s.until, s.by);
        }
    }
    let write = || -> std::io::Result<()> {
        let dir = file.parent().expect("a folder");
        std::fs::create_dir_all(dir)?;
        let tmp = file.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| format!("cannot keep the suspensions in {}: {e}", file.display()))
}

/// Reads the operator's suspensions kept by `save` (at start); a bad line is skipped
/// with a warning.
pub fn load(shaping: &Shaping, data_dir: &Path) {
    let file = suspensions_file(data_dir);
    let Ok(text) = std::fs::read_to_string(&file) else {
        return;
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let until = fields.get(1).and_then(|u| u.parse::<UnixMillis>().ok());
        match (fields.first(), until) {
            (Some(target), Some(until)) if until > now_ms() => {
                let by = fields.get(2).unwrap_or(&"operator").to_string();
                shaping.set_hold(target, Some(Suspension { until, by }));
                tracing::info!(
                    "{target} stays suspended until {} (kept across the restart)",
                    clock(until)
                );
            }
            (Some(_), Some(_)) => {}
            _ => tracing::warn!("{}: line not understood, skipped: {line}", file.display()),
        }
    }
}

/// `HH:MM:SS` UTC.
pub fn clock(ms: UnixMillis) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}Z", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// The shaping rows of `tell router show`: throttled lists and suspended destinations.
pub fn shaped(shaping: &Shaping, parked: &[Parked], relay: Option<&str>) -> Vec<Held> {
    let via = relay.unwrap_or("MX");
    let mut out = Vec::new();
    for p in parked {
        let Some(hop) = &p.list.hop else { continue };
        let why = p.why.map_or("connection rotation", |w| w.describe());
        let detail = format!(
            "{why}; site {} rule {}: {}; in use {} connections",
            hop.site.name,
            hop.rule.label,
            hop.rule.limits(),
            hop.site.connections.load(Ordering::Relaxed)
        );
        out.push(Held {
            summary: ListSummary::of(&p.list, relay),
            state: TransferState::Throttled,
            shaping: detail,
        });
    }
    for (target, s) in shaping.holds() {
        let detail = format!("until {} by {}", clock(s.until), s.by);
        for domain in shaping.domains_of(&target) {
            out.push(Held {
                summary: ListSummary::domain(&domain, via),
                state: TransferState::Suspended,
                shaping: detail.clone(),
            });
        }
    }
    out
}

/// `show shaping`: each site seen since start, its rule and limits, use and state.
pub fn show(shaping: &Shaping) -> String {
    let holds = shaping.holds();
    let mut out = format!(
        "{:<36} {:<14} {:>5} {:>8} {:>9} {:>9}  {}\n",
        "Site", "Rule", "Conns", "Sent", "Throttled", "Suspended", "State / limits"
    );
    for site in shaping.sites() {
        let rule = site.rule.lock().expect("site lock").clone();
        let hold = holds
            .iter()
            .find(|(t, _)| *t == site.name || site.domains.lock().expect("site lock").contains(t));
        let state = match hold {
            Some((t, s)) => format!("SUSPENDED ({t}) until {} by {}", clock(s.until), s.by),
            None => "active".into(),
        };
        let limit = site
            .connection_limit(&rule)
            .map_or("-".to_string(), |n| n.to_string());
        let _ = writeln!(
            out,
            "{:<36} {:<14} {:>5} {:>8} {:>9} {:>9}  {state}; {} (connection limit now {limit})",
            site.name,
            rule.label,
            site.connections.load(Ordering::Relaxed),
            site.sent.load(Ordering::Relaxed),
            site.throttled.load(Ordering::Relaxed),
            site.suspended.load(Ordering::Relaxed),
            rule.limits(),
        );
    }
    for (target, s) in holds.iter().filter(|(t, _)| !shaping.is_site(t)) {
        let _ = writeln!(
            out,
            "{target:<36} (domain) SUSPENDED until {} by {}",
            clock(s.until),
            s.by
        );
    }
    out
}

/// Per-site counters for `/metrics`, as `site:<name>:<what>` task counters: the `top`
/// sites with the most connections, throttles and suspensions (bounded like the
/// destinations, by `[metrics] top_destinations`).
pub fn site_counters(shaping: &Shaping, top: usize) -> Vec<(String, u64)> {
    let mut sites: Vec<(u64, String, [u64; 3])> = shaping
        .sites()
        .iter()
        .map(|s| {
            let n = [
                u64::from(s.connections.load(Ordering::Relaxed)),
                s.throttled.load(Ordering::Relaxed),
                s.suspended.load(Ordering::Relaxed),
            ];
            (n.iter().sum(), s.name.clone(), n)
        })
        .filter(|(total, _, _)| *total > 0)
        .collect();
    sites.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    sites.truncate(top);
    let mut out = Vec::with_capacity(sites.len() * 3);
    for (_, name, [connections, throttled, suspended]) in sites {
        out.push((format!("site:{name}:connections"), connections));
        out.push((format!("site:{name}:throttled"), throttled));
        out.push((format!("site:{name}:suspended"), suspended));
    }
    out
}
