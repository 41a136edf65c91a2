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
//!
//! `debug_outfile` (003: "all debug output also written to this file"): the lines of the
//! debug knobs — events with target [`mta_types::DEBUG_TARGET`] — are also appended to
//! that file, in the text format with a timestamp, whichever format stderr has. Every
//! task opens it in append mode and writes each line with one `write`, so the tasks'
//! lines interleave whole.

use mta_types::TaskName;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;

/// The task's name and pid in front of each event the inner formatter writes, so the
/// lines of the tasks sharing the supervisor's stderr can be told apart.
struct Tagged<F> {
    task: &'static str,
    style: TagStyle,
    inner: F,
}

#[derive(Clone, Copy)]
enum TagStyle {
    /// `router[4242]: ` before a text line.
    Prefix,
    /// `"task":"router","task_pid":4242` before the keys of a JSON line.
    JsonKeys,
}

impl<F> Tagged<F> {
    fn new(task: TaskName, style: TagStyle, inner: F) -> Self {
        Tagged {
            task: task.as_str(),
            style,
            inner,
        }
    }
}

impl<S, N, F> FormatEvent<S, N> for Tagged<F>
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
        let (task, pid) = (self.task, std::process::id());
        match self.style {
            TagStyle::Prefix => {
                write!(writer, "{task}[{pid}]: ")?;
                self.inner.format_event(ctx, writer, event)
            }
            TagStyle::JsonKeys => {
                let mut line = String::new();
                self.inner
                    .format_event(ctx, Writer::new(&mut line), event)?;
                // The inner formatter writes one object: open ours and continue with its keys.
                let rest = line.strip_prefix('{').ok_or(fmt::Error)?;
                write!(writer, "{{\"task\":\"{task}\",\"task_pid\":{pid},{rest}")
            }
        }
    }
}

/// The environment variable that selects the log format (`text` or `json`).
pub const LOG_FORMAT_ENV: &str = "SMTPMTA_LOG_FORMAT";

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

/// Where this process copies its debug lines (`debug_outfile`); none by default.
#[derive(Clone, Default)]
pub struct DebugOutfile(Arc<Mutex<Option<(PathBuf, std::fs::File)>>>);

impl DebugOutfile {
    /// Switches to `path` (opened for appending, created if missing), or to none. The same
    /// path again keeps the open file. On error the previous file stays in use.
    pub fn set(&self, path: Option<&Path>) -> std::io::Result<()> {
        let mut slot = self.0.lock().expect("outfile lock");
        match path {
            None => *slot = None,
            Some(p) if slot.as_ref().is_some_and(|(open, _)| open == p) => {}
            Some(p) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?;
                *slot = Some((p.to_path_buf(), file));
            }
        }
        Ok(())
    }
}

/// One formatted event: the fmt layer writes it with one `write_all`.
pub struct OutfileWriter(DebugOutfile);

impl std::io::Write for OutfileWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some((_, file)) = self.0 .0.lock().expect("outfile lock").as_mut() {
            // A full disk must not stop the task: the line is also on stderr.
            let _ = file.write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for DebugOutfile {
    type Writer = OutfileWriter;

    fn make_writer(&'a self) -> OutfileWriter {
        OutfileWriter(self.clone())
    }
}

fn outfile_layer<S>(task: TaskName, outfile: &DebugOutfile) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let format = tracing_subscriber::fmt::format()
        .with_target(false)
        .with_ansi(false)
        .compact();
    tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(outfile.clone())
        .event_format(Tagged::new(task, TagStyle::Prefix, format))
        .with_filter(filter_fn(|meta| meta.target() == mta_types::DEBUG_TARGET))
}

/// `RUST_LOG` overrides the default level (`info`). The returned handle switches the
/// `debug_outfile` copy on and off.
pub fn init_logging(task: TaskName) -> DebugOutfile {
    let outfile = DebugOutfile::default();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sled=warn"));
    let format = tracing_subscriber::fmt::format()
        .with_target(false)
        .with_ansi(false)
        .compact();
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(outfile_layer(task, &outfile));
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(false)
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
        registry
            .with(
                stderr
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .event_format(Tagged::new(task, TagStyle::JsonKeys, format)),
            )
            .try_init()
    } else if stderr_is_journal() {
        registry
            .with(stderr.event_format(Tagged::new(task, TagStyle::Prefix, format.without_time())))
            .try_init()
    } else {
        registry
            .with(stderr.event_format(Tagged::new(task, TagStyle::Prefix, format)))
            .try_init()
    };
    outfile
}
