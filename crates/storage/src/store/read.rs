//! The verified read: parse and check the header, read the requested range widened to
//! 64 KiB boundaries, verify every piece's CRC32C before answering. Any corruption moves
//! the file to quarantine and answers `Corrupt`.

use super::format::{Header, FIXED_LEN};
use super::{run_blocking, BlockStore};
use crate::disk::ReadFile;
use crate::error::{CorruptKind, StorageError};
use bytes::Bytes;
use distfs_types::{BlockId, CRC_CHUNK};
use std::io;
use std::path::Path;

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
        let this = self.clone();
        run_blocking(move || this.get_blocking(id, offset, len)).await
    }

    fn get_blocking(&self, id: BlockId, offset: u64, len: u64) -> Result<BlockRange, StorageError> {
        let path = self.block_path(id);
        let mut f = match self.inner.disk.open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StorageError::NotFound { block: id }),
            Err(e) => return Err(StorageError::io("open", &path, e)),
        };
        match read_range(&mut *f, id, &path, offset, len) {
            Err(StorageError::Corrupt { kind, .. }) => Err(self.quarantine(id, &path, kind, true)),
            other => other,
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
    if header.packed.is_some() {
        return super::packed::read_packed_range(f, &header, path, offset, len);
    }
    let block_len = header.len;
    if offset > block_len {
        return Err(StorageError::BadRange { block: id, offset, block_len });
    }
    let start = offset / PIECE * PIECE;
    let end = if len == 0 {
        start
    } else {
        offset.saturating_add(len).min(block_len).div_ceil(PIECE).saturating_mul(PIECE).min(block_len)
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
    let first = (start / PIECE) as usize;
    let mut crcs = Vec::with_capacity(data.len().div_ceil(PIECE as usize));
    for (i, piece) in data.chunks(PIECE as usize).enumerate() {
        let expected = header.crcs[first + i];
        let computed = crc32c::crc32c(piece);
        if computed != expected {
            return Err(StorageError::Corrupt {
                block: id,
                path: path.to_path_buf(),
                kind: CorruptKind::DataChecksum { piece: (first + i) as u32, expected, computed },
            });
        }
        crcs.push(expected);
    }
    Ok(BlockRange { offset: start, crcs, data: Bytes::from(data), block_len })
}
