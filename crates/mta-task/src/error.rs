//! The errors a task's job hands back to the skeleton: a batch that must be retried
//! (`WorkError`), a console command that could not be done (`TellError`), a new set of
//! debug knobs that could not be taken (`KnobError`). The console shows their text.

use mta_types::TaskName;

/// Why a claimed batch was not worked: the skeleton logs it and releases the batch, so the
/// next pass retries it.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    /// The thread doing the work (`read_work`, `spawn_blocking`) panicked.
    #[error("{what} panicked: {detail}")]
    Panicked { what: &'static str, detail: String },
    /// What the work wrote could not be made durable, or could not be written.
    #[error("{what}: {detail}")]
    Output { what: &'static str, detail: String },
}

impl WorkError {
    /// A joined blocking task that did not finish (`spawn_blocking(..).await`).
    pub fn panicked(what: &'static str, e: tokio::task::JoinError) -> WorkError {
        WorkError::Panicked {
            what,
            detail: e.to_string(),
        }
    }
}

/// Why a TELL command (or a refresh) was not done; its text is the console's answer.
#[derive(Debug, thiserror::Error)]
pub enum TellError {
    /// A command this task does not answer; `hint` says what it does answer (may be empty).
    #[error("{task} does not know `{command}`{}", hint_text(.hint))]
    Unknown {
        task: TaskName,
        command: String,
        hint: &'static str,
    },
    /// Understood, but it could not be done: the reason, as the operator reads it.
    #[error("{0}")]
    Failed(String),
}

impl TellError {
    /// `task` does not answer `command`; `hint` says what it does answer.
    pub fn unknown(task: TaskName, command: impl std::fmt::Display, hint: &'static str) -> Self {
        let command = command.to_string();
        TellError::Unknown {
            task,
            command,
            hint,
        }
    }
}

fn hint_text(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!(" ({hint})")
    }
}

/// Why a task kept its debug knobs (`set config`).
#[derive(Debug, thiserror::Error)]
pub enum KnobError {
    /// The new `debug_outfile` cannot be opened.
    #[error("debug_outfile {path}: {source}")]
    Outfile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}
