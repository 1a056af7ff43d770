//! Advisory byte-range locks as the wire carries them (fcntl/flock through the mount).

use serde::{Deserialize, Serialize};

/// Shared (read) or exclusive (write) lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LockKind {
    Read,
    Write,
}

/// A lock held on an inode: bytes `[start, end]` (inclusive; `end = u64::MAX` or the
/// kernel's OFFSET_MAX means "to the end of the file"), by `pid` on some mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub start: u64,
    pub end: u64,
    pub kind: LockKind,
    pub pid: u32,
}
