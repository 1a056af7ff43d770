//! The repair planner and the rebalancer: pure functions from the block map, the nodes'
//! liveness and operator states, the ring and R to copy, trim and move tasks. No I/O and
//! no clock: the worker (`worker.rs`) resolves maintenance windows before calling in.

use crate::placement::{block_hash, place, Ring};
use crate::state::BlockRec;
use distfs_types::{AdminState, BlockId, NodeId, NodeState};
use std::collections::HashMap;

/// A node as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: NodeId,
    pub live: NodeState,
    /// `Maintenance` only while its window is open (the caller resolves expiry).
    pub admin: AdminState,
    pub capacity: u64,
    pub used: u64,
}

/// Fraction of capacity above which a node takes no repair or rebalance copies.
const FULL_PERCENT: u64 = 95;

impl NodeView {
    /// Its copies count towards R: live normal nodes (a Suspect node's copies are not
    /// re-created yet, so a quick restart causes no storm) and nodes in maintenance.
    pub fn counts(&self) -> bool {
        match self.admin {
            AdminState::Normal => self.live != NodeState::Dead,
            AdminState::Maintenance { .. } => true,
            AdminState::Draining | AdminState::Drained => false,
        }
    }

    /// May serve as the source of a copy.
    pub fn can_source(&self) -> bool {
        self.live == NodeState::Up
    }

    /// May receive a new copy of a block of `len` bytes.
    pub fn can_target(&self, len: u64) -> bool {
        self.live == NodeState::Up
            && self.admin == AdminState::Normal
            && (self.capacity == 0 || self.used.saturating_add(len) <= self.capacity / 100 * FULL_PERCENT)
    }

    fn trimmable(&self) -> bool {
        self.live == NodeState::Up && self.admin == AdminState::Normal
    }
}

/// Everything the planner needs besides the blocks.
pub struct Cluster<'a> {
    pub nodes: HashMap<NodeId, NodeView>,
    pub ring: &'a Ring,
    pub r: usize,
}

/// Copy `block` from one of `from` (in order) to `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyTask {
    pub block: BlockId,
    pub len: u64,
    /// Copies that count towards R now (the queue is ordered by it).
    pub live: usize,
    pub from: Vec<NodeId>,
    pub to: NodeId,
    /// Copies to drop once `to` holds it (rebalance moves); empty for repairs.
    pub drop: Vec<NodeId>,
}

/// Drop the copy of `block` on `node` (above R).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrimTask {
    pub block: BlockId,
    pub node: NodeId,
}

/// The repair plan for one scan of the block map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Fewest live copies first.
    pub copies: Vec<CopyTask>,
    pub trims: Vec<TrimTask>,
    /// Blocks with fewer than R counted copies.
    pub under_replicated: u64,
    /// Blocks with no counted copy.
    pub missing: Vec<BlockId>,
    /// Under-replicated blocks that cannot be repaired now (no source or no target).
    pub blocked: u64,
}

impl Cluster<'_> {
    fn view(&self, id: NodeId) -> Option<&NodeView> {
        self.nodes.get(&id)
    }

    /// Copies of `rec` that count towards R.
    pub fn counted(&self, rec: &BlockRec) -> usize {
        rec.replicas.iter().filter(|n| self.view(**n).is_some_and(NodeView::counts)).count()
    }

    /// Live sources of `rec`, rotated by the block's hash so sources spread.
    fn sources(&self, block: BlockId, rec: &BlockRec) -> Vec<NodeId> {
        let mut from: Vec<NodeId> =
            rec.replicas.iter().copied().filter(|n| self.view(*n).is_some_and(NodeView::can_source)).collect();
        from.sort();
        if !from.is_empty() {
            let k = (block_hash(block) % from.len() as u64) as usize;
            from.rotate_left(k);
        }
        from
    }

    /// The ring's replica set among nodes that may hold a new copy.
    fn ideal(&self, block: BlockId, len: u64) -> Vec<NodeId> {
        place(self.ring, block, self.r, |n| self.view(n).is_some_and(|v| v.can_target(len)))
    }
}

