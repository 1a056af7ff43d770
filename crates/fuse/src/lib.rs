//! The FUSE adapter (being built): `mount` serves a DistFS cluster at a mount point.

use distfs_client::Client;
use std::path::PathBuf;

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    pub mountpoint: PathBuf,
    /// Let other users than the mounting one use the mount (`allow_other`).
    pub allow_other: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    #[error("the FUSE mount is not available in this build yet")]
    NotAvailable,
}

/// Serves `client`'s cluster at `opts.mountpoint` until it is unmounted.
pub fn mount(_client: Client, _opts: MountOptions) -> Result<(), FuseError> {
    Err(FuseError::NotAvailable)
}
