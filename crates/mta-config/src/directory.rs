//! The directory of users and aliases (file `etc/directory.toml` by default; key `directory`).
//!
//! ```toml
//! [[user]]
//! name = "postmaster"
//! addresses = ["postmaster@localhost", "root@localhost"]
//! maildir = "mail/postmaster"      # relative to data_dir; default "mail/<name>"
//! # lmtp = "unix:/run/dovecot/lmtp" # LMTP instead of Maildir; "none": Maildir always
//!
//! [aliases]
//! "abuse@localhost" = ["postmaster@localhost"]
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use mta_types::{Address, Domain, Endpoint};
use serde::de::Deserializer;
use serde::Deserialize;

use crate::error::{Seg, Source};
use crate::values::{parse_address, AddressValue};
use crate::{ConfigError, UserLmtp, ValueError};

/// How deep alias expansion goes before an address is taken as it is.
pub const MAX_ALIAS_DEPTH: usize = 20;

/// The users and aliases the router delivers to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Directory {
    /// `[[user]]` entries, in file order.
    pub users: Vec<User>,
    /// `[aliases]`: keyed by `Address::lookup_key()` of the alias; the targets may be local
    /// users, other aliases or remote addresses.
    pub aliases: BTreeMap<String, Vec<Address>>,
}

/// One `[[user]]`: a mailbox and the addresses delivered to it.
#[derive(Clone, Debug, PartialEq)]
pub struct User {
    /// `name`: unique, non-empty; used in logs.
    pub name: String,
    /// `addresses`: at least one; each in a local domain and owned by this user only.
    pub addresses: Vec<Address>,
    /// `maildir`: absolute, `data_dir.join(value)`; the value must be relative without `..`.
    /// Default `mail/<name>`.
    pub maildir: PathBuf,
    /// `lmtp`: deliver over LMTP to this server (`"unix:/path"`, `"inet:host:port"`; a
    /// relative path is relative to the directory file's folder), or `"none"`: Maildir even
    /// when `[lmtp] address` is set. Absent: `[lmtp] address`, else Maildir.
    pub lmtp: UserLmtp,
    /// `password`: an argon2id PHC string (`smtpmta hash-password` makes one) for AUTH on
    /// the submission listeners; absent: the user cannot authenticate.
    pub password: Option<String>,
}

impl User {
    /// The LMTP server this user's mail goes to, given `[lmtp] address`; `None`: Maildir.
    pub fn lmtp_server<'a>(&'a self, default: Option<&'a Endpoint>) -> Option<&'a Endpoint> {
        match &self.lmtp {
            UserLmtp::Default => default,
            UserLmtp::Maildir => None,
            UserLmtp::Server(e) => Some(e),
        }
    }
}

impl Directory {
    /// The user named `name` (AUTH identities are user names or one of their addresses).
    pub fn user_named(&self, name: &str) -> Option<&User> {
        self.users
            .iter()
            .find(|u| u.name == name)
            .or_else(|| name.parse::<Address>().ok().and_then(|a| self.user_for(&a)))
    }

    /// Whether `user` may send as `addr`: one of its addresses, or an alias that expands to
    /// one of them.
    pub fn owns(&self, user: &User, addr: &Address) -> bool {
        if self.user_for(addr).is_some_and(|u| u.name == user.name) {
            return true;
        }
        self.aliases_of(addr).is_some()
            && self
                .expand(addr)
                .iter()
                .any(|a| self.user_for(a).is_some_and(|u| u.name == user.name))
    }

    /// The user owning `addr`, compared by `Address::lookup_key()` (local part case-insensitive).
    pub fn user_for(&self, addr: &Address) -> Option<&User> {
        let key = addr.lookup_key();
        self.users.iter().find(|u| {
            u.addresses
                .iter()
                .any(|a| a.domain() == addr.domain() && a.lookup_key() == key)
        })
    }

    /// The targets of an alias, if `addr` is one.
    pub fn aliases_of(&self, addr: &Address) -> Option<&[Address]> {
        self.aliases.get(&addr.lookup_key()).map(Vec::as_slice)
    }

