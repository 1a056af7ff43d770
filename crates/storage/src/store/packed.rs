//! Compressed blocks at rest (format version 2, issue 10). The client compresses a block
//! (`distfs_proto::compress::compress_block`) and sends the stored bytes with the CRC32C
//! of each 64 KiB of them and of each 64 KiB of the plain bytes. The node checks both
//! before it writes (the stored CRCs in `prepare`, the plain ones here by decompressing),
//! so it never acknowledges a block that would not read back. A read decompresses the
//! whole block (blocks are at most `MAX_BLOCK`), checks every plain piece and answers the
//! requested range of the plain bytes with the plain CRCs: the client's read path is the
//! same for both formats and verifies end to end against the CRCs it computed itself.
//! Repair copies the stored bytes as they are (`read_stored`, `put_packed`).

use super::format::{piece_crcs, pieces, Header, Packed, MAX_BLOCK};
use super::read::{read_header, BlockRange};
use super::BlockStore;
use crate::disk::ReadFile;
use crate::error::{CorruptKind, StorageError};
use bytes::Bytes;
use distfs_proto::compress::decompress_block;
use distfs_proto::Compression;
use distfs_types::{BlockId, CRC_CHUNK};
use std::io;
use std::path::Path;

const PIECE: u64 = CRC_CHUNK as u64;

/// Checks a compressed put before anything is written: a real codec, a bounded plain
/// length with the right number of CRCs, and stored bytes that decompress to exactly
/// plain bytes matching those CRCs.
pub(super) fn check_put(id: BlockId, stored: &[u8], p: &Packed) -> Result<(), StorageError> {
    let bad = |reason: String| StorageError::BadRequest { reason: format!("compressed block {id}: {reason}") };
    if p.codec == Compression::None {
        return Err(bad("a compressed put must name lz4 or zstd".into()));
    }
    if p.plain_len == 0 || p.plain_len > MAX_BLOCK {
        return Err(StorageError::TooLarge { block: id, len: p.plain_len, max: MAX_BLOCK });
    }
    if p.plain_crcs.len() != pieces(p.plain_len) {
        return Err(StorageError::CrcCount {
            block: id,
            len: p.plain_len,
            got: p.plain_crcs.len(),
            expected: pieces(p.plain_len),
        });
    }
    let plain = decompress_block(p.codec, stored, p.plain_len, MAX_BLOCK).map_err(|e| bad(e.to_string()))?;
    let computed = piece_crcs(&plain);
    if let Some(i) = (0..computed.len()).find(|&i| computed[i] != p.plain_crcs[i]) {
        return Err(StorageError::BodyChecksum {
            block: id,
            piece: i as u32,
            sent: p.plain_crcs[i],
            computed: computed[i],
        });
    }
    Ok(())
}

/// Reads a whole compressed block's stored bytes and checks them against the stored CRCs.
fn read_stored_bytes(f: &mut dyn ReadFile, header: &Header, path: &Path) -> Result<Vec<u8>, StorageError> {
    let corrupt = |kind| StorageError::Corrupt { block: header.id, path: path.to_path_buf(), kind };
    // `header.len` was bounded by MAX_BLOCK when the header was parsed.
    let mut stored = vec![0u8; header.len as usize];
    let at = header.encoded_len() as u64;
    let n = f.read_at(at, &mut stored).map_err(|e| StorageError::io("read", path, e))?;
    if n < stored.len() {
        return Err(corrupt(CorruptKind::Truncated { expected: at + header.len, found: at + n as u64 }));
    }
    for (i, piece) in stored.chunks(PIECE as usize).enumerate() {
        let (expected, computed) = (header.crcs[i], crc32c::crc32c(piece));
        if computed != expected {
            return Err(corrupt(CorruptKind::DataChecksum { piece: i as u32, expected, computed }));
        }
    }
    Ok(stored)
}

