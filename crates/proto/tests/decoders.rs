//! Stable-toolchain companion of the cargo-fuzz targets in `fuzz/`: a seeded loop feeds
//! mutated valid encodings and random bytes to the frame decoder, the compressed-body
//! decoder and every typed-header decoder. Nothing may panic, a decoded value must
//! re-encode to one that decodes equal, and nothing may decode past the limits.

use bytes::Bytes;
use distfs_proto::compress::{compress_frame, decompress_frame, Compression};
use distfs_proto::frame::read_frame;
use distfs_proto::handshake::{Hello, HelloAck};
use distfs_proto::{
    decode, encode, Frame, Kind, Limits, MetaRequest, MetaResponse, PeerKind, StorageRequest, StorageResponse,
    FLAG_LZ4, FLAG_ZSTD,
};
use distfs_types::{BlockId, FsError, InodeId};
use serde::{de::DeserializeOwned, Serialize};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random edit of `b`: bit flip, truncation, insertion, a large little-endian or
/// varint length spliced in, or fresh random bytes.
fn mutate(rng: &mut Rng, b: &[u8]) -> Vec<u8> {
    let mut b = b.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(6) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 => b.truncate(rng.below(b.len() + 1)),
            2 => {
                let i = rng.below(b.len() + 1);
                b.insert(i, rng.next() as u8);
            }
            3 => {
                let i = rng.below(b.len() + 1);
                let big = [0xff, 0xff, 0xff, 0xff, 0x0f];
                b.splice(i..i, big.iter().copied().take(1 + rng.below(5)));
            }
            4 if b.len() >= 4 => {
                let i = rng.below(b.len() - 3);
                b[i..i + 4].copy_from_slice(&(rng.next() as u32 | 0x0100_0000).to_le_bytes());
            }
            _ => b = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        }
    }
    b
}

fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> bool {
    match decode::<T>(bytes) {
        Ok(v) => {
            let again: T = decode(&encode(&v)).expect("a re-encoded value decodes");
            assert_eq!(again, v);
            true
        }
        Err(_) => false,
    }
}

#[test]
fn typed_headers_survive_mutation() {
    let seeds: Vec<(u8, Bytes)> = vec![
        (0, encode(&MetaRequest::Lookup { parent: InodeId(1), name: "some-name".into() })),
        (0, encode(&MetaRequest::ResolvePath { path: "/a/b/c".into() })),
        (1, encode(&MetaResponse::Target("/x".into()))),
        (1, encode(&MetaResponse::Done)),
        (2, encode(&StorageRequest::PutBlock { block: BlockId(7), crcs: vec![1, 2, 3] })),
        (2, encode(&StorageRequest::DeleteBlocks { blocks: vec![BlockId(1), BlockId(u128::MAX)] })),
        (3, encode(&StorageResponse::Block { offset: 65536, crcs: vec![9; 4] })),
        (4, encode(&Hello::new(PeerKind::Client, Compression::Zstd))),
        (6, encode(&FsError::NotFound { what: "x".into() })),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for i in 0..200_000 {
        let (kind, seed) = &seeds[i % seeds.len()];
        let bytes = mutate(&mut rng, seed);
        let which = if rng.below(4) == 0 { rng.below(7) as u8 } else { *kind };
        let ok = match which {
            0 => check::<MetaRequest>(&bytes),
            1 => check::<MetaResponse>(&bytes),
            2 => check::<StorageRequest>(&bytes),
            3 => check::<StorageResponse>(&bytes),
            4 => check::<Hello>(&bytes),
            5 => check::<HelloAck>(&bytes),
            _ => check::<FsError>(&bytes),
        };
        accepted += ok as u32;
    }
    // The loop must reach past the first byte: some mutants are valid values.
    assert!(accepted > 1000, "only {accepted} mutants decoded");
}

#[tokio::test]
async fn frames_and_compressed_bodies_survive_mutation() {
    let text: Vec<u8> = b"acknowledged bytes read back exactly ".iter().copied().cycle().take(5000).collect();
    let plain = Frame::new(
        Kind::Storage as u16,
        0,
        9,
        encode(&StorageRequest::PutBlock { block: BlockId(3), crcs: vec![1] }),
        Bytes::from(text),
    );
    let seeds: Vec<Vec<u8>> = [Compression::None, Compression::Lz4, Compression::Zstd]
        .into_iter()
        .map(|c| compress_frame(plain.clone(), c).to_bytes())
        .collect();
    let limits = Limits { max_header: 256, max_body: 64 << 10 };
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for i in 0..30_000 {
        let bytes = mutate(&mut rng, &seeds[i % seeds.len()]);
        if let Ok(Some(f)) = read_frame(&mut bytes.as_slice(), &limits).await {
            assert!(f.header.len() <= 256 && f.body.len() <= 64 << 10);
            assert_eq!(f, plain, "a mutated frame decoded to something else");
        }
        // The same bytes as a compressed body under each flag, CRC aside.
        let flags = [FLAG_LZ4, FLAG_ZSTD][i % 2];
        let f = Frame { kind: 2, flags, request_id: 1, header: Bytes::new(), body: Bytes::from(bytes), pieces: None };
        if let Ok(f) = decompress_frame(f, &limits) {
            assert!(f.body.len() <= 64 << 10);
        }
    }
}

#[test]
fn decompression_bombs_are_refused_by_the_bound() {
    let limits = Limits { max_header: 256, max_body: 1 << 20 };
    let zeros = vec![0u8; 64 << 20];
    for (algo, flag) in [(Compression::Lz4, FLAG_LZ4), (Compression::Zstd, FLAG_ZSTD)] {
        let packed = match algo {
            Compression::Lz4 => lz4_block(&zeros),
            _ => zstd_block(&zeros),
        };
        // Honest prefix above the limit, and a lying prefix under it.
        for raw in [zeros.len() as u32, 1000] {
            let mut body = raw.to_le_bytes().to_vec();
            body.extend_from_slice(&packed);
            let f = Frame::new(2, flag, 1, Bytes::new(), Bytes::from(body));
            assert!(decompress_frame(f, &limits).is_err(), "{algo} bomb with prefix {raw} accepted");
        }
    }
}

fn lz4_block(data: &[u8]) -> Vec<u8> {
    let f = Frame::new(2, 0, 1, Bytes::new(), Bytes::copy_from_slice(data));
    compress_frame(f, Compression::Lz4).body[4..].to_vec()
}

fn zstd_block(data: &[u8]) -> Vec<u8> {
    let f = Frame::new(2, 0, 1, Bytes::new(), Bytes::copy_from_slice(data));
    compress_frame(f, Compression::Zstd).body[4..].to_vec()
}
