//! Unit tests of the repair planner and the rebalancer, without a cluster.

use super::*;
use crate::placement::{mix64, RingNode};

const GIB: u64 = 1 << 30;

fn ring(n: u64) -> Ring {
    Ring::new((1..=n).map(|i| RingNode { id: NodeId(i), zone: format!("z{i}"), capacity: 100 * GIB }).collect())
}

fn views(n: u64) -> HashMap<NodeId, NodeView> {
    (1..=n)
        .map(|i| {
            (
                NodeId(i),
                NodeView {
                    id: NodeId(i),
                    live: NodeState::Up,
                    admin: AdminState::Normal,
                    capacity: 100 * GIB,
                    used: 0,
                },
            )
        })
        .collect()
}

fn block(i: u64) -> BlockId {
    BlockId(((mix64(i) as u128) << 64) | mix64(i ^ 0x55) as u128)
}

/// `count` blocks placed by the ring among nodes `1..=n` at R=3.
fn placed(ring: &Ring, count: u64, nodes: u64) -> Vec<(BlockId, BlockRec)> {
    (0..count)
        .map(|i| {
            let id = block(i);
            let replicas = place(ring, id, 3, |n| n.0 <= nodes);
            (id, BlockRec { len: 4 << 20, refs: 1, replicas })
        })
        .collect()
}

fn set(v: &mut HashMap<NodeId, NodeView>, id: u64, live: NodeState, admin: AdminState) {
    let n = v.get_mut(&NodeId(id)).expect("node exists");
    n.live = live;
    n.admin = admin;
}

#[test]
fn healthy_cluster_needs_nothing() {
    let r = ring(4);
    let blocks = placed(&r, 500, 4);
    let c = Cluster { nodes: views(4), ring: &r, r: 3 };
    assert_eq!(plan_repair(&c, &blocks), Plan::default());
    assert!(settled(&c));
    assert!(plan_rebalance(&c, &blocks, usize::MAX).is_empty(), "ring placement is already ideal");
}

#[test]
fn a_dead_node_copies_are_recreated_on_ring_chosen_live_nodes_fewest_first() {
    let r = ring(4);
    let mut blocks = placed(&r, 500, 4);
    // One block has lost two copies (a bad replica on top of the dead node).
    let (_, worst) = blocks.iter_mut().find(|(_, b)| b.replicas.contains(&NodeId(2))).expect("some block on node 2");
    let keep = *worst.replicas.iter().find(|n| **n != NodeId(2)).expect("another replica");
    worst.replicas.retain(|n| *n == NodeId(2) || *n == keep);
    let mut v = views(4);
    set(&mut v, 2, NodeState::Dead, AdminState::Normal);
    let c = Cluster { nodes: v, ring: &r, r: 3 };
    let plan = plan_repair(&c, &blocks);
    let on2 = blocks.iter().filter(|(_, b)| b.replicas.contains(&NodeId(2))).count() as u64;
    assert_eq!(plan.under_replicated, on2);
    assert!(plan.trims.is_empty());
    assert!(plan.missing.is_empty());
    for t in &plan.copies {
        let rec = &blocks.iter().find(|(id, _)| *id == t.block).expect("planned block exists").1;
        assert!(!rec.replicas.contains(&t.to), "target already holds it");
        assert_ne!(t.to, NodeId(2), "never copy to the dead node");
        assert!(!t.from.contains(&NodeId(2)), "never read from the dead node");
        assert!(!t.from.is_empty());
        let ring_choice = place(&r, t.block, 3 - t.live, |n| !rec.replicas.contains(&n) && n != NodeId(2));
        assert!(ring_choice.contains(&t.to), "ring-chosen");
    }
    assert!(plan.copies.windows(2).all(|w| w[0].live <= w[1].live), "fewest live copies first");
    assert_eq!(plan.copies[0].live, 1);
    assert_eq!(
        plan.copies.iter().filter(|t| t.live == 1).count(),
        2,
        "the worst block gets its two missing copies, on the two live nodes that lack it"
    );
}

#[test]
fn suspect_node_copies_still_count_so_a_quick_restart_causes_no_storm() {
    let r = ring(4);
    let blocks = placed(&r, 300, 4);
    let mut v = views(4);
    set(&mut v, 3, NodeState::Suspect, AdminState::Normal);
    let c = Cluster { nodes: v, ring: &r, r: 3 };
    let plan = plan_repair(&c, &blocks);
    assert!(plan.copies.is_empty() && plan.trims.is_empty());
    assert_eq!(plan.under_replicated, 0);
    assert!(!settled(&c), "no rebalancing while a node is suspect");
}

#[test]
fn maintenance_node_is_not_repaired_even_when_silent() {
    let r = ring(4);
    let blocks = placed(&r, 300, 4);
    let mut v = views(4);
    set(&mut v, 1, NodeState::Dead, AdminState::Maintenance { until_ms: 1 });
    let c = Cluster { nodes: v, ring: &r, r: 3 };
    let plan = plan_repair(&c, &blocks);
    assert_eq!(plan, Plan::default());
    assert!(!c.view(NodeId(1)).expect("node 1").can_target(1), "no new copies go to a node in maintenance");
    assert!(!settled(&c));
}

