//! Data and cluster commands: format, CommitWrite (one sequence number per commit, block
//! refcounts, pruning slices nothing can see), truncation, the GC queue, bad replicas and
//! the storage-node registry.

use super::*;
use distfs_types::{visible_extents, BlockId, BlockRef, FileKind, Inline, Seq, Slice, INLINE_MAX};
use redb::ReadableTable as _;
use redb::ReadableTableMetadata;
use std::collections::BTreeMap;

pub(super) fn format(txn: &WriteTransaction, format: &Format, now: Timestamp) -> FsResult<CommandResult> {
    if txn.format()?.is_some() {
        return Ok(CommandResult::Done);
    }
    meta_put(txn, K_FORMAT, format)?;
    meta_put(txn, K_NEXT_INO, &2u64)?;
    meta_put(txn, K_NEXT_SEQ, &1u64)?;
    meta_put(txn, K_NEXT_NODE, &1u64)?;
    meta_put(txn, K_NEXT_BAD, &1u64)?;
    let root = super::namespace::fresh_inode(InodeId::ROOT, FileKind::Dir, 0o755, 0, 0, now, InodeId::ROOT);
    put_inode(txn, &root)?;
    Ok(CommandResult::Done)
}

fn put_chunk(txn: &WriteTransaction, ino: InodeId, index: u64, slices: &Vec<Slice>) -> FsResult<()> {
    let mut t = txn.open_table(CHUNKS).map_err(db_err)?;
    if slices.is_empty() {
        t.remove((ino.0, index)).map_err(db_err)?;
    } else {
        t.insert((ino.0, index), enc(slices).as_slice()).map_err(db_err)?;
    }
    Ok(())
}

pub(super) fn put_block(txn: &WriteTransaction, id: BlockId, rec: &BlockRec) -> FsResult<()> {
    let mut t = txn.open_table(BLOCKS).map_err(db_err)?;
    t.insert(id.0, enc(rec).as_slice()).map_err(db_err)?;
    Ok(())
}

pub(super) fn gc_add(txn: &WriteTransaction, node: NodeId, block: BlockId) -> FsResult<()> {
    let mut t = txn.open_table(GC).map_err(db_err)?;
    t.insert((node.0, block.0), ()).map_err(db_err)?;
    Ok(())
}

/// True when `node` still has `block` queued for deletion (or the deletion is on its way
/// and not acknowledged yet).
pub(super) fn gc_pending(txn: &WriteTransaction, node: NodeId, block: BlockId) -> FsResult<bool> {
    let t = txn.open_table(GC).map_err(db_err)?;
    let pending = t.get((node.0, block.0)).map_err(db_err)?.is_some();
    Ok(pending)
}

/// Drops one reference to `id`; at zero the block leaves the map and every replica is
/// queued for deletion.
fn decref(txn: &WriteTransaction, id: BlockId) -> FsResult<()> {
    let Some(mut rec) = txn.block(id)? else {
        tracing::warn!(block = %id, "decref of a block the map does not know");
        return Ok(());
    };
    rec.refs = rec.refs.saturating_sub(1);
    if rec.refs > 0 {
        return put_block(txn, id, &rec);
    }
    {
        let mut t = txn.open_table(BLOCKS).map_err(db_err)?;
        t.remove(id.0).map_err(db_err)?;
    }
    super::dedup::forget(txn, id)?;
    for node in rec.replicas {
        gc_add(txn, node, id)?;
    }
    Ok(())
}

fn decref_slice(txn: &WriteTransaction, s: &Slice) -> FsResult<()> {
    s.blocks.iter().try_for_each(|b| decref(txn, b.id))
}

/// Removes slices that no byte of the chunk shows any more and drops their blocks.
fn prune_invisible(txn: &WriteTransaction, slices: &mut Vec<Slice>) -> FsResult<()> {
    let ext = visible_extents(slices);
    let mut visible = vec![false; slices.len()];
    for e in &ext {
        visible[e.slice] = true;
    }
    let mut keep = Vec::with_capacity(slices.len());
    for (s, v) in slices.drain(..).zip(visible) {
        if v {
            keep.push(s);
        } else {
            decref_slice(txn, &s)?;
        }
    }
    *slices = keep;
    Ok(())
}

