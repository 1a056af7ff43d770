//! The Raft simulation's self-test: with the log store's deliberately injected bug (votes
//! and entries reported saved without an fsync, so a crash loses them), some seed among
//! the first 100 breaks an invariant, and the failure names the command that replays it.

use distfs_meta::raft::sim_bugs::LOG_SKIPS_FSYNC;
use distfs_sim::raft::{raft_campaign, raft_replay_command, run_raft, RaftSimConfig};
use distfs_sim::SimError;
use std::sync::atomic::Ordering;

#[test]
fn finds_a_log_store_without_fsync_within_100_seeds() {
    LOG_SKIPS_FSYNC.store(true, Ordering::Relaxed);
    let cfg = RaftSimConfig::default();
    let failed = raft_campaign(0, 100, cfg);
    for (s, e) in &failed {
        println!("seed {s}: {e}");
    }
    let Some((seed, err)) = failed.first() else {
        panic!("the Raft simulation did not find the log store that skips fsync in 100 seeds");
    };
    let msg = err.to_string();
    println!("found: seed {seed}: {msg}\nreplay: {} --inject-log-skips-fsync", raft_replay_command(*seed));
    assert!(matches!(err, SimError::Invariant(_)), "{msg}");
    assert_eq!(raft_replay_command(*seed), format!("scripts/sim --raft --seed {seed}"));
    // The replay fails the same way; without the bug the same seed passes.
    assert_eq!(run_raft(*seed, cfg).err().map(|e| e.to_string()), Some(msg));
    LOG_SKIPS_FSYNC.store(false, Ordering::Relaxed);
    run_raft(*seed, cfg).expect("the seed passes with the bug switched off");
}
