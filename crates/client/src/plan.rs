//! Pure decisions of the client, testable without a cluster: which block bytes make up a
//! file range (`read_segments`), in which order to try replicas (`order_replicas`), and
//! where a written block must end so it never straddles a chunk (`block_capacity`).

use distfs_proto::ChunkLayout;
use distfs_types::layout::visible_extents;
use distfs_types::{BlockId, NodeId, CRC_CHUNK};

/// Where the bytes of one piece of a read come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// No slice covers it: zeros (sparse file or truncated-then-extended range).
    Hole,
    /// Bytes `[offset, offset+len)` of the piece are bytes `[block_offset, ..)` of `id`.
    Block { id: BlockId, block_offset: u32 },
    /// They are bytes `[data_offset, ..)` of the inline data of slice `slice` of chunk
    /// `chunk` (indices into the layout given to `read_segments`).
    Inline { chunk: u64, slice: usize, data_offset: u64 },
}

/// One contiguous piece of a read: `len` bytes at file offset `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub len: u64,
    pub source: Source,
}

/// Splits the file range `[offset, offset+len)` (already clipped to the file size) into
/// segments, each inside one block or one hole, in file order, covering the range exactly.
pub fn read_segments(chunks: &[ChunkLayout], chunk_size: u64, offset: u64, len: u64) -> Vec<Segment> {
    let end = offset + len;
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end {
        let index = pos / chunk_size;
        let chunk_start = index * chunk_size;
        let chunk_end = (chunk_start + chunk_size).min(end);
        let mut covered = Vec::new();
        if let Some(chunk) = chunks.iter().find(|c| c.index == index) {
            for ext in visible_extents(&chunk.slices) {
                let (es, ee) = (chunk_start + ext.offset, chunk_start + ext.offset + ext.len);
                let (s, e) = (es.max(pos), ee.min(chunk_end));
                if s >= e {
                    continue;
                }
                // Walk the slice's blocks to find the ones covering [s, e).
                let slice = &chunk.slices[ext.slice];
                let mut data_off = ext.slice_offset + (s - es); // offset into the slice's data
                let mut at = s;
                if let Some(inline) = &slice.inline {
                    let take = (inline.data.len() as u64).saturating_sub(data_off).min(e - at);
                    if take > 0 {
                        let source = Source::Inline { chunk: index, slice: ext.slice, data_offset: data_off };
                        covered.push(Segment { offset: at, len: take, source });
                        at += take;
                    }
                }
                let mut block_start = 0u64;
                for b in &slice.blocks {
                    let block_end = block_start + b.len as u64;
                    if at < e && data_off >= block_start && data_off < block_end {
                        let take = (block_end - data_off).min(e - at);
                        covered.push(Segment {
                            offset: at,
                            len: take,
                            source: Source::Block { id: b.id, block_offset: (data_off - block_start) as u32 },
                        });
                        at += take;
                        data_off += take;
                    }
                    block_start = block_end;
                }
                if at < e {
                    // The slice claims more bytes than its blocks hold: read them as a hole
                    // rather than inventing data (the metadata never commits such a slice).
                    covered.push(Segment { offset: at, len: e - at, source: Source::Hole });
                }
            }
        }
        covered.sort_by_key(|s| s.offset);
        for seg in covered {
            if seg.offset > pos {
                out.push(Segment { offset: pos, len: seg.offset - pos, source: Source::Hole });
            }
            pos = seg.offset + seg.len;
            out.push(seg);
        }
        if pos < chunk_end {
            out.push(Segment { offset: pos, len: chunk_end - pos, source: Source::Hole });
            pos = chunk_end;
        }
    }
    out
}

/// The widest file range around the small read `[offset, offset+len)` (inside the file
/// of `size` bytes) that one answer for it already carries: a storage node sends whole
/// 64 KiB checksum pieces of a block, so the pieces holding the request, cut to where the
/// file's bytes are still that block's bytes at the same shift (no newer slice over them,
/// same chunk, before `size`). Returns `(start, end, block, offset in the block of
/// start)`, or `None` when the request is not all inside one block.
pub fn around(
    chunks: &[ChunkLayout],
    chunk_size: u64,
    size: u64,
    offset: u64,
    len: u64,
) -> Option<(u64, u64, BlockId, u32)> {
    let piece = u64::from(CRC_CHUNK);
    let [Segment { source: Source::Block { id, block_offset }, .. }] =
        read_segments(chunks, chunk_size, offset, len)[..]
    else {
        return None;
    };
    // File offset of the block's byte 0 (a block never starts before its chunk).
    let shift = offset.checked_sub(u64::from(block_offset))?;
    let chunk_start = offset / chunk_size * chunk_size;
    let lo = (shift + u64::from(block_offset) / piece * piece).max(chunk_start);
    let hi = (shift + (u64::from(block_offset) + len).div_ceil(piece) * piece).min(chunk_start + chunk_size).min(size);
    let same = |s: &Segment| match s.source {
        Source::Block { id: b, block_offset: o } => b == id && s.offset.checked_sub(u64::from(o)) == Some(shift),
        _ => false,
    };
    let segs = read_segments(chunks, chunk_size, lo, hi - lo);
    let at = segs.iter().position(|s| s.offset <= offset && offset < s.offset + s.len)?;
    let first = segs[..at].iter().rposition(|s| !same(s)).map_or(0, |i| i + 1);
    let last = segs[at..].iter().position(|s| !same(s)).map_or(segs.len(), |i| at + i);
    let (start, end) = (segs[first].offset, segs[last - 1].offset + segs[last - 1].len);
    Some((start, end, id, u32::try_from(start - shift).ok()?))
}

