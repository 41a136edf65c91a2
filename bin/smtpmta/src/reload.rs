//! `tell smtpmta reload`, SIGHUP and `systemctl reload` (the unit's `ExecReload`): read
//! the configuration file and the directory again and apply what changed, without
//! dropping a session or a message.
//!
//! - A file with an error changes nothing: the reply names the file, the line and the key
//!   (as at start), and the suite goes on as it was. DKIM keys and a named TLS
//!   certificate are loaded first too, and new listening addresses bound, so none of
//!   them can fail half-way through.
//! - What the supervisor keeps itself changes at once: the directory and the debug knobs
//!   (pushed to every task, as `refresh`), `hold_undeliverable`, `tracking_days`,
//!   the listening sockets (`[inbound] listen`,
//!   `submission_listen`, `submissions_listen`: new ones bound, removed ones closed).
//! - A task whose settings changed is restarted gracefully (`Children::restart`): a new
//!   copy starts on the new file and the old one finishes its work beside it; isesctl's
//!   listening sockets stay open in the supervisor, so no connection is refused. Every
//!   other task re-reads the directory and its files (isesctl: the TLS certificate).
//! - Keys read only at start (`data_dir`, `user`/`group`, `[metrics] listen`) are listed
//!   as taking effect at the next start.
//!
//! Which task reads which key is `READERS`; a key no entry names (a section added later)
//! restarts every task, which is always safe. What changed is found by comparing the two
//! configurations field by field (`diff`), so a new key is noticed without a list here.

use crate::Supervisor;
use mta_config::Config;
use mta_ipc::console::ConsoleReply;
use mta_types::TaskName;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Keys that only a restart of the whole suite applies.
const NEXT_START: &[&str] = &["path", "data_dir", "run_as", "metrics.listen"];

/// Keys the supervisor applies itself (no task restarts for them).
const SUPERVISOR: &[&str] = &[
    "directory",
    "debug",
    "hold_undeliverable",
    "tracking_days",
    "metrics.top_destinations",
];

/// Key prefixes each task reads (a key matches a prefix equal to it or to one of its
/// dotted parents). `hostname` is in every one: each task writes it somewhere.
const READERS: &[(TaskName, &[&str])] = &[
    (
        TaskName::Isesctl,
        &[
            "hostname",
            "local_domains",
            "trusted_networks",
            "directory_path",
            "inbound",
            "tls",
            "milter",
            // SPF/DKIM/DMARC lookups and the DNS lists.
            "dns",
        ],
    ),
    (TaskName::Imsgcnv, &["hostname", "inbound.max_hops"]),
    (
        TaskName::Router,
        &["hostname", "local_domains", "directory_path", "lmtp"],
    ),
    (TaskName::Omsgcnv, &["hostname", "dkim"]),
    (
        TaskName::Osesctl,
        &["hostname", "outbound", "dns", "shaping"],
    ),
    (TaskName::Drt, &["hostname", "outbound"]),
];

/// One changed key, with its old and new values when each fits on a line.
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.old, &self.new) {
            (Some(old), Some(new)) => write!(f, "{} ({old} -> {new})", self.key),
            _ => f.write_str(&self.key),
        }
    }
}

/// What a reload does, decided before anything is applied.
#[derive(Debug, Default)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub restart: BTreeSet<TaskName>,
    pub next_start: Vec<String>,
}

fn matches(key: &str, prefix: &str) -> bool {
    key == prefix || key.starts_with(&format!("{prefix}."))
}

impl Plan {
    pub fn new(old: &Config, new: &Config) -> Plan {
        let mut plan = Plan {
            changes: diff(old, new),
            ..Plan::default()
        };
        for change in &plan.changes {
            let key = change.key.as_str();
            if NEXT_START.iter().any(|p| matches(key, p)) {
                plan.next_start.push(key.to_string());
                continue;
            }
            if SUPERVISOR.iter().any(|p| matches(key, p)) {
                continue;
            }
            let readers: Vec<TaskName> = READERS
                .iter()
                .filter(|(_, keys)| keys.iter().any(|p| matches(key, p)))
                .map(|(task, _)| *task)
                .collect();
            if readers.is_empty() {
                plan.restart.extend(TaskName::CHILDREN);
            } else {
                plan.restart.extend(readers);
            }
        }
        // DKIM key files may change under the same names: omsgcnv loads them at start.
        if !new.dkim.is_empty() {
            plan.restart.insert(TaskName::Omsgcnv);
        }
        plan
    }
}