/// Plans repairs (copies for blocks below R) and trims (copies above R).
pub fn plan_repair(c: &Cluster, blocks: &[(BlockId, BlockRec)]) -> Plan {
    let mut plan = Plan::default();
    for (id, rec) in blocks {
        let len = rec.len as u64;
        let counted = c.counted(rec);
        if counted < c.r {
            plan.under_replicated += 1;
            if counted == 0 {
                plan.missing.push(*id);
            }
            let from = c.sources(*id, rec);
            let need = c.r - counted;
            let targets = place(c.ring, *id, need, |n| {
                !rec.replicas.contains(&n) && c.view(n).is_some_and(|v| v.can_target(len))
            });
            if from.is_empty() || targets.is_empty() {
                plan.blocked += 1;
                continue;
            }
            for to in targets {
                plan.copies.push(CopyTask { block: *id, len, live: counted, from: from.clone(), to, drop: Vec::new() });
            }
            continue;
        }
        // Trim only what is surely extra: keep R copies on nodes that are up and normal.
        let up: Vec<NodeId> =
            rec.replicas.iter().copied().filter(|n| c.view(*n).is_some_and(|v| v.counts() && v.trimmable())).collect();
        if counted <= c.r || up.len() <= c.r {
            continue;
        }
        let extra = up.len() - c.r;
        let ideal = c.ideal(*id, len);
        let mut ranked = up.clone();
        // Off the ideal set first, then the fullest node.
        ranked.sort_by_key(|n| {
            let fill = c.view(*n).and_then(|v| v.used.saturating_mul(1000).checked_div(v.capacity)).unwrap_or(0);
            (ideal.contains(n), std::cmp::Reverse(fill), *n)
        });
        for node in ranked.into_iter().take(extra) {
            plan.trims.push(TrimTask { block: *id, node });
        }
    }
    plan.copies.sort_by_key(|t| (t.live, t.block));
    plan
}

/// What a drain of `node` still has to move: blocks it lists whose counted copies
/// elsewhere are below R, and their bytes.
pub fn drain_remaining(c: &Cluster, blocks: &[(BlockId, BlockRec)], node: NodeId) -> (u64, u64) {
    let mut out = (0u64, 0u64);
    for (_, rec) in blocks {
        if !rec.replicas.contains(&node) {
            continue;
        }
        let elsewhere =
            rec.replicas.iter().filter(|n| **n != node && c.view(**n).is_some_and(NodeView::counts)).count();
        if elsewhere < c.r {
            out.0 += 1;
            out.1 += rec.len as u64;
        }
    }
    out
}

/// True when the rebalancer may run: every node up and normal (or drained), so a move
/// never competes with a repair or touches a node in maintenance.
pub fn settled(c: &Cluster) -> bool {
    c.nodes
        .values()
        .all(|v| v.admin == AdminState::Drained || (v.live == NodeState::Up && v.admin == AdminState::Normal))
}

/// Moves towards the ring's placement: for each block whose holders differ from the
/// ideal replica set, copy to a missing ideal node and drop a holder outside it. After a
/// join this moves about 1/(N+1) of the copies, to the new node. At most `max` moves.
pub fn plan_rebalance(c: &Cluster, blocks: &[(BlockId, BlockRec)], max: usize) -> Vec<CopyTask> {
    let mut out = Vec::new();
    for (id, rec) in blocks {
        if out.len() >= max {
            break;
        }
        let len = rec.len as u64;
        let holders: Vec<NodeId> =
            rec.replicas.iter().copied().filter(|n| c.view(*n).is_some_and(|v| v.counts() && v.trimmable())).collect();
        if holders.len() != c.r || holders.len() != rec.replicas.len() {
            continue;
        }
        let ideal = c.ideal(*id, len);
        if ideal.len() < c.r {
            continue;
        }
        let missing: Vec<NodeId> = ideal.iter().copied().filter(|n| !holders.contains(n)).collect();
        let extra: Vec<NodeId> = holders.iter().copied().filter(|n| !ideal.contains(n)).collect();
        let from = c.sources(*id, rec);
        for (to, drop) in missing.into_iter().zip(extra) {
            out.push(CopyTask { block: *id, len, live: holders.len(), from: from.clone(), to, drop: vec![drop] });
        }
    }
    out
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
