//! Per-frame body compression. A sender that negotiated an algorithm compresses a body
//! only when it pays: bodies under `MIN_COMPRESS` go raw, a large body is judged on a
//! sample first (already-compressed data goes raw without compressing it whole), and a
//! result that does not shrink by an eighth is thrown away. A compressed body is marked
//! by `FLAG_LZ4` or `FLAG_ZSTD` and starts with its decompressed length (u32 LE), which
//! is checked against the frame limits before anything is allocated.

use crate::error::ProtoError;
use crate::frame::{Frame, Limits, FLAG_LZ4, FLAG_ZSTD};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::io::Read;

/// A compression algorithm for frame bodies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    fn flag(self) -> u16 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => FLAG_LZ4,
            Compression::Zstd => FLAG_ZSTD,
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" | "off" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            _ => Err(format!("unknown compression `{s}` (none, lz4 or zstd)")),
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bodies shorter than this are never compressed.
pub const MIN_COMPRESS: usize = 512;
/// Bodies longer than this are judged on a sample of this size first.
const SAMPLE: usize = 16 << 10;
/// zstd level: the fastest levels are the ones that keep up with a network.
const ZSTD_LEVEL: i32 = 1;
/// Largest zstd window a receiver accepts (2^24 = 16 MiB, the largest frame body).
const ZSTD_WINDOW_LOG_MAX: u32 = 24;
/// lz4 cannot expand more than about 255:1; a claim beyond that is a lie.
const LZ4_MAX_RATIO: u64 = 255;

fn shrinks(raw: usize, packed: usize) -> bool {
    packed + 4 < raw - raw / 8
}

fn pack(algo: Compression, data: &[u8]) -> Option<Vec<u8>> {
    match algo {
        Compression::None => None,
        Compression::Lz4 => Some(lz4_flex::block::compress(data)),
        Compression::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL).ok(),
    }
}

/// Compresses `frame.body` with `algo` when that makes it smaller; otherwise leaves the
/// frame as it is.
pub fn compress_frame(mut frame: Frame, algo: Compression) -> Frame {
    let raw = frame.body.len();
    if algo == Compression::None || raw < MIN_COMPRESS || raw > u32::MAX as usize {
        return frame;
    }
    if raw > 2 * SAMPLE {
        // Judge a sample from the middle (file headers are often more compressible).
        let start = raw / 2 - SAMPLE / 2;
        match pack(algo, &frame.body[start..start + SAMPLE]) {
            Some(p) if shrinks(SAMPLE, p.len()) => {}
            _ => return frame,
        }
    }
    let Some(packed) = pack(algo, &frame.body) else { return frame };
    if !shrinks(raw, packed.len()) {
        return frame;
    }
    let mut body = Vec::with_capacity(4 + packed.len());
    body.extend_from_slice(&(raw as u32).to_le_bytes());
    body.extend_from_slice(&packed);
    frame.body = Bytes::from(body);
    frame.flags |= algo.flag();
    // The pieces' CRCs were of the plain body, not of these bytes.
    frame.pieces = None;
    frame
}

/// Undoes `compress_frame` on a received frame (a frame without a compression flag is
/// returned as it is). The claimed length is bounded by `limits.max_body` (and, for lz4,
/// by the largest possible ratio) before the output buffer is sized; the output must come
/// out exactly that long.
pub fn decompress_frame(mut frame: Frame, limits: &Limits) -> Result<Frame, ProtoError> {
    let algo = match frame.flags & (FLAG_LZ4 | FLAG_ZSTD) {
        0 => return Ok(frame),
        FLAG_LZ4 => Compression::Lz4,
        FLAG_ZSTD => Compression::Zstd,
        _ => return Err(ProtoError::BadHeader { reason: "both lz4 and zstd flags set".into() }),
    };
    let bad = |reason: String| ProtoError::BadHeader { reason: format!("{algo} body: {reason}") };
    if frame.body.len() < 4 {
        return Err(bad("shorter than its length prefix".into()));
    }
    let raw = u32::from_le_bytes([frame.body[0], frame.body[1], frame.body[2], frame.body[3]]);
    if raw > limits.max_body {
        return Err(ProtoError::TooLong { what: "decompressed body", len: raw as u64, max: limits.max_body as u64 });
    }
    let out = unpack(algo, &frame.body[4..], raw as usize).map_err(bad)?;
    frame.body = Bytes::from(out);
    frame.flags &= !(FLAG_LZ4 | FLAG_ZSTD);
    // The pieces read were of the compressed bytes.
    frame.pieces = None;
    Ok(frame)
}

