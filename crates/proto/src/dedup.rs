//! Wire types of deduplication and compression at rest (issue 10).

use crate::compress::Compression;
use crate::messages::{BadReplica, SliceWrite};
use distfs_types::{BlockId, InodeId, Timestamp};
use serde::{Deserialize, Serialize};

/// BLAKE3 of a block's plain bytes.
pub type Fingerprint = [u8; 32];

/// The directory setting (`none`, `lz4`, `zstd`) that picks the codec of new blocks;
/// copied to every file and directory created under it.
pub const COMPRESSION_XATTR: &str = "user.distfs.compression";

/// Most fingerprints one lookup may carry.
pub const MAX_LOOKUP: usize = 1024;

/// How one block of a dedup commit relates to the fingerprint table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockFp {
    pub block: BlockId,
    pub fp: Fingerprint,
    /// True: the client did not write the block, it references the block a lookup found
    /// under `fp`; the commit fails with `BlockNotFound` if that block is gone (or no longer
    /// holds `fp`). False: a block the client wrote; `fp` is registered for it unless
    /// another block already holds that fingerprint.
    pub existing: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DedupRequest {
    /// For each fingerprint, the block already stored with it (answered `Fingerprints`).
    Lookup { fps: Vec<Fingerprint> },
    /// `CommitWrite` plus the fingerprints of its blocks (answered `Attr`).
    CommitWrite {
        ino: InodeId,
        slices: Vec<SliceWrite>,
        min_size: u64,
        mtime: Timestamp,
        bad: Vec<BadReplica>,
        fps: Vec<BlockFp>,
    },
}

/// A compressed block on the wire (`StorageRequest::PutPacked`, `StorageResponse::Packed`):
/// the frame body is the stored (compressed) bytes, `crcs` the CRC32C of each 64 KiB of
/// them; `plain_crcs` the CRC32C of each 64 KiB of the `plain_len` decompressed bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedPut {
    pub block: BlockId,
    pub crcs: Vec<u32>,
    pub codec: Compression,
    pub plain_len: u32,
    pub plain_crcs: Vec<u32>,
}
