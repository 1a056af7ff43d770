//! The verified read: parse and check the header, read the requested range widened to
//! 64 KiB boundaries, verify every piece's CRC32C before answering. Any corruption moves
//! the file to quarantine and answers `Corrupt`.
//!
//! Plain blocks read once stay open with their verified header (`OpenBlocks`): a later
//! read whose bytes are all in the page cache is served on the calling thread
//! (`read_cached_at`, never waiting on the device) and skips the open, the stat and the
//! header reads; anything else (not open, not cached, short, a checksum mismatch) takes
//! the full read on the blocking pool, which decides and quarantines.

use super::format::{Header, FIXED_LEN};
use super::{run_blocking, BlockStore};
use crate::disk::ReadFile;
use crate::error::{CorruptKind, StorageError};
use bytes::Bytes;
use distfs_types::{BlockId, CRC_CHUNK};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Block files kept open for reads.
const OPEN_BLOCKS: usize = 1024;

/// Plain block files kept open with their verified headers, at most `OPEN_BLOCKS`, the
/// oldest closed first. A block never changes, so an entry stays right until the block is
/// deleted or quarantined, which evict it under the block's stripe lock; an entry is
/// added under that lock too, and only while the file is still in place.
#[derive(Default)]
pub(super) struct OpenBlocks {
    /// The open blocks, and their ids oldest first.
    inner: Mutex<(OpenMap, VecDeque<BlockId>)>,
}

type OpenMap = HashMap<BlockId, Arc<OpenBlock>>;

struct OpenBlock {
    file: Mutex<Box<dyn ReadFile>>,
    header: Header,
}

impl OpenBlocks {
    fn get(&self, id: BlockId) -> Option<Arc<OpenBlock>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0.get(&id).cloned()
    }

    fn insert(&self, id: BlockId, block: OpenBlock) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *g;
        if map.insert(id, Arc::new(block)).is_none() {
            order.push_back(id);
        }
        while map.len() > OPEN_BLOCKS {
            match order.pop_front() {
                Some(old) => map.remove(&old),
                None => break,
            };
        }
    }

    pub(super) fn evict(&self, id: BlockId) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *g;
        if map.remove(&id).is_some() {
            order.retain(|b| *b != id);
        }
    }
}

const PIECE: u64 = CRC_CHUNK as u64;

/// A verified range of a block, as `StorageResponse::Block` carries it (a compressed
/// block's range is of its plain bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRange {
    /// Start of `data` in the block, a multiple of 64 KiB.
    pub offset: u64,
    /// CRC32C of each 64 KiB piece of `data` (the last may be shorter).
    pub crcs: Vec<u32>,
    pub data: Bytes,
    /// Length of the whole block.
    pub block_len: u64,
}

impl BlockStore {
    /// Reads `[offset, offset+len)` of block `id`, widened to 64 KiB boundaries and
    /// clipped to the block's end.
    pub async fn get(&self, id: BlockId, offset: u64, len: u64) -> Result<BlockRange, StorageError> {
        if let Some(r) = self.get_cached(id, offset, len) {
            return Ok(r);
        }
        let this = self.clone();
        run_blocking(move || this.get_blocking(id, offset, len)).await
    }

    /// The read from an open block whose bytes are all in the page cache, on the calling
    /// thread; `None` when it cannot be served so.
    fn get_cached(&self, id: BlockId, offset: u64, len: u64) -> Option<BlockRange> {
        let b = self.inner.open_blocks.get(id)?;
        let block_len = b.header.len;
        let (start, end) = widen(offset, len, block_len)?;
        let mut data = vec![0u8; (end - start) as usize];
        let at = b.header.encoded_len() as u64 + start;
        let n = b.file.lock().unwrap_or_else(|e| e.into_inner()).read_cached_at(at, &mut data).ok()??;
        if n < data.len() {
            return None;
        }
        let crcs = check_pieces(&b.header, start, &data).ok()?;
        Some(BlockRange { offset: start, crcs, data: Bytes::from(data), block_len })
    }

    fn get_blocking(&self, id: BlockId, offset: u64, len: u64) -> Result<BlockRange, StorageError> {
        let path = self.block_path(id);
        let mut f = match self.inner.disk.open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StorageError::NotFound { block: id }),
            Err(e) => return Err(StorageError::io("open", &path, e)),
        };
        let read = read_header(&mut *f, id, &path).and_then(|(h, _)| {
            let r = read_range_of(&mut *f, &h, id, &path, offset, len)?;
            Ok((h, r))
        });
        match read {
            Ok((header, r)) => {
                if header.packed.is_none() {
                    self.keep_open(id, &path, f, header);
                }
                Ok(r)
            }
            Err(StorageError::Corrupt { kind, .. }) => Err(self.quarantine(id, &path, kind, true)),
            Err(e) => Err(e),
        }
    }

    /// Keeps a verified block file open for later reads (`OpenBlocks`).
    fn keep_open(&self, id: BlockId, path: &Path, file: Box<dyn ReadFile>, header: Header) {
        let _g = self.stripe(id);
        // Deleted or quarantined since it was opened: its eviction has already run.
        if matches!(self.inner.disk.exists(path), Ok(true)) {
            self.inner.open_blocks.insert(id, OpenBlock { file: Mutex::new(file), header });
        }
    }

    /// Reads a whole block and verifies it (used by an idempotent put); returns its
    /// length and piece CRCs, `None` when it does not exist.
    pub(super) fn verify_existing(&self, id: BlockId, path: &Path) -> Result<Option<(u64, Vec<u32>)>, StorageError> {
        let mut f = match self.inner.disk.open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io("open", path, e)),
        };
        let r = read_range(&mut *f, id, path, 0, u64::MAX)?;
        Ok(Some((r.block_len, r.crcs)))
    }
}

