//! The layout model: a file is cut into fixed-size chunks; a chunk holds committed slices;
//! a slice is a run of immutable blocks. Where slices overlap the higher sequence number
//! wins. `visible_extents` is the one function that resolves overlaps, used by the read
//! path and by the metadata service to find slices that nothing can see any more.

use crate::ids::{BlockId, NodeId, Seq};
use serde::{Deserialize, Serialize};

/// Default chunk size (the seed's 64 MiB).
pub const CHUNK_SIZE_DEFAULT: u64 = 64 << 20;
/// Default maximum block size.
pub const BLOCK_SIZE_DEFAULT: u32 = 4 << 20;
/// Granularity of the CRC32C checksums kept per block.
pub const CRC_CHUNK: u32 = 64 << 10;

/// Files whose bytes all lie below this offset of chunk 0 may keep them inline in the
/// metadata instead of in blocks on storage nodes (one Raft write per small file instead
/// of a block allocation, R block writes and a commit; reads need no storage node).
pub const INLINE_MAX: u64 = 64 << 10;

/// Bytes kept in the metadata itself, with their CRC32C (checked by every reader: the
/// metadata store is a disk like any other).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inline {
    pub crc: u32,
    pub data: Vec<u8>,
}

impl Inline {
    pub fn new(data: Vec<u8>) -> Inline {
        Inline { crc: crc32c::crc32c(&data), data }
    }

    /// Whether the bytes still match their checksum.
    pub fn verify(&self) -> bool {
        crc32c::crc32c(&self.data) == self.crc
    }

    /// Keeps the first `len` bytes (a truncate), with a fresh checksum.
    pub fn truncate(&mut self, len: usize) {
        if len < self.data.len() {
            self.data.truncate(len);
            self.crc = crc32c::crc32c(&self.data);
        }
    }
}

/// A block as a slice refers to it: id and length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlockRef {
    pub id: BlockId,
    pub len: u32,
}

/// A committed write inside one chunk: bytes `[offset, offset+len)` of the chunk come from
/// the concatenation of `blocks`, starting at byte 0 of the first block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    /// Offset of the slice inside its chunk.
    pub offset: u64,
    /// Visible length; never more than the sum of the block lengths (truncate can shorten).
    pub len: u64,
    pub seq: Seq,
    pub blocks: Vec<BlockRef>,
    /// The slice's bytes themselves, for a small file (then `blocks` is empty).
    pub inline: Option<Inline>,
}

impl Slice {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }

    /// Sum of the lengths of the blocks the slice refers to.
    pub fn stored_len(&self) -> u64 {
        self.blocks.iter().map(|b| b.len as u64).sum::<u64>() + self.inline.as_ref().map_or(0, |i| i.data.len() as u64)
    }
}

/// A run of chunk bytes `[offset, offset+len)` that is visible from slice `slice` (index
/// into the slice list given to `visible_extents`), starting at byte `slice_offset` of
/// that slice's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub slice: usize,
    pub slice_offset: u64,
}

/// Resolves overlapping slices: returns the extents that readers see, sorted by offset,
/// with holes (ranges no slice covers) left out. The highest `seq` wins where slices
/// overlap. Pure and `O(n^2)` in the number of slices, which compaction keeps small.
pub fn visible_extents(slices: &[Slice]) -> Vec<Extent> {
    // Boundaries where the winner can change.
    let mut cuts: Vec<u64> = slices.iter().flat_map(|s| [s.offset, s.end()]).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out: Vec<Extent> = Vec::new();
    for w in cuts.windows(2) {
        let (start, end) = (w[0], w[1]);
        let winner = slices
            .iter()
            .enumerate()
            .filter(|(_, s)| s.offset <= start && s.end() >= end && s.len > 0)
            .max_by_key(|(_, s)| s.seq);
        if let Some((idx, s)) = winner {
            let slice_offset = start - s.offset;
            match out.last_mut() {
                Some(last)
                    if last.slice == idx
                        && last.offset + last.len == start
                        && last.slice_offset + last.len == slice_offset =>
                {
                    last.len += end - start;
                }
                _ => out.push(Extent { offset: start, len: end - start, slice: idx, slice_offset }),
            }
        }
    }
    out
}

/// Where one block of a layout lives: the block, its replicas as the metadata records
/// them (best first is the client's job), and whether a replica is known to be bad.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockLocation {
    pub block: BlockRef,
    pub replicas: Vec<NodeId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(offset: u64, len: u64, seq: u64) -> Slice {
        Slice {
            offset,
            len,
            seq: Seq(seq),
            blocks: vec![BlockRef { id: BlockId(seq as u128), len: len as u32 }],
            inline: None,
        }
    }

    #[test]
    fn newer_slice_wins_in_the_middle() {
        let slices = vec![slice(0, 100, 1), slice(40, 20, 2)];
        let ext = visible_extents(&slices);
        assert_eq!(
            ext,
            vec![
                Extent { offset: 0, len: 40, slice: 0, slice_offset: 0 },
                Extent { offset: 40, len: 20, slice: 1, slice_offset: 0 },
                Extent { offset: 60, len: 40, slice: 0, slice_offset: 60 },
            ]
        );
    }

    #[test]
    fn older_slice_under_newer_is_invisible_and_holes_are_skipped() {
        let slices = vec![slice(10, 10, 5), slice(0, 30, 3), slice(50, 10, 1)];
        let ext = visible_extents(&slices);
        assert_eq!(
            ext,
            vec![
                Extent { offset: 0, len: 10, slice: 1, slice_offset: 0 },
                Extent { offset: 10, len: 10, slice: 0, slice_offset: 0 },
                Extent { offset: 20, len: 10, slice: 1, slice_offset: 20 },
                Extent { offset: 50, len: 10, slice: 2, slice_offset: 0 },
            ]
        );
    }

    #[test]
    fn order_of_input_does_not_matter() {
        let a = vec![slice(0, 100, 1), slice(40, 20, 2)];
        let b = vec![slice(40, 20, 2), slice(0, 100, 1)];
        let map = |v: &[Slice], e: Vec<Extent>| -> Vec<(u64, u64, Seq)> {
            e.into_iter().map(|x| (x.offset, x.len, v[x.slice].seq)).collect()
        };
        assert_eq!(map(&a, visible_extents(&a)), map(&b, visible_extents(&b)));
    }
}
