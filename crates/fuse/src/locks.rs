//! Advisory locks across mounts: every fcntl lock (POSIX and OFD) of this mount is a
//! lock of `(session, kernel lock owner)` in the metadata service, so two mounts on
//! different machines exclude each other. The mount announces `FUSE_POSIX_LOCKS`, so
//! the kernel asks here instead of arbitrating locally. A blocking request (`F_SETLKW`,
//! `F_OFD_SETLKW`) asks again with a capped backoff until it gets the lock. Locks go
//! away on unlock, when a POSIX owner flushes (closing any descriptor of the file drops
//! the process's locks), with this mount's last handle of the inode, and with the
//! session (unmount, or lease expiry of a mount that died). flock(2) stays local to the
//! machine: fuser does not tell flock requests from fcntl ones (FUSE_LK_FLOCK), and the
//! two kinds must not conflict.

use crate::state::Inner;
use distfs_client::{ClientError, Result};
use distfs_types::{FsError, InodeId, LockInfo, LockKind};
use std::time::{Duration, Instant};

/// A blocking lock request gives up with `EINTR` after this long (the kernel would
/// deliver a signal the same way; programs retry).
pub const LOCK_WAIT_MAX: Duration = Duration::from_secs(600);
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_millis(200);

/// fcntl's lock type as a lock kind (`None`: unlock); `Err` for anything else.
pub fn kind_of(typ: i32) -> std::result::Result<Option<LockKind>, ()> {
    match typ {
        libc::F_RDLCK => Ok(Some(LockKind::Read)),
        libc::F_WRLCK => Ok(Some(LockKind::Write)),
        libc::F_UNLCK => Ok(None),
        _ => Err(()),
    }
}

pub fn typ_of(kind: LockKind) -> i32 {
    match kind {
        LockKind::Read => libc::F_RDLCK,
        LockKind::Write => libc::F_WRLCK,
    }
}

/// How a blocking request ended without the lock.
#[derive(Debug)]
pub enum LockWait {
    TimedOut,
    Failed(ClientError),
}

impl Inner {
    /// Sets or clears a lock; with `wait`, retries a conflict until it clears.
    #[allow(clippy::too_many_arguments)]
    pub async fn setlk(
        &self,
        ino: InodeId,
        owner: u64,
        start: u64,
        end: u64,
        kind: Option<LockKind>,
        pid: u32,
        wait: bool,
    ) -> std::result::Result<(), LockWait> {
        if kind.is_none() && !self.session.has_locks(ino) {
            return Ok(());
        }
        let began = Instant::now();
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.client.set_lock(ino, self.session.id, owner, start, end, kind, pid).await {
                Ok(()) => {
                    if kind.is_some() {
                        self.session.note_locks(ino);
                    }
                    return Ok(());
                }
                Err(ClientError::Fs(FsError::LockConflict { .. })) if wait => {
                    if began.elapsed() >= LOCK_WAIT_MAX {
                        return Err(LockWait::TimedOut);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(e) => return Err(LockWait::Failed(e)),
            }
        }
    }

    /// The lock that would block a `kind` lock of `owner` over `[start, end]`.
    pub async fn getlk(
        &self,
        ino: InodeId,
        owner: u64,
        start: u64,
        end: u64,
        kind: LockKind,
    ) -> Result<Option<LockInfo>> {
        self.client.get_lock(ino, self.session.id, owner, start, end, kind).await
    }

    /// Drops every lock of `owner` on `ino` (flush of a POSIX owner); nothing to ask when
    /// this mount never locked the inode.
    pub async fn unlock_owner(&self, ino: InodeId, owner: u64) {
        if let Err(e) = self.setlk(ino, owner, 0, u64::MAX, None, 0, false).await {
            tracing::warn!(%ino, owner, error = ?e, "could not drop the locks of a closing owner; the last close or the session lease will");
        }
    }
}
