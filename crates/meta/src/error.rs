//! `MetaError`: errors of the metadata crate (config, storage, Raft, startup), and the one
//! place where they and openraft's errors are mapped to the wire error `FsError`.

use distfs_types::FsError;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("config key `{key}`: {reason}")]
    Config { key: String, reason: String },
    #[error("storage ({what}): {source}")]
    Storage {
        what: &'static str,
        #[source]
        source: redb::Error,
    },
    #[error("corrupt record in table {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
    #[error("raft: {reason}")]
    Raft { reason: String },
    #[error("Raft log file {file} is damaged at byte {offset}: {reason}; refusing to start without acknowledged entries: restore this node's data directory from a backup, or remove it and add the node back to the cluster as a new member")]
    LogCorrupt { file: String, offset: u64, reason: String },
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("I/O on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out waiting for {what}")]
    Timeout { what: String },
    #[error(transparent)]
    Ops(#[from] distfs_ops::OpsError),
}

impl MetaError {
    pub fn storage(what: &'static str, e: impl Into<redb::Error>) -> MetaError {
        MetaError::Storage { what, source: e.into() }
    }
}

impl From<MetaError> for FsError {
    fn from(e: MetaError) -> FsError {
        match e {
            MetaError::Config { .. } => FsError::invalid(e),
            MetaError::Raft { .. } | MetaError::Timeout { .. } => FsError::Unavailable { reason: e.to_string() },
            MetaError::Storage { .. } | MetaError::Io { .. } | MetaError::Bind { .. } | MetaError::Ops(_) => {
                FsError::io(e)
            }
            MetaError::Corrupt { .. } | MetaError::LogCorrupt { .. } => FsError::internal(e),
        }
    }
}

/// A redb error inside a request or an apply: the wire sees an I/O error.
pub(crate) fn db_err(e: impl Into<redb::Error>) -> FsError {
    FsError::io(format!("metadata store: {}", e.into()))
}

/// A record that does not decode.
pub(crate) fn decode_err(table: &str, e: impl std::fmt::Display) -> FsError {
    FsError::internal(format!("corrupt record in table {table}: {e}"))
}
