//! Placement (DESIGN §3): a consistent-hash ring with virtual nodes proportional to each
//! storage node's capacity, and `place`, which picks a block's replica set by walking the
//! ring clockwise, preferring distinct zones. Pure functions; the hash is our own
//! splitmix64 mixing, so positions are stable across versions and platforms.

use distfs_types::{BlockId, NodeId};
use std::collections::HashSet;

/// One vnode per this many bytes of capacity.
pub const BYTES_PER_VNODE: u64 = 1 << 30;
/// Every node gets at least this many vnodes, however small.
pub const MIN_VNODES: u32 = 64;
/// Cap on the ring size; above it every node's count is scaled down proportionally.
pub const MAX_TOTAL_VNODES: u64 = 32_768;

/// A node as the ring sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingNode {
    pub id: NodeId,
    pub zone: String,
    pub capacity: u64,
}

/// The ring: sorted (position, index into `nodes`).
#[derive(Clone, Debug, Default)]
pub struct Ring {
    nodes: Vec<RingNode>,
    points: Vec<(u64, u32)>,
}

/// splitmix64 finaliser: a fast, well-mixing, stable 64-bit hash step.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Ring position of a block.
pub fn block_hash(id: BlockId) -> u64 {
    let lo = id.0 as u64;
    let hi = (id.0 >> 64) as u64;
    mix64(lo ^ mix64(hi))
}

fn vnode_hash(node: NodeId, i: u32) -> u64 {
    mix64(mix64(node.0 ^ 0x5bd1_e995_0000_0000) ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d))
}

/// Capacity rounded down to 3 significant bits (8 steps per doubling), so the free space a
/// node reports as it fills does not shift its vnodes (and move blocks) at every restart.
pub fn quantize_capacity(capacity: u64) -> u64 {
    if capacity < 16 {
        return capacity;
    }
    let shift = 63 - capacity.leading_zeros() - 3;
    (capacity >> shift) << shift
}

fn vnode_count(capacity: u64) -> u64 {
    (quantize_capacity(capacity) / BYTES_PER_VNODE).max(MIN_VNODES as u64)
}

impl Ring {
    /// Builds the ring. Vnode positions depend only on (node id, vnode index), so adding a
    /// node leaves every other node's vnodes where they were.
    pub fn new(mut nodes: Vec<RingNode>) -> Ring {
        nodes.sort_by_key(|n| n.id);
        nodes.dedup_by_key(|n| n.id);
        let total: u64 = nodes.iter().map(|n| vnode_count(n.capacity)).sum();
        let mut points = Vec::with_capacity(total.min(MAX_TOTAL_VNODES) as usize);
        for (idx, n) in nodes.iter().enumerate() {
            let mut count = vnode_count(n.capacity);
            if total > MAX_TOTAL_VNODES {
                count = ((count as u128 * MAX_TOTAL_VNODES as u128 / total as u128) as u64).max(8);
            }
            for i in 0..count as u32 {
                points.push((vnode_hash(n.id, i), idx as u32));
            }
        }
        points.sort_unstable();
        Ring { nodes, points }
    }

