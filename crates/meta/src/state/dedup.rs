//! Deduplication and per-directory compression in the state machine (issue 10).
//!
//! `FINGERPRINTS` maps the BLAKE3 of a block's plain bytes to the block stored with it;
//! `BLOCK_FPS` is the reverse, so the entry leaves in the same transaction that frees the
//! block (`forget`, called where a decref reaches zero). A dedup commit (`commit_write`)
//! first checks that every block it references without having written it still exists
//! with that fingerprint (else `BlockNotFound`: nothing changes, the client writes the
//! block for real and commits again), then applies the ordinary `CommitWrite` (refs += 1
//! for each reference, so the refcount is the number of slices using the block), then
//! registers the fingerprints of the blocks it wrote that survived the commit.
//!
//! Compression is chosen per directory with the extended attribute `COMPRESSION_XATTR`
//! (`none`, `lz4`, `zstd`); `inherit` copies it to every file and directory created under
//! it, so a writer needs only its own inode's attribute.

use super::*;
use distfs_proto::dedup::{BlockFp, Fingerprint};
use distfs_types::{BlockId, BlockRef};
use redb::{ReadTransaction, ReadableTable};

/// fingerprint (32 bytes) -> block id.
pub(crate) const FINGERPRINTS: TableDefinition<&[u8], u128> = TableDefinition::new("fingerprints");
/// block id -> fingerprint.
pub(crate) const BLOCK_FPS: TableDefinition<u128, &[u8]> = TableDefinition::new("block_fingerprints");

pub use distfs_proto::dedup::COMPRESSION_XATTR;

/// Raft commands of this module (`Command::Dedup`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DedupCommand {
    CommitWrite {
        ino: InodeId,
        slices: Vec<SliceWrite>,
        min_size: u64,
        mtime: Timestamp,
        bad: Vec<BadReplica>,
        fps: Vec<BlockFp>,
        now: Timestamp,
    },
}

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), redb::TableError> {
    txn.open_table(FINGERPRINTS)?;
    txn.open_table(BLOCK_FPS)?;
    Ok(())
}

pub(super) fn apply(txn: &WriteTransaction, cmd: &DedupCommand) -> FsResult<CommandResult> {
    match cmd {
        DedupCommand::CommitWrite { ino, slices, min_size, mtime, bad, fps, now } => {
            commit_write(txn, *ino, slices, *min_size, *mtime, bad, fps, *now)
        }
    }
}

fn fp_block(txn: &WriteTransaction, fp: &Fingerprint) -> FsResult<Option<BlockId>> {
    let t = txn.open_table(FINGERPRINTS).map_err(db_err)?;
    let v = t.get(fp.as_slice()).map_err(db_err)?.map(|g| BlockId(g.value()));
    Ok(v)
}

#[allow(clippy::too_many_arguments)]
fn commit_write(
    txn: &WriteTransaction,
    ino: InodeId,
    slices: &[SliceWrite],
    min_size: u64,
    mtime: Timestamp,
    bad: &[BadReplica],
    fps: &[BlockFp],
    now: Timestamp,
) -> FsResult<CommandResult> {
    let in_commit = |id: BlockId| slices.iter().flat_map(|s| s.blocks.iter()).find(|b| b.block.id == id);
    for f in fps {
        let Some(wb) = in_commit(f.block) else {
            return Err(FsError::invalid(format!(
                "fingerprint given for block {} that the commit does not use",
                f.block
            )));
        };
        if !f.existing {
            continue;
        }
        // A referenced block must still be stored under this fingerprint, with this length.
        let rec = txn.block(f.block)?;
        let same = fp_block(txn, &f.fp)? == Some(f.block) && rec.as_ref().is_some_and(|r| r.len == wb.block.len);
        if !same {
            return Err(FsError::BlockNotFound { block: f.block, node: NodeId(0) });
        }
        if !wb.replicas.is_empty() {
            return Err(FsError::invalid(format!("a deduplicated reference to block {} names replicas", f.block)));
        }
    }
    let r = super::data::commit_write(txn, ino, slices, min_size, mtime, bad, now)?;
    let mut t = txn.open_table(FINGERPRINTS).map_err(db_err)?;
    let mut rev = txn.open_table(BLOCK_FPS).map_err(db_err)?;
    for f in fps.iter().filter(|f| !f.existing) {
        // Only blocks the commit kept (a slice hidden at once was freed again), and only
        // the first block with a fingerprint: a second copy lives and dies on its own.
        let kept = txn.block(f.block)?.is_some();
        let taken = t.get(f.fp.as_slice()).map_err(db_err)?.is_some();
        let has = rev.get(f.block.0).map_err(db_err)?.is_some();
        if kept && !taken && !has {
            t.insert(f.fp.as_slice(), f.block.0).map_err(db_err)?;
            rev.insert(f.block.0, f.fp.as_slice()).map_err(db_err)?;
        }
    }
    Ok(r)
}

