//! The console's vocabulary: what an operator can type, parsed once here, and what the
//! supervisor answers. `mtacon` parses and renders; `smtpmta` executes.

use mta_types::TaskName;
use serde::{Deserialize, Serialize};

/// Every console command with its one-line description, in the order `help` lists them.
pub const HELP: &[(&str, &str)] = &[
    (
        "show tasks",
        "every task and session handler: pid, state, what it is doing",
    ),
    (
        "show task time",
        "every task and session handler: start time, uptime and CPU time",
    ),
    (
        "show server",
        "version, uptime, hostname, data directory, supervisor pid",
    ),
    (
        "show config",
        "the configuration in effect and the runtime debug knobs",
    ),
    ("show version", "the smtpmta version"),
    (
        "show clients",
        "the busiest inbound clients with their sessions, messages, recipients and refusals (per-client limits)",
    ),
    (
        "show fleet",
        "every node of the fleet ([cluster]): UP, DOWN or DRAINING, with its tasks, queue and sessions (--json too)",
    ),
    ("show queue", "messages per queue and state; held, dead and conversion-error messages one by one"),
    (
        "show stat mail",
        "mail statistics: delivered, transferred, routed, waiting, dead, held, failures, rates, threads, sessions, averages, spool size",
    ),
    (
        "show stat <name or pattern>",
        "the statistics a name or glob selects: show stat mail.dead, show stat mail.*threads*",
    ),
    (
        "show message <queue-id>",
        "message tracking: envelope, fields, state, and each recipient's attempts",
    ),
    ("hold <queue-id>", "park a queued message (not routed or sent until released)"),
    ("release <queue-id>", "put a held message back in the queue it came from; retry a message held as undeliverable, or the conversion of one in Conversion Error"),
    (
        "bounce <queue-id>",
        "send the delivery failure report of a message held as undeliverable now, and remove it",
    ),
    (
        "track [from=<addr>] [to=<addr>] [since=<time>] [id=<message-id>]",
        "message tracking: find messages (also delivered ones) in the history of the last tracking_days",
    ),
    (
        "release dead <queue-id>",
        "re-route a dead message: back to mail.box, failed recipients pending again",
    ),
    (
        "delete <queue-id>",
        "remove a message for good (asks to confirm; one-shot needs --yes)",
    ),
    (
        "hold domain <domain>",
        "park every queued message for that destination",
    ),
    (
        "release domain <domain>",
        "put every held message for that destination back in its queue, due now",
    ),
    (
        "delete domain <domain>",
        "drop that destination's pending recipients everywhere, without reports (--yes)",
    ),
    (
        "trace <address>",
        "the route mail to that address would take: mailbox, alias expansion or next hop",
    ),
    (
        "tell smtpmta refresh",
        "re-read the directory file and the [debug] knobs (a bad file keeps the old one)",
    ),
    (
        "tell smtpmta reload",
        "re-read the configuration and the directory; apply what changed (restarting a task gracefully if it must); a bad file changes nothing",
    ),
    (
        "tell smtpmta restart",
        "upgrade in place: stop every task gracefully keeping the SMTP sockets open, then run the supervisor's binary again (same pid) and start the tasks on the new binaries",
    ),
    (
        "tell <task> restart",
        "start a new copy of the task and stop the old one gracefully (isesctl: sessions get shutdown_grace, then 421)",
    ),
    (
        "tell smtpmta compact",
        "compact the queue now: reclaim spool segments no message points into",
    ),
    (
        "tell router show",
        "each pending destination BUSY, WAIT, RETRY, READY, THROTTLED or SUSPENDED, and the threads",
    ),
    ("tell router show queue", "the router's view of the queue counts"),
    (
        "tell router suspend <domain|site> [for <duration>]",
        "deliver nothing to that destination or site for a while (default 1h; kept across restarts)",
    ),
    (
        "tell router resume <domain|site>",
        "end a suspension; the destination's messages are due at once",
    ),
    (
        "show shaping",
        "traffic shaping: each site seen, its rule and limits, connections, sent, throttled, suspended",
    ),
    (
        "tell smtpmta quit",
        "stop every task (inbound first) and the supervisor",
    ),
    (
        "tell smtpmta stop inbound transport",
        "close the SMTP listeners; sessions in progress finish",
    ),
    (
        "tell smtpmta start inbound transport",
        "listen for SMTP connections again",
    ),
    (
        "tell smtpmta stop outbound transport",
        "start no new outbound sessions; mail stays queued",
    ),
    (
        "tell smtpmta start outbound transport",
        "resume outbound delivery and drain the queue",
    ),
    (
        "tell <task> show status",
        "the task's own status line (isesctl, imsgcnv, router, omsgcnv, osesctl, drt)",
    ),
    ("set config <knob> <value>", "change a debug knob at once in every task: SMTPDebug, SMTPDebugIO, SMTPClientDebug, Log_MailRouting, SMTPSaveImportErrors, DebugRouterLookup, debug_tcp_resolver, debug_outfile (a path; - for none)"),
    ("set config hold_undeliverable <0|1>", "hold permanently failed mail instead of bouncing it (see `release`, `bounce`)"),
    ("route <domain>", "try that destination's queued messages now, ignoring their retry times"),
    ("route", "try every pending destination now"),
    ("route localdelivery", "retry local deliveries waiting in mail.box now"),
    ("show tls policy <domain>", "which outbound TLS policy applies to the domain and why (DANE with its TLSA records, MTA-STS, or the config)"),
    ("show tls reports", "the TLS-RPT counts not yet reported, per day, domain and policy"),
    ("tell smtpmta send tls reports", "send the TLS-RPT reports now (today's counts so far included)"),
    (
        "tell smtpmta drain to <node|host:port> [include held|dead]",
        "take this node out of service: new connections get 421, and every queued message (pending and deferred; held or dead only if included) is handed off to that fleet peer over SMTP",
    ),
    (
        "tell smtpmta drain status",
        "the drain's progress: handed off, left, failed, the last error",
    ),
    (
        "tell smtpmta drain stop",
        "end the drain: what is left stays queued here, and inbound connections are served again",
    ),
    ("help", "this list"),
];

