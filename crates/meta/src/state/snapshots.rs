//! Snapshots of directory trees: `/.snapshots/NAME` is a metadata copy of the source
//! tree (inodes, entries, chunks with their slices, xattrs) that shares every block
//! (each block's `refs` counts the snapshot's slices too, so GC cannot free a block a
//! snapshot still refers to). The copy is one command, applied in one transaction:
//! O(entries of the tree), bounded by `SNAPSHOT_MAX_ENTRIES`. Snapshot inodes are
//! numbered from `InodeId::SNAPSHOT_BASE` on and are read-only (`guard`). Inline data is
//! copied by value; hard links inside the tree stay hard links in the copy.
//!
//! Records live in the `meta` table under `snap/NAME` (so the Raft snapshot carries them
//! with no format change).

use super::data::put_block;
use super::namespace::{del_dentry, fresh_inode, get_dir, get_inode, put_dentry, touch_dir, validate_name};
use super::*;
use distfs_proto::SnapshotInfo;
use distfs_types::{DirEntry, FileKind, Slice};
use std::collections::{HashMap, HashSet};

/// The directory under the root that holds every snapshot.
pub const SNAPSHOTS_DIR: &str = ".snapshots";
/// Most entries (files, directories, symlinks, hard links) a snapshot create or restore
/// copies in one command: what bounds the time one Raft entry takes to apply.
pub const SNAPSHOT_MAX_ENTRIES: u64 = 100_000;
/// Next free snapshot inode number.
const K_NEXT_SNAP_INO: &str = "next_snap_ino";
const K_SNAP_PREFIX: &str = "snap/";
/// The first key after every `snap/` key.
const K_SNAP_END: &str = "snap0";

/// Snapshot commands (`Command::Snapshot`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapCmd {
    /// Copies the tree of directory `source` (at `path`) to `/.snapshots/<name>`.
    Create {
        source: InodeId,
        path: String,
        name: String,
        now: Timestamp,
    },
    Delete {
        name: String,
        now: Timestamp,
    },
    /// Replaces the content of live directory `target` by the snapshot's.
    Restore {
        name: String,
        target: InodeId,
        now: Timestamp,
    },
}

/// A snapshot's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapRec {
    pub root: InodeId,
    pub source: String,
    pub created: Timestamp,
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
}

fn read_only(what: impl std::fmt::Display) -> FsError {
    FsError::ReadOnly { what: what.to_string() }
}

fn writable(ino: InodeId) -> FsResult<()> {
    if ino.in_snapshot() {
        return Err(read_only(format!("inode {ino} is in a snapshot")));
    }
    Ok(())
}

fn writable_entry(txn: &WriteTransaction, parent: InodeId, name: &str) -> FsResult<()> {
    writable(parent)?;
    match txn.dentry(parent, name)? {
        Some(d) if d.ino.in_snapshot() => Err(read_only(format!("`{name}` is a snapshot or holds them"))),
        _ => Ok(()),
    }
}

/// Refuses any change to a snapshot inode (`ReadOnly`, `EROFS`): the check in front of
/// every namespace and data command.
pub(super) fn guard(txn: &WriteTransaction, cmd: &Command) -> FsResult<()> {
    match cmd {
        Command::Mkdir { parent, .. } | Command::Create { parent, .. } | Command::Symlink { parent, .. } => {
            writable(*parent)
        }
        Command::Link { ino, new_parent, .. } => writable(*ino).and(writable(*new_parent)),
        Command::Unlink { parent, name, .. } | Command::Rmdir { parent, name, .. } => {
            writable_entry(txn, *parent, name)
        }
        Command::Rename { parent, name, new_parent, new_name, .. } => {
            writable_entry(txn, *parent, name)?;
            writable_entry(txn, *new_parent, new_name)
        }
        Command::SetAttr { ino, .. }
        | Command::CommitWrite { ino, .. }
        | Command::SetXattr { ino, .. }
        | Command::RemoveXattr { ino, .. }
        | Command::Dedup(super::dedup::DedupCommand::CommitWrite { ino, .. }) => writable(*ino),
        _ => Ok(()),
    }
}

/// Whether data may be written to `ino` (checked before blocks are allocated).
pub fn check_writable(ino: InodeId) -> FsResult<()> {
    writable(ino)
}