    pub fn nodes(&self) -> &[RingNode] {
        &self.nodes
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Number of vnodes on the ring.
    pub fn len(&self) -> usize {
        self.points.len()
    }
}

/// The replica set of `block`: walk clockwise from its hash and take the first `r`
/// distinct eligible nodes, first in distinct zones, then filling from any zone. Returns
/// fewer than `r` nodes when fewer are eligible.
pub fn place(ring: &Ring, block: BlockId, r: usize, eligible: impl Fn(NodeId) -> bool) -> Vec<NodeId> {
    let mut out: Vec<NodeId> = Vec::with_capacity(r);
    if ring.points.is_empty() || r == 0 {
        return out;
    }
    let h = block_hash(block);
    let start = ring.points.partition_point(|(p, _)| *p < h);
    let n = ring.points.len();
    let mut zones: HashSet<&str> = HashSet::new();
    let mut seen: HashSet<u32> = HashSet::new();
    let mut eligible_seen: Vec<u32> = Vec::new();
    // First pass: distinct nodes in distinct zones, in ring order.
    for k in 0..n {
        let idx = ring.points[(start + k) % n].1;
        if !seen.insert(idx) {
            continue;
        }
        let node = &ring.nodes[idx as usize];
        if !eligible(node.id) {
            continue;
        }
        eligible_seen.push(idx);
        if zones.insert(node.zone.as_str()) {
            out.push(node.id);
            if out.len() == r {
                return out;
            }
        }
        if seen.len() == ring.nodes.len() {
            break;
        }
    }
    // Second pass: fill from the remaining eligible nodes, still in ring order.
    for idx in eligible_seen {
        let id = ring.nodes[idx as usize].id;
        if !out.contains(&id) {
            out.push(id);
            if out.len() == r {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const TIB: u64 = 1 << 40;

    fn nodes(n: u64, cap: u64) -> Vec<RingNode> {
        (1..=n).map(|i| RingNode { id: NodeId(i), zone: format!("z{i}"), capacity: cap }).collect()
    }

    fn block(i: u64) -> BlockId {
        BlockId((mix64(i) as u128) << 64 | mix64(i ^ 0xabcdef) as u128)
    }

    const BLOCKS: u64 = 100_000;

    #[test]
    fn hash_is_stable() {
        // Pinned values: changing the hash would move every block in every cluster.
        assert_eq!(mix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(block_hash(BlockId(1)), mix64(1 ^ mix64(0)));
    }

    #[test]
    fn equal_capacity_is_balanced() {
        for n in [3u64, 5, 10] {
            let ring = Ring::new(nodes(n, 2 * TIB));
            let mut count: HashMap<NodeId, u64> = HashMap::new();
            for i in 0..BLOCKS {
                for id in place(&ring, block(i), 1, |_| true) {
                    *count.entry(id).or_default() += 1;
                }
            }
            let expect = BLOCKS as f64 / n as f64;
            for (id, c) in count {
                let dev = (c as f64 - expect).abs() / expect;
                assert!(dev < 0.10, "n={n}: node {id} got {c} blocks, expected ~{expect}");
            }
        }
    }

    #[test]
    fn capacity_weighted_share() {
        let mut ns = nodes(3, TIB);
        ns[0].capacity = 2 * TIB;
        let ring = Ring::new(ns);
        let mut count: HashMap<NodeId, u64> = HashMap::new();
        for i in 0..BLOCKS {
            let p = place(&ring, block(i), 1, |_| true);
            *count.entry(p[0]).or_default() += 1;
        }
        let share = count[&NodeId(1)] as f64 / BLOCKS as f64;
        assert!((share - 0.5).abs() < 0.05, "2x node share {share}, want ~0.5");
    }

    #[test]
    fn adding_a_node_moves_about_one_over_n_plus_one() {
        for n in 3u64..=10 {
            let before = Ring::new(nodes(n, TIB));
            let after = Ring::new(nodes(n + 1, TIB));
            let new = NodeId(n + 1);
            let (mut primary_moved, mut member_moved) = (0u64, 0u64);
            let r = 3;
            for i in 0..BLOCKS / 4 {
                let b = block(i);
                let old = place(&before, b, r, |_| true);
                let now = place(&after, b, r, |_| true);
                if old[0] != now[0] {
                    primary_moved += 1;
                    assert_eq!(now[0], new, "primary may only move to the new node");
                }
                for id in &now {
                    if !old.contains(id) {
                        member_moved += 1;
                        assert_eq!(*id, new, "replicas may only move to the new node");
                    }
                }
            }
            let total = (BLOCKS / 4) as f64;
            let want = 1.0 / (n + 1) as f64;
            let p = primary_moved as f64 / total;
            let m = member_moved as f64 / (total * r as f64);
            assert!((p - want).abs() < want * 0.25, "n={n}: primary moved {p}, want ~{want}");
            assert!((m - want).abs() < want * 0.25, "n={n}: membership moved {m}, want ~{want}");
        }
    }

    #[test]
    fn zones_are_spread() {
        // Six nodes in three zones: every replica set of three covers all three zones.
        let ns: Vec<RingNode> =
            (1..=6).map(|i| RingNode { id: NodeId(i), zone: format!("zone{}", i % 3), capacity: TIB }).collect();
        let zone_of: HashMap<NodeId, String> = ns.iter().map(|n| (n.id, n.zone.clone())).collect();
        let ring = Ring::new(ns);
        for i in 0..10_000 {
            let p = place(&ring, block(i), 3, |_| true);
            let zones: HashSet<&String> = p.iter().map(|id| &zone_of[id]).collect();
            assert_eq!(zones.len(), 3, "{p:?}");
        }
        // Two zones only: the third replica still goes somewhere, on distinct nodes.
        let ns: Vec<RingNode> =
            (1..=4).map(|i| RingNode { id: NodeId(i), zone: format!("zone{}", i % 2), capacity: TIB }).collect();
        let ring = Ring::new(ns);
        for i in 0..1000 {
            let p = place(&ring, block(i), 3, |_| true);
            let distinct: HashSet<_> = p.iter().collect();
            assert_eq!((p.len(), distinct.len()), (3, 3));
        }
    }

    #[test]
    fn ineligible_nodes_are_skipped_and_short_sets_returned() {
        let ring = Ring::new(nodes(5, TIB));
        for i in 0..1000 {
            let p = place(&ring, block(i), 3, |id| id != NodeId(2));
            assert_eq!(p.len(), 3);
            assert!(!p.contains(&NodeId(2)));
        }
        let p = place(&ring, block(7), 3, |id| id == NodeId(4));
        assert_eq!(p, vec![NodeId(4)]);
        assert!(place(&ring, block(7), 3, |_| false).is_empty());
        assert!(place(&Ring::new(vec![]), block(7), 3, |_| true).is_empty());
    }
}
