//! Local delivery to a Maildir (https://cr.yp.to/proto/maildir.html).
//!
//! A message is written to `tmp/<unique>`, fsynced, renamed into `new/<unique>,S=<size>`, and
//! the `new/` directory is fsynced (once per Maildir per batch: `deliver_unsynced`, then
//! `sync_new`), so that once the batch's outcomes are committed the message survives a
//! crash; until then the recipient stays pending and is retried. A failed delivery leaves
//! nothing behind in `tmp/` (nor in `new/`).
//!
//! Line endings: the spool holds content with CRLF line endings (as received over SMTP). On
//! disk a Maildir holds LF line endings, as Postfix's `local`/`virtual` and Dovecot's LDA write
//! it and as every Maildir reader expects, so CRLF is turned into LF while writing (streaming,
//! through one buffer; a lone CR is kept as it is). The `,S=<size>` in the name is the size of
//! the file on disk, after that conversion (Dovecot reads it for quota).

use mta_types::Enhanced;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// One user's Maildir: `root/{tmp,new,cur}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Maildir {
    root: PathBuf,
}

/// A local delivery that did not happen. Every case is transient: nothing the sender did can
/// make a write to our own disk fail (disk full, quota, permissions, a missing mount), so the
/// recipient is retried later and never dropped.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("cannot create maildir directory {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot sync {path} to disk: {source}")]
    Sync { path: PathBuf, source: io::Error },
    #[error("cannot move {from} to {to}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
}

impl DeliveryError {
    /// Retry later (true for every local delivery error; see the type's documentation).
    pub fn is_transient(&self) -> bool {
        match self {
            DeliveryError::Create { .. }
            | DeliveryError::Write { .. }
            | DeliveryError::Sync { .. }
            | DeliveryError::Rename { .. } => true,
        }
    }

    /// The RFC 3463 code for the recipient's status and log line.
    pub fn enhanced_status(&self) -> Enhanced {
        match self.io_error().raw_os_error() {
            Some(libc::EDQUOT) => Enhanced::new(4, 2, 2), // mailbox full
            Some(libc::ENOSPC) => Enhanced::new(4, 3, 1), // mail system full
            _ => Enhanced::new(4, 3, 0),
        }
    }

    pub fn io_error(&self) -> &io::Error {
        match self {
            DeliveryError::Create { source, .. }
            | DeliveryError::Write { source, .. }
            | DeliveryError::Sync { source, .. }
            | DeliveryError::Rename { source, .. } => source,
        }
    }
}

impl Maildir {
    pub fn new(root: impl Into<PathBuf>) -> Maildir {
        Maildir { root: root.into() }
    }

