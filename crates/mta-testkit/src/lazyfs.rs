//! lazyfs — a power-loss file system for crash-consistency tests (in the spirit of LazyFS).
//!
//! A FUSE file system (the `fuser` crate, pure-Rust mount) that keeps everything in memory
//! and models a disk that only keeps what was made durable. The durability model is strict
//! POSIX, stricter than any journaling file system, so that every missing sync shows:
//!
//! - A regular file has its current bytes (what processes read) and its *durable* bytes.
//!   `fsync` and `fdatasync` (FUSE fsync with or without `datasync`) copy the dirty 4 KiB
//!   pages and the size to the durable copy (cost: what is dirty, not the file's size).
//!   Nothing else makes data durable: not `close`, not `sync_file_range` (which never
//!   reaches a FUSE file system at all), not a directory fsync.
//! - A directory has its current entries (name → inode) and its *durable* entries. Only
//!   `fsync` of the directory itself (FUSE fsyncdir) makes its durable entries equal to its
//!   current ones. create, mknod, mkdir, symlink, link, unlink, rmdir and rename change the
//!   current entries only: a new file's name, a rename's new name and a removal all stay
//!   volatile until the directory holding the name is fsynced (for a rename across two
//!   directories, each side becomes durable with its own directory's fsync). The root starts
//!   empty and durable.
//! - Metadata other than names and sizes (mode, owner, times) is not modelled: it survives.
//! - `power_loss` (the caller has killed every process using the mount first) unmounts,
//!   rebuilds the tree from the durable state alone — from the root, follow durable entries;
//!   every reachable file's bytes become its durable bytes, every reachable directory's
//!   entries its durable entries; whatever is unreachable is gone — and mounts again at the
//!   same place. The restarted processes see only what survived.
//!
//! The kernel must not hide anything: files are opened with `FOPEN_DIRECT_IO` (no page
//! cache), entries and attributes have a TTL of 0, and the remount starts with empty caches.
//! `flock` and POSIX locks are left to the kernel (FUSE_FLOCK_LOCKS is not requested), so
//! sled's and the supervisor's exclusive locks work as on a local disk. Unix-domain sockets
//! can be bound inside (bind creates an `S_IFSOCK` node through mknod).
//!
//! The file system keeps books by path pattern (the path under the mount with each run of
//! digits replaced by `#`): files written, files ever fsynced, names created, names made
//! durable by a directory fsync, and what each power loss dropped. `LazyFs::report` prints
//! them: the list of what a program writes without ever syncing.
//!
//! `LAZYFS_KEEP_ALL=1` in the environment makes every power loss keep everything (a
//! control run: what fails then is not about durability).
//!
//! Needs root (or a user allowed to mount FUSE) and `/dev/fuse`; `LazyFs::mount` returns a
//! clear error otherwise, which tests turn into a failure, never a skip.

use fuser::{
    AccessFlags, BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    SessionACL, TimeOrNow, WriteFlags,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

const PAGE: u64 = 4096;
const TTL: Duration = Duration::ZERO;
const ROOT: u64 = 1;

/// What one power loss dropped.
#[derive(Clone, Debug, Default)]
pub struct PowerLoss {
    /// Bytes of file data that were written (or cut) but not fsynced.
    pub dropped_bytes: u64,
    /// Files whose unsynced data was dropped (still named) plus files that vanished.
    pub dropped_files: u64,
    /// Current names that were not durable (new names, renames' targets): gone.
    pub dropped_names: u64,
    /// Removed names (unlink, rename's source) whose removal was not durable: back again.
    pub resurrected_names: u64,
    /// Per path pattern: (files with data dropped, bytes dropped, names dropped).
    pub patterns: BTreeMap<String, (u64, u64, u64)>,
}

impl std::fmt::Display for PowerLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dropped {} bytes in {} files, {} names; {} removed names back",
            self.dropped_bytes, self.dropped_files, self.dropped_names, self.resurrected_names
        )?;
        for (pattern, (files, bytes, names)) in &self.patterns {
            write!(
                f,
                "\n    {pattern}: {files} files / {bytes} bytes unsynced, {names} names not durable"
            )?;
        }
        Ok(())
    }
}

/// Books kept per path pattern over the file system's life.
#[derive(Clone, Debug, Default)]
struct PatternStats {
    files_written: u64,
    files_fsynced: u64,
    names_created: u64,
    names_made_durable: u64,
    dropped_files: u64,
    dropped_bytes: u64,
    dropped_names: u64,
}

#[derive(Clone, Debug)]
enum Body {
    File {
        data: Vec<u8>,
        durable: Vec<u8>,
        dirty: BTreeSet<u64>,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
    },
    Symlink(PathBuf),
    /// Sockets and FIFOs: a name and nothing else.
    Special,
}

