//! `ClientError`: what a client call can fail with, and the `FsError` it amounts to for
//! the edges (CLI exit codes, FUSE errno) that map it.

use distfs_proto::RpcError;
use distfs_types::{BlockId, FsError, NodeId};

pub type Result<T> = std::result::Result<T, ClientError>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service answered with an error (or a call failed after its retries).
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Every replica of a block failed; `attempts` lists each node and why.
    #[error("no replica of block {block} could be read: {}", fmt_attempts(attempts))]
    AllReplicasFailed { block: BlockId, attempts: Vec<(NodeId, String)> },
    /// The metadata answered with a message this client did not expect.
    #[error("unexpected answer from the metadata service to {request}")]
    Unexpected { request: &'static str },
}

fn fmt_attempts(a: &[(NodeId, String)]) -> String {
    if a.is_empty() {
        return "no replica is recorded".into();
    }
    a.iter().map(|(n, e)| format!("{n}: {e}")).collect::<Vec<_>>().join("; ")
}

impl From<RpcError> for ClientError {
    fn from(e: RpcError) -> Self {
        ClientError::Fs(e.into_fs())
    }
}

impl ClientError {
    /// The file-system level error this amounts to.
    pub fn as_fs(&self) -> FsError {
        match self {
            ClientError::Fs(e) => e.clone(),
            ClientError::AllReplicasFailed { .. } => FsError::Io { reason: self.to_string() },
            ClientError::Unexpected { .. } => FsError::Protocol { reason: self.to_string() },
        }
    }
}