/// `help` as printed: one command a line.
pub fn help_text() -> String {
    let width = HELP.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    HELP.iter()
        .map(|(c, d)| format!("{c:<width$}  {d}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A TELL command as the receiving task understands it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TellCommand {
    Quit,
    ShowStatus,
    StopInboundTransport,
    StartInboundTransport,
    StopOutboundTransport,
    StartOutboundTransport,
    /// Re-read the directory file and the knobs (`tell smtpmta refresh`).
    Refresh,
    /// Compact the queue now (`tell smtpmta compact`).
    Compact,
    /// `tell <task> restart`: the supervisor starts a new copy of the task and stops the
    /// old one gracefully (isesctl: no new connection refused, sessions get
    /// `[inbound] shutdown_grace`).
    Restart,
    /// `tell smtpmta reload`: re-read the configuration and the directory and apply them.
    Reload,
    /// `tell smtpmta drain …`: hand this node's queue off to a fleet peer.
    Drain(DrainCommand),
    /// From the supervisor to isesctl during a drain: new connections get `421 4.3.2`
    /// (true) or the banner again (false).
    InboundDraining(bool),
    /// Anything else: passed to the task, which says whether it knows it.
    Other(Vec<String>),
}

impl TellCommand {
    pub fn parse(words: &[&str]) -> TellCommand {
        let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
        let l: Vec<&str> = lower.iter().map(String::as_str).collect();
        match l.as_slice() {
            ["quit"] | ["exit"] => TellCommand::Quit,
            ["show", "status"] | ["status"] => TellCommand::ShowStatus,
            ["stop", "inbound", "transport"] | ["stop", "inbound"] => {
                TellCommand::StopInboundTransport
            }
            ["start", "inbound", "transport"] | ["start", "inbound"] => {
                TellCommand::StartInboundTransport
            }
            ["stop", "outbound", "transport"] | ["stop", "outbound"] => {
                TellCommand::StopOutboundTransport
            }
            ["start", "outbound", "transport"] | ["start", "outbound"] => {
                TellCommand::StartOutboundTransport
            }
            ["refresh"] => TellCommand::Refresh,
            ["compact"] => TellCommand::Compact,
            ["restart"] => TellCommand::Restart,
            ["reload"] => TellCommand::Reload,
            _ => TellCommand::Other(words.iter().map(|w| w.to_string()).collect()),
        }
    }
}

/// As an operator types it (`stop inbound transport`): what console errors show.
impl std::fmt::Display for TellCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            TellCommand::Quit => "quit",
            TellCommand::ShowStatus => "show status",
            TellCommand::StopInboundTransport => "stop inbound transport",
            TellCommand::StartInboundTransport => "start inbound transport",
            TellCommand::StopOutboundTransport => "stop outbound transport",
            TellCommand::StartOutboundTransport => "start outbound transport",
            TellCommand::Refresh => "refresh",
            TellCommand::Compact => "compact",
            TellCommand::Restart => "restart",
            TellCommand::Reload => "reload",
            TellCommand::Drain(d) => return write!(f, "drain {d}"),
            TellCommand::InboundDraining(true) => "drain inbound",
            TellCommand::InboundDraining(false) => "undrain inbound",
            TellCommand::Other(words) => return f.write_str(&words.join(" ")),
        };
        f.write_str(text)
    }
}

