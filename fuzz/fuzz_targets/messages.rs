//! Every typed header a peer can send (metadata and storage requests/responses, the
//! handshake, errors), decoded from arbitrary bytes: no panic, no allocation sized by a
//! claimed length, and a decoded value re-encodes to one that decodes equal.
#![no_main]

use distfs_proto::handshake::{Hello, HelloAck};
use distfs_proto::{decode, encode, MetaRequest, MetaResponse, StorageRequest, StorageResponse};
use distfs_types::FsError;
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(v) = decode::<T>(bytes) {
        let again: T = decode(&encode(&v)).expect("re-encoded value decodes");
        assert_eq!(again, v);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel % 7 {
        0 => check::<MetaRequest>(rest),
        1 => check::<MetaResponse>(rest),
        2 => check::<StorageRequest>(rest),
        3 => check::<StorageResponse>(rest),
        4 => check::<Hello>(rest),
        5 => check::<HelloAck>(rest),
        _ => check::<FsError>(rest),
    }
});