/// Reads and verifies the header of an open block file; checks the file's size against
/// it. Returns the header and the file size.
pub(super) fn read_header(f: &mut dyn ReadFile, id: BlockId, path: &Path) -> Result<(Header, u64), StorageError> {
    let corrupt = |kind| StorageError::Corrupt { block: id, path: path.to_path_buf(), kind };
    let size = f.size().map_err(|e| StorageError::io("stat", path, e))?;
    let mut fixed = [0u8; FIXED_LEN];
    let n = f.read_at(0, &mut fixed).map_err(|e| StorageError::io("read", path, e))?;
    if n < FIXED_LEN {
        return Err(corrupt(CorruptKind::Truncated { expected: FIXED_LEN as u64, found: size }));
    }
    // Bounds every length before the rest of the header is allocated.
    let (_, rest) = Header::parse_fixed(&fixed).map_err(corrupt)?;
    let mut buf = vec![0u8; FIXED_LEN + rest];
    buf[..FIXED_LEN].copy_from_slice(&fixed);
    let n = f.read_at(FIXED_LEN as u64, &mut buf[FIXED_LEN..]).map_err(|e| StorageError::io("read", path, e))?;
    if n < rest {
        return Err(corrupt(CorruptKind::Truncated { expected: buf.len() as u64, found: size }));
    }
    let header = Header::decode(&buf).map_err(corrupt)?;
    if header.id != id {
        return Err(corrupt(CorruptKind::WrongId { found: header.id }));
    }
    let expected = header.encoded_len() as u64 + header.len;
    if size != expected {
        return Err(corrupt(CorruptKind::Truncated { expected, found: size }));
    }
    Ok((header, size))
}

fn read_range(
    f: &mut dyn ReadFile,
    id: BlockId,
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<BlockRange, StorageError> {
    let (header, _) = read_header(f, id, path)?;
    read_range_of(f, &header, id, path, offset, len)
}

/// `[offset, offset+len)` widened to whole 64 KiB pieces and clipped to the block;
/// `None` when `offset` lies past the block's end.
fn widen(offset: u64, len: u64, block_len: u64) -> Option<(u64, u64)> {
    if offset > block_len {
        return None;
    }
    let start = offset / PIECE * PIECE;
    let end = if len == 0 {
        start
    } else {
        offset.saturating_add(len).min(block_len).div_ceil(PIECE).saturating_mul(PIECE).min(block_len)
    };
    Some((start, end))
}

/// Checks each 64 KiB piece of `data` (which starts at `start` of the block) against the
/// header; answers their CRCs, or the first mismatch.
fn check_pieces(header: &Header, start: u64, data: &[u8]) -> Result<Vec<u32>, CorruptKind> {
    let first = (start / PIECE) as usize;
    let mut crcs = Vec::with_capacity(data.len().div_ceil(PIECE as usize));
    for (i, piece) in data.chunks(PIECE as usize).enumerate() {
        let expected = header.crcs[first + i];
        let computed = crc32c::crc32c(piece);
        if computed != expected {
            return Err(CorruptKind::DataChecksum { piece: (first + i) as u32, expected, computed });
        }
        crcs.push(expected);
    }
    Ok(crcs)
}

/// Reads and verifies a range of a block whose header `header` was read from `f`.
fn read_range_of(
    f: &mut dyn ReadFile,
    header: &Header,
    id: BlockId,
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<BlockRange, StorageError> {
    if header.packed.is_some() {
        return super::packed::read_packed_range(f, header, path, offset, len);
    }
    let block_len = header.len;
    let Some((start, end)) = widen(offset, len, block_len) else {
        return Err(StorageError::BadRange { block: id, offset, block_len });
    };
    // `end - start` is bounded by the block length, itself bounded by MAX_BLOCK.
    let mut data = vec![0u8; (end - start) as usize];
    let data_at = header.encoded_len() as u64;
    let n = f.read_at(data_at + start, &mut data).map_err(|e| StorageError::io("read", path, e))?;
    if n < data.len() {
        return Err(StorageError::Corrupt {
            block: id,
            path: path.to_path_buf(),
            kind: CorruptKind::Truncated { expected: data_at + end, found: data_at + start + n as u64 },
        });
    }
    let crcs = check_pieces(header, start, &data).map_err(|kind| StorageError::Corrupt {
        block: id,
        path: path.to_path_buf(),
        kind,
    })?;
    Ok(BlockRange { offset: start, crcs, data: Bytes::from(data), block_len })
}