#[derive(Clone, Debug)]
struct Node {
    kind: FileType,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Current names pointing here.
    nlink: u32,
    /// Durable names pointing here (the node must be kept while any exists).
    durable_refs: u32,
    /// Open handles.
    opens: u32,
    /// The last name given (for paths in the books and `..`).
    parent: u64,
    name: OsString,
    written: bool,
    fsynced: bool,
    body: Body,
}

impl Node {
    fn new(kind: FileType, perm: u16, req: &Request, parent: u64, name: &OsStr) -> Node {
        let now = SystemTime::now();
        let body = match kind {
            FileType::RegularFile => Body::File {
                data: Vec::new(),
                durable: Vec::new(),
                dirty: BTreeSet::new(),
            },
            FileType::Directory => Body::Dir {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
            },
            _ => Body::Special,
        };
        Node {
            kind,
            perm,
            uid: req.uid(),
            gid: req.gid(),
            atime: now,
            mtime: now,
            ctime: now,
            nlink: 1,
            durable_refs: 0,
            opens: 0,
            parent,
            name: name.to_os_string(),
            written: false,
            fsynced: false,
            body,
        }
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let size = match &self.body {
            Body::File { data, .. } => data.len() as u64,
            Body::Dir { .. } => 4096,
            Body::Symlink(t) => t.as_os_str().len() as u64,
            Body::Special => 0,
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.ctime,
            kind: self.kind,
            perm: self.perm,
            nlink: if self.kind == FileType::Directory {
                2
            } else {
                self.nlink
            },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        }
    }
}

/// Marks the pages holding bytes [from, to) dirty.
fn mark_dirty(dirty: &mut BTreeSet<u64>, from: u64, to: u64) {
    if to > from {
        dirty.extend(from / PAGE..=(to - 1) / PAGE);
    }
}

/// Resizes a file's current bytes; growth is zeros and dirty.
fn resize(data: &mut Vec<u8>, dirty: &mut BTreeSet<u64>, len: u64) {
    let old = data.len() as u64;
    data.resize(len as usize, 0);
    mark_dirty(dirty, old, len);
}

/// A path's books pattern: each run of ASCII digits becomes `#`.
fn pattern(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_digits = false;
    for c in path.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    fsyncs: u64,
    fsyncdirs: u64,
    books: BTreeMap<String, PatternStats>,
    last: PowerLoss,
    power_losses: u64,
}

type FsResult<T> = Result<T, Errno>;

impl State {
    fn new() -> State {
        let now = SystemTime::now();
        let root = Node {
            kind: FileType::Directory,
            perm: 0o755,
            uid: 0,
            gid: 0,
            atime: now,
            mtime: now,
            ctime: now,
            nlink: 1,
            durable_refs: 1,
            opens: 0,
            parent: ROOT,
            name: OsString::new(),
            written: false,
            fsynced: false,
            body: Body::Dir {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
            },
        };
        State {
            nodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            fsyncs: 0,
            fsyncdirs: 0,
            books: BTreeMap::new(),
            last: PowerLoss::default(),
            power_losses: 0,
        }
    }

    fn node(&self, ino: u64) -> FsResult<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> FsResult<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    /// The path under the mount by last names (for the books only).
    fn path(&self, mut ino: u64) -> String {
        let mut parts = Vec::new();
        for _ in 0..64 {
            if ino == ROOT {
                break;
            }
            let Some(node) = self.nodes.get(&ino) else {
                break;
            };
            parts.push(node.name.to_string_lossy().into_owned());
            ino = node.parent;
        }
        parts.reverse();
        parts.join("/")
    }

    fn child_path(&self, dir: u64, name: &OsStr) -> String {
        let base = self.path(dir);
        if base.is_empty() {
            name.to_string_lossy().into_owned()
        } else {
            format!("{base}/{}", name.to_string_lossy())
        }
    }

    fn book(&mut self, path: &str) -> &mut PatternStats {
        self.books.entry(pattern(path)).or_default()
    }

