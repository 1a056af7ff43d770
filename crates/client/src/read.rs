//! The read path (DESIGN §4). A `FileReader` fetches the layout of the chunks a read
//! touches, resolves overlapping slices (`plan::read_segments`), and reads every block
//! piece from the best replica, verifying the CRC32C of each 64 KiB it receives. On an
//! error, a timeout or a checksum mismatch it moves to the next replica; a bad copy is
//! reported to the metadata service.

use crate::error::Result;
use crate::ns::expect_resp;
use crate::plan::{around, order_replicas, read_segments, Segment, Source};
use crate::{Client, ClientError};
use bytes::{Bytes, BytesMut};
use distfs_proto::{
    BadReplica, ChunkLayout, Layout, MetaRequest, MetaResponse, NodeAddr, RpcError, StorageRequest, StorageResponse,
};
use distfs_types::{Attr, BlockId, FsError, InodeId, NodeId, CRC_CHUNK};
use futures::stream::{self, StreamExt};
use std::collections::HashMap;
use std::time::Instant;
use tracing::warn;

/// Chunks fetched per layout request when reading sequentially.
const LAYOUT_WINDOW: u64 = 16;

/// Reads one file as it was when the reader was opened (close-to-open consistency).
/// Reads may run concurrently (`&self`): the mount serves the kernel's readahead requests
/// of one handle side by side.
pub struct FileReader {
    client: Client,
    attr: Attr,
    known: std::sync::RwLock<Known>,
}

/// The layout learnt so far: chunks by index, block replicas, node addresses.
#[derive(Default)]
struct Known {
    chunk_size: u64,
    chunks: HashMap<u64, ChunkLayout>,
    replicas: HashMap<BlockId, Vec<NodeId>>,
    nodes: HashMap<NodeId, NodeAddr>,
}

impl Client {
    /// Opens `ino` for reading: its size and layout are fixed at this point. One round
    /// trip: the layout of the first chunks carries the attributes.
    pub async fn reader(&self, ino: InodeId) -> Result<FileReader> {
        let layout = self.layout(ino, 0, LAYOUT_WINDOW - 1).await?;
        FileReader::new(self.clone(), 0, LAYOUT_WINDOW - 1, layout)
    }

    /// Registers that `session` holds `ino` open (as `open_file` does) and opens a reader
    /// of it, in one round trip (`MetaRequest::OpenRead`).
    pub async fn open_read(&self, ino: InodeId, session: u64) -> Result<FileReader> {
        let (first_chunk, last_chunk) = (0, LAYOUT_WINDOW - 1);
        let r = self.meta_call(MetaRequest::OpenRead { ino, session, first_chunk, last_chunk }).await?;
        let layout = expect_resp!(r, MetaResponse::Layout(l) => l, "OpenRead")?;
        FileReader::new(self.clone(), first_chunk, last_chunk, layout)
    }

    /// Slices of chunks `[first_chunk, last_chunk]` of `ino`, with block replicas and
    /// node addresses.
    pub async fn layout(&self, ino: InodeId, first_chunk: u64, last_chunk: u64) -> Result<Layout> {
        let r = self.meta_call(MetaRequest::GetLayout { ino, first_chunk, last_chunk }).await?;
        expect_resp!(r, MetaResponse::Layout(l) => l, "GetLayout")
    }

    /// Reads up to `len` bytes at `offset` (fewer at the end of the file).
    pub async fn read_at(&self, ino: InodeId, offset: u64, len: u64) -> Result<Bytes> {
        self.reader(ino).await?.read_at(offset, len).await
    }
}

impl FileReader {
    pub fn attr(&self) -> &Attr {
        &self.attr
    }

    pub fn size(&self) -> u64 {
        self.attr.size
    }

    /// A reader of the file `layout` (of chunks `[first_chunk, last_chunk]`) describes.
    fn new(client: Client, first_chunk: u64, last_chunk: u64, layout: Layout) -> Result<FileReader> {
        let r = FileReader { client, attr: layout.attr.clone(), known: Default::default() };
        r.add_layout(first_chunk, last_chunk, layout)?;
        Ok(r)
    }