pub(super) fn apply(txn: &WriteTransaction, cmd: &SnapCmd) -> FsResult<CommandResult> {
    match cmd {
        SnapCmd::Create { source, path, name, now } => create(txn, *source, path, name, *now),
        SnapCmd::Delete { name, now } => delete(txn, name, *now),
        SnapCmd::Restore { name, target, now } => restore(txn, name, *target, *now),
    }
}

fn key(name: &str) -> String {
    format!("{K_SNAP_PREFIX}{name}")
}

fn record(txn: &WriteTransaction, name: &str) -> FsResult<SnapRec> {
    txn.meta_get(&key(name))?
        .ok_or_else(|| FsError::not_found(format!("snapshot `{name}` (see `distfs snapshot list`)")))
}

fn alloc(txn: &WriteTransaction, snapshot: bool) -> FsResult<InodeId> {
    if !snapshot {
        return Ok(InodeId(next_counter(txn, K_NEXT_INO)?));
    }
    let v: u64 = txn.meta_get(K_NEXT_SNAP_INO)?.unwrap_or(InodeId::SNAPSHOT_BASE);
    meta_put(txn, K_NEXT_SNAP_INO, &(v + 1))?;
    Ok(InodeId(v))
}

fn put_chunk(txn: &WriteTransaction, ino: InodeId, index: u64, slices: &Vec<Slice>) -> FsResult<()> {
    let mut t = txn.open_table(CHUNKS).map_err(db_err)?;
    t.insert((ino.0, index), enc(slices).as_slice()).map_err(db_err)?;
    Ok(())
}

/// Every entry below `root` as (parent, entry), parents before children; `/.snapshots`
/// (a snapshot inode in a live tree) is left out. More than `SNAPSHOT_MAX_ENTRIES` is an
/// error that says so.
pub(crate) fn walk<R: Reader>(r: &R, root: InodeId) -> FsResult<Vec<(InodeId, DirEntry)>> {
    walk_at_most(r, root, SNAPSHOT_MAX_ENTRIES)
}

/// `walk` with the bound as a parameter.
pub(crate) fn walk_at_most<R: Reader>(r: &R, root: InodeId, max: u64) -> FsResult<Vec<(InodeId, DirEntry)>> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        let (entries, _) = r.readdir(dir, None, usize::MAX)?;
        for e in entries {
            if e.ino.in_snapshot() && !root.in_snapshot() {
                continue;
            }
            if out.len() as u64 >= max {
                return Err(FsError::OutOfRange {
                    reason: format!(
                        "the tree holds more than {max} entries, the most one snapshot create, \
                         restore or delete handles; snapshot smaller directories"
                    ),
                });
            }
            if e.kind == FileKind::Dir {
                stack.push(e.ino);
            }
            out.push((dir, e));
        }
    }
    Ok(out)
}

/// What a tree copy made.
#[derive(Default)]
struct Copied {
    files: u64,
    dirs: u64,
    bytes: u64,
    /// Directories directly in the target (its link count grows by this).
    top_dirs: u32,
}