/// Drops every chunk of `ino` from index `first` on.
pub(super) fn free_chunks_from(txn: &WriteTransaction, ino: InodeId, first: u64) -> FsResult<()> {
    for (index, slices) in txn.chunks(ino, first, u64::MAX)? {
        for s in &slices {
            decref_slice(txn, s)?;
        }
        put_chunk(txn, ino, index, &Vec::new())?;
    }
    Ok(())
}

/// Cuts a file's data at `size`: later chunks go, the chunk holding `size` is clipped
/// (slices shortened, blocks past the end released), so bytes later exposed by growing
/// the file again read as zeros.
pub(super) fn truncate_data(txn: &WriteTransaction, ino: InodeId, size: u64, chunk_size: u64) -> FsResult<()> {
    let first_gone = size.div_ceil(chunk_size);
    free_chunks_from(txn, ino, first_gone)?;
    let local = size % chunk_size;
    if local == 0 {
        return Ok(());
    }
    let index = size / chunk_size;
    let mut slices = txn.chunk(ino, index)?;
    let mut kept = Vec::with_capacity(slices.len());
    for mut s in slices.drain(..) {
        if s.offset >= local {
            decref_slice(txn, &s)?;
            continue;
        }
        if s.end() > local {
            s.len = local - s.offset;
            let mut covered = 0u64;
            let mut blocks = Vec::with_capacity(s.blocks.len());
            for b in s.blocks.drain(..) {
                if covered < s.len {
                    covered += b.len as u64;
                    blocks.push(b);
                } else {
                    decref(txn, b.id)?;
                }
            }
            s.blocks = blocks;
            if let Some(i) = s.inline.as_mut() {
                i.truncate(s.len as usize);
            }
        }
        kept.push(s);
    }
    prune_invisible(txn, &mut kept)?;
    put_chunk(txn, ino, index, &kept)
}

/// Takes a replica out of a block's list, queues the copy for deletion if the node held
/// it, and remembers the report (bounded list).
pub(super) fn mark_bad(txn: &WriteTransaction, bad: &BadReplica) -> FsResult<()> {
    if let Some(mut rec) = txn.block(bad.block)? {
        if let Some(pos) = rec.replicas.iter().position(|n| *n == bad.node) {
            rec.replicas.remove(pos);
            put_block(txn, bad.block, &rec)?;
            gc_add(txn, bad.node, bad.block)?;
        }
    }
    let id = next_counter(txn, K_NEXT_BAD)?;
    let mut t = txn.open_table(BAD).map_err(db_err)?;
    t.insert(id, enc(bad).as_slice()).map_err(db_err)?;
    while t.len().map_err(db_err)? > BAD_REPLICAS_KEPT {
        t.pop_first().map_err(db_err)?;
    }
    Ok(())
}

/// An inline slice holds exactly its bytes, with a matching checksum, in chunk 0 below
/// `INLINE_MAX`, and no blocks: what bounds the metadata a small file may take.
fn check_inline(w: &SliceWrite, inline: &Inline) -> FsResult<()> {
    if !w.blocks.is_empty() || w.chunk != 0 || w.offset.saturating_add(w.len) > INLINE_MAX {
        return Err(FsError::invalid(format!(
            "an inline slice must lie in chunk 0 below {INLINE_MAX} bytes and have no blocks \
             (got chunk {}, [{}, +{}), {} blocks)",
            w.chunk,
            w.offset,
            w.len,
            w.blocks.len()
        )));
    }
    if inline.data.len() as u64 != w.len {
        return Err(FsError::invalid(format!("inline slice of {} bytes carries {} bytes", w.len, inline.data.len())));
    }
    if !inline.verify() {
        return Err(FsError::invalid("inline slice data does not match its checksum (damaged in transit?)"));
    }
    Ok(())
}

