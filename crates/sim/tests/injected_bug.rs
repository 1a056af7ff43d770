//! The simulator's self-test: with the client's deliberately injected bug (a block counts
//! as written after one replica instead of W = 2 of 3), some seed among the first 100
//! loses an acknowledged write, and the failure names the command that replays it.

use distfs_sim::{campaign, inject_ack_after_one, replay_command, run, SimConfig, SimError};

#[test]
fn finds_ack_after_one_replica_within_100_seeds() {
    inject_ack_after_one(true);
    let failed = campaign(0, 100, SimConfig::default());
    let Some((seed, err)) = failed.first() else {
        panic!("the simulator did not find the injected ack-after-one bug in 100 seeds");
    };
    let msg = err.to_string();
    println!("found: seed {seed}: {msg}\nreplay: {} --inject-ack-after-one", replay_command(*seed));
    assert!(matches!(err, SimError::Invariant(_)), "{msg}");
    assert!(msg.contains("acknowledged write") && msg.contains("lost"), "{msg}");
    assert_eq!(replay_command(*seed), format!("scripts/sim --seed {seed}"));
    // The replay fails the same way; without the bug the same seed passes.
    assert_eq!(run(*seed, SimConfig::default()).err().map(|e| e.to_string()), Some(msg));
    inject_ack_after_one(false);
    run(*seed, SimConfig::default()).expect("the seed passes with the bug switched off");
}
