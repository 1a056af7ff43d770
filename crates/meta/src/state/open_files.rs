//! Open files of client sessions: POSIX delete-while-open. A session (one mount) holds
//! inodes open under a lease it renews; the last unlink of an inode that some session
//! holds leaves it with nlink 0 and its data, and the last release (or the expiry of the
//! lease of the last holder) frees it. Expiry is decided from the `now` the leader puts
//! in the command, never from a clock read here.

use super::data::free_chunks_from;
use super::*;
use redb::ReadableTable;

fn expiry_of(txn: &WriteTransaction, session: u64) -> FsResult<Option<Timestamp>> {
    let t = txn.open_table(SESSIONS).map_err(db_err)?;
    let v = t.get(session).map_err(db_err)?;
    v.map(|g| dec("sessions", g.value())).transpose()
}

fn put_expiry(txn: &WriteTransaction, session: u64, expires: Timestamp) -> FsResult<()> {
    let mut t = txn.open_table(SESSIONS).map_err(db_err)?;
    t.insert(session, enc(&expires).as_slice()).map_err(db_err)?;
    Ok(())
}

/// True when any session holds `ino` open.
pub(crate) fn is_open(txn: &WriteTransaction, ino: InodeId) -> FsResult<bool> {
    let t = txn.open_table(OPENS).map_err(db_err)?;
    let mut r = t.range((ino.0, 0u64)..=(ino.0, u64::MAX)).map_err(db_err)?;
    let found = r.next().transpose().map_err(db_err)?.is_some();
    Ok(found)
}

/// The last link of `inode` goes: free it now, or keep it (nlink 0) while it is open.
pub(crate) fn drop_last_link(txn: &WriteTransaction, mut inode: Inode, now: Timestamp) -> FsResult<()> {
    let ino = inode.attr.ino;
    if is_open(txn, ino)? {
        inode.attr.nlink = 0;
        inode.attr.ctime = now;
        inode.attr.version += 1;
        tracing::debug!(%ino, "last link removed while open: kept until released");
        return put_inode(txn, &inode);
    }
    free_chunks_from(txn, ino, 0)?;
    del_inode(txn, ino)
}

/// Frees `ino` if it has no link left and nobody holds it open any more.
fn free_if_orphan(txn: &WriteTransaction, ino: InodeId) -> FsResult<()> {
    let Some(inode) = txn.inode(ino)? else { return Ok(()) };
    if inode.attr.nlink == 0 && inode.attr.kind != distfs_types::FileKind::Dir && !is_open(txn, ino)? {
        free_chunks_from(txn, ino, 0)?;
        del_inode(txn, ino)?;
    }
    Ok(())
}

pub(super) fn open(txn: &WriteTransaction, ino: InodeId, session: u64, expires: Timestamp) -> FsResult<CommandResult> {
    let inode = match txn.inode(ino)? {
        Some(i) => i,
        None => return Err(FsError::StaleInode { ino }),
    };
    if expiry_of(txn, session)?.is_none_or(|e| e < expires) {
        put_expiry(txn, session, expires)?;
    }
    txn.open_table(OPENS).map_err(db_err)?.insert((ino.0, session), ()).map_err(db_err)?;
    txn.open_table(SESSION_OPENS).map_err(db_err)?.insert((session, ino.0), ()).map_err(db_err)?;
    Ok(CommandResult::Attr(inode.attr))
}

pub(super) fn release(txn: &WriteTransaction, ino: InodeId, session: u64) -> FsResult<CommandResult> {
    // The mount's last handle of the inode is gone: so are its processes' locks on it.
    super::locks::drop_session_locks(txn, session, Some(ino))?;
    txn.open_table(OPENS).map_err(db_err)?.remove((ino.0, session)).map_err(db_err)?;
    txn.open_table(SESSION_OPENS).map_err(db_err)?.remove((session, ino.0)).map_err(db_err)?;
    free_if_orphan(txn, ino)?;
    Ok(CommandResult::Done)
}

pub(super) fn renew(txn: &WriteTransaction, session: u64, expires: Timestamp) -> FsResult<CommandResult> {
    match expiry_of(txn, session)? {
        None => Err(FsError::not_found(format!("client session {session:016x} (expired)"))),
        Some(e) => {
            if e < expires {
                put_expiry(txn, session, expires)?;
            }
            Ok(CommandResult::Done)
        }
    }
}

/// Ends `session`: releases everything it holds open.
pub(super) fn close_session(txn: &WriteTransaction, session: u64) -> FsResult<CommandResult> {
    let inos: Vec<u64> = {
        let mut t = txn.open_table(SESSION_OPENS).map_err(db_err)?;
        let mut inos = Vec::new();
        for item in t.range((session, 0u64)..=(session, u64::MAX)).map_err(db_err)? {
            let (k, _) = item.map_err(db_err)?;
            inos.push(k.value().1);
        }
        for ino in &inos {
            t.remove((session, *ino)).map_err(db_err)?;
        }
        inos
    };
    {
        let mut t = txn.open_table(OPENS).map_err(db_err)?;
        for ino in &inos {
            t.remove((*ino, session)).map_err(db_err)?;
        }
    }
    txn.open_table(SESSIONS).map_err(db_err)?.remove(session).map_err(db_err)?;
    super::locks::drop_session_locks(txn, session, None)?;
    for ino in inos {
        free_if_orphan(txn, InodeId(ino))?;
    }
    Ok(CommandResult::Done)
}

/// Sessions whose lease ended before `now`.
pub(crate) fn expired(r: &impl Reader, now: Timestamp) -> FsResult<Vec<u64>> {
    r.sessions()?.into_iter().filter(|(_, e)| *e < now).map(|(s, _)| Ok(s)).collect()
}

pub(super) fn expire(txn: &WriteTransaction, now: Timestamp) -> FsResult<CommandResult> {
    for session in expired(txn, now)? {
        tracing::info!(session = format_args!("{session:016x}"), "client session expired; its open files are released");
        close_session(txn, session)?;
    }
    Ok(CommandResult::Done)
}
