//! Namespace commands: mkdir, create, symlink, link, unlink, rmdir, rename, setattr.
//! POSIX rules for nlink (a directory has 2 + subdirectories), ctime/mtime, and the
//! rename cases (replace, no-replace, exchange, loops).

use super::data::truncate_data;
use super::*;
use distfs_types::{FileKind, NAME_MAX, PATH_MAX};

/// Checks one path component.
pub fn validate_name(name: &str) -> FsResult<()> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(FsError::invalid(format!("`{name}` is not a valid file name")));
    }
    if name.contains('/') || name.contains('\0') {
        return Err(FsError::invalid(format!("file name `{}` contains '/' or NUL", name.escape_debug())));
    }
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong { len: name.len(), max: NAME_MAX });
    }
    Ok(())
}

pub(crate) fn get_inode(txn: &WriteTransaction, ino: InodeId) -> FsResult<Inode> {
    txn.inode(ino)?.ok_or_else(|| FsError::not_found(format!("inode {ino}")))
}

pub(crate) fn get_dir(txn: &WriteTransaction, ino: InodeId) -> FsResult<Inode> {
    let i = get_inode(txn, ino)?;
    if i.attr.kind != FileKind::Dir {
        return Err(FsError::NotADirectory { what: format!("inode {ino}") });
    }
    Ok(i)
}

fn lookup(txn: &WriteTransaction, parent: InodeId, name: &str) -> FsResult<Dentry> {
    txn.dentry(parent, name)?.ok_or_else(|| FsError::not_found(format!("`{name}` in directory {parent}")))
}

pub(super) fn put_dentry(txn: &WriteTransaction, parent: InodeId, name: &str, d: Dentry) -> FsResult<()> {
    let mut t = txn.open_table(DENTRIES).map_err(db_err)?;
    t.insert((parent.0, name), enc(&d).as_slice()).map_err(db_err)?;
    Ok(())
}

pub(super) fn del_dentry(txn: &WriteTransaction, parent: InodeId, name: &str) -> FsResult<()> {
    let mut t = txn.open_table(DENTRIES).map_err(db_err)?;
    t.remove((parent.0, name)).map_err(db_err)?;
    Ok(())
}

fn is_empty_dir(txn: &WriteTransaction, dir: InodeId) -> FsResult<bool> {
    Ok(txn.readdir(dir, None, 1)?.0.is_empty())
}

/// Loads a directory, changes its link count, marks it modified, stores it.
pub(super) fn touch_dir(txn: &WriteTransaction, dir: InodeId, nlink_delta: i32, now: Timestamp) -> FsResult<()> {
    let mut d = get_dir(txn, dir)?;
    d.attr.nlink = d.attr.nlink.saturating_add_signed(nlink_delta);
    d.attr.mtime = now;
    d.attr.ctime = now;
    d.attr.version += 1;
    put_inode(txn, &d)
}

fn new_inode(
    txn: &WriteTransaction,
    kind: FileKind,
    perm: u32,
    uid: u32,
    gid: u32,
    now: Timestamp,
    parent: InodeId,
) -> FsResult<Inode> {
    let ino = InodeId(next_counter(txn, K_NEXT_INO)?);
    Ok(fresh_inode(ino, kind, perm, uid, gid, now, parent))
}

/// A new inode numbered `ino`: empty, version 1, every time `now`; a directory has two
/// links and remembers `parent`.
pub(super) fn fresh_inode(
    ino: InodeId,
    kind: FileKind,
    perm: u32,
    uid: u32,
    gid: u32,
    now: Timestamp,
    parent: InodeId,
) -> Inode {
    Inode {
        attr: Attr {
            ino,
            kind,
            perm: perm & 0o7777,
            uid,
            gid,
            size: 0,
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            atime: now,
            mtime: now,
            ctime: now,
            version: 1,
        },
        parent: if kind == FileKind::Dir { parent } else { InodeId(0) },
        target: None,
    }
}

fn exists(name: &str) -> FsError {
    FsError::AlreadyExists { what: name.to_string() }
}

