//! mtacon — the server console.
//!
//! `mtacon [--config PATH] [--json] "show tasks"` runs one command and exits (non-zero on
//! error; 2 for a command it cannot parse, or `delete` without `--yes`); `mtacon [--config PATH]` alone opens an interactive prompt with line editing,
//! history and `help`. Commands are parsed by `mta_ipc::console` and executed by the
//! supervisor over `<data_dir>/run/smtpmta.sock`.
//!
//! `--json` may also end the command itself (`show queue --json`, in one-shot mode or at the
//! prompt). When the reader of stdout goes away (`mtacon "show tasks" | head -1`) mtacon
//! stops writing and exits 0, as other Unix filters do.

mod clients;
mod fleet;
mod render;
mod table;

/// `eprintln!` that never panics: a console whose stderr is closed has no one to tell.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

use clap::Parser;
use mta_config::Config;
use mta_ipc::console::{ConsoleCommand, ConsoleReply};
use mta_ipc::SupervisorClient;
use mta_types::TaskName;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(version, about = "smtpmta server console")]
struct Args {
    /// The configuration file of the suite to talk to.
    #[arg(long, default_value = "etc/smtpmta.toml")]
    config: PathBuf,
    /// Print the reply as JSON (for scripts).
    #[arg(long)]
    json: bool,
    /// Answer yes to confirmations (one-shot mode).
    #[arg(long)]
    yes: bool,
    /// The command, e.g. `show tasks` (quoted or as separate words). None: interactive.
    command: Vec<String>,
}

/// Long enough for `tell smtpmta quit` to stop every task in order.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Target::find(&args.config) {
        Ok(c) => c,
        Err(e) => {
            note!("mtacon: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            note!("mtacon: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.command.is_empty() {
        runtime.block_on(interactive(&config, args.json))
    } else {
        let (line, json) = json_suffix(&args.command.join(" "));
        runtime.block_on(one_shot(&config, &line, args.json || json, args.yes))
    }
}

/// Splits a trailing `--json` off a command line: `show tasks --json` is `show tasks` as JSON.
fn json_suffix(line: &str) -> (String, bool) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let json = words.contains(&"--json");
    let rest: Vec<&str> = words.into_iter().filter(|w| *w != "--json").collect();
    (rest.join(" "), json)
}

/// Writes `text` and a newline to stdout. A reader that went away (EPIPE) is not an error
/// for a console: the caller stops and exits 0, like `ls | head -1`.
fn out(text: &str) -> Result<(), Closed> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let written = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Closed),
        Err(e) => {
            note!("mtacon: cannot write to stdout: {e}");
            Err(Closed)
        }
    }
}

/// Stdout is closed (or failing): nothing more can be shown.
struct Closed;

/// The suite to talk to: its configuration file and its `run/` folder.
struct Target {
    path: PathBuf,
    run_dir: PathBuf,
}

impl Target {
    /// Loads the configuration; when it (or the directory it names) is broken, the console
    /// still reaches the suite through `data_dir` alone — that is when the operator needs it
    /// (e.g. to `tell smtpmta refresh` after fixing the file).
    fn find(path: &std::path::Path) -> Result<Target, String> {
        let error = match Config::load(path) {
            Ok(c) => {
                return Ok(Target {
                    run_dir: c.run_dir(),
                    path: c.path,
                })
            }
            Err(e) => e.to_string(),
        };
        let text = std::fs::read_to_string(path).map_err(|_| error.clone())?;
        let table: toml::Table = text.parse().map_err(|_| error.clone())?;
        let data_dir = table
            .get("data_dir")
            .and_then(|v| v.as_str())
            .unwrap_or("var");
        let path = std::fs::canonicalize(path).map_err(|_| error.clone())?;
        let base = path.parent().unwrap_or(std::path::Path::new("/"));
        note!("mtacon: warning: {error}");
        Ok(Target {
            run_dir: base.join(data_dir).join("run"),
            path,
        })
    }
}

async fn connect(config: &Target) -> Result<SupervisorClient, String> {
    SupervisorClient::connect(&config.run_dir, TaskName::Mtacon)
        .await
        .map_err(|e| {
            format!(
                "smtpmta is not running for {} ({e}); start it with scripts/start",
                config.path.display()
            )
        })
}

