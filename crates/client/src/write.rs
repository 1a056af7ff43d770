//! The write path (DESIGN §4). A `FileWriter` cuts bytes into blocks that never straddle a
//! chunk, writes each block to its R targets in parallel (several blocks in flight), counts
//! a block written once W = floor(R/2)+1 replicas acknowledged it durably, and commits the
//! written slices in one metadata operation on `commit`/`close`. Until that commit nothing
//! of the write is visible; a failed write leaves the file as it was.

use crate::dedup::{cpu, fingerprint, Payload};
use crate::error::Result;
use crate::ns::expect_resp;
use crate::plan::block_capacity;
use crate::{Client, ClientError};
use bytes::{Bytes, BytesMut};
use distfs_proto::dedup::{BlockFp, DedupRequest, Fingerprint};
use distfs_proto::{
    BlockTarget, Compression, MetaRequest, MetaResponse, RpcError, SliceWrite, StorageResponse, WrittenBlock,
};
use distfs_types::{Attr, BlockId, BlockRef, FsError, Inline, InodeId, NodeId, Timestamp, INLINE_MAX};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Cluster geometry a writer needs; fixed when the file system was formatted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub chunk_size: u64,
    pub block_size: u64,
    pub replication: u32,
}

impl Geometry {
    /// Acknowledgements needed for a block to count as written.
    pub fn write_quorum(&self) -> usize {
        #[cfg(feature = "sim-bugs")]
        if sim_bugs::ACK_AFTER_ONE.load(std::sync::atomic::Ordering::Relaxed) {
            return 1;
        }
        self.replication as usize / 2 + 1
    }
}

/// Deliberately injected bugs for the simulator's self-test (`crates/sim`): compiled only
/// with the `sim-bugs` feature, off unless a test switches them on at run time.
#[cfg(feature = "sim-bugs")]
pub mod sim_bugs {
    use std::sync::atomic::AtomicBool;
    /// `write_quorum` answers 1: a block counts as written after one replica acked.
    pub static ACK_AFTER_ONE: AtomicBool = AtomicBool::new(false);
}

/// Commit after this many written blocks even before close, to bound a commit's size.
const MAX_BLOCKS_PER_COMMIT: usize = 256;
/// Attempts (each with freshly allocated targets) before a block write fails.
const BLOCK_ATTEMPTS: u32 = 3;
/// Commit once the deduplicated blocks held for a possible rewrite reach this many bytes.
const MAX_HELD_BYTES: u64 = 64 << 20;
/// Dedup commits tried before giving up (each failure rewrites the blocks freed meanwhile).
const COMMIT_ATTEMPTS: u32 = 3;

/// What one block task did.
enum Sent {
    /// Written to its replicas (with its fingerprint when dedup is on).
    Written(u64, WrittenBlock, Option<Fingerprint>),
    /// Not written: a block with the same fingerprint is stored; the bytes are kept
    /// until the commit in case that block is freed meanwhile.
    Hit(u64, BlockRef, Fingerprint, Bytes),
}

type BlockTask = JoinHandle<Result<Sent>>;

/// Buffers and writes one file's bytes; see the module docs.
pub struct FileWriter {
    client: Client,
    ino: InodeId,
    geo: Geometry,
    /// File offset of the first byte in `buf`.
    buf_start: u64,
    buf: BytesMut,
    inflight: FuturesUnordered<BlockTask>,
    written: Vec<(u64, WrittenBlock)>,
    targets: VecDeque<BlockTarget>,
    /// Highest file offset written (exclusive) since the last commit.
    end: u64,
    /// Small writes near the start of the file, to commit inline (no blocks).
    inline: Vec<SliceWrite>,
    /// Writes ending at or below this offset go inline (0: never).
    inline_max: u64,
    /// Codec of this file's blocks (asked for at the first block).
    codec: Option<Compression>,
    /// Fingerprints of `written` (dedup on), in the same order of arrival.
    fps: Vec<BlockFp>,
    /// Bytes of the deduplicated blocks of this commit, by file offset.
    held: Vec<(u64, Bytes)>,
    held_bytes: u64,
}

