//! Snapshot requests and answers (`MetaRequest::Snapshot`, `MetaResponse::Snapshots`).

use distfs_types::Timestamp;
use serde::{Deserialize, Serialize};

/// Longest snapshot name, in bytes (a file name under `/.snapshots`).
pub const SNAPSHOT_NAME_MAX: usize = 255;

/// One snapshot operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotOp {
    /// Snapshots the directory tree at `path` as `/.snapshots/<name>`.
    Create { path: String, name: String },
    /// Every snapshot, by name.
    List,
    /// Removes a snapshot; blocks only it referenced are garbage-collected.
    Delete { name: String },
    /// Replaces the content of the directory `to` (default: the snapshot's source path)
    /// by the snapshot's.
    Restore { name: String, to: Option<String> },
}

impl SnapshotOp {
    /// True for the operations that change the namespace (admin only).
    pub fn changes_state(&self) -> bool {
        !matches!(self, SnapshotOp::List)
    }
}

/// A snapshot as `distfs snapshot list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub name: String,
    /// The path of the directory it was taken of, at the time.
    pub source: String,
    pub created: Timestamp,
    pub files: u64,
    pub dirs: u64,
    /// Sum of the sizes of its files.
    pub bytes: u64,
    /// Bytes on the storage nodes (every replica) of the blocks only this snapshot
    /// references: what deleting it frees.
    pub exclusive_bytes: u64,
}
