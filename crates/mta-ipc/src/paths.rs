//! Where the sockets and the pid file live, relative to `<data_dir>/run/`.

use mta_types::TaskName;
use std::path::{Path, PathBuf};

pub fn supervisor_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("smtpmta.sock")
}

pub fn task_socket(run_dir: &Path, task: TaskName) -> PathBuf {
    run_dir.join(format!("{}.sock", task.as_str()))
}

pub fn pid_file(run_dir: &Path) -> PathBuf {
    run_dir.join("smtpmta.pid")
}