    /// Expands aliases recursively, de-duplicated (by lookup key), in first-seen order; a
    /// non-alias address expands to itself. An alias met again on its own expansion path (a
    /// loop, e.g. `a -> [a, backup]`) or deeper than `MAX_ALIAS_DEPTH` is kept as an address
    /// rather than expanded, as sendmail does.
    pub fn expand(&self, addr: &Address) -> Vec<Address> {
        let mut walk = Expansion::default();
        self.expand_into(addr, 0, &mut walk);
        walk.out
    }

    fn expand_into(&self, addr: &Address, depth: usize, walk: &mut Expansion) {
        let key = addr.lookup_key();
        match self.aliases.get(&key) {
            Some(_) if walk.expanded.contains(&key) => {} // its addresses are already out
            Some(targets) if depth < MAX_ALIAS_DEPTH && !walk.path.contains(&key) => {
                walk.path.push(key.clone());
                for t in targets {
                    self.expand_into(t, depth + 1, walk);
                }
                walk.path.pop();
                walk.expanded.insert(key);
            }
            _ => {
                if walk.emitted.insert(key) {
                    walk.out.push(addr.clone());
                }
            }
        }
    }
}

#[derive(Default)]
struct Expansion {
    out: Vec<Address>,
    emitted: HashSet<String>,
    expanded: HashSet<String>,
    path: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirectory {
    #[serde(default)]
    user: Vec<RawUser>,
    #[serde(default)]
    aliases: BTreeMap<String, Vec<AddressValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    addresses: Vec<AddressValue>,
    #[serde(default, deserialize_with = "optional_maildir")]
    maildir: Option<PathBuf>,
    #[serde(default, deserialize_with = "password")]
    password: Option<String>,
    #[serde(default)]
    lmtp: Option<String>,
}

/// A PHC string of argon2id (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`): checked for shape
/// here so a pasted plain-text password is refused at load, not at the first AUTH.
fn password<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    crate::values::parse_str(d, |s| {
        let parts: Vec<&str> = s.split('$').collect();
        if parts.len() == 6 && parts[0].is_empty() && parts[1] == "argon2id" {
            Ok(Some(s.to_string()))
        } else {
            Err("must be an argon2id PHC string (`$argon2id$v=19$...`); make one with `smtpmta hash-password`".to_string())
        }
    })
}

fn optional_maildir<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    maildir(d).map(Some)
}

/// `lmtp`: `"none"` or an LMTP server's address.
fn user_lmtp(s: &str, folder: &Path) -> Result<UserLmtp, ValueError> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(UserLmtp::Maildir);
    }
    crate::lmtp::parse(s, |p| folder.join(p))
        .map(UserLmtp::Server)
        .map_err(|_| ValueError::UserLmtp(s.to_string()))
}

/// User `i`'s Maildir (relative to data_dir) and its `lmtp` choice.
fn user_mailbox(src: &Source, i: usize, u: &RawUser) -> Result<(PathBuf, UserLmtp), ConfigError> {
    let at = |key| [Seg::Key("user"), Seg::Index(i), Seg::Key(key)];
    let maildir = match &u.maildir {
        Some(m) => m.clone(),
        None => default_maildir(&u.name).map_err(|m| src.error_at(&at("maildir"), m))?,
    };
    let folder = src.file.parent().unwrap_or(Path::new("/"));
    let lmtp = match &u.lmtp {
        None => UserLmtp::Default,
        Some(s) => user_lmtp(s, folder).map_err(|m| src.error_at(&at("lmtp"), m))?,
    };
    Ok((maildir, lmtp))
}

/// `mail/<name>` when `maildir` is absent, if the name can be a folder's name.
fn default_maildir(name: &str) -> Result<PathBuf, ValueError> {
    if name.contains('/') || name == "." || name == ".." {
        Err(ValueError::FolderName(name.to_string()))
    } else {
        Ok(Path::new("mail").join(name))
    }
}

fn maildir<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    crate::values::parse_str(d, |s| {
        let p = PathBuf::from(s);
        if s.trim().is_empty() {
            Err("must not be empty".to_string())
        } else if p.has_root() {
            Err(format!("`{s}` must be relative to data_dir, not absolute"))
        } else if p.components().any(|c| matches!(c, Component::ParentDir)) {
            Err(format!(
                "`{s}` must not contain `..` (it would leave data_dir)"
            ))
        } else {
            Ok(p)
        }
    })
}