impl Client {
    /// Chunk size, block size and replication of the cluster (fetched once).
    pub async fn geometry(&self) -> Result<Geometry> {
        let geo = self
            .geometry
            .get_or_try_init(|| async {
                let st = self.cluster_status().await?;
                Ok::<_, ClientError>(Geometry {
                    chunk_size: st.chunk_size,
                    block_size: st.block_size as u64,
                    replication: st.replication,
                })
            })
            .await?;
        Ok(*geo)
    }

    /// A writer for `ino` positioned at `offset`.
    pub async fn writer(&self, ino: InodeId, offset: u64) -> Result<FileWriter> {
        let geo = self.geometry().await?;
        if geo.chunk_size == 0 || geo.block_size == 0 {
            return Err(FsError::Protocol { reason: "metadata reports a zero chunk or block size".into() }.into());
        }
        Ok(FileWriter {
            client: self.clone(),
            ino,
            geo,
            buf_start: offset,
            buf: BytesMut::new(),
            inflight: FuturesUnordered::new(),
            written: Vec::new(),
            targets: VecDeque::new(),
            end: 0,
            inline: Vec::new(),
            inline_max: self.config.inline_max.min(INLINE_MAX).min(geo.chunk_size),
            codec: None,
            fps: Vec::new(),
            held: Vec::new(),
            held_bytes: 0,
        })
    }

    /// Writes `data` at `offset` and commits it: one atomic version.
    pub async fn write_at(&self, ino: InodeId, offset: u64, data: &[u8]) -> Result<Attr> {
        let mut w = self.writer(ino, offset).await?;
        w.write(data).await?;
        w.commit().await
    }

    /// Appends `data` at the current end of the file.
    pub async fn append(&self, ino: InodeId, data: &[u8]) -> Result<Attr> {
        let size = self.getattr(ino).await?.size;
        self.write_at(ino, size, data).await
    }
}

impl FileWriter {
    /// File offset the next `write` goes to.
    pub fn position(&self) -> u64 {
        self.buf_start + self.buf.len() as u64
    }

    /// Moves the write position; buffered bytes are sent (or staged inline) first.
    pub async fn seek(&mut self, offset: u64) -> Result<()> {
        if offset != self.position() {
            if !self.stage_inline() {
                self.flush_block().await?;
            }
            self.buf_start = offset;
        }
        Ok(())
    }