/// Decompresses `packed` to exactly `raw` bytes (the caller has bounded `raw`). lz4 claims
/// beyond the largest possible ratio are refused before the buffer is sized; zstd output
/// grows as it appears, so a lying length costs only what really decompresses.
fn unpack(algo: Compression, packed: &[u8], raw: usize) -> Result<Vec<u8>, String> {
    match algo {
        Compression::Lz4 => {
            if raw as u64 > packed.len() as u64 * LZ4_MAX_RATIO + 64 {
                return Err(format!("claims {raw} bytes from {} compressed bytes", packed.len()));
            }
            let mut out = vec![0u8; raw];
            let n = lz4_flex::block::decompress_into(packed, &mut out).map_err(|e| e.to_string())?;
            if n != raw {
                return Err(format!("decompressed to {n} bytes, {raw} announced"));
            }
            Ok(out)
        }
        Compression::Zstd => {
            let mut dec = zstd::stream::read::Decoder::with_buffer(packed).map_err(|e| e.to_string())?;
            dec.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(|e| e.to_string())?;
            let mut out = Vec::with_capacity(raw.min(packed.len().saturating_mul(4)).min(1 << 20));
            dec.take(raw as u64 + 1).read_to_end(&mut out).map_err(|e| e.to_string())?;
            if out.len() != raw {
                return Err(format!("decompressed to {} bytes or more, {raw} announced", out.len()));
            }
            Ok(out)
        }
        Compression::None if packed.len() == raw => Ok(packed.to_vec()),
        Compression::None => Err(format!("{} stored bytes, {raw} announced", packed.len())),
    }
}

/// Compression at rest (issue 10; the client calls it before `PutPacked`): compresses one block with `algo` and returns the codec actually used with the stored
/// bytes. A block that does not shrink by an eighth is kept plain (`Compression::None`),
/// so incompressible data costs no extra space.
pub fn compress_block(algo: Compression, plain: &[u8]) -> (Compression, Vec<u8>) {
    if algo == Compression::None || plain.len() < MIN_COMPRESS {
        return (Compression::None, plain.to_vec());
    }
    if plain.len() > 2 * SAMPLE {
        // Judge a sample from the middle first: random or already-compressed data is
        // not compressed whole only to be thrown away.
        let start = plain.len() / 2 - SAMPLE / 2;
        match pack(algo, &plain[start..start + SAMPLE]) {
            Some(p) if shrinks(SAMPLE, p.len()) => {}
            _ => return (Compression::None, plain.to_vec()),
        }
    }
    match pack(algo, plain) {
        Some(p) if shrinks(plain.len(), p.len()) => (algo, p),
        _ => (Compression::None, plain.to_vec()),
    }
}

