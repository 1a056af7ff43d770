//! Stable companion of `fuzz/fuzz_targets/raft.rs`: what metadata servers decode from each
//! other (Raft RPCs, replies, snapshots) fed mutated encodings and random bytes. Nothing
//! may panic; an accepted RPC or snapshot re-encodes to one that decodes.

use distfs_meta::raft::{RaftReply, RaftRpc};
use distfs_meta::state::Dump;
use openraft::raft::VoteRequest;
use openraft::{LeaderId, LogId, Vote};

fn mutate(x: &mut u64, seed: &[u8]) -> Vec<u8> {
    let mut next = || {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    };
    let mut b = seed.to_vec();
    match next() % 5 {
        0 if !b.is_empty() => {
            let i = next() as usize % b.len();
            b[i] ^= 1 << (next() % 8);
        }
        1 => b.truncate(next() as usize % (b.len() + 1)),
        2 => {
            let i = next() as usize % (b.len() + 1);
            b.splice(i..i, [0xff, 0xff, 0xff, 0xff, 0x0f]);
        }
        3 => {
            let i = next() as usize % (b.len() + 1);
            b.insert(i, next() as u8);
        }
        _ => b = (0..next() % 64).map(|_| next() as u8).collect(),
    }
    b
}

#[test]
fn raft_messages_and_snapshots_survive_mutation() {
    let vote = RaftRpc::Vote(VoteRequest::new(Vote::new(3, 1), Some(LogId::new(LeaderId::new(2, 1), 17))));
    let seeds = [distfs_proto::encode(&vote).to_vec(), Dump::default().to_bytes()];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut decoded = 0;
    for i in 0..100_000 {
        let b = mutate(&mut x, &seeds[i % 2]);
        if let Ok(v) = distfs_proto::decode::<RaftRpc>(&b) {
            distfs_proto::decode::<RaftRpc>(&distfs_proto::encode(&v)).expect("re-encoded rpc decodes");
            decoded += 1;
        }
        if let Ok(v) = distfs_proto::decode::<RaftReply>(&b) {
            distfs_proto::decode::<RaftReply>(&distfs_proto::encode(&v)).expect("re-encoded reply decodes");
        }
        if let Ok(d) = Dump::from_bytes(&b) {
            assert_eq!(Dump::from_bytes(&d.to_bytes()).expect("re-encoded dump decodes"), d);
            decoded += 1;
        }
    }
    assert!(decoded > 100, "only {decoded} mutants decoded");
}