/// Reads and validates the directory file. `data_dir` anchors the maildirs; every user address
/// and alias key must be in `local_domains`.
pub(crate) fn load(
    path: &Path,
    data_dir: &Path,
    local_domains: &[Domain],
) -> Result<Directory, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    let src = Source {
        file: path.to_path_buf(),
        text,
    };
    let raw: RawDirectory = toml::from_str(&src.text).map_err(|e| src.toml_error(&e))?;
    let local = Locals(local_domains);
    let (users, owners) = load_users(&src, &raw.user, data_dir, &local)?;
    let aliases = load_aliases(&src, &raw, &owners, &local)?;
    Ok(Directory { users, aliases })
}

/// The local domains, to check addresses against and to name in the error.
struct Locals<'a>(&'a [Domain]);

impl Locals<'_> {
    fn has(&self, d: &Domain) -> bool {
        self.0.contains(d)
    }

    fn list(&self) -> String {
        self.0
            .iter()
            .map(Domain::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `[[user]]`: names unique and non-empty, each address local and one user's only. Also
/// returns who owns each address (its lookup key → the user's index).
fn load_users(
    src: &Source,
    raw: &[RawUser],
    data_dir: &Path,
    local: &Locals<'_>,
) -> Result<(Vec<User>, HashMap<String, usize>), ConfigError> {
    let mut owners: HashMap<String, usize> = HashMap::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut users = Vec::with_capacity(raw.len());
    for (i, u) in raw.iter().enumerate() {
        if u.name.trim().is_empty() {
            return Err(src.error_at(
                &[Seg::Key("user"), Seg::Index(i), Seg::Key("name")],
                "must not be empty",
            ));
        }
        if let Some(first) = names.insert(&u.name, i) {
            return Err(src.error_at(
                &[Seg::Key("user"), Seg::Index(i), Seg::Key("name")],
                format!("user name `{}` is already used by user[{first}]", u.name),
            ));
        }
        if u.addresses.is_empty() {
            return Err(src.error_at(
                &[Seg::Key("user"), Seg::Index(i), Seg::Key("addresses")],
                "a user needs at least one address",
            ));
        }
        for (j, a) in u.addresses.iter().enumerate() {
            let at = [
                Seg::Key("user"),
                Seg::Index(i),
                Seg::Key("addresses"),
                Seg::Index(j),
            ];
            if !local.has(a.0.domain()) {
                return Err(src.error_at(
                    &at,
                    format!(
                        "`{}` is not in a local domain (local_domains: {})",
                        a.0,
                        local.list()
                    ),
                ));
            }
            if let Some(&other) = owners.get(&a.0.lookup_key()) {
                let whom = if other == i {
                    "is listed twice for this user".to_string()
                } else {
                    format!(
                        "is already assigned to user `{}` (user[{other}])",
                        raw[other].name
                    )
                };
                return Err(src.error_at(&at, format!("`{}` {whom}", a.0)));
            }
            owners.insert(a.0.lookup_key(), i);
        }
        let (maildir, lmtp) = user_mailbox(src, i, u)?;
        users.push(User {
            name: u.name.clone(),
            addresses: u.addresses.iter().map(|a| a.0.clone()).collect(),
            maildir: data_dir.join(maildir),
            password: u.password.clone(),
            lmtp,
        });
    }
    Ok((users, owners))
}

/// `[aliases]`: each alias local, not also a user's address, with at least one target,
/// defined once whatever its case.
fn load_aliases(
    src: &Source,
    raw: &RawDirectory,
    owners: &HashMap<String, usize>,
    local: &Locals<'_>,
) -> Result<BTreeMap<String, Vec<Address>>, ConfigError> {
    let mut aliases = BTreeMap::new();
    for (key, targets) in &raw.aliases {
        let at = [Seg::Key("aliases"), Seg::Key(key)];
        let alias = parse_address(key).map_err(|m| src.error_at(&at, m))?;
        if !local.has(alias.domain()) {
            return Err(src.error_at(
                &at,
                format!(
                    "alias `{alias}` is not in a local domain (local_domains: {})",
                    local.list()
                ),
            ));
        }
        if let Some(&owner) = owners.get(&alias.lookup_key()) {
            return Err(src.error_at(
                &at,
                format!(
                    "`{alias}` is both an alias and an address of user `{}`",
                    raw.user[owner].name
                ),
            ));
        }
        if targets.is_empty() {
            return Err(src.error_at(&at, "an alias needs at least one target address"));
        }
        let list = targets.iter().map(|t| t.0.clone()).collect();
        if aliases.insert(alias.lookup_key(), list).is_some() {
            return Err(src.error_at(
                &at,
                format!("alias `{alias}` is defined twice (keys differ only in case)"),
            ));
        }
    }
    Ok(aliases)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Address {
        s.parse().unwrap()
    }

    fn dir(aliases: &[(&str, &[&str])]) -> Directory {
        Directory {
            users: vec![User {
                name: "pm".into(),
                addresses: vec![a("postmaster@localhost"), a("Root@localhost")],
                maildir: "/var/mail/pm".into(),
                password: None,
                lmtp: UserLmtp::Default,
            }],
            aliases: aliases
                .iter()
                .map(|(k, v)| (a(k).lookup_key(), v.iter().map(|t| a(t)).collect()))
                .collect(),
        }
    }

    #[test]
    fn user_lookup_is_case_insensitive() {
        let d = dir(&[]);
        assert_eq!(d.user_for(&a("ROOT@LocalHost")).unwrap().name, "pm");
        assert!(d.user_for(&a("nobody@localhost")).is_none());
    }

    #[test]
    fn expand_plain_address_is_itself() {
        let d = dir(&[]);
        assert_eq!(
            d.expand(&a("x@remote.example")),
            vec![a("x@remote.example")]
        );
        assert!(d.aliases_of(&a("x@remote.example")).is_none());
    }

    #[test]
    fn expand_recursive_deduplicated_in_order() {
        let d = dir(&[
            (
                "all@localhost",
                &[
                    "staff@localhost",
                    "postmaster@localhost",
                    "ext@remote.example",
                ],
            ),
            (
                "staff@localhost",
                &[
                    "root@localhost",
                    "postmaster@localhost",
                    "bob@remote.example",
                ],
            ),
        ]);
        assert_eq!(
            d.expand(&a("ALL@localhost")),
            vec![
                a("root@localhost"),
                a("postmaster@localhost"),
                a("bob@remote.example"),
                a("ext@remote.example")
            ]
        );
        assert_eq!(d.aliases_of(&a("staff@localhost")).unwrap().len(), 3);
    }

    #[test]
    fn expand_survives_loops() {
        let d = dir(&[
            ("a@localhost", &["b@localhost"]),
            ("b@localhost", &["a@localhost", "postmaster@localhost"]),
            ("self@localhost", &["self@localhost", "root@localhost"]),
        ]);
        assert_eq!(
            d.expand(&a("a@localhost")),
            vec![a("a@localhost"), a("postmaster@localhost")]
        );
        assert_eq!(
            d.expand(&a("self@localhost")),
            vec![a("self@localhost"), a("root@localhost")]
        );
    }

    #[test]
    fn expand_stops_at_max_depth() {
        let chain: Vec<(String, Vec<String>)> = (0..30)
            .map(|i| {
                (
                    format!("l{i}@localhost"),
                    vec![format!("l{}@localhost", i + 1)],
                )
            })
            .collect();
        let d = Directory {
            users: vec![],
            aliases: chain
                .iter()
                .map(|(k, v)| (a(k).lookup_key(), v.iter().map(|t| a(t)).collect()))
                .collect(),
        };
        assert_eq!(
            d.expand(&a("l0@localhost")),
            vec![a(&format!("l{MAX_ALIAS_DEPTH}@localhost"))]
        );
    }

    #[test]
    fn expand_diamond_is_not_exponential() {
        // 25 levels, each alias pointing twice at the next: 2^25 paths without the memo.
        let aliases = (0..25)
            .map(|i| {
                let next = a(&format!("d{}@localhost", i + 1));
                (
                    a(&format!("d{i}@localhost")).lookup_key(),
                    vec![next.clone(), next],
                )
            })
            .collect();
        let d = Directory {
            users: vec![],
            aliases,
        };
        assert_eq!(d.expand(&a("d0@localhost")), vec![a("d20@localhost")]);
    }
}
