//! `FsError`: the error every DistFS service returns over the wire. Variants carry the
//! ids involved, and `retry()` says what a caller should do next. The FUSE errno, the CLI
//! exit code and the HTTP status are each derived from it in exactly one place, in the
//! crate that owns that edge.

use crate::ids::{BlockId, InodeId, NodeId};
use serde::{Deserialize, Serialize};

pub type FsResult<T> = Result<T, FsError>;

/// What a caller should do after an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// The request cannot succeed as sent: give up and report.
    Never,
    /// A transient condition: retry after a backoff.
    Backoff,
    /// Send the request to the metadata leader instead.
    ToLeader,
    /// Try another replica of the same block.
    OtherReplica,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum FsError {
    #[error("no such file or directory: {what}")]
    NotFound { what: String },
    #[error("already exists: {what}")]
    AlreadyExists { what: String },
    #[error("not a directory: {what}")]
    NotADirectory { what: String },
    #[error("is a directory: {what}")]
    IsADirectory { what: String },
    #[error("directory not empty: {what}")]
    DirectoryNotEmpty { what: String },
    #[error("invalid argument: {reason}")]
    InvalidArgument { reason: String },
    #[error("name too long ({len} bytes, the limit is {max})")]
    NameTooLong { len: usize, max: usize },
    #[error("permission denied: {what}")]
    PermissionDenied { what: String },
    #[error("no space: {reason}")]
    NoSpace { reason: String },
    #[error("inode {ino} is stale (it was removed)")]
    StaleInode { ino: InodeId },
    #[error("not the metadata leader; leader is {}", leader.as_deref().unwrap_or("unknown"))]
    NotLeader { leader: Option<String> },
    #[error("service unavailable, retry later: {reason}")]
    Unavailable { reason: String },
    #[error("write not acknowledged: {acked} of {needed} required replicas stored block {block} ({detail})")]
    NotEnoughReplicas { block: BlockId, acked: usize, needed: usize, detail: String },
    #[error("block {block} is corrupt on node {node}: {detail}")]
    Corrupt { block: BlockId, node: NodeId, detail: String },
    #[error("block {block} not found on node {node}")]
    BlockNotFound { block: BlockId, node: NodeId },
    #[error("I/O error: {reason}")]
    Io { reason: String },
    #[error("protocol error: {reason}")]
    Protocol { reason: String },
    #[error("internal error: {reason}")]
    Internal { reason: String },
    /// An extended attribute that is not set (`ENODATA`).
    #[error("no such extended attribute: {what}")]
    NoData { what: String },
    /// A value larger than its limit (an extended attribute's value: `E2BIG`).
    #[error("too big: {what} is {len} bytes, the limit is {max}")]
    TooBig { what: String, len: usize, max: usize },
    /// A size or name outside the range an operation accepts (`ERANGE`).
    #[error("out of range: {reason}")]
    OutOfRange { reason: String },
    /// A lock request that conflicts with a lock another owner holds (`EAGAIN`); a
    /// blocking request waits and asks again.
    #[error("lock conflict: {what}")]
    LockConflict { what: String },
    /// A change to a read-only inode: a snapshot (`EROFS`). Change the live tree, or
    /// `distfs snapshot restore` the snapshot into it.
    #[error("read-only: {what} (snapshots cannot be changed; change the live tree or restore the snapshot into it)")]
    ReadOnly { what: String },
}

impl FsError {
    /// What the caller should do next.
    pub fn retry(&self) -> Retry {
        match self {
            FsError::NotLeader { .. } => Retry::ToLeader,
            FsError::Unavailable { .. } => Retry::Backoff,
            FsError::Corrupt { .. } | FsError::BlockNotFound { .. } => Retry::OtherReplica,
            _ => Retry::Never,
        }
    }

    pub fn not_found(what: impl std::fmt::Display) -> FsError {
        FsError::NotFound { what: what.to_string() }
    }

    pub fn invalid(reason: impl std::fmt::Display) -> FsError {
        FsError::InvalidArgument { reason: reason.to_string() }
    }

    pub fn internal(reason: impl std::fmt::Display) -> FsError {
        FsError::Internal { reason: reason.to_string() }
    }

    pub fn io(reason: impl std::fmt::Display) -> FsError {
        FsError::Io { reason: reason.to_string() }
    }
}