/// `tell smtpmta drain …`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DrainCommand {
    /// `drain to <node|host:port> [include held|dead]`.
    To {
        target: String,
        include: DrainScope,
    },
    Status,
    Stop,
}

/// What a drain hands off beyond pending and deferred mail (which it always does).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainScope {
    pub held: bool,
    pub dead: bool,
}

/// A console line that is not a command, or a command typed wrongly: the text says how
/// to type it (`usage: …`, `unknown command …`), and reads as a `str`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl From<&str> for UsageError {
    fn from(text: &str) -> UsageError {
        UsageError(text.to_string())
    }
}

impl From<String> for UsageError {
    fn from(text: String) -> UsageError {
        UsageError(text)
    }
}

impl std::ops::Deref for UsageError {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

const DRAIN_USAGE: &str = "usage: tell smtpmta drain to <node|host:port> [include held|dead], tell smtpmta drain status, tell smtpmta drain stop";

impl DrainCommand {
    /// The words after `drain`.
    pub fn parse(words: &[&str]) -> Result<DrainCommand, UsageError> {
        let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
        let l: Vec<&str> = lower.iter().map(String::as_str).collect();
        match l.as_slice() {
            ["status"] => Ok(DrainCommand::Status),
            ["stop"] => Ok(DrainCommand::Stop),
            ["to", _, rest @ ..] => {
                let mut include = DrainScope::default();
                match rest {
                    [] => {}
                    ["include", kinds @ ..] if !kinds.is_empty() => {
                        for kind in kinds.iter().flat_map(|k| k.split(',')) {
                            match kind {
                                "held" => include.held = true,
                                "dead" => include.dead = true,
                                "" | "and" => {}
                                other => {
                                    return Err(UsageError::from(format!(
                                    "drain: cannot include `{other}` (held, dead); {DRAIN_USAGE}"
                                )))
                                }
                            }
                        }
                    }
                    _ => return Err(UsageError::from(DRAIN_USAGE)),
                }
                Ok(DrainCommand::To {
                    target: words[1].to_string(),
                    include,
                })
            }
            _ => Err(UsageError::from(DRAIN_USAGE)),
        }
    }
}

impl std::fmt::Display for DrainCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DrainCommand::Status => f.write_str("status"),
            DrainCommand::Stop => f.write_str("stop"),
            DrainCommand::To { target, include } => {
                write!(f, "to {target}")?;
                match (include.held, include.dead) {
                    (true, true) => f.write_str(" include held dead"),
                    (true, false) => f.write_str(" include held"),
                    (false, true) => f.write_str(" include dead"),
                    (false, false) => Ok(()),
                }
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleCommand {
    Help,
    ShowTasks,
    /// `show task time`: start time, uptime and CPU time of every task and handler.
    ShowTaskTime,
    ShowServer,
    ShowConfig,
    ShowVersion,
    /// `show clients`: isesctl's per-client counters, busiest first.
    ShowClients,
    /// `show fleet`: every node of the fleet (`[cluster]`), UP, DOWN or DRAINING.
    ShowFleet,
    ShowQueue,
    ShowStatMail,
    /// `show stat mail.dead`, `show stat mail.*threads*`: the statistics a name, group or
    /// glob selects (`show stat mail` is all of them).
    ShowStat {
        pattern: String,
    },
    ShowMessage {
        qid: String,
    },
    Hold {
        qid: String,
    },
    Release {
        qid: String,
    },
    ReleaseDead {
        qid: String,
    },
    /// A message held as undeliverable: its failure report is sent now.
    Bounce {
        qid: String,
    },
    /// Message tracking: one page of the history matching the query.
    Track(crate::tracking::TrackQuery),
    /// Confirmed by the console before it is sent (interactive prompt or `--yes`).
    Delete {
        qid: String,
    },
    /// Hold, release or delete by destination (`route` goes through osesctl).
    /// A delete is confirmed like `Delete`.
    Bulk {
        op: crate::store::BulkOp,
        domain: String,
    },
    /// `route localdelivery`: local deliveries waiting for a retry are tried now.
    RouteLocalDelivery,
    Trace {
        address: String,
    },
    SetConfig {
        knob: String,
        value: String,
    },
    Tell {
        task: TaskName,
        command: TellCommand,
    },
}

impl ConsoleCommand {
    /// Parses a command line as an operator types it (case-insensitive, Domino spelling;
    /// `sh` abbreviates `show`).
    pub fn parse(line: &str) -> Result<ConsoleCommand, UsageError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
        let l: Vec<&str> = lower.iter().map(String::as_str).collect();
        match l.as_slice() {
            [] => Err(UsageError::from("empty command; type `help` for the list")),
            ["help"] | ["?"] => Ok(ConsoleCommand::Help),
            _ => Self::parse_show(&l, &words)
                .or_else(|| Self::parse_message_op(&l, &words))
                .or_else(|| Self::parse_delivery(&l, &words))
                .unwrap_or_else(|| {
                    Err(UsageError::from(format!(
                        "unknown command `{line}`; type `help` for the list"
                    )))
                }),
        }
    }

    /// `show …`: the views, and the TLS and shaping views that osesctl answers.
    fn parse_show(l: &[&str], words: &[&str]) -> Option<Result<ConsoleCommand, UsageError>> {
        Some(match l {
            ["show" | "sh", "tasks" | "task"] => Ok(ConsoleCommand::ShowTasks),
            ["show" | "sh", "tasks" | "task", "time"] => Ok(ConsoleCommand::ShowTaskTime),
            ["show" | "sh", "server"] => Ok(ConsoleCommand::ShowServer),
            ["show" | "sh", "config"] => Ok(ConsoleCommand::ShowConfig),
            ["show" | "sh", "version"] => Ok(ConsoleCommand::ShowVersion),
            ["show" | "sh", "clients" | "client"] => Ok(ConsoleCommand::ShowClients),
            ["show" | "sh", "queue"] => Ok(ConsoleCommand::ShowQueue),
            ["show" | "sh", "fleet" | "cluster"] => Ok(ConsoleCommand::ShowFleet),
            ["show" | "sh", "stat" | "stats" | "statistics", "mail"] => {
                Ok(ConsoleCommand::ShowStatMail)
            }
            ["show" | "sh", "stat" | "stats" | "statistics", pattern]
                if pattern.starts_with("mail") || pattern.starts_with('*') =>
            {
                Ok(ConsoleCommand::ShowStat {
                    pattern: pattern.to_string(),
                })
            }
            ["show" | "sh", "stat" | "stats" | "statistics", ..] => Err(UsageError::from(
                "usage: show stat mail (or a name or pattern: show stat mail.dead, show stat mail.*threads*)"
            )),
            ["show" | "sh", "message", _] => Ok(ConsoleCommand::ShowMessage {
                qid: words[2].to_string(),
            }),
            ["show" | "sh", "message", ..] => Err(UsageError::from("usage: show message <queue-id>")),
            // Outbound TLS policy (issue 28): osesctl holds the policy module and the counts.
            ["show" | "sh", "tls", "policy", _] => Ok(ConsoleCommand::Tell {
                task: TaskName::Osesctl,
                command: TellCommand::Other(vec![
                    "show".into(),
                    "tls".into(),
                    "policy".into(),
                    words[3].to_ascii_lowercase(),
                ]),
            }),
            ["show" | "sh", "tls", "policy", ..] => Err(UsageError::from("usage: show tls policy <domain>")),
            ["show" | "sh", "tls", "reports" | "report"] => Ok(ConsoleCommand::Tell {
                task: TaskName::Osesctl,
                command: TellCommand::Other(vec!["show".into(), "tls".into(), "reports".into()]),
            }),
            ["show" | "sh", "shaping"] => Ok(ConsoleCommand::Tell {
                task: TaskName::Osesctl,
                command: TellCommand::Other(vec!["show".into(), "shaping".into()]),
            }),
            _ => return None,
        })
    }

    /// Operations on one message or one destination's messages, `track`, `trace`, `set config`.
    fn parse_message_op(l: &[&str], words: &[&str]) -> Option<Result<ConsoleCommand, UsageError>> {
        Some(match l {
            [verb @ ("hold" | "release" | "delete"), "domain" | "destination", _] => {
                Ok(ConsoleCommand::Bulk {
                    op: match *verb {
                        "hold" => crate::store::BulkOp::Hold,
                        "release" => crate::store::BulkOp::Release,
                        _ => crate::store::BulkOp::Delete,
                    },
                    domain: words[2].to_ascii_lowercase(),
                })
            }
            ["hold", _] => Ok(ConsoleCommand::Hold {
                qid: words[1].to_string(),
            }),
            ["release", "dead", _] => Ok(ConsoleCommand::ReleaseDead {
                qid: words[2].to_string(),
            }),
            ["release", _] => Ok(ConsoleCommand::Release {
                qid: words[1].to_string(),
            }),
            ["bounce", _] => Ok(ConsoleCommand::Bounce {
                qid: words[1].to_string(),
            }),
            ["bounce", ..] => Err(UsageError::from("usage: bounce <queue-id>")),
            ["track", ..] => crate::tracking::parse_query(&words[1..])
                .map(ConsoleCommand::Track)
                .map_err(|e| UsageError(e.to_string())),
            ["delete", _] => Ok(ConsoleCommand::Delete {
                qid: words[1].to_string(),
            }),
            ["hold" | "release" | "delete", ..] => Err(UsageError::from(format!(
                "usage: {} <queue-id> (or release dead <queue-id>)",
                l[0]
            ))),
            ["trace", _] => Ok(ConsoleCommand::Trace {
                address: words[1].trim_matches(|c| c == '<' || c == '>').to_string(),
            }),
            ["trace", ..] => Err(UsageError::from(
                "usage: trace <address>, e.g. `trace alice@localhost`",
            )),
            ["set", "config", _, _] => Ok(ConsoleCommand::SetConfig {
                knob: words[2].to_string(),
                value: words[3].to_string(),
            }),
            ["set", "config", ..] => Err(UsageError::from(
                "usage: set config <knob> <value>, e.g. `set config SMTPDebugIO 3`",
            )),
            _ => return None,
        })
    }

    /// `route`, `quit` and `tell <task> …`.
    fn parse_delivery(l: &[&str], words: &[&str]) -> Option<Result<ConsoleCommand, UsageError>> {
        Some(match l {
            ["route", "localdelivery" | "local"] => Ok(ConsoleCommand::RouteLocalDelivery),
            ["route", _] => Ok(ConsoleCommand::Tell {
                task: TaskName::Osesctl,
                command: TellCommand::Other(vec!["route".into(), words[1].to_string()]),
            }),
            // Domino's `Route` alone: every pending destination now.
            ["route"] => Ok(ConsoleCommand::Tell {
                task: TaskName::Osesctl,
                command: TellCommand::Other(vec!["route".into()]),
            }),
            ["route", ..] => Err(UsageError::from(
                "usage: route [<domain> | localdelivery] (try those messages now)",
            )),
            ["quit"] => Ok(ConsoleCommand::Tell {
                task: TaskName::Smtpmta,
                command: TellCommand::Quit,
            }),
            // Traffic shaping lives with the outbound controller; the operator says it to
            // the router, as Domino's operators say everything about delivery.
            ["tell", "router", "suspend" | "resume", ..] => Ok(ConsoleCommand::Tell {
                task: TaskName::Osesctl,
                command: TellCommand::Other(words[2..].iter().map(|w| w.to_string()).collect()),
            }),
            ["tell", "smtpmta", "drain", ..] => {
                DrainCommand::parse(&words[3..]).map(|drain| ConsoleCommand::Tell {
                    task: TaskName::Smtpmta,
                    command: TellCommand::Drain(drain),
                })
            }
            ["tell", task, ..] if handler_controller(task).is_some() => {
                let (controller, transport) = handler_controller(task).expect("checked");
                Err(UsageError::from(format!(
                    "{task} is a session handler of {controller}: it takes no TELL commands; \
                     it stops with its controller (`tell smtpmta stop {transport} transport`)"
                )))
            }
            ["tell", task, rest @ ..] if !rest.is_empty() => task
                .parse()
                .map_err(|e: mta_types::task::UnknownTask| UsageError(e.to_string()))
                .map(|task: TaskName| ConsoleCommand::Tell {
                    task,
                    command: TellCommand::parse(&words[2..]),
                }),
            ["tell", ..] => Err(UsageError::from(
                "usage: tell <task> <command>, e.g. `tell smtpmta quit`",
            )),
            _ => return None,
        })
    }
}

/// For a session handler's name (`oseshlr0`, `iseshlr12`): its controller and its
/// transport's word (`outbound`, `inbound`). As in Domino, a handler cannot be told
/// anything (seed 002, exercise 1).
fn handler_controller(name: &str) -> Option<(&'static str, &'static str)> {
    let (controller, transport, digits) = if let Some(d) = name.strip_prefix("oseshlr") {
        ("osesctl", "outbound", d)
    } else if let Some(d) = name.strip_prefix("iseshlr") {
        ("isesctl", "inbound", d)
    } else {
        return None;
    };
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then_some((controller, transport))
}

/// One row of `show tasks`: a task, or a session handler of a controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRow {
    pub name: String,
    pub pid: Option<u32>,
    pub state: RowState,
    /// The Domino description, e.g. "Inbound Session Controller".
    pub description: String,
    /// What it is doing now, e.g. "listening on 127.0.0.1:2525".
    pub detail: String,
    /// Unix ms since when it is in this state.
    pub since_ms: Option<u64>,
    /// Unexpected exits so far (tasks only).
    pub restarts: u32,
    /// For a session handler: its controller.
    pub parent: Option<String>,
    /// The task's own counters since it started (`TaskStatus::counters`; none for handlers
    /// and tasks that are not running).
    pub counters: Vec<(String, u64)>,
}