/// Copies the tree below `from` into the (existing, empty) directory `to`: new inodes
/// (snapshot numbers when `snapshot`), the same attributes, slices and xattrs; every
/// block referenced once more per slice that refers to it.
fn copy_tree(txn: &WriteTransaction, from: InodeId, to: InodeId, snapshot: bool) -> FsResult<Copied> {
    let entries = walk(txn, from)?;
    let mut map: HashMap<InodeId, InodeId> = HashMap::from([(from, to)]);
    let mut made: HashMap<InodeId, Inode> = HashMap::new();
    let mut c = Copied::default();
    for (parent, e) in entries {
        let new_parent = *map.get(&parent).ok_or_else(|| FsError::internal("tree walk out of order"))?;
        if let Some(&existing) = map.get(&e.ino) {
            // A second link to a file already copied: a hard link in the copy too.
            let i = made.get_mut(&existing).ok_or_else(|| FsError::internal("hard link to a copied directory"))?;
            i.attr.nlink += 1;
            put_dentry(txn, new_parent, &e.name, Dentry { ino: existing, kind: e.kind })?;
            continue;
        }
        let mut inode = get_inode(txn, e.ino)?;
        let new = alloc(txn, snapshot)?;
        inode.attr.ino = new;
        match inode.attr.kind {
            FileKind::Dir => {
                inode.parent = new_parent;
                inode.attr.nlink = 2;
                c.dirs += 1;
                if new_parent == to {
                    c.top_dirs += 1;
                } else if let Some(p) = made.get_mut(&new_parent) {
                    p.attr.nlink += 1;
                }
            }
            _ => {
                inode.attr.nlink = 1;
                if inode.attr.kind == FileKind::File {
                    c.files += 1;
                    c.bytes += inode.attr.size;
                }
            }
        }
        for (index, slices) in txn.chunks(e.ino, 0, u64::MAX)? {
            for b in slices.iter().flat_map(|s| s.blocks.iter()) {
                let mut rec = txn.block(b.id)?.ok_or_else(|| {
                    FsError::internal(format!("block {} of inode {} is not in the block map", b.id, e.ino))
                })?;
                rec.refs += 1;
                put_block(txn, b.id, &rec)?;
            }
            put_chunk(txn, new, index, &slices)?;
        }
        for (name, _) in txn.xattr_names(e.ino)? {
            if let Some(v) = txn.xattr(e.ino, &name)? {
                let mut t = txn.open_table(XATTRS).map_err(db_err)?;
                t.insert((new.0, name.as_str()), v.as_slice()).map_err(db_err)?;
            }
        }
        put_dentry(txn, new_parent, &e.name, Dentry { ino: new, kind: e.kind })?;
        map.insert(e.ino, new);
        made.insert(new, inode);
    }
    for i in made.values() {
        put_inode(txn, i)?;
    }
    Ok(c)
}

/// `/.snapshots`, made on the first snapshot.
fn snapshots_dir(txn: &WriteTransaction, now: Timestamp) -> FsResult<InodeId> {
    match txn.dentry(InodeId::ROOT, SNAPSHOTS_DIR)? {
        Some(d) if d.ino.in_snapshot() => Ok(d.ino),
        Some(_) => Err(FsError::AlreadyExists {
            what: format!("/{SNAPSHOTS_DIR} is an ordinary entry; rename it to take snapshots"),
        }),
        None => {
            let ino = alloc(txn, true)?;
            let root = get_inode(txn, InodeId::ROOT)?;
            let dir = fresh_inode(ino, FileKind::Dir, 0o755, root.attr.uid, root.attr.gid, now, InodeId::ROOT);
            put_inode(txn, &dir)?;
            put_dentry(txn, InodeId::ROOT, SNAPSHOTS_DIR, Dentry { ino, kind: FileKind::Dir })?;
            touch_dir(txn, InodeId::ROOT, 1, now)?;
            Ok(ino)
        }
    }
}

fn create(txn: &WriteTransaction, source: InodeId, path: &str, name: &str, now: Timestamp) -> FsResult<CommandResult> {
    validate_name(name)?;
    if source.in_snapshot() {
        return Err(FsError::invalid(format!("`{path}` is in a snapshot; snapshot a live directory")));
    }
    let src = get_dir(txn, source)?;
    if txn.meta_get::<SnapRec>(&key(name))?.is_some() {
        return Err(FsError::AlreadyExists { what: format!("snapshot `{name}`") });
    }
    let dir = snapshots_dir(txn, now)?;
    if txn.dentry(dir, name)?.is_some() {
        return Err(FsError::AlreadyExists { what: format!("/{SNAPSHOTS_DIR}/{name}") });
    }
    let root = alloc(txn, true)?;
    let mut copy = Inode { attr: Attr { ino: root, nlink: 2, ..src.attr }, parent: dir, target: None };
    put_inode(txn, &copy)?;
    let c = copy_tree(txn, source, root, true)?;
    copy.attr.nlink += c.top_dirs;
    put_inode(txn, &copy)?;
    put_dentry(txn, dir, name, Dentry { ino: root, kind: FileKind::Dir })?;
    touch_dir(txn, dir, 1, now)?;
    let rec = SnapRec { root, source: path.to_string(), created: now, files: c.files, dirs: c.dirs, bytes: c.bytes };
    meta_put(txn, &key(name), &rec)?;
    Ok(CommandResult::Attr(copy.attr))
}

