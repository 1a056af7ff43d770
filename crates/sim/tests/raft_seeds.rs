//! The real openraft metadata group under the simulator: seeds pass, a seed replays
//! exactly, and a failure names its replay command.

use distfs_sim::raft::{raft_replay_command, run_raft, RaftReport, RaftSimConfig};

/// 120 seeds pass, and together they exercised what the invariants are about: leader
/// changes, crashes, partitions, snapshot installs, both group sizes, commands whose
/// outcome the client could not know, and reads answered within a read lease and after a
/// leadership round (none of them missing an acknowledged write).
#[test]
fn raft_seeds_pass() {
    let t = std::time::Instant::now();
    let mut failed = Vec::new();
    let mut all = Vec::new();
    let cfg = RaftSimConfig { reads: true, ..RaftSimConfig::default() };
    for s in 0..120 {
        match run_raft(s, cfg) {
            Ok(r) => all.push(r),
            Err(e) => {
                println!("seed {s} FAILED: {e}\nreplay: {}", raft_replay_command(s));
                failed.push((s, e.to_string()));
            }
        }
    }
    println!("120 raft seeds in {:.1} s", t.elapsed().as_secs_f64());
    assert!(failed.is_empty(), "{} of 120 raft seeds failed; first: {:?}", failed.len(), failed.first());
    let sum = |f: fn(&RaftReport) -> u64| all.iter().map(f).sum::<u64>();
    let count = |f: fn(&RaftReport) -> bool| all.iter().filter(|r| f(r)).count();
    println!(
        "acked {} unknown {} crashes {} partitions {} snapshots {} multi-term seeds {} five-voter seeds {} \
         lease reads {} round reads {}",
        sum(|r| r.acked as u64),
        sum(|r| r.unknown as u64),
        sum(|r| r.crashes as u64),
        sum(|r| r.partitions as u64),
        sum(|r| r.snapshots),
        count(|r| r.terms > 1),
        count(|r| r.voters == 5),
        sum(|r| r.lease_reads as u64),
        sum(|r| r.round_reads as u64),
    );
    assert!(sum(|r| r.acked as u64) > 1000, "too few acknowledged writes");
    assert!(sum(|r| r.unknown as u64) > 0, "no write of unknown outcome");
    assert!(count(|r| r.terms > 2) > 30, "too few seeds with leader changes");
    assert!(count(|r| r.snapshots > 0) > 5, "too few seeds installed a snapshot");
    assert!(count(|r| r.voters == 5) > 20 && count(|r| r.voters == 3) > 20, "both group sizes run");
    assert!(sum(|r| r.lease_reads as u64) > 1000, "too few reads within a lease");
    assert!(sum(|r| r.round_reads as u64) > 100, "too few reads after a leadership round");
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
    // A five-voter seed as well.
    let five = (0..20).find(|s| run_raft(*s, cfg).is_ok_and(|r| r.voters == 5)).expect("a five-voter seed");
    assert_eq!(run_raft(five, cfg).expect("passes"), run_raft(five, cfg).expect("passes"));
}
