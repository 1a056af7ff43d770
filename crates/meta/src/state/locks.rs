//! Advisory locks in the replicated state: the locks of each inode are one value of the
//! `meta` table under `locks/<ino>` (so snapshots carry them with no format change); the
//! lock semantics themselves are the pure functions of `crate::locks`. A session's locks
//! end with the session (close or lease expiry) and with the last release of an inode
//! by that session; an inode's locks end when the inode is freed.

use super::*;
use crate::locks::{self as lk, LockRec, LockReq};
use redb::ReadableTable;

const PREFIX: &str = "locks/";

fn key(ino: InodeId) -> String {
    format!("{PREFIX}{:020}", ino.0)
}

pub(crate) fn locks_of(r: &impl Reader, ino: InodeId) -> FsResult<Vec<LockRec>> {
    Ok(r.meta_get(&key(ino))?.unwrap_or_default())
}

fn store(txn: &WriteTransaction, ino: InodeId, locks: &[LockRec]) -> FsResult<()> {
    if locks.is_empty() {
        txn.open_table(META).map_err(db_err)?.remove(key(ino).as_str()).map_err(db_err)?;
        Ok(())
    } else {
        meta_put(txn, &key(ino), &locks.to_vec())
    }
}

pub(super) fn set_lock(txn: &WriteTransaction, ino: InodeId, req: LockReq) -> FsResult<CommandResult> {
    if txn.inode(ino)?.is_none() {
        return Err(FsError::StaleInode { ino });
    }
    let mut locks = locks_of(txn, ino)?;
    match lk::set(&mut locks, req) {
        Ok(()) => {
            store(txn, ino, &locks)?;
            Ok(CommandResult::Done)
        }
        Err(c) => Err(FsError::LockConflict {
            what: format!(
                "bytes {}..={} of inode {ino} are {} locked by pid {} (session {:016x})",
                c.start,
                c.end,
                if c.kind == distfs_types::LockKind::Write { "write" } else { "read" },
                c.pid,
                c.session
            ),
        }),
    }
}

/// Drops the locks of `session` (only on `ino` when given).
pub(super) fn drop_session_locks(txn: &WriteTransaction, session: u64, ino: Option<InodeId>) -> FsResult<()> {
    let inos: Vec<InodeId> = match ino {
        Some(i) => vec![i],
        None => {
            let t = txn.open_table(META).map_err(db_err)?;
            let mut v = Vec::new();
            for item in t.range(PREFIX..).map_err(db_err)? {
                let (k, _) = item.map_err(db_err)?;
                let Some(n) = k.value().strip_prefix(PREFIX) else { break };
                if let Ok(n) = n.parse::<u64>() {
                    v.push(InodeId(n));
                }
            }
            v
        }
    };
    for ino in inos {
        let mut locks = locks_of(txn, ino)?;
        let before = locks.len();
        lk::drop_owner(&mut locks, session, None);
        if locks.len() != before {
            store(txn, ino, &locks)?;
        }
    }
    Ok(())
}

/// Forgets every lock of a freed inode.
pub(crate) fn drop_inode_locks(txn: &WriteTransaction, ino: InodeId) -> FsResult<()> {
    store(txn, ino, &[])
}