/// Removes every entry below `root` (children first), through the rules of unlink for
/// files: the last link frees the data unless a session holds the file open.
fn remove_tree(txn: &WriteTransaction, root: InodeId, now: Timestamp) -> FsResult<()> {
    let entries = walk(txn, root)?;
    for (parent, e) in entries.into_iter().rev() {
        del_dentry(txn, parent, &e.name)?;
        if e.kind == FileKind::Dir {
            del_inode(txn, e.ino)?;
            continue;
        }
        let mut i = get_inode(txn, e.ino)?;
        if i.attr.nlink <= 1 {
            super::open_files::drop_last_link(txn, i, now)?;
        } else {
            i.attr.nlink -= 1;
            i.attr.ctime = now;
            i.attr.version += 1;
            put_inode(txn, &i)?;
        }
    }
    Ok(())
}

fn delete(txn: &WriteTransaction, name: &str, now: Timestamp) -> FsResult<CommandResult> {
    let rec = record(txn, name)?;
    remove_tree(txn, rec.root, now)?;
    del_inode(txn, rec.root)?;
    let dir = snapshots_dir(txn, now)?;
    del_dentry(txn, dir, name)?;
    touch_dir(txn, dir, -1, now)?;
    let mut t = txn.open_table(META).map_err(db_err)?;
    t.remove(key(name).as_str()).map_err(db_err)?;
    Ok(CommandResult::Done)
}

fn restore(txn: &WriteTransaction, name: &str, target: InodeId, now: Timestamp) -> FsResult<CommandResult> {
    let rec = record(txn, name)?;
    if target.in_snapshot() {
        return Err(read_only("a snapshot cannot be restored into a snapshot; restore into a live directory"));
    }
    get_dir(txn, target)?;
    // Live entries go the way `rm -r` takes them (an open file keeps its data until
    // released); `/.snapshots` stays.
    let live = walk(txn, target)?;
    for (parent, e) in live.into_iter().rev() {
        if e.kind == FileKind::Dir {
            super::namespace::rmdir(txn, parent, &e.name, now)?;
        } else {
            super::namespace::unlink(txn, parent, &e.name, now)?;
        }
    }
    let c = copy_tree(txn, rec.root, target, false)?;
    let snap = get_inode(txn, rec.root)?.attr;
    let mut dir = get_dir(txn, target)?;
    dir.attr.perm = snap.perm;
    dir.attr.uid = snap.uid;
    dir.attr.gid = snap.gid;
    dir.attr.nlink += c.top_dirs;
    dir.attr.mtime = now;
    dir.attr.ctime = now;
    dir.attr.version += 1;
    put_inode(txn, &dir)?;
    Ok(CommandResult::Attr(dir.attr))
}

/// Every snapshot, by name, with the bytes only it holds on the storage nodes.
pub fn list(r: &redb::ReadTransaction) -> FsResult<Vec<SnapshotInfo>> {
    let mut recs = Vec::new();
    {
        let t = r.open_table(META).map_err(db_err)?;
        for item in t.range(K_SNAP_PREFIX..K_SNAP_END).map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let rec: SnapRec = dec("meta", v.value())?;
            recs.push((k.value()[K_SNAP_PREFIX.len()..].to_string(), rec));
        }
    }
    let mut out = Vec::with_capacity(recs.len());
    for (name, rec) in recs {
        let exclusive_bytes = exclusive_bytes(r, rec.root)?;
        out.push(SnapshotInfo {
            name,
            source: rec.source,
            created: rec.created,
            files: rec.files,
            dirs: rec.dirs,
            bytes: rec.bytes,
            exclusive_bytes,
        });
    }
    Ok(out)
}

/// Bytes (times replicas) of the blocks every reference of which lies in the tree.
fn exclusive_bytes<R: Reader>(r: &R, root: InodeId) -> FsResult<u64> {
    let mut uses: HashMap<distfs_types::BlockId, u32> = HashMap::new();
    let mut seen = HashSet::new();
    for (_, e) in walk(r, root)? {
        if e.kind != FileKind::File || !seen.insert(e.ino) {
            continue;
        }
        for (_, slices) in r.chunks(e.ino, 0, u64::MAX)? {
            for b in slices.iter().flat_map(|s| s.blocks.iter()) {
                *uses.entry(b.id).or_default() += 1;
            }
        }
    }
    let mut total = 0u64;
    for (id, n) in uses {
        if let Some(rec) = r.block(id)? {
            if rec.refs <= n {
                total += rec.len as u64 * rec.replicas.len() as u64;
            }
        }
    }
    Ok(total)
}
