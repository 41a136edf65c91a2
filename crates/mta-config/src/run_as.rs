//! `user` and `group`: the account the suite runs as after the supervisor has bound its
//! listeners (ports 25, 465 and 587 need root; nothing else does).
//!
//! Both names are looked up in the system's user database when the file is loaded, so an
//! unknown name stops the start with the file, the line and the key, before anything is
//! touched — not later, as a task that cannot drop privileges.

use crate::error::{Seg, Source};
use crate::ConfigError;

/// Who the suite runs as: `user`'s uid, and `group`'s gid (default: `user`'s primary group).
/// The supplementary groups are dropped: the process keeps only `gid` (as Postfix's
/// `set_ugid` does), so a `user` in `sudo` or `adm` does not carry them into the MTA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    /// `user`, as written.
    pub user: String,
    /// `group`, as written, or the name of `user`'s primary group (its number if it has
    /// no name).
    pub group: String,
    pub uid: u32,
    pub gid: u32,
    /// `user`'s home directory, from the user database (for logs only).
    pub home: std::path::PathBuf,
}

pub(crate) fn resolve(src: &Source, user: &str, group: &str) -> Result<Option<RunAs>, ConfigError> {
    let user = user.trim();
    let group = group.trim();
    let at = |key: &'static str, message: String| src.error_at(&[Seg::Key(key)], message);
    if user.is_empty() {
        if !group.is_empty() {
            return Err(at(
                "group",
                "needs `user` as well (the group alone does not say who to run as)".into(),
            ));
        }
        return Ok(None);
    }
    let entry = nix::unistd::User::from_name(user)
        .map_err(|e| at("user", format!("cannot look up user `{user}`: {e}")))?
        .ok_or_else(|| at("user", format!("no such user `{user}` in the system's user database (create it, e.g. `useradd --system --no-create-home --shell /usr/sbin/nologin {user}`)")))?;
    if entry.uid.is_root() {
        return Err(at(
            "user",
            format!("`{user}` is root (uid 0): name an unprivileged user, or leave `user` out"),
        ));
    }
    let group_given = !group.is_empty();
    let (gid, group) = if !group_given {
        let name = nix::unistd::Group::from_gid(entry.gid)
            .ok()
            .flatten()
            .map(|g| g.name)
            .unwrap_or_else(|| entry.gid.to_string());
        (entry.gid, name)
    } else {
        let g = nix::unistd::Group::from_name(group)
            .map_err(|e| at("group", format!("cannot look up group `{group}`: {e}")))?
            .ok_or_else(|| {
                at(
                    "group",
                    format!("no such group `{group}` in the system's group database"),
                )
            })?;
        (g.gid, group.to_string())
    };
    if gid.as_raw() == 0 {
        return Err(at(
            if group_given { "group" } else { "user" },
            format!("group `{group}` is root's (gid 0): name an unprivileged group"),
        ));
    }
    Ok(Some(RunAs {
        user: user.to_string(),
        group,
        uid: entry.uid.as_raw(),
        gid: gid.as_raw(),
        home: entry.dir,
    }))
}
