//! The frame decoder (`read_frame`: fixed header, bounded reads, CRC, decompression) on
//! arbitrary bytes, with small limits so lying lengths are exercised too. A frame that
//! decodes must re-encode to a frame that decodes to the same thing.
#![no_main]

use distfs_proto::frame::{read_frame, Frame, FrameHeader, Limits, FIXED_LEN};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static RT: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().build().expect("runtime");
}

fn read_all(bytes: &[u8], limits: &Limits) -> Vec<Frame> {
    RT.with(|rt| {
        rt.block_on(async {
            let mut r = bytes;
            let mut out = Vec::new();
            while let Ok(Some(f)) = read_frame(&mut r, limits).await {
                out.push(f);
            }
            out
        })
    })
}

fuzz_target!(|data: &[u8]| {
    if let Some(fixed) = data.get(..FIXED_LEN).and_then(|s| <&[u8; FIXED_LEN]>::try_from(s).ok()) {
        let _ = FrameHeader::parse(fixed, &Limits::default());
    }
    for limits in [Limits::default(), Limits { max_header: 64, max_body: 4096 }] {
        for f in read_all(data, &limits) {
            assert!(f.header.len() <= limits.max_header as usize);
            assert!(f.body.len() <= limits.max_body as usize);
            let again = read_all(&f.to_bytes(), &limits);
            assert_eq!(again, vec![f]);
        }
    }
});
