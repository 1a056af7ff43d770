//! The on-disk block file format. A file is a header followed by the stored data.
//! Version 1 (a plain block):
//!
//! ```text
//! magic "DFSB" u32 LE | version u16 (1) | flags u16 (0) | block id u128 LE | data length u32 |
//! piece count u32 | CRC32C of each 64 KiB piece (u32 each) | CRC32C of all of the above u32
//! ```
//!
//! Version 2 (a compressed block, issue 10): the same 32 fixed bytes, but `flags` holds the
//! codec (1 lz4, 2 zstd) and the piece-count field holds the plain (decompressed) length;
//! both piece counts follow from the lengths. Then the CRC32C of each 64 KiB piece of the
//! stored (compressed) bytes, the CRC32C of each 64 KiB piece of the plain bytes, and the
//! header CRC. A reader checks the stored bytes, decompresses into at most the plain length
//! (bounded by `MAX_BLOCK` before anything is allocated), then checks the plain bytes.
//!
//! All integers little endian. Every length is bounded before anything is allocated.

use crate::error::CorruptKind;
use distfs_proto::Compression;
use distfs_types::{BlockId, CRC_CHUNK};

pub const MAGIC: u32 = u32::from_le_bytes(*b"DFSB");
pub const VERSION: u16 = 1;
/// Version of a compressed block's header.
pub const VERSION_PACKED: u16 = 2;
/// Largest block the node stores (the protocol's body limit).
pub const MAX_BLOCK: u64 = 16 << 20;
/// Fixed part of the header, before the CRC list.
pub const FIXED_LEN: usize = 32;
const PIECE: u64 = CRC_CHUNK as u64;

/// The parsed header of a block file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub id: BlockId,
    pub len: u64,
    pub crcs: Vec<u32>,
    /// Set for a compressed block (format version 2): `len`/`crcs` describe the stored
    /// bytes, this the plain ones.
    pub packed: Option<Packed>,
}

/// How a compressed block decompresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packed {
    pub codec: Compression,
    pub plain_len: u64,
    pub plain_crcs: Vec<u32>,
}

fn codec_code(c: Compression) -> u16 {
    match c {
        Compression::None => 0,
        Compression::Lz4 => 1,
        Compression::Zstd => 2,
    }
}

/// Number of 64 KiB pieces of a block of `len` bytes.
pub fn pieces(len: u64) -> usize {
    len.div_ceil(PIECE) as usize
}

/// CRC32C of each 64 KiB piece of `data`.
pub use distfs_proto::pieces::piece_crcs;

impl Header {
    /// Bytes the header occupies; the data starts here.
    pub fn encoded_len(&self) -> usize {
        header_len(self.crcs.len() + self.packed.as_ref().map_or(0, |p| p.plain_crcs.len()))
    }