    /// Buffers `data` at the current position, sending every full block.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let cap = block_capacity(self.buf_start, self.geo.chunk_size, self.geo.block_size) as usize;
            if self.buf.capacity() < cap {
                self.buf.reserve(cap - self.buf.len());
            }
            let take = (cap - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == cap {
                self.flush_block().await?;
                if self.written.len() + self.inflight.len() >= MAX_BLOCKS_PER_COMMIT
                    || self.held_bytes >= MAX_HELD_BYTES
                {
                    self.commit().await?;
                }
            }
        }
        Ok(())
    }

    /// Moves the buffered bytes to the inline slices when they end at or below
    /// `inline_max`; returns whether it did.
    fn stage_inline(&mut self) -> bool {
        let end = self.buf_start + self.buf.len() as u64;
        // Only before any block of this commit: the inline slices go first in the commit,
        // and of slices with one sequence number the later in the list wins.
        if self.buf.is_empty() || end > self.inline_max || !self.written.is_empty() || !self.inflight.is_empty() {
            return false;
        }
        let data = self.buf.split().to_vec();
        let offset = self.buf_start;
        self.buf_start = end;
        self.end = self.end.max(end);
        self.inline.push(SliceWrite {
            chunk: 0,
            offset,
            len: data.len() as u64,
            blocks: Vec::new(),
            inline: Some(Inline::new(data)),
        });
        true
    }

    /// Sends the buffered bytes as one block (possibly short).
    async fn flush_block(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = self.buf.split().freeze();
        let offset = self.buf_start;
        self.buf_start += data.len() as u64;
        self.end = self.end.max(self.buf_start);
        // Keep at most `write_parallelism` blocks in flight.
        while self.inflight.len() >= self.client.config.write_parallelism.max(1) {
            self.reap_one().await?;
        }
        let codec = match self.codec {
            Some(c) => c,
            None => *self.codec.insert(self.client.codec_of(self.ino).await?),
        };
        let target = self.next_target().await?;
        let (client, geo) = (self.client.clone(), self.geo);
        let ino = self.ino;
        let dedup = client.config.dedup;
        self.inflight.push(tokio::spawn(async move {
            let fp = if dedup {
                let d = data.clone();
                let fp = cpu(move || fingerprint(&d)).await?;
                if let Some(b) = client.lookup_fingerprint(fp).await? {
                    if b.len as usize == data.len() {
                        return Ok(Sent::Hit(offset, b, fp, data));
                    }
                }
                Some(fp)
            } else {
                None
            };
            let payload = cpu(move || Payload::new(codec, data)).await?;
            let wb = put_block_with_retries(&client, ino, geo, target, &payload).await?;
            Ok(Sent::Written(offset, wb, fp))
        }));
        Ok(())
    }

    async fn reap_one(&mut self) -> Result<()> {
        if let Some(r) = self.inflight.next().await {
            let sent =
                r.map_err(|e| ClientError::Fs(FsError::internal(format!("block writer task failed: {e}"))))??;
            match sent {
                Sent::Written(offset, wb, fp) => {
                    if let Some(fp) = fp {
                        self.fps.push(BlockFp { block: wb.block.id, fp, existing: false });
                    }
                    self.written.push((offset, wb));
                }
                Sent::Hit(offset, block, fp, data) => {
                    self.fps.push(BlockFp { block: block.id, fp, existing: true });
                    self.written.push((offset, WrittenBlock { block, replicas: Vec::new() }));
                    self.held_bytes += data.len() as u64;
                    self.held.push((offset, data));
                }
            }
        }
        Ok(())
    }

    async fn next_target(&mut self) -> Result<BlockTarget> {
        if self.targets.is_empty() {
            let want = self.client.config.write_parallelism.clamp(1, 16) as u32;
            self.targets.extend(allocate(&self.client, self.ino, want).await?);
        }
        self.targets
            .pop_front()
            .ok_or_else(|| FsError::Protocol { reason: "metadata allocated no blocks".into() }.into())
    }

    /// Sends what is buffered, waits for every block, and commits all written slices in
    /// one metadata operation. Returns the file's attributes after the commit.
    pub async fn commit(&mut self) -> Result<Attr> {
        if !self.stage_inline() {
            self.flush_block().await?;
        }
        while !self.inflight.is_empty() {
            self.reap_one().await?;
        }
        if self.written.is_empty() && self.inline.is_empty() && self.end == 0 {
            // Nothing written since the last commit: no new version, no mtime change.
            return self.client.getattr(self.ino).await;
        }
        let attr = self.commit_written().await?;
        // The size this commit guaranteed is in the file now; a later commit must not
        // grow the file back to it after a truncate.
        self.end = 0;
        Ok(attr)
    }

    /// Sends the commit of everything written (a dedup commit when fingerprints are
    /// known); a referenced block freed meanwhile gets written for real, then the commit
    /// is tried again.
    async fn commit_written(&mut self) -> Result<Attr> {
        let mut attempt = 1;
        loop {
            // Inline slices were all written before any block of this commit: they go
            // first, since of overlapping slices with one sequence number the later wins.
            let mut slices = self.inline.clone();
            slices.extend(slices_of(self.written.clone(), self.geo.chunk_size));
            let (ino, min_size, mtime, bad) = (self.ino, self.end, Timestamp::now(), Vec::new());
            let req = if self.fps.is_empty() {
                MetaRequest::CommitWrite { ino, slices, min_size, mtime, bad }
            } else {
                let fps = self.fps.clone();
                MetaRequest::Dedup(DedupRequest::CommitWrite { ino, slices, min_size, mtime, bad, fps })
            };
            match self.client.meta_call(req).await {
                Ok(r) => {
                    let attr = expect_resp!(r, MetaResponse::Attr(a) => a, "CommitWrite")?;
                    self.inline.clear();
                    self.written.clear();
                    self.fps.clear();
                    self.held.clear();
                    self.held_bytes = 0;
                    return Ok(attr);
                }
                Err(ClientError::Fs(FsError::BlockNotFound { block, .. }))
                    if attempt < COMMIT_ATTEMPTS && !self.held.is_empty() =>
                {
                    warn!(%block, "a deduplicated block was freed before the commit; writing the held blocks");
                    self.rewrite_held().await?;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes every held (deduplicated) block for real and makes the commit use the copies.
    async fn rewrite_held(&mut self) -> Result<()> {
        let codec = self.codec.unwrap_or_default();
        for (offset, data) in std::mem::take(&mut self.held) {
            let Some(pos) = self.written.iter().position(|(o, wb)| *o == offset && wb.replicas.is_empty()) else {
                continue;
            };
            let old = self.written[pos].1.block.id;
            let target = self.next_target().await?;
            let payload = cpu(move || Payload::new(codec, data)).await?;
            let wb = put_block_with_retries(&self.client, self.ino, self.geo, target, &payload).await?;
            if let Some(f) = self.fps.iter_mut().find(|f| f.existing && f.block == old) {
                *f = BlockFp { block: wb.block.id, fp: f.fp, existing: false };
            }
            self.written[pos].1 = wb;
        }
        self.held_bytes = 0;
        Ok(())
    }

    /// Commits and ends the writer.
    pub async fn close(mut self) -> Result<Attr> {
        self.commit().await
    }
}

async fn allocate(client: &Client, ino: InodeId, count: u32) -> Result<Vec<BlockTarget>> {
    let r = client.meta_call(MetaRequest::AllocateBlocks { ino, count }).await?;
    expect_resp!(r, MetaResponse::Allocated { blocks } => blocks, "AllocateBlocks")
}

/// Groups written blocks (file offset, block) into per-chunk slices of contiguous blocks.
fn slices_of(mut written: Vec<(u64, WrittenBlock)>, chunk_size: u64) -> Vec<SliceWrite> {
    written.sort_by_key(|(o, _)| *o);
    let mut out: Vec<SliceWrite> = Vec::new();
    let mut next_off = u64::MAX;
    for (off, wb) in written {
        let chunk = off / chunk_size;
        let len = wb.block.len as u64;
        match out.last_mut() {
            Some(s) if s.chunk == chunk && off == next_off => {
                s.len += len;
                s.blocks.push(wb);
            }
            _ => out.push(SliceWrite { chunk, offset: off % chunk_size, len, blocks: vec![wb], inline: None }),
        }
        next_off = off + len;
    }
    out
}

/// Writes one block, re-allocating targets and retrying when fewer than W replicas
/// acknowledged (a node may have died before the metadata noticed).
async fn put_block_with_retries(
    client: &Client,
    ino: InodeId,
    geo: Geometry,
    mut target: BlockTarget,
    payload: &Payload,
) -> Result<WrittenBlock> {
    let mut attempt = 1;
    loop {
        match put_block(client, geo, &target, payload).await {
            Ok(done) => return Ok(done),
            Err(e) if attempt < BLOCK_ATTEMPTS => {
                warn!(block = %target.id, attempt, error = %e, "block write failed; retrying on new targets");
                tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
                target = allocate(client, ino, 1).await?.into_iter().next().ok_or_else(|| {
                    ClientError::Fs(FsError::Protocol { reason: "metadata allocated no blocks".into() })
                })?;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sends one block to all its targets at once; succeeds when W acknowledged. After the
/// W-th ack, stragglers get `straggler_grace` to finish; those that fail or are still
/// running are left out of the replica list (the metadata sees the block under-replicated).
async fn put_block(client: &Client, geo: Geometry, target: &BlockTarget, payload: &Payload) -> Result<WrittenBlock> {
    let needed = geo.write_quorum();
    let block = BlockRef { id: target.id, len: payload.plain_len };
    let mut puts: FuturesUnordered<_> = target
        .targets
        .iter()
        .map(|t| {
            let (rpc, req, body) = (client.rpc.clone(), payload.request(target.id), payload.body.clone());
            let (node, addr) = (t.id, t.addr.clone());
            let timeout = client.config.block_timeout;
            async move {
                let t0 = Instant::now();
                let r = rpc.storage(&addr, &req, body, Some(timeout)).await;
                (node, t0.elapsed(), r)
            }
        })
        .collect();
    let mut acked: Vec<NodeId> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut full = 0usize;
    let mut grace_deadline: Option<tokio::time::Instant> = None;
    loop {
        let next = match grace_deadline {
            None => puts.next().await,
            Some(d) => match tokio::time::timeout_at(d, puts.next()).await {
                Ok(n) => n,
                Err(_) => {
                    debug!(block = %target.id, left = puts.len(), "stragglers left behind after quorum");
                    break;
                }
            },
        };
        let Some((node, took, r)) = next else { break };
        match r {
            Ok((StorageResponse::Stored, _)) => {
                client.note_latency(node, took.as_micros() as u64);
                acked.push(node);
                if acked.len() >= needed && grace_deadline.is_none() {
                    let grace = client.config.straggler_grace.max(took);
                    grace_deadline = Some(tokio::time::Instant::now() + grace);
                }
            }
            Ok((other, _)) => errors.push(format!("{node}: unexpected answer {other:?}")),
            Err(e) => {
                if let RpcError::Remote(FsError::NoSpace { .. }) = e {
                    full += 1;
                }
                if let RpcError::Connect { .. } | RpcError::ConnectionLost { .. } = e {
                    // Do not keep a pooled connection to a node that just failed.
                    if let Some(t) = target.targets.iter().find(|t| t.id == node) {
                        client.rpc.forget(&t.addr);
                    }
                }
                errors.push(format!("{node}: {e}"));
            }
        }
    }
    if acked.len() < needed {
        return Err(quorum_failure(target.id, acked.len(), needed, target.targets.len(), full, errors).into());
    }
    Ok(WrittenBlock { block, replicas: acked })
}

/// Why a block write missed its quorum: `NoSpace` (ENOSPC on a mount) when the nodes that
/// refused for lack of space alone made the quorum impossible, else `NotEnoughReplicas`.
fn quorum_failure(
    block: BlockId,
    acked: usize,
    needed: usize,
    targets: usize,
    full: usize,
    errors: Vec<String>,
) -> FsError {
    let detail = errors.join("; ");
    if full > 0 && targets.saturating_sub(full) < needed {
        return FsError::NoSpace {
            reason: format!("{full} of the {targets} nodes chosen for block {block} are full ({detail})"),
        };
    }
    FsError::NotEnoughReplicas { block, acked, needed, detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distfs_types::BlockId;

    fn wb(id: u128, len: u32) -> WrittenBlock {
        WrittenBlock { block: BlockRef { id: BlockId(id), len }, replicas: vec![NodeId(1)] }
    }

    #[test]
    fn contiguous_blocks_in_a_chunk_make_one_slice() {
        let written = vec![(200, wb(3, 50)), (0, wb(1, 100)), (100, wb(2, 100)), (1000, wb(4, 10)), (500, wb(5, 10))];
        let s = slices_of(written, 1000);
        let shape: Vec<(u64, u64, u64, usize)> = s.iter().map(|s| (s.chunk, s.offset, s.len, s.blocks.len())).collect();
        assert_eq!(shape, vec![(0, 0, 250, 3), (0, 500, 10, 1), (1, 0, 10, 1)]);
    }

    #[test]
    fn a_quorum_missed_because_nodes_are_full_is_no_space() {
        let e = || vec!["n1: no space".to_string()];
        let b = BlockId(1);
        assert!(matches!(quorum_failure(b, 0, 2, 3, 3, e()), FsError::NoSpace { .. }));
        assert!(matches!(quorum_failure(b, 1, 2, 3, 2, e()), FsError::NoSpace { .. }));
        // One full node of three: the quorum was possible, something else failed.
        assert!(matches!(quorum_failure(b, 1, 2, 3, 1, e()), FsError::NotEnoughReplicas { .. }));
        assert!(matches!(quorum_failure(b, 0, 2, 3, 0, e()), FsError::NotEnoughReplicas { .. }));
    }

    #[test]
    fn quorum_is_a_majority() {
        let g = |r| Geometry { chunk_size: 1, block_size: 1, replication: r };
        assert_eq!(g(3).write_quorum(), 2);
        assert_eq!(g(1).write_quorum(), 1);
        assert_eq!(g(5).write_quorum(), 3);
        assert_eq!(g(2).write_quorum(), 2);
    }
}
