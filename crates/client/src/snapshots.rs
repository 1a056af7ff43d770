//! Snapshot calls: create, list, delete, restore (`MetaRequest::Snapshot`).

use crate::error::Result;
use crate::ns::{expect_resp, normalize};
use crate::Client;
use distfs_proto::{MetaRequest, MetaResponse, SnapshotInfo, SnapshotOp};

impl Client {
    async fn snapshot_op(&self, op: SnapshotOp) -> Result<Vec<SnapshotInfo>> {
        let r = self.meta_call(MetaRequest::Snapshot(op)).await?;
        expect_resp!(r, MetaResponse::Snapshots(s) => s, "Snapshot")
    }

    /// Snapshots the directory tree at `path` as `/.snapshots/<name>`.
    pub async fn snapshot_create(&self, path: &str, name: &str) -> Result<SnapshotInfo> {
        let op = SnapshotOp::Create { path: normalize(path)?, name: name.to_string() };
        let mut s = self.snapshot_op(op).await?;
        s.pop().ok_or(crate::ClientError::Unexpected { request: "Snapshot" })
    }

    /// Every snapshot, by name.
    pub async fn snapshot_list(&self) -> Result<Vec<SnapshotInfo>> {
        self.snapshot_op(SnapshotOp::List).await
    }

    /// Deletes a snapshot; answers what it was.
    pub async fn snapshot_delete(&self, name: &str) -> Result<SnapshotInfo> {
        let mut s = self.snapshot_op(SnapshotOp::Delete { name: name.to_string() }).await?;
        s.pop().ok_or(crate::ClientError::Unexpected { request: "Snapshot" })
    }

    /// Replaces the content of `to` (default: the snapshot's source) by the snapshot's.
    pub async fn snapshot_restore(&self, name: &str, to: Option<&str>) -> Result<SnapshotInfo> {
        let to = to.map(normalize).transpose()?;
        let mut s = self.snapshot_op(SnapshotOp::Restore { name: name.to_string(), to }).await?;
        s.pop().ok_or(crate::ClientError::Unexpected { request: "Snapshot" })
    }
}
