//! The Raft simulation's check of reads through the metadata read lease, with the lease
//! deliberately broken in two ways (`sim-bugs` switches; own test binary, since the
//! switches are process-wide):
//! - `LEASE_TOO_LONG`: 100 × `election_timeout_min`. A leader cut off from the majority
//!   (the reader runs with partitions that outlast the followers' promise not to vote)
//!   keeps answering from its own state after the majority elected another leader and
//!   acknowledged writes it does not have.
//! - `LEASE_UNCHECKED`: too long, and kept after the term or the leadership is lost: a
//!   deposed leader, now a follower, answers from a state that lags.
//!
//! Either way some seed among the first 100 must catch a stale read, and the same seed
//! must pass with the real lease.

use distfs_meta::lease::sim_bugs::{LEASE_TOO_LONG, LEASE_UNCHECKED};
use distfs_sim::raft::{raft_campaign, run_raft, RaftSimConfig};
use distfs_sim::SimError;
use std::sync::atomic::{AtomicBool, Ordering};

fn finds_stale_reads_with(bug: &AtomicBool, what: &str) {
    let cfg = RaftSimConfig { reads: true, ..RaftSimConfig::default() };
    bug.store(true, Ordering::Relaxed);
    let failed = raft_campaign(0, 100, cfg);
    bug.store(false, Ordering::Relaxed);
    let stale: Vec<_> = failed.iter().filter(|(_, e)| e.to_string().contains("stale read")).collect();
    for (s, e) in &stale {
        println!("{what}: seed {s}: {e}");
    }
    let Some((seed, err)) = stale.first() else {
        panic!("the Raft simulation found no stale read with {what} in 100 seeds: {failed:?}");
    };
    assert!(matches!(err, SimError::Invariant(_)), "{err}");
    run_raft(*seed, cfg).expect("the seed passes with the real lease");
}

/// One test for both switches: they are process-wide, and `cargo test` runs the tests of
/// a binary on threads of one process.
#[test]
fn finds_reads_of_a_cut_off_or_deposed_leader_within_100_seeds() {
    finds_stale_reads_with(&LEASE_TOO_LONG, "a lease 100 × too long");
    finds_stale_reads_with(&LEASE_UNCHECKED, "an unchecked lease");
}
