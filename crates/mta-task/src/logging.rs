//! Logging for every executable: one line per event on stderr, starting with the task
//! name — the supervisor's children share its stderr, so the name tells the lines apart.
//! Message events carry `qid=…` through the spans tasks open when they claim work.
//!
//! `SMTPMTA_LOG_FORMAT=json` (set by `smtpmta --log-format json`, inherited by every task)
//! writes one JSON object per line instead, for log shippers: `task`, `task_pid`, `timestamp`,
//! `level`, the event's fields (`message`, `qid`, `client`, …) and its spans' fields.
//!
//! Under systemd the lines go to the journal (`JOURNAL_STREAM` names the stream stderr is
//! connected to), which stamps each line itself: there the lines carry no timestamp of
//! their own, so `journalctl` shows one.

use mta_types::TaskName;
use std::fmt;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

struct Prefixed<F> {
    task: &'static str,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for Prefixed<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "{}[{}]: ", self.task, std::process::id())?;
        self.inner.format_event(ctx, writer, event)
    }
}

/// The environment variable that selects the log format (`text` or `json`).
pub const LOG_FORMAT_ENV: &str = "SMTPMTA_LOG_FORMAT";

/// A JSON line with the task's name and pid in front of the event's own keys.
struct JsonTagged<F> {
    task: &'static str,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for JsonTagged<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        // The inner formatter writes one object: open ours and continue with its keys.
        let rest = line.strip_prefix('{').ok_or(fmt::Error)?;
        write!(
            writer,
            "{{\"task\":\"{}\",\"task_pid\":{},{rest}",
            self.task,
            std::process::id()
        )
    }
}

/// True when stderr is the journal's stream: `JOURNAL_STREAM` is `<device>:<inode>` of it
/// (systemd.exec(5)); a child whose stderr was redirected elsewhere inherits the variable
/// but not the stream, hence the comparison.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    // dev_t and ino_t are u64 here but not on every target.
    #[allow(clippy::unnecessary_cast)]
    let (st_dev, st_ino) = (stat.st_dev as u64, stat.st_ino as u64);
    dev.parse::<u64>().ok() == Some(st_dev) && ino.parse::<u64>().ok() == Some(st_ino)
}

/// `RUST_LOG` overrides the default level (`info`).
pub fn init_logging(task: TaskName) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sled=warn"));
    let format = tracing_subscriber::fmt::format()
        .with_target(false)
        .with_ansi(false)
        .compact();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var(LOG_FORMAT_ENV).is_ok_and(|v| v == "json");
    // The formats are different types, hence one arm each.
    let _ = if json {
        let format = tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_target(false);
        builder
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(JsonTagged {
                task: task.as_str(),
                inner: format,
            })
            .try_init()
    } else if stderr_is_journal() {
        builder
            .event_format(Prefixed {
                task: task.as_str(),
                inner: format.without_time(),
            })
            .try_init()
    } else {
        builder
            .event_format(Prefixed {
                task: task.as_str(),
                inner: format,
            })
            .try_init()
    };
}
