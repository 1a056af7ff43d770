//! The frame codec. Fixed header (32 bytes, little endian):
//!
//! | off | size | field                                              |
//! |-----|------|----------------------------------------------------|
//! | 0   | 4    | magic `DFS1`                                       |
//! | 4   | 2    | protocol version                                   |
//! | 6   | 2    | message kind (`Kind`)                              |
//! | 8   | 2    | flags (`FLAG_RESPONSE`, `FLAG_ERROR`, `FLAG_LZ4`, `FLAG_ZSTD`) |
//! | 10  | 2    | reserved, 0                                        |
//! | 12  | 8    | request id                                         |
//! | 20  | 4    | typed header length                                |
//! | 24  | 4    | body length                                        |
//! | 28  | 4    | CRC32C of bytes 0..28, the typed header and body   |
//!
//! Every length is checked against `Limits` before any buffer is sized from it. The CRC
//! covers the bytes on the wire; a compressed body (`crate::compress`) is decompressed by
//! `read_frame` after the CRC check, within the same limits. A body of block data is
//! checksummed through its 64 KiB pieces (`crate::pieces`): the sender derives the
//! body's part of the CRC from the pieces' CRCs it has, and the receiver computes the
//! pieces' CRCs once, checks the frame with them and keeps them for the handler.

use crate::error::ProtoError;
use bytes::{Bytes, BytesMut};
use distfs_types::CRC_CHUNK;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const MAGIC: u32 = u32::from_le_bytes(*b"DFS1");
/// The newest protocol version this build speaks (sent in every frame and in `Hello`).
pub const PROTOCOL_VERSION: u16 = 6;
/// The oldest protocol version this build still speaks. Version 2 added inline slices
/// (`SliceWrite::inline`, `Slice::inline`); version 3 the request ids of writes
/// (`MetaRequest::Once`) and the storage node's registration token
/// (`RegisterNode::token`); version 4 answers namespace changes with the directories
/// they touched (`MetaResponse::Changed`); version 5 opens a reader in one round trip
/// (`MetaRequest::OpenRead`); version 6 says which listed entries have extended
/// attributes (`MetaResponse::Entries::has_xattrs`). Older messages do not decode as the newer ones, and an
/// older server would not understand the new requests.
pub const MIN_PROTOCOL_VERSION: u16 = 6;
pub const FIXED_LEN: usize = 32;

/// The frame answers a request with the same id.
pub const FLAG_RESPONSE: u16 = 1;
/// The typed header is an encoded `FsError` instead of the response.
pub const FLAG_ERROR: u16 = 2;
/// The body is lz4 (block format) compressed, after a u32 LE decompressed length.
pub const FLAG_LZ4: u16 = 4;
/// The body is zstd compressed, after a u32 LE decompressed length.
pub const FLAG_ZSTD: u16 = 8;
const KNOWN_FLAGS: u16 = FLAG_RESPONSE | FLAG_ERROR | FLAG_LZ4 | FLAG_ZSTD;

/// Which service a frame is for; it decides the type of the typed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Kind {
    /// Client or storage node to metadata service: `MetaRequest`/`MetaResponse`.
    Meta = 1,
    /// Client or peer to storage node: `StorageRequest`/`StorageResponse`.
    Storage = 2,
    /// Metadata server to metadata server: Raft RPCs.
    Raft = 3,
    /// The connection handshake: `Hello`/`HelloAck`, first frame each way.
    Hello = 4,
}

impl Kind {
    pub fn from_u16(v: u16) -> Result<Kind, ProtoError> {
        match v {
            1 => Ok(Kind::Meta),
            2 => Ok(Kind::Storage),
            3 => Ok(Kind::Raft),
            4 => Ok(Kind::Hello),
            kind => Err(ProtoError::UnknownKind { kind }),
        }
    }
}

/// Hard limits on what a peer may send. Checked before anything is allocated.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_header: u32,
    pub max_body: u32,
}