/// Drops the fingerprint of a block that is being freed (its refcount reached zero).
pub(super) fn forget(txn: &WriteTransaction, id: BlockId) -> FsResult<()> {
    let mut rev = txn.open_table(BLOCK_FPS).map_err(db_err)?;
    let Some(fp) = rev.remove(id.0).map_err(db_err)?.map(|g| g.value().to_vec()) else {
        return Ok(());
    };
    drop(rev);
    let mut t = txn.open_table(FINGERPRINTS).map_err(db_err)?;
    if t.get(fp.as_slice()).map_err(db_err)?.map(|g| g.value()) == Some(id.0) {
        t.remove(fp.as_slice()).map_err(db_err)?;
    }
    Ok(())
}

/// For each fingerprint, the block stored with it (and its length), if any.
pub fn lookup(r: &ReadTransaction, fps: &[Fingerprint]) -> FsResult<Vec<Option<BlockRef>>> {
    let t = r.open_table(FINGERPRINTS).map_err(db_err)?;
    let mut out = Vec::with_capacity(fps.len());
    for fp in fps {
        let id = t.get(fp.as_slice()).map_err(db_err)?.map(|g| BlockId(g.value()));
        out.push(match id {
            // A block with no good copy left is not worth referencing: store the bytes anew.
            Some(id) => r.block(id)?.filter(|rec| !rec.replicas.is_empty()).map(|rec| BlockRef { id, len: rec.len }),
            None => None,
        });
    }
    Ok(out)
}

/// Number of fingerprints registered (for tests and `df`).
pub fn fingerprint_count(r: &ReadTransaction) -> FsResult<u64> {
    use redb::ReadableTableMetadata;
    r.open_table(FINGERPRINTS).map_err(db_err)?.len().map_err(db_err)
}

/// A new entry under `parent` takes the parent's compression setting.
pub(super) fn inherit(txn: &WriteTransaction, parent: InodeId, child: InodeId) -> FsResult<()> {
    let mut t = txn.open_table(XATTRS).map_err(db_err)?;
    let v = t.get((parent.0, COMPRESSION_XATTR)).map_err(db_err)?.map(|g| g.value().to_vec());
    if let Some(v) = v {
        t.insert((child.0, COMPRESSION_XATTR), v.as_slice()).map_err(db_err)?;
    }
    Ok(())
}

/// The fingerprint table in a snapshot (version 3: version 2 followed by this blob); the
/// reverse table is rebuilt on install.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupDump {
    pub fingerprints: Vec<(Vec<u8>, u128)>,
}

impl DedupDump {
    pub fn read(txn: &ReadTransaction) -> FsResult<DedupDump> {
        let mut d = DedupDump::default();
        for item in txn.open_table(FINGERPRINTS).map_err(db_err)?.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            d.fingerprints.push((k.value().to_vec(), v.value()));
        }
        Ok(d)
    }

    pub fn install(&self, txn: &WriteTransaction) -> FsResult<()> {
        let mut t = txn.open_table(FINGERPRINTS).map_err(db_err)?;
        let mut rev = txn.open_table(BLOCK_FPS).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        rev.retain(|_, _| false).map_err(db_err)?;
        for (fp, id) in &self.fingerprints {
            t.insert(fp.as_slice(), *id).map_err(db_err)?;
            rev.insert(*id, fp.as_slice()).map_err(db_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "dedup_tests.rs"]
mod tests;
