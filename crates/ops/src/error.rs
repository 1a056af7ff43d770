//! The error of the ops crate; `http.rs` maps it to HTTP statuses in one place.

/// What can go wrong in the operations plumbing.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("not found: {0}")]
    NotFound(&'static str),
    #[error("logging: {0}")]
    Log(String),
    #[error("internal error: {0}")]
    Internal(String),
}
