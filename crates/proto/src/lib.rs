//! The DistFS wire protocol (DESIGN §8): one framed binary protocol over a byte stream for
//! control and data. A frame is a fixed 32-byte header (magic, version, kind, flags,
//! request id, lengths, CRC32C), a typed header encoded with postcard, and raw body bytes.
//! Requests are multiplexed by id over pooled connections.

pub mod auth;
pub mod compress;
pub mod conn;
pub mod dedup;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod messages;
pub mod meta_client;
mod outbox;
pub mod pieces;
pub mod server;
pub mod snapshots;
pub mod tls;
pub mod transport;

pub use auth::{Identity, Role};
pub use compress::Compression;
pub use conn::{ClientTransport, RpcClient, RpcConfig};
pub use error::{ProtoError, RpcError, TlsError};
pub use frame::{
    Frame, FrameHeader, Kind, Limits, FLAG_ERROR, FLAG_LZ4, FLAG_RESPONSE, FLAG_ZSTD, MAGIC, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};
pub use handshake::PeerKind;
pub use messages::*;
pub use meta_client::MetaClient;
pub use server::{serve, serve_conn, serve_with, Handler, Incoming, Reply, ServerTransport};
pub use snapshots::{SnapshotInfo, SnapshotOp, SNAPSHOT_NAME_MAX};
pub use tls::{ClientTls, CompressionSettings, ServerTls, TlsMode, TlsPaths, TlsSettings};
pub use transport::{BoxStream, Connector, TcpConnector};

/// Encodes a typed header. Encoding a value we built ourselves cannot fail short of a bug.
pub fn encode<T: serde::Serialize>(value: &T) -> bytes::Bytes {
    bytes::Bytes::from(postcard::to_stdvec(value).expect("postcard encoding of an in-memory value"))
}

/// Decodes a typed header received from a peer.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtoError> {
    postcard::from_bytes(bytes).map_err(|e| ProtoError::BadHeader { reason: e.to_string() })
}
