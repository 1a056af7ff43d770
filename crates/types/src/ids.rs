//! Identifier newtypes. Each has its own type so an inode can never be passed where a
//! block or node is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An inode number. `InodeId::ROOT` is the root directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InodeId(pub u64);

impl InodeId {
    pub const ROOT: InodeId = InodeId(1);
    /// Inodes of snapshots (`/.snapshots` and everything below it) are numbered from
    /// here on: read-only, and told apart from live inodes by their number alone.
    pub const SNAPSHOT_BASE: u64 = 1 << 50;

    /// True for `/.snapshots` and every inode of a snapshot (all read-only).
    pub fn in_snapshot(self) -> bool {
        self.0 >= Self::SNAPSHOT_BASE
    }
}

impl fmt::Display for InodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A 128-bit block id, chosen at random by the metadata leader when space is allocated.
/// Blocks are immutable: a new write always gets a new id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlockId(pub u128);

impl BlockId {
    /// Parses the 32-hex-digit form produced by `Display`.
    pub fn from_hex(s: &str) -> Option<BlockId> {
        if s.len() != 32 {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(BlockId)
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockId({self})")
    }
}

/// A storage node id, issued by the metadata service on first registration and kept by
/// the node in its data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// A metadata-issued sequence number. Raft-ordered, so it never depends on a wall clock:
/// where committed slices overlap, the higher sequence number wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Seq(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_id_hex_round_trip() {
        let id = BlockId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(BlockId::from_hex(&id.to_string()), Some(id));
        assert_eq!(BlockId::from_hex("zz"), None);
    }
}