impl Default for Limits {
    fn default() -> Self {
        // A body carries at most one block (4 MiB by default, 16 MiB at most) or one Raft
        // snapshot chunk; typed headers are small, listings are paginated.
        Limits { max_header: 1 << 20, max_body: 16 << 20 }
    }
}

/// The decoded fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u16,
    pub kind: u16,
    pub flags: u16,
    pub request_id: u64,
    pub header_len: u32,
    pub body_len: u32,
    pub crc: u32,
}

impl FrameHeader {
    /// Parses and validates the fixed header against the limits. Does not check the CRC,
    /// which covers bytes not read yet.
    pub fn parse(buf: &[u8; FIXED_LEN], limits: &Limits) -> Result<FrameHeader, ProtoError> {
        let u16_at = |o: usize| u16::from_le_bytes([buf[o], buf[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
        let magic = u32_at(0);
        if magic != MAGIC {
            return Err(ProtoError::BadMagic { found: magic });
        }
        let version = u16_at(4);
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
            return Err(ProtoError::UnsupportedVersion {
                peer: version,
                min: MIN_PROTOCOL_VERSION,
                max: PROTOCOL_VERSION,
            });
        }
        let reserved = u16_at(10);
        if reserved != 0 {
            return Err(ProtoError::Reserved { value: reserved });
        }
        let flags = u16_at(8);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(ProtoError::BadHeader { reason: format!("unknown flags {flags:#06x}") });
        }
        let header_len = u32_at(20);
        let body_len = u32_at(24);
        if header_len > limits.max_header {
            return Err(ProtoError::TooLong {
                what: "typed header",
                len: header_len as u64,
                max: limits.max_header as u64,
            });
        }
        if body_len > limits.max_body {
            return Err(ProtoError::TooLong { what: "body", len: body_len as u64, max: limits.max_body as u64 });
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&buf[12..20]);
        Ok(FrameHeader {
            version,
            kind: u16_at(6),
            flags,
            request_id: u64::from_le_bytes(id),
            header_len,
            body_len,
            crc: u32_at(28),
        })
    }
}

/// One frame: routing fields, the encoded typed header and the raw body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: u16,
    pub flags: u16,
    pub request_id: u64,
    pub header: Bytes,
    pub body: Bytes,
    /// CRC32C of each 64 KiB piece of the body as on the wire, when known: given by a
    /// sender that has them (`fixed` then reads no body byte), set by `read_frame` for a
    /// body of at least one piece (a handler verifying block data uses them).
    pub pieces: Option<Arc<[u32]>>,
}

impl Frame {
    /// A frame with no known piece CRCs.
    pub fn new(kind: u16, flags: u16, request_id: u64, header: Bytes, body: Bytes) -> Frame {
        Frame { kind, flags, request_id, header, body, pieces: None }
    }

    pub(crate) fn fixed(&self) -> [u8; FIXED_LEN] {
        let mut b = [0u8; FIXED_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&self.kind.to_le_bytes());
        b[8..10].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.request_id.to_le_bytes());
        b[20..24].copy_from_slice(&(self.header.len() as u32).to_le_bytes());
        b[24..28].copy_from_slice(&(self.body.len() as u32).to_le_bytes());
        let head = crc32c::crc32c_append(crc32c::crc32c(&b[..28]), &self.header);
        let crc = self
            .pieces
            .as_deref()
            .and_then(|p| crate::pieces::append_pieces(head, p, self.body.len()))
            .unwrap_or_else(|| crc32c::crc32c_append(head, &self.body));
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Encodes the whole frame into one buffer (tests and fuzzing; the connection writes
    /// the parts without copying the body).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(FIXED_LEN + self.header.len() + self.body.len());
        v.extend_from_slice(&self.fixed());
        v.extend_from_slice(&self.header);
        v.extend_from_slice(&self.body);
        v
    }
}

