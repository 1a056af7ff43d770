//! The real openraft metadata group under the simulator: seeds pass, a seed replays
//! exactly, and a failure names its replay command.

use distfs_sim::raft::{raft_campaign, raft_replay_command, run_raft, RaftSimConfig};

#[test]
fn raft_seeds_pass() {
    let t = std::time::Instant::now();
    let failed = raft_campaign(0, 100, RaftSimConfig::default());
    for (s, e) in &failed {
        println!("seed {s} FAILED: {e}\nreplay: {}", raft_replay_command(*s));
    }
    println!("100 raft seeds in {:.1} s", t.elapsed().as_secs_f64());
    assert!(failed.is_empty(), "{} of 100 raft seeds failed; first: {:?}", failed.len(), failed.first());
}

#[test]
fn a_raft_seed_replays_exactly() {
    let cfg = RaftSimConfig::default();
    let a = run_raft(3, cfg).expect("seed 3 passes");
    let b = run_raft(3, cfg).expect("seed 3 passes again");
    assert_eq!(a, b, "the same seed gave different runs");
    let c = run_raft(4, cfg).expect("seed 4 passes");
    assert_ne!(a.trace_hash, c.trace_hash, "different seeds gave the same trace");
    assert!(a.acked > 0 && a.crashes + a.partitions > 0, "the run did nothing: {a:?}");
}
