//! What metadata servers decode from each other: Raft RPCs and replies (log entries carry
//! state-machine commands) and snapshots (`Dump`, installed from a peer).
#![no_main]

use distfs_meta::raft::{RaftReply, RaftRpc};
use distfs_meta::state::Dump;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel % 3 {
        0 => {
            if let Ok(v) = distfs_proto::decode::<RaftRpc>(rest) {
                let _ = distfs_proto::decode::<RaftRpc>(&distfs_proto::encode(&v)).expect("re-encoded rpc decodes");
            }
        }
        1 => {
            if let Ok(v) = distfs_proto::decode::<RaftReply>(rest) {
                let _ = distfs_proto::decode::<RaftReply>(&distfs_proto::encode(&v)).expect("re-encoded reply decodes");
            }
        }
        _ => {
            if let Ok(d) = Dump::from_bytes(rest) {
                let _ = Dump::from_bytes(&d.to_bytes()).expect("re-encoded dump decodes");
            }
        }
    }
});
