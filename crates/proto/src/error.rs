//! Errors of the protocol layer. `ProtoError` is a broken frame or stream; `RpcError` is
//! the outcome of a call as a caller sees it, with what to do next.

use distfs_types::FsError;

/// A frame that cannot be accepted. The stream it came from is no longer trustworthy and
/// is closed after the error is reported to the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("bad magic {found:#010x}: not a DistFS peer")]
    BadMagic { found: u32 },
    #[error("peer speaks protocol v{peer}, this side speaks v{min}..v{max}")]
    UnsupportedVersion { peer: u16, min: u16, max: u16 },
    #[error("{what} length {len} exceeds the limit of {max}")]
    TooLong { what: &'static str, len: u64, max: u64 },
    #[error("frame checksum mismatch (expected {expected:#010x}, computed {computed:#010x})")]
    BadChecksum { expected: u32, computed: u32 },
    #[error("unknown message kind {kind}")]
    UnknownKind { kind: u16 },
    #[error("malformed typed header: {reason}")]
    BadHeader { reason: String },
    #[error("reserved field is {value}, must be 0")]
    Reserved { value: u16 },
    #[error("stream ended inside a frame")]
    Truncated,
}

/// Why a call did not return a response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    /// The peer answered with an error.
    #[error(transparent)]
    Remote(#[from] FsError),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("no answer from {addr} within {timeout_ms} ms")]
    Timeout { addr: String, timeout_ms: u64 },
    #[error("connection to {addr} lost: {reason}")]
    ConnectionLost { addr: String, reason: String },
    #[error("protocol error with {addr}: {source}")]
    Protocol { addr: String, source: ProtoError },
    #[error("unexpected response from {addr}: {what}")]
    Unexpected { addr: String, what: String },
    /// The peer (or our own TLS check of it) refused the connection: no or a wrong
    /// certificate, not a cluster member, a protocol version it does not speak, TLS on
    /// one side only. Retrying does not help.
    #[error("{addr} refused the connection: {error}")]
    Refused { addr: String, error: FsError },
}

/// TLS material that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    Load { path: String, reason: String },
    #[error("TLS configuration: {reason}")]
    Config { reason: String },
}

impl RpcError {
    /// True when the request may not have reached the peer or the peer may come back:
    /// a retry (possibly elsewhere) is reasonable.
    pub fn is_transient(&self) -> bool {
        match self {
            RpcError::Remote(e) => e.retry() != distfs_types::error::Retry::Never,
            RpcError::Connect { .. } | RpcError::Timeout { .. } | RpcError::ConnectionLost { .. } => true,
            RpcError::Protocol { .. } | RpcError::Unexpected { .. } | RpcError::Refused { .. } => false,
        }
    }

    /// Turns the error into the service-level error a user sees.
    pub fn into_fs(self) -> FsError {
        match self {
            RpcError::Remote(e) => e,
            RpcError::Connect { .. } | RpcError::Timeout { .. } | RpcError::ConnectionLost { .. } => {
                FsError::Unavailable { reason: self.to_string() }
            }
            RpcError::Protocol { .. } | RpcError::Unexpected { .. } => FsError::Protocol { reason: self.to_string() },
            RpcError::Refused { addr, error } => match error {
                FsError::PermissionDenied { what } => {
                    FsError::PermissionDenied { what: format!("{addr} refused the connection: {what}") }
                }
                FsError::Protocol { reason } => {
                    FsError::Protocol { reason: format!("{addr} refused the connection: {reason}") }
                }
                other => other,
            },
        }
    }
}
