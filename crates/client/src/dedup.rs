//! Client side of deduplication and compression at rest (issue 10).
//!
//! Each block's BLAKE3 (of its plain bytes) is looked up in the metadata's fingerprint
//! table before the block is sent; a hit is not written, the commit references the stored
//! block instead (`BlockFp::existing`). The writer keeps the bytes of such blocks until the
//! commit: if a referenced block was freed meanwhile the commit fails with
//! `BlockNotFound`, the writer then writes those blocks for real and commits again.
//! A miss is compressed with the file's codec (the directory setting the file inherited,
//! `COMPRESSION_XATTR`) by the client, so the bytes cross the network compressed once and
//! every replica stores them as they came; a block that does not shrink by an eighth goes
//! plain.

use crate::error::Result;
use crate::ns::expect_resp;
use crate::{Client, ClientError};
use bytes::Bytes;
use distfs_proto::compress::compress_block;
use distfs_proto::dedup::{DedupRequest, Fingerprint, PackedPut, COMPRESSION_XATTR};
use distfs_proto::{Compression, MetaRequest, MetaResponse, StorageRequest};
use distfs_types::{BlockId, BlockRef, FsError, InodeId};

/// A block ready to send: the stored bytes, their CRCs, and how they decompress.
#[derive(Clone, Debug)]
pub(crate) struct Payload {
    /// Length of the plain bytes (what the file holds).
    pub plain_len: u32,
    pub body: Bytes,
    pub crcs: Vec<u32>,
    /// `(codec, CRCs of the plain bytes)` when `body` is compressed.
    pub packed: Option<(Compression, Vec<u32>)>,
}

impl Payload {
    /// Compresses `plain` with `codec` when that pays (CPU work: call off the runtime).
    pub fn new(codec: Compression, plain: Bytes) -> Payload {
        let plain_crcs = distfs_proto::pieces::piece_crcs(&plain);
        let plain_len = plain.len() as u32;
        match compress_block(codec, &plain) {
            (Compression::None, _) => Payload { plain_len, body: plain, crcs: plain_crcs, packed: None },
            (used, stored) => {
                let crcs = distfs_proto::pieces::piece_crcs(&stored);
                Payload { plain_len, body: Bytes::from(stored), crcs, packed: Some((used, plain_crcs)) }
            }
        }
    }

    /// The storage request that puts this payload as block `id`.
    pub fn request(&self, id: BlockId) -> StorageRequest {
        match &self.packed {
            None => StorageRequest::PutBlock { block: id, crcs: self.crcs.clone() },
            Some((codec, plain_crcs)) => StorageRequest::PutPacked(PackedPut {
                block: id,
                crcs: self.crcs.clone(),
                codec: *codec,
                plain_len: self.plain_len,
                plain_crcs: plain_crcs.clone(),
            }),
        }
    }
}

/// BLAKE3 of a block's plain bytes.
pub fn fingerprint(data: &[u8]) -> Fingerprint {
    *blake3::hash(data).as_bytes()
}

/// Runs CPU work (hashing, compressing) off the async threads.
pub(crate) async fn cpu<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ClientError::Fs(FsError::internal(format!("hashing/compression task failed: {e}"))))
}

impl Client {
    /// The block stored with fingerprint `fp`, if the metadata knows one.
    pub async fn lookup_fingerprint(&self, fp: Fingerprint) -> Result<Option<BlockRef>> {
        let r = self.meta_call(MetaRequest::Dedup(DedupRequest::Lookup { fps: vec![fp] })).await?;
        let blocks = expect_resp!(r, MetaResponse::Fingerprints { blocks } => blocks, "Dedup lookup")?;
        Ok(blocks.into_iter().next().flatten())
    }

    /// The codec new blocks of `ino` are compressed with (its inherited directory setting).
    pub async fn codec_of(&self, ino: InodeId) -> Result<Compression> {
        match self.getxattr(ino, COMPRESSION_XATTR).await {
            Ok(v) => parse_codec(&v),
            Err(ClientError::Fs(FsError::NoData { .. })) => Ok(Compression::None),
            Err(e) => Err(e),
        }
    }

    /// Sets the codec of the files and directories created under directory `dir` from now on.
    pub async fn set_codec(&self, dir: InodeId, codec: Compression) -> Result<()> {
        let mode = distfs_proto::XattrMode::Any;
        self.setxattr(dir, COMPRESSION_XATTR, codec.as_str().as_bytes(), mode).await
    }
}

fn parse_codec(v: &[u8]) -> Result<Compression> {
    std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).ok_or_else(|| {
        ClientError::Fs(FsError::invalid(format!(
            "{COMPRESSION_XATTR} is {:?}; expected none, lz4 or zstd",
            String::from_utf8_lossy(v)
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_compresses_only_when_it_pays() {
        let text: Vec<u8> = b"all work and no play ".iter().copied().cycle().take(300_000).collect();
        let p = Payload::new(Compression::Zstd, Bytes::from(text.clone()));
        let (codec, plain_crcs) = p.packed.clone().expect("text compresses");
        assert_eq!(codec, Compression::Zstd);
        assert_eq!(plain_crcs, distfs_proto::pieces::piece_crcs(&text));
        assert!(p.body.len() < text.len() / 10);
        assert_eq!(p.plain_len as usize, text.len());
        let mut x = 1u64;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect();
        let p = Payload::new(Compression::Zstd, Bytes::from(noise.clone()));
        assert!(p.packed.is_none(), "random bytes are stored plain");
        assert_eq!(&p.body[..], &noise[..]);
        assert!(matches!(p.request(BlockId(1)), StorageRequest::PutBlock { .. }));
        assert_eq!(fingerprint(b"abc"), fingerprint(b"abc"));
        assert_ne!(fingerprint(b"abc"), fingerprint(b"abd"));
        assert!(parse_codec(b"gzip").is_err());
        assert_eq!(parse_codec(b"lz4").unwrap(), Compression::Lz4);
    }
}