    /// Length of the block's plain (decompressed) bytes.
    pub fn plain_len(&self) -> u64 {
        self.packed.as_ref().map_or(self.len, |p| p.plain_len)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.encoded_len());
        b.extend_from_slice(&MAGIC.to_le_bytes());
        match &self.packed {
            None => {
                b.extend_from_slice(&VERSION.to_le_bytes());
                b.extend_from_slice(&0u16.to_le_bytes());
            }
            Some(p) => {
                b.extend_from_slice(&VERSION_PACKED.to_le_bytes());
                b.extend_from_slice(&codec_code(p.codec).to_le_bytes());
            }
        }
        b.extend_from_slice(&self.id.0.to_le_bytes());
        b.extend_from_slice(&(self.len as u32).to_le_bytes());
        match &self.packed {
            None => b.extend_from_slice(&(self.crcs.len() as u32).to_le_bytes()),
            Some(p) => b.extend_from_slice(&(p.plain_len as u32).to_le_bytes()),
        }
        let plain = self.packed.iter().flat_map(|p| p.plain_crcs.iter());
        for c in self.crcs.iter().chain(plain) {
            b.extend_from_slice(&c.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses the fixed part; returns the data length and how many header bytes remain
    /// (CRC list plus header CRC) so the caller reads exactly that much.
    pub fn parse_fixed(b: &[u8; FIXED_LEN]) -> Result<(u64, usize), CorruptKind> {
        let magic = u32::from_le_bytes(arr(&b[0..4]));
        if magic != MAGIC {
            return Err(CorruptKind::BadMagic { found: magic });
        }
        let version = u16::from_le_bytes(arr(&b[4..6]));
        let len = u64::from(u32::from_le_bytes(arr(&b[24..28])));
        let field = u64::from(u32::from_le_bytes(arr(&b[28..32])));
        if len > MAX_BLOCK {
            return Err(CorruptKind::BadLength { len });
        }
        match version {
            VERSION => {
                if field != pieces(len) as u64 {
                    return Err(CorruptKind::BadLength { len: field });
                }
                Ok((len, header_len(pieces(len)) - FIXED_LEN))
            }
            VERSION_PACKED => {
                codec_of(u16::from_le_bytes(arr(&b[6..8])))?;
                // The plain length is untrusted: bounded before any buffer is sized.
                if field > MAX_BLOCK || field == 0 {
                    return Err(CorruptKind::BadLength { len: field });
                }
                Ok((len, header_len(pieces(len) + pieces(field)) - FIXED_LEN))
            }
            found => Err(CorruptKind::UnsupportedVersion { found }),
        }
    }

    /// Parses and verifies a whole header (`b` is exactly `encoded_len` bytes).
    pub fn decode(b: &[u8]) -> Result<Header, CorruptKind> {
        let fixed: &[u8; FIXED_LEN] = b
            .get(..FIXED_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(CorruptKind::Truncated { expected: FIXED_LEN as u64, found: b.len() as u64 })?;
        let (len, rest) = Self::parse_fixed(fixed)?;
        if b.len() != FIXED_LEN + rest {
            return Err(CorruptKind::Truncated { expected: (FIXED_LEN + rest) as u64, found: b.len() as u64 });
        }
        let (body, crc) = b.split_at(b.len() - 4);
        let stored = u32::from_le_bytes(arr(crc));
        let computed = crc32c::crc32c(body);
        if stored != computed {
            return Err(CorruptKind::HeaderChecksum { expected: stored, computed });
        }
        let id = BlockId(u128::from_le_bytes(arr(&b[8..24])));
        let mut crcs: Vec<u32> = body[FIXED_LEN..].chunks_exact(4).map(|c| u32::from_le_bytes(arr(c))).collect();
        let packed = match u16::from_le_bytes(arr(&b[4..6])) {
            VERSION_PACKED => {
                let codec = codec_of(u16::from_le_bytes(arr(&b[6..8])))?;
                let plain_len = u64::from(u32::from_le_bytes(arr(&b[28..32])));
                let plain_crcs = crcs.split_off(pieces(len));
                Some(Packed { codec, plain_len, plain_crcs })
            }
            _ => None,
        };
        Ok(Header { id, len, crcs, packed })
    }
}

fn codec_of(code: u16) -> Result<Compression, CorruptKind> {
    match code {
        1 => Ok(Compression::Lz4),
        2 => Ok(Compression::Zstd),
        // A compressed-format header must name a codec it was compressed with.
        other => Err(CorruptKind::BadCodec { found: other }),
    }
}

fn header_len(pieces: usize) -> usize {
    FIXED_LEN + 4 * pieces + 4
}

fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    s.try_into().expect("slice length fixed by the format layout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let data = vec![7u8; 200_000];
        let h = Header { id: BlockId(42), len: data.len() as u64, crcs: piece_crcs(&data), packed: None };
        assert_eq!(h.crcs.len(), 4);
        let enc = h.encode();
        assert_eq!(enc.len(), h.encoded_len());
        assert_eq!(Header::decode(&enc), Ok(h));
        let mut bad = enc.clone();
        bad[40] ^= 1;
        assert!(matches!(Header::decode(&bad), Err(CorruptKind::HeaderChecksum { .. })));
        let mut bad = enc.clone();
        bad[0] ^= 1;
        assert!(matches!(Header::decode(&bad), Err(CorruptKind::BadMagic { .. })));
        // A lying length is rejected before anything is allocated.
        let mut bad = enc;
        bad[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Header::decode(&bad), Err(CorruptKind::BadLength { .. })));
    }

    fn packed_header() -> (Header, Vec<u8>) {
        let plain: Vec<u8> = b"compressible text, again and again. ".iter().copied().cycle().take(300_000).collect();
        let (codec, stored) = distfs_proto::compress::compress_block(Compression::Zstd, &plain);
        assert_eq!(codec, Compression::Zstd);
        let h = Header {
            id: BlockId(77),
            len: stored.len() as u64,
            crcs: piece_crcs(&stored),
            packed: Some(Packed { codec, plain_len: plain.len() as u64, plain_crcs: piece_crcs(&plain) }),
        };
        (h, plain)
    }

    #[test]
    fn packed_round_trip_and_checks() {
        let (h, _) = packed_header();
        let enc = h.encode();
        assert_eq!(enc.len(), h.encoded_len());
        assert_eq!(u16::from_le_bytes([enc[4], enc[5]]), VERSION_PACKED);
        assert_eq!(Header::decode(&enc), Ok(h.clone()));
        assert_eq!(h.plain_len(), 300_000);
        // A lying plain length is refused from the fixed part alone, before the rest of
        // the header (or any decompression buffer) is allocated.
        let mut bad = enc.clone();
        bad[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        let fixed: &[u8; FIXED_LEN] = bad[..FIXED_LEN].try_into().unwrap();
        assert_eq!(Header::parse_fixed(fixed), Err(CorruptKind::BadLength { len: u32::MAX as u64 }));
        assert!(matches!(Header::decode(&bad), Err(CorruptKind::BadLength { .. })));
        let mut bad = enc.clone();
        bad[6..8].copy_from_slice(&9u16.to_le_bytes());
        assert_eq!(Header::decode(&bad), Err(CorruptKind::BadCodec { found: 9 }));
        let mut bad = enc.clone();
        bad[4..6].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(Header::decode(&bad), Err(CorruptKind::UnsupportedVersion { found: 3 }));
        // A flipped plain CRC is caught by the header CRC.
        let mut bad = enc;
        let i = FIXED_LEN + 4 * h.crcs.len() + 1;
        bad[i] ^= 1;
        assert!(matches!(Header::decode(&bad), Err(CorruptKind::HeaderChecksum { .. })));
    }

    /// Stable companion of `fuzz/fuzz_targets/block_format.rs`: mutated headers never
    /// panic, and an accepted one re-encodes to exactly its bytes.
    #[test]
    fn mutated_headers_are_rejected_or_exact() {
        let data = vec![1u8; 300_000];
        let enc = Header { id: BlockId(9), len: data.len() as u64, crcs: piece_crcs(&data), packed: None }.encode();
        let packed = packed_header().0.encode();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut accepted = 0;
        for round in 0..50_000 {
            let mut b = if round % 2 == 0 { enc.clone() } else { packed.clone() };
            match next() % 4 {
                0 => {
                    let i = next() as usize % b.len();
                    b[i] ^= 1 << (next() % 8);
                }
                1 => b.truncate(next() as usize % (b.len() + 1)),
                2 => {
                    let i = next() as usize % (b.len() - 3);
                    b[i..i + 4].copy_from_slice(&(next() as u32).to_le_bytes());
                }
                _ => {}
            }
            if let Ok(h) = Header::decode(&b) {
                assert_eq!(h.encode(), b);
                accepted += 1;
            }
            if let Some(fixed) = b.get(..FIXED_LEN).and_then(|s| <&[u8; FIXED_LEN]>::try_from(s).ok()) {
                let _ = Header::parse_fixed(fixed);
            }
        }
        assert!(accepted > 0, "the unmutated header must decode");
    }
}