/// The keys that differ, as dotted paths (`inbound.max_handlers`), from the two
/// configurations' pretty `Debug` forms: one field a line at each level, so any field
/// added to `Config` later is compared too.
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let (old, new) = (format!("{old:#?}"), format!("{new:#?}"));
    let mut out = Vec::new();
    diff_fields("", &fields(&old, 4), &fields(&new, 4), &mut out);
    out
}

fn diff_fields(
    parent: &str,
    old: &[(String, Vec<String>)],
    new: &[(String, Vec<String>)],
    out: &mut Vec<Change>,
) {
    for (name, new_lines) in new {
        let key = if parent.is_empty() {
            name.clone()
        } else {
            format!("{parent}.{name}")
        };
        let old_lines = old.iter().find(|(n, _)| n == name).map(|(_, l)| l);
        if old_lines == Some(new_lines) {
            continue;
        }
        let (Some(old_lines), true) = (old_lines, parent.is_empty()) else {
            out.push(change(key, old_lines, new_lines));
            continue;
        };
        // A section (`inbound: InboundConfig {`): compare its own fields.
        if is_struct(new_lines) && is_struct(old_lines) {
            let indent = 8;
            diff_fields(
                &key,
                &fields(&old_lines.join("\n"), indent),
                &fields(&new_lines.join("\n"), indent),
                out,
            );
        } else {
            out.push(change(key, Some(old_lines), new_lines));
        }
    }
}

fn is_struct(lines: &[String]) -> bool {
    lines.len() > 1 && lines[0].trim_end().ends_with('{') && !lines[0].contains(": Some(")
}

fn change(key: String, old: Option<&Vec<String>>, new: &[String]) -> Change {
    let one_line = |lines: &[String]| -> Option<String> {
        match lines {
            [line] => line
                .split_once(": ")
                .map(|(_, v)| v.trim_end_matches(',').to_string()),
            _ => None,
        }
    };
    Change {
        key,
        old: old.and_then(|l| one_line(l)),
        new: one_line(new),
    }
}

/// The fields at `indent` of a pretty `Debug` text: each name with its lines (a nested
/// value's lines follow its first line, deeper indented, up to its closing line).
fn fields(text: &str, indent: usize) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        let depth = line.len() - line.trim_start().len();
        let body = line.trim_start();
        let starts_field = depth == indent
            && body
                .split_once(": ")
                .is_some_and(|(name, _)| name.chars().all(|c| c.is_alphanumeric() || c == '_'));
        if starts_field {
            let name = body
                .split_once(": ")
                .map(|(n, _)| n.to_string())
                .unwrap_or_default();
            out.push((name, vec![line.to_string()]));
        } else if depth >= indent {
            if let Some((_, lines)) = out.last_mut() {
                lines.push(line.to_string());
            }
        }
    }
    out
}

/// Loads the file and everything a reload would load from it (DKIM keys, a named TLS
/// certificate), without applying anything: `smtpmta check-config` and the first step
/// of a reload.
pub fn check(path: &std::path::Path) -> Result<Config, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    mta_auth::SigningKeys::load(&config).map_err(|e| e.to_string())?;
    if config.tls.files.is_some() {
        mta_tls::ServerTls::load(&config).map_err(|e| format!("[tls]: {e}"))?;
    }
    Ok(config)
}

