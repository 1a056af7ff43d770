//! The node's identity files in `data_dir`, each one versioned line written crash-safely
//! (temp, fsync, rename, fsync dir): `node_id` (`distfs-node-id v1 <id>`), the id the
//! metadata service issued, kept across restarts; and `node_token`
//! (`distfs-node-token v1 <32 hex digits>`), the random registration token created at
//! first start and sent with every `RegisterNode`, so that a registration whose answer
//! was lost gets the same id again instead of a second one.

use crate::disk::Disk;
use crate::error::StorageError;
use distfs_types::NodeId;
use std::io;
use std::path::Path;

const FILE: &str = "node_id";
const PREFIX: &str = "distfs-node-id v1 ";
const TOKEN_FILE: &str = "node_token";
const TOKEN_PREFIX: &str = "distfs-node-token v1 ";

/// The value of the one-line file `name`, parsed; `None` when it does not exist.
fn load_line<T>(
    disk: &dyn Disk,
    data_dir: &Path,
    name: &str,
    prefix: &str,
    what: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, StorageError> {
    let path = data_dir.join(name);
    let mut f = match disk.open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io("open", &path, e)),
    };
    let mut buf = [0u8; 64];
    let n = f.read_at(0, &mut buf).map_err(|e| StorageError::io("read", &path, e))?;
    let text = std::str::from_utf8(&buf[..n]).unwrap_or("");
    text.trim_end().strip_prefix(prefix).and_then(parse).map(Some).ok_or_else(|| {
        StorageError::Internal(format!(
            "{} is not a {what} file (expected `{prefix}<value>`); move it away to register as a new node",
            path.display()
        ))
    })
}

/// Writes the one-line file `name` crash-safely.
fn store_line(disk: &dyn Disk, data_dir: &Path, name: &str, line: &str) -> Result<(), StorageError> {
    let path = data_dir.join(name);
    let tmp = data_dir.join(format!("{name}.tmp.{:016x}", rand::random::<u64>()));
    let text = format!("{line}\n");
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

/// Reads the persisted id; `None` when the node never registered.
pub fn load(disk: &dyn Disk, data_dir: &Path) -> Result<Option<NodeId>, StorageError> {
    load_line(disk, data_dir, FILE, PREFIX, "node id", |id| id.parse::<u64>().ok().map(NodeId))
}

/// Persists `id` crash-safely.
pub fn store(disk: &dyn Disk, data_dir: &Path, id: NodeId) -> Result<(), StorageError> {
    store_line(disk, data_dir, FILE, &format!("{PREFIX}{}", id.0))
}

/// The node's registration token, created (random, durably) when there is none yet.
pub fn token(disk: &dyn Disk, data_dir: &Path) -> Result<u128, StorageError> {
    let parse = |hex: &str| (hex.len() == 32).then(|| u128::from_str_radix(hex, 16).ok()).flatten();
    if let Some(t) = load_line(disk, data_dir, TOKEN_FILE, TOKEN_PREFIX, "node token", parse)? {
        return Ok(t);
    }
    let t = rand::random::<u128>();
    store_line(disk, data_dir, TOKEN_FILE, &format!("{TOKEN_PREFIX}{t:032x}"))?;
    Ok(t)
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

    #[test]
    fn the_token_is_created_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = token(&StdDisk::default(), dir.path()).expect("create");
        assert_eq!(token(&StdDisk::default(), dir.path()).expect("load"), first);
        let text = std::fs::read_to_string(dir.path().join(TOKEN_FILE)).expect("read");
        assert_eq!(text, format!("{TOKEN_PREFIX}{first:032x}\n"));
        std::fs::write(dir.path().join(TOKEN_FILE), "distfs-node-token v1 xyz\n").expect("write");
        let e = token(&StdDisk::default(), dir.path()).unwrap_err().to_string();
        assert!(e.contains("is not a node token file"), "{e}");
    }
}
