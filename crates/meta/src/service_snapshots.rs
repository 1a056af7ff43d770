//! `MetaRequest::Snapshot`: paths are resolved on the leader, the change is one Raft
//! command (`state::snapshots`), listings are read from the leader's state.

use crate::service::{resolve_path, Service};
use crate::state::{snapshots, Command, SnapCmd};
use distfs_proto::{MetaResponse, SnapshotInfo, SnapshotOp, SNAPSHOT_NAME_MAX};
use distfs_types::{FileKind, FsError, FsResult, Timestamp};

impl Service {
    fn snapshot_info(&self, name: &str) -> FsResult<SnapshotInfo> {
        let r = self.store.read()?;
        snapshots::list(&r)?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| FsError::not_found(format!("snapshot `{name}` (see `distfs snapshot list`)")))
    }

    pub(crate) async fn snapshot(&self, op: SnapshotOp, now: Timestamp) -> FsResult<MetaResponse> {
        match op {
            SnapshotOp::Create { path, name } => {
                if name.len() > SNAPSHOT_NAME_MAX {
                    return Err(FsError::NameTooLong { len: name.len(), max: SNAPSHOT_NAME_MAX });
                }
                self.read_barrier().await?;
                let attr = resolve_path(&self.store.read()?, &path)?;
                if attr.kind != FileKind::Dir {
                    return Err(FsError::NotADirectory { what: format!("`{path}` (snapshot a directory)") });
                }
                self.write(Command::Snapshot(SnapCmd::Create { source: attr.ino, path, name: name.clone(), now }))
                    .await?;
                Ok(MetaResponse::Snapshots(vec![self.snapshot_info(&name)?]))
            }
            SnapshotOp::List => {
                self.read_barrier().await?;
                Ok(MetaResponse::Snapshots(snapshots::list(&self.store.read()?)?))
            }
            SnapshotOp::Delete { name } => {
                self.read_barrier().await?;
                let info = self.snapshot_info(&name)?;
                self.write(Command::Snapshot(SnapCmd::Delete { name, now })).await?;
                Ok(MetaResponse::Snapshots(vec![info]))
            }
            SnapshotOp::Restore { name, to } => {
                self.read_barrier().await?;
                let info = self.snapshot_info(&name)?;
                let to = to.unwrap_or_else(|| info.source.clone());
                let attr = resolve_path(&self.store.read()?, &to).map_err(|e| match e {
                    FsError::NotFound { .. } => FsError::not_found(format!(
                        "`{to}`, the directory to restore snapshot `{name}` into (create it, or give --to)"
                    )),
                    e => e,
                })?;
                if attr.kind != FileKind::Dir {
                    return Err(FsError::NotADirectory { what: format!("`{to}` (restore into a directory)") });
                }
                self.write(Command::Snapshot(SnapCmd::Restore { name, target: attr.ino, now })).await?;
                Ok(MetaResponse::Snapshots(vec![info]))
            }
        }
    }
}
