//! Self-healing and membership in the state machine: replica-list updates made by the
//! repair worker (add a verified copy, trim or move one), operator node states (drain,
//! maintenance), node removal, and the full scans `fsck` and the planner read.

use super::data::{gc_add, gc_pending, put_block};
use super::*;
use distfs_types::{AdminState, BlockId, FileKind, Slice};
use redb::{ReadTransaction, ReadableTable};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

pub(super) fn update_replicas(
    txn: &WriteTransaction,
    block: BlockId,
    add: Option<NodeId>,
    drop: &[NodeId],
) -> FsResult<CommandResult> {
    let Some(mut rec) = txn.block(block)? else {
        // Freed while the copy was made: the new copy is garbage.
        if let Some(n) = add {
            gc_add(txn, n, block)?;
        }
        return Ok(CommandResult::Done);
    };
    if let Some(n) = add {
        // A deletion of this block on `n` is still queued or in flight (a bad copy that
        // was reported, a trimmed one): it could remove the copy just made. Record
        // nothing; the deletion goes ahead and the planner copies again once `n` has
        // acknowledged it.
        if gc_pending(txn, n, block)? {
            tracing::info!(%block, node = %n, "copy not recorded: a deletion on that node is pending");
            return Ok(CommandResult::Done);
        }
        if !rec.replicas.contains(&n) {
            rec.replicas.push(n);
        }
    }
    for n in drop {
        if rec.replicas.len() <= 1 {
            break;
        }
        if let Some(pos) = rec.replicas.iter().position(|r| r == n) {
            rec.replicas.remove(pos);
            gc_add(txn, *n, block)?;
        }
    }
    put_block(txn, block, &rec)?;
    Ok(CommandResult::Done)
}

pub(super) fn set_node_admin(txn: &WriteTransaction, node: NodeId, admin: AdminState) -> FsResult<CommandResult> {
    if txn.node(node)?.is_none() {
        return Err(FsError::not_found(format!("storage node {node}")));
    }
    let mut map: BTreeMap<u64, AdminState> = txn.meta_get(K_NODE_ADMIN)?.unwrap_or_default();
    if admin == AdminState::Normal {
        map.remove(&node.0);
    } else {
        map.insert(node.0, admin);
    }
    meta_put(txn, K_NODE_ADMIN, &map)?;
    Ok(CommandResult::Done)
}

pub(super) fn remove_node(txn: &WriteTransaction, node: NodeId) -> FsResult<CommandResult> {
    if txn.node(node)?.is_none() {
        return Err(FsError::not_found(format!("storage node {node}")));
    }
    let mut changed: Vec<(BlockId, BlockRec)> = Vec::new();
    {
        let t = txn.open_table(BLOCKS).map_err(db_err)?;
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let mut rec: BlockRec = dec("blocks", v.value())?;
            if let Some(pos) = rec.replicas.iter().position(|r| *r == node) {
                rec.replicas.remove(pos);
                changed.push((BlockId(k.value()), rec));
            }
        }
    }
    for (id, rec) in &changed {
        put_block(txn, *id, rec)?;
    }
    {
        let mut t = txn.open_table(GC).map_err(db_err)?;
        t.retain(|(n, _), _| n != node.0).map_err(db_err)?;
    }
    {
        let mut t = txn.open_table(NODES).map_err(db_err)?;
        t.remove(node.0).map_err(db_err)?;
    }
    let mut map: BTreeMap<u64, AdminState> = txn.meta_get(K_NODE_ADMIN)?.unwrap_or_default();
    map.remove(&node.0);
    meta_put(txn, K_NODE_ADMIN, &map)?;
    let mut removed: BTreeSet<u64> = txn.meta_get(K_REMOVED_NODES)?.unwrap_or_default();
    removed.insert(node.0);
    meta_put(txn, K_REMOVED_NODES, &removed)?;
    Ok(CommandResult::Done)
}

/// Refuses a registration as `node` once an operator removed that id: the process may
/// still be running with the blocks the cluster dropped, and must not rejoin with them.
pub(super) fn refuse_removed(txn: &WriteTransaction, node: NodeId) -> FsResult<()> {
    let removed: BTreeSet<u64> = txn.meta_get(K_REMOVED_NODES)?.unwrap_or_default();
    if removed.contains(&node.0) {
        return Err(FsError::PermissionDenied {
            what: format!(
                "storage node {node} was removed from the cluster and cannot register again; \
                 stop it, empty its data directory and start it to join as a new node"
            ),
        });
    }
    Ok(())
}

pub(super) fn gc_queue(txn: &WriteTransaction, node: NodeId, blocks: &[BlockId]) -> FsResult<CommandResult> {
    for b in blocks {
        // Never delete a copy the map lists: only true orphans go.
        let listed = txn.block(*b)?.is_some_and(|r| r.replicas.contains(&node));
        if !listed {
            gc_add(txn, node, *b)?;
        }
    }
    Ok(CommandResult::Done)
}

/// Operator state of every node that is not `Normal`.
pub fn node_admin(r: &impl Reader) -> FsResult<BTreeMap<NodeId, AdminState>> {
    let map: BTreeMap<u64, AdminState> = r.meta_get(K_NODE_ADMIN)?.unwrap_or_default();
    Ok(map.into_iter().map(|(k, v)| (NodeId(k), v)).collect())
}

/// Every block of the map (the planner's full scan).
pub fn all_blocks(r: &ReadTransaction) -> FsResult<Vec<(BlockId, BlockRec)>> {
    let t = r.open_table(BLOCKS).map_err(db_err)?;
    let mut out = Vec::new();
    for item in t.iter().map_err(db_err)? {
        let (k, v) = item.map_err(db_err)?;
        out.push((BlockId(k.value()), dec("blocks", v.value())?));
    }
    Ok(out)
}

/// Paths of the files that refer to `wanted` blocks (one full scan of chunks and
/// directory entries; admin use only).
pub fn file_paths(r: &ReadTransaction, wanted: &HashSet<BlockId>) -> FsResult<HashMap<BlockId, Vec<String>>> {
    let mut inodes_of: HashMap<BlockId, Vec<InodeId>> = HashMap::new();
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    {
        let t = r.open_table(CHUNKS).map_err(db_err)?;
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let slices: Vec<Slice> = dec("chunks", v.value())?;
            let ino = InodeId(k.value().0);
            for b in slices.iter().flat_map(|s| s.blocks.iter()) {
                if wanted.contains(&b.id) {
                    let e = inodes_of.entry(b.id).or_default();
                    if !e.contains(&ino) {
                        e.push(ino);
                    }
                }
            }
        }
    }
    // Name and parent of every entry (first link wins for hard-linked files).
    let mut names: HashMap<u64, (u64, String, FileKind)> = HashMap::new();
    {
        let t = r.open_table(DENTRIES).map_err(db_err)?;
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let (parent, name) = k.value();
            let d: Dentry = dec("dentries", v.value())?;
            names.entry(d.ino.0).or_insert((parent, name.to_string(), d.kind));
        }
    }
    let path_of = |ino: InodeId| -> String {
        let mut parts = Vec::new();
        let mut cur = ino.0;
        for _ in 0..4096 {
            if cur == InodeId::ROOT.0 {
                parts.reverse();
                return format!("/{}", parts.join("/"));
            }
            match names.get(&cur) {
                Some((parent, name, _)) => {
                    parts.push(name.clone());
                    cur = *parent;
                }
                None => break,
            }
        }
        format!("<inode {ino}>")
    };
    Ok(inodes_of.into_iter().map(|(b, inos)| (b, inos.into_iter().map(path_of).collect())).collect())
}