/// `tell smtpmta reload` (and SIGHUP).
pub async fn reload(sup: &Arc<Supervisor>) -> ConsoleReply {
    let _one_at_a_time = sup.reloading.lock().await;
    let old = sup.config();
    let fresh = match check(&old.path) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("reload refused, nothing changed: {e}");
            return ConsoleReply::Error(format!("reload refused, nothing changed: {e}"));
        }
    };
    let plan = Plan::new(&old, &fresh);
    if let Err(e) = sup.children.rebind(&fresh) {
        tracing::warn!("reload refused, nothing changed: {e:#}");
        return ConsoleReply::Error(format!("reload refused, nothing changed: {e:#}"));
    }
    let fresh = Arc::new(fresh);
    sup.apply_config(fresh.clone());
    let mut not_reached = Vec::new();
    for task in TaskName::CHILDREN {
        if plan.restart.contains(&task) {
            continue;
        }
        if let Err(e) = crate::tasks::refresh_task(sup, task, &fresh.debug).await {
            not_reached.push(format!("{task}: {e}"));
        }
    }
    let mut restarted = Vec::new();
    for task in &plan.restart {
        match sup.children.restart(*task).await {
            Ok(_) => restarted.push(task.to_string()),
            Err(e) => not_reached.push(format!("{task}: {e}")),
        }
    }
    let text = reply_text(&fresh, &plan, &restarted, &not_reached);
    tracing::info!("{}", text.replace('\n', "; "));
    ConsoleReply::Text(text)
}

fn reply_text(
    config: &Config,
    plan: &Plan,
    restarted: &[String],
    not_reached: &[String],
) -> String {
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        }
    };
    let mut text = format!(
        "reloaded {} ({} users, {} aliases in {})",
        config.path.display(),
        config.directory.users.len(),
        config.directory.aliases.len(),
        config.directory_path.display()
    );
    text.push_str(&format!(
        "\nchanged: {}",
        list(plan.changes.iter().map(ToString::to_string).collect())
    ));
    text.push_str(&format!(
        "\nrestarted gracefully: {}",
        list(restarted.to_vec())
    ));
    text.push_str("\nre-read live: directory, debug knobs, TLS certificate files");
    if !plan.next_start.is_empty() {
        text.push_str(&format!(
            "\nat the next start only: {}",
            plan.next_start.join(", ")
        ));
    }
    if !not_reached.is_empty() {
        text.push_str(&format!("\nnot reached: {}", not_reached.join(", ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("directory.toml"), "").unwrap();
        let path = dir.path().join("smtpmta.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap()
    }

    #[test]
    fn changes_are_named_and_sorted_into_restarts() {
        let dir = "data_dir = \"/tmp/x\"\n";
        let old = load(&format!("{dir}[inbound]\nmax_handlers = 100\n"));
        let mut new = old.clone();
        new.inbound.max_handlers = 50;
        new.inbound.listen.push("127.0.0.1:2600".parse().unwrap());
        new.hold_undeliverable = true;
        // isesctl applies its grace when it stops: it is restarted to have the new one.
        new.inbound.shutdown_grace = std::time::Duration::from_secs(5);
        new.data_dir = "/tmp/y".into();
        let plan = Plan::new(&old, &new);
        let keys: Vec<String> = plan.changes.iter().map(ToString::to_string).collect();
        assert!(
            keys.contains(&"inbound.max_handlers (100 -> 50)".to_string()),
            "{keys:?}"
        );
        assert!(keys.contains(&"inbound.listen".to_string()), "{keys:?}");
        assert!(
            keys.contains(&"hold_undeliverable (false -> true)".to_string()),
            "{keys:?}"
        );
        assert_eq!(plan.next_start, vec!["data_dir".to_string()]);
        assert_eq!(
            plan.restart.iter().copied().collect::<Vec<_>>(),
            vec![TaskName::Isesctl]
        );
    }

    #[test]
    fn nothing_changed_restarts_nothing() {
        let old = load("data_dir = \"/tmp/x\"\n");
        let plan = Plan::new(&old, &old.clone());
        assert!(
            plan.changes.is_empty() && plan.restart.is_empty(),
            "{plan:?}"
        );
        let mut new = old.clone();
        new.outbound.relay_host = Some("relay.test:25".into());
        let plan = Plan::new(&old, &new);
        assert_eq!(
            plan.restart.iter().copied().collect::<Vec<_>>(),
            vec![TaskName::Osesctl, TaskName::Drt]
        );
    }
}
