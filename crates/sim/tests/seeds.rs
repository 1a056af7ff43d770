//! The real code under the simulator: 150 seeds with every invariant, and a run is a
//! pure function of its seed. (The injected-bug self-test is its own test binary,
//! `injected_bug.rs`, because it flips a process-wide switch.)

use distfs_sim::{campaign, replay_command, run, SimConfig};

#[test]
fn real_code_passes_150_seeds_with_all_invariants() {
    let failed = campaign(0, 150, SimConfig::default());
    let msg: Vec<String> =
        failed.iter().map(|(s, e)| format!("seed {s}: {e}\n  replay: {}", replay_command(*s))).collect();
    assert!(failed.is_empty(), "{} of 150 seeds failed:\n{}", failed.len(), msg.join("\n"));
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 42, 977] {
        let a = run(seed, SimConfig::default()).expect("seed passes");
        let b = run(seed, SimConfig::default()).expect("seed passes");
        assert_eq!(a, b, "seed {seed} ran differently twice");
        assert!(a.writes_acked > 10 && a.crashes > 0, "seed {seed} exercised too little: {a:?}");
    }
}
