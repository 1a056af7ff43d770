//! `StorageError`: every failure of the storage node, with the ids involved. `to_fs` is the
//! one place where a storage error becomes the wire `FsError` a client sees.

use distfs_types::{BlockId, FsError, NodeId};
use std::io;
use std::path::PathBuf;

/// What exactly is wrong with a block file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorruptKind {
    BadMagic {
        found: u32,
    },
    UnsupportedVersion {
        found: u16,
    },
    HeaderChecksum {
        expected: u32,
        computed: u32,
    },
    /// The header names another block than the file name does.
    WrongId {
        found: BlockId,
    },
    /// A length field is out of bounds (larger than the maximum block size, say).
    BadLength {
        len: u64,
    },
    /// The file is shorter or longer than its header says.
    Truncated {
        expected: u64,
        found: u64,
    },
    /// A 64 KiB piece of data does not match its CRC32C.
    DataChecksum {
        piece: u32,
        expected: u32,
        computed: u32,
    },
    /// A compressed block's header names no codec this build knows.
    BadCodec {
        found: u16,
    },
    /// The stored bytes passed their CRCs but do not decompress to the plain length.
    Decompress {
        reason: String,
    },
    /// A 64 KiB piece of the decompressed bytes does not match its CRC32C.
    PlainChecksum {
        piece: u32,
        expected: u32,
        computed: u32,
    },
}

impl std::fmt::Display for CorruptKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CorruptKind::BadMagic { found } => write!(f, "bad magic {found:#010x}"),
            CorruptKind::UnsupportedVersion { found } => {
                write!(f, "unsupported block format version {found}")
            }
            CorruptKind::HeaderChecksum { expected, computed } => {
                write!(f, "header checksum mismatch (stored {expected:#010x}, computed {computed:#010x})")
            }
            CorruptKind::WrongId { found } => write!(f, "header names block {found}"),
            CorruptKind::BadLength { len } => write!(f, "length field {len} out of bounds"),
            CorruptKind::Truncated { expected, found } => {
                write!(f, "file is {found} bytes, header says {expected}")
            }
            CorruptKind::DataChecksum { piece, expected, computed } => write!(
                f,
                "data checksum mismatch in 64 KiB piece {piece} (stored {expected:#010x}, computed {computed:#010x})"
            ),
            CorruptKind::BadCodec { found } => write!(f, "unknown compression codec {found}"),
            CorruptKind::Decompress { reason } => write!(f, "compressed data does not decompress: {reason}"),
            CorruptKind::PlainChecksum { piece, expected, computed } => write!(
                f,
                "decompressed data checksum mismatch in 64 KiB piece {piece} \
                 (stored {expected:#010x}, computed {computed:#010x})"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("config key `{key}`: {reason}")]
    Config { key: &'static str, reason: String },
    #[error("cannot parse config{}: {message}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    ConfigParse { path: Option<PathBuf>, message: String },
    #[error("block {block} not found")]
    NotFound { block: BlockId },
    #[error("cannot copy block {block} from any source: {reason}")]
    CopyFailed { block: BlockId, reason: String },
    #[error("block {block} is corrupt at {}: {kind}", path.display())]
    Corrupt { block: BlockId, path: PathBuf, kind: CorruptKind },
    #[error("block {block}: body does not match the client's CRC32C in 64 KiB piece {piece} (sent {sent:#010x}, computed {computed:#010x})")]
    BodyChecksum { block: BlockId, piece: u32, sent: u32, computed: u32 },
    #[error("block {block}: {got} CRCs sent for a {len}-byte body, which needs {expected}")]
    CrcCount { block: BlockId, len: u64, got: usize, expected: usize },
    #[error("block {block}: {len} bytes is larger than the maximum block size {max}")]
    TooLarge { block: BlockId, len: u64, max: u64 },
    #[error("block {block}: range offset {offset} is past the end of the {block_len}-byte block")]
    BadRange { block: BlockId, offset: u64, block_len: u64 },
    #[error("block {block} already exists with different content")]
    Conflict { block: BlockId },
    #[error("no space for block {block} ({needed} bytes): {why}")]
    NoSpace { block: BlockId, needed: u64, why: NoSpaceWhy },
    #[error("too many writes in flight ({limit} running, queue full); retry later")]
    Overloaded { limit: usize },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("malformed storage request: {reason}")]
    BadRequest { reason: String },
    #[error("this is a storage node; it does not serve {kind} requests")]
    WrongService { kind: &'static str },
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("the storage node is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a write was refused for space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoSpaceWhy {
    /// Accepting the block would pass the configured capacity.
    Capacity { used: u64, capacity: u64 },
    /// Accepting the block would leave less than `reserve` bytes free on the file system.
    Reserve { available: u64, reserve: u64 },
    /// The file system itself said ENOSPC/EDQUOT.
    Disk,
}

impl std::fmt::Display for NoSpaceWhy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoSpaceWhy::Capacity { used, capacity } => {
                write!(f, "{used} of {capacity} bytes of capacity in use")
            }
            NoSpaceWhy::Reserve { available, reserve } => {
                write!(f, "only {available} bytes free on the file system, {reserve} are kept in reserve")
            }
            NoSpaceWhy::Disk => f.write_str("the file system is full"),
        }
    }
}