    #[cfg_attr(not(test), allow(dead_code))] // for tests and diagnostics
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates `tmp`, `new` and `cur` (and the root and its parents) with mode 0700 where they
    /// are missing. Every directory created is made durable in its parent (a parent
    /// fsync), so a message delivered into a new Maildir survives a power loss too.
    pub fn ensure(&self) -> io::Result<()> {
        let mut missing = Vec::new();
        let mut dir = self.root.clone();
        while !dir.is_dir() {
            missing.push(dir.clone());
            if !dir.pop() {
                break;
            }
        }
        let mut builder = DirBuilder::new();
        builder.mode(0o700);
        let mut created = Vec::new();
        for d in missing.iter().rev() {
            match builder.create(d) {
                Ok(()) => created.push(d.clone()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        for sub in ["tmp", "new", "cur"] {
            match builder.create(self.root.join(sub)) {
                Ok(()) => created.push(self.root.join(sub)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let mut parents: Vec<&Path> = created.iter().filter_map(|d| d.parent()).collect();
        parents.sort();
        parents.dedup();
        for parent in parents {
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    }

    /// Writes `prefix` (the trace headers) followed by `content` as one new message and
    /// returns its final path in `new/`, durably. Creates the Maildir if `tmp/` is missing.
    /// (The router delivers a batch with `deliver_unsynced` and one `sync_new` per Maildir.)
    #[cfg(test)]
    pub fn deliver(&self, prefix: &[u8], content: &[u8]) -> Result<PathBuf, DeliveryError> {
        let final_path = self.deliver_unsynced(prefix, content)?;
        // If the directory sync fails the message may or may not survive a crash: take it
        // back and let the retry deliver it again.
        let final_guard = RemoveOnDrop(Some(final_path.clone()));
        self.sync_new()?;
        final_guard.disarm();
        Ok(final_path)
    }

    /// Like `deliver`, but the rename into `new/` is not yet durable: the caller syncs
    /// `new/` once (`sync_new`) for every message it delivered into this Maildir, before it
    /// reports any of them delivered. One directory sync per mailbox per batch instead of
    /// one per message. The message file itself is synced here.
    pub fn deliver_unsynced(
        &self,
        prefix: &[u8],
        content: &[u8],
    ) -> Result<PathBuf, DeliveryError> {
        let name = unique_name();
        let tmp_path = self.root.join("tmp").join(&name);
        let file = match create_new(&tmp_path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.ensure().map_err(|source| DeliveryError::Create {
                    path: self.root.clone(),
                    source,
                })?;
                create_new(&tmp_path)
            }
            other => other,
        }
        .map_err(|source| DeliveryError::Write {
            path: tmp_path.clone(),
            source,
        })?;
        let guard = RemoveOnDrop(Some(tmp_path.clone()));

        let size = write_lf(&file, &[prefix, content]).map_err(|source| DeliveryError::Write {
            path: tmp_path.clone(),
            source,
        })?;
        file.sync_all().map_err(|source| DeliveryError::Sync {
            path: tmp_path.clone(),
            source,
        })?;
        drop(file);

        let new_dir = self.root.join("new");
        let final_path = new_dir.join(format!("{name},S={size}"));
        fs::rename(&tmp_path, &final_path).map_err(|source| DeliveryError::Rename {
            from: tmp_path.clone(),
            to: final_path.clone(),
            source,
        })?;
        guard.disarm();
        Ok(final_path)
    }

    /// Makes every rename into `new/` so far durable (fsync of the directory).
    pub fn sync_new(&self) -> Result<(), DeliveryError> {
        let new_dir = self.root.join("new");
        File::open(&new_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| DeliveryError::Sync {
                path: new_dir.clone(),
                source,
            })
    }
}

fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Removes the file when dropped unless disarmed: no error path (nor a panic) leaves a
/// half-written message behind.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Writes the parts one after another with each CRLF turned into LF (a CRLF split across
/// two parts included); returns the number of octets written.
fn write_lf(file: &File, parts: &[&[u8]]) -> io::Result<u64> {
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let mut written = 0u64;
    let mut emit = |out: &mut BufWriter<&File>, bytes: &[u8]| -> io::Result<()> {
        written += bytes.len() as u64;
        out.write_all(bytes)
    };
    let mut pending_cr = false;
    for part in parts {
        let mut rest = *part;
        if pending_cr && rest.first() != Some(&b'\n') {
            emit(&mut out, b"\r")?;
        }
        pending_cr = false;
        while let Some(i) = rest.iter().position(|&b| b == b'\r') {
            emit(&mut out, &rest[..i])?;
            match rest.get(i + 1) {
                Some(b'\n') => {}
                Some(_) => emit(&mut out, b"\r")?,
                None => pending_cr = true,
            }
            rest = &rest[i + 1..];
        }
        emit(&mut out, rest)?;
    }
    if pending_cr {
        emit(&mut out, b"\r")?;
    }
    out.flush()?;
    Ok(written)
}

/// `<secs>.M<micros>P<pid>Q<counter>.<host>`, the Maildir spec's recommended form.
fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        escaped_hostname()
    )
}

/// The host name with `/` and `:` written as `\057` and `\072`, as the spec asks.
fn escaped_hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let name = match nix::unistd::gethostname() {
            Ok(name) if !name.is_empty() => name.to_string_lossy().into_owned(),
            _ => "localhost".to_string(),
        };
        name.replace('/', "\\057").replace(':', "\\072")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entries(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn ensure_creates_private_directories() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("mail/bob"));
        md.ensure().unwrap();
        md.ensure().unwrap();
        for sub in ["tmp", "new", "cur"] {
            let meta = fs::metadata(md.root().join(sub)).unwrap();
            assert!(meta.is_dir());
            assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        }
    }

    #[test]
    fn delivers_two_messages_with_lf_line_endings() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("bob"));
        let prefix = b"Return-Path: <a@b>\r\nDelivered-To: bob@localhost\r\n";
        let first = md
            .deliver(prefix, b"Subject: one\r\n\r\nline 1\r\nline 2\r\n")
            .unwrap();
        let second = md.deliver(prefix, b"Subject: two\r\n\r\nbody").unwrap();
        assert_ne!(first, second);
        assert_eq!(first.parent().unwrap(), md.root().join("new"));
        assert_eq!(entries(&md.root().join("new")), {
            let mut v = vec![first.clone(), second.clone()];
            v.sort();
            v
        });
        assert!(entries(&md.root().join("tmp")).is_empty());
        let text = fs::read(&first).unwrap();
        assert_eq!(
            text,
            b"Return-Path: <a@b>\nDelivered-To: bob@localhost\nSubject: one\n\nline 1\nline 2\n"
        );
        let name = first.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.ends_with(&format!(",S={}", text.len())), "{name}");
        assert!(name.contains(".M") && name.contains('P') && name.contains('Q'));
        assert_eq!(
            fs::metadata(&first).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn crlf_split_across_parts_and_lone_cr() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path());
        let path = md.deliver(b"A: 1\r", b"\nB: x\ry\r\n\r").unwrap();
        assert_eq!(fs::read(path).unwrap(), b"A: 1\nB: x\ry\n\r");
        let path = md.deliver(b"A: 1\r", b"C").unwrap();
        assert_eq!(fs::read(path).unwrap(), b"A: 1\rC");
    }

    #[test]
    fn root_that_is_a_file_is_a_transient_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("notadir");
        fs::write(&root, b"x").unwrap();
        let err = Maildir::new(&root)
            .deliver(b"", b"Subject: x\r\n")
            .unwrap_err();
        assert!(err.is_transient());
        assert_eq!(err.enhanced_status().to_string(), "4.3.0");
        assert_eq!(fs::read(&root).unwrap(), b"x");
    }

    #[test]
    fn failed_rename_leaves_nothing_in_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path());
        fs::create_dir(dir.path().join("tmp")).unwrap();
        fs::create_dir(dir.path().join("cur")).unwrap();
        fs::write(dir.path().join("new"), b"not a directory").unwrap();
        let err = md.deliver(b"", b"Subject: x\r\n\r\nbody\r\n").unwrap_err();
        assert!(matches!(err, DeliveryError::Rename { .. }), "{err}");
        assert!(err.is_transient());
        assert!(entries(&dir.path().join("tmp")).is_empty());
    }

    #[test]
    fn unique_names_differ_and_escape_the_host() {
        let a = unique_name();
        let b = unique_name();
        assert_ne!(a, b);
        let host = a.splitn(3, '.').nth(2).unwrap();
        assert!(!host.contains('/') && !host.contains(':'));
    }
}