    fn known(&self) -> std::sync::RwLockReadGuard<'_, Known> {
        self.known.read().unwrap_or_else(|e| e.into_inner())
    }

    fn add_layout(&self, first_chunk: u64, last_chunk: u64, layout: Layout) -> Result<()> {
        if layout.chunk_size == 0 {
            return Err(FsError::Protocol { reason: "metadata reports a zero chunk size".into() }.into());
        }
        let mut k = self.known.write().unwrap_or_else(|e| e.into_inner());
        k.chunk_size = layout.chunk_size;
        // Mark every requested chunk known, also those without slices (holes).
        for i in first_chunk..=last_chunk {
            k.chunks.entry(i).or_insert(ChunkLayout { index: i, slices: Vec::new() });
        }
        for c in layout.chunks {
            k.chunks.insert(c.index, c);
        }
        for b in layout.blocks {
            k.replicas.insert(b.id, b.replicas);
        }
        for n in layout.nodes {
            k.nodes.insert(n.id, n);
        }
        Ok(())
    }

    /// Reads up to `len` bytes at `offset`, clipped to the size at open.
    pub async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes> {
        if offset >= self.attr.size || len == 0 {
            return Ok(Bytes::new());
        }
        let len = len.min(self.attr.size - offset);
        let (chunks, chunk_size) = self.chunks_of(offset, len).await?;
        let segments = read_segments(&chunks, chunk_size, offset, len);
        let chunks = &chunks;
        let pieces: Vec<Result<(Segment, Bytes)>> = stream::iter(segments)
            .map(|seg| async move {
                match seg.source {
                    Source::Hole => Ok((seg, Bytes::new())),
                    Source::Inline { chunk, slice, data_offset } => {
                        self.inline_bytes(chunks, chunk, slice, data_offset, seg.len).map(|b| (seg, b))
                    }
                    Source::Block { id, block_offset } => {
                        self.read_block(id, block_offset, seg.len as u32).await.map(|b| (seg, b))
                    }
                }
            })
            .buffered(self.client.config.read_parallelism.max(1))
            .collect()
            .await;
        let mut out = BytesMut::with_capacity(len as usize);
        for p in pieces {
            let (seg, bytes) = p?;
            match seg.source {
                Source::Hole => out.resize(out.len() + seg.len as usize, 0),
                Source::Block { .. } | Source::Inline { .. } => out.extend_from_slice(&bytes),
            }
        }
        Ok(out.freeze())
    }

    /// Reads `[offset, offset+len)` (clipped to the size at open) and returns it inside
    /// the larger range whose bytes came with it: a storage node answers with whole
    /// 64 KiB checksum pieces, all verified here, of which a small read uses a part.
    /// Returns `(start, bytes)` with `start <= offset` and `start + bytes.len()` at or
    /// past the end of the request, every byte as the file holds it at `start + i`.
    /// Reads that span several blocks, holes or inline data return just the request.
    pub async fn read_around(&self, offset: u64, len: u64) -> Result<(u64, Bytes)> {
        if offset >= self.attr.size || len == 0 || len > u64::from(CRC_CHUNK) {
            return Ok((offset, self.read_at(offset, len).await?));
        }
        let len = len.min(self.attr.size - offset);
        let (chunks, chunk_size) = self.chunks_of(offset, len).await?;
        let Some((start, end, id, block_start)) = around(&chunks, chunk_size, self.attr.size, offset, len) else {
            return Ok((offset, self.read_at(offset, len).await?));
        };
        let bytes = self.read_block(id, block_start, (end - start) as u32).await?;
        Ok((start, bytes))
    }

    /// The whole file, when it is at most `max` bytes and every byte of it is here
    /// already: inline data (verified) and holes in the layout fetched at open. No I/O;
    /// `None` otherwise (or when the inline data fails its checksum: a read reports that).
    pub fn local_bytes(&self, max: u64) -> Option<Bytes> {
        let size = self.attr.size;
        if size == 0 || size > max {
            return None;
        }
        let (chunks, chunk_size) = {
            let k = self.known();
            let last = (size - 1).checked_div(k.chunk_size)?;
            let chunks: Option<Vec<ChunkLayout>> = (0..=last).map(|c| k.chunks.get(&c).cloned()).collect();
            (chunks?, k.chunk_size)
        };
        let mut out = BytesMut::with_capacity(size as usize);
        for seg in read_segments(&chunks, chunk_size, 0, size) {
            match seg.source {
                Source::Hole => out.resize(out.len() + seg.len as usize, 0),
                Source::Inline { chunk, slice, data_offset } => {
                    out.extend_from_slice(&self.inline_bytes(&chunks, chunk, slice, data_offset, seg.len).ok()?)
                }
                Source::Block { .. } => return None,
            }
        }
        (out.len() as u64 == size).then(|| out.freeze())
    }

    /// The layout of the chunks `[offset, offset+len)` touches (fetched when not yet
    /// known, with the next chunks of a window), and the chunk size.
    async fn chunks_of(&self, offset: u64, len: u64) -> Result<(Vec<ChunkLayout>, u64)> {
        let chunk_size = self.known().chunk_size;
        let (first, last) = (offset / chunk_size, (offset + len - 1) / chunk_size);
        if (first..=last).any(|c| !self.known().chunks.contains_key(&c)) {
            let last = last.max(first + LAYOUT_WINDOW - 1);
            let layout = self.client.layout(self.attr.ino, first, last).await?;
            self.add_layout(first, last, layout)?;
        }
        let k = self.known();
        Ok(((first..=last).filter_map(|c| k.chunks.get(&c).cloned()).collect(), chunk_size))
    }

    /// `len` bytes at `offset` of the inline data of a slice, checked against its CRC32C.
    fn inline_bytes(&self, chunks: &[ChunkLayout], chunk: u64, slice: usize, offset: u64, len: u64) -> Result<Bytes> {
        let inline =
            chunks.iter().find(|c| c.index == chunk).and_then(|c| c.slices.get(slice)).and_then(|s| s.inline.as_ref());
        let Some(inline) = inline else {
            return Err(
                FsError::Protocol { reason: format!("no inline data in slice {slice} of chunk {chunk}") }.into()
            );
        };
        if !inline.verify() {
            return Err(FsError::Io {
                reason: format!("inline data of inode {} fails its checksum (metadata damaged)", self.attr.ino),
            }
            .into());
        }
        let (start, end) = (offset as usize, (offset + len) as usize);
        inline.data.get(start..end).map(Bytes::copy_from_slice).ok_or_else(|| {
            FsError::Protocol {
                reason: format!("inline data of {} bytes has no range {start}..{end}", inline.data.len()),
            }
            .into()
        })
    }

    /// Reads `[offset, offset+len)` of a block from the best replica that answers with
    /// bytes that verify.
    async fn read_block(&self, id: BlockId, offset: u32, len: u32) -> Result<Bytes> {
        // Where to ask, in order, with each node's address (taken out of the lock).
        let order: Vec<(NodeId, Option<String>)> = {
            let k = self.known();
            let replicas = k.replicas.get(&id).cloned().unwrap_or_default();
            let order = order_replicas(
                &replicas,
                |n| k.nodes.get(&n).is_some_and(|a| a.healthy),
                |n| self.client.latency_of(n),
                offset as u64 ^ id.0 as u64,
            );
            order.into_iter().map(|n| (n, k.nodes.get(&n).map(|a| a.addr.clone()))).collect()
        };
        let mut attempts: Vec<(NodeId, String)> = Vec::new();
        for (node, addr) in order {
            let Some(addr) = addr else {
                attempts.push((node, "address unknown".into()));
                continue;
            };
            let t0 = Instant::now();
            let req = StorageRequest::GetBlock { block: id, offset, len };
            let timeout = Some(self.client.config.block_timeout);
            let r = self.client.rpc.storage_with_pieces(&addr, &req, Bytes::new(), timeout).await;
            let outcome = match r {
                Ok((StorageResponse::Block { offset: got_off, crcs }, body, pieces)) => {
                    verify(id, offset, len, got_off, &crcs, body, pieces.as_deref())
                }
                Ok((other, _, _)) => Err(format!("unexpected answer {other:?}")),
                Err(RpcError::Remote(e @ (FsError::Corrupt { .. } | FsError::BlockNotFound { .. }))) => {
                    self.report_bad(id, node, e.to_string());
                    attempts.push((node, e.to_string()));
                    continue;
                }
                Err(e) => {
                    if let RpcError::Connect { .. } | RpcError::ConnectionLost { .. } = e {
                        self.client.rpc.forget(&addr);
                    }
                    attempts.push((node, e.to_string()));
                    continue;
                }
            };
            match outcome {
                Ok(bytes) => {
                    self.client.note_latency(node, t0.elapsed().as_micros() as u64);
                    return Ok(bytes);
                }
                Err(why) => {
                    // The node answered with bytes that do not match their checksums.
                    warn!(block = %id, %node, reason = %why, "bad copy read; trying the next replica");
                    self.report_bad(id, node, why.clone());
                    attempts.push((node, why));
                }
            }
        }
        Err(ClientError::AllReplicasFailed { block: id, attempts })
    }

    /// Tells the metadata service about a bad copy, without holding up the read.
    fn report_bad(&self, block: BlockId, node: NodeId, reason: String) {
        let client = self.client.clone();
        tokio::spawn(async move {
            let req = MetaRequest::ReportBadReplica { bad: BadReplica { block, node, reason } };
            if let Err(e) = client.meta_call(req).await {
                warn!(%block, %node, error = %e, "could not report a bad replica");
            }
        });
    }
}

