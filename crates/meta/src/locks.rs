//! Advisory byte-range locks (POSIX fcntl semantics), as pure functions over the list of
//! locks held on one inode. An owner is `(session, owner)`: the mount's client session
//! and the kernel's lock owner (a process's file table for fcntl, an open file for
//! flock). Locks of one owner never conflict with each other; a new lock of an owner
//! replaces what that owner held over its range (splitting, upgrading or downgrading),
//! and touching ranges of one owner and kind merge. Ranges are inclusive.

use distfs_types::{LockInfo, LockKind};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRec {
    pub session: u64,
    pub owner: u64,
    pub start: u64,
    pub end: u64,
    pub kind: LockKind,
    pub pid: u32,
}

impl LockRec {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }

    pub fn info(&self) -> LockInfo {
        LockInfo { start: self.start, end: self.end, kind: self.kind, pid: self.pid }
    }
}

/// A lock request: `kind: None` unlocks the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockReq {
    pub session: u64,
    pub owner: u64,
    pub start: u64,
    pub end: u64,
    pub kind: Option<LockKind>,
    pub pid: u32,
}

/// The first lock of another owner that `kind` over `[start, end]` conflicts with.
pub fn conflict(locks: &[LockRec], session: u64, owner: u64, start: u64, end: u64, kind: LockKind) -> Option<LockRec> {
    locks
        .iter()
        .find(|l| {
            (l.session, l.owner) != (session, owner)
                && l.overlaps(start, end)
                && (kind == LockKind::Write || l.kind == LockKind::Write)
        })
        .copied()
}

/// Applies `req` to `locks`; on a conflict nothing changes and the conflicting lock is
/// returned.
pub fn set(locks: &mut Vec<LockRec>, req: LockReq) -> Result<(), LockRec> {
    if req.start > req.end {
        return Ok(());
    }
    if let Some(kind) = req.kind {
        if let Some(c) = conflict(locks, req.session, req.owner, req.start, req.end, kind) {
            return Err(c);
        }
    }
    // Cut the owner's own locks out of the range.
    let mut out = Vec::with_capacity(locks.len() + 2);
    for l in locks.drain(..) {
        if (l.session, l.owner) != (req.session, req.owner) || !l.overlaps(req.start, req.end) {
            out.push(l);
            continue;
        }
        if l.start < req.start {
            out.push(LockRec { end: req.start - 1, ..l });
        }
        if l.end > req.end {
            out.push(LockRec { start: req.end + 1, ..l });
        }
    }
    if let Some(kind) = req.kind {
        let mut new =
            LockRec { session: req.session, owner: req.owner, start: req.start, end: req.end, kind, pid: req.pid };
        // Merge touching or overlapping locks of the same owner and kind.
        out.retain(|l| {
            let same = (l.session, l.owner, l.kind) == (new.session, new.owner, new.kind);
            let touches = l.start <= new.end.saturating_add(1) && new.start <= l.end.saturating_add(1);
            if same && touches {
                new.start = new.start.min(l.start);
                new.end = new.end.max(l.end);
                false
            } else {
                true
            }
        });
        out.push(new);
    }
    out.sort_by_key(|l| (l.start, l.session, l.owner));
    *locks = out;
    Ok(())
}

/// Removes every lock of `session` (and, with `owner`, only that owner's).
pub fn drop_owner(locks: &mut Vec<LockRec>, session: u64, owner: Option<u64>) {
    locks.retain(|l| l.session != session || owner.is_some_and(|o| o != l.owner));
}

#[cfg(test)]
mod tests {
    use super::*;
    use LockKind::{Read, Write};

    fn req(session: u64, owner: u64, start: u64, end: u64, kind: Option<LockKind>) -> LockReq {
        LockReq { session, owner, start, end, kind, pid: 7 }
    }

    fn ranges(locks: &[LockRec]) -> Vec<(u64, u64, u64, LockKind)> {
        locks.iter().map(|l| (l.owner, l.start, l.end, l.kind)).collect()
    }

    #[test]
    fn writers_exclude_everyone_readers_share() {
        let mut t = Vec::new();
        set(&mut t, req(1, 1, 0, 99, Some(Read))).unwrap();
        set(&mut t, req(2, 1, 50, 150, Some(Read))).unwrap();
        let c = set(&mut t, req(3, 1, 90, 95, Some(Write))).unwrap_err();
        assert_eq!((c.session, c.start), (1, 0));
        // Outside every lock: fine.
        set(&mut t, req(3, 1, 151, 200, Some(Write))).unwrap();
        assert!(set(&mut t, req(1, 1, 160, 160, Some(Read))).is_err());
        // Same session, other owner (another process on the same mount) conflicts too.
        assert!(set(&mut t, req(1, 2, 0, 0, Some(Write))).is_err());
    }

    #[test]
    fn an_owner_splits_upgrades_and_unlocks_its_own_ranges() {
        let mut t = Vec::new();
        set(&mut t, req(1, 1, 0, 99, Some(Read))).unwrap();
        // Upgrade the middle: the owner's own read lock does not conflict.
        set(&mut t, req(1, 1, 40, 59, Some(Write))).unwrap();
        assert_eq!(ranges(&t), vec![(1, 0, 39, Read), (1, 40, 59, Write), (1, 60, 99, Read)]);
        // Unlock a piece out of the middle of the write lock.
        set(&mut t, req(1, 1, 45, 49, None)).unwrap();
        assert_eq!(ranges(&t), vec![(1, 0, 39, Read), (1, 40, 44, Write), (1, 50, 59, Write), (1, 60, 99, Read)]);
        // Another owner can take the hole.
        set(&mut t, req(2, 1, 45, 49, Some(Write))).unwrap();
        // Whole-file unlock of owner 1.
        set(&mut t, req(1, 1, 0, u64::MAX, None)).unwrap();
        assert_eq!(ranges(&t), vec![(1, 45, 49, Write)]);
        assert_eq!(t[0].session, 2);
    }

    #[test]
    fn touching_ranges_of_one_owner_merge() {
        let mut t = Vec::new();
        set(&mut t, req(1, 1, 0, 9, Some(Write))).unwrap();
        set(&mut t, req(1, 1, 10, 19, Some(Write))).unwrap();
        set(&mut t, req(1, 1, 30, u64::MAX, Some(Write))).unwrap();
        set(&mut t, req(1, 1, 15, 35, Some(Write))).unwrap();
        assert_eq!(ranges(&t), vec![(1, 0, u64::MAX, Write)]);
    }

    #[test]
    fn a_conflict_changes_nothing_and_dropping_a_session_frees_its_locks() {
        let mut t = Vec::new();
        set(&mut t, req(1, 1, 0, u64::MAX, Some(Write))).unwrap();
        set(&mut t, req(2, 5, 0, 0, None)).unwrap();
        let before = t.clone();
        assert!(set(&mut t, req(2, 5, 10, 20, Some(Read))).is_err());
        assert_eq!(t, before);
        set(&mut t, req(1, 2, 0, 0, None)).unwrap(); // other owner's unlock: no effect
        assert_eq!(t, before);
        drop_owner(&mut t, 1, Some(2));
        assert_eq!(t, before);
        drop_owner(&mut t, 1, None);
        assert!(t.is_empty());
        set(&mut t, req(2, 5, 10, 20, Some(Read))).unwrap();
    }
}