/// Orders replicas for a read: healthy before unhealthy, then lowest observed latency
/// (unmeasured nodes count as fast so they get measured), ties broken by `tiebreak` so
/// load spreads across equal replicas.
pub fn order_replicas(
    replicas: &[NodeId],
    healthy: impl Fn(NodeId) -> bool,
    latency_us: impl Fn(NodeId) -> Option<u64>,
    tiebreak: u64,
) -> Vec<NodeId> {
    let mut v: Vec<NodeId> = replicas.to_vec();
    v.sort_by_key(|n| {
        let spread = (n.0 ^ tiebreak).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (!healthy(*n), latency_us(*n).unwrap_or(0) / 500, spread)
    });
    v.dedup();
    v
}

/// How many bytes the block starting at file offset `pos` may hold: at most `block_size`,
/// and never past the end of `pos`'s chunk.
pub fn block_capacity(pos: u64, chunk_size: u64, block_size: u64) -> u64 {
    let chunk_left = chunk_size - pos % chunk_size;
    chunk_left.min(block_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use distfs_types::{BlockRef, Seq, Slice};

    fn slice(offset: u64, seq: u64, blocks: &[(u128, u32)]) -> Slice {
        let blocks: Vec<BlockRef> = blocks.iter().map(|&(id, len)| BlockRef { id: BlockId(id), len }).collect();
        let len = blocks.iter().map(|b| b.len as u64).sum();
        Slice { offset, len, seq: Seq(seq), blocks, inline: None }
    }

    fn blk(id: u128, off: u32) -> Source {
        Source::Block { id: BlockId(id), block_offset: off }
    }

    #[test]
    fn segments_cover_range_exactly_with_holes_and_overwrites() {
        // chunk 0: blocks 1 (0..100) and 2 (100..200); an overwrite (block 3) at 150..170.
        let chunks = vec![
            ChunkLayout { index: 0, slices: vec![slice(0, 1, &[(1, 100), (2, 100)]), slice(150, 2, &[(3, 20)])] },
            ChunkLayout { index: 2, slices: vec![slice(10, 3, &[(4, 10)])] },
        ];
        let segs = read_segments(&chunks, 1000, 50, 2000);
        assert_eq!(
            segs,
            vec![
                Segment { offset: 50, len: 50, source: blk(1, 50) },
                Segment { offset: 100, len: 50, source: blk(2, 0) },
                Segment { offset: 150, len: 20, source: blk(3, 0) },
                Segment { offset: 170, len: 30, source: blk(2, 70) },
                Segment { offset: 200, len: 800, source: Source::Hole },
                Segment { offset: 1000, len: 1000, source: Source::Hole },
                Segment { offset: 2000, len: 10, source: Source::Hole },
                Segment { offset: 2010, len: 10, source: blk(4, 0) },
                Segment { offset: 2020, len: 30, source: Source::Hole },
            ]
        );
        let total: u64 = segs.iter().map(|s| s.len).sum();
        assert_eq!(total, 2000);
    }

    #[test]
    fn a_small_read_comes_with_the_rest_of_its_checksum_piece_where_the_block_holds_the_file() {
        const P: u64 = CRC_CHUNK as u64;
        const MIB: u32 = 1 << 20;
        // One slice of two 1 MiB blocks from the start of the chunk.
        let plain = vec![ChunkLayout { index: 0, slices: vec![slice(0, 1, &[(1, MIB), (2, MIB)])] }];
        let size = 2 * u64::from(MIB);
        assert_eq!(around(&plain, 64 << 20, size, P + 100, 4096), Some((P, 2 * P, BlockId(1), P as u32)));
        // In the second block: offsets in the block, not in the file.
        let at = u64::from(MIB) + 3 * P + 5;
        assert_eq!(around(&plain, 64 << 20, size, at, 10), Some((at - 5, at - 5 + P, BlockId(2), 3 * P as u32)));
        // A read across a piece boundary brings both pieces.
        assert_eq!(around(&plain, 64 << 20, size, P - 10, 20), Some((0, 2 * P, BlockId(1), 0)));
        // Cut at the end of the file...
        assert_eq!(around(&plain, 64 << 20, P + 10, P + 2, 8), Some((P, P + 10, BlockId(1), P as u32)));
        // ... and at the end of the chunk.
        assert_eq!(around(&plain, P + 50, size, P + 2, 8), Some((P, P + 50, BlockId(1), P as u32)));
        // A request across two blocks, a hole or inline data: nothing around it.
        assert_eq!(around(&plain, 64 << 20, size, u64::from(MIB) - 2, 4), None);
        assert_eq!(around(&plain, 64 << 20, 3 * u64::from(MIB), 2 * u64::from(MIB) + 1, 4), None);

        // A newer slice over bytes P+1000..P+1100: the piece is cut on the side of it.
        let over =
            vec![ChunkLayout { index: 0, slices: vec![slice(0, 1, &[(1, MIB)]), slice(P + 1000, 2, &[(3, 100)])] }];
        let size = u64::from(MIB);
        assert_eq!(around(&over, 64 << 20, size, P + 10, 4), Some((P, P + 1000, BlockId(1), P as u32)));
        assert_eq!(around(&over, 64 << 20, size, P + 5000, 4), Some((P + 1100, 2 * P, BlockId(1), (P + 1100) as u32)));
        assert_eq!(around(&over, 64 << 20, size, P + 1010, 4), Some((P + 1000, P + 1100, BlockId(3), 0)));

        // A block placed at an odd file offset (an append): pieces are the block's.
        let odd = vec![ChunkLayout { index: 0, slices: vec![slice(0, 1, &[(1, 7)]), slice(7, 2, &[(4, MIB)])] }];
        let size = 7 + u64::from(MIB);
        assert_eq!(around(&odd, 64 << 20, size, 7 + P + 1, 4), Some((7 + P, 7 + 2 * P, BlockId(4), P as u32)));
        assert_eq!(around(&odd, 64 << 20, size, 8, 4), Some((7, 7 + P, BlockId(4), 0)));
    }

    #[test]
    fn truncated_slice_reads_only_its_visible_length() {
        let mut s = slice(0, 1, &[(1, 100)]);
        s.len = 40;
        let segs = read_segments(&[ChunkLayout { index: 0, slices: vec![s] }], 1000, 0, 100);
        assert_eq!(
            segs,
            vec![
                Segment { offset: 0, len: 40, source: blk(1, 0) },
                Segment { offset: 40, len: 60, source: Source::Hole }
            ]
        );
    }

    #[test]
    fn inline_slices_read_from_their_data_and_lose_to_newer_blocks() {
        let inline = Slice {
            offset: 0,
            len: 100,
            seq: Seq(1),
            blocks: Vec::new(),
            inline: Some(distfs_types::Inline::new(vec![7; 100])),
        };
        // A newer block overwrites 20..30; the inline data is visible around it.
        let chunks = vec![ChunkLayout { index: 0, slices: vec![inline, slice(20, 2, &[(9, 10)])] }];
        let segs = read_segments(&chunks, 1000, 10, 200);
        assert_eq!(
            segs,
            vec![
                Segment { offset: 10, len: 10, source: Source::Inline { chunk: 0, slice: 0, data_offset: 10 } },
                Segment { offset: 20, len: 10, source: blk(9, 0) },
                Segment { offset: 30, len: 70, source: Source::Inline { chunk: 0, slice: 0, data_offset: 30 } },
                Segment { offset: 100, len: 110, source: Source::Hole },
            ]
        );
    }

    #[test]
    fn replicas_healthy_and_fast_first() {
        let order = order_replicas(
            &[NodeId(1), NodeId(2), NodeId(3)],
            |n| n != NodeId(1),
            |n| {
                if n == NodeId(2) {
                    Some(50_000)
                } else {
                    Some(1_000)
                }
            },
            0,
        );
        assert_eq!(order, vec![NodeId(3), NodeId(2), NodeId(1)]);
    }

    #[test]
    fn blocks_never_straddle_chunks() {
        assert_eq!(block_capacity(0, 64 << 20, 4 << 20), 4 << 20);
        assert_eq!(block_capacity((64 << 20) - 10, 64 << 20, 4 << 20), 10);
        assert_eq!(block_capacity(64 << 20, 64 << 20, 4 << 20), 4 << 20);
    }
}