/// Checks a `GetBlock` answer: aligned start, covers the request, every 64 KiB piece
/// matches its CRC. Returns exactly the requested bytes. `received`: the pieces' CRC32C
/// as computed from the body's bytes when the frame arrived (then not read again).
fn verify(
    id: BlockId,
    offset: u32,
    len: u32,
    got_off: u32,
    crcs: &[u32],
    body: Bytes,
    received: Option<&[u32]>,
) -> std::result::Result<Bytes, String> {
    if !got_off.is_multiple_of(CRC_CHUNK) || got_off > offset {
        return Err(format!("block {id}: answer starts at {got_off}, not a 64 KiB boundary at or before {offset}"));
    }
    let skip = (offset - got_off) as usize;
    if body.len() < skip + len as usize {
        return Err(format!("block {id}: answer has {} bytes, {} needed", body.len(), skip + len as usize));
    }
    let pieces = body.len().div_ceil(CRC_CHUNK as usize);
    if crcs.len() != pieces {
        return Err(format!("block {id}: {} checksums for {pieces} pieces", crcs.len()));
    }
    let computed: Vec<u32> = match received {
        Some(r) if r.len() == pieces => r.to_vec(),
        _ => distfs_proto::pieces::piece_crcs(&body),
    };
    for (i, (&got, want)) in computed.iter().zip(crcs).enumerate() {
        if got != *want {
            return Err(format!("block {id}: checksum mismatch in piece {i} (expected {want:#010x}, got {got:#010x})"));
        }
    }
    Ok(body.slice(skip..skip + len as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_accepts_good_and_rejects_flipped_bytes() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let crcs = distfs_proto::pieces::piece_crcs(&data);
        let body = Bytes::from(data.clone());
        let got = verify(BlockId(1), 70_000, 1000, 65_536, &crcs[1..], body.slice(65_536..), None).unwrap();
        assert_eq!(&got[..], &data[70_000..71_000]);
        let mut bad = data.clone();
        bad[150_000] ^= 1;
        let bad_pieces = distfs_proto::pieces::piece_crcs(&bad);
        assert!(verify(BlockId(1), 0, 200_000, 0, &crcs, Bytes::from(bad.clone()), None).is_err());
        // The pieces computed on arrival stand for the bytes: bad bytes, bad pieces.
        assert!(verify(BlockId(1), 0, 200_000, 0, &crcs, Bytes::from(bad), Some(&bad_pieces)).is_err());
        assert!(verify(BlockId(1), 0, 200_000, 0, &crcs, body.clone(), Some(&crcs)).is_ok());
        assert!(verify(BlockId(1), 0, 10, 5, &crcs, body.clone(), None).is_err());
        assert!(verify(BlockId(1), 0, 200_000, 0, &crcs[..2], body, None).is_err());
    }

    fn reader(size: u64, slices: Vec<distfs_types::Slice>) -> FileReader {
        let t = distfs_types::Timestamp::default();
        let kind = distfs_types::FileKind::File;
        let attr = Attr {
            ino: InodeId(5),
            kind,
            perm: 0o644,
            uid: 0,
            gid: 0,
            size,
            nlink: 1,
            atime: t,
            mtime: t,
            ctime: t,
            version: 1,
        };
        let chunks = vec![ChunkLayout { index: 0, slices }];
        let layout = Layout { attr, chunk_size: 1 << 20, chunks, blocks: vec![], nodes: vec![] };
        FileReader::new(Client::new(crate::ClientConfig::default()), 0, 0, layout).unwrap()
    }

    fn slice(
        offset: u64,
        len: u64,
        blocks: Vec<distfs_types::BlockRef>,
        inline: Option<distfs_types::Inline>,
    ) -> distfs_types::Slice {
        distfs_types::Slice { offset, len, seq: distfs_types::Seq(1), blocks, inline }
    }

    #[tokio::test]
    async fn a_file_of_inline_data_and_holes_is_whole_here_and_blocks_or_bad_bytes_are_not() {
        let inline = |offset: u64, byte: u8, len: usize| {
            slice(offset, len as u64, vec![], Some(distfs_types::Inline::new(vec![byte; len])))
        };
        // 5,000 bytes: 3,000 inline, a hole, 1,000 inline.
        let r = reader(5000, vec![inline(0, 1, 3000), inline(4000, 2, 1000)]);
        let b = r.local_bytes(64 << 10).expect("every byte is here");
        assert!(b[..3000].iter().all(|&x| x == 1) && b[3000..4000].iter().all(|&x| x == 0));
        assert!(b[4000..].iter().all(|&x| x == 2) && b.len() == 5000);
        assert!(r.local_bytes(4999).is_none(), "larger than asked");
        let block = distfs_types::BlockRef { id: BlockId(9), len: 100 };
        assert!(reader(100, vec![slice(0, 100, vec![block], None)]).local_bytes(1 << 16).is_none(), "in a block");
        let mut bad = distfs_types::Inline::new(vec![3; 100]);
        bad.data[7] ^= 1;
        assert!(
            reader(100, vec![slice(0, 100, vec![], Some(bad))]).local_bytes(1 << 16).is_none(),
            "fails its checksum"
        );
    }
}