async fn one_shot(config: &Target, line: &str, json: bool, yes: bool) -> ExitCode {
    let command = match ConsoleCommand::parse(line) {
        Ok(c) => c,
        Err(e) => {
            note!("mtacon: {e}");
            return ExitCode::from(2);
        }
    };
    if let (ConsoleCommand::Delete { qid }, false) = (&command, yes) {
        note!("mtacon: `delete {qid}` removes the message for good; add --yes to confirm");
        return ExitCode::from(2);
    }
    if let (
        ConsoleCommand::Bulk {
            op: mta_ipc::store::BulkOp::Delete,
            domain,
        },
        false,
    ) = (&command, yes)
    {
        note!(
            "mtacon: `delete domain {domain}` drops that destination's mail for good; add --yes to confirm"
        );
        return ExitCode::from(2);
    }
    if command == ConsoleCommand::Help {
        let _ = out(&mta_ipc::console::help_text());
        return ExitCode::SUCCESS;
    }
    let mut client = match connect(config).await {
        Ok(c) => c,
        Err(e) => {
            note!("mtacon: {e}");
            return ExitCode::FAILURE;
        }
    };
    match ask(&mut client, command).await {
        Ok(reply) => print_reply(&reply, json).unwrap_or(ExitCode::SUCCESS),
        Err(e) => {
            note!("mtacon: no reply from smtpmta: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sends one command. A `track` answer comes a page (one frame) at a time: the pages are
/// fetched in turn and joined, up to `tracking::MAX_ROWS` histories (the reply then says
/// where the rest starts).
async fn ask(
    client: &mut SupervisorClient,
    command: ConsoleCommand,
) -> Result<ConsoleReply, mta_ipc::IpcError> {
    let ConsoleCommand::Track(mut query) = command else {
        return client.console(command, REPLY_TIMEOUT).await;
    };
    let mut all = mta_ipc::tracking::TrackPage::default();
    loop {
        match client
            .console(ConsoleCommand::Track(query.clone()), REPLY_TIMEOUT)
            .await?
        {
            ConsoleReply::Track(page) => {
                all.rows.extend(page.rows);
                all.next = page.next;
                match page.next {
                    Some(next) if all.rows.len() < mta_ipc::tracking::MAX_ROWS => {
                        query.after = Some(next)
                    }
                    _ => break,
                }
            }
            other => return Ok(other),
        }
    }
    Ok(ConsoleReply::Track(all))
}

/// Prints a reply; the exit code says whether the command failed. A closed stdout is not a
/// failure of the command (the reader had what it wanted).
fn print_reply(reply: &ConsoleReply, json: bool) -> Result<ExitCode, Closed> {
    if json {
        match serde_json::to_string_pretty(&render::to_json(reply)) {
            Ok(text) => out(&text)?,
            Err(e) => note!("mtacon: {e}"),
        }
    } else if let ConsoleReply::Error(e) = reply {
        note!("{e}");
    } else {
        out(&render::to_text(reply))?;
    }
    Ok(if matches!(reply, ConsoleReply::Error(_)) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn interactive(config: &Target, json: bool) -> ExitCode {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            note!("mtacon: cannot open the terminal: {e}");
            return ExitCode::FAILURE;
        }
    };
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".mtacon_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    if out(&format!(
        "smtpmta console for {} — `help` lists the commands, `exit` leaves.",
        config.path.display()
    ))
    .is_err()
    {
        return ExitCode::SUCCESS;
    }
    let mut client: Option<SupervisorClient> = None;
    loop {
        let line = match editor.readline("> ") {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(_) => break,
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        if matches!(line, "exit" | "bye") {
            break;
        }
        if answer(&mut editor, &mut client, config, line, json)
            .await
            .is_err()
        {
            break;
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    ExitCode::SUCCESS
}

/// One line typed at the console: parsed, confirmed if it deletes, sent (connecting first
/// if need be), and its reply printed. `Err`: our output is gone, the console ends.
async fn answer(
    editor: &mut rustyline::DefaultEditor,
    client: &mut Option<SupervisorClient>,
    config: &Target,
    line: &str,
    json: bool,
) -> Result<(), Closed> {
    let (line, json_once) = json_suffix(line);
    let json = json || json_once;
    let command = match ConsoleCommand::parse(&line) {
        Ok(c) => c,
        Err(e) => return out(&e),
    };
    if command == ConsoleCommand::Help {
        let help = format!("{}\nexit  leave the console", mta_ipc::console::help_text());
        return out(&help);
    }
    let confirm = match &command {
        ConsoleCommand::Delete { qid } => Some(qid.clone()),
        ConsoleCommand::Bulk {
            op: mta_ipc::store::BulkOp::Delete,
            domain,
        } => Some(format!("all mail for {domain}")),
        _ => None,
    };
    if let Some(what) = confirm {
        let answer = editor.readline(&format!("delete {what}? [y/N] "));
        if !matches!(
            answer.as_deref().map(str::trim),
            Ok("y" | "Y" | "yes" | "YES")
        ) {
            return out("not deleted");
        }
    }
    if client.is_none() {
        match connect(config).await {
            Ok(c) => *client = Some(c),
            Err(e) => return out(&e),
        }
    }
    let c = client.as_mut().expect("connected above");
    match ask(c, command).await {
        Ok(reply) => print_reply(&reply, json).map(|_| ()),
        Err(e) => {
            *client = None;
            out(&format!("no reply from smtpmta: {e}"))
        }
    }
}
