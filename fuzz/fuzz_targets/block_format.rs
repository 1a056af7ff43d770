//! The on-disk block file header parser: arbitrary bytes never panic, and an accepted
//! header re-encodes to exactly the bytes it came from.
#![no_main]

use distfs_storage::store::format::{Header, FIXED_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(fixed) = data.get(..FIXED_LEN).and_then(|s| <&[u8; FIXED_LEN]>::try_from(s).ok()) {
        let _ = Header::parse_fixed(fixed);
    }
    if let Ok(h) = Header::decode(data) {
        assert_eq!(h.encode(), data);
    }
});