/// Writes one frame. The body is written straight from its buffer.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> std::io::Result<()> {
    w.write_all(&frame.fixed()).await?;
    w.write_all(&frame.header).await?;
    w.write_all(&frame.body).await?;
    Ok(())
}

/// A read that failed: either the stream (I/O) or the frame (protocol). `request_id` is
/// known when the fixed header parsed, so the peer can be told which request failed.
#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    Proto(ProtoError),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ReadError::Proto(ProtoError::Truncated)
        } else {
            ReadError::Io(e)
        }
    }
}

/// Reads one frame. `Ok(None)` is a clean end of stream between frames. Buffers are sized
/// by the validated lengths; bodies above 1 MiB grow as bytes arrive, so a peer that lies
/// about a length costs at most what it actually sends.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, limits: &Limits) -> Result<Option<Frame>, ReadError> {
    let mut fixed = [0u8; FIXED_LEN];
    let mut got = 0;
    while got < FIXED_LEN {
        let n = r.read(&mut fixed[got..]).await?;
        if n == 0 {
            return if got == 0 { Ok(None) } else { Err(ReadError::Proto(ProtoError::Truncated)) };
        }
        got += n;
    }
    let h = FrameHeader::parse(&fixed, limits).map_err(ReadError::Proto)?;
    let header = read_exact_bounded(r, h.header_len as usize).await?;
    let body = read_exact_bounded(r, h.body_len as usize).await?;
    let head = crc32c::crc32c_append(crc32c::crc32c(&fixed[..28]), &header);
    let (computed, pieces) = if body.len() >= CRC_CHUNK as usize {
        let pieces = crate::pieces::piece_crcs(&body);
        let crc = crate::pieces::append_pieces(head, &pieces, body.len())
            .unwrap_or_else(|| crc32c::crc32c_append(head, &body));
        (crc, Some(Arc::from(pieces)))
    } else {
        (crc32c::crc32c_append(head, &body), None)
    };
    if computed != h.crc {
        return Err(ReadError::Proto(ProtoError::BadChecksum { expected: h.crc, computed }));
    }
    let frame = Frame { kind: h.kind, flags: h.flags, request_id: h.request_id, header, body, pieces };
    crate::compress::decompress_frame(frame, limits).map(Some).map_err(ReadError::Proto)
}

