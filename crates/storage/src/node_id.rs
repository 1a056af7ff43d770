//! The node id file `data_dir/node_id`: the id the metadata service issued, kept across
//! restarts. Written crash-safely (temp, fsync, rename, fsync dir) in a versioned
//! one-line format: `distfs-node-id v1 <id>`.

use crate::disk::Disk;
use crate::error::StorageError;
use distfs_types::NodeId;
use std::io;
use std::path::Path;

const FILE: &str = "node_id";
const PREFIX: &str = "distfs-node-id v1 ";

/// Reads the persisted id; `None` when the node never registered.
pub fn load(disk: &dyn Disk, data_dir: &Path) -> Result<Option<NodeId>, StorageError> {
    let path = data_dir.join(FILE);
    let mut f = match disk.open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io("open", &path, e)),
    };
    let mut buf = [0u8; 64];
    let n = f.read_at(0, &mut buf).map_err(|e| StorageError::io("read", &path, e))?;
    let text = std::str::from_utf8(&buf[..n]).unwrap_or("");
    text.trim_end().strip_prefix(PREFIX).and_then(|id| id.parse::<u64>().ok()).map(|id| Some(NodeId(id))).ok_or_else(
        || {
            StorageError::Internal(format!(
                "{} is not a node id file (expected `{PREFIX}<number>`); move it away to register as a new node",
                path.display()
            ))
        },
    )
}

/// Persists `id` crash-safely.
pub fn store(disk: &dyn Disk, data_dir: &Path, id: NodeId) -> Result<(), StorageError> {
    let path = data_dir.join(FILE);
    let tmp = data_dir.join(format!("{FILE}.tmp.{:016x}", rand::random::<u64>()));
    let text = format!("{PREFIX}{}\n", id.0);
    let r = disk
        .write_new(&tmp, &[text.as_bytes()], true)
        .map_err(|e| StorageError::io("write", &tmp, e))
        .and_then(|()| disk.rename(&tmp, &path).map_err(|e| StorageError::io("rename", &tmp, e)))
        .and_then(|()| disk.sync_dir(data_dir).map_err(|e| StorageError::io("fsync directory", data_dir, e)));
    if r.is_err() {
        let _ = disk.remove(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::StdDisk;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(&StdDisk::default(), dir.path()).expect("load"), None);
        store(&StdDisk::default(), dir.path(), NodeId(17)).expect("store");
        store(&StdDisk::default(), dir.path(), NodeId(18)).expect("store again");
        assert_eq!(load(&StdDisk::default(), dir.path()).expect("load"), Some(NodeId(18)));
        std::fs::write(dir.path().join(FILE), "garbage").expect("write");
        assert!(load(&StdDisk::default(), dir.path()).is_err());
    }
}