/// The verified range `[offset, offset+len)` of a compressed block's plain bytes, widened
/// to 64 KiB boundaries (like a plain block's range).
pub(super) fn read_packed_range(
    f: &mut dyn ReadFile,
    header: &Header,
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<BlockRange, StorageError> {
    let id = header.id;
    let p = header.packed.as_ref().expect("read_packed_range of a packed header");
    let corrupt = |kind| StorageError::Corrupt { block: id, path: path.to_path_buf(), kind };
    let block_len = p.plain_len;
    if offset > block_len {
        return Err(StorageError::BadRange { block: id, offset, block_len });
    }
    let stored = read_stored_bytes(f, header, path)?;
    // The plain length was bounded by MAX_BLOCK when the header was parsed, and again here.
    let plain = decompress_block(p.codec, &stored, p.plain_len, MAX_BLOCK)
        .map_err(|e| corrupt(CorruptKind::Decompress { reason: e.to_string() }))?;
    for (i, piece) in plain.chunks(PIECE as usize).enumerate() {
        let (expected, computed) = (p.plain_crcs[i], crc32c::crc32c(piece));
        if computed != expected {
            return Err(corrupt(CorruptKind::PlainChecksum { piece: i as u32, expected, computed }));
        }
    }
    let start = offset / PIECE * PIECE;
    let end = if len == 0 {
        start
    } else {
        offset.saturating_add(len).min(block_len).div_ceil(PIECE).saturating_mul(PIECE).min(block_len)
    };
    let first = (start / PIECE) as usize;
    let last = (end.div_ceil(PIECE)) as usize;
    let crcs = p.plain_crcs[first..last.max(first)].to_vec();
    let data = Bytes::from(plain).slice(start as usize..end as usize);
    Ok(BlockRange { offset: start, crcs, data, block_len })
}

/// A block's bytes as stored, for a repair copy: `None` for a plain block (copied as a
/// plain range), or the verified compressed bytes with their CRCs and how they decompress.
pub type Stored = Option<(Vec<u32>, Bytes, Packed)>;

impl BlockStore {
    /// The stored bytes of a compressed block, verified (stored and plain checksums);
    /// `Ok(None)` for a plain block. A corrupt file is quarantined.
    pub async fn read_stored(&self, id: BlockId) -> Result<Stored, StorageError> {
        let this = self.clone();
        super::run_blocking(move || {
            let path = this.block_path(id);
            let mut f = match this.inner.disk.open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StorageError::NotFound { block: id }),
                Err(e) => return Err(StorageError::io("open", &path, e)),
            };
            let r = (|| {
                let (header, _) = read_header(&mut *f, id, &path)?;
                let Some(p) = header.packed.clone() else { return Ok(None) };
                let stored = read_stored_bytes(&mut *f, &header, &path)?;
                let plain =
                    decompress_block(p.codec, &stored, p.plain_len, MAX_BLOCK).map_err(|e| StorageError::Corrupt {
                        block: id,
                        path: path.clone(),
                        kind: CorruptKind::Decompress { reason: e.to_string() },
                    })?;
                let computed = piece_crcs(&plain);
                if let Some(i) = (0..computed.len()).find(|&i| computed[i] != p.plain_crcs[i]) {
                    return Err(StorageError::Corrupt {
                        block: id,
                        path: path.clone(),
                        kind: CorruptKind::PlainChecksum {
                            piece: i as u32,
                            expected: p.plain_crcs[i],
                            computed: computed[i],
                        },
                    });
                }
                Ok(Some((header.crcs, Bytes::from(stored), p)))
            })();
            match r {
                Err(StorageError::Corrupt { kind, .. }) => Err(this.quarantine(id, &path, kind, true)),
                other => other,
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SyncPolicy;
    use crate::store::{PutOutcome, StoreOptions};
    use distfs_proto::compress::compress_block;
    use std::sync::Arc;

    async fn open(dir: &Path) -> BlockStore {
        let opts = StoreOptions { data_dir: dir.to_path_buf(), sync: SyncPolicy::None, capacity: None, reserve: 0 };
        BlockStore::open(opts, Arc::new(crate::disk::StdDisk::default())).await.expect("open store").0
    }

    fn text(n: usize) -> Vec<u8> {
        (0..n).map(|i| b"distfs stores compressible text; "[i % 33] ^ ((i / 4096) as u8 & 1)).collect()
    }

    fn pack(codec: Compression, plain: &[u8]) -> (Vec<u32>, Bytes, Packed) {
        let (used, stored) = compress_block(codec, plain);
        assert_eq!(used, codec, "test data must compress");
        let p = Packed { codec, plain_len: plain.len() as u64, plain_crcs: piece_crcs(plain) };
        (piece_crcs(&stored), Bytes::from(stored), p)
    }

    #[tokio::test]
    async fn packed_round_trip_reads_plain_ranges_and_takes_less_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        for (n, codec) in [(1u128, Compression::Zstd), (2, Compression::Lz4)] {
            let plain = text(3 * PIECE as usize + 999);
            let (crcs, stored, p) = pack(codec, &plain);
            let id = BlockId(n);
            assert_eq!(
                store.put_packed(id, crcs.clone(), stored.clone(), p.clone()).await.expect("put"),
                PutOutcome::Stored
            );
            // Idempotent: the same plain bytes, packed or plain, are the same block.
            assert_eq!(
                store.put_packed(id, crcs, stored.clone(), p.clone()).await.expect("put"),
                PutOutcome::AlreadyPresent
            );
            assert_eq!(
                store.put(id, piece_crcs(&plain), Bytes::from(plain.clone())).await.expect("put"),
                PutOutcome::AlreadyPresent
            );
            let size = std::fs::metadata(store.block_path(id)).expect("block file").len();
            assert!(size < plain.len() as u64 / 4, "{codec}: {size} bytes on disk for {} plain", plain.len());
            for (off, len) in
                [(0u64, u64::MAX), (1, 1), (PIECE - 1, 2), (2 * PIECE + 5, 70_000), (plain.len() as u64, 0)]
            {
                let r = store.get(id, off, len).await.expect("get");
                assert_eq!(r.block_len, plain.len() as u64);
                let start = r.offset as usize;
                assert_eq!(&r.data[..], &plain[start..start + r.data.len()]);
                assert_eq!(r.crcs, piece_crcs(&r.data));
                let want_end = off.saturating_add(len).min(plain.len() as u64);
                assert!(start as u64 <= off && (len == 0 || want_end <= start as u64 + r.data.len() as u64));
            }
            let (c, s, q) = store.read_stored(id).await.expect("read_stored").expect("a packed block");
            assert_eq!((c, s, q), (piece_crcs(&stored), stored, p));
        }
        // A plain (version 1) block still reads, and is copied as a plain range.
        let plain = text(1000);
        store.put(BlockId(3), piece_crcs(&plain), Bytes::from(plain.clone())).await.expect("plain put");
        assert_eq!(&store.get(BlockId(3), 0, 1000).await.expect("get").data[..], &plain[..]);
        assert!(store.read_stored(BlockId(3)).await.expect("read_stored").is_none());
    }

    #[tokio::test]
    async fn bad_packed_puts_are_refused_and_nothing_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let plain = text(200_000);
        let (crcs, stored, p) = pack(Compression::Zstd, &plain);
        let mut wrong = p.clone();
        wrong.plain_crcs[1] ^= 1;
        let e = store.put_packed(BlockId(1), crcs.clone(), stored.clone(), wrong).await.unwrap_err();
        assert!(matches!(e, StorageError::BodyChecksum { piece: 1, .. }), "{e}");
        let mut wrong = p.clone();
        wrong.plain_len = MAX_BLOCK + 1;
        let e = store.put_packed(BlockId(1), crcs.clone(), stored.clone(), wrong).await.unwrap_err();
        assert!(matches!(e, StorageError::TooLarge { .. }), "{e}");
        let mut wrong = p.clone();
        wrong.codec = Compression::Lz4;
        let e = store.put_packed(BlockId(1), crcs.clone(), stored.clone(), wrong).await.unwrap_err();
        assert!(matches!(e, StorageError::BadRequest { .. }), "{e}");
        let mut wrong = p;
        wrong.codec = Compression::None;
        let e = store.put_packed(BlockId(1), crcs, stored, wrong).await.unwrap_err();
        assert!(matches!(e, StorageError::BadRequest { .. }), "{e}");
        assert_eq!(store.block_count(), 0);
        assert!(!store.block_path(BlockId(1)).exists());
    }

    /// Writes a block file by hand (a header of our choosing, valid header CRC).
    fn write_file(store: &BlockStore, h: &Header, stored: &[u8]) {
        let path = store.block_path(h.id);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut b = h.encode();
        b.extend_from_slice(stored);
        std::fs::write(path, b).unwrap();
    }

    #[tokio::test]
    async fn corrupt_compressed_blocks_are_detected_by_either_checksum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let plain = text(300_000);
        let (crcs, stored, p) = pack(Compression::Zstd, &plain);

        // 1. A flipped stored byte: the stored CRC catches it, the file is quarantined.
        store.put_packed(BlockId(1), crcs.clone(), stored.clone(), p.clone()).await.expect("put");
        let path = store.block_path(BlockId(1));
        let mut b = std::fs::read(&path).unwrap();
        let at = b.len() - stored.len() / 2;
        b[at] ^= 0x40;
        std::fs::write(&path, b).unwrap();
        match store.get(BlockId(1), 0, 10).await {
            Err(StorageError::Corrupt { kind: CorruptKind::DataChecksum { .. }, .. }) => {}
            other => panic!("expected a stored-bytes checksum error, got {other:?}"),
        }
        assert!(!path.exists(), "the corrupt file is quarantined");

        // 2. Stored bytes that match their CRCs but whose plain bytes do not (a header
        // written with wrong plain CRCs): the plain CRC catches it.
        let mut bad = p.clone();
        bad.plain_crcs[2] ^= 0x10;
        let h = Header { id: BlockId(2), len: stored.len() as u64, crcs: crcs.clone(), packed: Some(bad) };
        write_file(&store, &h, &stored);
        match store.get(BlockId(2), 0, 10).await {
            Err(StorageError::Corrupt { kind: CorruptKind::PlainChecksum { piece: 2, .. }, .. }) => {}
            other => panic!("expected a plain checksum error, got {other:?}"),
        }
        assert!(matches!(store.read_stored(BlockId(2)).await, Err(StorageError::NotFound { .. })));

        // 3. Garbage that passes the stored CRCs: does not decompress, a clear error.
        let junk = vec![0x5au8; 5000];
        let h = Header { id: BlockId(3), len: 5000, crcs: piece_crcs(&junk), packed: Some(p.clone()) };
        write_file(&store, &h, &junk);
        match store.get(BlockId(3), 0, 10).await {
            Err(StorageError::Corrupt { kind: CorruptKind::Decompress { .. }, .. }) => {}
            other => panic!("expected a decompression error, got {other:?}"),
        }

        // 4. A claimed plain length beyond the largest block: refused from the header alone.
        let mut huge = p;
        huge.plain_len = MAX_BLOCK + 1;
        huge.plain_crcs = vec![0; pieces(MAX_BLOCK + 1)];
        let h = Header { id: BlockId(4), len: stored.len() as u64, crcs, packed: Some(huge) };
        write_file(&store, &h, &stored);
        match store.get(BlockId(4), 0, 10).await {
            Err(StorageError::Corrupt { kind: CorruptKind::BadLength { .. }, .. }) => {}
            other => panic!("expected a length error, got {other:?}"),
        }
    }
}
