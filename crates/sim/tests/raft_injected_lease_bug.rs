//! The Raft simulation's check of the metadata read lease: with a lease deliberately far
//! longer than the followers' promise not to vote (`LEASE_UNCHECKED`), a leader cut off
//! from the majority keeps answering reads from its own state after the majority elected
//! another leader and acknowledged new writes. Some seed among the first 100 must catch
//! such a stale read, and the same seed must pass with the real lease.

use distfs_meta::lease::sim_bugs::LEASE_UNCHECKED;
use distfs_sim::raft::{raft_campaign, run_raft, RaftSimConfig};
use distfs_sim::SimError;
use std::sync::atomic::Ordering;

#[test]
fn finds_reads_of_a_deposed_leader_within_100_seeds() {
    LEASE_UNCHECKED.store(true, Ordering::Relaxed);
    let cfg = RaftSimConfig { reads: true, ..RaftSimConfig::default() };
    let failed = raft_campaign(0, 100, cfg);
    LEASE_UNCHECKED.store(false, Ordering::Relaxed);
    let stale: Vec<_> = failed.iter().filter(|(_, e)| e.to_string().contains("stale read")).collect();
    for (s, e) in &stale {
        println!("seed {s}: {e}");
    }
    let Some((seed, err)) = stale.first() else {
        panic!("the Raft simulation found no stale read with an unchecked lease in 100 seeds: {failed:?}");
    };
    assert!(matches!(err, SimError::Invariant(_)), "{err}");
    run_raft(*seed, cfg).expect("the seed passes with the real lease");
}