/// A row's state in `show tasks`: a task as the supervisor runs it (`Starting` …
/// `Stopped`), or a session handler (`Idle`, `Busy`, `Stopping`). Text only in the
/// renderers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowState {
    Starting,
    Running,
    Restarting,
    Stopping,
    Stopped,
    Idle,
    Busy,
}

impl RowState {
    pub fn as_str(self) -> &'static str {
        match self {
            RowState::Starting => "starting",
            RowState::Running => "running",
            RowState::Restarting => "restarting",
            RowState::Stopping => "stopping",
            RowState::Stopped => "stopped",
            RowState::Idle => "idle",
            RowState::Busy => "busy",
        }
    }
}

impl std::fmt::Display for RowState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One row of `show task time`: a task's process times, from `/proc/<pid>/stat`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskTime {
    pub name: String,
    pub pid: Option<u32>,
    /// For a session handler: its controller.
    pub parent: Option<String>,
    /// Unix ms when the process started (a handler: when it took up its current state).
    pub started_ms: Option<u64>,
    pub uptime_secs: Option<u64>,
    /// User plus system CPU time of the process; a handler runs inside its controller's
    /// process, so it has none of its own (`None`).
    pub cpu_ms: Option<u64>,
    /// User part of `cpu_ms`.
    pub user_ms: Option<u64>,
    /// System part of `cpu_ms`.
    pub system_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub version: String,
    pub hostname: String,
    pub data_dir: String,
    pub config: String,
    pub pid: u32,
    pub started_ms: u64,
    pub uptime_secs: u64,
    /// Bytes in the spool's segments.
    pub spool_bytes: u64,
    /// 003's figure 10: mail waiting in any queue, dead and held mail.
    #[serde(default)]
    pub pending_mail: u64,
    #[serde(default)]
    pub dead_mail: u64,
    #[serde(default)]
    pub held_mail: u64,
    /// SMTP sessions now (inbound and outbound) and the peak since start, with when.
    #[serde(default)]
    pub sessions: u64,
    #[serde(default)]
    pub sessions_peak: u64,
    #[serde(default)]
    pub sessions_peak_ms: u64,
    /// Transactions (messages received, recipients delivered, relayed or failed) in the
    /// last minute and hour, and the most in one minute, with when.
    #[serde(default)]
    pub transactions_minute: u64,
    #[serde(default)]
    pub transactions_hour: u64,
    #[serde(default)]
    pub transactions_peak: u64,
    #[serde(default)]
    pub transactions_peak_ms: u64,
}