impl StorageError {
    /// An I/O error, turned into `NoSpace` when the OS says the disk is full.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io { op, path: path.into(), source }
    }

    /// True for ENOSPC / EDQUOT from the OS.
    pub(crate) fn is_disk_full(e: &io::Error) -> bool {
        matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
    }

    /// The wire error for this failure. `node` is this node's id (`NodeId(0)` before the
    /// metadata service issued one).
    pub fn to_fs(&self, node: NodeId) -> FsError {
        match self {
            StorageError::NotFound { block } => FsError::BlockNotFound { block: *block, node },
            StorageError::Corrupt { block, kind, .. } => {
                FsError::Corrupt { block: *block, node, detail: kind.to_string() }
            }
            StorageError::NoSpace { .. } => FsError::NoSpace { reason: self.to_string() },
            StorageError::Io { source, .. } if Self::is_disk_full(source) => {
                FsError::NoSpace { reason: self.to_string() }
            }
            StorageError::BodyChecksum { .. }
            | StorageError::CrcCount { .. }
            | StorageError::TooLarge { .. }
            | StorageError::BadRange { .. } => FsError::InvalidArgument { reason: self.to_string() },
            StorageError::Conflict { .. } => FsError::AlreadyExists { what: self.to_string() },
            StorageError::Overloaded { .. } | StorageError::ShuttingDown | StorageError::CopyFailed { .. } => {
                FsError::Unavailable { reason: self.to_string() }
            }
            StorageError::Io { .. } => FsError::Io { reason: self.to_string() },
            StorageError::BadRequest { .. } | StorageError::WrongService { .. } => {
                FsError::Protocol { reason: self.to_string() }
            }
            StorageError::Config { .. }
            | StorageError::ConfigParse { .. }
            | StorageError::Bind { .. }
            | StorageError::Internal(_) => FsError::Internal { reason: self.to_string() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_mapping() {
        let b = BlockId(7);
        let n = NodeId(3);
        assert!(matches!(
            StorageError::NotFound { block: b }.to_fs(n),
            FsError::BlockNotFound { block, node } if block == b && node == n
        ));
        let full = StorageError::io("write", "/x", io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(full.to_fs(n), FsError::NoSpace { .. }));
        let c = StorageError::Corrupt { block: b, path: "/x".into(), kind: CorruptKind::BadMagic { found: 1 } };
        assert!(matches!(c.to_fs(n), FsError::Corrupt { node, .. } if node == n));
    }
}
