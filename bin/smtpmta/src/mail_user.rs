//! `user =`: what the supervisor does while it is still root, and the drop.
//!
//! At start, in this order (`supervise` in main.rs):
//! 1. [`prepare`]: `data_dir` and `run/` exist and belong to `user` (`run/` mode 0700, so
//!    only `user` — and root — can reach the store's and the tasks' sockets, themselves
//!    0600). Files under `data_dir` left by a run as root (or as another user) are handed
//!    over to `user`; see [`adopt`].
//! 2. The pid-file lock (one supervisor per data_dir), then every listener is bound
//!    (`[inbound]` and `[metrics]`): ports below 1024 need root.
//! 3. [`mta_task::privileges::drop_to`]: the supervisor itself becomes `user` before it
//!    opens the store, makes the certificate or starts any task. It never needs root
//!    again: the SMTP sockets stay open in it for its lifetime and are passed to each
//!    isesctl it starts (`mta_ipc::listeners`), so restarting isesctl or `tell smtpmta
//!    start inbound transport` binds nothing. The tasks are born as `user`.
//!
//! Without `user`, nothing here changes ownership: the suite runs as whoever started it.

use anyhow::Context as _;
use mta_config::{Config, RunAs};
use nix::dir::Dir;
use nix::fcntl::{openat, OFlag, AT_FDCWD};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
use nix::unistd::{fchown, fchownat, Gid, Uid};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Written in `data_dir` once everything under it belongs to `uid:gid`; while it says so,
/// a start checks only the top of the tree. A start without `user` removes it (a run as
/// root writes root's files), so the next start with `user` walks the whole tree again.
const OWNER_MARK: &str = ".owner";

/// Deepest folder nesting walked (Maildirs are 3 deep under `data_dir`).
const MAX_DEPTH: usize = 32;

/// Creates `data_dir` and `run/` (0700); with `user`, gives them and whatever a run as
/// someone else left under `data_dir` to `user`.
pub fn prepare(config: &Config) -> anyhow::Result<()> {
    let data_dir = &config.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let run_dir = config.run_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    // Also when it existed before: the sockets in it are for the suite's user only.
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set the mode of {}", run_dir.display()))?;
    let mark = data_dir.join(OWNER_MARK);
    let Some(run_as) = &config.run_as else {
        match std::fs::remove_file(&mark) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", mark.display())),
        }
        return Ok(());
    };
    if !nix::unistd::geteuid().is_root() {
        // Started as `user` itself (systemd's `User=`): nothing to hand over, and no way
        // to. A wrong user is refused by drop_to, with the reason.
        return Ok(());
    }
    let wanted = format!("{}:{}\n", run_as.uid, run_as.gid);
    let whole = std::fs::read_to_string(&mark).ok().as_deref() != Some(wanted.as_str());
    let adopted = adopt(data_dir, run_as, if whole { MAX_DEPTH } else { 1 })?;
    if adopted.changed > 0 || adopted.skipped > 0 {
        tracing::info!(
            changed = adopted.changed,
            skipped = adopted.skipped,
            "files under {} given to {}:{}",
            data_dir.display(),
            run_as.user,
            run_as.group
        );
    }
    if whole {
        std::fs::write(&mark, &wanted)
            .with_context(|| format!("cannot write {}", mark.display()))?;
        chown_path(&mark, run_as)?;
    }
    Ok(())
}

/// After the drop: what the user must reach, with one clear line if it cannot (a data_dir
/// under root's home, binaries in a folder only root may enter), rather than tasks that
/// keep failing with a bare "Permission denied".
pub fn check_reach(config: &Config, run_as: &RunAs) -> anyhow::Result<()> {
    use nix::unistd::{access, AccessFlags};
    let hint = |what: &str, path: &Path, e: nix::Error| {
        anyhow::anyhow!(
            "`user = \"{}\"` cannot {what} {} ({e}): every folder above it must be traversable by {}",
            run_as.user,
            path.display(),
            run_as.user
        )
    };
    access(
        &config.data_dir,
        AccessFlags::R_OK | AccessFlags::W_OK | AccessFlags::X_OK,
    )
    .map_err(|e| hint("write in data_dir", &config.data_dir, e))?;
    access(&config.path, AccessFlags::R_OK)
        .map_err(|e| hint("read the config file", &config.path, e))?;
    access(&config.directory_path, AccessFlags::R_OK)
        .map_err(|e| hint("read the directory file", &config.directory_path, e))?;
    let exe = std::env::current_exe().context("cannot find my own executable")?;
    if let Some(dir) = exe.parent() {
        let task = dir.join(mta_types::TaskName::Isesctl.as_str());
        access(&task, AccessFlags::X_OK).map_err(|e| hint("run", &task, e))?;
    }
    Ok(())
}

/// What [`adopt`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    /// Entries whose owner or group changed.
    pub changed: u64,
    /// Regular files left alone because they have other hard links (they could be links
    /// to files outside `data_dir`).
    pub skipped: u64,
}

/// Gives `top` and everything under it, down to `depth` levels, to `run_as`.
///
/// It runs as root in a tree that `user` could write to, so it never follows a symbolic
/// link: every folder is opened with `O_NOFOLLOW` relative to its parent's descriptor and
/// changed through that descriptor (a folder swapped for a link meanwhile is not entered),
/// regular files likewise, and a regular file with a second hard link is skipped.
pub fn adopt(top: &Path, run_as: &RunAs, depth: usize) -> anyhow::Result<Adopted> {
    let mut done = Adopted::default();
    let dir = open_dir(AT_FDCWD, top).with_context(|| format!("cannot open {}", top.display()))?;
    own_fd(&dir, run_as, &mut done).with_context(|| format!("cannot chown {}", top.display()))?;
    walk(dir, top, run_as, depth, &mut done)?;
    Ok(done)
}

