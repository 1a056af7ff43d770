//! Compressed bodies: `decompress_frame` on arbitrary bodies under either flag must refuse
//! what exceeds the body limit (a decompression bomb) without allocating it, and whatever
//! compresses must decompress to the same bytes.
#![no_main]

use bytes::Bytes;
use distfs_proto::compress::{compress_frame, decompress_frame, Compression};
use distfs_proto::frame::{Frame, Limits, FLAG_LZ4, FLAG_ZSTD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    let flags = [FLAG_LZ4, FLAG_ZSTD, FLAG_LZ4 | FLAG_ZSTD, 0][sel as usize % 4];
    let limits = Limits { max_header: 1 << 10, max_body: 1 << 20 };
    let frame = Frame { kind: 2, flags, request_id: 1, header: Bytes::new(), body: Bytes::copy_from_slice(body) };
    if let Ok(f) = decompress_frame(frame, &limits) {
        assert!(f.body.len() <= limits.max_body as usize);
        assert_eq!(f.flags & (FLAG_LZ4 | FLAG_ZSTD), 0);
    }
    if sel & 0x80 != 0 {
        let algo = if sel & 0x40 != 0 { Compression::Zstd } else { Compression::Lz4 };
        let plain =
            Frame { kind: 2, flags: 0, request_id: 1, header: Bytes::new(), body: Bytes::copy_from_slice(body) };
        let packed = compress_frame(plain.clone(), algo);
        assert_eq!(decompress_frame(packed, &limits).ok(), Some(plain));
    }
});