/// `show queue`: counts per queue and state, and the parked messages one by one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueReport {
    /// `(state label, queue name, messages)`.
    pub counts: Vec<(String, String, u64)>,
    /// Held, Dead and Conversion Error messages: the first page of each state.
    pub parked: Vec<ParkedMessage>,
    /// Parked messages not listed (the counts above have them all).
    #[serde(default)]
    pub parked_more: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedMessage {
    pub qid: String,
    pub state: String,
    pub from: String,
    pub recipients: Vec<String>,
    pub size: u64,
    pub note: String,
}

/// One statistic of `show stat mail`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statistic {
    /// Domino's name, e.g. `Mail.Delivered`.
    pub name: String,
    pub value: u64,
    /// `""` for counts, `"ms"`, `"bytes"`, `"/min"`.
    pub unit: String,
    /// A statistic whose value is text (`Mail.Domain`); `value` is then 0.
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleReply {
    Tasks(Vec<TaskRow>),
    /// `show task time`.
    TaskTimes(Vec<TaskTime>),
    Queue(QueueReport),
    Server(ServerInfo),
    /// `(key, value)` pairs in file order.
    Config(Vec<(String, String)>),
    Stats(Vec<Statistic>),
    /// `show message`: the native document as stored, and where it is.
    Message(Box<mta_types::MessageRecord>),
    /// `show message` of a message no longer queued: its history.
    History(Box<mta_types::tracking::TrackEntry>),
    /// `track`: one page of matching histories, and where the next page starts.
    Track(crate::tracking::TrackPage),
    /// `tell router show`.
    Router(crate::transfers::RouterReport),
    /// `show clients`.
    Clients(crate::clients::ClientReport),
    /// `show fleet`.
    Fleet(crate::fleet::FleetReport),
    Text(String),
    Error(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tell(task: TaskName, command: TellCommand) -> ConsoleCommand {
        ConsoleCommand::Tell { task, command }
    }

    #[test]
    fn parses_domino_spelling() {
        use TaskName::{Router, Smtpmta};
        let drain_to = DrainCommand::To {
            target: "mx2:25".into(),
            include: DrainScope {
                held: true,
                dead: true,
            },
        };
        let parsed = [
            ("SHOW TASKS", ConsoleCommand::ShowTasks),
            ("sh tasks", ConsoleCommand::ShowTasks),
            ("Show Task Time", ConsoleCommand::ShowTaskTime),
            ("sh stat mail", ConsoleCommand::ShowStatMail),
            (
                "tell smtpmta stop outbound transport",
                tell(Smtpmta, TellCommand::StopOutboundTransport),
            ),
            (
                "Tell Router show status",
                tell(Router, TellCommand::ShowStatus),
            ),
            (
                "Release Dead 35AGV0B7E5J00",
                ConsoleCommand::ReleaseDead {
                    qid: "35AGV0B7E5J00".into(),
                },
            ),
            (
                "trace <Alice@localhost>",
                ConsoleCommand::Trace {
                    address: "Alice@localhost".into(),
                },
            ),
            (
                "Tell SMTPMTA drain to mx2:25 include held,dead",
                tell(Smtpmta, TellCommand::Drain(drain_to)),
            ),
            (
                "tell smtpmta drain status",
                tell(Smtpmta, TellCommand::Drain(DrainCommand::Status)),
            ),
            ("tell smtpmta refresh", tell(Smtpmta, TellCommand::Refresh)),
        ];
        for (line, expected) in parsed {
            assert_eq!(ConsoleCommand::parse(line).unwrap(), expected, "{line}");
        }
        let refused = [
            ("tell oseshlr0 quit", "session handler of osesctl"),
            ("tell ISESHLR2 show status", "stop inbound transport"),
            ("tell nobody quit", "unknown task"),
            ("frobnicate", ""),
            (
                "tell smtpmta drain to mx2 include queued",
                "cannot include `queued`",
            ),
            ("tell smtpmta drain", "usage"),
        ];
        for (line, why) in refused {
            let e = ConsoleCommand::parse(line).unwrap_err().to_string();
            assert!(e.contains(why), "{line}: {e}");
        }
    }
}