pub(super) fn commit_write(
    txn: &WriteTransaction,
    ino: InodeId,
    writes: &[SliceWrite],
    min_size: u64,
    mtime: Timestamp,
    bad: &[BadReplica],
    now: Timestamp,
) -> FsResult<CommandResult> {
    let fmt = txn.format_or_unavailable()?;
    let mut inode = match txn.inode(ino)? {
        Some(i) => i,
        None => return Err(FsError::StaleInode { ino }),
    };
    match inode.attr.kind {
        FileKind::File => {}
        FileKind::Dir => return Err(FsError::IsADirectory { what: format!("inode {ino}") }),
        FileKind::Symlink => return Err(FsError::invalid(format!("inode {ino} is a symlink"))),
    }
    for w in writes {
        if let Some(inline) = &w.inline {
            check_inline(w, inline)?;
        }
        let stored: u64 = w.blocks.iter().map(|b| b.block.len as u64).sum::<u64>()
            + w.inline.as_ref().map_or(0, |i| i.data.len() as u64);
        if w.offset.checked_add(w.len).is_none_or(|end| end > fmt.chunk_size) {
            return Err(FsError::invalid(format!(
                "slice [{}, +{}) of chunk {} runs past the chunk size {}",
                w.offset, w.len, w.chunk, fmt.chunk_size
            )));
        }
        if w.len > stored {
            return Err(FsError::invalid(format!(
                "slice of {} bytes in chunk {} has only {stored} bytes of blocks",
                w.len, w.chunk
            )));
        }
        if let Some(b) = w.blocks.iter().find(|b| b.block.len == 0 || b.block.len > fmt.block_size) {
            return Err(FsError::invalid(format!(
                "block {} has length {} (must be 1..={})",
                b.block.id, b.block.len, fmt.block_size
            )));
        }
    }
    let seq = Seq(next_counter(txn, K_NEXT_SEQ)?);
    let mut by_chunk: BTreeMap<u64, Vec<Slice>> = BTreeMap::new();
    for w in writes {
        for b in &w.blocks {
            let rec = match txn.block(b.block.id)? {
                Some(mut rec) => {
                    rec.refs += 1;
                    for n in &b.replicas {
                        if !rec.replicas.contains(n) {
                            rec.replicas.push(*n);
                        }
                    }
                    rec
                }
                None => {
                    let mut replicas = b.replicas.clone();
                    replicas.dedup();
                    BlockRec { len: b.block.len, refs: 1, replicas }
                }
            };
            put_block(txn, b.block.id, &rec)?;
        }
        by_chunk.entry(w.chunk).or_default().push(Slice {
            offset: w.offset,
            len: w.len,
            seq,
            blocks: w.blocks.iter().map(|b| BlockRef { id: b.block.id, len: b.block.len }).collect(),
            inline: w.inline.clone(),
        });
    }
    for b in bad {
        mark_bad(txn, b)?;
    }
    for (index, new) in by_chunk {
        let mut slices = txn.chunk(ino, index)?;
        slices.extend(new);
        prune_invisible(txn, &mut slices)?;
        put_chunk(txn, ino, index, &slices)?;
    }
    inode.attr.size = inode.attr.size.max(min_size);
    inode.attr.mtime = mtime;
    inode.attr.ctime = now;
    inode.attr.version += 1;
    put_inode(txn, &inode)?;
    Ok(CommandResult::Attr(inode.attr))
}

pub(super) fn register_node(
    txn: &WriteTransaction,
    node: Option<NodeId>,
    addr: &str,
    zone: &str,
    capacity: u64,
) -> FsResult<CommandResult> {
    if addr.is_empty() {
        return Err(FsError::invalid("a storage node must register with an address"));
    }
    let id = match node {
        Some(id) => {
            super::heal::refuse_removed(txn, id)?;
            let next: u64 = txn.meta_get(K_NEXT_NODE)?.unwrap_or(1);
            if id.0 >= next {
                meta_put(txn, K_NEXT_NODE, &(id.0 + 1))?;
            }
            id
        }
        None => NodeId(next_counter(txn, K_NEXT_NODE)?),
    };
    let rec = NodeRec { addr: addr.to_string(), zone: zone.to_string(), capacity };
    let mut t = txn.open_table(NODES).map_err(db_err)?;
    t.insert(id.0, enc(&rec).as_slice()).map_err(db_err)?;
    Ok(CommandResult::Registered(id))
}

pub(super) fn gc_ack(txn: &WriteTransaction, node: NodeId, blocks: &[BlockId]) -> FsResult<CommandResult> {
    let mut t = txn.open_table(GC).map_err(db_err)?;
    for b in blocks {
        t.remove((node.0, b.0)).map_err(db_err)?;
    }
    Ok(CommandResult::Done)
}