fn walk(
    dir: OwnedFd,
    path: &Path,
    run_as: &RunAs,
    depth: usize,
    done: &mut Adopted,
) -> anyhow::Result<()> {
    if depth == 0 {
        return Ok(());
    }
    let listing = Dir::from_fd(dir.try_clone()?)
        .with_context(|| format!("cannot list {}", path.display()))?;
    let mut names = Vec::new();
    for entry in listing.into_iter() {
        let entry = entry.with_context(|| format!("cannot list {}", path.display()))?;
        let name = entry.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push(name);
        }
    }
    for name in names {
        let shown = path.join(name.to_string_lossy().as_ref());
        let st = match fstatat(
            &dir,
            name.as_c_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(nix::Error::ENOENT) => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot stat {}", shown.display())),
        };
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        let mine = st.st_uid == run_as.uid && st.st_gid == run_as.gid;
        if kind == SFlag::S_IFDIR {
            let sub = match open_dir(&dir, name.as_c_str()) {
                Ok(fd) => fd,
                // Swapped for a link or removed since the stat: not ours to enter.
                Err(nix::Error::ELOOP | nix::Error::ENOTDIR | nix::Error::ENOENT) => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot open {}", shown.display()))
                }
            };
            own_fd(&sub, run_as, done)
                .with_context(|| format!("cannot chown {}", shown.display()))?;
            walk(sub, &shown, run_as, depth - 1, done)?;
        } else if mine {
            continue;
        } else if kind == SFlag::S_IFREG {
            let file = match openat(
                &dir,
                name.as_c_str(),
                OFlag::O_RDONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_NONBLOCK
                    | OFlag::O_NOCTTY
                    | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(nix::Error::ELOOP | nix::Error::ENOENT) => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot open {}", shown.display()))
                }
            };
            let st = fstat(&file).with_context(|| format!("cannot stat {}", shown.display()))?;
            if st.st_nlink > 1
                || SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG
            {
                tracing::warn!(file = %shown.display(), links = st.st_nlink, "not given to the mail user: it has other hard links; chown it by hand if it is ours");
                done.skipped += 1;
                continue;
            }
            own_fd(&file, run_as, done)
                .with_context(|| format!("cannot chown {}", shown.display()))?;
        } else {
            // A socket left by a crash, a symbolic link (changed itself, never its target).
            fchownat(
                &dir,
                name.as_c_str(),
                Some(Uid::from_raw(run_as.uid)),
                Some(Gid::from_raw(run_as.gid)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .with_context(|| format!("cannot chown {}", shown.display()))?;
            done.changed += 1;
        }
    }
    Ok(())
}

fn open_dir<Fd: AsFd, P: ?Sized + nix::NixPath>(at: Fd, path: &P) -> nix::Result<OwnedFd> {
    openat(
        at,
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

fn own_fd(fd: &OwnedFd, run_as: &RunAs, done: &mut Adopted) -> nix::Result<()> {
    let st = fstat(fd)?;
    if st.st_uid != run_as.uid || st.st_gid != run_as.gid {
        fchown(
            fd,
            Some(Uid::from_raw(run_as.uid)),
            Some(Gid::from_raw(run_as.gid)),
        )?;
        done.changed += 1;
    }
    Ok(())
}

fn chown_path(path: &Path, run_as: &RunAs) -> anyhow::Result<()> {
    std::os::unix::fs::lchown(path, Some(run_as.uid), Some(run_as.gid))
        .with_context(|| format!("cannot chown {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn nobody() -> RunAs {
        RunAs {
            user: "nobody".into(),
            group: "nogroup".into(),
            uid: 65534,
            gid: 65534,
            home: "/nonexistent".into(),
        }
    }

    /// Needs root (as the tests run in CI); says so and passes otherwise.
    #[test]
    fn adopt_changes_the_tree_but_never_follows_links_or_hard_links() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root: skipped");
            return;
        }
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "root's").unwrap();
        let top = tempfile::tempdir().unwrap();
        let maildir = top.path().join("mail/alice/new");
        std::fs::create_dir_all(&maildir).unwrap();
        std::fs::write(maildir.join("1.eml"), "mail").unwrap();
        std::os::unix::fs::symlink(&victim, top.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), top.path().join("dirlink")).unwrap();
        std::fs::hard_link(&victim, top.path().join("hard")).unwrap();
        let done = adopt(top.path(), &nobody(), MAX_DEPTH).unwrap();
        let owner = |p: &Path| std::fs::symlink_metadata(p).unwrap().uid();
        assert_eq!(owner(&maildir.join("1.eml")), 65534);
        assert_eq!(owner(&top.path().join("mail/alice")), 65534);
        assert_eq!(owner(&top.path().join("link")), 65534, "the link itself");
        assert_eq!(owner(&victim), 0, "a link's target is never changed");
        assert_eq!(owner(outside.path()), 0);
        assert_eq!(done.skipped, 1, "the hard link is left alone: {done:?}");
        let again = adopt(top.path(), &nobody(), MAX_DEPTH).unwrap();
        assert_eq!(again.changed, 0, "{again:?}");
    }
}
