//! The on-disk block file format, version 1. A file is a header followed by the data:
//!
//! ```text
//! magic "DFSB" u32 LE | version u16 | flags u16 (0) | block id u128 LE | data length u32 |
//! piece count u32 | CRC32C of each 64 KiB piece (u32 each) | CRC32C of all of the above u32
//! ```
//!
//! All integers little endian. Every length is bounded before anything is allocated.

use crate::error::CorruptKind;
use distfs_types::{BlockId, CRC_CHUNK};

pub const MAGIC: u32 = u32::from_le_bytes(*b"DFSB");
pub const VERSION: u16 = 1;
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
}

/// Number of 64 KiB pieces of a block of `len` bytes.
pub fn pieces(len: u64) -> usize {
    len.div_ceil(PIECE) as usize
}

/// CRC32C of each 64 KiB piece of `data`.
pub fn piece_crcs(data: &[u8]) -> Vec<u32> {
    data.chunks(CRC_CHUNK as usize).map(crc32c::crc32c).collect()
}

impl Header {
    /// Bytes the header occupies; the data starts here.
    pub fn encoded_len(&self) -> usize {
        header_len(self.crcs.len())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.encoded_len());
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&self.id.0.to_le_bytes());
        b.extend_from_slice(&(self.len as u32).to_le_bytes());
        b.extend_from_slice(&(self.crcs.len() as u32).to_le_bytes());
        for c in &self.crcs {
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
        if version != VERSION {
            return Err(CorruptKind::UnsupportedVersion { found: version });
        }
        let len = u64::from(u32::from_le_bytes(arr(&b[24..28])));
        let count = u64::from(u32::from_le_bytes(arr(&b[28..32])));
        if len > MAX_BLOCK {
            return Err(CorruptKind::BadLength { len });
        }
        if count != pieces(len) as u64 {
            return Err(CorruptKind::BadLength { len: count });
        }
        Ok((len, header_len(count as usize) - FIXED_LEN))
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
        let crcs = body[FIXED_LEN..].chunks_exact(4).map(|c| u32::from_le_bytes(arr(c))).collect();
        Ok(Header { id, len, crcs })
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
        let h = Header { id: BlockId(42), len: data.len() as u64, crcs: piece_crcs(&data) };
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

    /// Stable companion of `fuzz/fuzz_targets/block_format.rs`: mutated headers never
    /// panic, and an accepted one re-encodes to exactly its bytes.
    #[test]
    fn mutated_headers_are_rejected_or_exact() {
        let data = vec![1u8; 300_000];
        let enc = Header { id: BlockId(9), len: data.len() as u64, crcs: piece_crcs(&data) }.encode();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut accepted = 0;
        for _ in 0..50_000 {
            let mut b = enc.clone();
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