async fn read_exact_bounded<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> Result<Bytes, ReadError> {
    const EAGER: usize = 1 << 20;
    let mut buf = BytesMut::with_capacity(len.min(EAGER));
    while buf.len() < len {
        if buf.capacity() == buf.len() {
            buf.reserve((len - buf.len()).min(EAGER));
        }
        let want = (len - buf.len()).min(buf.capacity() - buf.len());
        let n = (&mut *r).take(want as u64).read_buf(&mut buf).await?;
        if n == 0 {
            return Err(ReadError::Proto(ProtoError::Truncated));
        }
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        Frame {
            kind: Kind::Storage as u16,
            flags: 0,
            request_id: 42,
            header: Bytes::from_static(b"typed"),
            body: Bytes::from(vec![7u8; 100_000]),
            pieces: None,
        }
    }

    async fn read_all(bytes: &[u8]) -> Result<Option<Frame>, ReadError> {
        let mut r = bytes;
        read_frame(&mut r, &Limits::default()).await
    }

    #[tokio::test]
    async fn round_trip() {
        let f = frame();
        let got = read_all(&f.to_bytes()).await.unwrap().unwrap();
        // The receiver keeps the CRC32C of the body's pieces it checked the frame with.
        let pieces = Some(Arc::from(crate::pieces::piece_crcs(&f.body)));
        assert_eq!(got, Frame { pieces, ..f });
        let small = Frame { body: Bytes::from_static(b"short"), ..frame() };
        assert_eq!(read_all(&small.to_bytes()).await.unwrap().unwrap(), small, "under one piece: none kept");
    }

    #[tokio::test]
    async fn a_sender_with_the_pieces_crcs_sends_the_same_bytes_and_wrong_ones_are_refused() {
        let f = frame();
        let pieces: Arc<[u32]> = crate::pieces::piece_crcs(&f.body).into();
        let with = Frame { pieces: Some(pieces.clone()), ..frame() };
        assert_eq!(with.to_bytes(), f.to_bytes());
        let mut wrong = pieces.to_vec();
        wrong[1] ^= 1;
        let lying = Frame { pieces: Some(wrong.into()), ..frame() };
        assert!(matches!(read_all(&lying.to_bytes()).await, Err(ReadError::Proto(ProtoError::BadChecksum { .. }))));
        // A count that does not fit the body is ignored: the body is read instead.
        let short = Frame { pieces: Some(pieces[..1].into()), ..frame() };
        assert_eq!(short.to_bytes(), f.to_bytes());
    }

    #[tokio::test]
    async fn clean_eof_is_none_and_partial_is_truncated() {
        assert!(read_all(&[]).await.unwrap().is_none());
        let bytes = frame().to_bytes();
        for cut in [1, 31, 32, 36, bytes.len() - 1] {
            match read_all(&bytes[..cut]).await {
                Err(ReadError::Proto(ProtoError::Truncated)) => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn flipped_bit_anywhere_is_rejected() {
        let bytes = frame().to_bytes();
        for pos in [0, 4, 6, 12, 20, 29, 33, 5000, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[pos] ^= 0x10;
            assert!(read_all(&b).await.is_err(), "flip at {pos} accepted");
        }
    }

    #[tokio::test]
    async fn wrong_version_and_oversized_lengths_are_named() {
        let mut b = frame().to_bytes();
        b[4] = 9;
        match read_all(&b).await {
            Err(ReadError::Proto(e @ ProtoError::UnsupportedVersion { peer: 9, .. })) => {
                assert_eq!(e.to_string(), "peer speaks protocol v9, this side speaks v6..v6");
            }
            other => panic!("{other:?}"),
        }
        let mut b = frame().to_bytes();
        b[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        match read_all(&b).await {
            Err(ReadError::Proto(ProtoError::TooLong { what: "body", .. })) => {}
            other => panic!("{other:?}"),
        }
    }

    /// Mutated and random inputs never panic and never decode into a different frame.
    #[tokio::test]
    async fn mutated_frames_are_rejected_or_identical() {
        let base = Frame {
            kind: Kind::Meta as u16,
            flags: FLAG_RESPONSE,
            request_id: 7,
            header: Bytes::from_static(b"some typed header"),
            body: Bytes::from(vec![3u8; 300]),
            pieces: None,
        };
        let bytes = base.to_bytes();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut b = bytes.clone();
            match next() % 4 {
                0 => {
                    let i = next() as usize % b.len();
                    b[i] ^= 1 << (next() % 8);
                }
                1 => b.truncate(next() as usize % b.len()),
                2 => {
                    let i = next() as usize % b.len();
                    b.insert(i, next() as u8);
                }
                _ => b = (0..(next() % 200)).map(|_| next() as u8).collect(),
            }
            if let Ok(Some(f)) = read_all(&b).await {
                // Only an unchanged prefix can decode, and then to the same frame.
                assert_eq!(f, base, "a mutated frame decoded to something else");
            }
        }
    }

    #[tokio::test]
    async fn lying_length_allocates_only_what_arrives() {
        // Claims a 16 MiB body but sends 10 bytes: must fail as truncated, quickly.
        let mut b = frame().to_bytes()[..FIXED_LEN].to_vec();
        b[20..24].copy_from_slice(&0u32.to_le_bytes());
        b[24..28].copy_from_slice(&(16u32 << 20).to_le_bytes());
        b.extend_from_slice(&[0u8; 10]);
        assert!(matches!(read_all(&b).await, Err(ReadError::Proto(ProtoError::Truncated))));
    }
}