/// Undoes `compress_block`. `plain_len` comes from a stored header and is untrusted: it is
/// checked against `max_plain` before anything is allocated, and the output must come out
/// exactly that long.
pub fn decompress_block(
    codec: Compression,
    stored: &[u8],
    plain_len: u64,
    max_plain: u64,
) -> Result<Vec<u8>, ProtoError> {
    if plain_len > max_plain {
        return Err(ProtoError::TooLong { what: "decompressed block", len: plain_len, max: max_plain });
    }
    unpack(codec, stored, plain_len as usize)
        .map_err(|reason| ProtoError::BadHeader { reason: format!("{codec} block: {reason}") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{read_frame, Kind};

    fn frame(body: Vec<u8>) -> Frame {
        Frame::new(Kind::Storage as u16, 0, 3, Bytes::from_static(b"h"), body.into())
    }

    fn text(n: usize) -> Vec<u8> {
        b"the quick brown fox jumps over the lazy dog 0123456789 ".iter().copied().cycle().take(n).collect()
    }

    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    async fn through_wire(f: &Frame) -> Frame {
        let bytes = f.to_bytes();
        read_frame(&mut bytes.as_slice(), &Limits::default()).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn round_trip_sets_and_clears_the_flag() {
        for algo in [Compression::Lz4, Compression::Zstd] {
            for n in [MIN_COMPRESS, 4096, 100_000, 4 << 20] {
                let plain = frame(text(n));
                let packed = compress_frame(plain.clone(), algo);
                assert_ne!(packed.flags & algo.flag(), 0, "{algo} {n}: not compressed");
                assert!(packed.body.len() < n / 4, "{algo} {n}: {} bytes", packed.body.len());
                // read_frame decompresses: the receiver sees the original frame.
                assert_eq!(through_wire(&packed).await, plain, "{algo} {n}");
            }
        }
    }

    #[test]
    fn incompressible_small_and_none_go_raw() {
        for algo in [Compression::Lz4, Compression::Zstd] {
            for f in [frame(noise(4 << 20)), frame(noise(8000)), frame(text(MIN_COMPRESS - 1))] {
                let out = compress_frame(f.clone(), algo);
                assert_eq!(out, f, "{algo}: {} bytes should go raw", f.body.len());
            }
        }
        let f = frame(text(100_000));
        assert_eq!(compress_frame(f.clone(), Compression::None), f);
    }

    #[test]
    fn lying_lengths_are_refused_before_allocation() {
        let limits = Limits::default();
        for (algo, flag) in [(Compression::Lz4, FLAG_LZ4), (Compression::Zstd, FLAG_ZSTD)] {
            let good = compress_frame(frame(text(100_000)), algo);
            // A claim above the frame limit: refused from the prefix alone.
            let mut body = good.body.to_vec();
            body[..4].copy_from_slice(&u32::MAX.to_le_bytes());
            let f = Frame { body: body.into(), ..good.clone() };
            assert!(matches!(decompress_frame(f, &limits), Err(ProtoError::TooLong { .. })), "{algo}");
            // A claim within the limit but not what the data holds: refused, not padded.
            for claim in [99_999u32, 100_001, 16 << 20] {
                let mut body = good.body.to_vec();
                body[..4].copy_from_slice(&claim.to_le_bytes());
                let f = Frame { body: body.into(), ..good.clone() };
                assert!(decompress_frame(f, &limits).is_err(), "{algo} claim {claim}");
            }
            // Tiny garbage claiming a big body.
            let mut body = (1u32 << 20).to_le_bytes().to_vec();
            body.extend_from_slice(&[0xffu8; 10]);
            let f = Frame { flags: flag, body: body.into(), ..good.clone() };
            assert!(decompress_frame(f, &limits).is_err(), "{algo} garbage");
            let f = Frame { flags: flag, body: Bytes::from_static(&[1, 2]), ..good.clone() };
            assert!(decompress_frame(f, &limits).is_err(), "{algo} short");
        }
        let f = Frame { flags: FLAG_LZ4 | FLAG_ZSTD, ..frame(vec![0; 10]) };
        assert!(decompress_frame(f, &limits).is_err());
    }

    #[test]
    fn zstd_bomb_is_bounded_by_the_limit() {
        // 64 MiB of zeros compress to a few KiB; a receiver with a 16 MiB limit must stop.
        let zeros = vec![0u8; 64 << 20];
        let packed = zstd::bulk::compress(&zeros, 1).unwrap();
        let mut body = (16u32 << 20).to_le_bytes().to_vec();
        body.extend_from_slice(&packed);
        let f = Frame { flags: FLAG_ZSTD, ..frame(body) };
        assert!(decompress_frame(f, &Limits::default()).is_err());
    }

    #[test]
    fn blocks_round_trip_and_incompressible_stay_plain() {
        for algo in [Compression::Lz4, Compression::Zstd] {
            let plain = text(1 << 20);
            let (codec, stored) = compress_block(algo, &plain);
            assert_eq!(codec, algo);
            assert!(stored.len() < plain.len() / 4, "{algo}: {} bytes", stored.len());
            assert_eq!(decompress_block(codec, &stored, plain.len() as u64, 4 << 20).unwrap(), plain);
            let n = noise(1 << 20);
            let (codec, stored) = compress_block(algo, &n);
            assert_eq!((codec, &stored), (Compression::None, &n), "{algo}: noise must stay plain");
            assert_eq!(decompress_block(codec, &stored, n.len() as u64, 4 << 20).unwrap(), n);
        }
    }

    #[test]
    fn block_lengths_are_checked_before_allocation() {
        let plain = text(100_000);
        for algo in [Compression::Lz4, Compression::Zstd] {
            let (codec, stored) = compress_block(algo, &plain);
            assert!(matches!(decompress_block(codec, &stored, u64::MAX, 4 << 20), Err(ProtoError::TooLong { .. })));
            for claim in [99_999u64, 100_001, 4 << 20] {
                assert!(decompress_block(codec, &stored, claim, 4 << 20).is_err(), "{algo} claim {claim}");
            }
            assert!(decompress_block(algo, &[0xff; 10], 1 << 20, 4 << 20).is_err(), "{algo} garbage");
        }
        assert!(decompress_block(Compression::None, &[1, 2, 3], 4, 4 << 20).is_err());
    }
}