#[test]
fn a_returning_node_makes_copies_above_r_which_are_trimmed_to_r() {
    let r = ring(4);
    let mut blocks = placed(&r, 400, 4);
    // Node 2 died, its blocks were repaired elsewhere, and it came back.
    for (id, b) in blocks.iter_mut() {
        if b.replicas.contains(&NodeId(2)) {
            let to = place(&r, *id, 1, |n| !b.replicas.contains(&n))[0];
            b.replicas.push(to);
        }
    }
    let c = Cluster { nodes: views(4), ring: &r, r: 3 };
    let plan = plan_repair(&c, &blocks);
    assert!(plan.copies.is_empty());
    let over = blocks.iter().filter(|(_, b)| b.replicas.len() == 4).count();
    assert_eq!(plan.trims.len(), over, "exactly one trim per block at 4 copies");
    // After trimming, every block is at R and, since trims prefer copies off the ideal
    // set, at its ring placement.
    for t in &plan.trims {
        let b = &mut blocks.iter_mut().find(|(id, _)| *id == t.block).expect("block").1;
        b.replicas.retain(|n| *n != t.node);
    }
    assert!(blocks.iter().all(|(_, b)| b.replicas.len() == 3));
    assert_eq!(plan_repair(&c, &blocks), Plan::default());
    assert!(plan_rebalance(&c, &blocks, usize::MAX).is_empty());
}

#[test]
fn no_trim_while_a_counted_copy_is_on_a_suspect_node() {
    let r = ring(4);
    let id = block(7);
    let blocks = vec![(id, BlockRec { len: 10, refs: 1, replicas: vec![NodeId(1), NodeId(2), NodeId(3), NodeId(4)] })];
    let mut v = views(4);
    set(&mut v, 4, NodeState::Suspect, AdminState::Normal);
    let c = Cluster { nodes: v, ring: &r, r: 3 };
    assert!(plan_repair(&c, &blocks).trims.is_empty(), "3 up copies plus a suspect one: keep all");
}

#[test]
fn all_copies_dead_is_missing_and_blocked() {
    let r = ring(4);
    let id = block(1);
    let blocks = vec![(id, BlockRec { len: 10, refs: 1, replicas: vec![NodeId(1), NodeId(2)] })];
    let mut v = views(4);
    set(&mut v, 1, NodeState::Dead, AdminState::Normal);
    set(&mut v, 2, NodeState::Dead, AdminState::Normal);
    let c = Cluster { nodes: v, ring: &r, r: 3 };
    let plan = plan_repair(&c, &blocks);
    assert_eq!(plan.missing, vec![id]);
    assert_eq!(plan.blocked, 1);
    assert!(plan.copies.is_empty());
}

#[test]
fn full_nodes_get_no_copies() {
    let r = ring(4);
    let blocks = placed(&r, 200, 4);
    let mut v = views(4);
    set(&mut v, 2, NodeState::Dead, AdminState::Normal);
    v.get_mut(&NodeId(4)).expect("node 4").used = 99 * GIB;
    let c = Cluster { nodes: v, ring: &r, r: 3 };
    let plan = plan_repair(&c, &blocks);
    assert!(plan.copies.iter().all(|t| t.to != NodeId(4)));
}

#[test]
fn drain_copies_everything_away_and_finishes_at_r_elsewhere() {
    let r = ring(5);
    let mut blocks = placed(&r, 300, 5);
    let mut v = views(5);
    let on1 = blocks.iter().filter(|(_, b)| b.replicas.contains(&NodeId(1))).count() as u64;
    // Dry run (node still normal): everything it holds must move.
    let dry = drain_remaining(&Cluster { nodes: views(5), ring: &r, r: 3 }, &blocks, NodeId(1));
    assert_eq!(dry, (on1, on1 * (4 << 20)), "everything it holds must move");
    set(&mut v, 1, NodeState::Up, AdminState::Draining);
    let c = Cluster { nodes: v, ring: &r, r: 3 };
    assert_eq!(drain_remaining(&c, &blocks, NodeId(1)), (on1, on1 * (4 << 20)));
    let plan = plan_repair(&c, &blocks);
    assert_eq!(plan.copies.len() as u64, on1);
    assert!(plan.copies.iter().all(|t| t.to != NodeId(1)));
    assert!(
        plan.copies.iter().all(|t| t.from.contains(&NodeId(1)) || t.from.len() == 2),
        "the draining node serves as a source"
    );
    for t in &plan.copies {
        blocks.iter_mut().find(|(id, _)| *id == t.block).expect("block").1.replicas.push(t.to);
    }
    assert_eq!(drain_remaining(&c, &blocks, NodeId(1)), (0, 0));
    assert!(plan_repair(&c, &blocks).trims.is_empty(), "the draining copy is removed with the node, not trimmed");
}

#[test]
fn join_moves_about_one_over_n_plus_one_of_the_copies_to_the_new_node() {
    let r4 = ring(4);
    let blocks = placed(&r4, 4000, 4);
    let r5 = ring(5);
    let c = Cluster { nodes: views(5), ring: &r5, r: 3 };
    let moves = plan_rebalance(&c, &blocks, usize::MAX);
    let copies = blocks.len() as f64 * 3.0;
    let frac = moves.len() as f64 / copies;
    assert!((frac - 0.2).abs() < 0.03, "moved {frac:.3} of copies, want about 1/5");
    assert!(moves.iter().all(|m| m.to == NodeId(5) && m.drop.len() == 1 && m.drop[0] != NodeId(5)));
    assert!(plan_rebalance(&c, &blocks, 10).len() == 10, "the cap holds");
}
