//! One supervisor per data_dir: an exclusive lock on the pid file.

use anyhow::{bail, Context};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Held for the supervisor's lifetime; removes the pid file when released.
pub struct Instance {
    path: PathBuf,
    _file: File,
}

impl Instance {
    pub fn acquire(pid_path: &Path, data_dir: &Path) -> anyhow::Result<Instance> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(pid_path)
            .with_context(|| format!("cannot open the pid file {}", pid_path.display()))?;
        // flock(2), held as long as the file stays open.
        if file.try_lock().is_err() {
            let mut other = String::new();
            let _ = file.read_to_string(&mut other);
            bail!(
                "smtpmta is already running on data_dir {} (pid {}); stop it first with `mtacon \"tell smtpmta quit\"`",
                data_dir.display(),
                other.trim()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_all()?;
        Ok(Instance {
            path: pid_path.to_path_buf(),
            _file: file,
        })
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Removed while still locked, so a new supervisor cannot slip in between.
        let _ = std::fs::remove_file(&self.path);
    }
}
