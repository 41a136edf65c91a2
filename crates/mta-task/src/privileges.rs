//! Running as the configured `user` (and `group`): the one place that drops root.
//!
//! The supervisor calls [`drop_to`] once it has bound every listener and prepared
//! `data_dir` (see `bin/smtpmta/src/mail_user.rs`), so every task it starts is born
//! unprivileged. The task skeleton calls it again at start, before anything else: a task
//! started by hand as root drops too, and a task that finds itself running as somebody
//! else than `user` refuses to run rather than write files the others cannot read.
//!
//! Order matters: the supplementary groups first and the gid next, while we still may;
//! the uid last. Afterwards `setuid(0)` must fail, or we did not really drop.

use mta_config::RunAs;
use nix::unistd::{getegid, geteuid, getgid, getuid, setgid, setgroups, setuid, Gid, Uid};

/// Why the process could not become `user`.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// Started as neither root nor `user`: nobody can switch to `user` from here.
    #[error("`user = \"{user}\"` needs smtpmta started as root (or as {user} itself); running as uid {uid}")]
    NotRoot { user: String, uid: u32 },
    /// A set*id call failed.
    #[error("cannot switch to {what} for `user = \"{user}\"`: {source}")]
    Switch {
        user: String,
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    /// The switch seemed to work but the ids say otherwise, or root could be regained.
    #[error("after switching to `{user}` the process still has uid {uid}/{euid}, gid {gid}/{egid}: refusing to run")]
    Incomplete {
        user: String,
        uid: u32,
        euid: u32,
        gid: u32,
        egid: u32,
    },
}

/// What [`drop_to`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// We were root and are now `user`.
    FromRoot,
    /// We already ran as `user` (a child of a dropped supervisor, or systemd's `User=`).
    AlreadyUser,
}

/// Becomes `run_as`: its gid as the only group, then its uid.
pub fn drop_to(run_as: &RunAs) -> Result<Dropped, PrivilegeError> {
    let uid = Uid::from_raw(run_as.uid);
    let gid = Gid::from_raw(run_as.gid);
    let switch = |what, source| PrivilegeError::Switch {
        user: run_as.user.clone(),
        what,
        source,
    };
    if getuid() == uid && geteuid() == uid {
        // Nothing to drop; but a gid of a previous life must not linger either.
        if getgid() != gid || getegid() != gid {
            setgid(gid).map_err(|e| switch("its group", e))?;
        }
        check(run_as)?;
        return Ok(Dropped::AlreadyUser);
    }
    if !geteuid().is_root() {
        return Err(PrivilegeError::NotRoot {
            user: run_as.user.clone(),
            uid: geteuid().as_raw(),
        });
    }
    setgroups(&[gid]).map_err(|e| switch("its groups", e))?;
    setgid(gid).map_err(|e| switch("its group", e))?;
    setuid(uid).map_err(|e| switch("its uid", e))?;
    check(run_as)?;
    Ok(Dropped::FromRoot)
}

fn check(run_as: &RunAs) -> Result<(), PrivilegeError> {
    let (uid, euid, gid, egid) = (getuid(), geteuid(), getgid(), getegid());
    // glibc applies set*id to every thread of the process, so this thread's view is the
    // process's. Regaining root must be impossible now.
    let regained = setuid(Uid::from_raw(0)).is_ok();
    if regained
        || uid.as_raw() != run_as.uid
        || euid.as_raw() != run_as.uid
        || gid.as_raw() != run_as.gid
        || egid.as_raw() != run_as.gid
    {
        return Err(PrivilegeError::Incomplete {
            user: run_as.user.clone(),
            uid: uid.as_raw(),
            euid: euid.as_raw(),
            gid: gid.as_raw(),
            egid: egid.as_raw(),
        });
    }
    Ok(())
}
