//! Client sessions and orphans: POSIX delete-while-open. A session (one mount) renews a
//! lease; which inodes it holds open is the leader's volatile table (`crate::opens`), not
//! state. The last unlink of an inode never frees it here: it stays with nlink 0 in the
//! orphan table until the leader, which knows the opens, proposes `FreeOrphans`. Expiry is
//! decided from the `now` the leader puts in the command, never from a clock read here.
//!
//! `OpenFile`/`ReleaseFile` and `Create { open }` entries written by earlier builds still
//! apply (to the `opens` table, which nothing reads any more but these paths).

use super::data::free_chunks_from;
use super::*;
use redb::ReadableTable;

fn expiry_of(txn: &WriteTransaction, session: u64) -> FsResult<Option<Timestamp>> {
    txn.session(session)
}

fn put_expiry(txn: &WriteTransaction, session: u64, expires: Timestamp) -> FsResult<()> {
    let mut t = txn.open_table(SESSIONS).map_err(db_err)?;
    t.insert(session, enc(&expires).as_slice()).map_err(db_err)?;
    Ok(())
}

/// The last link of `inode` goes: it becomes an orphan (nlink 0, data kept), freed when
/// the leader knows nobody holds it open.
pub(crate) fn drop_last_link(txn: &WriteTransaction, mut inode: Inode, now: Timestamp) -> FsResult<()> {
    inode.attr.nlink = 0;
    inode.attr.ctime = now;
    inode.attr.version += 1;
    put_inode(txn, &inode)?;
    txn.open_table(ORPHANS).map_err(db_err)?.insert(inode.attr.ino.0, ()).map_err(db_err)?;
    Ok(())
}

/// Queues `ino` for the sweeper if it has no link left (a release of an earlier build's
/// registration: the inode may have been kept for it alone).
fn orphan_if_unlinked(txn: &WriteTransaction, ino: InodeId) -> FsResult<()> {
    let Some(inode) = txn.inode(ino)? else { return Ok(()) };
    if inode.attr.nlink == 0 && inode.attr.kind != distfs_types::FileKind::Dir {
        txn.open_table(ORPHANS).map_err(db_err)?.insert(ino.0, ()).map_err(db_err)?;
    }
    Ok(())
}

/// `FreeOrphans`: frees each inode that is still an orphan.
pub(super) fn free_orphans(txn: &WriteTransaction, inos: &[InodeId]) -> FsResult<CommandResult> {
    for &ino in inos {
        let was_orphan = txn.open_table(ORPHANS).map_err(db_err)?.remove(ino.0).map_err(db_err)?.is_some();
        let Some(inode) = txn.inode(ino)? else { continue };
        if !was_orphan || inode.attr.nlink != 0 || inode.attr.kind == distfs_types::FileKind::Dir {
            continue;
        }
        // Registrations of earlier builds die with the inode.
        let sessions: Vec<u64> = {
            let t = txn.open_table(OPENS).map_err(db_err)?;
            let mut out = Vec::new();
            for item in t.range((ino.0, 0u64)..=(ino.0, u64::MAX)).map_err(db_err)? {
                out.push(item.map_err(db_err)?.0.value().1);
            }
            out
        };
        for s in sessions {
            txn.open_table(OPENS).map_err(db_err)?.remove((ino.0, s)).map_err(db_err)?;
            txn.open_table(SESSION_OPENS).map_err(db_err)?.remove((s, ino.0)).map_err(db_err)?;
        }
        free_chunks_from(txn, ino, 0)?;
        del_inode(txn, ino)?;
    }
    Ok(CommandResult::Done)
}

/// `TouchSession`: the session exists from now on, its lease lasting at least to `expires`.
pub(super) fn touch_session(txn: &WriteTransaction, session: u64, expires: Timestamp) -> FsResult<CommandResult> {
    if expiry_of(txn, session)?.is_none_or(|e| e < expires) {
        put_expiry(txn, session, expires)?;
    }
    Ok(CommandResult::Done)
}

pub(super) fn open(txn: &WriteTransaction, ino: InodeId, session: u64, expires: Timestamp) -> FsResult<CommandResult> {
    let inode = match txn.inode(ino)? {
        Some(i) => i,
        None => return Err(FsError::StaleInode { ino }),
    };
    touch_session(txn, session, expires)?;
    txn.open_table(OPENS).map_err(db_err)?.insert((ino.0, session), ()).map_err(db_err)?;
    txn.open_table(SESSION_OPENS).map_err(db_err)?.insert((session, ino.0), ()).map_err(db_err)?;
    Ok(CommandResult::Attr(inode.attr))
}

pub(super) fn release(txn: &WriteTransaction, ino: InodeId, session: u64) -> FsResult<CommandResult> {
    // The mount's last handle of the inode is gone: so are its processes' locks on it.
    super::locks::drop_session_locks(txn, session, Some(ino))?;
    txn.open_table(OPENS).map_err(db_err)?.remove((ino.0, session)).map_err(db_err)?;
    txn.open_table(SESSION_OPENS).map_err(db_err)?.remove((session, ino.0)).map_err(db_err)?;
    orphan_if_unlinked(txn, ino)?;
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
        orphan_if_unlinked(txn, InodeId(ino))?;
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
