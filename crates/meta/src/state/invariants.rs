//! Invariants of the block map, checked over a whole state (tests, simulator, debugging):
//! every block a slice refers to is in the map with `refs` equal to the number of slice
//! references (live files and snapshots alike), and no copy the map counts is queued
//! for deletion. A GC that honours these never frees a referenced block.

use super::*;
use distfs_types::{BlockId, Slice};
use redb::{ReadTransaction, ReadableTable};
use std::collections::BTreeMap;

/// `Err` names the first violation found.
pub fn check_block_refs(r: &ReadTransaction) -> Result<(), String> {
    let e = |e: FsError| e.to_string();
    let mut refs: BTreeMap<BlockId, u32> = BTreeMap::new();
    let chunks = r.open_table(CHUNKS).map_err(|x| x.to_string())?;
    for item in chunks.iter().map_err(|x| x.to_string())? {
        let (k, v) = item.map_err(|x| x.to_string())?;
        let (ino, index) = k.value();
        if r.inode(InodeId(ino)).map_err(e)?.is_none() {
            return Err(format!("chunk {index} of inode {ino}, which does not exist"));
        }
        let slices: Vec<Slice> = dec("chunks", v.value()).map_err(e)?;
        for b in slices.iter().flat_map(|s| s.blocks.iter()) {
            *refs.entry(b.id).or_default() += 1;
        }
    }
    let blocks = r.open_table(BLOCKS).map_err(|x| x.to_string())?;
    let mut known = 0usize;
    for item in blocks.iter().map_err(|x| x.to_string())? {
        let (k, v) = item.map_err(|x| x.to_string())?;
        let id = BlockId(k.value());
        let rec: BlockRec = dec("blocks", v.value()).map_err(e)?;
        let want = refs.get(&id).copied().unwrap_or(0);
        if rec.refs != want {
            return Err(format!("block {id} has refs {} but {want} slice references", rec.refs));
        }
        for n in &rec.replicas {
            if r.open_table(GC).map_err(|x| x.to_string())?.get((n.0, id.0)).map_err(|x| x.to_string())?.is_some() {
                return Err(format!("block {id} is referenced, yet its copy on node {n} is queued for deletion"));
            }
        }
        known += 1;
    }
    if known < refs.len() {
        let missing = refs.keys().find(|id| blocks.get(id.0).ok().flatten().is_none());
        return Err(format!("block {missing:?} is referenced by a slice but not in the block map"));
    }
    Ok(())
}