    fn entries(&self, dir: u64) -> FsResult<&BTreeMap<OsString, u64>> {
        match &self.node(dir)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> FsResult<&mut BTreeMap<OsString, u64>> {
        match &mut self.node_mut(dir)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn lookup(&self, dir: u64, name: &OsStr) -> FsResult<u64> {
        self.entries(dir)?.get(name).copied().ok_or(Errno::ENOENT)
    }

    /// Drops a node nothing refers to any more (no name, no durable name, not open).
    fn maybe_free(&mut self, ino: u64) {
        if ino == ROOT {
            return;
        }
        if let Some(n) = self.nodes.get(&ino) {
            if n.nlink == 0 && n.opens == 0 && n.durable_refs == 0 {
                let n = self.nodes.remove(&ino).expect("node");
                // A freed directory's durable entries no longer hold their targets.
                if let Body::Dir { durable, .. } = n.body {
                    for target in durable.values() {
                        if let Some(t) = self.nodes.get_mut(target) {
                            t.durable_refs = t.durable_refs.saturating_sub(1);
                        }
                        self.maybe_free(*target);
                    }
                }
            }
        }
    }

    fn make(
        &mut self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        kind: FileType,
        mode: u32,
        umask: u32,
    ) -> FsResult<u64> {
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let perm = (mode & !umask & 0o7777) as u16;
        self.nodes
            .insert(ino, Node::new(kind, perm, req, parent, name));
        self.entries_mut(parent)?.insert(name.to_os_string(), ino);
        let path = self.child_path(parent, name);
        self.book(&path).names_created += 1;
        let p = self.node_mut(parent)?;
        p.mtime = SystemTime::now();
        p.ctime = p.mtime;
        Ok(ino)
    }

    fn remove_name(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> FsResult<()> {
        let ino = self.lookup(parent, name)?;
        let node = self.node(ino)?;
        match (&node.body, want_dir) {
            (Body::Dir { entries, .. }, true) => {
                if !entries.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
            }
            (Body::Dir { .. }, false) => return Err(Errno::EISDIR),
            (_, true) => return Err(Errno::ENOTDIR),
            (_, false) => {}
        }
        self.entries_mut(parent)?.remove(name);
        let n = self.node_mut(ino)?;
        n.nlink = n.nlink.saturating_sub(1);
        n.ctime = SystemTime::now();
        self.maybe_free(ino);
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> FsResult<()> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return Err(Errno::EINVAL);
        }
        let ino = self.lookup(parent, name)?;
        self.entries(newparent)?;
        let src_is_dir = self.node(ino)?.kind == FileType::Directory;
        if src_is_dir {
            // Moving a directory into itself or below it.
            let mut p = newparent;
            for _ in 0..64 {
                if p == ino {
                    return Err(Errno::EINVAL);
                }
                if p == ROOT {
                    break;
                }
                p = self.node(p)?.parent;
            }
        }
        if let Ok(target) = self.lookup(newparent, newname) {
            if target == ino {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            let target_is_dir = self.node(target)?.kind == FileType::Directory;
            match (src_is_dir, target_is_dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                _ => {}
            }
            self.remove_name(newparent, newname, target_is_dir)?;
        }
        self.entries_mut(parent)?.remove(name);
        self.entries_mut(newparent)?
            .insert(newname.to_os_string(), ino);
        let path = self.child_path(newparent, newname);
        self.book(&path).names_created += 1;
        let now = SystemTime::now();
        let n = self.node_mut(ino)?;
        n.parent = newparent;
        n.name = newname.to_os_string();
        n.ctime = now;
        Ok(())
    }

    fn write(&mut self, ino: u64, offset: u64, bytes: &[u8]) -> FsResult<u32> {
        let n = self.node_mut(ino)?;
        let Body::File { data, dirty, .. } = &mut n.body else {
            return Err(Errno::EISDIR);
        };
        let end = offset + bytes.len() as u64;
        if end > data.len() as u64 {
            resize(data, dirty, end);
        }
        data[offset as usize..end as usize].copy_from_slice(bytes);
        mark_dirty(dirty, offset, end);
        n.mtime = SystemTime::now();
        n.ctime = n.mtime;
        self.book_written(ino)?;
        Ok(bytes.len() as u32)
    }

    fn truncate(&mut self, ino: u64, len: u64) -> FsResult<()> {
        let n = self.node_mut(ino)?;
        let Body::File { data, dirty, .. } = &mut n.body else {
            return Err(Errno::EISDIR);
        };
        if len == data.len() as u64 {
            return Ok(());
        }
        resize(data, dirty, len);
        // The size changed: the last page's durable copy must be cut at the next sync.
        if len > 0 {
            mark_dirty(dirty, len - 1, len);
        }
        self.book_written(ino)
    }

    fn fsync(&mut self, ino: u64) -> FsResult<()> {
        self.fsyncs += 1;
        let n = self.node_mut(ino)?;
        if let Body::File {
            data,
            durable,
            dirty,
        } = &mut n.body
        {
            durable.resize(data.len(), 0);
            for page in std::mem::take(dirty) {
                let from = (page * PAGE) as usize;
                if from >= data.len() {
                    continue;
                }
                let to = (from + PAGE as usize).min(data.len());
                durable[from..to].copy_from_slice(&data[from..to]);
            }
        }
        self.book_fsynced(ino)
    }

    /// Marks the file written; the books count files, not calls, so only the first time
    /// counts under its path's pattern.
    fn book_written(&mut self, ino: u64) -> FsResult<()> {
        if !std::mem::replace(&mut self.node_mut(ino)?.written, true) {
            let path = self.path(ino);
            self.book(&path).files_written += 1;
        }
        Ok(())
    }

    /// Marks the file fsynced, counted like `book_written`.
    fn book_fsynced(&mut self, ino: u64) -> FsResult<()> {
        if !std::mem::replace(&mut self.node_mut(ino)?.fsynced, true) {
            let path = self.path(ino);
            self.book(&path).files_fsynced += 1;
        }
        Ok(())
    }

    fn fsyncdir(&mut self, ino: u64) -> FsResult<()> {
        self.fsyncdirs += 1;
        let (added, removed) = {
            let n = self.node_mut(ino)?;
            let Body::Dir { entries, durable } = &mut n.body else {
                return Err(Errno::ENOTDIR);
            };
            let added: Vec<(OsString, u64)> = entries
                .iter()
                .filter(|(k, v)| durable.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            let removed: Vec<u64> = durable
                .iter()
                .filter(|(k, v)| entries.get(*k) != Some(*v))
                .map(|(_, v)| *v)
                .collect();
            *durable = entries.clone();
            (added, removed)
        };
        for (name, target) in &added {
            if let Some(t) = self.nodes.get_mut(target) {
                t.durable_refs += 1;
            }
            let path = self.child_path(ino, name);
            self.book(&path).names_made_durable += 1;
        }
        for target in removed {
            if let Some(t) = self.nodes.get_mut(&target) {
                t.durable_refs = t.durable_refs.saturating_sub(1);
            }
            self.maybe_free(target);
        }
        Ok(())
    }

    /// Counts what a power loss drops (walking the current tree), then rebuilds the state
    /// from the durable one.
    fn power_loss(&mut self) -> PowerLoss {
        if std::env::var_os("LAZYFS_KEEP_ALL").is_some() {
            // The control run: a disk that keeps everything (only the kills remain).
            let all: Vec<(u64, bool)> = self
                .nodes
                .iter()
                .map(|(ino, n)| (*ino, n.kind == FileType::Directory))
                .collect();
            for (ino, dir) in all {
                let _ = if dir {
                    self.fsyncdir(ino)
                } else {
                    self.fsync(ino)
                };
            }
        }
        let mut report = PowerLoss::default();
        // What is lost, seen from the current tree.
        let mut seen = HashSet::new();
        let mut stack = vec![ROOT];
        while let Some(dir) = stack.pop() {
            if !seen.insert(dir) {
                continue;
            }
            let Some(Body::Dir { entries, durable }) = self.nodes.get(&dir).map(|n| &n.body) else {
                continue;
            };
            for (name, &ino) in entries {
                let path = self.child_path(dir, name);
                let p = pattern(&path);
                if durable.get(name) != Some(&ino) {
                    report.dropped_names += 1;
                    report.patterns.entry(p.clone()).or_default().2 += 1;
                }
                match self.nodes.get(&ino).map(|n| &n.body) {
                    Some(Body::Dir { .. }) => stack.push(ino),
                    Some(Body::File {
                        data,
                        durable,
                        dirty,
                    }) if seen.insert(ino) => {
                        let changed = !dirty.is_empty() || data.len() != durable.len();
                        if changed {
                            let lost = (dirty.len() as u64 * PAGE)
                                .min(data.len() as u64)
                                .max(data.len().abs_diff(durable.len()) as u64);
                            report.dropped_bytes += lost;
                            report.dropped_files += 1;
                            let e = report.patterns.entry(p).or_default();
                            e.0 += 1;
                            e.1 += lost;
                        }
                    }
                    _ => {}
                }
            }
            report.resurrected_names += durable
                .keys()
                .filter(|name| !entries.contains_key(*name))
                .count() as u64;
        }
        for (p, (files, bytes, names)) in &report.patterns {
            let b = self.books.entry(p.clone()).or_default();
            b.dropped_files += files;
            b.dropped_bytes += bytes;
            b.dropped_names += names;
        }

        // The new state: only what is reachable through durable entries.
        let mut nodes: HashMap<u64, Node> = HashMap::new();
        let mut links: HashMap<u64, u32> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([ROOT]);
        let mut dirs_seen = HashSet::from([ROOT]);
        while let Some(dir) = queue.pop_front() {
            let Some(old) = self.nodes.get(&dir) else {
                continue;
            };
            let Body::Dir { durable, .. } = &old.body else {
                continue;
            };
            let mut kept = BTreeMap::new();
            for (name, &ino) in durable {
                let Some(child) = self.nodes.get(&ino) else {
                    continue;
                };
                if child.kind == FileType::Directory {
                    // A directory reachable twice (a rename synced on one side only)
                    // keeps its first name.
                    if !dirs_seen.insert(ino) {
                        continue;
                    }
                    queue.push_back(ino);
                }
                kept.insert(name.clone(), ino);
                *links.entry(ino).or_default() += 1;
                nodes.entry(ino).or_insert_with(|| {
                    let mut n = child.clone();
                    n.parent = dir;
                    n.name = name.clone();
                    n
                });
            }
            let mut n = if dir == ROOT {
                old.clone()
            } else {
                nodes.remove(&dir).expect("queued dir")
            };
            n.body = Body::Dir {
                entries: kept.clone(),
                durable: kept,
            };
            nodes.insert(dir, n);
        }
        for (ino, n) in nodes.iter_mut() {
            n.opens = 0;
            n.nlink = links.get(ino).copied().unwrap_or(1);
            n.durable_refs = n.nlink;
            if let Body::File {
                data,
                durable,
                dirty,
            } = &mut n.body
            {
                *data = durable.clone();
                dirty.clear();
            }
        }
        self.nodes = nodes;
        self.power_losses += 1;
        self.last = report.clone();
        report
    }
}

/// The FUSE side: a handle on the shared state.
struct Ops {
    state: Arc<Mutex<State>>,
}

impl Ops {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry(&self, reply: ReplyEntry, r: FsResult<u64>) {
        let s = self.state();
        match r.and_then(|ino| Ok(s.node(ino)?.attr(ino))) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn attr(&self, reply: ReplyAttr, r: FsResult<u64>) {
        let s = self.state();
        match r.and_then(|ino| Ok(s.node(ino)?.attr(ino))) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }
}

fn empty(reply: ReplyEmpty, r: FsResult<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl fuser::Filesystem for Ops {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.state().lookup(parent.0, name);
        self.entry(reply, r);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.attr(reply, Ok(ino.0));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = (|| {
            let mut s = self.state();
            if let Some(len) = size {
                s.truncate(ino.0, len)?;
            }
            let n = s.node_mut(ino.0)?;
            if let Some(m) = mode {
                n.perm = (m & 0o7777) as u16;
            }
            if let Some(u) = uid {
                n.uid = u;
            }
            if let Some(g) = gid {
                n.gid = g;
            }
            if let Some(t) = atime {
                n.atime = time(t);
            }
            if let Some(t) = mtime {
                n.mtime = time(t);
            }
            n.ctime = SystemTime::now();
            Ok(ino.0)
        })();
        self.attr(reply, r);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let s = self.state();
        match s.node(ino.0).map(|n| &n.body) {
            Ok(Body::Symlink(t)) => reply.data(t.as_os_str().as_bytes()),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG => Some(FileType::RegularFile),
            libc::S_IFSOCK => Some(FileType::Socket),
            libc::S_IFIFO => Some(FileType::NamedPipe),
            _ => None,
        };
        let r = match kind {
            Some(kind) => self.state().make(req, parent.0, name, kind, mode, umask),
            None => Err(Errno::EPERM),
        };
        self.entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self
            .state()
            .make(req, parent.0, name, FileType::Directory, mode, umask);
        self.entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.state().remove_name(parent.0, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.state().remove_name(parent.0, name, true));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let mut s = self.state();
            let ino = s.make(req, parent.0, link_name, FileType::Symlink, 0o777, 0)?;
            s.node_mut(ino)?.body = Body::Symlink(target.to_path_buf());
            Ok(ino)
        })();
        self.entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.state()
                .rename(parent.0, name, newparent.0, newname, flags),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let mut s = self.state();
            if s.node(ino.0)?.kind == FileType::Directory {
                return Err(Errno::EPERM);
            }
            if s.entries(newparent.0)?.contains_key(newname) {
                return Err(Errno::EEXIST);
            }
            s.entries_mut(newparent.0)?
                .insert(newname.to_os_string(), ino.0);
            let path = s.child_path(newparent.0, newname);
            s.book(&path).names_created += 1;
            let n = s.node_mut(ino.0)?;
            n.nlink += 1;
            n.ctime = SystemTime::now();
            Ok(ino.0)
        })();
        self.entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().node_mut(ino.0) {
            Ok(n) => {
                n.opens += 1;
                reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = self.state();
        match s.node(ino.0).map(|n| &n.body) {
            Ok(Body::File { data, .. }) => {
                let from = (offset as usize).min(data.len());
                let to = (from + size as usize).min(data.len());
                reply.data(&data[from..to]);
            }
            Ok(_) => reply.error(Errno::EISDIR),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.state().write(ino.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        if let Ok(n) = s.node_mut(ino.0) {
            n.opens = n.opens.saturating_sub(1);
        }
        s.maybe_free(ino.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.state().fsync(ino.0));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().node(ino.0) {
            Ok(n) if n.kind == FileType::Directory => {
                reply.opened(FileHandle(0), FopenFlags::empty())
            }
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let s = self.state();
        let r = (|| {
            let node = s.node(ino.0)?;
            let entries = s.entries(ino.0)?;
            let mut list: Vec<(u64, FileType, OsString)> = vec![
                (ino.0, FileType::Directory, ".".into()),
                (node.parent, FileType::Directory, "..".into()),
            ];
            for (name, &child) in entries {
                let kind = s
                    .nodes
                    .get(&child)
                    .map(|n| n.kind)
                    .unwrap_or(FileType::RegularFile);
                list.push((child, kind, name.clone()));
            }
            Ok(list)
        })();
        match r {
            Ok(list) => {
                for (i, (child, kind, name)) in list.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.state().fsyncdir(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // 64 GiB, nearly all free: the suite's full-disk checks never trip.
        reply.statfs(
            1 << 24,
            1 << 24,
            1 << 24,
            1 << 24,
            1 << 24,
            PAGE as u32,
            255,
            PAGE as u32,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        empty(reply, self.state().node(ino.0).map(|_| ()));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.state();
        let r = s
            .make(req, parent.0, name, FileType::RegularFile, mode, umask)
            .and_then(|ino| {
                let n = s.node_mut(ino)?;
                n.opens += 1;
                Ok(n.attr(ino))
            });
        match r {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let mut s = self.state();
        let r = (|| {
            let len = match &s.node(ino.0)?.body {
                Body::File { data, .. } => data.len() as u64,
                _ => return Err(Errno::EISDIR),
            };
            if offset + length > len {
                s.truncate(ino.0, offset + length)?;
            }
            Ok(())
        })();
        empty(reply, r);
    }
}

/// A mounted power-loss file system; unmounted when dropped.
pub struct LazyFs {
    mountpoint: PathBuf,
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
}

impl LazyFs {
    /// Mounts an empty LazyFs at `mountpoint` (created if missing). Errors say why FUSE
    /// cannot be used here (no /dev/fuse, not allowed to mount, …).
    pub fn mount(mountpoint: &Path) -> Result<LazyFs, String> {
        if !Path::new("/dev/fuse").exists() {
            return Err(
                "/dev/fuse is missing: this machine cannot mount FUSE file systems \
                        (load the fuse module, or give the container /dev/fuse)"
                    .into(),
            );
        }
        std::fs::create_dir_all(mountpoint)
            .map_err(|e| format!("cannot create mount point {}: {e}", mountpoint.display()))?;
        let mut fs = LazyFs {
            mountpoint: mountpoint.to_path_buf(),
            state: Arc::new(Mutex::new(State::new())),
            session: None,
        };
        fs.spawn()?;
        Ok(fs)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("lazyfs".into()),
            MountOption::Subtype("lazyfs".into()),
            MountOption::RW,
        ];
        config.acl = SessionACL::All;
        let ops = Ops {
            state: self.state.clone(),
        };
        let session = fuser::spawn_mount(ops, &self.mountpoint, &config).map_err(|e| {
            format!(
                "cannot mount the power-loss file system (FUSE) at {}: {e} \
                 (needs root or fusermount3 from the fuse3 package, and /dev/fuse)",
                self.mountpoint.display()
            )
        })?;
        self.session = Some(session);
        Ok(())
    }

    fn unmount(&mut self) -> Result<(), String> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // Processes just killed may still be closing files: a busy mount is retried.
        let path = std::ffi::CString::new(self.mountpoint.as_os_str().as_bytes())
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        loop {
            // SAFETY: a valid C string; umount2 has no other preconditions.
            let rc = unsafe { libc::umount2(path.as_ptr(), 0) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) {
                break; // not mounted any more
            }
            if start.elapsed() > Duration::from_secs(10) {
                // SAFETY: as above.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
                return Err(format!(
                    "{} still busy after 10 s ({err}): a process still uses it; detached",
                    self.mountpoint.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The session thread ends when the kernel closes the connection; its last read may
        // report an error (EINVAL or ENODEV) that only says the mount is gone.
        let _ = session.umount_and_join();
        Ok(())
    }

    /// Power loss: every unsynced byte and every name whose directory was not fsynced is
    /// gone. The caller has killed every process that uses the mount first. Unmounts,
    /// rebuilds from the durable state and mounts again; returns what was dropped.
    pub fn power_loss(&mut self) -> Result<PowerLoss, String> {
        self.unmount()?;
        let report = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .power_loss();
        self.spawn()?;
        Ok(report)
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// File fsyncs (fsync and fdatasync) so far.
    pub fn fsyncs(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).fsyncs
    }

    /// Directory fsyncs so far.
    pub fn fsyncdirs(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fsyncdirs
    }

    /// What the last power loss dropped.
    pub fn last_power_loss(&self) -> PowerLoss {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last
            .clone()
    }

    /// The books per path pattern: written vs fsynced files, created vs durable names, and
    /// what the power losses dropped. One line per pattern.
    pub fn report(&self) -> String {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = format!(
            "lazyfs: {} fsyncs, {} directory fsyncs, {} power losses\n",
            s.fsyncs, s.fsyncdirs, s.power_losses
        );
        for (p, b) in &s.books {
            let mut flags = Vec::new();
            if b.files_written > b.files_fsynced {
                flags.push("WRITTEN-NOT-FSYNCED");
            }
            if b.names_created > 0 && b.names_made_durable == 0 {
                flags.push("NAME-NEVER-DURABLE");
            }
            out.push_str(&format!(
                "  {p}: files written {} fsynced {}; names created {} made durable {}; \
                 dropped at power loss: {} files / {} bytes, {} names {}\n",
                b.files_written,
                b.files_fsynced,
                b.names_created,
                b.names_made_durable,
                b.dropped_files,
                b.dropped_bytes,
                b.dropped_names,
                flags.join(" ")
            ));
        }
        out
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("lazyfs: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    //! Need root and /dev/fuse: without them each test fails with the reason.
    use super::*;
    use std::fs::{File, OpenOptions};
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    fn mount() -> (tempfile::TempDir, LazyFs) {
        let dir = tempfile::Builder::new()
            .prefix("lazyfs-")
            .tempdir()
            .unwrap();
        let fs = LazyFs::mount(&dir.path().join("m"))
            .unwrap_or_else(|e| panic!("the power-loss file system cannot run here: {e}"));
        (dir, fs)
    }

    fn sync_dir(p: &Path) {
        File::open(p).unwrap().sync_all().unwrap();
    }

    fn read(p: &Path) -> Option<Vec<u8>> {
        std::fs::read(p).ok()
    }

    #[test]
    fn unsynced_writes_are_dropped_and_fsynced_ones_survive() {
        let (_d, mut fs) = mount();
        let m = fs.mountpoint().to_path_buf();
        let a = m.join("a");
        let mut f = File::create(&a).unwrap();
        sync_dir(&m);
        f.write_all(b"durable").unwrap();
        f.sync_data().unwrap();
        f.write_all(b" and volatile").unwrap();
        assert_eq!(read(&a).unwrap(), b"durable and volatile");
        drop(f);
        let report = fs.power_loss().unwrap();
        assert_eq!(read(&a).unwrap(), b"durable");
        assert_eq!(report.dropped_files, 1, "{report}");
        assert!(report.dropped_bytes >= 13, "{report}");
        assert_eq!(fs.fsyncs(), 1);

        // fsync (not only fdatasync) on a file with several pages, written at offsets.
        let big = m.join("big");
        let mut f = File::create(&big).unwrap();
        sync_dir(&m);
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        use std::os::unix::fs::FileExt;
        f.write_at(b"XYZ", 9000).unwrap();
        drop(f);
        fs.power_loss().unwrap();
        assert_eq!(read(&big).unwrap(), data);
    }

    #[test]
    fn a_new_name_needs_its_directory_fsynced() {
        let (_d, mut fs) = mount();
        let m = fs.mountpoint().to_path_buf();
        let mut f = File::create(m.join("lost")).unwrap();
        f.write_all(b"x").unwrap();
        f.sync_all().unwrap();
        drop(f);
        let report = fs.power_loss().unwrap();
        assert!(!m.join("lost").exists());
        assert_eq!(report.dropped_names, 1, "{report}");

        let mut f = File::create(m.join("kept")).unwrap();
        f.write_all(b"y").unwrap();
        f.sync_all().unwrap();
        sync_dir(&m);
        drop(f);
        // A subdirectory and a file in it: both directories must be synced.
        std::fs::create_dir(m.join("sub")).unwrap();
        let mut g = File::create(m.join("sub/inner")).unwrap();
        g.write_all(b"z").unwrap();
        g.sync_all().unwrap();
        sync_dir(&m.join("sub"));
        drop(g);
        fs.power_loss().unwrap();
        assert_eq!(read(&m.join("kept")).unwrap(), b"y");
        assert!(!m.join("sub").exists(), "sub's name was never made durable");

        std::fs::create_dir(m.join("sub")).unwrap();
        sync_dir(&m);
        std::fs::write(m.join("sub/inner"), b"z").unwrap();
        File::open(m.join("sub/inner")).unwrap().sync_all().unwrap();
        sync_dir(&m.join("sub"));
        // An unlink not made durable comes back.
        std::fs::remove_file(m.join("kept")).unwrap();
        let report = fs.power_loss().unwrap();
        assert_eq!(read(&m.join("sub/inner")).unwrap(), b"z");
        assert_eq!(read(&m.join("kept")).unwrap(), b"y");
        assert_eq!(report.resurrected_names, 1, "{report}");
        assert!(
            fs.report()
                .contains("lost: files written 1 fsynced 1; names created 1 made durable 0"),
            "{}",
            fs.report()
        );
    }

    #[test]
    fn a_rename_is_durable_once_the_target_directory_is_fsynced() {
        let (_d, mut fs) = mount();
        let m = fs.mountpoint().to_path_buf();
        for d in ["tmp", "new"] {
            std::fs::create_dir(m.join(d)).unwrap();
        }
        sync_dir(&m);
        let write_synced = |p: &Path, body: &[u8]| {
            let mut f = File::create(p).unwrap();
            f.write_all(body).unwrap();
            f.sync_all().unwrap();
        };
        write_synced(&m.join("tmp/1"), b"one");
        std::fs::rename(m.join("tmp/1"), m.join("new/1")).unwrap();
        fs.power_loss().unwrap();
        assert!(!m.join("new/1").exists());
        assert!(!m.join("tmp/1").exists(), "tmp/ was never synced either");

        write_synced(&m.join("tmp/2"), b"two");
        std::fs::rename(m.join("tmp/2"), m.join("new/2")).unwrap();
        sync_dir(&m.join("new"));
        fs.power_loss().unwrap();
        assert_eq!(read(&m.join("new/2")).unwrap(), b"two");

        // Replacing an existing name; RENAME_NOREPLACE refuses.
        write_synced(&m.join("tmp/3"), b"three");
        std::fs::rename(m.join("tmp/3"), m.join("new/2")).unwrap();
        assert_eq!(read(&m.join("new/2")).unwrap(), b"three");
        write_synced(&m.join("tmp/4"), b"four");
        let from = std::ffi::CString::new(m.join("tmp/4").as_os_str().as_bytes()).unwrap();
        let to = std::ffi::CString::new(m.join("new/2").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C strings.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        assert_eq!(rc, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EEXIST)
        );
        fs.power_loss().unwrap();
        assert_eq!(
            read(&m.join("new/2")).unwrap(),
            b"two",
            "the replacement was not synced"
        );
    }

    #[test]
    fn truncation_is_volatile_until_fsync() {
        let (_d, mut fs) = mount();
        let m = fs.mountpoint().to_path_buf();
        let p = m.join("t");
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(false) // a new file; the test truncates it itself
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        sync_dir(&m);
        f.write_all(&[7u8; 10_000]).unwrap();
        f.sync_all().unwrap();
        f.set_len(100).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 100);
        drop(f);
        fs.power_loss().unwrap();
        assert_eq!(read(&p).unwrap(), vec![7u8; 10_000]);

        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(100).unwrap();
        f.sync_all().unwrap();
        f.set_len(5000).unwrap(); // extension: zeros
        f.sync_data().unwrap();
        drop(f);
        fs.power_loss().unwrap();
        let mut want = vec![7u8; 100];
        want.resize(5000, 0);
        assert_eq!(read(&p).unwrap(), want);

        // O_TRUNC, and fallocate extending the size.
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        f.write_all(b"abc").unwrap();
        // SAFETY: a valid fd.
        assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 8192) }, 0);
        assert_eq!(f.metadata().unwrap().len(), 8192);
        f.sync_data().unwrap();
        drop(f);
        fs.power_loss().unwrap();
        let got = read(&p).unwrap();
        assert_eq!(got.len(), 8192);
        assert_eq!(&got[..3], b"abc");
    }

    #[test]
    fn unix_sockets_and_flock_work_inside() {
        let (_d, fs) = mount();
        let m = fs.mountpoint().to_path_buf();
        std::fs::create_dir(m.join("run")).unwrap();
        let sock = m.join("run/s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            c.write_all(b"hello").unwrap();
        });
        let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        t.join().unwrap();
        assert_eq!(got, "hello");

        let p = m.join("lock");
        let a = File::create(&p).unwrap();
        let b = File::open(&p).unwrap();
        // SAFETY: valid fds.
        unsafe {
            assert_eq!(libc::flock(a.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
            assert_eq!(
                libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB),
                -1
            );
            libc::flock(a.as_raw_fd(), libc::LOCK_UN);
            assert_eq!(libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
        }
    }

    #[test]
    fn sled_opens_locks_and_reopens_on_it() {
        let (_d, fs) = mount();
        let path = fs.mountpoint().join("db");
        {
            let db = sled::open(&path).unwrap();
            assert!(
                sled::open(&path).is_err(),
                "a second open must fail on the lock"
            );
            for i in 0..1000u32 {
                db.insert(i.to_be_bytes(), vec![1u8; 100]).unwrap();
            }
            db.flush().unwrap();
        }
        let db = sled::open(&path).unwrap();
        assert_eq!(db.len(), 1000);
    }
}