pub(super) fn mkdir(
    txn: &WriteTransaction,
    parent: InodeId,
    name: &str,
    perm: u32,
    uid: u32,
    gid: u32,
    now: Timestamp,
) -> FsResult<CommandResult> {
    validate_name(name)?;
    get_dir(txn, parent)?;
    if txn.dentry(parent, name)?.is_some() {
        return Err(exists(name));
    }
    let dir = new_inode(txn, FileKind::Dir, perm, uid, gid, now, parent)?;
    put_inode(txn, &dir)?;
    super::dedup::inherit(txn, parent, dir.attr.ino)?;
    put_dentry(txn, parent, name, Dentry { ino: dir.attr.ino, kind: FileKind::Dir })?;
    touch_dir(txn, parent, 1, now)?;
    Ok(CommandResult::Attr(dir.attr))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn create(
    txn: &WriteTransaction,
    parent: InodeId,
    name: &str,
    perm: u32,
    uid: u32,
    gid: u32,
    exclusive: bool,
    now: Timestamp,
) -> FsResult<CommandResult> {
    validate_name(name)?;
    get_dir(txn, parent)?;
    if let Some(d) = txn.dentry(parent, name)? {
        return match (exclusive, d.kind) {
            (false, FileKind::File) => Ok(CommandResult::Attr(get_inode(txn, d.ino)?.attr)),
            (false, FileKind::Dir) => Err(FsError::IsADirectory { what: name.to_string() }),
            _ => Err(exists(name)),
        };
    }
    let file = new_inode(txn, FileKind::File, perm, uid, gid, now, parent)?;
    put_inode(txn, &file)?;
    super::dedup::inherit(txn, parent, file.attr.ino)?;
    put_dentry(txn, parent, name, Dentry { ino: file.attr.ino, kind: FileKind::File })?;
    touch_dir(txn, parent, 0, now)?;
    Ok(CommandResult::Attr(file.attr))
}

pub(super) fn symlink(
    txn: &WriteTransaction,
    parent: InodeId,
    name: &str,
    target: &str,
    uid: u32,
    gid: u32,
    now: Timestamp,
) -> FsResult<CommandResult> {
    validate_name(name)?;
    if target.is_empty() || target.len() > PATH_MAX || target.contains('\0') {
        return Err(FsError::invalid(format!("symlink target must be 1..={PATH_MAX} bytes without NUL")));
    }
    get_dir(txn, parent)?;
    if txn.dentry(parent, name)?.is_some() {
        return Err(exists(name));
    }
    let mut link = new_inode(txn, FileKind::Symlink, 0o777, uid, gid, now, parent)?;
    link.attr.size = target.len() as u64;
    link.target = Some(target.to_string());
    put_inode(txn, &link)?;
    put_dentry(txn, parent, name, Dentry { ino: link.attr.ino, kind: FileKind::Symlink })?;
    touch_dir(txn, parent, 0, now)?;
    Ok(CommandResult::Attr(link.attr))
}

pub(super) fn link(
    txn: &WriteTransaction,
    ino: InodeId,
    new_parent: InodeId,
    new_name: &str,
    now: Timestamp,
) -> FsResult<CommandResult> {
    validate_name(new_name)?;
    let mut i = get_inode(txn, ino)?;
    if i.attr.kind == FileKind::Dir {
        return Err(FsError::PermissionDenied { what: format!("hard link to directory {ino}") });
    }
    get_dir(txn, new_parent)?;
    if txn.dentry(new_parent, new_name)?.is_some() {
        return Err(exists(new_name));
    }
    i.attr.nlink += 1;
    i.attr.ctime = now;
    i.attr.version += 1;
    put_inode(txn, &i)?;
    put_dentry(txn, new_parent, new_name, Dentry { ino, kind: i.attr.kind })?;
    touch_dir(txn, new_parent, 0, now)?;
    Ok(CommandResult::Attr(i.attr))
}

/// Removes one link of a non-directory; the last link frees the inode and its data,
/// unless a client session holds it open (then it lives on with nlink 0 until released).
fn drop_link(txn: &WriteTransaction, ino: InodeId, now: Timestamp) -> FsResult<()> {
    let mut i = get_inode(txn, ino)?;
    if i.attr.nlink <= 1 {
        super::open_files::drop_last_link(txn, i, now)
    } else {
        i.attr.nlink -= 1;
        i.attr.ctime = now;
        i.attr.version += 1;
        put_inode(txn, &i)
    }
}

pub(super) fn unlink(txn: &WriteTransaction, parent: InodeId, name: &str, now: Timestamp) -> FsResult<CommandResult> {
    validate_name(name)?;
    get_dir(txn, parent)?;
    let d = lookup(txn, parent, name)?;
    if d.kind == FileKind::Dir {
        return Err(FsError::IsADirectory { what: name.to_string() });
    }
    del_dentry(txn, parent, name)?;
    drop_link(txn, d.ino, now)?;
    touch_dir(txn, parent, 0, now)?;
    Ok(CommandResult::Done)
}

pub(super) fn rmdir(txn: &WriteTransaction, parent: InodeId, name: &str, now: Timestamp) -> FsResult<CommandResult> {
    validate_name(name)?;
    get_dir(txn, parent)?;
    let d = lookup(txn, parent, name)?;
    if d.kind != FileKind::Dir {
        return Err(FsError::NotADirectory { what: name.to_string() });
    }
    if !is_empty_dir(txn, d.ino)? {
        return Err(FsError::DirectoryNotEmpty { what: name.to_string() });
    }
    del_dentry(txn, parent, name)?;
    del_inode(txn, d.ino)?;
    touch_dir(txn, parent, -1, now)?;
    Ok(CommandResult::Done)
}

/// True when `dir` is `ancestor` or lies below it.
fn is_in_subtree(txn: &WriteTransaction, mut dir: InodeId, ancestor: InodeId) -> FsResult<bool> {
    for _ in 0..100_000 {
        if dir == ancestor {
            return Ok(true);
        }
        if dir == InodeId::ROOT {
            return Ok(false);
        }
        dir = get_inode(txn, dir)?.parent;
    }
    Err(FsError::internal("directory parent chain does not reach the root"))
}

/// Points a moved inode at its new parent and stamps its ctime.
fn moved(txn: &WriteTransaction, ino: InodeId, new_parent: InodeId, now: Timestamp) -> FsResult<()> {
    let mut i = get_inode(txn, ino)?;
    if i.attr.kind == FileKind::Dir {
        i.parent = new_parent;
    }
    i.attr.ctime = now;
    i.attr.version += 1;
    put_inode(txn, &i)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn rename(
    txn: &WriteTransaction,
    parent: InodeId,
    name: &str,
    new_parent: InodeId,
    new_name: &str,
    mode: RenameMode,
    now: Timestamp,
) -> FsResult<CommandResult> {
    validate_name(name)?;
    validate_name(new_name)?;
    get_dir(txn, parent)?;
    get_dir(txn, new_parent)?;
    let src = lookup(txn, parent, name)?;
    if parent == new_parent && name == new_name {
        return Ok(CommandResult::Done);
    }
    let loop_err = || FsError::invalid("cannot move a directory into its own subtree");
    if src.kind == FileKind::Dir && is_in_subtree(txn, new_parent, src.ino)? {
        return Err(loop_err());
    }
    let dst = txn.dentry(new_parent, new_name)?;
    let dir_delta = |d: &Dentry| i32::from(d.kind == FileKind::Dir);
    match (mode, dst) {
        (RenameMode::NoReplace, Some(_)) => return Err(exists(new_name)),
        (RenameMode::Exchange, None) => {
            return Err(FsError::not_found(format!("`{new_name}` in directory {new_parent}")))
        }
        (RenameMode::Exchange, Some(dst)) => {
            if dst.kind == FileKind::Dir && is_in_subtree(txn, parent, dst.ino)? {
                return Err(loop_err());
            }
            put_dentry(txn, parent, name, dst)?;
            put_dentry(txn, new_parent, new_name, src)?;
            moved(txn, src.ino, new_parent, now)?;
            moved(txn, dst.ino, parent, now)?;
            let delta = dir_delta(&dst) - dir_delta(&src);
            if parent != new_parent {
                touch_dir(txn, parent, delta, now)?;
                touch_dir(txn, new_parent, -delta, now)?;
            } else {
                touch_dir(txn, parent, 0, now)?;
            }
            return Ok(CommandResult::Done);
        }
        (_, Some(dst)) => {
            if dst.ino == src.ino {
                // Two links to the same inode: POSIX says do nothing.
                return Ok(CommandResult::Done);
            }
            match (src.kind == FileKind::Dir, dst.kind == FileKind::Dir) {
                (true, true) => {
                    if !is_empty_dir(txn, dst.ino)? {
                        return Err(FsError::DirectoryNotEmpty { what: new_name.to_string() });
                    }
                    del_inode(txn, dst.ino)?;
                    touch_dir(txn, new_parent, -1, now)?;
                }
                (true, false) => return Err(FsError::NotADirectory { what: new_name.to_string() }),
                (false, true) => return Err(FsError::IsADirectory { what: new_name.to_string() }),
                (false, false) => drop_link(txn, dst.ino, now)?,
            }
        }
        (_, None) => {}
    }
    del_dentry(txn, parent, name)?;
    put_dentry(txn, new_parent, new_name, src)?;
    moved(txn, src.ino, new_parent, now)?;
    let delta = dir_delta(&src);
    if parent != new_parent {
        touch_dir(txn, parent, -delta, now)?;
        touch_dir(txn, new_parent, delta, now)?;
    } else {
        touch_dir(txn, parent, 0, now)?;
    }
    Ok(CommandResult::Done)
}

pub(super) fn setattr(txn: &WriteTransaction, ino: InodeId, set: &SetAttr, now: Timestamp) -> FsResult<CommandResult> {
    let mut i = get_inode(txn, ino)?;
    if let Some(size) = set.size {
        match i.attr.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(FsError::IsADirectory { what: format!("inode {ino}") }),
            FileKind::Symlink => return Err(FsError::invalid("cannot change the size of a symlink")),
        }
        if size < i.attr.size {
            let fmt = txn.format_or_unavailable()?;
            truncate_data(txn, ino, size, fmt.chunk_size)?;
        }
        i.attr.size = size;
        i.attr.mtime = now;
    }
    if let Some(p) = set.perm {
        i.attr.perm = p & 0o7777;
    }
    if let Some(u) = set.uid {
        i.attr.uid = u;
    }
    if let Some(g) = set.gid {
        i.attr.gid = g;
    }
    if let Some(a) = set.atime {
        i.attr.atime = a;
    }
    if let Some(m) = set.mtime {
        i.attr.mtime = m;
    }
    i.attr.ctime = now;
    i.attr.version += 1;
    put_inode(txn, &i)?;
    Ok(CommandResult::Attr(i.attr))
}
