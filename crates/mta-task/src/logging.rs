//! Logging for every executable: one line per event on stderr, starting with the task
//! name — the supervisor's children share its stderr, so the name tells the lines apart.
//! Message events carry `qid=…` through the spans tasks open when they claim work.

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

/// `RUST_LOG` overrides the default level (`info`).
pub fn init_logging(task: TaskName) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sled=warn"));
    let format = tracing_subscriber::fmt::format()
        .with_target(false)
        .with_ansi(false)
        .compact();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(Prefixed {
            task: task.as_str(),
            inner: format,
        })
        .try_init();
}
